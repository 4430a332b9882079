//! Cassandra as the cluster sees itself: every node's address, CQL port and state from the
//! gossip information the nodes exchange (`system_views.gossip_info`), keyspaces with their
//! replication, and tables.
//!
//! A node is down when gossip says it shut down, or when its gossip heartbeat — which a live node
//! advances every second and the others relay — has not moved for [`STALE_AFTER`]: the signal
//! Cassandra's own failure detector works from.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdc_core::cassandra::CassandraAccess;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use serde::Serialize;
use tokio::sync::Mutex as AsyncMutex;

/// A heartbeat that has not advanced for this long means the node is down.
pub const STALE_AFTER: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CassandraError {
    #[error("no Cassandra node reachable ({nodes}): {message}")]
    Unreachable { nodes: String, message: String },
    #[error("Cassandra did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Cassandra: {0}")]
    Query(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub address: String,
    /// The CQL (native transport) port.
    pub port: Option<u16>,
    pub up: bool,
    /// Gossip status (`NORMAL`, `shutdown`, `LEAVING`, …).
    pub status: String,
    pub dc: Option<String>,
    pub rack: Option<String>,
    pub release_version: Option<String>,
    pub load: Option<String>,
    pub host_id: Option<String>,
    /// Seconds since the node's heartbeat last advanced, as seen by the console.
    pub heartbeat_age_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyspaceView {
    pub name: String,
    pub replication: BTreeMap<String, String>,
    pub tables: Vec<String>,
    pub system: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CassandraView {
    pub contact_points: Vec<String>,
    /// The node that answered.
    pub coordinator: Option<String>,
    pub nodes: Vec<NodeView>,
    pub keyspaces: Vec<KeyspaceView>,
}

#[derive(Debug)]
struct Heartbeat {
    generation: i32,
    beat: i32,
    changed: Instant,
}

#[derive(Debug, Clone)]
pub struct Cassandra {
    nodes: Vec<String>,
    timeout: Duration,
    access: CassandraAccess,
    session: Arc<AsyncMutex<Option<Arc<Session>>>>,
    heartbeats: Arc<Mutex<HashMap<String, Heartbeat>>>,
}

fn query_error(error: impl std::fmt::Display) -> CassandraError {
    CassandraError::Query(error.to_string())
}

type GossipRow = (
    IpAddr,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl Cassandra {
    pub fn new(nodes: Vec<String>, access: CassandraAccess, timeout: Duration) -> Self {
        Self {
            nodes,
            access,
            timeout,
            session: Arc::new(AsyncMutex::new(None)),
            heartbeats: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    async fn session(&self) -> Result<Arc<Session>, CassandraError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            return Ok(session.clone());
        }
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.nodes)
            .connection_timeout(self.timeout);
        if let Some(translator) = cdc_core::config::cassandra_port_translations(&self.nodes) {
            builder = builder.address_translator(Arc::new(translator));
        }
        let builder = self.access.apply(builder).map_err(query_error)?;
        let session = tokio::time::timeout(self.timeout, builder.build())
            .await
            .map_err(|_| CassandraError::Timeout(self.timeout))?
            .map_err(|e| CassandraError::Unreachable {
                nodes: self.nodes.join(","),
                message: e.to_string(),
            })?;
        let session = Arc::new(session);
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn rows<R>(&self, text: &str) -> Result<(Vec<R>, Option<String>), CassandraError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let session = self.session().await?;
        let mut statement = Statement::new(text);
        statement.set_consistency(Consistency::One);
        statement.set_request_timeout(Some(self.timeout));
        let result = tokio::time::timeout(self.timeout, session.query_unpaged(statement, ()))
            .await
            .map_err(|_| CassandraError::Timeout(self.timeout))?
            .map_err(query_error)?;
        let coordinator = Some(result.request_coordinator().node().address.ip().to_string());
        let rows = result
            .into_rows_result()
            .map_err(query_error)?
            .rows::<R>()
            .map_err(query_error)?
            .collect::<Result<Vec<R>, _>>()
            .map_err(query_error)?;
        Ok((rows, coordinator))
    }

    /// Every node as gossip describes it, with its state judged from the heartbeat.
    pub async fn nodes(&self) -> Result<(Vec<NodeView>, Option<String>), CassandraError> {
        let (rows, coordinator) = self
            .rows::<GossipRow>(
                "SELECT address, status, status_with_port, generation, heartbeat, \
                        native_address_and_port, dc, rack, release_version, load, host_id \
                 FROM system_views.gossip_info",
            )
            .await?;
        let now = Instant::now();
        let mut heartbeats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<NodeView> = rows
            .into_iter()
            .map(
                |(
                    address,
                    status,
                    status_with_port,
                    generation,
                    beat,
                    native,
                    dc,
                    rack,
                    release,
                    load,
                    host_id,
                )| {
                    let address = address.to_string();
                    let status = status_with_port
                        .or(status)
                        .map(|s| s.split(',').next().unwrap_or_default().to_owned())
                        .unwrap_or_else(|| "unknown".to_owned());
                    let (generation, beat) = (generation.unwrap_or(0), beat.unwrap_or(0));
                    let entry = heartbeats.entry(address.clone()).or_insert(Heartbeat {
                        generation,
                        beat,
                        changed: now,
                    });
                    if entry.generation != generation || entry.beat != beat {
                        *entry = Heartbeat {
                            generation,
                            beat,
                            changed: now,
                        };
                    }
                    let age = now.duration_since(entry.changed);
                    let shut_down = ["shutdown", "LEFT", "removed", "LEAVING"]
                        .iter()
                        .any(|s| status.eq_ignore_ascii_case(s));
                    NodeView {
                        port: native
                            .as_deref()
                            .and_then(|n| n.rsplit(':').next())
                            .and_then(|p| p.parse().ok()),
                        up: !shut_down && age < STALE_AFTER,
                        status,
                        dc,
                        rack,
                        release_version: release,
                        load: load
                            .and_then(|l| l.parse::<f64>().ok())
                            .map(|bytes| crate::format::bytes(bytes as i64)),
                        host_id,
                        heartbeat_age_secs: Some(age.as_secs()),
                        address,
                    }
                },
            )
            .collect();
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        Ok((nodes, coordinator))
    }

    pub async fn keyspaces(&self) -> Result<Vec<KeyspaceView>, CassandraError> {
        let (keyspaces, _) = self
            .rows::<(String, BTreeMap<String, String>)>(
                "SELECT keyspace_name, replication FROM system_schema.keyspaces",
            )
            .await?;
        let (tables, _) = self
            .rows::<(String, String)>("SELECT keyspace_name, table_name FROM system_schema.tables")
            .await?;
        let mut by_keyspace: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (keyspace, table) in tables {
            by_keyspace.entry(keyspace).or_default().push(table);
        }
        let mut out: Vec<KeyspaceView> = keyspaces
            .into_iter()
            .map(|(name, replication)| KeyspaceView {
                tables: by_keyspace.remove(&name).unwrap_or_default(),
                system: name.starts_with("system"),
                name,
                replication,
            })
            .collect();
        out.sort_by(|a, b| a.system.cmp(&b.system).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    pub async fn view(&self) -> Result<CassandraView, CassandraError> {
        let (nodes, coordinator) = self.nodes().await?;
        Ok(CassandraView {
            contact_points: self.nodes.clone(),
            coordinator,
            nodes,
            keyspaces: self.keyspaces().await?,
        })
    }

    /// The configured contact points (one per expected node).
    pub fn contact_points(&self) -> &[String] {
        &self.nodes
    }
}
