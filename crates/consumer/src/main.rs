//! `consumer`: applies business events from Kafka to PostgreSQL, one worker per partition.
//! See README.md for options and guarantees; the logic lives in `cdc_core::ingest`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cdc_core::config::{KafkaArgs, LogArgs, Secret};
use cdc_core::events::EntityKind;
use cdc_core::ingest::EventHandler;
use cdc_core::metrics::Metrics;
use cdc_core::runtime::{self, RuntimeOptions};
use cdc_core::topics::{ensure_topics_with, TopicSpec};
use clap::Parser;

/// Applies User and Order events from Kafka to PostgreSQL, idempotently and in order per entity.
#[derive(Debug, Parser)]
#[command(version)]
struct Options {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    log: LogArgs,
    /// PostgreSQL connection URL (the password is never logged).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://cdc_user:cdc_password@127.0.0.1:5432/cdc_db"
    )]
    database_url: Secret,
    #[arg(long, env = "USERS_TOPIC", default_value = "users")]
    users_topic: String,
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    orders_topic: String,
    #[arg(long, env = "USERS_GROUP", default_value = "cdc-users-consumer")]
    users_group: String,
    #[arg(long, env = "ORDERS_GROUP", default_value = "cdc-orders-consumer")]
    orders_group: String,
    #[arg(long, env = "USERS_PARTITIONS", default_value_t = 3)]
    users_partitions: i32,
    #[arg(long, env = "ORDERS_PARTITIONS", default_value_t = 5)]
    orders_partitions: i32,
    #[arg(long, env = "REPLICATION_FACTOR", default_value_t = 3)]
    replication_factor: i32,
    /// Stop after this many seconds without a record; 0 runs until SIGINT/SIGTERM.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 10)]
    idle_timeout_secs: u64,
    /// Most records applied in one transaction.
    #[arg(long, env = "MAX_BATCH", default_value_t = 500)]
    max_batch: usize,
    /// How long an order waits for its user before it is dead-lettered.
    #[arg(long, env = "PARENT_WAIT_SECS", default_value_t = 30)]
    parent_wait_secs: u64,
    /// Address of the metrics (`/metrics`, Prometheus text) and health (`/health`) endpoint;
    /// empty to disable.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: String,
    /// Database connections (shared by all partition workers).
    #[arg(long, env = "DATABASE_CONNECTIONS", default_value_t = 8)]
    database_connections: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    options.log.init();
    let shutdown = cdc_core::shutdown::install();
    tracing::info!(?options, "starting consumer");

    let dlq_rf = options.replication_factor;
    ensure_topics_with(
        &options.kafka.client_config(),
        &[
            TopicSpec::new(
                &options.users_topic,
                options.users_partitions,
                options.replication_factor,
            ),
            TopicSpec::new(
                &options.orders_topic,
                options.orders_partitions,
                options.replication_factor,
            ),
            TopicSpec::new(cdc_core::dlq::topic_for(&options.users_topic), 1, dlq_rf),
            TopicSpec::new(cdc_core::dlq::topic_for(&options.orders_topic), 1, dlq_rf),
        ],
        Duration::from_secs(30),
    )
    .await
    .context("preparing topics")?;
    let pool = cdc_core::pg::connect(options.database_url.expose(), options.database_connections)
        .await
        .context("connecting to PostgreSQL and applying the schema")?;
    let dlq = cdc_core::dlq::producer(options.kafka.client_config())
        .context("creating the dead-letter producer")?;

    let metrics = Metrics::default();
    metrics
        .spawn_server(&options.metrics_addr, shutdown.clone())
        .context("parsing --metrics-addr")?;
    let runtime_options = RuntimeOptions {
        max_batch: options.max_batch,
        lag: Some(metrics.lag.clone()),
        idle_timeout: (options.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(options.idle_timeout_secs)),
        ..RuntimeOptions::default()
    };
    let mut runs = Vec::new();
    for (kind, topic, group) in [
        (
            EntityKind::User,
            options.users_topic.clone(),
            options.users_group.clone(),
        ),
        (
            EntityKind::Order,
            options.orders_topic.clone(),
            options.orders_group.clone(),
        ),
    ] {
        let handler = Arc::new(EventHandler {
            kind,
            pool: pool.clone(),
            dlq: Clone::clone(&dlq),
            parent_wait: Duration::from_secs(options.parent_wait_secs),
            metrics: metrics.clone(),
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
        match end {
            Ok(end) => tracing::info!(topic, ?end, %summary, "finished"),
            Err(error) => {
                tracing::error!(topic, error = %error, "consumer failed");
                failed = true;
            }
        }
        println!("consumer: topic={topic} {summary}");
    }
    metrics.set_ready(false);
    pool.close().await;
    if failed {
        anyhow::bail!("a consumer failed; see the log");
    }
    Ok(())
}
