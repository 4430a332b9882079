//! The producer: writes a deterministic stream of User and Order business events to Kafka with
//! idempotent, acks=all delivery, and accounts for every record it sent.
//!
//! - [`cli`]: the options and what a run does with them ([`cli::run`]).
//! - [`send`]: the send loop — bounded memory, pacing, delivery reports, a clean stop.

pub mod cli;
pub mod send;

pub use send::{client_config, run, ProducerSettings, StopReason, Summary};
