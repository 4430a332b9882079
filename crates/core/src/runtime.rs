//! The per-partition consumer runtime: one tokio task per assigned partition, created and drained
//! as the consumer group rebalances.
//!
//! - On assignment, each partition's messages are split off into their own queue
//!   (`split_partition_queue`) and a task consumes it, so partitions never wait for each other and
//!   each keeps its order.
//! - A task reads a batch (bounded by `max_batch`: every record already fetched, then whatever
//!   arrives within `batch_linger`), hands it to the [`BatchHandler`], and only when
//!   the handler has made every record durable (applied, or parked in the dead-letter topic) stores
//!   the offset after the batch. Auto-commit then commits stored offsets.
//! - Up to `pipeline` batches of a partition are handled at once (1 by default): while they are,
//!   the next batch is read; once that many are in flight nothing more is read for the partition
//!   (backpressure, memory stays flat). Batches complete in any order but their offsets are stored
//!   in order: a batch's offset only once it and every earlier batch are durable. Each batch's future
//!   is polled once when it starts, in batch order (see [`BatchHandler`]).
//! - On revocation the tasks of the revoked partitions are told to stop after their current batch
//!   and waited for (up to `drain_timeout`, below the session timeout); a task still busy then is
//!   abandoned: its batch is not acknowledged and will be read again by the next owner. Stored offsets
//!   are committed before the partitions are given up, and no offset is stored for a partition after
//!   its task stopped.
//! - On shutdown (signal or idle timeout) the same happens for every partition, then a final commit.
//! - **No partition stops silently.** A handler that gives up ([`Interrupted::GaveUp`]: a failure
//!   that is not the records' fault outlasted its budget, or the handler panicked) stalls its
//!   partition: an ERROR log, the partition counted in `cdc_partitions_stalled` and named by
//!   `/readyz` (503). The later batches in flight are stopped, and after a backoff (1 s doubling
//!   to `restart_backoff_max`) the worker seeks the partition back to the stored offset: the same
//!   records, in order, are read and handed over again (the runtime keeps no copy of a batch once
//!   the handler has it, so a batch's records are held once, by its handler, for only as long as
//!   the handler needs them). The first durable batch clears the stall. A stalled partition
//!   is never idle, so an idle timeout cannot end a run with records left behind; with
//!   `max_worker_restarts` the run ends with [`RunEnd::GaveUp`] once a partition used them up,
//!   for a supervisor to restart the process. A worker that ends on its own while its partition is
//!   assigned ends the run with an error.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc as channel;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, PartitionLabels};
use crate::outcome::{GaveUp, Interrupted};

/// Makes a batch of records from one partition durable.
pub trait BatchHandler: Send + Sync + 'static {
    /// Returns `Ok` only when every record of `batch` has been applied to the sink or parked in the
    /// dead-letter topic. Failures that may pass are retried inside.
    ///
    /// - `Err(Interrupted::Cancelled)`: `cancel` fired (revocation or shutdown); the batch will be
    ///   read again by the partition's next owner. Return it only when `cancel` has fired.
    /// - `Err(Interrupted::GaveUp(_))`: the batch cannot be made durable now (a failure that is not
    ///   the records' fault outlasted its budget). The runtime marks the partition stalled and
    ///   hands the same records over again after a backoff.
    ///
    /// With [`RuntimeOptions::pipeline`] above 1, a partition's later batches are handled while
    /// earlier ones are still in flight. The runtime polls each returned future once right away,
    /// before it starts the partition's next batch: what a handler does before its first `.await`
    /// therefore happens in batch order (a handler that keeps per-key order across batches claims
    /// its keys there).
    ///
    /// The handler owns `batch`: what it drops early (a record once planned, say) is freed at
    /// once. The runtime keeps only the batch's offsets; a batch handed over again is read again
    /// from Kafka.
    fn handle(
        &self,
        batch: Vec<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), Interrupted>> + Send;
}

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Most records handed to the handler at once.
    pub max_batch: usize,
    /// Most bytes (keys and payloads) in one batch: a batch is full at `max_batch` records or
    /// once it holds this many bytes, whichever comes first, so what a partition holds in memory
    /// is bounded by size as well as by count. A record larger than the limit makes a batch alone.
    pub max_batch_bytes: usize,
    /// How long a task waits for records not yet fetched once its batch has one; records already
    /// fetched join the batch at once (up to `max_batch`), whatever the linger.
    pub batch_linger: Duration,
    /// Batches of one partition handled at once. The next batch is read and started while earlier
    /// ones are still being written; offsets are stored strictly in order, each only when its
    /// batch and every earlier one are durable. 1 handles one batch at a time.
    pub pipeline: usize,
    /// How long a revoked or stopping partition may take to finish its batch. Must stay below the
    /// consumer group's session timeout ([`run`] refuses to start otherwise).
    pub drain_timeout: Duration,
    /// Stop when no record arrived for this long; `None` runs until cancelled.
    pub idle_timeout: Option<Duration>,
    /// Longest wait before a worker that gave up is restarted (the first wait is 1 s, doubling).
    pub restart_backoff_max: Duration,
    /// End the run ([`RunEnd::GaveUp`]) when one partition's worker has been restarted this many
    /// times in a row without a batch becoming durable; `None` restarts for ever.
    pub max_worker_restarts: Option<u32>,
    /// Where to report lag, stalled partitions and restarts.
    pub metrics: Option<Metrics>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            max_batch: 500,
            max_batch_bytes: usize::MAX,
            batch_linger: Duration::from_millis(20),
            pipeline: 1,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            idle_timeout: None,
            restart_backoff_max: Duration::from_secs(60),
            max_worker_restarts: None,
            metrics: None,
        }
    }
}

/// How long a stopping partition may take to finish its batch, unless told otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(8);
/// The consumer group session timeout the runtime sets unless the client options set one.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The shutdown token fired. `stalled` names the partitions that could not make progress at
    /// that moment (the records after their stored offsets were left for the next run): a run
    /// that ends with any is not a clean one.
    Cancelled { stalled: Vec<(String, i32)> },
    /// No record arrived for the idle timeout, nothing was in flight and no partition was stalled.
    Idle,
    /// A partition could not make progress through [`RuntimeOptions::max_worker_restarts`]
    /// restarts; every worker was stopped. The process should exit non-zero.
    GaveUp {
        topic: String,
        partition: i32,
        why: GaveUp,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("Kafka consumer error: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "record from {topic}/{partition} at offset {offset} arrived outside its partition queue"
    )]
    UnroutedMessage {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "the drain deadline ({drain:?}) must be below the consumer session timeout \
         (session.timeout.ms = {session:?}): a revoked partition's worker could still be writing \
         after the group gave its partition to another member"
    )]
    DrainNotBelowSession { drain: Duration, session: Duration },
    #[error("session.timeout.ms `{0}` is not a number of milliseconds")]
    BadSessionTimeout(String),
    #[error("the worker of {topic}/{partition} ended on its own while the partition was assigned")]
    WorkerEnded { topic: String, partition: i32 },
}

/// Checks that `drain` is below the session timeout `config` will use, so a revoked partition's
/// worker always stops before the group hands the partition to another member.
pub fn check_drain_deadline(config: &ClientConfig, drain: Duration) -> Result<(), RuntimeError> {
    let session = match config.get("session.timeout.ms") {
        None => DEFAULT_SESSION_TIMEOUT,
        Some(text) => Duration::from_millis(
            text.trim()
                .parse()
                .map_err(|_| RuntimeError::BadSessionTimeout(text.to_owned()))?,
        ),
    };
    if drain >= session {
        return Err(RuntimeError::DrainNotBelowSession { drain, session });
    }
    Ok(())
}

/// When any partition last saw a record or finished a batch, and how many batches are in flight:
/// the consumer is idle only when nothing is in flight and nothing arrived for a while.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: std::sync::atomic::AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Work in progress: counted busy from its start until dropped (a batch in flight, or a stalled
/// partition's wait for its restart).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

struct PartitionTask {
    cancel: CancellationToken,
    done: mpsc::Receiver<()>,
    join: JoinHandle<()>,
}

/// Sends on `done` when the task ends, however it ends (return, panic or abort).
struct DoneGuard(mpsc::Sender<()>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A partition whose worker used up its restarts, reported to [`run`].
type Exhausted = (String, i32, GaveUp);

pub struct PartitionContext<H: BatchHandler> {
    handler: Arc<H>,
    options: RuntimeOptions,
    consumer: OnceLock<Weak<PartitionedConsumer<H>>>,
    tasks: Mutex<HashMap<(String, i32), PartitionTask>>,
    /// Queues split off in `pre_rebalance`, waiting for their task in `post_rebalance`.
    split_queues: Mutex<HashMap<(String, i32), StreamPartitionQueue<Self>>>,
    runtime: Handle,
    activity: Arc<Activity>,
    exhausted: channel::UnboundedSender<Exhausted>,
    stalled: Stalled,
}

/// The partitions of this member whose worker is stalled right now.
type Stalled = Arc<Mutex<std::collections::BTreeSet<(String, i32)>>>;

impl<H: BatchHandler> std::fmt::Debug for PartitionContext<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionContext")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

type PartitionedConsumer<H> = StreamConsumer<PartitionContext<H>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<H: BatchHandler> PartitionContext<H> {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), PartitionTask>> {
        lock(&self.tasks)
    }

    /// Splits off the partition's queue. Done before librdkafka assigns the partition: a queue
    /// split after assignment may already have forwarded fetched records to the consumer's main
    /// queue.
    fn split(&self, consumer: &Arc<PartitionedConsumer<H>>, topic: &str, partition: i32) {
        match consumer.split_partition_queue(topic, partition) {
            Some(queue) => {
                lock(&self.split_queues).insert((topic.to_owned(), partition), queue);
            }
            None => tracing::error!(topic, partition, "could not split the partition queue"),
        }
    }

    fn start(&self, consumer: &Arc<PartitionedConsumer<H>>, topic: &str, partition: i32) {
        let split = lock(&self.split_queues).remove(&(topic.to_owned(), partition));
        let Some(queue) = split.or_else(|| consumer.split_partition_queue(topic, partition)) else {
            tracing::error!(topic, partition, "could not split the partition queue");
            return;
        };
        let cancel = CancellationToken::new();
        let (done_tx, done) = mpsc::channel();
        let worker = PartitionWorker {
            queue,
            topic: topic.to_owned(),
            partition,
            handler: Arc::clone(&self.handler),
            options: self.options.clone(),
            cancel: cancel.clone(),
            activity: Arc::clone(&self.activity),
            exhausted: self.exhausted.clone(),
            stalled: Arc::clone(&self.stalled),
        };
        let join = self
            .runtime
            .spawn(worker.run(Arc::downgrade(consumer), DoneGuard(done_tx)));
        tracing::info!(topic, partition, "partition assigned; worker started");
        if let Some(old) = self.tasks().insert(
            (topic.to_owned(), partition),
            PartitionTask { cancel, done, join },
        ) {
            old.cancel.cancel();
        }
    }

    /// Stops the tasks of the given partitions (all when `None`) and waits for them.
    fn stop(&self, which: Option<&TopicPartitionList>) {
        let stopping: Vec<((String, i32), PartitionTask)> = {
            let mut tasks = self.tasks();
            let keys: Vec<(String, i32)> = match which {
                None => tasks.keys().cloned().collect(),
                Some(tpl) => tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect(),
            };
            keys.into_iter()
                .filter_map(|k| tasks.remove(&k).map(|t| (k, t)))
                .collect()
        };
        for (_, task) in &stopping {
            task.cancel.cancel();
        }
        let deadline = Instant::now() + self.options.drain_timeout;
        let wait = || {
            for ((topic, partition), task) in &stopping {
                let left = deadline.saturating_duration_since(Instant::now());
                match task.done.recv_timeout(left) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        tracing::info!(topic, partition, "partition worker stopped");
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        task.join.abort();
                        tracing::warn!(
                            topic,
                            partition,
                            "partition worker did not finish its batch in time; abandoned, \
                             the batch will be read again"
                        );
                    }
                }
                // No longer owned here: its stall, if any, is the next owner's to report.
                lock(&self.stalled).remove(&(topic.clone(), *partition));
                if let Some(metrics) = &self.options.metrics {
                    metrics.clear_stalled(&PartitionLabels {
                        topic: topic.clone(),
                        partition: *partition,
                    });
                }
            }
        };
        // Called from librdkafka's rebalance callback on a runtime worker: let the other workers
        // carry on with the partition tasks while this one waits.
        if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
            tokio::task::block_in_place(wait);
        } else {
            wait();
        }
    }

    /// A partition whose worker ended although nobody stopped it (a panic outside the handler):
    /// the partition would stay assigned and unread.
    fn ended_worker(&self) -> Option<(String, i32)> {
        self.tasks()
            .iter()
            .find(|(_, task)| task.join.is_finished())
            .map(|(key, _)| key.clone())
    }
}

impl<H: BatchHandler> ClientContext for PartitionContext<H> {
    /// librdkafka's statistics carry each partition's lag behind the high watermark.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(metrics) = &self.options.metrics else {
            return;
        };
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics
                        .lag
                        .get_or_create(&PartitionLabels {
                            topic: topic.clone(),
                            partition: *partition,
                        })
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl<H: BatchHandler> ConsumerContext for PartitionContext<H> {
    fn pre_rebalance(
        &self,
        base: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(
                    partitions = tpl.count(),
                    "partitions revoked; draining their workers"
                );
                self.stop(Some(tpl));
                commit_stored(base);
            }
            Rebalance::Assign(tpl) => {
                let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
                    return;
                };
                for element in tpl.elements() {
                    self.split(&consumer, element.topic(), element.partition());
                }
            }
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(
        &self,
        _base: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
                    return;
                };
                for element in tpl.elements() {
                    self.start(&consumer, element.topic(), element.partition());
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::error!(error = %error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(error = %error, "offset commit failed"),
        }
    }
}

fn commit_stored<X: ConsumerContext, C: Consumer<X>>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(error = %error, "committing stored offsets failed"),
    }
}

/// Where a batch lay in its partition: what the runtime keeps of it once the handler has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    /// The first record's offset.
    pub first: i64,
    /// The last record's offset.
    pub last: i64,
    /// How many records the batch held.
    pub records: usize,
}

impl BatchSpan {
    /// The span of `batch`, `None` when it is empty.
    pub fn of(batch: &[OwnedMessage]) -> Option<Self> {
        Some(Self {
            first: batch.first()?.offset(),
            last: batch.last()?.offset(),
            records: batch.len(),
        })
    }
}

/// What a batch's future yields: the handler's verdict and where the batch lay.
pub type BatchOutcome = (Result<(), Interrupted>, Option<BatchSpan>);
pub type BatchFuture = Pin<Box<dyn Future<Output = BatchOutcome> + Send>>;

/// Starts handling `batch` as the runtime does: the future is polled once here, so whatever the
/// handler does before its first `.await` happens now, before the partition's next batch starts.
/// A handler that panics has given up.
pub async fn start_batch<H: BatchHandler>(
    handler: &Arc<H>,
    batch: Vec<OwnedMessage>,
    cancel: &CancellationToken,
) -> BatchFuture {
    start_counted(handler, batch, cancel, None).await
}

async fn start_counted<H: BatchHandler>(
    handler: &Arc<H>,
    batch: Vec<OwnedMessage>,
    cancel: &CancellationToken,
    activity: Option<&Arc<Activity>>,
) -> BatchFuture {
    let (handler, cancel) = (Arc::clone(handler), cancel.clone());
    let busy = activity.map(Busy::new);
    let span = BatchSpan::of(&batch);
    let mut future: BatchFuture = Box::pin(async move {
        let handled = std::panic::AssertUnwindSafe(handler.handle(batch, &cancel))
            .catch_unwind()
            .await;
        let result = match handled {
            Ok(Err(Interrupted::Cancelled)) if !cancel.is_cancelled() => Err(Interrupted::gave_up(
                "batch",
                "the handler reported a cancellation nobody asked for",
            )),
            Ok(result) => result,
            Err(panic) => Err(Interrupted::gave_up(
                "batch",
                format_args!("the handler panicked: {}", panic_message(panic.as_ref())),
            )),
        };
        drop(busy);
        (result, span)
    });
    match futures::poll!(future.as_mut()) {
        Poll::Ready(outcome) => Box::pin(std::future::ready(outcome)),
        Poll::Pending => future,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// One partition's worker: reads its queue into batches, hands them to the handler, stores
/// offsets in order, and recovers when the handler gives up.
struct PartitionWorker<H: BatchHandler> {
    queue: StreamPartitionQueue<PartitionContext<H>>,
    topic: String,
    partition: i32,
    handler: Arc<H>,
    options: RuntimeOptions,
    cancel: CancellationToken,
    activity: Arc<Activity>,
    exhausted: channel::UnboundedSender<Exhausted>,
    stalled: Stalled,
}

/// The batch a partition worker is filling: full at `max_batch` records or `max_batch_bytes`
/// bytes of keys and payloads, whichever comes first.
struct Filling {
    records: Vec<OwnedMessage>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl Filling {
    fn new(options: &RuntimeOptions) -> Self {
        let max_records = options.max_batch.max(1);
        Self {
            records: Vec::with_capacity(max_records),
            bytes: 0,
            max_records,
            max_bytes: options.max_batch_bytes.max(1),
        }
    }

    fn push(&mut self, message: OwnedMessage) {
        self.bytes +=
            message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
        self.records.push(message);
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn is_full(&self) -> bool {
        self.records.len() >= self.max_records || self.bytes >= self.max_bytes
    }

    /// The records so far, leaving the batch empty.
    fn take(&mut self) -> Vec<OwnedMessage> {
        self.bytes = 0;
        std::mem::replace(&mut self.records, Vec::with_capacity(self.max_records))
    }
}

/// A stall in progress: the partition is marked stalled (and busy) until a batch is durable again.
struct Stall {
    restarts: u32,
    _busy: Busy,
}

impl<H: BatchHandler> PartitionWorker<H> {
    fn labels(&self) -> PartitionLabels {
        PartitionLabels {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }

    /// Runs until cancelled. Nothing else ends it: a handler that gives up stalls the partition
    /// visibly and the same records are handed over again after a backoff.
    async fn run(self, consumer: Weak<PartitionedConsumer<H>>, _done: DoneGuard) {
        let (topic, partition) = (self.topic.clone(), self.partition);
        let depth = self.options.pipeline.max(1);
        let mut in_flight: FuturesOrdered<BatchFuture> = FuturesOrdered::new();
        let mut batch = Filling::new(&self.options);
        // Batches of one generation share a token, so a restart can stop the later ones.
        let mut generation = self.cancel.child_token();
        let mut stall: Option<Stall> = None;
        // When the batch being filled must go, full or not; set by its first record.
        let mut linger_until = tokio::time::Instant::now();
        loop {
            let room = in_flight.len() < depth && !self.cancel.is_cancelled();
            let ready = room
                && !batch.is_empty()
                && (batch.is_full() || tokio::time::Instant::now() >= linger_until);
            if ready {
                let taken = batch.take();
                in_flight.push_back(
                    start_counted(&self.handler, taken, &generation, Some(&self.activity)).await,
                );
                continue;
            }
            tokio::select! {
                biased;
                // With batches in flight, their handlers see the cancel and end them (below).
                () = self.cancel.cancelled(), if in_flight.is_empty() => break,
                Some((handled, done)) = in_flight.next(), if !in_flight.is_empty() => {
                    let Some(done) = done else { continue };
                    let last_offset = done.last;
                    match handled {
                        Ok(()) => {
                            if let Some(consumer) = consumer.upgrade() {
                                if let Err(error) = consumer.store_offset(&topic, partition, last_offset) {
                                    tracing::warn!(topic, partition, offset = last_offset, error = %error, "storing offset failed");
                                }
                            } else {
                                tracing::debug!(topic, partition, offset = last_offset, "the consumer is gone (the run is stopping); the durable batch's offset is not stored and it is read again");
                            }
                            tracing::debug!(topic, partition, records = done.records, offset = last_offset, "batch durable");
                            if stall.take().is_some() {
                                tracing::info!(topic, partition, offset = last_offset, "partition makes progress again");
                                lock(&self.stalled).remove(&(topic.clone(), partition));
                                if let Some(metrics) = &self.options.metrics {
                                    metrics.clear_stalled(&self.labels());
                                }
                            }
                        }
                        Err(Interrupted::Cancelled) => {
                            tracing::info!(
                                topic,
                                partition,
                                records = done.records,
                                later_batches = in_flight.len(),
                                "batch abandoned on cancel; it and any later batch will be read again"
                            );
                            break;
                        }
                        Err(Interrupted::GaveUp(why)) => {
                            // Everything from this batch on is read again, in order: the later
                            // batches in flight are stopped and awaited, the one being filled
                            // dropped, and the partition sought back to this batch's first record
                            // (the offset after the last stored one).
                            generation.cancel();
                            while in_flight.next().await.is_some() {}
                            drop(batch.take());
                            let restarts = stall.as_ref().map_or(0, |s| s.restarts);
                            if !self.report_stall(&why, done.first, restarts).await
                                || !self.seek(&consumer, done.first).await
                            {
                                break;
                            }
                            stall = Some(Stall {
                                restarts: restarts + 1,
                                _busy: stall.map_or_else(|| Busy::new(&self.activity), |s| s._busy),
                            });
                            generation = self.cancel.child_token();
                        }
                    }
                }
                () = tokio::time::sleep_until(linger_until), if room && !batch.is_empty() => {}
                received = self.queue.recv(), if room && !batch.is_full() => match received {
                    Ok(message) => {
                        if batch.is_empty() {
                            linger_until = tokio::time::Instant::now() + self.options.batch_linger;
                        }
                        batch.push(message.detach());
                        // Whatever is already fetched joins the batch now: the linger only waits for
                        // records that have not arrived, so a short (or zero) linger still makes full
                        // batches from a backlog.
                        while !batch.is_full() {
                            match self.queue.recv().now_or_never() {
                                Some(Ok(message)) => batch.push(message.detach()),
                                Some(Err(error)) => {
                                    tracing::warn!(topic, partition, error = %error, "fetch error");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(error) => tracing::warn!(topic, partition, error = %error, "fetch error"),
                },
            }
        }
        // Batches still in flight are dropped here, unacknowledged. A stall, if any, stays
        // recorded until the run collects it or the partition's next worker makes progress.
    }

    /// Moves the partition's fetch position back to `offset`; records fetched before are dropped
    /// by librdkafka, so the next record read is the one at `offset`. A failed seek is retried
    /// (logged each time) until it succeeds: reading on from the old position would let a later
    /// batch's offset be stored past records never made durable. Returns `false` when cancelled.
    async fn seek(&self, consumer: &Weak<PartitionedConsumer<H>>, offset: i64) -> bool {
        let (topic, partition) = (self.topic.as_str(), self.partition);
        let mut attempt = 0_u32;
        loop {
            let Some(consumer) = consumer.upgrade() else {
                tracing::debug!(
                    topic,
                    partition,
                    offset,
                    "the consumer is gone (the run is stopping); the worker ends without seeking"
                );
                return false;
            };
            let owned_topic = self.topic.clone();
            let sought = tokio::task::spawn_blocking(move || {
                consumer.seek(
                    &owned_topic,
                    partition,
                    Offset::Offset(offset),
                    SEEK_TIMEOUT,
                )
            })
            .await;
            let error = match sought {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => error.to_string(),
                Err(join) => join.to_string(),
            };
            let delay = restart_delay(attempt, self.options.restart_backoff_max);
            tracing::error!(
                topic,
                partition,
                offset,
                error,
                "seeking the partition back to the stored offset failed; retrying in {delay:?}"
            );
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Reports that the handler gave up at `offset`, then waits before the restart. Returns
    /// `false` when the worker must not restart: cancelled meanwhile, or out of restarts (then
    /// the run is told to end).
    async fn report_stall(&self, why: &GaveUp, offset: i64, restarts: u32) -> bool {
        let (topic, partition) = (self.topic.as_str(), self.partition);
        let delay = restart_delay(restarts, self.options.restart_backoff_max);
        tracing::error!(
            topic,
            partition,
            offset,
            restarts,
            error = %why,
            "partition stalled: its worker gave up; it restarts from the stored offset in {delay:?}"
        );
        lock(&self.stalled).insert((self.topic.clone(), partition));
        if let Some(metrics) = &self.options.metrics {
            metrics.set_stalled(self.labels(), why.to_string());
        }
        if self
            .options
            .max_worker_restarts
            .is_some_and(|max| restarts >= max)
        {
            tracing::error!(
                topic,
                partition,
                restarts,
                "partition worker out of restarts; stopping the run"
            );
            let _ = self
                .exhausted
                .send((self.topic.clone(), partition, why.clone()));
            // Stay stalled (and registered) until the run stops every worker.
            self.cancel.cancelled().await;
            return false;
        }
        tokio::select! {
            () = self.cancel.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        if let Some(metrics) = &self.options.metrics {
            metrics.worker_restarts.get_or_create(&self.labels()).inc();
        }
        tracing::warn!(
            topic,
            partition,
            offset,
            "restarting the partition worker from the stored offset"
        );
        true
    }
}

/// How long one seek may wait for librdkafka to move a partition's fetch position.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// 1 s, doubling with each restart in a row, at most `max`.
fn restart_delay(restarts: u32, max: Duration) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(2_u32.saturating_pow(restarts.min(16)))
        .min(max)
}

/// Consumes `topics` with one task per assigned partition until `shutdown` fires or, with an idle
/// timeout, no record arrived for that long. `config` must hold `bootstrap.servers` and `group.id`;
/// offset storing and committing are set here.
pub async fn run<H: BatchHandler>(
    mut config: ClientConfig,
    topics: &[&str],
    handler: Arc<H>,
    options: RuntimeOptions,
    shutdown: CancellationToken,
) -> Result<RunEnd, RuntimeError> {
    // A crashed member's partitions move on after the session timeout; drain_timeout stays below it.
    if config.get("session.timeout.ms").is_none() {
        config.set(
            "session.timeout.ms",
            DEFAULT_SESSION_TIMEOUT.as_millis().to_string(),
        );
    }
    check_drain_deadline(&config, options.drain_timeout)?;
    if options.metrics.is_some() && config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", "5000");
    }
    config
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        busy: std::sync::atomic::AtomicUsize::new(0),
    });
    let idle_timeout = options.idle_timeout;
    let (exhausted_tx, mut exhausted) = channel::unbounded_channel();
    let context = PartitionContext {
        handler,
        options,
        consumer: OnceLock::new(),
        tasks: Mutex::new(HashMap::new()),
        split_queues: Mutex::new(HashMap::new()),
        runtime: Handle::current(),
        activity: Arc::clone(&activity),
        exhausted: exhausted_tx,
        stalled: Stalled::default(),
    };
    let consumer: Arc<PartitionedConsumer<H>> = Arc::new(config.create_with_context(context)?);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    consumer.subscribe(topics)?;
    tracing::info!(?topics, "consuming");

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let end = loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let stalled: Vec<(String, i32)> =
                    lock(&consumer.context().stalled).iter().cloned().collect();
                break RunEnd::Cancelled { stalled };
            }
            Some((topic, partition, why)) = exhausted.recv() => {
                break RunEnd::GaveUp { topic, partition, why };
            }
            _ = tick.tick() => {
                if let Some((topic, partition)) = consumer.context().ended_worker() {
                    tracing::error!(topic, partition, "partition worker ended on its own; stopping");
                    consumer.context().stop(None);
                    return Err(RuntimeError::WorkerEnded { topic, partition });
                }
                // Idle time counts only while this member owns partitions: a member that waits
                // for an assignment (say, until a crashed predecessor's session expires) is not idle.
                if consumer.context().tasks().is_empty() {
                    activity.touch();
                }
                if let Some(idle) = idle_timeout {
                    if activity.idle_for() >= idle {
                        tracing::info!(idle_secs = idle.as_secs_f64(), "idle timeout reached");
                        break RunEnd::Idle;
                    }
                }
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    let error = RuntimeError::UnroutedMessage {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                    };
                    consumer.context().stop(None);
                    return Err(error);
                }
                Err(error) => tracing::warn!(error = %error, "consumer error"),
            },
        }
    };
    consumer.context().stop(None);
    commit_stored(consumer.as_ref());
    consumer.unsubscribe();
    tracing::info!(?end, "consumer stopped; offsets committed");
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, payload_bytes: usize) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![b'x'; payload_bytes]),
            Some(b"key".to_vec()),
            "topic".to_owned(),
            rdkafka::Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    #[test]
    fn a_batch_is_full_at_its_record_count_or_its_size_whichever_comes_first() {
        let options = RuntimeOptions {
            max_batch: 4,
            max_batch_bytes: 1_000,
            ..RuntimeOptions::default()
        };
        let mut batch = Filling::new(&options);
        // 3 + 397 bytes each: the third record reaches 1,200 bytes, past the limit
        for offset in 0..2 {
            batch.push(record(offset, 397));
            assert!(!batch.is_full());
        }
        batch.push(record(2, 397));
        assert!(batch.is_full());
        let taken = batch.take();
        assert_eq!(
            taken.iter().map(Message::offset).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(batch.is_empty() && !batch.is_full());
        // small records: the count ends the batch
        for offset in 3..7 {
            assert!(!batch.is_full());
            batch.push(record(offset, 1));
        }
        assert!(batch.is_full());
        assert_eq!(batch.take().len(), 4);
        // one record larger than the limit makes a batch on its own
        batch.push(record(7, 5_000));
        assert!(batch.is_full());
        assert_eq!(batch.take().len(), 1);
    }

    #[test]
    fn restarts_back_off_up_to_the_cap() {
        let max = Duration::from_secs(60);
        assert_eq!(restart_delay(0, max), Duration::from_secs(1));
        assert_eq!(restart_delay(3, max), Duration::from_secs(8));
        assert_eq!(restart_delay(6, max), max);
        assert_eq!(restart_delay(u32::MAX, max), max);
    }

    #[test]
    fn the_drain_deadline_must_stay_below_the_session_timeout() {
        let mut config = ClientConfig::new();
        assert!(check_drain_deadline(&config, Duration::from_secs(8)).is_ok());
        assert!(matches!(
            check_drain_deadline(&config, Duration::from_secs(10)),
            Err(RuntimeError::DrainNotBelowSession { .. })
        ));
        config.set("session.timeout.ms", "45000");
        assert!(check_drain_deadline(&config, Duration::from_secs(30)).is_ok());
        config.set("session.timeout.ms", "6000");
        let refused = check_drain_deadline(&config, Duration::from_secs(8));
        let message = refused.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(
            message.contains("must be below the consumer session timeout"),
            "{message}"
        );
        config.set("session.timeout.ms", "ten seconds");
        assert!(matches!(
            check_drain_deadline(&config, Duration::from_secs(1)),
            Err(RuntimeError::BadSessionTimeout(_))
        ));
    }
}
