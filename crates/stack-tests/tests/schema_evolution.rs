//! Schema evolution against the real stack: columns added to PostgreSQL's tables under a running
//! cdcconsumer appear in Cassandra's mirrored tables with their mapped types, are backfilled by a
//! re-snapshot, and are compared by the verifier; a dropped column stops its table's mirroring
//! (and only that table's) until the operator answers it with `cdcconsumer columns drop`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use stack_tests::exclusive;
use stack_tests::pipeline::{stop_sink, Pipeline, CDC_GROUP, KEYSPACE};
use stack_tests::process::{self, nothing_dead_lettered, workspace_binary, Process};
use stack_tests::sql::{insert_order, insert_user};
use uuid::Uuid;

/// Column name → CQL type of a Cassandra table of the test keyspace.
async fn cassandra_columns(pipeline: &Pipeline, table: &str) -> Result<BTreeMap<String, String>> {
    let result = pipeline
        .cassandra
        .query_unpaged(
            "SELECT column_name, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (KEYSPACE, table),
        )
        .await?
        .into_rows_result()?;
    let mut found = BTreeMap::new();
    for row in result.rows::<(String, String)>()? {
        let (name, ty) = row?;
        found.insert(name, ty);
    }
    Ok(found)
}

/// Waits until every `(table, column, cql type)` is in Cassandra's schema.
async fn wait_for_columns(pipeline: &Pipeline, wanted: &[(&str, &str, &str)]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut missing = Vec::new();
        for (table, column, ty) in wanted {
            let columns = cassandra_columns(pipeline, table).await?;
            if columns.get(*column).map(String::as_str) != Some(*ty) {
                missing.push(format!(
                    "{table}.{column} {ty} (have {:?})",
                    columns.get(*column)
                ));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("columns never added to Cassandra: {}", missing.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A text cell of one row, read at QUORUM.
async fn text_cell(pipeline: &Pipeline, cql: &str, key: Uuid) -> Result<Option<String>> {
    let mut statement = scylla::statement::unprepared::Statement::new(cql);
    statement.set_consistency(scylla::statement::Consistency::Quorum);
    let result = pipeline
        .cassandra
        .query_unpaged(statement, (key,))
        .await?
        .into_rows_result()?;
    Ok(result
        .maybe_first_row::<(Option<String>,)>()?
        .and_then(|(v,)| v))
}

/// Waits until `cql` (one key bound) reads `expected`; a failing read (a node that has not
/// applied a schema change yet) is tried again until the deadline.
async fn wait_for_cell(
    pipeline: &Pipeline,
    cql: &str,
    key: Uuid,
    expected: Option<&str>,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let found = text_cell(pipeline, cql, key).await;
        if matches!(&found, Ok(value) if value.as_deref() == expected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("`{cql}` for {key} reads {found:?}, expected {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `cdcconsumer columns …`: exit status and output.
async fn columns_command(pipeline: &Pipeline, args: &[&str]) -> Result<(i32, String)> {
    let mut command = process::command(&pipeline.stack, &workspace_binary("cdcconsumer")?);
    command.arg("columns").args(args);
    let process = Process::spawn("cdcconsumer columns", command)?;
    let log = process.log_path();
    let (status, stdout) = process.outcome(Duration::from_secs(60)).await?;
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    Ok((status.code().unwrap_or(-1), format!("{stdout}{stderr}")))
}

async fn execute(pipeline: &Pipeline, sql: &str) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pipeline.pool)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(())
}

/// Under one running cdcconsumer:
/// 1. `users.tier_… text NOT NULL DEFAULT 'basic'` and `orders.note_… varchar(40)` are added; the
///    first changes carrying them add them to users, orders and orders_by_user;
/// 2. the verifier, comparing every column PostgreSQL has, reports the users untouched since
///    (PostgreSQL says 'basic', Cassandra has no value) — until `resnapshot --table users`
///    backfills them, after which it is clean;
/// 3. `orders.note_…` is dropped in PostgreSQL: the next order change stops the orders table's
///    mirroring with an error naming the column, while users keep flowing; `cdcconsumer columns
///    drop` is refused while PostgreSQL still has a column, and once it answers the drop the
///    orders resume without a restart and the verifier is clean again.
#[tokio::test(flavor = "multi_thread")]
async fn added_columns_are_mirrored_backfilled_and_verified_and_a_drop_stops_only_its_table(
) -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    // Names of this run: Cassandra hides a dropped column's cells below the drop's time for good,
    // so a name is never used twice.
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let (tier, note) = (format!("tier_{run}"), format!("note_{run}"));
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let users: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let orders: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let mut tx = pipeline.pool.begin().await?;
    for (i, (user, order)) in users.iter().zip(&orders).enumerate() {
        insert_user(&mut tx, *user, &format!("evolving {i}")).await?;
        insert_order(&mut tx, *order, *user, "lamp", 1999).await?;
    }
    tx.commit().await?;

    // 1. Added columns, and changes that carry them.
    execute(
        &pipeline,
        &format!("ALTER TABLE users ADD COLUMN {tier} text NOT NULL DEFAULT 'basic'"),
    )
    .await?;
    execute(
        &pipeline,
        &format!("ALTER TABLE orders ADD COLUMN {note} varchar(40)"),
    )
    .await?;
    let gold: Vec<Uuid> = users.iter().step_by(2).copied().collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET {tier} = 'gold', version = version + 1, updated_at = now() \
         WHERE id = ANY($1)"
    )))
    .bind(&gold)
    .execute(&pipeline.pool)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE orders SET {note} = 'gift wrap', version = version + 1, updated_at = now() \
         WHERE id = ANY($1)"
    )))
    .bind(&orders[..10])
    .execute(&pipeline.pool)
    .await?;
    wait_for_columns(
        &pipeline,
        &[
            ("users", &tier, "text"),
            ("orders", &note, "text"),
            ("orders_by_user", &note, "text"),
        ],
    )
    .await?;
    let tier_of = format!("SELECT {tier} FROM {KEYSPACE}.users WHERE id = ?");
    wait_for_cell(
        &pipeline,
        &tier_of,
        gold[0],
        Some("gold"),
        Duration::from_secs(60),
    )
    .await?;
    let by_user_note = format!(
        "SELECT {note} FROM {KEYSPACE}.orders_by_user WHERE user_id = {} AND order_id = ?",
        users[0]
    );
    wait_for_cell(
        &pipeline,
        &by_user_note,
        orders[0],
        Some("gift wrap"),
        Duration::from_secs(60),
    )
    .await?;
    let (code, listed) = columns_command(&pipeline, &["list"]).await?;
    ensure!(
        code == 0
            && listed.contains(&format!("users.{tier} text"))
            && listed.contains(&format!("orders.{note} text")),
        "columns list: {listed}"
    );

    // 2. The rows nobody touched since: PostgreSQL's default, not yet in Cassandra.
    let (status, stdout, stderr) = pipeline
        .verify_output(&Pipeline::cdc_groups(), "quorum")
        .await?;
    ensure!(
        status.code() == Some(1) && stdout.contains(&format!("{tier} pg=\"basic\" cassandra=NULL")),
        "the verifier must see the users not backfilled yet ({status}):\n{stdout}\n{stderr}"
    );
    pipeline.resnapshot("users").await?;
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    wait_for_cell(
        &pipeline,
        &tier_of,
        users[1],
        Some("basic"),
        Duration::from_secs(5),
    )
    .await?;

    // 3. A dropped column stops its table, and only its table.
    execute(&pipeline, &format!("ALTER TABLE orders DROP COLUMN {note}")).await?;
    sqlx::query(
        "UPDATE orders SET status = 'SHIPPED', version = version + 1, updated_at = now() \
         WHERE id = $1",
    )
    .bind(orders[1])
    .execute(&pipeline.pool)
    .await?;
    let expected = format!("column `{note}` of orders is not in the change's schema");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.log_tail(400).contains(&expected) {
        ensure!(
            Instant::now() < deadline,
            "no error naming the dropped column:\n{}",
            sink.log_tail(60)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = format!("SELECT status FROM {KEYSPACE}.orders WHERE id = ?");
    ensure!(
        text_cell(&pipeline, &status, orders[1]).await? == Some("PLACED".to_owned()),
        "the order changed after the drop must wait"
    );
    let late = Uuid::new_v4();
    let mut tx = pipeline.pool.begin().await?;
    insert_user(&mut tx, late, "after the drop").await?;
    tx.commit().await?;
    let name = format!("SELECT name FROM {KEYSPACE}.users WHERE id = ?");
    wait_for_cell(
        &pipeline,
        &name,
        late,
        Some("after the drop"),
        Duration::from_secs(60),
    )
    .await?;
    let (code, output) =
        columns_command(&pipeline, &["drop", "--table", "users", "--column", &tier]).await?;
    ensure!(
        code == 1 && output.contains(&format!("still has `{tier}`")),
        "dropping a column PostgreSQL still has must be refused ({code}): {output}"
    );
    let (code, output) =
        columns_command(&pipeline, &["drop", "--table", "orders", "--column", &note]).await?;
    ensure!(code == 0, "columns drop orders.{note} ({code}): {output}");
    // The stalled partition restarts (its back-off is at most a minute) and goes on.
    wait_for_cell(
        &pipeline,
        &status,
        orders[1],
        Some("SHIPPED"),
        Duration::from_secs(150),
    )
    .await?;
    ensure!(
        !cassandra_columns(&pipeline, "orders_by_user")
            .await?
            .contains_key(&note),
        "{note} still in orders_by_user"
    );
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;

    // Back to the described schema for the tests after this one.
    execute(&pipeline, &format!("ALTER TABLE users DROP COLUMN {tier}")).await?;
    let (code, output) =
        columns_command(&pipeline, &["drop", "--table", "users", "--column", &tier]).await?;
    ensure!(code == 0, "columns drop users.{tier} ({code}): {output}");
    let log = sink.log_tail(2000);
    let summary = stop_sink(sink).await?;
    nothing_dead_lettered(&summary)?;
    ensure!(
        log.contains("mirroring a column added in PostgreSQL"),
        "no log of the added columns"
    );
    Ok(())
}
