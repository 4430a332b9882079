//! What the pipeline's binaries share: the business events and their wire format, the Debezium
//! envelope parser, the tables' column descriptions, topic administration, the per-partition
//! consumer runtime with its dead letters, retries and named outcomes, the dead-letter commands
//! (`dlq list`, `dlq replay`), metrics, option groups, logging and shutdown.
//!
//! The binaries (`producer`, `consumer`, `cdcconsumer`) own their jobs; nothing here knows a
//! database driver, except the options for reaching a secured Cassandra cluster behind the
//! `cassandra` feature (cdcconsumer and console share them). Modules lower in this list never
//! import from higher ones:
//!
//! - `runtime` → `dlq` → `retry` → `outcome`; `runtime`, `dlq` → `metrics`
//! - `replay` → `config`, `dlq`, `topics`; `config` → `logging`, `topics`
//! - `debezium` → `tables`; `events`, `generator` (feature `generator`) → `events`
//! - `cassandra` (feature `cassandra`) → `config`

#[cfg(feature = "cassandra")]
pub mod cassandra;
pub mod config;
pub mod debezium;
pub mod dlq;
pub mod events;
#[cfg(feature = "generator")]
pub mod generator;
mod logging;
pub mod metrics;
pub mod outcome;
pub mod replay;
pub mod retry;
pub mod runtime;
pub mod shutdown;
pub mod tables;
pub mod topics;
