//! Waiting until the pipeline is quiet: every consumer group has committed the end of every
//! partition of its topics, the replication slot has confirmed a WAL position taken after that (so
//! Debezium has put every change committed so far into Kafka), and the groups are at the end again
//! (so the cdcconsumer has applied those changes too).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::time::Instant;

/// How often [`wait_quiet`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest single Kafka request while waiting (metadata, committed offsets, watermarks).
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the pipeline could not be found quiet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuietError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("replication slot `{0}` does not exist")]
    SlotMissing(String),
    #[error("{0}")]
    SlotLost(String),
    #[error("topic `{0}` does not exist")]
    TopicMissing(String),
    #[error("pipeline not quiet after {waited:?}: {}", join(behind))]
    NotQuiet {
        waited: Duration,
        behind: Vec<Unquiet>,
    },
    #[error("waiting for Kafka failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

impl QuietError {
    /// Whether looking again may succeed: lost connections, timeouts and a pipeline still catching
    /// up may pass; a missing slot or topic, or a client that cannot even be configured, need a
    /// person.
    pub fn may_pass(&self) -> bool {
        match self {
            Self::Postgres(error) => super::postgres_may_pass(error),
            Self::Kafka(error) => !matches!(
                error,
                KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
            ),
            Self::NotQuiet { .. } | Self::Blocking(_) => true,
            Self::SlotMissing(_) | Self::SlotLost(_) | Self::TopicMissing(_) => false,
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A consumer group and the topics it consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTopics {
    pub group: String,
    pub topics: Vec<String>,
}

impl GroupTopics {
    pub fn new(group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        }
    }
}

/// What [`wait_quiet`] waits for. `ClientConfig`'s Debug output leaves out passwords.
#[derive(Debug, Clone)]
pub struct QuietOptions {
    /// Bootstrap servers and security settings; `group.id` is set per group.
    pub kafka: ClientConfig,
    pub groups: Vec<GroupTopics>,
    /// The Debezium replication slot; `None` skips the slot check.
    pub slot: Option<String>,
    /// For the whole wait, all steps together.
    pub timeout: Duration,
}

/// One thing that is not quiet yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unquiet {
    /// The slot has not confirmed the target WAL position.
    SlotBehind {
        slot: String,
        target: String,
        confirmed: Option<String>,
        /// Bytes of WAL between the confirmed position and the target (`None`: nothing confirmed).
        bytes: Option<i64>,
        active: bool,
    },
    /// A partition the group has not committed to its end.
    GroupLag {
        group: String,
        topic: String,
        partition: i32,
        committed: Option<i64>,
        end: i64,
    },
    /// The last look failed with an error that may pass.
    ProbeFailed(String),
}

impl fmt::Display for Unquiet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SlotBehind {
                slot,
                target,
                confirmed,
                bytes,
                active,
            } => {
                let state = if *active { "" } else { ", inactive" };
                match (confirmed, bytes) {
                    (Some(confirmed), Some(bytes)) => write!(
                        f,
                        "slot {slot} behind by {bytes} bytes (confirmed {confirmed}, \
                         target {target}{state})"
                    ),
                    _ => write!(
                        f,
                        "slot {slot} has confirmed nothing (target {target}{state})"
                    ),
                }
            }
            Self::GroupLag {
                group,
                topic,
                partition,
                committed,
                end,
            } => {
                let lag = partition_lag(*committed, 0, *end);
                match committed {
                    Some(committed) if committed > end => write!(
                        f,
                        "group {group} topic {topic} partition {partition} committed offset \
                         {committed} beyond the end {end}"
                    ),
                    Some(committed) => write!(
                        f,
                        "group {group} topic {topic} partition {partition} lag {lag} \
                         (committed {committed}, end {end})"
                    ),
                    None => write!(
                        f,
                        "group {group} topic {topic} partition {partition} lag {lag} \
                         (no committed offset, end {end})"
                    ),
                }
            }
            Self::ProbeFailed(error) => write!(f, "last check failed: {error}"),
        }
    }
}

/// The slot position [`wait_quiet`] waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPosition {
    pub slot: String,
    /// `pg_current_wal_lsn()` when the wait started.
    pub target: String,
    /// The slot's `confirmed_flush_lsn` once it had passed the target.
    pub confirmed: String,
}

/// What was found quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietReport {
    pub waited: Duration,
    pub slot: Option<SlotPosition>,
    /// Partitions found at their end, over all groups.
    pub partitions: usize,
}

impl fmt::Display for QuietReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quiet after {:.1}s: {} partitions committed to their end",
            self.waited.as_secs_f64(),
            self.partitions
        )?;
        if let Some(slot) = &self.slot {
            write!(
                f,
                ", slot {} confirmed {} (target {})",
                slot.slot, slot.confirmed, slot.target
            )?;
        }
        Ok(())
    }
}

/// The records of a partition a group has not consumed: everything after its committed offset,
/// or everything still in the partition (`low..end`) when it has committed nothing. A committed
/// offset beyond the end (a recreated topic) counts as not quiet too, since the group will reset.
fn partition_lag(committed: Option<i64>, low: i64, end: i64) -> i64 {
    match committed {
        Some(committed) if committed > end => 1,
        Some(committed) => end - committed,
        None => end - low.max(0),
    }
}

/// Waits until the pipeline is quiet (see the module documentation), polling every 250 ms.
///
/// The groups are checked before the WAL position is taken as well as after the slot passed it:
/// a consumer that writes into PostgreSQL (the `consumer` groups) must be done before the target
/// is taken, or its last writes could escape the wait.
pub async fn wait_quiet(pool: &PgPool, opts: &QuietOptions) -> Result<QuietReport, QuietError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let probes = Arc::new(GroupProbes::new(opts)?);

    poll_until(started, deadline, || probes_at_end(&probes, deadline)).await?;
    let slot = match &opts.slot {
        Some(slot) => Some(wait_slot(pool, slot, started, deadline).await?),
        None => None,
    };
    let partitions = poll_until(started, deadline, || probes_at_end(&probes, deadline)).await?;
    let report = QuietReport {
        waited: started.elapsed(),
        slot,
        partitions,
    };
    tracing::info!(%report, "pipeline quiet");
    Ok(report)
}

/// One step of a poll: done with a value, or still waiting for the listed things.
type Poll<T> = Result<T, Vec<Unquiet>>;

/// Calls `check` every [`POLL_INTERVAL`] until it reports done or the deadline passes. Errors
/// that may pass are noted and looked at again; others end the wait.
async fn poll_until<T, F, Fut>(
    started: Instant,
    deadline: Instant,
    mut check: F,
) -> Result<T, QuietError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Poll<T>, QuietError>>,
{
    loop {
        let behind = match check().await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(behind)) => behind,
            Err(error) if error.may_pass() => {
                tracing::debug!(error = %error, "quiet check failed, trying again");
                vec![Unquiet::ProbeFailed(error.to_string())]
            }
            Err(error) => return Err(error),
        };
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(QuietError::NotQuiet {
                waited: started.elapsed(),
                behind,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Takes the current WAL position, then waits until `slot` has confirmed it.
async fn wait_slot(
    pool: &PgPool,
    slot: &str,
    started: Instant,
    deadline: Instant,
) -> Result<SlotPosition, QuietError> {
    let (target,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    poll_until(started, deadline, || slot_position(pool, slot, &target)).await
}

/// `confirmed_flush_lsn`, bytes from it to the target, `active`, `wal_status`.
type SlotRow = (Option<String>, Option<i64>, bool, Option<String>);

async fn slot_position(
    pool: &PgPool,
    slot: &str,
    target: &str,
) -> Result<Poll<SlotPosition>, QuietError> {
    let row: Option<SlotRow> = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text, \
                pg_wal_lsn_diff($2::pg_lsn, confirmed_flush_lsn)::bigint, \
                active, wal_status \
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .bind(target)
    .fetch_optional(pool)
    .await?;
    let Some((confirmed, bytes, active, wal_status)) = row else {
        return Err(QuietError::SlotMissing(slot.to_owned()));
    };
    if wal_status.as_deref() == Some("lost") {
        let lost = crate::slot::SlotState::Lost { confirmed };
        return Err(QuietError::SlotLost(lost.problem(slot).unwrap_or_default()));
    }
    match (confirmed, bytes) {
        (Some(confirmed), Some(bytes)) if bytes <= 0 => Ok(Ok(SlotPosition {
            slot: slot.to_owned(),
            target: target.to_owned(),
            confirmed,
        })),
        (confirmed, bytes) => Ok(Err(vec![Unquiet::SlotBehind {
            slot: slot.to_owned(),
            target: target.to_owned(),
            confirmed,
            bytes,
            active,
        }])),
    }
}

/// A consumer used only to read one group's committed offsets, and the partitions and watermarks
/// of its topics: it never subscribes, so it never joins the group or disturbs its members. Its
/// calls block on the network.
pub struct GroupProbe {
    consumer: BaseConsumer,
}

impl fmt::Debug for GroupProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupProbe").finish_non_exhaustive()
    }
}

impl GroupProbe {
    pub fn new(kafka: &ClientConfig, group: &str) -> Result<Self, KafkaError> {
        let mut config = kafka.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        Ok(Self {
            consumer: config.create()?,
        })
    }

    /// The partitions of `topic`; `None` when it does not exist.
    pub fn partitions(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<Vec<i32>>, KafkaError> {
        let metadata = self.consumer.fetch_metadata(Some(topic), timeout)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match found.error() {
            None => Ok(Some(found.partitions().iter().map(|p| p.id()).collect())),
            Some(error) => match RDKafkaErrorCode::from(error) {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    Ok(None)
                }
                code => Err(KafkaError::MetadataFetch(code)),
            },
        }
    }

    /// The group's committed offset of each of `partitions` of `topic` (`None`: nothing
    /// committed).
    pub fn committed(
        &self,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(topic, partition);
        }
        let committed = self.consumer.committed_offsets(list, timeout)?;
        partitions
            .iter()
            .map(|&partition| {
                let offset = match committed.find_partition(topic, partition) {
                    Some(elem) => {
                        elem.error()?;
                        match elem.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        }
                    }
                    None => None,
                };
                Ok((partition, offset))
            })
            .collect()
    }

    /// The low and high watermarks of one partition.
    pub fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<(i64, i64), KafkaError> {
        self.consumer.fetch_watermarks(topic, partition, timeout)
    }
}

/// One probe per group.
struct GroupProbes {
    groups: Vec<(GroupTopics, GroupProbe)>,
}

impl GroupProbes {
    fn new(opts: &QuietOptions) -> Result<Self, QuietError> {
        let mut groups = Vec::with_capacity(opts.groups.len());
        for group in &opts.groups {
            groups.push((group.clone(), GroupProbe::new(&opts.kafka, &group.group)?));
        }
        Ok(Self { groups })
    }

    /// Blocking: librdkafka's metadata, committed-offset and watermark calls wait on the network.
    fn check(&self, deadline: Instant) -> Result<Poll<usize>, QuietError> {
        let mut behind = Vec::new();
        let mut partitions = 0;
        for (group, probe) in &self.groups {
            for topic in &group.topics {
                let timeout = deadline
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(100), KAFKA_REQUEST_TIMEOUT);
                let ids = probe
                    .partitions(topic, timeout)?
                    .ok_or_else(|| QuietError::TopicMissing(topic.clone()))?;
                for (partition, committed) in probe.committed(topic, &ids, timeout)? {
                    let (low, end) = probe.watermarks(topic, partition, timeout)?;
                    partitions += 1;
                    if partition_lag(committed, low, end) != 0 {
                        behind.push(Unquiet::GroupLag {
                            group: group.group.clone(),
                            topic: topic.clone(),
                            partition,
                            committed,
                            end,
                        });
                    }
                }
            }
        }
        Ok(if behind.is_empty() {
            Ok(partitions)
        } else {
            Err(behind)
        })
    }
}

async fn probes_at_end(
    probes: &Arc<GroupProbes>,
    deadline: Instant,
) -> Result<Poll<usize>, QuietError> {
    let probes = Arc::clone(probes);
    tokio::task::spawn_blocking(move || probes.check(deadline)).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_uncommitted_records() {
        assert_eq!(partition_lag(Some(5), 0, 5), 0);
        assert_eq!(partition_lag(Some(3), 0, 5), 2);
        // No commit: an empty (or fully expired) partition is quiet, one with records is not.
        assert_eq!(partition_lag(None, 0, 0), 0);
        assert_eq!(partition_lag(None, 7, 7), 0);
        assert_eq!(partition_lag(None, 2, 7), 5);
        // Committed beyond the end (a recreated topic): the group will reset, not quiet.
        assert_ne!(partition_lag(Some(9), 0, 5), 0);
    }

    #[test]
    fn unquiet_names_what_is_behind() {
        let lag = Unquiet::GroupLag {
            group: "g".to_owned(),
            topic: "t".to_owned(),
            partition: 2,
            committed: None,
            end: 4,
        };
        assert_eq!(
            lag.to_string(),
            "group g topic t partition 2 lag 4 (no committed offset, end 4)"
        );
        let slot = Unquiet::SlotBehind {
            slot: "cdc_slot".to_owned(),
            target: "0/200".to_owned(),
            confirmed: Some("0/100".to_owned()),
            bytes: Some(256),
            active: true,
        };
        assert_eq!(
            slot.to_string(),
            "slot cdc_slot behind by 256 bytes (confirmed 0/100, target 0/200)"
        );
        let error = QuietError::NotQuiet {
            waited: Duration::from_secs(1),
            behind: vec![slot, lag],
        };
        assert!(error.may_pass());
        assert!(error
            .to_string()
            .contains("target 0/200); group g topic t partition 2"));
        assert!(!QuietError::SlotMissing("cdc_slot".into()).may_pass());
    }
}
