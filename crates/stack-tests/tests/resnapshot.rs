//! `cdcconsumer resnapshot` against the real stack: Debezium's incremental snapshot of one table,
//! signalled through its signal table and followed in its notifications, while the pipeline runs.
//!
//! A file of its own, so it runs after `cdcconsumer.rs`: a re-snapshot after a lost table writes
//! the rows it restores at the lowest write timestamps (below every change), and the replay test
//! there compares write times before and after reading the CDC topics again.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cdc_core::tables::USERS;
use stack_tests::exclusive;
use stack_tests::pipeline::{stop_sink, Pipeline, CDC_GROUP, KEYSPACE};
use stack_tests::process::nothing_dead_lettered;
use stack_tests::rows::{differences, ensure_no_differences, pg_rows, Precision};
use stack_tests::sql::insert_user;
use uuid::Uuid;

/// `cdcconsumer resnapshot --table users` while the same rows are being updated: Cassandra's
/// users table is emptied behind the pipeline's back (a lost table), half of the test's users
/// are updated in turn (ten every 100 ms) during the re-snapshot, and at the end every row is back with
/// PostgreSQL's latest values — the reads filled what was missing and never overwrote a newer
/// change. The command's own report names the rows Debezium read.
#[tokio::test(flavor = "multi_thread")]
async fn an_online_resnapshot_restores_a_lost_table_while_its_rows_change() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let pool = pipeline.pool.clone();
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let ids: Vec<Uuid> = (0..400).map(|_| Uuid::new_v4()).collect();
    let mut tx = pool.begin().await?;
    for (i, id) in ids.iter().enumerate() {
        insert_user(&mut tx, *id, &format!("resnapshot {i}")).await?;
    }
    tx.commit().await?;
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;

    // The lost table.
    let mut truncate = scylla::statement::unprepared::Statement::new(format!(
        "TRUNCATE {KEYSPACE}.{}",
        USERS.name
    ));
    truncate.set_request_timeout(Some(Duration::from_secs(60)));
    pipeline.cassandra.query_unpaged(truncate, ()).await?;
    let left = pipeline.quorum().count(&USERS).await?;
    ensure!(left == 0, "{left} users left in Cassandra after TRUNCATE");

    // Writes to the same rows during the re-snapshot.
    let stop = tokio_util::sync::CancellationToken::new();
    let changing: Vec<Uuid> = ids.iter().step_by(2).copied().collect();
    let updater = {
        let (pool, stop, changing) = (pool.clone(), stop.clone(), changing.clone());
        tokio::spawn(async move {
            // Ten rows every 100 ms, in turn: about 100 changes a second, a load the capture
            // keeps up with (a flood of changes would only delay the snapshot's windows).
            let mut rounds = 0_u64;
            while !stop.is_cancelled() {
                let from = usize::try_from(rounds * 10)? % changing.len();
                let batch: Vec<Uuid> = changing
                    .iter()
                    .cycle()
                    .skip(from)
                    .take(10)
                    .copied()
                    .collect();
                rounds += 1;
                sqlx::query(
                    "UPDATE users SET name = 'changed ' || $2::text, updated_at = now(), \
                     version = version + 1 WHERE id = ANY($1)",
                )
                .bind(&batch)
                .bind(rounds.to_string())
                .execute(&pool)
                .await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(rounds)
        })
    };
    let resnapshot = pipeline.resnapshot("users").await;
    stop.cancel();
    let rounds = updater.await??;
    let stdout = resnapshot?;
    let report = stdout
        .lines()
        .find(|l| l.starts_with("resnapshot: table=public.users"))
        .with_context(|| format!("no report line:\n{stdout}"))?;
    let (users, _) = pipeline.pg_counts().await?;
    let rows: u64 = report
        .split_whitespace()
        .find_map(|f| f.strip_prefix("rows="))
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("no row count in `{report}`"))?;
    ensure!(
        rows >= users,
        "Debezium read {rows} rows of {users}: `{report}`"
    );
    eprintln!(
        "{report}; {rounds} rounds of updates to {} users meanwhile",
        changing.len()
    );
    ensure!(
        rounds >= 3,
        "only {rounds} rounds of updates ran during the re-snapshot"
    );

    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    let reader = pipeline.quorum();
    ensure_no_differences(&differences(
        "user",
        &pg_rows(&pool, &USERS, Some(&ids), Precision::Millis).await?,
        &reader.rows(&USERS, &ids).await?,
    ))?;
    let summary = stop_sink(sink).await?;
    nothing_dead_lettered(&summary)?;
    Ok(())
}
