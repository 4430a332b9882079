//! Kafka Connect's REST API: the worker, its connectors with their states, error traces and
//! configurations (secrets redacted), and the one write the console can make: restarting a
//! connector or a task.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::redact;

/// Largest response body read.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("Kafka Connect at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("Kafka Connect at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("Kafka Connect answered {status} to {what}: {body}")]
    Status {
        what: String,
        status: StatusCode,
        body: String,
    },
    #[error("Kafka Connect's answer to {what} is not what was expected: {message}")]
    Invalid { what: String, message: String },
    #[error("invalid name `{0}`")]
    InvalidName(String),
}

#[derive(Debug, Clone)]
pub struct ConnectClient {
    base: String,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Worker {
    pub url: String,
    pub version: String,
    pub commit: String,
    pub kafka_cluster_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskState {
    pub id: i32,
    pub state: String,
    pub worker_id: String,
    pub trace: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connector {
    pub name: String,
    pub kind: String,
    pub state: String,
    pub worker_id: String,
    pub trace: Option<String>,
    pub tasks: Vec<TaskState>,
    /// Every setting, secrets redacted.
    pub config: BTreeMap<String, String>,
}

impl Connector {
    /// The connector and every task RUNNING.
    pub fn healthy(&self) -> bool {
        self.state == "RUNNING" && self.tasks.iter().all(|t| t.state == "RUNNING")
    }
}

#[derive(Debug, Deserialize)]
struct RawWorker {
    #[serde(default)]
    version: String,
    #[serde(default)]
    commit: String,
    #[serde(default)]
    kafka_cluster_id: String,
}

#[derive(Debug, Deserialize)]
struct RawExpanded {
    info: Option<RawInfo>,
    status: Option<RawStatus>,
}

#[derive(Debug, Deserialize)]
struct RawInfo {
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawStatus {
    connector: RawState,
    #[serde(default)]
    tasks: Vec<RawTask>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawState {
    state: String,
    #[serde(default)]
    worker_id: String,
    #[serde(default)]
    trace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawTask {
    id: i32,
    state: String,
    #[serde(default)]
    worker_id: String,
    #[serde(default)]
    trace: Option<String>,
}

/// A connector name as it may appear in a URL path.
fn check_name(name: &str) -> Result<&str, ConnectError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(ConnectError::InvalidName(name.to_owned()))
    }
}

impl ConnectClient {
    pub fn new(base: &str, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            base: base.trim_end_matches('/').to_owned(),
            timeout,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(2)
                .build(connector),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn request(&self, method: Method, path: &str) -> Result<Bytes, ConnectError> {
        let what = format!("{method} {path}");
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ConnectError::Invalid {
                what: what.clone(),
                message: e.to_string(),
            })?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| ConnectError::Unreachable {
                        url: self.base.clone(),
                        message: e.to_string(),
                    })?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| ConnectError::Unreachable {
                    url: self.base.clone(),
                    message: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(ConnectError::Status {
                    what: what.clone(),
                    status,
                    body: String::from_utf8_lossy(&body).chars().take(500).collect(),
                });
            }
            Ok(body)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ConnectError::Timeout {
                url: self.base.clone(),
                timeout: self.timeout,
            })?
    }

    fn parse<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, ConnectError> {
        serde_json::from_slice(body).map_err(|e| ConnectError::Invalid {
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    pub async fn worker(&self) -> Result<Worker, ConnectError> {
        let body = self.request(Method::GET, "/").await?;
        let raw: RawWorker = Self::parse("GET /", &body)?;
        Ok(Worker {
            url: self.base.clone(),
            version: raw.version,
            commit: raw.commit,
            kafka_cluster_id: raw.kafka_cluster_id,
        })
    }

    /// Every connector with its status and configuration, in name order.
    pub async fn connectors(&self) -> Result<Vec<Connector>, ConnectError> {
        let path = "/connectors?expand=status&expand=info";
        let body = self.request(Method::GET, path).await?;
        let raw: BTreeMap<String, RawExpanded> = Self::parse(path, &body)?;
        Ok(raw
            .into_iter()
            .map(|(name, expanded)| {
                let (state, worker_id, trace, tasks, status_kind) = match expanded.status {
                    Some(status) => (
                        status.connector.state,
                        status.connector.worker_id,
                        status.connector.trace,
                        status
                            .tasks
                            .into_iter()
                            .map(|t| TaskState {
                                id: t.id,
                                state: t.state,
                                worker_id: t.worker_id,
                                trace: t.trace,
                            })
                            .collect(),
                        status.kind,
                    ),
                    None => ("UNKNOWN".to_owned(), String::new(), None, Vec::new(), None),
                };
                let (config, info_kind) = match expanded.info {
                    Some(info) => (
                        info.config
                            .iter()
                            .map(|(k, v)| (k.clone(), redact::config_value(k, v)))
                            .collect(),
                        info.kind,
                    ),
                    None => (BTreeMap::new(), None),
                };
                Connector {
                    name,
                    kind: info_kind.or(status_kind).unwrap_or_default(),
                    state,
                    worker_id,
                    trace,
                    tasks,
                    config,
                }
            })
            .collect())
    }

    /// Restarts a connector (its tasks stay as they are).
    pub async fn restart_connector(&self, name: &str) -> Result<(), ConnectError> {
        let name = check_name(name)?;
        self.request(Method::POST, &format!("/connectors/{name}/restart"))
            .await
            .map(|_| ())
    }

    /// Restarts one task of a connector.
    pub async fn restart_task(&self, name: &str, task: u32) -> Result<(), ConnectError> {
        let name = check_name(name)?;
        self.request(
            Method::POST,
            &format!("/connectors/{name}/tasks/{task}/restart"),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_paths() {
        assert!(check_name("cdc-postgres-connector").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }
}
