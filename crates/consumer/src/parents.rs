//! Whether a late order's user can still come. An order is parked as `missing_parent` only when
//! its user provably will not arrive: the users stream has been applied past the order's time.
//! Every user event is produced before the events of that user's orders, so its record's
//! timestamp is at or before theirs; once the users consumer group has committed (after durable
//! writes) every users record up to the order's timestamp, a user still absent from PostgreSQL
//! is not on its way. Until then the order waits, however long the users stream lags (a paused
//! broker, a slow rebalance, a stalled users partition) — visibly, in
//! `cdc_orders_waiting_for_user`. The answer is asked before an order's last attempt, never after
//! it: a user applied between an attempt and a "yes" would otherwise be missed (found by a
//! 30-minute chaos run, docs/chaos.md).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// The users stream, as the orders handler looks at it.
#[derive(Debug, Clone)]
pub struct UsersStream {
    /// Brokers and security settings.
    pub kafka: ClientConfig,
    pub topic: String,
    pub group: String,
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

impl UsersStream {
    /// Whether the users group has committed every users record with a timestamp at or before
    /// `timestamp_ms`, in every partition. Blocking (librdkafka waits on the network).
    pub fn applied_past(&self, timestamp_ms: i64) -> Result<bool, ProgressError> {
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
                // No record after the time: everything there is must be applied.
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
