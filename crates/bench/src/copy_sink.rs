//! The "COPY into a staging table" alternative to `consumer::sink`'s UNNEST upserts: same
//! semantics (highest version per entity within a batch, version guard, orders wait for their
//! user, a deleted user's deletion carried onto its orders, one transaction per batch), but the
//! rows travel as CSV through `COPY … FROM STDIN` into a temporary table private to the connection, and one
//! `INSERT … SELECT … ON CONFLICT` moves them into place.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use cdc_core::tables::{self, Table};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

use cdc_core::events::{OrderEvent, UserEvent};

/// Staging tables: private to the connection, emptied at every commit, with the tables' columns.
const STAGING: &str = "\
CREATE TEMP TABLE bench_stage_users (LIKE users) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE bench_stage_orders (LIKE orders) ON COMMIT DELETE ROWS;";

/// `COPY <staging> (<every column of table>) FROM STDIN (FORMAT csv)`.
fn copy_in(staging: &str, table: &Table) -> String {
    format!(
        "COPY {staging} ({}) FROM STDIN (FORMAT csv)",
        table.column_list()
    )
}

/// Copies `csv` into a staging table with `copy`, moves it into place with `upsert` and commits;
/// returns the rows changed and how long the COPY took to complete.
async fn copy_and_upsert(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    copy: &str,
    csv: &str,
    upsert: &str,
    timer: &mut PhaseTimer,
) -> Result<(u64, Duration)> {
    let mut copy = tx.copy_in_raw(copy).await?;
    timer.lap("copy_start");
    copy.send(csv.as_bytes()).await?;
    timer.lap("copy_data");
    copy.finish().await?;
    let copy_done = timer.lap("copy_done");
    let changed = sqlx::query(AssertSqlSafe(upsert.to_owned()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    timer.lap("upsert");
    tx.commit().await?;
    timer.lap("commit");
    Ok((changed, copy_done))
}

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
        let tx = self.conn.begin().await?;
        timer.lap("begin");
        let (changed, copy_done) = copy_and_upsert(
            tx,
            &copy_in("bench_stage_users", &tables::USERS),
            &csv,
            &consumer::sink::users_upsert("bench_stage_users AS e"),
            &mut timer,
        )
        .await?;
        self.copy_done += copy_done;
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
        let (changed, copy_done) = copy_and_upsert(
            tx,
            &copy_in("bench_stage_orders", &tables::ORDERS),
            &csv,
            &consumer::sink::orders_upsert("bench_stage_orders AS e"),
            &mut timer,
        )
        .await?;
        self.copy_done += copy_done;
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
