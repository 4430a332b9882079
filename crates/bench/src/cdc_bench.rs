//! `bench cdc`: the CDC half of the pipeline (Debezium's topics → cdcconsumer → Cassandra) on the
//! running stack, three figures in one run.
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
//!      ([`cdc::plan`](cdc_core::cdc::plan)), then every write run through
//!      [`Statements::execute`](cdc_core::cassandra::Statements::execute) — the same prepared CQL
//!      with `USING TIMESTAMP <lsn>`, the same consistency — with partitions × lanes writes in flight
//!      (cdcconsumer's upper bound), timed from the first write to the last acknowledgement. No Kafka,
//!      no decoding, no retries, no per-row order, no batches.
//!    - with `--breakdown`: [`CdcHandler`](cdc_core::cdc::CdcHandler) in this process on the same
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
//!    [`Statements::execute`](cdc_core::cassandra::Statements::execute) (the same prepared CQL and
//!    consistency as cdcconsumer) into a keyspace of its own, then polls that keyspace the same way.
//!    c − a is what a bare write costs on this machine at this moment (Cassandra's own latency,
//!    with nothing of cdcconsumer's in it: no second consumer, no batching, no retries); b − c is
//!    what cdcconsumer adds on top of that.
//! 3. **Peak RSS** of cdcconsumer (VmHWM from `/proc`, sampled like the other benchmarks) in the
//!    latency run, and in the write-rate runs.
//!
//! The latency test's rows stay in PostgreSQL: they are ordinary rows that the pipeline mirrors.
//! Scratch topics, groups and keyspaces are removed at the end, also after an error or Ctrl-C.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cdc_core::cassandra::{self, parse_consistency, Statements, Table, Write};
use cdc_core::cdc::{self, CdcHandler, CdcMetrics, KeyGates, Planned};
use cdc_core::config::KafkaArgs;
use cdc_core::debezium::{self, DecimalMode, Field};
use cdc_core::events::EntityKind;
use cdc_core::metrics::Metrics;
use cdc_core::runtime::{start_batch, BatchOutcome};
use cdc_core::topics::TopicSpec;
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
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{
    self, cpu_seconds, create_topics, drop_keyspace, kafka_env, locate_binary, median, mib,
    percentile, send_all, tail, unique_name, wait_until_quiet, AbortOnDrop, Cleanup, Record,
    Subject, SAMPLE_EVERY,
};
use crate::Context as BenchContext;

/// How often cdcconsumer's `/metrics` is read while it works through the write-rate stream.
const PROGRESS_EVERY: Duration = Duration::from_millis(10);

/// How long a row may take to become readable before the latency test gives up on it.
const ROW_DEADLINE: Duration = Duration::from_secs(60);

/// Connections the latency writer commits through (commits overlap when one is slow).
const WRITER_CONNECTIONS: u32 = 8;

const USERS_C: &str = include_str!("../../core/tests/fixtures/debezium/users_c.json");
const USERS_U: &str = include_str!("../../core/tests/fixtures/debezium/users_u.json");
const ORDERS_C: &str = include_str!("../../core/tests/fixtures/debezium/orders_c.json");
const ORDERS_U: &str = include_str!("../../core/tests/fixtures/debezium/orders_u.json");

#[derive(Debug, Clone, clap::Args)]
pub struct CdcArgs {
    /// Write-rate runs per variant; the report gives the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Users in the write-rate stream (each created, then updated once: 2 changes, 2 writes).
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    /// Orders in the write-rate stream (each created, then updated twice: 3 changes, 6 writes, as
    /// every order change writes orders and orders_by_user).
    #[arg(long, default_value_t = 6_000)]
    pub orders: usize,
    /// Cassandra contact points, comma-separated host:port.
    #[arg(
        long,
        env = "CASSANDRA_NODES",
        default_value = "127.0.0.1:9042,127.0.0.2:9043,127.0.0.3:9044",
        value_delimiter = ','
    )]
    pub cassandra_nodes: Vec<String>,
    /// Consistency of every write and read, both variants and the latency poller.
    #[arg(long, default_value = "quorum")]
    pub consistency: String,
    /// cdcconsumer's `--lanes`; the bare loop keeps partitions × lanes writes in flight.
    #[arg(long, default_value_t = 64)]
    pub lanes: usize,
    /// cdcconsumer's `--max-batch`.
    #[arg(long, default_value_t = 500)]
    pub max_batch: usize,
    /// cdcconsumer's `--pipeline` (batches of a partition in flight at once).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub pipeline: u16,
    /// cdcconsumer's `--batch-linger-ms`.
    #[arg(long, default_value_t = 0)]
    pub batch_linger_ms: u64,
    /// cdcconsumer's `--idle-timeout-secs` in the write-rate runs (not part of the time).
    #[arg(long, default_value_t = 2)]
    pub idle_timeout_secs: u64,
    /// Debezium's topics for users and orders: the latency test reads them, and the write-rate
    /// topics copy their partition counts.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cdc.public.users,cdc.public.orders"
    )]
    pub cdc_topics: Vec<String>,
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
    /// Folder holding the release `cdcconsumer` binary; by default the folder of this binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Replication factor of the scratch topics.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i32,
    /// Longest a single measured run may take.
    #[arg(long, default_value_t = 600)]
    pub run_timeout_secs: u64,
    /// Before each measured run, wait (at most this long) for the machine's CPU to be mostly idle.
    #[arg(long, default_value_t = 15)]
    pub quiet_wait_secs: u64,
}

impl CdcArgs {
    fn run_timeout(&self) -> Duration {
        Duration::from_secs(self.run_timeout_secs)
    }

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
            .arg(self.args.cassandra_nodes.join(","))
            .arg("--consistency")
            .arg(&self.args.consistency)
            .arg("--lanes")
            .arg(self.args.lanes.to_string())
            .arg("--max-batch")
            .arg(self.args.max_batch.to_string())
            .arg("--pipeline")
            .arg(self.args.pipeline.to_string())
            .arg("--batch-linger-ms")
            .arg(self.args.batch_linger_ms.to_string())
            .arg("--idle-timeout-secs")
            .arg(idle_timeout_secs.to_string())
            .arg("--metrics-addr")
            .arg(metrics_addr)
            .arg("--replication-factor")
            .arg(self.args.replication_factor.to_string())
            .arg("--log-level")
            .arg("warn");
        kafka_env(&mut command, self.kafka);
        command
    }
}

pub async fn run(ctx: &BenchContext, args: &CdcArgs, cleanup: &mut Cleanup) -> Result<()> {
    let command_line = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let consistency = parse_consistency(&args.consistency).map_err(|e| anyhow!(e))?;
    ensure!(
        args.cdc_topics.len() == 2,
        "--cdc-topics takes two topics: users, orders"
    );
    ensure!(
        args.lanes > 0 && args.max_batch > 0,
        "--lanes and --max-batch must be positive"
    );
    let launcher = Launcher {
        binary: locate_binary("cdcconsumer", args.bin_dir.as_deref())?,
        kafka: &ctx.kafka,
        args,
    };
    cleanup.cassandra_nodes.clone_from(&args.cassandra_nodes);
    let control = cassandra::connect(&args.cassandra_nodes)
        .await
        .context("connecting to Cassandra")?;
    let partitions = (
        topic_partitions(&ctx.brokers, &args.cdc_topics[0]).await?,
        topic_partitions(&ctx.brokers, &args.cdc_topics[1]).await?,
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
    let load_after = common::load_average();

    println!();
    println!(
        "cdcconsumer → Cassandra — {} — consistency {}, lanes {}, max batch {}, pipeline {}, \
         linger {} ms",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.consistency,
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
    println!();
    println!(
        "machine: {} CPUs; load average {} → {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        load_after.map_or("?".into(), |l| format!("{l:.2}"))
    );
    println!("command: cargo run --release -p bench -- {command_line}");
    Ok(())
}

/// Partition count of an existing topic.
async fn topic_partitions(brokers: &str, topic: &str) -> Result<i32> {
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
fn free_metrics_addr() -> Result<String> {
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
async fn create_keyspace(control: &Session, nodes: &[String], keyspace: &str) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Write rate

/// The four captured envelopes the stream is built from.
#[derive(Debug)]
struct Templates {
    user_c: Value,
    user_u: Value,
    order_c: Value,
    order_u: Value,
    /// The fixtures' `amount` encodings (precise decimals, base64 of the unscaled value).
    amounts: Vec<Value>,
}

impl Templates {
    fn load() -> Result<Self> {
        let parse = |name: &str, text: &str| -> Result<Value> {
            let value: Value =
                serde_json::from_str(text).with_context(|| format!("fixture {name}"))?;
            ensure!(
                value["key"]["payload"].is_object()
                    && value["value"]["payload"]["source"].is_object(),
                "fixture {name} is not a keyed Debezium change record"
            );
            Ok(value)
        };
        let order_c = parse("orders_c", ORDERS_C)?;
        let order_u = parse("orders_u", ORDERS_U)?;
        let amounts = [&order_c, &order_u]
            .iter()
            .map(|t| t["value"]["payload"]["after"]["amount"].clone())
            .filter(Value::is_string)
            .collect::<Vec<_>>();
        ensure!(!amounts.is_empty(), "the order fixtures carry no amount");
        Ok(Self {
            user_c: parse("users_c", USERS_C)?,
            user_u: parse("users_u", USERS_U)?,
            order_c,
            order_u,
            amounts,
        })
    }
}

/// Position of the next change in the made-up WAL.
#[derive(Debug)]
struct Position {
    lsn: i64,
    tx_id: i64,
    commit_micros: i64,
}

impl Position {
    fn advance(&mut self) {
        self.lsn += 1_064;
        self.tx_id += 1;
        self.commit_micros += 50;
    }
}

/// One Kafka record (key, value) from a template with the given images and position.
fn envelope(
    template: &Value,
    id: Uuid,
    op: &str,
    before: Option<&Value>,
    after: &Value,
    at: &Position,
) -> Result<(String, Vec<u8>)> {
    let mut record = template.clone();
    record["key"]["payload"]["id"] = Value::from(id.to_string());
    let payload = &mut record["value"]["payload"];
    payload["op"] = Value::from(op);
    payload["before"] = before.cloned().unwrap_or(Value::Null);
    payload["after"] = after.clone();
    let emitted = at.commit_micros + 150_000;
    payload["ts_ms"] = Value::from(emitted / 1000);
    payload["ts_us"] = Value::from(emitted);
    payload["ts_ns"] = Value::from(emitted * 1000);
    let source = &mut payload["source"];
    source["lsn"] = Value::from(at.lsn);
    source["txId"] = Value::from(at.tx_id);
    source["sequence"] = Value::from(format!("[\"{}\",\"{}\"]", at.lsn - 376, at.lsn));
    source["ts_ms"] = Value::from(at.commit_micros / 1000);
    source["ts_us"] = Value::from(at.commit_micros);
    source["ts_ns"] = Value::from(at.commit_micros * 1000);
    Ok((
        serde_json::to_string(&record["key"])?,
        serde_json::to_vec(&record["value"])?,
    ))
}

fn zoned(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

const FIRST_NAMES: &[&str] = &[
    "Janessa", "Grady", "Amara", "Tobias", "Lena", "Marco", "Priya", "Elias", "Noor", "Ingrid",
];
const LAST_NAMES: &[&str] = &[
    "Gleichner",
    "Murazik",
    "Bechtelar",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Castillo",
];
const PRODUCTS: &[&str] = &[
    "Backpack",
    "Phone charger",
    "Desk lamp",
    "Coffee grinder",
    "Running shoes",
    "Water bottle",
    "Headphones",
];

fn user_image(id: Uuid, n: usize, surname: usize, version: i64, created: DateTime<Utc>) -> Value {
    let first = FIRST_NAMES[n % FIRST_NAMES.len()];
    let last = LAST_NAMES[surname % LAST_NAMES.len()];
    let updated = created + chrono::Duration::seconds(version - 1);
    json!({
        "id": id.to_string(),
        "name": format!("{first} {last}"),
        "email": format!("{}.{}.{n}@example.com", first.to_lowercase(), LAST_NAMES[n % LAST_NAMES.len()].to_lowercase()),
        "created_at": zoned(created),
        "updated_at": zoned(updated),
        "deleted_at": null,
        "version": version,
    })
}

fn order_image(
    id: Uuid,
    user_id: Uuid,
    n: usize,
    version: i64,
    created: DateTime<Utc>,
    amount: &Value,
) -> Value {
    let status = ["PLACED", "SHIPPED", "DELIVERED"][usize::try_from(version - 1).unwrap_or(0) % 3];
    let updated = created + chrono::Duration::seconds(version - 1);
    json!({
        "id": id.to_string(),
        "user_id": user_id.to_string(),
        "product": PRODUCTS[n % PRODUCTS.len()],
        "quantity": 1 + n % 4,
        "amount": amount,
        "status": status,
        "order_date": created.date_naive().signed_duration_since(chrono::NaiveDate::default()).num_days(),
        "created_at": zoned(created),
        "updated_at": zoned(updated),
        "deleted_at": null,
        "version": version,
    })
}

/// The write-rate stream: Kafka records, and the same changes as planned writes.
#[derive(Debug)]
struct RateStream {
    records: Vec<Record>,
    writes: Vec<(Write, i64)>,
    user_changes: usize,
    order_changes: usize,
    users: usize,
    orders: usize,
}

impl RateStream {
    fn changes(&self) -> usize {
        self.user_changes + self.order_changes
    }

    fn build(users: usize, orders: usize) -> Result<Self> {
        ensure!(users > 0, "--users must be positive");
        let templates = Templates::load()?;
        let now = Utc::now();
        let mut at = Position {
            lsn: 1_000_000_000,
            tx_id: 100_000,
            commit_micros: now.timestamp_micros(),
        };
        let created = now - chrono::Duration::hours(1);
        let user_ids: Vec<Uuid> = (0..users).map(|_| Uuid::new_v4()).collect();
        let order_ids: Vec<Uuid> = (0..orders).map(|_| Uuid::new_v4()).collect();
        let owner = |n: usize| user_ids[n % users];
        let amount = |n: usize| &templates.amounts[n % templates.amounts.len()];
        let mut records = Vec::with_capacity(2 * users + 3 * orders);
        let mut push = |kind: EntityKind, (key, payload): (String, Vec<u8>)| {
            records.push(Record { kind, key, payload });
        };
        // Creates first (each user followed by its orders), then the updates, in WAL order.
        for (n, id) in user_ids.iter().enumerate() {
            let after = user_image(*id, n, n, 1, created);
            push(
                EntityKind::User,
                envelope(&templates.user_c, *id, "c", None, &after, &at)?,
            );
            at.advance();
            for (m, order) in order_ids.iter().enumerate().skip(n).step_by(users) {
                let after = order_image(*order, *id, m, 1, created, amount(m));
                push(
                    EntityKind::Order,
                    envelope(&templates.order_c, *order, "c", None, &after, &at)?,
                );
                at.advance();
            }
        }
        for (n, id) in user_ids.iter().enumerate() {
            let before = user_image(*id, n, n, 1, created);
            let after = user_image(*id, n, n + 3, 2, created);
            push(
                EntityKind::User,
                envelope(&templates.user_u, *id, "u", Some(&before), &after, &at)?,
            );
            at.advance();
        }
        for version in 2..=3 {
            for (m, order) in order_ids.iter().enumerate() {
                let before = order_image(*order, owner(m), m, version - 1, created, amount(m));
                let after = order_image(*order, owner(m), m, version, created, amount(m));
                push(
                    EntityKind::Order,
                    envelope(&templates.order_u, *order, "u", Some(&before), &after, &at)?,
                );
                at.advance();
            }
        }
        // The writes cdcconsumer will derive, through its own decoder and planner.
        let mut writes = Vec::new();
        for record in &records {
            let parsed = debezium::parse(Some(record.key.as_bytes()), Some(&record.payload))
                .context("a built envelope does not parse")?;
            match cdc::plan(&parsed, DecimalMode::Precise).context("a built envelope")? {
                Planned::Writes(plan) => {
                    writes.extend(plan.writes.into_iter().map(|w| (w, plan.lsn)));
                }
                other => bail!("a built envelope planned as {other:?}"),
            }
        }
        Ok(Self {
            records,
            writes,
            user_changes: 2 * users,
            order_changes: 3 * orders,
            users,
            orders,
        })
    }

    /// (table, rows, sum of version) each table must hold afterwards.
    fn expected(&self) -> [(&'static str, i64, i64); 3] {
        let users = i64::try_from(self.users).unwrap_or(i64::MAX);
        let orders = i64::try_from(self.orders).unwrap_or(i64::MAX);
        [
            ("users", users, 2 * users),
            ("orders", orders, 3 * orders),
            ("orders_by_user", orders, 3 * orders),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The cdcconsumer binary.
    Ours,
    /// `Statements::execute` over every write, this many in flight.
    Bare(usize),
    /// `CdcHandler::handle` in this process on batches of `--max-batch` records per partition,
    /// partitions in parallel: cdcconsumer without Kafka, the runtime and the process.
    Handler,
}

impl Variant {
    fn label(self, args: &CdcArgs, partitions: (i32, i32)) -> String {
        match self {
            Self::Ours => format!(
                "cdcconsumer binary (ours), {} partitions × {} lanes",
                partitions.0 + partitions.1,
                args.lanes
            ),
            Self::Bare(in_flight) => {
                format!("bare scylla loop, Statements::execute, {in_flight} in flight")
            }
            Self::Handler => "  CdcHandler in-process, same batches, no Kafka".to_owned(),
        }
    }
}

/// One measured write-rate run.
#[derive(Debug, Clone)]
struct RateSample {
    round: u32,
    seconds: f64,
    /// cdcconsumer: spawn → last change applied.
    wall: Option<f64>,
    peak_rss_kib: Option<u64>,
    /// CPU time: cdcconsumer's whole process (start-up included); in-process variants, this
    /// process during the timed part.
    cpu_seconds: Option<f64>,
    summary: Option<String>,
    /// cdcconsumer's warnings and errors (it runs at `--log-level warn`): count and the last.
    warnings: Option<(usize, String)>,
    /// cdcconsumer's batches: how many, and their summed duration (s).
    batches: Option<(f64, f64)>,
    busy_before: Option<f64>,
}

#[derive(Debug)]
struct WriteRate {
    changes: usize,
    writes: usize,
    user_changes: usize,
    order_changes: usize,
    partitions: (i32, i32),
    variants: Vec<Variant>,
    /// Samples per index into `variants`.
    samples: BTreeMap<usize, Vec<RateSample>>,
    fill_seconds: f64,
}

impl WriteRate {
    fn of(&self, variant: Variant) -> &[RateSample] {
        self.variants
            .iter()
            .position(|v| *v == variant)
            .and_then(|i| self.samples.get(&i))
            .map_or(&[], Vec::as_slice)
    }
}

async fn write_rate(
    ctx: &BenchContext,
    args: &CdcArgs,
    launcher: &Launcher<'_>,
    control: &Session,
    consistency: Consistency,
    partitions: (i32, i32),
    cleanup: &mut Cleanup,
) -> Result<WriteRate> {
    let stream = RateStream::build(args.users, args.orders)?;
    let users_topic = unique_name("bench_cdc_users");
    let orders_topic = unique_name("bench_cdc_orders");
    let rf = args.replication_factor;
    let specs = [
        TopicSpec::new(&users_topic, partitions.0, rf),
        TopicSpec::new(&orders_topic, partitions.1, rf),
        TopicSpec::new(cdc_core::dlq::topic_for(&users_topic), 1, rf),
        TopicSpec::new(cdc_core::dlq::topic_for(&orders_topic), 1, rf),
    ];
    cleanup
        .topics
        .extend(specs.iter().map(|spec| spec.name.clone()));
    create_topics(&ctx.brokers, &specs).await?;
    let producer_config = cdc_core::producer::client_config(ctx.kafka.client_config());
    let records = stream.records.clone();
    let (u, o) = (users_topic.clone(), orders_topic.clone());
    let timeout = args.run_timeout();
    let fill =
        tokio::task::spawn_blocking(move || send_all(&producer_config, &records, &u, &o, timeout))
            .await??;
    tracing::info!(
        changes = stream.changes(),
        writes = stream.writes.len(),
        seconds = fill.as_secs_f64(),
        "wrote the Debezium envelopes to the scratch topics"
    );

    let topics = [users_topic, orders_topic];
    let in_flight = usize::try_from(partitions.0 + partitions.1)? * args.lanes;
    let mut variants = vec![Variant::Ours, Variant::Bare(in_flight)];
    let mut partitioned = Vec::new();
    if args.breakdown {
        variants.push(Variant::Handler);
        // Once the users partitions are done, only the orders partitions are writing.
        variants.push(Variant::Bare(usize::try_from(partitions.1)? * args.lanes));
        partitioned = partition_records(&stream.records, &topics, partitions)?;
    }
    let mut samples: BTreeMap<usize, Vec<RateSample>> = BTreeMap::new();
    for round in 0..args.runs {
        // Rotate the order every round so no variant always runs first.
        let n = variants.len();
        for i in 0..n {
            let index = (i + round as usize) % n;
            let variant = variants[index];
            let label = variant.label(args, partitions);
            let keyspace = unique_name("bench_cdc_ks");
            cleanup.keyspaces.push(keyspace.clone());
            create_keyspace(control, &args.cassandra_nodes, &keyspace).await?;
            let busy_before = wait_until_quiet(args.quiet_wait()).await;
            let sample = match variant {
                Variant::Ours => {
                    run_ours(
                        launcher,
                        &topics,
                        &keyspace,
                        stream.changes(),
                        args,
                        cleanup,
                    )
                    .await
                }
                Variant::Bare(in_flight) => {
                    run_bare(args, &keyspace, consistency, &stream.writes, in_flight).await
                }
                Variant::Handler => {
                    run_handler(args, &ctx.kafka, &keyspace, consistency, &partitioned).await
                }
            }
            .with_context(|| format!("round {}: {label}", round + 1))?;
            let sample = RateSample {
                round,
                busy_before,
                ..sample
            };
            check_rows(control, &keyspace, consistency, &stream)
                .await
                .with_context(|| format!("round {}: {label}", round + 1))?;
            drop_keyspace(control, &keyspace).await?;
            cleanup.keyspaces.retain(|k| *k != keyspace);
            tracing::info!(
                round = round + 1,
                variant = label,
                seconds = format!("{:.3}", sample.seconds),
                changes_per_sec = format!("{:.0}", stream.changes() as f64 / sample.seconds),
                "measured"
            );
            samples.entry(index).or_default().push(sample);
        }
    }
    Ok(WriteRate {
        changes: stream.changes(),
        writes: stream.writes.len(),
        user_changes: stream.user_changes,
        order_changes: stream.order_changes,
        partitions,
        variants,
        samples,
        fill_seconds: fill.as_secs_f64(),
    })
}

/// The records as the partitions of the two topics would hold them (by a hash of the key, in
/// stream order within a partition).
fn partition_records(
    records: &[Record],
    topics: &[String; 2],
    partitions: (i32, i32),
) -> Result<Vec<Vec<OwnedMessage>>> {
    let counts = [partitions.0, partitions.1];
    let mut queues: Vec<Vec<OwnedMessage>> =
        vec![Vec::new(); usize::try_from(partitions.0 + partitions.1)?];
    for record in records {
        let table = match record.kind {
            EntityKind::User => 0,
            EntityKind::Order => 1,
        };
        let mut hasher = DefaultHasher::new();
        record.key.hash(&mut hasher);
        let partition = i32::try_from(hasher.finish() % u64::try_from(counts[table])?)?;
        let queue = usize::try_from(if table == 0 {
            partition
        } else {
            partitions.0 + partition
        })?;
        let offset = i64::try_from(queues[queue].len())?;
        queues[queue].push(OwnedMessage::new(
            Some(record.payload.clone()),
            Some(record.key.clone().into_bytes()),
            topics[table].clone(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        ));
    }
    Ok(queues)
}

async fn run_ours(
    launcher: &Launcher<'_>,
    topics: &[String],
    keyspace: &str,
    changes: usize,
    args: &CdcArgs,
    cleanup: &mut Cleanup,
) -> Result<RateSample> {
    let group = unique_name("bench_cdc_group");
    cleanup.groups.push(group.clone());
    let metrics_addr = free_metrics_addr()?;
    let command = launcher.command(
        topics,
        &group,
        keyspace,
        args.idle_timeout_secs,
        &metrics_addr,
    );
    let spawned = Instant::now();
    let mut subject = Subject::spawn(command)?;
    let total = u64::try_from(changes)?;
    let mut last_idle = spawned;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (done, batches) = loop {
        tick.tick().await;
        let asked = Instant::now();
        let text = scrape(&metrics_addr).await.unwrap_or_default();
        let counts = Counts::parse(&text);
        if counts.consumed == 0 {
            last_idle = asked;
        }
        if counts.applied >= total {
            let batches = (
                metric_sum(&text, "cdc_batch_duration_seconds_count"),
                metric_sum(&text, "cdc_batch_duration_seconds_sum"),
            );
            break (Instant::now(), batches);
        }
        if counts.dead_lettered > 0 {
            let stderr = subject.kill().await;
            bail!(
                "cdcconsumer dead-lettered {} records of a valid stream:\n{stderr}",
                counts.dead_lettered
            );
        }
        if subject.child.try_wait()?.is_some() || spawned.elapsed() > args.run_timeout() {
            let stderr = subject.kill().await;
            bail!(
                "cdcconsumer stopped (or ran out of time) at {counts:?} of {total} changes:\n{stderr}"
            );
        }
    };
    let finished = subject
        .finish(Duration::from_secs(args.idle_timeout_secs + 60))
        .await?;
    ensure!(
        finished.status.success(),
        "cdcconsumer exited with {}:\n{}",
        finished.status,
        tail(&finished.stderr, 40)
    );
    Ok(RateSample {
        round: 0,
        seconds: done.duration_since(last_idle).as_secs_f64(),
        wall: Some(done.duration_since(spawned).as_secs_f64()),
        peak_rss_kib: finished.peak_rss_kib,
        cpu_seconds: finished.cpu_seconds,
        summary: Some(summary_lines(&finished.stdout)),
        warnings: Some(warnings(&finished.stderr)),
        batches: Some(batches),
        busy_before: None,
    })
}

async fn run_bare(
    args: &CdcArgs,
    keyspace: &str,
    consistency: Consistency,
    writes: &[(Write, i64)],
    in_flight: usize,
) -> Result<RateSample> {
    let session = cassandra::connect(&args.cassandra_nodes).await?;
    let statements = retry_schema("preparing the sink's statements", || {
        Statements::prepare(&session, keyspace, consistency)
    })
    .await?;
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    stream::iter(writes)
        .map(|(write, ts)| statements.execute(&session, write, *ts))
        .buffer_unordered(in_flight)
        .try_for_each(|()| futures::future::ready(Ok(())))
        .await
        .context("a bare write failed")?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(RateSample {
        round: 0,
        seconds,
        wall: None,
        peak_rss_kib: None,
        cpu_seconds: cpu_seconds("self").zip(cpu_before).map(|(a, b)| a - b),
        summary: None,
        warnings: None,
        batches: None,
        busy_before: None,
    })
}

async fn run_handler(
    args: &CdcArgs,
    kafka: &KafkaArgs,
    keyspace: &str,
    consistency: Consistency,
    partitioned: &[Vec<OwnedMessage>],
) -> Result<RateSample> {
    let session = cassandra::connect(&args.cassandra_nodes).await?;
    let statements = retry_schema("preparing the sink's statements", || {
        Statements::prepare(&session, keyspace, consistency)
    })
    .await?;
    let metrics = Metrics::default();
    let handler = Arc::new(CdcHandler {
        session: Arc::new(session),
        statements,
        dlq: cdc_core::dlq::producer(kafka.client_config())?,
        cdc_metrics: CdcMetrics::register(&metrics),
        metrics: metrics.clone(),
        lanes: args.lanes,
        gates: KeyGates::default(),
        decimals: DecimalMode::Precise,
    });
    let cancel = CancellationToken::new();
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for queue in partitioned {
        let (handler, cancel, queue) = (Arc::clone(&handler), cancel.clone(), queue.clone());
        let (max_batch, depth) = (args.max_batch, usize::from(args.pipeline));
        tasks.spawn(async move {
            // As the runtime does: up to `depth` batches in flight, started in order.
            let mut in_flight = FuturesOrdered::new();
            for batch in queue.chunks(max_batch) {
                if in_flight.len() >= depth {
                    finish_batch(in_flight.next().await)?;
                }
                in_flight.push_back(start_batch(&handler, batch.to_vec(), &cancel).await);
            }
            while let Some(outcome) = in_flight.next().await {
                finish_batch(Some(outcome))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self").zip(cpu_before).map(|(a, b)| a - b);
    let counts = Counts::parse(&metrics.render());
    ensure!(
        counts.dead_lettered == 0,
        "the handler dead-lettered {} records",
        counts.dead_lettered
    );
    Ok(RateSample {
        round: 0,
        seconds,
        wall: None,
        peak_rss_kib: None,
        cpu_seconds: cpu,
        summary: None,
        warnings: None,
        batches: None,
        busy_before: None,
    })
}

fn finish_batch(outcome: Option<BatchOutcome>) -> Result<()> {
    match outcome {
        Some((Ok(()), _)) => Ok(()),
        _ => bail!("the handler gave up on a batch"),
    }
}

/// Every table holds every row at its final version (count and sum of `version`).
async fn check_rows(
    session: &Session,
    keyspace: &str,
    consistency: Consistency,
    stream: &RateStream,
) -> Result<()> {
    for (table, rows, versions) in stream.expected() {
        let mut statement = Statement::new(format!(
            "SELECT count(*), sum(version) FROM {keyspace}.{table}"
        ));
        statement.set_consistency(consistency);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        let result = session
            .query_unpaged(statement, ())
            .await?
            .into_rows_result()?;
        let found = result.maybe_first_row::<(i64, Option<i64>)>()?;
        let (count, sum) = found.map_or((0, None), |(c, s)| (c, s));
        ensure!(
            count == rows && sum == Some(versions),
            "{keyspace}.{table}: {count} rows with versions summing to {sum:?}, expected {rows} \
             rows summing to {versions}"
        );
    }
    Ok(())
}

fn report_write_rate(args: &CdcArgs, rate: &WriteRate) {
    let changes = rate.changes as f64;
    let writes = rate.writes as f64;
    let seconds = |samples: &[RateSample]| -> f64 {
        median(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>())
    };
    let in_flight =
        usize::try_from(rate.partitions.0 + rate.partitions.1).unwrap_or(0) * args.lanes;
    let ours = rate.of(Variant::Ours);
    let bare = rate.of(Variant::Bare(in_flight));
    let reference = seconds(bare);
    println!();
    println!(
        "1. write rate: {} changes ({} users c+u on {} partitions, {} orders c+u+u on {} \
         partitions) = {} CQL writes into an empty scratch keyspace; median of {} runs, \
         order rotating",
        rate.changes,
        rate.user_changes,
        rate.partitions.0,
        rate.order_changes,
        rate.partitions.1,
        rate.writes,
        args.runs
    );
    println!(
        "   cdcconsumer timed from its last /metrics poll with nothing consumed to the first with \
         every change applied (polled every {} ms); in-process variants from their first write to \
         the last acknowledgement",
        PROGRESS_EVERY.as_millis()
    );
    println!(
        "   CPU s: user + system CPU time (median); cdcconsumer's whole process, start-up and idle \
         wait included; in-process variants, this process while timed (scylla driver included)"
    );
    println!();
    println!(
        "{:<58} {:>9} {:>12} {:>11} {:>9} {:>7}   runs (s)",
        "variant", "seconds", "changes/s", "writes/s", "vs bare", "CPU s"
    );
    for (index, variant) in rate.variants.iter().enumerate() {
        let samples = rate.samples.get(&index).map_or(&[][..], Vec::as_slice);
        let median_seconds = seconds(samples);
        let each: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.2}", s.seconds))
            .collect();
        let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_seconds).collect();
        println!(
            "{:<58} {:>9.3} {:>12.0} {:>11.0} {:>8.2}x {:>7.2}   {}",
            variant.label(args, rate.partitions),
            median_seconds,
            changes / median_seconds,
            writes / median_seconds,
            reference / median_seconds,
            median(&cpu),
            each.join(" ")
        );
    }
    let per_round: Vec<String> = ours
        .iter()
        .filter_map(|o| {
            let b = bare.iter().find(|b| b.round == o.round)?;
            Some(format!("{:.2}x", b.seconds / o.seconds))
        })
        .collect();
    println!();
    println!(
        "   ours / bare per round: {} (target ≥ 0.80x)",
        per_round.join(" ")
    );
    let walls: Vec<f64> = ours.iter().filter_map(|s| s.wall).collect();
    println!(
        "   cdcconsumer spawn → last change applied (start-up included): median {:.2} s",
        median(&walls)
    );
    let batches: Vec<String> = ours
        .iter()
        .filter_map(|s| s.batches)
        .map(|(count, sum)| format!("{count:.0} × {:.0} ms", 1000.0 * sum / count.max(1.0)))
        .collect();
    println!(
        "   cdcconsumer batches per run (count × mean duration; partitions work in parallel): {}",
        batches.join(", ")
    );
    let rss: Vec<f64> = ours
        .iter()
        .filter_map(|s| s.peak_rss_kib.map(mib))
        .collect();
    println!(
        "   cdcconsumer peak RSS at full speed (VmHWM, sampled every {} ms): median {:.1} MiB, max \
         {:.1} MiB",
        SAMPLE_EVERY.as_millis(),
        median(&rss),
        rss.iter().copied().fold(f64::NAN, f64::max)
    );
    if let Some(summary) = ours.last().and_then(|s| s.summary.as_deref()) {
        println!("   cdcconsumer's own summary (last run): {summary}");
    }
    let logged: Vec<String> = ours
        .iter()
        .filter_map(|s| s.warnings.as_ref().map(|(n, _)| n.to_string()))
        .collect();
    println!(
        "   cdcconsumer warnings/errors logged per run: {}",
        logged.join(" ")
    );
    if let Some((_, last)) = ours
        .iter()
        .filter_map(|s| s.warnings.as_ref())
        .rfind(|(n, _)| *n > 0)
    {
        println!("     last: {last}");
    }
    let busy: Vec<String> = rate
        .samples
        .values()
        .flatten()
        .filter_map(|s| s.busy_before.map(|b| format!("{:.0}", b * 100.0)))
        .collect();
    println!(
        "   CPU busy % in the second before each run: {}; filling the topics took {:.2} s",
        busy.join(" "),
        rate.fill_seconds
    );
}

// ---------------------------------------------------------------------------------------------
// End-to-end latency

/// A row at a version: what one committed change makes of it.
type RowVersion = (Table, Uuid, i64);

/// When the changes the writer committed were seen, by the bench consumer and by the poller.
#[derive(Debug, Default)]
struct Seen {
    /// Rows the writer created (changes of other rows on the topics are ignored).
    ids: HashSet<Uuid>,
    kafka: HashMap<RowVersion, Instant>,
    cassandra: HashMap<RowVersion, Readable>,
    /// The same rows written by the bench itself the moment they arrive from Kafka (the baseline).
    bare: HashMap<RowVersion, Readable>,
    /// Leg (a) split by the envelope's own clocks, µs: source commit → Debezium's envelope time,
    /// and envelope time → arrival here.
    debezium: HashMap<RowVersion, (i64, i64)>,
}

#[derive(Debug, Clone, Copy)]
struct Readable {
    /// Completion of the first read that showed the change.
    at: Instant,
    /// The very first read already showed it.
    at_first_poll: bool,
}

/// The poller's session and statements.
#[derive(Debug)]
struct Probe {
    session: Session,
    users: PreparedStatement,
    orders: PreparedStatement,
    interval: Duration,
    reads: AtomicU64,
}

impl Probe {
    async fn connect(
        nodes: &[String],
        keyspace: &str,
        consistency: Consistency,
        interval: Duration,
    ) -> Result<Self> {
        let session = cassandra::connect(nodes).await?;
        let prepare = |table: &str| {
            let text = format!("SELECT version FROM {keyspace}.{table} WHERE id = ?");
            let session = &session;
            async move {
                let mut statement = session.prepare(text).await?;
                statement.set_consistency(consistency);
                statement.set_request_timeout(Some(Duration::from_secs(5)));
                anyhow::Ok(statement)
            }
        };
        let users = retry_schema("preparing the users read", || prepare("users")).await?;
        let orders = retry_schema("preparing the orders read", || prepare("orders")).await?;
        Ok(Self {
            session,
            users,
            orders,
            interval,
            reads: AtomicU64::new(0),
        })
    }

    async fn version(&self, table: Table, id: Uuid) -> Result<Option<i64>> {
        let statement = match table {
            Table::Users => &self.users,
            Table::Orders => &self.orders,
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let rows = self
            .session
            .execute_unpaged(statement, (id,))
            .await?
            .into_rows_result()?;
        Ok(rows.maybe_first_row::<(Option<i64>,)>()?.and_then(|(v,)| v))
    }
}

/// Which keyspace a poller watches.
#[derive(Debug, Clone, Copy)]
enum Writer {
    /// cdcconsumer's.
    Ours,
    /// The bench's own writes on arrival.
    Bare,
}

/// Reads `row` every poll interval until Cassandra shows its version (or a later one).
async fn poll_row(
    probe: Arc<Probe>,
    seen: Arc<Mutex<Seen>>,
    row: RowVersion,
    writer: Writer,
    cancel: CancellationToken,
) {
    let deadline = Instant::now() + ROW_DEADLINE;
    let mut first = true;
    loop {
        match probe.version(row.0, row.1).await {
            Ok(Some(version)) if version >= row.2 => {
                let readable = Readable {
                    at: Instant::now(),
                    at_first_poll: first,
                };
                let mut seen = lock(&seen);
                match writer {
                    Writer::Ours => seen.cassandra.insert(row, readable),
                    Writer::Bare => seen.bare.insert(row, readable),
                };
                return;
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "poll read failed"),
        }
        first = false;
        if Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(probe.interval) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// The baseline: the bench's own session and statements (the same prepared CQL and consistency as
/// cdcconsumer's) on a keyspace of its own, and a poller on it.
#[derive(Debug)]
struct Bare {
    session: Session,
    statements: Statements,
    probe: Arc<Probe>,
}

/// Runs a change's writes at once (as cdcconsumer runs one change's writes), then polls for the
/// row like cdcconsumer's poller does; a refused write leaves the row missing.
async fn bare_row(
    bare: Arc<Bare>,
    seen: Arc<Mutex<Seen>>,
    row: RowVersion,
    plan: cdc::Plan,
    cancel: CancellationToken,
) {
    let written = futures::future::join_all(
        plan.writes
            .iter()
            .map(|w| bare.statements.execute(&bare.session, w, plan.lsn)),
    )
    .await;
    if let Some(Err(error)) = written.into_iter().find(Result::is_err) {
        tracing::warn!(%error, "bare write failed");
        return;
    }
    poll_row(Arc::clone(&bare.probe), seen, row, Writer::Bare, cancel).await;
}

/// The version a planned change leaves its row at.
fn planned_version(writes: &[Write]) -> Option<i64> {
    writes.iter().find_map(|write| {
        let version = match write {
            Write::UpsertUser(row) => &row.version,
            Write::UpsertOrder(row) => &row.version,
            _ => return None,
        };
        match version {
            Field::Value(v) => Some(*v),
            _ => None,
        }
    })
}

/// The envelope's own timestamp (when Debezium made it), µs since the epoch.
fn envelope_micros(payload: Option<&[u8]>) -> Option<i64> {
    let value: Value = serde_json::from_slice(payload?).ok()?;
    let payload = &value["payload"];
    payload["ts_us"]
        .as_i64()
        .or_else(|| payload["ts_ms"].as_i64().map(|ms| ms * 1000))
}

/// Reads Debezium's topics from `start` and notes when each of the writer's changes arrives; each
/// first arrival starts a poller.
async fn watch_kafka(
    consumer: StreamConsumer,
    seen: Arc<Mutex<Seen>>,
    probe: Arc<Probe>,
    bare: Arc<Bare>,
    cancel: CancellationToken,
) -> Result<()> {
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message?,
            () = cancel.cancelled() => return Ok(()),
        };
        let arrived = Instant::now();
        let arrived_micros = Utc::now().timestamp_micros();
        let Ok(record) = debezium::parse(message.key(), message.payload()) else {
            continue;
        };
        let commit_micros = match &record {
            debezium::Record::Change(change) => change.source.commit_micros(),
            debezium::Record::Tombstone { .. } => continue,
        };
        let Ok(Planned::Writes(plan)) = cdc::plan(&record, DecimalMode::Precise) else {
            continue;
        };
        let Some(version) = planned_version(&plan.writes) else {
            continue;
        };
        let row = (plan.table, plan.key, version);
        let first = {
            let mut seen = lock(&seen);
            seen.ids.contains(&plan.key) && {
                let known = seen.kafka.contains_key(&row);
                seen.kafka.entry(row).or_insert(arrived);
                !known
            }
        };
        if first {
            if let Some(emitted) = envelope_micros(message.payload()) {
                lock(&seen)
                    .debezium
                    .insert(row, (emitted - commit_micros, arrived_micros - emitted));
            }
            tokio::spawn(bare_row(
                Arc::clone(&bare),
                Arc::clone(&seen),
                row,
                plan,
                cancel.clone(),
            ));
            tokio::spawn(poll_row(
                Arc::clone(&probe),
                Arc::clone(&seen),
                row,
                Writer::Ours,
                cancel.clone(),
            ));
        }
    }
}

/// Commits the high watermarks of `topics` as `group`'s offsets (so a consumer of that group starts
/// at the end), and returns them.
fn commit_end_offsets(
    config: &ClientConfig,
    group: &str,
    topics: &[(String, i32)],
) -> Result<TopicPartitionList> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut positions = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            positions.add_partition_offset(topic, partition, Offset::Offset(high))?;
        }
    }
    consumer.commit(&positions, CommitMode::Sync)?;
    let committed = consumer.committed_offsets(positions.clone(), Duration::from_secs(10))?;
    ensure!(
        committed.to_topic_map() == positions.to_topic_map(),
        "group {group} did not keep the committed offsets: {committed:?}"
    );
    Ok(positions)
}

/// Waits until `group` is Stable with a member (cdcconsumer has its partitions).
fn wait_group_stable(config: &ClientConfig, group: &str, timeout: Duration) -> Result<()> {
    let consumer: BaseConsumer = config.create()?;
    let deadline = Instant::now() + timeout;
    loop {
        let list = consumer.fetch_group_list(Some(group), Duration::from_secs(5))?;
        let stable = list
            .groups()
            .iter()
            .any(|g| g.state() == "Stable" && !g.members().is_empty());
        if stable {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "consumer group {group} not Stable within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InsertUser,
    UpdateUser,
    InsertOrder,
    UpdateOrder,
}

/// The writer's mix, repeated: per 10 changes 1 user created, 1 user updated, 4 orders created, 4
/// orders updated.
const MIX: [Kind; 10] = [
    Kind::InsertUser,
    Kind::InsertOrder,
    Kind::UpdateOrder,
    Kind::InsertOrder,
    Kind::UpdateOrder,
    Kind::UpdateUser,
    Kind::InsertOrder,
    Kind::UpdateOrder,
    Kind::UpdateOrder,
    Kind::InsertOrder,
];

#[derive(Debug, Clone, Copy)]
enum Op {
    InsertUser(Uuid),
    UpdateUser(Uuid),
    InsertOrder { id: Uuid, user_id: Uuid },
    UpdateOrder(Uuid),
}

/// Rows the writer has committed; a row being updated is out of the idle queue, so one row's
/// changes never overlap.
#[derive(Debug, Default)]
struct Rows {
    users: Vec<Uuid>,
    idle_users: VecDeque<Uuid>,
    idle_orders: VecDeque<Uuid>,
    next_owner: usize,
}

impl Rows {
    fn next(&mut self, wanted: Kind) -> Op {
        match wanted {
            Kind::UpdateUser => {
                if let Some(id) = self.idle_users.pop_front() {
                    return Op::UpdateUser(id);
                }
            }
            Kind::UpdateOrder => {
                if let Some(id) = self.idle_orders.pop_front() {
                    return Op::UpdateOrder(id);
                }
            }
            Kind::InsertUser | Kind::InsertOrder => {}
        }
        let wants_order = matches!(wanted, Kind::InsertOrder | Kind::UpdateOrder);
        if wants_order && !self.users.is_empty() {
            // Spread orders over the most recent users.
            let window = self.users.len().min(50);
            let owner = self.users[self.users.len() - 1 - self.next_owner % window];
            self.next_owner += 1;
            Op::InsertOrder {
                id: Uuid::new_v4(),
                user_id: owner,
            }
        } else {
            Op::InsertUser(Uuid::new_v4())
        }
    }

    fn committed(&mut self, op: Op) {
        match op {
            Op::InsertUser(id) => {
                self.users.push(id);
                self.idle_users.push_back(id);
            }
            Op::UpdateUser(id) => self.idle_users.push_back(id),
            Op::InsertOrder { id, .. } | Op::UpdateOrder(id) => self.idle_orders.push_back(id),
        }
    }
}

/// Commits one change (autocommit: one statement, one transaction); returns the row and version.
async fn commit(pool: &PgPool, op: Op, n: u64) -> Result<RowVersion> {
    let first = FIRST_NAMES[usize::try_from(n).unwrap_or(0) % FIRST_NAMES.len()];
    let last = LAST_NAMES[usize::try_from(n / 7).unwrap_or(0) % LAST_NAMES.len()];
    Ok(match op {
        Op::InsertUser(id) => {
            sqlx::query(
                "INSERT INTO users (id, name, email, created_at, updated_at, deleted_at, version) \
                 VALUES ($1, $2, $3, now(), now(), NULL, 1)",
            )
            .bind(id)
            .bind(format!("{first} {last}"))
            .bind(format!(
                "{}.{}.{id}@example.com",
                first.to_lowercase(),
                last.to_lowercase()
            ))
            .execute(pool)
            .await?;
            (Table::Users, id, 1)
        }
        Op::UpdateUser(id) => {
            let (version,): (i64,) = sqlx::query_as(
                "UPDATE users SET name = $2, updated_at = now(), version = version + 1 \
                 WHERE id = $1 RETURNING version",
            )
            .bind(id)
            .bind(format!("{first} {last}"))
            .fetch_one(pool)
            .await?;
            (Table::Users, id, version)
        }
        Op::InsertOrder { id, user_id } => {
            let cents = 199 + i64::try_from(n % 40_000).unwrap_or(0);
            sqlx::query(
                "INSERT INTO orders (id, user_id, product, quantity, amount, status, order_date, \
                 created_at, updated_at, deleted_at, version) \
                 VALUES ($1, $2, $3, $4, $5::bigint / 100.0, 'PLACED', current_date, now(), now(), \
                 NULL, 1)",
            )
            .bind(id)
            .bind(user_id)
            .bind(PRODUCTS[usize::try_from(n).unwrap_or(0) % PRODUCTS.len()])
            .bind(1 + i32::try_from(n % 4).unwrap_or(0))
            .bind(cents)
            .execute(pool)
            .await?;
            (Table::Orders, id, 1)
        }
        Op::UpdateOrder(id) => {
            let (version,): (i64,) = sqlx::query_as(
                "UPDATE orders SET status = CASE status WHEN 'PLACED' THEN 'SHIPPED' \
                 ELSE 'DELIVERED' END, updated_at = now(), version = version + 1 \
                 WHERE id = $1 RETURNING version",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            (Table::Orders, id, version)
        }
    })
}

/// One change the writer committed.
#[derive(Debug, Clone, Copy)]
struct Commit {
    row: RowVersion,
    scheduled: Instant,
    sent: Instant,
    acked: Instant,
    /// Scheduled after the warm-up.
    measured: bool,
}

/// Commits `rate` changes per second on an open-loop schedule (each change sent at its slot,
/// whether or not earlier ones are done) for `warmup + duration`.
async fn write_load(
    pool: PgPool,
    seen: Arc<Mutex<Seen>>,
    rate: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<Commit>> {
    let rows = Arc::new(Mutex::new(Rows::default()));
    let slot = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = ((warmup + duration).as_secs_f64() * f64::from(rate)).round() as u64;
    let begin = Instant::now() + Duration::from_millis(50);
    let measured_from = begin + warmup;
    let mut tasks: JoinSet<Result<Commit>> = JoinSet::new();
    let mut commits = Vec::new();
    for n in 0..total {
        let scheduled = begin + slot.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        while let Some(done) = tasks.try_join_next() {
            commits.push(done??);
        }
        let op = lock(&rows).next(MIX[usize::try_from(n % 10)?]);
        if let Op::InsertUser(id) | Op::InsertOrder { id, .. } = op {
            lock(&seen).ids.insert(id);
        }
        let (pool, rows) = (pool.clone(), Arc::clone(&rows));
        tasks.spawn(async move {
            let sent = Instant::now();
            let row = commit(&pool, op, n).await?;
            let acked = Instant::now();
            lock(&rows).committed(op);
            Ok(Commit {
                row,
                scheduled,
                sent,
                acked,
                measured: scheduled >= measured_from,
            })
        });
    }
    while let Some(done) = tasks.join_next().await {
        commits.push(done??);
    }
    Ok(commits)
}

#[derive(Debug)]
struct Latency {
    /// Commit → readable from Kafka, ms, sorted.
    kafka_ms: Vec<f64>,
    /// Commit → readable in Cassandra, ms, sorted.
    cassandra_ms: Vec<f64>,
    /// Per row: Cassandra − Kafka, ms, sorted.
    row_added_ms: Vec<f64>,
    /// Commit → readable in the baseline's keyspace, ms, sorted.
    bare_ms: Vec<f64>,
    /// Median of leg a over the first and the last 5 s of the window (a backlog shows as growth).
    kafka_drift_ms: (f64, f64),
    /// Source commit → Debezium's envelope time, ms, sorted.
    capture_ms: Vec<f64>,
    /// Debezium's envelope time → readable from Kafka, ms, sorted.
    delivery_ms: Vec<f64>,
    measured: usize,
    missing_kafka: usize,
    missing_cassandra: usize,
    missing_bare: usize,
    at_first_poll: usize,
    achieved_rate: f64,
    send_late_p99_ms: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    reads_per_sec: f64,
    /// cdcconsumer's own end-to-end histogram: bucket bounds at p50/p95/p99 and its count.
    own_histogram: Option<(Vec<f64>, u64)>,
    peak_rss_kib: Option<u64>,
    summary: String,
    warnings: (usize, String),
    busy_before: Option<f64>,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `later − earlier` in ms, negative when `later` is before `earlier`.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => millis(d),
        None => -millis(earlier.duration_since(later)),
    }
}

async fn latency(
    ctx: &BenchContext,
    args: &CdcArgs,
    launcher: &Launcher<'_>,
    control: &Session,
    consistency: Consistency,
    cleanup: &mut Cleanup,
) -> Result<Latency> {
    let keyspace = unique_name("bench_cdc_latency_ks");
    cleanup.keyspaces.push(keyspace.clone());
    create_keyspace(control, &args.cassandra_nodes, &keyspace).await?;
    let bare_keyspace = unique_name("bench_cdc_latency_bare_ks");
    cleanup.keyspaces.push(bare_keyspace.clone());
    create_keyspace(control, &args.cassandra_nodes, &bare_keyspace).await?;
    let pool = PgPoolOptions::new()
        .max_connections(WRITER_CONNECTIONS)
        .min_connections(WRITER_CONNECTIONS)
        .connect(&ctx.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let mut topics = Vec::new();
    for topic in &args.cdc_topics {
        topics.push((topic.clone(), topic_partitions(&ctx.brokers, topic).await?));
    }
    let busy_before = wait_until_quiet(args.quiet_wait()).await;

    // cdcconsumer's group starts at the topics' end.
    let group = unique_name("bench_cdc_latency_group");
    cleanup.groups.push(group.clone());
    let config = ctx.kafka.client_config();
    let (c, g, t) = (config.clone(), group.clone(), topics.clone());
    let start = tokio::task::spawn_blocking(move || commit_end_offsets(&c, &g, &t)).await??;
    let metrics_addr = free_metrics_addr()?;
    let command = launcher.command(&args.cdc_topics, &group, &keyspace, 0, &metrics_addr);
    let mut subject = Subject::spawn(command)?;
    let (c, g) = (config.clone(), group.clone());
    let stable =
        tokio::task::spawn_blocking(move || wait_group_stable(&c, &g, Duration::from_secs(60)))
            .await?;
    if let Err(error) = stable {
        let stderr = subject.kill().await;
        return Err(error.context(format!("cdcconsumer stderr:\n{stderr}")));
    }

    // The bench consumer reads from the same positions; nothing is committed.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let poll_every = Duration::from_millis(args.poll_interval_ms);
    let nodes = &args.cassandra_nodes;
    let probe = Arc::new(Probe::connect(nodes, &keyspace, consistency, poll_every).await?);
    let bare_session = cassandra::connect(nodes).await?;
    let bare_statements = retry_schema("preparing the bare writes", || {
        Statements::prepare(&bare_session, &bare_keyspace, consistency)
    })
    .await?;
    let bare = Arc::new(Bare {
        session: bare_session,
        statements: bare_statements,
        probe: Arc::new(Probe::connect(nodes, &bare_keyspace, consistency, poll_every).await?),
    });
    let watcher_group = unique_name("bench_cdc_watch");
    cleanup.groups.push(watcher_group.clone());
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", &watcher_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    consumer.assign(&start)?;
    let cancel = CancellationToken::new();
    let mut watcher = AbortOnDrop(tokio::spawn(watch_kafka(
        consumer,
        Arc::clone(&seen),
        Arc::clone(&probe),
        Arc::clone(&bare),
        cancel.clone(),
    )));

    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    tracing::info!(
        rate = args.rate,
        warmup_secs = args.warmup_secs,
        duration_secs = args.duration_secs,
        "committing changes to PostgreSQL"
    );
    let written = write_load(pool.clone(), Arc::clone(&seen), args.rate, warmup, duration).await;
    let commits = match written {
        Ok(commits) => commits,
        Err(error) => {
            cancel.cancel();
            let stderr = subject.kill().await;
            return Err(error.context(format!("cdcconsumer stderr:\n{stderr}")));
        }
    };
    pool.close().await;
    let measured: Vec<Commit> = commits.iter().copied().filter(|c| c.measured).collect();
    // Reads during the load; the wait below polls only the stragglers.
    let reads_during_load =
        probe.reads.load(Ordering::Relaxed) + bare.probe.reads.load(Ordering::Relaxed);

    // Every measured change readable in Kafka and Cassandra, or the deadline.
    let deadline = Instant::now() + ROW_DEADLINE;
    loop {
        let missing = {
            let seen = lock(&seen);
            measured
                .iter()
                .filter(|c| !seen.cassandra.contains_key(&c.row) || !seen.bare.contains_key(&c.row))
                .count()
        };
        if missing == 0 || Instant::now() >= deadline {
            break;
        }
        if watcher.0.is_finished() {
            (&mut watcher.0).await??;
            bail!("the bench consumer stopped");
        }
        if subject.child.try_wait()?.is_some() {
            let stderr = subject.kill().await;
            bail!("cdcconsumer exited during the latency test:\n{stderr}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let own_histogram = scrape(&metrics_addr)
        .await
        .and_then(|text| histogram_quantiles(&text, &[0.5, 0.95, 0.99]));
    cancel.cancel();
    let pid = subject.child.id().context("cdcconsumer has no pid")?;
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    ensure!(status.success(), "could not signal cdcconsumer (pid {pid})");
    let finished = subject.finish(Duration::from_secs(30)).await?;
    ensure!(
        finished.status.success(),
        "cdcconsumer exited with {}:\n{}",
        finished.status,
        tail(&finished.stderr, 40)
    );

    let seen = lock(&seen);
    let mut kafka_ms = Vec::new();
    let mut cassandra_ms = Vec::new();
    let mut row_added_ms = Vec::new();
    let mut bare_ms = Vec::new();
    let mut at_first_poll = 0;
    let mut capture_ms = Vec::new();
    let mut delivery_ms = Vec::new();
    for c in &measured {
        if let Some((capture, delivery)) = seen.debezium.get(&c.row) {
            capture_ms.push(*capture as f64 / 1000.0);
            delivery_ms.push(*delivery as f64 / 1000.0);
        }
        let kafka = seen.kafka.get(&c.row);
        let cassandra = seen.cassandra.get(&c.row);
        if let Some(k) = kafka {
            kafka_ms.push(signed_ms(*k, c.acked));
        }
        if let Some(r) = cassandra {
            cassandra_ms.push(signed_ms(r.at, c.acked));
            at_first_poll += usize::from(r.at_first_poll);
        }
        if let (Some(k), Some(r)) = (kafka, cassandra) {
            row_added_ms.push(signed_ms(r.at, *k));
        }
        if let Some(r) = seen.bare.get(&c.row) {
            bare_ms.push(signed_ms(r.at, c.acked));
        }
    }
    let edge = Duration::from_secs(5);
    let kafka_median_between = |from: Instant, to: Instant| {
        let mut values: Vec<f64> = measured
            .iter()
            .filter(|c| c.scheduled >= from && c.scheduled < to)
            .filter_map(|c| seen.kafka.get(&c.row).map(|k| signed_ms(*k, c.acked)))
            .collect();
        values.sort_by(f64::total_cmp);
        percentile(&values, 0.5)
    };
    let kafka_drift_ms = match (
        measured.iter().map(|c| c.scheduled).min(),
        measured.iter().map(|c| c.scheduled).max(),
    ) {
        (Some(first), Some(last)) => (
            kafka_median_between(first, first + edge),
            kafka_median_between(last.checked_sub(edge).unwrap_or(first), last + edge),
        ),
        _ => (f64::NAN, f64::NAN),
    };
    for values in [
        &mut kafka_ms,
        &mut cassandra_ms,
        &mut row_added_ms,
        &mut bare_ms,
        &mut capture_ms,
        &mut delivery_ms,
    ] {
        values.sort_by(f64::total_cmp);
    }
    let mut late: Vec<f64> = measured
        .iter()
        .map(|c| signed_ms(c.sent, c.scheduled))
        .collect();
    late.sort_by(f64::total_cmp);
    let mut commit_ms: Vec<f64> = measured
        .iter()
        .map(|c| millis(c.acked.duration_since(c.sent)))
        .collect();
    commit_ms.sort_by(f64::total_cmp);
    let window = match (
        measured.iter().map(|c| c.sent).min(),
        measured.iter().map(|c| c.sent).max(),
    ) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let load_seconds = (warmup + duration).as_secs_f64();
    Ok(Latency {
        measured: measured.len(),
        missing_kafka: measured.len() - kafka_ms.len(),
        missing_cassandra: measured.len() - cassandra_ms.len(),
        missing_bare: measured.len() - bare_ms.len(),
        bare_ms,
        kafka_ms,
        cassandra_ms,
        row_added_ms,
        kafka_drift_ms,
        capture_ms,
        delivery_ms,
        at_first_poll,
        achieved_rate: if window > 0.0 {
            (measured.len().saturating_sub(1)) as f64 / window
        } else {
            f64::NAN
        },
        send_late_p99_ms: percentile(&late, 0.99),
        commit_p50_ms: percentile(&commit_ms, 0.5),
        commit_p99_ms: percentile(&commit_ms, 0.99),
        reads_per_sec: reads_during_load as f64 / load_seconds,
        own_histogram,
        peak_rss_kib: finished.peak_rss_kib,
        summary: summary_lines(&finished.stdout),
        warnings: warnings(&finished.stderr),
        busy_before,
    })
}

fn report_latency(args: &CdcArgs, latency: &Latency) {
    let quantiles = [0.5, 0.95, 0.99];
    let row = |values: &[f64]| -> Vec<f64> {
        quantiles
            .iter()
            .map(|q| percentile(values, *q))
            .chain([values.last().copied().unwrap_or(f64::NAN)])
            .collect()
    };
    let kafka = row(&latency.kafka_ms);
    let cassandra = row(&latency.cassandra_ms);
    let added: Vec<f64> = cassandra.iter().zip(&kafka).map(|(b, a)| b - a).collect();
    let bare = row(&latency.bare_ms);
    let bare_added: Vec<f64> = bare.iter().zip(&kafka).map(|(c, a)| c - a).collect();
    let over_bare: Vec<f64> = cassandra.iter().zip(&bare).map(|(b, c)| b - c).collect();
    println!();
    println!(
        "2. end-to-end latency: {} changes/s offered to PostgreSQL (users and orders, 1:4 \
         rows, half inserts, half updates) for {} s after {} s of warm-up; {} changes measured \
         (achieved {:.0}/s; sends late by p99 {:.1} ms; commit p50 {:.1} ms, p99 {:.1} ms)",
        args.rate,
        args.duration_secs,
        args.warmup_secs,
        latency.measured,
        latency.achieved_rate,
        latency.send_late_p99_ms,
        latency.commit_p50_ms,
        latency.commit_p99_ms
    );
    println!(
        "   from the commit's return; (b) is the completion of the first {} read that showed the \
         change, polled every {} ms from its arrival in Kafka: late by at most {} ms + one read",
        args.consistency.to_uppercase(),
        args.poll_interval_ms,
        args.poll_interval_ms
    );
    println!();
    println!(
        "{:<58} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "leg (ms)", "p50", "p95", "p99", "max", "rows"
    );
    let line = |label: &str, values: &[f64], rows: String| {
        println!(
            "{:<58} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8}",
            label, values[0], values[1], values[2], values[3], rows
        );
    };
    line(
        "(a) commit → readable from Kafka (Debezium)",
        &kafka,
        latency.kafka_ms.len().to_string(),
    );
    line(
        "  (a1) source commit → Debezium's envelope ts",
        &row(&latency.capture_ms),
        latency.capture_ms.len().to_string(),
    );
    line(
        "  (a2) Debezium's envelope ts → readable from Kafka",
        &row(&latency.delivery_ms),
        latency.delivery_ms.len().to_string(),
    );
    line(
        "(b) commit → readable in Cassandra",
        &cassandra,
        latency.cassandra_ms.len().to_string(),
    );
    line(
        "added by cdcconsumer: (b) − (a) per percentile",
        &added,
        String::new(),
    );
    line(
        "  per row: Cassandra − Kafka",
        &row(&latency.row_added_ms),
        latency.row_added_ms.len().to_string(),
    );
    line(
        "(c) baseline: commit → readable, bare write on arrival",
        &bare,
        latency.bare_ms.len().to_string(),
    );
    line(
        "added by the bare write: (c) − (a) per percentile",
        &bare_added,
        String::new(),
    );
    line(
        "cdcconsumer over the baseline: (b) − (c) per percentile",
        &over_bare,
        String::new(),
    );
    println!();
    println!(
        "   (a) median over the first 5 s of the window {:.1} ms, over the last 5 s {:.1} ms (growth \
         = the Debezium leg falls behind the offered load)",
        latency.kafka_drift_ms.0, latency.kafka_drift_ms.1
    );
    println!(
        "   (a1) and (a2) come from the envelope's clocks (PostgreSQL's commit time, Connect's \
         ts_us, this host's clock at arrival), not from the commit's return"
    );
    println!(
        "   added p99 {:.1} ms (target ≤ 50 ms), {:.1} ms over the baseline; missing after {} s: \
         {} in Kafka, {} in Cassandra, {} in the baseline; {} rows already readable at their \
         first poll; pollers {:.0} reads/s",
        added[2],
        over_bare[2],
        ROW_DEADLINE.as_secs(),
        latency.missing_kafka,
        latency.missing_cassandra,
        latency.missing_bare,
        latency.at_first_poll,
        latency.reads_per_sec
    );
    if let Some((bounds, count)) = &latency.own_histogram {
        let shown: Vec<String> = bounds
            .iter()
            .zip(quantiles)
            .map(|(b, q)| format!("p{:.0} ≤ {:.0} ms", q * 100.0, b * 1000.0))
            .collect();
        println!(
            "   cdcconsumer's own cdc_end_to_end_seconds (source commit → write, warm-up \
             included, {count} changes): {}",
            shown.join(", ")
        );
    }
    println!(
        "3. cdcconsumer peak RSS under this load: {} (VmHWM, sampled every {} ms; target < 64 MiB)",
        latency
            .peak_rss_kib
            .map_or("?".to_owned(), |k| format!("{:.1} MiB", mib(k))),
        SAMPLE_EVERY.as_millis()
    );
    println!("   cdcconsumer's own summary: {}", latency.summary);
    println!(
        "   cdcconsumer warnings/errors logged: {}{}",
        latency.warnings.0,
        if latency.warnings.0 > 0 {
            format!("; last: {}", latency.warnings.1)
        } else {
            String::new()
        }
    );
    if let Some(busy) = latency.busy_before {
        println!("   CPU busy % in the second before: {:.0}", busy * 100.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_plans_every_change_with_rising_lsn() {
        let stream = RateStream::build(3, 7).expect("stream");
        assert_eq!(stream.records.len(), 3 * 2 + 7 * 3);
        assert_eq!(stream.changes(), stream.records.len());
        // Users: one write per change; orders: orders and orders_by_user.
        assert_eq!(stream.writes.len(), 3 * 2 + 7 * 3 * 2);
        let lsns: Vec<i64> = stream.writes.iter().map(|(_, lsn)| *lsn).collect();
        assert!(lsns.windows(2).all(|w| w[0] <= w[1]));
        let final_versions: i64 = stream
            .writes
            .iter()
            .filter_map(|(w, _)| match w {
                Write::UpsertOrder(row) => Some(row.version.clone()),
                _ => None,
            })
            .filter_map(|v| v.value())
            .filter(|v| *v == 3)
            .count()
            .try_into()
            .expect("count");
        assert_eq!(final_versions, 7);
    }

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

    #[test]
    fn writer_never_updates_a_row_twice_at_once() {
        let mut rows = Rows::default();
        assert!(matches!(rows.next(Kind::UpdateUser), Op::InsertUser(_)));
        assert!(matches!(rows.next(Kind::InsertOrder), Op::InsertUser(_)));
        let user = Uuid::new_v4();
        rows.committed(Op::InsertUser(user));
        assert!(matches!(rows.next(Kind::UpdateUser), Op::UpdateUser(id) if id == user));
        // Out of the idle queue until committed: the next update creates instead.
        assert!(matches!(rows.next(Kind::UpdateUser), Op::InsertUser(_)));
        assert!(
            matches!(rows.next(Kind::InsertOrder), Op::InsertOrder { user_id, .. } if user_id == user)
        );
    }
}
