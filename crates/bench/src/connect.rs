//! Kafka Connect as the benches see it: the stack's worker process (for its CPU time), the
//! connector's REST API (pause, resume, state, `max.queue.size`), and a clock on Debezium's
//! capture of changes waiting in the replication slot — timed past the queue, where every change
//! is read from the slot, decoded, converted and sent while the clock runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

use crate::common;

/// The connector the stack runs (`debezium-config.sh`).
const CONNECTOR: &str = "cdc-postgres-connector";

/// How often the capture clock reads the topics' high watermarks.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Kafka Connect's JVM, checked to be the stack's own by its command line.
pub fn connect_pid() -> Result<String> {
    let file = common::stack_dir().join("run/connect.pid");
    let pid = std::fs::read_to_string(&file)
        .with_context(|| {
            format!(
                "reading {} (run the bench with the stack's environment: \
                 eval \"$(bash stack/stack.sh env)\")",
                file.display()
            )
        })?
        .trim()
        .to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    ensure!(
        String::from_utf8_lossy(&cmdline).contains("cdc.stack.service=connect"),
        "pid {pid} from {} is not the stack's Kafka Connect",
        file.display()
    );
    Ok(pid)
}

/// Kafka Connect's REST API: `CONNECT_URL` (`stack.sh env` prints it) or the stack's default.
fn connect_url() -> String {
    std::env::var("CONNECT_URL").unwrap_or_else(|_| "http://127.0.0.1:8083".into())
}

/// `<method> /connectors/<name>/<path>` on Connect's REST API through curl (which the stack needs
/// anyway); the response body.
async fn connect_rest(method: &str, path: &str) -> Result<Vec<u8>> {
    let url = format!("{}/connectors/{CONNECTOR}/{path}", connect_url());
    let output = tokio::process::Command::new("curl")
        .args(["-fsS", "-X", method, &url])
        .output()
        .await
        .context("running curl")?;
    ensure!(
        output.status.success(),
        "{method} {url} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output.stdout)
}

/// `PUT /connectors/<name>/<action>` (`pause`, `resume`).
pub async fn connector(action: &str) -> Result<()> {
    connect_rest("PUT", action).await.map(drop)
}

/// The connector's `max.queue.size` (`GET /connectors/<name>/config`; Debezium's default when unset).
pub async fn connector_queue_size() -> Result<u64> {
    let body = connect_rest("GET", "config").await?;
    let config: Value =
        serde_json::from_slice(&body).context("the connector's config is not JSON")?;
    match config.get("max.queue.size").and_then(Value::as_str) {
        Some(text) => text
            .parse()
            .with_context(|| format!("max.queue.size {text:?} is not a count")),
        None => Ok(8_192),
    }
}

/// Waits until the connector's state is `state` (`PAUSED`, `RUNNING`).
pub async fn connector_state(state: &str, timeout: Duration) -> Result<()> {
    let url = format!("{}/connectors/{CONNECTOR}/status", connect_url());
    let deadline = Instant::now() + timeout;
    loop {
        let output = tokio::process::Command::new("curl")
            .args(["-fsS", &url])
            .output()
            .await
            .context("running curl")?;
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let connector = status["connector"]["state"].as_str() == Some(state);
        let tasks = status["tasks"]
            .as_array()
            .is_some_and(|tasks| !tasks.is_empty() && tasks.iter().all(|t| t["state"] == state));
        if connector && tasks {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "connector {CONNECTOR} not {state} within {timeout:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of the high watermarks of `topics` (name, partition count), read once.
pub async fn end_offsets_now(config: &ClientConfig, topics: &[(String, i32)]) -> Result<i64> {
    Watermarks::new(config, topics)?.sum().await
}

/// The summed high watermarks of a set of topics, read again and again through one client (a
/// client made per reading would spend most of a capture clock's tick on its bootstrap).
struct Watermarks {
    consumer: Arc<BaseConsumer>,
    topics: Arc<[(String, i32)]>,
}

impl Watermarks {
    fn new(config: &ClientConfig, topics: &[(String, i32)]) -> Result<Self> {
        Ok(Self {
            consumer: Arc::new(config.create()?),
            topics: topics.into(),
        })
    }

    async fn sum(&self) -> Result<i64> {
        let (consumer, topics) = (Arc::clone(&self.consumer), Arc::clone(&self.topics));
        tokio::task::spawn_blocking(move || {
            let mut sum = 0;
            for (topic, partitions) in topics.iter() {
                for partition in 0..*partitions {
                    sum += consumer
                        .fetch_watermarks(topic, partition, Duration::from_secs(10))?
                        .1;
                }
            }
            Ok(sum)
        })
        .await?
    }
}

/// When a capture that has just been resumed is over.
#[derive(Debug, Clone, Copy)]
pub enum CaptureEnd {
    /// The topics have grown by exactly this many records (more is an error).
    Exactly(u64),
    /// The topics have not grown for this long (after growing at all); the capture ended with the
    /// last growth seen.
    Settled(Duration),
}

/// Debezium's capture of a backlog, from the resume.
#[derive(Debug, Clone, Copy)]
pub struct CaptureTiming {
    /// Records the topics grew by.
    pub records: u64,
    /// Resume → the last record in Kafka.
    pub seconds: f64,
    /// Records past the queue and the seconds they took: from the moment the topics had grown by
    /// the queue's size to the last record. None when the whole backlog fit in the queue.
    pub past_queue: Option<(u64, f64)>,
}

impl CaptureTiming {
    /// Records per second past the queue.
    #[allow(clippy::cast_precision_loss)]
    pub fn rate_past_queue(&self) -> Option<f64> {
        self.past_queue
            .map(|(records, seconds)| records as f64 / seconds)
    }
}

/// The arithmetic of a capture clock, fed one reading of the topics' summed high watermarks
/// after another.
#[derive(Debug)]
struct CaptureClock {
    /// The sum before the backlog was written.
    start: i64,
    /// The sum once the topics have grown by the queue's size.
    past_queue: i64,
    end: CaptureEnd,
    resumed_at: Instant,
    /// The first reading at or past `past_queue`.
    queue_sent_at: Option<(Instant, i64)>,
    /// The last reading that differed from the one before it.
    last_growth: (Instant, i64),
}

impl CaptureClock {
    fn new(start: i64, queue: u64, resumed_at: Instant, end: CaptureEnd) -> Result<Self> {
        Ok(Self {
            start,
            past_queue: start + i64::try_from(queue)?,
            end,
            resumed_at,
            queue_sent_at: None,
            last_growth: (resumed_at, start),
        })
    }

    /// Takes the reading `sum` made at `at`; whether the capture is over.
    fn observe(&mut self, sum: i64, at: Instant) -> Result<bool> {
        if sum >= self.past_queue && self.queue_sent_at.is_none() {
            self.queue_sent_at = Some((at, sum));
        }
        if sum != self.last_growth.1 {
            self.last_growth = (at, sum);
        }
        Ok(match self.end {
            CaptureEnd::Exactly(records) => {
                let target = self.start + i64::try_from(records)?;
                ensure!(
                    sum <= target,
                    "Debezium's topics grew by {} records for {records} changes",
                    sum - self.start
                );
                sum == target
            }
            CaptureEnd::Settled(quiet) => {
                sum > self.start && at.duration_since(self.last_growth.0) >= quiet
            }
        })
    }

    fn timing(&self) -> Result<CaptureTiming> {
        let (ended_at, end_sum) = self.last_growth;
        let past_queue = self
            .queue_sent_at
            .filter(|(_, sum)| *sum < end_sum)
            .map(|(at, sum)| -> Result<(u64, f64)> {
                Ok((
                    u64::try_from(end_sum - sum)?,
                    ended_at.duration_since(at).as_secs_f64(),
                ))
            })
            .transpose()?;
        Ok(CaptureTiming {
            records: u64::try_from(end_sum - self.start)?,
            seconds: ended_at.duration_since(self.resumed_at).as_secs_f64(),
            past_queue,
        })
    }
}

/// Times Debezium's capture, just resumed at `resumed_at`, of the records the topics (whose high
/// watermarks summed to `start` before the backlog was written) are to grow by; `queue` is the
/// connector's `max.queue.size`.
pub async fn time_capture(
    config: &ClientConfig,
    topics: &[(String, i32)],
    start: i64,
    queue: u64,
    resumed_at: Instant,
    end: CaptureEnd,
    timeout: Duration,
) -> Result<CaptureTiming> {
    let mut clock = CaptureClock::new(start, queue, resumed_at, end)?;
    let watermarks = Watermarks::new(config, topics)?;
    loop {
        let sum = watermarks.sum().await?;
        if clock.observe(sum, Instant::now())? {
            return clock.timing();
        }
        ensure!(
            resumed_at.elapsed() < timeout,
            "Debezium's topics grew by {} records within {timeout:?} and were still growing \
             or had not grown",
            sum - start
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, millis: u64) -> Instant {
        base + Duration::from_millis(millis)
    }

    #[test]
    fn an_exact_capture_is_timed_past_the_queue_to_its_last_record() -> Result<()> {
        let base = Instant::now();
        let mut clock = CaptureClock::new(1_000, 100, base, CaptureEnd::Exactly(400))?;
        assert!(!clock.observe(1_000, at(base, 100))?);
        assert!(!clock.observe(1_050, at(base, 200))?);
        // First reading past the queue: 1,120 (120 grown); the clock runs from here.
        assert!(!clock.observe(1_120, at(base, 300))?);
        assert!(!clock.observe(1_300, at(base, 800))?);
        assert!(clock.observe(1_400, at(base, 1_300))?);
        let timing = clock.timing()?;
        assert_eq!(timing.records, 400);
        assert!((timing.seconds - 1.3).abs() < 1e-9, "{timing:?}");
        let (records, seconds) = timing.past_queue.expect("records past the queue");
        assert_eq!(records, 280);
        assert!((seconds - 1.0).abs() < 1e-9, "{timing:?}");
        assert!((timing.rate_past_queue().unwrap_or_default() - 280.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn an_exact_capture_refuses_more_records_than_changes() -> Result<()> {
        let base = Instant::now();
        let mut clock = CaptureClock::new(0, 10, base, CaptureEnd::Exactly(50))?;
        let error = clock
            .observe(51, at(base, 10))
            .expect_err("51 records for 50 changes");
        assert!(error.to_string().contains("grew by 51 records for 50"));
        Ok(())
    }

    #[test]
    fn a_settled_capture_ends_with_its_last_growth() -> Result<()> {
        let base = Instant::now();
        let quiet = Duration::from_secs(2);
        let mut clock = CaptureClock::new(0, 10, base, CaptureEnd::Settled(quiet))?;
        // Nothing yet: a capture that has not begun is not over, however long it waits.
        assert!(!clock.observe(0, at(base, 5_000))?);
        assert!(!clock.observe(30, at(base, 5_100))?);
        assert!(!clock.observe(90, at(base, 5_600))?);
        assert!(!clock.observe(90, at(base, 7_000))?);
        assert!(clock.observe(90, at(base, 7_600))?);
        let timing = clock.timing()?;
        assert_eq!(timing.records, 90);
        assert!((timing.seconds - 5.6).abs() < 1e-9, "{timing:?}");
        assert_eq!(timing.past_queue.map(|(records, _)| records), Some(60));
        Ok(())
    }

    #[test]
    fn a_backlog_within_the_queue_has_no_rate_past_it() -> Result<()> {
        let base = Instant::now();
        let mut clock = CaptureClock::new(0, 100, base, CaptureEnd::Exactly(80))?;
        assert!(clock.observe(80, at(base, 50))?);
        let timing = clock.timing()?;
        assert_eq!(timing.past_queue, None);
        assert_eq!(timing.rate_past_queue(), None);
        Ok(())
    }
}
