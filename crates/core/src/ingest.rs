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

use crate::dlq;
use crate::events::{self, EntityKind, Event, OrderEvent, UserEvent};
use crate::metrics::{Metrics, TopicLabels};
use crate::pg;
use crate::retry::{backoff, retry_until_cancelled};
use crate::runtime::{BatchHandler, Cancelled};

pub struct EventHandler {
    pub kind: EntityKind,
    pub pool: PgPool,
    pub dlq: FutureProducer,
    /// How long an order may wait for its user before it is dead-lettered.
    pub parent_wait: Duration,
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
    fn applied(&self, batch: &[OwnedMessage], n: usize) {
        let topic = TopicLabels {
            topic: batch
                .first()
                .map(|m| m.topic().to_owned())
                .unwrap_or_default(),
        };
        self.metrics
            .applied
            .get_or_create(&topic)
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    async fn park(
        &self,
        message: &OwnedMessage,
        reason: &str,
        error: String,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        dlq::park_message(&self.dlq, &self.metrics, message, reason, error, cancel).await
    }

    async fn apply_users(
        &self,
        events: &[(usize, UserEvent)],
        batch: &[OwnedMessage],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let plain: Vec<UserEvent> = events.iter().map(|(_, e)| e.clone()).collect();
        match retry_until_cancelled("apply users", cancel, || {
            pg::apply_users(&self.pool, &plain)
        })
        .await?
        {
            Ok(_) => self.applied(batch, plain.len()),
            Err(error) => {
                // The database refused data that passed validation: find the culprits one by one.
                tracing::error!(error = %error, "batch refused by the database; applying one by one");
                for (index, event) in events {
                    let single = [event.clone()];
                    match retry_until_cancelled("apply user", cancel, || {
                        pg::apply_users(&self.pool, &single)
                    })
                    .await?
                    {
                        Ok(_) => self.applied(batch, 1),
                        Err(error) => {
                            self.park(
                                &batch[*index],
                                "rejected_by_database",
                                error.to_string(),
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
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let mut pending: Vec<(usize, OrderEvent)> = events.to_vec();
        let mut waits = backoff(self.parent_wait).build();
        loop {
            let plain: Vec<OrderEvent> = pending.iter().map(|(_, e)| e.clone()).collect();
            // Records the database refused one by one: parked, so neither applied nor waiting.
            let mut refused = 0;
            let outcome = match retry_until_cancelled("apply orders", cancel, || {
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
                        match retry_until_cancelled("apply order", cancel, || {
                            pg::apply_orders(&self.pool, &single)
                        })
                        .await?
                        {
                            Ok(o) => missing.extend(o.missing_parent),
                            Err(error) => {
                                refused += 1;
                                self.park(
                                    &batch[*index],
                                    "rejected_by_database",
                                    error.to_string(),
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
            self.applied(batch, applied.saturating_sub(refused));
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
                        () = cancel.cancelled() => return Err(Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                None => {
                    for (index, event) in &pending {
                        let error = format!(
                            "user {} of order {} did not arrive within {:?}",
                            event.order.user_id, event.order.id, self.parent_wait
                        );
                        self.park(&batch[*index], "missing_parent", error, cancel)
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
    ) -> Result<(), Cancelled> {
        let started = std::time::Instant::now();
        let topic = self.metrics.count_consumed(batch);
        let mut users = Vec::new();
        let mut orders = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match events::decode(self.kind, message.key(), message.payload()) {
                Ok(Event::User(e)) => users.push((index, e)),
                Ok(Event::Order(e)) => orders.push((index, e)),
                Err(invalid) => {
                    self.park(message, invalid.reason(), invalid.to_string(), cancel)
                        .await?
                }
            }
        }
        if !users.is_empty() {
            self.apply_users(&users, batch, cancel).await?;
        }
        if !orders.is_empty() {
            self.apply_orders(&orders, batch, cancel).await?;
        }
        self.metrics
            .batch_seconds
            .get_or_create(&topic)
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}
