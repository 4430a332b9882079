//! Kafka cluster: acks=all writes read back from partitions led by every broker, and the
//! cluster's behaviour with one and two brokers down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use cdc_core::topics::{ensure_topics, TopicOutcome, TopicSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::Message;
use stack_tests::kafka::read_topic;
use stack_tests::{exclusive, shared, unique_name, wait_for, RestartOnDrop, Stack};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn producer(stack: &Stack, message_timeout_ms: u32) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", message_timeout_ms.to_string())
        .set("linger.ms", "5")
        .create()
        .context("creating producer")
}

/// Partition id -> (leader broker id, in-sync replica count) for every partition of `topic`.
fn partition_state(stack: &Stack, topic: &str) -> Result<BTreeMap<i32, (i32, usize)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let topic_md = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic missing from metadata")?;
    Ok(topic_md
        .partitions()
        .iter()
        .map(|p| (p.id(), (p.leader(), p.isr().len())))
        .collect())
}

/// Leader broker id of every partition of `topic`.
fn leaders(stack: &Stack, topic: &str) -> Result<BTreeMap<i32, i32>> {
    Ok(partition_state(stack, topic)?
        .into_iter()
        .map(|(partition, (leader, _))| (partition, leader))
        .collect())
}

/// Smallest in-sync replica set size over the topic's partitions.
fn min_isr(stack: &Stack, topic: &str) -> Result<usize> {
    partition_state(stack, topic)?
        .values()
        .map(|(_, isr)| *isr)
        .min()
        .context("topic has no partitions")
}

/// Payloads of every record of `topic`.
fn read_all(stack: &Stack, topic: &str) -> Result<Vec<String>> {
    Ok(read_topic(stack, topic)?
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect())
}

/// Sends `count` records round-robin over the partitions; returns (acknowledged, refused) payloads.
async fn send_batch(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    label: &str,
    count: usize,
) -> (Vec<String>, Vec<String>) {
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let payload = format!("{label}-{i}");
        let partition = i32::try_from(i).unwrap_or(0) % partitions;
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(&payload)
            .payload(&payload);
        // send_result only enqueues; the delivery future resolves on the broker's answer
        let delivery = producer.send_result(record).map_err(|(error, _)| error);
        pending.push((payload.clone(), delivery));
    }
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for (payload, delivery) in pending {
        match delivery {
            Ok(future) => match future.await {
                Ok(Ok(_)) => acked.push(payload),
                Ok(Err(_)) | Err(_) => refused.push(payload),
            },
            Err(_) => refused.push(payload),
        }
    }
    (acked, refused)
}

#[tokio::test]
async fn acks_all_round_trip_over_partitions_led_by_every_broker() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topic = unique_name("it_roundtrip");
    let partitions = 6;
    let rf = i32::try_from(stack.broker_count)?;
    let outcome = ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topic, partitions, rf)],
        METADATA_TIMEOUT,
    )
    .await?;
    assert_eq!(outcome, vec![TopicOutcome::Created]);

    let led_by: BTreeSet<i32> = wait_for(
        "leaders for every partition",
        Duration::from_secs(30),
        || {
            let leaders = leaders(&stack, &topic);
            async move {
                let leaders = leaders?;
                Ok((leaders.len() == 6 && leaders.values().all(|l| *l >= 0))
                    .then(|| leaders.values().copied().collect()))
            }
        },
    )
    .await?;
    assert_eq!(
        led_by.len(),
        stack.broker_count,
        "partition leaders {led_by:?} should span every broker"
    );

    let producer = producer(&stack, 30_000)?;
    let (acked, refused) = send_batch(&producer, &topic, partitions, "m", 600).await;
    assert!(
        refused.is_empty(),
        "healthy cluster refused {} records",
        refused.len()
    );

    let mut read = read_all(&stack, &topic)?;
    read.sort();
    let mut expected = acked;
    expected.sort();
    assert_eq!(
        read, expected,
        "records read back differ from records acknowledged"
    );

    // Asking again for the same topic with another layout is refused, not silently accepted.
    let mismatch = ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topic, 3, rf)],
        METADATA_TIMEOUT,
    )
    .await;
    assert!(
        mismatch.is_err(),
        "a topic with a different partition count must be reported"
    );
    Ok(())
}

#[tokio::test]
async fn one_broker_down_writes_continue_two_down_refused_then_heals() -> Result<()> {
    let stack = Stack::from_env()?;
    if !stack.is_ha() {
        eprintln!(
            "skipped: needs the ha profile (3 brokers), stack runs {}",
            stack.profile
        );
        return Ok(());
    }
    let _exclusive = exclusive().await;
    let topic = unique_name("it_brokers");
    let partitions = 6;
    ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topic, partitions, 3)],
        METADATA_TIMEOUT,
    )
    .await?;
    let mut services = RestartOnDrop::new();

    // One broker down: min.insync.replicas=2 is still met, every acks=all write succeeds.
    services.take_down("kill", "kafka3")?;
    let producer_one_down = producer(&stack, 60_000)?;
    let (acked_one_down, refused) =
        send_batch(&producer_one_down, &topic, partitions, "one-down", 300).await;
    assert!(
        refused.is_empty(),
        "{} writes refused with only one broker down",
        refused.len()
    );
    drop(producer_one_down);

    // Two brokers down: the remaining replica alone is below min ISR; nothing may be acknowledged.
    services.take_down("kill", "kafka2")?;
    let producer_two_down = producer(&stack, 15_000)?;
    let (acked_two_down, refused_two_down) =
        send_batch(&producer_two_down, &topic, partitions, "two-down", 60).await;
    assert!(
        acked_two_down.is_empty(),
        "{} writes were acknowledged with two of three brokers down",
        acked_two_down.len()
    );
    assert_eq!(refused_two_down.len(), 60);
    let _ = producer_two_down.flush(Duration::from_secs(1));
    drop(producer_two_down);

    // Both return: the cluster heals (full ISR again) and accepts writes.
    services.bring_back("kafka2")?;
    services.bring_back("kafka3")?;
    wait_for(
        "every partition back to 3 in-sync replicas",
        Duration::from_secs(120),
        || {
            let isr = min_isr(&stack, &topic);
            async move { Ok((isr? == 3).then_some(())) }
        },
    )
    .await?;
    let producer_healed = producer(&stack, 60_000)?;
    let (acked_healed, refused) =
        send_batch(&producer_healed, &topic, partitions, "healed", 300).await;
    assert!(
        refused.is_empty(),
        "{} writes refused after the cluster healed",
        refused.len()
    );

    // Every acknowledged record is there and nothing was invented. A refused write's outcome is
    // unknown, not "absent": the leader may have appended it before its followers' loss showed in
    // the ISR, and then it survives. That is why every sink in this pipeline is idempotent.
    let read: BTreeSet<String> = read_all(&stack, &topic)?.into_iter().collect();
    for payload in acked_one_down.iter().chain(&acked_healed) {
        assert!(read.contains(payload), "acknowledged record {payload} lost");
    }
    let sent: BTreeSet<&String> = acked_one_down
        .iter()
        .chain(&acked_healed)
        .chain(&refused_two_down)
        .collect();
    let unknown: Vec<_> = read.iter().filter(|p| !sent.contains(p)).collect();
    assert!(unknown.is_empty(), "records nobody sent: {unknown:?}");
    Ok(())
}
