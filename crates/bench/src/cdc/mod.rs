//! `bench cdc`: the CDC half of the pipeline (Debezium's topics → cdcconsumer → Cassandra) on the
//! running stack, four figures in one run.
//!
//! 1. **Write rate.** Scratch topics with the partition count of Debezium's topics are filled once
//!    with Debezium envelopes built from the captured fixtures (`crates/core/tests/fixtures/debezium`:
//!    every user created and updated once, every order created and updated twice, fresh ids, a
//!    strictly increasing source LSN). Per run, in rotating order, each variant writes them into its
//!    own empty scratch keyspace (`cassandra-schema.cql` renamed, present on every node before the
//!    clock starts), which is then checked (row count and sum of `version` per table) and dropped:
//!    - **cdcconsumer** (the release binary) with a fresh consumer group. It is timed from the last
//!      poll of its `/metrics` (every [`PROGRESS_EVERY`]) that shows nothing consumed to the first
//!      that shows every change applied: process start, schema, statement preparation, group join
//!      and the idle wait before it exits are outside the time.
//!    - **bare loop**: the same changes decoded and planned before the clock starts
//!      ([`plan::plan`](cdcconsumer::handler::plan::plan)), then every change's writes run through
//!      [`Statements::execute_all`](cdcconsumer::cassandra::Statements::execute_all) — the same
//!      requests cdcconsumer sends (one per change), the same prepared CQL with `USING TIMESTAMP
//!      <lsn>`, the same consistency — with partitions × lanes changes in flight (cdcconsumer's
//!      upper bound), timed from the first write to the last acknowledgement. No Kafka, no
//!      decoding, no retries, no per-row order, no batches of records.
//!    - **bare loop per write**: the same, every write a request of its own
//!      ([`Statements::execute`](cdcconsumer::cassandra::Statements::execute)), as cdcconsumer
//!      wrote them before a change's writes went in one request.
//!    - with `--breakdown`: [`CdcHandler`](cdcconsumer::handler::CdcHandler) in this process on the same
//!      records split into partitions and batches of `--max-batch` (cdcconsumer without Kafka, its
//!      runtime and its process), and the bare loop with only the orders partitions' lanes in flight
//!      (what cdcconsumer has once the smaller users partitions are done).
//! 2. **End-to-end latency** at a fixed offered load. cdcconsumer (release binary) runs against
//!    Debezium's real topics with a fresh group whose offsets were first committed at the topics' high
//!    watermarks (so it reads nothing from history), writing into a scratch keyspace. A writer commits
//!    INSERTs and UPDATEs of fresh rows to PostgreSQL's `users` and `orders` on an open-loop schedule
//!    and notes when each commit returned. A bench consumer assigned at the same watermarks notes when
//!    each of those changes becomes readable from Kafka (leg a: Debezium, Connect and the brokers);
//!    from that moment a poller reads the row's `version` at the test's consistency every
//!    `--poll-interval-ms` until it shows the change (leg b). The row cannot reach Cassandra before
//!    Kafka, so starting the poll there loses nothing — unless the bench consumer saw the record later
//!    than cdcconsumer did: the report counts rows already present at the first poll. The first
//!    `--warmup-secs` are not counted. cdcconsumer's added latency is b − a per percentile (and, as
//!    a second view, per row). Leg a is also split by the envelope's own clocks: PostgreSQL's commit
//!    time → the envelope's `ts_us` (Debezium made it) → arrival here.
//!
//!    **Baseline (c)**, in the same run: the moment the bench consumer reads a change, the bench
//!    itself runs the change's planned writes through
//!    [`Statements::execute`](cdcconsumer::cassandra::Statements::execute) (the same prepared CQL and
//!    consistency as cdcconsumer) into a keyspace of its own, then polls that keyspace the same way.
//!    c − a is what a bare write costs on this machine at this moment (Cassandra's own latency,
//!    with nothing of cdcconsumer's in it: no second consumer, no batching, no retries); b − c is
//!    what cdcconsumer adds on top of that.
//! 3. **Peak RSS** of cdcconsumer (VmHWM from `/proc`, sampled like the other benchmarks) in the
//!    latency run, and in the write-rate runs.
//! 4. **Capture cost** (`capture`): Kafka Connect + Debezium's CPU time and rate capturing a burst
//!    of changes held back by pausing the connector, against cdcconsumer's draining the same records.
//!
//! The latency test's rows stay in PostgreSQL: they are ordinary rows that the pipeline mirrors.
//! Scratch topics, groups and keyspaces are removed at the end, also after an error or Ctrl-C.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cdc_core::config::KafkaArgs;
use cdc_core::debezium::{self, Encoding, Field};
use cdc_core::events::EntityKind;
use cdc_core::metrics::Metrics;
use cdc_core::runtime::{start_batch, BatchOutcome};
use cdc_core::tables;
use cdcconsumer::cassandra::{self, consistency_name, CassandraArgs, Statements};
use cdcconsumer::columns::{MirroredColumns, Registry};
use cdcconsumer::handler::gates::KeyGates;
use cdcconsumer::handler::plan::{self, Plan, Planned, Write};
use cdcconsumer::handler::{CdcHandler, CdcMetrics};
use chrono::{DateTime, Utc};
use futures::stream::{self, FuturesOrdered, StreamExt, TryStreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage, Timestamp};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::policies::load_balancing::{NodeIdentifier, SingleTargetLoadBalancingPolicy};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::CqlValue;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{
    self, cpu_seconds, drop_keyspace, kafka_env, locate_binary, median, mib, percentile, send_all,
    tail, unique_name, wait_until_quiet, AbortOnDrop, CdcTopicArgs, Cleanup, Record, RunArgs,
    Subject, SAMPLE_EVERY,
};
use crate::Context as BenchContext;

mod capture;
mod latency;
mod write_rate;

use capture::*;
pub(crate) use latency::commit_end_offsets;
use latency::*;
use write_rate::*;

/// How often cdcconsumer's `/metrics` is read while it works through the write-rate stream.
const PROGRESS_EVERY: Duration = Duration::from_millis(10);

/// How long a row may take to become readable before the latency test gives up on it.
const ROW_DEADLINE: Duration = Duration::from_secs(60);

/// Connections the latency writer commits through (commits overlap when one is slow).
const WRITER_CONNECTIONS: u32 = 8;

const USERS_C: &str = include_str!("../../../core/tests/fixtures/debezium/users_c.json");
const USERS_U: &str = include_str!("../../../core/tests/fixtures/debezium/users_u.json");
const ORDERS_C: &str = include_str!("../../../core/tests/fixtures/debezium/orders_c.json");
const ORDERS_U: &str = include_str!("../../../core/tests/fixtures/debezium/orders_u.json");

#[derive(Debug, Clone, clap::Args)]
pub struct CdcArgs {
    /// Write-rate runs per variant (the report gives the median), the `cdcconsumer` binary's
    /// folder, the scratch topics' replication factor, the longest a run may take.
    #[command(flatten)]
    pub run: RunArgs,
    /// Users in the write-rate stream (each created, then updated once: 2 changes, 2 writes).
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    /// Orders in the write-rate stream (each created, then updated twice: 3 changes, 6 writes, as
    /// every order change writes orders and orders_by_user).
    #[arg(long, default_value_t = 6_000)]
    pub orders: usize,
    /// Puts each row's changes side by side in the write-rate stream (a user's two, then each of
    /// its orders' three), as in a backlog of rows that changed in quick succession: a batch then
    /// holds a row's older writes with its newest, which cdcconsumer leaves out. By default every
    /// row is created before any is updated, so no batch holds two changes of one row.
    #[arg(long)]
    pub adjacent: bool,
    /// Where Cassandra is, and the consistency of every write and read (both variants and the
    /// latency poller); the benchmark writes to scratch keyspaces of its own.
    #[command(flatten)]
    pub cassandra: CassandraArgs,
    /// cdcconsumer's `--lanes`; the bare loop keeps partitions × lanes writes in flight.
    #[arg(long, default_value_t = 64)]
    pub lanes: usize,
    /// cdcconsumer's `--max-batch`.
    #[arg(long, default_value_t = 500)]
    pub max_batch: usize,
    /// cdcconsumer's `--max-batch-bytes`.
    #[arg(long, default_value_t = cdc_core::config::DEFAULT_MAX_BATCH_BYTES)]
    pub max_batch_bytes: u64,
    /// The codec the write-rate stream is written to its topics with. Kafka Connect's producer
    /// compresses nothing unless told to (this stack's worker leaves it so), so Debezium's topics
    /// hold uncompressed batches; `lz4` or `zstd` show what a compressed backlog costs cdcconsumer
    /// (librdkafka keeps each decompressed fetch until its last record is read).
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub backlog_compression: String,
    /// cdcconsumer's `--pipeline` (batches of a partition in flight at once).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub pipeline: u16,
    /// cdcconsumer's `--batch-linger-ms`.
    #[arg(long, default_value_t = 0)]
    pub batch_linger_ms: u64,
    /// cdcconsumer's `--idle-timeout-secs` in the write-rate runs (not part of the time).
    #[arg(long, default_value_t = 2)]
    pub idle_timeout_secs: u64,
    /// Debezium's topics: the latency test reads them, and the write-rate topics copy their
    /// partition counts.
    #[command(flatten)]
    pub cdc: CdcTopicArgs,
    /// Changes per second the latency test commits to PostgreSQL.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Length of the latency test's measured window.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Load before the measured window (not counted).
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// How often the latency poller reads a row from Cassandra until it shows the change.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_interval_ms: u64,
    /// Also run, in-process: cdcconsumer's batch handler without Kafka, and the bare loop with
    /// only the orders partitions' share of writes in flight. Together they show where the
    /// binary's time goes.
    #[arg(long)]
    pub breakdown: bool,
    /// Leave out the write-rate comparison.
    #[arg(long)]
    pub skip_write_rate: bool,
    /// Leave out the latency test.
    #[arg(long)]
    pub skip_latency: bool,
    /// Changes committed to PostgreSQL for the capture-cost comparison (Connect + Debezium's CPU
    /// and rate capturing them against cdcconsumer's applying them). Debezium reads up to its
    /// `max.queue.size` (8,192 on this stack) of them while the connector is paused; the capture
    /// rate is measured over the rest, so the burst should be several times that.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub capture_changes: u64,
    /// Leave out the capture-cost comparison (it pauses the connector while it writes).
    #[arg(long)]
    pub skip_capture: bool,
    /// Before each measured run, wait (at most this long) for the machine's CPU to be mostly idle.
    #[arg(long, default_value_t = 15)]
    pub quiet_wait_secs: u64,
    /// Folder for the latency test's chart (`cdc-latency-<UTC time>.svg`: the distributions of
    /// legs a, b and c).
    #[arg(long, default_value = "target/bench")]
    pub chart_dir: PathBuf,
}

impl CdcArgs {
    fn quiet_wait(&self) -> Duration {
        Duration::from_secs(self.quiet_wait_secs)
    }
}

/// How cdcconsumer is started.
#[derive(Debug)]
struct Launcher<'a> {
    binary: PathBuf,
    kafka: &'a KafkaArgs,
    args: &'a CdcArgs,
}

impl Launcher<'_> {
    fn command(
        &self,
        topics: &[String],
        group: &str,
        keyspace: &str,
        idle_timeout_secs: u64,
        metrics_addr: &str,
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        for inherited in [
            "RUST_LOG",
            "DECIMAL_HANDLING_MODE",
            "APPLY_SCHEMA",
            "CASSANDRA_KEYSPACE",
        ] {
            command.env_remove(inherited);
        }
        command
            .arg("--cdc-topics")
            .arg(topics.join(","))
            .arg("--group")
            .arg(group)
            .arg("--keyspace")
            .arg(keyspace)
            .arg("--cassandra-nodes")
            .arg(self.args.cassandra.cassandra_nodes.join(","))
            .arg("--consistency")
            .arg(consistency_name(self.args.cassandra.consistency))
            .arg("--speculative-after-ms")
            .arg(self.args.cassandra.speculative_after_ms.to_string())
            .arg("--lanes")
            .arg(self.args.lanes.to_string())
            .arg("--max-batch")
            .arg(self.args.max_batch.to_string())
            .arg("--max-batch-bytes")
            .arg(self.args.max_batch_bytes.to_string())
            .arg("--pipeline")
            .arg(self.args.pipeline.to_string())
            .arg("--batch-linger-ms")
            .arg(self.args.batch_linger_ms.to_string())
            .arg("--idle-timeout-secs")
            .arg(idle_timeout_secs.to_string())
            .arg("--metrics-addr")
            .arg(metrics_addr)
            .arg("--replication-factor")
            .arg(self.args.run.replication_factor.to_string())
            .arg("--log-level")
            .arg("warn");
        kafka_env(&mut command, self.kafka);
        command
    }
}

pub async fn run(ctx: &BenchContext, args: &CdcArgs, cleanup: &mut Cleanup) -> Result<()> {
    let command_line = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let consistency = args.cassandra.consistency;
    args.cdc.check()?;
    ensure!(
        args.lanes > 0 && args.max_batch > 0,
        "--lanes and --max-batch must be positive"
    );
    let launcher = Launcher {
        binary: locate_binary("cdcconsumer", args.run.bin_dir.as_deref())?,
        kafka: &ctx.kafka,
        args,
    };
    let control = cleanup
        .cassandra_control(&args.cassandra.cassandra_nodes)
        .await?;
    let partitions = (
        topic_partitions(&ctx.brokers, &args.cdc.cdc_topics[0]).await?,
        topic_partitions(&ctx.brokers, &args.cdc.cdc_topics[1]).await?,
    );
    let load_before = common::load_average();

    let write_rate = if args.skip_write_rate {
        None
    } else {
        Some(
            write_rate(
                ctx,
                args,
                &launcher,
                &control,
                consistency,
                partitions,
                cleanup,
            )
            .await
            .context("write-rate comparison")?,
        )
    };
    let latency = if args.skip_latency {
        None
    } else {
        Some(
            latency(ctx, args, &launcher, &control, consistency, cleanup)
                .await
                .context("latency test")?,
        )
    };
    // A failed capture run still lets the figures above be reported (then its error is returned).
    let capture = if args.skip_capture {
        Ok(None)
    } else {
        capture(ctx, args, &launcher, &control, consistency, cleanup)
            .await
            .context("capture cost")
            .map(Some)
    };
    let load_after = common::load_average();

    println!();
    println!(
        "cdcconsumer → Cassandra — {} — consistency {}, speculative execution {}, lanes {}, \
         max batch {}, pipeline {}, linger {} ms",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        consistency_name(args.cassandra.consistency),
        match args.cassandra.speculative_after_ms {
            0 => "off".to_owned(),
            ms => format!("after {ms} ms"),
        },
        args.lanes,
        args.max_batch,
        args.pipeline,
        args.batch_linger_ms
    );
    if let Some(rate) = &write_rate {
        report_write_rate(args, rate);
    }
    if let Some(latency) = &latency {
        report_latency(args, latency);
    }
    if let Ok(Some(capture)) = &capture {
        report_capture(capture, write_rate.as_ref(), args);
    }
    println!();
    println!(
        "machine: {} CPUs; load average {} → {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        load_after.map_or("?".into(), |l| format!("{l:.2}"))
    );
    println!("command: cargo run --release -p bench -- {command_line}");
    capture.map(drop)
}

/// Partition count of an existing topic.
pub(crate) async fn topic_partitions(brokers: &str, topic: &str) -> Result<i32> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let metadata = client.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
            .with_context(|| format!("topic {topic} does not exist (is Debezium running?)"))?;
        Ok(i32::try_from(found)?)
    })
    .await?
}

/// A free local port for cdcconsumer's metrics endpoint.
pub(crate) fn free_metrics_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The tables of `cassandra-schema.cql`, which cdcconsumer's statements use.
const SINK_TABLES: &[&str] = &["users", "orders", "orders_by_user", "truncations"];

/// Creates a scratch keyspace and waits until every node lists its tables.
///
/// The driver learns the other nodes from `system.peers`, which has no port, and assumes the
/// contact point's port for all of them: on a stack whose nodes listen on different ports a
/// session reaches one node only, so its schema-agreement check hears that node alone. And if a
/// second client (cdcconsumer at start) ran `CREATE TABLE IF NOT EXISTS` against a node that has
/// not yet heard of the table, it would create a second table of the same name.
pub(crate) async fn create_keyspace(
    control: &Session,
    nodes: &[String],
    keyspace: &str,
) -> Result<()> {
    cassandra::apply_schema(control, keyspace)
        .await
        .with_context(|| format!("creating keyspace {keyspace}"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for node in nodes {
        let session = cassandra::connect(std::slice::from_ref(node)).await?;
        let address = tokio::net::lookup_host(node.as_str())
            .await?
            .next()
            .with_context(|| format!("{node} has no address"))?;
        let policy =
            SingleTargetLoadBalancingPolicy::new(NodeIdentifier::NodeAddress(address), None);
        loop {
            let mut statement = Statement::new(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            );
            statement.set_load_balancing_policy(Some(Arc::clone(&policy)));
            let result = session
                .query_unpaged(statement, (keyspace,))
                .await?
                .into_rows_result()?;
            let tables: HashSet<String> = result
                .rows::<(String,)>()?
                .filter_map(Result::ok)
                .map(|(table,)| table)
                .collect();
            if SINK_TABLES.iter().all(|t| tables.contains(*t)) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{node} does not list the tables of {keyspace} after 120 s (it has {tables:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, for at most 60 s: right after a keyspace is created a node
/// may not know its tables yet (schema agreement is judged from one node's view, and other work on
/// the shared cluster restarts nodes).
async fn retry_schema<T, E, F>(what: &str, mut attempt: impl FnMut() -> F) -> Result<T>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(error = %error.into(), what, "retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error.into().context(what.to_owned())),
        }
    }
}

/// `GET /metrics` over plain HTTP/1.0; `None` while the endpoint is not up.
async fn scrape(addr: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// Sum over all label sets of a counter in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// cdcconsumer's counters, summed over its topics.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    consumed: u64,
    applied: u64,
    dead_lettered: u64,
}

impl Counts {
    fn parse(text: &str) -> Self {
        // Counter values are whole numbers far below 2^53.
        let count = |name| metric_sum(text, name) as u64;
        Self {
            consumed: count("cdc_events_consumed_total"),
            applied: count("cdc_events_applied_total"),
            dead_lettered: count("cdc_events_dead_lettered_total"),
        }
    }
}

/// Upper bucket bounds of cdcconsumer's `cdc_end_to_end_seconds` histogram (all topics) at the
/// given quantiles, and the number of observations.
fn histogram_quantiles(text: &str, quantiles: &[f64]) -> Option<(Vec<f64>, u64)> {
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cdc_end_to_end_seconds_bucket{") else {
            continue;
        };
        let le = rest.split("le=\"").nth(1)?.split('"').next()?;
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let count: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        let entry = buckets.entry(bound.to_bits()).or_insert((bound, 0.0));
        entry.1 += count;
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let bounds = quantiles
        .iter()
        .map(|q| {
            sorted
                .iter()
                .find(|(_, cumulative)| *cumulative >= q * total)
                .map_or(f64::INFINITY, |(bound, _)| *bound)
        })
        .collect();
    Some((bounds, total as u64))
}

/// cdcconsumer's summary lines (`cdcconsumer: topic=T consumed=N applied=N dead_lettered=N`).
fn summary_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| l.starts_with("cdcconsumer:"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Lines cdcconsumer logged (at `--log-level warn`: warnings and errors), and the last of them.
fn warnings(stderr: &str) -> (usize, String) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    (
        lines.len(),
        lines.last().map_or(String::new(), |l| (*l).to_owned()),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_from_prometheus_text() {
        let text = "\
# TYPE cdc_events_applied counter
cdc_events_applied_total{topic=\"a\"} 3
cdc_events_applied_total{topic=\"b\"} 4
cdc_events_consumed_total{topic=\"a\"} 9
cdc_end_to_end_seconds_bucket{le=\"0.001\",topic=\"a\"} 0
cdc_end_to_end_seconds_bucket{le=\"0.032\",topic=\"a\"} 90
cdc_end_to_end_seconds_bucket{le=\"0.064\",topic=\"a\"} 99
cdc_end_to_end_seconds_bucket{le=\"+Inf\",topic=\"a\"} 100
";
        let counts = Counts::parse(text);
        assert_eq!(
            (counts.applied, counts.consumed, counts.dead_lettered),
            (7, 9, 0)
        );
        let (bounds, count) = histogram_quantiles(text, &[0.5, 0.95, 0.99]).expect("histogram");
        assert_eq!(count, 100);
        assert_eq!(bounds, vec![0.032, 0.064, 0.064]);
    }
}
