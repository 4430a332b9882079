//! Comparing the two stores: PostgreSQL's `users` and `orders` read in one `REPEATABLE READ, READ
//! ONLY` transaction (one snapshot), Cassandra's `users`, `orders` and `orders_by_user` read in
//! full at the requested consistency (QUORUM or ALL), row by row. Both sides are read by the
//! tables' one description ([`cdc_core::tables`]); the expected `orders_by_user` is every `orders`
//! row keyed by `(user_id, id)`. Soft-deleted rows (`deleted_at` set) are rows like any other; a
//! hard-deleted row must be absent.
//!
//! Values are compared exactly (uuid, text, integers, dates; decimals by value, so `12.5` equals
//! `12.50`; NULL against a value is a difference) with one exception, the only representational
//! difference between the two stores: a Cassandra `timestamp` holds milliseconds while a
//! PostgreSQL `TIMESTAMPTZ` holds microseconds, so timestamps are compared after truncating both to
//! whole milliseconds (floor, also before 1970). PostgreSQL values are read as text and parsed
//! here, so a value at the edge of its type (`infinity`, a year past 9999, a date BC, a `NaN`
//! numeric) is reported, never a reason to fail.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cdc_core::tables::{self, ColumnType, Table};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::Consistency;
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp, CqlValue, Row as CqlRow};
use sqlx::{AssertSqlSafe, PgPool, Row as _};

use crate::cassandra::{token_slices, CassandraError, SCAN_SLICES};

/// Rows per Cassandra page: large pages for a full scan, small enough for a generous timeout.
const CASSANDRA_PAGE_SIZE: i32 = 5000;

/// Why the stores could not be compared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Cassandra: {0}")]
    Cassandra(Box<CassandraError>),
    #[error("invalid {what} name `{name}`: letters, digits and underscores only")]
    InvalidName { what: &'static str, name: String },
}

impl From<CassandraError> for CompareError {
    fn from(error: CassandraError) -> Self {
        Self::Cassandra(Box::new(error))
    }
}

impl From<scylla::errors::PrepareError> for CompareError {
    fn from(error: scylla::errors::PrepareError) -> Self {
        CassandraError::from(error).into()
    }
}

impl From<scylla::errors::ExecutionError> for CompareError {
    fn from(error: scylla::errors::ExecutionError) -> Self {
        CassandraError::from(error).into()
    }
}

/// A column value in the form both stores are compared in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Value {
    Null,
    Uuid(uuid::Uuid),
    Text(String),
    /// int and bigint.
    Int(i64),
    Bool(bool),
    /// Compared by value: 12.5 == 12.50.
    Decimal(Decimal),
    /// Days since 1970-01-01.
    Date(i64),
    /// Whole milliseconds since the Unix epoch (floor): Cassandra's precision.
    Timestamp(i64),
    /// Microseconds since the Unix epoch: PostgreSQL's precision, for comparing PostgreSQL with
    /// another exact source (a model of the events, in tests). Never equal to a [`Value::Timestamp`].
    TimestampMicros(i64),
    /// A value outside what the other store can hold (`infinity`, `NaN`, a decimal beyond 28
    /// digits): it never equals a value of the other side, so it always shows as a difference.
    Unrepresentable(String),
}

impl Value {
    /// A PostgreSQL timestamp, truncated to the millisecond (floor).
    pub fn timestamp(at: DateTime<Utc>) -> Self {
        Self::Timestamp(at.timestamp_millis())
    }

    pub fn date(date: NaiveDate) -> Self {
        Self::Date(i64::from(date.to_epoch_days()))
    }

    pub fn cql_timestamp(at: CqlTimestamp) -> Self {
        Self::Timestamp(at.0)
    }

    pub fn cql_date(date: CqlDate) -> Self {
        // CQL dates count days from 2^31 days before the epoch.
        Self::Date(i64::from(date.0) - (1_i64 << 31))
    }

    /// A Cassandra decimal: unscaled value as signed big-endian bytes, and its scale.
    pub fn cql_decimal(decimal: &CqlDecimal) -> Self {
        let (bytes, scale) = decimal.as_signed_be_bytes_slice_and_exponent();
        match decimal_from_parts(bytes, scale) {
            Some(value) => Self::Decimal(value),
            None => Self::Unrepresentable(format!(
                "decimal with unscaled bytes {} and scale {scale}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )),
        }
    }

    /// A Cassandra cell of a column of type `ty`.
    pub fn from_cql(ty: ColumnType, value: Option<CqlValue>) -> Self {
        let Some(value) = value else {
            return Self::Null;
        };
        match (ty, value) {
            (_, CqlValue::Empty) => Self::Null,
            (ColumnType::Uuid, CqlValue::Uuid(u)) => Self::Uuid(u),
            (ColumnType::Text, CqlValue::Text(t) | CqlValue::Ascii(t)) => Self::Text(t),
            (ColumnType::Int, CqlValue::Int(n)) => Self::Int(i64::from(n)),
            (ColumnType::BigInt, CqlValue::BigInt(n)) => Self::Int(n),
            (ColumnType::Bool, CqlValue::Boolean(b)) => Self::Bool(b),
            (ColumnType::Date, CqlValue::Date(d)) => Self::cql_date(d),
            (ColumnType::TimestampTz | ColumnType::Timestamp, CqlValue::Timestamp(t)) => {
                Self::cql_timestamp(t)
            }
            (ColumnType::Numeric { .. }, CqlValue::Decimal(d)) => Self::cql_decimal(&d),
            (ty, other) => Self::Unrepresentable(format!("{other:?} in a {} column", ty.cql())),
        }
    }

    /// A PostgreSQL value of type `ty` in its text form (`DateStyle` ISO, time zone UTC), with
    /// timestamps at PostgreSQL's full precision ([`Value::TimestampMicros`]).
    pub fn from_pg_text_exact(ty: ColumnType, text: Option<&str>) -> Self {
        match (ty, text) {
            (ColumnType::TimestampTz | ColumnType::Timestamp, Some(text)) => pg_timestamp(text)
                .map_or_else(
                    || Self::Unrepresentable(format!("{} {text}", ty.pg())),
                    |at| Self::TimestampMicros(at.timestamp_micros()),
                ),
            _ => Self::from_pg_text(ty, text),
        }
    }

    /// A PostgreSQL value of type `ty` in its text form (`DateStyle` ISO, time zone UTC).
    pub fn from_pg_text(ty: ColumnType, text: Option<&str>) -> Self {
        let Some(text) = text else {
            return Self::Null;
        };
        let unrepresentable = || Self::Unrepresentable(format!("{} {text}", ty.pg()));
        match ty {
            ColumnType::Uuid => text.parse().map_or_else(|_| unrepresentable(), Self::Uuid),
            ColumnType::Text => Self::Text(text.to_owned()),
            ColumnType::Int | ColumnType::BigInt => {
                text.parse().map_or_else(|_| unrepresentable(), Self::Int)
            }
            ColumnType::Bool => match text {
                "t" | "true" => Self::Bool(true),
                "f" | "false" => Self::Bool(false),
                _ => unrepresentable(),
            },
            ColumnType::Numeric { .. } => {
                Decimal::from_str(text).map_or_else(|_| unrepresentable(), Self::Decimal)
            }
            ColumnType::Date => pg_date(text).map_or_else(unrepresentable, Self::date),
            ColumnType::TimestampTz | ColumnType::Timestamp => {
                pg_timestamp(text).map_or_else(unrepresentable, Self::timestamp)
            }
        }
    }
}

/// A year in PostgreSQL's text form: `2026`, `10000`, or `44 BC` (year 1 BC is year 0).
fn pg_year(year: &str, bc: bool) -> Option<i32> {
    let year: i32 = year.parse().ok()?;
    Some(if bc { 1 - year } else { year })
}

/// `YYYY-MM-DD[ BC]`; `None` for `infinity`, `-infinity` and anything chrono cannot hold.
fn pg_date(text: &str) -> Option<NaiveDate> {
    let (date, bc) = match text.strip_suffix(" BC") {
        Some(date) => (date, true),
        None => (text, false),
    };
    let mut parts = date.rsplitn(3, '-');
    let day = parts.next()?.parse().ok()?;
    let month = parts.next()?.parse().ok()?;
    NaiveDate::from_ymd_opt(pg_year(parts.next()?, bc)?, month, day)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+00][ BC]` in UTC; `None` for `infinity`, `-infinity` and
/// anything chrono cannot hold.
fn pg_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(text) => (text, true),
        None => (text, false),
    };
    let (date, time) = text.split_once(' ')?;
    let time = time
        .strip_suffix("+00")
        .or_else(|| time.strip_suffix("+00:00"))
        .unwrap_or(time);
    let date = pg_date(&if bc {
        format!("{date} BC")
    } else {
        date.to_owned()
    })?;
    let time = chrono::NaiveTime::parse_from_str(time, "%H:%M:%S%.f").ok()?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("NULL"),
            Self::Uuid(id) => write!(f, "{id}"),
            Self::Text(text) => write!(f, "{text:?}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Decimal(d) => write!(f, "{d}"),
            Self::Date(days) => match i32::try_from(*days)
                .ok()
                .and_then(NaiveDate::from_epoch_days)
            {
                Some(date) => write!(f, "{date}"),
                None => write!(f, "day {days} after 1970-01-01"),
            },
            Self::Timestamp(ms) => match DateTime::from_timestamp_millis(*ms) {
                Some(at) => write!(f, "{}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
                None => write!(f, "{ms} ms after the epoch"),
            },
            Self::TimestampMicros(us) => match DateTime::from_timestamp_micros(*us) {
                Some(at) => write!(f, "{}", at.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
                None => write!(f, "{us} µs after the epoch"),
            },
            Self::Unrepresentable(what) => f.write_str(what),
        }
    }
}

/// Builds a `Decimal` from a signed big-endian unscaled value and a scale, if it fits
/// (96-bit mantissa, scale 0..=28).
fn decimal_from_parts(bytes: &[u8], scale: i32) -> Option<Decimal> {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let sign_byte = if negative { 0xff } else { 0x00 };
    // Leading sign-extension bytes carry no value (the encoding need not be minimal).
    let significant = bytes
        .iter()
        .position(|&b| b != sign_byte)
        .map_or(&bytes[bytes.len()..], |i| &bytes[i..]);
    if significant.len() > 15 {
        return None;
    }
    let mut unscaled: i128 = if negative { -1 } else { 0 };
    for &byte in significant {
        unscaled = (unscaled << 8) | i128::from(byte);
    }
    let mut scale = i64::from(scale);
    while scale < 0 {
        unscaled = unscaled.checked_mul(10)?;
        scale += 1;
    }
    while scale > 28 && unscaled % 10 == 0 {
        unscaled /= 10;
        scale -= 1;
    }
    Decimal::try_from_i128_with_scale(unscaled, u32::try_from(scale).ok()?).ok()
}

/// A row's key: the key columns' names and values, ordered by the values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub values: Vec<Value>,
    pub names: &'static [&'static str],
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.names.iter().zip(&self.values).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// Non-key columns of a row, in the order of the table's description.
pub type Row = Vec<Value>;

/// A whole table as read: key → the other columns.
pub type Rows = BTreeMap<Key, Row>;

/// One column that differs between the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDifference {
    pub column: String,
    pub pg: Value,
    pub cassandra: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DifferenceKind {
    /// In PostgreSQL, not in Cassandra.
    Missing,
    /// In Cassandra, not in PostgreSQL.
    Extra,
    Different(Vec<ColumnDifference>),
}

/// One row that is not the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub key: String,
    pub kind: DifferenceKind,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DifferenceKind::Missing => {
                write!(f, "missing   {}: in PostgreSQL, not in Cassandra", self.key)
            }
            DifferenceKind::Extra => {
                write!(f, "extra     {}: in Cassandra, not in PostgreSQL", self.key)
            }
            DifferenceKind::Different(columns) => {
                write!(f, "different {}:", self.key)?;
                for c in columns {
                    write!(f, " {} pg={} cassandra={}", c.column, c.pg, c.cassandra)?;
                }
                Ok(())
            }
        }
    }
}

/// The comparison of one table. `checked` counts the keys found on either side, so
/// `checked = matching + missing + extra + different`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: &'static str,
    pub checked: u64,
    pub matching: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// How many rows differ in each column.
    pub different_columns: BTreeMap<String, u64>,
    /// Where the table's columns differ: a column PostgreSQL has that Cassandra's table lacks
    /// (or holds as another type), or one the pipeline cannot mirror.
    pub schema_problems: Vec<String>,
    /// The first differences in key order, at most `max_examples`.
    pub examples: Vec<Difference>,
}

impl TableReport {
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.extra == 0
            && self.different == 0
            && self.schema_problems.is_empty()
    }
}

impl fmt::Display for TableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: checked {}, matching {}, missing {}, extra {}, different {}",
            self.table, self.checked, self.matching, self.missing, self.extra, self.different
        )?;
        if !self.different_columns.is_empty() {
            let columns: Vec<String> = self
                .different_columns
                .iter()
                .map(|(column, n)| format!("{column} {n}"))
                .collect();
            write!(f, " ({})", columns.join(", "))?;
        }
        for problem in &self.schema_problems {
            write!(f, "\n  schema    {problem}")?;
        }
        for example in &self.examples {
            write!(f, "\n  {example}")?;
        }
        Ok(())
    }
}

/// The comparison of every table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub tables: Vec<TableReport>,
}

impl Report {
    /// No table has a missing, extra or different row.
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(TableReport::is_clean)
    }

    pub fn table(&self, name: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for table in &self.tables {
            writeln!(f, "{table}")?;
        }
        let drifted: u64 = self
            .tables
            .iter()
            .map(|t| t.missing + t.extra + t.different)
            .sum();
        let schema: usize = self.tables.iter().map(|t| t.schema_problems.len()).sum();
        match (drifted, schema) {
            (0, 0) => write!(f, "verify: Cassandra agrees with PostgreSQL"),
            (rows, 0) => write!(f, "verify: DRIFT in {rows} rows"),
            (rows, columns) => write!(f, "verify: DRIFT in {rows} rows and {columns} columns"),
        }
    }
}

/// Compares the rows PostgreSQL has (`pg`) with the rows Cassandra has (`cassandra`) of `table`,
/// walking both maps in key order.
pub fn compare_table(
    table: &Table,
    pg: &Rows,
    cassandra: &Rows,
    max_examples: usize,
) -> TableReport {
    compare_table_with(table, &[], pg, cassandra, max_examples)
}

/// [`compare_table`] for rows that also hold the columns `added` after the described ones.
pub fn compare_table_with(
    table: &Table,
    added: &[(String, ColumnType)],
    pg: &Rows,
    cassandra: &Rows,
    max_examples: usize,
) -> TableReport {
    let columns: Vec<&str> = table
        .values()
        .map(|c| c.name)
        .chain(added.iter().map(|(name, _)| name.as_str()))
        .collect();
    let mut report = TableReport {
        table: table.name,
        checked: 0,
        matching: 0,
        missing: 0,
        extra: 0,
        different: 0,
        different_columns: BTreeMap::new(),
        schema_problems: Vec::new(),
        examples: Vec::new(),
    };
    let note = |report: &mut TableReport, key: &Key, kind: DifferenceKind| {
        if report.examples.len() < max_examples {
            report.examples.push(Difference {
                key: key.to_string(),
                kind,
            });
        }
    };
    let mut left = pg.iter().peekable();
    let mut right = cassandra.iter().peekable();
    loop {
        let order = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((l, _)), Some((r, _))) => l.cmp(r),
        };
        report.checked += 1;
        match order {
            std::cmp::Ordering::Less => {
                if let Some((key, _)) = left.next() {
                    report.missing += 1;
                    note(&mut report, key, DifferenceKind::Missing);
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((key, _)) = right.next() {
                    report.extra += 1;
                    note(&mut report, key, DifferenceKind::Extra);
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((key, expected)), Some((_, actual))) = (left.next(), right.next()) {
                    let differing = differing_columns(&columns, expected, actual);
                    if differing.is_empty() {
                        report.matching += 1;
                    } else {
                        report.different += 1;
                        for c in &differing {
                            *report
                                .different_columns
                                .entry(c.column.clone())
                                .or_default() += 1;
                        }
                        note(&mut report, key, DifferenceKind::Different(differing));
                    }
                }
            }
        }
    }
    report
}

fn differing_columns(columns: &[&str], pg: &[Value], cassandra: &[Value]) -> Vec<ColumnDifference> {
    let width = pg.len().max(cassandra.len());
    (0..width)
        .filter_map(|i| {
            let pg = pg.get(i).unwrap_or(&Value::Null);
            let cassandra = cassandra.get(i).unwrap_or(&Value::Null);
            // A value a store cannot hold never matches, not even itself.
            let same = pg == cassandra && !matches!(pg, Value::Unrepresentable(_));
            (!same).then(|| ColumnDifference {
                column: columns.get(i).copied().unwrap_or("?").to_owned(),
                pg: pg.clone(),
                cassandra: cassandra.clone(),
            })
        })
        .collect()
}

/// How [`compare`] reads.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub keyspace: String,
    /// QUORUM or ALL: a read that a majority (or every replica) answers.
    pub consistency: Consistency,
    /// Differences listed per table.
    pub max_examples: usize,
    pub pg_schema: String,
    /// Per Cassandra page.
    pub request_timeout: Duration,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            keyspace: "cdc_keyspace".to_owned(),
            consistency: Consistency::Quorum,
            max_examples: 10,
            pg_schema: "public".to_owned(),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Reads PostgreSQL in one snapshot and Cassandra in full, and compares every mirrored table —
/// every column PostgreSQL has, those added after the description included.
pub async fn compare(
    pool: &PgPool,
    session: &Session,
    opts: &CompareOptions,
) -> Result<Report, CompareError> {
    let schema = checked_name("PostgreSQL schema", &opts.pg_schema)?;
    let keyspace = checked_name("Cassandra keyspace", &opts.keyspace)?;
    let added = added_columns(pool, session, schema, keyspace).await?;
    let expected = read_postgres_with(pool, schema, &added).await?;
    tracing::info!(
        users = expected.get(tables::USERS.name).map_or(0, BTreeMap::len),
        orders = expected.get(tables::ORDERS.name).map_or(0, BTreeMap::len),
        "read the PostgreSQL snapshot"
    );
    let columns = |table: &Table| {
        added
            .get(tables::source_of_name(table.name))
            .and_then(|a| a.readable.get(table.name))
            .map_or(&[][..], Vec::as_slice)
    };
    let (users, orders, orders_by_user) = tokio::try_join!(
        read_cassandra_with(
            session,
            opts,
            keyspace,
            &tables::USERS,
            columns(&tables::USERS)
        ),
        read_cassandra_with(
            session,
            opts,
            keyspace,
            &tables::ORDERS,
            columns(&tables::ORDERS)
        ),
        read_cassandra_with(
            session,
            opts,
            keyspace,
            &tables::ORDERS_BY_USER,
            columns(&tables::ORDERS_BY_USER)
        ),
    )?;
    tracing::info!(
        users = users.len(),
        orders = orders.len(),
        orders_by_user = orders_by_user.len(),
        consistency = ?opts.consistency,
        "read Cassandra"
    );
    let n = opts.max_examples;
    let empty = Rows::new();
    let pg = |table: &Table| expected.get(table.name).unwrap_or(&empty);
    let report = |table: &'static Table, cassandra: &Rows| {
        let source = added.get(tables::source_of_name(table.name));
        let mut report = compare_table_with(
            table,
            source.map_or(&[][..], |a| a.pg.as_slice()),
            pg(table),
            cassandra,
            n,
        );
        if let Some(source) = source {
            report.schema_problems = source
                .problems
                .iter()
                .filter(|(mirrored, _)| mirrored.is_none_or(|m| m == table.name))
                .map(|(_, problem)| problem.clone())
                .collect();
        }
        report
    };
    Ok(Report {
        tables: vec![
            report(&tables::USERS, &users),
            report(&tables::ORDERS, &orders),
            report(&tables::ORDERS_BY_USER, &orders_by_user),
        ],
    })
}

/// The columns a captured table has in PostgreSQL beyond the description, and how Cassandra
/// holds them.
#[derive(Debug, Clone, Default)]
pub struct AddedColumns {
    /// Every added column PostgreSQL has that can be mirrored, in name order.
    pub pg: Vec<(String, ColumnType)>,
    /// The same list per mirrored table, as read from Cassandra: a column the table lacks (or
    /// holds as another type) is read as NULL.
    pub readable: BTreeMap<&'static str, Vec<(String, Option<ColumnType>)>>,
    /// Problems found, with the mirrored table they concern (`None`: every one).
    pub problems: Vec<(Option<&'static str>, String)>,
}

/// The added columns of each captured table (by name), compared with Cassandra's tables.
pub async fn added_columns(
    pool: &PgPool,
    session: &Session,
    schema: &str,
    keyspace: &str,
) -> Result<BTreeMap<&'static str, AddedColumns>, CompareError> {
    let mut found = BTreeMap::new();
    for table in tables::CAPTURED {
        let mut added = AddedColumns::default();
        let pg = crate::columns::pg_columns(pool, schema, table.name).await?;
        for (name, declared) in pg.into_iter().filter(|(n, _)| table.column(n).is_none()) {
            match declared {
                Ok(ty) => added.pg.push((name, ty)),
                Err(kind) => added.problems.push((
                    None,
                    format!("column {name} ({kind}): a type cdcconsumer cannot mirror"),
                )),
            }
        }
        for mirrored in tables::mirrors_of(table) {
            let cassandra = cassandra_columns(session, keyspace, mirrored.name).await?;
            for (name, ty) in &added.pg {
                match cassandra.get(name) {
                    Some(cql) if cql == ty.cql() => {}
                    Some(cql) => added.problems.push((
                        Some(mirrored.name),
                        format!(
                            "column {name}: {} in PostgreSQL, {cql} in Cassandra",
                            ty.name()
                        ),
                    )),
                    None => added.problems.push((
                        Some(mirrored.name),
                        format!("column {name} ({}): not in Cassandra", ty.name()),
                    )),
                }
            }
            let readable = added
                .pg
                .iter()
                .map(|(name, ty)| {
                    let held = cassandra.get(name).is_some_and(|cql| cql == ty.cql());
                    (name.clone(), held.then_some(*ty))
                })
                .collect();
            added.readable.insert(mirrored.name, readable);
        }
        found.insert(table.name, added);
    }
    Ok(found)
}

/// Column name → CQL type of a Cassandra table.
async fn cassandra_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<BTreeMap<String, String>, CompareError> {
    let result = session
        .query_unpaged(
            "SELECT column_name, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await?;
    let read = |e: String| CompareError::from(CassandraError::Read(e));
    let rows = result.into_rows_result().map_err(|e| read(e.to_string()))?;
    let mut found = BTreeMap::new();
    for row in rows
        .rows::<(String, String)>()
        .map_err(|e| read(e.to_string()))?
    {
        let (name, ty) = row.map_err(|e| read(e.to_string()))?;
        found.insert(name, ty);
    }
    Ok(found)
}

/// Schema and keyspace names go into statement text, so only plain identifiers are accepted.
pub fn checked_name<'a>(what: &'static str, name: &'a str) -> Result<&'a str, CompareError> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48;
    if plain {
        Ok(name)
    } else {
        Err(CompareError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

/// Splits a row (every column of `table`, in order) into its key and the other columns.
pub fn keyed(table: &Table, row: Vec<Value>) -> (Key, Row) {
    let mut key = Vec::with_capacity(table.key.len());
    let mut values = Vec::with_capacity(row.len());
    for (column, value) in table.columns.iter().zip(row) {
        if table.key.contains(&column.name) {
            key.push((column.name, value));
        } else {
            values.push(value);
        }
    }
    // Key values in key order, whatever the column order.
    key.sort_by_key(|(name, _)| table.key.iter().position(|k| k == name));
    (
        Key {
            values: key.into_iter().map(|(_, v)| v).collect(),
            names: table.key,
        },
        values,
    )
}

/// The value of column `name` in a row of `table` as [`keyed`] splits it (key columns left out).
pub fn value_of<'a>(table: &Table, row: &'a [Value], name: &str) -> Option<&'a Value> {
    table
        .values()
        .position(|c| c.name == name)
        .and_then(|at| row.get(at))
}

/// An `orders` row (every column, in order) as the `orders_by_user` row Cassandra should have.
pub fn orders_by_user_row(orders_row: &[Value]) -> Vec<Value> {
    tables::orders_by_user_row(orders_row, || Value::Null)
}

/// A read-only transaction on one snapshot, with timestamps printed in UTC and ISO format (as
/// [`Value::from_pg_text`] reads them).
pub async fn snapshot(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    sqlx::query("SET LOCAL TimeZone = 'UTC'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL DateStyle = 'ISO'")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The rows of the captured `table` in `schema` (those whose key is in `ids`, or all), every
/// column read as text and parsed ([`Value::from_pg_text`], or with full timestamp precision when
/// `exact`).
pub async fn read_pg_table(
    connection: &mut sqlx::PgConnection,
    schema: &str,
    table: &Table,
    ids: Option<&[uuid::Uuid]>,
    exact: bool,
) -> Result<Rows, sqlx::Error> {
    read_pg_table_with(connection, schema, table, &[], ids, exact).await
}

/// [`read_pg_table`], with the columns `added` after the described ones at the end of each row.
pub async fn read_pg_table_with(
    connection: &mut sqlx::PgConnection,
    schema: &str,
    table: &Table,
    added: &[(String, ColumnType)],
    ids: Option<&[uuid::Uuid]>,
    exact: bool,
) -> Result<Rows, sqlx::Error> {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{}::text", c.name))
        .chain(added.iter().map(|(name, _)| format!("{name}::text")))
        .collect();
    let key = table.key.first().copied().unwrap_or("id");
    let filter = if ids.is_some() {
        format!(" WHERE {key} = ANY($1)")
    } else {
        String::new()
    };
    let mut query = sqlx::query(AssertSqlSafe(format!(
        "SELECT {} FROM {schema}.{}{filter}",
        columns.join(", "),
        table.name
    )));
    if let Some(ids) = ids {
        query = query.bind(ids.to_vec());
    }
    let mut rows = Rows::new();
    let types: Vec<ColumnType> = table
        .columns
        .iter()
        .map(|c| c.ty)
        .chain(added.iter().map(|(_, ty)| *ty))
        .collect();
    for row in query.fetch_all(connection).await? {
        let mut values = Vec::with_capacity(types.len());
        for (at, ty) in types.iter().enumerate() {
            let text: Option<String> = row.try_get(at)?;
            values.push(if exact {
                Value::from_pg_text_exact(*ty, text.as_deref())
            } else {
                Value::from_pg_text(*ty, text.as_deref())
            });
        }
        let added_values = values.split_off(table.columns.len());
        let (key, mut values) = keyed(table, values);
        values.extend(added_values);
        rows.insert(key, values);
    }
    Ok(rows)
}

/// The `orders_by_user` rows `orders` rows imply (columns added after the described ones kept
/// at the end).
pub fn expected_orders_by_user(orders: &Rows) -> Rows {
    let described = tables::ORDERS.values().count();
    orders
        .iter()
        .map(|(key, row)| {
            let mut whole = key.values.clone();
            whole.extend(row.iter().take(described).cloned());
            let (key, mut values) = keyed(&tables::ORDERS_BY_USER, orders_by_user_row(&whole));
            values.extend(row.iter().skip(described).cloned());
            (key, values)
        })
        .collect()
}

/// Every captured table of `schema` in one snapshot, plus the expected `orders_by_user`, by
/// mirrored table name.
pub async fn read_postgres(
    pool: &PgPool,
    schema: &str,
) -> Result<BTreeMap<&'static str, Rows>, CompareError> {
    read_postgres_with(pool, schema, &BTreeMap::new()).await
}

/// [`read_postgres`], with each captured table's added columns.
async fn read_postgres_with(
    pool: &PgPool,
    schema: &str,
    added: &BTreeMap<&'static str, AddedColumns>,
) -> Result<BTreeMap<&'static str, Rows>, CompareError> {
    let mut tx = snapshot(pool).await?;
    let mut found = BTreeMap::new();
    for table in tables::CAPTURED {
        let columns = added.get(table.name).map_or(&[][..], |a| a.pg.as_slice());
        let rows = read_pg_table_with(&mut tx, schema, table, columns, None, false).await?;
        if table.name == tables::ORDERS.name {
            found.insert(tables::ORDERS_BY_USER.name, expected_orders_by_user(&rows));
        }
        found.insert(table.name, rows);
    }
    tx.commit().await?;
    Ok(found)
}

/// Reads a whole mirrored table page by page at the requested consistency, one token range after
/// another (see [`token_slices`]) so that no read walks past more tombstones than Cassandra
/// allows.
pub async fn read_cassandra(
    session: &Session,
    opts: &CompareOptions,
    keyspace: &str,
    table: &Table,
) -> Result<Rows, CompareError> {
    read_cassandra_with(session, opts, keyspace, table, &[]).await
}

/// [`read_cassandra`], with the columns `added` after the described ones at the end of each row
/// (NULL for one the table does not hold).
pub async fn read_cassandra_with(
    session: &Session,
    opts: &CompareOptions,
    keyspace: &str,
    table: &Table,
    added: &[(String, Option<ColumnType>)],
) -> Result<Rows, CompareError> {
    let partition_key = table.key.first().copied().unwrap_or("id");
    let mut columns = table.column_list();
    for (name, _) in added.iter().filter(|(_, ty)| ty.is_some()) {
        columns.push_str(", ");
        columns.push_str(name);
    }
    let cql = format!(
        "SELECT {columns} FROM {keyspace}.{} WHERE token({partition_key}) >= ? AND token({partition_key}) <= ?",
        table.name
    );
    let mut statement = session.prepare(cql.as_str()).await?;
    statement.set_consistency(opts.consistency);
    statement.set_request_timeout(Some(opts.request_timeout));
    statement.set_page_size(CASSANDRA_PAGE_SIZE);
    statement.set_is_idempotent(true);
    let read_error = |error: String| CassandraError::Read(format!("{cql}: {error}"));
    let mut rows = Rows::new();
    for slice in token_slices(SCAN_SLICES) {
        let mut paging = PagingState::start();
        loop {
            let (result, next) = session
                .execute_single_page(&statement, slice, paging)
                .await?;
            let result = result
                .into_rows_result()
                .map_err(|e| read_error(e.to_string()))?;
            for row in result
                .rows::<CqlRow>()
                .map_err(|e| read_error(e.to_string()))?
            {
                let row = row.map_err(|e| read_error(e.to_string()))?;
                let mut cells = row.columns.into_iter();
                let values = table
                    .columns
                    .iter()
                    .zip(cells.by_ref())
                    .map(|(column, value)| Value::from_cql(column.ty, value))
                    .collect();
                let (key, mut values) = keyed(table, values);
                for (_, ty) in added {
                    values.push(match ty {
                        Some(ty) => Value::from_cql(*ty, cells.next().flatten()),
                        None => Value::Null,
                    });
                }
                rows.insert(key, values);
            }
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => break,
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> Key {
        Key {
            values: vec![Value::Uuid(Uuid::from_u128(n))],
            names: tables::USERS.key,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn user(name: &str, updated: &str) -> Row {
        vec![
            Value::Text(name.to_owned()),
            Value::Text(format!("{name}@example.com")),
            Value::timestamp(at("2026-11-24T10:00:00.123456Z")),
            Value::timestamp(at(updated)),
            Value::Null,
            Value::Int(1),
        ]
    }

    fn users(rows: &[(u128, Row)]) -> Rows {
        rows.iter().map(|(n, row)| (id(*n), row.clone())).collect()
    }

    #[test]
    fn identical_tables_are_clean() {
        let pg = users(&[
            (1, user("ada", "2026-11-24T10:00:01Z")),
            (2, user("bob", "2026-11-24T10:00:02Z")),
        ]);
        let report = compare_table(&tables::USERS, &pg, &pg.clone(), 5);
        assert!(report.is_clean(), "{report}");
        assert_eq!((report.checked, report.matching), (2, 2));
        assert!(report.examples.is_empty());
    }

    #[test]
    fn counts_missing_extra_and_different_rows_in_key_order() {
        let pg = users(&[
            (1, user("ada", "2026-11-24T10:00:01Z")),
            (2, user("bob", "2026-11-24T10:00:02Z")),
            (3, user("cy", "2026-11-24T10:00:03Z")),
        ]);
        let cassandra = users(&[
            (2, user("bob", "2026-11-24T10:00:02Z")),
            (3, user("cyd", "2026-11-24T10:00:04Z")),
            (4, user("dee", "2026-11-24T10:00:05Z")),
        ]);
        let report = compare_table(&tables::USERS, &pg, &cassandra, 10);
        assert!(!report.is_clean());
        assert_eq!(report.checked, 4);
        assert_eq!(report.matching, 1);
        assert_eq!(report.missing, 1);
        assert_eq!(report.extra, 1);
        assert_eq!(report.different, 1);
        assert_eq!(
            report.different_columns,
            BTreeMap::from([
                ("email".to_owned(), 1),
                ("name".to_owned(), 1),
                ("updated_at".to_owned(), 1)
            ])
        );
        let kinds: Vec<(String, &DifferenceKind)> = report
            .examples
            .iter()
            .map(|d| (d.key.clone(), &d.kind))
            .collect();
        assert_eq!(kinds[0], (id(1).to_string(), &DifferenceKind::Missing));
        assert_eq!(kinds[2], (id(4).to_string(), &DifferenceKind::Extra));
        assert!(kinds[0].0.starts_with("id="), "{}", kinds[0].0);
        let DifferenceKind::Different(columns) = kinds[1].1 else {
            panic!("{:?}", kinds[1]);
        };
        assert_eq!(kinds[1].0, id(3).to_string());
        assert_eq!(columns[0].column, "name");
        assert_eq!(columns[0].pg, Value::Text("cy".to_owned()));
        assert_eq!(columns[0].cassandra, Value::Text("cyd".to_owned()));
        let text = report.to_string();
        assert!(text.contains("name pg=\"cy\" cassandra=\"cyd\""), "{text}");
        assert!(
            text.contains(
                "updated_at pg=2026-11-24T10:00:03.000Z cassandra=2026-11-24T10:00:04.000Z"
            ),
            "{text}"
        );
    }

    #[test]
    fn examples_are_capped_but_counts_are_not() {
        let pg = users(
            &(0..20)
                .map(|n| (n, user("x", "2026-11-24T10:00:00Z")))
                .collect::<Vec<_>>(),
        );
        let report = compare_table(&tables::USERS, &pg, &Rows::new(), 3);
        assert_eq!(report.missing, 20);
        assert_eq!(report.examples.len(), 3);
        let report = compare_table(&tables::USERS, &Rows::new(), &pg, 0);
        assert_eq!(report.extra, 20);
        assert!(report.examples.is_empty());
    }

    #[test]
    fn null_against_a_value_is_a_difference() {
        let mut deleted = user("ada", "2026-11-24T10:00:01Z");
        deleted[4] = Value::timestamp(at("2026-11-24T11:00:00Z"));
        let pg = users(&[(1, deleted)]);
        let cassandra = users(&[(1, user("ada", "2026-11-24T10:00:01Z"))]);
        let report = compare_table(&tables::USERS, &pg, &cassandra, 5);
        assert_eq!(report.different, 1);
        assert!(report
            .to_string()
            .contains("deleted_at pg=2026-11-24T11:00:00.000Z cassandra=NULL"));
    }

    #[test]
    fn timestamps_are_compared_in_whole_milliseconds() {
        let pg = Value::timestamp(at("2026-11-24T10:00:00.123456Z"));
        assert_eq!(pg, Value::cql_timestamp(CqlTimestamp(1_795_514_400_123)));
        // Below the millisecond: equal; a millisecond apart: different.
        assert_eq!(pg, Value::timestamp(at("2026-11-24T10:00:00.123999Z")));
        assert_eq!(pg, Value::timestamp(at("2026-11-24T10:00:00.123000Z")));
        assert_ne!(pg, Value::timestamp(at("2026-11-24T10:00:00.124000Z")));
        assert_ne!(pg, Value::timestamp(at("2026-11-24T10:00:00.122999Z")));
        // Floor also before 1970: -0.5 ms is in millisecond -1, as Cassandra stores it.
        assert_eq!(
            Value::timestamp(at("1969-12-31T23:59:59.999500Z")),
            Value::Timestamp(-1)
        );
    }

    #[test]
    fn postgres_text_values_parse_and_edge_values_never_fail() {
        let ts = ColumnType::TimestampTz;
        assert_eq!(
            Value::from_pg_text(ts, Some("2026-11-24 10:00:00.123456+00")),
            Value::timestamp(at("2026-11-24T10:00:00.123456Z"))
        );
        assert_eq!(
            Value::from_pg_text(ts, Some("2026-11-24 10:00:00+00")),
            Value::timestamp(at("2026-11-24T10:00:00Z"))
        );
        assert_eq!(
            Value::from_pg_text(ts, Some("10000-01-01 00:00:00+00")),
            Value::Timestamp(253_402_300_800_000)
        );
        assert_eq!(
            Value::from_pg_text(ts, Some("0001-01-01 00:00:00+00 BC")),
            Value::Timestamp(-62_167_219_200_000)
        );
        for edge in ["infinity", "-infinity"] {
            assert!(matches!(
                Value::from_pg_text(ts, Some(edge)),
                Value::Unrepresentable(_)
            ));
            assert!(matches!(
                Value::from_pg_text(ColumnType::Date, Some(edge)),
                Value::Unrepresentable(_)
            ));
        }
        assert_eq!(
            Value::from_pg_text(ColumnType::Date, Some("2026-11-24")),
            Value::Date(20_781)
        );
        assert_eq!(
            Value::from_pg_text(ColumnType::Date, Some("0044-03-15 BC")),
            Value::date(NaiveDate::from_ymd_opt(-43, 3, 15).unwrap_or_default())
        );
        let amount = ColumnType::Numeric { scale: 2 };
        assert_eq!(
            Value::from_pg_text(amount, Some("12.50")),
            Value::Decimal(Decimal::new(125, 1))
        );
        let nan = Value::from_pg_text(amount, Some("NaN"));
        assert!(matches!(nan, Value::Unrepresentable(_)), "{nan:?}");
        assert_eq!(
            Value::from_pg_text(ColumnType::Int, Some("-7")),
            Value::Int(-7)
        );
        assert_eq!(Value::from_pg_text(ColumnType::Text, None), Value::Null);
        // An unrepresentable value never matches, even against itself.
        assert_eq!(
            differing_columns(
                &["t"],
                std::slice::from_ref(&nan),
                std::slice::from_ref(&nan)
            )
            .len(),
            1
        );
    }

    #[test]
    fn decimals_are_compared_by_value() {
        let pg = Value::Decimal(Decimal::new(1250, 2)); // 12.50
        assert_eq!(pg, Value::Decimal(Decimal::new(125, 1))); // 12.5
        assert_ne!(pg, Value::Decimal(Decimal::new(1251, 2)));
        // Cassandra's encoding: 1250 = 0x04e2 at scale 2, 125 = 0x7d at scale 1.
        let cql = |bytes: &[u8], scale| {
            Value::cql_decimal(&CqlDecimal::from_signed_be_bytes_slice_and_exponent(
                bytes, scale,
            ))
        };
        assert_eq!(cql(&[0x04, 0xe2], 2), pg);
        assert_eq!(cql(&[0x7d], 1), pg);
        // Redundant sign bytes, negative values, negative scales, zero.
        assert_eq!(cql(&[0x00, 0x00, 0x04, 0xe2], 2), pg);
        assert_eq!(
            cql(&[0xfb, 0x1e], 2),
            Value::Decimal(Decimal::new(-1250, 2))
        );
        assert_eq!(
            cql(&[0xff, 0xff, 0xfb, 0x1e], 2),
            Value::Decimal(Decimal::new(-1250, 2))
        );
        assert_eq!(cql(&[0x0c], -2), Value::Decimal(Decimal::new(1200, 0)));
        assert_eq!(cql(&[], 0), Value::Decimal(Decimal::ZERO));
        assert_eq!(cql(&[0x00], 5), Value::Decimal(Decimal::ZERO));
        // Too large for rust_decimal: reported, never equal to a PostgreSQL value.
        let huge = cql(&[0x7f; 20], 2);
        assert!(matches!(huge, Value::Unrepresentable(_)), "{huge:?}");
        assert!(matches!(cql(&[0x01], 40), Value::Unrepresentable(_)));
        assert_eq!(cql(&[0x0a], 29), Value::Decimal(Decimal::new(1, 28)));
    }

    #[test]
    fn dates_agree_between_the_encodings() {
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
        assert_eq!(
            Value::date(date(1970, 1, 1)),
            Value::cql_date(CqlDate(1 << 31))
        );
        assert_eq!(
            Value::date(date(2026, 11, 24)),
            Value::cql_date(CqlDate((1 << 31) + 20_781))
        );
        assert_eq!(Value::date(date(2026, 11, 24)).to_string(), "2026-11-24");
        assert_eq!(
            Value::cql_date(CqlDate((1 << 31) - 1)).to_string(),
            "1969-12-31"
        );
    }

    #[test]
    fn orders_by_user_keys_and_rows_follow_the_orders_row() {
        let order: Vec<Value> = tables::ORDERS
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match c.name {
                "id" => Value::Uuid(Uuid::from_u128(7)),
                "user_id" => Value::Uuid(Uuid::from_u128(3)),
                _ => Value::Int(i64::try_from(i).unwrap_or_default()),
            })
            .collect();
        let (key, row) = keyed(&tables::ORDERS_BY_USER, orders_by_user_row(&order));
        assert_eq!(
            key.to_string(),
            format!(
                "user_id={} order_id={}",
                Uuid::from_u128(3),
                Uuid::from_u128(7)
            )
        );
        let (_, orders_row) = keyed(&tables::ORDERS, order);
        // orders keeps user_id among its values; orders_by_user has it in the key.
        assert_eq!(orders_row[1..], row[..]);
    }

    #[test]
    fn report_is_clean_only_when_every_table_is() {
        let pg = users(&[(1, user("ada", "2026-11-24T10:00:01Z"))]);
        let clean = compare_table(&tables::USERS, &pg, &pg.clone(), 5);
        let drift = compare_table(&tables::ORDERS, &Rows::new(), &pg, 5);
        let report = Report {
            tables: vec![clean.clone()],
        };
        assert!(report.is_clean());
        assert!(report
            .to_string()
            .ends_with("Cassandra agrees with PostgreSQL"));
        let report = Report {
            tables: vec![clean, drift],
        };
        assert!(!report.is_clean());
        let text = report.to_string();
        assert!(
            text.contains("orders: checked 1, matching 0, missing 0, extra 1, different 0"),
            "{text}"
        );
        assert!(text.ends_with("DRIFT in 1 rows"), "{text}");
    }

    #[test]
    fn only_plain_names_reach_statement_text() {
        assert!(checked_name("schema", "public").is_ok());
        assert!(checked_name("keyspace", "it_3f2a_x9").is_ok());
        for bad in ["", "1abc", "a.b", "a;DROP", "a b", "\"q\""] {
            assert!(checked_name("keyspace", bad).is_err(), "{bad}");
        }
    }
}
