//! Dead letters for an operator: `list` shows what the dead-letter topics hold, by reason and
//! time; `replay` publishes a selection back to its source topics once the cause is fixed. Both
//! binaries that park records mount them as `dlq list` and `dlq replay` ([`DlqCommand`]).
//!
//! A replayed record is the parked one as it was — key, payload and the source record's own
//! headers — written to the partition it was read from (so it joins its key's other records), with
//! two headers of provenance, [`HEADER_REPLAYED_FROM`] and [`HEADER_REPLAYED_AT`], by an
//! idempotent acks=all producer. Replaying is at-least-once like every hop, and repeating it is
//! harmless: the sinks apply a record twice as once (the version guard in PostgreSQL, the source
//! LSN as the write timestamp in Cassandra), so an older record replayed after newer ones changes
//! nothing. Dead letters stay in their topic; one still defective is parked again, carrying its
//! provenance. A dead letter whose key, payload or headers were cut when it was parked is never
//! replayed (it would publish a different record): the report names it, and its original is at
//! its source position for as long as the source topic keeps it.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::{parse_duration, parse_time, KafkaArgs, LogArgs};
use crate::dlq::{self, Parked};
use crate::topics::{scan_to_end, ReadFrom};

/// On a replayed record: the dead letter it came from, `<dlq topic>/<partition>/<offset>`.
pub const HEADER_REPLAYED_FROM: &str = "dlq.replayed_from";
/// On a replayed record: when it was replayed (RFC 3339, UTC).
pub const HEADER_REPLAYED_AT: &str = "dlq.replayed_at";

/// Longest wait for one Kafka request while reading the dead-letter topics.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one replayed record may wait in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// A time given as RFC 3339 (`2026-11-24T10:00:00Z`), or as a duration before now (`2h`, `30m`).
pub fn parse_moment(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = parse_time(text) {
        return Ok(time);
    }
    let ago = parse_duration(text).map_err(|_| {
        format!("`{text}` is neither an RFC 3339 time nor a duration before now such as `2h`")
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|error| format!("`{text}`: {error}"))?;
    Ok(Utc::now() - ago)
}

/// Which dead letters a command works on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Read the dead letters of these source topics (their `<topic>.dlq`); repeatable or
    /// comma-separated. Default: the topics this binary consumes.
    #[arg(long = "source-topic", value_name = "TOPIC", value_delimiter = ',')]
    pub source_topics: Vec<String>,
    /// Only dead letters parked for these reasons; repeatable or comma-separated.
    #[arg(long = "reason", value_name = "REASON", value_delimiter = ',')]
    pub reasons: Vec<String>,
    /// Only dead letters parked at or after this time: RFC 3339, or a duration before now (`2h`).
    #[arg(long, value_name = "TIME", value_parser = parse_moment)]
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters parked before this time: RFC 3339, or a duration before now.
    #[arg(long, value_name = "TIME", value_parser = parse_moment)]
    pub until: Option<DateTime<Utc>>,
}

impl Selection {
    /// Whether `letter` is selected (its topic aside: that decides which topics are read).
    pub fn matches(&self, letter: &Parked) -> bool {
        let at = letter.parked_at;
        let reason = self.reasons.is_empty() || self.reasons.contains(&letter.reason);
        let since = self
            .since
            .is_none_or(|since| at.is_some_and(|at| at >= since.timestamp_millis()));
        let until = self
            .until
            .is_none_or(|until| at.is_some_and(|at| at < until.timestamp_millis()));
        reason && since && until
    }

    /// The source topics whose dead letters are read.
    fn sources(&self, defaults: &[String]) -> Vec<String> {
        if self.source_topics.is_empty() {
            defaults.to_vec()
        } else {
            self.source_topics.clone()
        }
    }
}

/// `dlq list` and `dlq replay`.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters: per dead-letter topic the count by reason, then one line each (the
    /// dead letter's place, when it was parked, why, its source position and the error).
    List(ReadArgs),
    /// Publish the selected dead letters back to the partitions they were read from (key,
    /// payload and headers as they were, plus `dlq.replayed_from` and `dlq.replayed_at`). Exit
    /// status: 0 every selected dead letter replayed, 1 some could not be (named), 2 failed.
    Replay(ReplayArgs),
}

/// Where the dead letters are, which ones, and how to log.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub selection: Selection,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Show what would be replayed, and publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replay at most this many dead letters (the oldest selected first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

impl DlqCommand {
    pub fn log(&self) -> &LogArgs {
        match self {
            Self::List(args) => &args.log,
            Self::Replay(args) => &args.read.log,
        }
    }
}

/// Why a dlq command could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqToolError {
    #[error("reading {topic} failed: {source}")]
    Read {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("creating the producer failed: {0}")]
    Producer(#[source] KafkaError),
    #[error(
        "replaying {from} to {to} failed after {replayed} records were replayed: {source}; \
         replaying the same selection again is safe"
    )]
    Write {
        from: String,
        to: String,
        replayed: u64,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("reading the dead-letter topics stopped: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

/// How a dlq command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Everything selected was listed, or replayed (or would be, in a dry run).
    Complete,
    /// Done, but this many selected dead letters could not be replayed (the report names them).
    Skipped(u64),
}

/// The exit status of a dlq command: 0 complete, 1 some dead letters skipped, 2 failed (the error
/// goes to stderr).
pub fn exit_code(result: Result<Finished, DlqToolError>) -> i32 {
    match result {
        Ok(Finished::Complete) => 0,
        Ok(Finished::Skipped(_)) => 1,
        Err(error) => {
            eprintln!("error: {error}");
            2
        }
    }
}

/// Runs a dlq command; `defaults` are the source topics when `--source-topic` is not given. The
/// report goes to stdout.
pub async fn run(command: DlqCommand, defaults: &[String]) -> Result<Finished, DlqToolError> {
    match command {
        DlqCommand::List(args) => {
            let listing = list(&args.kafka.client_config(), defaults, &args.selection).await?;
            print!("{listing}");
            Ok(Finished::Complete)
        }
        DlqCommand::Replay(args) => {
            let report = replay(
                &args.read.kafka.client_config(),
                defaults,
                &args.read.selection,
                args.dry_run,
                args.limit,
            )
            .await?;
            println!("{report}");
            Ok(match report.skipped.len() {
                0 => Finished::Complete,
                n => Finished::Skipped(u64::try_from(n).unwrap_or(u64::MAX)),
            })
        }
    }
}

/// `<topic>/<partition>/<offset>`.
fn place(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

fn time_text(ms: Option<i64>) -> String {
    ms.and_then(DateTime::from_timestamp_millis).map_or_else(
        || "unknown".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// What one dead-letter topic holds, as read for a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicListing {
    /// Selected dead letters by reason.
    pub counts: BTreeMap<String, u64>,
    /// The selected dead letters in the order they were parked.
    pub letters: Vec<Parked>,
    /// Records that are not dead letters: their place and what is wrong.
    pub unreadable: Vec<String>,
}

/// Reads `<source>.dlq` (from `--since` on) and keeps what the selection matches, at most `keep`
/// dead letters with their contents (the others counted only, and stripped of key, payload and
/// headers). Blocking.
fn scan(
    kafka: &ClientConfig,
    source: &str,
    selection: &Selection,
    keep: Option<u64>,
) -> Result<TopicListing, DlqToolError> {
    let topic = dlq::topic_for(source);
    let from = selection.since.map_or(ReadFrom::Beginning, |since| {
        ReadFrom::Time(since.timestamp_millis())
    });
    let mut listing = TopicListing::default();
    let mut kept = 0_u64;
    scan_to_end(kafka, &topic, &from, READ_TIMEOUT, |record| {
        use rdkafka::message::Message;
        match Parked::from_message(&record) {
            Ok(mut letter) if selection.matches(&letter) => {
                *listing.counts.entry(letter.reason.clone()).or_default() += 1;
                if keep.is_some_and(|keep| kept >= keep) {
                    return;
                }
                kept += 1;
                if keep.is_none() {
                    // Listing only: the contents are not needed.
                    letter.key = None;
                    letter.payload = None;
                    letter.headers.clear();
                }
                listing.letters.push(letter);
            }
            Ok(_) => {}
            Err(not) => listing.unreadable.push(format!(
                "{}: {}",
                place(record.topic(), record.partition(), record.offset()),
                not.problem
            )),
        }
    })
    .map_err(|source| DlqToolError::Read {
        topic: topic.clone(),
        source,
    })?;
    Ok(listing)
}

/// Every dead-letter topic of `sources` read with `selection`, in the order given. Blocking work
/// on a blocking thread.
async fn scan_all(
    kafka: &ClientConfig,
    sources: Vec<String>,
    selection: &Selection,
    keep: Option<u64>,
) -> Result<Vec<(String, TopicListing)>, DlqToolError> {
    let (kafka, selection) = (kafka.clone(), selection.clone());
    tokio::task::spawn_blocking(move || {
        let mut left = keep;
        let mut all = Vec::new();
        for source in sources {
            let listing = scan(&kafka, &source, &selection, left)?;
            left = left.map(|left| left.saturating_sub(listing.letters.len() as u64));
            all.push((source, listing));
        }
        Ok(all)
    })
    .await?
}

/// The selected dead letters of each source topic's dead-letter topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Per dead-letter topic, in the order the source topics were given.
    pub topics: Vec<(String, TopicListing)>,
}

/// Reads the dead letters `selection` picks from the dead-letter topics of `defaults` (or of
/// `--source-topic`).
pub async fn list(
    kafka: &ClientConfig,
    defaults: &[String],
    selection: &Selection,
) -> Result<Listing, DlqToolError> {
    let topics = scan_all(kafka, selection.sources(defaults), selection, None)
        .await?
        .into_iter()
        .map(|(source, listing)| (dlq::topic_for(&source), listing))
        .collect();
    Ok(Listing { topics })
}

/// `reason_a 2, reason_b 1`.
fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One dead letter on one line: `<place> parked=<time> reason=<reason> source=<place>
/// [replayed_from=<place>] error="<text>"`.
fn letter_line(letter: &Parked) -> String {
    let mut line = format!(
        "{} parked={} reason={} source={}",
        place(&letter.dlq_topic, letter.dlq_partition, letter.dlq_offset),
        time_text(letter.parked_at),
        letter.reason,
        place(
            &letter.source_topic,
            letter.source_partition,
            letter.source_offset
        ),
    );
    if let Some(from) = letter.header(HEADER_REPLAYED_FROM) {
        let _ = write!(line, " replayed_from={from}");
    }
    let _ = write!(line, " error=\"{}\"", letter.error.escape_debug());
    line
}

impl fmt::Display for Listing {
    /// `orders.dlq: 2 dead letters (rejected_by_database 2)`, then one line per dead letter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (topic, listing) in &self.topics {
            let total: u64 = listing.counts.values().sum();
            write!(f, "{topic}: {total} dead letters")?;
            if !listing.counts.is_empty() {
                write!(f, " ({})", counts_text(&listing.counts))?;
            }
            if !listing.unreadable.is_empty() {
                write!(
                    f,
                    "; {} records that are not dead letters",
                    listing.unreadable.len()
                )?;
            }
            writeln!(f)?;
            for letter in &listing.letters {
                writeln!(f, "{}", letter_line(letter))?;
            }
            for unreadable in &listing.unreadable {
                writeln!(f, "{unreadable} not a dead letter")?;
            }
        }
        Ok(())
    }
}

/// Why a selected dead letter cannot be replayed, if it cannot: it names another source topic
/// than the one whose dead-letter topic holds it, or parking cut its key, payload or headers.
pub fn unreplayable(letter: &Parked, source: &str) -> Option<String> {
    if letter.source_topic != source {
        return Some(format!(
            "it names {} as its source, not {source}",
            letter.source_topic
        ));
    }
    let cut: Vec<&str> = letter
        .truncated
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|part| !part.starts_with("error="))
        .collect();
    (!cut.is_empty()).then(|| {
        format!(
            "it was cut when parked ({}); the original is at {}",
            cut.join(","),
            place(
                &letter.source_topic,
                letter.source_partition,
                letter.source_offset
            )
        )
    })
}

/// The headers of `letter`'s replay: the source record's own (every `dlq.*` header dropped), in
/// order, then where it was replayed from and when.
pub fn replay_headers(letter: &Parked, replayed_at: &str) -> Vec<(String, Option<Vec<u8>>)> {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = letter
        .headers
        .iter()
        .filter(|(key, _)| !key.starts_with("dlq."))
        .cloned()
        .collect();
    let from = place(&letter.dlq_topic, letter.dlq_partition, letter.dlq_offset);
    headers.push((HEADER_REPLAYED_FROM.to_owned(), Some(from.into_bytes())));
    headers.push((
        HEADER_REPLAYED_AT.to_owned(),
        Some(replayed_at.as_bytes().to_vec()),
    ));
    headers
}

/// Publishes `letter` to its source partition and waits for the acknowledgement.
async fn republish(
    producer: &FutureProducer,
    letter: &Parked,
    replayed_at: &str,
) -> Result<(), KafkaError> {
    let headers = replay_headers(letter, replayed_at);
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in &headers {
        owned = owned.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&letter.source_topic)
        .partition(letter.source_partition)
        .headers(owned);
    if let Some(key) = &letter.key {
        record = record.key(key.as_slice());
    }
    if let Some(payload) = &letter.payload {
        record = record.payload(payload.as_slice());
    }
    producer
        .send(record, QUEUE_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// What `replay` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Dead letters the selection matched (before `--limit`).
    pub matched: u64,
    /// One line per dead letter replayed (or, in a dry run, that would be).
    pub lines: Vec<String>,
    /// Replayed (or, in a dry run, to be replayed) by reason.
    pub replayed: BTreeMap<String, u64>,
    /// Dead letters that cannot be replayed, and why.
    pub skipped: Vec<String>,
    /// Records of the dead-letter topics that are not dead letters.
    pub unreadable: u64,
}

impl ReplayReport {
    pub fn replayed_total(&self) -> u64 {
        self.replayed.values().sum()
    }

    /// Counts `letter` (parked at `from`) as replayed, or to be replayed (`verb`).
    fn note(&mut self, from: &str, letter: &Parked, verb: &str) {
        self.lines.push(format!(
            "{verb} {from} to {}/{} reason={}",
            letter.source_topic, letter.source_partition, letter.reason
        ));
        *self.replayed.entry(letter.reason.clone()).or_default() += 1;
    }
}

/// Dead letters being re-published at once: waiting for each acknowledgement in turn made a
/// replay of tens of thousands take minutes.
const REPLAY_WINDOW: usize = 256;

impl fmt::Display for ReplayReport {
    /// The per-record lines, then `replay: matched=N replayed=N skipped=N unreadable=N
    /// dry_run=false (reason N, …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        for skipped in &self.skipped {
            writeln!(f, "skipped {skipped}")?;
        }
        write!(
            f,
            "replay: matched={} replayed={} skipped={} unreadable={} dry_run={}",
            self.matched,
            self.replayed_total(),
            self.skipped.len(),
            self.unreadable,
            self.dry_run
        )?;
        if !self.replayed.is_empty() {
            write!(f, " ({})", counts_text(&self.replayed))?;
        }
        Ok(())
    }
}

/// Replays the dead letters `selection` picks (the oldest `limit` of them) from the dead-letter
/// topics of `defaults` (or of `--source-topic`); with `dry_run`, only says what it would do.
/// Stops sending at the first write that fails (what was already in flight is waited for).
pub async fn replay(
    kafka: &ClientConfig,
    defaults: &[String],
    selection: &Selection,
    dry_run: bool,
    limit: Option<u64>,
) -> Result<ReplayReport, DlqToolError> {
    let keep = Some(limit.unwrap_or(u64::MAX));
    let topics = scan_all(kafka, selection.sources(defaults), selection, keep).await?;
    let producer = if dry_run {
        None
    } else {
        Some(dlq::producer(kafka.clone()).map_err(DlqToolError::Producer)?)
    };
    let replayed_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut report = ReplayReport {
        dry_run,
        ..ReplayReport::default()
    };
    let mut replayable = Vec::new();
    for (source, listing) in topics {
        report.matched += listing.counts.values().sum::<u64>();
        report.unreadable += listing.unreadable.len() as u64;
        for letter in listing.letters {
            let from = place(&letter.dlq_topic, letter.dlq_partition, letter.dlq_offset);
            match unreplayable(&letter, &source) {
                Some(why) => report.skipped.push(format!("{from}: {why}")),
                None => replayable.push((from, letter)),
            }
        }
    }
    let Some(producer) = &producer else {
        for (from, letter) in replayable {
            report.note(&from, &letter, "would replay");
        }
        return Ok(report);
    };
    // Up to REPLAY_WINDOW records in flight, acknowledged in order. After a failure nothing new
    // is sent, but what is in flight is waited for, so the count replayed is exact.
    let mut pending = replayable.into_iter();
    let mut in_flight = FuturesOrdered::new();
    let mut failure = None;
    loop {
        while failure.is_none() && in_flight.len() < REPLAY_WINDOW {
            let Some((from, letter)) = pending.next() else {
                break;
            };
            let replayed_at = replayed_at.as_str();
            in_flight.push_back(async move {
                let written = republish(producer, &letter, replayed_at).await;
                (from, letter, written)
            });
        }
        let Some((from, letter, written)) = in_flight.next().await else {
            break;
        };
        let to = format!("{}/{}", letter.source_topic, letter.source_partition);
        match written {
            Ok(()) => {
                tracing::info!(from = %from, to = %to, reason = %letter.reason, "replayed");
                report.note(&from, &letter, "replayed");
            }
            Err(source) => {
                failure.get_or_insert((from, to, source));
            }
        }
    }
    if let Some((from, to, source)) = failure {
        return Err(DlqToolError::Write {
            from,
            to,
            replayed: report.replayed_total(),
            source: Box::new(source),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: &str, parked_at: i64) -> Parked {
        Parked {
            reason: reason.into(),
            error: "refused\nby \"the\" database".into(),
            source_topic: "orders".into(),
            source_partition: 3,
            source_offset: 17,
            truncated: None,
            headers: vec![
                (dlq::HEADER_REASON.into(), Some(reason.as_bytes().to_vec())),
                ("trace-id".into(), Some(b"abc".to_vec())),
                ("empty".into(), None),
                (
                    HEADER_REPLAYED_FROM.into(),
                    Some(b"orders.dlq/0/1".to_vec()),
                ),
            ],
            key: Some(b"k".to_vec()),
            payload: Some(b"{}".to_vec()),
            parked_at: Some(parked_at),
            dlq_topic: "orders.dlq".into(),
            dlq_partition: 0,
            dlq_offset: 5,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        parse_time(text).unwrap_or_default()
    }

    #[test]
    fn a_selection_filters_by_reason_and_parking_time() {
        let ten = at("2026-11-24T10:00:00Z");
        let letter = letter("rejected_by_database", ten.timestamp_millis());
        assert!(Selection::default().matches(&letter));
        let reasons = |reasons: &[&str]| Selection {
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
            ..Selection::default()
        };
        assert!(reasons(&["undecodable", "rejected_by_database"]).matches(&letter));
        assert!(!reasons(&["undecodable"]).matches(&letter));
        let window = |since: &str, until: &str| Selection {
            since: Some(at(since)),
            until: Some(at(until)),
            ..Selection::default()
        };
        assert!(window("2026-11-24T10:00:00Z", "2026-11-24T10:00:01Z").matches(&letter));
        assert!(
            !window("2026-11-24T09:00:00Z", "2026-11-24T10:00:00Z").matches(&letter),
            "--until is exclusive"
        );
        assert!(!window("2026-11-24T10:00:00.001Z", "2026-11-25T00:00:00Z").matches(&letter));
        let unknown_time = Parked {
            parked_at: None,
            ..letter
        };
        assert!(!window("2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z").matches(&unknown_time));
    }

    #[test]
    fn moments_are_times_or_durations_ago() {
        assert_eq!(
            parse_moment("2026-11-24T10:00:00Z"),
            Ok(at("2026-11-24T10:00:00Z"))
        );
        let two_hours_ago = parse_moment("2h").unwrap_or_default();
        let expected = Utc::now() - chrono::Duration::hours(2);
        assert!((two_hours_ago - expected).num_seconds().abs() <= 5);
        assert!(parse_moment("yesterday").is_err());
    }

    #[test]
    fn a_replay_keeps_the_source_headers_and_adds_provenance() {
        let letter = letter("undecodable", 0);
        assert_eq!(
            replay_headers(&letter, "2026-11-24T10:00:00.000Z"),
            vec![
                ("trace-id".to_owned(), Some(b"abc".to_vec())),
                ("empty".to_owned(), None),
                (
                    HEADER_REPLAYED_FROM.to_owned(),
                    Some(b"orders.dlq/0/5".to_vec())
                ),
                (
                    HEADER_REPLAYED_AT.to_owned(),
                    Some(b"2026-11-24T10:00:00.000Z".to_vec())
                ),
            ]
        );
    }

    #[test]
    fn cut_or_foreign_dead_letters_are_not_replayed() {
        let whole = letter("undecodable", 0);
        assert_eq!(unreplayable(&whole, "orders"), None);
        let error_cut = Parked {
            truncated: Some("error=10000".into()),
            ..whole.clone()
        };
        assert_eq!(
            unreplayable(&error_cut, "orders"),
            None,
            "the error text is not replayed"
        );
        let payload_cut = Parked {
            truncated: Some("error=10000,payload=3145728".into()),
            ..whole.clone()
        };
        assert_eq!(
            unreplayable(&payload_cut, "orders").as_deref(),
            Some("it was cut when parked (payload=3145728); the original is at orders/3/17")
        );
        assert!(unreplayable(&whole, "users").is_some_and(|why| why.contains("names orders")));
    }

    #[test]
    fn a_listing_counts_by_reason_and_shows_one_line_per_dead_letter() {
        let ten = at("2026-11-24T10:00:00Z").timestamp_millis();
        let listing = Listing {
            topics: vec![
                ("users.dlq".into(), TopicListing::default()),
                (
                    "orders.dlq".into(),
                    TopicListing {
                        counts: BTreeMap::from([("rejected_by_database".into(), 1)]),
                        letters: vec![letter("rejected_by_database", ten)],
                        unreadable: vec!["orders.dlq/0/9: no dlq.reason header".into()],
                    },
                ),
            ],
        };
        assert_eq!(
            listing.to_string(),
            "users.dlq: 0 dead letters\n\
             orders.dlq: 1 dead letters (rejected_by_database 1); 1 records that are not dead letters\n\
             orders.dlq/0/5 parked=2026-11-24T10:00:00.000Z reason=rejected_by_database \
             source=orders/3/17 replayed_from=orders.dlq/0/1 \
             error=\"refused\\nby \\\"the\\\" database\"\n\
             orders.dlq/0/9: no dlq.reason header not a dead letter\n"
        );
    }
}
