//! `cdcconsumer resnapshot --table T`: an online re-snapshot of one captured table.
//!
//! Debezium is asked for an incremental snapshot through its signal table (an `execute-snapshot`
//! row inserted into `public.debezium_signal`, which is in the publication); the connector reads
//! the table in primary-key chunks between watermarks it writes into the same table, so writes
//! go on meanwhile and a row changed inside a chunk's window is sent as the change, not the read.
//! Progress comes from Debezium's notifications (a Kafka topic, `notification.sink.topic.name`),
//! whose `id` is the signal's. Done means Debezium reported `COMPLETED` and, unless `--group ''`,
//! cdcconsumer's group has committed every record of the table's topic written up to then.
//!
//! Reads never overwrite newer changes in Cassandra: cdcconsumer writes a read just above the
//! table's latest truncation, below every change (see the components guide), so a re-snapshot
//! fills what Cassandra lacks (a lost table, a column added since the rows last changed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cdc_core::config::{parse_duration, KafkaArgs, LogArgs, PostgresArgs};
use cdc_core::topics::ReadFrom;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::verify::quiet::GroupProbe;

#[derive(Debug, clap::Args)]
pub struct ResnapshotArgs {
    /// The captured table to read again (`users` or `orders`).
    #[arg(long)]
    pub table: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// PostgreSQL as a role that may insert into the signal table.
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Debezium's signal table (`signal.data.collection`), as `schema.table`.
    #[arg(
        long,
        env = "DEBEZIUM_SIGNAL_TABLE",
        default_value = "public.debezium_signal"
    )]
    pub signal_table: String,
    /// Debezium's notification topic (`notification.sink.topic.name`).
    #[arg(
        long,
        env = "DEBEZIUM_NOTIFICATION_TOPIC",
        default_value = "cdc.notifications"
    )]
    pub notification_topic: String,
    /// The connector's topic prefix: the table's changes are in `<prefix>.public.<table>`.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "cdc")]
    pub topic_prefix: String,
    /// cdcconsumer's consumer group, which must apply the snapshot before it counts as done;
    /// empty to stop when Debezium is done.
    #[arg(long, env = "CDC_GROUP", default_value = "cdc-cassandra-consumer")]
    pub group: String,
    /// How long to wait for the whole re-snapshot.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Why a re-snapshot did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResnapshotError {
    #[error("`{0}` is not a captured table (users, orders)")]
    UnknownTable(String),
    #[error("`{0}` is not a table name of the form schema.table")]
    BadSignalTable(String),
    #[error("sending the signal to {table} failed: {source}")]
    Signal {
        table: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Debezium aborted the snapshot: {0}")]
    Aborted(String),
    #[error("not done within {timeout:?}; last seen: {last}")]
    TimedOut { timeout: Duration, last: String },
    #[error("stopped before the end; the snapshot goes on in Debezium (last seen: {0})")]
    Stopped(String),
    #[error("a blocking Kafka call failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl ResnapshotError {
    /// Whether running the command again may succeed without a change (as opposed to a wrong
    /// argument or a snapshot Debezium refused).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Signal { .. } | Self::Kafka(_) | Self::TimedOut { .. } | Self::Join(_)
        )
    }
}

/// What a finished re-snapshot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resnapshot {
    pub id: String,
    pub table: String,
    /// Rows Debezium read, as its `TABLE_SCAN_COMPLETED` notification says.
    pub rows: Option<u64>,
    /// The table topic's end offsets when Debezium was done, which the group has committed.
    pub applied_up_to: BTreeMap<i32, i64>,
    pub elapsed: Duration,
}

impl std::fmt::Display for Resnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resnapshot: table={} id={} rows={} applied={} elapsed={:.1}s",
            self.table,
            self.id,
            self.rows
                .map_or_else(|| "unknown".to_owned(), |r| r.to_string()),
            if self.applied_up_to.is_empty() {
                "not waited".to_owned()
            } else {
                format!("{} partitions", self.applied_up_to.len())
            },
            self.elapsed.as_secs_f64()
        )
    }
}

/// One of Debezium's notifications (the payload when the converter embeds a schema).
#[derive(Debug, Clone, Deserialize)]
struct Notification {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    additional_data: BTreeMap<String, String>,
}

fn parse_notification(value: &[u8]) -> Option<Notification> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    let payload = match json.get("payload") {
        Some(payload) if payload.is_object() => payload.clone(),
        _ => json,
    };
    serde_json::from_value(payload).ok()
}

fn valid_signal_table(name: &str) -> bool {
    let ident = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    matches!(name.split_once('.'), Some((schema, table)) if ident(schema) && ident(table))
}

/// The `data` of an `execute-snapshot` signal for one table.
fn signal_data(qualified_table: &str) -> String {
    serde_json::json!({
        "data-collections": [qualified_table],
        "type": "incremental",
    })
    .to_string()
}

/// Sends the signal, follows the notifications, then waits for the group (see the module).
pub async fn run(
    args: &ResnapshotArgs,
    shutdown: CancellationToken,
) -> Result<Resnapshot, ResnapshotError> {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let table = cdc_core::tables::CAPTURED
        .iter()
        .find(|t| t.name == args.table)
        .ok_or_else(|| ResnapshotError::UnknownTable(args.table.clone()))?;
    if !valid_signal_table(&args.signal_table) {
        return Err(ResnapshotError::BadSignalTable(args.signal_table.clone()));
    }
    let qualified = format!("public.{}", table.name);
    let kafka = args.kafka.client_config();
    let id = uuid::Uuid::new_v4().to_string();
    // Notifications are read from a little before the signal (they carry its id, so older
    // ones are skipped).
    let from_ms = chrono::Utc::now().timestamp_millis() - 60_000;

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(args.postgres.url())
        .await
        .map_err(|source| ResnapshotError::Signal {
            table: args.signal_table.clone(),
            source,
        })?;
    // The table name was checked above; it cannot be a bind parameter.
    let insert = format!(
        "INSERT INTO {} (id, type, data) VALUES ($1, 'execute-snapshot', $2)",
        args.signal_table
    );
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(&id)
        .bind(signal_data(&qualified))
        .execute(&pool)
        .await
        .map_err(|source| ResnapshotError::Signal {
            table: args.signal_table.clone(),
            source,
        })?;
    pool.close().await;
    tracing::info!(%id, table = %qualified, "asked Debezium for an incremental snapshot");
    eprintln!("resnapshot: signal {id} sent for {qualified}; following Debezium's notifications");

    let mut last = "signal sent, no notification yet".to_owned();
    let mut rows = None;
    let mut from = ReadFrom::Time(from_ms);
    'follow: loop {
        let (config, topic, read_from) =
            (kafka.clone(), args.notification_topic.clone(), from.clone());
        let records = tokio::task::spawn_blocking(move || {
            cdc_core::topics::read_to_end(&config, &topic, &read_from, Duration::from_secs(10))
        })
        .await??;
        let mut next = BTreeMap::new();
        for record in &records {
            next.insert(record.partition(), record.offset() + 1);
            let Some(note) = record.payload().and_then(parse_notification) else {
                continue;
            };
            if note.id != id {
                continue;
            }
            let data = &note.additional_data;
            last = format!("{} {data:?}", note.kind);
            match note.kind.as_str() {
                "IN_PROGRESS" => eprintln!(
                    "resnapshot: reading {} up to key {} (of {})",
                    data.get("current_collection_in_progress")
                        .map_or("?", String::as_str),
                    data.get("last_processed_key").map_or("?", String::as_str),
                    data.get("maximum_key").map_or("?", String::as_str),
                ),
                "TABLE_SCAN_COMPLETED" => {
                    rows = data
                        .get("total_rows_scanned")
                        .and_then(|r| r.parse::<u64>().ok());
                    eprintln!(
                        "resnapshot: {} read: {} rows, status {}",
                        data.get("scanned_collection").map_or("?", String::as_str),
                        rows.map_or_else(|| "?".to_owned(), |r| r.to_string()),
                        data.get("status").map_or("?", String::as_str),
                    );
                    if let Some(status) = data.get("status").filter(|s| *s != "SUCCEEDED") {
                        return Err(ResnapshotError::Aborted(format!(
                            "the scan of {qualified} ended with status {status}"
                        )));
                    }
                }
                "COMPLETED" => break 'follow,
                "ABORTED" => return Err(ResnapshotError::Aborted(last)),
                other => eprintln!("resnapshot: {other}"),
            }
        }
        if !next.is_empty() {
            let mut offsets = match std::mem::replace(&mut from, ReadFrom::Beginning) {
                ReadFrom::Offsets(offsets) => offsets,
                _ => BTreeMap::new(),
            };
            offsets.extend(next);
            from = ReadFrom::Offsets(offsets);
        }
        pause(deadline, &shutdown, args.timeout, &last).await?;
    }
    eprintln!("resnapshot: Debezium is done with {qualified}");

    let mut applied_up_to = BTreeMap::new();
    if !args.group.trim().is_empty() {
        let topic = format!("{}.public.{}", args.topic_prefix, table.name);
        let probe = Arc::new(GroupProbe::new(&kafka, &args.group)?);
        let ends = {
            let (probe, topic) = (Arc::clone(&probe), topic.clone());
            tokio::task::spawn_blocking(move || end_offsets(&probe, &topic)).await??
        };
        eprintln!(
            "resnapshot: waiting for group {} to apply {topic} up to {ends:?}",
            args.group
        );
        loop {
            let behind = {
                let (probe, topic, ends) = (Arc::clone(&probe), topic.clone(), ends.clone());
                tokio::task::spawn_blocking(move || behind(&probe, &topic, &ends)).await??
            };
            if behind.is_empty() {
                break;
            }
            last = format!("group {} behind on {topic}: {behind:?}", args.group);
            pause(deadline, &shutdown, args.timeout, &last).await?;
        }
        applied_up_to = ends;
    }
    Ok(Resnapshot {
        id,
        table: qualified,
        rows,
        applied_up_to,
        elapsed: started.elapsed(),
    })
}

/// One second, unless the deadline or a stop comes first.
async fn pause(
    deadline: Instant,
    shutdown: &CancellationToken,
    timeout: Duration,
    last: &str,
) -> Result<(), ResnapshotError> {
    if Instant::now() >= deadline {
        return Err(ResnapshotError::TimedOut {
            timeout,
            last: last.to_owned(),
        });
    }
    tokio::select! {
        () = shutdown.cancelled() => Err(ResnapshotError::Stopped(last.to_owned())),
        () = tokio::time::sleep(Duration::from_secs(1)) => Ok(()),
    }
}

/// Each partition's end offset (none for a topic that does not exist). Blocking.
fn end_offsets(probe: &GroupProbe, topic: &str) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let timeout = Duration::from_secs(10);
    let mut ends = BTreeMap::new();
    for partition in probe.partitions(topic, timeout)?.unwrap_or_default() {
        let (_, high) = probe.watermarks(topic, partition, timeout)?;
        ends.insert(partition, high);
    }
    Ok(ends)
}

/// The partitions whose committed offset (of the probe's group) is below `ends`, with what it
/// is. Blocking.
fn behind(
    probe: &GroupProbe,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
    let partitions: Vec<i32> = ends.keys().copied().collect();
    Ok(probe
        .committed(topic, &partitions, Duration::from_secs(10))?
        .into_iter()
        .filter(|(partition, at)| {
            let end = ends.get(partition).copied().unwrap_or(0);
            end > 0 && at.is_none_or(|at| at < end)
        })
        .collect())
}

/// Exit status: 0 done, 1 Debezium aborted or the arguments are wrong, 2 could not finish
/// (unreachable, timed out, stopped).
pub fn exit_code(outcome: &Result<Resnapshot, ResnapshotError>) -> i32 {
    match outcome {
        Ok(done) => {
            println!("{done}");
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            if error.is_retryable() || matches!(error, ResnapshotError::Stopped(_)) {
                2
            } else {
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_read_with_or_without_an_embedded_schema() {
        let plain = br#"{"id":"a","aggregate_type":"Incremental Snapshot","type":"COMPLETED","additional_data":{"connector_name":"c"},"timestamp":"1"}"#;
        let note = parse_notification(plain).expect("plain");
        assert_eq!((note.id.as_str(), note.kind.as_str()), ("a", "COMPLETED"));
        let wrapped = br#"{"schema":{"type":"struct"},"payload":{"id":"b","aggregate_type":"Incremental Snapshot","type":"TABLE_SCAN_COMPLETED","additional_data":{"total_rows_scanned":"42","status":"SUCCEEDED"},"timestamp":"1"}}"#;
        let note = parse_notification(wrapped).expect("wrapped");
        assert_eq!(note.kind, "TABLE_SCAN_COMPLETED");
        assert_eq!(note.additional_data["total_rows_scanned"], "42");
        assert!(parse_notification(b"not json").is_none());
        assert!(parse_notification(br#"{"id":1}"#).is_none());
    }

    #[test]
    fn the_signal_table_must_be_a_plain_qualified_name() {
        assert!(valid_signal_table("public.debezium_signal"));
        assert!(!valid_signal_table("debezium_signal"));
        assert!(!valid_signal_table("public.x; DROP TABLE users"));
        assert!(!valid_signal_table("public.\"x\""));
        assert!(!valid_signal_table("1a.b"));
    }

    #[test]
    fn the_signal_names_one_table_incrementally() {
        let data: serde_json::Value =
            serde_json::from_str(&signal_data("public.users")).expect("json");
        assert_eq!(
            data["data-collections"],
            serde_json::json!(["public.users"])
        );
        assert_eq!(data["type"], "incremental");
    }
}
