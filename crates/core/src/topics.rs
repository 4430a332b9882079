//! Topic administration: create the topics the pipeline needs with their partition counts and
//! replication factor, and refuse to silently use a topic that exists with other settings.
//!
//! It is also each binary's first contact with Kafka, so it tells a cluster that refuses the
//! client (wrong password, untrusted certificate, plaintext against a TLS listener) from one that
//! is merely unreachable: the first is [`TopicError::Refused`] at once, never retried.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// A topic as the pipeline wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
        }
    }
}

/// What [`ensure_topics`] did with one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyMatching,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    #[error(
        "topic `{topic}` exists with {actual_partitions} partitions and replication factor \
         {actual_replication}, but {wanted_partitions} partitions and replication factor \
         {wanted_replication} are required; recreate it or change the configuration"
    )]
    Mismatch {
        topic: String,
        actual_partitions: i32,
        actual_replication: i32,
        wanted_partitions: i32,
        wanted_replication: i32,
    },
    #[error("creating topic `{topic}` failed: {code:?}")]
    CreateFailed {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(
        "topic `{topic}` exists but its layout could not be read within {timeout:?}; \
         its partitions may still be electing leaders"
    )]
    Unverified { topic: String, timeout: Duration },
    #[error("Kafka admin request failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "Kafka refused the connection: {0} (check security.protocol, the SASL user and password \
         and ssl.ca.location in --kafka-config / --kafka-option)"
    )]
    Refused(String),
}

impl TopicError {
    /// Whether trying again later may succeed (a broker was unreachable, say), as opposed to a
    /// configuration problem that needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Mismatch { .. } => false,
            Self::Unverified { .. } => true,
            Self::CreateFailed { code, .. } => matches!(
                code,
                RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::NotController
                    | RDKafkaErrorCode::BrokerNotAvailable
                    | RDKafkaErrorCode::LeaderNotAvailable
                    | RDKafkaErrorCode::NotEnoughReplicas
            ),
            Self::Kafka(_) => true,
            Self::Refused(_) => false,
        }
    }
}

/// A client context that remembers the last access failure librdkafka reported: authentication
/// refused, a TLS handshake that failed (an untrusted certificate, say), or a connection closed
/// during the first request (a plaintext client on a TLS or SASL listener). librdkafka retries
/// those forever and reports them only through this callback, served when the client is polled.
#[derive(Debug, Clone, Default)]
pub struct AccessWatch {
    refused: Arc<Mutex<Option<String>>>,
    /// The last connection the broker closed while answering the first request: a TLS or SASL
    /// listener does that to a plaintext client, but so may a broker that is shutting down.
    closed_at_first_request: Arc<Mutex<Option<String>>>,
}

impl AccessWatch {
    /// The last access failure, if any.
    pub fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|last| last.clone())
    }

    /// The last connection closed during the first request, if any.
    pub fn closed_at_first_request(&self) -> Option<String> {
        self.closed_at_first_request
            .lock()
            .ok()
            .and_then(|last| last.clone())
    }
}

/// How long connections closed at the first request may go on before a probe calls it a
/// protocol mismatch rather than a broker going down.
const MISMATCH_AFTER: Duration = Duration::from_secs(5);

/// Whether an error librdkafka reports means the cluster refuses this client's settings.
pub fn is_access_failure(code: Option<RDKafkaErrorCode>, reason: &str) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::SaslAuthenticationFailed
        )
    ) || reason.contains("incorrect security.protocol")
}

impl ClientContext for AccessWatch {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "FAIL" && message.contains("in state APIVERSION_QUERY") {
            if let Ok(mut last) = self.closed_at_first_request.lock() {
                *last = Some(message.to_owned());
            }
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::debug!(target: "librdkafka", facility, "{message}");
            }
            _ => tracing::trace!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_access_failure(error.rdkafka_error_code(), reason) {
            if let Ok(mut last) = self.refused.lock() {
                *last = Some(reason.to_owned());
            }
        } else {
            tracing::debug!(target: "librdkafka", %error, reason, "Kafka client error");
        }
    }
}

impl ProducerContext for AccessWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Waits up to `timeout` for the cluster to answer a metadata request. An access failure ends
/// the wait at once as [`TopicError::Refused`]: a wrong password or CA does not pass by itself.
/// The probe is a producer that sends nothing: polling it serves librdkafka's error reports.
pub fn reach(config: &ClientConfig, timeout: Duration) -> Result<(), TopicError> {
    // librdkafka reports a closed connection at level info: the probe asks for it whatever the
    // binary's log level (the context keeps it out of the log).
    let mut config = config.clone();
    config.set_log_level(RDKafkaLogLevel::Info);
    let probe: BaseProducer<AccessWatch> = config.create_with_context(AccessWatch::default())?;
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match probe
            .client()
            .fetch_metadata(None, left.min(Duration::from_secs(1)))
        {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        probe.poll(Duration::from_millis(100));
        if let Some(reason) = probe.context().refused() {
            return Err(TopicError::Refused(reason));
        }
        if let Some(closed) = probe.context().closed_at_first_request() {
            if started.elapsed() >= MISMATCH_AFTER {
                return Err(TopicError::Refused(format!(
                    "{closed}; for {MISMATCH_AFTER:?} every connection was closed at the first \
                     request, as a TLS or SASL listener does to a plaintext client"
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(error.into());
        }
    }
}

/// What the cluster's metadata says about one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// No such topic.
    Missing,
    /// The topic exists but its metadata is not complete yet (a broker that has not caught up
    /// with the controller, partitions without a leader).
    NotReady,
    /// Partitions and the replication factor of its smallest partition.
    Layout(i32, i32),
}

fn describe(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Observed, TopicError> {
    let metadata = admin.inner().fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Observed::Missing);
    };
    match found.error().map(RDKafkaErrorCode::from) {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(Observed::Missing),
        Some(_) => return Ok(Observed::NotReady),
        None => {}
    }
    if found.partitions().is_empty() {
        return Ok(Observed::NotReady);
    }
    let replication = found
        .partitions()
        .iter()
        .map(|p| p.replicas().len())
        .min()
        .unwrap_or(0);
    let partitions = i32::try_from(found.partitions().len()).unwrap_or(i32::MAX);
    Ok(Observed::Layout(
        partitions,
        i32::try_from(replication).unwrap_or(i32::MAX),
    ))
}

/// The layout of a topic known to exist, waiting (up to `timeout`) for metadata that lags the
/// controller: a topic just created by someone else can read as missing on another broker.
async fn layout_of_existing(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<(i32, i32), TopicError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Observed::Layout(partitions, replication) = describe(admin, topic, timeout)? {
            return Ok((partitions, replication));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TopicError::Unverified {
                topic: topic.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check(spec: &TopicSpec, actual: (i32, i32)) -> Result<(), TopicError> {
    if actual == (spec.partitions, spec.replication_factor) {
        Ok(())
    } else {
        Err(TopicError::Mismatch {
            topic: spec.name.clone(),
            actual_partitions: actual.0,
            actual_replication: actual.1,
            wanted_partitions: spec.partitions,
            wanted_replication: spec.replication_factor,
        })
    }
}

/// Creates every missing topic and checks that existing ones match their spec.
pub async fn ensure_topics(
    brokers: &str,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<TopicOutcome>, TopicError> {
    ensure_topics_with(
        ClientConfig::new().set("bootstrap.servers", brokers),
        specs,
        timeout,
    )
    .await
}

/// [`ensure_topics`] with a full client configuration (SASL, TLS and other settings).
pub async fn ensure_topics_with(
    config: &ClientConfig,
    specs: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<TopicOutcome>, TopicError> {
    reach(config, timeout)?;
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        match describe(&admin, &spec.name, timeout)? {
            Observed::Missing => {}
            Observed::Layout(partitions, replication) => {
                check(spec, (partitions, replication))?;
                tracing::debug!(topic = %spec.name, "topic exists with the expected layout");
                outcomes.push(TopicOutcome::AlreadyMatching);
                continue;
            }
            Observed::NotReady => {
                check(spec, layout_of_existing(&admin, &spec.name, timeout).await?)?;
                outcomes.push(TopicOutcome::AlreadyMatching);
                continue;
            }
        }
        let new_topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let results = admin.create_topics([&new_topic], &options).await?;
        for result in results {
            match result {
                Ok(_) => {
                    tracing::info!(
                        topic = %spec.name,
                        partitions = spec.partitions,
                        replication_factor = spec.replication_factor,
                        "created topic"
                    );
                    outcomes.push(TopicOutcome::Created);
                }
                // It exists although our look missed it (someone created it meanwhile, or the
                // broker we asked had not caught up yet): verify its layout, never assume it.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    check(spec, layout_of_existing(&admin, &spec.name, timeout).await?)?;
                    outcomes.push(TopicOutcome::AlreadyMatching);
                }
                Err((topic, code)) => return Err(TopicError::CreateFailed { topic, code }),
            }
        }
    }
    Ok(outcomes)
}

/// Where [`read_to_end`] starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The first record still in the partition.
    Beginning,
    /// These offsets (a partition not listed starts at its beginning).
    Offsets(std::collections::BTreeMap<i32, i64>),
    /// The first record whose timestamp is at or after this time (ms since the epoch).
    Time(i64),
}

/// Every record of `topic` from `from` up to each partition's end offset at the time of the call,
/// in offset order within each partition. Blocking: librdkafka's calls wait on the network. A
/// topic that does not exist reads as empty.
pub fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    from: &ReadFrom,
    timeout: Duration,
) -> Result<Vec<rdkafka::message::OwnedMessage>, KafkaError> {
    let mut records = Vec::new();
    scan_to_end(config, topic, from, timeout, |record| records.push(record))?;
    Ok(records)
}

/// [`read_to_end`], handing each record to `visit` as it is read instead of keeping them all.
pub fn scan_to_end(
    config: &ClientConfig,
    topic: &str,
    from: &ReadFrom,
    timeout: Duration,
    mut visit: impl FnMut(rdkafka::message::OwnedMessage),
) -> Result<(), KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    let mut config = config.clone();
    config
        .set(
            "group.id",
            format!("cdc-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut starts = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let start = match from {
            ReadFrom::Beginning => low,
            ReadFrom::Offsets(offsets) => offsets.get(&partition).copied().unwrap_or(low).max(low),
            ReadFrom::Time(_) => low,
        };
        if start < high {
            starts.add_partition_offset(topic, partition, Offset::Offset(start))?;
            ends.insert(partition, high);
        }
    }
    if let ReadFrom::Time(ms) = from {
        let mut times = TopicPartitionList::new();
        for partition in ends.keys() {
            times.add_partition_offset(topic, *partition, Offset::Offset(*ms))?;
        }
        if times.count() > 0 {
            for element in consumer.offsets_for_times(times, timeout)?.elements() {
                let start = match element.offset() {
                    Offset::Offset(offset) => offset,
                    // No record at or after the time.
                    _ => ends.get(&element.partition()).copied().unwrap_or(0),
                };
                starts.set_partition_offset(topic, element.partition(), Offset::Offset(start))?;
            }
        }
    }
    let mut remaining: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for element in starts.elements() {
        if let (Offset::Offset(start), Some(end)) =
            (element.offset(), ends.get(&element.partition()))
        {
            if start < *end {
                remaining.insert(element.partition(), *end);
            }
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer.assign(&starts)?;
    let deadline = std::time::Instant::now() + timeout.max(Duration::from_secs(60));
    while !remaining.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
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
                visit(message.detach());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_failures_are_told_from_brokers_going_away() {
        let refused = |code, reason| is_access_failure(Some(code), reason);
        assert!(refused(
            RDKafkaErrorCode::Authentication,
            "SASL authentication error"
        ));
        assert!(refused(RDKafkaErrorCode::SSL, "SSL handshake failed"));
        assert!(is_access_failure(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "might be caused by incorrect security.protocol configuration"
        ));
        assert!(!refused(
            RDKafkaErrorCode::AllBrokersDown,
            "1/1 brokers are down"
        ));
        assert!(!refused(
            RDKafkaErrorCode::BrokerTransportFailure,
            "Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
        ));
        assert!(!TopicError::Refused("wrong password".into()).is_retryable());
    }

    #[test]
    fn mismatch_is_reported_with_both_layouts() {
        let spec = TopicSpec::new("orders", 5, 3);
        assert!(check(&spec, (5, 3)).is_ok());
        let error = check(&spec, (3, 1)).expect_err("a different layout must be refused");
        let text = error.to_string();
        assert!(
            text.contains("3 partitions and replication factor 1"),
            "{text}"
        );
        assert!(
            text.contains("5 partitions and replication factor 3"),
            "{text}"
        );
        assert!(!error.is_retryable());
    }
}
