//! Shared building blocks of the CDC pipeline: topic administration and logging set-up, used by the
//! `producer`, `consumer` and `cdcconsumer` binaries and by the integration tests.
//!
//! The binaries stay thin; anything with behaviour worth testing lives here.

pub mod logging;
pub mod topics;
