//! Row readers: rows of the pipeline's tables as the verifier compares them
//! ([`cdcconsumer::verify::compare`]'s `Key`, `Row` and `Value`), read from PostgreSQL or Cassandra
//! by key, or whole, by the tables' one description ([`cdc_core::tables`]). Plus the comparison
//! of two row sets that names every difference.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use cdc_core::tables::{self, ColumnType, Table};
use cdcconsumer::handler::plan::decimal;
pub use cdcconsumer::verify::compare::expected_orders_by_user;
use cdcconsumer::verify::compare::{
    keyed, read_pg_table, snapshot, value_of, Key, Row, Rows, Value,
};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{CqlDate, CqlTimestamp, CqlValue, Row as CqlRow};
use sqlx::PgPool;
use uuid::Uuid;

/// How precisely PostgreSQL's timestamps are read: whole milliseconds to compare with Cassandra,
/// microseconds to compare with a model of the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Millis,
    Micros,
}

/// The rows of `table` in PostgreSQL whose key is in `ids` (every row when `ids` is `None`), in
/// one snapshot.
pub async fn pg_rows(
    pool: &PgPool,
    table: &Table,
    ids: Option<&[Uuid]>,
    precision: Precision,
) -> Result<Rows> {
    let mut tx = snapshot(pool).await?;
    let rows = read_pg_table(
        &mut tx,
        "public",
        table,
        ids,
        precision == Precision::Micros,
    )
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Reads of a keyspace at one consistency level.
#[derive(Debug)]
pub struct CassandraReader<'a> {
    pub session: &'a Session,
    pub keyspace: &'a str,
    pub consistency: Consistency,
}

impl<'a> CassandraReader<'a> {
    pub fn new(session: &'a Session, keyspace: &'a str, consistency: Consistency) -> Self {
        Self {
            session,
            keyspace,
            consistency,
        }
    }

    async fn prepare(&self, cql: String) -> Result<PreparedStatement> {
        let mut statement = self.session.prepare(cql).await?;
        statement.set_consistency(self.consistency);
        statement.set_is_idempotent(true);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        statement.set_page_size(5000);
        Ok(statement)
    }

    /// The rows of `table` in the partitions `partition_keys` (ids for users and orders, user ids
    /// for orders_by_user).
    pub async fn rows(&self, table: &Table, partition_keys: &[Uuid]) -> Result<Rows> {
        let partition_key = table.key.first().copied().unwrap_or("id");
        let statement = self
            .prepare(format!(
                "SELECT {} FROM {}.{} WHERE {partition_key} = ?",
                table.column_list(),
                self.keyspace,
                table.name
            ))
            .await?;
        let statement = &statement;
        let results: Vec<Result<Vec<CqlRow>>> = futures::stream::iter(partition_keys.iter())
            .map(|key| async move {
                let result = self
                    .session
                    .execute_unpaged(statement, (*key,))
                    .await?
                    .into_rows_result()?;
                Ok(result.rows::<CqlRow>()?.collect::<Result<Vec<_>, _>>()?)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut rows = Rows::new();
        for result in results {
            for row in result? {
                let (key, values) = self.convert(table, row.columns);
                rows.insert(key, values);
            }
        }
        Ok(rows)
    }

    fn convert(&self, table: &Table, columns: Vec<Option<CqlValue>>) -> (Key, Row) {
        let values = table
            .columns
            .iter()
            .zip(columns)
            .map(|(column, value)| Value::from_cql(column.ty, value))
            .collect();
        keyed(table, values)
    }

    /// Every row of `table`, each with the write time of its `version` cell.
    pub async fn scan(&self, table: &Table) -> Result<BTreeMap<Key, (Row, Option<i64>)>> {
        let statement = self
            .prepare(format!(
                "SELECT {}, WRITETIME(version) FROM {}.{}",
                table.column_list(),
                self.keyspace,
                table.name
            ))
            .await?;
        let rows: Vec<CqlRow> = self
            .session
            .execute_iter(statement, ())
            .await?
            .rows_stream::<CqlRow>()?
            .try_collect()
            .await?;
        let mut found = BTreeMap::new();
        for mut row in rows {
            let written = match row.columns.pop().flatten() {
                Some(CqlValue::BigInt(at)) => Some(at),
                _ => None,
            };
            let (key, values) = self.convert(table, row.columns);
            found.insert(key, (values, written));
        }
        Ok(found)
    }

    /// Rows in a table (orders_by_user counts CQL rows, not partitions).
    pub async fn count(&self, table: &Table) -> Result<u64> {
        Ok(u64::try_from(self.scan(table).await?.len())?)
    }

    /// Every mirrored table in full, with write times.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut tables = BTreeMap::new();
        for table in tables::MIRRORED {
            tables.insert(table.name, self.scan(table).await?);
        }
        Ok(Snapshot { tables })
    }
}

/// Everything a keyspace's mirrored tables hold, with write times.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub tables: BTreeMap<&'static str, BTreeMap<Key, (Row, Option<i64>)>>,
}

/// A line for every key missing, unexpected or different between `expected` and `actual`.
pub fn differences<V: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &BTreeMap<Key, V>,
    actual: &BTreeMap<Key, V>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (key, value) in expected {
        match actual.get(key) {
            None => found.push(format!("{what} {key} missing")),
            Some(other) if other != value => {
                found.push(format!("{what} {key}: expected {value:?}, found {other:?}"))
            }
            Some(_) => {}
        }
    }
    for key in actual.keys().filter(|k| !expected.contains_key(k)) {
        found.push(format!("{what} {key} not expected"));
    }
    found
}

/// Fails naming the first differences, if any.
pub fn ensure_no_differences(problems: &[String]) -> Result<()> {
    ensure!(
        problems.is_empty(),
        "{} differences; first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// A value as Cassandra stores it in a column of type `ty` (`None` for NULL, or for a value the
/// column cannot hold).
pub fn cql_value(ty: ColumnType, value: &Value) -> Option<CqlValue> {
    Some(match (ty, value) {
        (ColumnType::Uuid, Value::Uuid(u)) => CqlValue::Uuid(*u),
        (ColumnType::Text, Value::Text(t)) => CqlValue::Text(t.clone()),
        (ColumnType::Int, Value::Int(n)) => CqlValue::Int(i32::try_from(*n).ok()?),
        (ColumnType::BigInt, Value::Int(n)) => CqlValue::BigInt(*n),
        (ColumnType::Bool, Value::Bool(b)) => CqlValue::Boolean(*b),
        (ColumnType::Numeric { .. }, Value::Decimal(d)) => CqlValue::Decimal(decimal(d)),
        (ColumnType::Date, Value::Date(days)) => {
            CqlValue::Date(CqlDate(u32::try_from((1_i64 << 31) + days).ok()?))
        }
        (ColumnType::TimestampTz | ColumnType::Timestamp, Value::Timestamp(ms)) => {
            CqlValue::Timestamp(CqlTimestamp(*ms))
        }
        (ColumnType::TimestampTz | ColumnType::Timestamp, Value::TimestampMicros(us)) => {
            CqlValue::Timestamp(CqlTimestamp(us.div_euclid(1000)))
        }
        _ => return None,
    })
}

/// The key of a users or orders row.
pub fn id_key(table: &Table, id: Uuid) -> Key {
    Key {
        values: vec![Value::Uuid(id)],
        names: table.key,
    }
}

/// The value of column `name` in `row` of `table` (key columns excluded).
pub fn column<'a>(table: &Table, row: &'a [Value], name: &str) -> &'a Value {
    value_of(table, row, name).unwrap_or(&Value::Null)
}
