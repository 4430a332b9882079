//! The pipeline's pulse: every `interval` one look at each system — the metadata and watermarks
//! of the pipeline's own topics and their dead-letter topics, the pipeline's consumer groups'
//! committed offsets, the replication slot, the connector and the Cassandra nodes — kept for 15
//! minutes. The overview is drawn from the latest look and the history, so opening it costs the
//! backing services nothing; rates are differences between looks.
//!
//! A look asks Kafka about the pipeline's topics only, so its cost does not grow with the topics
//! a cluster holds, and once warm only for what moves: the topics' metadata, latest offsets and
//! the groups' committed offsets (earliest offsets and coordinators are remembered for 30 s). Dead letters of other topics (tests, experiments) are found with a look at
//! the whole cluster every [`OTHERS_EVERY`], and shown from that look in between.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cassandra::Cassandra;
use crate::connect::ConnectClient;
use crate::postgres::Postgres;
use crate::verify_report::{self, LastVerify};
use crate::wire::{Metadata, Wire};

/// How much history the charts show.
pub const HISTORY: Duration = Duration::from_secs(15 * 60);
/// Rates are averaged over about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How often the whole cluster is searched for other topics' dead letters.
pub const OTHERS_EVERY: Duration = Duration::from_secs(30);

/// A consumer group and the topics it consumes (`GROUP=TOPIC[+TOPIC...]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupTopics {
    pub group: String,
    pub topics: Vec<String>,
}

impl std::str::FromStr for GroupTopics {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (group, topics) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not GROUP=TOPIC[+TOPIC...]"))?;
        let topics: Vec<String> = topics
            .split('+')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if group.trim().is_empty() || topics.is_empty() {
            return Err(format!("`{text}` is not GROUP=TOPIC[+TOPIC...]"));
        }
        Ok(Self {
            group: group.trim().to_owned(),
            topics,
        })
    }
}

/// What the pipeline is made of, by name.
#[derive(Debug, Clone)]
pub struct PipelineNames {
    /// Business topics the producer writes (users, orders).
    pub source_topics: Vec<String>,
    /// The consumer's groups (→ PostgreSQL).
    pub pg_groups: Vec<GroupTopics>,
    /// Debezium's topics.
    pub cdc_topics: Vec<String>,
    /// The cdcconsumer's group (→ Cassandra).
    pub cassandra_groups: Vec<GroupTopics>,
    pub slot: String,
    pub connector: String,
    /// `<state>/last-verify.txt`.
    pub verify_report: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Backends {
    pub wire: Wire,
    pub postgres: Postgres,
    pub connect: ConnectClient,
    pub cassandra: Cassandra,
    /// Bootstrap addresses: one per expected broker.
    pub brokers: Vec<String>,
}

/// One look, reduced to counters and gauges.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    #[serde(skip)]
    pub at: Option<Instant>,
    /// Σ high watermarks of the business topics.
    pub produced: Option<i64>,
    /// Σ committed offsets of the consumer's groups.
    pub pg_applied: Option<i64>,
    pub pg_lag: Option<i64>,
    /// Σ high watermarks of Debezium's topics.
    pub captured: Option<i64>,
    pub slot_lag_bytes: Option<i64>,
    /// Σ committed offsets of the cdcconsumer's group.
    pub cassandra_applied: Option<i64>,
    pub cassandra_lag: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceState {
    pub name: String,
    pub address: String,
    pub up: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub topics: Vec<String>,
    pub lag: Option<i64>,
    pub committed: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterCount {
    pub topic: String,
    pub source: String,
    pub count: i64,
    /// The dead letters of one of the pipeline's own topics.
    pub pipeline: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotState {
    pub name: String,
    pub active: bool,
    pub lag_bytes: Option<i64>,
    pub retained_bytes: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
}

/// One hop of the pipeline with its rate and lag.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub id: &'static str,
    pub title: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    /// Events per second over the last [`RATE_WINDOW`].
    pub rate: Option<f64>,
    pub lag: Option<i64>,
    pub lag_unit: &'static str,
    /// `ok`, `busy`, `lagging`, `down`.
    pub state: &'static str,
    pub note: String,
}

/// The latest look in full.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at: String,
    pub took_ms: u128,
    /// Requests this client sent to the brokers while the look ran (pages asking Kafka at the
    /// same time count too).
    pub kafka_requests: u64,
    pub services: Vec<ServiceState>,
    pub hops: Vec<Hop>,
    pub groups: Vec<GroupLag>,
    pub slot: Option<SlotState>,
    pub dead_letters: Vec<DeadLetterCount>,
    pub connector_state: Option<String>,
    /// Every backing service that did not answer, with why.
    pub unreachable: Vec<(String, String)>,
    pub verify: Option<LastVerify>,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    snapshot: Option<Snapshot>,
    broker_ids: HashMap<String, i32>,
    /// Other topics' dead letters, and when the cluster was last searched for them.
    others: Vec<DeadLetterCount>,
    others_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Collector {
    backends: Backends,
    names: PipelineNames,
    state: Arc<RwLock<State>>,
}

/// Σ high watermarks of `topics`, only when every one of their partitions was read: a partial
/// read would look like the counter going backwards.
fn sum_high(
    metadata: &Metadata,
    marks: &BTreeMap<(String, i32), crate::wire::Watermarks>,
    topics: &[String],
) -> Option<i64> {
    let mut total = 0;
    let mut any = false;
    for topic in topics {
        let info = metadata.topic(topic)?;
        for partition in &info.partitions {
            total += marks.get(&(topic.clone(), partition.id))?.high;
            any = true;
        }
    }
    any.then_some(total)
}

/// The dead-letter topics in `metadata` with their record counts: the pipeline's own (always
/// shown), or the others that hold any.
fn dead_letter_counts(
    metadata: &Metadata,
    marks: &BTreeMap<(String, i32), crate::wire::Watermarks>,
    names: &PipelineNames,
    pipeline: bool,
) -> Vec<DeadLetterCount> {
    let own: Vec<&String> = names.own_topics().collect();
    metadata
        .topics
        .iter()
        .filter(|t| t.name.ends_with(".dlq") && t.error_code == 0)
        .filter_map(|topic| {
            let count = marks
                .iter()
                .filter(|((t, _), _)| *t == topic.name)
                .map(|(_, w)| w.messages())
                .sum();
            let source = topic.name.trim_end_matches(".dlq").to_owned();
            let is_own = own.contains(&&source);
            (is_own == pipeline && (is_own || count > 0)).then(|| DeadLetterCount {
                topic: topic.name.clone(),
                source,
                count,
                pipeline: is_own,
            })
        })
        .collect()
}

impl PipelineNames {
    /// The business and Debezium topics.
    fn own_topics(&self) -> impl Iterator<Item = &String> {
        self.source_topics.iter().chain(&self.cdc_topics)
    }

    /// The business and Debezium topics and their dead-letter topics: what every look reads.
    pub fn watched_topics(&self) -> Vec<String> {
        self.own_topics()
            .cloned()
            .chain(self.own_topics().map(|t| format!("{t}.dlq")))
            .collect()
    }
}

impl Collector {
    pub fn new(backends: Backends, names: PipelineNames) -> Self {
        Self {
            backends,
            names,
            state: Arc::new(RwLock::new(State::default())),
        }
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn names(&self) -> &PipelineNames {
        &self.names
    }

    /// Looks every `interval` until `shutdown` fires.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => self.look().await,
            }
        }
    }

    /// The latest snapshot (`None` before the first look ends).
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot
            .clone()
    }

    /// The samples of the last [`HISTORY`].
    pub fn samples(&self) -> Vec<Sample> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .samples
            .iter()
            .cloned()
            .collect()
    }

    /// The dead letters of every other topic in the cluster that has any (`None` when Kafka did
    /// not answer: the last search stays shown).
    async fn other_dead_letters(&self, watched: &[String]) -> Option<Vec<DeadLetterCount>> {
        let wire = &self.backends.wire;
        let metadata = wire.metadata(None).await.ok()?;
        let topics: Vec<&str> = metadata
            .topics
            .iter()
            .filter(|t| t.name.ends_with(".dlq") && !watched.contains(&t.name))
            .map(|t| t.name.as_str())
            .collect();
        let marks = wire.watermarks(&metadata, &topics).await;
        Some(dead_letter_counts(&metadata, &marks, &self.names, false))
    }

    /// One look at everything, at once, each part bounded by the backends' timeouts.
    pub async fn look(&self) {
        let started = Instant::now();
        let b = &self.backends;
        let requests_before = b.wire.requests_sent();
        let groups: Vec<String> = self
            .names
            .pg_groups
            .iter()
            .chain(&self.names.cassandra_groups)
            .map(|g| g.group.clone())
            .collect();
        let search_others = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .others_at
            .is_none_or(|at| at.elapsed() >= OTHERS_EVERY);
        let kafka = async {
            let watched = self.names.watched_topics();
            let metadata = b.wire.metadata(Some(&watched)).await?;
            let topics: Vec<&str> = watched.iter().map(String::as_str).collect();
            let marks = b
                .wire
                .watermarks_remembering_lows(&metadata, &topics, OTHERS_EVERY)
                .await;
            let committed = b.wire.committed(&groups).await.ok();
            let others = if search_others {
                self.other_dead_letters(&watched).await
            } else {
                None
            };
            Ok::<_, crate::wire::WireError>((metadata, marks, committed, others))
        };
        let timeout = b.wire.timeout() + Duration::from_millis(500);
        let (kafka, slots, connectors, cassandra) = tokio::join!(
            tokio::time::timeout(timeout, kafka),
            tokio::time::timeout(timeout, b.postgres.slots()),
            b.connect.connectors(),
            tokio::time::timeout(timeout, b.cassandra.nodes()),
        );
        let mut unreachable = Vec::new();
        let kafka = match kafka {
            Ok(Ok((metadata, marks, committed, others))) => {
                if let Some(others) = others {
                    let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                    state.others = others;
                    state.others_at = Some(Instant::now());
                }
                Some((metadata, marks, committed))
            }
            Ok(Err(error)) => {
                unreachable.push(("Kafka".to_owned(), error.to_string()));
                None
            }
            Err(_) => {
                unreachable.push(("Kafka".to_owned(), format!("no answer within {timeout:?}")));
                None
            }
        };
        let slots = match slots {
            Ok(Ok(slots)) => Some(slots),
            Ok(Err(error)) => {
                unreachable.push(("PostgreSQL".to_owned(), error.to_string()));
                None
            }
            Err(_) => {
                unreachable.push((
                    "PostgreSQL".to_owned(),
                    format!("no answer within {timeout:?}"),
                ));
                None
            }
        };
        let connectors = match connectors {
            Ok(c) => Some(c),
            Err(error) => {
                unreachable.push(("Kafka Connect".to_owned(), error.to_string()));
                None
            }
        };
        let cassandra = match cassandra {
            Ok(Ok((nodes, _))) => Some(nodes),
            Ok(Err(error)) => {
                unreachable.push(("Cassandra".to_owned(), error.to_string()));
                None
            }
            Err(_) => {
                unreachable.push((
                    "Cassandra".to_owned(),
                    format!("no answer within {timeout:?}"),
                ));
                None
            }
        };

        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        // Services, in the stack's order: brokers, PostgreSQL, Connect, Cassandra nodes.
        let mut services = Vec::new();
        let metadata: Option<&Metadata> = kafka.as_ref().map(|(m, _, _)| m);
        for (i, address) in b.brokers.iter().enumerate() {
            let found = metadata.and_then(|m| {
                m.brokers
                    .iter()
                    .find(|br| format!("{}:{}", br.host, br.port) == *address)
            });
            if let Some(found) = found {
                state.broker_ids.insert(address.clone(), found.id);
            }
            let id = state.broker_ids.get(address).copied();
            let name = id.map_or_else(|| format!("kafka{}", i + 1), |id| format!("kafka{id}"));
            services.push(ServiceState {
                name,
                address: address.clone(),
                up: found.is_some(),
                detail: match (found, metadata) {
                    (Some(_), Some(m)) if m.controller_id >= 0 => "registered".to_owned(),
                    (Some(_), _) => "registered".to_owned(),
                    (None, Some(_)) => "not in the cluster's metadata".to_owned(),
                    (None, None) => "Kafka unreachable".to_owned(),
                },
            });
        }
        services.push(ServiceState {
            name: "postgres".to_owned(),
            address: b.postgres.display_url.clone(),
            up: slots.is_some(),
            detail: if slots.is_some() {
                "accepting queries".to_owned()
            } else {
                "unreachable".to_owned()
            },
        });
        let connector = connectors
            .as_ref()
            .and_then(|list| list.iter().find(|c| c.name == self.names.connector));
        services.push(ServiceState {
            name: "connect".to_owned(),
            address: b.connect.url().to_owned(),
            up: connectors.is_some(),
            detail: match (&connectors, connector) {
                (None, _) => "unreachable".to_owned(),
                (Some(_), Some(c)) => format!(
                    "{}: {}, tasks {}",
                    c.name,
                    c.state,
                    c.tasks
                        .iter()
                        .map(|t| t.state.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                (Some(_), None) => format!("connector {} not registered", self.names.connector),
            },
        });
        for (i, contact) in b.cassandra.contact_points().iter().enumerate() {
            let host = contact
                .rsplit_once(':')
                .map_or(contact.as_str(), |(h, _)| h);
            let node = cassandra
                .as_ref()
                .and_then(|nodes| nodes.iter().find(|n| n.address == host));
            services.push(ServiceState {
                name: format!("cassandra{}", i + 1),
                address: contact.clone(),
                up: node.is_some_and(|n| n.up),
                detail: match (&cassandra, node) {
                    (None, _) => "unreachable".to_owned(),
                    (Some(_), Some(n)) => format!("gossip: {}", n.status),
                    (Some(_), None) => "unknown to the cluster".to_owned(),
                },
            });
        }

        // Counters.
        let now_ms = Utc::now().timestamp_millis();
        let mut groups_view = Vec::new();
        let mut sample = Sample {
            at_ms: now_ms,
            at: Some(Instant::now()),
            produced: None,
            pg_applied: None,
            pg_lag: None,
            captured: None,
            slot_lag_bytes: None,
            cassandra_applied: None,
            cassandra_lag: None,
        };
        let mut dead_letters = Vec::new();
        if let Some((metadata, marks, committed)) = &kafka {
            sample.produced = sum_high(metadata, marks, &self.names.source_topics);
            sample.captured = sum_high(metadata, marks, &self.names.cdc_topics);
            let group_totals = |list: &[GroupTopics], out: &mut Vec<GroupLag>| {
                let mut applied = None::<i64>;
                let mut lag = None::<i64>;
                for g in list {
                    let offsets = committed.as_ref().map(|c| c.get(&g.group));
                    let mut g_committed = None::<i64>;
                    let mut g_lag = None::<i64>;
                    let complete = g.topics.iter().all(|t| {
                        metadata.topic(t).is_some_and(|info| {
                            info.partitions
                                .iter()
                                .all(|p| marks.contains_key(&(t.clone(), p.id)))
                        })
                    });
                    if let (Some(offsets), true) = (offsets, complete) {
                        for ((topic, partition), w) in marks.iter() {
                            if !g.topics.contains(topic) {
                                continue;
                            }
                            // Never committed: the consumer starts at the earliest record.
                            let at = offsets
                                .and_then(|o| o.get(&(topic.clone(), *partition)).copied())
                                .unwrap_or(w.low);
                            *g_committed.get_or_insert(0) += at;
                            *g_lag.get_or_insert(0) += (w.high - at).max(0);
                        }
                    }
                    if let Some(c) = g_committed {
                        *applied.get_or_insert(0) += c;
                    }
                    if let Some(l) = g_lag {
                        *lag.get_or_insert(0) += l;
                    }
                    out.push(GroupLag {
                        group: g.group.clone(),
                        topics: g.topics.clone(),
                        lag: g_lag,
                        committed: g_committed,
                    });
                }
                (applied, lag)
            };
            (sample.pg_applied, sample.pg_lag) =
                group_totals(&self.names.pg_groups, &mut groups_view);
            (sample.cassandra_applied, sample.cassandra_lag) =
                group_totals(&self.names.cassandra_groups, &mut groups_view);
            dead_letters = dead_letter_counts(metadata, marks, &self.names, true);
        }
        dead_letters.extend(state.others.iter().cloned());
        dead_letters.sort_by(|a, b| b.pipeline.cmp(&a.pipeline).then(a.topic.cmp(&b.topic)));
        let slot = slots.as_ref().and_then(|slots| {
            slots
                .iter()
                .find(|s| s.name == self.names.slot)
                .map(|s| SlotState {
                    name: s.name.clone(),
                    active: s.active,
                    lag_bytes: s.lag_bytes,
                    retained_bytes: s.retained_bytes,
                    confirmed_flush_lsn: s.confirmed_flush_lsn.clone(),
                })
        });
        sample.slot_lag_bytes = slot.as_ref().and_then(|s| s.lag_bytes);

        state.samples.push_back(sample.clone());
        while state
            .samples
            .front()
            .and_then(|s| s.at)
            .is_some_and(|at| at.elapsed() > HISTORY)
        {
            state.samples.pop_front();
        }
        let rates = Rates::from_samples(&state.samples);
        let service_up = |name: &str| services.iter().any(|s| s.name.starts_with(name) && s.up);
        let hop_state = |rate: Option<f64>, lag: Option<i64>, up: bool, tolerated: i64| {
            if !up {
                "down"
            } else if lag.is_some_and(|l| l > tolerated) {
                "lagging"
            } else if rate.is_some_and(|r| r > 0.0) {
                "busy"
            } else {
                "ok"
            }
        };
        let connector_running = connector.is_some_and(|c| c.healthy());
        let hops = vec![
            Hop {
                id: "produced",
                title: "produced",
                from: "producer",
                to: "Kafka (users, orders)",
                rate: rates.produced,
                lag: None,
                lag_unit: "",
                state: hop_state(rates.produced, None, service_up("kafka"), 0),
                note: "records appended to the business topics".to_owned(),
            },
            Hop {
                id: "pg_applied",
                title: "applied to PostgreSQL",
                from: "consumer",
                to: "PostgreSQL",
                rate: rates.pg_applied,
                lag: sample.pg_lag,
                lag_unit: "records",
                state: hop_state(rates.pg_applied, sample.pg_lag, service_up("postgres"), 0),
                note: "offsets committed by the consumer's groups after durable writes".to_owned(),
            },
            Hop {
                id: "captured",
                title: "captured by Debezium",
                from: "PostgreSQL WAL",
                to: "Kafka (cdc.public.*)",
                rate: rates.captured,
                lag: sample.slot_lag_bytes,
                lag_unit: "bytes of WAL",
                state: if connectors.is_none() || !connector_running {
                    "down"
                } else {
                    // Heartbeats keep the slot moving; a few MiB behind is normal under load.
                    hop_state(
                        rates.captured,
                        sample.slot_lag_bytes,
                        true,
                        16 * 1024 * 1024,
                    )
                },
                note: "change events appended to Debezium's topics".to_owned(),
            },
            Hop {
                id: "cassandra_applied",
                title: "applied to Cassandra",
                from: "cdcconsumer",
                to: "Cassandra",
                rate: rates.cassandra_applied,
                lag: sample.cassandra_lag,
                lag_unit: "records",
                state: hop_state(
                    rates.cassandra_applied,
                    sample.cassandra_lag,
                    service_up("cassandra"),
                    0,
                ),
                note: "offsets committed by the cdcconsumer after durable writes".to_owned(),
            },
        ];
        state.snapshot = Some(Snapshot {
            at: Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            took_ms: started.elapsed().as_millis(),
            kafka_requests: b.wire.requests_sent().saturating_sub(requests_before),
            services,
            hops,
            groups: groups_view,
            slot,
            dead_letters,
            connector_state: connector.map(|c| c.state.clone()),
            unreachable,
            verify: verify_report::read(&self.names.verify_report),
        });
    }
}

/// Events per second of each hop, over the last [`RATE_WINDOW`] of samples.
#[derive(Debug, Default, Clone, Copy)]
struct Rates {
    produced: Option<f64>,
    pg_applied: Option<f64>,
    captured: Option<f64>,
    cassandra_applied: Option<f64>,
}

impl Rates {
    fn from_samples(samples: &VecDeque<Sample>) -> Self {
        let rate = |f: fn(&Sample) -> Option<i64>| -> Option<f64> {
            let (last_at, last) = samples.iter().rev().find_map(|s| Some((s.at_ms, f(s)?)))?;
            // The newest sample at least a window older, or else the oldest with a value.
            let window = i64::try_from(RATE_WINDOW.as_millis()).unwrap_or(i64::MAX);
            let (first_at, first) = samples
                .iter()
                .rev()
                .filter(|s| last_at - s.at_ms >= window)
                .find_map(|s| Some((s.at_ms, f(s)?)))
                .or_else(|| samples.iter().find_map(|s| Some((s.at_ms, f(s)?))))?;
            let seconds = (last_at - first_at) as f64 / 1000.0;
            (seconds > 0.0).then(|| ((last - first) as f64 / seconds).max(0.0))
        };
        Self {
            produced: rate(|s| s.produced),
            pg_applied: rate(|s| s.pg_applied),
            captured: rate(|s| s.captured),
            cassandra_applied: rate(|s| s.cassandra_applied),
        }
    }
}

/// One chart's points: `(milliseconds, value)`.
pub type Series = Vec<(i64, f64)>;

/// Per-sample rates of a counter (events per second between consecutive samples).
pub fn rate_series(samples: &[Sample], counter: fn(&Sample) -> Option<i64>) -> Series {
    samples
        .windows(2)
        .filter_map(|w| {
            let seconds = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
            let delta = counter(&w[1])? - counter(&w[0])?;
            (seconds > 0.0).then(|| (w[1].at_ms, (delta as f64 / seconds).max(0.0)))
        })
        .collect()
}

/// A gauge's values.
pub fn gauge_series(samples: &[Sample], gauge: fn(&Sample) -> Option<i64>) -> Series {
    samples
        .iter()
        .filter_map(|s| Some((s.at_ms, gauge(s)? as f64)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, produced: i64) -> Sample {
        Sample {
            at_ms,
            at: None,
            produced: Some(produced),
            pg_applied: None,
            pg_lag: Some(3),
            captured: None,
            slot_lag_bytes: None,
            cassandra_applied: None,
            cassandra_lag: None,
        }
    }

    #[test]
    fn rates_from_counters() {
        let samples: VecDeque<Sample> = [
            sample(0, 0),
            sample(5_000, 500),
            sample(10_000, 1_000),
            sample(12_000, 1_400),
        ]
        .into();
        let rates = Rates::from_samples(&samples);
        // 1,400 records over the 12 s since the first look at least 10 s back.
        assert_eq!(rates.produced.map(|r| (r * 100.0).round()), Some(11667.0));
        assert_eq!(rates.pg_applied, None);
        let list: Vec<Sample> = samples.into_iter().collect();
        assert_eq!(
            rate_series(&list, |s| s.produced),
            vec![(5_000, 100.0), (10_000, 100.0), (12_000, 200.0)]
        );
        assert_eq!(gauge_series(&list, |s| s.pg_lag).len(), 4);
    }

    #[test]
    fn group_topics_parse() {
        let parsed: Result<GroupTopics, _> = "g=cdc.a+cdc.b".parse();
        assert_eq!(
            parsed,
            Ok(GroupTopics {
                group: "g".to_owned(),
                topics: vec!["cdc.a".to_owned(), "cdc.b".to_owned()]
            })
        );
        assert!("nogroup".parse::<GroupTopics>().is_err());
        assert!("g=".parse::<GroupTopics>().is_err());
    }

    #[test]
    fn dead_letters_split_into_the_pipelines_own_and_others_that_hold_any() {
        let names = PipelineNames {
            source_topics: vec!["users".to_owned()],
            pg_groups: Vec::new(),
            cdc_topics: vec!["cdc.public.users".to_owned()],
            cassandra_groups: Vec::new(),
            slot: "slot".to_owned(),
            connector: "connector".to_owned(),
            verify_report: PathBuf::new(),
        };
        assert_eq!(
            names.watched_topics(),
            [
                "users",
                "cdc.public.users",
                "users.dlq",
                "cdc.public.users.dlq"
            ]
        );
        let topic = |name: &str, error_code: i16| crate::wire::TopicInfo {
            name: name.to_owned(),
            internal: false,
            partitions: Vec::new(),
            error_code,
        };
        let metadata = Metadata {
            cluster_id: None,
            controller_id: 1,
            brokers: Vec::new(),
            topics: vec![
                topic("users.dlq", 0),
                // Asked for but not there: not shown.
                topic("cdc.public.users.dlq", 3),
                topic("it_a.dlq", 0),
                topic("it_b.dlq", 0),
                topic("it_b", 0),
            ],
        };
        let marks: BTreeMap<(String, i32), crate::wire::Watermarks> = [
            (("users.dlq".to_owned(), 0), (0, 0)),
            (("it_a.dlq".to_owned(), 0), (2, 2)),
            (("it_b.dlq".to_owned(), 0), (1, 5)),
            (("it_b.dlq".to_owned(), 1), (0, 3)),
        ]
        .into_iter()
        .map(|(key, (low, high))| (key, crate::wire::Watermarks { low, high }))
        .collect();
        let shown = |pipeline| -> Vec<(String, i64, bool)> {
            dead_letter_counts(&metadata, &marks, &names, pipeline)
                .into_iter()
                .map(|d| (d.topic, d.count, d.pipeline))
                .collect()
        };
        // The pipeline's own, even empty.
        assert_eq!(shown(true), [("users.dlq".to_owned(), 0, true)]);
        // Others only with records in them.
        assert_eq!(shown(false), [("it_b.dlq".to_owned(), 7, false)]);
    }
}
