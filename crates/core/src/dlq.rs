//! The dead-letter topic: records that can never be applied are parked in `<topic>.dlq` with
//! headers that say why and where they came from, and the partition moves on.
//!
//! A dead-lettered record counts as handled only once the dead-letter write is acknowledged
//! (acks=all): only then may the source offset be stored.

use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ReasonLabels};
use crate::retry::{retry_until_cancelled, Classify};
use crate::runtime::Cancelled;

/// Headers on every dead-lettered record.
pub const HEADER_REASON: &str = "dlq.reason";
pub const HEADER_ERROR: &str = "dlq.error";
pub const HEADER_TOPIC: &str = "dlq.source.topic";
pub const HEADER_PARTITION: &str = "dlq.source.partition";
pub const HEADER_OFFSET: &str = "dlq.source.offset";

/// The dead-letter topic of a source topic.
pub fn topic_for(source: &str) -> String {
    format!("{source}.dlq")
}

/// One record to park, with where it came from and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub source_topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Short machine-readable reason (`undecodable`, `missing_parent`, …).
    pub reason: &'a str,
    /// Human-readable detail.
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
#[error("writing to dead-letter topic `{topic}` failed: {source}")]
pub struct DlqError {
    topic: String,
    #[source]
    source: rdkafka::error::KafkaError,
}

impl Classify for DlqError {
    fn is_transient(&self) -> bool {
        // A dead-letter write must eventually succeed; nothing else may happen to the record.
        true
    }
}

/// Largest payload copied into the dead-letter topic; a bigger one is cut (the headers keep the
/// source position, so the original can still be read from the source topic).
pub const MAX_PARKED_BYTES: usize = 256 * 1024;

/// The producer dead letters are written with: `base` (brokers and extra options) with acks=all
/// and idempotence.
pub fn producer(mut base: rdkafka::ClientConfig) -> rdkafka::error::KafkaResult<FutureProducer> {
    base.set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
}

/// Writes one dead letter and waits for its acknowledgement.
pub async fn park(producer: &FutureProducer, letter: &DeadLetter<'_>) -> Result<(), DlqError> {
    let topic = topic_for(letter.source_topic);
    let partition = letter.partition.to_string();
    let offset = letter.offset.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: HEADER_REASON,
            value: Some(letter.reason),
        })
        .insert(Header {
            key: HEADER_ERROR,
            value: Some(letter.error.as_str()),
        })
        .insert(Header {
            key: HEADER_TOPIC,
            value: Some(letter.source_topic),
        })
        .insert(Header {
            key: HEADER_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: HEADER_OFFSET,
            value: Some(offset.as_str()),
        });
    let payload = letter.payload.map(|p| &p[..p.len().min(MAX_PARKED_BYTES)]);
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
    if let Some(key) = letter.key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(5))
        .await
        .map(|_| ())
        .map_err(|(source, _)| DlqError { topic, source })
}

/// Parks `message` in its topic's dead-letter topic with `reason`, retrying the write until it is
/// acknowledged (a record must end up somewhere), and counts it in `metrics`.
pub async fn park_message(
    producer: &FutureProducer,
    metrics: &Metrics,
    message: &OwnedMessage,
    reason: &str,
    error: String,
    cancel: &CancellationToken,
) -> Result<(), Cancelled> {
    tracing::warn!(
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
        reason,
        error = %error,
        "dead-lettering record"
    );
    let letter = DeadLetter {
        source_topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload(),
        reason,
        error,
    };
    let parked =
        retry_until_cancelled("dead-letter write", cancel, || park(producer, &letter)).await?;
    if parked.is_ok() {
        metrics
            .dead_lettered
            .get_or_create(&ReasonLabels {
                topic: message.topic().to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }
    Ok(())
}
