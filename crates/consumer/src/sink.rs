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

use cdc_core::events::{OrderEvent, UserEvent};
use cdc_core::retry::{backoff, Classify};
use cdc_core::tables::{self, Column, ColumnType, Table};
use sqlx::AssertSqlSafe;

/// The schema, applied at start (idempotent).
pub const SCHEMA: &str = include_str!("../../../postgres-schema.sql");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl SinkError {
    /// Whether the records themselves caused the failure, so that retrying them can never help:
    /// PostgreSQL refused a value (SQLSTATE class 22, data exception) or a constraint other than
    /// the parent key (class 23 without 23503). Everything else — connections, timeouts,
    /// deadlocks, a missing parent, permissions, a read-only database, a missing table, a
    /// statement timeout — is the infrastructure's, and a record must never be parked for it.
    pub fn is_record_fault(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                code.starts_with("22") || (code.starts_with("23") && code != "23503")
            }
            Self::Database(_) => false,
        }
    }
}

impl Classify for SinkError {
    /// Everything that is not the records' own fault may pass (or be fixed by a person while the
    /// partition waits): it is retried, and past the retry budget the worker gives up visibly.
    fn is_transient(&self) -> bool {
        !self.is_record_fault()
    }
}

/// Opens a pool and applies the schema.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, SinkError> {
    let pool = pool(url, max_connections).await?;
    apply_schema(&pool).await?;
    Ok(pool)
}

/// Opens a pool without touching the schema.
pub async fn pool(url: &str, max_connections: u32) -> Result<PgPool, SinkError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
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

/// One column's values for a batch, typed as PostgreSQL's UNNEST wants them.
#[derive(Debug)]
enum Array {
    Uuid(Vec<Uuid>),
    Text(Vec<String>),
    Int(Vec<i32>),
    BigInt(Vec<i64>),
    Date(Vec<NaiveDate>),
    Timestamp(Vec<DateTime<Utc>>),
    OptionalTimestamp(Vec<Option<DateTime<Utc>>>),
    Numeric(Vec<Decimal>),
    Bool(Vec<bool>),
}

/// A user event's value of `column` (named in [`tables::USERS`]).
fn user_value(event: &UserEvent, column: &str, array: &mut Array) {
    let u = &event.user;
    match (column, array) {
        ("id", Array::Uuid(v)) => v.push(u.id),
        ("name", Array::Text(v)) => v.push(u.name.clone()),
        ("email", Array::Text(v)) => v.push(u.email.clone()),
        ("created_at", Array::Timestamp(v)) => v.push(u.created_at),
        ("updated_at", Array::Timestamp(v)) => v.push(u.updated_at),
        ("deleted_at", Array::OptionalTimestamp(v)) => v.push(u.deleted_at),
        ("version", Array::BigInt(v)) => v.push(event.version),
        (column, array) => unreachable_column("users", column, array),
    }
}

/// An order event's value of `column` (named in [`tables::ORDERS`]).
fn order_value(event: &OrderEvent, column: &str, array: &mut Array) {
    let o = &event.order;
    match (column, array) {
        ("id", Array::Uuid(v)) => v.push(o.id),
        ("user_id", Array::Uuid(v)) => v.push(o.user_id),
        ("product", Array::Text(v)) => v.push(o.product.clone()),
        ("quantity", Array::Int(v)) => v.push(o.quantity),
        ("amount", Array::Numeric(v)) => v.push(o.amount),
        ("status", Array::Text(v)) => v.push(o.status.as_str().to_owned()),
        ("order_date", Array::Date(v)) => v.push(o.order_date),
        ("created_at", Array::Timestamp(v)) => v.push(o.created_at),
        ("updated_at", Array::Timestamp(v)) => v.push(o.updated_at),
        ("deleted_at", Array::OptionalTimestamp(v)) => v.push(o.deleted_at),
        ("version", Array::BigInt(v)) => v.push(event.version),
        (column, array) => unreachable_column("orders", column, array),
    }
}

/// The description and the event types disagree: caught by this module's unit test.
fn unreachable_column(table: &str, column: &str, array: &Array) {
    tracing::error!(
        table,
        column,
        ?array,
        "column of the description has no event field"
    );
}

/// The array a column's values go into; `deleted_at` is the one nullable column.
fn array_for(column: &Column, capacity: usize) -> Array {
    match column.ty {
        ColumnType::Uuid => Array::Uuid(Vec::with_capacity(capacity)),
        ColumnType::Text => Array::Text(Vec::with_capacity(capacity)),
        ColumnType::Int => Array::Int(Vec::with_capacity(capacity)),
        ColumnType::BigInt => Array::BigInt(Vec::with_capacity(capacity)),
        ColumnType::Date => Array::Date(Vec::with_capacity(capacity)),
        ColumnType::TimestampTz | ColumnType::Timestamp if column.name == "deleted_at" => {
            Array::OptionalTimestamp(Vec::with_capacity(capacity))
        }
        ColumnType::TimestampTz | ColumnType::Timestamp => {
            Array::Timestamp(Vec::with_capacity(capacity))
        }
        ColumnType::Numeric { .. } => Array::Numeric(Vec::with_capacity(capacity)),
        ColumnType::Bool => Array::Bool(Vec::with_capacity(capacity)),
    }
}

/// Every column of `table` for `events`, in the description's order.
fn arrays<E>(table: &Table, events: &[&E], value: fn(&E, &str, &mut Array)) -> Vec<Array> {
    table
        .columns
        .iter()
        .map(|column| {
            let mut array = array_for(column, events.len());
            for event in events {
                value(event, column.name, &mut array);
            }
            array
        })
        .collect()
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    arrays: Vec<Array>,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for array in arrays {
        query = match array {
            Array::Uuid(v) => query.bind(v),
            Array::Text(v) => query.bind(v),
            Array::Int(v) => query.bind(v),
            Array::BigInt(v) => query.bind(v),
            Array::Date(v) => query.bind(v),
            Array::Timestamp(v) => query.bind(v),
            Array::OptionalTimestamp(v) => query.bind(v),
            Array::Numeric(v) => query.bind(v),
            Array::Bool(v) => query.bind(v),
        };
    }
    query
}

/// `UNNEST($1::uuid[], $2::text[], …)` over every column of `table`.
fn unnest(table: &Table) -> String {
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.ty.pg()))
        .collect();
    format!("UNNEST({})", arrays.join(", "))
}

/// `ON CONFLICT (key) DO UPDATE SET` every other column, guarded by the version.
fn on_conflict(table: &Table, alias: &str) -> String {
    let set: Vec<String> = table
        .values()
        .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
        .collect();
    format!(
        "ON CONFLICT ({}) DO UPDATE SET {} WHERE {alias}.version < EXCLUDED.version",
        table.key.join(", "),
        set.join(", ")
    )
}

/// Every column of `table` from UNNEST over the bound arrays, aliased `e`: the source of the
/// sink's upserts.
pub fn unnest_source(table: &Table) -> String {
    format!("{} AS e({})", unnest(table), table.column_list())
}

/// `e.id, e.name, …`: every column of `table` from the source aliased `e`.
fn source_columns(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|c| format!("e.{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The users upsert from `source` (rows of every users column, aliased `e`): newer versions only.
pub fn users_upsert(source: &str) -> String {
    let table = &tables::USERS;
    format!(
        "INSERT INTO {} AS u ({}) SELECT {} FROM {source} {}",
        table.name,
        table.column_list(),
        source_columns(table),
        on_conflict(table, "u")
    )
}

/// The orders upsert from `source` (rows of every orders column, aliased `e`): only orders whose
/// user exists (joined), and an order of a deleted user takes the user's deletion, as the trigger
/// does for orders already there.
pub fn orders_upsert(source: &str) -> String {
    let table = &tables::ORDERS;
    let select: Vec<String> = table
        .columns
        .iter()
        .map(|c| match c.name {
            "updated_at" => "CASE WHEN e.deleted_at IS NULL AND u.deleted_at IS NOT NULL \
                             THEN GREATEST(e.updated_at, u.deleted_at) ELSE e.updated_at END"
                .to_owned(),
            "deleted_at" => "COALESCE(e.deleted_at, u.deleted_at)".to_owned(),
            name => format!("e.{name}"),
        })
        .collect();
    format!(
        "INSERT INTO {name} AS o ({columns}) SELECT {select} FROM {source} \
         JOIN users u ON u.id = e.user_id ORDER BY e.id {conflict}",
        name = table.name,
        columns = table.column_list(),
        select = select.join(", "),
        conflict = on_conflict(table, "o")
    )
}

/// Applies user events in one transaction; returns how many rows changed.
pub async fn apply_users(pool: &PgPool, events: &[UserEvent]) -> Result<u64, SinkError> {
    let latest = latest_by(events, |e| e.user.id, |e| e.version);
    if latest.is_empty() {
        return Ok(0);
    }
    let arrays = arrays(&tables::USERS, &latest, user_value);
    let sql = users_upsert(&unnest_source(&tables::USERS));
    let mut tx = pool.begin().await?;
    let result = bind_all(sqlx::query(AssertSqlSafe(sql)), arrays)
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
    let arrays = arrays(&tables::ORDERS, orders, order_value);
    let result = bind_all(
        sqlx::query(AssertSqlSafe(orders_upsert(&unnest_source(
            &tables::ORDERS,
        )))),
        arrays,
    )
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_described_column_comes_from_the_events() {
        use cdc_core::generator::{Generator, GeneratorConfig};
        let events: Vec<cdc_core::events::Event> = Generator::new(GeneratorConfig {
            users: 5,
            orders: 10,
            seed: 7,
            start: chrono::Utc::now(),
        })
        .collect();
        let users: Vec<&UserEvent> = events
            .iter()
            .filter_map(|e| match e {
                cdc_core::events::Event::User(u) => Some(u),
                cdc_core::events::Event::Order(_) => None,
            })
            .collect();
        let orders: Vec<&OrderEvent> = events
            .iter()
            .filter_map(|e| match e {
                cdc_core::events::Event::Order(o) => Some(o),
                cdc_core::events::Event::User(_) => None,
            })
            .collect();
        let length = |array: &Array| match array {
            Array::Uuid(v) => v.len(),
            Array::Text(v) => v.len(),
            Array::Int(v) => v.len(),
            Array::BigInt(v) => v.len(),
            Array::Date(v) => v.len(),
            Array::Timestamp(v) => v.len(),
            Array::OptionalTimestamp(v) => v.len(),
            Array::Numeric(v) => v.len(),
            Array::Bool(v) => v.len(),
        };
        for array in arrays(&tables::USERS, &users, user_value) {
            assert_eq!(length(&array), users.len(), "{array:?}");
        }
        for array in arrays(&tables::ORDERS, &orders, order_value) {
            assert_eq!(length(&array), orders.len(), "{array:?}");
        }
    }

    #[test]
    fn statements_follow_the_description() {
        assert_eq!(
            users_upsert(&unnest_source(&tables::USERS)),
            "INSERT INTO users AS u (id, name, email, created_at, updated_at, deleted_at, version) \
             SELECT e.id, e.name, e.email, e.created_at, e.updated_at, e.deleted_at, e.version \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], \
             $5::timestamptz[], $6::timestamptz[], $7::int8[]) AS e(id, name, email, created_at, \
             updated_at, deleted_at, version) ON CONFLICT (id) DO UPDATE SET \
             name = EXCLUDED.name, email = EXCLUDED.email, created_at = EXCLUDED.created_at, \
             updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at, \
             version = EXCLUDED.version WHERE u.version < EXCLUDED.version"
        );
        let orders = orders_upsert(&unnest_source(&tables::ORDERS));
        assert!(
            orders.contains("JOIN users u ON u.id = e.user_id"),
            "{orders}"
        );
        assert!(orders.contains("$5::numeric[]"), "{orders}");
        assert!(
            orders.contains("COALESCE(e.deleted_at, u.deleted_at)"),
            "{orders}"
        );
    }

    #[test]
    fn latest_keeps_the_highest_version_per_key() {
        let events = [(1, 1), (2, 5), (1, 3), (2, 4), (1, 2)];
        let latest = latest_by(&events, |e| e.0, |e| e.1);
        assert_eq!(latest, vec![&(1, 3), &(2, 5)]);
    }
}
