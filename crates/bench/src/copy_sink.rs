//! The "COPY into a staging table" alternative to `consumer::sink`'s UNNEST upserts: same
//! semantics (highest version per entity within a batch, version guard, orders wait for their
//! user, a deleted user's deletion carried onto its orders, one transaction per batch), but the
//! rows travel as CSV through `COPY … FROM STDIN` into a temporary table private to the connection, and one
//! `INSERT … SELECT … ON CONFLICT` moves them into place.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use cdc_core::events::{OrderEvent, UserEvent};

/// Staging tables: private to the connection, emptied at every commit.
const STAGING: &str = "\
CREATE TEMP TABLE bench_stage_users (
    id uuid, name text, email text, created_at timestamptz, updated_at timestamptz,
    deleted_at timestamptz, version bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE bench_stage_orders (
    id uuid, user_id uuid, product text, quantity int4, amount numeric, status text,
    order_date date, created_at timestamptz, updated_at timestamptz, deleted_at timestamptz,
    version bigint) ON COMMIT DELETE ROWS;";

const COPY_USERS: &str = "COPY bench_stage_users \
    (id, name, email, created_at, updated_at, deleted_at, version) FROM STDIN (FORMAT csv)";

const COPY_ORDERS: &str = "COPY bench_stage_orders \
    (id, user_id, product, quantity, amount, status, order_date, created_at, updated_at, \
     deleted_at, version) FROM STDIN (FORMAT csv)";

/// Same statement as `consumer::sink::apply_users`, reading the staging table instead of UNNEST.
const UPSERT_USERS: &str = "\
INSERT INTO users AS u (id, name, email, created_at, updated_at, deleted_at, version)
SELECT id, name, email, created_at, updated_at, deleted_at, version FROM bench_stage_users
ON CONFLICT (id) DO UPDATE SET
    name = EXCLUDED.name, email = EXCLUDED.email, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at,
    version = EXCLUDED.version
WHERE u.version < EXCLUDED.version";

/// Same statement as `consumer::sink`'s order upsert, reading the staging table instead of UNNEST.
const UPSERT_ORDERS: &str = "\
INSERT INTO orders AS o (id, user_id, product, quantity, amount, status, order_date,
                         created_at, updated_at, deleted_at, version)
SELECT e.id, e.user_id, e.product, e.quantity, e.amount, e.status, e.order_date,
       e.created_at,
       CASE WHEN e.deleted_at IS NULL AND u.deleted_at IS NOT NULL
            THEN GREATEST(e.updated_at, u.deleted_at) ELSE e.updated_at END,
       COALESCE(e.deleted_at, u.deleted_at),
       e.version
FROM bench_stage_orders AS e
JOIN users u ON u.id = e.user_id
ORDER BY e.id
ON CONFLICT (id) DO UPDATE SET
    user_id = EXCLUDED.user_id, product = EXCLUDED.product,
    quantity = EXCLUDED.quantity, amount = EXCLUDED.amount, status = EXCLUDED.status,
    order_date = EXCLUDED.order_date, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at,
    version = EXCLUDED.version
WHERE o.version < EXCLUDED.version";

/// One connection with its staging tables.
#[derive(Debug)]
pub struct CopySink {
    conn: PgConnection,
    /// Time spent in `finish()` (CopyDone until the server's CommandComplete), all batches.
    copy_done: Duration,
}

impl CopySink {
    pub async fn connect(url: &str) -> Result<Self> {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::raw_sql(STAGING).execute(&mut conn).await?;
        Ok(Self {
            conn,
            copy_done: Duration::ZERO,
        })
    }

    /// Time spent completing COPYs (sending CopyDone and waiting for CommandComplete) so far.
    pub fn copy_done(&self) -> Duration {
        self.copy_done
    }

    /// Applies user events in one transaction; returns how many rows changed.
    pub async fn apply_users(&mut self, events: &[UserEvent]) -> Result<u64> {
        let latest = consumer::sink::latest_by(events, |e| e.user.id, |e| e.version);
        if latest.is_empty() {
            return Ok(0);
        }
        let mut csv = String::with_capacity(latest.len() * 192);
        for e in &latest {
            let u = &e.user;
            write!(csv, "{},", u.id)?;
            push_text(&mut csv, &u.name);
            csv.push(',');
            push_text(&mut csv, &u.email);
            csv.push(',');
            push_time(&mut csv, Some(&u.created_at))?;
            csv.push(',');
            push_time(&mut csv, Some(&u.updated_at))?;
            csv.push(',');
            push_time(&mut csv, u.deleted_at.as_ref())?;
            writeln!(csv, ",{}", e.version)?;
        }
        let mut timer = PhaseTimer::start();
        let mut tx = self.conn.begin().await?;
        timer.lap("begin");
        let mut copy = tx.copy_in_raw(COPY_USERS).await?;
        timer.lap("copy_start");
        copy.send(csv.as_bytes()).await?;
        timer.lap("copy_data");
        copy.finish().await?;
        self.copy_done += timer.lap("copy_done");
        let changed = sqlx::query(UPSERT_USERS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        timer.lap("upsert");
        tx.commit().await?;
        timer.lap("commit");
        timer.log("users", latest.len());
        Ok(changed)
    }

    /// Applies order events in one transaction. A plain loop has no retries: an order whose user
    /// is not there is an error (the benchmark applies all users before any order).
    pub async fn apply_orders(&mut self, events: &[OrderEvent]) -> Result<u64> {
        let latest = consumer::sink::latest_by(events, |e| e.order.id, |e| e.version);
        if latest.is_empty() {
            return Ok(0);
        }
        let mut tx = self.conn.begin().await?;
        let parents: BTreeSet<Uuid> = latest.iter().map(|e| e.order.user_id).collect();
        let parents: Vec<Uuid> = parents.into_iter().collect();
        let present: Vec<(Uuid,)> =
            sqlx::query_as("SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR SHARE")
                .bind(&parents)
                .fetch_all(&mut *tx)
                .await?;
        let present: BTreeSet<Uuid> = present.into_iter().map(|(id,)| id).collect();
        let missing = latest
            .iter()
            .filter(|e| !present.contains(&e.order.user_id))
            .count();
        ensure!(missing == 0, "{missing} orders arrived before their user");

        let mut csv = String::with_capacity(latest.len() * 256);
        for e in &latest {
            let o = &e.order;
            write!(csv, "{},{},", o.id, o.user_id)?;
            push_text(&mut csv, &o.product);
            write!(
                csv,
                ",{},{},{},{},",
                o.quantity,
                o.amount,
                o.status.as_str(),
                o.order_date.format("%Y-%m-%d")
            )?;
            push_time(&mut csv, Some(&o.created_at))?;
            csv.push(',');
            push_time(&mut csv, Some(&o.updated_at))?;
            csv.push(',');
            push_time(&mut csv, o.deleted_at.as_ref())?;
            writeln!(csv, ",{}", e.version)?;
        }
        let mut timer = PhaseTimer::start();
        let mut copy = tx.copy_in_raw(COPY_ORDERS).await?;
        timer.lap("copy_start");
        copy.send(csv.as_bytes()).await?;
        timer.lap("copy_data");
        copy.finish().await?;
        self.copy_done += timer.lap("copy_done");
        let changed = sqlx::query(UPSERT_ORDERS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        timer.lap("upsert");
        tx.commit().await?;
        timer.lap("commit");
        timer.log("orders", latest.len());
        Ok(changed)
    }
}

/// Where a batch's time goes, logged at debug level (`RUST_LOG=bench=debug`).
#[derive(Debug)]
struct PhaseTimer {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl PhaseTimer {
    fn start() -> Self {
        Self {
            last: Instant::now(),
            laps: Vec::with_capacity(6),
        }
    }

    fn lap(&mut self, phase: &'static str) -> Duration {
        let now = Instant::now();
        let lap = now - self.last;
        self.laps.push((phase, lap));
        self.last = now;
        lap
    }

    fn log(&self, table: &str, rows: usize) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let laps: Vec<String> = self
                .laps
                .iter()
                .map(|(phase, d)| format!("{phase}={:.1}ms", d.as_secs_f64() * 1000.0))
                .collect();
            tracing::debug!(table, rows, phases = laps.join(" "), "COPY batch");
        }
    }
}

/// A CSV text field, always quoted (so an empty string is not NULL), quotes doubled.
fn push_text(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// A timestamp in RFC 3339 with microseconds, or nothing (an unquoted empty field is NULL).
fn push_time(out: &mut String, time: Option<&DateTime<Utc>>) -> std::fmt::Result {
    match time {
        Some(t) => write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields() {
        let mut out = String::new();
        push_text(&mut out, r#"Say "hi", \ ok"#);
        assert_eq!(out, r#""Say ""hi"", \ ok""#);
        out.clear();
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:00:00.000001Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        assert!(push_time(&mut out, t.as_ref()).is_ok());
        assert_eq!(out, "2026-11-24T10:00:00.000001Z");
        out.clear();
        assert!(push_time(&mut out, None).is_ok());
        assert_eq!(out, "");
    }
}
