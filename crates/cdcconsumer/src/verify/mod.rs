//! The verifier: proof that Cassandra agrees with PostgreSQL, in two steps run after a scenario
//! has finished, each with its own error type:
//!
//! 1. [`quiet::wait_quiet`]: wait until nothing is in flight (consumer groups at the end of their
//!    topics, Debezium's slot past the current WAL position) — [`quiet::QuietError`].
//! 2. [`compare::compare`]: one PostgreSQL snapshot against full Cassandra reads, row by row, a
//!    report of missing / extra / different rows — [`compare::CompareError`].
//!
//! 3. [`dead_letters::count`]: what the dead-letter topics hold, by reason — valid events parked
//!    by mistake would leave both stores agreeing, so they are counted too.
//!
//! It reports; it never repairs.

pub mod compare;
pub mod dead_letters;
pub mod quiet;

pub use compare::{compare, CompareError, CompareOptions, Report};
pub use quiet::{wait_quiet, GroupTopics, QuietError, QuietOptions, QuietReport};

/// Whether a PostgreSQL error may pass by itself: a lost connection, a pool timeout, a server
/// shutting down or short of resources.
pub(crate) fn postgres_may_pass(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        }
        _ => false,
    }
}
