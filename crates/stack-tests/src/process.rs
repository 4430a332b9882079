//! The pipeline's binaries as processes: built on first use, started with the stack's connection
//! settings, their stderr kept in a log file whose tail a failure shows, stopped by SIGTERM (they
//! must exit 0) or SIGKILL, their summary lines parsed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::{log_tail, repo_root, unique_name, Stack};

/// The packages `stack.sh` builds together for the pipeline (`PIPELINE_PACKAGES`). Cargo unifies
/// dependency features over the packages of one build, so building one of them alone compiles
/// cdc-core and everything on top of it again with other features: they are always built together.
pub const PIPELINE_PACKAGES: [&str; 4] = ["producer", "consumer", "cdcconsumer", "console"];

/// The path of the binary `package` (a workspace package with a binary of the same name), built
/// on first use with the profile and target folder of the running test (or workspace binary),
/// for tests that drive another package's binary (`env!("CARGO_BIN_EXE_…")` only names the test's own package's).
/// A pipeline package is built together with the others of [`PIPELINE_PACKAGES`], as `stack.sh`
/// builds them, so what the stack built is reused as it is.
fn build_selection(package: &str) -> Vec<&str> {
    if PIPELINE_PACKAGES.contains(&package) {
        PIPELINE_PACKAGES.iter().flat_map(|p| ["-p", p]).collect()
    } else {
        vec!["-p", package, "--bin", package]
    }
}

pub fn workspace_binary(package: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(package) {
        return Ok(path.clone());
    }
    let (target_dir, profile_dir) = target_dirs()?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(name) => name.to_owned(),
        None => bail!("cannot tell the profile of {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(repo_root())
        .args(["build", "--quiet", "--locked", "--profile", &profile])
        .args(build_selection(package))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .with_context(|| format!("running cargo build -p {package}"))?;
    if !output.status.success() {
        bail!(
            "cargo build -p {package} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = profile_dir.join(format!("{package}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "cargo build -p {package} did not produce {}",
            path.display()
        );
    }
    built.insert(package.to_owned(), path.clone());
    Ok(path)
}

/// `<target>` and `<target>/<profile>` of the running program: a test
/// (`<target>/<profile>/deps/<name>`) or a workspace binary (`<target>/<profile>/<name>`).
fn target_dirs() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("locating the running program")?;
    let mut profile_dir = exe
        .parent()
        .with_context(|| format!("{} has no parent", exe.display()))?;
    if profile_dir.file_name().is_some_and(|name| name == "deps") {
        profile_dir = profile_dir
            .parent()
            .with_context(|| format!("{} has no parent", profile_dir.display()))?;
    }
    let target_dir = profile_dir
        .parent()
        .with_context(|| format!("{} has no parent", profile_dir.display()))?;
    Ok((target_dir.to_owned(), profile_dir.to_owned()))
}

/// Where the processes a test starts keep their logs: `<target>/tmp/it-logs`.
pub fn log_dir() -> Result<PathBuf> {
    let (target, _) = target_dirs()?;
    let dir = target.join("tmp").join("it-logs");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A command for one of the pipeline's binaries with the stack's connection settings in its
/// environment (Kafka, PostgreSQL, Cassandra, replication factor), no metrics endpoint, and quiet
/// librdkafka logs. Tests add what their scenario needs.
pub fn command(stack: &Stack, program: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env("KAFKA_BROKERS", &stack.brokers)
        .env("DATABASE_URL", &stack.database_url)
        .env("CASSANDRA_NODES", stack.cassandra_nodes.join(","))
        .env("REPLICATION_FACTOR", stack.broker_count.to_string())
        .env("METRICS_ADDR", "")
        .env("LOG_LEVEL", "info,rdkafka=warn")
        .stdin(Stdio::null());
    command
}

/// A process a test started; killed when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

/// `consumed`, `applied` and `dead_lettered` of one topic, from a summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCounts {
    pub consumed: u64,
    pub applied: u64,
    pub dead_lettered: u64,
}

/// Per topic, what a consumer's last lines say.
pub type Summary = BTreeMap<String, TopicCounts>;

impl Process {
    /// Starts `command` in the background: stdout piped (for the summary), stderr to a log file.
    pub fn spawn(name: &str, mut command: Command) -> Result<Self> {
        let log = log_dir()?.join(format!("{}.log", unique_name(name)));
        let child = command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Result<u32> {
        Ok(self
            .child
            .as_ref()
            .with_context(|| format!("{} already ended", self.name))?
            .id())
    }

    /// Where its stderr goes.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// SIGTERM: the process drains, commits and must exit 0 within a minute; returns its stdout.
    pub async fn terminate(mut self) -> Result<String> {
        let pid = self.pid()?.to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let status = self.wait_exit(Duration::from_secs(60)).await?;
        self.finish(status)
    }

    /// SIGKILL: no draining, no final commit.
    pub fn kill(mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} already ended", self.name))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Waits for the process to end on its own (an idle timeout, say); fails after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            let child = self
                .child
                .as_mut()
                .with_context(|| format!("{} already ended", self.name))?;
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > deadline {
                bail!(
                    "{} still running after {deadline:?}; its log ends:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs until it exits on its own within `deadline`; it must exit 0. Returns its stdout.
    pub async fn run_to_end(mut self, deadline: Duration) -> Result<String> {
        let status = self.wait_exit(deadline).await?;
        self.finish(status)
    }

    /// The stdout of an ended process, which must have exited 0.
    fn finish(&mut self, status: ExitStatus) -> Result<String> {
        let stdout = self.stdout()?;
        ensure!(
            status.success(),
            "{} exited with {status}:\n{stdout}\nits log ends:\n{}",
            self.name,
            self.log_tail(30)
        );
        eprintln!("{}", stdout.trim_end());
        Ok(stdout)
    }

    /// Waits for the process to end on its own within `deadline`; it must fail (exit non-zero).
    /// Returns its log.
    pub async fn expect_failure(mut self, deadline: Duration) -> Result<String> {
        let status = self.wait_exit(deadline).await?;
        let stdout = self.stdout()?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        ensure!(
            !status.success(),
            "{} exited 0 where it had to fail:\n{stdout}\n{log}",
            self.name
        );
        Ok(log)
    }

    /// The stdout of an ended process, whatever its exit status, and the status.
    pub async fn outcome(mut self, deadline: Duration) -> Result<(ExitStatus, String)> {
        let status = self.wait_exit(deadline).await?;
        Ok((status, self.stdout()?))
    }

    fn stdout(&mut self) -> Result<String> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} already ended", self.name))?;
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stdout)?;
        }
        child.wait()?;
        Ok(stdout)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fails unless a summary counts no dead letters on any topic.
pub fn nothing_dead_lettered(summary: &Summary) -> Result<()> {
    ensure!(
        summary.values().all(|c| c.dead_lettered == 0),
        "records were dead-lettered: {summary:?}"
    );
    Ok(())
}

/// `<program>: topic=T consumed=N applied=N dead_lettered=N` lines of a consumer's stdout.
pub fn summary(program: &str, stdout: &str) -> Summary {
    let prefix = format!("{program}: topic=");
    let mut summary = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
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

/// Runs `<package> dlq <args…>` (`consumer` or `cdcconsumer`) with the stack's connection
/// settings; returns its exit status and stdout (its log is shown when it fails to start).
pub async fn dlq_command(
    stack: &Stack,
    package: &str,
    args: &[&str],
) -> Result<(ExitStatus, String)> {
    let mut command = self::command(stack, &workspace_binary(package)?);
    command.arg("dlq").args(args);
    let (status, stdout) = Process::spawn(&format!("{package}-dlq"), command)?
        .outcome(Duration::from_secs(120))
        .await?;
    eprintln!(
        "{package} dlq {}: {status}\n{}",
        args.join(" "),
        stdout.trim_end()
    );
    Ok((status, stdout))
}

/// The counts of a `dlq replay` summary line (`replay: matched=N replayed=N skipped=N
/// unreadable=N dry_run=B (…)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayCounts {
    pub matched: u64,
    pub replayed: u64,
    pub skipped: u64,
    pub unreadable: u64,
}

/// The summary line of `dlq replay`'s stdout.
pub fn replay_counts(stdout: &str) -> Result<ReplayCounts> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("replay: "))
        .with_context(|| format!("no replay summary in:\n{stdout}"))?;
    let mut counts = ReplayCounts::default();
    for word in line.split_whitespace() {
        let Some((name, value)) = word.split_once('=') else {
            continue;
        };
        let value = || value.parse::<u64>();
        match name {
            "matched" => counts.matched = value()?,
            "replayed" => counts.replayed = value()?,
            "skipped" => counts.skipped = value()?,
            "unreadable" => counts.unreadable = value()?,
            _ => {}
        }
    }
    Ok(counts)
}

/// Runs `<package> dlq replay --source-topic <source> --reason <reason> <extra…>` and requires it
/// to replay `expected` dead letters, all it matched, skipping none.
pub async fn replay_dead_letters(
    stack: &Stack,
    package: &str,
    [source, reason]: [&str; 2],
    extra: &[&str],
    expected: u64,
) -> Result<()> {
    let mut args = vec!["replay", "--source-topic", source, "--reason", reason];
    args.extend_from_slice(extra);
    let (status, stdout) = dlq_command(stack, package, &args).await?;
    let counts = replay_counts(&stdout)?;
    let wanted = ReplayCounts {
        matched: expected,
        replayed: expected,
        skipped: 0,
        unreadable: 0,
    };
    ensure!(
        status.success() && counts == wanted,
        "{package} dlq replay ended {status} with {counts:?}, expected {wanted:?}"
    );
    Ok(())
}

/// A plain HTTP/1.1 GET: (status, body).
pub async fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    http_request(address, "GET", path, &[], "").await
}

/// A plain HTTP/1.1 request with headers and a body (`Content-Length` sent unless a bodiless GET):
/// (status, body).
pub async fn http_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if method != "GET" || !body.is_empty() {
        write!(request, "Content-Length: {}\r\n", body.len())?;
    }
    for (name, value) in headers {
        write!(request, "{name}: {value}\r\n")?;
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A free loopback address for a metrics endpoint.
pub fn free_address() -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_summaries_parse() -> Result<()> {
        let stdout = "replayed orders.dlq/0/1 to orders/2 reason=undecodable\n\
                      replay: matched=3 replayed=2 skipped=1 unreadable=0 dry_run=false \
                      (undecodable 2)\n";
        assert_eq!(
            replay_counts(stdout)?,
            ReplayCounts {
                matched: 3,
                replayed: 2,
                skipped: 1,
                unreadable: 0
            }
        );
        assert!(replay_counts("nothing").is_err());
        Ok(())
    }

    #[test]
    fn summary_lines_parse_per_topic() {
        let stdout =
            "noise\ncdcconsumer: topic=cdc.public.users consumed=5 applied=4 dead_lettered=1\n\
                      cdcconsumer: topic=cdc.public.orders consumed=2 applied=2 dead_lettered=0\n";
        let parsed = summary("cdcconsumer", stdout);
        assert_eq!(
            parsed.get("cdc.public.users"),
            Some(&TopicCounts {
                consumed: 5,
                applied: 4,
                dead_lettered: 1
            })
        );
        assert_eq!(parsed.len(), 2);
        assert!(summary("consumer", stdout).is_empty());
    }
}
