//! PostgreSQL as the pipeline uses it: the replication slots (active, confirmed flush position,
//! WAL retained and not yet confirmed), the publication's tables and their row counts.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row as _};

use crate::redact;

/// Longest a row count may take before the planner's estimate is shown instead.
const COUNT_TIMEOUT_MS: u32 = 800;

#[derive(Debug, Clone)]
pub struct Postgres {
    pool: PgPool,
    /// The URL with its password masked, for display.
    pub display_url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    pub name: String,
    pub plugin: Option<String>,
    pub active: bool,
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    /// WAL kept for the slot: from its restart position to the current one.
    pub retained_bytes: Option<i64>,
    /// WAL not yet confirmed by the consumer of the slot.
    pub lag_bytes: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCount {
    pub schema: String,
    pub table: String,
    pub publications: Vec<String>,
    pub rows: i64,
    /// The planner's estimate (the exact count took too long).
    pub estimated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresView {
    pub url: String,
    pub version: String,
    pub wal_level: String,
    pub current_lsn: String,
    pub slots: Vec<Slot>,
    pub tables: Vec<TableCount>,
}

impl Postgres {
    /// A pool that connects on first use, so the console starts while PostgreSQL is down.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("cdc-console")
            .options([("statement_timeout", "5000")]);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(timeout)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            display_url: redact::url_password(url),
        })
    }

    /// Every replication slot.
    pub async fn slots(&self) -> Result<Vec<Slot>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT slot_name::text, plugin::text, active, wal_status, confirmed_flush_lsn::text, \
                    restart_lsn::text, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots ORDER BY slot_name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Slot {
                    name: row.try_get(0)?,
                    plugin: row.try_get(1)?,
                    active: row.try_get(2)?,
                    wal_status: row.try_get(3)?,
                    confirmed_flush_lsn: row.try_get(4)?,
                    restart_lsn: row.try_get(5)?,
                    retained_bytes: row.try_get(6)?,
                    lag_bytes: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// Publication tables with their row counts (exact, or the estimate when counting takes
    /// longer than [`COUNT_TIMEOUT_MS`]).
    async fn tables(&self) -> Result<Vec<TableCount>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT schemaname::text, tablename::text, array_agg(pubname::text ORDER BY pubname), \
                    format('%I.%I', schemaname, tablename), \
                    coalesce((SELECT n_live_tup FROM pg_stat_user_tables s \
                              WHERE s.schemaname = p.schemaname AND s.relname = p.tablename), 0) \
             FROM pg_publication_tables p GROUP BY schemaname, tablename ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut tables = Vec::new();
        for row in rows {
            let qualified: String = row.try_get(3)?;
            let estimate: i64 = row.try_get(4)?;
            // The identifier comes from the catalog, quoted by format('%I'): no data in it.
            let exact = async {
                let mut tx = self.pool.begin().await?;
                sqlx::query(AssertSqlSafe(format!(
                    "SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}"
                )))
                .execute(&mut *tx)
                .await?;
                let count: i64 =
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {qualified}")))
                        .fetch_one(&mut *tx)
                        .await?;
                tx.rollback().await?;
                Ok::<_, sqlx::Error>(count)
            };
            let (rows, estimated) = match exact.await {
                Ok(count) => (count, false),
                Err(error) => {
                    tracing::debug!(table = %qualified, error = %error, "row count estimated");
                    (estimate, true)
                }
            };
            tables.push(TableCount {
                schema: row.try_get(0)?,
                table: row.try_get(1)?,
                publications: row.try_get(2)?,
                rows,
                estimated,
            });
        }
        Ok(tables)
    }

    pub async fn view(&self) -> Result<PostgresView, sqlx::Error> {
        let row = sqlx::query(
            "SELECT current_setting('server_version'), current_setting('wal_level'), \
                    pg_current_wal_lsn()::text",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(PostgresView {
            url: self.display_url.clone(),
            version: row.try_get(0)?,
            wal_level: row.try_get(1)?,
            current_lsn: row.try_get(2)?,
            slots: self.slots().await?,
            tables: self.tables().await?,
        })
    }
}
