//! Positions that cannot be real. Every write carries its change's LSN as its Cassandra
//! timestamp, so one forged or foreign position — a record claiming LSN 9×10¹⁸, or a
//! `truncations` row left from an earlier PostgreSQL cluster — would shadow every later change of
//! its rows or table for good. The guard asks PostgreSQL for its current WAL position (any role
//! may) and refuses positions beyond it: a change cannot have happened after "now".

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The dead-letter reason of a change whose position is beyond PostgreSQL's WAL.
pub const IMPOSSIBLE_POSITION: &str = "impossible_position";

/// PostgreSQL could not be asked: the infrastructure's fault, retried.
#[derive(Debug, thiserror::Error)]
#[error("asking PostgreSQL for its WAL position failed: {0}")]
pub struct GuardError(#[from] sqlx::Error);

impl GuardError {
    /// Whether PostgreSQL refused this client rather than failed it: a wrong password or user,
    /// pg_hba.conf rejecting the connection (SQLSTATE class 28), or a certificate the client does
    /// not trust. Retrying cannot help until a person changes the settings.
    pub fn is_refusal(&self) -> bool {
        match &self.0 {
            sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("28")),
            sqlx::Error::Tls(_) => true,
            _ => false,
        }
    }
}

impl cdc_core::retry::Classify for GuardError {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Checks positions against PostgreSQL's current WAL position.
#[derive(Debug)]
pub struct PositionGuard {
    pool: PgPool,
    /// The highest WAL position seen so far: only ever grows, so positions at or below it need no
    /// question to PostgreSQL.
    ceiling: AtomicI64,
}

impl PositionGuard {
    /// Connects (lazily: the first check opens the connection) to the source database.
    pub fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)?;
        Ok(Self {
            pool,
            ceiling: AtomicI64::new(0),
        })
    }

    /// The connection pool to the source (one connection).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// PostgreSQL's current WAL position, as an LSN number.
    pub async fn current_wal(&self) -> Result<i64, GuardError> {
        let (lsn,): (i64,) =
            sqlx::query_as("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
                .fetch_one(&self.pool)
                .await?;
        self.ceiling.fetch_max(lsn, Ordering::Relaxed);
        Ok(lsn)
    }

    /// The highest position that can be real: the cached ceiling when `lsn` is at or below it,
    /// otherwise PostgreSQL's current WAL position, asked now.
    pub async fn ceiling(&self, lsn: i64) -> Result<i64, GuardError> {
        let known = self.ceiling.load(Ordering::Relaxed);
        if lsn <= known {
            return Ok(known);
        }
        self.current_wal().await
    }

    /// The cluster's system identifier: it changes when the cluster is re-initialised (and LSNs
    /// start low again).
    pub async fn system_identifier(&self) -> Result<i64, GuardError> {
        let (id,): (i64,) = sqlx::query_as("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(&self.pool)
            .await?;
        Ok(id)
    }
}

/// Why a position cannot be real, for the dead letter.
pub fn impossible(lsn: i64, ceiling: i64) -> String {
    format!(
        "source LSN {lsn} is beyond PostgreSQL's current WAL position {ceiling}: a forged record, \
         or one from another PostgreSQL cluster"
    )
}
