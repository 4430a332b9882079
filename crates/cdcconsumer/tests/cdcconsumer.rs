//! The CDC half against the real stack: changes committed in PostgreSQL — by the producer and
//! consumer, or by other clients in plain SQL — reach Cassandra through Debezium and cdcconsumer,
//! and `cdcconsumer verify` (waiting for quiet, then comparing every row of both stores) is clean
//! after each scenario: ≥ 10,000 events through every hop, changes made directly in SQL (updates,
//! soft and hard deletes, an order moving to another user, multi-row transactions, TRUNCATE), a
//! replay with a fresh consumer group, Kafka Connect SIGKILLed mid-stream, cdcconsumer SIGKILLed
//! mid-backlog, a Cassandra node stopped and brought back, and hostile records on the CDC topics.
//!
//! Where it adds strength, rows are also read from Cassandra directly and compared with what the
//! test expects independently of the sink: the model folded from the generated event stream, or
//! the rows the test itself wrote.
//!
//! Every test takes the exclusive lock: they all drive the one shared pipeline (the CDC topics,
//! `cdc_db`, `cdc_keyspace`). cdcconsumer runs with its default group, so a machine reads the CDC
//! backlog once; only the replay uses a fresh group.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cdc_core::events::Event;
use cdc_core::generator::{Generator, GeneratorConfig};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use futures::{StreamExt, TryStreamExt};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::CqlDecimal;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use stack_tests::{
    exclusive, log_tail, unique_name, wait_for, workspace_binary, RestartOnDrop, Stack,
};
use uuid::Uuid;

const CDCCONSUMER: &str = env!("CARGO_BIN_EXE_cdcconsumer");
const CDC_USERS: &str = "cdc.public.users";
const CDC_ORDERS: &str = "cdc.public.orders";
/// cdcconsumer's default consumer group.
const CDC_GROUP: &str = "cdc-cassandra-consumer";
const KEYSPACE: &str = "cdc_keyspace";
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the verifier may wait for the pipeline to go quiet.
const QUIET_TIMEOUT_SECS: u64 = 240;
/// Most CDC records the replay test reads again (about two minutes in a debug build); on a stack
/// that has collected more history the test is skipped, saying so.
const REPLAY_LIMIT: u64 = 100_000;

// ---------------------------------------------------------------------------------------------
// The pipeline under test
// ---------------------------------------------------------------------------------------------

/// Connections to the running stack, and a folder for the logs of the processes a test starts.
struct Pipeline {
    stack: Stack,
    pool: PgPool,
    cassandra: Session,
    logs: PathBuf,
}

impl Pipeline {
    async fn new() -> Result<Self> {
        let stack = Stack::from_env()?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&stack.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        let cassandra = SessionBuilder::new()
            .known_nodes(&stack.cassandra_nodes)
            .connection_timeout(Duration::from_secs(10))
            .build()
            .await
            .context("connecting to Cassandra")?;
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique_name("cdcconsumer_it"));
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            stack,
            pool,
            cassandra,
            logs,
        })
    }

    /// The default group over both CDC topics, as `--groups` wants it.
    fn cdc_groups() -> Vec<String> {
        vec![group_spec(CDC_GROUP, &[CDC_USERS, CDC_ORDERS])]
    }

    fn cdcconsumer(&self, group: &str, idle_secs: u64, log: &Path) -> Result<Command> {
        let mut command = Command::new(CDCCONSUMER);
        command
            .env("KAFKA_BROKERS", &self.stack.brokers)
            .env("CASSANDRA_NODES", self.stack.cassandra_nodes.join(","))
            .env("CASSANDRA_KEYSPACE", KEYSPACE)
            .env("CDC_TOPICS", format!("{CDC_USERS},{CDC_ORDERS}"))
            .env("CDC_GROUP", group)
            .env("REPLICATION_FACTOR", self.stack.broker_count.to_string())
            .env("IDLE_TIMEOUT_SECS", idle_secs.to_string())
            .env("METRICS_ADDR", "")
            .env("LOG_LEVEL", "info,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?);
        Ok(command)
    }

    /// Starts cdcconsumer in the background (no idle timeout): stop it with [`Sink::terminate`].
    fn start_sink(&self, group: &str) -> Result<Sink> {
        let log = self
            .logs
            .join(format!("{}.log", unique_name("cdcconsumer")));
        let child = self
            .cdcconsumer(group, 0, &log)?
            .spawn()
            .context("starting cdcconsumer")?;
        Ok(Sink {
            child: Some(child),
            log,
        })
    }

    /// Runs cdcconsumer until it has been idle for `idle_secs`; it must exit 0 within `deadline`.
    async fn run_sink_until_idle(&self, idle_secs: u64, deadline: Duration) -> Result<SinkSummary> {
        let log = self
            .logs
            .join(format!("{}.log", unique_name("cdcconsumer")));
        let child = self
            .cdcconsumer(CDC_GROUP, idle_secs, &log)?
            .spawn()
            .context("starting cdcconsumer")?;
        let mut sink = Sink {
            child: Some(child),
            log,
        };
        let status = sink.wait_exit(deadline).await?;
        sink.summary(status)
    }

    /// Runs `cdcconsumer verify` and requires it clean: exit 0, every table with as many matching
    /// rows as it checked; also PostgreSQL's own counts equal the rows checked.
    async fn verify(&self, groups: &[String], consistency: &str) -> Result<Verified> {
        let started = Instant::now();
        let mut command = tokio::process::Command::new(CDCCONSUMER);
        command
            .arg("verify")
            .arg("--groups")
            .arg(groups.join(","))
            .arg("--quiet-timeout-secs")
            .arg(QUIET_TIMEOUT_SECS.to_string())
            .arg("--consistency")
            .arg(consistency)
            .env("KAFKA_BROKERS", &self.stack.brokers)
            .env("CASSANDRA_NODES", self.stack.cassandra_nodes.join(","))
            .env("CASSANDRA_KEYSPACE", KEYSPACE)
            .env("DATABASE_URL", &self.stack.database_url)
            .env("LOG_LEVEL", "warn,rdkafka=error")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(
            Duration::from_secs(QUIET_TIMEOUT_SECS + 180),
            command.output(),
        )
        .await
        .context("cdcconsumer verify did not finish")??;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        ensure!(
            output.status.success() && stdout.contains("verify: Cassandra agrees with PostgreSQL"),
            "cdcconsumer verify failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        let verified = Verified::parse(&stdout)?;
        for table in ["users", "orders", "orders_by_user"] {
            let counts = verified.table(table)?;
            ensure!(
                counts.matching == counts.checked
                    && counts.missing == 0
                    && counts.extra == 0
                    && counts.different == 0,
                "{table} not clean in a clean report:\n{stdout}"
            );
        }
        let (users, orders) = self.pg_counts().await?;
        ensure!(
            verified.table("users")?.checked == users
                && verified.table("orders")?.checked == orders
                && verified.table("orders_by_user")?.checked == orders,
            "PostgreSQL holds {users} users and {orders} orders, the verifier checked:\n{stdout}"
        );
        eprintln!(
            "verify clean in {:.1}s: {users} users, {orders} orders",
            started.elapsed().as_secs_f64()
        );
        Ok(verified)
    }

    async fn pg_counts(&self) -> Result<(u64, u64)> {
        let (users, orders): (i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders)")
                .fetch_one(&self.pool)
                .await?;
        Ok((u64::try_from(users)?, u64::try_from(orders)?))
    }

    fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.stack.brokers);
        config
    }
}

fn group_spec(group: &str, topics: &[&str]) -> String {
    format!("{group}={}", topics.join("+"))
}

// ---------------------------------------------------------------------------------------------
// cdcconsumer processes
// ---------------------------------------------------------------------------------------------

/// A running cdcconsumer; killed when dropped, so a failing test leaves nothing behind.
struct Sink {
    child: Option<Child>,
    log: PathBuf,
}

/// `consumed`, `applied` and `dead_lettered` of one topic, from cdcconsumer's last lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TopicCounts {
    consumed: u64,
    applied: u64,
    dead_lettered: u64,
}

type SinkSummary = BTreeMap<String, TopicCounts>;

impl Sink {
    fn pid(&self) -> Result<u32> {
        Ok(self
            .child
            .as_ref()
            .context("cdcconsumer already ended")?
            .id())
    }

    /// SIGTERM: cdcconsumer drains, commits and must exit 0.
    async fn terminate(mut self) -> Result<SinkSummary> {
        let pid = self.pid()?.to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let status = self.wait_exit(Duration::from_secs(60)).await?;
        self.summary(status)
    }

    /// SIGKILL: no draining, no final commit.
    fn kill(mut self) -> Result<()> {
        let mut child = self.child.take().context("cdcconsumer already ended")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().context("cdcconsumer already ended")?;
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > deadline {
                bail!(
                    "cdcconsumer still running after {deadline:?}; its log ends:\n{}",
                    log_tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn summary(&mut self, status: ExitStatus) -> Result<SinkSummary> {
        let mut child = self.child.take().context("cdcconsumer already ended")?;
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stdout)?;
        }
        ensure!(
            status.success(),
            "cdcconsumer exited with {status}:\n{stdout}\nits log ends:\n{}",
            log_tail(&self.log, 30)
        );
        let summary = parse_sink_summary(&stdout);
        ensure!(
            summary.contains_key(CDC_USERS) && summary.contains_key(CDC_ORDERS),
            "no summary lines in cdcconsumer's output:\n{stdout}"
        );
        eprintln!("{}", stdout.trim_end());
        Ok(summary)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `cdcconsumer: topic=T consumed=N applied=N dead_lettered=N` lines.
fn parse_sink_summary(stdout: &str) -> SinkSummary {
    let mut summary = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("cdcconsumer: topic=") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(topic) = words.next() else {
            continue;
        };
        let mut counts = TopicCounts::default();
        for word in words {
            let Some((name, value)) = word.split_once('=') else {
                continue;
            };
            let value = value.parse().unwrap_or(u64::MAX);
            match name {
                "consumed" => counts.consumed = value,
                "applied" => counts.applied = value,
                "dead_lettered" => counts.dead_lettered = value,
                _ => {}
            }
        }
        summary.insert(topic.to_owned(), counts);
    }
    summary
}

/// The verifier's per-table line: `users: checked N, matching N, missing N, extra N, different N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableCounts {
    checked: u64,
    matching: u64,
    missing: u64,
    extra: u64,
    different: u64,
}

#[derive(Debug)]
struct Verified {
    tables: BTreeMap<String, TableCounts>,
    stdout: String,
}

impl Verified {
    fn parse(stdout: &str) -> Result<Self> {
        let mut tables = BTreeMap::new();
        for line in stdout.lines() {
            let Some((table, rest)) = line.split_once(": checked ") else {
                continue;
            };
            let rest = rest.split(" (").next().unwrap_or(rest);
            let parts: Vec<&str> = rest.split(", ").collect();
            let number = |index: usize, name: &str| -> Result<u64> {
                let part = parts
                    .get(index)
                    .with_context(|| format!("no {name} in `{line}`"))?;
                Ok(part.strip_prefix(name).unwrap_or(part).trim().parse()?)
            };
            tables.insert(
                table.trim().to_owned(),
                TableCounts {
                    checked: number(0, "")?,
                    matching: number(1, "matching")?,
                    missing: number(2, "missing")?,
                    extra: number(3, "extra")?,
                    different: number(4, "different")?,
                },
            );
        }
        Ok(Self {
            tables,
            stdout: stdout.to_owned(),
        })
    }

    fn table(&self, name: &str) -> Result<TableCounts> {
        self.tables
            .get(name)
            .copied()
            .with_context(|| format!("no {name} line in the verifier's output:\n{}", self.stdout))
    }
}

// ---------------------------------------------------------------------------------------------
// Rows as both stores can be compared
// ---------------------------------------------------------------------------------------------

/// A users row: timestamps in whole milliseconds (Cassandra's precision).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserState {
    name: Option<String>,
    email: Option<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    deleted_at: Option<i64>,
    version: Option<i64>,
}

/// An orders row (or an orders_by_user row, whose `user_id` is its partition key): timestamps in
/// whole milliseconds, amounts compared by value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderState {
    user_id: Option<Uuid>,
    product: Option<String>,
    quantity: Option<i32>,
    amount: Option<Decimal>,
    status: Option<String>,
    order_date: Option<NaiveDate>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    deleted_at: Option<i64>,
    version: Option<i64>,
}

fn millis(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(|t| t.timestamp_millis())
}

fn decimal(value: Option<CqlDecimal>) -> Result<Option<Decimal>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let (bytes, scale) = value.as_signed_be_bytes_slice_and_exponent();
    ensure!(bytes.len() <= 16, "decimal of {} bytes", bytes.len());
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut wide = if negative { [0xff; 16] } else { [0; 16] };
    wide[16 - bytes.len()..].copy_from_slice(bytes);
    Ok(Some(Decimal::try_from_i128_with_scale(
        i128::from_be_bytes(wide),
        u32::try_from(scale)?,
    )?))
}

type Ts = Option<DateTime<Utc>>;
type UserColumns = (Option<String>, Option<String>, Ts, Ts, Ts, Option<i64>);
type OrderColumns = (
    Option<String>,
    Option<i32>,
    Option<CqlDecimal>,
    Option<String>,
    Option<NaiveDate>,
    Ts,
    Ts,
    Ts,
    Option<i64>,
);

const USER_COLUMNS: &str = "name, email, created_at, updated_at, deleted_at, version";
const ORDER_COLUMNS: &str =
    "product, quantity, amount, status, order_date, created_at, updated_at, deleted_at, version";

fn user_state((name, email, created, updated, deleted, version): UserColumns) -> UserState {
    UserState {
        name,
        email,
        created_at: millis(created),
        updated_at: millis(updated),
        deleted_at: millis(deleted),
        version,
    }
}

fn order_state(user_id: Option<Uuid>, columns: OrderColumns) -> Result<OrderState> {
    let (product, quantity, amount, status, order_date, created, updated, deleted, version) =
        columns;
    Ok(OrderState {
        user_id,
        product,
        quantity,
        amount: decimal(amount)?,
        status,
        order_date,
        created_at: millis(created),
        updated_at: millis(updated),
        deleted_at: millis(deleted),
        version,
    })
}

/// Reads of `cdc_keyspace` at one consistency level.
struct CassandraReader<'a> {
    session: &'a Session,
    consistency: Consistency,
}

impl<'a> CassandraReader<'a> {
    fn new(session: &'a Session, consistency: Consistency) -> Self {
        Self {
            session,
            consistency,
        }
    }

    async fn prepare(&self, cql: String) -> Result<PreparedStatement> {
        let mut statement = self.session.prepare(cql).await?;
        statement.set_consistency(self.consistency);
        statement.set_is_idempotent(true);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        statement.set_page_size(5000);
        Ok(statement)
    }

    /// Every row of a full-table `SELECT`, page by page.
    async fn scan<R>(&self, cql: String) -> Result<Vec<R>>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send + 'static,
    {
        let statement = self.prepare(cql).await?;
        let rows = self
            .session
            .execute_iter(statement, ())
            .await?
            .rows_stream::<R>()?
            .try_collect()
            .await?;
        Ok(rows)
    }

    /// Runs a one-key `SELECT` for each key (bounded concurrency) and keeps the rows found.
    async fn lookup<K, R>(&self, cql: String, keys: &[K]) -> Result<Vec<(K, R)>>
    where
        K: Copy + scylla::serialize::value::SerializeValue + Send + Sync,
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let statement = self.prepare(cql).await?;
        let statement = &statement;
        let results: Vec<Result<Vec<(K, R)>>> = futures::stream::iter(keys.iter().copied())
            .map(|key| async move {
                let result = self
                    .session
                    .execute_unpaged(statement, (key,))
                    .await?
                    .into_rows_result()?;
                let rows = result
                    .rows::<R>()?
                    .map(|row| row.map(|r| (key, r)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut found = Vec::new();
        for result in results {
            found.extend(result?);
        }
        Ok(found)
    }

    async fn users(&self, ids: &[Uuid]) -> Result<BTreeMap<Uuid, UserState>> {
        let rows: Vec<(Uuid, UserColumns)> = self
            .lookup(
                format!("SELECT {USER_COLUMNS} FROM {KEYSPACE}.users WHERE id = ?"),
                ids,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, columns)| (id, user_state(columns)))
            .collect())
    }

    async fn orders(&self, ids: &[Uuid]) -> Result<BTreeMap<Uuid, OrderState>> {
        let rows: Vec<(Uuid, OrderRowWithUser)> = self
            .lookup(
                format!("SELECT user_id, {ORDER_COLUMNS} FROM {KEYSPACE}.orders WHERE id = ?"),
                ids,
            )
            .await?;
        rows.into_iter()
            .map(|(id, row)| {
                let (user_id, columns) = split_order_row(row);
                Ok((id, order_state(user_id, columns)?))
            })
            .collect()
    }

    /// The orders_by_user rows of these users, keyed (user_id, order_id).
    async fn orders_of_users(
        &self,
        user_ids: &[Uuid],
    ) -> Result<BTreeMap<(Uuid, Uuid), OrderState>> {
        let rows: Vec<(Uuid, OrderByUserRow)> = self
            .lookup(
                format!(
                    "SELECT order_id, {ORDER_COLUMNS} FROM {KEYSPACE}.orders_by_user WHERE user_id = ?"
                ),
                user_ids,
            )
            .await?;
        rows.into_iter()
            .map(|(user_id, row)| {
                let (order_id, columns) = split_order_by_user_row(row);
                Ok(((user_id, order_id), order_state(Some(user_id), columns)?))
            })
            .collect()
    }

    /// Rows in a table (orders_by_user counts CQL rows, not partitions).
    async fn count(&self, table: &str) -> Result<u64> {
        let key = if table == "orders_by_user" {
            "user_id"
        } else {
            "id"
        };
        let rows: Vec<(Uuid,)> = self
            .scan(format!("SELECT {key} FROM {KEYSPACE}.{table}"))
            .await?;
        Ok(u64::try_from(rows.len())?)
    }

    /// All three tables in full, each row with the write time of its `version` cell.
    async fn snapshot(&self) -> Result<Snapshot> {
        let users: Vec<UserScanRow> = self
            .scan(format!(
                "SELECT id, {USER_COLUMNS}, WRITETIME(version) FROM {KEYSPACE}.users"
            ))
            .await?;
        let mut snapshot = Snapshot::default();
        for (id, name, email, created, updated, deleted, version, written) in users {
            snapshot.users.insert(
                id,
                (
                    user_state((name, email, created, updated, deleted, version)),
                    written,
                ),
            );
        }
        let orders: Vec<OrderScanRow> = self
            .scan(format!(
                "SELECT id, user_id, {ORDER_COLUMNS}, WRITETIME(version) FROM {KEYSPACE}.orders"
            ))
            .await?;
        for row in orders {
            let (id, user_id, columns, written) = unpack_order_scan_row(row);
            snapshot
                .orders
                .insert(id, (order_state(user_id, columns)?, written));
        }
        let by_user: Vec<OrderScanRow> = self
            .scan(format!(
                "SELECT user_id, order_id, {ORDER_COLUMNS}, WRITETIME(version) \
                 FROM {KEYSPACE}.orders_by_user"
            ))
            .await?;
        for row in by_user {
            let (user_id, order_id, columns, written) = unpack_order_scan_row(row);
            snapshot.orders_by_user.insert(
                (user_id, order_id.unwrap_or_default()),
                (order_state(Some(user_id), columns)?, written),
            );
        }
        Ok(snapshot)
    }
}

/// A full-scan row of users, with the write time of `version` last.
type UserScanRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Ts,
    Ts,
    Ts,
    Option<i64>,
    Option<i64>,
);

/// `user_id` then the order columns, as read from `orders`.
type OrderRowWithUser = (
    Option<Uuid>,
    Option<String>,
    Option<i32>,
    Option<CqlDecimal>,
    Option<String>,
    Option<NaiveDate>,
    Ts,
    Ts,
    Ts,
    Option<i64>,
);

/// `order_id` then the order columns, as read from `orders_by_user`.
type OrderByUserRow = (
    Uuid,
    Option<String>,
    Option<i32>,
    Option<CqlDecimal>,
    Option<String>,
    Option<NaiveDate>,
    Ts,
    Ts,
    Ts,
    Option<i64>,
);

/// A full-scan row of orders (`id, user_id, …`) or orders_by_user (`user_id, order_id, …`), with
/// the write time of `version` last.
type OrderScanRow = (
    Uuid,
    Option<Uuid>,
    Option<String>,
    Option<i32>,
    Option<CqlDecimal>,
    Option<String>,
    Option<NaiveDate>,
    Ts,
    Ts,
    Ts,
    Option<i64>,
    Option<i64>,
);

fn split_order_row(row: OrderRowWithUser) -> (Option<Uuid>, OrderColumns) {
    let (user_id, product, quantity, amount, status, date, created, updated, deleted, version) =
        row;
    (
        user_id,
        (
            product, quantity, amount, status, date, created, updated, deleted, version,
        ),
    )
}

fn split_order_by_user_row(row: OrderByUserRow) -> (Uuid, OrderColumns) {
    let (order_id, product, quantity, amount, status, date, created, updated, deleted, version) =
        row;
    (
        order_id,
        (
            product, quantity, amount, status, date, created, updated, deleted, version,
        ),
    )
}

/// (first key, second key, order columns, write time of `version`).
fn unpack_order_scan_row(row: OrderScanRow) -> (Uuid, Option<Uuid>, OrderColumns, Option<i64>) {
    let (
        key,
        second,
        product,
        quantity,
        amount,
        status,
        date,
        created,
        updated,
        deleted,
        version,
        written,
    ) = row;
    (
        key,
        second,
        (
            product, quantity, amount, status, date, created, updated, deleted, version,
        ),
        written,
    )
}

/// Everything cdc_keyspace holds, with write times.
#[derive(Debug, Default, PartialEq, Eq)]
struct Snapshot {
    users: BTreeMap<Uuid, (UserState, Option<i64>)>,
    orders: BTreeMap<Uuid, (OrderState, Option<i64>)>,
    orders_by_user: BTreeMap<(Uuid, Uuid), (OrderState, Option<i64>)>,
}

/// The rows of these ids in PostgreSQL.
async fn pg_users(pool: &PgPool, ids: &[Uuid]) -> Result<BTreeMap<Uuid, UserState>> {
    type Row = (Uuid, String, String, DateTime<Utc>, DateTime<Utc>, Ts, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, email, created_at, updated_at, deleted_at, version FROM users WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, email, created, updated, deleted, version)| {
            (
                id,
                user_state((
                    Some(name),
                    Some(email),
                    Some(created),
                    Some(updated),
                    deleted,
                    Some(version),
                )),
            )
        })
        .collect())
}

async fn pg_orders(pool: &PgPool, ids: &[Uuid]) -> Result<BTreeMap<Uuid, OrderState>> {
    type Row = (
        Uuid,
        Uuid,
        String,
        i32,
        Decimal,
        String,
        NaiveDate,
        DateTime<Utc>,
        DateTime<Utc>,
        Ts,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, user_id, product, quantity, amount, status, order_date, created_at, updated_at, \
         deleted_at, version FROM orders WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                user_id,
                product,
                quantity,
                amount,
                status,
                date,
                created,
                updated,
                deleted,
                version,
            )| {
                (
                    id,
                    OrderState {
                        user_id: Some(user_id),
                        product: Some(product),
                        quantity: Some(quantity),
                        amount: Some(amount),
                        status: Some(status),
                        order_date: Some(date),
                        created_at: Some(created.timestamp_millis()),
                        updated_at: Some(updated.timestamp_millis()),
                        deleted_at: millis(deleted),
                        version: Some(version),
                    },
                )
            },
        )
        .collect())
}

/// Lines for every key missing, unexpected or different.
fn differences<K: Ord + Debug, V: PartialEq + Debug>(
    what: &str,
    expected: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (key, value) in expected {
        match actual.get(key) {
            None => found.push(format!("{what} {key:?} missing")),
            Some(other) if other != value => found.push(format!(
                "{what} {key:?}: expected {value:?}, found {other:?}"
            )),
            Some(_) => {}
        }
    }
    for key in actual.keys().filter(|k| !expected.contains_key(k)) {
        found.push(format!("{what} {key:?} not expected"));
    }
    found
}

fn ensure_no_differences(problems: &[String]) -> Result<()> {
    ensure!(
        problems.is_empty(),
        "{} differences; first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The expected rows of a generated event stream
// ---------------------------------------------------------------------------------------------

/// The expected final rows computed from the events alone: per entity the state with the highest
/// version; orders of a deleted user are deleted at the user's deletion time unless they were
/// deleted before (the rule of PostgreSQL's trigger and of the consumer).
#[derive(Debug, Default)]
struct Model {
    users: BTreeMap<Uuid, UserState>,
    orders: BTreeMap<Uuid, OrderState>,
}

impl Model {
    fn from_events(events: &[Event]) -> Self {
        let mut users = BTreeMap::new();
        let mut orders = BTreeMap::new();
        for event in events {
            match event {
                Event::User(e) => {
                    let entry = users
                        .entry(e.user.id)
                        .or_insert((e.user.clone(), e.version));
                    if e.version > entry.1 {
                        *entry = (e.user.clone(), e.version);
                    }
                }
                Event::Order(e) => {
                    let entry = orders
                        .entry(e.order.id)
                        .or_insert((e.order.clone(), e.version));
                    if e.version > entry.1 {
                        *entry = (e.order.clone(), e.version);
                    }
                }
            }
        }
        let mut model = Self::default();
        for (order, version) in orders.values() {
            let mut order = order.clone();
            let user_deleted = users.get(&order.user_id).and_then(|(u, _)| u.deleted_at);
            if let (None, Some(at)) = (order.deleted_at, user_deleted) {
                order.deleted_at = Some(at);
                order.updated_at = order.updated_at.max(at);
            }
            model.orders.insert(
                order.id,
                OrderState {
                    user_id: Some(order.user_id),
                    product: Some(order.product.clone()),
                    quantity: Some(order.quantity),
                    amount: Some(order.amount),
                    status: Some(order.status.as_str().to_owned()),
                    order_date: Some(order.order_date),
                    created_at: Some(order.created_at.timestamp_millis()),
                    updated_at: Some(order.updated_at.timestamp_millis()),
                    deleted_at: millis(order.deleted_at),
                    version: Some(*version),
                },
            );
        }
        for (user, version) in users.values() {
            model.users.insert(
                user.id,
                UserState {
                    name: Some(user.name.clone()),
                    email: Some(user.email.clone()),
                    created_at: Some(user.created_at.timestamp_millis()),
                    updated_at: Some(user.updated_at.timestamp_millis()),
                    deleted_at: millis(user.deleted_at),
                    version: Some(*version),
                },
            );
        }
        model
    }

    /// orders_by_user as it must be: every order under its user.
    fn orders_by_user(&self) -> BTreeMap<(Uuid, Uuid), OrderState> {
        self.orders
            .iter()
            .filter_map(|(id, order)| Some(((order.user_id?, *id), order.clone())))
            .collect()
    }

    /// Compares Cassandra's rows of this model's ids (users, orders, orders_by_user of its users).
    async fn check_cassandra(&self, reader: &CassandraReader<'_>) -> Result<()> {
        let user_ids: Vec<Uuid> = self.users.keys().copied().collect();
        let order_ids: Vec<Uuid> = self.orders.keys().copied().collect();
        let mut problems = differences("user", &self.users, &reader.users(&user_ids).await?);
        problems.extend(differences(
            "order",
            &self.orders,
            &reader.orders(&order_ids).await?,
        ));
        let mut owners: BTreeSet<Uuid> = self.users.keys().copied().collect();
        owners.extend(self.orders.values().filter_map(|o| o.user_id));
        let owners: Vec<Uuid> = owners.into_iter().collect();
        problems.extend(differences(
            "orders_by_user",
            &self.orders_by_user(),
            &reader.orders_of_users(&owners).await?,
        ));
        ensure_no_differences(&problems)
    }
}

fn seed() -> u64 {
    u64::from_le_bytes(
        Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------------
// Rows written directly in SQL
// ---------------------------------------------------------------------------------------------

/// What a test wrote to PostgreSQL itself, at the row's final state.
#[derive(Debug, Default, Clone)]
struct Written {
    /// id → (version, soft-deleted)
    users: BTreeMap<Uuid, (i64, bool)>,
    /// id → (user_id, version, soft-deleted)
    orders: BTreeMap<Uuid, (Uuid, i64, bool)>,
}

impl Written {
    /// PostgreSQL's trigger, mirrored: a user's soft delete marks their live orders deleted.
    fn soft_delete_user(&mut self, id: Uuid) {
        if let Some(user) = self.users.get_mut(&id) {
            user.0 += 1;
            user.1 = true;
        }
        for order in self.orders.values_mut().filter(|o| o.0 == id) {
            order.2 = true;
        }
    }

    /// Cassandra holds every row written, at its final version and owner, orders_by_user included.
    async fn check_cassandra(&self, reader: &CassandraReader<'_>) -> Result<()> {
        let user_ids: Vec<Uuid> = self.users.keys().copied().collect();
        let order_ids: Vec<Uuid> = self.orders.keys().copied().collect();
        let users: BTreeMap<Uuid, (i64, bool)> = reader
            .users(&user_ids)
            .await?
            .into_iter()
            .map(|(id, u)| (id, (u.version.unwrap_or(-1), u.deleted_at.is_some())))
            .collect();
        let orders: BTreeMap<Uuid, (Uuid, i64, bool)> = reader
            .orders(&order_ids)
            .await?
            .into_iter()
            .map(|(id, o)| {
                (
                    id,
                    (
                        o.user_id.unwrap_or_default(),
                        o.version.unwrap_or(-1),
                        o.deleted_at.is_some(),
                    ),
                )
            })
            .collect();
        let expected_by_user: BTreeMap<(Uuid, Uuid), (i64, bool)> = self
            .orders
            .iter()
            .map(|(id, (user, version, deleted))| ((*user, *id), (*version, *deleted)))
            .collect();
        let by_user: BTreeMap<(Uuid, Uuid), (i64, bool)> = reader
            .orders_of_users(&user_ids)
            .await?
            .into_iter()
            .map(|(key, o)| (key, (o.version.unwrap_or(-1), o.deleted_at.is_some())))
            .collect();
        let mut problems = differences("user", &self.users, &users);
        problems.extend(differences("order", &self.orders, &orders));
        problems.extend(differences("orders_by_user", &expected_by_user, &by_user));
        ensure_no_differences(&problems)
    }
}

/// Ids derived from one random base, so that a test can name the rows a writer makes before it
/// makes them.
#[derive(Debug, Clone, Copy)]
struct Ids {
    base: u128,
}

impl Ids {
    fn new() -> Self {
        Self {
            base: Uuid::new_v4().as_u128() & !0xffff_ffff,
        }
    }

    fn id(&self, n: usize, kind: u128) -> Uuid {
        let n = u128::try_from(n).unwrap_or_default();
        uuid::Builder::from_random_bytes((self.base + n * 4 + kind).to_be_bytes()).into_uuid()
    }

    fn user(&self, n: usize) -> Uuid {
        self.id(n, 0)
    }

    fn order(&self, n: usize, which: u128) -> Uuid {
        self.id(n, 1 + which % 2)
    }
}

async fn insert_user(tx: &mut sqlx::PgConnection, id: Uuid, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at, deleted_at, version) \
         VALUES ($1, $2, $3, now(), now(), NULL, 1)",
    )
    .bind(id)
    .bind(name)
    .bind(format!("{}@example.com", name.replace(' ', ".")))
    .execute(tx)
    .await?;
    Ok(())
}

async fn insert_order(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    user_id: Uuid,
    product: &str,
    cents: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (id, user_id, product, quantity, amount, status, order_date, \
         created_at, updated_at, deleted_at, version) \
         VALUES ($1, $2, $3, 1, $4, 'PLACED', CURRENT_DATE, now(), now(), NULL, 1)",
    )
    .bind(id)
    .bind(user_id)
    .bind(product)
    .bind(Decimal::new(cents, 2))
    .execute(tx)
    .await?;
    Ok(())
}

/// A SQL client writing rounds of changes until told to stop, as another application would: each
/// round one transaction that inserts a user with two orders, renames the previous user, ships the
/// previous user's first order; every 10th round moves an order to the new user, every 25th
/// soft-deletes a user (the trigger marks their orders deleted).
struct SqlWriter {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    ids: Ids,
    task: Option<tokio::task::JoinHandle<Result<Written>>>,
}

impl SqlWriter {
    /// Starts writing, `pause` between rounds, `max_rounds` at most.
    fn start(pool: PgPool, max_rounds: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let ids = Ids::new();
        let task = tokio::spawn(write_rounds(
            pool,
            ids,
            Arc::clone(&stop),
            Arc::clone(&rounds),
            max_rounds,
            pause,
        ));
        Self {
            stop,
            rounds,
            ids,
            task: Some(task),
        }
    }

    fn rounds(&self) -> usize {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` rounds are committed.
    async fn wait_rounds(&self, n: usize, timeout: Duration) -> Result<()> {
        let task = self.task.as_ref().context("writer already finished")?;
        wait_for(&format!("{n} writer rounds"), timeout, || async move {
            if self.rounds() >= n {
                return Ok(Some(()));
            }
            ensure!(!task.is_finished(), "the SQL writer stopped early");
            Ok(None)
        })
        .await
    }

    async fn finish(mut self) -> Result<Written> {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task.take().context("writer already finished")?;
        task.await?
    }
}

impl Drop for SqlWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_rounds(
    pool: PgPool,
    ids: Ids,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    max_rounds: usize,
    pause: Duration,
) -> Result<Written> {
    let mut written = Written::default();
    for n in 0..max_rounds {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let next = &mut written;
        let mut tx = pool.begin().await?;
        let user = ids.user(n);
        insert_user(&mut tx, user, &format!("writer user {n}")).await?;
        next.users.insert(user, (1, false));
        for which in 0..2 {
            let order = ids.order(n, which);
            let cents = 1000 + i64::try_from(n)? * 3 + i64::try_from(which)?;
            insert_order(&mut tx, order, user, &format!("product {n}/{which}"), cents).await?;
            next.orders.insert(order, (user, 1, false));
        }
        if n >= 1 {
            let previous = ids.user(n - 1);
            sqlx::query(
                "UPDATE users SET name = name || ' (renamed)', updated_at = now(), \
                 version = version + 1 WHERE id = $1",
            )
            .bind(previous)
            .execute(&mut *tx)
            .await?;
            if let Some(u) = next.users.get_mut(&previous) {
                u.0 += 1;
            }
            let shipped = ids.order(n - 1, 0);
            sqlx::query(
                "UPDATE orders SET status = 'SHIPPED', quantity = quantity + 1, \
                 updated_at = now(), version = version + 1 WHERE id = $1",
            )
            .bind(shipped)
            .execute(&mut *tx)
            .await?;
            if let Some(o) = next.orders.get_mut(&shipped) {
                o.1 += 1;
            }
        }
        if n >= 2 && n % 10 == 0 {
            let moved = ids.order(n - 2, 1);
            sqlx::query(
                "UPDATE orders SET user_id = $2, updated_at = now(), version = version + 1 \
                 WHERE id = $1",
            )
            .bind(moved)
            .bind(user)
            .execute(&mut *tx)
            .await?;
            if let Some(o) = next.orders.get_mut(&moved) {
                o.0 = user;
                o.1 += 1;
            }
        }
        if n >= 3 && n % 25 == 0 {
            let deleted = ids.user(n - 3);
            sqlx::query(
                "UPDATE users SET deleted_at = now(), updated_at = now(), version = version + 1 \
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(deleted)
            .execute(&mut *tx)
            .await?;
            next.soft_delete_user(deleted);
        }
        tx.commit().await?;
        rounds.store(n + 1, Ordering::SeqCst);
        // A steady stream rather than a burst: the faults hit while changes keep coming.
        tokio::time::sleep(pause).await;
    }
    Ok(written)
}

// ---------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------

/// The end offset of every partition of `topic`.
fn end_offsets(pipeline: &Pipeline, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = pipeline.kafka_config().create()?;
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut ends = BTreeMap::new();
    for partition in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT)?;
        ends.insert(partition, high);
    }
    Ok(ends)
}

/// Records in a topic (start to end offset, over every partition).
fn records_in(pipeline: &Pipeline, topic: &str) -> Result<u64> {
    let consumer: BaseConsumer = pipeline.kafka_config().create()?;
    let mut total = 0;
    for partition in end_offsets(pipeline, topic)?.keys() {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, KAFKA_TIMEOUT)?;
        total += u64::try_from(high - low)?;
    }
    Ok(total)
}

/// Every record of `topic` from the offsets in `from` up to the end offsets of now.
fn records_since(
    pipeline: &Pipeline,
    topic: &str,
    from: &BTreeMap<i32, i64>,
) -> Result<Vec<OwnedMessage>> {
    let ends = end_offsets(pipeline, topic)?;
    let consumer: BaseConsumer = pipeline
        .kafka_config()
        .set("group.id", unique_name("it_cdc_reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for (partition, end) in &ends {
        let (low, _) = consumer.fetch_watermarks(topic, *partition, KAFKA_TIMEOUT)?;
        let start = from.get(partition).copied().unwrap_or(0).max(low);
        if start < *end {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(start))?;
            remaining.insert(*partition, *end);
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        ensure!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let partition = message.partition();
        if let Some(end) = remaining.get(&partition).copied() {
            if message.offset() + 1 >= end {
                remaining.remove(&partition);
            }
            if message.offset() < end {
                records.push(message.detach());
            }
        }
    }
    Ok(records)
}

/// A record's value as JSON (None for tombstones and undecodable values).
fn json_value(message: &OwnedMessage) -> Option<Value> {
    serde_json::from_slice(message.payload()?).ok()
}

/// Debezium's record for a change of row `id` with operation `op`, if present.
fn find_change<'a>(records: &'a [OwnedMessage], id: Uuid, op: &str) -> Option<&'a OwnedMessage> {
    let id = id.to_string();
    records.iter().find(|m| {
        json_value(m).is_some_and(|v| {
            let payload = &v["payload"];
            let image = if op == "d" {
                &payload["before"]
            } else {
                &payload["after"]
            };
            payload["op"] == op && image["id"] == id.as_str()
        })
    })
}

async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<i64> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(partition);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    let delivery = producer
        .send(record, KAFKA_TIMEOUT)
        .await
        .map_err(|(error, _)| error)?;
    ensure!(delivery.partition == partition);
    Ok(delivery.offset)
}

async fn delete_groups(pipeline: &Pipeline, groups: &[&str]) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = pipeline.kafka_config().create();
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    match admin {
        Ok(admin) => {
            if let Err(error) = admin.delete_groups(groups, &options).await {
                eprintln!("could not delete groups {groups:?}: {error}");
            }
        }
        Err(error) => eprintln!("could not delete groups {groups:?}: {error}"),
    }
}

async fn delete_topics(pipeline: &Pipeline, topics: &[&str]) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = pipeline.kafka_config().create();
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
    match admin {
        Ok(admin) => {
            if let Err(error) = admin.delete_topics(topics, &options).await {
                eprintln!("could not delete topics {topics:?}: {error}");
            }
        }
        Err(error) => eprintln!("could not delete topics {topics:?}: {error}"),
    }
}

/// Waits until Debezium has put changes of these rows into the CDC topics, past `from`.
async fn wait_captured(
    pipeline: &Pipeline,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    changes: &[(Uuid, &str)],
) -> Result<Vec<OwnedMessage>> {
    wait_for(
        &format!("Debezium to capture {} changes into {topic}", changes.len()),
        Duration::from_secs(120),
        || async move {
            let records = records_since(pipeline, topic, from)?;
            let all = changes
                .iter()
                .all(|(id, op)| find_change(&records, *id, op).is_some());
            Ok(all.then_some(records))
        },
    )
    .await
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
        end_offsets(&pipeline, CDC_USERS)?,
        end_offsets(&pipeline, CDC_ORDERS)?,
    ];
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let produced = tokio::process::Command::new(&producer_bin)
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
        .env("KAFKA_BROKERS", &pipeline.stack.brokers)
        .env("USERS_TOPIC", &users_topic)
        .env("ORDERS_TOPIC", &orders_topic)
        .env(
            "REPLICATION_FACTOR",
            pipeline.stack.broker_count.to_string(),
        )
        .env("LOG_LEVEL", "warn,rdkafka=error")
        .kill_on_drop(true)
        .output()
        .await?;
    let producer_out = String::from_utf8_lossy(&produced.stdout).into_owned();
    ensure!(
        produced.status.success(),
        "producer failed ({}): {producer_out}\n{}",
        produced.status,
        String::from_utf8_lossy(&produced.stderr)
    );
    ensure!(
        producer_out.contains(&format!("sent={0} acknowledged={0} failed=0", events.len())),
        "{producer_out}"
    );

    let consumed = tokio::process::Command::new(&consumer_bin)
        .env("KAFKA_BROKERS", &pipeline.stack.brokers)
        .env("DATABASE_URL", &pipeline.stack.database_url)
        .env("USERS_TOPIC", &users_topic)
        .env("ORDERS_TOPIC", &orders_topic)
        .env("USERS_GROUP", &users_group)
        .env("ORDERS_GROUP", &orders_group)
        .env(
            "REPLICATION_FACTOR",
            pipeline.stack.broker_count.to_string(),
        )
        .env("IDLE_TIMEOUT_SECS", "6")
        .env("PARENT_WAIT_SECS", "20")
        .env("METRICS_ADDR", "")
        .env("LOG_LEVEL", "warn,rdkafka=error")
        .kill_on_drop(true)
        .output()
        .await?;
    let consumer_out = String::from_utf8_lossy(&consumed.stdout).into_owned();
    ensure!(
        consumed.status.success(),
        "consumer failed ({}): {consumer_out}\n{}",
        consumed.status,
        String::from_utf8_lossy(&consumed.stderr)
    );
    for (topic, count) in [
        (&users_topic, user_events),
        (&orders_topic, events.len() - user_events),
    ] {
        let line = format!("topic={topic} consumed={count} applied={count} dead_lettered=0");
        ensure!(
            consumer_out.contains(&line),
            "{line} not in:\n{consumer_out}"
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
    let summary = sink.terminate().await?;
    let mut changes = 0;
    for (topic, from) in [CDC_USERS, CDC_ORDERS].iter().zip(&starts) {
        for (partition, end) in end_offsets(&pipeline, topic)? {
            changes += end - from.get(&partition).copied().unwrap_or(0);
        }
    }
    eprintln!("{} events became {changes} captured changes", events.len());
    ensure!(
        changes >= 10_000,
        "only {changes} changes reached the CDC topics"
    );
    ensure!(
        summary.values().all(|c| c.dead_lettered == 0),
        "{summary:?}"
    );

    // Row counts straight from both stores, then every generated entity against the model.
    let reader = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    let (pg_users, pg_orders) = pipeline.pg_counts().await?;
    let counts = (
        reader.count("users").await?,
        reader.count("orders").await?,
        reader.count("orders_by_user").await?,
    );
    ensure!(
        counts == (pg_users, pg_orders, pg_orders),
        "Cassandra holds (users, orders, orders_by_user) = {counts:?}, PostgreSQL {pg_users} users and {pg_orders} orders"
    );
    ensure!(verified.table("users")?.checked >= u64::try_from(users)?);
    let model = Model::from_events(&events);
    ensure!(model.users.len() == users && model.orders.len() == orders);
    model.check_cassandra(&reader).await?;

    delete_groups(&pipeline, &[&users_group, &orders_group]).await;
    let dlqs = [
        cdc_core::dlq::topic_for(&users_topic),
        cdc_core::dlq::topic_for(&orders_topic),
    ];
    delete_topics(
        &pipeline,
        &[&users_topic, &orders_topic, &dlqs[0], &dlqs[1]],
    )
    .await;
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
    let reader = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    let user_ids = [a, b, c, d, e];
    let order_ids = [a1, a2, b1, c1, c2, d1, d2, e1, e2, e3];
    let pg_u = pg_users(pool, &user_ids).await?;
    let pg_o = pg_orders(pool, &order_ids).await?;
    // PostgreSQL itself is as the statements say (so the comparison below means something).
    ensure!(pg_u.len() == 4 && !pg_u.contains_key(&d));
    ensure!(pg_o.len() == 7 && !pg_o.contains_key(&a2) && !pg_o.contains_key(&d1));
    ensure!(pg_o[&a1].quantity == Some(7) && pg_o[&a1].version == Some(4));
    ensure!(pg_o[&b1].user_id == Some(a));
    ensure!(pg_u[&b].name.as_deref() == Some("sql b twice"));
    ensure!(pg_u[&c].deleted_at.is_some() && pg_o[&c1].deleted_at == pg_u[&c].deleted_at);
    ensure!(pg_o[&c2].deleted_at == pg_u[&c].deleted_at);
    // Cassandra has exactly these rows, column by column.
    let mut problems = differences("user", &pg_u, &reader.users(&user_ids).await?);
    problems.extend(differences(
        "order",
        &pg_o,
        &reader.orders(&order_ids).await?,
    ));
    let expected_by_user: BTreeMap<(Uuid, Uuid), OrderState> = pg_o
        .iter()
        .filter_map(|(id, o)| Some(((o.user_id?, *id), o.clone())))
        .collect();
    let by_user = reader.orders_of_users(&user_ids).await?;
    problems.extend(differences("orders_by_user", &expected_by_user, &by_user));
    ensure_no_differences(&problems)?;
    let owners_of_b1: Vec<Uuid> = by_user
        .keys()
        .filter(|(_, order)| *order == b1)
        .map(|(user, _)| *user)
        .collect();
    ensure!(
        owners_of_b1 == vec![a],
        "orders_by_user lists the moved order under {owners_of_b1:?}"
    );

    let summary = sink.terminate().await?;
    ensure!(
        summary.values().all(|c| c.dead_lettered == 0),
        "{summary:?}"
    );
    Ok(())
}

/// After a clean verify, cdcconsumer with a fresh group reads the CDC topics again from the
/// earliest offset: every record is consumed, Cassandra's contents (values and write times) are
/// exactly as before, and the verifier is clean.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_from_the_earliest_offset_changes_nothing() -> Result<()> {
    let _exclusive = exclusive().await;
    let pipeline = Pipeline::new().await?;
    let history = records_in(&pipeline, CDC_USERS)? + records_in(&pipeline, CDC_ORDERS)?;
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
    let sink = pipeline.start_sink(CDC_GROUP)?;
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    sink.terminate().await?;
    let reader = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    written.check_cassandra(&reader).await?;
    let before = reader.snapshot().await?;
    let records = records_in(&pipeline, CDC_USERS)? + records_in(&pipeline, CDC_ORDERS)?;
    eprintln!(
        "replaying {records} records over {} users, {} orders",
        before.users.len(),
        before.orders.len()
    );

    let group = unique_name("it_cdc_replay");
    let replay = pipeline.start_sink(&group)?;
    let outcome = async {
        pipeline
            .verify(&[group_spec(&group, &[CDC_USERS, CDC_ORDERS])], "quorum")
            .await?;
        let summary = replay.terminate().await?;
        let consumed: u64 = summary.values().map(|c| c.consumed).sum();
        ensure!(
            consumed >= records,
            "the replay consumed {consumed} of {records} records: {summary:?}"
        );
        let after = reader.snapshot().await?;
        let mut problems = differences("user", &before.users, &after.users);
        problems.extend(differences("order", &before.orders, &after.orders));
        problems.extend(differences(
            "orders_by_user",
            &before.orders_by_user,
            &after.orders_by_user,
        ));
        ensure_no_differences(&problems)?;
        ensure!(before == after);
        Ok(())
    }
    .await;
    delete_groups(&pipeline, &[&group]).await;
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
        end_offsets(&pipeline, CDC_USERS)?,
        end_offsets(&pipeline, CDC_ORDERS)?,
    ];
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let writer = SqlWriter::start(pipeline.pool.clone(), 5_000, Duration::from_millis(40));
    // Changes flow end to end before the fault.
    let reader = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    let first = writer.ids.user(10);
    wait_for(
        "the writer's rows to reach Cassandra",
        Duration::from_secs(120),
        || async { Ok((!reader.users(&[first]).await?.is_empty()).then_some(())) },
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
    sink.terminate().await?;
    written.check_cassandra(&reader).await?;
    let mut redelivered = 0;
    for (topic, from) in [CDC_USERS, CDC_ORDERS].iter().zip(&starts) {
        let mut seen = BTreeSet::new();
        for record in records_since(&pipeline, topic, from)? {
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
        end_offsets(&pipeline, CDC_USERS)?,
        end_offsets(&pipeline, CDC_ORDERS)?,
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
        &pipeline,
        CDC_USERS,
        &starts[0],
        &[(users[deleted_users - 1], "u")],
    )
    .await?;
    let backlog = records_since(&pipeline, CDC_USERS, &starts[0])?.len()
        + records_since(&pipeline, CDC_ORDERS, &starts[1])?.len();
    eprintln!("backlog of {backlog} changes");

    let reader = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    let sink = pipeline.start_sink(CDC_GROUP)?;
    let sample: Vec<Uuid> = orders.iter().step_by(40).copied().collect();
    wait_for(
        "cdcconsumer to write part of the backlog",
        Duration::from_secs(120),
        || async { Ok((!reader.orders(&sample).await?.is_empty()).then_some(())) },
    )
    .await?;
    sink.kill()?;
    let at_kill = reader.orders(&orders).await?;
    let final_at_kill = at_kill.values().filter(|o| o.version == Some(2)).count();
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
    sink.terminate().await?;
    written.check_cassandra(&reader).await?;
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
    let quorum = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    let first = writer.ids.user(5);
    wait_for(
        "the writer's rows to reach Cassandra",
        Duration::from_secs(120),
        || async { Ok((!quorum.users(&[first]).await?.is_empty()).then_some(())) },
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
        || async { Ok((!quorum.users(&[while_down]).await?.is_empty()).then_some(())) },
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
    sink.terminate().await?;
    written
        .check_cassandra(&CassandraReader::new(&pipeline.cassandra, Consistency::All))
        .await?;
    Ok(())
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
    let sink = pipeline.start_sink(CDC_GROUP)?;
    pipeline.verify(&Pipeline::cdc_groups(), "quorum").await?;
    sink.terminate().await?;

    let starts = [
        end_offsets(&pipeline, CDC_USERS)?,
        end_offsets(&pipeline, CDC_ORDERS)?,
    ];
    let (h, h1, i) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut tx = pool.begin().await?;
    insert_user(&mut tx, h, "hostile h").await?;
    insert_order(&mut tx, h1, h, "hostile product", 4321).await?;
    tx.commit().await?;
    let users_before = wait_captured(&pipeline, CDC_USERS, &starts[0], &[(h, "c")]).await?;
    let orders_before = wait_captured(&pipeline, CDC_ORDERS, &starts[1], &[(h1, "c")]).await?;
    let user_record = find_change(&users_before, h, "c").context("h's insert")?;
    let order_record = find_change(&orders_before, h1, "c").context("h1's insert")?;
    let user_json = json_value(user_record).context("h's insert as JSON")?;
    let order_json = json_value(order_record).context("h1's insert as JSON")?;
    let user_key = user_record.key().map(<[u8]>::to_vec);
    let order_key = order_record.key().map(<[u8]>::to_vec);
    let edit = |json: &Value, path: &[&str], value: Option<Value>| -> Option<Vec<u8>> {
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
            edit(&user_json, &["payload", "after"], Some(Value::Null)),
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
            edit(&order_json, &["payload", "after"], Some(Value::Null)),
            "missing_image",
        ),
        order(
            Some(b"{\"payload\": {\"op\": \"c\"".to_vec()),
            "undecodable",
        ),
    ];
    let producer: FutureProducer = pipeline
        .kafka_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    let mut placed = Vec::new();
    for record in &hostile {
        let partition = if record.topic == CDC_USERS {
            user_record.partition()
        } else {
            order_record.partition()
        };
        let offset = send_raw(
            &producer,
            record.topic,
            partition,
            record.key.as_deref(),
            record.payload.as_deref(),
        )
        .await?;
        placed.push((record.topic, partition, offset, record.reason));
    }
    // A tombstone for a live row: nothing to do, not an error.
    let tombstone = send_raw(
        &producer,
        CDC_USERS,
        user_record.partition(),
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
    let users_after =
        wait_captured(&pipeline, CDC_USERS, &starts[0], &[(h, "u"), (i, "c")]).await?;
    let orders_after = wait_captured(&pipeline, CDC_ORDERS, &starts[1], &[(h1, "u")]).await?;
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
    let reader = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    ensure_no_differences(&differences(
        "user",
        &pg_users(pool, &[h, i]).await?,
        &reader.users(&[h, i]).await?,
    ))?;
    let h_row = reader.users(&[h]).await?;
    ensure!(h_row.get(&h).and_then(|u| u.version) == Some(2));
    ensure_no_differences(&differences(
        "order",
        &pg_orders(pool, &[h1]).await?,
        &reader.orders(&[h1]).await?,
    ))?;

    // Every hostile record is in its dead-letter topic with its reason and source position.
    for topic in [CDC_USERS, CDC_ORDERS] {
        let dlq = cdc_core::dlq::topic_for(topic);
        let mut parked: BTreeMap<(i32, i64), String> = BTreeMap::new();
        for record in records_since(&pipeline, &dlq, &BTreeMap::new())? {
            let headers = record.headers().context("dead letter without headers")?;
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            ensure!(header("dlq.source.topic").as_deref() == Some(topic));
            ensure!(header("dlq.error").is_some_and(|e| !e.is_empty()));
            let partition: i32 = header("dlq.source.partition")
                .context("no dlq.source.partition")?
                .parse()?;
            let offset: i64 = header("dlq.source.offset")
                .context("no dlq.source.offset")?
                .parse()?;
            parked.insert(
                (partition, offset),
                header("dlq.reason").context("no dlq.reason")?,
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
    let summary = sink.terminate().await?;
    ensure!(
        summary.values().all(|c| c.dead_lettered == 0),
        "{summary:?}"
    );
    eprintln!("truncated {users_before} users and {orders_before} orders");
    ensure!(pipeline.pg_counts().await? == (1, 2));
    let reader = CassandraReader::new(&pipeline.cassandra, Consistency::Quorum);
    let counts = (
        reader.count("users").await?,
        reader.count("orders").await?,
        reader.count("orders_by_user").await?,
    );
    ensure!(
        counts == (1, 2, 2),
        "after TRUNCATE Cassandra holds (users, orders, orders_by_user) = {counts:?}"
    );
    let mut problems = differences(
        "user",
        &pg_users(pool, &[f]).await?,
        &reader.users(&[f, g]).await?,
    );
    problems.extend(differences(
        "order",
        &pg_orders(pool, &[f1, f2]).await?,
        &reader.orders(&[f1, f2, g1]).await?,
    ));
    problems.extend(differences(
        "orders_by_user",
        &BTreeMap::from([((f, f1), 1_i64), ((f, f2), 2)]),
        &reader
            .orders_of_users(&[f, g])
            .await?
            .into_iter()
            .map(|(key, o)| (key, o.version.unwrap_or(-1)))
            .collect(),
    ));
    ensure_no_differences(&problems)?;
    Ok(())
}
