//! The account of the producer's events: which the cluster acknowledged, which have an unknown
//! outcome, and whether PostgreSQL reflects them.
//!
//! The producer's acknowledgement log names each event by its position in the stream; the stream
//! is regenerated from the same configuration, so the checker knows every event's content
//! without reading anything the pipeline wrote. Then, per entity of the stream:
//!
//! - the row PostgreSQL holds must be at least at the highest acknowledged version (otherwise an
//!   acknowledged event was **lost**);
//! - a row must be at a version that was sent (acknowledged or of unknown outcome: a failed
//!   delivery may still have been written), never at one that was not;
//! - the rows must equal the fold of the events at the versions PostgreSQL holds (with the
//!   soft-delete cascade of a deleted user), column by column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use cdc_core::events::Event;
use cdc_core::generator::{Generator, GeneratorConfig};
use cdc_core::tables::{self, Table};
use cdcconsumer::verify::compare::Value;
use serde::Serialize;
use stack_tests::model::Model;
use stack_tests::rows::{column, id_key, pg_rows, Precision};
use uuid::Uuid;

/// At most this many lost events or problems are listed (all are counted).
const LISTED: usize = 20;

/// What the producer's events came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Account {
    /// Events handed to the client or refused by it (positions in the log).
    pub sent: u64,
    /// Events the cluster acknowledged.
    pub acknowledged: u64,
    /// Events that failed or have no report: they may or may not have been written.
    pub unknown: u64,
    /// Acknowledged events PostgreSQL does not reflect.
    pub lost: u64,
    /// Entities (users and orders) checked.
    pub entities: u64,
    /// Lost events and wrong rows, the first of them.
    pub problems: Vec<String>,
}

/// The outcome of each event, by its position in the stream.
#[derive(Debug, Default)]
pub struct AckLog {
    pub acknowledged: BTreeSet<usize>,
    pub unknown: BTreeSet<usize>,
    /// One past the last position the log names.
    pub end: usize,
}

impl AckLog {
    /// Reads a producer's `--ack-log` file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the acknowledgement log {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// `<seq> ok …`, `<seq> failed …` or `<seq> refused …` per line.
    pub fn parse(text: &str) -> Result<Self> {
        let mut log = Self::default();
        for (number, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            let (Some(seq), Some(outcome)) = (words.next(), words.next()) else {
                anyhow::bail!("line {}: {line:?} is not `<seq> <outcome> …`", number + 1);
            };
            let seq: usize = seq
                .parse()
                .with_context(|| format!("line {}: position {seq:?}", number + 1))?;
            match outcome {
                "ok" => log.acknowledged.insert(seq),
                "failed" | "refused" => log.unknown.insert(seq),
                other => anyhow::bail!("line {}: unknown outcome {other:?}", number + 1),
            };
            log.end = log.end.max(seq + 1);
        }
        // A position acknowledged once is acknowledged (a report can only come once, but be safe).
        log.unknown = log.unknown.difference(&log.acknowledged).copied().collect();
        Ok(log)
    }

    /// Acknowledged, or of unknown outcome (reported failed or never reported).
    fn maybe_written(&self, seq: usize) -> bool {
        seq < self.end
    }
}

/// One entity's events, as (version, position) pairs.
#[derive(Debug, Default)]
struct History {
    versions: BTreeMap<i64, usize>,
}

fn entity(event: &Event) -> (&'static str, Uuid, i64) {
    match event {
        Event::User(e) => ("user", e.user.id, e.version),
        Event::Order(e) => ("order", e.order.id, e.version),
    }
}

/// Checks PostgreSQL against the stream `generator` and the producer's acknowledgement log.
pub async fn check(
    pool: &sqlx::PgPool,
    generator: &GeneratorConfig,
    log: &AckLog,
) -> Result<Account> {
    let events: Vec<Event> = Generator::new(generator.clone()).take(log.end).collect();
    anyhow::ensure!(
        events.len() == log.end,
        "the acknowledgement log names position {} but the stream has {} events",
        log.end.saturating_sub(1),
        events.len()
    );
    let mut account = Account {
        sent: u64::try_from(log.end)?,
        acknowledged: u64::try_from(log.acknowledged.len())?,
        unknown: u64::try_from(log.end - log.acknowledged.len())?,
        ..Account::default()
    };
    let mut histories: BTreeMap<(&'static str, Uuid), History> = BTreeMap::new();
    for (seq, event) in events.iter().enumerate() {
        let (kind, id, version) = entity(event);
        histories
            .entry((kind, id))
            .or_default()
            .versions
            .insert(version, seq);
    }
    account.entities = u64::try_from(histories.len())?;

    let ids = |kind: &str| -> Vec<Uuid> {
        histories
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| *id)
            .collect()
    };
    let (user_ids, order_ids) = (ids("user"), ids("order"));
    let held = held_versions(pool, &tables::USERS, &user_ids)
        .await?
        .into_iter()
        .map(|(id, v)| (("user", id), v))
        .chain(
            held_versions(pool, &tables::ORDERS, &order_ids)
                .await?
                .into_iter()
                .map(|(id, v)| (("order", id), v)),
        )
        .collect::<BTreeMap<_, _>>();

    // The events at the versions PostgreSQL holds: the model its rows must equal.
    let mut chosen = Vec::new();
    let mut problems = Vec::new();
    for (key @ (kind, id), history) in &histories {
        let required = history
            .versions
            .iter()
            .filter(|(_, seq)| log.acknowledged.contains(seq))
            .map(|(version, _)| *version)
            .max();
        let held = held.get(key).copied();
        match (required, held) {
            (Some(required), None) => {
                account.lost += 1;
                problems.push(format!(
                    "lost: {kind} {id} version {required} was acknowledged; PostgreSQL has no row"
                ));
            }
            (Some(required), Some(held)) if held < required => {
                account.lost += 1;
                problems.push(format!(
                    "lost: {kind} {id} version {required} was acknowledged; PostgreSQL holds version {held}"
                ));
            }
            _ => {}
        }
        let Some(held) = held else { continue };
        match history.versions.get(&held) {
            Some(seq) if log.maybe_written(*seq) => chosen.push(&events[*seq]),
            _ => problems.push(format!(
                "{kind} {id}: PostgreSQL holds version {held}, which was never sent"
            )),
        }
    }
    let model = Model::from_events(chosen);
    problems.extend(model.postgres_differences(pool).await?);
    account.problems = problems.iter().take(LISTED).cloned().collect();
    if problems.len() > LISTED {
        account
            .problems
            .push(format!("… and {} more", problems.len() - LISTED));
    }
    Ok(account)
}

/// The version of each of `ids`' rows PostgreSQL holds.
async fn held_versions(
    pool: &sqlx::PgPool,
    table: &Table,
    ids: &[Uuid],
) -> Result<BTreeMap<Uuid, i64>> {
    let rows = pg_rows(pool, table, Some(ids), Precision::Micros).await?;
    let mut versions = BTreeMap::new();
    for id in ids {
        if let Some(row) = rows.get(&id_key(table, *id)) {
            match column(table, row, "version") {
                Value::Int(version) => {
                    versions.insert(*id, *version);
                }
                other => anyhow::bail!("{} {id}: version {other:?}", table.name),
            }
        }
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_separates_acknowledged_from_unknown() -> Result<()> {
        let log = AckLog::parse(
            "0 ok 1 10\n2 failed Message timed out\n1 ok 0 4\n4 refused Queue full\n",
        )?;
        assert_eq!(log.acknowledged, BTreeSet::from([0, 1]));
        assert_eq!(log.unknown, BTreeSet::from([2, 4]));
        assert_eq!(log.end, 5, "position 3 has no report: unknown too");
        assert!(log.maybe_written(3));
        assert!(!log.maybe_written(5));
        assert!(AckLog::parse("x ok\n").is_err());
        assert!(AckLog::parse("3 maybe\n").is_err());
        assert!(AckLog::parse("3\n").is_err());
        Ok(())
    }
}
