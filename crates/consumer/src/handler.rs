//! The consumer's batch handler: decode and validate business events, park the bad ones in the
//! dead-letter topic, apply the rest to PostgreSQL with retries, and report a batch durable only
//! when all of that has happened.

use std::collections::BTreeSet;
use std::time::Duration;

use backon::BackoffBuilder;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use cdc_core::dlq;
use cdc_core::events::{self, EntityKind, Event, OrderEvent, UserEvent};
use cdc_core::metrics::{Metrics, Tally};
use cdc_core::outcome::Interrupted;
use cdc_core::retry::{backoff, retry};
use cdc_core::runtime::BatchHandler;

use crate::sink as pg;

/// Every dead-letter reason of the consumer: an invalid event's ([`events::REASONS`]), an order
/// whose user never arrived, and a record the database refused as invalid.
pub fn reasons() -> Vec<&'static str> {
    let mut reasons = events::REASONS.to_vec();
    reasons.extend([MISSING_PARENT, REJECTED_BY_DATABASE]);
    reasons
}

pub const MISSING_PARENT: &str = "missing_parent";
pub const REJECTED_BY_DATABASE: &str = "rejected_by_database";

pub struct EventHandler {
    pub kind: EntityKind,
    pub pool: PgPool,
    pub dlq: FutureProducer,
    /// How long an order may wait for its user before it is dead-lettered.
    pub parent_wait: Duration,
    /// How long a failure that is not a record's fault is retried before the batch gives up.
    pub give_up_after: Duration,
    pub metrics: Metrics,
}

impl std::fmt::Debug for EventHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHandler")
            .field("kind", &self.kind)
            .field("parent_wait", &self.parent_wait)
            .finish_non_exhaustive()
    }
}

impl EventHandler {
    async fn park(
        &self,
        message: &OwnedMessage,
        reason: &'static str,
        error: String,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        dlq::park_message(
            &self.dlq,
            message,
            reason,
            error,
            self.give_up_after,
            cancel,
        )
        .await?;
        tally.parked.push(reason);
        Ok(())
    }

    async fn apply_users(
        &self,
        events: &[(usize, UserEvent)],
        batch: &[OwnedMessage],
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let plain: Vec<UserEvent> = events.iter().map(|(_, e)| e.clone()).collect();
        match retry("apply users", self.give_up_after, cancel, || {
            pg::apply_users(&self.pool, &plain)
        })
        .await?
        {
            Ok(_) => tally.applied += plain.len(),
            Err(error) => {
                // The database refused data that passed validation: find the culprits one by one.
                tracing::error!(error = %error, "batch refused by the database; applying one by one");
                for (index, event) in events {
                    let single = [event.clone()];
                    match retry("apply user", self.give_up_after, cancel, || {
                        pg::apply_users(&self.pool, &single)
                    })
                    .await?
                    {
                        Ok(_) => tally.applied += 1,
                        Err(error) => {
                            self.park(
                                &batch[*index],
                                REJECTED_BY_DATABASE,
                                error.to_string(),
                                tally,
                                cancel,
                            )
                            .await?
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn apply_orders(
        &self,
        events: &[(usize, OrderEvent)],
        batch: &[OwnedMessage],
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut pending: Vec<(usize, OrderEvent)> = events.to_vec();
        let mut waits = backoff(self.parent_wait).build();
        loop {
            let plain: Vec<OrderEvent> = pending.iter().map(|(_, e)| e.clone()).collect();
            // Records the database refused one by one: parked, so neither applied nor waiting.
            let mut refused = 0;
            let outcome = match retry("apply orders", self.give_up_after, cancel, || {
                pg::apply_orders(&self.pool, &plain)
            })
            .await?
            {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::error!(error = %error, "batch refused by the database; applying one by one");
                    let mut missing = BTreeSet::new();
                    for (index, event) in &pending {
                        let single = [event.clone()];
                        match retry("apply order", self.give_up_after, cancel, || {
                            pg::apply_orders(&self.pool, &single)
                        })
                        .await?
                        {
                            Ok(o) => missing.extend(o.missing_parent),
                            Err(error) => {
                                refused += 1;
                                self.park(
                                    &batch[*index],
                                    REJECTED_BY_DATABASE,
                                    error.to_string(),
                                    tally,
                                    cancel,
                                )
                                .await?
                            }
                        }
                    }
                    pg::OrdersApplied {
                        rows_changed: 0,
                        missing_parent: missing,
                    }
                }
            };
            let applied = pending
                .iter()
                .filter(|(_, e)| !outcome.missing_parent.contains(&e.order.id))
                .count();
            tally.applied += applied.saturating_sub(refused);
            pending.retain(|(_, e)| outcome.missing_parent.contains(&e.order.id));
            if pending.is_empty() {
                return Ok(());
            }
            match waits.next() {
                Some(delay) => {
                    tracing::debug!(
                        orders = pending.len(),
                        retry_in_ms = delay.as_millis(),
                        "orders waiting for their users"
                    );
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return Err(Interrupted::Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                None => {
                    for (index, event) in &pending {
                        let error = format!(
                            "user {} of order {} did not arrive within {:?}",
                            event.order.user_id, event.order.id, self.parent_wait
                        );
                        self.park(&batch[*index], MISSING_PARENT, error, tally, cancel)
                            .await?;
                    }
                    return Ok(());
                }
            }
        }
    }
}

impl BatchHandler for EventHandler {
    async fn handle(
        &self,
        batch: &[OwnedMessage],
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let started = std::time::Instant::now();
        let mut tally = Tally::default();
        let mut users = Vec::new();
        let mut orders = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match events::decode(self.kind, message.key(), message.payload()) {
                Ok(Event::User(e)) => users.push((index, e)),
                Ok(Event::Order(e)) => orders.push((index, e)),
                Err(invalid) => {
                    let error = invalid.to_string();
                    self.park(message, invalid.reason(), error, &mut tally, cancel)
                        .await?;
                }
            }
        }
        if !users.is_empty() {
            self.apply_users(&users, batch, &mut tally, cancel).await?;
        }
        if !orders.is_empty() {
            self.apply_orders(&orders, batch, &mut tally, cancel)
                .await?;
        }
        self.metrics.record_batch(batch, &tally, started.elapsed());
        Ok(())
    }
}
