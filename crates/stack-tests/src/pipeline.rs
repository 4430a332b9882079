//! The whole pipeline as the end-to-end tests drive it: connections to PostgreSQL and Cassandra,
//! cdcconsumer processes on the real CDC topics, and `cdcconsumer verify` required clean.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::unprepared::Statement;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::process::{self, summary, workspace_binary, Process, Summary};
use crate::Stack;

pub const CDC_USERS: &str = "cdc.public.users";
pub const CDC_ORDERS: &str = "cdc.public.orders";
/// cdcconsumer's default consumer group.
pub const CDC_GROUP: &str = "cdc-cassandra-consumer";
pub const KEYSPACE: &str = "cdc_keyspace";
/// How long the verifier may wait for the pipeline to go quiet.
pub const QUIET_TIMEOUT_SECS: u64 = 240;

/// Connections to the running stack.
pub struct Pipeline {
    pub stack: Stack,
    pub pool: PgPool,
    pub cassandra: Session,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("stack", &self.stack)
            .finish_non_exhaustive()
    }
}

/// `GROUP=TOPIC+TOPIC`, as `cdcconsumer verify --groups` wants a group.
pub fn group_spec(group: &str, topics: &[&str]) -> String {
    format!("{group}={}", topics.join("+"))
}

impl Pipeline {
    pub async fn new() -> Result<Self> {
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
        Ok(Self {
            stack,
            pool,
            cassandra,
        })
    }

    /// The default group over both CDC topics, as `--groups` wants it.
    pub fn cdc_groups() -> Vec<String> {
        vec![group_spec(CDC_GROUP, &[CDC_USERS, CDC_ORDERS])]
    }

    /// A cdcconsumer command on the CDC topics with `group` and an idle timeout (0: none).
    pub fn cdcconsumer(&self, group: &str, idle_secs: u64) -> Result<std::process::Command> {
        let mut command = process::command(&self.stack, &workspace_binary("cdcconsumer")?);
        command
            .env("CASSANDRA_KEYSPACE", KEYSPACE)
            .env("CDC_TOPICS", format!("{CDC_USERS},{CDC_ORDERS}"))
            .env("CDC_GROUP", group)
            .env("IDLE_TIMEOUT_SECS", idle_secs.to_string());
        Ok(command)
    }

    /// Starts cdcconsumer in the background (no idle timeout): stop it with
    /// [`Process::terminate`].
    pub fn start_sink(&self, group: &str) -> Result<Process> {
        Process::spawn("cdcconsumer", self.cdcconsumer(group, 0)?)
    }

    /// Runs cdcconsumer until it has been idle for `idle_secs`; it must exit 0 within `deadline`.
    pub async fn run_sink_until_idle(&self, idle_secs: u64, deadline: Duration) -> Result<Summary> {
        let process = Process::spawn("cdcconsumer", self.cdcconsumer(CDC_GROUP, idle_secs)?)?;
        sink_summary(&process.run_to_end(deadline).await?)
    }

    /// Runs `cdcconsumer resnapshot --table <table>` for cdcconsumer's group; it must finish (exit
    /// 0) within five minutes. Returns its stdout.
    pub async fn resnapshot(&self, table: &str) -> Result<String> {
        let mut command = process::command(&self.stack, &workspace_binary("cdcconsumer")?);
        command
            .arg("resnapshot")
            .arg("--table")
            .arg(table)
            .arg("--group")
            .arg(CDC_GROUP)
            .arg("--timeout")
            .arg("5m");
        Process::spawn("cdcconsumer resnapshot", command)?
            .run_to_end(Duration::from_secs(360))
            .await
    }

    /// Runs `cdcconsumer verify` and returns its exit status, stdout and stderr.
    pub async fn verify_output(
        &self,
        groups: &[String],
        consistency: &str,
    ) -> Result<(std::process::ExitStatus, String, String)> {
        let mut command = tokio::process::Command::new(workspace_binary("cdcconsumer")?);
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
        Ok((
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Runs cdcconsumer in its default group until the verifier finds the pipeline quiet and
    /// clean (at QUORUM), then stops it: everything committed so far is applied, and the next
    /// sink in the group reads only what comes after.
    pub async fn catch_up(&self) -> Result<Verified> {
        let sink = self.start_sink(CDC_GROUP)?;
        let verified = self.verify(&Self::cdc_groups(), "quorum").await;
        stop_sink(sink).await?;
        verified
    }

    /// Runs `cdcconsumer verify` and requires it clean: exit 0, every table with as many matching
    /// rows as it checked; also PostgreSQL's own counts equal the rows checked.
    pub async fn verify(&self, groups: &[String], consistency: &str) -> Result<Verified> {
        let started = Instant::now();
        let (status, stdout, stderr) = self.verify_output(groups, consistency).await?;
        ensure!(
            status.success() && stdout.contains("verify: Cassandra agrees with PostgreSQL"),
            "cdcconsumer verify failed ({status}):\n{stdout}\n{stderr}"
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

    /// A reader of the pipeline's keyspace at QUORUM.
    pub fn quorum(&self) -> crate::rows::CassandraReader<'_> {
        crate::rows::CassandraReader::new(
            &self.cassandra,
            KEYSPACE,
            scylla::statement::Consistency::Quorum,
        )
    }

    /// Rows in PostgreSQL's users and orders.
    pub async fn pg_counts(&self) -> Result<(u64, u64)> {
        let (users, orders): (i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders)")
                .fetch_one(&self.pool)
                .await?;
        Ok((u64::try_from(users)?, u64::try_from(orders)?))
    }
}

/// A scratch keyspace with cassandra-schema.cql's tables at replication factor `rf` (the cluster's
/// node count), usable on every replica.
pub async fn create_keyspace(session: &Session, rf: usize, keyspace: &str) -> Result<()> {
    cdcconsumer::cassandra::apply_schema(session, keyspace).await?;
    let mut alter = Statement::new(format!(
        "ALTER KEYSPACE {keyspace} WITH replication = \
         {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
    ));
    alter.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(alter, ()).await?;
    session.await_schema_agreement().await?;
    // The driver's agreement check can pass before every replica has applied the new tables
    // (replicas then answer INCOMPATIBLE_SCHEMA): wait until a read of each at ALL is accepted.
    for table in cdc_core::tables::MIRRORED {
        let mut probe = Statement::new(format!("SELECT * FROM {keyspace}.{} LIMIT 1", table.name));
        probe.set_consistency(scylla::statement::Consistency::All);
        crate::wait_for(
            &format!("{keyspace}.{} on every replica", table.name),
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

/// Drops a keyspace a test made for itself.
pub async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<()> {
    let mut drop = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    drop.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(drop, ()).await?;
    Ok(())
}

/// Stops a cdcconsumer started with [`Pipeline::start_sink`] (SIGTERM, it must exit 0) and
/// returns its summary.
pub async fn stop_sink(sink: Process) -> Result<Summary> {
    sink_summary(&sink.terminate().await?)
}

/// cdcconsumer's summary lines, which must name both CDC topics.
pub fn sink_summary(stdout: &str) -> Result<Summary> {
    let summary = summary("cdcconsumer", stdout);
    ensure!(
        summary.contains_key(CDC_USERS) && summary.contains_key(CDC_ORDERS),
        "no summary lines in cdcconsumer's output:\n{stdout}"
    );
    Ok(summary)
}

/// The verifier's per-table line: `users: checked N, matching N, missing N, extra N, different N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCounts {
    pub checked: u64,
    pub matching: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
}

/// What a clean `cdcconsumer verify` printed.
#[derive(Debug)]
pub struct Verified {
    tables: BTreeMap<String, TableCounts>,
    stdout: String,
}

impl Verified {
    pub fn parse(stdout: &str) -> Result<Self> {
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

    pub fn table(&self, name: &str) -> Result<TableCounts> {
        self.tables
            .get(name)
            .copied()
            .with_context(|| format!("no {name} line in the verifier's output:\n{}", self.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_report_parses() -> Result<()> {
        let verified = Verified::parse(
            "users: checked 3, matching 2, missing 0, extra 1, different 0\n\
             orders: checked 5, matching 5, missing 0, extra 0, different 0 (x 1)\n",
        )?;
        assert_eq!(verified.table("users")?.extra, 1);
        assert_eq!(verified.table("orders")?.matching, 5);
        assert!(verified.table("orders_by_user").is_err());
        Ok(())
    }
}
