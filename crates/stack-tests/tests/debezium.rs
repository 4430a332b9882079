//! Debezium: a row written to PostgreSQL arrives on `cdc.public.users` as a change event with the
//! right operation, values and source LSN; update and delete (with its tombstone) follow.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use stack_tests::{shared, unique_name, Stack};
use uuid::Uuid;

const TOPIC: &str = "cdc.public.users";

/// "16/B374D848" -> 0x16_B374D848
fn parse_lsn(text: &str) -> Result<u64> {
    let (high, low) = text.split_once('/').context("LSN without '/'")?;
    Ok((u64::from_str_radix(high, 16)? << 32) | u64::from_str_radix(low, 16)?)
}

async fn current_lsn(pool: &PgPool) -> Result<u64> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    parse_lsn(&text)
}

/// A consumer positioned at the current end of every partition of the topic.
fn consumer_at_end(stack: &Stack) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", unique_name("it_debezium"))
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == TOPIC)
        .context("topic missing")?;
    ensure!(!topic.partitions().is_empty(), "{TOPIC} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        let (_, high) =
            consumer.fetch_watermarks(TOPIC, partition.id(), Duration::from_secs(10))?;
        assignment.add_partition_offset(TOPIC, partition.id(), Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Next record whose key names `id`: Some(value) for a change event, None for a tombstone.
fn next_event_for(consumer: &BaseConsumer, id: Uuid) -> Result<Option<Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let id = id.to_string();
    while std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let key: Value = serde_json::from_slice(message.key().unwrap_or_default())?;
        if key["payload"]["id"].as_str() != Some(id.as_str()) {
            continue;
        }
        return match message.payload() {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes)?)),
        };
    }
    bail!("no change event for user {id} on {TOPIC} within 90 s")
}

/// The stack and a small pool on its database.
async fn connect() -> Result<(Stack, sqlx::PgPool)> {
    let stack = Stack::from_env()?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack.database_url)
        .await?;
    Ok((stack, pool))
}

#[tokio::test]
async fn postgres_changes_arrive_as_debezium_events() -> Result<()> {
    let _shared = shared().await;
    let (stack, pool) = connect().await?;
    let consumer = consumer_at_end(&stack)?;
    let id = Uuid::new_v4();
    let name = unique_name("user");

    let before = current_lsn(&pool).await?;
    sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at, version) \
         VALUES ($1, $2, $3, now(), now(), 1)",
    )
    .bind(id)
    .bind(&name)
    .bind(format!("{name}@example.com"))
    .execute(&pool)
    .await?;
    let after = current_lsn(&pool).await?;

    let created = next_event_for(&consumer, id)?.context("tombstone instead of a create")?;
    let payload = &created["payload"];
    assert_eq!(payload["op"], "c", "{created}");
    assert_eq!(payload["after"]["id"], id.to_string());
    assert_eq!(payload["after"]["name"], name);
    assert_eq!(payload["after"]["email"], format!("{name}@example.com"));
    assert_eq!(payload["after"]["version"], 1);
    assert!(payload["before"].is_null());
    assert_eq!(payload["source"]["table"], "users");
    assert_eq!(payload["source"]["db"], "cdc_db");
    let lsn = payload["source"]["lsn"]
        .as_u64()
        .context("source.lsn missing")?;
    assert!(
        (before..=after).contains(&lsn),
        "source LSN {lsn:X} outside the insert's WAL range {before:X}..={after:X}"
    );

    sqlx::query("UPDATE users SET name = $2, version = 2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(format!("{name}-renamed"))
        .execute(&pool)
        .await?;
    let updated = next_event_for(&consumer, id)?.context("tombstone instead of an update")?;
    assert_eq!(updated["payload"]["op"], "u", "{updated}");
    assert_eq!(
        updated["payload"]["before"]["name"], name,
        "REPLICA IDENTITY FULL gives the before image"
    );
    assert_eq!(
        updated["payload"]["after"]["name"],
        format!("{name}-renamed")
    );
    let update_lsn = updated["payload"]["source"]["lsn"]
        .as_u64()
        .context("source.lsn missing")?;
    assert!(
        update_lsn > lsn,
        "LSNs must grow: {update_lsn:X} after {lsn:X}"
    );

    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await?;
    let deleted = next_event_for(&consumer, id)?.context("tombstone before the delete event")?;
    assert_eq!(deleted["payload"]["op"], "d", "{deleted}");
    assert!(deleted["payload"]["after"].is_null());
    assert_eq!(deleted["payload"]["before"]["id"], id.to_string());
    assert!(
        next_event_for(&consumer, id)?.is_none(),
        "a tombstone follows the delete"
    );
    Ok(())
}

#[test]
fn parses_lsns() -> Result<()> {
    assert_eq!(parse_lsn("0/1991588")?, 0x1991588);
    assert_eq!(parse_lsn("16/B374D848")?, 0x16_B374_D848);
    assert!(parse_lsn("nonsense").is_err());
    Ok(())
}

/// While `users` and `orders` take no writes, other writes still fill the WAL; Debezium's
/// heartbeat (a write to a table of its publication every 10 s) lets the slot confirm a position
/// past them, so an idle capture never holds WAL back.
#[tokio::test]
async fn the_slot_advances_while_the_captured_tables_are_idle() -> Result<()> {
    let _shared = shared().await;
    let (stack, pool) = connect().await?;
    let table = unique_name("it_idle");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (n bigint); INSERT INTO {table} SELECT generate_series(1, 20000)"
    )))
    .execute(&pool)
    .await?;
    let target = current_lsn(&pool).await?;
    let slot = stack
        .topology
        .get("DEBEZIUM_SLOT_NAME")
        .context("DEBEZIUM_SLOT_NAME missing in topology.env")?
        .clone();
    let outcome = stack_tests::wait_for(
        "the slot to confirm a position past WAL written outside the captured tables",
        Duration::from_secs(90),
        || {
            let (pool, slot) = (&pool, &slot);
            async move {
                let confirmed: Option<String> = sqlx::query_scalar(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                )
                .bind(slot)
                .fetch_optional(pool)
                .await?
                .flatten();
                let confirmed = confirmed.map(|c| parse_lsn(&c)).transpose()?;
                Ok(confirmed.filter(|c| *c >= target))
            }
        },
    )
    .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await?;
    let confirmed = outcome?;
    eprintln!("slot {slot} confirmed {confirmed:#x}, past {target:#x}");
    Ok(())
}

/// The connector's config as Kafka Connect stores and serves it holds a reference to the
/// replication password's file, never the password; the worker resolves it (the connector runs,
/// as every other test here shows).
#[tokio::test]
async fn connects_rest_api_never_serves_the_replication_password() -> Result<()> {
    let stack = Stack::from_env()?;
    let port = stack
        .topology
        .get("CONNECT_PORT")
        .context("CONNECT_PORT missing from the topology")?;
    let name = stack
        .topology
        .get("CONNECTOR_NAME")
        .context("CONNECTOR_NAME missing from the topology")?;
    let password = stack
        .topology
        .get("POSTGRES_REPLICATION_PASSWORD")
        .context("POSTGRES_REPLICATION_PASSWORD missing from the topology")?;
    let (status, body) = stack_tests::process::http_get(
        &format!("127.0.0.1:{port}"),
        &format!("/connectors/{name}/config"),
    )
    .await?;
    ensure!(status == 200, "Connect answered {status}: {body}");
    let config: Value = serde_json::from_str(&body)?;
    let stored = config["database.password"].as_str().unwrap_or_default();
    ensure!(
        stored.starts_with("${file:") && stored.ends_with(":database.password}"),
        "database.password is not a file reference: {stored:?}"
    );
    ensure!(
        !body.contains(password.as_str()),
        "Connect serves the password"
    );
    Ok(())
}

/// Every command line in the process list, as text.
fn command_lines() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .collect()
}

/// debezium-config.sh with the password inside the connector config (no secrets file): while it
/// runs, no process's command line holds the password. The probe connector points at a closed
/// port, so Connect refuses it at validation and nothing is created; the config still goes to
/// Connect (by curl, on its stdin), which is the moment that matters.
#[tokio::test]
async fn debezium_config_keeps_the_password_off_every_command_line() -> Result<()> {
    let _guard = shared().await;
    let stack = Stack::from_env()?;
    let port = stack
        .topology
        .get("CONNECT_PORT")
        .context("CONNECT_PORT missing from the topology")?;
    let name = unique_name("ps_probe");
    let password = unique_name("s3cret_for_ps");
    let mut child = std::process::Command::new("bash")
        .arg(stack_tests::repo_root().join("debezium-config.sh"))
        .env("CONNECT_URL", format!("http://127.0.0.1:{port}"))
        .env("CONNECTOR_NAME", &name)
        .env("DATABASE_PORT", "1")
        .env("POSTGRES_REPLICATION_PASSWORD", &password)
        .env("WAIT_SECONDS", "20")
        .env_remove("CONNECT_SECRETS_FILE")
        .env_remove("KAFKA_TOPICS_CMD")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let put = format!("/connectors/{name}/config");
    let (mut samples, mut saw_put) = (0_u32, false);
    let status = loop {
        for line in command_lines() {
            ensure!(
                !line.contains(&password),
                "a command line holds the password: {line}"
            );
            saw_put |= line.contains("curl") && line.contains(&put);
        }
        samples += 1;
        if let Some(status) = child.try_wait()? {
            break status;
        }
        ensure!(samples < 20_000, "debezium-config.sh did not finish");
        std::thread::sleep(Duration::from_millis(2));
    };
    // Connect validates the config by connecting to port 1, and refuses it.
    ensure!(
        !status.success(),
        "a connector on a closed port was accepted"
    );
    ensure!(
        saw_put,
        "the PUT to Connect was never seen in {samples} looks at the process list"
    );
    let (code, _) = stack_tests::process::http_get(
        &format!("127.0.0.1:{port}"),
        &format!("/connectors/{name}"),
    )
    .await?;
    ensure!(code == 404, "the probe connector exists (HTTP {code})");
    Ok(())
}
