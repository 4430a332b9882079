//! The consumer's command line: a run (no subcommand) — prepare the topics and the schema, then
//! consume the users and orders topics (one consumer group each) until shutdown or the idle
//! timeout — and `dlq list` / `dlq replay` for its dead letters.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use cdc_core::config::{KafkaArgs, LogArgs, PostgresArgs, RuntimeArgs, TopicArgs};
use cdc_core::dlq::DeadLetters;
use cdc_core::events::EntityKind;
use cdc_core::metrics::Metrics;
use cdc_core::replay::DlqCommand;
use cdc_core::runtime::{self, RunEnd};
use cdc_core::topics::{ensure_topics_with, TopicSpec};
use tokio_util::sync::CancellationToken;

use crate::handler::{self, EventHandler};
use crate::parents::{UsersProgress, UsersStream};
use crate::sink;
use crate::unknown_fields::UnknownFields;

/// Applies User and Order events from Kafka to PostgreSQL, idempotently and in order per entity.
#[derive(Debug, clap::Parser)]
#[command(name = "consumer", version, args_conflicts_with_subcommands = true)]
pub struct Options {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The dead letters of the users and orders topics: list them, or replay a selection to
    /// its source topics once the cause is fixed.
    Dlq(DlqArgs),
}

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// Topic of user events (its dead letters are in `<topic>.dlq`).
    #[arg(long, env = "USERS_TOPIC", default_value = "users", global = true)]
    pub users_topic: String,
    /// Topic of order events.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders", global = true)]
    pub orders_topic: String,
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// Lists or replays dead letters (the users and orders topics' unless `--source-topic` says
/// otherwise); returns the exit status.
pub async fn dlq(args: DlqArgs) -> i32 {
    let topics = [args.users_topic, args.orders_topic];
    cdc_core::replay::exit_code(cdc_core::replay::run(args.command, &topics).await)
}

/// A run's options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[arg(long, env = "USERS_GROUP", default_value = "cdc-users-consumer")]
    pub users_group: String,
    #[arg(long, env = "ORDERS_GROUP", default_value = "cdc-orders-consumer")]
    pub orders_group: String,
    /// How long an order waits for its user before the consumer asks whether the user can still
    /// come (the users stream not yet applied past the order's time: it waits again; applied past
    /// it: the order is dead-lettered as `missing_parent`).
    #[arg(long, env = "PARENT_WAIT_SECS", default_value_t = 30)]
    pub parent_wait_secs: u64,
    /// The longest a record may take from the producer's send to its append in Kafka: the
    /// producer's `message.timeout.ms` (120 s) plus a margin for clock differences. A users
    /// partition with nothing newer than an order is known to hold no late user for it only
    /// after this long (a user sent before the order may still be on its way).
    #[arg(long, env = "MAX_DELIVERY_TIME", default_value = "150s", value_parser = cdc_core::config::parse_duration)]
    pub max_delivery_time: Duration,
    /// Address of the metrics (`/metrics`) and health (`/livez`, `/readyz`) endpoint; empty to
    /// disable.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Database connections (shared by all partition workers).
    #[arg(long, env = "DATABASE_CONNECTIONS", default_value_t = 8)]
    pub database_connections: u32,
    /// Apply postgres-schema.sql at start; `false` runs with a role that may only read and write
    /// the tables (the schema must then be in place).
    #[arg(long, env = "APPLY_SCHEMA", default_value_t = true, action = clap::ArgAction::Set)]
    pub apply_schema: bool,
}

/// Prepares topics and schema, consumes until `shutdown` fires or the idle timeout passes, and
/// prints one summary line per topic. Fails when a topic's consumption failed, ended with a
/// stalled partition, or gave up.
pub async fn run(options: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(?options, "starting consumer");
    let kafka = options.kafka.client_config();
    options
        .runtime
        .check(&kafka)
        .context("checking the options")?;
    let rf = options.topics.replication_factor;
    let mut specs = options.topics.specs();
    for topic in [&options.topics.users_topic, &options.topics.orders_topic] {
        specs.push(TopicSpec::new(cdc_core::dlq::topic_for(topic), 1, rf));
    }
    ensure_topics_with(&kafka, &specs, Duration::from_secs(30))
        .await
        .context("preparing topics")?;
    let url = options.postgres.url();
    let pool = if options.apply_schema {
        sink::connect(url, options.database_connections)
            .await
            .context("connecting to PostgreSQL and applying the schema")?
    } else {
        sink::pool(url, options.database_connections)
            .await
            .context("connecting to PostgreSQL")?
    };
    let dlq = DeadLetters::new(
        cdc_core::dlq::producer(options.kafka.client_config())
            .context("creating the dead-letter producer")?,
        options.runtime.give_up_after,
    );

    let metrics = Metrics::default();
    metrics.register_reasons(
        [
            options.topics.users_topic.as_str(),
            options.topics.orders_topic.as_str(),
        ],
        &handler::reasons(),
    );
    metrics
        .spawn_server(&options.metrics_addr, shutdown.clone())
        .context("parsing --metrics-addr")?;
    let waiting = prometheus_client::metrics::gauge::Gauge::default();
    metrics.register(
        "orders_waiting_for_user",
        "Orders held back because their user is not in PostgreSQL yet",
        waiting.clone(),
    );
    let unknown_fields = UnknownFields::register(&metrics);
    let users_stream = UsersStream {
        kafka: options.kafka.client_config(),
        topic: options.topics.users_topic.clone(),
        group: options.users_group.clone(),
        max_delivery_time: options.max_delivery_time,
    };
    let mut runtime_options = options.runtime.options();
    runtime_options.metrics = Some(metrics.clone());
    let mut runs = Vec::new();
    for (kind, topic, group) in [
        (
            EntityKind::User,
            options.topics.users_topic.clone(),
            options.users_group.clone(),
        ),
        (
            EntityKind::Order,
            options.topics.orders_topic.clone(),
            options.orders_group.clone(),
        ),
    ] {
        let handler = Arc::new(EventHandler {
            kind,
            pool: pool.clone(),
            dlq: dlq.clone(),
            parent_wait: Duration::from_secs(options.parent_wait_secs),
            give_up_after: options.runtime.give_up_after,
            metrics: metrics.clone(),
            users: (kind == EntityKind::Order)
                .then(|| Arc::new(users_stream.clone()) as Arc<dyn UsersProgress>),
            waiting: waiting.clone(),
            unknown_fields: unknown_fields.clone(),
        });
        let mut config = options.kafka.client_config();
        config
            .set("group.id", &group)
            .set("auto.offset.reset", "earliest");
        let shutdown = shutdown.clone();
        let runtime_options = runtime_options.clone();
        runs.push((
            topic.clone(),
            tokio::spawn(async move {
                runtime::run(
                    config,
                    &[topic.as_str()],
                    handler,
                    runtime_options,
                    shutdown,
                )
                .await
            }),
        ));
    }
    let mut failed = false;
    metrics.set_ready(true);
    for (topic, run) in runs {
        let end = run.await.context("consumer task panicked")?;
        let summary = metrics.summary(&topic);
        failed |= !report_end(&topic, &end, &summary);
        if !matches!(end, Ok(RunEnd::Idle | RunEnd::Cancelled { .. })) {
            // One topic's consumption cannot go on: stop the other one too.
            shutdown.cancel();
        }
        println!("consumer: topic={topic} {summary}");
    }
    metrics.set_ready(false);
    pool.close().await;
    if failed {
        bail!("the consumer did not end cleanly; see the log");
    }
    Ok(())
}

/// Logs how one topic's consumption ended; `false` when it did not end cleanly.
pub fn report_end(topic: &str, end: &Result<RunEnd, runtime::RuntimeError>, summary: &str) -> bool {
    match end {
        Ok(RunEnd::Idle) => {
            tracing::info!(topic, %summary, "finished: idle");
            true
        }
        Ok(RunEnd::Cancelled { stalled }) if stalled.is_empty() => {
            tracing::info!(topic, %summary, "finished: stopped");
            true
        }
        Ok(RunEnd::Cancelled { stalled }) => {
            tracing::error!(topic, ?stalled, %summary, "stopped with stalled partitions; their records after the stored offsets are left for the next run");
            false
        }
        Ok(RunEnd::GaveUp {
            topic,
            partition,
            why,
        }) => {
            tracing::error!(topic, partition, error = %why, %summary, "gave up: a partition's worker ran out of restarts");
            false
        }
        Err(error) => {
            tracing::error!(topic, error = %error, "consumer failed");
            false
        }
    }
}

/// The binary's `main` ([`cdc_core::shutdown::block_on`] says why it lives here).
pub fn main() -> anyhow::Result<()> {
    let options = <Options as clap::Parser>::parse();
    cdc_core::shutdown::block_on(async {
        match options.command {
            None => {
                options.run.log.init();
                run(options.run, cdc_core::shutdown::install()).await
            }
            Some(Command::Dlq(args)) => {
                args.command.log().init();
                std::process::exit(dlq(args).await)
            }
        }
    })
}
