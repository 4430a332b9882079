//! Dead letters: what each dead-letter topic holds (since a time), by reason — the part of the
//! pipeline's account that the row comparison cannot see: a valid event parked by mistake leaves
//! PostgreSQL and Cassandra agreeing with each other.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use cdc_core::dlq::{topic_for, Parked};
use cdc_core::topics::{read_to_end, ReadFrom};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

/// Per dead-letter topic, how many records by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterCounts {
    /// Counted from this time (ms since the epoch), or from the beginning.
    pub since: Option<i64>,
    pub topics: BTreeMap<String, BTreeMap<String, u64>>,
}

impl DeadLetterCounts {
    pub fn total(&self) -> u64 {
        self.topics.values().flat_map(BTreeMap::values).sum()
    }
}

impl fmt::Display for DeadLetterCounts {
    /// `dead letters: users.dlq 0, orders.dlq 2 (missing_parent 2)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dead letters:")?;
        for (i, (topic, reasons)) in self.topics.iter().enumerate() {
            let total: u64 = reasons.values().sum();
            write!(f, "{} {topic} {total}", if i == 0 { "" } else { "," })?;
            if !reasons.is_empty() {
                let reasons: Vec<String> = reasons
                    .iter()
                    .map(|(reason, n)| format!("{reason} {n}"))
                    .collect();
                write!(f, " ({})", reasons.join(", "))?;
            }
        }
        Ok(())
    }
}

/// Counts the dead letters of each of `sources` (the topics whose `<topic>.dlq` is read), parked
/// at or after `since` (ms since the epoch; all when `None`). Blocking. A record on a dead-letter
/// topic without dead-letter headers counts under the reason `unreadable`.
pub fn count(
    kafka: &ClientConfig,
    sources: &[String],
    since: Option<i64>,
) -> Result<DeadLetterCounts, KafkaError> {
    let from = since.map_or(ReadFrom::Beginning, ReadFrom::Time);
    let mut counts = DeadLetterCounts {
        since,
        topics: BTreeMap::new(),
    };
    for source in sources {
        let dlq = topic_for(source);
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for record in read_to_end(kafka, &dlq, &from, Duration::from_secs(30))? {
            let reason = Parked::from_message(&record)
                .map_or_else(|_| "unreadable".to_owned(), |parked| parked.reason);
            *reasons.entry(reason).or_default() += 1;
        }
        counts.topics.insert(dlq, reasons);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_print_per_topic_and_reason() {
        let counts = DeadLetterCounts {
            since: None,
            topics: BTreeMap::from([
                (
                    "orders.dlq".to_owned(),
                    BTreeMap::from([("missing_parent".to_owned(), 2)]),
                ),
                ("users.dlq".to_owned(), BTreeMap::new()),
            ]),
        };
        assert_eq!(counts.total(), 2);
        assert_eq!(
            counts.to_string(),
            "dead letters: orders.dlq 2 (missing_parent 2), users.dlq 0"
        );
    }
}
