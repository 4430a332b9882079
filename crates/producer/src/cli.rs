//! The producer's command line, and a run: prepare the topics, send the stream, report.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use cdc_core::config::{parse_duration, parse_time, KafkaArgs, LogArgs, TopicArgs};
use cdc_core::generator::{random_seed, GeneratorConfig};
use cdc_core::topics;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::send::{self, ProducerSettings, Summary};

/// How long topic creation and the layout check may take.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes User and Order business events to Kafka (idempotent, acks=all), then prints a summary.
#[derive(Debug, clap::Parser)]
#[command(name = "producer", version, about)]
pub struct Cli {
    /// Users to create.
    #[arg(long, env = "PRODUCER_USERS", default_value_t = 100)]
    pub users: usize,

    /// Orders to create.
    #[arg(long, env = "PRODUCER_ORDERS", default_value_t = 300)]
    pub orders: usize,

    /// Events per second; 0 sends as fast as the cluster acknowledges.
    #[arg(long, env = "PRODUCER_RATE", default_value_t = 0)]
    pub rate: u32,

    /// Seed of the event stream; random when not given (it is logged and printed in the summary,
    /// so any run can be repeated).
    #[arg(long, env = "PRODUCER_SEED")]
    pub seed: Option<u64>,

    /// Time of the first event (RFC 3339, e.g. 2026-11-24T10:00:00Z); now when not given.
    #[arg(long, env = "PRODUCER_START_TIME", value_parser = parse_time)]
    pub start_time: Option<DateTime<Utc>>,

    /// Stop generating after this long (e.g. 30s, 5m, 1h30m); a normal end.
    #[arg(long, env = "PRODUCER_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Write one line per event to this file: its position in the stream and whether the cluster
    /// acknowledged it (`<seq> ok <partition> <offset>`, `<seq> failed <error>`, `<seq> refused
    /// <error>`), for checking end to end that nothing acknowledged was lost.
    #[arg(long, env = "PRODUCER_ACK_LOG")]
    pub ack_log: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub topics: TopicArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Creates (or checks) the topics and sends the stream until it ends, `--duration` passes or
/// `shutdown` fires. Fails when anything sent was not acknowledged, after printing the summary.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> Result<Summary> {
    let seed = cli.seed.unwrap_or_else(random_seed);
    let start = cli.start_time.unwrap_or_else(Utc::now);
    tracing::info!(seed, start = %start.to_rfc3339(), "event stream seed (pass --seed and --start-time to repeat this run)");

    let specs = cli.topics.specs();
    if let Err(error) =
        topics::ensure_topics_with(&cli.kafka.client_config(), &specs, TOPIC_TIMEOUT).await
    {
        tracing::error!(%error, retryable = error.is_retryable(), "topic set-up failed");
        return Err(error).context("setting up the topics");
    }

    let mut settings = ProducerSettings::new(
        GeneratorConfig {
            users: cli.users,
            orders: cli.orders,
            seed,
            start,
        },
        &cli.topics.users_topic,
        &cli.topics.orders_topic,
    );
    settings.rate = cli.rate;
    settings.duration = cli.duration;
    settings.ack_log = cli.ack_log;

    let client = send::client_config(cli.kafka.client_config());
    let summary = send::run(client, settings, shutdown).await?;
    tracing::info!(
        sent = summary.sent,
        acknowledged = summary.acknowledged,
        failed = summary.failed,
        elapsed_s = summary.elapsed.as_secs_f64(),
        seed = summary.seed,
        stopped = summary.stopped.as_str(),
        "producer finished"
    );
    println!("{summary}");
    if !summary.is_success() {
        bail!(
            "{} of {} events were not acknowledged ({} failed)",
            summary.sent - summary.acknowledged.min(summary.sent),
            summary.sent,
            summary.failed
        );
    }
    Ok(summary)
}

/// The binary's `main` ([`cdc_core::shutdown::block_on`] says why it lives here).
pub fn main() -> Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    cli.log.init();
    cdc_core::shutdown::block_on(async {
        let shutdown = cdc_core::shutdown::install();
        run(cli, shutdown).await.map(drop)
    })
}
