//! Fields of business events this reader does not know: ignored (the tolerant reader, see
//! [`cdc_core::events`]) but counted in `cdc_unknown_fields_total{topic,field}`, so an operator
//! sees what producers started sending before any reader needs it.
//!
//! The field names come from the records, so the metric's cardinality is bounded: the first
//! [`MAX_FIELD_NAMES`] distinct names get a series each; later names, and names that are not plain
//! field paths (letters, digits, `_`, `-` and `.`, at most [`MAX_NAME_BYTES`] bytes), count under
//! `other`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use cdc_core::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Distinct field names with a series of their own.
pub const MAX_FIELD_NAMES: usize = 100;
/// Longest field path with a series of its own.
pub const MAX_NAME_BYTES: usize = 64;
/// The series of every other name.
pub const OTHER: &str = "other";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabels {
    topic: String,
    field: String,
}

/// The counter of ignored fields and the names admitted to it so far.
#[derive(Debug, Clone)]
pub struct UnknownFields {
    counter: Family<FieldLabels, Counter>,
    names: Arc<Mutex<BTreeSet<String>>>,
}

fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl UnknownFields {
    /// Registers `unknown_fields` (exported as `cdc_unknown_fields_total`) with the process's
    /// metrics.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            counter: Family::default(),
            names: Arc::new(Mutex::new(BTreeSet::new())),
        };
        metrics.register(
            "unknown_fields",
            "Fields of business events the consumer does not know and ignored, by topic and field",
            this.counter.clone(),
        );
        this
    }

    /// The series `field` counts under: its own while there is room, else `other`.
    fn label(&self, topic: &str, field: &str) -> String {
        if !plain(field) || field == OTHER {
            return OTHER.to_owned();
        }
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if names.contains(field) {
            return field.to_owned();
        }
        if names.len() >= MAX_FIELD_NAMES {
            return OTHER.to_owned();
        }
        names.insert(field.to_owned());
        tracing::info!(
            topic,
            field,
            "business events carry a field this consumer does not know; it is ignored"
        );
        field.to_owned()
    }

    /// Counts the ignored fields of one durable batch of `topic`.
    pub fn count<'a>(&self, topic: &str, fields: impl IntoIterator<Item = &'a String>) {
        for field in fields {
            let labels = FieldLabels {
                topic: topic.to_owned(),
                field: self.label(topic, field),
            };
            self.counter.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(metrics: &Metrics) -> Vec<String> {
        metrics
            .render()
            .lines()
            .filter(|line| line.starts_with("cdc_unknown_fields_total{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn fields_are_counted_per_topic_and_name() {
        let metrics = Metrics::new("cdc");
        let unknown = UnknownFields::register(&metrics);
        let fields: Vec<String> = ["channel", "order.gift_wrap", "channel"]
            .map(String::from)
            .to_vec();
        unknown.count("orders", &fields);
        unknown.count("users", &fields[..1]);
        let mut lines = series(&metrics);
        lines.sort();
        assert_eq!(
            lines,
            [
                "cdc_unknown_fields_total{topic=\"orders\",field=\"channel\"} 2",
                "cdc_unknown_fields_total{topic=\"orders\",field=\"order.gift_wrap\"} 1",
                "cdc_unknown_fields_total{topic=\"users\",field=\"channel\"} 1",
            ]
        );
    }

    #[test]
    fn names_beyond_the_cap_or_not_plain_count_as_other() {
        let metrics = Metrics::new("cdc");
        let unknown = UnknownFields::register(&metrics);
        let many: Vec<String> = (0..MAX_FIELD_NAMES + 20).map(|i| format!("f{i}")).collect();
        unknown.count("orders", &many);
        let odd: Vec<String> = [
            "with space".to_owned(),
            "quote\"".to_owned(),
            "x".repeat(MAX_NAME_BYTES + 1),
            String::new(),
        ]
        .to_vec();
        unknown.count("orders", &odd);
        // An admitted name keeps its series once the cap is reached.
        unknown.count("orders", &many[..1]);
        let lines = series(&metrics);
        assert_eq!(lines.len(), MAX_FIELD_NAMES + 1, "{lines:?}");
        assert!(
            lines.contains(
                &"cdc_unknown_fields_total{topic=\"orders\",field=\"other\"} 24".to_owned()
            ),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"cdc_unknown_fields_total{topic=\"orders\",field=\"f0\"} 2".to_owned()),
            "{lines:?}"
        );
    }
}
