//! Metrics in Prometheus text format and health endpoints, served over HTTP:
//!
//! - `GET /metrics`: every metric of the process.
//! - `GET /livez`: 200 while the process serves requests at all.
//! - `GET /readyz`: 200 only while the process is running its work and every partition it owns
//!   makes progress; 503 before start, while stopping and while any partition is stalled (the body
//!   names them). `GET /health` answers the same as `/readyz`.
//!
//! Dead-letter reasons are owned by the binaries: each registers its list
//! ([`Metrics::register_reasons`]) so the counters exist from the start and the summary line can
//! add them up; nothing here knows what the reasons are.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub topic: String,
    pub reason: String,
}

fn batch_histogram() -> Histogram {
    // 1 ms … ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a handler did with one batch's records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Records made durable in the sink (including no-op replays the sink's guard skipped).
    pub applied: usize,
    /// The reason of every record parked in the dead-letter topic.
    pub parked: Vec<&'static str>,
}

/// Every metric a consumer process exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
    /// Partitions whose worker cannot make progress, with the last reason.
    stalled: Arc<Mutex<BTreeMap<PartitionLabels, String>>>,
    /// Problems of the whole process that make it unready (a lost replication slot, say), by name.
    problems: Arc<Mutex<BTreeMap<String, String>>>,
    /// Dead-letter reasons the binary registered.
    reasons: Arc<Mutex<BTreeSet<String>>>,
    /// Records read from Kafka.
    pub consumed: Family<TopicLabels, Counter>,
    /// Records made durable in the sink (including no-op replays the version guard skipped).
    pub applied: Family<TopicLabels, Counter>,
    /// Records parked in the dead-letter topic, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Time to make one batch durable.
    pub batch_seconds: Family<TopicLabels, Histogram, fn() -> Histogram>,
    /// Records behind the partition's high watermark after the last batch.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Partitions owned by this process whose worker cannot make progress.
    pub partitions_stalled: Gauge,
    /// Times a partition's worker was restarted after it gave up.
    pub worker_restarts: Family<PartitionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new("cdc")
    }
}

impl Metrics {
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let consumed = Family::<TopicLabels, Counter>::default();
        let applied = Family::<TopicLabels, Counter>::default();
        let dead_lettered = Family::<ReasonLabels, Counter>::default();
        let batch_seconds =
            Family::<TopicLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                batch_histogram,
            );
        let lag = Family::<PartitionLabels, Gauge>::default();
        let partitions_stalled = Gauge::default();
        let worker_restarts = Family::<PartitionLabels, Counter>::default();
        registry.register(
            "events_consumed",
            "Records read from Kafka",
            consumed.clone(),
        );
        registry.register(
            "events_applied",
            "Records made durable in the sink",
            applied.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Records parked in the dead-letter topic",
            dead_lettered.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time to make one batch durable",
            batch_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records behind the high watermark",
            lag.clone(),
        );
        registry.register(
            "partitions_stalled",
            "Owned partitions whose worker cannot make progress",
            partitions_stalled.clone(),
        );
        registry.register(
            "partition_worker_restarts",
            "Partition workers restarted from their stored offset after giving up",
            worker_restarts.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            ready: Arc::new(AtomicBool::new(false)),
            stalled: Arc::new(Mutex::new(BTreeMap::new())),
            problems: Arc::new(Mutex::new(BTreeMap::new())),
            reasons: Arc::new(Mutex::new(BTreeSet::new())),
            consumed,
            applied,
            dead_lettered,
            batch_seconds,
            lag,
            partitions_stalled,
            worker_restarts,
        }
    }

    /// Adds a metric of one binary's own to the registry.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        lock(&self.registry).register(name, help, metric);
    }

    /// Declares the dead-letter reasons of this process's topics: their counters exist (at 0)
    /// from the start, and [`Metrics::summary`] adds them up.
    pub fn register_reasons<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        reasons: &[&str],
    ) {
        let mut known = lock(&self.reasons);
        for topic in topics {
            for reason in reasons {
                known.insert((*reason).to_owned());
                // Created at 0, so the series exists before the first dead letter.
                let _ = self.dead_lettered.get_or_create(&ReasonLabels {
                    topic: topic.to_owned(),
                    reason: (*reason).to_owned(),
                });
            }
        }
    }

    /// Records a durable batch: its records as consumed, and what the handler did with them
    /// ([`Tally`]). Only durable batches are recorded, so a batch handed over again after its
    /// worker restarted is counted once, and `consumed = applied + dead_lettered` per topic.
    pub fn record_batch(
        &self,
        topic: &str,
        records: usize,
        tally: &Tally,
        elapsed: std::time::Duration,
    ) {
        if records == 0 {
            return;
        }
        let topic = topic.to_owned();
        let labels = TopicLabels {
            topic: topic.clone(),
        };
        self.consumed
            .get_or_create(&labels)
            .inc_by(u64::try_from(records).unwrap_or(u64::MAX));
        self.applied
            .get_or_create(&labels)
            .inc_by(u64::try_from(tally.applied).unwrap_or(u64::MAX));
        if !tally.parked.is_empty() {
            let mut known = lock(&self.reasons);
            for reason in &tally.parked {
                known.insert((*reason).to_owned());
                self.dead_lettered
                    .get_or_create(&ReasonLabels {
                        topic: topic.clone(),
                        reason: (*reason).to_owned(),
                    })
                    .inc();
            }
        }
        self.batch_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Running, no owned partition stalled, and no problem of the whole process.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && lock(&self.stalled).is_empty()
            && lock(&self.problems).is_empty()
    }

    /// Marks the process unready because of `name` (replaced if already set), with why.
    pub fn set_problem(&self, name: &str, why: String) {
        lock(&self.problems).insert(name.to_owned(), why);
    }

    /// The problem `name` is over.
    pub fn clear_problem(&self, name: &str) {
        lock(&self.problems).remove(name);
    }

    /// Marks a partition as unable to make progress, with why.
    pub fn set_stalled(&self, partition: PartitionLabels, why: String) {
        let mut stalled = lock(&self.stalled);
        stalled.insert(partition, why);
        self.partitions_stalled
            .set(i64::try_from(stalled.len()).unwrap_or(i64::MAX));
    }

    /// The partition makes progress again, or is no longer owned.
    pub fn clear_stalled(&self, partition: &PartitionLabels) {
        let mut stalled = lock(&self.stalled);
        if stalled.remove(partition).is_some() {
            self.partitions_stalled
                .set(i64::try_from(stalled.len()).unwrap_or(i64::MAX));
        }
    }

    /// The stalled partitions and why, in partition order.
    pub fn stalled(&self) -> Vec<(PartitionLabels, String)> {
        lock(&self.stalled)
            .iter()
            .map(|(p, why)| (p.clone(), why.clone()))
            .collect()
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &lock(&self.registry));
        text
    }

    /// `consumed=N applied=N dead_lettered=N` for one topic.
    pub fn summary(&self, topic: &str) -> String {
        let labels = TopicLabels {
            topic: topic.to_owned(),
        };
        let reasons: Vec<String> = lock(&self.reasons).iter().cloned().collect();
        let dead: u64 = reasons
            .into_iter()
            .map(|reason| {
                self.dead_lettered
                    .get_or_create(&ReasonLabels {
                        topic: topic.to_owned(),
                        reason,
                    })
                    .get()
            })
            .sum();
        format!(
            "consumed={} applied={} dead_lettered={}",
            self.consumed.get_or_create(&labels).get(),
            self.applied.get_or_create(&labels).get(),
            dead
        )
    }

    /// Serves the endpoints on `address` (`host:port`; empty: no endpoint) in the background until
    /// `shutdown` fires.
    pub fn spawn_server(
        &self,
        address: &str,
        shutdown: CancellationToken,
    ) -> Result<(), std::net::AddrParseError> {
        if address.trim().is_empty() {
            return Ok(());
        }
        let address: SocketAddr = address.parse()?;
        let server = self.clone().serve(address, shutdown);
        tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(error = %error, "metrics endpoint failed");
            }
        });
        Ok(())
    }

    /// Serves `/metrics`, `/livez`, `/readyz` and `/health` on `address` until `shutdown` fires.
    pub async fn serve(
        self,
        address: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!(%address, "metrics and health endpoint listening");
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/livez", get(|| async { "alive\n" }))
            .route("/readyz", get(ready_handler))
            .route("/health", get(ready_handler))
            .with_state(self);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn ready_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    if metrics.is_ready() {
        return (StatusCode::OK, "ok\n".to_owned());
    }
    let stalled = metrics.stalled();
    let problems = lock(&metrics.problems).clone();
    if stalled.is_empty() && problems.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned());
    }
    let mut body = String::new();
    for (name, why) in problems {
        body.push_str(&format!("not ready: {name}: {why}\n"));
    }
    if !stalled.is_empty() {
        body.push_str("not ready: stalled partitions\n");
    }
    for (partition, why) in stalled {
        body.push_str(&format!(
            "{}/{}: {why}\n",
            partition.topic, partition.partition
        ));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_labels() {
        let metrics = Metrics::new("cdc");
        metrics.register_reasons(["users"], &["undecodable", "missing_key"]);
        let topic = TopicLabels {
            topic: "users".into(),
        };
        metrics.record_batch(
            &topic.topic,
            3,
            &Tally {
                applied: 2,
                parked: vec!["undecodable"],
            },
            std::time::Duration::from_millis(4),
        );
        metrics
            .lag
            .get_or_create(&PartitionLabels {
                topic: "users".into(),
                partition: 2,
            })
            .set(7);
        let text = metrics.render();
        for expected in [
            "cdc_events_consumed_total{topic=\"users\"} 3",
            "cdc_events_dead_lettered_total{topic=\"users\",reason=\"undecodable\"} 1",
            "cdc_events_dead_lettered_total{topic=\"users\",reason=\"missing_key\"} 0",
            "cdc_consumer_lag{topic=\"users\",partition=\"2\"} 7",
            "cdc_batch_duration_seconds_count{topic=\"users\"} 1",
            "cdc_partitions_stalled 0",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert_eq!(
            metrics.summary("users"),
            "consumed=3 applied=2 dead_lettered=1"
        );
    }

    #[test]
    fn a_stalled_partition_makes_the_process_unready() {
        let metrics = Metrics::new("cdc");
        metrics.set_ready(true);
        assert!(metrics.is_ready());
        let partition = PartitionLabels {
            topic: "orders".into(),
            partition: 4,
        };
        metrics.set_stalled(partition.clone(), "gave up on apply orders".into());
        assert!(!metrics.is_ready());
        assert!(metrics.render().contains("cdc_partitions_stalled 1"));
        metrics.clear_stalled(&partition);
        assert!(metrics.is_ready());
        assert!(metrics.render().contains("cdc_partitions_stalled 0"));
    }

    #[test]
    fn a_problem_of_the_process_makes_it_unready_until_cleared() {
        let metrics = Metrics::new("cdc");
        metrics.set_ready(true);
        metrics.set_problem("replication_slot", "slot cdc_slot was invalidated".into());
        assert!(!metrics.is_ready());
        metrics.set_problem("replication_slot", "still invalidated".into());
        metrics.clear_problem("replication_slot");
        assert!(metrics.is_ready());
    }
}
