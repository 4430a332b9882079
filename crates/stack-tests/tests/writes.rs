//! cdcconsumer's write requests against the real Cassandra cluster: several changes sent in one
//! request end as their timestamps say, whatever their order inside it; a refused request writes
//! nothing, only a request too large is the values' fault, and its changes sent one by one land.

use anyhow::{ensure, Context, Result};
use cdc_core::debezium::Field;
use cdc_core::tables;
use cdcconsumer::cassandra::{Statements, Write};
use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::CqlValue;
use stack_tests::pipeline::{create_keyspace, drop_keyspace};
use stack_tests::{shared, unique_name, Stack};
use uuid::Uuid;

/// A user row (no timestamps) with `name`, and `version` as the value of the `version` column.
fn user(id: Uuid, name: &str, version: CqlValue) -> Write {
    Write::Upsert {
        table: &tables::USERS,
        cells: vec![
            Field::Value(CqlValue::Uuid(id)),
            Field::Value(CqlValue::Text(name.to_owned())),
            Field::Value(CqlValue::Text(format!("{name}@example.com"))),
            Field::Null,
            Field::Null,
            Field::Null,
            Field::Value(version),
        ],
        extra: Vec::new(),
    }
}

/// The name and version of user `id`, read at QUORUM.
async fn read_user(session: &Session, keyspace: &str, id: Uuid) -> Result<Option<(String, i64)>> {
    let mut select = Statement::new(format!(
        "SELECT name, version FROM {keyspace}.users WHERE id = ?"
    ));
    select.set_consistency(Consistency::Quorum);
    let rows = session
        .query_unpaged(select, (id,))
        .await?
        .into_rows_result()?;
    Ok(rows.maybe_first_row::<(String, i64)>()?)
}

async fn scenario(session: &Session, keyspace: &str) -> Result<()> {
    let statements = Statements::prepare(session, keyspace, Consistency::Quorum).await?;
    let version = |n| CqlValue::BigInt(n);
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a_newer = user(a, "a at 30", version(3));
    let a_older = user(a, "a at 20", version(2));
    let b_created = user(b, "b", version(1));
    let b_deleted = Write::Delete {
        table: &tables::USERS,
        key: vec![CqlValue::Uuid(b)],
    };
    let c_created = user(c, "c", version(1));
    // Newest first: in source order a's older version and b's creation came first.
    statements
        .execute_group(
            session,
            &[
                (&a_newer, 30),
                (&b_deleted, 40),
                (&a_older, 20),
                (&b_created, 10),
                (&c_created, 50),
            ],
        )
        .await
        .context("a group of small changes")?;
    let found = read_user(session, keyspace, a).await?;
    ensure!(
        found == Some(("a at 30".to_owned(), 3)),
        "a's change at 30 must win over the one at 20 sent after it: {found:?}"
    );
    let found = read_user(session, keyspace, b).await?;
    ensure!(
        found.is_none(),
        "b's delete at 40 must win over its creation at 10: {found:?}"
    );
    let found = read_user(session, keyspace, c).await?;
    ensure!(found == Some(("c".to_owned(), 1)), "c: {found:?}");

    // A value that cannot be serialised for its column (text into the bigint `version`): the
    // table differs from the description, which no record can cause; it is never the record's
    // fault, and nothing of the request is written.
    let (d, e) = (Uuid::new_v4(), Uuid::new_v4());
    let good = user(d, "d", version(1));
    let mistyped = user(e, "e", CqlValue::Text("not a number".to_owned()));
    let refused = statements
        .execute_group(session, &[(&good, 60), (&mistyped, 60)])
        .await;
    ensure!(
        matches!(&refused, Err(error) if !error.is_record_fault()),
        "a value the table's column cannot take is not the record's fault: {refused:?}"
    );
    let found = read_user(session, keyspace, d).await?;
    ensure!(
        found.is_none(),
        "nothing of a refused request is written: {found:?}"
    );

    // A request over Cassandra's batch limit (50 KiB) is refused whole as the values' fault; each
    // change alone, as cdcconsumer then sends them, is accepted.
    let (f, g) = (Uuid::new_v4(), Uuid::new_v4());
    let small = user(f, "f", version(1));
    let large = user(g, &"g".repeat(60 * 1024), version(1));
    let refused = statements
        .execute_group(session, &[(&small, 70), (&large, 70)])
        .await;
    ensure!(
        matches!(&refused, Err(error) if error.is_record_fault()),
        "a request over the batch limit is its values' fault: {refused:?}"
    );
    let found = read_user(session, keyspace, f).await?;
    ensure!(
        found.is_none(),
        "nothing of a refused request is written: {found:?}"
    );
    for change in [&small, &large] {
        statements
            .execute_all(session, std::slice::from_ref(change), 70)
            .await
            .context("a change of a refused request, alone")?;
    }
    let found = read_user(session, keyspace, f).await?;
    ensure!(found == Some(("f".to_owned(), 1)), "f alone: {found:?}");
    let found = read_user(session, keyspace, g).await?;
    ensure!(
        found.as_ref().map(|(name, _)| name.len()) == Some(60 * 1024),
        "g alone: {:?}",
        found.map(|(name, version)| (name.len(), version))
    );
    Ok(())
}

#[tokio::test]
async fn changes_sharing_a_request_end_by_their_timestamps_and_a_refused_one_lands_change_by_change(
) -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let session = cdcconsumer::cassandra::connect(&stack.cassandra_nodes)
        .await
        .context("connecting to Cassandra")?;
    let keyspace = unique_name("it_writes");
    let outcome = match create_keyspace(&session, stack.cassandra_nodes.len(), &keyspace).await {
        Ok(()) => scenario(&session, &keyspace).await,
        Err(error) => Err(error),
    };
    drop_keyspace(&session, &keyspace).await?;
    outcome
}
