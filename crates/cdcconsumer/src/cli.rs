//! cdcconsumer's command line: the sink (no subcommand), `verify`, `dlq list` / `dlq replay`
//! for its dead letters, `resnapshot` of one table, and `columns` added since the description.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use cdc_core::config::{parse_time, KafkaArgs, LogArgs, PostgresArgs, RuntimeArgs};
use cdc_core::debezium::{DecimalMode, Encoding};
use cdc_core::dlq::DeadLetters;
use cdc_core::metrics::Metrics;
use cdc_core::outcome::Interrupted;
use cdc_core::replay::DlqCommand;
use cdc_core::retry::retry;
use cdc_core::runtime::{self, RunEnd};
use cdc_core::topics::{ensure_topics_with, TopicSpec};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::cassandra::{self, CassandraArgs, Statements};
use crate::columns::MirroredColumns;
use crate::handler::gates::KeyGates;
use crate::handler::positions::PositionGuard;
use crate::handler::{self, CdcHandler, CdcMetrics};
use crate::slot::{self, SlotMetrics};
use crate::verify::{self, CompareOptions, GroupTopics, QuietOptions};

/// The placeholder the local stack's connector is configured with (`stack/topology.env`).
pub const DEFAULT_UNAVAILABLE_PLACEHOLDER: &str = "__cdc_unchanged_toast_6b1d0e57a2c94f38";

/// Keeps Cassandra in sync with PostgreSQL from Debezium's change events.
#[derive(Debug, clap::Parser)]
#[command(name = "cdcconsumer", version, args_conflicts_with_subcommands = true)]
pub struct Options {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Wait until the pipeline is quiet, then compare PostgreSQL with Cassandra row by row. Exit
    /// status: 0 clean, 1 drift, 2 could not verify.
    Verify(Box<VerifyArgs>),
    /// The dead letters of the CDC topics: list them, or replay a selection to its source topics
    /// once the cause is fixed.
    Dlq(Box<DlqArgs>),
    /// Read one table again through Debezium (an incremental snapshot) while the pipeline runs,
    /// and wait until cdcconsumer has applied it. Exit status: 0 done, 1 refused or aborted, 2
    /// could not finish.
    Resnapshot(Box<crate::resnapshot::ResnapshotArgs>),
    /// Columns added to the captured tables since the description: list them, or drop one
    /// PostgreSQL no longer has. Exit status: 0 done, 1 refused, 2 could not.
    Columns(Box<crate::columns::ColumnsArgs>),
}

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// Debezium's topics (their dead letters are in `<topic>.dlq`).
    #[arg(
        long,
        env = "CDC_TOPICS",
        default_value = "cdc.public.users,cdc.public.orders",
        value_delimiter = ',',
        global = true
    )]
    pub cdc_topics: Vec<String>,
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// Lists or replays dead letters (the CDC topics' unless `--source-topic` says otherwise);
/// returns the exit status.
pub async fn dlq(args: DlqArgs) -> i32 {
    cdc_core::replay::exit_code(cdc_core::replay::run(args.command, &args.cdc_topics).await)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Decimals {
    Precise,
    String,
    Double,
}

impl From<Decimals> for DecimalMode {
    fn from(value: Decimals) -> Self {
        match value {
            Decimals::Precise => Self::Precise,
            Decimals::String => Self::String,
            Decimals::Double => Self::Double,
        }
    }
}

/// Where Kafka and Cassandra are, and how to log: the same for both commands.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub cassandra: CassandraArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Debezium's topics for the users and orders tables.
    #[arg(
        long,
        env = "CDC_TOPICS",
        default_value = "cdc.public.users,cdc.public.orders",
        value_delimiter = ','
    )]
    pub cdc_topics: Vec<String>,
    #[arg(long, env = "CDC_GROUP", default_value = "cdc-cassandra-consumer")]
    pub group: String,
    /// Replication factor of the dead-letter topics created at start.
    #[arg(long, env = "REPLICATION_FACTOR", default_value_t = 3)]
    pub replication_factor: i32,
    /// Write requests at once per batch, each carrying one key's changes or several small keys'
    /// (each key's changes end as in source order).
    #[arg(long, env = "LANES", default_value_t = 64)]
    pub lanes: usize,
    /// Batches of one partition in flight at once: the next batch is written while the previous
    /// one finishes; a key's changes still go in order and offsets are stored in order.
    #[arg(long, env = "PIPELINE", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub pipeline: u16,
    /// How long a partition's worker waits for records not yet fetched once it has some; records
    /// already fetched always join the batch, and batches grow on their own while earlier ones are
    /// in flight, so 0 costs no batch size under load and adds no latency when records trickle in.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 0)]
    pub batch_linger_ms: u64,
    /// The connector's decimal.handling.mode (used for records without an embedded schema).
    #[arg(
        long,
        env = "DECIMAL_HANDLING_MODE",
        value_enum,
        default_value = "precise"
    )]
    pub decimal_handling_mode: Decimals,
    /// The connector's `unavailable.value.placeholder`: the value it sends for an unchanged TOASTed
    /// column (honoured in text columns only). Set one of your own in the connector; Debezium's
    /// default, `__debezium_unavailable_value`, is a value a row could hold.
    #[arg(
        long,
        env = "UNAVAILABLE_VALUE_PLACEHOLDER",
        default_value = DEFAULT_UNAVAILABLE_PLACEHOLDER
    )]
    pub unavailable_value_placeholder: String,
    /// Apply cassandra-schema.cql at start.
    #[arg(long, env = "APPLY_SCHEMA", default_value_t = true, action = clap::ArgAction::Set)]
    pub apply_schema: bool,
    /// Address of the metrics (`/metrics`) and health (`/livez`, `/readyz`) endpoint; empty to
    /// disable.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: String,
    /// The source PostgreSQL, asked for its current WAL position and system identifier only: a
    /// position beyond it is refused (`impossible_position`), and a keyspace filled from another
    /// cluster is refused at start. Any role may ask.
    #[command(flatten)]
    pub source: PostgresArgs,
    /// Check positions against the source (`false`: trust every position, and do not watch the
    /// slot).
    #[arg(long, env = "CHECK_POSITIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub check_positions: bool,
    /// Debezium's replication slot on the source, watched while running: invalidated or missing,
    /// it makes the process unready and is logged as an error; empty to skip.
    #[arg(long, env = "SLOT_NAME", default_value = "cdc_slot")]
    pub slot: String,
    /// Seconds between two looks at the replication slot.
    #[arg(long, env = "SLOT_CHECK_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub slot_check_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Consumer groups whose lag must be 0, as GROUP=TOPIC[+TOPIC...]; comma-separated.
    #[arg(
        long,
        env = "VERIFY_GROUPS",
        value_delimiter = ',',
        default_value = "cdc-users-consumer=users,cdc-orders-consumer=orders,cdc-cassandra-consumer=cdc.public.users+cdc.public.orders"
    )]
    pub groups: Vec<String>,
    /// Debezium's replication slot, which must be confirmed past the current WAL position; empty
    /// to skip.
    #[arg(long, env = "SLOT_NAME", default_value = "cdc_slot")]
    pub slot: String,
    /// How long to wait for the pipeline to be quiet; 0 compares at once.
    #[arg(long, env = "QUIET_TIMEOUT_SECS", default_value_t = 120)]
    pub quiet_timeout_secs: u64,
    /// Differences shown per table.
    #[arg(long, default_value_t = 5)]
    pub examples: usize,
    /// Topics whose dead-letter topics (`<topic>.dlq`) are counted.
    #[arg(
        long,
        env = "DEAD_LETTER_TOPICS",
        value_delimiter = ',',
        default_value = "users,orders,cdc.public.users,cdc.public.orders"
    )]
    pub dead_letter_topics: Vec<String>,
    /// Count only dead letters parked at or after this time (RFC 3339); all when not given.
    #[arg(long, env = "DEAD_LETTERS_SINCE", value_parser = parse_time)]
    pub dead_letters_since: Option<DateTime<Utc>>,
    /// Fail (exit 1) when any dead letter is counted: a run that injected no bad records expects
    /// none.
    #[arg(long, env = "FAIL_ON_DEAD_LETTERS")]
    pub fail_on_dead_letters: bool,
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

/// Librdkafka settings cdcconsumer uses unless `--kafka-option` says otherwise.
///
/// Debezium's envelopes with embedded schemas are a few KiB each and compress very well:
/// librdkafka keeps each decompressed fetch until its last record is consumed, so both the
/// prefetch queue (64 MiB by default) and the compressed size of one partition's fetch (1 MiB by
/// default, many times that once decompressed) are capped, or a backlog fills memory. At 512 KiB
/// the write rate is unchanged; 256 KiB starved the partitions.
///
/// A partition whose prefetch queue is full is not fetched again for `fetch.queue.backoff.ms`
/// (1 s by default): with a queue this small, draining a backlog then stalled every partition
/// for up to a second every few batches. 20 ms drained 100,000 changes in 28 s instead of 37 s.
const FETCH_DEFAULTS: &[(&str, &str)] = &[
    ("queued.max.messages.kbytes", "2048"),
    ("max.partition.fetch.bytes", "524288"),
    ("fetch.queue.backoff.ms", "20"),
];

/// Runs the sink until `shutdown` fires or the idle timeout passes, then prints one summary line
/// per topic. Fails when consumption failed, ended with a stalled partition, or gave up.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(options = ?args, "starting cdcconsumer");
    let mut config = args.common.kafka.client_config();
    args.runtime
        .check(&config)
        .context("checking the options")?;
    let specs: Vec<TopicSpec> = args
        .cdc_topics
        .iter()
        .map(|topic| TopicSpec::new(cdc_core::dlq::topic_for(topic), 1, args.replication_factor))
        .collect();
    ensure_topics_with(&config, &specs, Duration::from_secs(30))
        .await
        .context("preparing the dead-letter topics")?;
    let session = args
        .common
        .cassandra
        .connect()
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
    let dlq = DeadLetters::new(
        cdc_core::dlq::producer(args.common.kafka.client_config())
            .context("creating the dead-letter producer")?,
        args.runtime.give_up_after,
    )
    .rereading_with(args.common.kafka.client_config());
    let metrics = Metrics::default();
    metrics.register_reasons(
        args.cdc_topics.iter().map(String::as_str),
        &handler::reasons(),
    );
    let cdc_metrics = CdcMetrics::register(&metrics);
    metrics
        .spawn_server(&args.metrics_addr, shutdown.clone())
        .context("parsing --metrics-addr")?;
    let positions = if args.check_positions {
        let guard = PositionGuard::connect(args.source.url())
            .context("connecting to the source PostgreSQL")?;
        let checked = check_source(
            &guard,
            &session,
            &statements,
            &args.common.cassandra.keyspace,
            args.runtime.give_up_after,
            &shutdown,
        )
        .await;
        match checked {
            Ok(()) => {}
            // A stop requested while a store was still away: nothing was consumed, so nothing is
            // left undone; the same clean end as a stop while consuming.
            Err(error)
                if matches!(
                    error.downcast_ref::<Interrupted>(),
                    Some(Interrupted::Cancelled)
                ) =>
            {
                tracing::info!("cdcconsumer finished: stopped during start-up, before consuming");
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        if !args.slot.is_empty() {
            tokio::spawn(slot::watch(
                guard.pool().clone(),
                args.slot.clone(),
                metrics.clone(),
                SlotMetrics::register(&metrics),
                Duration::from_secs(args.slot_check_secs),
                shutdown.clone(),
            ));
        }
        Some(guard)
    } else {
        None
    };
    let columns = MirroredColumns::load(&session, &args.common.cassandra.keyspace)
        .await
        .context("reading the mirrored columns (mirrored_columns in cassandra-schema.cql)")?;
    let handler = Arc::new(CdcHandler {
        columns: Arc::new(columns),
        session: Arc::new(session),
        statements,
        dlq,
        metrics: metrics.clone(),
        cdc_metrics,
        lanes: args.lanes,
        gates: KeyGates::default(),
        encoding: Encoding {
            decimals: args.decimal_handling_mode.into(),
            unavailable: args.unavailable_value_placeholder.clone(),
        },
        give_up_after: args.runtime.give_up_after,
        positions,
    });
    config
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest");
    for (key, value) in FETCH_DEFAULTS {
        if config.get(key).is_none() {
            config.set(*key, *value);
        }
    }
    let mut runtime_options = args.runtime.options();
    runtime_options.batch_linger = Duration::from_millis(args.batch_linger_ms);
    runtime_options.pipeline = usize::from(args.pipeline);
    runtime_options.metrics = Some(metrics.clone());
    let topics: Vec<&str> = args.cdc_topics.iter().map(String::as_str).collect();
    metrics.set_ready(true);
    let end = runtime::run(config, &topics, handler, runtime_options, shutdown).await;
    metrics.set_ready(false);
    for topic in &topics {
        println!("cdcconsumer: topic={topic} {}", metrics.summary(topic));
    }
    match end.context("consuming the CDC topics")? {
        RunEnd::Idle => tracing::info!("cdcconsumer finished: idle"),
        RunEnd::Cancelled { stalled } if stalled.is_empty() => {
            tracing::info!("cdcconsumer finished: stopped");
        }
        RunEnd::Cancelled { stalled } => {
            tracing::error!(?stalled, "stopped with stalled partitions");
            bail!("stopped with {} stalled partitions", stalled.len());
        }
        RunEnd::GaveUp {
            topic,
            partition,
            why,
        } => {
            tracing::error!(topic, partition, error = %why, "gave up: a partition's worker ran out of restarts");
            bail!("{topic}/{partition} could not make progress: {why}");
        }
    }
    Ok(())
}

/// Refuses to start on a keyspace that was filled from another PostgreSQL cluster (its LSNs, and
/// so its write timestamps, would shadow the new cluster's changes) or that holds a truncation
/// position beyond the source's WAL. Records the source's identity on first start. Either store
/// being away (a node restarting, PostgreSQL down) is retried within the give-up budget.
async fn check_source(
    guard: &PositionGuard,
    session: &scylla::client::session::Session,
    statements: &Statements,
    keyspace: &str,
    budget: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let reset = "see docs/operations.md, \"A re-initialised database\"";
    // A source that refuses these credentials or this certificate will not change its mind:
    // one clear error now rather than retries for the whole budget.
    let identifier = match guard.system_identifier().await {
        Ok(identifier) => identifier,
        Err(error) if error.is_refusal() => bail!(
            "PostgreSQL refused the connection: {error} (check the user, password, sslmode and \
             sslrootcert in --database-url / DATABASE_URL_FILE)"
        ),
        Err(error) => {
            tracing::warn!(%error, "PostgreSQL not reachable yet; retrying");
            retry(
                "ask the source for its system identifier",
                budget,
                cancel,
                || guard.system_identifier(),
            )
            .await??
        }
    };
    let known = retry("read the keyspace's source", budget, cancel, || {
        statements.source_identifier(session)
    })
    .await??;
    match known {
        Some(known) if known != identifier => bail!(
            "keyspace {keyspace} was filled from PostgreSQL cluster {known}, but the source is \
             cluster {identifier}: its write timestamps would hide the new cluster's changes; {reset}"
        ),
        Some(_) => {}
        None => retry("record the keyspace's source", budget, cancel, || {
            statements.set_source_identifier(session, identifier)
        })
        .await??,
    }
    let wal = retry(
        "ask the source for its WAL position",
        budget,
        cancel,
        || guard.current_wal(),
    )
    .await??;
    let truncations = retry("read truncation positions", budget, cancel, || {
        statements.truncations(session)
    })
    .await??;
    for table in cdc_core::tables::CAPTURED {
        let at = truncations.of(table);
        if at > wal {
            bail!(
                "keyspace {keyspace} records a truncation of {} at LSN {at}, beyond the source's \
                 current WAL position {wal}: it comes from another PostgreSQL cluster or a forged \
                 record; {reset}",
                table.name
            );
        }
    }
    Ok(())
}

/// How `verify` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Cassandra agrees with PostgreSQL.
    Clean,
    /// Rows differ (the report says which).
    Drift,
}

/// Waits until the pipeline is quiet (unless `--quiet-timeout-secs 0`), then compares and prints
/// the report.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<Verdict> {
    let groups = args
        .groups
        .iter()
        .filter(|g| !g.trim().is_empty())
        .map(|g| group_topics(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(args.postgres.url())
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
    let session = args
        .common
        .cassandra
        .connect()
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
    pool.close().await;
    let kafka = args.common.kafka.client_config();
    let (sources, since) = (
        args.dead_letter_topics.clone(),
        args.dead_letters_since.map(|t| t.timestamp_millis()),
    );
    let dead =
        tokio::task::spawn_blocking(move || verify::dead_letters::count(&kafka, &sources, since))
            .await
            .context("counting dead letters")?
            .context("counting dead letters")?;
    println!("{dead}");
    let unexpected = args.fail_on_dead_letters && dead.total() > 0;
    if unexpected {
        println!(
            "verify: {} dead letters where none were expected",
            dead.total()
        );
    }
    Ok(if report.is_clean() && !unexpected {
        Verdict::Clean
    } else {
        Verdict::Drift
    })
}

/// 0: clean, 1: drift, 2: could not verify (not quiet in time, a store unreachable).
pub fn verify_exit_code(outcome: anyhow::Result<Verdict>) -> i32 {
    match outcome {
        Ok(Verdict::Clean) => 0,
        Ok(Verdict::Drift) => 1,
        Err(error) => {
            eprintln!("error: {error:#}");
            2
        }
    }
}

/// The binary's `main` ([`cdc_core::shutdown::block_on`] says why it lives here).
pub fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads.
    let allocator = crate::memory::tune();
    let options = Options::parse();
    cdc_core::shutdown::block_on(dispatch(options, allocator))
}

async fn dispatch(options: Options, allocator: Vec<crate::memory::Setting>) -> anyhow::Result<()> {
    match options.command {
        None => {
            options.run.common.log.init();
            tracing::debug!(?allocator, "allocator settings applied");
            run(options.run, cdc_core::shutdown::install()).await
        }
        Some(Command::Verify(args)) => {
            args.common.log.init();
            std::process::exit(verify_exit_code(verify(*args).await))
        }
        Some(Command::Resnapshot(args)) => {
            args.log.init();
            let outcome = crate::resnapshot::run(&args, cdc_core::shutdown::install()).await;
            std::process::exit(crate::resnapshot::exit_code(&outcome))
        }
        Some(Command::Columns(args)) => {
            args.log.init();
            match crate::columns::run_command(&args).await {
                Ok(()) => Ok(()),
                Err(error) => {
                    tracing::error!(%error, "cdcconsumer columns");
                    eprintln!("error: {error}");
                    std::process::exit(error.exit_code())
                }
            }
        }
        Some(Command::Dlq(args)) => {
            args.command.log().init();
            std::process::exit(dlq(*args).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::ClientConfig;

    use super::FETCH_DEFAULTS;

    /// librdkafka refuses a consumer with a setting it does not know or a value out of range, so
    /// a misspelt default fails here rather than at start.
    #[test]
    fn fetch_defaults_are_settings_librdkafka_accepts() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "fetch-defaults-test");
        for (key, value) in FETCH_DEFAULTS {
            config.set(*key, *value);
        }
        let created: Result<BaseConsumer, _> = config.create();
        assert!(created.is_ok(), "{:?}", created.err());
        // The backoff is what keeps a drained partition fetched: it must stay well under the 1 s
        // librdkafka would otherwise wait.
        let backoff = FETCH_DEFAULTS
            .iter()
            .find(|(key, _)| *key == "fetch.queue.backoff.ms")
            .and_then(|(_, value)| value.parse::<u64>().ok());
        assert!(backoff.is_some_and(|ms| ms <= 100), "{backoff:?}");
    }
}
