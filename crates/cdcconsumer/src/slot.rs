//! The source's replication slot, watched while the sink runs.
//!
//! When a slot holds back more WAL than `max_slot_wal_keep_size`, PostgreSQL invalidates it
//! (`wal_status = 'lost'`): the changes it had not yet handed to Debezium are gone, and Debezium
//! cannot resume (its task retries for about half an hour, then fails). Nothing about that is
//! visible from Kafka, so the sink asks PostgreSQL: a lost or missing slot makes the process
//! unready (`/readyz` 503 naming it), sets `cdc_replication_slot_lost`, and is logged as an error
//! every check until it is repaired (docs/operations.md, "A lost replication slot"). A slot close
//! to the limit (`wal_status = 'unreserved'`) is a warning. The WAL the slot retains is exported
//! as `cdc_replication_slot_retained_bytes`.

use std::time::Duration;

use cdc_core::metrics::Metrics;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The name of the readiness problem a bad slot sets.
pub const PROBLEM: &str = "replication_slot";

/// What PostgreSQL says about the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// Its WAL is reserved; it retains this many bytes.
    Healthy { retained: i64 },
    /// Past `max_wal_size`: PostgreSQL will invalidate it at a checkpoint if it falls further
    /// behind (`wal_status` `unreserved`, or `extended` past `max_wal_size`).
    AtRisk { retained: i64, wal_status: String },
    /// Invalidated: changes since `confirmed` were never captured.
    Lost { confirmed: Option<String> },
    /// No slot of that name.
    Missing,
}

impl SlotState {
    /// Why the process is unready, if it is.
    pub fn problem(&self, slot: &str) -> Option<String> {
        match self {
            Self::Lost { confirmed } => {
                Some(format!(
                "replication slot {slot} was invalidated (wal_status lost: it held more WAL than \
                 max_slot_wal_keep_size); changes after {} were never captured and Debezium cannot \
                 resume; see docs/operations.md, \"A lost replication slot\"",
                confirmed.as_deref().unwrap_or("its last confirmed position")
            ))
            }
            Self::Missing => Some(format!(
                "replication slot {slot} does not exist: nothing is being captured"
            )),
            Self::Healthy { .. } | Self::AtRisk { .. } => None,
        }
    }
}

/// Asks PostgreSQL about `slot`.
pub async fn slot_state(pool: &PgPool, slot: &str) -> Result<SlotState, sqlx::Error> {
    let row: Option<(Option<String>, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT wal_status, confirmed_flush_lsn::text, \
                pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => SlotState::Missing,
        Some((Some(status), confirmed, _)) if status == "lost" => SlotState::Lost { confirmed },
        Some((status, _, retained)) => {
            let retained = retained.unwrap_or(0);
            match status.as_deref() {
                Some("reserved") | None => SlotState::Healthy { retained },
                Some(other) => SlotState::AtRisk {
                    retained,
                    wal_status: other.to_owned(),
                },
            }
        }
    })
}

/// The slot's gauges.
#[derive(Debug, Clone, Default)]
pub struct SlotMetrics {
    pub lost: Gauge,
    pub retained_bytes: Gauge,
}

impl SlotMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "replication_slot_lost",
            "1 while the source's replication slot is invalidated or missing",
            this.lost.clone(),
        );
        metrics.register(
            "replication_slot_retained_bytes",
            "WAL the source's replication slot holds back",
            this.retained_bytes.clone(),
        );
        this
    }
}

/// Checks `slot` every `every` until `shutdown`. PostgreSQL being unreachable changes nothing
/// here (the position guard and the verifier see it); only an answer does.
pub async fn watch(
    pool: PgPool,
    slot: String,
    metrics: Metrics,
    gauges: SlotMetrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let state = match slot_state(&pool, &slot).await {
            Ok(state) => state,
            Err(error) => {
                tracing::debug!(slot, %error, "could not ask PostgreSQL about the replication slot");
                continue;
            }
        };
        if let Some(problem) = state.problem(&slot) {
            tracing::error!(slot, problem, "the replication slot is broken");
            gauges.lost.set(1);
            metrics.set_problem(PROBLEM, problem);
            continue;
        }
        gauges.lost.set(0);
        metrics.clear_problem(PROBLEM);
        match state {
            SlotState::Healthy { retained } => {
                gauges.retained_bytes.set(retained);
            }
            SlotState::AtRisk {
                retained,
                wal_status,
            } => {
                gauges.retained_bytes.set(retained);
                tracing::warn!(
                    slot,
                    wal_status,
                    retained_bytes = retained,
                    "the replication slot holds more WAL than max_wal_size; PostgreSQL invalidates it past max_slot_wal_keep_size"
                );
            }
            SlotState::Lost { .. } | SlotState::Missing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_or_missing_slot_is_a_problem() {
        let lost = SlotState::Lost {
            confirmed: Some("0/2A000060".into()),
        };
        let problem = lost.problem("cdc_slot").unwrap_or_default();
        assert!(problem.contains("cdc_slot was invalidated") && problem.contains("0/2A000060"));
        assert!(SlotState::Missing.problem("cdc_slot").is_some());
        assert!(SlotState::Healthy { retained: 10 }.problem("s").is_none());
        assert!(SlotState::AtRisk {
            retained: 10,
            wal_status: "unreserved".into()
        }
        .problem("s")
        .is_none());
    }
}
