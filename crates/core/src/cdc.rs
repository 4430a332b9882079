//! cdcconsumer's batch handler: Debezium change events from `cdc.public.users` and
//! `cdc.public.orders` into Cassandra's users, orders and orders_by_user tables.
//!
//! - **Order-proof without lightweight transactions.** Each change becomes a [`Plan`]: the
//!   mutations it implies, all stamped `USING TIMESTAMP <source LSN>` (see [`crate::cassandra`]).
//!   Replays, duplicates after a Connect restart and reordering converge to PostgreSQL's state.
//! - **Deletes** remove the rows, orders_by_user included (the before image names the user); an
//!   update that moves an order to another user deletes the old orders_by_user row at the same
//!   timestamp. Unchanged TOAST columns are left unset, never written.
//! - **Truncates** record the table's truncation LSN, then delete every row Cassandra holds for it at
//!   that timestamp. A change older than the truncation that is still on its way (another partition
//!   lagging) is caught after it is written: every batch reads the truncation LSNs once its writes
//!   are done and deletes, at the truncation's timestamp, whatever it wrote that is older. Either the
//!   truncation's scan saw the row, or the writer sees the truncation.
//! - **Concurrency within a partition**: a batch's changes are grouped by row key; one key's changes
//!   are written one after another in batch order, up to `lanes` keys at once. When the runtime
//!   pipelines batches, [`KeyGates`] keeps a key's changes in a later batch behind its changes in an
//!   earlier one.
//! - **Failures**: transient errors (write timeouts, unavailable replicas, broken connections) are
//!   retried with the same timestamp until they succeed or the partition is revoked; an undecodable
//!   record, or one Cassandra refuses as invalid, is parked in `<topic>.dlq` and the partition moves
//!   on. The batch is durable — and its offsets may be stored — only when every record is written
//!   or parked.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Instant;

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use futures::stream::{self, StreamExt};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use scylla::client::session::Session;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cassandra::{
    CassandraError, Col, OrderRow, Statements, Table, Truncations, UserRow, Write,
};
use crate::debezium::{
    self, Cell, Change, ColumnType, DecimalMode, EnvelopeError, Field, Image, Op, Record,
};
use crate::dlq;
use crate::metrics::{Metrics, TopicLabels};
use crate::retry::retry_until_cancelled;
use crate::runtime::{BatchHandler, Cancelled};

/// Dead-letter reasons of the CDC path (besides [`EnvelopeError::reason`]'s).
pub const REASONS: &[&str] = &[
    "undecodable",
    "not_an_envelope",
    "unknown_op",
    "missing_image",
    "missing_column",
    "bad_value",
    "no_position",
    "unknown_table",
    "rejected_by_cassandra",
];

/// Why a change cannot be turned into writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("change without a source LSN: its place in PostgreSQL's history is unknown")]
    NoPosition,
    #[error("change of table `{0}`, which this sink does not mirror")]
    UnknownTable(String),
}

impl PlanError {
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Envelope(e) => e.reason(),
            Self::NoPosition => "no_position",
            Self::UnknownTable(_) => "unknown_table",
        }
    }
}

/// The writes one change implies.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub table: Table,
    /// The row's primary key: changes of one row stay in order.
    pub key: Uuid,
    /// Source LSN: the write timestamp of every mutation.
    pub lsn: i64,
    /// Source commit time, µs since the epoch (for the end-to-end lag).
    pub commit_micros: i64,
    pub writes: Vec<Write>,
}

/// What a record asks of the sink.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    Writes(Plan),
    /// Delete everything in `table` older than `lsn`.
    Truncate {
        table: Table,
        lsn: i64,
        commit_micros: i64,
    },
    /// A tombstone: the delete before it already did the work.
    Nothing,
}

fn column<T>(
    image: &Image,
    name: &str,
    ty: ColumnType,
    extract: impl FnOnce(Cell) -> Option<T>,
) -> Result<Col<T>, EnvelopeError> {
    match image.get(name, ty)? {
        Field::Null => Ok(Field::Null),
        Field::Unavailable => Ok(Field::Unavailable),
        Field::Value(cell) => {
            extract(cell)
                .map(Field::Value)
                .ok_or_else(|| EnvelopeError::BadValue {
                    column: name.to_owned(),
                    problem: format!("not a {ty:?}"),
                })
        }
    }
}

fn key(image: &Image, name: &str) -> Result<Uuid, EnvelopeError> {
    match column(image, name, ColumnType::Uuid, |c| match c {
        Cell::Uuid(u) => Some(u),
        _ => None,
    })? {
        Field::Value(id) => Ok(id),
        _ => Err(EnvelopeError::BadValue {
            column: name.to_owned(),
            problem: "a key column must have a value".into(),
        }),
    }
}

fn text(image: &Image, name: &str) -> Result<Col<String>, EnvelopeError> {
    column(image, name, ColumnType::Text, |c| match c {
        Cell::Text(t) => Some(t),
        _ => None,
    })
}

fn timestamp(
    image: &Image,
    name: &str,
) -> Result<Col<chrono::DateTime<chrono::Utc>>, EnvelopeError> {
    column(image, name, ColumnType::TimestampTz, |c| match c {
        Cell::Timestamp(t) => Some(t),
        _ => None,
    })
}

fn bigint(image: &Image, name: &str) -> Result<Col<i64>, EnvelopeError> {
    column(image, name, ColumnType::Int, |c| match c {
        Cell::Int(n) => Some(n),
        _ => None,
    })
}

fn user_row(image: &Image) -> Result<UserRow, EnvelopeError> {
    Ok(UserRow {
        id: key(image, "id")?,
        name: text(image, "name")?,
        email: text(image, "email")?,
        created_at: timestamp(image, "created_at")?,
        updated_at: timestamp(image, "updated_at")?,
        deleted_at: timestamp(image, "deleted_at")?,
        version: bigint(image, "version")?,
    })
}

fn order_row(image: &Image, decimals: DecimalMode) -> Result<OrderRow, EnvelopeError> {
    Ok(OrderRow {
        id: key(image, "id")?,
        user_id: key(image, "user_id")?,
        product: text(image, "product")?,
        quantity: column(image, "quantity", ColumnType::Int, |c| match c {
            Cell::Int(n) => i32::try_from(n).ok(),
            _ => None,
        })?,
        amount: column(
            image,
            "amount",
            ColumnType::Numeric {
                scale: 2,
                mode: decimals,
            },
            |c| match c {
                Cell::Decimal(d) => Some(d),
                _ => None,
            },
        )?,
        status: text(image, "status")?,
        order_date: column(image, "order_date", ColumnType::Date, |c| match c {
            Cell::Date(d) => Some(d),
            _ => None,
        })?,
        created_at: timestamp(image, "created_at")?,
        updated_at: timestamp(image, "updated_at")?,
        deleted_at: timestamp(image, "deleted_at")?,
        version: bigint(image, "version")?,
    })
}

/// For an order moving to another user, the new orders_by_user row is written whole: columns the
/// after image left out as unchanged TOAST values are taken from the before image.
fn fill_unavailable<T: Clone>(after: &mut Col<T>, before: &Col<T>) {
    if matches!(after, Field::Unavailable) {
        *after = before.clone();
    }
}

fn table_of(change: &Change) -> Result<Table, PlanError> {
    match change.source.table.as_str() {
        "users" => Ok(Table::Users),
        "orders" => Ok(Table::Orders),
        other => Err(PlanError::UnknownTable(other.to_owned())),
    }
}

/// Turns one Debezium record into the writes it implies.
pub fn plan(record: &Record, decimals: DecimalMode) -> Result<Planned, PlanError> {
    let change = match record {
        Record::Tombstone { .. } => return Ok(Planned::Nothing),
        Record::Change(change) => change,
    };
    let table = table_of(change)?;
    let lsn = change.source.lsn.ok_or(PlanError::NoPosition)?;
    let commit_micros = change.source.commit_micros();
    let missing = |image: &'static str| EnvelopeError::MissingImage {
        op: change.op,
        image,
    };
    let (key, writes) = match (change.op, table) {
        (Op::Truncate, _) => {
            return Ok(Planned::Truncate {
                table,
                lsn,
                commit_micros,
            })
        }
        (Op::Create | Op::Read | Op::Update, Table::Users) => {
            let row = user_row(change.after.as_ref().ok_or_else(|| missing("after"))?)?;
            (row.id, vec![Write::UpsertUser(row)])
        }
        (Op::Delete, Table::Users) => {
            let id = key(
                change.before.as_ref().ok_or_else(|| missing("before"))?,
                "id",
            )?;
            (id, vec![Write::DeleteUser(id)])
        }
        (Op::Create | Op::Read | Op::Update, Table::Orders) => {
            let mut row = order_row(
                change.after.as_ref().ok_or_else(|| missing("after"))?,
                decimals,
            )?;
            let mut writes = Vec::with_capacity(3);
            if change.op == Op::Update {
                // REPLICA IDENTITY FULL: the before image holds the old user_id.
                if let Some(before) = change.before.as_ref().filter(|b| b.has("user_id")) {
                    let old = order_row(before, decimals)?;
                    if old.user_id != row.user_id {
                        writes.push(Write::DeleteOrderByUser {
                            user_id: old.user_id,
                            order_id: row.id,
                        });
                        fill_unavailable(&mut row.product, &old.product);
                        fill_unavailable(&mut row.quantity, &old.quantity);
                        fill_unavailable(&mut row.amount, &old.amount);
                        fill_unavailable(&mut row.status, &old.status);
                        fill_unavailable(&mut row.order_date, &old.order_date);
                        fill_unavailable(&mut row.created_at, &old.created_at);
                        fill_unavailable(&mut row.updated_at, &old.updated_at);
                        fill_unavailable(&mut row.deleted_at, &old.deleted_at);
                        fill_unavailable(&mut row.version, &old.version);
                    }
                }
            }
            writes.push(Write::UpsertOrder(row.clone()));
            let id = row.id;
            writes.push(Write::UpsertOrderByUser(row));
            (id, writes)
        }
        (Op::Delete, Table::Orders) => {
            let before = change.before.as_ref().ok_or_else(|| missing("before"))?;
            let id = key(before, "id")?;
            let user_id = key(before, "user_id")?;
            (
                id,
                vec![
                    Write::DeleteOrder(id),
                    Write::DeleteOrderByUser {
                        user_id,
                        order_id: id,
                    },
                ],
            )
        }
    };
    Ok(Planned::Writes(Plan {
        table,
        key,
        lsn,
        commit_micros,
        writes,
    }))
}

/// The upserts of `plan` undone at `at` (a truncation newer than the plan).
fn undo(plan: &Plan) -> Vec<Write> {
    plan.writes
        .iter()
        .filter_map(|write| match write {
            Write::UpsertUser(u) => Some(Write::DeleteUser(u.id)),
            Write::UpsertOrder(o) => Some(Write::DeleteOrder(o.id)),
            Write::UpsertOrderByUser(o) => Some(Write::DeleteOrderByUser {
                user_id: o.user_id,
                order_id: o.id,
            }),
            _ => None,
        })
        .collect()
}

/// Metrics of cdcconsumer beyond the common ones.
#[derive(Debug, Clone)]
pub struct CdcMetrics {
    /// Now − source commit time, observed when a change is written.
    pub end_to_end_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// The same for the latest change written, in milliseconds.
    pub end_to_end_lag_ms: Family<TopicLabels, Gauge>,
}

fn lag_histogram() -> Histogram {
    // 1 ms … ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl CdcMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            end_to_end_seconds: Family::new_with_constructor(lag_histogram),
            end_to_end_lag_ms: Family::default(),
        };
        metrics.register(
            "end_to_end_seconds",
            "Source commit to Cassandra write, per change",
            this.end_to_end_seconds.clone(),
        );
        metrics.register(
            "end_to_end_lag_ms",
            "Source commit to Cassandra write of the latest change",
            this.end_to_end_lag_ms.clone(),
        );
        this
    }
}

pub struct CdcHandler {
    pub session: Arc<Session>,
    pub statements: Statements,
    pub dlq: FutureProducer,
    pub metrics: Metrics,
    pub cdc_metrics: CdcMetrics,
    /// Keys written at once per batch (a partition has up to `pipeline` batches in flight).
    pub lanes: usize,
    /// The connector's `decimal.handling.mode`, for records without an embedded schema.
    pub decimals: DecimalMode,
    /// Per-key order across batches in flight; start with `KeyGates::default()`.
    pub gates: KeyGates,
}

impl std::fmt::Debug for CdcHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcHandler")
            .field("lanes", &self.lanes)
            .field("decimals", &self.decimals)
            .finish_non_exhaustive()
    }
}

/// A row's identity: changes of one key are written in order.
type RowKey = (Table, Uuid);

/// The positions of `plans` grouped by row key, each group in batch order, groups in order of
/// first appearance.
fn chains_by_key(plans: &[(usize, Plan)]) -> Vec<(RowKey, Vec<usize>)> {
    let mut position: HashMap<RowKey, usize> = HashMap::new();
    let mut chains: Vec<(RowKey, Vec<usize>)> = Vec::new();
    for (at, (_, plan)) in plans.iter().enumerate() {
        let key = (plan.table, plan.key);
        let chain = *position.entry(key).or_insert_with(|| {
            chains.push((key, Vec::new()));
            chains.len() - 1
        });
        chains[chain].1.push(at);
    }
    chains
}

/// Keeps each row's writes in order across the batches a partition has in flight at once: a
/// batch claims a turn for each of its keys when it starts (in batch order, before its first
/// `.await`), and a turn waits for the key's previous turn to end before writing.
#[derive(Debug, Default)]
pub struct KeyGates {
    /// Per key, the latest turn: its id and a signal that resolves when that turn ends.
    latest: std::sync::Mutex<HashMap<RowKey, (u64, TurnEnded)>>,
    next_id: AtomicU64,
}

impl KeyGates {
    fn latest(&self) -> std::sync::MutexGuard<'_, HashMap<RowKey, (u64, TurnEnded)>> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next turn of `key`; it runs after every turn claimed before it.
    fn claim(&self, key: RowKey) -> Turn<'_> {
        let id = self.next_id.fetch_add(1, AtomicOrdering::Relaxed);
        let (ended, signal) = oneshot::channel();
        let after = self
            .latest()
            .insert(key, (id, signal.shared()))
            .map(|(_, previous)| previous);
        Turn {
            gates: self,
            key,
            id,
            after,
            _ended: ended,
        }
    }

    /// Keys with a turn claimed and not yet ended.
    pub fn pending(&self) -> usize {
        self.latest().len()
    }
}

type TurnEnded = Shared<oneshot::Receiver<()>>;

/// One key's turn. It ends when dropped: written, refused or abandoned.
struct Turn<'a> {
    gates: &'a KeyGates,
    key: RowKey,
    id: u64,
    after: Option<TurnEnded>,
    /// Dropping the sender resolves the signal the next turn waits on.
    _ended: oneshot::Sender<()>,
}

impl Turn<'_> {
    /// Waits until the key's previous turn has ended.
    async fn begin(&mut self) {
        if let Some(previous) = &self.after {
            // Err only means the sender is gone, which is how a turn ends.
            let _ = previous.clone().await;
        }
        self.after = None;
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut latest = self.gates.latest();
        if latest.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            latest.remove(&self.key);
        }
    }
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl CdcHandler {
    /// Runs one write with its timestamp until it succeeds; a permanent error is returned.
    async fn write(
        &self,
        write: &Write,
        ts: i64,
        cancel: &CancellationToken,
    ) -> Result<Result<(), CassandraError>, Cancelled> {
        retry_until_cancelled("cassandra write", cancel, || {
            self.statements.execute(&self.session, write, ts)
        })
        .await
    }

    /// Writes the plans of one segment (no truncation inside): each key's plans one after another,
    /// after the key's turns in earlier batches, up to `lanes` keys at once. Returns the indexes of
    /// plans Cassandra refused, with the error.
    async fn write_plans(
        &self,
        plans: &[(usize, Plan)],
        chains: Vec<(Turn<'_>, Vec<usize>)>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Cancelled> {
        let pending: Vec<_> = chains
            .into_iter()
            .map(|(mut turn, chain)| async move {
                turn.begin().await;
                let mut refused = Vec::new();
                for at in chain {
                    let (index, plan) = &plans[at];
                    // One change's writes touch different rows and share a timestamp: they may
                    // run together.
                    let written = futures::future::join_all(
                        plan.writes.iter().map(|w| self.write(w, plan.lsn, cancel)),
                    )
                    .await;
                    for result in written {
                        if let Err(error) = result? {
                            refused.push((*index, error));
                            break;
                        }
                    }
                }
                drop(turn);
                Ok::<_, Cancelled>(refused)
            })
            .collect();
        let mut running = stream::iter(pending).buffer_unordered(self.lanes.max(1));
        let mut refused = Vec::new();
        while let Some(result) = running.next().await {
            refused.extend(result?);
        }
        Ok(refused)
    }

    /// Undoes, at the truncation's timestamp, upserts older than a truncation of their table.
    async fn settle_truncations(
        &self,
        plans: &[(usize, Plan)],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let truncations: Truncations = match retry_until_cancelled(
            "read truncations",
            cancel,
            || self.statements.truncations(&self.session),
        )
        .await?
        {
            Ok(t) => t,
            Err(error) => {
                tracing::error!(error = %error, "cannot read truncation positions; retrying batch");
                return Err(Cancelled);
            }
        };
        let obsolete: Vec<(Write, i64)> = plans
            .iter()
            .filter(|(_, plan)| plan.lsn < truncations.of(plan.table))
            .flat_map(|(_, plan)| {
                let at = truncations.of(plan.table);
                undo(plan).into_iter().map(move |w| (w, at))
            })
            .collect();
        if !obsolete.is_empty() {
            tracing::info!(
                writes = obsolete.len(),
                "undoing changes older than a truncation"
            );
        }
        self.run_all(&obsolete, cancel).await
    }

    /// Runs independent writes with bounded concurrency; all must succeed.
    async fn run_all(
        &self,
        writes: &[(Write, i64)],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let pending: Vec<_> = writes
            .iter()
            .map(|(write, ts)| self.write(write, *ts, cancel))
            .collect();
        let mut results = stream::iter(pending).buffer_unordered(self.lanes.max(1));
        while let Some(result) = results.next().await {
            if let Err(error) = result? {
                // A key-only delete Cassandra calls invalid cannot be fixed by retrying.
                tracing::error!(error = %error, "delete refused by Cassandra");
            }
        }
        Ok(())
    }

    async fn truncate(
        &self,
        table: Table,
        lsn: i64,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        tracing::info!(table = table.name(), lsn, "applying truncation");
        let recorded = retry_until_cancelled("record truncation", cancel, || {
            self.statements.set_truncation(&self.session, table, lsn)
        })
        .await?;
        let rows = match recorded {
            Ok(()) => {
                retry_until_cancelled("scan for truncation", cancel, || {
                    self.statements.all_rows(&self.session, table)
                })
                .await?
            }
            Err(error) => Err(error),
        };
        match rows {
            Ok(rows) => {
                let deletes: Vec<(Write, i64)> = rows.into_iter().map(|w| (w, lsn)).collect();
                self.run_all(&deletes, cancel).await
            }
            Err(error) => {
                tracing::error!(error = %error, "truncation failed; retrying batch");
                Err(Cancelled)
            }
        }
    }

    fn observe(&self, topic: &TopicLabels, commit_micros: i64) {
        let lag_micros = micros_now().saturating_sub(commit_micros).max(0);
        #[allow(clippy::cast_precision_loss)]
        let seconds = lag_micros as f64 / 1e6;
        self.cdc_metrics
            .end_to_end_seconds
            .get_or_create(topic)
            .observe(seconds);
        self.cdc_metrics
            .end_to_end_lag_ms
            .get_or_create(topic)
            .set(lag_micros / 1000);
    }
}

/// The changes of a batch between truncations, with a turn claimed for each key.
struct Segment<'a> {
    plans: Vec<(usize, Plan)>,
    /// Per key: its turn and the positions of its plans in `plans`.
    chains: Vec<(Turn<'a>, Vec<usize>)>,
}

/// One decoded part of a batch.
enum Step<'a> {
    Segment(Segment<'a>),
    Truncate {
        table: Table,
        lsn: i64,
        commit_micros: i64,
    },
}

/// A batch decoded and planned, its keys' turns claimed.
struct Decoded<'a> {
    steps: Vec<Step<'a>>,
    /// Records that cannot be applied, with why.
    refused: Vec<(usize, PlanError)>,
    /// Records that need no write (tombstones).
    nothing: u64,
}

impl CdcHandler {
    /// Decodes and plans `batch` and claims its keys' turns; no `.await`, so batches claim in the
    /// order the runtime starts them.
    fn decode<'a>(&'a self, batch: &[OwnedMessage]) -> Decoded<'a> {
        let mut decoded = Decoded {
            steps: Vec::new(),
            refused: Vec::new(),
            nothing: 0,
        };
        let mut plans = Vec::new();
        let close = |plans: Vec<(usize, Plan)>| {
            let chains = chains_by_key(&plans)
                .into_iter()
                .map(|(key, chain)| (self.gates.claim(key), chain))
                .collect();
            Step::Segment(Segment { plans, chains })
        };
        for (index, message) in batch.iter().enumerate() {
            let planned = debezium::parse(message.key(), message.payload())
                .map_err(PlanError::from)
                .and_then(|record| plan(&record, self.decimals));
            match planned {
                Ok(Planned::Writes(p)) => plans.push((index, p)),
                Ok(Planned::Truncate {
                    table,
                    lsn,
                    commit_micros,
                }) => {
                    decoded.steps.push(close(std::mem::take(&mut plans)));
                    decoded.steps.push(Step::Truncate {
                        table,
                        lsn,
                        commit_micros,
                    });
                }
                Ok(Planned::Nothing) => decoded.nothing += 1,
                Err(error) => decoded.refused.push((index, error)),
            }
        }
        decoded.steps.push(close(plans));
        decoded
    }
}

impl BatchHandler for CdcHandler {
    async fn handle(
        &self,
        batch: &[OwnedMessage],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let started = Instant::now();
        // Before any `.await`: see `KeyGates`.
        let decoded = self.decode(batch);
        let topic = self.metrics.count_consumed(batch);
        let mut applied = decoded.nothing;
        for (index, error) in decoded.refused {
            dlq::park_message(
                &self.dlq,
                &self.metrics,
                &batch[index],
                error.reason(),
                error.to_string(),
                cancel,
            )
            .await?;
        }
        for step in decoded.steps {
            match step {
                Step::Segment(segment) if segment.plans.is_empty() => {}
                Step::Segment(Segment { plans, chains }) => {
                    let refused = self.write_plans(&plans, chains, cancel).await?;
                    self.settle_truncations(&plans, cancel).await?;
                    let refused_at: BTreeSet<usize> = refused.iter().map(|(i, _)| *i).collect();
                    for (index, error) in refused {
                        dlq::park_message(
                            &self.dlq,
                            &self.metrics,
                            &batch[index],
                            "rejected_by_cassandra",
                            error.to_string(),
                            cancel,
                        )
                        .await?;
                    }
                    for (index, plan) in &plans {
                        if !refused_at.contains(index) {
                            applied += 1;
                            self.observe(&topic, plan.commit_micros);
                        }
                    }
                }
                Step::Truncate {
                    table,
                    lsn,
                    commit_micros,
                } => {
                    self.truncate(table, lsn, cancel).await?;
                    applied += 1;
                    self.observe(&topic, commit_micros);
                }
            }
        }
        self.metrics.applied.get_or_create(&topic).inc_by(applied);
        self.metrics
            .batch_seconds
            .get_or_create(&topic)
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/debezium/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("fixture");
        serde_json::from_str(&text).expect("fixture JSON")
    }

    fn planned(record: &Value) -> Result<Planned, PlanError> {
        let key = (!record["key"].is_null()).then(|| record["key"].to_string());
        let value = (!record["value"].is_null()).then(|| record["value"].to_string());
        let parsed = debezium::parse(
            key.as_deref().map(str::as_bytes),
            value.as_deref().map(str::as_bytes),
        )?;
        plan(&parsed, DecimalMode::Precise)
    }

    fn writes(record: &Value) -> Plan {
        match planned(record).expect("plan") {
            Planned::Writes(plan) => plan,
            other => panic!("expected writes, got {other:?}"),
        }
    }

    fn payload(record: &mut Value) -> &mut Value {
        &mut record["value"]["payload"]
    }

    #[test]
    fn user_insert_and_delete() {
        let insert = writes(&fixture("users_c"));
        assert_eq!(insert.table, Table::Users);
        assert_eq!(
            Some(insert.lsn),
            fixture("users_c")["value"]["payload"]["source"]["lsn"].as_i64()
        );
        match &insert.writes[..] {
            [Write::UpsertUser(row)] => {
                assert_eq!(row.id, insert.key);
                assert!(matches!(row.name, Field::Value(_)));
                assert_eq!(row.deleted_at, Field::Null);
            }
            other => panic!("{other:?}"),
        }
        let delete = writes(&fixture("users_d"));
        assert_eq!(delete.writes, vec![Write::DeleteUser(delete.key)]);
        assert_eq!(planned(&fixture("users_tombstone")), Ok(Planned::Nothing));
    }

    #[test]
    fn order_insert_writes_both_tables_and_snapshot_reads_count_as_inserts() {
        for name in ["orders_c", "orders_r"] {
            let plan = writes(&fixture(name));
            match &plan.writes[..] {
                [Write::UpsertOrder(a), Write::UpsertOrderByUser(b)] => {
                    assert_eq!(a, b);
                    assert!(matches!(a.amount, Field::Value(_)), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn order_moving_to_another_user_removes_the_old_orders_by_user_row() {
        let mut record = fixture("orders_u");
        let old_user = payload(&mut record)["before"]["user_id"].clone();
        let new_user = "0b7a4b2e-3a40-4d8e-9a53-8d0b6b1a7f11";
        payload(&mut record)["after"]["user_id"] = Value::from(new_user);
        // An unchanged TOAST column in the after image: the new row takes the old value.
        payload(&mut record)["after"]["product"] = Value::from(debezium::UNAVAILABLE);
        let plan = writes(&record);
        match &plan.writes[..] {
            [Write::DeleteOrderByUser { user_id, order_id }, Write::UpsertOrder(order), Write::UpsertOrderByUser(by_user)] =>
            {
                assert_eq!(user_id.to_string(), old_user.as_str().expect("uuid"));
                assert_eq!(*order_id, plan.key);
                assert_eq!(order.user_id.to_string(), new_user);
                assert_eq!(by_user.product, Field::Value("Phone charger".to_owned()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unchanged_toast_column_is_left_unset_when_the_user_stays() {
        let mut record = fixture("orders_u");
        payload(&mut record)["after"]["product"] = Value::from(debezium::UNAVAILABLE);
        let plan = writes(&record);
        match &plan.writes[..] {
            [Write::UpsertOrder(order), Write::UpsertOrderByUser(by_user)] => {
                assert_eq!(order.product, Field::Unavailable);
                assert_eq!(by_user.product, Field::Unavailable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn order_delete_removes_both_rows() {
        let mut record = fixture("orders_u");
        payload(&mut record)["op"] = Value::from("d");
        payload(&mut record)["after"] = Value::Null;
        let plan = writes(&record);
        let user: Uuid = payload(&mut record)["before"]["user_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("uuid");
        assert_eq!(
            plan.writes,
            vec![
                Write::DeleteOrder(plan.key),
                Write::DeleteOrderByUser {
                    user_id: user,
                    order_id: plan.key
                }
            ]
        );
    }

    #[test]
    fn truncate_names_its_table_and_position() {
        let record = fixture("orders_t");
        let lsn = record["value"]["payload"]["source"]["lsn"].as_i64();
        match planned(&record).expect("plan") {
            Planned::Truncate { table, lsn: at, .. } => {
                assert_eq!(table, Table::Orders);
                assert_eq!(Some(at), lsn);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changes_without_position_or_of_other_tables_are_refused() {
        let mut record = fixture("users_u");
        payload(&mut record)["source"]
            .as_object_mut()
            .expect("source")
            .remove("lsn");
        assert_eq!(planned(&record), Err(PlanError::NoPosition));
        let mut record = fixture("users_u");
        payload(&mut record)["source"]["table"] = Value::from("invoices");
        assert_eq!(
            planned(&record).map_err(|e| e.reason()),
            Err("unknown_table")
        );
        let mut record = fixture("users_u");
        payload(&mut record)["after"]["id"] = Value::Null;
        assert_eq!(planned(&record).map_err(|e| e.reason()), Err("bad_value"));
    }

    #[test]
    fn one_key_s_changes_form_one_chain_in_batch_order() {
        let template = writes(&fixture("users_c"));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let plans: Vec<(usize, Plan)> = [a, b, a, a, b]
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let mut plan = template.clone();
                plan.key = *key;
                (i, plan)
            })
            .collect();
        let chains = chains_by_key(&plans);
        let keys: Vec<Uuid> = chains.iter().map(|((_, key), _)| *key).collect();
        assert_eq!(keys, vec![a, b]);
        let positions: Vec<Vec<usize>> = chains.into_iter().map(|(_, chain)| chain).collect();
        assert_eq!(positions, vec![vec![0, 2, 3], vec![1, 4]]);
    }

    #[tokio::test]
    async fn a_key_s_turn_waits_for_the_turns_claimed_before_it() {
        let gates = KeyGates::default();
        let key = (Table::Users, Uuid::new_v4());
        let first = gates.claim(key);
        let mut second = gates.claim(key);
        let mut third = gates.claim(key);
        let mut other = gates.claim((Table::Orders, key.1));
        assert_eq!(gates.pending(), 2);
        assert!(
            other.begin().now_or_never().is_some(),
            "another key does not wait"
        );
        {
            let mut waiting = std::pin::pin!(second.begin());
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            drop(first);
            assert!(futures::poll!(waiting.as_mut()).is_ready());
        }
        assert!(
            third.begin().now_or_never().is_none(),
            "the third waits for the second"
        );
        drop(second);
        assert!(third.begin().now_or_never().is_some());
        drop(other);
        assert_eq!(gates.pending(), 1, "the key's latest turn is still held");
        drop(third);
        assert_eq!(gates.pending(), 0, "ended turns leave nothing behind");
    }

    #[test]
    fn undo_deletes_what_the_upserts_wrote() {
        let plan = writes(&fixture("orders_c"));
        let undone = undo(&plan);
        assert_eq!(undone.len(), 2);
        assert!(matches!(undone[0], Write::DeleteOrder(id) if id == plan.key));
        assert!(
            matches!(undone[1], Write::DeleteOrderByUser { order_id, .. } if order_id == plan.key)
        );
    }
}
