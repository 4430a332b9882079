//! The verifier against the real stack: `compare` is clean when PostgreSQL and Cassandra hold the
//! same rows and counts exactly the drift introduced (a missing row, an extra row, a different
//! column, an orders_by_user row under the wrong user), while a timestamp that differs only below
//! the millisecond still counts as equal; `wait_quiet` names a lagging partition and passes once
//! the group has committed the end, and waits on the real replication slot.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cdc_core::retry::Classify;
use cdc_core::topics::{ensure_topics, TopicSpec};
use cdc_core::verify::{
    compare, wait_quiet, CompareOptions, DifferenceKind, GroupTopics, QuietOptions, Report,
    TableReport, Unquiet, VerifyError,
};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use stack_tests::{shared, unique_name, wait_for, Stack};
use uuid::Uuid;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

async fn pg_pool(stack: &Stack) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&stack.database_url)
        .await
        .context("connecting to PostgreSQL")
}

async fn cassandra(stack: &Stack) -> Result<Session> {
    SessionBuilder::new()
        .known_nodes(&stack.cassandra_nodes)
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await
        .context("connecting to Cassandra")
}

/// A scratch schema with the tables of postgres-schema.sql (the soft-delete trigger is not needed
/// here: rows are written directly).
async fn create_pg_schema(pool: &PgPool, schema: &str) -> Result<()> {
    let ddl = format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.users (
             id          UUID        PRIMARY KEY,
             name        TEXT        NOT NULL,
             email       TEXT        NOT NULL,
             created_at  TIMESTAMPTZ NOT NULL,
             updated_at  TIMESTAMPTZ NOT NULL,
             deleted_at  TIMESTAMPTZ,
             version     BIGINT      NOT NULL CHECK (version >= 0)
         );
         CREATE TABLE {schema}.orders (
             id          UUID           PRIMARY KEY,
             user_id     UUID           NOT NULL REFERENCES {schema}.users (id),
             product     TEXT           NOT NULL,
             quantity    INTEGER        NOT NULL CHECK (quantity > 0),
             amount      NUMERIC(12, 2) NOT NULL CHECK (amount >= 0),
             status      TEXT           NOT NULL
                         CHECK (status IN ('PLACED', 'SHIPPED', 'DELIVERED', 'CANCELLED')),
             order_date  DATE           NOT NULL,
             created_at  TIMESTAMPTZ    NOT NULL,
             updated_at  TIMESTAMPTZ    NOT NULL,
             deleted_at  TIMESTAMPTZ,
             version     BIGINT         NOT NULL CHECK (version >= 0)
         );"
    );
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(pool).await?;
    Ok(())
}

/// A scratch keyspace at the cluster's replication factor with the tables of
/// cassandra-schema.cql, usable on every replica.
async fn create_keyspace(session: &Session, stack: &Stack, keyspace: &str) -> Result<()> {
    let rf = stack.cassandra_nodes.len();
    let statements = [
        format!(
            "CREATE KEYSPACE {keyspace} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
        ),
        format!(
            "CREATE TABLE {keyspace}.users (id uuid PRIMARY KEY, name text, email text, \
             created_at timestamp, updated_at timestamp, deleted_at timestamp, version bigint)"
        ),
        format!(
            "CREATE TABLE {keyspace}.orders (id uuid PRIMARY KEY, user_id uuid, product text, \
             quantity int, amount decimal, status text, order_date date, created_at timestamp, \
             updated_at timestamp, deleted_at timestamp, version bigint)"
        ),
        format!(
            "CREATE TABLE {keyspace}.orders_by_user (user_id uuid, order_id uuid, product text, \
             quantity int, amount decimal, status text, order_date date, created_at timestamp, \
             updated_at timestamp, deleted_at timestamp, version bigint, \
             PRIMARY KEY ((user_id), order_id)) WITH CLUSTERING ORDER BY (order_id ASC)"
        ),
    ];
    for text in statements {
        let mut statement = Statement::new(text);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        session.query_unpaged(statement, ()).await?;
    }
    session.await_schema_agreement().await?;
    // The driver's agreement check can pass before every replica has applied the new tables
    // (replicas then answer INCOMPATIBLE_SCHEMA): wait until a read of each at ALL is accepted.
    for table in ["users", "orders", "orders_by_user"] {
        let mut probe = Statement::new(format!("SELECT * FROM {keyspace}.{table} LIMIT 1"));
        probe.set_consistency(Consistency::All);
        wait_for(
            &format!("{keyspace}.{table} on every replica"),
            Duration::from_secs(60),
            || {
                let probe = probe.clone();
                async move { Ok(session.query_unpaged(probe, ()).await.is_ok().then_some(())) }
            },
        )
        .await?;
    }
    Ok(())
}

async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<()> {
    let mut drop = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    drop.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(drop, ()).await?;
    Ok(())
}

/// Microseconds since the epoch, as PostgreSQL keeps them.
type Micros = i64;

struct User {
    id: Uuid,
    name: String,
    created: Micros,
    updated: Micros,
    deleted: Option<Micros>,
    version: i64,
}

#[derive(Clone)]
struct Order {
    id: Uuid,
    user_id: Uuid,
    product: String,
    quantity: i32,
    cents: i64,
    status: &'static str,
    /// Days since 1970-01-01.
    order_date: i32,
    created: Micros,
    updated: Micros,
    deleted: Option<Micros>,
    version: i64,
}

/// 2026-11-24T10:00:00Z
const BASE: Micros = 1_795_514_400_000_000;

/// Four users (the last soft-deleted) with two orders each (the deleted user's soft-deleted too);
/// every timestamp has a sub-millisecond part, the amounts trailing zeros.
fn dataset() -> (Vec<User>, Vec<Order>) {
    let users: Vec<User> = (0..4_i64)
        .map(|n| User {
            id: Uuid::new_v4(),
            name: format!("user {n}"),
            created: BASE + n * 1_000_123 + 456,
            updated: BASE + n * 2_000_321 + 789,
            deleted: (n == 3).then_some(BASE + 9_000_000_001),
            version: n + 1,
        })
        .collect();
    let statuses = ["PLACED", "SHIPPED", "DELIVERED", "CANCELLED"];
    let amounts = [1250, 999, 100_000, 5];
    let orders = (0..8_usize)
        .map(|n| {
            let user = &users[n / 2];
            let k = i64::try_from(n).unwrap_or_default();
            Order {
                id: Uuid::new_v4(),
                user_id: user.id,
                product: format!("product {n}"),
                quantity: i32::try_from(n).unwrap_or_default() + 1,
                cents: amounts[n % 4],
                status: statuses[n % 4],
                order_date: 20_781 - i32::try_from(n).unwrap_or_default(),
                created: BASE + k * 3_000_007 + 123,
                updated: BASE + k * 4_000_009 + 999,
                deleted: user.deleted,
                version: k + 10,
            }
        })
        .collect();
    (users, orders)
}

fn cql_timestamp(micros: Micros) -> CqlTimestamp {
    CqlTimestamp(micros.div_euclid(1000))
}

fn cql_date(days: i32) -> CqlDate {
    CqlDate((1_u32 << 31).wrapping_add_signed(days))
}

/// Cents as a Cassandra decimal, written without trailing zeros (12.50 as 12.5, 1000.00 as 1E+3)
/// to show that decimals are compared by value, not by scale.
fn cql_decimal(cents: i64) -> CqlDecimal {
    let (mut unscaled, mut scale) = (cents, 2);
    while unscaled != 0 && unscaled % 10 == 0 {
        unscaled /= 10;
        scale -= 1;
    }
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&unscaled.to_be_bytes(), scale)
}

async fn insert_pg(pool: &PgPool, schema: &str, users: &[User], orders: &[Order]) -> Result<()> {
    // Integer microseconds and cents, converted exactly by PostgreSQL.
    let ts = |n: usize| format!("TIMESTAMPTZ 'epoch' + ${n}::bigint * INTERVAL '1 microsecond'");
    let insert_user = format!(
        "INSERT INTO {schema}.users VALUES ($1, $2, $3, {}, {}, {}, $7)",
        ts(4),
        ts(5),
        ts(6)
    );
    for u in users {
        sqlx::query(AssertSqlSafe(insert_user.as_str()))
            .bind(u.id)
            .bind(&u.name)
            .bind(format!("{}@example.com", u.name.replace(' ', ".")))
            .bind(u.created)
            .bind(u.updated)
            .bind(u.deleted)
            .bind(u.version)
            .execute(pool)
            .await?;
    }
    let insert_order = format!(
        "INSERT INTO {schema}.orders VALUES ($1, $2, $3, $4, $5::bigint * 0.01, $6, \
         DATE '1970-01-01' + $7::int, {}, {}, {}, $11)",
        ts(8),
        ts(9),
        ts(10)
    );
    for o in orders {
        sqlx::query(AssertSqlSafe(insert_order.as_str()))
            .bind(o.id)
            .bind(o.user_id)
            .bind(&o.product)
            .bind(o.quantity)
            .bind(o.cents)
            .bind(o.status)
            .bind(o.order_date)
            .bind(o.created)
            .bind(o.updated)
            .bind(o.deleted)
            .bind(o.version)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The Cassandra side's statements, prepared once.
struct CassandraWriter<'a> {
    session: &'a Session,
    keyspace: &'a str,
}

impl CassandraWriter<'_> {
    async fn run(
        &self,
        cql: String,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<()> {
        let mut statement = self.session.prepare(cql).await?;
        statement.set_consistency(Consistency::Quorum);
        self.session.execute_unpaged(&statement, values).await?;
        Ok(())
    }

    async fn user(&self, u: &User) -> Result<()> {
        let ks = self.keyspace;
        self.run(
            format!(
                "INSERT INTO {ks}.users (id, name, email, created_at, updated_at, deleted_at, \
                 version) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                u.id,
                &u.name,
                format!("{}@example.com", u.name.replace(' ', ".")),
                cql_timestamp(u.created),
                cql_timestamp(u.updated),
                u.deleted.map(cql_timestamp),
                u.version,
            ),
        )
        .await
    }

    async fn order(&self, o: &Order) -> Result<()> {
        let ks = self.keyspace;
        self.run(
            format!(
                "INSERT INTO {ks}.orders (id, user_id, product, quantity, amount, status, \
                 order_date, created_at, updated_at, deleted_at, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                o.id,
                o.user_id,
                &o.product,
                o.quantity,
                cql_decimal(o.cents),
                o.status,
                cql_date(o.order_date),
                cql_timestamp(o.created),
                cql_timestamp(o.updated),
                o.deleted.map(cql_timestamp),
                o.version,
            ),
        )
        .await
    }

    async fn order_by_user(&self, user_id: Uuid, o: &Order) -> Result<()> {
        let ks = self.keyspace;
        self.run(
            format!(
                "INSERT INTO {ks}.orders_by_user (user_id, order_id, product, quantity, amount, \
                 status, order_date, created_at, updated_at, deleted_at, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                user_id,
                o.id,
                &o.product,
                o.quantity,
                cql_decimal(o.cents),
                o.status,
                cql_date(o.order_date),
                cql_timestamp(o.created),
                cql_timestamp(o.updated),
                o.deleted.map(cql_timestamp),
                o.version,
            ),
        )
        .await
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
    session: &Session,
    schema: &str,
    keyspace: &str,
) -> Result<()> {
    let (users, orders) = dataset();
    insert_pg(pool, schema, &users, &orders).await?;
    let cassandra = CassandraWriter { session, keyspace };
    for u in &users {
        cassandra.user(u).await?;
    }
    for o in &orders {
        cassandra.order(o).await?;
        cassandra.order_by_user(o.user_id, o).await?;
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
    let ks = keyspace;
    cassandra
        .run(
            format!("DELETE FROM {ks}.users WHERE id = ?"),
            (users[1].id,),
        )
        .await?;
    let stray = Order {
        id: Uuid::new_v4(),
        ..orders[0].clone()
    };
    cassandra.order(&stray).await?;
    cassandra
        .run(
            format!("UPDATE {ks}.orders SET status = ? WHERE id = ?"),
            ("SHIPPED", orders[0].id),
        )
        .await?;
    let moved = &orders[2];
    cassandra
        .run(
            format!("DELETE FROM {ks}.orders_by_user WHERE user_id = ? AND order_id = ?"),
            (moved.user_id, moved.id),
        )
        .await?;
    cassandra.order_by_user(users[0].id, moved).await?;
    // PostgreSQL moves two timestamps within their millisecond: no difference.
    let within_ms = |column: &str, table: &str| {
        format!(
            "UPDATE {schema}.{table} SET {column} = \
             date_trunc('milliseconds', {column}) + INTERVAL '999 microseconds' \
             WHERE id = $1 RETURNING extract(microseconds FROM {column})::bigint % 1000"
        )
    };
    let (users_micros,): (i64,) = sqlx::query_as(AssertSqlSafe(within_ms("updated_at", "users")))
        .bind(users[2].id)
        .fetch_one(pool)
        .await?;
    let (orders_micros,): (i64,) = sqlx::query_as(AssertSqlSafe(within_ms("created_at", "orders")))
        .bind(orders[5].id)
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
            && users_report.examples[0].key == format!("id={}", users[1].id)
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
    ensure!(status.0 == format!("id={}", orders[0].id), "{report}");
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
            .any(|d| d.key == format!("id={}", stray.id) && d.kind == DifferenceKind::Extra),
        "{report}"
    );
    let by_user = table(&report, "orders_by_user")?;
    let expected = [
        (
            format!("user_id={} order_id={}", moved.user_id, moved.id),
            DifferenceKind::Missing,
        ),
        (
            format!("user_id={} order_id={}", users[0].id, moved.id),
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
    let pool = pg_pool(&stack).await?;
    let session = cassandra(&stack).await?;
    let schema = unique_name("it_verify");
    let keyspace = unique_name("it_verify");
    create_pg_schema(&pool, &schema).await?;
    let outcome = match create_keyspace(&session, &stack, &keyspace).await {
        Ok(()) => compare_scenario(&pool, &session, &schema, &keyspace).await,
        Err(error) => Err(error),
    };
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await?;
    drop_keyspace(&session, &keyspace).await?;
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
    let VerifyError::NotQuiet { behind, .. } = &error else {
        bail!("expected NotQuiet, got {error:?}");
    };
    ensure!(error.is_transient());
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
        Err(VerifyError::TopicMissing(name)) if name == missing => {}
        other => bail!("expected TopicMissing({missing}), got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn wait_quiet_names_the_lagging_partition_and_passes_at_the_end() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let pool = pg_pool(&stack).await?;
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
    let pool = pg_pool(&stack).await?;
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
        Err(error @ VerifyError::SlotMissing(_)) => ensure!(!error.is_transient()),
        other => bail!("expected SlotMissing, got {other:?}"),
    }
    Ok(())
}
