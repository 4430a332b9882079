//! Metrics in Prometheus text format and a health endpoint, served over HTTP:
//! `GET /metrics` and `GET /health` (200 once the service is ready, 503 before and while stopping).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
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

/// Every metric a consumer process exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
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
        Self {
            registry: Arc::new(Mutex::new(registry)),
            ready: Arc::new(AtomicBool::new(false)),
            consumed,
            applied,
            dead_lettered,
            batch_seconds,
            lag,
        }
    }

    /// Adds a metric of one binary's own to the registry.
    /// Counts a batch of one topic's records as consumed; returns the topic's labels.
    pub fn count_consumed(&self, batch: &[rdkafka::message::OwnedMessage]) -> TopicLabels {
        use rdkafka::message::Message;
        let topic = TopicLabels {
            topic: batch
                .first()
                .map(|m| m.topic().to_owned())
                .unwrap_or_default(),
        };
        self.consumed
            .get_or_create(&topic)
            .inc_by(u64::try_from(batch.len()).unwrap_or(u64::MAX));
        topic
    }

    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .register(name, help, metric);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    /// `consumed=N applied=N dead_lettered=N` for one topic.
    pub fn summary(&self, topic: &str) -> String {
        let labels = TopicLabels {
            topic: topic.to_owned(),
        };
        let dead: u64 = {
            // Family has no iteration API: sum the reasons we know of.
            // Both paths share some reasons ("undecodable"): count each once.
            let reasons: std::collections::BTreeSet<&str> = crate::events::REASONS
                .iter()
                .chain(["missing_parent", "rejected_by_database"].iter())
                .chain(crate::cdc::REASONS.iter())
                .copied()
                .collect();
            reasons
                .into_iter()
                .map(|reason| {
                    self.dead_lettered
                        .get_or_create(&ReasonLabels {
                            topic: topic.to_owned(),
                            reason: reason.to_owned(),
                        })
                        .get()
                })
                .sum()
        };
        format!(
            "consumed={} applied={} dead_lettered={}",
            self.consumed.get_or_create(&labels).get(),
            self.applied.get_or_create(&labels).get(),
            dead
        )
    }

    /// Serves the endpoint on `address` (`host:port`; empty: no endpoint) in the background until
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

    /// Serves `/metrics` and `/health` on `address` until `shutdown` fires.
    pub async fn serve(
        self,
        address: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!(%address, "metrics and health endpoint listening");
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/health", get(health_handler))
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

async fn health_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_labels() {
        let metrics = Metrics::new("cdc");
        let topic = TopicLabels {
            topic: "users".into(),
        };
        metrics.consumed.get_or_create(&topic).inc_by(3);
        metrics.applied.get_or_create(&topic).inc_by(2);
        metrics
            .dead_lettered
            .get_or_create(&ReasonLabels {
                topic: "users".into(),
                reason: "undecodable".into(),
            })
            .inc();
        metrics.batch_seconds.get_or_create(&topic).observe(0.004);
        metrics
            .lag
            .get_or_create(&PartitionLabels {
                topic: "users".into(),
                partition: 2,
            })
            .set(7);
        let text = metrics.render();
        assert!(
            text.contains("cdc_events_consumed_total{topic=\"users\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "cdc_events_dead_lettered_total{topic=\"users\",reason=\"undecodable\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("cdc_consumer_lag{topic=\"users\",partition=\"2\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("cdc_batch_duration_seconds_count{topic=\"users\"} 1"),
            "{text}"
        );
        assert_eq!(
            metrics.summary("users"),
            "consumed=3 applied=2 dead_lettered=1"
        );
    }
}
