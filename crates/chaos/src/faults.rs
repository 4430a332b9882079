//! The faults: what each class does, a seeded schedule of them, running it, and healing.
//!
//! Infrastructure faults (brokers, Connect, PostgreSQL, Cassandra) follow one another, so that the
//! cluster's own guarantees hold (at most one Cassandra node away for QUORUM; two brokers only in
//! the fault that takes exactly two). Process faults (the consumers killed, extra instances
//! joining and leaving) and bad records come at their own times, on top of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cdc_core::dlq::topic_for;
use rand::rngs::StdRng;
use rand::RngExt;
use serde::Serialize;
use stack_tests::process::Process;
use stack_tests::{stack_command, Stack};
use tokio::sync::Mutex;

use crate::supervise::Supervised;
use crate::RunNames;

/// One class of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub class: &'static str,
    /// Relative weight in the schedule.
    pub weight: u32,
    pub infrastructure: bool,
}

const fn fault(class: &'static str, weight: u32, infrastructure: bool) -> Fault {
    Fault {
        class,
        weight,
        infrastructure,
    }
}

/// Every fault class.
pub const CATALOGUE: [Fault; 14] = [
    fault("broker_kill", 3, true),
    fault("broker_pause", 2, true),
    fault("two_brokers_down", 1, true),
    fault("connect_kill", 2, true),
    fault("connect_pause", 1, true),
    fault("postgres_restart", 1, true),
    fault("postgres_kill", 1, true),
    fault("cassandra_kill", 2, true),
    fault("cassandra_pause", 1, true),
    fault("consumer_kill", 2, false),
    fault("cdcconsumer_kill", 2, false),
    fault("consumer_churn", 1, false),
    fault("cdcconsumer_churn", 1, false),
    fault("bad_record", 0, false),
];

/// One scheduled fault.
#[derive(Debug, Clone)]
pub struct Planned {
    pub class: &'static str,
    /// Service or topic it hits.
    pub target: String,
    pub at: Duration,
    /// How long the service stays away (pauses, kills before the restart, churn).
    pub hold: Duration,
    pub infrastructure: bool,
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub class: String,
    pub target: String,
    pub at_secs: f64,
    pub lasted_secs: f64,
    pub healed: bool,
    pub error: Option<String>,
}

/// The whole schedule of a run.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub faults: Vec<Planned>,
}

fn secs(rng: &mut StdRng, low: u64, high: u64) -> Duration {
    Duration::from_secs(rng.random_range(low..=high))
}

fn pick<'a>(rng: &mut StdRng, items: &'a [String]) -> &'a str {
    &items[rng.random_range(0..items.len())]
}

impl Schedule {
    /// Draws the faults of a run of `duration` from `rng`.
    pub fn draw(rng: &mut StdRng, stack: &Stack, duration: Duration, bad_records: u32) -> Self {
        let brokers: Vec<String> = (1..=stack.broker_count)
            .map(|n| format!("kafka{n}"))
            .collect();
        let nodes: Vec<String> = (1..=stack.cassandra_nodes.len())
            .map(|n| format!("cassandra{n}"))
            .collect();
        let mut faults = Vec::new();
        let end = duration.saturating_sub(Duration::from_secs(15));
        // Infrastructure faults, one after another.
        let infrastructure: Vec<&Fault> = CATALOGUE.iter().filter(|f| f.infrastructure).collect();
        let total: u32 = infrastructure.iter().map(|f| f.weight).sum();
        let mut at = Duration::from_secs(10);
        while at < end {
            let mut draw = rng.random_range(0..total);
            let chosen = infrastructure
                .iter()
                .find(|f| {
                    if draw < f.weight {
                        true
                    } else {
                        draw -= f.weight;
                        false
                    }
                })
                .copied()
                .unwrap_or(&CATALOGUE[0]);
            let (target, hold) = match chosen.class {
                "broker_kill" => (pick(rng, &brokers).to_owned(), secs(rng, 8, 20)),
                "broker_pause" => (pick(rng, &brokers).to_owned(), secs(rng, 20, 60)),
                "two_brokers_down" => {
                    let first = rng.random_range(0..brokers.len());
                    let second =
                        (first + 1 + rng.random_range(0..brokers.len() - 1)) % brokers.len();
                    (
                        format!("{}+{}", brokers[first], brokers[second]),
                        secs(rng, 5, 12),
                    )
                }
                "connect_kill" => ("connect".to_owned(), secs(rng, 3, 15)),
                "connect_pause" => ("connect".to_owned(), secs(rng, 20, 40)),
                "postgres_restart" | "postgres_kill" => ("postgres".to_owned(), secs(rng, 1, 5)),
                "cassandra_kill" => (pick(rng, &nodes).to_owned(), secs(rng, 8, 20)),
                _ => (pick(rng, &nodes).to_owned(), secs(rng, 20, 40)),
            };
            faults.push(Planned {
                class: chosen.class,
                target,
                at,
                hold,
                infrastructure: true,
            });
            // The next after this one's hold and a pause; it also waits for this one's restart.
            at += hold + secs(rng, 20, 35);
        }
        // Process faults at their own times, on top.
        let processes: Vec<&Fault> = CATALOGUE
            .iter()
            .filter(|f| !f.infrastructure && f.weight > 0)
            .collect();
        let count = (duration.as_secs() / 30).max(2);
        for _ in 0..count {
            let chosen = processes[rng.random_range(0..processes.len())];
            let at = secs(rng, 5, end.as_secs().max(6));
            faults.push(Planned {
                class: chosen.class,
                target: chosen
                    .class
                    .trim_end_matches("_kill")
                    .trim_end_matches("_churn")
                    .to_owned(),
                at,
                hold: secs(rng, 10, 30),
                infrastructure: false,
            });
        }
        // Bad records on every topic.
        for topic in ["users", "orders", "cdc.public.users", "cdc.public.orders"] {
            for _ in 0..bad_records {
                faults.push(Planned {
                    class: "bad_record",
                    target: topic.to_owned(),
                    at: secs(rng, 5, end.as_secs().max(6)),
                    hold: Duration::ZERO,
                    infrastructure: false,
                });
            }
        }
        faults.sort_by_key(|f| f.at);
        Self { faults }
    }

    pub fn len(&self) -> usize {
        self.faults.len()
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// What the faults act on.
#[derive(Debug, Clone)]
pub struct Context {
    pub stack: Stack,
    pub names: RunNames,
    pub consumer: Supervised,
    pub cdcconsumer: Supervised,
    pub pool: sqlx::PgPool,
}

/// Runs `stack.sh <args>` off the async threads.
async fn stack(args: Vec<String>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stack_command(&args).map(drop)
    })
    .await?
}

async fn stack_on(how: &str, service: &str) -> Result<()> {
    stack(vec![how.to_owned(), service.to_owned()]).await
}

/// Starts a service again, retrying a few times: a PostgreSQL whose postmaster was killed may
/// refuse to start while its old backends are still exiting.
async fn start(service: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..6 {
        match stack_on("start", service).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                last = Some(error);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("starting {service} failed")))
}

/// Runs every planned fault at its time; returns them as they happened.
pub async fn run(schedule: &Schedule, context: &Context, clock: Instant) -> Vec<Injected> {
    let infrastructure = Arc::new(Mutex::new(()));
    let mut tasks = Vec::new();
    for planned in schedule.faults.clone() {
        let (context, infrastructure) = (context.clone(), Arc::clone(&infrastructure));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((clock + planned.at).into()).await;
            let _turn = if planned.infrastructure {
                Some(infrastructure.lock().await)
            } else {
                None
            };
            let began = clock.elapsed();
            println!(
                "chaos: {:>7.1}s {} {}",
                began.as_secs_f64(),
                planned.class,
                planned.target
            );
            let outcome = apply(&planned, &context).await;
            Injected {
                class: planned.class.to_owned(),
                target: planned.target.clone(),
                at_secs: began.as_secs_f64(),
                lasted_secs: (clock.elapsed() - began).as_secs_f64(),
                healed: outcome.is_ok(),
                error: outcome.err().map(|e| format!("{e:#}")),
            }
        }));
    }
    let mut injected = Vec::new();
    for task in tasks {
        match task.await {
            Ok(fault) => injected.push(fault),
            Err(error) => injected.push(Injected {
                class: "runner".to_owned(),
                target: String::new(),
                at_secs: clock.elapsed().as_secs_f64(),
                lasted_secs: 0.0,
                healed: false,
                error: Some(error.to_string()),
            }),
        }
    }
    injected
}

async fn apply(planned: &Planned, context: &Context) -> Result<()> {
    let target = planned.target.as_str();
    match planned.class {
        "broker_kill" | "connect_kill" | "cassandra_kill" => {
            stack_on("kill", target).await?;
            tokio::time::sleep(planned.hold).await;
            start(target).await
        }
        "broker_pause" | "connect_pause" | "cassandra_pause" => {
            stack_on("pause", target).await?;
            tokio::time::sleep(planned.hold).await;
            stack_on("resume", target).await
        }
        "two_brokers_down" => {
            let brokers: Vec<&str> = target.split('+').collect();
            for broker in &brokers {
                stack_on("kill", broker).await?;
            }
            tokio::time::sleep(planned.hold).await;
            for broker in &brokers {
                start(broker).await?;
            }
            Ok(())
        }
        "postgres_restart" => {
            stack_on("stop", "postgres").await?;
            tokio::time::sleep(planned.hold).await;
            start("postgres").await
        }
        "postgres_kill" => {
            stack_on("kill", "postgres").await?;
            tokio::time::sleep(planned.hold).await;
            start("postgres").await
        }
        "consumer_kill" => {
            context.consumer.kill();
            Ok(())
        }
        "cdcconsumer_kill" => {
            context.cdcconsumer.kill();
            Ok(())
        }
        "consumer_churn" | "cdcconsumer_churn" => {
            let supervised = if planned.class == "consumer_churn" {
                &context.consumer
            } else {
                &context.cdcconsumer
            };
            // Another member of the same groups joins, takes partitions, and leaves.
            let extra = Process::spawn("churn", supervised.command_without_metrics()?)?;
            tokio::time::sleep(planned.hold).await;
            extra.terminate().await.map(drop)
        }
        "bad_record" => inject_bad_record(context, target).await,
        other => anyhow::bail!("unknown fault {other}"),
    }
}

/// One record that no handler can apply, on `topic` (`users`/`orders`: the run's business topics).
async fn inject_bad_record(context: &Context, target: &str) -> Result<()> {
    let topic = source_topic(&context.names, target);
    let producer = stack_tests::kafka::producer(&context.stack)?;
    let key = uuid::Uuid::new_v4().to_string();
    stack_tests::kafka::send_raw(
        &producer,
        &topic,
        None,
        Some(key.as_bytes()),
        Some(b"{\"not\": \"an event\" ".as_slice()),
    )
    .await?;
    Ok(())
}

/// Every service running and none paused: after the schedule, whatever happened.
pub async fn heal(stack: &Stack) {
    let mut services: Vec<String> = (1..=stack.broker_count)
        .map(|n| format!("kafka{n}"))
        .collect();
    services.push("postgres".to_owned());
    services.push("connect".to_owned());
    services.extend((1..=stack.cassandra_nodes.len()).map(|n| format!("cassandra{n}")));
    for service in &services {
        if service != "postgres" {
            let _ = stack_on("resume", service).await;
        }
        if let Err(error) = start(service).await {
            println!("chaos: could not bring {service} back: {error:#}");
        }
    }
}

/// The topic a `bad_record` target names: `users`/`orders` are the run's business topics.
fn source_topic(names: &RunNames, target: &str) -> String {
    match target {
        "users" => names.users_topic.clone(),
        "orders" => names.orders_topic.clone(),
        cdc => cdc.to_owned(),
    }
}

/// Bad records injected per dead-letter topic.
pub fn injected_bad_records(injected: &[Injected], names: &RunNames) -> BTreeMap<String, u64> {
    let mut expected = BTreeMap::new();
    for fault in injected
        .iter()
        .filter(|f| f.class == "bad_record" && f.healed)
    {
        *expected
            .entry(topic_for(&source_topic(names, &fault.target)))
            .or_default() += 1;
    }
    expected
}
