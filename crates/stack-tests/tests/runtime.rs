//! The per-partition runtime (`cdc_core::runtime`) on the real brokers: how it forms batches,
//! stores offsets, and recovers — visibly — when a handler gives up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::metrics::Metrics;
use cdc_core::outcome::Interrupted;
use cdc_core::runtime::{self, BatchHandler, RunEnd, RuntimeOptions};
use cdc_core::topics::{ensure_topics, TopicSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use stack_tests::{shared, unique_name, Stack};
use tokio_util::sync::CancellationToken;

/// Notes every batch's offsets and takes a little while over each, as a sink would.
#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<Vec<i64>>>,
}

impl BatchHandler for Recorder {
    async fn handle(
        &self,
        batch: Vec<OwnedMessage>,
        _: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let offsets = batch.iter().map(Message::offset).collect();
        self.batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(offsets);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

/// With no linger at all, records that are already fetched still go out in full batches (not one
/// record per batch), every record is handed over once and in order, and the group's committed
/// offset ends after the last record.
#[tokio::test(flavor = "multi_thread")]
async fn fetched_records_form_full_batches_without_linger() -> Result<()> {
    const RECORDS: i64 = 1_000;
    const MAX_BATCH: usize = 100;
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let (topic, config) = topic_with_records(&stack, "runtime_batches", RECORDS).await?;
    let recorder = Arc::new(Recorder::default());
    let options = RuntimeOptions {
        max_batch: MAX_BATCH,
        batch_linger: Duration::ZERO,
        pipeline: 2,
        idle_timeout: Some(Duration::from_secs(3)),
        ..RuntimeOptions::default()
    };
    let end = run_to_end(&config, &topic, Arc::clone(&recorder), options).await?;
    ensure!(end == RunEnd::Idle, "the runtime ended with {end:?}");

    let batches = recorder
        .batches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let handed: Vec<i64> = batches.iter().flatten().copied().collect();
    ensure!(
        handed == (0..RECORDS).collect::<Vec<_>>(),
        "records handed over out of order, twice or not at all: {} handed, first batches {:?}",
        handed.len(),
        batches.iter().take(5).collect::<Vec<_>>()
    );
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    let full = sizes.iter().filter(|&&n| n == MAX_BATCH).count();
    // 1,000 records of a few bytes come in one or two fetches: nearly every batch is full.
    ensure!(
        batches.len() <= 20 && full >= 5,
        "{} batches ({full} full) for {RECORDS} fetched records: {sizes:?}",
        batches.len()
    );

    let offset = committed(&config, &topic)?;
    ensure!(
        offset == Offset::Offset(RECORDS),
        "committed offset {offset:?}, expected {RECORDS}"
    );
    Ok(())
}

/// A one-partition topic holding `records` records (payload = its index), and a consumer
/// configuration for a fresh group on it.
async fn topic_with_records(
    stack: &Stack,
    prefix: &str,
    records: i64,
) -> Result<(String, ClientConfig)> {
    let topic = unique_name(prefix);
    let rf = i32::try_from(stack.broker_count)?;
    ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topic, 1, rf)],
        Duration::from_secs(30),
    )
    .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("acks", "all")
        .create()?;
    let mut deliveries = Vec::new();
    for i in 0..records {
        let payload = i.to_string();
        let record = FutureRecord::to(&topic).key(&payload).payload(&payload);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(error, _)| error)
                .context("enqueueing a record")?,
        );
    }
    for delivery in deliveries {
        delivery
            .await
            .context("delivery cancelled")?
            .map_err(|(error, _)| error)
            .context("record refused")?;
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", unique_name(&format!("{prefix}_group")))
        .set("auto.offset.reset", "earliest");
    Ok((topic, config))
}

/// Runs the runtime on `topic` until it ends by itself (idle, or gave up), within two minutes.
async fn run_to_end<H: BatchHandler>(
    config: &ClientConfig,
    topic: &str,
    handler: Arc<H>,
    options: RuntimeOptions,
) -> Result<RunEnd> {
    let topics = [topic];
    let run = runtime::run(
        config.clone(),
        &topics,
        handler,
        options,
        CancellationToken::new(),
    );
    Ok(tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .context("the runtime did not end by itself")??)
}

/// The group's committed offset of partition 0.
fn committed(config: &ClientConfig, topic: &str) -> Result<Offset> {
    let consumer: BaseConsumer = config.create()?;
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    committed
        .find_partition(topic, 0)
        .map(|p| p.offset())
        .context("no committed offset")
}

/// What a [`Flaky`] handler saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A batch handed over: its first and last offset.
    Started(i64, i64),
    /// The handler gave up on the batch starting here.
    GaveUp(i64),
    /// The handler panicked on the batch starting here.
    Panicked(i64),
    Durable(i64, i64),
}

/// Gives up (`failures` times) or panics (`panics` times) on the batch holding `at`, then
/// behaves; with `for_ever`, gives up on it every time.
struct Flaky {
    at: i64,
    failures: Mutex<u32>,
    panics: Mutex<u32>,
    for_ever: bool,
    seen: Mutex<Vec<Seen>>,
    metrics: Metrics,
    /// (stalled partitions, ready) whenever the handler ran after a stall began.
    health: Mutex<Vec<(i64, bool)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Flaky {
    fn new(at: i64, failures: u32, panics: u32, metrics: &Metrics) -> Self {
        Self {
            at,
            failures: Mutex::new(failures),
            panics: Mutex::new(panics),
            for_ever: false,
            seen: Mutex::new(Vec::new()),
            metrics: metrics.clone(),
            health: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }
}

impl BatchHandler for Flaky {
    async fn handle(
        &self,
        batch: Vec<OwnedMessage>,
        _: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let (first, last) = (
            batch.first().map_or(-1, Message::offset),
            batch.last().map_or(-1, Message::offset),
        );
        lock(&self.seen).push(Seen::Started(first, last));
        lock(&self.health).push((
            self.metrics.partitions_stalled.get(),
            self.metrics.is_ready(),
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
        if (first..=last).contains(&self.at) {
            let panic = {
                let mut panics = lock(&self.panics);
                let now = *panics > 0;
                *panics = panics.saturating_sub(1);
                now
            };
            if panic {
                lock(&self.seen).push(Seen::Panicked(first));
                panic!("a handler bug on offset {}", self.at);
            }
            let give_up = {
                let mut failures = lock(&self.failures);
                let now = self.for_ever || *failures > 0;
                *failures = failures.saturating_sub(1);
                now
            };
            if give_up {
                lock(&self.seen).push(Seen::GaveUp(first));
                return Err(Interrupted::gave_up(
                    "flaky write",
                    "permission denied for table t",
                ));
            }
        }
        lock(&self.seen).push(Seen::Durable(first, last));
        Ok(())
    }
}

fn options(metrics: &Metrics) -> RuntimeOptions {
    RuntimeOptions {
        max_batch: 25,
        batch_linger: Duration::ZERO,
        pipeline: 2,
        idle_timeout: Some(Duration::from_secs(4)),
        restart_backoff_max: Duration::from_secs(2),
        metrics: Some(metrics.clone()),
        ..RuntimeOptions::default()
    }
}

/// A handler that gives up twice and then panics once on the same batch: each time the partition
/// is reported stalled (metric and readiness) and its worker restarts from the stored offset —
/// the next batch handed over starts exactly at the failed batch's first record — and in the end
/// every record is durable exactly in order, the stall is cleared and the group's committed offset
/// is the end of the topic.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_gives_up_stalls_visibly_and_restarts_from_the_stored_offset() -> Result<()> {
    const RECORDS: i64 = 200;
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let (topic, config) = topic_with_records(&stack, "runtime_stall", RECORDS).await?;
    let metrics = Metrics::default();
    metrics.set_ready(true);
    let handler = Arc::new(Flaky::new(110, 2, 1, &metrics));
    let end = run_to_end(&config, &topic, Arc::clone(&handler), options(&metrics)).await?;
    ensure!(end == RunEnd::Idle, "the runtime ended with {end:?}");

    let seen = handler.seen();
    let failures: Vec<(usize, i64)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Seen::GaveUp(first) | Seen::Panicked(first) => Some((i, *first)),
            _ => None,
        })
        .collect();
    ensure!(failures.len() == 3, "expected 3 failures: {seen:?}");
    for (at, first) in &failures {
        // Batches already in flight may still start or finish; the first batch started after the
        // worker restarts begins at the failed batch.
        let restarted = seen[at + 1..].iter().find_map(|s| match s {
            Seen::Started(start, _) if start <= first => Some(*start),
            _ => None,
        });
        ensure!(
            restarted == Some(*first),
            "after the failure at {first} the worker restarted at {restarted:?}: {seen:?}"
        );
    }
    // Durable batches, in the order their offsets could be stored, cover every record.
    let mut next = 0;
    for s in &seen {
        if let Seen::Durable(first, last) = s {
            if *first == next {
                next = last + 1;
            }
        }
    }
    ensure!(next == RECORDS, "durable records stop at {next}: {seen:?}");
    let health = lock(&handler.health).clone();
    ensure!(
        health
            .iter()
            .any(|(stalled, ready)| *stalled == 1 && !ready),
        "the stall was never visible: {health:?}"
    );
    ensure!(
        metrics.partitions_stalled.get() == 0 && metrics.is_ready(),
        "the stall was not cleared"
    );
    let text = metrics.render();
    ensure!(
        text.contains(&format!(
            "cdc_partition_worker_restarts_total{{topic=\"{topic}\",partition=\"0\"}} 3"
        )),
        "{text}"
    );
    let offset = committed(&config, &topic)?;
    ensure!(offset == Offset::Offset(RECORDS), "committed {offset:?}");
    Ok(())
}

/// With a restart limit, a partition that can never make progress ends the run with a named
/// outcome ("gave up", never "idle"): its stored offset stays before the failing batch, and the
/// records up to there are committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_out_of_restarts_ends_the_run_as_gave_up() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let (topic, config) = topic_with_records(&stack, "runtime_gave_up", 100).await?;
    let metrics = Metrics::default();
    let mut handler = Flaky::new(60, 0, 0, &metrics);
    handler.for_ever = true;
    let handler = Arc::new(handler);
    let mut options = options(&metrics);
    options.max_worker_restarts = Some(2);
    let end = run_to_end(&config, &topic, Arc::clone(&handler), options).await?;
    match &end {
        RunEnd::GaveUp {
            topic: t,
            partition: 0,
            why,
        } if *t == topic && why.error.contains("permission denied") => {}
        other => anyhow::bail!("expected GaveUp on {topic}/0, got {other:?}"),
    }
    let gave_up: Vec<i64> = handler
        .seen()
        .iter()
        .filter_map(|s| match s {
            Seen::GaveUp(first) => Some(*first),
            _ => None,
        })
        .collect();
    ensure!(
        gave_up.len() == 3 && gave_up.iter().all(|first| *first == gave_up[0]),
        "{:?}",
        handler.seen()
    );
    let offset = committed(&config, &topic)?;
    ensure!(
        offset == Offset::Offset(gave_up[0]),
        "committed {offset:?}, the failing batch starts at {}",
        gave_up[0]
    );
    Ok(())
}

/// A handler that let go of its records parks one by its position: the record is read again
/// from Kafka and its dead letter holds its key and payload as they were, with the reason and
/// the source position; a position past the partition's end is refused as gone, not waited on.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_let_go_of_is_read_again_by_its_offset_for_its_dead_letter() -> Result<()> {
    use cdc_core::dlq::{self, DeadLetters, Position};
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let (topic, _) = topic_with_records(&stack, "runtime_reread", 10).await?;
    let rf = i32::try_from(stack.broker_count)?;
    ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(dlq::topic_for(&topic), 1, rf)],
        Duration::from_secs(30),
    )
    .await?;
    let config = stack_tests::kafka::config(&stack);
    let at = |offset| Position {
        topic: &topic,
        partition: 0,
        offset,
    };
    let again = dlq::reread(&config, at(7)).await?;
    ensure!(
        again.offset() == 7 && again.key() == Some(b"7") && again.payload() == Some(b"7"),
        "read again: {again:?}"
    );
    let past_the_end = dlq::reread(&config, at(1_000)).await;
    ensure!(
        matches!(&past_the_end, Err(error) if error.is_gone()),
        "offset 1000 of a 10-record partition: {past_the_end:?}"
    );

    let letters = DeadLetters::new(dlq::producer(config.clone())?, Duration::from_secs(30))
        .rereading_with(config);
    let mut tally = cdc_core::metrics::Tally::default();
    letters
        .park_at(
            at(3),
            "rejected_by_the_sink",
            "the sink refused it".to_owned(),
            &mut tally,
            &CancellationToken::new(),
        )
        .await
        .map_err(|interrupted| anyhow::anyhow!("parking did not end: {interrupted:?}"))?;
    ensure!(tally.parked == ["rejected_by_the_sink"], "{tally:?}");
    let parked = stack_tests::kafka::dead_letters(&stack, &dlq::topic_for(&topic))?;
    ensure!(parked.len() == 1, "{parked:?}");
    let letter = &parked[0];
    ensure!(
        (
            letter.source_topic.as_str(),
            letter.source_partition,
            letter.source_offset
        ) == (topic.as_str(), 0, 3)
            && letter.reason == "rejected_by_the_sink"
            && letter.error == "the sink refused it"
            && letter.key.as_deref() == Some(b"3".as_slice())
            && letter.payload.as_deref() == Some(b"3".as_slice()),
        "{letter:?}"
    );
    stack_tests::kafka::delete_topics_and_dead_letters(&stack, &[&topic]).await;
    Ok(())
}
