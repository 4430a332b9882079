//! The producer binary against the running stack: what it writes is exactly the generator's stream
//! (nothing lost, nothing invented, each entity in version order in one partition), it creates its
//! topics with the configured layout, refuses a topic with another layout, and stops cleanly on
//! SIGINT or after `--duration` with every sent record acknowledged.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cdc_core::events::{EntityKind, Event};
use cdc_core::generator::{Generator, GeneratorConfig};
use cdc_core::topics::{ensure_topics, TopicSpec};
use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use stack_tests::{shared, unique_name, wait_for, workspace_binary, Stack};
use tokio::process::Command;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const START: &str = "2026-11-24T10:00:00Z";

/// One record read back.
#[derive(Debug, Clone)]
struct Record {
    partition: i32,
    key: String,
    payload: Vec<u8>,
}

/// The summary line's numbers.
#[derive(Debug, Default)]
struct Summary {
    sent: u64,
    acknowledged: u64,
    failed: u64,
    seed: u64,
}

struct Topics {
    users: String,
    orders: String,
}

impl Topics {
    /// Removes both topics once a test passed (a failing test leaves them for inspection).
    async fn delete(&self, stack: &Stack) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &stack.brokers)
            .create()?;
        let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        for result in admin
            .delete_topics(&[&self.users, &self.orders], &options)
            .await?
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => bail!("deleting topic {topic}: {code:?}"),
            }
        }
        Ok(())
    }

    fn unique() -> Self {
        Self {
            users: unique_name("it_producer_users"),
            orders: unique_name("it_producer_orders"),
        }
    }
}

fn start_time() -> Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(START)?.with_timezone(&Utc))
}

fn command(stack: &Stack, topics: &Topics, args: &[&str]) -> Command {
    let binary = workspace_binary("producer").unwrap_or_else(|error| panic!("{error:#}"));
    let mut command = Command::new(binary);
    command
        .args(["--brokers", &stack.brokers])
        .args(["--users-topic", &topics.users])
        .args(["--orders-topic", &topics.orders])
        .args(["--replication-factor", &stack.broker_count.to_string()])
        .args(["--start-time", START])
        .args(args)
        .env_remove("KAFKA_OPTIONS")
        .env_remove("RUST_LOG")
        .env("LOG_FORMAT", "text")
        .kill_on_drop(true);
    command
}

async fn run(mut command: Command) -> Result<Output> {
    tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .context("the producer did not finish in time")?
        .context("running the producer")
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Parses `producer: sent=N acknowledged=N failed=N elapsed=S.SSs rate=R events/s seed=SEED`.
fn summary(output: &Output) -> Result<Summary> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with("producer: sent="))
        .with_context(|| format!("no summary line in the output:\n{}", text(output)))?;
    let mut summary = Summary::default();
    let mut seen = 0;
    for field in line.trim_start_matches("producer: ").split_whitespace() {
        let Some((name, value)) = field.split_once('=') else {
            continue;
        };
        let target = match name {
            "sent" => &mut summary.sent,
            "acknowledged" => &mut summary.acknowledged,
            "failed" => &mut summary.failed,
            "seed" => &mut summary.seed,
            "elapsed" => {
                ensure!(value.ends_with('s'), "elapsed without unit in `{line}`");
                value.trim_end_matches('s').parse::<f64>()?;
                seen += 1;
                continue;
            }
            "rate" => {
                value.parse::<f64>()?;
                seen += 1;
                continue;
            }
            other => bail!("unexpected field `{other}` in `{line}`"),
        };
        *target = value
            .parse()
            .with_context(|| format!("`{field}` in `{line}`"))?;
        seen += 1;
    }
    ensure!(
        seen == 6 && line.contains(" events/s seed="),
        "malformed summary `{line}`"
    );
    Ok(summary)
}

/// The generator's stream for `config` as (topic kind, key, payload).
fn expected(config: GeneratorConfig) -> Vec<(EntityKind, String, Vec<u8>)> {
    Generator::new(config)
        .map(|event| (event.kind(), event.key(), event.to_json()))
        .collect()
}

fn partition_count(stack: &Stack, topic: &str) -> Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} missing from metadata"))?;
    ensure!(
        found.error().is_none(),
        "topic {topic}: {:?}",
        found.error()
    );
    Ok(found.partitions().len())
}

/// Total records in `topic` (sum of high watermarks).
fn record_count(stack: &Stack, topic: &str, partitions: i32) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()?;
    let mut total = 0;
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
        total += high - low;
    }
    Ok(total)
}

/// Every record of `topic`, in offset order per partition.
fn read_all(stack: &Stack, topic: &str) -> Result<Vec<Record>> {
    Ok(stack_tests::kafka::read_topic(stack, topic)?
        .iter()
        .map(|message| Record {
            partition: message.partition(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
        })
        .collect())
}

/// Within each partition, each key's events carry versions 1, 2, 3, … in offset order, and a key
/// lives in exactly one partition.
fn check_version_order(topic: &str, records: &[Record]) -> Result<()> {
    let mut last: HashMap<&str, (i32, i64)> = HashMap::new();
    for record in records {
        let event: Event = cdc_core::events::from_json(&record.payload)
            .with_context(|| format!("undecodable record in {topic}"))?
            .event;
        let version = match &event {
            Event::User(e) => e.version,
            Event::Order(e) => e.version,
        };
        ensure!(event.key() == record.key, "key is not the entity id");
        let previous = last.insert(&record.key, (record.partition, version));
        match previous {
            None => ensure!(
                version == 1,
                "{topic}: key {} starts at version {version}",
                record.key
            ),
            Some((partition, before)) => {
                ensure!(
                    partition == record.partition,
                    "{topic}: key {} in partitions {partition} and {}",
                    record.key,
                    record.partition
                );
                ensure!(
                    version == before + 1,
                    "{topic}: key {} version {before} followed by {version}",
                    record.key
                );
            }
        }
    }
    Ok(())
}

/// Reads both topics and checks they hold exactly `wanted` (as a multiset), in version order.
fn check_topics(
    stack: &Stack,
    topics: &Topics,
    wanted: &[(EntityKind, String, Vec<u8>)],
) -> Result<()> {
    let users = read_all(stack, &topics.users)?;
    let orders = read_all(stack, &topics.orders)?;
    check_version_order(&topics.users, &users)?;
    check_version_order(&topics.orders, &orders)?;

    let mut read: Vec<(EntityKind, String, Vec<u8>)> = users
        .into_iter()
        .map(|r| (EntityKind::User, r.key, r.payload))
        .chain(
            orders
                .into_iter()
                .map(|r| (EntityKind::Order, r.key, r.payload)),
        )
        .collect();
    let mut wanted = wanted.to_vec();
    let order = |a: &(EntityKind, String, Vec<u8>), b: &(EntityKind, String, Vec<u8>)| {
        (a.0.as_str(), &a.1, &a.2).cmp(&(b.0.as_str(), &b.1, &b.2))
    };
    read.sort_by(order);
    wanted.sort_by(order);
    ensure!(
        read.len() == wanted.len(),
        "read {} records, expected {}",
        read.len(),
        wanted.len()
    );
    if let Some((got, want)) = read.iter().zip(&wanted).find(|(got, want)| got != want) {
        bail!(
            "records differ: read {:?} {} {}, expected {:?} {} {}",
            got.0,
            got.1,
            String::from_utf8_lossy(&got.2),
            want.0,
            want.1,
            String::from_utf8_lossy(&want.2)
        );
    }
    Ok(())
}

/// Runs the producer over `users`/`orders` with `seed` (plus `extra` arguments) to the end and
/// checks that it sent the whole stream, every record acknowledged, and that the topics hold
/// exactly the stream.
async fn produce_the_whole_stream(
    stack: &Stack,
    topics: &Topics,
    (users, orders, seed): (usize, usize, u64),
    extra: &[&str],
) -> Result<Summary> {
    let (users_arg, orders_arg, seed_arg) =
        (users.to_string(), orders.to_string(), seed.to_string());
    let mut args = vec![
        "--users",
        &users_arg,
        "--orders",
        &orders_arg,
        "--seed",
        &seed_arg,
    ];
    args.extend_from_slice(extra);
    let output = run(command(stack, topics, &args)).await?;
    ensure!(
        output.status.success(),
        "producer failed:\n{}",
        text(&output)
    );
    let summary = summary(&output)?;
    let wanted = expected(GeneratorConfig {
        users,
        orders,
        seed,
        start: start_time()?,
    });
    ensure!(
        summary.failed == 0 && summary.acknowledged == summary.sent,
        "{}",
        text(&output)
    );
    ensure!(
        summary.sent == u64::try_from(wanted.len())?,
        "the whole stream is sent: {}",
        text(&output)
    );
    check_topics(stack, topics, &wanted)?;
    Ok(summary)
}

#[tokio::test]
async fn writes_exactly_the_generated_stream() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topics = Topics::unique();
    let seed = 20_261_124;
    let summary = produce_the_whole_stream(&stack, &topics, (200, 600, seed), &[]).await?;
    assert_eq!(summary.seed, seed);
    assert_eq!(partition_count(&stack, &topics.users)?, 3);
    assert_eq!(partition_count(&stack, &topics.orders)?, 5);
    topics.delete(&stack).await
}

#[tokio::test]
async fn refuses_a_topic_with_another_partition_count() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topics = Topics::unique();
    let rf = i32::try_from(stack.broker_count)?;
    ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topics.users, 2, rf)],
        METADATA_TIMEOUT,
    )
    .await?;

    let output = run(command(
        &stack,
        &topics,
        &["--users", "10", "--orders", "10", "--seed", "1"],
    ))
    .await?;
    let all = text(&output);
    assert!(
        !output.status.success(),
        "a mismatching topic must fail the run:\n{all}"
    );
    assert!(
        all.contains(&format!(
            "topic `{}` exists with 2 partitions",
            topics.users
        )),
        "the error names the topic and its layout:\n{all}"
    );
    assert_eq!(
        record_count(&stack, &topics.users, 2)?,
        0,
        "nothing was written"
    );
    topics.delete(&stack).await
}

/// Generation is sequential, so whatever stops it early, the records written are the stream's
/// first `sent` events.
fn prefix(config: GeneratorConfig, sent: u64) -> Vec<(EntityKind, String, Vec<u8>)> {
    let mut all = expected(config);
    all.truncate(usize::try_from(sent).unwrap_or(usize::MAX));
    all
}

#[tokio::test]
async fn sigint_stops_cleanly_with_everything_acknowledged() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topics = Topics::unique();
    let (users, orders, seed) = (5_000, 15_000, 7);
    let child = command(
        &stack,
        &topics,
        &[
            "--users",
            &users.to_string(),
            "--orders",
            &orders.to_string(),
            "--seed",
            &seed.to_string(),
            "--rate",
            "500",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    let pid = child.id().context("producer has no pid")?;

    // Interrupt once it is writing to both topics.
    wait_for("records in both topics", Duration::from_secs(60), || {
        let counts = (|| -> Result<(i64, i64)> {
            Ok((
                record_count(&stack, &topics.users, 3)?,
                record_count(&stack, &topics.orders, 5)?,
            ))
        })();
        async move {
            let (users, orders) = counts?;
            Ok((users > 10 && orders > 10).then_some(()))
        }
    })
    .await?;
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await?;
    ensure!(kill.success(), "could not signal the producer");

    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .context("the producer did not stop after SIGINT")??;
    ensure!(
        output.status.success(),
        "producer failed:\n{}",
        text(&output)
    );
    let summary = summary(&output)?;
    assert_eq!(summary.failed, 0, "{}", text(&output));
    assert_eq!(summary.acknowledged, summary.sent, "{}", text(&output));
    let config = GeneratorConfig {
        users,
        orders,
        seed,
        start: start_time()?,
    };
    let wanted = prefix(config.clone(), summary.sent);
    assert!(
        (summary.sent as usize) < expected(config).len(),
        "stopped before the end of the stream"
    );
    assert!(
        text(&output).contains("SIGINT"),
        "the signal is logged:\n{}",
        text(&output)
    );
    check_topics(&stack, &topics, &wanted)?;
    topics.delete(&stack).await
}

#[tokio::test]
async fn duration_ends_the_run_normally() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topics = Topics::unique();
    let config = GeneratorConfig {
        users: 5_000,
        orders: 15_000,
        seed: 99,
        start: start_time()?,
    };
    let output = run(command(
        &stack,
        &topics,
        &[
            "--users",
            "5000",
            "--orders",
            "15000",
            "--seed",
            "99",
            "--rate",
            "200",
            "--duration",
            "2s",
        ],
    ))
    .await?;
    ensure!(
        output.status.success(),
        "producer failed:\n{}",
        text(&output)
    );
    let summary = summary(&output)?;
    assert_eq!(summary.failed, 0, "{}", text(&output));
    assert_eq!(summary.acknowledged, summary.sent, "{}", text(&output));
    // The pacer never allows more than rate × duration + 1; how many fewer depends on how much
    // CPU the machine gave the producer in those 2 s, so only "some" is asserted below that.
    assert!(
        (1..=401).contains(&summary.sent),
        "sent {} at 200/s in 2 s",
        summary.sent
    );
    assert!(
        text(&output).contains("stopped=\"duration_elapsed\""),
        "the run ends because the duration elapsed, not because the stream did:\n{}",
        text(&output)
    );
    check_topics(&stack, &topics, &prefix(config, summary.sent))?;
    topics.delete(&stack).await
}

/// With a client queue far smaller than the stream, the producer waits for room again and again
/// and still writes exactly the stream.
#[tokio::test]
async fn a_full_client_queue_is_waited_out() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topics = Topics::unique();
    let small_queue = [
        "--kafka-option",
        "queue.buffering.max.messages=20",
        "--kafka-option",
        "queue.buffering.max.kbytes=4",
    ];
    produce_the_whole_stream(&stack, &topics, (100, 400, 11), &small_queue).await?;
    topics.delete(&stack).await
}
