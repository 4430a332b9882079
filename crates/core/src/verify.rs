//! The verifier: proof that Cassandra agrees with PostgreSQL.
//!
//! Two steps, run after a scenario has finished:
//!
//! 1. [`wait_quiet`]: wait until nothing is in flight. Every consumer group has committed the end
//!    of every partition of its topics, the replication slot has confirmed a WAL position taken
//!    after that (so Debezium has put every change committed so far into Kafka), and the groups
//!    are at the end again (so the cdcconsumer has applied those changes too).
//! 2. [`compare`]: read `users` and `orders` from PostgreSQL in one `REPEATABLE READ, READ ONLY`
//!    transaction (one snapshot), read `users`, `orders` and `orders_by_user` from Cassandra in
//!    full at the requested consistency (QUORUM or ALL), and compare them row by row. The
//!    expected `orders_by_user` is every `orders` row keyed by `(user_id, id)`. Soft-deleted rows
//!    (`deleted_at` set) are rows like any other; a hard-deleted row must be absent.
//!
//! Values are compared exactly (uuid, text, int, bigint, date; decimals by value, so `12.5`
//! equals `12.50`; NULL against a value is a difference) with one exception, the only
//! representational difference between the two stores: a Cassandra `timestamp` holds
//! milliseconds while a PostgreSQL `TIMESTAMPTZ` holds microseconds, so timestamps are compared
//! after truncating both to whole milliseconds (floor, also before 1970).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::Consistency;
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp};
use scylla::DeserializeRow;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;
use uuid::Uuid;

use crate::cassandra::CassandraError;
use crate::pg::SinkError;
use crate::retry::Classify;

/// How often [`wait_quiet`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest single Kafka request while waiting (metadata, committed offsets, watermarks).
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows per Cassandra page: large pages for a full scan, small enough for a generous timeout.
const CASSANDRA_PAGE_SIZE: i32 = 5000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] SinkError),
    #[error("Cassandra: {0}")]
    Cassandra(Box<CassandraError>),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("replication slot `{0}` does not exist")]
    SlotMissing(String),
    #[error("topic `{0}` does not exist")]
    TopicMissing(String),
    #[error("invalid {what} name `{name}`: letters, digits and underscores only")]
    InvalidName { what: &'static str, name: String },
    #[error("pipeline not quiet after {waited:?}: {}", join(behind))]
    NotQuiet {
        waited: Duration,
        behind: Vec<Unquiet>,
    },
    #[error("waiting for Kafka failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

impl From<sqlx::Error> for VerifyError {
    fn from(error: sqlx::Error) -> Self {
        Self::Postgres(SinkError::Database(error))
    }
}

impl From<CassandraError> for VerifyError {
    fn from(error: CassandraError) -> Self {
        Self::Cassandra(Box::new(error))
    }
}

impl Classify for VerifyError {
    /// Lost connections, timeouts and a pipeline still catching up may pass; a missing slot or
    /// topic, a bad name or a client that cannot even be configured need a person.
    fn is_transient(&self) -> bool {
        match self {
            Self::Postgres(error) => error.is_transient(),
            Self::Cassandra(error) => error.is_transient(),
            Self::Kafka(error) => !matches!(
                error,
                KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
            ),
            Self::NotQuiet { .. } | Self::Blocking(_) => true,
            Self::SlotMissing(_) | Self::TopicMissing(_) | Self::InvalidName { .. } => false,
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------------
// Waiting until the pipeline is quiet
// ---------------------------------------------------------------------------------------------

/// A consumer group and the topics it consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTopics {
    pub group: String,
    pub topics: Vec<String>,
}

impl GroupTopics {
    pub fn new(group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        }
    }
}

/// What [`wait_quiet`] waits for. `ClientConfig`'s Debug output leaves out passwords.
#[derive(Debug, Clone)]
pub struct QuietOptions {
    /// Bootstrap servers and security settings; `group.id` is set per group.
    pub kafka: ClientConfig,
    pub groups: Vec<GroupTopics>,
    /// The Debezium replication slot; `None` skips the slot check.
    pub slot: Option<String>,
    /// For the whole wait, all steps together.
    pub timeout: Duration,
}

/// One thing that is not quiet yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unquiet {
    /// The slot has not confirmed the target WAL position.
    SlotBehind {
        slot: String,
        target: String,
        confirmed: Option<String>,
        /// Bytes of WAL between the confirmed position and the target (`None`: nothing confirmed).
        bytes: Option<i64>,
        active: bool,
    },
    /// A partition the group has not committed to its end.
    GroupLag {
        group: String,
        topic: String,
        partition: i32,
        committed: Option<i64>,
        end: i64,
    },
    /// The last look failed with an error that may pass.
    ProbeFailed(String),
}

impl fmt::Display for Unquiet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SlotBehind {
                slot,
                target,
                confirmed,
                bytes,
                active,
            } => {
                let state = if *active { "" } else { ", inactive" };
                match (confirmed, bytes) {
                    (Some(confirmed), Some(bytes)) => write!(
                        f,
                        "slot {slot} behind by {bytes} bytes (confirmed {confirmed}, \
                         target {target}{state})"
                    ),
                    _ => write!(
                        f,
                        "slot {slot} has confirmed nothing (target {target}{state})"
                    ),
                }
            }
            Self::GroupLag {
                group,
                topic,
                partition,
                committed,
                end,
            } => {
                let lag = partition_lag(*committed, 0, *end);
                match committed {
                    Some(committed) if committed > end => write!(
                        f,
                        "group {group} topic {topic} partition {partition} committed offset \
                         {committed} beyond the end {end}"
                    ),
                    Some(committed) => write!(
                        f,
                        "group {group} topic {topic} partition {partition} lag {lag} \
                         (committed {committed}, end {end})"
                    ),
                    None => write!(
                        f,
                        "group {group} topic {topic} partition {partition} lag {lag} \
                         (no committed offset, end {end})"
                    ),
                }
            }
            Self::ProbeFailed(error) => write!(f, "last check failed: {error}"),
        }
    }
}

/// The slot position [`wait_quiet`] waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPosition {
    pub slot: String,
    /// `pg_current_wal_lsn()` when the wait started.
    pub target: String,
    /// The slot's `confirmed_flush_lsn` once it had passed the target.
    pub confirmed: String,
}

/// What was found quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietReport {
    pub waited: Duration,
    pub slot: Option<SlotPosition>,
    /// Partitions found at their end, over all groups.
    pub partitions: usize,
}

impl fmt::Display for QuietReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quiet after {:.1}s: {} partitions committed to their end",
            self.waited.as_secs_f64(),
            self.partitions
        )?;
        if let Some(slot) = &self.slot {
            write!(
                f,
                ", slot {} confirmed {} (target {})",
                slot.slot, slot.confirmed, slot.target
            )?;
        }
        Ok(())
    }
}

/// The records of a partition a group has not consumed: everything after its committed offset,
/// or everything still in the partition (`low..end`) when it has committed nothing. A committed
/// offset beyond the end (a recreated topic) counts as not quiet too, since the group will reset.
fn partition_lag(committed: Option<i64>, low: i64, end: i64) -> i64 {
    match committed {
        Some(committed) if committed > end => 1,
        Some(committed) => end - committed,
        None => end - low.max(0),
    }
}

/// Waits until the pipeline is quiet (see the module documentation), polling every 250 ms.
///
/// The groups are checked before the WAL position is taken as well as after the slot passed it:
/// a consumer that writes into PostgreSQL (the `consumer` groups) must be done before the target
/// is taken, or its last writes could escape the wait.
pub async fn wait_quiet(pool: &PgPool, opts: &QuietOptions) -> Result<QuietReport, VerifyError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let probes = Arc::new(GroupProbes::new(opts)?);

    poll_until(started, deadline, || probes_at_end(&probes, deadline)).await?;
    let slot = match &opts.slot {
        Some(slot) => Some(wait_slot(pool, slot, started, deadline).await?),
        None => None,
    };
    let partitions = poll_until(started, deadline, || probes_at_end(&probes, deadline)).await?;
    let report = QuietReport {
        waited: started.elapsed(),
        slot,
        partitions,
    };
    tracing::info!(%report, "pipeline quiet");
    Ok(report)
}

/// One step of a poll: done with a value, or still waiting for the listed things.
type Poll<T> = Result<T, Vec<Unquiet>>;

/// Calls `check` every [`POLL_INTERVAL`] until it reports done or the deadline passes. Errors
/// that may pass are noted and looked at again; others end the wait.
async fn poll_until<T, F, Fut>(
    started: Instant,
    deadline: Instant,
    mut check: F,
) -> Result<T, VerifyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Poll<T>, VerifyError>>,
{
    loop {
        let behind = match check().await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(behind)) => behind,
            Err(error) if error.is_transient() => {
                tracing::debug!(error = %error, "quiet check failed, trying again");
                vec![Unquiet::ProbeFailed(error.to_string())]
            }
            Err(error) => return Err(error),
        };
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(VerifyError::NotQuiet {
                waited: started.elapsed(),
                behind,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Takes the current WAL position, then waits until `slot` has confirmed it.
async fn wait_slot(
    pool: &PgPool,
    slot: &str,
    started: Instant,
    deadline: Instant,
) -> Result<SlotPosition, VerifyError> {
    let (target,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    poll_until(started, deadline, || slot_position(pool, slot, &target)).await
}

async fn slot_position(
    pool: &PgPool,
    slot: &str,
    target: &str,
) -> Result<Poll<SlotPosition>, VerifyError> {
    let row: Option<(Option<String>, Option<i64>, bool)> = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text, \
                pg_wal_lsn_diff($2::pg_lsn, confirmed_flush_lsn)::bigint, \
                active \
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .bind(target)
    .fetch_optional(pool)
    .await?;
    let Some((confirmed, bytes, active)) = row else {
        return Err(VerifyError::SlotMissing(slot.to_owned()));
    };
    match (confirmed, bytes) {
        (Some(confirmed), Some(bytes)) if bytes <= 0 => Ok(Ok(SlotPosition {
            slot: slot.to_owned(),
            target: target.to_owned(),
            confirmed,
        })),
        (confirmed, bytes) => Ok(Err(vec![Unquiet::SlotBehind {
            slot: slot.to_owned(),
            target: target.to_owned(),
            confirmed,
            bytes,
            active,
        }])),
    }
}

/// One consumer per group, used only to read that group's committed offsets: it never
/// subscribes, so it never joins the group or disturbs its members.
struct GroupProbes {
    groups: Vec<(GroupTopics, BaseConsumer)>,
}

impl GroupProbes {
    fn new(opts: &QuietOptions) -> Result<Self, VerifyError> {
        let mut groups = Vec::with_capacity(opts.groups.len());
        for group in &opts.groups {
            let mut config = opts.kafka.clone();
            config
                .set("group.id", &group.group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
            groups.push((group.clone(), config.create()?));
        }
        Ok(Self { groups })
    }

    /// Blocking: librdkafka's metadata, committed-offset and watermark calls wait on the network.
    fn check(&self, deadline: Instant) -> Result<Poll<usize>, VerifyError> {
        let mut behind = Vec::new();
        let mut partitions = 0;
        for (group, consumer) in &self.groups {
            for topic in &group.topics {
                let timeout = deadline
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(100), KAFKA_REQUEST_TIMEOUT);
                let ids = topic_partitions(consumer, topic, timeout)?;
                let mut list = TopicPartitionList::new();
                for &partition in &ids {
                    list.add_partition(topic, partition);
                }
                let committed = consumer.committed_offsets(list, timeout)?;
                for &partition in &ids {
                    let committed = match committed.find_partition(topic, partition) {
                        Some(elem) => {
                            elem.error()?;
                            match elem.offset() {
                                Offset::Offset(offset) => Some(offset),
                                _ => None,
                            }
                        }
                        None => None,
                    };
                    let (low, end) = consumer.fetch_watermarks(topic, partition, timeout)?;
                    partitions += 1;
                    if partition_lag(committed, low, end) != 0 {
                        behind.push(Unquiet::GroupLag {
                            group: group.group.clone(),
                            topic: topic.clone(),
                            partition,
                            committed,
                            end,
                        });
                    }
                }
            }
        }
        Ok(if behind.is_empty() {
            Ok(partitions)
        } else {
            Err(behind)
        })
    }
}

async fn probes_at_end(
    probes: &Arc<GroupProbes>,
    deadline: Instant,
) -> Result<Poll<usize>, VerifyError> {
    let probes = Arc::clone(probes);
    tokio::task::spawn_blocking(move || probes.check(deadline)).await?
}

fn topic_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, VerifyError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(VerifyError::TopicMissing(topic.to_owned()));
    };
    match found.error() {
        None => Ok(found.partitions().iter().map(|p| p.id()).collect()),
        Some(error) => match RDKafkaErrorCode::from(error) {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                Err(VerifyError::TopicMissing(topic.to_owned()))
            }
            code => Err(VerifyError::Kafka(KafkaError::MetadataFetch(code))),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Normalized values and the row-by-row comparison
// ---------------------------------------------------------------------------------------------

/// A column value in the form both stores are compared in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    Null,
    Uuid(Uuid),
    Text(String),
    Int(i32),
    BigInt(i64),
    /// Compared by value: 12.5 == 12.50.
    Decimal(Decimal),
    /// Days since 1970-01-01.
    Date(i64),
    /// Whole milliseconds since the Unix epoch (floor): Cassandra's precision.
    Timestamp(i64),
    /// A Cassandra value this side cannot represent (a decimal beyond 28 digits, say). PostgreSQL
    /// values are never of this kind, so it always shows up as a difference.
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

    fn from_option<T>(value: Option<T>, f: impl FnOnce(T) -> Self) -> Self {
        value.map_or(Self::Null, f)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("NULL"),
            Self::Uuid(id) => write!(f, "{id}"),
            Self::Text(text) => write!(f, "{text:?}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::BigInt(n) => write!(f, "{n}"),
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

/// The key of a `users` or `orders` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(pub Uuid);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id={}", self.0)
    }
}

/// The key of an `orders_by_user` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserOrder {
    pub user_id: Uuid,
    pub order_id: Uuid,
}

impl fmt::Display for UserOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user_id={} order_id={}", self.user_id, self.order_id)
    }
}

/// Non-key columns of a row, in the order of the table's column list.
pub type Row = Vec<Value>;

pub const USERS_COLUMNS: &[&str] = &[
    "name",
    "email",
    "created_at",
    "updated_at",
    "deleted_at",
    "version",
];
pub const ORDERS_COLUMNS: &[&str] = &[
    "user_id",
    "product",
    "quantity",
    "amount",
    "status",
    "order_date",
    "created_at",
    "updated_at",
    "deleted_at",
    "version",
];
/// `orders_by_user` holds the orders columns except `user_id`, which is part of its key.
pub const ORDERS_BY_USER_COLUMNS: &[&str] = &[
    "product",
    "quantity",
    "amount",
    "status",
    "order_date",
    "created_at",
    "updated_at",
    "deleted_at",
    "version",
];

/// One column that differs between the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDifference {
    pub column: &'static str,
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
    pub different_columns: BTreeMap<&'static str, u64>,
    /// The first differences in key order, at most `max_examples`.
    pub examples: Vec<Difference>,
}

impl TableReport {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
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
        if drifted == 0 {
            write!(f, "verify: Cassandra agrees with PostgreSQL")
        } else {
            write!(f, "verify: DRIFT in {drifted} rows")
        }
    }
}

/// Compares the rows PostgreSQL has (`pg`) with the rows Cassandra has (`cassandra`), walking
/// both maps in key order. `columns` names the values of each row.
pub fn compare_table<K: Ord + fmt::Display>(
    table: &'static str,
    columns: &[&'static str],
    pg: &BTreeMap<K, Row>,
    cassandra: &BTreeMap<K, Row>,
    max_examples: usize,
) -> TableReport {
    let mut report = TableReport {
        table,
        checked: 0,
        matching: 0,
        missing: 0,
        extra: 0,
        different: 0,
        different_columns: BTreeMap::new(),
        examples: Vec::new(),
    };
    let note = |report: &mut TableReport, key: &K, kind: DifferenceKind| {
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
                    let differing = differing_columns(columns, expected, actual);
                    if differing.is_empty() {
                        report.matching += 1;
                    } else {
                        report.different += 1;
                        for c in &differing {
                            *report.different_columns.entry(c.column).or_default() += 1;
                        }
                        note(&mut report, key, DifferenceKind::Different(differing));
                    }
                }
            }
        }
    }
    report
}

fn differing_columns(
    columns: &[&'static str],
    pg: &[Value],
    cassandra: &[Value],
) -> Vec<ColumnDifference> {
    let width = pg.len().max(cassandra.len());
    (0..width)
        .filter_map(|i| {
            let pg = pg.get(i).unwrap_or(&Value::Null);
            let cassandra = cassandra.get(i).unwrap_or(&Value::Null);
            (pg != cassandra).then(|| ColumnDifference {
                column: columns.get(i).copied().unwrap_or("?"),
                pg: pg.clone(),
                cassandra: cassandra.clone(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading both stores
// ---------------------------------------------------------------------------------------------

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

/// Expected (PostgreSQL) rows of every Cassandra table.
#[derive(Debug, Default)]
struct Tables {
    users: BTreeMap<Id, Row>,
    orders: BTreeMap<Id, Row>,
    orders_by_user: BTreeMap<UserOrder, Row>,
}

/// Reads PostgreSQL in one snapshot and Cassandra in full, and compares every table.
pub async fn compare(
    pool: &PgPool,
    session: &Session,
    opts: &CompareOptions,
) -> Result<Report, VerifyError> {
    let schema = checked_name("PostgreSQL schema", &opts.pg_schema)?;
    let keyspace = checked_name("Cassandra keyspace", &opts.keyspace)?;
    let pg = read_postgres(pool, schema).await?;
    tracing::info!(
        users = pg.users.len(),
        orders = pg.orders.len(),
        "read the PostgreSQL snapshot"
    );
    let (users, orders, orders_by_user) = tokio::try_join!(
        read_cassandra(
            session,
            opts,
            format!(
                "SELECT id, name, email, created_at, updated_at, deleted_at, version \
                 FROM {keyspace}.users WHERE {IN_SLICE}",
                IN_SLICE = in_slice("id")
            ),
            |row: CassandraUser| (Id(row.id), row.values()),
        ),
        read_cassandra(
            session,
            opts,
            format!(
                "SELECT id, user_id, product, quantity, amount, status, order_date, \
                        created_at, updated_at, deleted_at, version \
                 FROM {keyspace}.orders WHERE {IN_SLICE}",
                IN_SLICE = in_slice("id")
            ),
            |row: CassandraOrder| (Id(row.id), row.values()),
        ),
        read_cassandra(
            session,
            opts,
            format!(
                "SELECT user_id, order_id, product, quantity, amount, status, order_date, \
                        created_at, updated_at, deleted_at, version \
                 FROM {keyspace}.orders_by_user WHERE {IN_SLICE}",
                IN_SLICE = in_slice("user_id")
            ),
            |row: CassandraOrderByUser| row.keyed(),
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
    Ok(Report {
        tables: vec![
            compare_table("users", USERS_COLUMNS, &pg.users, &users, n),
            compare_table("orders", ORDERS_COLUMNS, &pg.orders, &orders, n),
            compare_table(
                "orders_by_user",
                ORDERS_BY_USER_COLUMNS,
                &pg.orders_by_user,
                &orders_by_user,
                n,
            ),
        ],
    })
}

/// Schema and keyspace names go into statement text, so only plain identifiers are accepted.
fn checked_name<'a>(what: &'static str, name: &'a str) -> Result<&'a str, VerifyError> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48;
    if plain {
        Ok(name)
    } else {
        Err(VerifyError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

type PgUser = (
    Uuid,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    i64,
);

type PgOrder = (
    Uuid,
    Uuid,
    String,
    i32,
    Decimal,
    String,
    NaiveDate,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    i64,
);

async fn read_postgres(pool: &PgPool, schema: &str) -> Result<Tables, VerifyError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let users: Vec<PgUser> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, name, email, created_at, updated_at, deleted_at, version FROM {schema}.users"
    )))
    .fetch_all(&mut *tx)
    .await?;
    let orders: Vec<PgOrder> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, user_id, product, quantity, amount, status, order_date, created_at, \
                updated_at, deleted_at, version FROM {schema}.orders"
    )))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut tables = Tables::default();
    for (id, name, email, created_at, updated_at, deleted_at, version) in users {
        let row = vec![
            Value::Text(name),
            Value::Text(email),
            Value::timestamp(created_at),
            Value::timestamp(updated_at),
            Value::from_option(deleted_at, Value::timestamp),
            Value::BigInt(version),
        ];
        tables.users.insert(Id(id), row);
    }
    for order in orders {
        let (
            id,
            user_id,
            product,
            quantity,
            amount,
            status,
            order_date,
            created,
            updated,
            deleted,
            version,
        ) = order;
        let by_user = vec![
            Value::Text(product),
            Value::Int(quantity),
            Value::Decimal(amount),
            Value::Text(status),
            Value::date(order_date),
            Value::timestamp(created),
            Value::timestamp(updated),
            Value::from_option(deleted, Value::timestamp),
            Value::BigInt(version),
        ];
        let mut row = Vec::with_capacity(by_user.len() + 1);
        row.push(Value::Uuid(user_id));
        row.extend(by_user.iter().cloned());
        tables.orders.insert(Id(id), row);
        tables.orders_by_user.insert(
            UserOrder {
                user_id,
                order_id: id,
            },
            by_user,
        );
    }
    Ok(tables)
}

#[derive(Debug, DeserializeRow)]
struct CassandraUser {
    id: Uuid,
    name: Option<String>,
    email: Option<String>,
    created_at: Option<CqlTimestamp>,
    updated_at: Option<CqlTimestamp>,
    deleted_at: Option<CqlTimestamp>,
    version: Option<i64>,
}

impl CassandraUser {
    fn values(self) -> Row {
        vec![
            Value::from_option(self.name, Value::Text),
            Value::from_option(self.email, Value::Text),
            Value::from_option(self.created_at, Value::cql_timestamp),
            Value::from_option(self.updated_at, Value::cql_timestamp),
            Value::from_option(self.deleted_at, Value::cql_timestamp),
            Value::from_option(self.version, Value::BigInt),
        ]
    }
}

/// The columns `orders` and `orders_by_user` share.
#[derive(Debug)]
struct OrderColumns {
    product: Option<String>,
    quantity: Option<i32>,
    amount: Option<CqlDecimal>,
    status: Option<String>,
    order_date: Option<CqlDate>,
    created_at: Option<CqlTimestamp>,
    updated_at: Option<CqlTimestamp>,
    deleted_at: Option<CqlTimestamp>,
    version: Option<i64>,
}

impl OrderColumns {
    fn values(self) -> Row {
        vec![
            Value::from_option(self.product, Value::Text),
            Value::from_option(self.quantity, Value::Int),
            Value::from_option(self.amount, |d| Value::cql_decimal(&d)),
            Value::from_option(self.status, Value::Text),
            Value::from_option(self.order_date, Value::cql_date),
            Value::from_option(self.created_at, Value::cql_timestamp),
            Value::from_option(self.updated_at, Value::cql_timestamp),
            Value::from_option(self.deleted_at, Value::cql_timestamp),
            Value::from_option(self.version, Value::BigInt),
        ]
    }
}

#[derive(Debug, DeserializeRow)]
struct CassandraOrder {
    id: Uuid,
    user_id: Option<Uuid>,
    product: Option<String>,
    quantity: Option<i32>,
    amount: Option<CqlDecimal>,
    status: Option<String>,
    order_date: Option<CqlDate>,
    created_at: Option<CqlTimestamp>,
    updated_at: Option<CqlTimestamp>,
    deleted_at: Option<CqlTimestamp>,
    version: Option<i64>,
}

impl CassandraOrder {
    fn values(self) -> Row {
        let mut row = vec![Value::from_option(self.user_id, Value::Uuid)];
        row.extend(
            OrderColumns {
                product: self.product,
                quantity: self.quantity,
                amount: self.amount,
                status: self.status,
                order_date: self.order_date,
                created_at: self.created_at,
                updated_at: self.updated_at,
                deleted_at: self.deleted_at,
                version: self.version,
            }
            .values(),
        );
        row
    }
}

#[derive(Debug, DeserializeRow)]
struct CassandraOrderByUser {
    user_id: Uuid,
    order_id: Uuid,
    product: Option<String>,
    quantity: Option<i32>,
    amount: Option<CqlDecimal>,
    status: Option<String>,
    order_date: Option<CqlDate>,
    created_at: Option<CqlTimestamp>,
    updated_at: Option<CqlTimestamp>,
    deleted_at: Option<CqlTimestamp>,
    version: Option<i64>,
}

impl CassandraOrderByUser {
    fn keyed(self) -> (UserOrder, Row) {
        let key = UserOrder {
            user_id: self.user_id,
            order_id: self.order_id,
        };
        let row = OrderColumns {
            product: self.product,
            quantity: self.quantity,
            amount: self.amount,
            status: self.status,
            order_date: self.order_date,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
            version: self.version,
        }
        .values();
        (key, row)
    }
}

/// The condition that restricts a scan to one token range (two bound values).
fn in_slice(partition_key: &str) -> String {
    format!("token({partition_key}) >= ? AND token({partition_key}) <= ?")
}

/// Reads a whole table page by page at the requested consistency, one token range after another
/// (see [`crate::cassandra::token_slices`]) so that no read walks past more tombstones than
/// Cassandra allows. `cql` must end with [`in_slice`]'s condition.
async fn read_cassandra<R, K>(
    session: &Session,
    opts: &CompareOptions,
    cql: String,
    convert: impl Fn(R) -> (K, Row),
) -> Result<BTreeMap<K, Row>, VerifyError>
where
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    K: Ord,
{
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .map_err(CassandraError::from)?;
    statement.set_consistency(opts.consistency);
    statement.set_request_timeout(Some(opts.request_timeout));
    statement.set_page_size(CASSANDRA_PAGE_SIZE);
    statement.set_is_idempotent(true);
    let read_error = |error: String| CassandraError::Read(format!("{cql}: {error}"));
    let mut rows = BTreeMap::new();
    for slice in crate::cassandra::token_slices(crate::cassandra::SCAN_SLICES) {
        let mut paging = PagingState::start();
        loop {
            let (result, next) = session
                .execute_single_page(&statement, slice, paging)
                .await
                .map_err(CassandraError::from)?;
            let result = result
                .into_rows_result()
                .map_err(|e| read_error(e.to_string()))?;
            for row in result.rows::<R>().map_err(|e| read_error(e.to_string()))? {
                let (key, values) = convert(row.map_err(|e| read_error(e.to_string()))?);
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

    fn id(n: u128) -> Id {
        Id(Uuid::from_u128(n))
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
            Value::BigInt(1),
        ]
    }

    fn users(rows: &[(u128, Row)]) -> BTreeMap<Id, Row> {
        rows.iter().map(|(n, row)| (id(*n), row.clone())).collect()
    }

    #[test]
    fn identical_tables_are_clean() {
        let pg = users(&[
            (1, user("ada", "2026-11-24T10:00:01Z")),
            (2, user("bob", "2026-11-24T10:00:02Z")),
        ]);
        let report = compare_table("users", USERS_COLUMNS, &pg, &pg.clone(), 5);
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
        let report = compare_table("users", USERS_COLUMNS, &pg, &cassandra, 10);
        assert!(!report.is_clean());
        assert_eq!(report.checked, 4);
        assert_eq!(report.matching, 1);
        assert_eq!(report.missing, 1);
        assert_eq!(report.extra, 1);
        assert_eq!(report.different, 1);
        assert_eq!(
            report.different_columns,
            BTreeMap::from([("email", 1), ("name", 1), ("updated_at", 1)])
        );
        let kinds: Vec<(String, &DifferenceKind)> = report
            .examples
            .iter()
            .map(|d| (d.key.clone(), &d.kind))
            .collect();
        assert_eq!(kinds[0], (id(1).to_string(), &DifferenceKind::Missing));
        assert_eq!(kinds[2], (id(4).to_string(), &DifferenceKind::Extra));
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
        let report = compare_table("users", USERS_COLUMNS, &pg, &BTreeMap::new(), 3);
        assert_eq!(report.missing, 20);
        assert_eq!(report.examples.len(), 3);
        let report = compare_table("users", USERS_COLUMNS, &BTreeMap::new(), &pg, 0);
        assert_eq!(report.extra, 20);
        assert!(report.examples.is_empty());
    }

    #[test]
    fn null_against_a_value_is_a_difference() {
        let mut deleted = user("ada", "2026-11-24T10:00:01Z");
        deleted[4] = Value::timestamp(at("2026-11-24T11:00:00Z"));
        let pg = users(&[(1, deleted)]);
        let cassandra = users(&[(1, user("ada", "2026-11-24T10:00:01Z"))]);
        let report = compare_table("users", USERS_COLUMNS, &pg, &cassandra, 5);
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
    fn report_is_clean_only_when_every_table_is() {
        let pg = users(&[(1, user("ada", "2026-11-24T10:00:01Z"))]);
        let clean = compare_table("users", USERS_COLUMNS, &pg, &pg.clone(), 5);
        let drift = compare_table("orders", ORDERS_COLUMNS, &BTreeMap::new(), &pg, 5);
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
    fn lag_counts_uncommitted_records() {
        assert_eq!(partition_lag(Some(5), 0, 5), 0);
        assert_eq!(partition_lag(Some(3), 0, 5), 2);
        // No commit: an empty (or fully expired) partition is quiet, one with records is not.
        assert_eq!(partition_lag(None, 0, 0), 0);
        assert_eq!(partition_lag(None, 7, 7), 0);
        assert_eq!(partition_lag(None, 2, 7), 5);
        // Committed beyond the end (a recreated topic): the group will reset, not quiet.
        assert_ne!(partition_lag(Some(9), 0, 5), 0);
    }

    #[test]
    fn unquiet_names_what_is_behind() {
        let lag = Unquiet::GroupLag {
            group: "g".to_owned(),
            topic: "t".to_owned(),
            partition: 2,
            committed: None,
            end: 4,
        };
        assert_eq!(
            lag.to_string(),
            "group g topic t partition 2 lag 4 (no committed offset, end 4)"
        );
        let slot = Unquiet::SlotBehind {
            slot: "cdc_slot".to_owned(),
            target: "0/200".to_owned(),
            confirmed: Some("0/100".to_owned()),
            bytes: Some(256),
            active: true,
        };
        assert_eq!(
            slot.to_string(),
            "slot cdc_slot behind by 256 bytes (confirmed 0/100, target 0/200)"
        );
        let error = VerifyError::NotQuiet {
            waited: Duration::from_secs(1),
            behind: vec![slot, lag],
        };
        assert!(error.is_transient());
        assert!(error
            .to_string()
            .contains("target 0/200); group g topic t partition 2"));
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
