//! `bench producer`: throughput at acks=all / RF 3 of the producer binary against a bare rdkafka
//! send loop with the same client settings, keys and payload bytes, each into its own fresh topics.
//! `--breakdown` adds in-process variants that split the gap between the two into its parts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cdc_core::generator::Generator;
use cdc_core::topics::TopicSpec;
use chrono::Utc;
use producer::send::ProducerSettings;
use tokio_util::sync::CancellationToken;

use crate::common::{
    self, create_topics, kafka_env, locate_binary, median, mib, partition_counts, send_all, tail,
    unique_name, wait_until_quiet, Cleanup, Record, Subject, Workload, WorkloadArgs,
    ORDERS_PARTITIONS, START_TIME, USERS_PARTITIONS,
};
use crate::Context as BenchContext;

#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Also run, in-process: the bare loop generating and encoding while it sends,
    /// `producer::send::run`, and both loops with librdkafka's default queue bounds instead of
    /// the producer's. Together they show where the binary's time goes.
    #[arg(long)]
    pub breakdown: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The producer binary; its own summary line.
    Binary,
    /// Bare ThreadedProducer loop over records encoded before the clock starts.
    Bare,
    /// The bare loop, generating and encoding each event just before sending it.
    BareInline,
    /// `producer::send::run` in this process, default settings.
    Library,
    /// The bare loop with librdkafka's default queue bounds (100,000 records, 1 GiB): the whole
    /// workload fits, so nothing ever waits for room.
    BareUnbounded,
    /// `producer::send::run` in this process with librdkafka's default queue bounds.
    LibraryUnbounded,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Binary => "producer binary (its own sent/elapsed)",
            Self::Bare => "bare ThreadedProducer loop (sent → all acked)",
            Self::BareInline => "  bare loop, generating + encoding inline",
            Self::Library => "  producer::run in-process",
            Self::BareUnbounded => "  bare loop, librdkafka's default queue bounds",
            Self::LibraryUnbounded => "  producer::run, librdkafka's default queue bounds",
        }
    }

    /// Runs with librdkafka's default queue bounds rather than the producer's.
    fn unbounded(self) -> bool {
        matches!(self, Self::BareUnbounded | Self::LibraryUnbounded)
    }
}

/// librdkafka's own defaults for the producer queue, which [`producer::send::client_config`]
/// lowers.
const LIBRDKAFKA_QUEUE_DEFAULTS: &[(&str, &str)] = &[
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "1048576"),
];

/// One variant's topics: (users, orders).
#[derive(Debug, Clone)]
struct Topics {
    users: String,
    orders: String,
}

impl Topics {
    fn new() -> Self {
        Self {
            users: unique_name("bench_prod_users"),
            orders: unique_name("bench_prod_orders"),
        }
    }

    fn specs(&self, rf: i32) -> [TopicSpec; 2] {
        [
            TopicSpec::new(&self.users, USERS_PARTITIONS, rf),
            TopicSpec::new(&self.orders, ORDERS_PARTITIONS, rf),
        ]
    }
}

/// One measured run.
#[derive(Debug, Clone)]
struct Sample {
    events_per_s: f64,
    seconds: f64,
    /// Binary only: spawn to exit (adds process start, topic check, client set-up) and peak RSS.
    wall: Option<f64>,
    peak_rss_kib: Option<u64>,
    busy_before: Option<f64>,
}

pub async fn run(ctx: &BenchContext, args: &ProducerArgs, cleanup: &mut Cleanup) -> Result<()> {
    let producer_bin = locate_binary("producer", args.workload.run.bin_dir.as_deref())?;
    let workload = Workload::generate(args.workload.generator_config()?);
    let events = workload.records.len();
    tracing::info!(events, "generated the workload");
    let records: Arc<Vec<Record>> = Arc::new(workload.records);
    let rf = args.workload.run.replication_factor;

    let mut variants = vec![Variant::Binary, Variant::Bare];
    if args.breakdown {
        variants.extend([
            Variant::BareInline,
            Variant::Library,
            Variant::BareUnbounded,
            Variant::LibraryUnbounded,
        ]);
    }
    // Fresh topics for every run of every variant, created and ready before anything is measured.
    let rounds: Vec<Vec<Topics>> = (0..args.workload.run.runs)
        .map(|_| variants.iter().map(|_| Topics::new()).collect())
        .collect();
    let specs: Vec<TopicSpec> = rounds.iter().flatten().flat_map(|t| t.specs(rf)).collect();
    cleanup
        .topics
        .extend(specs.iter().map(|spec| spec.name.clone()));
    create_topics(&ctx.brokers, &specs).await?;

    let load_before = common::load_average();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for (round, topics) in rounds.iter().enumerate() {
        // Rotate the order every round so no variant always goes first.
        let n = variants.len();
        for i in 0..n {
            let index = (i + round) % n;
            let variant = variants[index];
            let busy_before =
                wait_until_quiet(Duration::from_secs(args.workload.quiet_wait_secs)).await;
            let sample = measure(
                ctx,
                args,
                variant,
                &producer_bin,
                &topics[index],
                &records,
                busy_before,
            )
            .await
            .with_context(|| format!("round {}: {}", round + 1, variant.label()))?;
            tracing::info!(
                round = round + 1,
                variant = variant.label().trim(),
                events_per_s = format!("{:.0}", sample.events_per_s),
                "measured"
            );
            samples[index].push(sample);
        }
        check_same_distribution(&ctx.brokers, topics, events).await?;
    }
    let load_after = common::load_average();

    report(
        args,
        &producer::send::client_config(ctx.kafka.client_config()),
        events,
        &variants,
        &samples,
        workload.generate_and_encode,
        (load_before, load_after),
    );
    Ok(())
}

async fn measure(
    ctx: &BenchContext,
    args: &ProducerArgs,
    variant: Variant,
    bin: &std::path::Path,
    topics: &Topics,
    records: &Arc<Vec<Record>>,
    busy_before: Option<f64>,
) -> Result<Sample> {
    let events = records.len();
    let timeout = args.workload.run.run_timeout();
    let mut config = producer::send::client_config(ctx.kafka.client_config());
    if variant.unbounded() {
        for (key, value) in LIBRDKAFKA_QUEUE_DEFAULTS {
            config.set(*key, *value);
        }
    }
    let sample = |seconds: f64| Sample {
        events_per_s: events as f64 / seconds,
        seconds,
        wall: None,
        peak_rss_kib: None,
        busy_before,
    };
    match variant {
        Variant::Binary => run_binary(ctx, args, bin, topics, events, busy_before).await,
        Variant::Bare | Variant::BareUnbounded => {
            let records = Arc::clone(records);
            let topics = topics.clone();
            let elapsed = tokio::task::spawn_blocking(move || {
                send_all(
                    &config,
                    records.iter(),
                    &topics.users,
                    &topics.orders,
                    timeout,
                )
            })
            .await??;
            Ok(sample(elapsed.as_secs_f64()))
        }
        Variant::BareInline => {
            let generator = args.workload.generator_config()?;
            let topics = topics.clone();
            let elapsed = tokio::task::spawn_blocking(move || {
                let records = Generator::new(generator).map(|event| Record::of(&event));
                send_all(&config, records, &topics.users, &topics.orders, timeout)
            })
            .await??;
            Ok(sample(elapsed.as_secs_f64()))
        }
        Variant::Library | Variant::LibraryUnbounded => {
            let mut settings = ProducerSettings::new(
                args.workload.generator_config()?,
                &topics.users,
                &topics.orders,
            );
            settings.progress = false;
            let summary = producer::send::run(config, settings, CancellationToken::new())
                .await
                .context("producer::send::run")?;
            ensure!(
                summary.is_success() && summary.sent == events as u64,
                "not every event was delivered: {summary}"
            );
            Ok(Sample {
                events_per_s: summary.rate(),
                ..sample(summary.elapsed.as_secs_f64())
            })
        }
    }
}

async fn run_binary(
    ctx: &BenchContext,
    args: &ProducerArgs,
    bin: &std::path::Path,
    topics: &Topics,
    events: usize,
    busy_before: Option<f64>,
) -> Result<Sample> {
    let w = &args.workload;
    let mut command = tokio::process::Command::new(bin);
    command
        .env_remove("RUST_LOG")
        .env("LOG_LEVEL", "warn")
        .args(["--users", &w.users.to_string()])
        .args(["--orders", &w.orders.to_string()])
        .args(["--seed", &w.seed.to_string()])
        .args(["--start-time", START_TIME])
        .args(["--rate", "0"])
        .args(["--users-topic", &topics.users])
        .args(["--orders-topic", &topics.orders])
        .args(["--users-partitions", &USERS_PARTITIONS.to_string()])
        .args(["--orders-partitions", &ORDERS_PARTITIONS.to_string()])
        .args([
            "--replication-factor",
            &w.run.replication_factor.to_string(),
        ]);
    kafka_env(&mut command, &ctx.kafka);
    let started = Instant::now();
    let subject = Subject::spawn(command)?;
    let finished = subject.finish(w.run.run_timeout()).await?;
    let wall = started.elapsed().as_secs_f64();
    ensure!(
        finished.status.success(),
        "the producer exited with {}:\n{}",
        finished.status,
        tail(&finished.stderr, 40)
    );
    let summary = parse_summary(&finished.stdout)?;
    ensure!(
        summary.sent == events as u64
            && summary.acknowledged == summary.sent
            && summary.failed == 0,
        "the producer did not deliver all {events} events: {summary:?}"
    );
    Ok(Sample {
        events_per_s: summary.rate,
        seconds: summary.elapsed,
        wall: Some(wall),
        peak_rss_kib: finished.peak_rss_kib,
        busy_before,
    })
}

/// The producer's last line:
/// `producer: sent=N acknowledged=N failed=N elapsed=S.SSs rate=R events/s seed=SEED`.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    sent: u64,
    acknowledged: u64,
    failed: u64,
    elapsed: f64,
    /// sent / elapsed, computed by the binary from the unrounded elapsed time.
    rate: f64,
}

fn parse_summary(stdout: &str) -> Result<Summary> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("producer: sent="))
        .with_context(|| format!("no summary line in the producer's output:\n{stdout}"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|token| token.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("`{name}=` missing in `{line}`"))
    };
    Ok(Summary {
        sent: field("sent")?.parse()?,
        acknowledged: field("acknowledged")?.parse()?,
        failed: field("failed")?.parse()?,
        elapsed: field("elapsed")?.trim_end_matches('s').parse()?,
        rate: field("rate")?.parse()?,
    })
}

/// Every variant wrote every event exactly once (idempotence) and, with the same keys, into the
/// same partitions.
async fn check_same_distribution(brokers: &str, topics: &[Topics], events: usize) -> Result<()> {
    let mut first: Option<(Vec<i64>, Vec<i64>)> = None;
    for t in topics {
        let counts = (
            partition_counts(brokers, &t.users, USERS_PARTITIONS).await?,
            partition_counts(brokers, &t.orders, ORDERS_PARTITIONS).await?,
        );
        let total: i64 = counts.0.iter().chain(&counts.1).sum();
        ensure!(
            total == events as i64,
            "{} and {} hold {total} records, expected {events}",
            t.users,
            t.orders
        );
        match &first {
            None => first = Some(counts),
            Some(reference) => ensure!(
                *reference == counts,
                "the variants spread the records differently: {reference:?} vs {counts:?}"
            ),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &ProducerArgs,
    // The client settings both the binary and the bare loop ran with (defaults and --kafka-option).
    settings: &rdkafka::ClientConfig,
    events: usize,
    variants: &[Variant],
    samples: &[Vec<Sample>],
    generate_and_encode: Duration,
    load: (Option<f64>, Option<f64>),
) {
    let rates =
        |index: usize| -> Vec<f64> { samples[index].iter().map(|s| s.events_per_s).collect() };
    let bare_rate = variants
        .iter()
        .position(|v| *v == Variant::Bare)
        .map_or(f64::NAN, |i| median(&rates(i)));
    println!();
    let setting = |key: &str| settings.get(key).unwrap_or("?").to_owned();
    println!(
        "producer throughput, acks=all, enable.idempotence, linger.ms={}, {}, client queue ≤ {} \
         KiB / {} records, RF {} — {} — {} events (users {} / orders {}, seed {}, start {}), fresh \
         topics with {}+{} partitions per run; median of {} runs",
        setting("linger.ms"),
        setting("compression.type"),
        setting("queue.buffering.max.kbytes"),
        setting("queue.buffering.max.messages"),
        args.workload.run.replication_factor,
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        events,
        args.workload.users,
        args.workload.orders,
        args.workload.seed,
        START_TIME,
        USERS_PARTITIONS,
        ORDERS_PARTITIONS,
        args.workload.run.runs
    );
    println!();
    println!(
        "{:<52} {:>10} {:>9} {:>9}   runs (events/s)",
        "variant", "events/s", "seconds", "vs bare"
    );
    for (index, variant) in variants.iter().enumerate() {
        let rate = median(&rates(index));
        let seconds = median(&samples[index].iter().map(|s| s.seconds).collect::<Vec<_>>());
        let each: Vec<String> = rates(index).iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{:<52} {:>10.0} {:>9.3} {:>8.2}x   {}",
            variant.label(),
            rate,
            seconds,
            rate / bare_rate,
            each.join(" ")
        );
    }
    if let Some(index) = variants.iter().position(|v| *v == Variant::Binary) {
        let walls: Vec<f64> = samples[index].iter().filter_map(|s| s.wall).collect();
        let wall = median(&walls);
        println!(
            "{:<52} {:>10.0} {:>9.3} {:>8.2}x   {}",
            "producer binary, spawn → exit (wall clock)",
            events as f64 / wall,
            wall,
            events as f64 / wall / bare_rate,
            walls
                .iter()
                .map(|w| format!("{:.0}", events as f64 / w))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let rss: Vec<f64> = samples[index]
            .iter()
            .filter_map(|s| s.peak_rss_kib.map(mib))
            .collect();
        println!();
        println!(
            "ratio producer binary / bare loop = {:.2}x",
            median(&rates(index)) / bare_rate
        );
        println!(
            "producer binary peak RSS (VmHWM, sampled every {} ms): median {:.1} MiB, max {:.1} \
             MiB over {} runs",
            common::SAMPLE_EVERY.as_millis(),
            median(&rss),
            rss.iter().copied().fold(f64::NAN, f64::max),
            rss.len()
        );
    }
    println!(
        "generating + encoding the {} events in-process takes {:.3} s ({:.0} events/s) on an idle \
         core; the binary does it inside its measured time, the bare loop before its clock starts",
        events,
        generate_and_encode.as_secs_f64(),
        events as f64 / generate_and_encode.as_secs_f64()
    );
    let busy: Vec<String> = samples
        .iter()
        .flatten()
        .map(|s| {
            s.busy_before
                .map_or("?".into(), |b| format!("{:.0}", b * 100.0))
        })
        .collect();
    println!(
        "machine: {} CPUs; CPU busy % in the second before each run: {}; load average {} → {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        busy.join(" "),
        load.0.map_or("?".into(), |l| format!("{l:.2}")),
        load.1.map_or("?".into(), |l| format!("{l:.2}"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let out = "noise\nproducer: sent=1000 acknowledged=1000 failed=0 elapsed=2.50s \
                   rate=400.0 events/s seed=42\n";
        let summary = parse_summary(out).map_err(|e| e.to_string());
        assert_eq!(
            summary,
            Ok(Summary {
                sent: 1000,
                acknowledged: 1000,
                failed: 0,
                elapsed: 2.5,
                rate: 400.0
            })
        );
        assert!(parse_summary("nothing here").is_err());
    }
}
