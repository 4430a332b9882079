//! The cdcconsumer: keeps Cassandra equal to PostgreSQL from Debezium's change events, and its
//! `verify` proves it.
//!
//! - [`cli`]: the options and the two commands, [`cli::run`] and [`cli::verify`].
//! - [`cassandra`]: the sink's session, schema and prepared statements.
//! - [`handler`]: the runtime's batch handler, one module per job (planning, per-key ordering,
//!   writing, truncations).
//! - [`memory`]: glibc's allocator settings, made at start.
//! - [`slot`]: the source's replication slot, watched while running.
//! - [`verify`]: "wait until quiet" and "compare".

pub mod cassandra;
pub mod cli;
pub mod columns;
pub mod handler;
pub mod memory;
pub mod resnapshot;
pub mod slot;
pub mod verify;
