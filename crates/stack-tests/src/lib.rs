//! The one harness of the integration tests that run against the real local stack started by
//! `stack/stack.sh up`:
//!
//! - this module: the stack's topology (read from `stack/topology.env` and the active profile),
//!   unique names per run, condition waits with deadlines, service control (kill, stop, start)
//!   and the lock that keeps a disruptive test from overlapping others;
//! - [`process`]: the pipeline's binaries as processes (build, start, stop, summaries);
//! - [`kafka`]: reading topics back, raw records, dead letters, cleanup;
//! - [`rows`]: rows of both stores read by the tables' one description, and their comparison;
//! - [`model`]: the expected state folded from a generated event stream;
//! - [`sql`]: changes made directly in SQL and what they must leave behind;
//! - [`pipeline`]: the whole pipeline — cdcconsumer runs and a verifier that must be clean.

pub mod kafka;
pub mod model;
pub mod pipeline;
pub mod process;
pub mod rows;
pub mod scratch;
pub mod sql;

pub use process::workspace_binary;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Services are shared by every test in a binary: a test that stops or kills one holds this lock
/// exclusively, every other test holds it shared, so no test sees another's disruption.
static DISRUPTION: RwLock<()> = RwLock::const_new(());

/// For tests that stop, kill or pause a service.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    DISRUPTION.write().await
}

/// For tests that need every service up.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    DISRUPTION.read().await
}

/// The last `lines` lines of a log file, under its path (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!("({})\n{}", path.display(), all[from..].join("\n"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Parses `stack/topology.env`: `KEY=value` lines, `#` comments.
pub fn topology() -> Result<HashMap<String, String>> {
    let path = repo_root().join("stack/topology.env");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_env(&text))
}

pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Connection settings of the running stack.
#[derive(Debug, Clone)]
pub struct Stack {
    pub profile: String,
    pub brokers: String,
    pub broker_count: usize,
    pub database_url: String,
    pub cassandra_nodes: Vec<String>,
    pub topology: HashMap<String, String>,
}

impl Stack {
    /// Reads the topology of the stack that `stack/stack.sh up` started (profile `ha` or `lite`).
    pub fn from_env() -> Result<Self> {
        let topology = topology()?;
        let state = std::env::var("CDC_STACK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".stack"));
        let profile = std::fs::read_to_string(state.join("profile"))
            .with_context(|| {
                format!(
                    "no stack found in {} (run stack/stack.sh up first)",
                    state.display()
                )
            })?
            .trim()
            .to_owned();
        let get = |key: &str| {
            topology
                .get(key)
                .cloned()
                .with_context(|| format!("{key} missing in topology.env"))
        };
        // the secure profile has the lite topology
        let lite = profile == "lite" || profile == "secure";
        let brokers = if lite {
            "127.0.0.1:9092".to_owned()
        } else {
            get("KAFKA_BOOTSTRAP")?
        };
        let addresses = get("CASSANDRA_ADDRESSES")?;
        let ports = get("CASSANDRA_CQL_PORTS")?;
        let mut cassandra_nodes: Vec<String> = addresses
            .split_whitespace()
            .zip(ports.split_whitespace())
            .map(|(address, port)| format!("{address}:{port}"))
            .collect();
        if lite {
            cassandra_nodes.truncate(1);
        }
        let database_url = format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            get("POSTGRES_APP_USER")?,
            get("POSTGRES_APP_PASSWORD")?,
            get("POSTGRES_PORT")?,
            get("POSTGRES_DB")?
        );
        Ok(Self {
            broker_count: brokers.split(',').count(),
            profile,
            brokers,
            database_url,
            cassandra_nodes,
            topology,
        })
    }

    /// Whether this is the highly available 3 + 3 topology (fault tests need it).
    pub fn is_ha(&self) -> bool {
        self.profile == "ha"
    }
}

/// Runs `stack/stack.sh <args>` and fails with its output if it fails.
pub fn stack_command(args: &[&str]) -> Result<String> {
    let script = repo_root().join("stack/stack.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "stack/stack.sh {} failed ({}):\n{}\n{}",
            args.join(" "),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// A name no other run or test uses: `<prefix>_<random hex>`.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// Polls `check` until it yields `Some`, failing after `timeout` with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restarts a service when dropped, so that a failing fault test leaves the stack whole.
#[derive(Debug)]
pub struct RestartOnDrop {
    services: Vec<String>,
}

impl RestartOnDrop {
    pub fn new() -> Self {
        Self {
            services: Vec::new(),
        }
    }

    /// Sends SIGKILL (`kill`), SIGTERM (`stop`) or SIGSTOP (`pause`) to a service and remembers to
    /// bring it back.
    pub fn take_down(&mut self, how: &str, service: &str) -> Result<()> {
        self.services.push(service.to_owned());
        stack_command(&[how, service]).map(|_| ())
    }

    /// Starts the service again now and waits until it serves.
    pub fn bring_back(&mut self, service: &str) -> Result<()> {
        // A paused service is resumed; for any other this is refused, harmlessly.
        let _ = stack_command(&["resume", service]);
        stack_command(&["start", service])?;
        self.services.retain(|s| s != service);
        Ok(())
    }
}

impl Default for RestartOnDrop {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        for service in std::mem::take(&mut self.services) {
            let _ = stack_command(&["resume", &service]);
            if let Err(error) = stack_command(&["start", &service]) {
                eprintln!("could not restart {service} after the test: {error:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_lines() {
        let parsed = parse_env("# comment\nA=1\n\nB=x y z\n");
        assert_eq!(parsed.get("A").map(String::as_str), Some("1"));
        assert_eq!(parsed.get("B").map(String::as_str), Some("x y z"));
        assert_eq!(parsed.len(), 2);
    }
}
