//! The chaos checker against the real Kafka and PostgreSQL: a producer run with an
//! acknowledgement log and a consumer run to idle are accounted for exactly; then a row removed,
//! a column changed and a log that names fewer events than were applied are each caught.

use std::time::Duration;

use anyhow::{ensure, Result};
use cdc_core::generator::{random_seed, GeneratorConfig};
use chaos::account::{check, AckLog};
use chaos::{consumer_command, producer_command, Binaries, RunNames};
use chrono::SubsecRound;
use stack_tests::process::{self, Process};
use stack_tests::{shared, unique_name, Stack};

#[tokio::test]
async fn the_checker_accounts_for_every_acknowledged_event_and_catches_losses() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let binaries = Binaries::build().await?;
    let names = RunNames::create(&stack, "it_checker").await?;
    let generator = GeneratorConfig {
        users: 40,
        orders: 120,
        seed: random_seed(),
        start: chrono::Utc::now().trunc_subsecs(0),
    };
    let ack_log = process::log_dir()?.join(format!("{}.acks", unique_name("producer")));
    Process::spawn(
        "producer",
        producer_command(&stack, &binaries.producer, &names, &generator, &ack_log),
    )?
    .run_to_end(Duration::from_secs(120))
    .await?;
    let mut consumer = consumer_command(&stack, &binaries.consumer, &names, "")?;
    consumer.env("IDLE_TIMEOUT_SECS", "6");
    Process::spawn("consumer", consumer)?
        .run_to_end(Duration::from_secs(300))
        .await?;

    let log = AckLog::read(&ack_log)?;
    let account = check(&pool, &generator, &log).await?;
    ensure!(
        account.lost == 0 && account.problems.is_empty(),
        "{account:#?}"
    );
    ensure!(
        account.sent > 300 && account.acknowledged == account.sent && account.unknown == 0,
        "every event sent was acknowledged and counted: {account:?}"
    );

    // A row gone: its acknowledged events are lost.
    let (order,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM orders WHERE user_id = ANY($1) ORDER BY id LIMIT 1")
            .bind(user_ids(&generator))
            .fetch_one(&pool)
            .await?;
    sqlx::query("DELETE FROM orders WHERE id = $1")
        .bind(order)
        .execute(&pool)
        .await?;
    let account = check(&pool, &generator, &log).await?;
    ensure!(account.lost == 1, "one order deleted: {account:#?}");
    ensure!(
        account
            .problems
            .iter()
            .any(|p| p.contains(&order.to_string())),
        "the lost order is named: {:?}",
        account.problems
    );

    // A column changed: the row no longer equals its event.
    let (user,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM users WHERE id = ANY($1) ORDER BY id LIMIT 1")
            .bind(user_ids(&generator))
            .fetch_one(&pool)
            .await?;
    sqlx::query("UPDATE users SET name = name || ' (edited)' WHERE id = $1")
        .bind(user)
        .execute(&pool)
        .await?;
    let account = check(&pool, &generator, &log).await?;
    ensure!(
        account.problems.len() == 2
            && account
                .problems
                .iter()
                .any(|p| p.contains(&user.to_string())),
        "the edited user is reported besides the lost order: {:?}",
        account.problems
    );

    // A log that names only the first half of the events: rows at later versions were never sent.
    let half = AckLog::parse(
        &std::fs::read_to_string(&ack_log)?
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .next()
                    .and_then(|seq| seq.parse::<usize>().ok())
                    .is_some_and(|seq| seq < log.end / 2)
            })
            .map(|line| format!("{line}\n"))
            .collect::<String>(),
    )?;
    let account = check(&pool, &generator, &half).await?;
    ensure!(
        account.problems.iter().any(|p| p.contains("never sent")),
        "rows beyond the log are refused: {:?}",
        account.problems
    );
    Ok(())
}

/// The users of the stream, among everyone else's rows.
fn user_ids(generator: &GeneratorConfig) -> Vec<uuid::Uuid> {
    cdc_core::generator::Generator::new(generator.clone())
        .filter_map(|event| match event {
            cdc_core::events::Event::User(e) => Some(e.user.id),
            cdc_core::events::Event::Order(_) => None,
        })
        .collect()
}
