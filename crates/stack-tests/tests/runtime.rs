//! The per-partition runtime (`cdc_core::runtime`) on the real brokers: how it forms batches and
//! stores offsets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::runtime::{self, BatchHandler, Cancelled, RunEnd, RuntimeOptions};
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
    async fn handle(&self, batch: &[OwnedMessage], _: &CancellationToken) -> Result<(), Cancelled> {
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
    let topic = unique_name("runtime_batches");
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
    for i in 0..RECORDS {
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

    let group = unique_name("runtime_batches_group");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest");
    let recorder = Arc::new(Recorder::default());
    let options = RuntimeOptions {
        max_batch: MAX_BATCH,
        batch_linger: Duration::ZERO,
        pipeline: 2,
        idle_timeout: Some(Duration::from_secs(3)),
        ..RuntimeOptions::default()
    };
    let end = tokio::time::timeout(
        Duration::from_secs(120),
        runtime::run(
            config.clone(),
            &[topic.as_str()],
            Arc::clone(&recorder),
            options,
            CancellationToken::new(),
        ),
    )
    .await
    .context("the runtime did not go idle")??;
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

    let consumer: BaseConsumer = config.create()?;
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(&topic, 0);
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    let offset = committed
        .find_partition(&topic, 0)
        .map(|p| p.offset())
        .context("no committed offset")?;
    ensure!(
        offset == Offset::Offset(RECORDS),
        "committed offset {offset:?}, expected {RECORDS}"
    );
    Ok(())
}
