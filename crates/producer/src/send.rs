//! The producer's work: write a [`Generator`] stream to the users and orders topics with
//! idempotent, acks=all delivery, count every delivery report, and stop cleanly.
//!
//! - **Bounded memory.** The client holds at most 16 MiB of payloads (and 100,000 records) until
//!   their delivery reports (`queue.buffering.max.kbytes` / `queue.buffering.max.messages`, see
//!   [`client_config`]); while its queue is full the loop waits for reports before generating more.
//!   librdkafka keeps that account itself, so the bound costs the send loop nothing per record, and
//!   a bound in bytes holds whatever the record sizes.
//! - **Every record accounted for.** `sent` counts records handed to the client, `acknowledged` and
//!   `failed` count delivery reports (a record the client refuses outright counts as failed).
//!   Records still unconfirmed after the drain timeout are purged, which reports them as failed,
//!   so a run normally ends with `sent == acknowledged + failed`; either way a run succeeded only
//!   if `failed == 0` and `acknowledged == sent`.
//! - **Pacing** with a [`tokio::time::Interval`]: the number of records allowed so far is
//!   `rate × elapsed`, so the average rate holds without a busy loop or drift.
//! - **Stopping.** The stream's end, `--duration` or the shutdown token end generation; in-flight
//!   records are then given [`ProducerSettings::drain_timeout`] to be confirmed.

use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use cdc_core::events::{EntityKind, Event};
use cdc_core::generator::{Generator, GeneratorConfig};

/// Settings the producer uses unless the extra client options say otherwise.
const TUNABLE_DEFAULTS: &[(&str, &str)] = &[
    // A batch per partition every 50 ms at most: at a paced 800 events/s, 5 ms (librdkafka's
    // default) cost the producer 8.5–13.4 CPU-s and the three brokers 56–63 CPU-s a minute,
    // 50 ms 4.0–4.3 and 21 (crates/bench/README.md, "The producer's linger").
    ("linger.ms", "50"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "120000"),
    ("client.id", "cdc-producer"),
    // The memory bound: payload bytes (and records) held until their delivery report. The
    // deeper the queue, the larger the batches and the less CPU per record; 16 MiB keeps the
    // benchmark's peak RSS near 47 MiB (8 MiB: 34 MiB, about a fifth slower).
    ("queue.buffering.max.kbytes", "16384"),
    ("queue.buffering.max.messages", "100000"),
];

/// How long the send loop waits before offering a record again to a full client queue: long
/// enough for a batch of delivery reports to free room, short against the linger and the
/// round trip, so the client never runs dry.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// Settings that make delivery exactly-once per partition and durable on `min.insync.replicas`
/// brokers; never overridden.
const REQUIRED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// The producer's client configuration: `base` (brokers and any extra options) plus idempotent,
/// acks=all delivery. Extra options may change the tunables (`linger.ms`, `compression.type`,
/// `message.timeout.ms`, `client.id`, `queue.buffering.max.messages`,
/// `queue.buffering.max.kbytes`) but not `enable.idempotence` or `acks`.
pub fn client_config(mut base: ClientConfig) -> ClientConfig {
    for (key, value) in TUNABLE_DEFAULTS {
        if base.get(key).is_none() {
            base.set(*key, *value);
        }
    }
    for (key, value) in REQUIRED {
        if base.get(key).is_some_and(|given| given != *value) {
            tracing::warn!(
                key,
                required = value,
                "ignoring a Kafka option the producer must not change"
            );
        }
        base.set(*key, *value);
    }
    base
}

/// What [`run`] does.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub generator: GeneratorConfig,
    /// Events per second; 0 means as fast as the cluster takes them.
    pub rate: u32,
    /// Stop generating after this long (a normal end).
    pub duration: Option<Duration>,
    pub users_topic: String,
    pub orders_topic: String,
    /// How long to wait for outstanding delivery reports once generation stopped.
    pub drain_timeout: Duration,
    /// Print a progress line on stderr every second when stderr is a terminal.
    pub progress: bool,
    /// Where to write one line per event's outcome (see [`AckLog`]), if anywhere.
    pub ack_log: Option<PathBuf>,
}

impl ProducerSettings {
    pub fn new(generator: GeneratorConfig, users_topic: &str, orders_topic: &str) -> Self {
        Self {
            generator,
            rate: 0,
            duration: None,
            users_topic: users_topic.to_owned(),
            orders_topic: orders_topic.to_owned(),
            drain_timeout: Duration::from_secs(30),
            progress: true,
            ack_log: None,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The generator's stream ended.
    Completed,
    /// `duration` elapsed.
    DurationElapsed,
    /// SIGINT or SIGTERM.
    Shutdown,
}

impl StopReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::DurationElapsed => "duration_elapsed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The outcome of a run, printed as the producer's last line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub seed: u64,
    pub stopped: StopReason,
}

impl Summary {
    /// Every record sent was acknowledged.
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.acknowledged == self.sent
    }

    /// Records sent per second of the run.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.sent as f64 / seconds
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    /// `producer: sent=N acknowledged=N failed=N elapsed=S.SSs rate=R events/s seed=SEED`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "producer: sent={} acknowledged={} failed={} elapsed={:.2}s rate={:.1} events/s seed={}",
            self.sent,
            self.acknowledged,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.seed
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    #[error("creating the Kafka producer failed: {0}")]
    Client(#[from] KafkaError),
    #[error("writing the acknowledgement log {path} failed: {source}")]
    AckLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ProduceError {
    /// A client that cannot be created has a configuration problem, an acknowledgement log that
    /// cannot be written a problem of the file system: retrying the run does not help.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Counters shared with the client's delivery callback. Sequentially consistent throughout: the
/// drain hand-off (one side sets `draining` then reads the counters, the other bumps a counter then
/// reads `draining`) needs one total order, and on x86 the atomic adds cost the same either way.
#[derive(Debug)]
struct Counters {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    /// Set once generation stopped: from then on `sent` does not change and the delivery callback
    /// signals `drained` when the last report is in.
    draining: AtomicBool,
    drained: Notify,
}

impl Counters {
    fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drained: Notify::new(),
        }
    }

    fn in_flight(&self) -> u64 {
        let done = self.acknowledged.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst);
        self.sent.load(Ordering::SeqCst).saturating_sub(done)
    }

    /// Counts a record the client refused outright: sent and failed at once.
    fn refused(&self) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.failed.fetch_add(1, Ordering::SeqCst);
    }

    /// Called after each delivery report.
    fn reported(&self) {
        if self.draining.load(Ordering::SeqCst) && self.in_flight() == 0 {
            // A stored permit if nobody waits yet, so the wake-up cannot be lost.
            self.drained.notify_one();
        }
    }

    /// Waits until every record sent has its delivery report.
    async fn all_reported(&self) {
        self.draining.store(true, Ordering::SeqCst);
        while self.in_flight() > 0 {
            self.drained.notified().await;
        }
    }
}

/// The acknowledgement log: one line per event of the stream, `<seq> ok <partition> <offset>`,
/// `<seq> failed <error>` or `<seq> refused <error>`, where `<seq>` is the event's position in the
/// generated stream (0 for the first). Lines come in the order of the delivery reports. With the
/// stream's configuration it tells an outside checker exactly which events the cluster
/// acknowledged (they must never be lost) and which have an unknown outcome (a failed delivery
/// may still have been written).
#[derive(Debug)]
struct AckLog {
    path: PathBuf,
    writer: Mutex<std::io::BufWriter<std::fs::File>>,
    /// The first write error; the run fails with it.
    error: Mutex<Option<std::io::Error>>,
}

impl AckLog {
    fn create(path: PathBuf) -> Result<Self, ProduceError> {
        match std::fs::File::create(&path) {
            Ok(file) => Ok(Self {
                path,
                writer: Mutex::new(std::io::BufWriter::new(file)),
                error: Mutex::new(None),
            }),
            Err(source) => Err(ProduceError::AckLog { path, source }),
        }
    }

    fn line(&self, line: std::fmt::Arguments<'_>) {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = writer
            .write_fmt(line)
            .and_then(|()| writer.write_all(b"\n"))
        {
            self.keep(error);
        }
    }

    fn keep(&self, error: std::io::Error) {
        let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::error!(path = %self.path.display(), %error, "writing the acknowledgement log failed");
            *first = Some(error);
        }
    }

    /// Flushes the log; the first error of the run, if any.
    fn finish(&self) -> Result<(), ProduceError> {
        let flushed = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush();
        if let Err(error) = flushed {
            self.keep(error);
        }
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(source) => Err(ProduceError::AckLog {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Client context: counts delivery reports and sends librdkafka's own logs through `tracing`.
#[derive(Debug, Clone)]
struct DeliveryCounter {
    counters: Arc<Counters>,
    acks: Option<Arc<AckLog>>,
}

impl ClientContext for DeliveryCounter {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Brokers coming and going are reported here and retried by the client; only a fatal
        // error (say, an idempotence violation) stops it, and the delivery reports then say so.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(target: "librdkafka", %error, reason, "fatal Kafka client error");
        } else {
            tracing::warn!(target: "librdkafka", %error, reason, "Kafka client error");
        }
    }
}

impl ProducerContext for DeliveryCounter {
    /// The event's position in the stream.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(message) => {
                self.counters.acknowledged.fetch_add(1, Ordering::SeqCst);
                if let Some(acks) = &self.acks {
                    acks.line(format_args!(
                        "{seq} ok {} {}",
                        message.partition(),
                        message.offset()
                    ));
                }
            }
            Err((error, message)) => {
                self.counters.failed.fetch_add(1, Ordering::SeqCst);
                if let Some(acks) = &self.acks {
                    acks.line(format_args!("{seq} failed {error}"));
                }
                tracing::error!(
                    topic = message.topic(),
                    partition = message.partition(),
                    %error,
                    "delivery failed"
                );
            }
        }
        self.counters.reported();
    }
}

/// Allows `rate × elapsed` records (plus the first) and waits on an interval for more.
#[derive(Debug)]
struct Pacer {
    rate: f64,
    started: Instant,
    interval: Interval,
}

impl Pacer {
    fn new(rate: u32) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / f64::from(rate)).max(Duration::from_millis(1));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Some(Self {
            rate: f64::from(rate),
            started: Instant::now(),
            interval,
        })
    }

    fn allowance(&self) -> u64 {
        allowance(self.rate, self.started.elapsed())
    }
}

/// Records allowed after `elapsed` at `rate` per second: the first at once, then one per period.
fn allowance(rate: f64, elapsed: Duration) -> u64 {
    // Truncation is the point: whole records allowed so far.
    (elapsed.as_secs_f64() * rate) as u64 + 1
}

/// Awaits `work` unless shutdown or the deadline comes first.
async fn unless_stopped<F: Future>(
    work: F,
    shutdown: &CancellationToken,
    deadline: Option<Instant>,
) -> Result<F::Output, StopReason> {
    let deadline_reached = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(StopReason::Shutdown),
        () = deadline_reached => Err(StopReason::DurationElapsed),
        output = work => Ok(output),
    }
}

/// Produces the configured stream until it ends, `duration` elapses or `shutdown` is cancelled,
/// then waits (bounded) for every outstanding delivery report. The caller decides what a summary
/// with failures means ([`Summary::is_success`]).
pub async fn run(
    client: ClientConfig,
    settings: ProducerSettings,
    shutdown: CancellationToken,
) -> Result<Summary, ProduceError> {
    let counters = Arc::new(Counters::new());
    let acks = match &settings.ack_log {
        Some(path) => Some(Arc::new(AckLog::create(path.clone())?)),
        None => None,
    };
    let producer: ThreadedProducer<DeliveryCounter> =
        client.create_with_context(DeliveryCounter {
            counters: Arc::clone(&counters),
            acks: acks.clone(),
        })?;

    let seed = settings.generator.seed;
    tracing::info!(
        seed,
        users = settings.generator.users,
        orders = settings.generator.orders,
        start = %settings.generator.start.to_rfc3339(),
        rate = settings.rate,
        users_topic = %settings.users_topic,
        orders_topic = %settings.orders_topic,
        "producing"
    );
    let started = Instant::now();
    let progress = (settings.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(report_progress(Arc::clone(&counters), started)));

    let stopped = produce(&producer, &settings, &counters, &shutdown, started).await;
    tracing::info!(
        reason = stopped.as_str(),
        sent = counters.sent.load(Ordering::SeqCst),
        in_flight = counters.in_flight(),
        "stopped generating; waiting for outstanding deliveries"
    );

    let drained = tokio::time::timeout(settings.drain_timeout, counters.all_reported()).await;
    // The run ends with the last delivery report (or the drain timeout); taking the client down
    // below is not part of it.
    let elapsed = started.elapsed();
    if drained.is_err() {
        tracing::error!(
            in_flight = counters.in_flight(),
            timeout_s = settings.drain_timeout.as_secs_f64(),
            "deliveries still unconfirmed after the drain timeout; purging them (counted as failed)"
        );
    }
    // Dropping the client purges what is left and delivers the purge reports (bounded, < 1 s).
    let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
    if let Some(progress) = progress {
        progress.abort();
    }
    if let Some(acks) = &acks {
        acks.finish()?;
    }

    Ok(Summary {
        sent: counters.sent.load(Ordering::SeqCst),
        acknowledged: counters.acknowledged.load(Ordering::SeqCst),
        failed: counters.failed.load(Ordering::SeqCst),
        elapsed,
        seed,
        stopped,
    })
}

/// The generation loop.
async fn produce(
    producer: &ThreadedProducer<DeliveryCounter>,
    settings: &ProducerSettings,
    counters: &Counters,
    shutdown: &CancellationToken,
    started: Instant,
) -> StopReason {
    let deadline = settings.duration.map(|duration| started + duration);
    let mut pacer = Pacer::new(settings.rate);
    let mut generator = Generator::new(settings.generator.clone());
    // Reused for every record: the payload is encoded into the same buffer each time.
    let mut payload: Vec<u8> = Vec::with_capacity(1024);
    let mut sent: u64 = 0;
    loop {
        if shutdown.is_cancelled() {
            return StopReason::Shutdown;
        }
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return StopReason::DurationElapsed;
        }
        if let Some(pacer) = pacer.as_mut() {
            while pacer.allowance() <= sent {
                if let Err(reason) = unless_stopped(pacer.interval.tick(), shutdown, deadline).await
                {
                    return reason;
                }
            }
        } else if sent.is_multiple_of(1024) {
            // Flat out: let other tasks (signals, progress) run now and then.
            tokio::task::yield_now().await;
        }
        let Some(event) = generator.next() else {
            return StopReason::Completed;
        };
        payload.clear();
        let record = Outgoing {
            event: &event,
            // Positions fit a usize wherever a stream fits in memory-bounded runs of this length.
            seq: usize::try_from(sent).unwrap_or(usize::MAX),
        };
        if let Err(reason) = send(
            producer,
            settings,
            counters,
            record,
            &mut payload,
            shutdown,
            deadline,
        )
        .await
        {
            // This event was not handed over: what was sent is still a prefix of the stream.
            return reason;
        }
        sent += 1;
    }
}

/// An event and its position in the stream.
#[derive(Debug, Clone, Copy)]
struct Outgoing<'a> {
    event: &'a Event,
    seq: usize,
}

/// Hands one event to the client: a full client queue is waited out (unless shutdown or the
/// deadline comes first, which leaves the event unsent), any other refusal counts as a failed
/// delivery.
async fn send(
    producer: &ThreadedProducer<DeliveryCounter>,
    settings: &ProducerSettings,
    counters: &Counters,
    Outgoing { event, seq }: Outgoing<'_>,
    payload: &mut Vec<u8>,
    shutdown: &CancellationToken,
    deadline: Option<Instant>,
) -> Result<(), StopReason> {
    let topic = match event.kind() {
        EntityKind::User => settings.users_topic.as_str(),
        EntityKind::Order => settings.orders_topic.as_str(),
    };
    if let Err(error) = serde_json::to_writer(&mut *payload, event) {
        // Plain data types with string keys cannot fail to encode; if it happens, say so.
        counters.refused();
        refused(producer, seq, &error);
        tracing::error!(topic, %error, "encoding an event failed");
        return Ok(());
    }
    let key = event.key();
    let mut record: BaseRecord<'_, str, [u8], usize> = BaseRecord::with_opaque_to(topic, seq)
        .key(key.as_str())
        .payload(payload.as_slice());
    loop {
        match producer.send(record) {
            Ok(()) => {
                counters.sent.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                unless_stopped(tokio::time::sleep(QUEUE_FULL_WAIT), shutdown, deadline).await?;
            }
            Err((error, _)) => {
                counters.refused();
                refused(producer, seq, &error);
                tracing::error!(topic, partition = -1, %error, "the Kafka client refused a record");
                return Ok(());
            }
        }
    }
}

/// Logs a record the client never took.
fn refused(producer: &ThreadedProducer<DeliveryCounter>, seq: usize, error: &dyn fmt::Display) {
    if let Some(acks) = &producer.context().acks {
        acks.line(format_args!("{seq} refused {error}"));
    }
}

/// One line per second on stderr: totals and the rate over the last second.
async fn report_progress(counters: Arc<Counters>, started: Instant) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    interval.tick().await;
    let mut last_sent = 0;
    loop {
        interval.tick().await;
        let sent = counters.sent.load(Ordering::SeqCst);
        eprintln!(
            "producer: {:>6.0}s sent={} acknowledged={} failed={} in_flight={} rate={} events/s",
            started.elapsed().as_secs_f64(),
            sent,
            counters.acknowledged.load(Ordering::SeqCst),
            counters.failed.load(Ordering::SeqCst),
            counters.in_flight(),
            sent - last_sent
        );
        last_sent = sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_settings_cannot_be_overridden() {
        let mut base = ClientConfig::new();
        base.set("acks", "1").set("linger.ms", "5");
        let config = client_config(base);
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(
            config.get("linger.ms"),
            Some("5"),
            "tunables may be changed"
        );
        assert_eq!(config.get("compression.type"), Some("lz4"));
        assert_eq!(config.get("message.timeout.ms"), Some("120000"));
        assert_eq!(
            config.get("queue.buffering.max.kbytes"),
            Some("16384"),
            "memory is bounded in bytes"
        );
    }

    #[test]
    fn summary_line_format() {
        let summary = Summary {
            sent: 1_000,
            acknowledged: 1_000,
            failed: 0,
            elapsed: Duration::from_millis(2_500),
            seed: 42,
            stopped: StopReason::Completed,
        };
        assert_eq!(
            summary.to_string(),
            "producer: sent=1000 acknowledged=1000 failed=0 elapsed=2.50s rate=400.0 events/s seed=42"
        );
        assert!(summary.is_success());
        assert!(!Summary {
            acknowledged: 999,
            ..summary.clone()
        }
        .is_success());
        assert!(!Summary {
            failed: 1,
            ..summary
        }
        .is_success());
    }

    /// No broker answers: the loop fills the client queue, waits for room until the duration ends,
    /// and the drain timeout purges what it sent, every record counted as failed.
    #[tokio::test]
    async fn unconfirmed_records_are_purged_and_counted_failed() {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", "127.0.0.1:1")
            .set("queue.buffering.max.messages", "10")
            .set("log_level", "0");
        let start = chrono::DateTime::UNIX_EPOCH;
        let mut settings = ProducerSettings::new(
            GeneratorConfig {
                users: 20,
                orders: 20,
                seed: 1,
                start,
            },
            "users",
            "orders",
        );
        settings.progress = false;
        settings.duration = Some(Duration::from_millis(300));
        settings.drain_timeout = Duration::from_millis(200);

        let summary = run(client_config(base), settings, CancellationToken::new())
            .await
            .map_err(|error| error.to_string());
        let summary = summary
            .as_ref()
            .map(|s| (s.stopped, s.sent, s.acknowledged, s.failed));
        assert_eq!(
            summary,
            Ok((StopReason::DurationElapsed, 10, 0, 10)),
            "a full queue is waited out until the duration ends; the 10 queued are purged"
        );
    }

    #[test]
    fn pacing_allows_rate_times_elapsed() {
        assert_eq!(
            allowance(100.0, Duration::ZERO),
            1,
            "the first record goes at once"
        );
        assert_eq!(allowance(100.0, Duration::from_millis(9)), 1);
        assert_eq!(allowance(100.0, Duration::from_millis(500)), 51);
        assert_eq!(allowance(0.5, Duration::from_secs(4)), 3);
        assert!(Pacer::new(0).is_none(), "0 means unpaced");
    }
}
