//! The consumer: applies business events from Kafka to PostgreSQL, one worker per partition,
//! idempotently and in order per entity.
//!
//! - [`cli`]: the options and a run ([`cli::run`]): topics, schema, one consumer group per topic.
//! - [`handler`]: the runtime's batch handler — decode and validate, park the bad, apply the
//!   rest with retries, hold orders back until their user exists.
//! - [`parents`]: whether a late order's user can still come (the users stream's progress).
//! - [`sink`]: the PostgreSQL sink — version-guarded UNNEST upserts and the schema.
//! - [`unknown_fields`]: fields of the events this reader ignores, counted with bounded cardinality.

pub mod cli;
pub mod handler;
pub mod parents;
pub mod sink;
pub mod unknown_fields;
