//! The message browser: the newest records of a topic, records from an offset or from a time,
//! optionally only those whose key contains a text. Each record is shown with its partition,
//! offset, timestamp, key and headers, and its value pretty-printed: JSON indented, other text as
//! text, binary as hex, long values cut with a note. A Debezium change is also shown as its
//! operation, the columns that differ between the before and after images, and its source LSN; a
//! dead letter shows its `dlq.*` headers first.
//!
//! Records are read by a consumer without a group (nothing is committed) assigned to the
//! partitions at the wanted offsets, up to each partition's end as it was when the browse began.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdc_core::debezium::{self, Cell, Field, Record};
use cdc_core::tables::{self, Table};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::format;
use crate::wire::{Metadata, Watermarks, Wire};

/// Most records one browse returns.
pub const MAX_LIMIT: usize = 500;
/// Value bytes shown before the cut.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Records read per partition when filtering by key, unless asked otherwise.
pub const DEFAULT_SCAN: i64 = 2000;
/// Records read per partition in one step of a key search, newest first.
const KEY_WINDOW: i64 = 500;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Newest,
    Offset,
    Time,
}

/// What to browse, as given in the query string.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct BrowseQuery {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only this partition (all when absent or empty).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub partition: Option<i32>,
    /// Start offset (mode `offset`).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub offset: Option<i64>,
    /// Start time (mode `time`): RFC 3339, `YYYY-MM-DDTHH:MM[:SS]` (UTC) or milliseconds.
    #[serde(default)]
    pub time: Option<String>,
    /// Only records whose key contains this text.
    #[serde(default)]
    pub key: Option<String>,
    /// Records read per partition when filtering by key (mode `newest`).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub scan: Option<i64>,
}

fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: Option<String> = Option::deserialize(deserializer)?;
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl BrowseQuery {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, MAX_LIMIT)
    }

    fn key_filter(&self) -> Option<&str> {
        self.key.as_deref().map(str::trim).filter(|k| !k.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrowseError {
    #[error("topic `{0}` does not exist")]
    NoTopic(String),
    #[error("partition {1} of `{0}` does not exist")]
    NoPartition(String, i32),
    #[error("`{0}` is not a time (RFC 3339, YYYY-MM-DDTHH:MM[:SS] in UTC, or milliseconds)")]
    BadTime(String),
    #[error("mode `offset` needs an offset")]
    NoOffset,
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("reading records failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// `json`, `text`, `hex` or `null`.
    pub kind: &'static str,
    pub text: String,
    pub size: usize,
    /// Set when the value was cut.
    pub cut: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnChange {
    pub column: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    /// `create`, `update`, `delete`, `read` (snapshot), `truncate` or `tombstone`.
    pub op: &'static str,
    pub table: String,
    pub lsn: Option<String>,
    pub tx_id: Option<i64>,
    pub committed_at: Option<String>,
    /// Every column of either image; `changed` marks those that differ.
    pub columns: Vec<ColumnChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub timestamp: String,
    pub key: Option<Shown>,
    /// `dlq.*` headers first, then the others.
    pub headers: Vec<(String, String)>,
    /// The dead letter's reason, when there is one.
    pub dlq_reason: Option<String>,
    pub value: Shown,
    pub change: Option<ChangeView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Browse {
    pub topic: String,
    pub query: BrowseQuery,
    pub messages: Vec<MessageView>,
    /// Records read to find them.
    pub scanned: u64,
    /// The browse stopped at its deadline before reaching every partition's end.
    pub incomplete: bool,
}

/// Bytes as text: JSON indented, UTF-8 as is, anything else as hex; cut at [`MAX_VALUE_BYTES`].
pub fn show(data: Option<&[u8]>) -> Shown {
    let Some(data) = data else {
        return Shown {
            kind: "null",
            text: String::new(),
            size: 0,
            cut: None,
        };
    };
    let size = data.len();
    let cut_note =
        |shown: usize| (shown < size).then(|| format!("showing the first {shown} of {size} bytes"));
    if size <= MAX_VALUE_BYTES * 4 {
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
            if json.is_object() || json.is_array() {
                let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
                let text = cdc_core::dlq::cut_text(&pretty, MAX_VALUE_BYTES);
                return Shown {
                    kind: "json",
                    cut: (text.len() < pretty.len()).then(|| {
                        format!(
                            "showing the first {} of {} characters",
                            text.len(),
                            pretty.len()
                        )
                    }),
                    text: text.to_owned(),
                    size,
                };
            }
        }
    }
    let head = &data[..size.min(MAX_VALUE_BYTES)];
    match std::str::from_utf8(head) {
        Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => Shown {
            kind: "text",
            text: text.to_owned(),
            size,
            cut: cut_note(head.len()),
        },
        // A multi-byte character cut at the end is still text.
        Err(e) if e.error_len().is_none() && e.valid_up_to() + 4 > head.len() => Shown {
            kind: "text",
            text: String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned(),
            size,
            cut: cut_note(e.valid_up_to()),
        },
        _ => {
            let head = &data[..size.min(MAX_VALUE_BYTES / 2)];
            Shown {
                kind: "hex",
                text: format::hex(head),
                size,
                cut: cut_note(head.len()),
            }
        }
    }
}

/// A key on one line: JSON compact (a Debezium key without its schema), text as is, else hex.
pub fn show_key(key: &[u8]) -> Shown {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(key) {
        if json.is_object() || json.is_array() {
            let payload = match json.get("payload") {
                Some(payload) if json.get("schema").is_some() => payload,
                _ => &json,
            };
            let text = payload.to_string();
            let shown = cdc_core::dlq::cut_text(&text, MAX_VALUE_BYTES).to_owned();
            return Shown {
                kind: "json",
                cut: (shown.len() < text.len()).then(|| {
                    format!(
                        "showing the first {} of {} characters",
                        shown.len(),
                        text.len()
                    )
                }),
                text: shown,
                size: key.len(),
            };
        }
    }
    show(Some(key))
}

fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Uuid(u) => u.to_string(),
        Cell::Text(t) => t.clone(),
        Cell::Int(n) => n.to_string(),
        Cell::Bool(b) => b.to_string(),
        Cell::Date(d) => d.to_string(),
        Cell::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.6fZ").to_string(),
        Cell::Decimal(d) => d.to_string(),
    }
}

fn known_table(name: &str) -> Option<&'static Table> {
    [&tables::USERS, &tables::ORDERS]
        .into_iter()
        .find(|t| t.name == name)
}

/// A column of an image as text: decoded by the table's description when the table is one of
/// the pipeline's, the raw JSON otherwise.
fn column_text(
    image: Option<&debezium::Image>,
    raw: Option<&serde_json::Map<String, serde_json::Value>>,
    table: Option<&Table>,
    column: &str,
) -> Option<String> {
    if let (Some(image), Some(table)) = (image, table) {
        if let Some(col) = table.column(column) {
            match image.get(column, col.ty) {
                Ok(Field::Value(cell)) => return Some(cell_text(&cell)),
                Ok(Field::Null) => return Some("NULL".to_owned()),
                Ok(Field::Unavailable) => return Some("(unchanged TOAST value)".to_owned()),
                Err(_) => {}
            }
        }
    }
    let value = raw?.get(column)?;
    Some(match value {
        serde_json::Value::Null => "NULL".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The images as plain JSON objects, with or without an embedded schema.
fn raw_images(value: &[u8]) -> (Option<JsonObject>, Option<JsonObject>) {
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(value) else {
        return (None, None);
    };
    if let Some(payload) = json.get_mut("payload").map(serde_json::Value::take) {
        json = payload;
    }
    let image = |name: &str| match json.get(name) {
        Some(serde_json::Value::Object(map)) => Some(map.clone()),
        _ => None,
    };
    (image("before"), image("after"))
}

/// A Debezium change event or tombstone, if the record is one.
pub fn change_view(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<ChangeView> {
    match debezium::parse(key, value).ok()? {
        Record::Tombstone { .. } => Some(ChangeView {
            op: "tombstone",
            table: String::new(),
            lsn: None,
            tx_id: None,
            committed_at: None,
            columns: Vec::new(),
        }),
        Record::Change(change) => {
            let (raw_before, raw_after) = value.map(raw_images).unwrap_or((None, None));
            let table = known_table(&change.source.table);
            let mut names: Vec<String> = Vec::new();
            if let Some(table) = table {
                names.extend(table.columns.iter().map(|c| c.name.to_owned()));
            }
            for image in [&raw_before, &raw_after].into_iter().flatten() {
                for name in image.keys() {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
            }
            let columns = names
                .into_iter()
                .map(|name| {
                    let before =
                        column_text(change.before.as_ref(), raw_before.as_ref(), table, &name);
                    let after =
                        column_text(change.after.as_ref(), raw_after.as_ref(), table, &name);
                    ColumnChange {
                        changed: raw_before.is_some() && raw_after.is_some() && before != after,
                        column: name,
                        before,
                        after,
                    }
                })
                .filter(|c| c.before.is_some() || c.after.is_some())
                .collect();
            Some(ChangeView {
                op: match change.op {
                    debezium::Op::Create => "create",
                    debezium::Op::Update => "update",
                    debezium::Op::Delete => "delete",
                    debezium::Op::Read => "read",
                    debezium::Op::Truncate => "truncate",
                },
                table: format!("{}.{}", change.source.schema, change.source.table),
                lsn: change.source.lsn.map(format::lsn),
                tx_id: change.source.tx_id,
                committed_at: Some(format::millis(change.source.ts_ms)),
                columns,
            })
        }
    }
}

fn message_view(
    message: &rdkafka::message::BorrowedMessage<'_>,
    debezium_topic: bool,
) -> MessageView {
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(list) = message.headers() {
        for header in list.iter() {
            let shown = show(header.value);
            headers.push((header.key.to_owned(), shown.text));
        }
    }
    // Dead-letter headers first, in the order they were written.
    headers.sort_by_key(|(k, _)| !k.starts_with("dlq."));
    let dlq_reason = headers
        .iter()
        .find(|(k, _)| k == cdc_core::dlq::HEADER_REASON)
        .map(|(_, v)| v.clone());
    let timestamp_ms = message.timestamp().to_millis();
    MessageView {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms,
        timestamp: timestamp_ms.map(format::millis).unwrap_or_default(),
        key: message.key().map(show_key),
        headers,
        dlq_reason,
        value: show(message.payload()),
        change: if debezium_topic {
            change_view(message.key(), message.payload())
        } else {
            None
        },
    }
}

/// Milliseconds since the epoch from RFC 3339, `YYYY-MM-DDTHH:MM[:SS]` in UTC, or a number.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
    .map(|at| at.and_utc().timestamp_millis())
}

/// Reads what `query` asks for from `topic`, within `deadline`.
pub async fn browse(
    wire: &Wire,
    metadata: &Metadata,
    kafka: ClientConfig,
    topic: &str,
    query: BrowseQuery,
    deadline: Duration,
) -> Result<Browse, BrowseError> {
    let info = metadata
        .topic(topic)
        .ok_or_else(|| BrowseError::NoTopic(topic.to_owned()))?;
    let partitions: Vec<i32> = match query.partition {
        Some(p) if info.partitions.iter().any(|x| x.id == p) => vec![p],
        Some(p) => return Err(BrowseError::NoPartition(topic.to_owned(), p)),
        None => info.partitions.iter().map(|p| p.id).collect(),
    };
    let marks = wire.watermarks(metadata, &[topic]).await;
    let limit = query.limit();
    let key_filter = query.key_filter().map(str::to_owned);
    let mut starts: BTreeMap<i32, (i64, Watermarks)> = BTreeMap::new();
    let from_time = match query.mode {
        Mode::Time => {
            let text = query.time.clone().unwrap_or_default();
            let at = parse_time(&text).ok_or(BrowseError::BadTime(text))?;
            let keys: Vec<(String, i32)> =
                partitions.iter().map(|p| (topic.to_owned(), *p)).collect();
            Some(wire.list_offsets(metadata, &keys, at).await)
        }
        _ => None,
    };
    for p in &partitions {
        let Some(w) = marks.get(&(topic.to_owned(), *p)).copied() else {
            continue;
        };
        let start = match query.mode {
            Mode::Newest => {
                let back = if key_filter.is_some() {
                    query.scan.unwrap_or(DEFAULT_SCAN).max(1)
                } else {
                    i64::try_from(limit).unwrap_or(i64::MAX)
                };
                (w.high - back).max(w.low)
            }
            Mode::Offset => query
                .offset
                .ok_or(BrowseError::NoOffset)?
                .clamp(w.low, w.high),
            Mode::Time => from_time
                .as_ref()
                .and_then(|o| o.get(&(topic.to_owned(), *p)).copied())
                .filter(|o| *o >= 0)
                .unwrap_or(w.high)
                .clamp(w.low, w.high),
        };
        if start < w.high {
            starts.insert(*p, (start, w));
        }
    }
    let topic_name = topic.to_owned();
    let mode = query.mode;
    let (mut messages, scanned, incomplete) = tokio::task::spawn_blocking(move || {
        let reading = Reading {
            topic: &topic_name,
            mode,
            limit,
            key_filter: key_filter.as_deref(),
            debezium_topic: is_debezium_topic(&topic_name),
        };
        read(kafka, &reading, &starts, deadline)
    })
    .await??;
    match mode {
        Mode::Newest => messages.sort_by(|a, b| {
            b.timestamp_ms
                .cmp(&a.timestamp_ms)
                .then(b.offset.cmp(&a.offset))
                .then(a.partition.cmp(&b.partition))
        }),
        Mode::Offset | Mode::Time => messages.sort_by(|a, b| {
            a.timestamp_ms
                .cmp(&b.timestamp_ms)
                .then(a.partition.cmp(&b.partition))
                .then(a.offset.cmp(&b.offset))
        }),
    }
    messages.truncate(limit);
    Ok(Browse {
        topic: topic.to_owned(),
        query,
        messages,
        scanned,
        incomplete,
    })
}

/// Debezium's topics carry change events: `<prefix>.<schema>.<table>` with a prefix, and not a
/// dead-letter topic.
pub fn is_debezium_topic(topic: &str) -> bool {
    topic.split('.').count() == 3 && !topic.ends_with(".dlq") && topic.starts_with("cdc.")
}

/// What to read and how to show it.
#[derive(Debug)]
struct Reading<'a> {
    topic: &'a str,
    mode: Mode,
    limit: usize,
    key_filter: Option<&'a str>,
    debezium_topic: bool,
}

/// Reads `[start, end)` of each partition (newest mode: from the end backwards, in windows, so
/// the newest records are found first) until `limit` records match or the deadline passes.
/// Returns the matches, the records read, and whether the deadline cut the reading short.
fn read(
    mut kafka: ClientConfig,
    reading: &Reading<'_>,
    ranges: &BTreeMap<i32, (i64, Watermarks)>,
    deadline: Duration,
) -> Result<(Vec<MessageView>, u64, bool), BrowseError> {
    if ranges.is_empty() {
        return Ok((Vec::new(), 0, false));
    }
    kafka
        .set("group.id", "cdc-console-browser")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.max.bytes", "4194304")
        .set("max.partition.fetch.bytes", "1048576")
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.wait.max.ms", "50")
        .set("client.id", "cdc-console-browser");
    let consumer: BaseConsumer = kafka.create()?;
    let until = Instant::now() + deadline;
    let mut found = Vec::new();
    let mut scanned = 0_u64;
    if reading.mode != Mode::Newest {
        let pass: BTreeMap<i32, (i64, i64)> = ranges
            .iter()
            .map(|(p, (start, w))| (*p, (*start, w.high)))
            .collect();
        let cap = Some(reading.limit);
        let complete = read_pass(
            &consumer,
            reading,
            &pass,
            cap,
            until,
            &mut found,
            &mut scanned,
        )?;
        return Ok((found, scanned, !complete));
    }
    let window = if reading.key_filter.is_some() {
        KEY_WINDOW.max(i64::try_from(reading.limit).unwrap_or(i64::MAX))
    } else {
        i64::MAX
    };
    let mut step = 0_i64;
    loop {
        let pass: BTreeMap<i32, (i64, i64)> = ranges
            .iter()
            .filter_map(|(p, (start, w))| {
                let end = w.high.saturating_sub(step.saturating_mul(window));
                let from = end.saturating_sub(window).max(*start);
                (from < end).then_some((*p, (from, end)))
            })
            .collect();
        if pass.is_empty() {
            return Ok((found, scanned, false));
        }
        let complete = read_pass(
            &consumer,
            reading,
            &pass,
            None,
            until,
            &mut found,
            &mut scanned,
        )?;
        if !complete {
            return Ok((found, scanned, true));
        }
        if found.len() >= reading.limit {
            return Ok((found, scanned, false));
        }
        step += 1;
    }
}

/// One pass over `[from, to)` of each partition; `cap` stops a partition after that many matches.
/// Returns whether every partition was read to its end before `until`.
fn read_pass(
    consumer: &BaseConsumer,
    reading: &Reading<'_>,
    pass: &BTreeMap<i32, (i64, i64)>,
    cap: Option<usize>,
    until: Instant,
    found: &mut Vec<MessageView>,
    scanned: &mut u64,
) -> Result<bool, BrowseError> {
    let mut assignment = TopicPartitionList::new();
    for (p, (from, _)) in pass {
        assignment.add_partition_offset(reading.topic, *p, Offset::Offset(*from))?;
    }
    consumer.assign(&assignment)?;
    let mut remaining: BTreeMap<i32, (i64, usize)> =
        pass.iter().map(|(p, (_, to))| (*p, (*to, 0))).collect();
    while !remaining.is_empty() {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return Ok(false);
        };
        let Some(result) = consumer.poll(left.min(Duration::from_millis(200))) else {
            continue;
        };
        let message = result?;
        let partition = message.partition();
        let Some((end, taken)) = remaining.get_mut(&partition) else {
            continue;
        };
        if message.offset() >= *end {
            remaining.remove(&partition);
            continue;
        }
        *scanned += 1;
        let matches = reading.key_filter.is_none_or(|wanted| {
            message
                .key()
                .is_some_and(|k| String::from_utf8_lossy(k).contains(wanted))
        });
        if matches {
            found.push(message_view(&message, reading.debezium_topic));
            *taken += 1;
        }
        if message.offset() + 1 >= *end || cap.is_some_and(|cap| *taken >= cap) {
            remaining.remove(&partition);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_by_kind() {
        let json = show(Some(br#"{"a":1,"b":[true,null]}"#));
        assert_eq!(json.kind, "json");
        assert!(json.text.contains("\n  \"a\": 1"));
        assert_eq!(show(Some(b"plain text")).kind, "text");
        let binary = show(Some(&[0, 159, 146, 150]));
        assert_eq!(binary.kind, "hex");
        assert_eq!(binary.text, "009f9296");
        assert_eq!(show(None).kind, "null");
        let key = show_key(br#"{"schema":{"type":"struct"},"payload":{"id":"a1"}}"#);
        assert_eq!(key.text, r#"{"id":"a1"}"#);
        assert_eq!(show_key(b"user-42").text, "user-42");
        let big = vec![b'x'; MAX_VALUE_BYTES + 10];
        let shown = show(Some(&big));
        assert_eq!(shown.text.len(), MAX_VALUE_BYTES);
        assert!(shown.cut.is_some_and(|c| c.contains("of 16394 bytes")));
    }

    #[test]
    fn an_update_shows_what_changed() {
        let value = br#"{"op":"u","source":{"db":"cdc_db","schema":"public","table":"users","lsn":96734792,"ts_ms":1796287797700,"txId":812},
            "before":{"id":"0b2c5c4e-5a3f-4b43-9d1e-3f4a7a3d2c11","name":"Ada","email":"ada@example.com","created_at":"2026-12-03T08:00:00.000000Z","updated_at":"2026-12-03T08:00:00.000000Z","deleted_at":null,"version":1},
            "after":{"id":"0b2c5c4e-5a3f-4b43-9d1e-3f4a7a3d2c11","name":"Ada L","email":"ada@example.com","created_at":"2026-12-03T08:00:00.000000Z","updated_at":"2026-12-03T08:01:00.000000Z","deleted_at":null,"version":2}}"#;
        let view = change_view(
            Some(br#"{"id":"0b2c5c4e-5a3f-4b43-9d1e-3f4a7a3d2c11"}"#),
            Some(value),
        );
        let Some(view) = view else {
            panic!("not read as a change")
        };
        assert_eq!(view.op, "update");
        assert_eq!(view.table, "public.users");
        assert_eq!(view.lsn.as_deref(), Some("0/5C40E48"));
        let changed: Vec<&str> = view
            .columns
            .iter()
            .filter(|c| c.changed)
            .map(|c| c.column.as_str())
            .collect();
        assert_eq!(changed, ["name", "updated_at", "version"]);
        let name = view.columns.iter().find(|c| c.column == "name");
        assert_eq!(name.and_then(|c| c.before.as_deref()), Some("Ada"));
        assert_eq!(name.and_then(|c| c.after.as_deref()), Some("Ada L"));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1796287797700"), Some(1_796_287_797_700));
        assert_eq!(parse_time("1970-01-01T00:01"), Some(60_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time("yesterday"), None);
        assert!(is_debezium_topic("cdc.public.users"));
        assert!(!is_debezium_topic("cdc.public.users.dlq"));
        assert!(!is_debezium_topic("users"));
    }
}
