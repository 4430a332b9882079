//! The consumer's batch handler: decode and validate business events, park the bad ones in the
//! dead-letter topic, apply the rest to PostgreSQL with retries, and report a batch durable only
//! when all of that has happened.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use cdc_core::dlq::DeadLetters;
use cdc_core::events::{self, EntityKind, Event, OrderEvent, UserEvent};
use cdc_core::metrics::{Metrics, Tally};
use cdc_core::outcome::Interrupted;
use cdc_core::retry::{backoff, retry};
use cdc_core::runtime::BatchHandler;

use crate::parents::UsersProgress;
use crate::sink::{self as pg, SinkError};
use crate::unknown_fields::UnknownFields;
use futures::future::BoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use uuid::Uuid;

/// Every dead-letter reason of the consumer: an invalid event's ([`events::REASONS`]), an order
/// whose user never arrived, and a record the database refused as invalid.
pub fn reasons() -> Vec<&'static str> {
    let mut reasons = events::REASONS.to_vec();
    reasons.extend([MISSING_PARENT, REJECTED_BY_DATABASE]);
    reasons
}

pub const MISSING_PARENT: &str = "missing_parent";
pub const REJECTED_BY_DATABASE: &str = "rejected_by_database";

/// One of the sink's writes of a batch of events.
type Apply<E, T> = for<'a> fn(&'a PgPool, &'a [E]) -> BoxFuture<'a, Result<T, SinkError>>;

pub struct EventHandler {
    pub kind: EntityKind,
    pub pool: PgPool,
    pub dlq: DeadLetters,
    /// How long an order may wait for its user before it is dead-lettered.
    pub parent_wait: Duration,
    /// How long a failure that is not a record's fault is retried before the batch gives up.
    pub give_up_after: Duration,
    pub metrics: Metrics,
    /// The users stream, to tell a late user from one that will not come (orders handler only).
    pub users: Option<Arc<dyn UsersProgress>>,
    /// Orders currently held back because their user is not there.
    pub waiting: Gauge,
    /// Fields of the events this reader does not know (ignored, counted).
    pub unknown_fields: UnknownFields,
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
    /// Applies `events` in one go; when the database refuses them because of a record's own
    /// value, applies them one by one and parks each one it refuses. Returns what each application
    /// that went through returned, and the positions (in the batch) of the refused records.
    async fn apply_or_isolate<E: Clone, T>(
        &self,
        what: &str,
        events: &[(usize, E)],
        apply: Apply<E, T>,
        batch: &[OwnedMessage],
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(Vec<T>, BTreeSet<usize>), Interrupted> {
        let plain: Vec<E> = events.iter().map(|(_, e)| e.clone()).collect();
        let error = match retry(what, self.give_up_after, cancel, || {
            apply(&self.pool, &plain)
        })
        .await?
        {
            Ok(outcome) => return Ok((vec![outcome], BTreeSet::new())),
            Err(error) => error,
        };
        // The database refused data that passed validation: find the culprits one by one.
        tracing::error!(what, error = %error, "batch refused by the database; applying one by one");
        let (mut outcomes, mut refused) = (Vec::new(), BTreeSet::new());
        for (index, event) in events {
            let single = [event.clone()];
            match retry(what, self.give_up_after, cancel, || {
                apply(&self.pool, &single)
            })
            .await?
            {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => {
                    let message = error.to_string();
                    let record = &batch[*index];
                    self.dlq
                        .park(record, REJECTED_BY_DATABASE, message, tally, cancel)
                        .await?;
                    refused.insert(*index);
                }
            }
        }
        Ok((outcomes, refused))
    }

    async fn apply_users(
        &self,
        events: &[(usize, UserEvent)],
        batch: &[OwnedMessage],
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let (_, refused) = self
            .apply_or_isolate(
                "apply users",
                events,
                |pool, events| Box::pin(pg::apply_users(pool, events)),
                batch,
                tally,
                cancel,
            )
            .await?;
        tally.applied += events.len() - refused.len();
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
        // Set once the users stream is known to be applied past these orders' time. The user of
        // an order may have been applied between the last attempt and that answer, so the orders
        // are tried once more after it; only what that attempt still misses is parked.
        let mut users_applied = false;
        loop {
            let (outcomes, refused) = self
                .apply_or_isolate(
                    "apply orders",
                    &pending,
                    |pool, events| Box::pin(pg::apply_orders(pool, events)),
                    batch,
                    tally,
                    cancel,
                )
                .await?;
            // Parked records are neither applied nor waiting.
            pending.retain(|(index, _)| !refused.contains(index));
            // Orders whose user is not there (yet) were left out: they wait; the rest are applied.
            let missing: BTreeSet<Uuid> = outcomes
                .into_iter()
                .flat_map(|outcome| outcome.missing_parent)
                .collect();
            let before = pending.len();
            pending.retain(|(_, e)| missing.contains(&e.order.id));
            tally.applied += before - pending.len();
            if pending.is_empty() {
                return Ok(());
            }
            if users_applied {
                self.waiting.set(0);
                for (index, event) in &pending {
                    let error = format!(
                        "user {} of order {} did not arrive, and the users stream is applied \
                         past the order's time",
                        event.order.user_id, event.order.id
                    );
                    self.dlq
                        .park(&batch[*index], MISSING_PARENT, error, tally, cancel)
                        .await?;
                }
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
                    let latest = pending
                        .iter()
                        .filter_map(|(index, _)| batch[*index].timestamp().to_millis())
                        .max()
                        .unwrap_or(0);
                    if !self.users_applied_past(latest, cancel).await? {
                        // The user may still come: wait another round, visibly.
                        tracing::warn!(
                            orders = pending.len(),
                            "orders still waiting for their users: the users stream is not \
                             applied past their time yet"
                        );
                        self.waiting
                            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
                        waits = backoff(self.parent_wait).build();
                        continue;
                    }
                    // One more attempt: the user may have been applied since the last one.
                    users_applied = true;
                }
            }
        }
    }

    /// Whether the users stream is applied past `timestamp_ms` (without a users stream to ask:
    /// after the parent wait, as before).
    async fn users_applied_past(
        &self,
        timestamp_ms: i64,
        cancel: &CancellationToken,
    ) -> Result<bool, Interrupted> {
        let Some(users) = &self.users else {
            return Ok(true);
        };
        retry("check the users stream", self.give_up_after, cancel, || {
            users.applied_past(timestamp_ms)
        })
        .await?
        .map_err(|error| Interrupted::gave_up("check the users stream", error))
    }
}

impl BatchHandler for EventHandler {
    async fn handle(
        &self,
        batch: Vec<OwnedMessage>,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        // A business event is small and a batch is written in a few statements: the records are
        // kept whole until the batch is durable, for the dead letters of refused ones.
        let batch = batch.as_slice();
        let started = std::time::Instant::now();
        let mut tally = Tally::default();
        let mut users = Vec::new();
        let mut orders = Vec::new();
        let mut unknown_fields = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match events::decode(self.kind, message.key(), message.payload()) {
                Ok(decoded) => {
                    unknown_fields.extend(decoded.unknown_fields);
                    match decoded.event {
                        Event::User(e) => users.push((index, e)),
                        Event::Order(e) => orders.push((index, e)),
                    }
                }
                Err(invalid) => {
                    let error = invalid.to_string();
                    self.dlq
                        .park(message, invalid.reason(), error, &mut tally, cancel)
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
        // Counted once the batch is durable, like the records themselves.
        if let Some(first) = batch.first() {
            self.unknown_fields.count(first.topic(), &unknown_fields);
            self.metrics
                .record_batch(first.topic(), batch.len(), &tally, started.elapsed());
        }
        Ok(())
    }
}
