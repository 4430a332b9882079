//! Shared building blocks of the CDC pipeline: topic administration and logging set-up, used by the
//! `producer`, `consumer` and `cdcconsumer` binaries and by the integration tests.
//!
//! The binaries stay thin; anything with behaviour worth testing lives here.

pub mod cassandra;
pub mod cdc;
pub mod config;
pub mod debezium;
pub mod dlq;
pub mod events;
pub mod generator;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod pg;
pub mod producer;
pub mod retry;
pub mod runtime;
pub mod shutdown;
pub mod topics;
pub mod verify;
