//! The CDC half against the real stack: changes committed in PostgreSQL — by the producer and
//! consumer, or by other clients in plain SQL — reach Cassandra through Debezium and cdcconsumer,
//! and `cdcconsumer verify` (waiting for quiet, then comparing every row of both stores) is clean
//! after each scenario: ≥ 10,000 events through every hop, changes made directly in SQL (updates,
//! soft and hard deletes, an order moving to another user, multi-row transactions, TRUNCATE), a
//! replay with a fresh consumer group, Kafka Connect SIGKILLed mid-stream, cdcconsumer SIGKILLed
//! mid-backlog, a Cassandra node stopped and brought back, hostile records on the CDC topics, and
//! rows changed several times in one batch (only their newest writes sent).
//!
//! Where it adds strength, rows are also read from Cassandra directly and compared with what the
//! test expects independently of the sink: the model folded from the generated event stream, or
//! the rows the test itself wrote. The plumbing (processes, row readers, the model, the SQL
//! writer) is the shared harness in `stack-tests`; this file holds the scenarios.
//!
//! Every test takes the exclusive lock: they all drive the one shared pipeline (the CDC topics,
//! `cdc_db`, `cdc_keyspace`). cdcconsumer runs with its default group, so a machine reads the CDC
//! backlog once; only the replay uses a fresh group.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::events::Event;
use cdc_core::generator::{Generator, GeneratorConfig};
use cdc_core::tables::{ORDERS, ORDERS_BY_USER, USERS};
use cdc_core::topics::{ensure_topics, TopicSpec};
use cdcconsumer::verify::compare::{Key, Value};
use chrono::{TimeZone, Utc};
use rdkafka::message::Message;
use scylla::statement::Consistency;
use serde_json::Value as Json;
use stack_tests::kafka::{
    check_replayed, dead_letters, delete_groups, delete_topics_and_dead_letters, end_offsets,
    find_change, json_value, producer, records_in, records_since, send_raw, wait_captured,
};
use stack_tests::model::Model;
use stack_tests::pipeline::{
    drop_keyspace, group_spec, stop_sink, Pipeline, CDC_GROUP, CDC_ORDERS, CDC_USERS, KEYSPACE,
};
use stack_tests::process::{
    self, nothing_dead_lettered, replay_dead_letters, summary, workspace_binary, Process,
};
use stack_tests::rows::{
    column, differences, ensure_no_differences, expected_orders_by_user, id_key, pg_rows,
    CassandraReader, Precision,
};
use stack_tests::sql::{insert_order, insert_user, Ids, SqlWriter, Written};
use stack_tests::{exclusive, unique_name, wait_for, RestartOnDrop};
use uuid::Uuid;

/// Most CDC records the replay test reads again (about two minutes in a debug build); on a stack
/// that has collected more history the test is skipped, saying so.
const REPLAY_LIMIT: u64 = 100_000;

fn seed() -> u64 {
    u64::from_le_bytes(
        Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Producer → Kafka → consumer → PostgreSQL → Debezium → cdcconsumer → Cassandra with more than
/// 10,000 events on every hop (generated events, and changes captured by Debezium): the verifier
/// is clean, Cassandra holds as many rows as PostgreSQL, and every generated entity is in
/// Cassandra exactly as the model folded from the events says.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_through_every_hop_end_in_cassandra() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let producer_bin = workspace_binary("producer")?;
    let consumer_bin = workspace_binary("consumer")?;
    let users_topic = unique_name("it_cdc_users");
    let orders_topic = unique_name("it_cdc_orders");
    let users_group = unique_name("it_cdc_users_group");
    let orders_group = unique_name("it_cdc_orders_group");
    // The consumer folds the versions of one entity within a batch into one row change, so fewer
    // than half as many changes as events reach the CDC topics: ~27,800 events, ~12,500 changes.
    let (users, orders, seed) = (3_500, 8_000, seed());
    let start = Utc
        .with_ymd_and_hms(2026, 11, 1, 8, 0, 0)
        .single()
        .context("start time")?;
    let events: Vec<Event> = Generator::new(GeneratorConfig {
        users,
        orders,
        seed,
        start,
    })
    .collect();
    ensure!(
        events.len() >= 10_000,
        "only {} events generated",
        events.len()
    );
    let user_events = events
        .iter()
        .filter(|e| matches!(e, Event::User(_)))
        .count();

    let starts = [
        end_offsets(&pipeline.stack, CDC_USERS)?,
        end_offsets(&pipeline.stack, CDC_ORDERS)?,
    ];
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let mut producer = process::command(&pipeline.stack, &producer_bin);
    producer
        .args([
            "--users",
            &users.to_string(),
            "--orders",
            &orders.to_string(),
        ])
        .args([
            "--seed",
            &seed.to_string(),
            "--start-time",
            &start.to_rfc3339(),
        ])
        .env("USERS_TOPIC", &users_topic)
        .env("ORDERS_TOPIC", &orders_topic);
    let producer_out = Process::spawn("producer", producer)?
        .run_to_end(Duration::from_secs(600))
        .await?;
    ensure!(
        producer_out.contains(&format!("sent={0} acknowledged={0} failed=0", events.len())),
        "{producer_out}"
    );

    let mut consumer = process::command(&pipeline.stack, &consumer_bin);
    consumer
        .env("USERS_TOPIC", &users_topic)
        .env("ORDERS_TOPIC", &orders_topic)
        .env("USERS_GROUP", &users_group)
        .env("ORDERS_GROUP", &orders_group)
        .env("IDLE_TIMEOUT_SECS", "6")
        .env("PARENT_WAIT_SECS", "20");
    let consumer_out = Process::spawn("consumer", consumer)?
        .run_to_end(Duration::from_secs(900))
        .await?;
    let consumed = summary("consumer", &consumer_out);
    for (topic, count) in [
        (&users_topic, user_events),
        (&orders_topic, events.len() - user_events),
    ] {
        let counts = consumed.get(topic.as_str()).copied().unwrap_or_default();
        let count = u64::try_from(count)?;
        ensure!(
            (counts.consumed, counts.applied, counts.dead_lettered) == (count, count, 0),
            "{topic}: {counts:?}, expected {count} consumed and applied:\n{consumer_out}"
        );
    }

    let groups = [
        Pipeline::cdc_groups(),
        vec![
            group_spec(&users_group, &[&users_topic]),
            group_spec(&orders_group, &[&orders_topic]),
        ],
    ]
    .concat();
    let verified = pipeline.verify(&groups, "quorum").await?;
    let summary = stop_sink(sink).await?;
    let mut changes = 0;
    for (topic, from) in [CDC_USERS, CDC_ORDERS].iter().zip(&starts) {
        for (partition, end) in end_offsets(&pipeline.stack, topic)? {
            changes += end - from.get(&partition).copied().unwrap_or(0);
        }
    }
    eprintln!("{} events became {changes} captured changes", events.len());
    ensure!(
        changes >= 10_000,
        "only {changes} changes reached the CDC topics"
    );
    nothing_dead_lettered(&summary)?;

    // Row counts straight from both stores, then every generated entity against the model.
    let reader = pipeline.quorum();
    let (pg_users, pg_orders) = pipeline.pg_counts().await?;
    let counts = (
        reader.count(&USERS).await?,
        reader.count(&ORDERS).await?,
        reader.count(&ORDERS_BY_USER).await?,
    );
    ensure!(
        counts == (pg_users, pg_orders, pg_orders),
        "Cassandra holds (users, orders, orders_by_user) = {counts:?}, PostgreSQL {pg_users} users and {pg_orders} orders"
    );
    ensure!(verified.table("users")?.checked >= u64::try_from(users)?);
    let model = Model::from_events(&events);
    ensure!(model.users.len() == users && model.orders.len() == orders);
    model.check_cassandra(&reader).await?;

    delete_groups(&pipeline.stack, &[&users_group, &orders_group]).await;
    delete_topics_and_dead_letters(&pipeline.stack, &[&users_topic, &orders_topic]).await;
    Ok(())
}

/// Changes made by another PostgreSQL client, not by our consumer: inserts, updates, a soft
/// delete (the trigger marks the user's orders deleted), hard deletes of an order and of a user
/// with its orders, an order moved to another user, a transaction touching many rows and one row
/// twice. The verifier is clean, and the rows concerned are in Cassandra exactly as in PostgreSQL
/// (orders_by_user holds the moved order only under its new user; deleted rows are gone).
#[tokio::test(flavor = "multi_thread")]
async fn changes_made_directly_in_sql_are_replicated() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = &pipeline.pool;
    let sink = pipeline.start_sink(CDC_GROUP)?;
    // Users a–e; orders a1, a2 of a, b1 of b, c1, c2 of c, d1, d2 of d, e1–e3 of e.
    let [a, b, c, d, e] = std::array::from_fn(|_| Uuid::new_v4());
    let [a1, a2, b1, c1, c2, d1, d2] = std::array::from_fn(|_| Uuid::new_v4());
    let [e1, e2, e3] = std::array::from_fn(|_| Uuid::new_v4());

    let mut tx = pool.begin().await?;
    for (user, name) in [(a, "sql a"), (b, "sql b"), (c, "sql c"), (d, "sql d")] {
        insert_user(&mut tx, user, name).await?;
    }
    for (order, user, cents) in [
        (a1, a, 1250),
        (a2, a, 990),
        (b1, b, 100_000),
        (c1, c, 5),
        (c2, c, 4200),
        (d1, d, 1),
        (d2, d, 77),
    ] {
        insert_order(&mut tx, order, user, "sql product", cents).await?;
    }
    tx.commit().await?;
    // Updates, one statement each.
    sqlx::query(
        "UPDATE users SET name = 'sql a renamed', email = 'a.renamed@example.com', \
         updated_at = now(), version = 2 WHERE id = $1",
    )
    .bind(a)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE orders SET status = 'SHIPPED', updated_at = now(), version = 2 WHERE id = $1",
    )
    .bind(a1)
    .execute(pool)
    .await?;
    // Soft delete: the trigger marks c1 and c2 deleted at the same instant.
    sqlx::query(
        "UPDATE users SET deleted_at = now(), updated_at = now(), version = 2 WHERE id = $1",
    )
    .bind(c)
    .execute(pool)
    .await?;
    // Hard deletes: one order; one user with their orders.
    sqlx::query("DELETE FROM orders WHERE id = $1")
        .bind(a2)
        .execute(pool)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM orders WHERE user_id = $1")
        .bind(d)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(d)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // An order moves to another user.
    sqlx::query("UPDATE orders SET user_id = $2, updated_at = now(), version = 2 WHERE id = $1")
        .bind(b1)
        .bind(a)
        .execute(pool)
        .await?;
    // One transaction: a new user with three orders, one of them updated right away, one row
    // updated twice, another user renamed twice.
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, e, "sql e").await?;
    for (order, cents) in [(e1, 300), (e2, 400), (e3, 500)] {
        insert_order(&mut tx, order, e, "sql product", cents).await?;
    }
    sqlx::query(
        "UPDATE orders SET status = 'DELIVERED', updated_at = now(), version = 2 WHERE id = $1",
    )
    .bind(e1)
    .execute(&mut *tx)
    .await?;
    for (quantity, version) in [(5_i32, 3_i64), (7, 4)] {
        sqlx::query(
            "UPDATE orders SET quantity = $2, updated_at = now(), version = $3 WHERE id = $1",
        )
        .bind(a1)
        .bind(quantity)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    }
    for (name, version) in [("sql b once", 2_i64), ("sql b twice", 3)] {
        sqlx::query("UPDATE users SET name = $2, updated_at = now(), version = $3 WHERE id = $1")
            .bind(b)
            .bind(name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;

    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    let reader = pipeline.quorum();
    let user_ids = [a, b, c, d, e];
    let order_ids = [a1, a2, b1, c1, c2, d1, d2, e1, e2, e3];
    let pg_u = pg_rows(pool, &USERS, Some(&user_ids), Precision::Millis).await?;
    let pg_o = pg_rows(pool, &ORDERS, Some(&order_ids), Precision::Millis).await?;
    let user = |id: Uuid, name: &str| column(&USERS, &pg_u[&id_key(&USERS, id)], name).clone();
    let order = |id: Uuid, name: &str| column(&ORDERS, &pg_o[&id_key(&ORDERS, id)], name).clone();
    // PostgreSQL itself is as the statements say (so the comparison below means something).
    ensure!(pg_u.len() == 4 && !pg_u.contains_key(&id_key(&USERS, d)));
    ensure!(
        pg_o.len() == 7
            && !pg_o.contains_key(&id_key(&ORDERS, a2))
            && !pg_o.contains_key(&id_key(&ORDERS, d1))
    );
    ensure!(order(a1, "quantity") == Value::Int(7) && order(a1, "version") == Value::Int(4));
    ensure!(order(b1, "user_id") == Value::Uuid(a));
    ensure!(user(b, "name") == Value::Text("sql b twice".to_owned()));
    ensure!(
        user(c, "deleted_at") != Value::Null && order(c1, "deleted_at") == user(c, "deleted_at")
    );
    ensure!(order(c2, "deleted_at") == user(c, "deleted_at"));
    // Cassandra has exactly these rows, column by column.
    let mut problems = differences("user", &pg_u, &reader.rows(&USERS, &user_ids).await?);
    problems.extend(differences(
        "order",
        &pg_o,
        &reader.rows(&ORDERS, &order_ids).await?,
    ));
    let by_user = reader.rows(&ORDERS_BY_USER, &user_ids).await?;
    problems.extend(differences(
        "orders_by_user",
        &expected_orders_by_user(&pg_o),
        &by_user,
    ));
    ensure_no_differences(&problems)?;
    let owners_of_b1: Vec<&Value> = by_user
        .keys()
        .filter(|key| key.values[1] == Value::Uuid(b1))
        .map(|key| &key.values[0])
        .collect();
    ensure!(
        owners_of_b1 == vec![&Value::Uuid(a)],
        "orders_by_user lists the moved order under {owners_of_b1:?}"
    );

    let summary = stop_sink(sink).await?;
    nothing_dead_lettered(&summary)?;
    Ok(())
}

/// Values at the edges of their types, written directly in SQL: years past 9999 and before 1 AD,
/// a far-future date, a text equal to Debezium's default "unchanged TOAST" placeholder, and rows
/// of about 3 MB (a change record of an update carries twice that) are mirrored exactly. What the
/// pipeline cannot carry — ±infinity timestamps and dates, a NaN amount, a row above 4 MiB of
/// text — PostgreSQL refuses, naming the constraint; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn edge_values_are_mirrored_exactly_or_refused_by_postgresql() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = &pipeline.pool;
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let (u, o) = (Uuid::new_v4(), Uuid::new_v4());
    let big = "é".repeat(1_500_000); // 3,000,000 bytes
    sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at, deleted_at, version) \
         VALUES ($1, $2, $3, '0044-03-15 12:00:00.123456+00 BC', '10000-06-01 00:00:00+00', \
                 NULL, 1)",
    )
    .bind(u)
    .bind(cdc_core::debezium::UNAVAILABLE)
    .bind(&big)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, product, quantity, amount, status, order_date, \
         created_at, updated_at, deleted_at, version) \
         VALUES ($1, $2, $3, 1, 0.01, 'PLACED', '20000-01-01', now(), now(), NULL, 1)",
    )
    .bind(o)
    .bind(u)
    .bind(&big)
    .execute(pool)
    .await?;
    // An update: its change record carries the 3 MB row twice.
    sqlx::query("UPDATE orders SET status = 'SHIPPED', version = 2 WHERE id = $1")
        .bind(o)
        .execute(pool)
        .await?;
    let refused = [
        (
            "UPDATE users SET updated_at = 'infinity' WHERE id = $1",
            "users_values_mirrorable",
        ),
        (
            "UPDATE users SET created_at = '-infinity' WHERE id = $1",
            "users_values_mirrorable",
        ),
        (
            "UPDATE orders SET order_date = 'infinity' WHERE user_id = $1",
            "orders_values_mirrorable",
        ),
        (
            "UPDATE orders SET amount = 'NaN' WHERE user_id = $1",
            "orders_values_mirrorable",
        ),
        (
            "UPDATE users SET email = repeat('x', 4194305) WHERE id = $1",
            "users_row_size_mirrorable",
        ),
    ];
    for (statement, constraint) in refused {
        match sqlx::query(statement).bind(u).execute(pool).await {
            Err(sqlx::Error::Database(error)) => ensure!(
                error.code().as_deref() == Some("23514") && error.constraint() == Some(constraint),
                "`{statement}` failed otherwise: {error}"
            ),
            other => anyhow::bail!("`{statement}` was not refused: {other:?}"),
        }
    }
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    let reader = pipeline.quorum();
    let mut problems = differences(
        "user",
        &pg_rows(pool, &USERS, Some(&[u]), Precision::Millis).await?,
        &reader.rows(&USERS, &[u]).await?,
    );
    problems.extend(differences(
        "order",
        &pg_rows(pool, &ORDERS, Some(&[o]), Precision::Millis).await?,
        &reader.rows(&ORDERS, &[o]).await?,
    ));
    ensure_no_differences(&problems)?;
    let summary = stop_sink(sink).await?;
    nothing_dead_lettered(&summary)?;
    Ok(())
}

/// After a clean verify, cdcconsumer with a fresh group reads the CDC topics again from the
/// earliest offset: every record is consumed, Cassandra's contents (values and write times) are
/// exactly as before, and the verifier is clean.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_from_the_earliest_offset_changes_nothing() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let history =
        records_in(&pipeline.stack, CDC_USERS)? + records_in(&pipeline.stack, CDC_ORDERS)?;
    if history > REPLAY_LIMIT {
        eprintln!(
            "skipped: the CDC topics hold {history} records (a week of history), more than a \
             replay in a test can read; a fresh stack (stack.sh down --wipe; up) replays in seconds"
        );
        return Ok(());
    }
    // A few changes of our own, so that the topics are never empty.
    let writer = SqlWriter::start(pipeline.pool.clone(), 20, Duration::ZERO);
    writer.wait_rounds(20, Duration::from_secs(60)).await?;
    let written = writer.finish().await?;
    pipeline.catch_up().await?;
    let reader = pipeline.quorum();
    written.check_cassandra(&reader).await?;
    let before = reader.snapshot().await?;
    let records =
        records_in(&pipeline.stack, CDC_USERS)? + records_in(&pipeline.stack, CDC_ORDERS)?;
    let rows = |table: &str| before.tables.get(table).map_or(0, BTreeMap::len);
    eprintln!(
        "replaying {records} records over {} users, {} orders",
        rows("users"),
        rows("orders")
    );

    let group = unique_name("it_cdc_replay");
    let replay = pipeline.start_sink(&group)?;
    let outcome = async {
        pipeline
            .verify(&[group_spec(&group, &[CDC_USERS, CDC_ORDERS])], "quorum")
            .await?;
        let summary = stop_sink(replay).await?;
        let consumed: u64 = summary.values().map(|c| c.consumed).sum();
        ensure!(
            consumed >= records,
            "the replay consumed {consumed} of {records} records: {summary:?}"
        );
        let after = reader.snapshot().await?;
        let mut problems = Vec::new();
        for (table, rows) in &before.tables {
            let empty = BTreeMap::new();
            let now = after.tables.get(table).unwrap_or(&empty);
            problems.extend(differences(table, rows, now));
        }
        ensure_no_differences(&problems)?;
        ensure!(before == after);
        Ok(())
    }
    .await;
    delete_groups(&pipeline.stack, &[&group]).await;
    outcome
}

/// Kafka Connect is SIGKILLed while a SQL client keeps writing, and started again: Debezium
/// resumes from its last flushed offset (redelivering what it had not flushed), and Cassandra ends
/// exactly as PostgreSQL — every row the client wrote at its final version.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_connect_killed_mid_stream_then_restarted_loses_nothing() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let starts = [
        end_offsets(&pipeline.stack, CDC_USERS)?,
        end_offsets(&pipeline.stack, CDC_ORDERS)?,
    ];
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let writer = SqlWriter::start(pipeline.pool.clone(), 5_000, Duration::from_millis(40));
    // Changes flow end to end before the fault.
    let reader = pipeline.quorum();
    let first = writer.ids.user(10);
    wait_for(
        "the writer's rows to reach Cassandra",
        Duration::from_secs(120),
        || async { Ok((!reader.rows(&USERS, &[first]).await?.is_empty()).then_some(())) },
    )
    .await?;
    let mut restart = RestartOnDrop::new();
    restart.take_down("kill", "connect")?;
    let at_kill = writer.rounds();
    writer
        .wait_rounds(at_kill + 100, Duration::from_secs(60))
        .await?;
    tokio::task::block_in_place(|| restart.bring_back("connect"))?;
    let at_restart = writer.rounds();
    writer
        .wait_rounds(at_restart + 50, Duration::from_secs(60))
        .await?;
    let written = writer.finish().await?;
    eprintln!(
        "Connect killed after {at_kill} rounds, back after {at_restart}, {} rounds in all",
        written.users.len()
    );

    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    stop_sink(sink).await?;
    written.check_cassandra(&reader).await?;
    let mut redelivered = 0;
    for (topic, from) in [CDC_USERS, CDC_ORDERS].iter().zip(&starts) {
        let mut seen = BTreeSet::new();
        for record in records_since(&pipeline.stack, topic, from)? {
            let position = json_value(&record).map(|v| {
                let payload = &v["payload"];
                (
                    payload["source"]["lsn"].to_string(),
                    payload["op"].to_string(),
                    payload["after"]["id"].to_string(),
                    payload["before"]["id"].to_string(),
                )
            });
            if let Some(position) = position {
                if !seen.insert(position) {
                    redelivered += 1;
                }
            }
        }
    }
    eprintln!("changes Debezium delivered twice across the restart: {redelivered}");
    Ok(())
}

/// cdcconsumer is SIGKILLed while it applies a backlog of several thousand changes (no draining,
/// no final commit), then started again: it re-reads from its last commit and Cassandra ends
/// exactly as PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn cdcconsumer_killed_mid_backlog_then_restarted_ends_exact() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = &pipeline.pool;
    let starts = [
        end_offsets(&pipeline.stack, CDC_USERS)?,
        end_offsets(&pipeline.stack, CDC_ORDERS)?,
    ];
    let ids = Ids::new();
    let (user_count, deleted_users) = (1_500, 150);
    let users: Vec<Uuid> = (0..user_count).map(|n| ids.user(n)).collect();
    let orders: Vec<Uuid> = (0..user_count)
        .flat_map(|n| [ids.order(n, 0), ids.order(n, 1)])
        .collect();
    let owners: Vec<Uuid> = (0..user_count).flat_map(|n| [users[n], users[n]]).collect();
    let mut written = Written::default();
    sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at, deleted_at, version) \
         SELECT u.id, 'backlog user ' || u.n, 'backlog' || u.n || '@example.com', now(), now(), NULL, 1 \
         FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)",
    )
    .bind(&users)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, product, quantity, amount, status, order_date, \
         created_at, updated_at, deleted_at, version) \
         SELECT o.id, o.user_id, 'backlog product ' || o.n, 1 + o.n % 5, (o.n % 10000) * 0.01 + 1, \
         'PLACED', CURRENT_DATE, now(), now(), NULL, 1 \
         FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS o(id, user_id, n)",
    )
    .bind(&orders)
    .bind(&owners)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE orders SET status = 'SHIPPED', quantity = quantity + 1, updated_at = now(), \
         version = 2 WHERE id = ANY($1)",
    )
    .bind(&orders)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE users SET deleted_at = now(), updated_at = now(), version = 2 WHERE id = ANY($1)",
    )
    .bind(&users[..deleted_users])
    .execute(pool)
    .await?;
    for user in &users {
        written.users.insert(*user, (1, false));
    }
    for (order, owner) in orders.iter().zip(&owners) {
        written.orders.insert(*order, (*owner, 2, false));
    }
    for user in &users[..deleted_users] {
        written.soft_delete_user(*user);
    }
    // The last changes are in Kafka: the whole backlog waits for cdcconsumer.
    wait_captured(
        &pipeline.stack,
        CDC_USERS,
        &starts[0],
        &[(users[deleted_users - 1], "u")],
    )
    .await?;
    let backlog = records_since(&pipeline.stack, CDC_USERS, &starts[0])?.len()
        + records_since(&pipeline.stack, CDC_ORDERS, &starts[1])?.len();
    eprintln!("backlog of {backlog} changes");

    let reader = pipeline.quorum();
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let sample: Vec<Uuid> = orders.iter().step_by(40).copied().collect();
    wait_for(
        "cdcconsumer to write part of the backlog",
        Duration::from_secs(120),
        || async { Ok((!reader.rows(&ORDERS, &sample).await?.is_empty()).then_some(())) },
    )
    .await?;
    sink.kill()?;
    let at_kill = reader.rows(&ORDERS, &orders).await?;
    let final_at_kill = at_kill
        .values()
        .filter(|row| *column(&ORDERS, row, "version") == Value::Int(2))
        .count();
    eprintln!(
        "killed with {} of {} orders in Cassandra, {final_at_kill} at their final version",
        at_kill.len(),
        orders.len()
    );
    ensure!(
        final_at_kill < orders.len(),
        "cdcconsumer had applied the whole backlog before it was killed"
    );

    let sink = pipeline.start_sink(CDC_GROUP)?;
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    stop_sink(sink).await?;
    written.check_cassandra(&reader).await?;
    Ok(())
}

/// Rows changed several times in one transaction reach cdcconsumer side by side, so a batch
/// holds a row's creation, update and last change together: only each row's newest write is sent
/// (the others are counted in `cdc_writes_left_out_total`), and Cassandra still ends exactly as
/// PostgreSQL — every surviving order at its last version and status, every deleted one gone from
/// `orders` and `orders_by_user`, as the test wrote them.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_changed_again_in_one_batch_is_written_once_and_ends_exact() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = &pipeline.pool;
    // Whatever the group has not applied yet is applied first: the sink counted below reads this
    // test's changes alone.
    pipeline.catch_up().await?;
    let starts = end_offsets(&pipeline.stack, CDC_ORDERS)?;
    let user = Uuid::new_v4();
    let orders: Vec<Uuid> = (0..60).map(|_| Uuid::new_v4()).collect();
    let mut written = Written::default();
    let mut deleted = Vec::new();
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, user, "rewritten user").await?;
    written.users.insert(user, (1, false));
    for (n, order) in (0_i64..).zip(&orders) {
        insert_order(&mut tx, *order, user, "rewritten product", 100 + n).await?;
        sqlx::query(
            "UPDATE orders SET status = 'SHIPPED', updated_at = now(), version = 2 WHERE id = $1",
        )
        .bind(order)
        .execute(&mut *tx)
        .await?;
        if n % 3 == 0 {
            sqlx::query("DELETE FROM orders WHERE id = $1")
                .bind(order)
                .execute(&mut *tx)
                .await?;
            deleted.push(*order);
        } else {
            sqlx::query(
                "UPDATE orders SET status = 'DELIVERED', updated_at = now(), version = 3 \
                 WHERE id = $1",
            )
            .bind(order)
            .execute(&mut *tx)
            .await?;
            written.orders.insert(*order, (user, 3, false));
        }
    }
    tx.commit().await?;
    let last = orders[orders.len() - 1];
    wait_captured(&pipeline.stack, CDC_ORDERS, &starts, &[(last, "u")]).await?;

    // Started on the backlog: each partition's changes of the transaction come in one fetch.
    let address = process::free_address()?;
    let mut command = pipeline.cdcconsumer(CDC_GROUP, 0)?;
    command.env("METRICS_ADDR", &address);
    let sink = Process::spawn("cdcconsumer", command)?;
    let outcome = async {
        pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
        let (_, metrics) = process::http_get(&address, "/metrics").await?;
        let series = format!("cdc_writes_left_out_total{{topic=\"{CDC_ORDERS}\"}} ");
        let left_out: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no {series} in\n{metrics}"))?;
        // Per order, its creation and first update (two rows each) at most.
        eprintln!("{left_out} writes left out of {}", orders.len() * 3 * 2);
        ensure!(
            (1..=orders.len() as u64 * 4).contains(&left_out),
            "{left_out} writes left out"
        );
        anyhow::Ok(())
    }
    .await;
    stop_sink(sink).await?;
    outcome?;
    let reader = pipeline.quorum();
    written.check_cassandra(&reader).await?;
    ensure!(
        reader.rows(&ORDERS, &deleted).await?.is_empty(),
        "deleted orders are still in Cassandra"
    );
    let by_user = reader.rows(&ORDERS_BY_USER, &[user]).await?;
    ensure!(
        by_user.len() == written.orders.len(),
        "orders_by_user holds {} orders of the user, not {}",
        by_user.len(),
        written.orders.len()
    );
    Ok(())
}

/// One Cassandra node is stopped while changes flow, and started again: writes at QUORUM go on
/// with two replicas, and once the node is back (Up/Normal) every replica agrees — the verifier is
/// clean at ALL, and every row the client wrote is there at ALL.
#[tokio::test(flavor = "multi_thread")]
async fn a_cassandra_node_stopped_during_the_run_converges_once_back() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    if !pipeline.stack.is_ha() {
        eprintln!("skipped: needs the ha profile (3 Cassandra nodes)");
        return Ok(());
    }
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let writer = SqlWriter::start(pipeline.pool.clone(), 5_000, Duration::from_millis(40));
    let quorum = pipeline.quorum();
    let first = writer.ids.user(5);
    wait_for(
        "the writer's rows to reach Cassandra",
        Duration::from_secs(120),
        || async { Ok((!quorum.rows(&USERS, &[first]).await?.is_empty()).then_some(())) },
    )
    .await?;
    let mut restart = RestartOnDrop::new();
    restart.take_down("stop", "cassandra3")?;
    // Rows written after the stop reach Cassandra with one replica down.
    let at_stop = writer.rounds();
    let while_down = writer.ids.user(at_stop + 30);
    writer
        .wait_rounds(at_stop + 31, Duration::from_secs(60))
        .await?;
    wait_for(
        "rows written while a node is down to reach Cassandra at QUORUM",
        Duration::from_secs(120),
        || async { Ok((!quorum.rows(&USERS, &[while_down]).await?.is_empty()).then_some(())) },
    )
    .await?;
    tokio::task::block_in_place(|| restart.bring_back("cassandra3"))?;
    let at_back = writer.rounds();
    writer
        .wait_rounds(at_back + 30, Duration::from_secs(60))
        .await?;
    let written = writer.finish().await?;
    eprintln!(
        "cassandra3 stopped after {at_stop} rounds, back after {at_back}, {} rounds in all",
        written.users.len()
    );

    pipeline.verify(&Pipeline::cdc_groups(), "all").await?;
    stop_sink(sink).await?;
    written
        .check_cassandra(&CassandraReader::new(
            &pipeline.cassandra,
            KEYSPACE,
            Consistency::All,
        ))
        .await?;
    Ok(())
}

/// A keyspace filled from another PostgreSQL cluster (another system identifier recorded), or
/// holding a truncation position beyond the source's WAL (left from an earlier cluster, or
/// forged), would hide every later change: cdcconsumer refuses to start on it, within seconds,
/// naming the problem. Each case runs on a scratch keyspace of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyspace_from_another_cluster_is_refused_at_start() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let cases = [
        (
            "INSERT INTO {ks}.source (name, system_identifier) VALUES ('postgresql', 42)",
            "was filled from PostgreSQL cluster 42",
        ),
        (
            "INSERT INTO {ks}.truncations (table_name, lsn) VALUES ('orders', 4611686018427387904) \
             USING TIMESTAMP 4611686018427387904",
            "records a truncation of orders at LSN 4611686018427387904",
        ),
    ];
    for (forged, expected) in cases {
        let keyspace = unique_name("it_foreign");
        cdcconsumer::cassandra::apply_schema(&pipeline.cassandra, &keyspace).await?;
        let rf = pipeline.stack.cassandra_nodes.len();
        if rf != 3 {
            let alter = format!(
                "ALTER KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
            );
            pipeline.cassandra.query_unpaged(alter, ()).await?;
        }
        let outcome = async {
            // A replica that has not yet learned the new tables refuses the write
            // (INCOMPATIBLE_SCHEMA) even after the coordinator reported agreement: retry.
            let statement = forged.replace("{ks}", &keyspace);
            wait_for("the forged row", Duration::from_secs(60), || async {
                pipeline.cassandra.await_schema_agreement().await?;
                pipeline
                    .cassandra
                    .query_unpaged(statement.as_str(), ())
                    .await?;
                Ok(Some(()))
            })
            .await?;
            let mut command = pipeline.cdcconsumer(&unique_name("it_foreign_group"), 5)?;
            command.env("CASSANDRA_KEYSPACE", &keyspace);
            let log = Process::spawn("cdcconsumer", command)?
                .expect_failure(Duration::from_secs(60))
                .await?;
            ensure!(
                log.contains(expected),
                "`{expected}` not in the log:\n{log}"
            );
            ensure!(
                log.contains("A re-initialised database"),
                "no pointer to the reset:\n{log}"
            );
            Ok(())
        }
        .await;
        let drop = format!("DROP KEYSPACE IF EXISTS {keyspace}");
        pipeline.cassandra.query_unpaged(drop, ()).await?;
        outcome?;
    }
    Ok(())
}

/// A truncate record of `change`'s table at `lsn`, as Debezium would write it.
fn forged_truncate(change: &Json, lsn: i64) -> Option<Vec<u8>> {
    let mut record = change.clone();
    let payload = &mut record["payload"];
    payload["op"] = Json::from("t");
    payload["before"] = Json::Null;
    payload["after"] = Json::Null;
    payload["source"]["lsn"] = Json::from(lsn);
    Some(record.to_string().into_bytes())
}

/// A record that cannot be applied, the dead-letter reason it must get.
struct Hostile {
    topic: &'static str,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    reason: &'static str,
}

/// Hostile records produced straight into the CDC topics, between valid changes made in SQL on
/// the same partition: each lands in `<topic>.dlq` with its reason and source topic, partition and
/// offset; a tombstone is ignored; the valid changes before and after are applied (verifier clean);
/// cdcconsumer neither crashes nor stalls — it goes idle and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_cdc_records_are_dead_lettered_and_valid_changes_applied() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = &pipeline.pool;
    // Start from a quiet pipeline so that this test's cdcconsumer run sees only its own records.
    pipeline.catch_up().await?;

    let starts = [
        end_offsets(&pipeline.stack, CDC_USERS)?,
        end_offsets(&pipeline.stack, CDC_ORDERS)?,
    ];
    let (h, h1, i) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, h, "hostile h").await?;
    insert_order(&mut tx, h1, h, "hostile product", 4321).await?;
    tx.commit().await?;
    let users_before = wait_captured(&pipeline.stack, CDC_USERS, &starts[0], &[(h, "c")]).await?;
    let orders_before =
        wait_captured(&pipeline.stack, CDC_ORDERS, &starts[1], &[(h1, "c")]).await?;
    let user_record = find_change(&users_before, h, "c").context("h's insert")?;
    let order_record = find_change(&orders_before, h1, "c").context("h1's insert")?;
    let user_json = json_value(user_record).context("h's insert as JSON")?;
    let order_json = json_value(order_record).context("h1's insert as JSON")?;
    let user_key = user_record.key().map(<[u8]>::to_vec);
    let order_key = order_record.key().map(<[u8]>::to_vec);
    let edit = |json: &Json, path: &[&str], value: Option<Json>| -> Option<Vec<u8>> {
        let mut json = json.clone();
        let mut cursor = &mut json;
        for step in &path[..path.len() - 1] {
            cursor = &mut cursor[*step];
        }
        let last = path[path.len() - 1];
        match value {
            Some(value) => cursor[last] = value,
            None => {
                if let Some(object) = cursor.as_object_mut() {
                    object.remove(last);
                }
            }
        }
        Some(json.to_string().into_bytes())
    };
    let user = |payload: Option<Vec<u8>>, reason| Hostile {
        topic: CDC_USERS,
        key: user_key.clone(),
        payload,
        reason,
    };
    let order = |payload: Option<Vec<u8>>, reason| Hostile {
        topic: CDC_ORDERS,
        key: order_key.clone(),
        payload,
        reason,
    };
    let hostile = vec![
        user(Some(b"{\"schema\": {\"type\": ".to_vec()), "undecodable"),
        user(Some(b"[1, 2, 3]".to_vec()), "not_an_envelope"),
        user(
            edit(&user_json, &["payload", "op"], Some("x".into())),
            "unknown_op",
        ),
        user(
            edit(&user_json, &["payload", "after"], Some(Json::Null)),
            "missing_image",
        ),
        user(
            edit(
                &user_json,
                &["payload", "after", "id"],
                Some("not-a-uuid".into()),
            ),
            "bad_value",
        ),
        user(
            edit(
                &user_json,
                &["payload", "after", "version"],
                Some("seven".into()),
            ),
            "bad_value",
        ),
        user(
            edit(&user_json, &["payload", "after", "email"], None),
            "missing_column",
        ),
        user(
            edit(&user_json, &["payload", "source", "lsn"], None),
            "no_position",
        ),
        user(
            edit(
                &user_json,
                &["payload", "source", "table"],
                Some("invoices".into()),
            ),
            "unknown_table",
        ),
        Hostile {
            topic: CDC_USERS,
            key: None,
            payload: None,
            reason: "not_an_envelope",
        },
        order(
            edit(
                &order_json,
                &["payload", "after", "quantity"],
                Some("three".into()),
            ),
            "bad_value",
        ),
        order(
            edit(
                &order_json,
                &["payload", "after", "order_date"],
                Some("yesterday".into()),
            ),
            "bad_value",
        ),
        order(
            edit(
                &order_json,
                &["payload", "after", "user_id"],
                Some(12345.into()),
            ),
            "bad_value",
        ),
        order(
            edit(&order_json, &["payload", "after"], Some(Json::Null)),
            "missing_image",
        ),
        order(
            Some(b"{\"payload\": {\"op\": \"c\"".to_vec()),
            "undecodable",
        ),
        // Positions that cannot be real: beyond PostgreSQL's WAL, they would shadow every later
        // change of the row, or (a truncation) of the whole table.
        user(
            edit(
                &user_json,
                &["payload", "source", "lsn"],
                Some(9_000_000_000_000_000_i64.into()),
            ),
            "impossible_position",
        ),
        order(
            forged_truncate(&order_json, 9_000_000_000_000_000),
            "impossible_position",
        ),
    ];
    let producer = producer(&pipeline.stack)?;
    let mut placed = Vec::new();
    for record in &hostile {
        let partition = if record.topic == CDC_USERS {
            user_record.partition()
        } else {
            order_record.partition()
        };
        let (_, offset) = send_raw(
            &producer,
            record.topic,
            Some(partition),
            record.key.as_deref(),
            record.payload.as_deref(),
        )
        .await?;
        placed.push((record.topic, partition, offset, record.reason));
    }
    // A tombstone for a live row: nothing to do, not an error.
    let (_, tombstone) = send_raw(
        &producer,
        CDC_USERS,
        Some(user_record.partition()),
        user_key.as_deref(),
        None,
    )
    .await?;

    // Valid changes after the hostile ones, on the same partitions (same keys).
    sqlx::query(
        "UPDATE users SET name = 'hostile h renamed', updated_at = now(), version = 2 WHERE id = $1",
    )
    .bind(h)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE orders SET status = 'SHIPPED', updated_at = now(), version = 2 WHERE id = $1",
    )
    .bind(h1)
    .execute(pool)
    .await?;
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, i, "hostile i").await?;
    tx.commit().await?;
    let users_after = wait_captured(
        &pipeline.stack,
        CDC_USERS,
        &starts[0],
        &[(h, "u"), (i, "c")],
    )
    .await?;
    let orders_after = wait_captured(&pipeline.stack, CDC_ORDERS, &starts[1], &[(h1, "u")]).await?;
    for (records, id, before, topic) in [
        (&users_after, h, user_record, CDC_USERS),
        (&orders_after, h1, order_record, CDC_ORDERS),
    ] {
        let after = find_change(records, id, "u").context("update record")?;
        ensure!(after.partition() == before.partition());
        let hostile_offsets: Vec<i64> = placed
            .iter()
            .filter(|p| p.0 == topic)
            .map(|p| p.2)
            .collect();
        ensure!(
            hostile_offsets
                .iter()
                .all(|o| *o > before.offset() && *o < after.offset()),
            "{topic}: hostile offsets {hostile_offsets:?} not between {} and {}",
            before.offset(),
            after.offset()
        );
    }

    let summary = pipeline
        .run_sink_until_idle(5, Duration::from_secs(180))
        .await?;
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    let reader = pipeline.quorum();
    ensure_no_differences(&differences(
        "user",
        &pg_rows(pool, &USERS, Some(&[h, i]), Precision::Millis).await?,
        &reader.rows(&USERS, &[h, i]).await?,
    ))?;
    let h_row = reader.rows(&USERS, &[h]).await?;
    ensure!(
        h_row
            .get(&id_key(&USERS, h))
            .map(|row| column(&USERS, row, "version"))
            == Some(&Value::Int(2))
    );
    ensure_no_differences(&differences(
        "order",
        &pg_rows(pool, &ORDERS, Some(&[h1]), Precision::Millis).await?,
        &reader.rows(&ORDERS, &[h1]).await?,
    ))?;

    // Every hostile record is in its dead-letter topic with its reason and source position.
    for topic in [CDC_USERS, CDC_ORDERS] {
        let dlq = cdc_core::dlq::topic_for(topic);
        let mut parked: BTreeMap<(i32, i64), String> = BTreeMap::new();
        for letter in dead_letters(&pipeline.stack, &dlq)? {
            ensure!(letter.source_topic == topic, "{letter:?}");
            parked.insert(
                (letter.source_partition, letter.source_offset),
                letter.reason,
            );
        }
        if topic == CDC_USERS {
            let position = (user_record.partition(), tombstone);
            ensure!(
                !parked.contains_key(&position),
                "the tombstone at {position:?} was dead-lettered as {:?}",
                parked.get(&position)
            );
        }
        for (_, partition, offset, reason) in placed.iter().filter(|p| p.0 == topic) {
            ensure!(
                parked.get(&(*partition, *offset)).map(String::as_str) == Some(*reason),
                "{topic} partition {partition} offset {offset}: expected reason {reason}, \
                 dead-lettered as {:?}",
                parked.get(&(*partition, *offset))
            );
        }
    }
    // cdcconsumer's own account: every hostile record counted as dead-lettered, once.
    let expected = |topic: &str| {
        u64::try_from(placed.iter().filter(|p| p.0 == topic).count()).unwrap_or(u64::MAX)
    };
    for topic in [CDC_USERS, CDC_ORDERS] {
        let counts = summary.get(topic).copied().unwrap_or_default();
        ensure!(
            counts.dead_lettered == expected(topic),
            "{topic}: {counts:?}, expected {} dead-lettered",
            expected(topic)
        );
        ensure!(
            counts.consumed == counts.applied + counts.dead_lettered,
            "{topic}: {counts:?}"
        );
    }
    Ok(())
}

/// `TRUNCATE orders, users` in PostgreSQL (captured as op `t`), then new rows: Cassandra loses
/// every row older than the truncation and holds exactly the new ones; the verifier is clean.
///
/// Named to run last: the truncation leaves a tombstone in Cassandra for every row it removes,
/// which the full-table scans of later tests would have to read past.
#[tokio::test(flavor = "multi_thread")]
async fn truncate_in_postgres_empties_cassandra_then_new_rows_follow() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = &pipeline.pool;
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let [g, g1, f, f1, f2] = std::array::from_fn(|_| Uuid::new_v4());
    // At least one row of each table to remove, whatever earlier tests left.
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, g, "before truncate").await?;
    insert_order(&mut tx, g1, g, "before truncate", 1000).await?;
    tx.commit().await?;
    let (users_before, orders_before) = pipeline.pg_counts().await?;

    sqlx::query("TRUNCATE orders, users").execute(pool).await?;
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, f, "after truncate").await?;
    insert_order(&mut tx, f1, f, "after truncate", 1999).await?;
    insert_order(&mut tx, f2, f, "after truncate", 2999).await?;
    tx.commit().await?;
    sqlx::query(
        "UPDATE orders SET status = 'CANCELLED', updated_at = now(), version = 2 WHERE id = $1",
    )
    .bind(f2)
    .execute(pool)
    .await?;

    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    let summary = stop_sink(sink).await?;
    nothing_dead_lettered(&summary)?;
    eprintln!("truncated {users_before} users and {orders_before} orders");
    ensure!(pipeline.pg_counts().await? == (1, 2));
    let reader = pipeline.quorum();
    let counts = (
        reader.count(&USERS).await?,
        reader.count(&ORDERS).await?,
        reader.count(&ORDERS_BY_USER).await?,
    );
    ensure!(
        counts == (1, 2, 2),
        "after TRUNCATE Cassandra holds (users, orders, orders_by_user) = {counts:?}"
    );
    let mut problems = differences(
        "user",
        &pg_rows(pool, &USERS, Some(&[f]), Precision::Millis).await?,
        &reader.rows(&USERS, &[f, g]).await?,
    );
    problems.extend(differences(
        "order",
        &pg_rows(pool, &ORDERS, Some(&[f1, f2]), Precision::Millis).await?,
        &reader.rows(&ORDERS, &[f1, f2, g1]).await?,
    ));
    let by_user_key = |user: Uuid, order: Uuid| Key {
        values: vec![Value::Uuid(user), Value::Uuid(order)],
        names: ORDERS_BY_USER.key,
    };
    problems.extend(differences(
        "orders_by_user",
        &BTreeMap::from([
            (by_user_key(f, f1), Value::Int(1)),
            (by_user_key(f, f2), Value::Int(2)),
        ]),
        &reader
            .rows(&ORDERS_BY_USER, &[f, g])
            .await?
            .into_iter()
            .map(|(key, row)| (key, column(&ORDERS_BY_USER, &row, "version").clone()))
            .collect(),
    ));
    ensure_no_differences(&problems)?;
    Ok(())
}

/// A slot that held more WAL than `max_slot_wal_keep_size` is invalidated by PostgreSQL (on a
/// scratch cluster: the stack's slot must stay intact). The running sink notices within its
/// check interval — `/readyz` 503 naming the slot and pointing at the recovery,
/// `cdc_replication_slot_lost` 1 — and the verifier refuses to call the pipeline quiet, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalidated_replication_slot_is_reported_loudly() -> Result<()> {
    let _shared = stack_tests::shared().await;
    let pipeline = Pipeline::new().await?;
    let scratch = stack_tests::scratch::ScratchPostgres::start(&[
        ("wal_level", "logical"),
        ("max_slot_wal_keep_size", "1MB"),
        ("min_wal_size", "32MB"),
        ("max_wal_size", "32MB"),
    ])
    .await?;
    let pool = sqlx::PgPool::connect(&scratch.url).await?;
    sqlx::query("SELECT pg_create_logical_replication_slot('it_slot', 'pgoutput')")
        .execute(&pool)
        .await?;
    ensure!(matches!(
        cdcconsumer::slot::slot_state(&pool, "it_slot").await?,
        cdcconsumer::slot::SlotState::Healthy { .. }
    ));

    // The sink, on empty topics of its own and a keyspace of its own, watching the scratch slot.
    let keyspace = unique_name("it_slot");
    cdcconsumer::cassandra::apply_schema(&pipeline.cassandra, &keyspace).await?;
    let topics = [unique_name("it_slot_users"), unique_name("it_slot_orders")];
    let rf = i32::try_from(pipeline.stack.broker_count)?;
    cdc_core::topics::ensure_topics(
        &pipeline.stack.brokers,
        &[
            cdc_core::topics::TopicSpec::new(&topics[0], 1, rf),
            cdc_core::topics::TopicSpec::new(&topics[1], 1, rf),
        ],
        Duration::from_secs(30),
    )
    .await?;
    let address = process::free_address()?;
    let mut command = pipeline.cdcconsumer(&unique_name("it_slot_group"), 0)?;
    command
        .env("CASSANDRA_KEYSPACE", &keyspace)
        .env("CDC_TOPICS", topics.join(","))
        .env("DATABASE_URL", &scratch.url)
        .env("SLOT_NAME", "it_slot")
        .env("SLOT_CHECK_SECS", "1")
        .env("METRICS_ADDR", &address);
    let sink = Process::spawn("cdcconsumer", command)?;
    let outcome = async {
        wait_for("the sink ready", Duration::from_secs(60), || async {
            Ok(match process::http_get(&address, "/readyz").await {
                Ok((200, _)) => Some(()),
                _ => None,
            })
        })
        .await?;

        // WAL well past 1 MB beyond the slot, then checkpoints: PostgreSQL invalidates it.
        sqlx::raw_sql(
            "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad \
               FROM generate_series(1, 100000) g",
        )
        .execute(&pool)
        .await?;
        wait_for("the slot invalidated", Duration::from_secs(60), || async {
            sqlx::raw_sql("SELECT pg_switch_wal(); CHECKPOINT;")
                .execute(&pool)
                .await?;
            Ok(matches!(
                cdcconsumer::slot::slot_state(&pool, "it_slot").await?,
                cdcconsumer::slot::SlotState::Lost { .. }
            )
            .then_some(()))
        })
        .await?;

        let body = wait_for(
            "/readyz to name the lost slot",
            Duration::from_secs(30),
            || async {
                Ok(match process::http_get(&address, "/readyz").await {
                    Ok((503, body)) if body.contains("it_slot was invalidated") => Some(body),
                    _ => None,
                })
            },
        )
        .await?;
        ensure!(body.contains("A lost replication slot"), "{body}");
        let (_, metrics) = process::http_get(&address, "/metrics").await?;
        ensure!(metrics.contains("cdc_replication_slot_lost 1"), "{metrics}");

        // The verifier: not quiet, and why.
        let output = tokio::process::Command::new(workspace_binary("cdcconsumer")?)
            .arg("verify")
            .args([
                "--groups",
                "",
                "--slot",
                "it_slot",
                "--quiet-timeout-secs",
                "20",
            ])
            .env("DATABASE_URL", &scratch.url)
            .env("KAFKA_BROKERS", &pipeline.stack.brokers)
            .env("CASSANDRA_NODES", pipeline.stack.cassandra_nodes.join(","))
            .env("CASSANDRA_KEYSPACE", &keyspace)
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(
            output.status.code() == Some(2) && text.contains("it_slot was invalidated"),
            "verify exited {:?}:\n{text}",
            output.status
        );
        Ok(())
    }
    .await;
    let stopped = sink.terminate().await;
    let drop = format!("DROP KEYSPACE IF EXISTS {keyspace}");
    pipeline.cassandra.query_unpaged(drop, ()).await?;
    let dlqs = topics.iter().map(|t| cdc_core::dlq::topic_for(t));
    let all: Vec<String> = topics.iter().cloned().chain(dlqs).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    stack_tests::kafka::delete_topics(&pipeline.stack, &all).await;
    outcome?;
    stopped?;
    Ok(())
}

/// cdcconsumer starting while a Cassandra node hangs (SIGSTOP): its start-up reads that land on
/// that node time out, and are retried on the others instead of ending the process (a chaos run
/// found the sink exiting 1 on "reading truncation positions" after a 10 s client timeout). It
/// becomes ready and mirrors a new row at QUORUM while the node still hangs.
#[tokio::test(flavor = "multi_thread")]
async fn the_sink_starts_while_a_cassandra_node_hangs() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    if !pipeline.stack.is_ha() {
        eprintln!("skipped: needs three Cassandra nodes (the ha profile)");
        return Ok(());
    }
    let mut restore = RestartOnDrop::new();
    restore.take_down("pause", "cassandra2")?;
    let address = process::free_address()?;
    let mut command = pipeline.cdcconsumer(CDC_GROUP, 0)?;
    command.env("METRICS_ADDR", &address);
    let sink = Process::spawn("cdcconsumer", command)?;
    let user = Uuid::new_v4();
    let outcome = async {
        wait_for("the sink ready", Duration::from_secs(180), || async {
            Ok(match process::http_get(&address, "/readyz").await {
                Ok((200, _)) => Some(()),
                _ => None,
            })
        })
        .await?;
        let mut connection = pipeline.pool.acquire().await?;
        insert_user(&mut connection, user, &unique_name("hung node")).await?;
        let reader = pipeline.quorum();
        wait_for("the row in Cassandra", Duration::from_secs(120), || async {
            Ok((reader.rows(&USERS, &[user]).await?.len() == 1).then_some(()))
        })
        .await
    }
    .await;
    restore.bring_back("cassandra2")?;
    let summary = stop_sink(sink).await;
    outcome?;
    nothing_dead_lettered(&summary?)?;
    pipeline.verify(&Pipeline::cdc_groups(), "all").await?;
    Ok(())
}

/// A stop (SIGTERM) while cdcconsumer is still starting — here waiting for a source PostgreSQL that
/// does not answer — is a clean end: exit 0, nothing consumed. A 30-minute chaos run found churned
/// instances stopped during start-up exiting 1 with "cancelled before the work was durable".
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_start_up_is_a_clean_end() -> Result<()> {
    let pipeline = Pipeline::new().await?;
    let mut command = pipeline.cdcconsumer(&unique_name("it_start_stop"), 0)?;
    // Nothing listens on port 1: the source check retries until the stop.
    command.env(
        "DATABASE_URL",
        "postgres://cdc_user:unused@127.0.0.1:1/cdc_db",
    );
    let sink = Process::spawn("cdcconsumer", command)?;
    let retrying = wait_for(
        "the source check retrying",
        Duration::from_secs(120),
        || async {
            Ok(sink
                .log_tail(200)
                .contains("ask the source for its system identifier")
                .then_some(()))
        },
    )
    .await;
    if let Err(error) = retrying {
        let _ = sink.kill();
        return Err(error);
    }
    let log_before = sink.log_tail(400);
    ensure!(
        !log_before.contains("finished"),
        "cdcconsumer ended before the stop:\n{log_before}"
    );
    let name = sink.log_path();
    sink.terminate().await?;
    let log = std::fs::read_to_string(&name)?;
    ensure!(
        log.contains("stopped during start-up"),
        "no clean start-up stop in the log:\n{log}"
    );
    Ok(())
}

/// A captured change as a connector with `value.converter.schemas.enable=false` and
/// `decimal.handling.mode=string` sends it: key and value without their schemas, each image's
/// `amount` a decimal string (`amounts`, by row id, as the test wrote them).
fn schemaless(
    record: &rdkafka::message::OwnedMessage,
    amounts: &BTreeMap<Uuid, String>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let unwrap = |bytes: Option<&[u8]>| -> Result<Json> {
        let json: Json = serde_json::from_slice(bytes.context("an empty part")?)?;
        Ok(if json.get("schema").is_some() {
            json["payload"].clone()
        } else {
            json
        })
    };
    let key = unwrap(record.key())?;
    let mut value = unwrap(record.payload())?;
    for image in ["before", "after"] {
        if let Some(row) = value[image].as_object_mut() {
            let id: Uuid = row
                .get("id")
                .and_then(Json::as_str)
                .context("an image without id")?
                .parse()?;
            if let Some(amount) = amounts.get(&id) {
                row.insert("amount".to_owned(), Json::from(amount.as_str()));
            }
        }
    }
    Ok((key.to_string().into_bytes(), value.to_string().into_bytes()))
}

/// The source LSN of a captured change.
fn lsn(record: &rdkafka::message::OwnedMessage) -> Result<i64> {
    json_value(record)
        .and_then(|v| v["payload"]["source"]["lsn"].as_i64())
        .context("a change without an LSN")
}

/// Sends captured changes, reshaped by [`schemaless`], to `topic` on their partitions, in order.
async fn forward(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: &[&rdkafka::message::OwnedMessage],
    amounts: &BTreeMap<Uuid, String>,
) -> Result<()> {
    for record in records {
        let (key, value) = schemaless(record, amounts)?;
        send_raw(
            producer,
            topic,
            Some(record.partition()),
            Some(&key),
            Some(&value),
        )
        .await?;
    }
    Ok(())
}

/// (consumed, applied, dead-lettered) of `topic` in a summary.
fn counts_of(summary: &stack_tests::process::Summary, topic: &str) -> (u64, u64, u64) {
    let counts = summary.get(topic).copied().unwrap_or_default();
    (counts.consumed, counts.applied, counts.dead_lettered)
}

/// A cdcconsumer of the test's own topics, group and keyspace, with a decimal mode, run until
/// idle; its summary.
async fn run_own_sink(
    pipeline: &Pipeline,
    topics: &[&str; 2],
    group: &str,
    keyspace: &str,
    decimals: &str,
) -> Result<stack_tests::process::Summary> {
    let mut command = process::command(&pipeline.stack, &workspace_binary("cdcconsumer")?);
    command
        .env("CASSANDRA_KEYSPACE", keyspace)
        .env("CDC_TOPICS", topics.join(","))
        .env("CDC_GROUP", group)
        .env("DECIMAL_HANDLING_MODE", decimals)
        .env("SLOT_NAME", "")
        .env("IDLE_TIMEOUT_SECS", "5");
    let stdout = Process::spawn("cdcconsumer", command)?
        .run_to_end(Duration::from_secs(180))
        .await?;
    Ok(summary("cdcconsumer", &stdout))
}

/// Dead letters of the CDC path, replayed once their cause is fixed, are applied exactly once.
///
/// The cause, chosen because it happens in practice and is fixed on the consumer's side: the
/// connector is switched to `decimal.handling.mode=string` with schemas off (smaller records), but
/// cdcconsumer still runs with `--decimal-handling-mode precise`. Every order change is then
/// parked as `bad_value` (an amount such as "43.21" is not base64 bytes); users are applied. The
/// fix is to run cdcconsumer with `string`; a newer change of one order arrives and is applied;
/// then `cdcconsumer dlq replay` publishes the parked changes — twice. Cassandra ends with exactly
/// PostgreSQL's rows, each written at the LSN of its latest change (the replayed older changes of
/// the updated order lose to the newer one), the second replay changes nothing (same rows, same
/// write times), and nothing new is dead-lettered.
///
/// The records are the changes Debezium captured for rows the test wrote, reshaped as such a
/// connector sends them, on topics, a group and a keyspace of the test's own: the shared CDC topics,
/// their group and keyspace are left alone.
#[tokio::test(flavor = "multi_thread")]
async fn cdc_dead_letters_replayed_after_the_decimal_mode_is_fixed_are_applied_once() -> Result<()>
{
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = &pipeline.pool;
    let users_topic = unique_name("it_dlq_cdc_users");
    let orders_topic = unique_name("it_dlq_cdc_orders");
    let group = unique_name("it_dlq_cdc_group");
    let keyspace = unique_name("it_dlq_keyspace");
    let rf = i32::try_from(pipeline.stack.broker_count)?;
    ensure_topics(
        &pipeline.stack.brokers,
        &[
            TopicSpec::new(&users_topic, 3, rf),
            TopicSpec::new(&orders_topic, 3, rf),
        ],
        Duration::from_secs(30),
    )
    .await?;
    let outcome = decimal_mode_scenario(
        &pipeline,
        pool,
        [&users_topic, &orders_topic],
        &group,
        &keyspace,
    )
    .await;
    drop_keyspace(&pipeline.cassandra, &keyspace).await?;
    delete_groups(&pipeline.stack, &[&group]).await;
    delete_topics_and_dead_letters(&pipeline.stack, &[&users_topic, &orders_topic]).await;
    outcome
}

async fn decimal_mode_scenario(
    pipeline: &Pipeline,
    pool: &sqlx::PgPool,
    topics: [&str; 2],
    group: &str,
    keyspace: &str,
) -> Result<()> {
    let [users_topic, orders_topic] = topics;
    let starts = [
        end_offsets(&pipeline.stack, CDC_USERS)?,
        end_offsets(&pipeline.stack, CDC_ORDERS)?,
    ];
    let (u, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let amounts = BTreeMap::from([(a, "43.21".to_owned()), (b, "19.99".to_owned())]);
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, u, "replay u").await?;
    insert_order(&mut tx, a, u, "replay a", 4321).await?;
    insert_order(&mut tx, b, u, "replay b", 1999).await?;
    tx.commit().await?;
    let set_status = |status: &'static str, version: i64| {
        sqlx::query("UPDATE orders SET status = $1, updated_at = now(), version = $2 WHERE id = $3")
            .bind(status)
            .bind(version)
            .bind(a)
            .execute(pool)
    };
    set_status("SHIPPED", 2).await?;
    let users = wait_captured(&pipeline.stack, CDC_USERS, &starts[0], &[(u, "c")]).await?;
    let orders = wait_captured(
        &pipeline.stack,
        CDC_ORDERS,
        &starts[1],
        &[(a, "c"), (b, "c"), (a, "u")],
    )
    .await?;
    let producer = producer(&pipeline.stack)?;
    let user_c = find_change(&users, u, "c").context("u's insert")?;
    let order_changes = [
        find_change(&orders, a, "c").context("a's insert")?,
        find_change(&orders, b, "c").context("b's insert")?,
        find_change(&orders, a, "u").context("a's update")?,
    ];
    forward(&producer, users_topic, &[user_c], &amounts).await?;
    forward(&producer, orders_topic, &order_changes, &amounts).await?;

    // Misconfigured: the default decimal mode parks every order change.
    let summary = run_own_sink(pipeline, &topics, group, keyspace, "precise").await?;
    ensure!(
        counts_of(&summary, users_topic) == (1, 1, 0)
            && counts_of(&summary, orders_topic) == (3, 0, 3),
        "{summary:?}"
    );
    let dlq = cdc_core::dlq::topic_for(orders_topic);
    let parked = dead_letters(&pipeline.stack, &dlq)?;
    ensure!(
        parked.len() == 3
            && parked
                .iter()
                .all(|l| l.reason == "bad_value" && l.error.contains("amount")),
        "{parked:?}"
    );
    let reader = CassandraReader::new(&pipeline.cassandra, keyspace, Consistency::Quorum);
    ensure!(
        reader.rows(&ORDERS, &[a, b]).await?.is_empty(),
        "an order was written"
    );

    // Fixed: a newer change of `a` is applied first, then the parked changes are replayed.
    let before_delivery = end_offsets(&pipeline.stack, CDC_ORDERS)?;
    set_status("DELIVERED", 3).await?;
    let latest = wait_captured(&pipeline.stack, CDC_ORDERS, &before_delivery, &[(a, "u")]).await?;
    let delivered = find_change(&latest, a, "u").context("a's second update")?;
    forward(&producer, orders_topic, &[delivered], &amounts).await?;
    let summary = run_own_sink(pipeline, &topics, group, keyspace, "string").await?;
    ensure!(
        counts_of(&summary, orders_topic) == (1, 1, 0),
        "{summary:?}"
    );

    let expected_at = BTreeMap::from([
        (u, lsn(user_c)?),
        (a, lsn(delivered)?),
        (b, lsn(order_changes[1])?),
    ]);
    let mut first = None;
    for round in 1..=2 {
        let before = end_offsets(&pipeline.stack, orders_topic)?;
        replay_dead_letters(
            &pipeline.stack,
            "cdcconsumer",
            [orders_topic, "bad_value"],
            &[],
            3,
        )
        .await?;
        check_replayed(
            &parked,
            &records_since(&pipeline.stack, orders_topic, &before)?,
        )?;
        let summary = run_own_sink(pipeline, &topics, group, keyspace, "string").await?;
        ensure!(
            counts_of(&summary, orders_topic) == (3, 3, 0),
            "round {round}: {summary:?}"
        );

        // Exactly PostgreSQL's rows, each at its latest change's LSN.
        let snapshot = reader.snapshot().await?;
        let expected_users = pg_rows(pool, &USERS, Some(&[u]), Precision::Millis).await?;
        let expected_orders = pg_rows(pool, &ORDERS, Some(&[a, b]), Precision::Millis).await?;
        let mut problems = Vec::new();
        for (table, expected) in [
            (&USERS, &expected_users),
            (&ORDERS, &expected_orders),
            (&ORDERS_BY_USER, &expected_orders_by_user(&expected_orders)),
        ] {
            let found = snapshot.tables.get(table.name).cloned().unwrap_or_default();
            let rows: BTreeMap<Key, Vec<Value>> = found
                .iter()
                .map(|(k, (row, _))| (k.clone(), row.clone()))
                .collect();
            problems.extend(differences(table.name, expected, &rows));
            for (key, (_, written)) in &found {
                // The row's own id: the last uuid of its key (orders_by_user: user, order).
                let id = key.values.iter().rev().find_map(|v| match v {
                    Value::Uuid(id) => Some(*id),
                    _ => None,
                });
                let wanted = id.and_then(|id| expected_at.get(&id));
                if written.as_ref() != wanted {
                    problems.push(format!(
                        "{} {key}: written at {written:?}, expected {wanted:?}",
                        table.name
                    ));
                }
            }
        }
        ensure_no_differences(&problems)?;
        match &first {
            None => first = Some(snapshot),
            Some(first) => ensure!(*first == snapshot, "the second replay changed Cassandra"),
        }
    }
    ensure!(
        dead_letters(&pipeline.stack, &dlq)?.len() == 3,
        "the replays parked changes again"
    );
    ensure!(dead_letters(&pipeline.stack, &cdc_core::dlq::topic_for(users_topic))?.is_empty());
    Ok(())
}
