//! Kafka as the tests see it: reading topics back, their offsets, raw records, dead letters, and
//! cleaning up groups and topics.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use uuid::Uuid;

use crate::{unique_name, wait_for, Stack};

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
    let ends = end_offsets(stack, topic)?;
    let consumer: BaseConsumer = config(stack)
        .set("group.id", unique_name("it_reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for (partition, end) in &ends {
        let (low, _) = consumer.fetch_watermarks(topic, *partition, KAFKA_TIMEOUT)?;
        let start = from.get(partition).copied().unwrap_or(0).max(low);
        if start < *end {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(start))?;
            remaining.insert(*partition, *end);
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        if std::time::Instant::now() >= deadline {
            bail!("reading {topic} back timed out");
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let partition = message.partition();
        if let Some(end) = remaining.get(&partition).copied() {
            if message.offset() + 1 >= end {
                remaining.remove(&partition);
            }
            if message.offset() < end {
                records.push(message.detach());
            }
        }
    }
    Ok(records)
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
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
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

/// One dead-lettered record: where it came from and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: String,
    pub error: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// Every header, in order.
    pub headers: Vec<(String, String)>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Every record of a dead-letter topic, its `dlq.*` headers read and checked to be complete.
pub fn dead_letters(stack: &Stack, dlq: &str) -> Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    for record in read_topic(stack, dlq)? {
        let headers: Vec<(String, String)> = record
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .with_context(|| format!("dead letter at {dlq}/{} without {name}", record.offset()))
        };
        let letter = DeadLetter {
            reason: header(cdc_core::dlq::HEADER_REASON)?,
            error: header(cdc_core::dlq::HEADER_ERROR)?,
            source_topic: header(cdc_core::dlq::HEADER_TOPIC)?,
            source_partition: header(cdc_core::dlq::HEADER_PARTITION)?.parse()?,
            source_offset: header(cdc_core::dlq::HEADER_OFFSET)?.parse()?,
            headers: headers.clone(),
            key: record.key().map(<[u8]>::to_vec),
            payload: record.payload().map(<[u8]>::to_vec),
        };
        ensure!(!letter.error.is_empty(), "dead letter without error text");
        letters.push(letter);
    }
    Ok(letters)
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
