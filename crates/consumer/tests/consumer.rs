//! The consumer against the real Kafka and PostgreSQL: generated streams end in exactly the table
//! contents an independent model computes from the same events — also after a replay, a SIGKILL
//! mid-stream, hostile input, orders that overtake their users, and a second instance coming and
//! going.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::events::{Event, Order, OrderStatus, User};
use cdc_core::generator::{Generator, GeneratorConfig};
use cdc_core::topics::{ensure_topics, TopicSpec};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use sqlx::PgPool;
use stack_tests::{log_tail, shared, unique_name, wait_for, Stack};
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_consumer"));
        command
            .env("KAFKA_BROKERS", &self.stack.brokers)
            .env("DATABASE_URL", &self.stack.database_url)
            .env("USERS_TOPIC", &self.users_topic)
            .env("ORDERS_TOPIC", &self.orders_topic)
            .env("USERS_GROUP", &self.users_group)
            .env("ORDERS_GROUP", &self.orders_group)
            .env("REPLICATION_FACTOR", self.stack.broker_count.to_string())
            .env("IDLE_TIMEOUT_SECS", idle_secs.to_string())
            .env("PARENT_WAIT_SECS", "20")
            .env("LOG_LEVEL", "info,rdkafka=warn")
            .env("METRICS_ADDR", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the consumer until it goes idle; fails with its output if it exits non-zero.
    fn consume_until_idle(&self) -> Result<String> {
        let output = self
            .consumer_command(6)
            .output()
            .context("running the consumer")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success(),
            "consumer failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    fn spawn_consumer(&self, idle_secs: u64) -> Result<Spawned> {
        Spawned::start(self.consumer_command(idle_secs))
    }

    fn producer(&self) -> Result<FutureProducer> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.max.bytes", "2000000")
            .create()
            .context("creating producer")
    }

    /// Sends raw records (key, payload) to a topic and waits for every acknowledgement.
    async fn send_raw(&self, topic: &str, records: &[RawRecord]) -> Result<()> {
        let producer = self.producer()?;
        let mut pending = Vec::new();
        for (key, payload) in records {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = payload {
                record = record.payload(payload.as_slice());
            }
            pending.push(producer.send_result(record).map_err(|(error, _)| error)?);
        }
        for delivery in pending {
            delivery.await?.map_err(|(error, _)| error)?;
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

/// The expected final tables, computed from the events alone: per entity the state with the
/// highest version; orders of a deleted user are deleted at the user's deletion time unless they
/// were deleted before.
#[derive(Debug, Default, PartialEq)]
struct Model {
    users: BTreeMap<Uuid, (User, i64)>,
    orders: BTreeMap<Uuid, (Order, i64)>,
}

impl Model {
    fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut model = Self::default();
        for event in events {
            match event {
                Event::User(e) => {
                    let entry = model
                        .users
                        .entry(e.user.id)
                        .or_insert_with(|| (e.user.clone(), e.version));
                    if e.version > entry.1 {
                        *entry = (e.user.clone(), e.version);
                    }
                }
                Event::Order(e) => {
                    let entry = model
                        .orders
                        .entry(e.order.id)
                        .or_insert_with(|| (e.order.clone(), e.version));
                    if e.version > entry.1 {
                        *entry = (e.order.clone(), e.version);
                    }
                }
            }
        }
        for (order, _) in model.orders.values_mut() {
            let user_deleted = model
                .users
                .get(&order.user_id)
                .and_then(|(u, _)| u.deleted_at);
            if let (None, Some(at)) = (order.deleted_at, user_deleted) {
                order.deleted_at = Some(at);
                order.updated_at = order.updated_at.max(at);
            }
        }
        model
    }

    /// Reads the rows of this model's ids from PostgreSQL, in one snapshot.
    async fn read(pool: &PgPool, user_ids: &[Uuid], order_ids: &[Uuid]) -> Result<Self> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        type UserRow = (
            Uuid,
            String,
            String,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            i64,
        );
        let users: Vec<UserRow> = sqlx::query_as(
            "SELECT id, name, email, created_at, updated_at, deleted_at, version FROM users WHERE id = ANY($1)",
        )
        .bind(user_ids)
        .fetch_all(&mut *tx)
        .await?;
        type OrderRow = (
            Uuid,
            Uuid,
            String,
            i32,
            Decimal,
            String,
            NaiveDate,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            i64,
        );
        let orders: Vec<OrderRow> = sqlx::query_as(
            "SELECT id, user_id, product, quantity, amount, status, order_date, created_at, updated_at, deleted_at, version \
             FROM orders WHERE id = ANY($1)",
        )
        .bind(order_ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut model = Self::default();
        for (id, name, email, created_at, updated_at, deleted_at, version) in users {
            model.users.insert(
                id,
                (
                    User {
                        id,
                        name,
                        email,
                        created_at,
                        updated_at,
                        deleted_at,
                    },
                    version,
                ),
            );
        }
        for (
            id,
            user_id,
            product,
            quantity,
            amount,
            status,
            order_date,
            created_at,
            updated_at,
            deleted_at,
            version,
        ) in orders
        {
            let status: OrderStatus = serde_json::from_value(serde_json::Value::String(status))?;
            model.orders.insert(
                id,
                (
                    Order {
                        id,
                        user_id,
                        product,
                        quantity,
                        amount,
                        status,
                        order_date,
                        created_at,
                        updated_at,
                        deleted_at,
                    },
                    version,
                ),
            );
        }
        Ok(model)
    }

    fn ids(&self) -> (Vec<Uuid>, Vec<Uuid>) {
        (
            self.users.keys().copied().collect(),
            self.orders.keys().copied().collect(),
        )
    }
}

/// Adds a line to `problems` for every row missing, unexpected or different.
fn diff_rows<V: PartialEq + std::fmt::Debug>(
    entity: &str,
    expected: &BTreeMap<Uuid, V>,
    actual: &BTreeMap<Uuid, V>,
    problems: &mut Vec<String>,
) {
    for (id, row) in expected {
        match actual.get(id) {
            None => problems.push(format!("{entity} {id} missing")),
            Some(found) if found != row => {
                problems.push(format!("{entity} {id}: expected {row:?}, found {found:?}"))
            }
            _ => {}
        }
    }
    for id in actual.keys().filter(|id| !expected.contains_key(id)) {
        problems.push(format!("{entity} {id} not expected"));
    }
}

/// Compares every row and column; on a difference names the first few.
fn assert_same(expected: &Model, actual: &Model) {
    let mut problems = Vec::new();
    diff_rows("user", &expected.users, &actual.users, &mut problems);
    diff_rows("order", &expected.orders, &actual.orders, &mut problems);
    assert!(
        problems.is_empty(),
        "{} differences (users {} expected, orders {} expected); first ones:\n{}",
        problems.len(),
        expected.users.len(),
        expected.orders.len(),
        problems
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
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
    let summary = run.consume_until_idle()?;
    assert!(summary.contains("dead_lettered=0"), "{summary}");

    let expected = Model::from_events(&events);
    let (user_ids, order_ids) = expected.ids();
    let pool = pool(&run.stack).await?;
    let after_first = Model::read(&pool, &user_ids, &order_ids).await?;
    assert_same(&expected, &after_first);

    // Replay: the same groups reset to the earliest offsets consume everything again.
    reset_to_earliest(&run.stack, &run.users_group, &run.users_topic, 3)?;
    reset_to_earliest(&run.stack, &run.orders_group, &run.orders_topic, 5)?;
    let summary = run.consume_until_idle()?;
    assert!(
        summary.contains(&format!(
            "consumed={}",
            events
                .iter()
                .filter(|e| matches!(e, Event::User(_)))
                .count()
        )),
        "{summary}"
    );
    let after_replay = Model::read(&pool, &user_ids, &order_ids).await?;
    assert_same(&expected, &after_replay);
    Ok(())
}

/// Commits offset 0 for every partition of `topic` in `group` (the group must have no members).
fn reset_to_earliest(stack: &Stack, group: &str, topic: &str, partitions: i32) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut offsets = TopicPartitionList::new();
    for partition in 0..partitions {
        offsets.add_partition_offset(topic, partition, Offset::Offset(0))?;
    }
    consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_then_restart_ends_exact() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 800, 2_000);
    run.send_events(&events).await?;
    let expected = Model::from_events(&events);
    let (user_ids, order_ids) = expected.ids();
    let pool = pool(&run.stack).await?;

    let mut child = run.spawn_consumer(0)?;
    // Kill it once it has written part of the stream, but not all of it.
    wait_for_orders(&pool, &order_ids, 1).await?;
    child.child.kill().context("SIGKILL")?;
    child.child.wait()?;
    let at_kill = count_orders(&pool, &order_ids).await?;
    eprintln!(
        "killed with {at_kill} of {} orders written",
        order_ids.len()
    );

    run.consume_until_idle()?;
    assert_same(&expected, &Model::read(&pool, &user_ids, &order_ids).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_joining_and_leaving_loses_nothing() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 800, 2_000);
    let expected = Model::from_events(&events);
    let (user_ids, order_ids) = expected.ids();
    let pool = pool(&run.stack).await?;

    let mut first = run.spawn_consumer(0)?;
    let (head, tail) = events.split_at(events.len() / 2);
    run.send_events(head).await?;
    let mut second = run.spawn_consumer(0)?;
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
    terminate(&mut second)?;
    // The first goes on alone and must finish everything.
    wait_for("every row to match the model", Duration::from_secs(120), || {
        let (pool, user_ids, order_ids, expected) = (&pool, &user_ids, &order_ids, &expected);
        async move { Ok((Model::read(pool, user_ids, order_ids).await? == *expected).then_some(())) }
    })
    .await?;
    terminate(&mut first)?;
    assert_same(&expected, &Model::read(&pool, &user_ids, &order_ids).await?);
    Ok(())
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

/// A plain HTTP/1.1 GET: (status, body).
async fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A consumer running in the background, its log in a file.
struct Spawned {
    child: Child,
    log: PathBuf,
}

impl Spawned {
    fn start(mut command: Command) -> Result<Self> {
        let log =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", unique_name("consumer")));
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning the consumer")?;
        Ok(Self { child, log })
    }
}

fn terminate(spawned: &mut Spawned) -> Result<()> {
    let pid = spawned.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let status = spawned.child.wait()?;
    ensure!(
        status.success(),
        "consumer did not exit cleanly on SIGTERM: {status}; its log {}",
        log_tail(&spawned.log, 30)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_records_are_dead_lettered_and_valid_ones_applied() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 50, 100);
    let expected = Model::from_events(&events);
    let (user_ids, order_ids) = expected.ids();
    let user = events
        .iter()
        .find_map(|e| match e {
            Event::User(u) => Some(u.clone()),
            Event::Order(_) => None,
        })
        .context("no user event")?;
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

    let summary = run.consume_until_idle()?;
    assert!(
        summary.contains(&format!("dead_lettered={}", hostile.len())),
        "{summary}"
    );
    let pool = pool(&run.stack).await?;
    assert_same(&expected, &Model::read(&pool, &user_ids, &order_ids).await?);

    // Each hostile record is in the dead-letter topic with its reason and source position.
    let dlq = cdc_core::dlq::topic_for(&run.users_topic);
    let reasons = read_reasons(&run.stack, &dlq, &run.users_topic)?;
    let mut expected_reasons: Vec<String> =
        hostile.iter().map(|(_, _, r)| (*r).to_owned()).collect();
    expected_reasons.sort();
    let mut found: Vec<String> = reasons.into_iter().collect();
    found.sort();
    assert_eq!(found, expected_reasons);
    Ok(())
}

/// Reads a dead-letter topic: the `dlq.reason` of each record, checking its source headers.
fn read_reasons(stack: &Stack, dlq: &str, source: &str) -> Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", unique_name("it_dlq_reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    let (_, high) = consumer.fetch_watermarks(dlq, 0, Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(dlq, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut reasons = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while i64::try_from(reasons.len())? < high {
        ensure!(
            std::time::Instant::now() < deadline,
            "reading {dlq} timed out"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let headers = message.headers().context("dead letter without headers")?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("dlq.source.topic").as_deref(), Some(source));
        assert!(header("dlq.source.partition").is_some() && header("dlq.source.offset").is_some());
        assert!(header("dlq.error").is_some_and(|e| !e.is_empty()));
        reasons.push(header("dlq.reason").context("no reason header")?);
    }
    Ok(reasons)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_before_its_user_converges_once_the_user_arrives() -> Result<()> {
    let _shared = shared().await;
    let run = Run::new().await?;
    let events = generated(seed(), 5, 10);
    let expected = Model::from_events(&events);
    let (user_ids, order_ids) = expected.ids();
    let (users, orders): (Vec<Event>, Vec<Event>) = events
        .iter()
        .cloned()
        .partition(|e| matches!(e, Event::User(_)));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut child = {
        let mut command = run.consumer_command(0);
        command.env("METRICS_ADDR", &address);
        Spawned::start(command)?
    };
    wait_for(
        "the health endpoint to report ready",
        Duration::from_secs(30),
        || {
            let address = &address;
            async move {
                Ok(http_get(address, "/health")
                    .await
                    .ok()
                    .filter(|(status, _)| *status == 200))
            }
        },
    )
    .await?;
    run.send_events(&orders).await?;
    let pool = pool(&run.stack).await?;
    // Orders are held back (retried), not applied without their users and not dead-lettered.
    let early = count_orders(&pool, &order_ids).await?;
    assert_eq!(early, 0);
    run.send_events(&users).await?;
    wait_for("orders to follow their users", Duration::from_secs(60), || {
        let (pool, user_ids, order_ids, expected) = (&pool, &user_ids, &order_ids, &expected);
        async move { Ok((Model::read(pool, user_ids, order_ids).await? == *expected).then_some(())) }
    })
    .await?;
    let (status, text) = http_get(&address, "/metrics").await?;
    assert_eq!(status, 200);
    let applied = format!(
        "cdc_events_applied_total{{topic=\"{}\"}} ",
        run.orders_topic
    );
    assert!(text.contains(&applied), "{text}");
    assert!(text.contains("cdc_batch_duration_seconds_bucket"), "{text}");
    terminate(&mut child)?;
    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &run.stack.brokers)
        .create()?;
    let (_, high) = consumer.fetch_watermarks(&dlq, 0, Duration::from_secs(10))?;
    assert_eq!(high, 0, "nothing may be dead-lettered");
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
    let output = run
        .consumer_command(4)
        .env("PARENT_WAIT_SECS", "2")
        .output()
        .context("running the consumer")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "consumer failed: {stdout}");
    let pool = pool(&run.stack).await?;
    assert_eq!(
        count_orders(&pool, &[orphan.order.id]).await?,
        0,
        "an orphan must not be written"
    );
    let dlq = cdc_core::dlq::topic_for(&run.orders_topic);
    let reasons = read_reasons(&run.stack, &dlq, &run.orders_topic)?;
    assert_eq!(
        reasons,
        vec!["missing_parent".to_owned(); orphan_events.len()]
    );
    Ok(())
}
