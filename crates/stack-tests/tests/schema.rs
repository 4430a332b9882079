//! `postgres-schema.sql` on the running database: applying it again (as every consumer does at
//! start) while other sessions are in the middle of writing.

use std::time::Duration;

use anyhow::{ensure, Result};
use sqlx::postgres::PgPoolOptions;
use stack_tests::{shared, Stack};
use uuid::Uuid;

/// A consumer that starts beside a running one applies the schema while the running one holds row
/// locks on both tables: on a database that already has the schema this takes no table lock, so it
/// neither waits for the open transaction nor deadlocks with it.
#[tokio::test(flavor = "multi_thread")]
async fn the_schema_applies_again_while_another_session_writes() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&stack.database_url)
        .await?;
    // As a consumer's batch transaction: rows written in both tables, not committed yet.
    let (user, order) = (Uuid::new_v4(), Uuid::new_v4());
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at, deleted_at, version) \
         VALUES ($1, 'Schema Test', 'schema@example.com', now(), now(), NULL, 1)",
    )
    .bind(user)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, product, quantity, amount, status, order_date, \
         created_at, updated_at, deleted_at, version) \
         VALUES ($1, $2, 'Lamp', 1, 9.90, 'PLACED', current_date, now(), now(), NULL, 1)",
    )
    .bind(order)
    .bind(user)
    .execute(&mut *tx)
    .await?;

    let applied =
        tokio::time::timeout(Duration::from_secs(20), consumer::sink::apply_schema(&pool)).await;
    tx.rollback().await?;
    ensure!(
        applied.is_ok(),
        "applying the schema waited 20 s on the open transaction's locks"
    );
    applied??;
    Ok(())
}
