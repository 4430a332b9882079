//! Kafka as the tests see it: reading topics back, their offsets, raw records, dead letters and
//! their replays, and cleaning up groups and topics.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::dlq::Parked;
use cdc_core::replay::{HEADER_REPLAYED_AT, HEADER_REPLAYED_FROM};
use cdc_core::topics::{read_to_end, ReadFrom};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use uuid::Uuid;

use crate::{wait_for, Stack};

/// Longest single Kafka request of a test.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A client configuration for the stack's brokers.
pub fn config(stack: &Stack) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &stack.brokers);
    config
}

/// An idempotent acks=all producer that takes records up to 2 MB.
pub fn producer(stack: &Stack) -> Result<FutureProducer> {
    config(stack)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        .create()
        .context("creating a producer")
}

/// The end offset of every partition of `topic`.
pub fn end_offsets(stack: &Stack, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = config(stack).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut ends = BTreeMap::new();
    for partition in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT)?;
        ends.insert(partition, high);
    }
    Ok(ends)
}

/// Records in a topic (start to end offset, over every partition).
pub fn records_in(stack: &Stack, topic: &str) -> Result<u64> {
    let consumer: BaseConsumer = config(stack).create()?;
    let mut total = 0;
    for partition in end_offsets(stack, topic)?.keys() {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, KAFKA_TIMEOUT)?;
        total += u64::try_from(high - low)?;
    }
    Ok(total)
}

/// Every record of `topic` from the offsets in `from` (the start where none is given) up to the
/// end offsets of now, in offset order within each partition.
pub fn records_since(
    stack: &Stack,
    topic: &str,
    from: &BTreeMap<i32, i64>,
) -> Result<Vec<OwnedMessage>> {
    Ok(read_to_end(
        &config(stack),
        topic,
        &ReadFrom::Offsets(from.clone()),
        Duration::from_secs(60),
    )?)
}

/// Every record of `topic` from the beginning up to the end it had when called.
pub fn read_topic(stack: &Stack, topic: &str) -> Result<Vec<OwnedMessage>> {
    records_since(stack, topic, &BTreeMap::new())
}

/// Sends one record as is to a partition of `topic` and returns its offset.
pub async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<(i32, i64)> {
    send_raw_at(producer, topic, partition, key, payload, None).await
}

/// [`send_raw`] with the record's timestamp given (milliseconds): a record sent at that time
/// and appended only now, as after a long retry.
pub async fn send_raw_at(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    timestamp_ms: Option<i64>,
) -> Result<(i32, i64)> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(timestamp) = timestamp_ms {
        record = record.timestamp(timestamp);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    let delivery = producer
        .send(record, KAFKA_TIMEOUT)
        .await
        .map_err(|(error, _)| error)?;
    Ok((delivery.partition, delivery.offset))
}

/// Commits offset 0 for every partition of `topic` in `group` (the group must have no members).
pub fn reset_to_earliest(stack: &Stack, group: &str, topic: &str) -> Result<()> {
    let consumer: BaseConsumer = config(stack)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut offsets = TopicPartitionList::new();
    for partition in end_offsets(stack, topic)?.keys() {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(0))?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    Ok(())
}

/// A record's value as JSON (None for tombstones and undecodable values).
pub fn json_value(message: &OwnedMessage) -> Option<Value> {
    serde_json::from_slice(message.payload()?).ok()
}

/// Debezium's record for a change of row `id` with operation `op`, if present.
pub fn find_change<'a>(
    records: &'a [OwnedMessage],
    id: Uuid,
    op: &str,
) -> Option<&'a OwnedMessage> {
    let id = id.to_string();
    records.iter().find(|m| {
        json_value(m).is_some_and(|v| {
            let payload = &v["payload"];
            let image = if op == "d" {
                &payload["before"]
            } else {
                &payload["after"]
            };
            payload["op"] == op && image["id"] == id.as_str()
        })
    })
}

/// Waits until Debezium has put changes of these rows into `topic`, past `from`; returns the
/// records since `from`.
pub async fn wait_captured(
    stack: &Stack,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    changes: &[(Uuid, &str)],
) -> Result<Vec<OwnedMessage>> {
    wait_for(
        &format!("Debezium to capture {} changes into {topic}", changes.len()),
        Duration::from_secs(120),
        || async move {
            let records = records_since(stack, topic, from)?;
            let all = changes
                .iter()
                .all(|(id, op)| find_change(&records, *id, op).is_some());
            Ok(all.then_some(records))
        },
    )
    .await
}

/// Every record of a dead-letter topic, read back as a dead letter (its `dlq.*` headers complete).
pub fn dead_letters(stack: &Stack, dlq: &str) -> Result<Vec<Parked>> {
    let mut letters = Vec::new();
    for record in read_topic(stack, dlq)? {
        let letter = Parked::from_message(&record).with_context(|| format!("reading {dlq}"))?;
        ensure!(!letter.error.is_empty(), "dead letter without error text");
        letters.push(letter);
    }
    Ok(letters)
}

/// The value of a record's first header called `name`, as text.
pub fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    record
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
}

/// Each of `parked` was replayed once among `replayed`, and nothing else: on its source
/// partition, with its key and payload, and `dlq.replayed_from` naming the dead letter.
pub fn check_replayed(parked: &[Parked], replayed: &[OwnedMessage]) -> Result<()> {
    ensure!(
        replayed.len() == parked.len(),
        "{} records replayed for {} dead letters",
        replayed.len(),
        parked.len()
    );
    for letter in parked {
        let from = format!(
            "{}/{}/{}",
            letter.dlq_topic, letter.dlq_partition, letter.dlq_offset
        );
        let copies: Vec<&OwnedMessage> = replayed
            .iter()
            .filter(|r| header(r, HEADER_REPLAYED_FROM).as_deref() == Some(from.as_str()))
            .collect();
        ensure!(copies.len() == 1, "{from} replayed {} times", copies.len());
        let copy = copies[0];
        ensure!(
            copy.partition() == letter.source_partition
                && copy.key() == letter.key.as_deref()
                && copy.payload() == letter.payload.as_deref()
                && header(copy, HEADER_REPLAYED_AT).is_some(),
            "{from} was not replayed as parked, to partition {}",
            letter.source_partition
        );
    }
    Ok(())
}

fn admin(stack: &Stack) -> Result<AdminClient<DefaultClientContext>> {
    Ok(config(stack).create()?)
}

/// Deletes consumer groups, reporting (not failing on) errors: cleanup after a test.
pub async fn delete_groups(stack: &Stack, groups: &[&str]) {
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    match admin(stack) {
        Ok(admin) => {
            if let Err(error) = admin.delete_groups(groups, &options).await {
                eprintln!("could not delete groups {groups:?}: {error}");
            }
        }
        Err(error) => eprintln!("could not delete groups {groups:?}: {error}"),
    }
}

/// Deletes topics, reporting (not failing on) errors: cleanup after a test.
pub async fn delete_topics(stack: &Stack, topics: &[&str]) {
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    match admin(stack) {
        Ok(admin) => {
            if let Err(error) = admin.delete_topics(topics, &options).await {
                eprintln!("could not delete topics {topics:?}: {error}");
            }
        }
        Err(error) => eprintln!("could not delete topics {topics:?}: {error}"),
    }
}

/// Deletes topics and their dead-letter topics, reporting (not failing on) errors: cleanup after
/// a test.
pub async fn delete_topics_and_dead_letters(stack: &Stack, topics: &[&str]) {
    let dlqs: Vec<String> = topics.iter().map(|t| cdc_core::dlq::topic_for(t)).collect();
    let mut all: Vec<&str> = topics.to_vec();
    all.extend(dlqs.iter().map(String::as_str));
    delete_topics(stack, &all).await;
}
