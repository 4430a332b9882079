//! Cassandra cluster: writes at QUORUM read back at QUORUM, also with one node stopped, and the
//! stopped node catching up once it returns.

use std::time::Duration;

use anyhow::{Context, Result};
use backon::{ExponentialBuilder, Retryable};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use stack_tests::{exclusive, shared, unique_name, wait_for, RestartOnDrop, Stack};

async fn session(stack: &Stack) -> Result<Session> {
    SessionBuilder::new()
        .known_nodes(&stack.cassandra_nodes)
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await
        .context("connecting to Cassandra")
}

/// A fresh keyspace with one table, at the cluster's replication factor.
async fn scratch_keyspace(session: &Session, stack: &Stack) -> Result<String> {
    let keyspace = unique_name("it");
    let rf = stack.cassandra_nodes.len();
    let mut create = Statement::new(format!(
        "CREATE KEYSPACE {keyspace} WITH replication = \
         {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
    ));
    create.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(create, ()).await?;
    let mut table = Statement::new(format!(
        "CREATE TABLE {keyspace}.kv (k int PRIMARY KEY, v text)"
    ));
    table.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(table, ()).await?;
    session.await_schema_agreement().await?;
    // The driver's agreement check can pass before every replica has applied the new table
    // (replicas then answer INCOMPATIBLE_SCHEMA): wait until a probe write at ALL is accepted.
    let mut probe = Statement::new(format!(
        "INSERT INTO {keyspace}.kv (k, v) VALUES (-1, 'probe')"
    ));
    probe.set_consistency(Consistency::All);
    wait_for(
        "the new table on every replica",
        Duration::from_secs(60),
        || {
            let probe = probe.clone();
            async move { Ok(session.query_unpaged(probe, ()).await.is_ok().then_some(())) }
        },
    )
    .await?;
    Ok(keyspace)
}

/// The test table's statements, prepared once up front as an application does: preparing needs a
/// live coordinator, executing a prepared statement fails over to the live replicas.
struct Kv {
    insert: PreparedStatement,
    select: PreparedStatement,
}

impl Kv {
    async fn prepare(session: &Session, keyspace: &str) -> Result<Self> {
        let mut insert = session
            .prepare(format!("INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)"))
            .await?;
        insert.set_consistency(Consistency::Quorum);
        // The same row written twice is the same row: let the driver retry on another node when a
        // connection breaks (a stopping node resets its connections).
        insert.set_is_idempotent(true);
        let mut select = session
            .prepare(format!("SELECT v FROM {keyspace}.kv WHERE k = ?"))
            .await?;
        select.set_is_idempotent(true);
        Ok(Self { insert, select })
    }

    async fn write_rows(&self, session: &Session, keys: std::ops::Range<i32>) -> Result<()> {
        for k in keys {
            let value = format!("value-{k}");
            // As an application does: a request that met a connection being torn down is retried
            // (a few times, with backoff); a real refusal (too few replicas) still fails the test.
            (|| session.execute_unpaged(&self.insert, (k, value.as_str())))
                .retry(ExponentialBuilder::default().with_max_times(5))
                .await?;
        }
        Ok(())
    }

    /// Reads every key in `keys` at `consistency`; returns the keys whose value is missing or wrong.
    async fn wrong_rows(
        &self,
        session: &Session,
        keys: std::ops::Range<i32>,
        consistency: Consistency,
    ) -> Result<Vec<i32>> {
        let mut select = self.select.clone();
        select.set_consistency(consistency);
        let mut wrong = Vec::new();
        for k in keys {
            let rows = session
                .execute_unpaged(&select, (k,))
                .await?
                .into_rows_result()?;
            let value = rows.maybe_first_row::<(String,)>()?.map(|(v,)| v);
            if value.as_deref() != Some(format!("value-{k}").as_str()) {
                wrong.push(k);
            }
        }
        Ok(wrong)
    }
}

async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<()> {
    let mut drop = Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    drop.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(drop, ()).await?;
    Ok(())
}

#[tokio::test]
async fn quorum_write_reads_back_at_quorum() -> Result<()> {
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let session = session(&stack).await?;
    let keyspace = scratch_keyspace(&session, &stack).await?;
    let kv = Kv::prepare(&session, &keyspace).await?;
    kv.write_rows(&session, 0..200).await?;
    let wrong = kv.wrong_rows(&session, 0..200, Consistency::Quorum).await?;
    assert!(
        wrong.is_empty(),
        "rows missing or wrong at QUORUM: {wrong:?}"
    );
    drop_keyspace(&session, &keyspace).await
}

#[tokio::test]
async fn quorum_survives_one_node_stopped_and_the_node_catches_up() -> Result<()> {
    let stack = Stack::from_env()?;
    if !stack.is_ha() {
        eprintln!(
            "skipped: needs the ha profile (3 Cassandra nodes), stack runs {}",
            stack.profile
        );
        return Ok(());
    }
    let _exclusive = exclusive().await;
    let session = session(&stack).await?;
    let keyspace = scratch_keyspace(&session, &stack).await?;
    let kv = Kv::prepare(&session, &keyspace).await?;
    kv.write_rows(&session, 0..100).await?;

    let mut services = RestartOnDrop::new();
    services.take_down("stop", "cassandra3")?;
    wait_for(
        "the driver to see cassandra3 down",
        Duration::from_secs(60),
        || {
            let state = session.get_cluster_state();
            async move {
                let down = state
                    .get_nodes_info()
                    .iter()
                    .filter(|node| node.address.ip().to_string() == "127.0.0.3")
                    .all(|node| !node.is_connected());
                Ok(down.then_some(()))
            }
        },
    )
    .await?;
    // RF 3, QUORUM = 2: writes and reads go on with two nodes.
    kv.write_rows(&session, 100..300).await?;
    let wrong = kv.wrong_rows(&session, 0..300, Consistency::Quorum).await?;
    assert!(
        wrong.is_empty(),
        "rows missing or wrong at QUORUM with a node down: {wrong:?}"
    );
    // ALL needs the stopped node: it must be refused, not answered from two replicas.
    let all_while_down = kv.wrong_rows(&session, 0..1, Consistency::All).await;
    assert!(
        all_while_down.is_err(),
        "a read at ALL succeeded with a replica down"
    );

    services.bring_back("cassandra3")?;
    // Hints written while it was down reach it: a read at ALL (every replica) agrees again.
    wait_for(
        "reads at ALL to see every row",
        Duration::from_secs(120),
        || {
            let (session, kv) = (&session, &kv);
            async move {
                Ok(kv
                    .wrong_rows(session, 0..300, Consistency::All)
                    .await?
                    .is_empty()
                    .then_some(()))
            }
        },
    )
    .await?;
    drop_keyspace(&session, &keyspace).await
}
