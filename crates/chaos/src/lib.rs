//! The whole pipeline under a seeded schedule of combined faults, checked the way Jepsen checks
//! Kafka: nothing acknowledged may be lost, and everything must agree in the end.
//!
//! A run:
//!
//! 1. Fresh business topics and consumer groups; the real CDC topics, tables and keyspace.
//! 2. The producer binary at `--rate` events/s for `--minutes`, writing an acknowledgement log
//!    (one line per delivery report); the consumer and the cdcconsumer run under a supervisor that
//!    restarts them when they die, as systemd or Kubernetes would.
//! 3. Meanwhile a schedule drawn from `--seed` injects faults ([`faults`]): brokers killed, paused
//!    or two at once taken down, Kafka Connect killed or paused, PostgreSQL restarted or its
//!    postmaster killed, a Cassandra node killed or paused, the consumer and the cdcconsumer
//!    killed, extra instances joining and leaving, and a known number of bad records on every
//!    topic.
//! 4. Then everything is healed, the pipeline goes quiet, and [`check`] decides:
//!    (a) every event the producer saw acknowledged is reflected in PostgreSQL, whose rows equal
//!    the fold of the events at the versions PostgreSQL holds, each of them acknowledged or of
//!    unknown outcome (never one that was not sent); (b) Cassandra equals PostgreSQL (the
//!    verifier); (c) the dead-letter topics hold exactly the injected bad records; (d) no
//!    partition is stalled and every process ends cleanly; (e) the replication slot caught up.
//!
//! The verdict, the faults with their times and the counts go to stdout and a JSON report.

pub mod account;
pub mod faults;
pub mod supervise;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cdc_core::config::LogArgs;
use cdc_core::dlq::topic_for;
use cdc_core::topics::{ensure_topics, TopicSpec};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use stack_tests::pipeline::{group_spec, Pipeline, CDC_GROUP, CDC_ORDERS, CDC_USERS};
use stack_tests::process::{self, free_address, http_get, workspace_binary};
use stack_tests::{repo_root, unique_name, Stack};

use crate::faults::{Fault, Injected, Schedule};
use crate::supervise::Supervised;

/// A chaos run.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "chaos", about)]
pub struct Options {
    /// How long the producer writes (and faults are injected), in minutes.
    #[arg(long, default_value_t = 3.0)]
    pub minutes: f64,
    /// Events per second the producer writes.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seed of the fault schedule; random when not given (printed, so a schedule can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seed of the event stream; random when not given (printed). Entity ids come from it, so
    /// two runs against the same database need different event seeds.
    #[arg(long)]
    pub events_seed: Option<u64>,
    /// Bad records injected into each of the four topics (business and CDC).
    #[arg(long, default_value_t = 3)]
    pub bad_records: u32,
    /// Print the schedule the seed gives and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the JSON report goes (default: `.stack/chaos-report.json`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// What the run found.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub seed: u64,
    pub events_seed: u64,
    pub minutes: f64,
    pub rate: u32,
    pub faults: Vec<Injected>,
    pub faults_per_class: BTreeMap<String, usize>,
    pub events: account::Account,
    pub cassandra_matches_postgres: bool,
    pub verifier: String,
    pub dead_letters: BTreeMap<String, BTreeMap<String, u64>>,
    pub dead_letters_expected: BTreeMap<String, u64>,
    pub unexpected_dead_letters: u64,
    pub stalled_at_end: Vec<String>,
    pub unclean_exits: Vec<String>,
    pub restarts: BTreeMap<String, u32>,
    pub problems: Vec<String>,
}

impl Verdict {
    /// No acknowledged event lost, everything agreeing, nothing parked but the bad records,
    /// nothing stalled, every process ended cleanly.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The pipeline's binaries, built before anything starts (a build must not stall the schedule).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub producer: PathBuf,
    pub consumer: PathBuf,
    pub cdcconsumer: PathBuf,
}

impl Binaries {
    /// Builds them (with the profile of the running program) unless they are up to date.
    pub async fn build() -> Result<Self> {
        tokio::task::spawn_blocking(|| {
            Ok(Self {
                producer: workspace_binary("producer")?,
                consumer: workspace_binary("consumer")?,
                cdcconsumer: workspace_binary("cdcconsumer")?,
            })
        })
        .await?
    }
}

/// The names of one run's topics and groups.
#[derive(Debug, Clone)]
pub struct RunNames {
    pub users_topic: String,
    pub orders_topic: String,
    pub users_group: String,
    pub orders_group: String,
}

impl RunNames {
    /// Fresh names starting with `prefix`, their topics (3 and 5 partitions) and dead-letter
    /// topics created.
    pub async fn create(stack: &Stack, prefix: &str) -> Result<Self> {
        let names = Self {
            users_topic: unique_name(&format!("{prefix}_users")),
            orders_topic: unique_name(&format!("{prefix}_orders")),
            users_group: unique_name(&format!("{prefix}_users_group")),
            orders_group: unique_name(&format!("{prefix}_orders_group")),
        };
        let rf = i32::try_from(stack.broker_count)?;
        ensure_topics(
            &stack.brokers,
            &[
                TopicSpec::new(&names.users_topic, 3, rf),
                TopicSpec::new(&names.orders_topic, 5, rf),
                TopicSpec::new(topic_for(&names.users_topic), 1, rf),
                TopicSpec::new(topic_for(&names.orders_topic), 1, rf),
            ],
            Duration::from_secs(30),
        )
        .await?;
        Ok(names)
    }
}

/// Prints the schedule `--seed` gives for `--minutes` on this stack.
pub fn print_schedule(options: &Options) -> Result<()> {
    let stack = Stack::from_env()?;
    let seed = options.seed.context("--dry-run needs --seed")?;
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    let schedule = Schedule::draw(
        &mut StdRng::seed_from_u64(seed),
        &stack,
        duration,
        options.bad_records,
    );
    for fault in &schedule.faults {
        println!(
            "{:>7.1}s {:<20} {:<20} hold {:>4.0}s",
            fault.at.as_secs_f64(),
            fault.class,
            fault.target,
            fault.hold.as_secs_f64()
        );
    }
    Ok(())
}

/// Runs the pipeline under faults and checks it.
pub async fn run(options: Options) -> Result<Verdict> {
    let seed = options
        .seed
        .unwrap_or_else(cdc_core::generator::random_seed);
    let events_seed = options
        .events_seed
        .unwrap_or_else(cdc_core::generator::random_seed);
    println!(
        "chaos: seed={seed} events-seed={events_seed} minutes={} rate={}/s",
        options.minutes, options.rate
    );
    let binaries = Binaries::build().await?;
    let pipeline = Pipeline::new().await?;
    let stack = pipeline.stack.clone();
    let names = RunNames::create(&stack, "chaos").await?;
    let started_at = chrono::Utc::now();
    let logs = process::log_dir()?;
    let ack_log = logs.join(format!("{}.acks", unique_name("chaos_producer")));

    // The supervised consumers, each with a metrics endpoint for the final health check.
    let consumer_address = free_address()?;
    let cdc_address = free_address()?;
    let consumer = Supervised::start("consumer", {
        let (stack, names, address) = (stack.clone(), names.clone(), consumer_address.clone());
        let program = binaries.consumer.clone();
        move || consumer_command(&stack, &program, &names, &address)
    });
    let cdcconsumer = Supervised::start("cdcconsumer", {
        let (stack, address) = (stack.clone(), cdc_address.clone());
        let program = binaries.cdcconsumer.clone();
        move || cdcconsumer_command(&stack, &program, &address)
    });

    // The producer: one run, not restarted, its acknowledgements logged per event.
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    let generator = generator_config(&options, events_seed, duration);
    let mut producer = producer_command(&stack, &binaries.producer, &names, &generator, &ack_log);
    producer
        .args(["--rate", &options.rate.to_string()])
        .args(["--duration", &format!("{}s", duration.as_secs())]);
    let producer = process::Process::spawn("producer", producer)?;

    // The fault schedule, while the producer writes.
    let mut rng = StdRng::seed_from_u64(seed);
    let schedule = Schedule::draw(&mut rng, &stack, duration, options.bad_records);
    println!("chaos: {} faults scheduled", schedule.len());
    let clock = Instant::now();
    let context = faults::Context {
        stack: stack.clone(),
        names: names.clone(),
        consumer: consumer.clone(),
        cdcconsumer: cdcconsumer.clone(),
        pool: pipeline.pool.clone(),
    };
    let injected = faults::run(&schedule, &context, clock).await;
    faults::heal(&stack).await;
    producer
        .run_to_end(Duration::from_secs(600))
        .await
        .context("the producer did not end cleanly")?;

    // Quiet, then compare; then stop the consumers and read their ends.
    let groups = vec![
        group_spec(&names.users_group, &[&names.users_topic]),
        group_spec(&names.orders_group, &[&names.orders_topic]),
        group_spec(CDC_GROUP, &[CDC_USERS, CDC_ORDERS]),
    ];
    let verifier = verify(&stack, &binaries.cdcconsumer, &groups).await?;
    let cassandra_matches_postgres = verifier.0;
    let mut stalled_at_end = Vec::new();
    for (name, address) in [
        ("consumer", &consumer_address),
        ("cdcconsumer", &cdc_address),
    ] {
        match http_get(address, "/readyz").await {
            Ok((200, _)) => {}
            Ok((status, body)) => stalled_at_end.push(format!("{name}: /readyz {status}: {body}")),
            Err(error) => stalled_at_end.push(format!("{name}: /readyz unreachable: {error}")),
        }
    }
    let mut unclean_exits = Vec::new();
    let mut restarts = BTreeMap::new();
    for (name, supervised) in [("consumer", consumer), ("cdcconsumer", cdcconsumer)] {
        let end = supervised.stop().await;
        restarts.insert(name.to_owned(), end.restarts);
        unclean_exits.extend(end.unclean);
    }

    let log = account::AckLog::read(&ack_log)?;
    let events = account::check(&pipeline.pool, &generator, &log).await?;
    let since = started_at.timestamp_millis();
    let dead_letters = count_dead_letters(&stack, &names, since).await?;
    let dead_letters_expected = faults::injected_bad_records(&injected, &names);
    let unexpected_dead_letters = dead_letters
        .iter()
        .map(|(dlq, reasons)| {
            let found: u64 = reasons.values().sum();
            found.saturating_sub(dead_letters_expected.get(dlq).copied().unwrap_or(0))
        })
        .sum();

    let mut injected = injected;
    injected.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    let mut faults_per_class = BTreeMap::new();
    for fault in &injected {
        *faults_per_class.entry(fault.class.clone()).or_default() += 1;
    }
    let mut problems = Vec::new();
    if events.lost > 0 {
        problems.push(format!("{} acknowledged events lost", events.lost));
    }
    problems.extend(events.problems.iter().cloned());
    if !cassandra_matches_postgres {
        problems.push("Cassandra differs from PostgreSQL".to_owned());
    }
    for (dlq, expected) in &dead_letters_expected {
        let found: u64 = dead_letters.get(dlq).map_or(0, |r| r.values().sum());
        if found != *expected {
            problems.push(format!(
                "{dlq}: {found} dead letters, {expected} bad records injected"
            ));
        }
    }
    problems.extend(stalled_at_end.iter().cloned());
    problems.extend(unclean_exits.iter().cloned());
    problems.extend(
        injected
            .iter()
            .filter(|f| !f.healed)
            .map(|f| format!("fault not healed: {} {}", f.class, f.target)),
    );
    let verdict = Verdict {
        seed,
        events_seed,
        minutes: options.minutes,
        rate: options.rate,
        faults: injected,
        faults_per_class,
        events,
        cassandra_matches_postgres,
        verifier: verifier.1,
        dead_letters,
        dead_letters_expected,
        unexpected_dead_letters,
        stalled_at_end,
        unclean_exits,
        restarts,
        problems,
    };
    print_verdict(&verdict);
    let report = match options.report {
        Some(report) => report,
        None => std::fs::canonicalize(repo_root())?
            .join(".stack")
            .join("chaos-report.json"),
    };
    std::fs::write(&report, serde_json::to_string_pretty(&verdict)?)
        .with_context(|| format!("writing {}", report.display()))?;
    println!("chaos: report in {}", report.display());
    Ok(verdict)
}

/// The event stream: enough entities that the producer writes at `rate` for the whole duration
/// (it stops at the duration; the rest is never sent).
fn generator_config(
    options: &Options,
    seed: u64,
    duration: Duration,
) -> cdc_core::generator::GeneratorConfig {
    let events = f64::from(options.rate) * duration.as_secs_f64();
    // About 2.4 events per entity, three orders per user: ample for the duration.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let users = (events / 4.0).ceil() as usize + 10;
    cdc_core::generator::GeneratorConfig {
        users,
        orders: users * 3,
        seed,
        // Whole seconds, so that the producer's `--start-time` carries it exactly.
        start: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0),
    }
}

/// The producer writing `generator`'s stream to the run's topics, logging each outcome to
/// `ack_log`.
pub fn producer_command(
    stack: &Stack,
    program: &Path,
    names: &RunNames,
    generator: &cdc_core::generator::GeneratorConfig,
    ack_log: &Path,
) -> std::process::Command {
    let mut command = process::command(stack, program);
    command
        .args(["--users", &generator.users.to_string()])
        .args(["--orders", &generator.orders.to_string()])
        .args(["--seed", &generator.seed.to_string()])
        .args(["--start-time", &generator.start.to_rfc3339()])
        .arg("--ack-log")
        .arg(ack_log)
        .env("USERS_TOPIC", &names.users_topic)
        .env("ORDERS_TOPIC", &names.orders_topic);
    command
}

/// The consumer on the run's topics and groups, never idle, its metrics on `address`.
pub fn consumer_command(
    stack: &Stack,
    program: &Path,
    names: &RunNames,
    address: &str,
) -> Result<std::process::Command> {
    let mut command = process::command(stack, program);
    command
        .env("USERS_TOPIC", &names.users_topic)
        .env("ORDERS_TOPIC", &names.orders_topic)
        .env("USERS_GROUP", &names.users_group)
        .env("ORDERS_GROUP", &names.orders_group)
        .env("IDLE_TIMEOUT_SECS", "0")
        .env("METRICS_ADDR", address);
    Ok(command)
}

fn cdcconsumer_command(
    stack: &Stack,
    program: &Path,
    address: &str,
) -> Result<std::process::Command> {
    let mut command = process::command(stack, program);
    command
        .env("CDC_GROUP", CDC_GROUP)
        .env("IDLE_TIMEOUT_SECS", "0")
        .env("METRICS_ADDR", address);
    Ok(command)
}

/// `cdcconsumer verify` over the run's groups: (clean, its report).
async fn verify(stack: &Stack, program: &Path, groups: &[String]) -> Result<(bool, String)> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("verify")
        .args(["--groups", &groups.join(",")])
        .args(["--quiet-timeout-secs", "600"])
        .args(["--consistency", "all"])
        .env("KAFKA_BROKERS", &stack.brokers)
        .env("CASSANDRA_NODES", stack.cassandra_nodes.join(","))
        .env("DATABASE_URL", &stack.database_url)
        .env("LOG_LEVEL", "warn,rdkafka=error")
        .kill_on_drop(true);
    let output = command
        .output()
        .await
        .context("running cdcconsumer verify")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let clean =
        output.status.success() && report.contains("verify: Cassandra agrees with PostgreSQL");
    Ok((clean, report))
}

/// Distinct dead letters (by source position) per dead-letter topic and reason: the run's
/// business topics whole, the CDC topics' since the run started.
async fn count_dead_letters(
    stack: &Stack,
    names: &RunNames,
    since: i64,
) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let stack = stack.clone();
    let names = names.clone();
    tokio::task::spawn_blocking(move || {
        let config = stack_tests::kafka::config(&stack);
        let mut counts = BTreeMap::new();
        for (source, from) in [
            (&names.users_topic, cdc_core::topics::ReadFrom::Beginning),
            (&names.orders_topic, cdc_core::topics::ReadFrom::Beginning),
            (
                &CDC_USERS.to_owned(),
                cdc_core::topics::ReadFrom::Time(since),
            ),
            (
                &CDC_ORDERS.to_owned(),
                cdc_core::topics::ReadFrom::Time(since),
            ),
        ] {
            let dlq = topic_for(source);
            let records =
                cdc_core::topics::read_to_end(&config, &dlq, &from, Duration::from_secs(60))?;
            let mut seen = std::collections::BTreeSet::new();
            let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
            for record in records {
                let parked = cdc_core::dlq::Parked::from_message(&record)?;
                if seen.insert((parked.source_partition, parked.source_offset)) {
                    *reasons.entry(parked.reason).or_default() += 1;
                }
            }
            counts.insert(dlq, reasons);
        }
        anyhow::Ok(counts)
    })
    .await?
}

fn print_verdict(verdict: &Verdict) {
    println!("chaos: faults injected:");
    for fault in &verdict.faults {
        println!(
            "  {:>7.1}s {:>6.1}s  {:<22} {:<12} {}",
            fault.at_secs,
            fault.lasted_secs,
            fault.class,
            fault.target,
            if fault.healed { "healed" } else { "NOT HEALED" }
        );
    }
    let per_class: Vec<String> = verdict
        .faults_per_class
        .iter()
        .map(|(class, n)| format!("{class} {n}"))
        .collect();
    println!("chaos: faults per class: {}", per_class.join(", "));
    let e = &verdict.events;
    println!(
        "chaos: events sent {}, acknowledged {}, unknown outcome {}, lost {}; entities checked {}",
        e.sent, e.acknowledged, e.unknown, e.lost, e.entities
    );
    println!(
        "chaos: process restarts {:?}; dead letters {:?} (expected {:?})",
        verdict.restarts, verdict.dead_letters, verdict.dead_letters_expected
    );
    if verdict.passed() {
        println!("chaos: PASS — nothing acknowledged was lost, Cassandra equals PostgreSQL");
    } else {
        println!("chaos: FAIL");
        for problem in &verdict.problems {
            println!("  {problem}");
        }
    }
}

/// Fault classes, for the schedule and the report.
pub fn classes() -> Vec<Fault> {
    faults::CATALOGUE.to_vec()
}
