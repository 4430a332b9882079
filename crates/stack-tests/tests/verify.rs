//! The verifier against the real stack: `compare` is clean when PostgreSQL and Cassandra hold the
//! same rows and counts exactly the drift introduced (a missing row, an extra row, a different
//! column, an orders_by_user row under the wrong user), while a timestamp that differs only below
//! the millisecond still counts as equal; `wait_quiet` names a lagging partition and passes once
//! the group has committed the end, and waits on the real replication slot.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cdc_core::debezium::Field;
use cdc_core::events::{Op, Order, OrderEvent, OrderStatus, User, UserEvent};
use cdc_core::tables::{self, Table};
use cdc_core::topics::{ensure_topics, TopicSpec};
use cdcconsumer::cassandra::Statements;
use cdcconsumer::handler::plan::{decimal, Write};
use cdcconsumer::verify::compare::{orders_by_user_row, Value};
use cdcconsumer::verify::compare::{DifferenceKind, TableReport};
use cdcconsumer::verify::quiet::Unquiet;
use cdcconsumer::verify::{
    compare, wait_quiet, CompareOptions, GroupTopics, QuietError, QuietOptions, Report,
};
use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::value::CqlValue;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use stack_tests::model::{order_row, user_row};
use stack_tests::pipeline::{create_keyspace, drop_keyspace};
use stack_tests::rows::{cql_value, Precision};
use stack_tests::{shared, unique_name, Stack};
use uuid::Uuid;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

async fn pg_pool(stack: &Stack, schema: Option<&str>) -> Result<PgPool> {
    let mut options = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10));
    if let Some(schema) = schema {
        // Every connection works in the scratch schema: the sink's unqualified statements land there.
        let set = format!("SET search_path TO {schema}");
        options = options.after_connect(move |connection, _| {
            let set = set.clone();
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(set)).execute(connection).await?;
                Ok(())
            })
        });
    }
    options
        .connect(&stack.database_url)
        .await
        .context("connecting to PostgreSQL")
}

async fn cassandra(stack: &Stack) -> Result<Session> {
    cdcconsumer::cassandra::connect(&stack.cassandra_nodes)
        .await
        .context("connecting to Cassandra")
}

/// A scratch schema holding postgres-schema.sql's tables.
async fn create_pg_schema(pool: &PgPool, schema: &str) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema}; {}; RESET search_path",
        consumer::sink::SCHEMA
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// 2026-11-24T10:00:00Z
const BASE: i64 = 1_795_514_400_000_000;

fn at(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Four users (the last soft-deleted) with two orders each (the deleted user's soft-deleted too);
/// every timestamp has a sub-millisecond part, the amounts trailing zeros.
fn dataset() -> (Vec<UserEvent>, Vec<OrderEvent>) {
    let users: Vec<UserEvent> = (0..4_i64)
        .map(|n| UserEvent {
            event_id: Uuid::new_v4(),
            op: Op::Update,
            version: n + 1,
            user: User {
                id: Uuid::new_v4(),
                name: format!("user {n}"),
                email: format!("user.{n}@example.com"),
                created_at: at(BASE + n * 1_000_123 + 456),
                updated_at: at(BASE + n * 2_000_321 + 789),
                deleted_at: (n == 3).then(|| at(BASE + 9_000_000_001)),
            },
        })
        .collect();
    let statuses = [
        OrderStatus::Placed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];
    let amounts = [1250, 999, 100_000, 5];
    let orders = (0..8_usize)
        .map(|n| {
            let user = &users[n / 2].user;
            let k = i64::try_from(n).unwrap_or_default();
            OrderEvent {
                event_id: Uuid::new_v4(),
                op: Op::Update,
                version: k + 10,
                order: Order {
                    id: Uuid::new_v4(),
                    user_id: user.id,
                    product: format!("product {n}"),
                    quantity: i32::try_from(n).unwrap_or_default() + 1,
                    amount: Decimal::new(amounts[n % 4], 2),
                    status: statuses[n % 4],
                    order_date: NaiveDate::from_ymd_opt(2026, 11, 24)
                        .unwrap_or_default()
                        .checked_sub_days(chrono::Days::new(u64::try_from(n).unwrap_or(0)))
                        .unwrap_or_default(),
                    created_at: at(BASE + k * 3_000_007 + 123),
                    updated_at: at(BASE + k * 4_000_009 + 999),
                    deleted_at: user.deleted_at,
                },
            }
        })
        .collect();
    (users, orders)
}

/// The Cassandra side, written through the sink's own statements: a row as the model of its
/// event says, decimals without trailing zeros (12.50 as 12.5) to show that decimals are compared
/// by value, not by scale.
/// Each write gets a later timestamp than the one before, so a later write always wins.
struct CassandraWriter {
    session: Session,
    statements: Statements,
    clock: std::sync::atomic::AtomicI64,
}

impl CassandraWriter {
    async fn run(&self, write: Write) -> Result<()> {
        let ts = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.statements
            .execute(&self.session, &write, ts)
            .await
            .context("writing to Cassandra")
    }

    fn cells(table: &'static Table, row: Vec<Value>) -> Write {
        let cells = table
            .columns
            .iter()
            .zip(row)
            .map(|(column, value)| match value {
                Value::Decimal(d) => Field::Value(CqlValue::Decimal(decimal(&d.normalize()))),
                other => match cql_value(column.ty, &other) {
                    Some(value) => Field::Value(value),
                    None => Field::Null,
                },
            })
            .collect();
        Write::Upsert {
            table,
            cells,
            extra: Vec::new(),
        }
    }

    async fn user(&self, e: &UserEvent) -> Result<()> {
        self.run(Self::cells(
            &tables::USERS,
            user_row(&e.user, e.version, Precision::Millis),
        ))
        .await
    }

    async fn order(&self, e: &OrderEvent) -> Result<()> {
        self.run(Self::cells(
            &tables::ORDERS,
            order_row(&e.order, e.version, Precision::Millis),
        ))
        .await
    }

    async fn order_by_user(&self, e: &OrderEvent) -> Result<()> {
        let row = orders_by_user_row(&order_row(&e.order, e.version, Precision::Millis));
        self.run(Self::cells(&tables::ORDERS_BY_USER, row)).await
    }

    async fn delete(&self, table: &'static Table, key: &[Uuid]) -> Result<()> {
        let key = key.iter().map(|id| CqlValue::Uuid(*id)).collect();
        self.run(Write::Delete { table, key }).await
    }
}

fn table<'a>(report: &'a Report, name: &str) -> Result<&'a TableReport> {
    report
        .table(name)
        .with_context(|| format!("no {name} in the report:\n{report}"))
}

/// (checked, matching, missing, extra, different) of one table.
fn counts(report: &Report, name: &str) -> Result<(u64, u64, u64, u64, u64)> {
    let t = table(report, name)?;
    Ok((t.checked, t.matching, t.missing, t.extra, t.different))
}

async fn compare_scenario(
    pool: &PgPool,
    cassandra: &CassandraWriter,
    schema: &str,
    keyspace: &str,
) -> Result<()> {
    let session = &cassandra.session;
    let (users, orders) = dataset();
    consumer::sink::apply_users(pool, &users).await?;
    let applied = consumer::sink::apply_orders(pool, &orders).await?;
    ensure!(applied.missing_parent.is_empty(), "{applied:?}");
    for u in &users {
        cassandra.user(u).await?;
    }
    for o in &orders {
        cassandra.order(o).await?;
        cassandra.order_by_user(o).await?;
    }

    let mut opts = CompareOptions {
        keyspace: keyspace.to_owned(),
        consistency: Consistency::Quorum,
        max_examples: 5,
        pg_schema: schema.to_owned(),
        request_timeout: Duration::from_secs(60),
    };
    let report = compare(pool, session, &opts).await?;
    eprintln!("identical rows:\n{report}");
    ensure!(
        report.is_clean(),
        "identical rows reported as drift:\n{report}"
    );
    ensure!(counts(&report, "users")? == (4, 4, 0, 0, 0), "{report}");
    ensure!(counts(&report, "orders")? == (8, 8, 0, 0, 0), "{report}");
    ensure!(
        counts(&report, "orders_by_user")? == (8, 8, 0, 0, 0),
        "{report}"
    );

    // Drift in Cassandra: one user missing, one order extra, one order's status different, one
    // orders_by_user row moved under another user.
    cassandra
        .delete(&tables::USERS, &[users[1].user.id])
        .await?;
    let mut stray = orders[0].clone();
    stray.order.id = Uuid::new_v4();
    cassandra.order(&stray).await?;
    let mut shipped = orders[0].clone();
    shipped.order.status = OrderStatus::Shipped;
    cassandra.order(&shipped).await?;
    let moved = &orders[2].order;
    cassandra
        .delete(&tables::ORDERS_BY_USER, &[moved.user_id, moved.id])
        .await?;
    let mut elsewhere = orders[2].clone();
    elsewhere.order.user_id = users[0].user.id;
    cassandra.order_by_user(&elsewhere).await?;
    // PostgreSQL moves two timestamps within their millisecond: no difference.
    let within_ms = |column: &str, table: &str| {
        format!(
            "UPDATE {schema}.{table} SET {column} = \
             date_trunc('milliseconds', {column}) + INTERVAL '999 microseconds' \
             WHERE id = $1 RETURNING extract(microseconds FROM {column})::bigint % 1000"
        )
    };
    let (users_micros,): (i64,) = sqlx::query_as(AssertSqlSafe(within_ms("updated_at", "users")))
        .bind(users[2].user.id)
        .fetch_one(pool)
        .await?;
    let (orders_micros,): (i64,) = sqlx::query_as(AssertSqlSafe(within_ms("created_at", "orders")))
        .bind(orders[5].order.id)
        .fetch_one(pool)
        .await?;
    ensure!(users_micros == 999 && orders_micros == 999);

    opts.consistency = Consistency::All;
    let report = compare(pool, session, &opts).await?;
    eprintln!("after the drift:\n{report}");
    ensure!(!report.is_clean(), "drift not detected:\n{report}");
    ensure!(counts(&report, "users")? == (4, 3, 1, 0, 0), "{report}");
    ensure!(counts(&report, "orders")? == (9, 7, 0, 1, 1), "{report}");
    ensure!(
        counts(&report, "orders_by_user")? == (9, 7, 1, 1, 0),
        "{report}"
    );

    let users_report = table(&report, "users")?;
    ensure!(
        users_report.examples.len() == 1
            && users_report.examples[0].key == format!("id={}", users[1].user.id)
            && users_report.examples[0].kind == DifferenceKind::Missing,
        "{report}"
    );
    let orders_report = table(&report, "orders")?;
    ensure!(
        orders_report.different_columns.len() == 1
            && orders_report.different_columns.get("status") == Some(&1),
        "{report}"
    );
    let status = orders_report
        .examples
        .iter()
        .find_map(|d| match &d.kind {
            DifferenceKind::Different(columns) => Some((d.key.as_str(), columns)),
            _ => None,
        })
        .with_context(|| format!("no different row listed:\n{report}"))?;
    ensure!(status.0 == format!("id={}", orders[0].order.id), "{report}");
    ensure!(
        status.1.len() == 1 && status.1[0].column == "status",
        "{report}"
    );
    ensure!(
        report
            .to_string()
            .contains("status pg=\"PLACED\" cassandra=\"SHIPPED\""),
        "{report}"
    );
    ensure!(
        orders_report
            .examples
            .iter()
            .any(|d| d.key == format!("id={}", stray.order.id) && d.kind == DifferenceKind::Extra),
        "{report}"
    );
    let by_user = table(&report, "orders_by_user")?;
    let expected = [
        (
            format!("user_id={} order_id={}", moved.user_id, moved.id),
            DifferenceKind::Missing,
        ),
        (
            format!("user_id={} order_id={}", users[0].user.id, moved.id),
            DifferenceKind::Extra,
        ),
    ];
    for (key, kind) in expected {
        ensure!(
            by_user
                .examples
                .iter()
                .any(|d| d.key == key && d.kind == kind),
            "{key} not listed as {kind:?}:\n{report}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn compare_is_clean_on_equal_data_and_counts_exactly_the_drift() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let admin = pg_pool(&stack, None).await?;
    let schema = unique_name("it_verify");
    let keyspace = unique_name("it_verify");
    create_pg_schema(&admin, &schema).await?;
    let pool = pg_pool(&stack, Some(&schema)).await?;
    let session = cassandra(&stack).await?;
    let outcome = match create_keyspace(&session, stack.cassandra_nodes.len(), &keyspace).await {
        Ok(()) => match Statements::prepare(&session, &keyspace, Consistency::Quorum).await {
            Ok(statements) => {
                let writer = CassandraWriter {
                    session,
                    statements,
                    clock: std::sync::atomic::AtomicI64::new(1),
                };
                let outcome = compare_scenario(&pool, &writer, &schema, &keyspace).await;
                drop_keyspace(&writer.session, &keyspace).await?;
                outcome
            }
            Err(error) => Err(error.into()),
        },
        Err(error) => Err(error),
    };
    pool.close().await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await?;
    outcome
}

fn kafka_config(stack: &Stack) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &stack.brokers);
    config
}

fn commit(stack: &Stack, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
    let consumer: BaseConsumer = kafka_config(stack)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for &(partition, offset) in offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.commit(&list, CommitMode::Sync)?;
    Ok(())
}

async fn cleanup_kafka(stack: &Stack, topic: &str, group: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(stack).create()?;
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    admin.delete_groups(&[group], &options).await?;
    admin.delete_topics(&[topic], &options).await?;
    Ok(())
}

async fn quiet_scenario(stack: &Stack, pool: &PgPool, topic: &str, group: &str) -> Result<()> {
    let producer: FutureProducer = kafka_config(stack).set("acks", "all").create()?;
    // Partition 0 gets 3 records, partition 1 gets 2.
    for (partition, count) in [(0, 3), (1, 2)] {
        for i in 0..count {
            let payload = format!("record {i}");
            producer
                .send(
                    FutureRecord::to(topic)
                        .partition(partition)
                        .key("k")
                        .payload(&payload),
                    KAFKA_TIMEOUT,
                )
                .await
                .map_err(|(error, _)| error)?;
        }
    }
    // The group has read one record of partition 0 and committed nothing on partition 1.
    commit(stack, group, topic, &[(0, 1)])?;
    let mut opts = QuietOptions {
        kafka: kafka_config(stack),
        groups: vec![GroupTopics::new(group, &[topic])],
        slot: None,
        timeout: Duration::from_secs(3),
    };
    let started = std::time::Instant::now();
    let error = match wait_quiet(pool, &opts).await {
        Ok(report) => bail!("a lagging group was reported quiet: {report}"),
        Err(error) => error,
    };
    let waited = started.elapsed();
    eprintln!("lagging group after {waited:?}: {error}");
    ensure!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    let QuietError::NotQuiet { behind, .. } = &error else {
        bail!("expected NotQuiet, got {error:?}");
    };
    ensure!(error.may_pass());
    let expected = [
        Unquiet::GroupLag {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition: 0,
            committed: Some(1),
            end: 3,
        },
        Unquiet::GroupLag {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition: 1,
            committed: None,
            end: 2,
        },
    ];
    ensure!(behind.as_slice() == expected, "{behind:?}");
    let text = error.to_string();
    ensure!(
        text.contains(&format!(
            "group {group} topic {topic} partition 0 lag 2 (committed 1, end 3)"
        )) && text.contains(&format!(
            "group {group} topic {topic} partition 1 lag 2 (no committed offset, end 2)"
        )),
        "{text}"
    );

    // Committed to the end: quiet.
    commit(stack, group, topic, &[(0, 3), (1, 2)])?;
    opts.timeout = Duration::from_secs(30);
    let report = wait_quiet(pool, &opts).await?;
    eprintln!("{report}");
    ensure!(
        report.partitions == 2 && report.slot.is_none(),
        "{report:?}"
    );

    // A topic that does not exist is an error at once, not a wait.
    let missing = unique_name("it_verify_missing");
    opts.groups = vec![GroupTopics::new(group, &[missing.as_str()])];
    match wait_quiet(pool, &opts).await {
        Err(QuietError::TopicMissing(name)) if name == missing => {}
        other => bail!("expected TopicMissing({missing}), got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn wait_quiet_names_the_lagging_partition_and_passes_at_the_end() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let pool = pg_pool(&stack, None).await?;
    let topic = unique_name("it_verify");
    let group = unique_name("it_verify_group");
    let rf = i32::try_from(stack.broker_count)?;
    ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topic, 2, rf)],
        KAFKA_TIMEOUT,
    )
    .await?;
    let outcome = quiet_scenario(&stack, &pool, &topic, &group).await;
    cleanup_kafka(&stack, &topic, &group).await?;
    outcome
}

#[tokio::test]
async fn wait_quiet_waits_for_the_replication_slot() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let pool = pg_pool(&stack, None).await?;
    let slot = stack
        .topology
        .get("DEBEZIUM_SLOT_NAME")
        .context("DEBEZIUM_SLOT_NAME missing in topology.env")?
        .clone();
    // Debezium's heartbeat (every 10 s) moves the slot past any position taken now.
    let opts = QuietOptions {
        kafka: kafka_config(&stack),
        groups: Vec::new(),
        slot: Some(slot.clone()),
        timeout: Duration::from_secs(90),
    };
    let report = wait_quiet(&pool, &opts).await?;
    eprintln!("{report}");
    let position = report.slot.context("no slot position in the report")?;
    ensure!(position.slot == slot);
    let (passed,): (bool,) = sqlx::query_as("SELECT $1::pg_lsn >= $2::pg_lsn")
        .bind(&position.confirmed)
        .bind(&position.target)
        .fetch_one(&pool)
        .await?;
    ensure!(passed, "{position:?}");

    let missing = QuietOptions {
        slot: Some(unique_name("it_no_such_slot")),
        ..opts
    };
    match wait_quiet(&pool, &missing).await {
        Err(error @ QuietError::SlotMissing(_)) => ensure!(!error.may_pass()),
        other => bail!("expected SlotMissing, got {other:?}"),
    }
    Ok(())
}
