//! The dead-letter topic: records that can never be applied are parked in `<topic>.dlq` with
//! headers that say why and where they came from, and the partition moves on.
//!
//! Only a record's own defect may send it here; a failure of the infrastructure is retried by the
//! handler instead. A dead-lettered record counts as handled only once the dead-letter write is
//! acknowledged (acks=all): only then may the source offset be stored. The whole dead letter is
//! bounded (key, headers, error text and payload are cut, the cut noted in a header), so it can
//! always be written whatever the record was. A dead letter keeps the record's key, payload and
//! headers as they were, so that it can be replayed once its cause is fixed (`crate::replay`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::metrics::Tally;
use crate::outcome::Interrupted;
use crate::retry::{retry, Classify};

/// Headers on every dead-lettered record.
pub const HEADER_REASON: &str = "dlq.reason";
pub const HEADER_ERROR: &str = "dlq.error";
pub const HEADER_TOPIC: &str = "dlq.source.topic";
pub const HEADER_PARTITION: &str = "dlq.source.partition";
pub const HEADER_OFFSET: &str = "dlq.source.offset";
/// Present when the key, the headers, the error or the payload was cut: what was cut and its
/// original size (the headers' count), e.g. `key=2097152,payload=3145728`.
pub const HEADER_TRUNCATED: &str = "dlq.truncated";

/// The headers parking writes; a source record's header of one of these names is not copied.
const PARKING_HEADERS: [&str; 6] = [
    HEADER_REASON,
    HEADER_ERROR,
    HEADER_TOPIC,
    HEADER_PARTITION,
    HEADER_OFFSET,
    HEADER_TRUNCATED,
];

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
    /// The record's own headers, in order.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
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
    source: KafkaError,
}

impl Classify for DlqError {
    /// A bounded dead letter that the broker still refuses as too large cannot be fixed by
    /// retrying; everything else (brokers away, too few in-sync replicas) may pass.
    fn is_transient(&self) -> bool {
        !matches!(
            self.source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::InvalidRecord
            )
        )
    }
}

/// A dead letter read back: why it was parked and where it came from, as its headers say, and
/// where it lies itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub reason: String,
    pub error: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// What parking cut ([`HEADER_TRUNCATED`]), if anything.
    pub truncated: Option<String>,
    /// Every header, in order (`dlq.*` and any the source record had), values as written.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// When it was parked, ms since the epoch (the record's timestamp).
    pub parked_at: Option<i64>,
    /// The dead letter's own place: the dead-letter topic, partition and offset.
    pub dlq_topic: String,
    pub dlq_partition: i32,
    pub dlq_offset: i64,
}

/// A record on a dead-letter topic without the headers a dead letter has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record at offset {offset} is not a dead letter: {problem}")]
pub struct NotADeadLetter {
    pub offset: i64,
    pub problem: String,
}

impl Parked {
    /// Reads a record of a dead-letter topic.
    pub fn from_message(message: &OwnedMessage) -> Result<Self, NotADeadLetter> {
        use rdkafka::message::Headers;
        let headers: Vec<(String, Option<Vec<u8>>)> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let problem = |problem: String| NotADeadLetter {
            offset: message.offset(),
            problem,
        };
        let optional = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| {
                    String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned()
                })
        };
        let header =
            |name: &str| optional(name).ok_or_else(|| problem(format!("no {name} header")));
        let number = |name: &str| -> Result<i64, NotADeadLetter> {
            header(name)?
                .parse()
                .map_err(|_| problem(format!("{name} is not a number")))
        };
        Ok(Self {
            reason: header(HEADER_REASON)?,
            error: header(HEADER_ERROR)?,
            source_topic: header(HEADER_TOPIC)?,
            source_partition: i32::try_from(number(HEADER_PARTITION)?)
                .map_err(|_| problem("partition out of range".into()))?,
            source_offset: number(HEADER_OFFSET)?,
            truncated: optional(HEADER_TRUNCATED),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            parked_at: message.timestamp().to_millis(),
            dlq_topic: message.topic().to_owned(),
            dlq_partition: message.partition(),
            dlq_offset: message.offset(),
            headers,
        })
    }

    /// The value of the first header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| {
                String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned()
            })
    }
}

/// Largest payload copied into the dead-letter topic; a bigger one is cut (the headers keep the
/// source position, so the original can still be read from the source topic).
pub const MAX_PARKED_BYTES: usize = 256 * 1024;
/// Largest key copied into the dead-letter topic.
pub const MAX_PARKED_KEY_BYTES: usize = 1024;
/// Largest `dlq.error` text.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Most source headers copied into a dead letter, and their largest total size (keys and values).
pub const MAX_PARKED_HEADERS: usize = 64;
pub const MAX_PARKED_HEADER_BYTES: usize = 16 * 1024;

/// The producer dead letters are written with: `base` (brokers and extra options) with acks=all
/// and idempotence.
pub fn producer(mut base: rdkafka::ClientConfig) -> rdkafka::error::KafkaResult<FutureProducer> {
    base.set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn cut_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The parts of a dead letter as they are written: each within its bound, plus what was cut.
struct Bounded<'a> {
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
    error: &'a str,
    truncated: Option<String>,
}

fn bound<'a>(letter: &'a DeadLetter<'_>) -> Bounded<'a> {
    let mut cut = Vec::new();
    let key = letter.key.map(|k| {
        if k.len() > MAX_PARKED_KEY_BYTES {
            cut.push(format!("key={}", k.len()));
        }
        &k[..k.len().min(MAX_PARKED_KEY_BYTES)]
    });
    // The source's headers as they were, but for any posing as parking's own; whole headers only.
    let copied: Vec<(&str, Option<&[u8]>)> = letter
        .headers
        .iter()
        .filter(|(name, _)| !PARKING_HEADERS.contains(name))
        .copied()
        .collect();
    let mut headers = Vec::new();
    let mut bytes = 0;
    for (name, value) in &copied {
        bytes += name.len() + value.map_or(0, <[u8]>::len);
        if headers.len() == MAX_PARKED_HEADERS || bytes > MAX_PARKED_HEADER_BYTES {
            cut.push(format!("headers={}", copied.len()));
            break;
        }
        headers.push((*name, *value));
    }
    let error = cut_text(&letter.error, MAX_ERROR_BYTES);
    if error.len() < letter.error.len() {
        cut.push(format!("error={}", letter.error.len()));
    }
    let payload = letter.payload.map(|p| {
        if p.len() > MAX_PARKED_BYTES {
            cut.push(format!("payload={}", p.len()));
        }
        &p[..p.len().min(MAX_PARKED_BYTES)]
    });
    Bounded {
        key,
        payload,
        headers,
        error,
        truncated: (!cut.is_empty()).then(|| cut.join(",")),
    }
}

/// Writes one dead letter and waits for its acknowledgement.
pub async fn park(producer: &FutureProducer, letter: &DeadLetter<'_>) -> Result<(), DlqError> {
    let topic = topic_for(letter.source_topic);
    let partition = letter.partition.to_string();
    let offset = letter.offset.to_string();
    let bounded = bound(letter);
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: HEADER_REASON,
            value: Some(letter.reason),
        })
        .insert(Header {
            key: HEADER_ERROR,
            value: Some(bounded.error),
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
    if let Some(truncated) = &bounded.truncated {
        headers = headers.insert(Header {
            key: HEADER_TRUNCATED,
            value: Some(truncated.as_str()),
        });
    }
    for (key, value) in &bounded.headers {
        headers = headers.insert(Header { key, value: *value });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
    if let Some(key) = bounded.key {
        record = record.key(key);
    }
    if let Some(payload) = bounded.payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(5))
        .await
        .map(|_| ())
        .map_err(|(source, _)| DlqError { topic, source })
}

/// Where a record to park lies in Kafka, for a handler that no longer holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

/// Reading a record again by its position failed: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("re-reading the record at {topic}/{partition} offset {offset}: {failure}")]
pub struct RereadError {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub failure: RereadFailure,
}

/// Why a re-read failed.
#[derive(Debug, thiserror::Error)]
pub enum RereadFailure {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("nothing arrived within {0:?}")]
    TimedOut(Duration),
    /// The offset is no longer in the partition (retention removed it, or it never held a record).
    #[error("the record is no longer in Kafka{}", next.map(|n| format!(" (the next record is at offset {n})")).unwrap_or_default())]
    Gone { next: Option<i64> },
    /// The blocking task that reads ended without an answer (it panicked, or the runtime is
    /// shutting down).
    #[error("the re-read's task ended without an answer: {0}")]
    Abandoned(String),
}

impl RereadError {
    /// The record is no longer in Kafka: reading again cannot help.
    pub fn is_gone(&self) -> bool {
        matches!(self.failure, RereadFailure::Gone { .. })
    }
}

impl Classify for RereadError {
    fn is_transient(&self) -> bool {
        !self.is_gone()
    }
}

/// How long one re-read waits for its record.
const REREAD_WAIT: Duration = Duration::from_secs(15);

/// The group id of a re-read's consumer: librdkafka assigns partitions only to a consumer with
/// one, but the consumer neither joins the group nor commits, so the group never exists.
const REREAD_GROUP: &str = "cdc-dead-letter-reread";

/// Reads the record at `at` again with a consumer of its own (`config` as the handler's consumer;
/// the partition assigned directly, nothing committed).
pub async fn reread(config: &ClientConfig, at: Position<'_>) -> Result<OwnedMessage, RereadError> {
    let mut config = config.clone();
    config
        .set("group.id", REREAD_GROUP)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    let topic = at.topic.to_owned();
    let (partition, offset) = (at.partition, at.offset);
    let read = tokio::task::spawn_blocking(move || read_at(&config, &topic, partition, offset))
        .await
        .unwrap_or_else(|join| Err(RereadFailure::Abandoned(join.to_string())));
    read.map_err(|failure| RereadError {
        topic: at.topic.to_owned(),
        partition,
        offset,
        failure,
    })
}

/// The blocking part of [`reread`].
fn read_at(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<OwnedMessage, RereadFailure> {
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + REREAD_WAIT;
    let mut last_error = None;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.offset() == offset => return Ok(message.detach()),
            Some(Ok(message)) if message.offset() > offset => {
                return Err(RereadFailure::Gone {
                    next: Some(message.offset()),
                })
            }
            // `auto.offset.reset=error`: the offset is outside the partition's log.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
            ))) => return Err(RereadFailure::Gone { next: None }),
            Some(Err(error)) => last_error = Some(error),
            Some(Ok(_)) | None => {}
        }
    }
    Err(last_error.map_or(RereadFailure::TimedOut(REREAD_WAIT), RereadFailure::Kafka))
}

/// Where a batch handler parks records: the dead-letter producer, how long a dead-letter
/// write may be retried before the batch gives up, and (for handlers that let go of their
/// records early) how to read a record again.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    budget: Duration,
    reread: Option<ClientConfig>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("budget", &self.budget)
            .field("rereads", &self.reread.is_some())
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, budget: Duration) -> Self {
        Self {
            producer,
            budget,
            reread: None,
        }
    }

    /// Lets [`DeadLetters::park_at`] read records again from Kafka with `config` (the source
    /// consumer's connection settings).
    #[must_use]
    pub fn rereading_with(mut self, config: ClientConfig) -> Self {
        self.reread = Some(config);
        self
    }

    /// Parks the record at `at`, read again from Kafka first (a handler that no longer holds
    /// it). A read that fails for a reason that may pass is retried within the budget; a record
    /// no longer in Kafka is parked without key or payload, its error saying so, so its position
    /// and reason still reach the dead-letter topic.
    pub async fn park_at(
        &self,
        at: Position<'_>,
        reason: &'static str,
        error: String,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let Some(config) = &self.reread else {
            return Err(Interrupted::gave_up(
                "dead-letter re-read",
                format!("no way to read {at} again was configured"),
            ));
        };
        let read = retry("dead-letter re-read", self.budget, cancel, || {
            reread(config, at)
        })
        .await?;
        let (message, error) = match read {
            Ok(message) => (message, error),
            Err(gone) if gone.is_gone() => {
                tracing::error!(%at, reason, error = %gone, "a record to park is no longer in Kafka");
                let placeholder = OwnedMessage::new(
                    None,
                    None,
                    at.topic.to_owned(),
                    rdkafka::Timestamp::NotAvailable,
                    at.partition,
                    at.offset,
                    None,
                );
                (placeholder, format!("{error} [{gone}]"))
            }
            Err(other) => return Err(Interrupted::gave_up("dead-letter re-read", other)),
        };
        self.park(&message, reason, error, tally, cancel).await
    }

    /// Parks `message` in its topic's dead-letter topic with `reason`, retrying the write until it
    /// is acknowledged (a record must end up somewhere) or the budget is spent, and notes the
    /// reason in the batch's `tally` (counted once the batch is durable).
    pub async fn park(
        &self,
        message: &OwnedMessage,
        reason: &'static str,
        error: String,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            error = %error,
            "dead-lettering record"
        );
        let headers = message
            .headers()
            .map(|h| {
                use rdkafka::message::Headers;
                h.iter().map(|h| (h.key, h.value)).collect()
            })
            .unwrap_or_default();
        let letter = DeadLetter {
            source_topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload(),
            headers,
            reason,
            error,
        };
        match retry("dead-letter write", self.budget, cancel, || {
            park(&self.producer, &letter)
        })
        .await?
        {
            Ok(()) => {
                tally.parked.push(reason);
                Ok(())
            }
            Err(error) => Err(Interrupted::gave_up("dead-letter write", error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_a_dead_letter_is_bounded() {
        let key = vec![b'k'; 2 * 1024 * 1024];
        let payload = vec![b'p'; 3 * 1024 * 1024];
        let error = "é".repeat(5000);
        let letter = DeadLetter {
            source_topic: "users",
            partition: 0,
            offset: 1,
            key: Some(&key),
            payload: Some(&payload),
            headers: Vec::new(),
            reason: "too_large",
            error: error.clone(),
        };
        let bounded = bound(&letter);
        assert_eq!(bounded.key.map(<[u8]>::len), Some(MAX_PARKED_KEY_BYTES));
        assert_eq!(bounded.payload.map(<[u8]>::len), Some(MAX_PARKED_BYTES));
        assert!(bounded.error.len() <= MAX_ERROR_BYTES);
        assert!(error.starts_with(bounded.error));
        assert_eq!(
            bounded.truncated.as_deref(),
            Some("key=2097152,error=10000,payload=3145728")
        );

        let small = DeadLetter {
            key: Some(b"id"),
            payload: Some(b"{}"),
            error: "bad".into(),
            ..letter
        };
        let bounded = bound(&small);
        assert_eq!(bounded.truncated, None);
        assert_eq!(bounded.key, Some(&b"id"[..]));
    }

    #[test]
    fn source_headers_are_kept_bounded_and_cannot_pose_as_parking_s() {
        let big = vec![b'v'; 1024];
        let mut headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("trace-id", Some(b"abc")),
            ("empty", None),
            (HEADER_REASON, Some(b"forged")),
            ("dlq.replayed_from", Some(b"orders.dlq/0/7")),
        ];
        let letter = DeadLetter {
            source_topic: "orders",
            partition: 0,
            offset: 1,
            key: Some(b"id"),
            payload: Some(b"{}"),
            headers: headers.clone(),
            reason: "undecodable",
            error: "bad".into(),
        };
        let bounded = bound(&letter);
        assert_eq!(
            bounded.headers,
            vec![
                ("trace-id", Some(&b"abc"[..])),
                ("empty", None),
                ("dlq.replayed_from", Some(&b"orders.dlq/0/7"[..])),
            ]
        );
        assert_eq!(bounded.truncated, None);

        headers.extend(std::iter::repeat_n(("big", Some(&big[..])), 40));
        let many = DeadLetter {
            headers: headers.clone(),
            ..letter
        };
        let bounded = bound(&many);
        let total: usize = bounded
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
            .sum();
        assert!(total <= MAX_PARKED_HEADER_BYTES, "{total}");
        assert_eq!(bounded.truncated.as_deref(), Some("headers=43"));
    }
}
