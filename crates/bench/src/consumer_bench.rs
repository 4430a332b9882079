//! `bench consumer`: ingest throughput into PostgreSQL of the consumer binary against two
//! in-process baselines reading the same topics: the plain batched UNNEST upsert loop
//! (`consumer::sink::apply_users/apply_orders`, sequential, one connection) and COPY into a staging
//! table. Every variant starts from tables without the benchmark's rows and is timed the same
//! way: from start until a poll of PostgreSQL sees every entity at its final version.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cdc_core::events::{self, EntityKind, Event, OrderEvent, UserEvent};
use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::{
    self, business_topics, delete_rows, kafka_env, locate_binary, median, mib, send_all, tail,
    unique_name, wait_until_quiet, AbortOnDrop, CdcTopicArgs, Cleanup, Subject, Workload,
    WorkloadArgs, ORDERS_PARTITIONS, SAMPLE_EVERY, USERS_PARTITIONS,
};
use crate::connect::{
    connector, connector_queue_size, connector_state, end_offsets_now, time_capture, CaptureEnd,
    CaptureTiming,
};
use crate::copy_sink::CopySink;
use crate::Context as BenchContext;

#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Batch sizes of the in-process baselines (plain UNNEST loop and COPY).
    #[arg(long, value_delimiter = ',', default_value = "500,5000")]
    pub batch_sizes: Vec<usize>,
    /// MAX_BATCH of the consumer binary, and the batch size of the plain loop the ratios are
    /// computed against.
    #[arg(long, default_value_t = 500)]
    pub consumer_batch: usize,
    /// IDLE_TIMEOUT_SECS of the consumer binary (it exits after this long without records;
    /// not part of the measured time).
    #[arg(long, default_value_t = 3)]
    pub idle_timeout_secs: u64,
    /// Debezium's topics: after the rounds, the consumer binary drains the workload once more
    /// with the connector paused, then the connector is resumed and Debezium's capture of what
    /// the consumer wrote is timed on these topics.
    #[command(flatten)]
    pub cdc: CdcTopicArgs,
    /// Leave out the consumer's drain with the connector paused and the timing of Debezium's
    /// capture of it, which follow the rounds (they pause the connector).
    #[arg(long)]
    pub skip_capture: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The consumer binary.
    Ours,
    /// `consumer::sink` upserts in a sequential loop, batch size.
    Unnest(usize),
    /// COPY into a staging table, then INSERT … SELECT, batch size.
    Copy(usize),
}

impl Variant {
    fn label(self, consumer_batch: usize) -> String {
        match self {
            Self::Ours => format!("consumer binary (ours), MAX_BATCH {consumer_batch}"),
            Self::Unnest(batch) => format!("plain UNNEST upsert loop, batch {batch}"),
            Self::Copy(batch) => format!("COPY staging + upsert loop, batch {batch}"),
        }
    }
}

/// The final version of every entity: what the tables must show when a variant is done.
#[derive(Debug)]
struct Expected {
    user_ids: Vec<Uuid>,
    user_versions: Vec<i64>,
    order_ids: Vec<Uuid>,
    order_versions: Vec<i64>,
}

impl Expected {
    fn from_events(events: &[Event]) -> Self {
        let mut users: BTreeMap<Uuid, i64> = BTreeMap::new();
        let mut orders: BTreeMap<Uuid, i64> = BTreeMap::new();
        for event in events {
            let (map, id, version) = match event {
                Event::User(e) => (&mut users, e.user.id, e.version),
                Event::Order(e) => (&mut orders, e.order.id, e.version),
            };
            let slot = map.entry(id).or_insert(version);
            *slot = (*slot).max(version);
        }
        Self {
            user_ids: users.keys().copied().collect(),
            user_versions: users.values().copied().collect(),
            order_ids: orders.keys().copied().collect(),
            order_versions: orders.values().copied().collect(),
        }
    }

    fn rows(&self) -> i64 {
        i64::try_from(self.user_ids.len() + self.order_ids.len()).unwrap_or(i64::MAX)
    }
}

/// Rows of the benchmark's entities present, and present at their final version.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    users_present: i64,
    users_final: i64,
    orders_present: i64,
    orders_final: i64,
}

const PROGRESS: &str = "\
SELECT us.present, us.final, os.present, os.final FROM
  (SELECT count(*) AS present, count(*) FILTER (WHERE u.version = e.version) AS final
     FROM UNNEST($1::uuid[], $2::bigint[]) AS e(id, version) JOIN users u ON u.id = e.id) AS us,
  (SELECT count(*) AS present, count(*) FILTER (WHERE o.version = e.version) AS final
     FROM UNNEST($3::uuid[], $4::bigint[]) AS e(id, version) JOIN orders o ON o.id = e.id) AS os";

async fn progress(pool: &PgPool, expected: &Expected) -> Result<Progress> {
    let (users_present, users_final, orders_present, orders_final): (i64, i64, i64, i64) =
        sqlx::query_as(PROGRESS)
            .bind(&expected.user_ids)
            .bind(&expected.user_versions)
            .bind(&expected.order_ids)
            .bind(&expected.order_versions)
            .fetch_one(pool)
            .await?;
    Ok(Progress {
        users_present,
        users_final,
        orders_present,
        orders_final,
    })
}

/// When a variant was done.
#[derive(Debug, Clone, Copy)]
struct Applied {
    /// From start until a poll saw every entity at its final version.
    seconds: f64,
    /// From start until a poll first saw any of the benchmark's rows.
    first_row: Option<f64>,
}

/// Polls PostgreSQL every [`SAMPLE_EVERY`] until every entity is at its final version.
/// `ended` says whether the work under measurement has stopped (then a few more polls are
/// allowed for its last commit to show, after which missing rows are an error).
async fn wait_applied(
    pool: &PgPool,
    expected: &Expected,
    started: Instant,
    timeout: Duration,
    mut ended: impl FnMut() -> Result<bool>,
) -> Result<Applied> {
    let mut first_row = None;
    let mut polls_after_end = 0;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let p = progress(pool, expected).await?;
        let seconds = started.elapsed().as_secs_f64();
        if first_row.is_none() && p.users_present + p.orders_present > 0 {
            first_row = Some(seconds);
        }
        if p.users_final + p.orders_final == expected.rows() {
            return Ok(Applied { seconds, first_row });
        }
        if ended()? {
            polls_after_end += 1;
            ensure!(
                polls_after_end <= 3,
                "the variant stopped before all rows were applied: {p:?}, expected {} users and \
                 {} orders at their final versions",
                expected.user_ids.len(),
                expected.order_ids.len()
            );
        }
        ensure!(
            started.elapsed() < timeout,
            "not all rows applied within {timeout:?}: {p:?}"
        );
    }
}

/// One measured run.
#[derive(Debug, Clone)]
struct Sample {
    applied: Applied,
    /// CPU busy fraction of the machine in the second before the run.
    busy_before: Option<f64>,
    /// Consumer binary only: peak RSS and its own summary.
    peak_rss_kib: Option<u64>,
    summary: Option<String>,
    /// Consumer binary only: CPU-seconds of the consumer's whole process, and of PostgreSQL (all
    /// its processes) from the consumer's spawn to its exit.
    cpu: Option<(f64, f64)>,
    /// COPY only: seconds spent completing COPYs (CopyDone → CommandComplete).
    copy_done: Option<f64>,
}

/// Everything the variants share.
#[derive(Debug)]
struct Setup {
    kafka: cdc_core::config::KafkaArgs,
    brokers: String,
    database_url: String,
    users_topic: String,
    orders_topic: String,
    users_records: usize,
    orders_records: usize,
    expected: Expected,
    pool: PgPool,
    consumer_bin: std::path::PathBuf,
    replication_factor: i32,
    run_timeout: Duration,
    quiet_wait: Duration,
}

pub async fn run(ctx: &BenchContext, args: &ConsumerArgs, cleanup: &mut Cleanup) -> Result<()> {
    let consumer_bin = locate_binary("consumer", args.workload.run.bin_dir.as_deref())?;
    let mut batch_sizes = args.batch_sizes.clone();
    if !batch_sizes.contains(&args.consumer_batch) {
        batch_sizes.insert(0, args.consumer_batch);
    }
    ensure!(
        batch_sizes.iter().all(|b| *b > 0),
        "batch sizes must be positive"
    );

    let workload = Workload::generate(args.workload.generator_config()?);
    let expected = Expected::from_events(&workload.events);
    let users_records = workload.count(EntityKind::User);
    let orders_records = workload.count(EntityKind::Order);
    tracing::info!(
        events = workload.records.len(),
        users_records,
        orders_records,
        users = expected.user_ids.len(),
        orders = expected.order_ids.len(),
        "generated the workload"
    );

    // Topics: the pair the variants read, and the consumer binary's dead-letter topics created up
    // front so that no run pays for creating them.
    let rf = args.workload.run.replication_factor;
    let (users_topic, orders_topic) = business_topics(
        &ctx.brokers,
        cleanup,
        "bench",
        (USERS_PARTITIONS, ORDERS_PARTITIONS),
        rf,
    )
    .await?;

    let producer_config = producer::send::client_config(ctx.kafka.client_config());
    let records = workload.records;
    let (u, o) = (users_topic.clone(), orders_topic.clone());
    let timeout = args.workload.run.run_timeout();
    let fill =
        tokio::task::spawn_blocking(move || send_all(&producer_config, &records, &u, &o, timeout))
            .await??;
    tracing::info!(
        seconds = fill.as_secs_f64(),
        "wrote the workload to Kafka (idempotent, acks=all)"
    );

    cleanup.user_ids.clone_from(&expected.user_ids);
    cleanup.order_ids.clone_from(&expected.order_ids);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&ctx.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    consumer::sink::apply_schema(&pool).await?;

    let setup = Setup {
        kafka: ctx.kafka.clone(),
        brokers: ctx.brokers.clone(),
        database_url: ctx.database_url.clone(),
        users_topic,
        orders_topic,
        users_records,
        orders_records,
        expected,
        pool,
        consumer_bin,
        replication_factor: rf,
        run_timeout: args.workload.run.run_timeout(),
        quiet_wait: Duration::from_secs(args.workload.quiet_wait_secs),
    };

    let mut variants = vec![Variant::Ours];
    for &batch in &batch_sizes {
        variants.push(Variant::Unnest(batch));
        variants.push(Variant::Copy(batch));
    }
    let load_before = common::load_average();
    let mut samples: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    for round in 0..args.workload.run.runs {
        // Rotate the order every round so no variant always runs first or last.
        let n = variants.len();
        for i in 0..n {
            let index = (i + round as usize) % n;
            let variant = variants[index];
            let sample = measure(&setup, args, variant, cleanup)
                .await
                .with_context(|| {
                    format!(
                        "round {}: {}",
                        round + 1,
                        variant.label(args.consumer_batch)
                    )
                })?;
            tracing::info!(
                round = round + 1,
                variant = variant.label(args.consumer_batch),
                seconds = format!("{:.3}", sample.applied.seconds),
                "measured"
            );
            samples.entry(index).or_default().push(sample);
        }
    }
    let load_after = common::load_average();
    // A failed capture run still lets the figures above be reported (then its error is returned).
    let capture = if args.skip_capture {
        Ok(None)
    } else {
        let mut runs = Vec::new();
        let mut failed = None;
        for round in 0..args.workload.run.runs {
            match drain_then_capture(&setup, args, cleanup).await {
                Ok(run) => runs.push(run),
                Err(error) => {
                    failed = Some(error.context(format!(
                        "the consumer's drain against Debezium's capture, run {}",
                        round + 1
                    )));
                    break;
                }
            }
        }
        failed.map_or(Ok(Some(runs)), Err)
    };

    report(
        &setup,
        args,
        &variants,
        &samples,
        workload.generate_and_encode,
        (load_before, load_after),
    );
    if let Ok(Some(runs)) = &capture {
        report_capture(&setup, runs);
    }
    delete_rows(
        &setup.pool,
        &setup.expected.user_ids,
        &setup.expected.order_ids,
    )
    .await?;
    setup.pool.close().await;
    capture.map(drop)
}

/// The consumer binary's drain of the workload with the connector paused, and Debezium's capture
/// of the rows it wrote once the connector is resumed: both rates from one run.
#[derive(Debug)]
struct DrainAndCapture {
    drain: Sample,
    capture: CaptureTiming,
    /// Debezium's `max.queue.size`.
    queue: u64,
}

/// How long Debezium's topics must stay unchanged for a capture to count as over.
const CAPTURE_SETTLED: Duration = Duration::from_secs(10);

async fn drain_then_capture(
    setup: &Setup,
    args: &ConsumerArgs,
    cleanup: &mut Cleanup,
) -> Result<DrainAndCapture> {
    args.cdc.check()?;
    let config = setup.kafka.client_config();
    let topics = args.cdc.with_partitions(&setup.brokers).await?;
    // The previous run's rows are deleted with the connector running, and their deletes captured,
    // before the pause: what waits in the slot afterwards is the consumer's writes alone.
    empty_rows(setup).await?;
    connector_state("RUNNING", Duration::from_secs(60)).await?;
    let start = settled_end_offsets(&config, &topics, setup.run_timeout).await?;
    let queue = connector_queue_size().await?;
    connector("pause").await?;
    let drained = async {
        connector_state("PAUSED", Duration::from_secs(60)).await?;
        let busy_before = wait_until_quiet(setup.quiet_wait).await;
        let drain = run_ours(setup, args, cleanup, busy_before).await?;
        let now = end_offsets_now(&config, &topics).await?;
        ensure!(
            now == start,
            "Debezium's topics grew by {} records while the connector was paused",
            now - start
        );
        anyhow::Ok(drain)
    }
    .await;
    // Resumed whatever happened: a paused connector would stop the pipeline.
    let resumed = connector("resume").await;
    let resumed_at = Instant::now();
    let drain = drained?;
    resumed?;
    let capture = time_capture(
        &config,
        &topics,
        start,
        queue,
        resumed_at,
        CaptureEnd::Settled(CAPTURE_SETTLED),
        setup.run_timeout,
    )
    .await?;
    Ok(DrainAndCapture {
        drain,
        capture,
        queue,
    })
}

/// The topics' summed high watermarks once they have not changed for [`CAPTURE_SETTLED`].
async fn settled_end_offsets(
    config: &ClientConfig,
    topics: &[(String, i32)],
    timeout: Duration,
) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    let mut last = (Instant::now(), end_offsets_now(config, topics).await?);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = end_offsets_now(config, topics).await?;
        if now != last.1 {
            last = (Instant::now(), now);
        } else if last.0.elapsed() >= CAPTURE_SETTLED {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "Debezium's topics were still growing after {timeout:?}"
        );
    }
}

#[allow(clippy::cast_precision_loss)]
fn report_capture(setup: &Setup, runs: &[DrainAndCapture]) {
    let events = (setup.users_records + setup.orders_records) as f64;
    println!();
    println!(
        "Against Debezium, same run: the consumer binary drains the {events} events with the \
         connector paused (spawn → every row at its final version), then the connector is \
         resumed and Debezium's capture of the records it wrote is timed past its queue \
         (max.queue.size; a delete's tombstone counts as a record)"
    );
    println!(
        "{:>4} {:>9} {:>10} {:>12} {:>9} {:>10} {:>15} {:>12} {:>10}",
        "run",
        "drain s",
        "events/s",
        "peak RSS",
        "records",
        "capture s",
        "past queue",
        "records/s",
        "ratio"
    );
    let mut ratios = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let drain_rate = events / run.drain.applied.seconds;
        let capture = &run.capture;
        let ratio = capture.rate_past_queue().map(|rate| drain_rate / rate);
        ratios.extend(ratio);
        println!(
            "{:>4} {:>9.2} {:>10.0} {:>12} {:>9} {:>10.2} {:>15} {:>12} {:>10}",
            index + 1,
            run.drain.applied.seconds,
            drain_rate,
            run.drain
                .peak_rss_kib
                .map_or("?".into(), |kib| format!("{:.1} MiB", mib(kib))),
            capture.records,
            capture.seconds,
            capture
                .past_queue
                .map_or("–".into(), |(records, seconds)| format!(
                    "{records} in {seconds:.2} s"
                )),
            capture
                .rate_past_queue()
                .map_or("–".into(), |rate| format!("{rate:.0}")),
            ratio.map_or("–".into(), |ratio| format!("{ratio:.2}×"))
        );
    }
    println!(
        "   consumer events/s ÷ Debezium records/s past its queue ({}): median {:.2}× (target ≥ 2×)",
        runs.first().map_or(0, |run| run.queue),
        median(&ratios)
    );
}

/// Deletes the benchmark's rows and vacuums: dead tuples of the previous run must not slow (or,
/// once autovacuum runs, speed up) the next.
async fn empty_rows(setup: &Setup) -> Result<()> {
    delete_rows(
        &setup.pool,
        &setup.expected.user_ids,
        &setup.expected.order_ids,
    )
    .await?;
    sqlx::raw_sql("VACUUM (ANALYZE) users, orders")
        .execute(&setup.pool)
        .await?;
    Ok(())
}

/// Empties the benchmark's rows, waits for a quiet machine, and measures one variant.
async fn measure(
    setup: &Setup,
    args: &ConsumerArgs,
    variant: Variant,
    cleanup: &mut Cleanup,
) -> Result<Sample> {
    empty_rows(setup).await?;
    let busy_before = wait_until_quiet(setup.quiet_wait).await;
    match variant {
        Variant::Ours => run_ours(setup, args, cleanup, busy_before).await,
        Variant::Unnest(batch) => run_loop(setup, Sink::Unnest, batch, busy_before).await,
        Variant::Copy(batch) => run_loop(setup, Sink::Copy, batch, busy_before).await,
    }
}

async fn run_ours(
    setup: &Setup,
    args: &ConsumerArgs,
    cleanup: &mut Cleanup,
    busy_before: Option<f64>,
) -> Result<Sample> {
    let users_group = unique_name("bench_users_group");
    let orders_group = unique_name("bench_orders_group");
    cleanup.groups.push(users_group.clone());
    cleanup.groups.push(orders_group.clone());
    let mut command = tokio::process::Command::new(&setup.consumer_bin);
    command
        .env_remove("RUST_LOG")
        .env("DATABASE_URL", &setup.database_url)
        .env("USERS_TOPIC", &setup.users_topic)
        .env("ORDERS_TOPIC", &setup.orders_topic)
        .env("USERS_GROUP", &users_group)
        .env("ORDERS_GROUP", &orders_group)
        .env("USERS_PARTITIONS", USERS_PARTITIONS.to_string())
        .env("ORDERS_PARTITIONS", ORDERS_PARTITIONS.to_string())
        .env("REPLICATION_FACTOR", setup.replication_factor.to_string())
        .env("IDLE_TIMEOUT_SECS", args.idle_timeout_secs.to_string())
        .env("MAX_BATCH", args.consumer_batch.to_string())
        .env("LOG_LEVEL", "warn");
    kafka_env(&mut command, &setup.kafka);
    let started = Instant::now();
    let postgres_before = common::postgres_cpu_seconds();
    let mut subject = Subject::spawn(command)?;
    let applied = wait_applied(
        &setup.pool,
        &setup.expected,
        started,
        setup.run_timeout,
        || Ok(subject.child.try_wait()?.is_some()),
    )
    .await;
    let applied = match applied {
        Ok(applied) => applied,
        Err(error) => {
            let stderr = subject.kill().await;
            return Err(error.context(format!("consumer stderr:\n{stderr}")));
        }
    };
    let finished = subject
        .finish(Duration::from_secs(args.idle_timeout_secs + 60))
        .await?;
    ensure!(
        finished.status.success(),
        "the consumer exited with {}:\n{}",
        finished.status,
        tail(&finished.stderr, 40)
    );
    let postgres = common::postgres_cpu_seconds()
        .zip(postgres_before)
        .map(|(after, before)| after - before);
    let summary = summarise_consumer(&finished.stdout)?;
    Ok(Sample {
        applied,
        busy_before,
        peak_rss_kib: finished.peak_rss_kib,
        cpu: finished.cpu_seconds.zip(postgres),
        summary: Some(summary),
        copy_done: None,
    })
}

/// The consumer's own summary lines (`consumer: topic=T consumed=N applied=N dead_lettered=N …`),
/// joined; a dead letter is an error (the workload is valid).
fn summarise_consumer(stdout: &str) -> Result<String> {
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("consumer:"))
        .collect();
    ensure!(!lines.is_empty(), "no summary line in:\n{stdout}");
    let dead_lettered = lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter_map(|t| t.strip_prefix("dead_lettered="))
        .any(|n| n != "0");
    ensure!(
        !dead_lettered,
        "the consumer dead-lettered records:\n{stdout}"
    );
    Ok(lines.join(" | "))
}

/// How a baseline loop writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Unnest,
    Copy,
}

/// A connected sink.
#[derive(Debug)]
enum Writer {
    Unnest(PgPool),
    Copy(CopySink),
}

impl Writer {
    async fn connect(sink: Sink, url: &str) -> Result<Self> {
        Ok(match sink {
            Sink::Copy => Self::Copy(CopySink::connect(url).await?),
            Sink::Unnest => {
                Self::Unnest(PgPoolOptions::new().max_connections(1).connect(url).await?)
            }
        })
    }

    async fn users(&mut self, events: &[UserEvent]) -> Result<()> {
        let started = Instant::now();
        match self {
            Self::Unnest(pool) => {
                consumer::sink::apply_users(pool, events).await?;
            }
            Self::Copy(sink) => {
                sink.apply_users(events).await?;
            }
        }
        log_batch("users", events.len(), started);
        Ok(())
    }

    async fn orders(&mut self, events: &[OrderEvent]) -> Result<()> {
        let started = Instant::now();
        match self {
            Self::Unnest(pool) => {
                let applied = consumer::sink::apply_orders(pool, events).await?;
                ensure!(
                    applied.missing_parent.is_empty(),
                    "{} orders arrived before their user",
                    applied.missing_parent.len()
                );
            }
            Self::Copy(sink) => {
                sink.apply_orders(events).await?;
            }
        }
        log_batch("orders", events.len(), started);
        Ok(())
    }

    /// Closes the connection; for COPY, returns the time spent completing COPYs.
    async fn close(self) -> Option<Duration> {
        match self {
            Self::Unnest(pool) => {
                pool.close().await;
                None
            }
            Self::Copy(sink) => Some(sink.copy_done()),
        }
    }
}

/// One batch's duration, at debug level (`RUST_LOG=bench=debug`).
fn log_batch(table: &str, events: usize, started: Instant) {
    tracing::debug!(
        table,
        events,
        ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "batch written"
    );
}

async fn run_loop(
    setup: &Setup,
    sink: Sink,
    batch: usize,
    busy_before: Option<f64>,
) -> Result<Sample> {
    let brokers = setup.brokers.clone();
    let url = setup.database_url.clone();
    let topics = [
        (
            setup.users_topic.clone(),
            USERS_PARTITIONS,
            setup.users_records,
            EntityKind::User,
        ),
        (
            setup.orders_topic.clone(),
            ORDERS_PARTITIONS,
            setup.orders_records,
            EntityKind::Order,
        ),
    ];
    let started = Instant::now();
    let mut task = AbortOnDrop(tokio::spawn(async move {
        let mut writer = Writer::connect(sink, &url).await?;
        for (topic, partitions, records, kind) in &topics {
            drain_topic(
                &brokers,
                topic,
                *partitions,
                *records,
                *kind,
                batch,
                &mut writer,
            )
            .await?;
        }
        anyhow::Ok(writer.close().await)
    }));
    let applied = wait_applied(
        &setup.pool,
        &setup.expected,
        started,
        setup.run_timeout,
        || Ok(task.0.is_finished()),
    )
    .await;
    let applied = match applied {
        Ok(applied) => applied,
        Err(error) => {
            // Prefer the loop's own error over "rows missing".
            if let Ok(joined) = tokio::time::timeout(Duration::from_secs(1), &mut task.0).await {
                joined??;
            }
            return Err(error);
        }
    };
    let copy_done = (&mut task.0).await??;
    Ok(Sample {
        applied,
        busy_before,
        peak_rss_kib: None,
        cpu: None,
        summary: None,
        copy_done: copy_done.map(|d| d.as_secs_f64()),
    })
}

/// Reads `expected` records of one topic from the beginning of every partition (assigned, no
/// consumer group, nothing committed), decodes them and writes them in batches of `batch`.
async fn drain_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    kind: EntityKind,
    batch: usize,
    writer: &mut Writer,
) -> Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("bench_plain_loop"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut users = Vec::with_capacity(batch);
    let mut orders = Vec::with_capacity(batch);
    let mut consumed = 0;
    while consumed < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .with_context(|| format!("no record from {topic} for 30 s"))??;
        consumed += 1;
        match events::decode(kind, message.key(), message.payload()).map(|d| d.event) {
            Ok(Event::User(e)) => users.push(e),
            Ok(Event::Order(e)) => orders.push(e),
            Err(invalid) => bail!(
                "invalid record at {topic}/{}@{}: {invalid}",
                message.partition(),
                message.offset()
            ),
        }
        if users.len() + orders.len() >= batch || consumed == expected {
            if !users.is_empty() {
                writer.users(&users).await?;
                users.clear();
            }
            if !orders.is_empty() {
                writer.orders(&orders).await?;
                orders.clear();
            }
        }
    }
    Ok(())
}

fn report(
    setup: &Setup,
    args: &ConsumerArgs,
    variants: &[Variant],
    samples: &BTreeMap<usize, Vec<Sample>>,
    generate_and_encode: Duration,
    load: (Option<f64>, Option<f64>),
) {
    let events = (setup.users_records + setup.orders_records) as f64;
    let median_seconds = |index: usize| {
        let seconds: Vec<f64> = samples
            .get(&index)
            .map(|s| s.iter().map(|s| s.applied.seconds).collect())
            .unwrap_or_default();
        median(&seconds)
    };
    let reference = variants
        .iter()
        .position(|v| *v == Variant::Unnest(args.consumer_batch))
        .map(median_seconds)
        .unwrap_or(f64::NAN);

    println!();
    println!(
        "consumer ingest into PostgreSQL — {} — {} events ({} on {} with {} partitions, {} on {} \
         with {} partitions, RF {}), {} users and {} orders at their final versions; median of \
         {} runs per variant",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        events,
        setup.users_records,
        setup.users_topic,
        USERS_PARTITIONS,
        setup.orders_records,
        setup.orders_topic,
        ORDERS_PARTITIONS,
        setup.replication_factor,
        setup.expected.user_ids.len(),
        setup.expected.order_ids.len(),
        args.workload.run.runs
    );
    println!(
        "time = from spawn/start until a poll (every {} ms) sees every row at its final version; \
         'after 1st row' excludes start-up (process start, topic check, schema, group join)",
        SAMPLE_EVERY.as_millis()
    );
    println!();
    println!(
        "{:<46} {:>8} {:>10} {:>12} {:>11} {:>16}   runs (s)",
        "variant", "events", "seconds", "events/s", "vs plain", "after 1st row/s"
    );
    for (index, variant) in variants.iter().enumerate() {
        let Some(runs) = samples.get(&index) else {
            continue;
        };
        let seconds = median_seconds(index);
        let steady: Vec<f64> = runs
            .iter()
            .filter_map(|s| {
                s.applied
                    .first_row
                    .map(|first| events / (s.applied.seconds - first).max(1e-9))
            })
            .collect();
        let each: Vec<String> = runs
            .iter()
            .map(|s| format!("{:.2}", s.applied.seconds))
            .collect();
        println!(
            "{:<46} {:>8} {:>10.3} {:>12.0} {:>10.2}x {:>16.0}   {}",
            variant.label(args.consumer_batch),
            events,
            seconds,
            events / seconds,
            reference / seconds,
            median(&steady),
            each.join(" ")
        );
    }
    println!();
    if let Some(index) = variants.iter().position(|v| *v == Variant::Ours) {
        let runs = samples.get(&index).map(Vec::as_slice).unwrap_or_default();
        let rss: Vec<f64> = runs
            .iter()
            .filter_map(|s| s.peak_rss_kib.map(mib))
            .collect();
        let max = rss.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "consumer binary peak RSS (VmHWM, sampled every {} ms): median {:.1} MiB, max {:.1} \
             MiB over {} runs",
            SAMPLE_EVERY.as_millis(),
            median(&rss),
            max,
            rss.len()
        );
        let per_10k = |cpu: f64| cpu * 10_000.0 / events;
        let (ours, postgres): (Vec<f64>, Vec<f64>) = runs
            .iter()
            .filter_map(|s| s.cpu)
            .map(|(ours, postgres)| (per_10k(ours), per_10k(postgres)))
            .unzip();
        if !ours.is_empty() {
            println!(
                "CPU per 10,000 events (median over {} runs): consumer {:.2} s (its whole process), \
                 PostgreSQL {:.2} s (all its processes from the consumer's spawn to its exit, the \
                 walsender Debezium reads through included): consumer/PostgreSQL = {:.2}x",
                ours.len(),
                median(&ours),
                median(&postgres),
                median(&ours) / median(&postgres)
            );
        }
        if let Some(summary) = runs.last().and_then(|s| s.summary.as_deref()) {
            println!("consumer binary's own summary (last run): {summary}");
        }
    }
    for &batch in variants.iter().filter_map(|v| match v {
        Variant::Unnest(batch) => Some(batch),
        _ => None,
    }) {
        let unnest = variants.iter().position(|v| *v == Variant::Unnest(batch));
        let copy = variants.iter().position(|v| *v == Variant::Copy(batch));
        if let (Some(unnest), Some(copy)) = (unnest, copy) {
            let (u, c) = (median_seconds(unnest), median_seconds(copy));
            println!(
                "UNNEST vs COPY, batch {batch}: UNNEST {:.0} events/s, COPY {:.0} events/s, \
                 COPY/UNNEST = {:.2}x",
                events / u,
                events / c,
                u / c
            );
            let done: Vec<f64> = samples
                .get(&copy)
                .map(|s| s.iter().filter_map(|s| s.copy_done).collect())
                .unwrap_or_default();
            let batches =
                setup.users_records.div_ceil(batch) + setup.orders_records.div_ceil(batch);
            println!(
                "  COPY, batch {batch}: median {:.2} s of its {:.2} s spent completing COPYs \
                 (CopyDone → CommandComplete), {:.1} ms per batch over {batches} batches",
                median(&done),
                c,
                median(&done) * 1000.0 / batches as f64
            );
        }
    }
    let busy: Vec<String> = samples
        .values()
        .flatten()
        .filter_map(|s| s.busy_before.map(|b| format!("{:.0}", b * 100.0)))
        .collect();
    println!(
        "machine: {} CPUs; CPU busy % in the second before each run: {}; load average {} → {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        busy.join(" "),
        load.0.map_or("?".into(), |l| format!("{l:.2}")),
        load.1.map_or("?".into(), |l| format!("{l:.2}"))
    );
    println!(
        "generating + encoding the {} events in-process took {:.3} s (not part of any figure)",
        events,
        generate_and_encode.as_secs_f64()
    );
}
