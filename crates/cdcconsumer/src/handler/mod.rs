//! cdcconsumer's batch handler: Debezium change events from `cdc.public.users` and
//! `cdc.public.orders` into Cassandra's users, orders and orders_by_user tables. One job per
//! module:
//!
//! - [`plan`]: decoding and planning — a record becomes the mutations it implies, all stamped
//!   `USING TIMESTAMP <source LSN>`, so replays, duplicates and reordering converge to PostgreSQL's
//!   state without lightweight transactions.
//! - [`gates`]: per-key ordering — one row's changes in source order, across the batches a
//!   partition has in flight.
//! - `write`: writing with retries and the same timestamps, leaving out writes a newer one of the
//!   same row in the batch replaces, several small keys' changes in one request, up to `lanes`
//!   requests at once.
//! - `truncate`: truncations, and undoing writes a truncation made obsolete.
//!
//! **Failures**: a failure that is not the record's own fault (write timeouts, unavailable
//! replicas, broken connections, missing tables or permissions) is retried with the same
//! timestamp; past the retry budget the batch gives up and the runtime stalls the partition
//! visibly. An undecodable record, or one whose values Cassandra refuses, is parked in
//! `<topic>.dlq` and the partition moves on. The batch is durable — and its offsets may be
//! stored — only when every record is written or parked.
//!
//! **Memory**: a batch's records are held only until it is planned and its undecodable and
//! impossible records are parked; the writes run on the plans alone. A record Cassandra refuses
//! is read again from Kafka by its offset for its dead letter (`DeadLetters::park_at`).

mod evolve;
pub mod gates;
pub mod plan;
pub mod positions;
mod truncate;
mod write;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_core::debezium::Encoding;
use cdc_core::dlq::{DeadLetters, Position};
use cdc_core::metrics::{Metrics, Tally, TopicLabels};
use cdc_core::outcome::Interrupted;
use cdc_core::retry::retry;
use cdc_core::runtime::BatchHandler;
use cdc_core::tables::Table;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rdkafka::message::{Message, OwnedMessage};
use scylla::client::session::Session;
use tokio_util::sync::CancellationToken;

use crate::cassandra::{Statements, Truncations};
use crate::columns::{MirroredColumns, Registry};
use gates::{chains_by_key, KeyGates, Turn};
use plan::{plan_record, Plan, PlanError, Planned};
use positions::PositionGuard;

/// A record whose values Cassandra refuses.
pub const REJECTED_BY_CASSANDRA: &str = "rejected_by_cassandra";

/// Every dead-letter reason of the CDC path.
pub fn reasons() -> Vec<&'static str> {
    let mut reasons = plan::REASONS.to_vec();
    reasons.extend([REJECTED_BY_CASSANDRA, positions::IMPOSSIBLE_POSITION]);
    reasons
}

/// Metrics of cdcconsumer beyond the common ones.
#[derive(Debug, Clone)]
pub struct CdcMetrics {
    /// Now − source commit time, observed when a change is written.
    pub end_to_end_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// The same for the latest change written, in milliseconds.
    pub end_to_end_lag_ms: Family<TopicLabels, Gauge>,
    /// Writes not sent because a newer write of the same row in the same batch replaces them.
    pub writes_left_out: Family<TopicLabels, Counter>,
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
            writes_left_out: Family::default(),
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
        metrics.register(
            "writes_left_out",
            "Writes not sent because a newer write of the same row in the same batch replaces them",
            this.writes_left_out.clone(),
        );
        this
    }
}

pub struct CdcHandler {
    pub session: Arc<Session>,
    pub statements: Statements,
    pub dlq: DeadLetters,
    pub metrics: Metrics,
    pub cdc_metrics: CdcMetrics,
    /// Keys written at once per batch (a partition has up to `pipeline` batches in flight).
    pub lanes: usize,
    /// How the connector encodes decimals (for records without an embedded schema) and unchanged
    /// TOASTed columns.
    pub encoding: Encoding,
    /// How long a failure that is not a record's fault is retried before the batch gives up.
    pub give_up_after: Duration,
    /// Per-key order across batches in flight; start with `KeyGates::default()`.
    pub gates: KeyGates,
    /// Refuses positions beyond PostgreSQL's current WAL (none: positions are not checked), and
    /// confirms schema changes.
    pub positions: Option<PositionGuard>,
    /// Columns added to the captured tables since the description.
    pub columns: Arc<MirroredColumns>,
}

impl std::fmt::Debug for CdcHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcHandler")
            .field("lanes", &self.lanes)
            .field("encoding", &self.encoding)
            .field("give_up_after", &self.give_up_after)
            .finish_non_exhaustive()
    }
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
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
        /// The truncate record's position in the batch.
        index: usize,
        table: &'static Table,
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
    nothing: usize,
    /// The added columns the batch was planned with.
    registry: Arc<Registry>,
}

impl Decoded<'_> {
    /// The records (positions in the batch) whose source position is above `ceiling`, with it.
    fn beyond(&self, ceiling: i64) -> Vec<(usize, i64)> {
        let mut found = Vec::new();
        for step in &self.steps {
            match step {
                Step::Segment(segment) => found.extend(
                    segment
                        .plans
                        .iter()
                        .filter(|(_, plan)| plan.lsn > ceiling)
                        .map(|(index, plan)| (*index, plan.lsn)),
                ),
                Step::Truncate { index, lsn, .. } if *lsn > ceiling => found.push((*index, *lsn)),
                Step::Truncate { .. } => {}
            }
        }
        found
    }

    /// The highest source position the batch claims.
    fn max_lsn(&self) -> i64 {
        self.steps
            .iter()
            .map(|step| match step {
                Step::Segment(segment) => {
                    segment.plans.iter().map(|(_, p)| p.lsn).max().unwrap_or(0)
                }
                Step::Truncate { lsn, .. } => *lsn,
            })
            .max()
            .unwrap_or(0)
    }
}

impl CdcHandler {
    /// The highest position that can be real (`i64::MAX` without a guard), asked of PostgreSQL
    /// only when the batch claims a position above the last answer.
    async fn position_ceiling(
        &self,
        max_lsn: i64,
        cancel: &CancellationToken,
    ) -> Result<i64, Interrupted> {
        let Some(guard) = &self.positions else {
            return Ok(i64::MAX);
        };
        retry("check source positions", self.give_up_after, cancel, || {
            guard.ceiling(max_lsn)
        })
        .await?
        .map_err(|error| Interrupted::gave_up("check source positions", error))
    }

    /// Decodes and plans `batch` and claims its keys' turns; no `.await`, so batches claim in the
    /// order the runtime starts them.
    fn decode<'a>(&'a self, batch: &[OwnedMessage]) -> Decoded<'a> {
        let registry = self.columns.current();
        let mut decoded = Decoded {
            steps: Vec::new(),
            refused: Vec::new(),
            nothing: 0,
            registry: Arc::clone(&registry),
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
            match plan_record(message.key(), message.payload(), &self.encoding, &registry) {
                Ok(Planned::Writes(p)) => plans.push((index, p)),
                Ok(Planned::Truncate {
                    table,
                    lsn,
                    commit_micros,
                }) => {
                    decoded.steps.push(close(std::mem::take(&mut plans)));
                    decoded.steps.push(Step::Truncate {
                        index,
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

impl BatchHandler for CdcHandler {
    async fn handle(
        &self,
        batch: Vec<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let started = Instant::now();
        // Before any `.await`: see `KeyGates`.
        let mut decoded = self.decode(&batch);
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let topic = TopicLabels {
            topic: first.topic().to_owned(),
        };
        let partition = first.partition();
        let offsets: Vec<i64> = batch.iter().map(Message::offset).collect();
        // Schema changes first: nothing of the batch is written or parked before they are met.
        let registry = Arc::clone(&decoded.registry);
        self.stop_on_drift(&decoded, &registry, cancel).await?;
        // `<prefix>.<schema>.<table>`
        let schema = topic
            .topic
            .rsplit('.')
            .nth(1)
            .unwrap_or("public")
            .to_owned();
        self.add_new_columns(&mut decoded, &registry, &schema, cancel)
            .await?;
        let mut tally = Tally {
            applied: decoded.nothing,
            parked: Vec::new(),
        };
        // Observed only once the batch is durable (a batch handed over again counts once).
        let mut written = Vec::new();
        let mut left_out_total = 0;
        for (index, error) in &decoded.refused {
            let message = error.to_string();
            self.dlq
                .park(&batch[*index], error.reason(), message, &mut tally, cancel)
                .await?;
        }
        // Positions that cannot be real are parked, never written; parked now, while the
        // records are at hand.
        let ceiling = self.position_ceiling(decoded.max_lsn(), cancel).await?;
        let impossible = decoded.beyond(ceiling);
        for (index, lsn) in &impossible {
            let why = positions::impossible(*lsn, ceiling);
            let reason = positions::IMPOSSIBLE_POSITION;
            self.dlq
                .park(&batch[*index], reason, why, &mut tally, cancel)
                .await?;
        }
        // Planned: the records are let go of here, before the writes (the longest part of a
        // batch); one Cassandra refuses is read again from Kafka for its dead letter.
        let records = batch.len();
        drop(batch);
        let impossible: BTreeSet<usize> = impossible.into_iter().map(|(i, _)| i).collect();
        for step in decoded.steps {
            match step {
                Step::Segment(segment) if segment.plans.is_empty() => {}
                Step::Segment(Segment { mut plans, chains }) => {
                    for (index, plan) in &mut plans {
                        if impossible.contains(index) {
                            plan.writes.clear();
                        }
                    }
                    // Snapshot reads are written just above their table's latest truncation.
                    let truncations = if plans.iter().any(|(_, plan)| plan.fill) {
                        self.read_truncations(cancel).await?
                    } else {
                        Truncations::default()
                    };
                    let (pending, left_out) = write::pending(&plans, &chains, &truncations);
                    left_out_total += left_out;
                    let refused = self.write_plans(&pending, chains, cancel).await?;
                    drop(pending);
                    self.settle_truncations(&plans, cancel).await?;
                    let refused_at: BTreeSet<usize> = refused.iter().map(|(i, _)| *i).collect();
                    for (index, error) in refused {
                        let at = Position {
                            topic: &topic.topic,
                            partition,
                            offset: offsets[index],
                        };
                        self.dlq
                            .park_at(
                                at,
                                REJECTED_BY_CASSANDRA,
                                error.to_string(),
                                &mut tally,
                                cancel,
                            )
                            .await?;
                    }
                    for (index, plan) in &plans {
                        if !refused_at.contains(index) && !impossible.contains(index) {
                            tally.applied += 1;
                            written.push(plan.commit_micros);
                        }
                    }
                }
                Step::Truncate { index, .. } if impossible.contains(&index) => {}
                Step::Truncate {
                    table,
                    lsn,
                    commit_micros,
                    ..
                } => {
                    self.truncate(table, lsn, cancel).await?;
                    tally.applied += 1;
                    written.push(commit_micros);
                }
            }
        }
        for commit_micros in written {
            self.observe(&topic, commit_micros);
        }
        self.cdc_metrics
            .writes_left_out
            .get_or_create(&topic)
            .inc_by(left_out_total);
        self.metrics
            .record_batch(&topic.topic, records, &tally, started.elapsed());
        Ok(())
    }
}
