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
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::PartitionLabels;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Makes a batch of records from one partition durable.
pub trait BatchHandler: Send + Sync + 'static {
    /// Returns `Ok` only when every record of `batch` has been applied to the sink or parked in the
    /// dead-letter topic. Transient failures are retried inside; `Err` means the handler gave up
    /// because `cancel` fired, and the batch will be read again.
    ///
    /// With [`RuntimeOptions::pipeline`] above 1, a partition's later batches are handled while
    /// earlier ones are still in flight. The runtime polls each returned future once right away,
    /// before it starts the partition's next batch: what a handler does before its first `.await`
    /// therefore happens in batch order (a handler that keeps per-key order across batches claims
    /// its keys there).
    fn handle(
        &self,
        batch: &[OwnedMessage],
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), Cancelled>> + Send;
}

/// The handler stopped because the partition is being revoked or the process is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled before the batch was durable")]
pub struct Cancelled;

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Most records handed to the handler at once.
    pub max_batch: usize,
    /// How long a task waits for records not yet fetched once its batch has one; records already
    /// fetched join the batch at once (up to `max_batch`), whatever the linger.
    pub batch_linger: Duration,
    /// Batches of one partition handled at once. The next batch is read and started while earlier
    /// ones are still being written; offsets are stored strictly in order, each only when its
    /// batch and every earlier one are durable. 1 handles one batch at a time.
    pub pipeline: usize,
    /// How long a revoked or stopping partition may take to finish its batch.
    pub drain_timeout: Duration,
    /// Stop when no record arrived for this long; `None` runs until cancelled.
    pub idle_timeout: Option<Duration>,
    /// Where to report each partition's lag after every batch.
    pub lag: Option<Family<PartitionLabels, Gauge>>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            max_batch: 500,
            batch_linger: Duration::from_millis(20),
            pipeline: 1,
            drain_timeout: Duration::from_secs(8),
            idle_timeout: None,
            lag: None,
        }
    }
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Cancelled,
    Idle,
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

/// A batch in flight: counted busy from its start until its future completes or is dropped.
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

pub struct PartitionContext<H: BatchHandler> {
    handler: Arc<H>,
    options: RuntimeOptions,
    consumer: OnceLock<Weak<PartitionedConsumer<H>>>,
    tasks: Mutex<HashMap<(String, i32), PartitionTask>>,
    /// Queues split off in `pre_rebalance`, waiting for their task in `post_rebalance`.
    split_queues: Mutex<HashMap<(String, i32), StreamPartitionQueue<Self>>>,
    runtime: Handle,
    activity: Arc<Activity>,
}

impl<H: BatchHandler> std::fmt::Debug for PartitionContext<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionContext")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

type PartitionedConsumer<H> = StreamConsumer<PartitionContext<H>>;

impl<H: BatchHandler> PartitionContext<H> {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), PartitionTask>> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Splits off the partition's queue. Done before librdkafka assigns the partition: a queue
    /// split after assignment may already have forwarded fetched records to the consumer's main
    /// queue.
    fn split(&self, consumer: &Arc<PartitionedConsumer<H>>, topic: &str, partition: i32) {
        match consumer.split_partition_queue(topic, partition) {
            Some(queue) => {
                self.split_queues()
                    .insert((topic.to_owned(), partition), queue);
            }
            None => tracing::error!(topic, partition, "could not split the partition queue"),
        }
    }

    fn split_queues(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, i32), StreamPartitionQueue<Self>>> {
        self.split_queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start(&self, consumer: &Arc<PartitionedConsumer<H>>, topic: &str, partition: i32) {
        let split = self.split_queues().remove(&(topic.to_owned(), partition));
        let Some(queue) = split.or_else(|| consumer.split_partition_queue(topic, partition)) else {
            tracing::error!(topic, partition, "could not split the partition queue");
            return;
        };
        let cancel = CancellationToken::new();
        let (done_tx, done) = mpsc::channel();
        let join = self.runtime.spawn(partition_loop(
            queue,
            Arc::downgrade(consumer),
            topic.to_owned(),
            partition,
            Arc::clone(&self.handler),
            self.options.clone(),
            cancel.clone(),
            Arc::clone(&self.activity),
            DoneGuard(done_tx),
        ));
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
}

impl<H: BatchHandler> ClientContext for PartitionContext<H> {
    /// librdkafka's statistics carry each partition's lag behind the high watermark.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(lag) = &self.options.lag else { return };
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.get_or_create(&PartitionLabels {
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

/// What a batch's future yields: the handler's verdict and the batch, for its offsets.
pub type BatchOutcome = (Result<(), Cancelled>, Vec<OwnedMessage>);
pub type BatchFuture = Pin<Box<dyn Future<Output = BatchOutcome> + Send>>;

/// Starts handling `batch` as the runtime does: the future is polled once here, so whatever the
/// handler does before its first `.await` happens now, before the partition's next batch starts.
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
    let mut future: BatchFuture = Box::pin(async move {
        let result = handler.handle(&batch, &cancel).await;
        drop(busy);
        (result, batch)
    });
    match futures::poll!(future.as_mut()) {
        Poll::Ready(outcome) => Box::pin(std::future::ready(outcome)),
        Poll::Pending => future,
    }
}

#[allow(clippy::too_many_arguments)]
async fn partition_loop<H: BatchHandler>(
    queue: StreamPartitionQueue<PartitionContext<H>>,
    consumer: Weak<PartitionedConsumer<H>>,
    topic: String,
    partition: i32,
    handler: Arc<H>,
    options: RuntimeOptions,
    cancel: CancellationToken,
    activity: Arc<Activity>,
    _done: DoneGuard,
) {
    let depth = options.pipeline.max(1);
    let mut in_flight: FuturesOrdered<BatchFuture> = FuturesOrdered::new();
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(options.max_batch);
    // When the batch being filled must go, full or not; set by its first record.
    let mut linger_until = tokio::time::Instant::now();
    loop {
        let room = in_flight.len() < depth && !cancel.is_cancelled();
        let ready = room
            && !batch.is_empty()
            && (batch.len() >= options.max_batch || tokio::time::Instant::now() >= linger_until);
        if ready {
            let taken = std::mem::replace(&mut batch, Vec::with_capacity(options.max_batch));
            in_flight.push_back(start_counted(&handler, taken, &cancel, Some(&activity)).await);
            continue;
        }
        tokio::select! {
            biased;
            // With batches in flight, their handlers see the cancel and end them (below).
            () = cancel.cancelled(), if in_flight.is_empty() => break,
            Some((handled, done)) = in_flight.next(), if !in_flight.is_empty() => {
                let Some(last_offset) = done.last().map(Message::offset) else { continue };
                match handled {
                    Ok(()) => {
                        if let Some(consumer) = consumer.upgrade() {
                            if let Err(error) = consumer.store_offset(&topic, partition, last_offset) {
                                tracing::warn!(topic, partition, offset = last_offset, error = %error, "storing offset failed");
                            }
                        }
                        tracing::debug!(
                            topic,
                            partition,
                            records = done.len(),
                            offset = last_offset,
                            "batch durable"
                        );
                    }
                    Err(Cancelled) => {
                        tracing::info!(
                            topic,
                            partition,
                            records = done.len(),
                            later_batches = in_flight.len(),
                            "batch abandoned on cancel; it and any later batch will be read again"
                        );
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(linger_until), if room && !batch.is_empty() => {}
            received = queue.recv(), if room && batch.len() < options.max_batch => match received {
                Ok(message) => {
                    if batch.is_empty() {
                        linger_until = tokio::time::Instant::now() + options.batch_linger;
                    }
                    batch.push(message.detach());
                    // Whatever is already fetched joins the batch now: the linger only waits for
                    // records that have not arrived, so a short (or zero) linger still makes full
                    // batches from a backlog.
                    while batch.len() < options.max_batch {
                        match queue.recv().now_or_never() {
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
    // Batches still in flight are dropped here, unacknowledged.
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
        config.set("session.timeout.ms", "10000");
    }
    if options.lag.is_some() && config.get("statistics.interval.ms").is_none() {
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
    let context = PartitionContext {
        handler,
        options,
        consumer: OnceLock::new(),
        tasks: Mutex::new(HashMap::new()),
        split_queues: Mutex::new(HashMap::new()),
        runtime: Handle::current(),
        activity: Arc::clone(&activity),
    };
    let consumer: Arc<PartitionedConsumer<H>> = Arc::new(config.create_with_context(context)?);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    consumer.subscribe(topics)?;
    tracing::info!(?topics, "consuming");

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let end = loop {
        tokio::select! {
            () = shutdown.cancelled() => break RunEnd::Cancelled,
            _ = tick.tick() => {
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
