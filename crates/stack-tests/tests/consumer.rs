//! The consumer against the real Kafka and PostgreSQL: generated streams end in exactly the table
//! contents an independent model computes from the same events — also after a replay, a SIGKILL
//! mid-stream, hostile input, orders that overtake their users, a second instance coming and
//! going, and the database refusing writes for a while. The plumbing is the shared harness in
//! `stack-tests`; this file holds the scenarios.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::events::{Event, UserEvent};
use cdc_core::generator::{Generator, GeneratorConfig};
use cdc_core::runtime::BatchHandler;
use cdc_core::topics::{ensure_topics, TopicSpec};
use chrono::{TimeZone, Utc};
use consumer::handler::EventHandler;
use consumer::parents::{ProgressError, UsersProgress};
use consumer::unknown_fields::UnknownFields;
use futures::future::BoxFuture;
use sqlx::PgPool;
use stack_tests::kafka::{
    check_replayed, dead_letters, end_offsets, producer, read_topic, records_since,
    reset_to_earliest, send_raw, send_raw_at,
};
use stack_tests::model::Model;
use stack_tests::process::{
    self, dlq_command, free_address, http_get, nothing_dead_lettered, replay_counts,
    replay_dead_letters, summary, Process, Summary,
};
use stack_tests::{shared, unique_name, wait_for, workspace_binary, Stack};
use uuid::Uuid;

/// Optional key or payload bytes of a raw record.
type Bytes = Option<Vec<u8>>;
/// (key, payload) of a record sent as is.
type RawRecord = (Bytes, Bytes);

/// One run's topics and consumer groups.
struct Run {
    stack: Stack,
    users_topic: String,
    orders_topic: String,
    users_group: String,
    orders_group: String,
}

impl Run {
    async fn new() -> Result<Self> {
        let stack = Stack::from_env()?;
        let run = Self {
            users_topic: unique_name("it_users"),
            orders_topic: unique_name("it_orders"),
            users_group: unique_name("it_users_group"),
            orders_group: unique_name("it_orders_group"),
            stack,
        };
        let rf = i32::try_from(run.stack.broker_count)?;
        ensure_topics(
            &run.stack.brokers,
            &[
                TopicSpec::new(&run.users_topic, 3, rf),
                TopicSpec::new(&run.orders_topic, 5, rf),
            ],
            Duration::from_secs(30),
        )
        .await?;
        Ok(run)
    }

    fn consumer_command(&self, idle_secs: u64) -> Command {
        let binary = workspace_binary("consumer").unwrap_or_else(|error| panic!("{error:#}"));
        let mut command = process::command(&self.stack, &binary);
        command
            .env("USERS_TOPIC", &self.users_topic)
            .env("ORDERS_TOPIC", &self.orders_topic)
            .env("USERS_GROUP", &self.users_group)
            .env("ORDERS_GROUP", &self.orders_group)
            .env("IDLE_TIMEOUT_SECS", idle_secs.to_string())
            .env("PARENT_WAIT_SECS", "20");
        command
    }

    /// Runs the consumer until it goes idle; fails with its log if it exits non-zero.
    async fn consume_until_idle(&self) -> Result<Summary> {
        self.run_to_end(self.consumer_command(6)).await
    }

    async fn run_to_end(&self, command: Command) -> Result<Summary> {
        let stdout = Process::spawn("consumer", command)?
            .run_to_end(Duration::from_secs(300))
            .await?;
        Ok(summary("consumer", &stdout))
    }

    fn spawn_consumer(&self, idle_secs: u64) -> Result<Process> {
        Process::spawn("consumer", self.consumer_command(idle_secs))
    }

    /// Sends raw records (key, payload) to a topic and waits for every acknowledgement.
    async fn send_raw(&self, topic: &str, records: &[RawRecord]) -> Result<()> {
        let producer = producer(&self.stack)?;
        let sends = records.iter().map(|(key, payload)| {
            send_raw(&producer, topic, None, key.as_deref(), payload.as_deref())
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        Ok(())
    }

    async fn send_events(&self, events: &[Event]) -> Result<()> {
        let (users, orders): (Vec<&Event>, Vec<&Event>) =
            events.iter().partition(|e| matches!(e, Event::User(_)));
        let encode = |e: &&Event| (Some(e.key().into_bytes()), Some(e.to_json()));
        self.send_raw(
            &self.users_topic,
            &users.iter().map(encode).collect::<Vec<_>>(),
        )
        .await?;
        self.send_raw(
            &self.orders_topic,
            &orders.iter().map(encode).collect::<Vec<_>>(),
        )
        .await
    }
}

fn generated(seed: u64, users: usize, orders: usize) -> Vec<Event> {
    let start = Utc
        .with_ymd_and_hms(2026, 11, 1, 8, 0, 0)
        .single()
        .unwrap_or_default();
    Generator::new(GeneratorConfig {
        users,
        orders,
        seed,
        start,
    })
    .collect()
}

async fn pool(stack: &Stack) -> Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack.database_url)
        .await?)
}

fn seed() -> u64 {
    u64::from_le_bytes(
        Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or_default(),
    )
}

/// Waits until PostgreSQL holds exactly the model's rows.
async fn wait_for_model(pool: &PgPool, expected: &Model, timeout: Duration) -> Result<()> {
    wait_for("every row to match the model", timeout, || async move {
        Ok(expected
            .postgres_differences(pool)
            .await?
            .is_empty()
            .then_some(()))
    })
    .await
}

/// The first user event of a stream.
fn first_user(events: &[Event]) -> Result<UserEvent> {
    events
        .iter()
        .find_map(|e| match e {
            Event::User(u) => Some(u.clone()),
            Event::Order(_) => None,
        })
        .context("no user event")
}

/// Users' and orders' counts of an event stream.
fn counts(events: &[Event]) -> (u64, u64) {
    let users = events
        .iter()
        .filter(|e| matches!(e, Event::User(_)))
        .count();
    (
        u64::try_from(users).unwrap_or(u64::MAX),
        u64::try_from(events.len() - users).unwrap_or(u64::MAX),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_match_the_model_and_a_replay_changes_nothing() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 1_500, 3_500);
    ensure!(
        events.len() >= 10_000,
        "only {} events generated",
        events.len()
    );
    run.send_events(&events).await?;
    let summary = run.consume_until_idle().await?;
    nothing_dead_lettered(&summary)?;

    let expected = Model::from_events(&events);
    let pool = pool(&run.stack).await?;
    expected.check_postgres(&pool).await?;

    // Replay: the same groups reset to the earliest offsets consume everything again.
    reset_to_earliest(&run.stack, &run.users_group, &run.users_topic)?;
    reset_to_earliest(&run.stack, &run.orders_group, &run.orders_topic)?;
    let summary = run.consume_until_idle().await?;
    let (users, orders) = counts(&events);
    ensure!(
        summary.get(&run.users_topic).map(|c| c.consumed) == Some(users)
            && summary.get(&run.orders_topic).map(|c| c.consumed) == Some(orders),
        "{summary:?}"
    );
    expected.check_postgres(&pool).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_restart_ends_exact() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 800, 2_000);
    run.send_events(&events).await?;
    let expected = Model::from_events(&events);
    let order_ids = expected.order_ids();
    let pool = pool(&run.stack).await?;

    let child = run.spawn_consumer(0)?;
    // Kill it once it has written part of the stream, but not all of it.
    wait_for_orders(&pool, &order_ids, 1).await?;
    child.kill().context("SIGKILL")?;
    let at_kill = count_orders(&pool, &order_ids).await?;
    eprintln!(
        "killed with {at_kill} of {} orders written",
        order_ids.len()
    );

    run.consume_until_idle().await?;
    expected.check_postgres(&pool).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_joining_and_leaving_loses_nothing() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 800, 2_000);
    let expected = Model::from_events(&events);
    let order_ids = expected.order_ids();
    let pool = pool(&run.stack).await?;

    let first = run.spawn_consumer(0)?;
    let (head, tail) = events.split_at(events.len() / 2);
    run.send_events(head).await?;
    let second = run.spawn_consumer(0)?;
    run.send_events(tail).await?;
    // The second instance leaves mid-stream (SIGTERM: it drains and commits).
    let head_orders: std::collections::BTreeSet<Uuid> = head
        .iter()
        .filter_map(|e| match e {
            Event::Order(o) => Some(o.order.id),
            Event::User(_) => None,
        })
        .collect();
    wait_for_orders(&pool, &order_ids, head_orders.len() + 1).await?;
    second.terminate().await?;
    // The first goes on alone and must finish everything.
    wait_for_model(&pool, &expected, Duration::from_secs(120)).await?;
    first.terminate().await?;
    expected.check_postgres(&pool).await
}

async fn count_orders(pool: &PgPool, ids: &[Uuid]) -> Result<usize> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await?;
    Ok(usize::try_from(n)?)
}

/// Waits until at least `at_least` of the given orders are in PostgreSQL.
async fn wait_for_orders(pool: &PgPool, ids: &[Uuid], at_least: usize) -> Result<()> {
    wait_for(
        &format!("{at_least} orders written"),
        Duration::from_secs(90),
        || async move { Ok((count_orders(pool, ids).await? >= at_least).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_records_are_dead_lettered_and_valid_ones_applied() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 50, 100);
    let expected = Model::from_events(&events);
    let user = first_user(&events)?;
    let good = Event::User(user.clone());
    let good_json: serde_json::Value = serde_json::from_slice(&good.to_json())?;
    let key = Some(good.key().into_bytes());
    let with = |path: &[&str], value: serde_json::Value| {
        let mut json = good_json.clone();
        let mut cursor = &mut json;
        for step in &path[..path.len() - 1] {
            cursor = &mut cursor[*step];
        }
        if value.is_null() {
            if let Some(object) = cursor.as_object_mut() {
                object.remove(path[path.len() - 1]);
            }
        } else {
            cursor[path[path.len() - 1]] = value;
        }
        Some(json.to_string().into_bytes())
    };
    let hostile: Vec<(Bytes, Bytes, &str)> = vec![
        (
            key.clone(),
            Some(b"{\"type\": \"user\", \"event_id\": ".to_vec()),
            "undecodable",
        ),
        (key.clone(), with(&["type"], "refund".into()), "undecodable"),
        (
            key.clone(),
            with(&["user", "email"], serde_json::Value::Null),
            "undecodable",
        ),
        (
            key.clone(),
            with(&["version"], "three".into()),
            "undecodable",
        ),
        (
            key.clone(),
            with(&["user", "name"], "".into()),
            "invalid_field",
        ),
        (key.clone(), Some(vec![b'x'; 1_000_000]), "too_large"),
        (None, Some(good.to_json()), "missing_key"),
        (Some(Vec::new()), Some(good.to_json()), "missing_key"),
        (key.clone(), None, "empty_payload"),
    ];
    // Valid events before and after the hostile ones, on the same partition (same key).
    let (first, rest) = events.split_at(events.len() / 2);
    run.send_events(first).await?;
    let raw: Vec<_> = hostile
        .iter()
        .map(|(k, p, _)| (k.clone(), p.clone()))
        .collect();
    run.send_raw(&run.users_topic, &raw).await?;
    run.send_events(rest).await?;

    let summary = run.consume_until_idle().await?;
    let parked = summary.get(&run.users_topic).map(|c| c.dead_lettered);
    ensure!(parked == Some(u64::try_from(hostile.len())?), "{summary:?}");
    let pool = pool(&run.stack).await?;
    expected.check_postgres(&pool).await?;

    // Each hostile record is in the dead-letter topic with its reason and source position.
    let dlq = cdc_core::dlq::topic_for(&run.users_topic);
    let letters = dead_letters(&run.stack, &dlq)?;
    ensure!(
        letters.iter().all(|l| l.source_topic == run.users_topic),
        "{letters:?}"
    );
    let mut found: Vec<String> = letters.into_iter().map(|l| l.reason).collect();
    found.sort();
    let mut expected_reasons: Vec<String> =
        hostile.iter().map(|(_, _, r)| (*r).to_owned()).collect();
    expected_reasons.sort();
    assert_eq!(found, expected_reasons);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_before_its_user_converges_once_the_user_arrives() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 5, 10);
    let expected = Model::from_events(&events);
    let order_ids = expected.order_ids();
    let (users, orders): (Vec<Event>, Vec<Event>) = events
        .iter()
        .cloned()
        .partition(|e| matches!(e, Event::User(_)));
    let address = free_address()?;
    let child = {
        let mut command = run.consumer_command(0);
        command.env("METRICS_ADDR", &address);
        Process::spawn("consumer", command)?
    };
    wait_for(
        "the health endpoint to report ready",
        Duration::from_secs(30),
        || {
            let address = &address;
            async move {
                Ok(http_get(address, "/readyz")
                    .await
                    .ok()
                    .filter(|(status, _)| *status == 200))
            }
        },
    )
    .await?;
    let (live, _) = http_get(&address, "/livez").await?;
    assert_eq!(live, 200);
    run.send_events(&orders).await?;
    let pool = pool(&run.stack).await?;
    // Orders are held back (retried), not applied without their users and not dead-lettered.
    let early = count_orders(&pool, &order_ids).await?;
    assert_eq!(early, 0);
    run.send_events(&users).await?;
    wait_for_model(&pool, &expected, Duration::from_secs(60)).await?;
    let (status, text) = http_get(&address, "/metrics").await?;
    assert_eq!(status, 200);
    let applied = format!(
        "cdc_events_applied_total{{topic=\"{}\"}} ",
        run.orders_topic
    );
    assert!(text.contains(&applied), "{text}");
    assert!(text.contains("cdc_batch_duration_seconds_bucket"), "{text}");
    assert!(text.contains("cdc_partitions_stalled 0"), "{text}");
    child.terminate().await?;
    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    let ends = end_offsets(&run.stack, &dlq)?;
    assert!(
        ends.values().all(|end| *end == 0),
        "nothing may be dead-lettered: {ends:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_whose_user_never_arrives_is_dead_lettered_after_the_wait() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 3, 6);
    let orphan = events
        .iter()
        .find_map(|e| match e {
            Event::Order(o) => Some(o.clone()),
            Event::User(_) => None,
        })
        .context("no order event")?;
    // Only the orphan's own events, none of its user's.
    let orphan_events: Vec<Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Order(o) if o.order.id == orphan.order.id))
        .cloned()
        .collect();
    run.send_events(&orphan_events).await?;
    let mut command = run.consumer_command(4);
    command
        .env("PARENT_WAIT_SECS", "2")
        .env("MAX_DELIVERY_TIME", "3s");
    run.run_to_end(command).await?;
    let pool = pool(&run.stack).await?;
    assert_eq!(
        count_orders(&pool, &[orphan.order.id]).await?,
        0,
        "an orphan must not be written"
    );
    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    let reasons: Vec<String> = dead_letters(&run.stack, &dlq)?
        .into_iter()
        .map(|l| l.reason)
        .collect();
    assert_eq!(
        reasons,
        vec!["missing_parent".to_owned(); orphan_events.len()]
    );
    Ok(())
}

/// A user's creation, and the first event of one of its orders (as a one-event stream) with the
/// order's id.
fn a_user_and_an_order() -> Result<(UserEvent, Vec<Event>, Uuid)> {
    let events = generated(seed(), 1, 1);
    let user = first_user(&events)?;
    let order = events
        .iter()
        .find_map(|e| match e {
            Event::Order(o) => Some(o.clone()),
            Event::User(_) => None,
        })
        .context("no order event")?;
    let id = order.order.id;
    Ok((user, vec![Event::Order(order)], id))
}

/// The race a second 30-minute chaos run found (docs/chaos.md): a user sent before its order but
/// appended to Kafka only later (its send was retried while a broker was paused), after the order
/// has waited past `--parent-wait-secs` and the users group has applied everything there is. The
/// users partition holds nothing newer than the order, so the user may still be on its way: the
/// order waits for it instead of being parked.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_waits_for_a_user_sent_before_it_but_appended_after_the_wait() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let (user, order, order_id) = a_user_and_an_order()?;
    let order_ids = [order_id];
    let sent_at = Utc::now().timestamp_millis();
    run.send_events(&order).await?;
    let mut command = run.consumer_command(0);
    command
        .env("PARENT_WAIT_SECS", "1")
        .env("MAX_DELIVERY_TIME", "60s");
    let consumer = Process::spawn("consumer", command)?;
    // Well past the parent wait, with the (empty) users stream fully applied.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pool = pool(&run.stack).await?;
    assert_eq!(count_orders(&pool, &order_ids).await?, 0);
    // The user arrives, stamped before its order, as a retried send would be.
    let user_event = Event::User(user);
    send_raw_at(
        &producer(&run.stack)?,
        &run.users_topic,
        None,
        Some(user_event.key().as_bytes()),
        Some(&user_event.to_json()),
        Some(sent_at - 1_000),
    )
    .await?;
    wait_for_orders(&pool, &order_ids, 1).await?;
    consumer.terminate().await?;
    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    let parked = end_offsets(&run.stack, &dlq).unwrap_or_default();
    assert!(
        parked.values().all(|end| *end == 0),
        "nothing may be dead-lettered: {parked:?}"
    );
    Ok(())
}

/// Answers "the users stream is applied past the order" — after applying the order's user to
/// PostgreSQL itself, the way the users consumer can between an order's last attempt and the
/// answer.
struct UserAppliedWhileAsked {
    pool: PgPool,
    user: UserEvent,
    asked: std::sync::atomic::AtomicUsize,
}

impl UsersProgress for UserAppliedWhileAsked {
    fn applied_past(&self, _timestamp_ms: i64) -> BoxFuture<'_, Result<bool, ProgressError>> {
        Box::pin(async move {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            consumer::sink::apply_users(&self.pool, std::slice::from_ref(&self.user))
                .await
                .unwrap_or_else(|error| panic!("applying the user: {error}"));
            Ok(true)
        })
    }
}

/// The race a 30-minute chaos run found (docs/chaos.md): an order misses its user, the user is
/// applied, and only then does the users stream answer that it is applied past the order's time.
/// The order must be tried once more and applied, not parked as `missing_parent`.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_whose_user_lands_just_before_the_users_stream_answers_is_applied() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let (user, order, order_id) = a_user_and_an_order()?;
    // The dead-letter topic exists, so a wrongly parked order would land there.
    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    let rf = i32::try_from(run.stack.broker_count)?;
    ensure_topics(
        &run.stack.brokers,
        &[TopicSpec::new(&dlq, 1, rf)],
        Duration::from_secs(30),
    )
    .await?;
    run.send_events(&order).await?;
    let batch = read_topic(&run.stack, &run.orders_topic)?;
    ensure!(
        batch.len() == 1,
        "one order record expected, read {}",
        batch.len()
    );
    let pool = pool(&run.stack).await?;
    let metrics = cdc_core::metrics::Metrics::default();
    let progress = Arc::new(UserAppliedWhileAsked {
        pool: pool.clone(),
        user,
        asked: std::sync::atomic::AtomicUsize::new(0),
    });
    let handler = EventHandler {
        kind: cdc_core::events::EntityKind::Order,
        pool: pool.clone(),
        dlq: cdc_core::dlq::DeadLetters::new(
            cdc_core::dlq::producer(stack_tests::kafka::config(&run.stack))?,
            Duration::from_secs(30),
        ),
        parent_wait: Duration::from_millis(300),
        give_up_after: Duration::from_secs(30),
        users: Some(progress.clone()),
        waiting: prometheus_client::metrics::gauge::Gauge::default(),
        unknown_fields: UnknownFields::register(&metrics),
        metrics,
    };
    handler
        .handle(batch, &tokio_util::sync::CancellationToken::new())
        .await
        .map_err(|interrupted| anyhow::anyhow!("the batch did not end: {interrupted:?}"))?;
    assert_eq!(
        progress.asked.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the users stream is asked once, after the order missed its user"
    );
    assert_eq!(
        count_orders(&pool, &[order_id]).await?,
        1,
        "the order must be applied once its user is there"
    );
    let parked = end_offsets(&run.stack, &dlq).unwrap_or_default();
    assert!(
        parked.values().all(|end| *end == 0),
        "nothing may be dead-lettered: {parked:?}"
    );
    Ok(())
}

/// `/readyz` status and body, and `cdc_partitions_stalled`, from a consumer's endpoint.
async fn health(address: &str) -> Result<(u16, String, i64)> {
    let (ready, body) = http_get(address, "/readyz").await?;
    let (_, metrics) = http_get(address, "/metrics").await?;
    let stalled = metrics
        .lines()
        .find_map(|line| line.strip_prefix("cdc_partitions_stalled "))
        .and_then(|n| n.trim().parse().ok())
        .context("no cdc_partitions_stalled in /metrics")?;
    Ok((ready, body, stalled))
}

/// The database refuses the consumer's writes for a while (its role loses the UPDATE privilege
/// it needs for upserts, as after an operator's mistake): no valid event is dead-lettered. With a
/// short give-up budget the workers give up and the partitions are reported stalled — `/readyz`
/// answers 503 naming them, `cdc_partitions_stalled` counts them, the workers restart from their
/// stored offsets — and once the privilege is back every partition recovers by itself and
/// PostgreSQL holds exactly the model of every event.
#[tokio::test(flavor = "multi_thread")]
async fn writes_refused_for_a_while_stall_visibly_then_recover_exactly() -> Result<()> {
    let _exclusive = stack_tests::exclusive().await;
    let run = Run::new().await?;
    let events = generated(seed(), 200, 500);
    let expected = Model::from_events(&events);
    let pool = pool(&run.stack).await?;
    let address = free_address()?;
    let mut command = run.consumer_command(0);
    command
        .env("METRICS_ADDR", &address)
        .env("GIVE_UP_AFTER", "2s");
    let child = Process::spawn("consumer", command)?;
    let (head, tail) = events.split_at(events.len() / 3);
    run.send_events(head).await?;
    wait_for_model(&pool, &Model::from_events(head), Duration::from_secs(60)).await?;
    let (ready, _, stalled) = health(&address).await?;
    ensure!(
        ready == 200 && stalled == 0,
        "before the fault: {ready}, {stalled} stalled"
    );

    let grants = revoke(&pool, &run.stack.database_url, "UPDATE", "users, orders").await?;
    run.send_events(tail).await?;
    let seen = wait_for(
        "partitions reported stalled",
        Duration::from_secs(60),
        || {
            let address = &address;
            async move {
                let (ready, body, stalled) = health(address).await?;
                Ok((ready == 503 && stalled > 0).then_some((body, stalled)))
            }
        },
    )
    .await?;
    eprintln!("while refused: {} stalled\n{}", seen.1, seen.0);
    ensure!(
        seen.0.contains("permission denied"),
        "/readyz does not say why: {}",
        seen.0
    );
    grants.undo().await?;

    wait_for_model(&pool, &expected, Duration::from_secs(180)).await?;
    wait_for(
        "every partition to be ready again",
        Duration::from_secs(60),
        || {
            let address = &address;
            async move {
                let (ready, _, stalled) = health(address).await?;
                Ok((ready == 200 && stalled == 0).then_some(()))
            }
        },
    )
    .await?;
    let (_, metrics) = http_get(&address, "/metrics").await?;
    ensure!(
        metrics.contains("cdc_partition_worker_restarts_total{"),
        "no worker restart counted:\n{metrics}"
    );
    let stdout = child.terminate().await?;
    let summary = summary("consumer", &stdout);
    nothing_dead_lettered(&summary)?;
    for topic in [&run.users_topic, &run.orders_topic] {
        let dlq = cdc_core::dlq::topic_for(topic);
        let parked = dead_letters(&run.stack, &dlq)?;
        ensure!(parked.is_empty(), "valid events parked: {parked:?}");
    }
    expected.check_postgres(&pool).await
}

/// A change to the database made for a test (a privilege taken away, a constraint added), undone
/// by [`Undo::undo`] or, should the test fail first, when dropped.
struct Undo {
    pool: PgPool,
    url: String,
    undo: String,
    done: bool,
}

impl Undo {
    /// Runs `change` now; `undo` takes it back.
    async fn apply(pool: &PgPool, url: &str, change: String, undo: String) -> Result<Self> {
        sqlx::query(sqlx::AssertSqlSafe(change))
            .execute(pool)
            .await?;
        Ok(Self {
            pool: pool.clone(),
            url: url.to_owned(),
            undo,
            done: false,
        })
    }

    async fn undo(mut self) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(self.undo.clone()))
            .execute(&self.pool)
            .await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (url, undo) = (self.url.clone(), self.undo.clone());
        // A connection of its own on a runtime of its own: the test's runtime may be unwinding.
        let restore = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(sqlx::AssertSqlSafe(undo))
                    .execute(&mut connection)
                    .await?;
                Ok(())
            })
        });
        if !matches!(restore.join(), Ok(Ok(()))) {
            eprintln!("could not undo a change: run `{}` as cdc_user", self.undo);
        }
    }
}

/// Takes `privilege` on `tables` (e.g. "UPDATE", "users, orders") away from the application role
/// (its own tables: the owner may take it and give it back).
async fn revoke(pool: &PgPool, url: &str, privilege: &str, tables: &str) -> Result<Undo> {
    Undo::apply(
        pool,
        url,
        format!("REVOKE {privilege} ON {tables} FROM CURRENT_USER"),
        format!("GRANT {privilege} ON {tables} TO CURRENT_USER"),
    )
    .await
}

/// The users stream lags (the database refuses the users partitions' writes for a while) while
/// orders of those users arrive: after the parent wait the orders are not parked, since their
/// users are still on their way (the users stream is not applied past the orders' time); they
/// wait, counted in `cdc_orders_waiting_for_user`, and are applied once their users are. Nothing
/// is dead-lettered and PostgreSQL ends exactly as the model.
#[tokio::test(flavor = "multi_thread")]
async fn orders_wait_for_a_lagging_users_stream_instead_of_being_parked() -> Result<()> {
    let _exclusive = stack_tests::exclusive().await;
    let run = Run::new().await?;
    let events = generated(seed(), 30, 90);
    let expected = Model::from_events(&events);
    let (users, orders): (Vec<Event>, Vec<Event>) = events
        .iter()
        .cloned()
        .partition(|e| matches!(e, Event::User(_)));
    let pool = pool(&run.stack).await?;
    let grants = revoke(&pool, &run.stack.database_url, "INSERT", "users").await?;
    let address = free_address()?;
    let mut command = run.consumer_command(0);
    command
        .env("METRICS_ADDR", &address)
        .env("PARENT_WAIT_SECS", "1");
    let child = Process::spawn("consumer", command)?;
    run.send_events(&users).await?;
    run.send_events(&orders).await?;
    // Several parent waits pass while the users cannot be written.
    let waiting = wait_for(
        "orders held back for their users",
        Duration::from_secs(60),
        || {
            let address = &address;
            async move {
                let (_, metrics) = http_get(address, "/metrics").await?;
                let waiting: i64 = metrics
                    .lines()
                    .find_map(|line| line.strip_prefix("cdc_orders_waiting_for_user "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                Ok((waiting > 0).then_some(waiting))
            }
        },
    )
    .await?;
    // Four more rounds of the 1 s parent wait: none of them may park an order.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    ensure!(
        dead_letters(&run.stack, &dlq)?.is_empty(),
        "orders whose users were on their way were parked"
    );
    ensure!(count_orders(&pool, &expected.order_ids()).await? == 0);
    eprintln!("{waiting} orders waiting while the users could not be written");
    grants.undo().await?;
    wait_for_model(&pool, &expected, Duration::from_secs(120)).await?;
    let stdout = child.terminate().await?;
    let summary = summary("consumer", &stdout);
    nothing_dead_lettered(&summary)?;
    ensure!(dead_letters(&run.stack, &dlq)?.is_empty());
    expected.check_postgres(&pool).await
}

/// Every `cdc_unknown_fields_total` series of `topics` on a consumer's endpoint, by topic and
/// field.
async fn unknown_field_counts(
    address: &str,
    topics: &[&str],
) -> Result<BTreeMap<(String, String), u64>> {
    let (_, metrics) = http_get(address, "/metrics").await?;
    let mut counts = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("cdc_unknown_fields_total{topic=\"") else {
            continue;
        };
        let (topic, rest) = rest.split_once("\",field=\"").context(line.to_owned())?;
        let (field, value) = rest.split_once("\"} ").context(line.to_owned())?;
        if topics.contains(&topic) {
            counts.insert((topic.to_owned(), field.to_owned()), value.trim().parse()?);
        }
    }
    Ok(counts)
}

/// A producer adds fields the consumer does not know — at the top level and inside the bodies,
/// objects among them — and some records predate `schema_version` (it is absent): every event is
/// applied exactly (PostgreSQL equals the model), and `cdc_unknown_fields_total` counts each
/// ignored field exactly, per topic and name. A record of schema version 99 among valid records of
/// its partition is parked as `unsupported_schema_version` with its source position and is not
/// applied; its neighbours are.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_are_ignored_and_counted_and_an_unsupported_version_is_parked() -> Result<()>
{
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 20, 50);
    let expected = Model::from_events(&events);
    // Per topic and field, the records that carry it.
    let mut carried: BTreeMap<(String, String), u64> = BTreeMap::new();
    let (mut users, mut orders) = (Vec::new(), Vec::new());
    for (i, event) in events.iter().enumerate() {
        let mut json: serde_json::Value = serde_json::from_slice(&event.to_json())?;
        let (topic, body, field) = match event {
            Event::User(_) => (&run.users_topic, "user", "loyalty_tier"),
            Event::Order(_) => (&run.orders_topic, "order", "gift_wrap"),
        };
        match i % 3 {
            0 => {
                json["channel"] = "mobile".into();
                json[body][field] = serde_json::json!({"level": 2, "since": "2026-01-01"});
                for name in ["channel".to_owned(), format!("{body}.{field}")] {
                    *carried.entry((topic.clone(), name)).or_default() += 1;
                }
            }
            1 => {
                if let Some(envelope) = json.as_object_mut() {
                    envelope.remove("schema_version");
                }
            }
            _ => {}
        }
        let record = (
            Some(event.key().into_bytes()),
            Some(json.to_string().into_bytes()),
        );
        match event {
            Event::User(_) => users.push(record),
            Event::Order(_) => orders.push(record),
        }
    }
    // A later version of the first user, from a producer of schema version 99: applied, it would
    // rename the user.
    let first = first_user(&events)?;
    let mut future: serde_json::Value =
        serde_json::from_slice(&Event::User(first.clone()).to_json())?;
    future["schema_version"] = 99.into();
    future["version"] = (first.version + 100).into();
    future["user"]["name"] = "From a later schema".into();
    let future = future.to_string().into_bytes();
    let key = first.user.id.to_string().into_bytes();

    let (head, tail) = users.split_at(users.len() / 2);
    run.send_raw(&run.users_topic, head).await?;
    let producer = producer(&run.stack)?;
    let (partition, offset) =
        send_raw(&producer, &run.users_topic, None, Some(&key), Some(&future)).await?;
    run.send_raw(&run.users_topic, tail).await?;
    run.send_raw(&run.orders_topic, &orders).await?;
    let ends = end_offsets(&run.stack, &run.users_topic)?;
    ensure!(
        offset > 0 && ends.get(&partition).is_some_and(|end| *end > offset + 1),
        "the version-99 record at {partition}/{offset} is not between valid records: {ends:?}"
    );

    let address = free_address()?;
    let mut command = run.consumer_command(0);
    command.env("METRICS_ADDR", &address);
    let child = Process::spawn("consumer", command)?;
    let pool = pool(&run.stack).await?;
    wait_for_model(&pool, &expected, Duration::from_secs(120)).await?;
    let topics = [run.users_topic.as_str(), run.orders_topic.as_str()];
    let counted = wait_for(
        "the unknown fields to be counted",
        Duration::from_secs(30),
        || {
            let (address, carried, topics) = (&address, &carried, &topics);
            async move {
                let counted = unknown_field_counts(address, topics).await?;
                Ok((counted == *carried).then_some(counted))
            }
        },
    )
    .await;
    let stdout = child.terminate().await?;
    let counted = counted.with_context(|| format!("expected {carried:?}"))?;
    eprintln!("ignored fields counted: {counted:?}");
    let summary = summary("consumer", &stdout);
    let users_counts = summary.get(&run.users_topic).copied().unwrap_or_default();
    ensure!(
        (users_counts.consumed, users_counts.dead_lettered) == (u64::try_from(users.len() + 1)?, 1)
            && users_counts.applied == u64::try_from(users.len())?,
        "{summary:?}"
    );
    let orders_counts = summary.get(&run.orders_topic).copied().unwrap_or_default();
    ensure!(
        (orders_counts.applied, orders_counts.dead_lettered) == (u64::try_from(orders.len())?, 0),
        "{summary:?}"
    );
    expected.check_postgres(&pool).await?;

    let letters = dead_letters(&run.stack, &cdc_core::dlq::topic_for(&run.users_topic))?;
    ensure!(letters.len() == 1, "{letters:?}");
    let letter = &letters[0];
    ensure!(
        letter.reason == "unsupported_schema_version"
            && (letter.source_partition, letter.source_offset) == (partition, offset)
            && letter.payload.as_deref() == Some(future.as_slice())
            && letter.error.contains("99"),
        "{letter:?}"
    );
    ensure!(dead_letters(&run.stack, &cdc_core::dlq::topic_for(&run.orders_topic))?.is_empty());
    Ok(())
}

/// `xmin` of each of the given orders: the transaction that last wrote its row.
async fn xmins(pool: &PgPool, ids: &[Uuid]) -> Result<BTreeMap<Uuid, String>> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, xmin::text FROM orders WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Dead letters whose cause is fixed are replayed with `consumer dlq replay` and applied exactly
/// once. A constraint added by mistake (`quantity <= 3`: bulk orders "need approval") makes
/// PostgreSQL refuse every event of the bulk orders: each is parked as `rejected_by_database`,
/// the rest of the stream is applied. Once the constraint is dropped, `dlq list` shows them, a dry
/// run publishes nothing, and the replay publishes each parked record once to its source
/// partition (key and payload as parked, `dlq.replayed_from` naming the dead letter); the consumer
/// applies them and PostgreSQL equals the model of the whole stream. The same replay again
/// publishes the same records, and the version guard makes them change nothing: no replayed
/// order's row is written again (its `xmin` stays), and nothing new is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_replayed_once_their_cause_is_fixed_are_applied_exactly_once() -> Result<()> {
    let _exclusive = stack_tests::exclusive().await;
    let run = Run::new().await?;
    let is_bulk = |e: &Event| matches!(e, Event::Order(o) if o.order.quantity > 3);
    let events = (0..20)
        .map(|_| generated(seed(), 30, 80))
        .find(|events| events.iter().any(is_bulk))
        .context("no stream with a bulk order")?;
    let bulk: BTreeSet<Uuid> = events
        .iter()
        .filter_map(|e| match e {
            Event::Order(o) if o.order.quantity > 3 => Some(o.order.id),
            _ => None,
        })
        .collect();
    let bulk: Vec<Uuid> = bulk.into_iter().collect();
    let refused = u64::try_from(events.iter().filter(|e| is_bulk(e)).count())?;
    let accepted: Vec<Event> = events.iter().filter(|e| !is_bulk(e)).cloned().collect();
    let pool = pool(&run.stack).await?;
    let name = unique_name("it_bulk_orders_need_approval");
    let constraint = Undo::apply(
        &pool,
        &run.stack.database_url,
        format!("ALTER TABLE orders ADD CONSTRAINT {name} CHECK (quantity <= 3) NOT VALID"),
        format!("ALTER TABLE orders DROP CONSTRAINT IF EXISTS {name}"),
    )
    .await?;
    run.send_events(&events).await?;
    let summary = run.consume_until_idle().await?;
    let dead = |topic: &str| summary.get(topic).map(|c| c.dead_lettered);
    ensure!(
        dead(&run.orders_topic) == Some(refused) && dead(&run.users_topic) == Some(0),
        "{summary:?}, expected {refused} orders refused"
    );
    Model::from_events(&accepted).check_postgres(&pool).await?;
    ensure!(
        count_orders(&pool, &bulk).await? == 0,
        "a bulk order was written"
    );
    // The fix.
    constraint.undo().await?;

    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    let parked = dead_letters(&run.stack, &dlq)?;
    ensure!(
        u64::try_from(parked.len())? == refused
            && parked
                .iter()
                .all(|l| l.reason == "rejected_by_database" && l.error.contains(&name)),
        "{parked:?}"
    );
    let (status, listing) = dlq_command(
        &run.stack,
        "consumer",
        &["list", "--source-topic", &run.orders_topic],
    )
    .await?;
    ensure!(
        status.success()
            && listing.contains(&format!(
                "{dlq}: {refused} dead letters (rejected_by_database {refused})"
            ))
            && u64::try_from(
                listing
                    .lines()
                    .filter(|l| l.contains(" reason=rejected_by_database source="))
                    .count()
            )? == refused,
        "{listing}"
    );
    let before = end_offsets(&run.stack, &run.orders_topic)?;
    let (status, dry) = dlq_command(
        &run.stack,
        "consumer",
        &[
            "replay",
            "--source-topic",
            &run.orders_topic,
            "--dry-run",
            "--limit",
            "1",
        ],
    )
    .await?;
    let counts = replay_counts(&dry)?;
    ensure!(
        status.success() && (counts.matched, counts.replayed) == (refused, 1),
        "{dry}"
    );
    ensure!(
        end_offsets(&run.stack, &run.orders_topic)? == before,
        "a dry run published"
    );

    let expected = Model::from_events(&events);
    let mut written = BTreeMap::new();
    for round in 1..=2 {
        let before = end_offsets(&run.stack, &run.orders_topic)?;
        replay_dead_letters(
            &run.stack,
            "consumer",
            [&run.orders_topic, "rejected_by_database"],
            &["--since", "1h"],
            refused,
        )
        .await?;
        check_replayed(
            &parked,
            &records_since(&run.stack, &run.orders_topic, &before)?,
        )?;
        let summary = run.consume_until_idle().await?;
        let orders = summary.get(&run.orders_topic).copied().unwrap_or_default();
        ensure!(
            (orders.consumed, orders.applied, orders.dead_lettered) == (refused, refused, 0),
            "round {round}: {summary:?}"
        );
        expected.check_postgres(&pool).await?;
        let now = xmins(&pool, &bulk).await?;
        ensure!(now.len() == bulk.len(), "round {round}: {now:?}");
        if round == 1 {
            written = now;
        } else {
            ensure!(
                now == written,
                "the second replay wrote rows again: {written:?} then {now:?}"
            );
        }
    }
    ensure!(
        dead_letters(&run.stack, &dlq)?.len() == parked.len(),
        "the replays parked records again"
    );
    ensure!(dead_letters(&run.stack, &cdc_core::dlq::topic_for(&run.users_topic))?.is_empty());
    Ok(())
}
