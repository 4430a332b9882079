//! Pieces both benchmarks share: the workload, unique names, topic set-up and clean-up, a bare
//! acks=all send loop, child processes with peak-RSS sampling, machine-load checks and medians.

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use cdc_core::config::KafkaArgs;
use cdc_core::events::{EntityKind, Event};
use cdc_core::generator::{Generator, GeneratorConfig};
use cdc_core::topics::{ensure_topics, TopicSpec};
use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use sqlx::PgPool;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Time of the first generated event: fixed, so every run and every variant sees the same bytes.
pub const START_TIME: &str = "2026-11-24T10:00:00Z";

/// Partitions of the benchmarks' users and orders topics, as the pipeline's own.
pub const USERS_PARTITIONS: i32 = 3;
pub const ORDERS_PARTITIONS: i32 = 5;

/// How often a child's memory and the PostgreSQL progress are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How every benchmark runs its variants.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Runs per variant; the report gives the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Folder holding the release binaries measured; by default the folder of this binary
    /// (`target/release` under `cargo run --release`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Replication factor of the benchmark topics.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i32,
    /// Longest a single measured run may take.
    #[arg(long, default_value_t = 600)]
    pub run_timeout_secs: u64,
}

impl RunArgs {
    pub fn run_timeout(&self) -> Duration {
        Duration::from_secs(self.run_timeout_secs)
    }
}

/// Options shared by the consumer and producer benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Users the generator creates (with the default orders, about 50,000 events in all).
    #[arg(long, default_value_t = 3_500)]
    pub users: usize,
    /// Orders the generator creates.
    #[arg(long, default_value_t = 15_500)]
    pub orders: usize,
    /// Seed of the generated stream (fixed so every run sends the same bytes).
    #[arg(long, default_value_t = 20_261_124)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunArgs,
    /// Before each measured run, wait (at most this long) for the machine's CPU to be mostly idle
    /// (Debezium and the brokers take 20–30 s to capture and replicate one run's writes).
    #[arg(long, default_value_t = 90)]
    pub quiet_wait_secs: u64,
}

impl WorkloadArgs {
    pub fn generator_config(&self) -> Result<GeneratorConfig> {
        Ok(GeneratorConfig {
            users: self.users,
            orders: self.orders,
            seed: self.seed,
            start: start_time()?,
        })
    }
}

pub fn start_time() -> Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(START_TIME)
        .context("parsing the fixed start time")?
        .with_timezone(&Utc))
}

/// One Kafka record of the workload, encoded exactly as the producer encodes it.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: EntityKind,
    pub key: String,
    pub payload: Vec<u8>,
}

/// The generated stream and its encoding.
#[derive(Debug)]
pub struct Workload {
    pub events: Vec<Event>,
    pub records: Vec<Record>,
    /// Time to generate and encode the stream in this process.
    pub generate_and_encode: Duration,
}

impl Record {
    pub fn of(event: &Event) -> Self {
        Self {
            kind: event.kind(),
            key: event.key(),
            payload: event.to_json(),
        }
    }
}

impl Workload {
    pub fn generate(config: GeneratorConfig) -> Self {
        let started = Instant::now();
        let events: Vec<Event> = Generator::new(config).collect();
        let records = events.iter().map(Record::of).collect();
        Self {
            events,
            records,
            generate_and_encode: started.elapsed(),
        }
    }

    pub fn count(&self, kind: EntityKind) -> usize {
        self.records.iter().filter(|r| r.kind == kind).count()
    }
}

/// `<prefix>_<unix millis>_<pid>_<counter>`: unique across runs and within one.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!(
        "{prefix}_{millis}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Points a child's Kafka settings at the benchmark's: `KAFKA_BROKERS` plus any extra
/// `--kafka-config` and `--kafka-option` settings as `KAFKA_OPTIONS` (and nothing inherited from
/// this process's environment).
pub fn kafka_env(command: &mut tokio::process::Command, kafka: &KafkaArgs) {
    command.env("KAFKA_BROKERS", &kafka.brokers);
    command.env_remove("KAFKA_CONFIG");
    let options = kafka.options_env();
    if options.is_empty() {
        command.env_remove("KAFKA_OPTIONS");
    } else {
        command.env("KAFKA_OPTIONS", options);
    }
}

/// Finds a sibling binary (`producer`, `consumer`) and logs which file is used.
pub fn locate_binary(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .parent()
            .map(Path::to_owned)
            .context("this executable has no parent folder")?,
    };
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} not found: build it first with `cargo build --release -p {name}` (or pass --bin-dir)",
        path.display()
    );
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| DateTime::<Utc>::from(t).to_rfc3339());
    tracing::info!(binary = %path.display(), ?modified, "using binary");
    Ok(path)
}

/// Creates the topics (failing if one exists with another layout) and waits until every
/// partition has a leader and a full in-sync replica set.
/// Fresh users and orders topics named after `prefix` with `partitions`, and their dead-letter
/// topics, all removed by `cleanup` at the end; returns the two topics' names.
pub async fn business_topics(
    brokers: &str,
    cleanup: &mut Cleanup,
    prefix: &str,
    partitions: (i32, i32),
    rf: i32,
) -> Result<(String, String)> {
    let users = unique_name(&format!("{prefix}_users"));
    let orders = unique_name(&format!("{prefix}_orders"));
    let specs = [
        TopicSpec::new(&users, partitions.0, rf),
        TopicSpec::new(&orders, partitions.1, rf),
        TopicSpec::new(cdc_core::dlq::topic_for(&users), 1, rf),
        TopicSpec::new(cdc_core::dlq::topic_for(&orders), 1, rf),
    ];
    cleanup
        .topics
        .extend(specs.iter().map(|spec| spec.name.clone()));
    create_topics(brokers, &specs).await?;
    Ok((users, orders))
}

pub async fn create_topics(brokers: &str, specs: &[TopicSpec]) -> Result<()> {
    ensure_topics(brokers, specs, Duration::from_secs(30))
        .await
        .context("creating the benchmark topics")?;
    let brokers = brokers.to_owned();
    let specs = specs.to_vec();
    tokio::task::spawn_blocking(move || wait_topics_ready(&brokers, &specs)).await?
}

fn wait_topics_ready(brokers: &str, specs: &[TopicSpec]) -> Result<()> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for spec in specs {
        let partitions = usize::try_from(spec.partitions)?;
        let replicas = usize::try_from(spec.replication_factor)?;
        loop {
            let metadata = client.fetch_metadata(Some(&spec.name), Duration::from_secs(10))?;
            let ready = metadata
                .topics()
                .iter()
                .find(|t| t.name() == spec.name)
                .is_some_and(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions
                        && t.partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.isr().len() == replicas)
                });
            if ready {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "topic {} has no leader or in-sync replica set on every partition after 60 s",
                spec.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Records per partition (high watermark minus low watermark).
pub async fn partition_counts(brokers: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        (0..partitions)
            .map(|p| {
                let (low, high) = client.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
                Ok(high - low)
            })
            .collect()
    })
    .await?
}

/// Delivery-report counters of the bare producer.
#[derive(Debug, Default)]
struct Acks {
    acknowledged: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone)]
struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = match result {
            Ok(_) => &self.0.acknowledged,
            Err(_) => &self.0.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bare send loop: creates a producer with `config`, hands every record to it (waiting out a
/// full local queue), and waits for every delivery report. Returns the time from the first send
/// to the last acknowledgement (client creation excluded). `records` may be pre-built
/// (`&Record`) or built while sending (`Record`). Blocking: call from a blocking thread.
pub fn send_all<R: Borrow<Record>>(
    config: &ClientConfig,
    records: impl IntoIterator<Item = R>,
    users_topic: &str,
    orders_topic: &str,
    timeout: Duration,
) -> Result<Duration> {
    let acks = Arc::new(Acks::default());
    let producer: ThreadedProducer<AckContext> = config
        .create_with_context(AckContext(Arc::clone(&acks)))
        .context("creating the bare producer")?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut total: u64 = 0;
    for record in records {
        let record = record.borrow();
        total += 1;
        let topic = match record.kind {
            EntityKind::User => users_topic,
            EntityKind::Order => orders_topic,
        };
        let mut base: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic)
            .key(record.key.as_str())
            .payload(record.payload.as_slice());
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    ensure!(Instant::now() < deadline, "local queue full for too long");
                    base = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => bail!("the Kafka client refused a record: {error}"),
            }
        }
    }
    loop {
        let done = acks.acknowledged.load(Ordering::Relaxed) + acks.failed.load(Ordering::Relaxed);
        if done >= total {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {done} of {total} delivery reports within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    let failed = acks.failed.load(Ordering::Relaxed);
    ensure!(
        failed == 0,
        "{failed} of {total} records were not delivered"
    );
    Ok(elapsed)
}

/// A spawned benchmark subject: its output is collected and its peak RSS sampled.
#[derive(Debug)]
pub struct Subject {
    pub child: tokio::process::Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
    usage: JoinHandle<Usage>,
}

/// What sampling `/proc` saw of a process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    peak_rss_kib: Option<u64>,
    cpu_seconds: Option<f64>,
}

/// What a finished subject left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size in KiB (VmHWM), sampled every [`SAMPLE_EVERY`].
    pub peak_rss_kib: Option<u64>,
    /// User + system CPU time of all its threads, as last sampled (at most [`SAMPLE_EVERY`]
    /// before it exited).
    pub cpu_seconds: Option<f64>,
}

impl Subject {
    /// Spawns `command` with piped output; the child is killed if this value is dropped.
    pub fn spawn(mut command: tokio::process::Command) -> Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawning the benchmark subject")?;
        let pid = child.id().context("the child has no pid")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        Ok(Self {
            child,
            stdout: tokio::spawn(read_all(stdout)),
            stderr: tokio::spawn(read_all(stderr)),
            usage: tokio::spawn(sample_usage(pid)),
        })
    }

    /// Waits (at most `timeout`) for the child to exit and collects its output and peak RSS.
    pub async fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                let stderr = self.stderr.await.unwrap_or_default();
                bail!(
                    "the subject did not exit within {timeout:?}; killed. stderr:\n{}",
                    tail(&stderr, 40)
                );
            }
        };
        let usage = self.usage.await.unwrap_or_default();
        Ok(Finished {
            status,
            stdout: self.stdout.await.unwrap_or_default(),
            stderr: self.stderr.await.unwrap_or_default(),
            peak_rss_kib: usage.peak_rss_kib,
            cpu_seconds: usage.cpu_seconds,
        })
    }

    /// Kills the child and returns the tail of its error output, for an error message.
    pub async fn kill(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        tail(&self.stderr.await.unwrap_or_default(), 40)
    }
}

async fn read_all(mut pipe: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Largest of VmHWM and VmRSS in /proc/<pid>/status, in KiB; `None` once the process is gone
/// (or a zombie, whose status has no memory lines).
fn read_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .filter_map(|line| {
            line.strip_prefix("VmHWM:")
                .or_else(|| line.strip_prefix("VmRSS:"))
        })
        .filter_map(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .max()
}

/// User + system CPU time of every thread of `pid` so far, from /proc/<pid>/stat (`self` for this
/// process). The kernel counts it in USER_HZ ticks, 100 per second on Linux.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    stat_times(pid).map(|(own, _)| own)
}

/// Debezium's topics for users and orders, for the benches that read them.
#[derive(Debug, Clone, clap::Args)]
pub struct CdcTopicArgs {
    /// Debezium's topics for users and orders.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cdc.public.users,cdc.public.orders"
    )]
    pub cdc_topics: Vec<String>,
}

impl CdcTopicArgs {
    /// Refuses anything but two topics.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.cdc_topics.len() == 2,
            "--cdc-topics takes two topics: users, orders"
        );
        Ok(())
    }

    /// Each topic with its partition count.
    pub async fn with_partitions(&self, brokers: &str) -> Result<Vec<(String, i32)>> {
        let mut topics = Vec::new();
        for topic in &self.cdc_topics {
            topics.push((
                topic.clone(),
                crate::cdc::topic_partitions(brokers, topic).await?,
            ));
        }
        Ok(topics)
    }
}

/// Where the stack keeps its state: `CDC_STACK_DIR` (`stack.sh env` prints it) or the clone's
/// `.stack`.
pub fn stack_dir() -> PathBuf {
    std::env::var_os("CDC_STACK_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.stack")),
        PathBuf::from,
    )
}

/// CPU time PostgreSQL has used so far, all its processes: the postmaster's own and that of its
/// children already gone (the kernel adds a reaped child's time to its parent's `cutime` and
/// `cstime`), plus every live child's. `None` when the stack's PostgreSQL is not found.
pub fn postgres_cpu_seconds() -> Option<f64> {
    let home = std::fs::read_to_string(stack_dir().join("postgres.home")).ok()?;
    let pid_file =
        std::fs::read_to_string(Path::new(home.trim()).join("data/postmaster.pid")).ok()?;
    let postmaster = pid_file.lines().next()?.trim().to_owned();
    let (own, reaped) = stat_times(&postmaster)?;
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.bytes().all(|b| b.is_ascii_digit())
            && parent_of(&pid).as_deref() == Some(&postmaster)
        {
            total += stat_times(&pid).map_or(0.0, |(own, _)| own);
        }
    }
    Some(total)
}

/// The fields of /proc/<pid>/stat after the command name (which may hold spaces).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn parent_of(pid: &str) -> Option<String> {
    stat_fields(pid)?.get(1).cloned()
}

/// (utime + stime, cutime + cstime) in seconds.
fn stat_times(pid: &str) -> Option<(f64, f64)> {
    let fields = stat_fields(pid)?;
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    #[allow(clippy::cast_precision_loss)]
    Some((
        (ticks(11)? + ticks(12)?) as f64 / 100.0,
        (ticks(13)? + ticks(14)?) as f64 / 100.0,
    ))
}

/// Samples the process's memory and CPU time until it is gone; returns the highest memory seen and
/// the last CPU time. VmHWM is the kernel's own high-water mark, so only growth in the last interval
/// before exit can be missed.
async fn sample_usage(pid: u32) -> Usage {
    let pid = pid.to_string();
    let mut usage = Usage::default();
    while let Some(kib) = read_rss_kib(&pid) {
        usage.peak_rss_kib = usage.peak_rss_kib.max(Some(kib));
        usage.cpu_seconds = cpu_seconds(&pid).or(usage.cpu_seconds);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    usage
}

/// Aggregate CPU time of the machine from /proc/stat: (busy, total) in clock ticks.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Fraction of the machine's CPU busy over the next `window`.
pub async fn cpu_busy(window: Duration) -> Option<f64> {
    let (busy0, total0) = cpu_ticks()?;
    tokio::time::sleep(window).await;
    let (busy1, total1) = cpu_ticks()?;
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// Busy fraction below which the machine counts as quiet: the idle stack (3 brokers, 3 Cassandra
/// nodes, Connect, PostgreSQL) alone keeps some CPU busy.
const QUIET_BELOW: f64 = 0.35;

/// Waits until the machine's CPU is mostly idle (at most `limit`), so leftovers of the previous
/// run (Debezium capturing its writes, autovacuum) do not count against the next. Returns the
/// busy fraction of the last second.
pub async fn wait_until_quiet(limit: Duration) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        let busy = cpu_busy(Duration::from_secs(1)).await?;
        if busy < QUIET_BELOW {
            return Some(busy);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                busy_percent = format!("{:.0}", busy * 100.0),
                "machine still busy; measuring anyway (the figure may be low)"
            );
            return Some(busy);
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Nearest-rank percentile (`q` in 0..=1) of values sorted ascending; NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let rank = (q * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Aborts a spawned task when dropped (an interrupted benchmark leaves nothing running).
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Everything a benchmark created, removed at the end whatever happened.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub topics: Vec<String>,
    pub groups: Vec<String>,
    pub user_ids: Vec<Uuid>,
    pub order_ids: Vec<Uuid>,
    /// Scratch Cassandra keyspaces, dropped through one of `cassandra_nodes`.
    pub keyspaces: Vec<String>,
    pub cassandra_nodes: Vec<String>,
}

impl Cleanup {
    /// A session to Cassandra for creating scratch keyspaces; the same nodes drop them at the end.
    pub async fn cassandra_control(
        &mut self,
        nodes: &[String],
    ) -> Result<scylla::client::session::Session> {
        self.cassandra_nodes = nodes.to_vec();
        cdcconsumer::cassandra::connect(nodes)
            .await
            .context("connecting to Cassandra")
    }

    pub async fn run(&self, brokers: &str, database_url: &str) {
        if !self.user_ids.is_empty() || !self.order_ids.is_empty() {
            let deleted = async {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(database_url)
                    .await?;
                let deleted = delete_rows(&pool, &self.user_ids, &self.order_ids).await?;
                pool.close().await;
                anyhow::Ok(deleted)
            }
            .await;
            match deleted {
                Ok((users, orders)) => {
                    tracing::info!(users, orders, "deleted the benchmark's rows")
                }
                Err(error) => tracing::warn!(%error, "could not delete the benchmark's rows"),
            }
        }
        if let Err(error) = delete_groups(brokers, &self.groups).await {
            tracing::warn!(%error, "could not delete the benchmark's consumer groups");
        }
        if let Err(error) = delete_topics(brokers, &self.topics).await {
            tracing::warn!(%error, "could not delete the benchmark's topics");
        }
        if !self.keyspaces.is_empty() {
            let dropped = async {
                let session = cdcconsumer::cassandra::connect(&self.cassandra_nodes).await?;
                for keyspace in &self.keyspaces {
                    drop_keyspace(&session, keyspace).await?;
                }
                anyhow::Ok(())
            }
            .await;
            if let Err(error) = dropped {
                tracing::warn!(%error, "could not drop the benchmark's keyspaces");
            }
        }
    }
}

/// Drops a scratch keyspace (a no-op if it is gone).
pub async fn drop_keyspace(
    session: &scylla::client::session::Session,
    keyspace: &str,
) -> Result<()> {
    let mut statement = scylla::statement::unprepared::Statement::new(format!(
        "DROP KEYSPACE IF EXISTS {keyspace}"
    ));
    statement.set_request_timeout(Some(Duration::from_secs(60)));
    session
        .query_unpaged(statement, ())
        .await
        .with_context(|| format!("dropping keyspace {keyspace}"))?;
    tracing::info!(keyspace, "dropped keyspace");
    Ok(())
}

/// Deletes the given orders, then the given users; returns (users, orders) deleted.
pub async fn delete_rows(pool: &PgPool, users: &[Uuid], orders: &[Uuid]) -> Result<(u64, u64)> {
    let orders = sqlx::query("DELETE FROM orders WHERE id = ANY($1)")
        .bind(orders)
        .execute(pool)
        .await?
        .rows_affected();
    let users = sqlx::query("DELETE FROM users WHERE id = ANY($1)")
        .bind(users)
        .execute(pool)
        .await?
        .rows_affected();
    Ok((users, orders))
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?)
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

pub async fn delete_topics(brokers: &str, topics: &[String]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for result in admin(brokers)?
        .delete_topics(&names, &admin_options())
        .await?
    {
        match result {
            Ok(topic) => tracing::info!(topic, "deleted topic"),
            Err((topic, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                tracing::debug!(topic, "topic already gone")
            }
            Err((topic, code)) => tracing::warn!(topic, ?code, "deleting topic failed"),
        }
    }
    Ok(())
}

pub async fn delete_groups(brokers: &str, groups: &[String]) -> Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    for result in admin(brokers)?
        .delete_groups(&names, &admin_options())
        .await?
    {
        match result {
            Ok(group) => tracing::info!(group, "deleted consumer group"),
            Err((group, RDKafkaErrorCode::GroupIdNotFound)) => {
                tracing::debug!(group, "consumer group already gone")
            }
            Err((group, code)) => tracing::warn!(group, ?code, "deleting consumer group failed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }

    #[test]
    fn own_memory_is_readable() {
        let kib = read_rss_kib(&std::process::id().to_string());
        assert!(kib.is_some_and(|k| k > 0), "{kib:?}");
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = cpu_seconds("self").expect("own /proc/self/stat");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_seconds("self").expect("own /proc/self/stat");
        assert!(after - before >= 0.05, "{before} → {after}");
    }
}
