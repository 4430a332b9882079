//! Whether a late order's user can still come. An order is parked as `missing_parent` only when
//! its user provably will not arrive; until then it waits, however long the users stream lags (a
//! paused broker, a slow rebalance, a stalled users partition) — visibly, in
//! `cdc_orders_waiting_for_user`.
//!
//! The proof, for an order whose record has timestamp `t` (the producer's send time): every user
//! event is sent before the events of that user's orders, by the same producer, so the user's
//! record has a timestamp at or before `t` — but it may not be in Kafka yet: a send to a paused
//! or failing leader is retried for up to the producer's `message.timeout.ms` (found by a
//! 30-minute chaos run, docs/chaos.md). So each users partition must show that nothing sent up
//! to `t` can still arrive:
//! - it holds a record newer than `t`: the producer appends each partition's records in the
//!   order it sent them (idempotence), so everything it sent there before `t` is already in the
//!   log before that record; the users group must have committed (after durable writes) past it;
//! - it holds nothing newer than `t`: only once `t` is more than the longest delivery time
//!   (`--max-delivery-time`) ago, and the group has committed everything there is.
//!
//! The answer is asked before an order's last attempt, never after it: a user applied between an
//! attempt and a "yes" would otherwise be missed (also found by a chaos run).

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// How far the users stream is applied, as the orders handler asks it before it parks an order.
/// [`UsersStream`] answers from Kafka; the seam lets a test answer at the worst possible moment.
pub trait UsersProgress: Send + Sync {
    /// Whether every users record with a timestamp at or before `timestamp_ms` is applied.
    fn applied_past(&self, timestamp_ms: i64) -> BoxFuture<'_, Result<bool, ProgressError>>;
}

/// The users stream, as the orders handler looks at it.
#[derive(Debug, Clone)]
pub struct UsersStream {
    /// Brokers and security settings.
    pub kafka: ClientConfig,
    pub topic: String,
    pub group: String,
    /// The longest a record may take from its send to its append in Kafka.
    pub max_delivery_time: Duration,
}

/// Asking Kafka failed: the infrastructure's fault, so the orders keep waiting.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("asking Kafka how far the users stream is applied failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("asking Kafka how far the users stream is applied failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

impl cdc_core::retry::Classify for ProgressError {
    fn is_transient(&self) -> bool {
        true
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl UsersProgress for UsersStream {
    fn applied_past(&self, timestamp_ms: i64) -> BoxFuture<'_, Result<bool, ProgressError>> {
        let stream = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || stream.committed_past(timestamp_ms)).await?
        })
    }
}

impl UsersStream {
    /// Whether no users record with a timestamp at or before `timestamp_ms` can still be
    /// unapplied, in any partition (see the module's proof). Blocking (librdkafka waits on the
    /// network).
    pub fn committed_past(&self, timestamp_ms: i64) -> Result<bool, ProgressError> {
        let mut config = self.kafka.clone();
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        // Never subscribes: reading the group's committed offsets does not join it.
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&self.topic), TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut after = TopicPartitionList::new();
        let mut all = TopicPartitionList::new();
        for partition in &partitions {
            // The first record strictly after the order's time.
            after.add_partition_offset(
                &self.topic,
                *partition,
                Offset::Offset(timestamp_ms + 1),
            )?;
            all.add_partition(&self.topic, *partition);
        }
        let targets = consumer.offsets_for_times(after, TIMEOUT)?;
        let committed = consumer.committed_offsets(all, TIMEOUT)?;
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(&self.topic, partition, TIMEOUT)?;
            let target = match targets
                .find_partition(&self.topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                // Nothing newer than the order yet: a user sent before it may still be on its
                // way until the longest delivery time has passed; then everything there is must
                // be applied.
                _ if !delivered_by_now(timestamp_ms, self.max_delivery_time) => return Ok(false),
                _ => high,
            };
            let done = match committed
                .find_partition(&self.topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => low,
            };
            if done < target {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether a record sent at `timestamp_ms` is, by now, either in Kafka or never will be.
fn delivered_by_now(timestamp_ms: i64, max_delivery_time: Duration) -> bool {
    let bound = i64::try_from(max_delivery_time.as_millis()).unwrap_or(i64::MAX);
    chrono::Utc::now().timestamp_millis() >= timestamp_ms.saturating_add(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_is_settled_only_after_the_longest_delivery_time() {
        let now = chrono::Utc::now().timestamp_millis();
        let bound = Duration::from_secs(150);
        assert!(!delivered_by_now(now - 10_000, bound));
        assert!(!delivered_by_now(now, bound));
        assert!(delivered_by_now(now - 151_000, bound));
        assert!(delivered_by_now(now, Duration::ZERO));
        assert!(!delivered_by_now(i64::MAX, Duration::MAX));
    }
}
