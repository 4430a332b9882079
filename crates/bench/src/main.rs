//! `bench`: benchmarks of the pipeline's binaries against plain baselines, run on the real local
//! stack. Each subcommand measures the binary and its baseline in the same run, on the same
//! machine, with the same data, and prints figures and ratios (median of `--runs`). These are
//! commands that report numbers, not tests that pass or fail on timing.
//!
//! ```sh
//! cargo build --release -p bench -p consumer -p producer
//! cargo run --release -p bench -- consumer --runs 3
//! cargo run --release -p bench -- producer --runs 3 [--breakdown]
//! cargo build --release -p bench -p cdcconsumer
//! cargo run --release -p bench -- cdc --runs 3
//! cargo build --release -p bench -p producer -p consumer -p cdcconsumer
//! cargo run --release -p bench -- pipeline --rates 50,100,200,400
//! ```
//!
//! The binaries are taken from the folder of the `bench` executable (`target/release`), or from
//! `--bin-dir`. Kafka and PostgreSQL come from `KAFKA_BROKERS` / `--brokers` and `DATABASE_URL` /
//! `--database-url` (defaults: the local stack). Everything a run creates (topics, consumer groups,
//! rows) is removed at the end, also after an error or Ctrl-C.
//!
//! ## `consumer`: ingest throughput into PostgreSQL
//!
//! The [`Generator`](cdc_core::generator::Generator) stream (fixed seed and start time; `--users`,
//! `--orders`) is written once, idempotent with acks=all, to fresh topics (users 3 partitions,
//! orders 5, RF 3). Then, per run and in rotating order, each variant reads those topics from the
//! beginning and writes the same rows:
//!
//! - **consumer binary** (`target/release/consumer`) with a fresh consumer group, `MAX_BATCH` 500
//!   and `IDLE_TIMEOUT_SECS=3`; its peak RSS is sampled from `/proc/<pid>/status` (VmHWM) every
//!   100 ms. Its dead-letter topics are created up front so no run pays for that.
//! - **plain UNNEST upsert loop**: one in-process task, a `StreamConsumer` assigned to every
//!   partition (no group, nothing committed), records decoded with
//!   [`events::decode`](cdc_core::events::decode) and written in batches of 500 (and 5000) by
//!   [`pg::apply_users`](consumer::sink::apply_users) / [`pg::apply_orders`](consumer::sink::apply_orders)
//!   over one connection: the users topic first, then the orders topic; no per-partition workers,
//!   no dead-letter topic, no retries. The ratios are against this loop at batch 500.
//! - **COPY staging loop**: the same loop, but each batch goes through `COPY … FROM STDIN (FORMAT
//!   csv)` into a temporary table and one `INSERT … SELECT … ON CONFLICT` with the same version guard
//!   (answers "UNNEST or COPY into a staging table?").
//!
//! Before every run the benchmark's rows are deleted (orders, then users) and the tables vacuumed,
//! so every variant writes the same rows into the same starting state; then the benchmark waits (at
//! most `--quiet-wait-secs`) for the machine's CPU to settle. Every variant is timed the same way:
//! from spawn (or task start) until a poll of PostgreSQL every 100 ms sees every user and order at
//! the highest version of the stream. The "after 1st row" column leaves out start-up (process start,
//! topic check, schema, group join, first fetch).
//!
//! ## `producer`: throughput at acks=all
//!
//! Per run, in alternating order, into fresh topics (users 3 / orders 5 partitions, RF 3):
//!
//! - **producer binary** (`target/release/producer --rate 0`, same `--seed` and `--start-time`):
//!   the figure is `sent / elapsed` from its summary line; its wall time from spawn to exit and its
//!   peak RSS are reported too.
//! - **bare send loop**: a `ThreadedProducer` with the same client settings
//!   ([`producer::client_config`](producer::send::client_config): idempotence, acks=all,
//!   linger.ms=50, lz4), the same keys and byte-identical payloads generated before the clock starts,
//!   timed from the first send until every delivery report is in.
//!
//! `--breakdown` adds in-process variants that split the gap between the two: the bare loop
//! generating and encoding each event just before sending it,
//! [`producer::run`](producer::send::run) (what the binary calls), and both loops with
//! librdkafka's default queue limits instead of the producer's byte bound.
//!
//! Afterwards every variant's topics must hold every event exactly once, spread identically over
//! the partitions.
//!
//! ## `cdc`: cdcconsumer's write rate, end-to-end latency and memory
//!
//! cdcconsumer's write rate into Cassandra against a bare scylla-driver loop with the same prepared
//! statements, consistency and in-flight writes; commit → Kafka and commit → Cassandra latency at a
//! fixed load on the real Debezium topics; cdcconsumer's peak RSS. See [`cdc_bench`] for the
//! method. Everything it creates (topics, consumer groups, keyspaces) is removed at the end; the
//! rows the latency test commits to PostgreSQL stay, as ordinary data the pipeline mirrors.
//!
//! ## `pipeline`: the whole pipeline's sustainable rate
//!
//! The producer at rising rates (`--rates`, `--window-secs` each) through the consumer, Debezium
//! and cdcconsumer; every stage's backlog read every few seconds, the highest rate at which all
//! stay bounded, the stage that falls behind first, each component's CPU share, and an SVG chart of
//! the curve. See [`pipeline_bench`] for the method.

mod cdc;
mod charts;
mod common;
mod connect;
mod consumer_bench;
mod copy_sink;
mod pipeline_bench;
mod producer_bench;

use anyhow::{anyhow, Result};
use cdc_core::config::{ExposeSecret, KafkaArgs, LogArgs, Secret};
use clap::{Parser, Subcommand};

use crate::common::Cleanup;

/// Benchmarks of the producer, consumer and cdcconsumer binaries against plain baselines.
#[derive(Debug, Parser)]
#[command(name = "bench", about)]
struct Cli {
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consumer ingest throughput into PostgreSQL vs a plain batched upsert loop and COPY.
    Consumer(consumer_bench::ConsumerArgs),
    /// Producer throughput at acks=all vs a bare rdkafka send loop.
    Producer(producer_bench::ProducerArgs),
    /// cdcconsumer: write rate vs a bare scylla loop, end-to-end latency, peak RSS.
    Cdc(Box<cdc::CdcArgs>),
    /// The whole pipeline's sustainable rate: every stage's backlog at rising producer rates.
    Pipeline(Box<pipeline_bench::PipelineArgs>),
}

/// Connection settings the benchmarks share.
#[derive(Debug)]
pub struct Context {
    kafka: KafkaArgs,
    brokers: String,
    database_url: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.log.init();
    if cfg!(debug_assertions) {
        tracing::warn!(
            "bench was built without --release: the in-process baselines run unoptimised; use \
             `cargo run --release -p bench`"
        );
    }
    let ctx = Context {
        kafka: cli.kafka.clone(),
        brokers: cli.kafka.brokers.clone(),
        database_url: cli.database_url.expose_secret().to_owned(),
    };
    let mut cleanup = Cleanup::default();
    let outcome = tokio::select! {
        outcome = run(&ctx, &cli.command, &mut cleanup) => outcome,
        signal = tokio::signal::ctrl_c() => match signal {
            Ok(()) => Err(anyhow!("interrupted")),
            Err(error) => Err(anyhow!("listening for Ctrl-C failed: {error}")),
        },
    };
    cleanup.run(&ctx.brokers, &ctx.database_url).await;
    outcome
}

async fn run(ctx: &Context, command: &Command, cleanup: &mut Cleanup) -> Result<()> {
    match command {
        Command::Consumer(args) => consumer_bench::run(ctx, args, cleanup).await,
        Command::Producer(args) => producer_bench::run(ctx, args, cleanup).await,
        Command::Cdc(args) => cdc::run(ctx, args, cleanup).await,
        Command::Pipeline(args) => pipeline_bench::run(ctx, args, cleanup).await,
    }
}
