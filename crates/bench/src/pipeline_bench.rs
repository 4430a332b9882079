//! `bench pipeline`: the whole pipeline's sustainable rate.
//!
//! The producer binary sends business events at each offered rate of `--rates` in turn, for
//! `--window-secs` each, into scratch topics (users 3 partitions, orders 5, RF 3). One consumer
//! binary applies them to PostgreSQL's real `users` and `orders` tables (fresh groups), Debezium
//! captures them into its real topics, and one cdcconsumer binary (a fresh group whose offsets
//! start at the topics' end) mirrors them into a scratch keyspace. Consumer, cdcconsumer and the
//! stack run the whole time; only the producer is started per rate.
//!
//! Every `--sample-secs` the bench reads each stage's backlog:
//!
//! - **consumer**: the two groups' lag on the scratch topics (high watermark − committed offset),
//!   in events;
//! - **Debezium**: the replication slot's lag (`pg_current_wal_lsn() − confirmed_flush_lsn`; the
//!   stack's Connect commits its offsets every second), in bytes of WAL;
//! - **cdcconsumer**: its group's lag on Debezium's topics, in changes.
//!
//! A stage keeps up at a rate when its backlog at the end of the window (mean of the last 30 s) is
//! at most `--growth-allowance-secs` of its input above its backlog after `--settle-secs` (mean of
//! the 30 s that follow): a stage slower than its input by more than about 2 % grows past that over
//! five minutes. A window ends early once a stage is a minute behind. After each window the bench
//! waits for every backlog to drain before the next rate; the first stage that falls behind, at the
//! lowest rate where any does, is the one that saturates first. Each component's CPU share
//! (brokers, Connect, Cassandra, PostgreSQL, the three binaries) over the window is read from
//! `/proc`, and the curve is drawn to an SVG chart (`--chart`).
//!
//! The events' rows stay in PostgreSQL until the end, then are deleted (Debezium captures the
//! deletes, which the stack's own cdcconsumer mirrors like any other change).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cdc_core::events::Event;
use cdc_core::generator::{Generator, GeneratorConfig};
use cdcconsumer::cassandra::{consistency_name, CassandraArgs};
use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::cdc::{commit_end_offsets, create_keyspace, free_metrics_addr};
use crate::charts;
use crate::common::{
    self, business_topics, cpu_seconds, kafka_env, locate_binary, start_time, unique_name,
    CdcTopicArgs, Cleanup, Subject, ORDERS_PARTITIONS, USERS_PARTITIONS,
};
use crate::Context as BenchContext;

/// Width of the windows whose mean backlog is compared (after settling, and at the end).
const COMPARE: Duration = Duration::from_secs(30);

/// A window ends early once a stage is this far behind its input.
const GIVE_UP_BEHIND_SECS: f64 = 60.0;

#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Offered rates, events per second the producer sends, in the order they are run.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400")]
    pub rates: Vec<u32>,
    /// How long each rate is held.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(90..))]
    pub window_secs: u64,
    /// How often every backlog is read.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_secs: u64,
    /// The start of each window that is not judged (producer start-up, the first batches).
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// A stage keeps up when its backlog grew by at most this many seconds of its input over the
    /// window.
    #[arg(long, default_value_t = 5.0)]
    pub growth_allowance_secs: f64,
    /// Longest wait after a window for every backlog to drain; the curve stops if one does not.
    #[arg(long, default_value_t = 300)]
    pub drain_secs: u64,
    /// Seed of the first rate's event stream (each rate uses the next seed); random by default, so
    /// no run meets rows an earlier run left (the same seed gives the same ids).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub cdc: CdcTopicArgs,
    /// Where Cassandra is, and cdcconsumer's consistency; it writes to a scratch keyspace.
    #[command(flatten)]
    pub cassandra: CassandraArgs,
    /// Folder of the release binaries; by default the folder of this binary.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Replication factor of the scratch topics.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i32,
    /// The chart of the curve (SVG).
    #[arg(long, default_value = "target/bench/pipeline-throughput.svg")]
    pub chart: PathBuf,
}

/// The stages whose backlog is judged, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Consumer,
    Debezium,
    Cdcconsumer,
}

impl Stage {
    const ALL: [Self; 3] = [Self::Consumer, Self::Debezium, Self::Cdcconsumer];

    fn name(self) -> &'static str {
        match self {
            Self::Consumer => "consumer → PostgreSQL",
            Self::Debezium => "Debezium (slot)",
            Self::Cdcconsumer => "cdcconsumer → Cassandra",
        }
    }
}

/// One reading of every backlog.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    /// Consumer groups' lag, events.
    consumer_lag: i64,
    /// Events the consumer has committed so far.
    consumer_done: i64,
    /// Slot lag, bytes of WAL.
    slot_lag: f64,
    /// WAL position, bytes.
    wal: f64,
    /// cdcconsumer's lag, changes.
    cdc_lag: i64,
    /// Changes cdcconsumer has committed so far.
    cdc_done: i64,
}

impl Sample {
    fn lag(&self, stage: Stage) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        match stage {
            Stage::Consumer => self.consumer_lag as f64,
            Stage::Debezium => self.slot_lag,
            Stage::Cdcconsumer => self.cdc_lag as f64,
        }
    }
}

/// How one stage fared at one rate.
#[derive(Debug, Clone, Copy)]
struct StageResult {
    /// Its input per second over the judged part of the window (events, WAL bytes, changes).
    input_rate: f64,
    /// Its output per second over the same part (events, -, changes).
    output_rate: f64,
    early: f64,
    late: f64,
    max: f64,
    /// Backlog growth over the window in seconds of its input.
    growth_secs: f64,
    kept_up: bool,
}

/// What one offered rate gave.
#[derive(Debug, Clone)]
struct RateResult {
    rate: u32,
    seconds: f64,
    sent: Option<u64>,
    stages: Vec<(Stage, StageResult)>,
    cpu: Vec<(&'static str, f64)>,
    drained_secs: Option<f64>,
}

impl RateResult {
    fn kept_up(&self) -> bool {
        self.stages.iter().all(|(_, s)| s.kept_up)
    }

    fn first_behind(&self) -> Option<Stage> {
        self.stages
            .iter()
            .find(|(_, s)| !s.kept_up)
            .map(|(stage, _)| *stage)
    }
}

/// The processes whose CPU is read: the stack's services and the binaries under test.
struct CpuReader {
    pids: Vec<(&'static str, Vec<String>)>,
}

impl CpuReader {
    fn new(binaries: &[(&'static str, Option<u32>)]) -> Self {
        let run = common::stack_dir().join("run");
        let read = |names: &[&str]| -> Vec<String> {
            names
                .iter()
                .filter_map(|n| std::fs::read_to_string(run.join(format!("{n}.pid"))).ok())
                .map(|p| p.trim().to_owned())
                .collect()
        };
        let mut pids = vec![
            ("Kafka brokers", read(&["kafka1", "kafka2", "kafka3"])),
            ("Kafka Connect", read(&["connect"])),
            (
                "Cassandra nodes",
                read(&["cassandra1", "cassandra2", "cassandra3"]),
            ),
        ];
        for (name, pid) in binaries {
            pids.push((name, pid.iter().map(u32::to_string).collect()));
        }
        Self { pids }
    }

    /// CPU seconds so far per component (PostgreSQL's from all its processes).
    fn read(&self) -> Vec<(&'static str, f64)> {
        let mut out: Vec<(&'static str, f64)> = self
            .pids
            .iter()
            .map(|(name, pids)| (*name, pids.iter().filter_map(|p| cpu_seconds(p)).sum()))
            .collect();
        out.push(("PostgreSQL", common::postgres_cpu_seconds().unwrap_or(0.0)));
        out
    }
}

/// Reads committed offsets of consumer groups and the topics' high watermarks.
struct LagReader {
    watermarks: BaseConsumer,
    groups: Vec<(BaseConsumer, Vec<(String, i32)>)>,
}

impl LagReader {
    fn new(config: &ClientConfig, groups: &[(&str, Vec<(String, i32)>)]) -> Result<Self> {
        let mut readers = Vec::new();
        for (group, topics) in groups {
            let consumer: BaseConsumer = config
                .clone()
                .set("group.id", *group)
                .set("enable.auto.commit", "false")
                .create()?;
            readers.push((consumer, topics.clone()));
        }
        Ok(Self {
            watermarks: config.create()?,
            groups: readers,
        })
    }

    /// Per group: (lag, committed), both summed over its partitions. A partition without a
    /// committed offset counts from its low watermark.
    fn read(&self) -> Result<Vec<(i64, i64)>> {
        let timeout = Duration::from_secs(10);
        let mut out = Vec::new();
        for (consumer, topics) in &self.groups {
            let mut list = TopicPartitionList::new();
            for (topic, partitions) in topics {
                for partition in 0..*partitions {
                    list.add_partition(topic, partition);
                }
            }
            let committed = consumer.committed_offsets(list, timeout)?;
            let (mut lag, mut done) = (0, 0);
            for element in committed.elements() {
                let (low, high) = self.watermarks.fetch_watermarks(
                    element.topic(),
                    element.partition(),
                    timeout,
                )?;
                let at = match element.offset() {
                    Offset::Offset(at) => at,
                    _ => low,
                };
                lag += (high - at).max(0);
                done += at - low;
            }
            out.push((lag, done));
        }
        Ok(out)
    }
}

async fn slot_and_wal(pool: &PgPool) -> Result<(f64, f64)> {
    let row: (Option<f64>, f64) = sqlx::query_as(
        "SELECT (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)) \
                   FROM pg_replication_slots WHERE slot_type = 'logical')::float8, \
                pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
    )
    .fetch_one(pool)
    .await
    .context("reading the replication slot's lag")?;
    let slot = row.0.context(
        "PostgreSQL has no logical replication slot (is Debezium's connector registered?)",
    )?;
    Ok((slot, row.1))
}

/// A generated stream with at least `events` events (or the generator's whole stream if it runs
/// out first, which the sizes below prevent).
fn workload(seed: u64, events: usize) -> Result<(GeneratorConfig, Vec<Event>)> {
    let mut users = events / 6 + 10;
    loop {
        let config = GeneratorConfig {
            users,
            orders: users * 3,
            seed,
            start: start_time()?,
        };
        let generated: Vec<Event> = Generator::new(config.clone()).collect();
        if generated.len() >= events {
            return Ok((config, generated));
        }
        users *= 2;
    }
}

/// Asks a long-running subject to stop (SIGTERM: it commits, leaves its group and exits) and
/// waits for it.
async fn stop(name: &str, subject: Subject) -> Result<()> {
    let pid = subject.child.id().context("no pid")?;
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    let finished = subject.finish(Duration::from_secs(60)).await?;
    ensure!(
        finished.status.success(),
        "{name} exited with {}:\n{}",
        finished.status,
        common::tail(&finished.stderr, 20)
    );
    Ok(())
}

pub async fn run(ctx: &BenchContext, args: &PipelineArgs, cleanup: &mut Cleanup) -> Result<()> {
    let command_line = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    ensure!(!args.rates.is_empty(), "--rates is empty");
    args.cdc.check()?;
    ensure!(
        args.settle_secs + 2 * COMPARE.as_secs() <= args.window_secs,
        "--window-secs must leave room for --settle-secs and two 30-second comparisons"
    );
    let producer_bin = locate_binary("producer", args.bin_dir.as_deref())?;
    let consumer_bin = locate_binary("consumer", args.bin_dir.as_deref())?;
    let cdcconsumer_bin = locate_binary("cdcconsumer", args.bin_dir.as_deref())?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&ctx.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    slot_and_wal(&pool).await?;

    let (users_topic, orders_topic) = business_topics(
        &ctx.brokers,
        cleanup,
        "bench_pipeline",
        (USERS_PARTITIONS, ORDERS_PARTITIONS),
        args.replication_factor,
    )
    .await?;
    let control = cleanup
        .cassandra_control(&args.cassandra.cassandra_nodes)
        .await?;
    let keyspace = unique_name("bench_pipeline_ks");
    cleanup.keyspaces.push(keyspace.clone());
    create_keyspace(&control, &args.cassandra.cassandra_nodes, &keyspace).await?;
    let cdc_topics = args.cdc.with_partitions(&ctx.brokers).await?;
    let config = ctx.kafka.client_config();
    let cdc_group = unique_name("bench_pipeline_cdc");
    let users_group = unique_name("bench_pipeline_users");
    let orders_group = unique_name("bench_pipeline_orders");
    cleanup
        .groups
        .extend([cdc_group.clone(), users_group.clone(), orders_group.clone()]);
    let (c, g, t) = (config.clone(), cdc_group.clone(), cdc_topics.clone());
    tokio::task::spawn_blocking(move || commit_end_offsets(&c, &g, &t)).await??;

    let mut consumer_cmd = tokio::process::Command::new(&consumer_bin);
    consumer_cmd
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", &ctx.database_url)
        .env("USERS_TOPIC", &users_topic)
        .env("ORDERS_TOPIC", &orders_topic)
        .env("USERS_GROUP", &users_group)
        .env("ORDERS_GROUP", &orders_group)
        .env("USERS_PARTITIONS", USERS_PARTITIONS.to_string())
        .env("ORDERS_PARTITIONS", ORDERS_PARTITIONS.to_string())
        .env("REPLICATION_FACTOR", args.replication_factor.to_string())
        .env("IDLE_TIMEOUT_SECS", "0")
        .env("METRICS_ADDR", free_metrics_addr()?)
        .env("LOG_LEVEL", "warn");
    kafka_env(&mut consumer_cmd, &ctx.kafka);
    let mut cdc_cmd = tokio::process::Command::new(&cdcconsumer_bin);
    for inherited in ["RUST_LOG", "CASSANDRA_KEYSPACE", "APPLY_SCHEMA"] {
        cdc_cmd.env_remove(inherited);
    }
    cdc_cmd
        .arg("--cdc-topics")
        .arg(args.cdc.cdc_topics.join(","))
        .arg("--group")
        .arg(&cdc_group)
        .arg("--keyspace")
        .arg(&keyspace)
        .arg("--cassandra-nodes")
        .arg(args.cassandra.cassandra_nodes.join(","))
        .arg("--consistency")
        .arg(consistency_name(args.cassandra.consistency))
        .arg("--idle-timeout-secs")
        .arg("0")
        .arg("--metrics-addr")
        .arg(free_metrics_addr()?)
        .arg("--replication-factor")
        .arg(args.replication_factor.to_string())
        .arg("--log-level")
        .arg("warn");
    kafka_env(&mut cdc_cmd, &ctx.kafka);
    let mut consumer = Subject::spawn(consumer_cmd)?;
    let mut cdcconsumer = Subject::spawn(cdc_cmd)?;
    let business = [
        (users_topic.clone(), USERS_PARTITIONS),
        (orders_topic.clone(), ORDERS_PARTITIONS),
    ];
    let lags = Arc::new(LagReader::new(
        &config,
        &[
            (&users_group, vec![business[0].clone()]),
            (&orders_group, vec![business[1].clone()]),
            (&cdc_group, cdc_topics.clone()),
        ],
    )?);
    let cpu = CpuReader::new(&[
        ("consumer", consumer.child.id()),
        ("cdcconsumer", cdcconsumer.child.id()),
    ]);

    let first_seed = args.seed.unwrap_or_else(cdc_core::generator::random_seed);
    tracing::info!(seed = first_seed, "the first rate's seed");
    let mut results = Vec::new();
    let mut stopped = None;
    for (i, &rate) in args.rates.iter().enumerate() {
        let seed = first_seed.wrapping_add(u64::try_from(i)?);
        let (generator, events) = workload(
            seed,
            usize::try_from(u64::from(rate) * args.window_secs)? + 1,
        )?;
        for event in &events {
            match event {
                Event::User(u) => cleanup.user_ids.push(u.user.id),
                Event::Order(o) => cleanup.order_ids.push(o.order.id),
            }
        }
        cleanup.user_ids.sort_unstable();
        cleanup.user_ids.dedup();
        cleanup.order_ids.sort_unstable();
        cleanup.order_ids.dedup();
        let mut producer_cmd = tokio::process::Command::new(&producer_bin);
        producer_cmd
            .env_remove("RUST_LOG")
            .env("USERS_TOPIC", &users_topic)
            .env("ORDERS_TOPIC", &orders_topic)
            .env("REPLICATION_FACTOR", args.replication_factor.to_string())
            .arg("--users")
            .arg(generator.users.to_string())
            .arg("--orders")
            .arg(generator.orders.to_string())
            .arg("--rate")
            .arg(rate.to_string())
            .arg("--duration")
            .arg(format!("{}s", args.window_secs))
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--start-time")
            .arg(common::START_TIME)
            .arg("--log-level")
            .arg("warn");
        kafka_env(&mut producer_cmd, &ctx.kafka);
        tracing::info!(rate, window_secs = args.window_secs, "offering");
        let result = hold_rate(
            args,
            rate,
            producer_cmd,
            &lags,
            &pool,
            &cpu,
            (&mut consumer, &mut cdcconsumer),
        )
        .await
        .with_context(|| format!("at {rate} events/s"))?;
        print_rate(&result);
        let drained = result.drained_secs.is_some();
        let kept_up = result.kept_up();
        results.push(result);
        if !drained {
            stopped = Some("a backlog did not drain".to_owned());
            break;
        }
        if !kept_up {
            stopped = Some("a stage fell behind".to_owned());
            break;
        }
    }
    stop("consumer", consumer).await?;
    stop("cdcconsumer", cdcconsumer).await?;
    pool.close().await;

    report(args, &results, stopped.as_deref());
    if let Err(error) = chart(&args.chart, &results) {
        tracing::warn!(%error, chart = %args.chart.display(), "could not draw the chart");
    } else {
        println!("chart: {}", args.chart.display());
    }
    println!("command: cargo run --release -p bench -- {command_line}");
    Ok(())
}

/// Runs the producer at `rate` for the window, sampling every backlog, then waits for them to
/// drain.
async fn hold_rate(
    args: &PipelineArgs,
    rate: u32,
    producer_cmd: tokio::process::Command,
    lags: &Arc<LagReader>,
    pool: &PgPool,
    cpu: &CpuReader,
    (consumer, cdcconsumer): (&mut Subject, &mut Subject),
) -> Result<RateResult> {
    let every = Duration::from_secs(args.sample_secs);
    let started = Instant::now();
    let mut producer = Subject::spawn(producer_cmd)?;
    let producer_cpu = producer.child.id();
    let cpu_before = cpu.read();
    let producer_cpu_before = producer_cpu.map(|p| cpu_seconds(&p.to_string()).unwrap_or(0.0));
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut producer_cpu_after = None;
    let mut behind = false;
    let (after, seconds) = loop {
        tick.tick().await;
        for (name, subject) in [
            ("consumer", &mut *consumer),
            ("cdcconsumer", &mut *cdcconsumer),
        ] {
            if let Some(status) = subject.child.try_wait()? {
                bail!("{name} exited ({status}) during the run");
            }
        }
        let sample = read_sample(lags, pool, started).await?;
        samples.push(sample);
        if let Some(pid) = producer_cpu {
            if let Some(now) = cpu_seconds(&pid.to_string()) {
                producer_cpu_after = Some(now);
            }
        }
        let at = started.elapsed();
        let producing = producer.child.try_wait()?.is_none();
        if !producing || at >= Duration::from_secs(args.window_secs) {
            break (cpu.read(), at.as_secs_f64());
        }
        if at > Duration::from_secs(args.settle_secs) + COMPARE {
            let judged = judge(args, rate, &samples);
            if judged
                .iter()
                .any(|(_, s)| s.input_rate > 0.0 && s.late / s.input_rate > GIVE_UP_BEHIND_SECS)
            {
                tracing::warn!(rate, "a stage is a minute behind: ending the window early");
                behind = true;
                break (cpu.read(), at.as_secs_f64());
            }
        }
    };
    let finished = if behind {
        let _ = producer.kill().await;
        None
    } else {
        Some(producer.finish(Duration::from_secs(60)).await?)
    };
    let sent = finished.as_ref().and_then(|f| {
        f.stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix("sent=")?.parse().ok())
    });
    let stages = judge(args, rate, &samples);
    let mut cpu_share: Vec<(&'static str, f64)> = after
        .iter()
        .zip(&cpu_before)
        .map(|((name, b), (_, a))| (*name, (b - a) / seconds))
        .collect();
    if let (Some(before), Some(after)) = (producer_cpu_before, producer_cpu_after) {
        cpu_share.push(("producer", (after - before) / seconds));
    }

    // Drain: every backlog back to (nearly) nothing.
    let drain_started = Instant::now();
    let mut drained_secs = None;
    while drain_started.elapsed() < Duration::from_secs(args.drain_secs) {
        let sample = read_sample(lags, pool, started).await?;
        if sample.consumer_lag == 0 && sample.cdc_lag == 0 && sample.slot_lag < 1_048_576.0 {
            drained_secs = Some(drain_started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(RateResult {
        rate,
        seconds: samples.last().map_or(0.0, |s| s.at),
        sent,
        stages,
        cpu: cpu_share,
        drained_secs,
    })
}

async fn read_sample(lags: &Arc<LagReader>, pool: &PgPool, started: Instant) -> Result<Sample> {
    let reader = Arc::clone(lags);
    let groups = tokio::task::spawn_blocking(move || reader.read()).await??;
    let (slot_lag, wal) = slot_and_wal(pool).await?;
    let [users, orders, cdc] = groups[..] else {
        bail!("expected three groups' lags, got {}", groups.len());
    };
    Ok(Sample {
        at: started.elapsed().as_secs_f64(),
        consumer_lag: users.0 + orders.0,
        consumer_done: users.1 + orders.1,
        slot_lag,
        wal,
        cdc_lag: cdc.0,
        cdc_done: cdc.1,
    })
}

/// Judges every stage on the samples so far: input and output rates after settling, and the
/// backlog's growth between the 30 s after settling and the last 30 s.
fn judge(args: &PipelineArgs, rate: u32, samples: &[Sample]) -> Vec<(Stage, StageResult)> {
    #[allow(clippy::cast_precision_loss)]
    let settle = args.settle_secs as f64;
    let compare = COMPARE.as_secs_f64();
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let judged: Vec<&Sample> = samples.iter().filter(|s| s.at >= settle).collect();
    let (Some(first), Some(end)) = (judged.first(), judged.last()) else {
        return Vec::new();
    };
    let span = (end.at - first.at).max(1.0);
    let mean = |stage: Stage, from: f64, to: f64| {
        let values: Vec<f64> = judged
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .map(|s| s.lag(stage))
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let n = values.len().max(1) as f64;
        values.iter().sum::<f64>() / n
    };
    #[allow(clippy::cast_precision_loss)]
    let delta = |f: fn(&Sample) -> f64| (f(end) - f(first)) / span;
    let consumer_out = delta(|s| s.consumer_done as f64);
    let cdc_out = delta(|s| s.cdc_done as f64);
    #[allow(clippy::cast_precision_loss)]
    let consumer_in = consumer_out + delta(|s| s.consumer_lag as f64);
    #[allow(clippy::cast_precision_loss)]
    let cdc_in = cdc_out + delta(|s| s.cdc_lag as f64);
    let wal_rate = delta(|s| s.wal);
    Stage::ALL
        .iter()
        .map(|&stage| {
            let (input_rate, output_rate) = match stage {
                Stage::Consumer => (f64::from(rate).max(consumer_in), consumer_out),
                Stage::Debezium => (wal_rate, f64::NAN),
                Stage::Cdcconsumer => (cdc_in, cdc_out),
            };
            let early = mean(stage, settle, settle + compare);
            let late = mean(stage, last.at - compare, last.at);
            let max = judged.iter().map(|s| s.lag(stage)).fold(0.0, f64::max);
            let growth_secs = if input_rate > 0.0 {
                (late - early) / input_rate
            } else {
                0.0
            };
            (
                stage,
                StageResult {
                    input_rate,
                    output_rate,
                    early,
                    late,
                    max,
                    growth_secs,
                    kept_up: growth_secs <= args.growth_allowance_secs,
                },
            )
        })
        .collect()
}

fn print_rate(result: &RateResult) {
    println!(
        "{} events/s for {:.0} s (sent {}): {}",
        result.rate,
        result.seconds,
        result
            .sent
            .map_or("? (stopped early)".to_owned(), |s| s.to_string()),
        if result.kept_up() {
            "every stage kept up".to_owned()
        } else {
            format!(
                "{} fell behind",
                result.first_behind().map_or("?", Stage::name)
            )
        }
    );
    for (stage, s) in &result.stages {
        let (unit, per) = if *stage == Stage::Debezium {
            ("KiB", "KiB WAL")
        } else {
            ("rec", "")
        };
        let scale = if *stage == Stage::Debezium {
            1024.0
        } else {
            1.0
        };
        // The slot is judged in WAL bytes: it has no rate of records out.
        let out = if s.output_rate.is_finite() {
            format!("{:>7.1}/s", s.output_rate)
        } else {
            format!("{:>9}", "–")
        };
        println!(
            "  {:<24} in {:>9.1}{per}/s out {out}  backlog {:>8.1} → {:>8.1} {unit} (max {:>8.1}), \
             grew {:+.1} s of input: {}",
            stage.name(),
            s.input_rate / scale,
            s.early / scale,
            s.late / scale,
            s.max / scale,
            s.growth_secs,
            if s.kept_up { "kept up" } else { "BEHIND" }
        );
    }
    let cpu: Vec<String> = result
        .cpu
        .iter()
        .map(|(name, share)| format!("{name} {:.0}%", share * 100.0))
        .collect();
    println!("  CPU (% of one core): {}", cpu.join(", "));
    println!(
        "  drained in {}",
        result
            .drained_secs
            .map_or("— (did not drain)".to_owned(), |s| format!("{s:.0} s"))
    );
}

fn report(args: &PipelineArgs, results: &[RateResult], stopped: Option<&str>) {
    println!();
    println!(
        "Whole pipeline — {} — {} s per rate, judged after {} s, growth allowance {} s of input, \
         consistency {}",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.window_secs,
        args.settle_secs,
        args.growth_allowance_secs,
        consistency_name(args.cassandra.consistency)
    );
    println!(
        "{:>8} {:>12} {:>12} {:>10} {:>14}  verdict",
        "offered", "→ PostgreSQL", "→ Cassandra", "slot KiB", "slot growth s"
    );
    for result in results {
        let stage = |wanted| {
            result
                .stages
                .iter()
                .find(|(s, _)| *s == wanted)
                .map(|(_, r)| *r)
        };
        let (pg, slot, cass) = (
            stage(Stage::Consumer),
            stage(Stage::Debezium),
            stage(Stage::Cdcconsumer),
        );
        println!(
            "{:>8} {:>12.1} {:>12.1} {:>10.1} {:>14.1}  {}",
            result.rate,
            pg.map_or(f64::NAN, |s| s.output_rate),
            cass.map_or(f64::NAN, |s| s.output_rate),
            slot.map_or(f64::NAN, |s| s.late / 1024.0),
            slot.map_or(f64::NAN, |s| s.growth_secs),
            if result.kept_up() {
                "kept up".to_owned()
            } else {
                format!(
                    "{} fell behind",
                    result.first_behind().map_or("?", Stage::name)
                )
            }
        );
    }
    let sustained = results
        .iter()
        .filter(|r| r.kept_up() && r.drained_secs.is_some())
        .map(|r| r.rate)
        .max();
    println!(
        "highest rate with every backlog bounded: {}",
        sustained.map_or("none of the offered rates".to_owned(), |r| format!(
            "{r} events/s"
        ))
    );
    match results.iter().find(|r| !r.kept_up()) {
        Some(r) => println!(
            "saturates first: {} (at {} events/s)",
            r.first_behind().map_or("?", Stage::name),
            r.rate
        ),
        None => println!(
            "no stage fell behind at the offered rates{}",
            stopped.map_or(String::new(), |s| format!(" ({s})"))
        ),
    }
}

/// Delivered against offered rate, each stage's backlog growth, and each component's CPU share.
fn chart(path: &Path, results: &[RateResult]) -> Result<()> {
    let stage_series = |stage: Stage, f: fn(&StageResult) -> f64| charts::Series {
        name: stage.name(),
        points: results
            .iter()
            .filter_map(|r| {
                r.stages
                    .iter()
                    .find(|(s, _)| *s == stage)
                    .map(|(_, s)| (f64::from(r.rate), f(s)))
            })
            .collect(),
    };
    let components: Vec<&'static str> = results
        .first()
        .map(|r| r.cpu.iter().map(|(name, _)| *name).collect())
        .unwrap_or_default();
    let cpu = components
        .iter()
        .map(|&name| charts::Series {
            name,
            points: results
                .iter()
                .filter_map(|r| {
                    r.cpu
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, share)| (f64::from(r.rate), share * 100.0))
                })
                .collect(),
        })
        .collect();
    charts::lines(
        path,
        &[
            charts::Panel {
                title: "Delivered vs offered rate",
                x: "offered, events/s",
                y: "delivered, per second",
                series: vec![
                    stage_series(Stage::Consumer, |s| s.output_rate),
                    stage_series(Stage::Cdcconsumer, |s| s.output_rate),
                ],
                diagonal: true,
            },
            charts::Panel {
                title: "Backlog growth over the window",
                x: "offered, events/s",
                y: "growth, seconds of input",
                series: Stage::ALL
                    .iter()
                    .map(|&stage| stage_series(stage, |s| s.growth_secs))
                    .collect(),
                diagonal: false,
            },
            charts::Panel {
                title: "CPU per component",
                x: "offered, events/s",
                y: "% of one core",
                series: cpu,
                diagonal: false,
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PipelineArgs,
    }

    /// Samples every 5 s for 300 s at `rate` events/s, each stage's backlog from `lag(t)`.
    fn samples(rate: f64, lag: impl Fn(f64) -> f64) -> Vec<Sample> {
        (1..=60)
            .map(|i| {
                let at = f64::from(i) * 5.0;
                let backlog = lag(at);
                #[allow(clippy::cast_possible_truncation)]
                let done = (rate * at - backlog) as i64;
                Sample {
                    at,
                    consumer_lag: backlog as i64,
                    consumer_done: done,
                    slot_lag: backlog * 500.0,
                    wal: rate * 500.0 * at,
                    cdc_lag: backlog as i64,
                    cdc_done: done,
                }
            })
            .collect()
    }

    fn args() -> PipelineArgs {
        Cli::parse_from(["bench"]).args
    }

    #[test]
    fn a_steady_backlog_keeps_up_and_a_growing_one_falls_behind() {
        let args = args();
        let steady = judge(
            &args,
            200,
            &samples(200.0, |t| 150.0 + 40.0 * (t / 7.0).sin()),
        );
        assert_eq!(steady.len(), 3);
        assert!(steady.iter().all(|(_, s)| s.kept_up), "{steady:?}");

        // Delivering 190 of 200 per second: 10 more behind every second.
        let growing = judge(&args, 200, &samples(200.0, |t| 10.0 * t));
        assert!(growing.iter().all(|(_, s)| !s.kept_up), "{growing:?}");
        let (_, consumer) = growing[0];
        assert!((consumer.output_rate - 190.0).abs() < 1.0, "{consumer:?}");
        assert!(consumer.growth_secs > 10.0, "{consumer:?}");
    }

    #[test]
    fn the_first_stage_behind_is_named() {
        let result = RateResult {
            rate: 100,
            seconds: 300.0,
            sent: Some(30_000),
            stages: judge(&args(), 100, &samples(100.0, |_| 50.0))
                .into_iter()
                .map(|(stage, mut s)| {
                    s.kept_up = stage == Stage::Consumer;
                    (stage, s)
                })
                .collect(),
            cpu: Vec::new(),
            drained_secs: Some(1.0),
        };
        assert!(!result.kept_up());
        assert_eq!(result.first_behind(), Some(Stage::Debezium));
    }
}
