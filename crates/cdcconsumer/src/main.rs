//! `cdcconsumer`: Debezium change events from Kafka into Cassandra, one worker per partition, and
//! `cdcconsumer verify`, which proves Cassandra agrees with PostgreSQL. See README.md; the logic
//! lives in `cdc_core::cdc`, `cdc_core::cassandra` and `cdc_core::verify`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cdc_core::cassandra::{self, CassandraArgs, Statements};
use cdc_core::cdc::{CdcHandler, CdcMetrics, KeyGates};
use cdc_core::config::{KafkaArgs, LogArgs, Secret};
use cdc_core::debezium::DecimalMode;
use cdc_core::metrics::Metrics;
use cdc_core::runtime::{self, RuntimeOptions};
use cdc_core::topics::{ensure_topics_with, TopicSpec};
use cdc_core::verify::{self, CompareOptions, GroupTopics, QuietOptions};
use clap::{Parser, Subcommand, ValueEnum};

/// Keeps Cassandra in sync with PostgreSQL from Debezium's change events.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Options {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait until the pipeline is quiet, then compare PostgreSQL with Cassandra row by row. Exit
    /// status: 0 clean, 1 drift, 2 could not verify.
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Decimals {
    Precise,
    String,
    Double,
}

/// Where Kafka and Cassandra are, and how to log: the same for both commands.
#[derive(Debug, clap::Args)]
struct CommonArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Debezium's topics for the users and orders tables.
    #[arg(
        long,
        env = "CDC_TOPICS",
        default_value = "cdc.public.users,cdc.public.orders",
        value_delimiter = ','
    )]
    cdc_topics: Vec<String>,
    #[arg(long, env = "CDC_GROUP", default_value = "cdc-cassandra-consumer")]
    group: String,
    /// Replication factor of the dead-letter topics created at start.
    #[arg(long, env = "REPLICATION_FACTOR", default_value_t = 3)]
    replication_factor: i32,
    /// Stop after this many seconds without a record; 0 runs until SIGINT/SIGTERM.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 10)]
    idle_timeout_secs: u64,
    /// Most records handled in one batch.
    #[arg(long, env = "MAX_BATCH", default_value_t = 500)]
    max_batch: usize,
    /// Keys written at once per batch (each key's changes stay in order).
    #[arg(long, env = "LANES", default_value_t = 64)]
    lanes: usize,
    /// Batches of one partition in flight at once: the next batch is written while the previous
    /// one finishes; a key's changes still go in order and offsets are stored in order.
    #[arg(long, env = "PIPELINE", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pipeline: u16,
    /// How long a partition's worker waits for records not yet fetched once it has some; records
    /// already fetched always join the batch, and batches grow on their own while earlier ones are
    /// in flight, so 0 costs no batch size under load and adds no latency when records trickle in.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 0)]
    batch_linger_ms: u64,
    /// The connector's decimal.handling.mode (used for records without an embedded schema).
    #[arg(
        long,
        env = "DECIMAL_HANDLING_MODE",
        value_enum,
        default_value = "precise"
    )]
    decimal_handling_mode: Decimals,
    /// Apply cassandra-schema.cql at start.
    #[arg(long, env = "APPLY_SCHEMA", default_value_t = true, action = clap::ArgAction::Set)]
    apply_schema: bool,
    /// Address of the metrics (`/metrics`) and health (`/health`) endpoint; empty to disable.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: String,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// PostgreSQL connection URL (the password is never logged).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://cdc_user:cdc_password@127.0.0.1:5432/cdc_db"
    )]
    database_url: Secret,
    /// Consumer groups whose lag must be 0, as GROUP=TOPIC[+TOPIC...]; comma-separated.
    #[arg(
        long,
        env = "VERIFY_GROUPS",
        value_delimiter = ',',
        default_value = "cdc-users-consumer=users,cdc-orders-consumer=orders,cdc-cassandra-consumer=cdc.public.users+cdc.public.orders"
    )]
    groups: Vec<String>,
    /// Debezium's replication slot, which must be confirmed past the current WAL position; empty
    /// to skip.
    #[arg(long, env = "SLOT_NAME", default_value = "cdc_slot")]
    slot: String,
    /// How long to wait for the pipeline to be quiet; 0 compares at once.
    #[arg(long, env = "QUIET_TIMEOUT_SECS", default_value_t = 120)]
    quiet_timeout_secs: u64,
    /// Differences shown per table.
    #[arg(long, default_value_t = 5)]
    examples: usize,
}

fn group_topics(text: &str) -> anyhow::Result<GroupTopics> {
    let (group, topics) = text
        .split_once('=')
        .with_context(|| format!("`{text}` is not GROUP=TOPIC[+TOPIC...]"))?;
    Ok(GroupTopics {
        group: group.trim().to_owned(),
        topics: topics.split('+').map(|t| t.trim().to_owned()).collect(),
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let shutdown = cdc_core::shutdown::install();
    tracing::info!(options = ?args, "starting cdcconsumer");
    let mut specs = Vec::new();
    for topic in &args.cdc_topics {
        specs.push(TopicSpec::new(
            cdc_core::dlq::topic_for(topic),
            1,
            args.replication_factor,
        ));
    }
    ensure_topics_with(
        &args.common.kafka.client_config(),
        &specs,
        Duration::from_secs(30),
    )
    .await
    .context("preparing the dead-letter topics")?;
    let session = cassandra::connect(&args.common.cassandra.cassandra_nodes)
        .await
        .context("connecting to Cassandra")?;
    if args.apply_schema {
        cassandra::apply_schema(&session, &args.common.cassandra.keyspace)
            .await
            .context("applying cassandra-schema.cql")?;
    }
    let statements = Statements::prepare(
        &session,
        &args.common.cassandra.keyspace,
        args.common.cassandra.consistency,
    )
    .await
    .context("preparing statements")?;
    let dlq = cdc_core::dlq::producer(args.common.kafka.client_config())
        .context("creating the dead-letter producer")?;
    let metrics = Metrics::default();
    let cdc_metrics = CdcMetrics::register(&metrics);
    metrics
        .spawn_server(&args.metrics_addr, shutdown.clone())
        .context("parsing --metrics-addr")?;
    let handler = Arc::new(CdcHandler {
        session: Arc::new(session),
        statements,
        dlq,
        metrics: metrics.clone(),
        cdc_metrics,
        lanes: args.lanes,
        gates: KeyGates::default(),
        decimals: match args.decimal_handling_mode {
            Decimals::Precise => DecimalMode::Precise,
            Decimals::String => DecimalMode::String,
            Decimals::Double => DecimalMode::Double,
        },
    });
    let mut config = args.common.kafka.client_config();
    config
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest");
    // Debezium's envelopes with embedded schemas are a few KiB each and compress very well:
    // librdkafka keeps each decompressed fetch until its last record is consumed, so both the
    // prefetch queue (64 MiB by default) and the compressed size of one partition's fetch (1 MiB by
    // default, many times that once decompressed) are capped, or a backlog fills memory. At
    // 512 KiB the write rate is unchanged; 256 KiB starved the partitions.
    for (key, value) in [
        ("queued.max.messages.kbytes", "2048"),
        ("max.partition.fetch.bytes", "524288"),
    ] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    let runtime_options = RuntimeOptions {
        max_batch: args.max_batch,
        batch_linger: Duration::from_millis(args.batch_linger_ms),
        pipeline: usize::from(args.pipeline),
        lag: Some(metrics.lag.clone()),
        idle_timeout: (args.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(args.idle_timeout_secs)),
        ..RuntimeOptions::default()
    };
    let topics: Vec<&str> = args.cdc_topics.iter().map(String::as_str).collect();
    metrics.set_ready(true);
    let end = runtime::run(config, &topics, handler, runtime_options, shutdown).await;
    metrics.set_ready(false);
    for topic in &topics {
        println!("cdcconsumer: topic={topic} {}", metrics.summary(topic));
    }
    let end = end.context("consuming the CDC topics")?;
    tracing::info!(?end, "cdcconsumer finished");
    Ok(())
}

async fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let groups = args
        .groups
        .iter()
        .filter(|g| !g.trim().is_empty())
        .map(|g| group_topics(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(args.database_url.expose())
        .await
        .context("connecting to PostgreSQL")?;
    if args.quiet_timeout_secs > 0 {
        let quiet = QuietOptions {
            kafka: args.common.kafka.client_config(),
            groups,
            slot: (!args.slot.trim().is_empty()).then(|| args.slot.clone()),
            timeout: Duration::from_secs(args.quiet_timeout_secs),
        };
        let report = verify::wait_quiet(&pool, &quiet)
            .await
            .context("waiting for the pipeline to be quiet")?;
        tracing::info!(?report, "pipeline quiet");
    }
    let session = cassandra::connect(&args.common.cassandra.cassandra_nodes)
        .await
        .context("connecting to Cassandra")?;
    let report = verify::compare(
        &pool,
        &session,
        &CompareOptions {
            keyspace: args.common.cassandra.keyspace.clone(),
            consistency: args.common.cassandra.consistency,
            max_examples: args.examples,
            ..CompareOptions::default()
        },
    )
    .await
    .context("comparing PostgreSQL with Cassandra")?;
    println!("{report}");
    let clean = report.is_clean();
    pool.close().await;
    Ok(clean)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    match options.command {
        None => {
            options.run.common.log.init();
            run(options.run).await
        }
        Some(Command::Verify(args)) => {
            args.common.log.init();
            // 0: clean, 1: drift, 2: could not verify (not quiet in time, a store unreachable).
            match verify(args).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(error) => {
                    eprintln!("error: {error:#}");
                    std::process::exit(2)
                }
            }
        }
    }
}
