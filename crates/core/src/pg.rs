//! The PostgreSQL sink for business events: version-guarded multi-row upserts (UNNEST), one
//! transaction per batch.
//!
//! Every event carries its entity's full state and version, so applying a batch means "for each
//! entity, keep the state with the highest version". The `WHERE stored.version < incoming.version`
//! guard makes replays, duplicates and reordering harmless; within a batch only the highest version
//! per entity is sent, because one INSERT … ON CONFLICT may not touch a row twice.
//!
//! A user's soft delete marks that user's orders deleted (trigger in postgres-schema.sql). An order
//! written after its user was deleted takes the user's deletion the same way, so the end state does
//! not depend on which of the two arrives first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backon::Retryable;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::events::{OrderEvent, UserEvent};
use crate::retry::{backoff, Classify};

/// The schema, applied at start (idempotent).
pub const SCHEMA: &str = include_str!("../../../postgres-schema.sql");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl Classify for SinkError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Database(error) => is_transient_sqlx(error),
        }
    }
}

/// Connection problems, timeouts, serialization failures, deadlocks, shutdowns and missing parents
/// are worth retrying; constraint violations from bad data are not.
fn is_transient_sqlx(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 40001 serialization_failure, 40P01 deadlock_detected, 23503 foreign_key_violation
            // (parent not there yet), 08xxx connection, 53xxx resources, 57P0x shutdown/crash,
            // 55P03 lock_not_available.
            matches!(code.as_ref(), "40001" | "40P01" | "23503" | "55P03")
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
        }
        _ => false,
    }
}

/// Opens a pool and applies the schema.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, SinkError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?;
    apply_schema(&pool).await?;
    Ok(pool)
}

/// Applies [`SCHEMA`], retrying transient failures (a lost connection, a deadlock with a first-time
/// creation) for up to 30 s.
pub async fn apply_schema(pool: &PgPool) -> Result<(), SinkError> {
    (|| apply_schema_once(pool))
        .retry(backoff(Duration::from_secs(30)))
        .when(SinkError::is_transient)
        .notify(|error: &SinkError, delay: Duration| {
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis(), "applying the schema failed; retrying");
        })
        .await
}

async fn apply_schema_once(pool: &PgPool) -> Result<(), SinkError> {
    let mut conn = pool.acquire().await?;
    // Serialise concurrent starters: CREATE … IF NOT EXISTS is not safe against itself.
    sqlx::query("SELECT pg_advisory_lock(7231001)")
        .execute(&mut *conn)
        .await?;
    // "already exists, skipping" notices are expected on every start after the first.
    sqlx::query("SET client_min_messages = warning")
        .execute(&mut *conn)
        .await?;
    let result = sqlx::raw_sql(SCHEMA).execute(&mut *conn).await;
    sqlx::query("SELECT pg_advisory_unlock(7231001)")
        .execute(&mut *conn)
        .await?;
    result?;
    Ok(())
}

/// Keeps, per key, only the event with the highest version (in key order).
pub fn latest_by<T, K: Ord>(
    events: &[T],
    key: impl Fn(&T) -> K,
    version: impl Fn(&T) -> i64,
) -> Vec<&T> {
    let mut latest: BTreeMap<K, &T> = BTreeMap::new();
    for event in events {
        let k = key(event);
        match latest.get(&k) {
            Some(current) if version(current) >= version(event) => {}
            _ => {
                latest.insert(k, event);
            }
        }
    }
    latest.into_values().collect()
}

/// Applies user events in one transaction; returns how many rows changed.
pub async fn apply_users(pool: &PgPool, events: &[UserEvent]) -> Result<u64, SinkError> {
    let latest = latest_by(events, |e| e.user.id, |e| e.version);
    if latest.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(latest.len());
    let mut names = Vec::with_capacity(latest.len());
    let mut emails = Vec::with_capacity(latest.len());
    let mut created = Vec::with_capacity(latest.len());
    let mut updated = Vec::with_capacity(latest.len());
    let mut deleted: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(latest.len());
    let mut versions = Vec::with_capacity(latest.len());
    for e in latest {
        ids.push(e.user.id);
        names.push(e.user.name.clone());
        emails.push(e.user.email.clone());
        created.push(e.user.created_at);
        updated.push(e.user.updated_at);
        deleted.push(e.user.deleted_at);
        versions.push(e.version);
    }
    let mut tx = pool.begin().await?;
    let result = sqlx::query(
        "INSERT INTO users AS u (id, name, email, created_at, updated_at, deleted_at, version) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], \
                              $5::timestamptz[], $6::timestamptz[], $7::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET \
             name = EXCLUDED.name, email = EXCLUDED.email, created_at = EXCLUDED.created_at, \
             updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at, \
             version = EXCLUDED.version \
         WHERE u.version < EXCLUDED.version",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&emails)
    .bind(&created)
    .bind(&updated)
    .bind(&deleted)
    .bind(&versions)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(result.rows_affected())
}

/// Result of applying a batch of order events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrdersApplied {
    pub rows_changed: u64,
    /// Orders not written because their user does not exist (yet).
    pub missing_parent: BTreeSet<Uuid>,
}

/// Applies order events in one transaction. Orders whose user is not there are left out and
/// reported, so the caller can retry them (the user may still be on its way) and finally park them.
pub async fn apply_orders(
    pool: &PgPool,
    events: &[OrderEvent],
) -> Result<OrdersApplied, SinkError> {
    let latest = latest_by(events, |e| e.order.id, |e| e.version);
    if latest.is_empty() {
        return Ok(OrdersApplied::default());
    }
    let mut tx = pool.begin().await?;
    let parents: BTreeSet<Uuid> = latest.iter().map(|e| e.order.user_id).collect();
    let parents: Vec<Uuid> = parents.into_iter().collect();
    let present = lock_users(&mut tx, &parents).await?;
    let (ready, waiting): (Vec<_>, Vec<_>) = latest
        .into_iter()
        .partition(|e| present.contains(&e.order.user_id));
    let missing_parent = waiting.iter().map(|e| e.order.id).collect();
    let mut rows_changed = 0;
    if !ready.is_empty() {
        rows_changed = upsert_orders(&mut tx, &ready).await?;
    }
    tx.commit().await?;
    Ok(OrdersApplied {
        rows_changed,
        missing_parent,
    })
}

/// Share-locks the given users (in id order, so concurrent batches do not deadlock) until the
/// transaction ends: a concurrent soft delete of one of them then either happened before (and we
/// see its deleted_at) or waits for us (and its trigger sees our orders).
async fn lock_users(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> Result<BTreeSet<Uuid>, SinkError> {
    let rows: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR SHARE")
            .bind(ids)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

async fn upsert_orders(
    tx: &mut Transaction<'_, Postgres>,
    orders: &[&OrderEvent],
) -> Result<u64, SinkError> {
    let n = orders.len();
    let mut ids = Vec::with_capacity(n);
    let mut user_ids = Vec::with_capacity(n);
    let mut products = Vec::with_capacity(n);
    let mut quantities = Vec::with_capacity(n);
    let mut amounts: Vec<Decimal> = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut dates: Vec<NaiveDate> = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let mut deleted: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    for e in orders {
        let o = &e.order;
        ids.push(o.id);
        user_ids.push(o.user_id);
        products.push(o.product.clone());
        quantities.push(o.quantity);
        amounts.push(o.amount);
        statuses.push(o.status.as_str());
        dates.push(o.order_date);
        created.push(o.created_at);
        updated.push(o.updated_at);
        deleted.push(o.deleted_at);
        versions.push(e.version);
    }
    let result = sqlx::query(
        "INSERT INTO orders AS o (id, user_id, product, quantity, amount, status, order_date, \
                                  created_at, updated_at, deleted_at, version) \
         SELECT e.id, e.user_id, e.product, e.quantity, e.amount, e.status, e.order_date, \
                e.created_at, \
                CASE WHEN e.deleted_at IS NULL AND u.deleted_at IS NOT NULL \
                     THEN GREATEST(e.updated_at, u.deleted_at) ELSE e.updated_at END, \
                COALESCE(e.deleted_at, u.deleted_at), \
                e.version \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::numeric[], $6::text[], \
                     $7::date[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], \
                     $11::bigint[]) \
              AS e(id, user_id, product, quantity, amount, status, order_date, created_at, \
                   updated_at, deleted_at, version) \
         JOIN users u ON u.id = e.user_id \
         ORDER BY e.id \
         ON CONFLICT (id) DO UPDATE SET \
             user_id = EXCLUDED.user_id, product = EXCLUDED.product, \
             quantity = EXCLUDED.quantity, amount = EXCLUDED.amount, status = EXCLUDED.status, \
             order_date = EXCLUDED.order_date, created_at = EXCLUDED.created_at, \
             updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at, \
             version = EXCLUDED.version \
         WHERE o.version < EXCLUDED.version",
    )
    .bind(&ids)
    .bind(&user_ids)
    .bind(&products)
    .bind(&quantities)
    .bind(&amounts)
    .bind(&statuses)
    .bind(&dates)
    .bind(&created)
    .bind(&updated)
    .bind(&deleted)
    .bind(&versions)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_keeps_the_highest_version_per_key() {
        let events = [(1, 1), (2, 5), (1, 3), (2, 4), (1, 2)];
        let latest = latest_by(&events, |e| e.0, |e| e.1);
        assert_eq!(latest, vec![&(1, 3), &(2, 5)]);
    }
}
