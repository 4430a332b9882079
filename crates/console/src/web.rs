//! The HTTP side: one handler per page, each building a model that is either rendered through its
//! template (`/…`) or returned as JSON (`/api/…`). Every page's backend work is bounded by the
//! page deadline, so a page renders — naming what did not answer — when a service is down.
//!
//! The only write is restarting a connector or a task. It is refused unless the console was
//! started with `--enable-actions`, and it must come from the console's own pages: a POST needs a
//! `Host` on loopback or the listen address, an `Origin` (when sent) equal to that host,
//! `Sec-Fetch-Site` (when sent) `same-origin`, and either the per-process form token (forms) or
//! the `X-Console-Action` header (scripts; browsers cannot send it cross-site without a CORS
//! preflight, which the console never grants).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use minijinja::Environment;
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cassandra::CassandraView;
use crate::chart;
use crate::collector::{self, Collector, Sample, Snapshot};
use crate::connect::{Connector, Worker};
use crate::format;
use crate::messages::{self, Browse, BrowseQuery};
use crate::postgres::PostgresView;
use crate::wire::{ConfigEntry, GroupDescription, Metadata, Quorum, Watermarks};

#[derive(Debug, Clone)]
pub struct AppOptions {
    /// librdkafka settings for the message browser.
    pub kafka: ClientConfig,
    pub enable_actions: bool,
    pub listen: SocketAddr,
    pub sample_interval: Duration,
    /// Longest a page waits for its backends.
    pub page_deadline: Duration,
}

#[derive(Debug, Clone)]
struct App {
    collector: Collector,
    options: Arc<AppOptions>,
    templates: Arc<Environment<'static>>,
    /// Per-process token the console's own forms carry.
    token: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
}

fn templates() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("overview.html", include_str!("../templates/overview.html")),
        (
            "overview_live.html",
            include_str!("../templates/overview_live.html"),
        ),
        ("brokers.html", include_str!("../templates/brokers.html")),
        ("topics.html", include_str!("../templates/topics.html")),
        ("topic.html", include_str!("../templates/topic.html")),
        ("messages.html", include_str!("../templates/messages.html")),
        ("groups.html", include_str!("../templates/groups.html")),
        ("group.html", include_str!("../templates/group.html")),
        ("connect.html", include_str!("../templates/connect.html")),
        ("postgres.html", include_str!("../templates/postgres.html")),
        (
            "cassandra.html",
            include_str!("../templates/cassandra.html"),
        ),
    ] {
        env.add_template(name, source)?;
    }
    env.add_filter("bytes", |n: i64| format::bytes(n));
    env.add_filter("rate", |r: f64| format::rate(r));
    env.add_filter("millis", |ms: i64| format::millis(ms));
    env.add_filter("thousands", |n: i64| thousands(n));
    Ok(env)
}

/// `1234567` as `1,234,567`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    collector: Collector,
    options: AppOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let templates = templates().map_err(std::io::Error::other)?;
    let app = App {
        collector,
        options: Arc::new(options),
        templates: Arc::new(templates),
        token: uuid::Uuid::new_v4().simple().to_string().into(),
    };
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn router(app: App) -> Router {
    use Format::{Html, Json as J};
    Router::new()
        .route("/", get(|s: State<App>| overview(s, Html)))
        .route("/api/overview", get(|s: State<App>| overview(s, J)))
        .route("/overview/live", get(overview_live))
        .route("/brokers", get(|s: State<App>| brokers(s, Html)))
        .route("/api/brokers", get(|s: State<App>| brokers(s, J)))
        .route(
            "/topics",
            get(|s: State<App>, q: Query<TopicsQuery>| topics(s, q, Html)),
        )
        .route(
            "/api/topics",
            get(|s: State<App>, q: Query<TopicsQuery>| topics(s, q, J)),
        )
        .route(
            "/topics/{name}",
            get(|s: State<App>, p: Path<String>| topic(s, p, Html)),
        )
        .route(
            "/api/topics/{name}",
            get(|s: State<App>, p: Path<String>| topic(s, p, J)),
        )
        .route(
            "/topics/{name}/messages",
            get(|s: State<App>, p: Path<String>, q: Query<BrowseQuery>| browse(s, p, q, Html)),
        )
        .route(
            "/api/topics/{name}/messages",
            get(|s: State<App>, p: Path<String>, q: Query<BrowseQuery>| browse(s, p, q, J)),
        )
        .route("/groups", get(|s: State<App>| groups(s, Html)))
        .route("/api/groups", get(|s: State<App>| groups(s, J)))
        .route(
            "/groups/{id}",
            get(|s: State<App>, p: Path<String>| group(s, p, Html)),
        )
        .route(
            "/api/groups/{id}",
            get(|s: State<App>, p: Path<String>| group(s, p, J)),
        )
        .route(
            "/connect",
            get(|s: State<App>, q: Query<Flash>| connect(s, q, Html)),
        )
        .route(
            "/api/connect",
            get(|s: State<App>, q: Query<Flash>| connect(s, q, J)),
        )
        .route("/connect/{name}/restart", post(restart_connector_form))
        .route(
            "/connect/{name}/tasks/{task}/restart",
            post(restart_task_form),
        )
        .route("/api/connect/{name}/restart", post(restart_connector_api))
        .route(
            "/api/connect/{name}/tasks/{task}/restart",
            post(restart_task_api),
        )
        .route("/postgres", get(|s: State<App>| postgres(s, Html)))
        .route("/api/postgres", get(|s: State<App>| postgres(s, J)))
        .route("/cassandra", get(|s: State<App>| cassandra(s, Html)))
        .route("/api/cassandra", get(|s: State<App>| cassandra(s, J)))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .route("/livez", get(|| async { "alive\n" }))
        .fallback(not_found)
        .with_state(app)
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../static/console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../static/console.js"),
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// Pages' shared parts: what is unreachable (from the latest look), and the page's own errors.
#[derive(Debug, Serialize)]
struct Frame<'a, T: Serialize> {
    title: String,
    nav: &'a str,
    generated_at: String,
    unreachable: Vec<(String, String)>,
    errors: Vec<String>,
    actions: bool,
    #[serde(flatten)]
    page: T,
}

/// Which template a page renders with, its navigation entry and its title.
#[derive(Debug)]
struct Meta {
    template: &'static str,
    nav: &'static str,
    title: String,
}

fn meta(template: &'static str, nav: &'static str, title: impl Into<String>) -> Meta {
    Meta {
        template,
        nav,
        title: title.into(),
    }
}

impl App {
    /// Runs `work` within the page deadline; a timeout is an error naming `service`.
    async fn within<T, E: std::fmt::Display>(
        &self,
        service: &str,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.options.page_deadline, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(format!("{service} unreachable: {error}")),
            Err(_) => Err(format!(
                "{service} unreachable: no answer within {:?}",
                self.options.page_deadline
            )),
        }
    }

    fn respond<T: Serialize>(
        &self,
        format: Format,
        meta: Meta,
        errors: Vec<String>,
        page: T,
        extra: Option<minijinja::Value>,
    ) -> Response {
        let Meta {
            template,
            nav,
            title,
        } = meta;
        let frame = Frame {
            title,
            nav,
            generated_at: chrono::Utc::now().format("%H:%M:%S").to_string(),
            unreachable: self
                .collector
                .snapshot()
                .map(|s| s.unreachable)
                .unwrap_or_default(),
            errors,
            actions: self.options.enable_actions,
            page,
        };
        match format {
            Format::Json => Json(frame).into_response(),
            Format::Html => {
                let rendered = self.templates.get_template(template).and_then(|t| {
                    t.render(minijinja::context! {
                        ..minijinja::context! { token => &*self.token },
                        ..minijinja::Value::from(minijinja::value::Serde(&frame)),
                        ..extra.unwrap_or_default()
                    })
                });
                match rendered {
                    Ok(html) => (
                        [
                            (
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("text/html; charset=utf-8"),
                            ),
                            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                        ],
                        html,
                    )
                        .into_response(),
                    Err(error) => {
                        tracing::error!(template, error = %error, "rendering failed");
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("rendering {template} failed: {error}\n"),
                        )
                            .into_response()
                    }
                }
            }
        }
    }

    async fn metadata(&self) -> Result<Metadata, String> {
        let wire = &self.collector.backends().wire;
        self.within("Kafka", wire.metadata(None)).await
    }
}

// --- overview ------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Chart {
    id: &'static str,
    title: &'static str,
    rate_now: Option<f64>,
    lag_now: Option<i64>,
    lag_unit: &'static str,
    /// `[milliseconds, events per second]` between consecutive looks.
    rate_series: collector::Series,
    /// `[milliseconds, lag]` at each look.
    lag_series: collector::Series,
}

#[derive(Debug, Serialize)]
struct OverviewPage {
    snapshot: Option<Snapshot>,
    charts: Vec<Chart>,
    sample_interval_ms: u128,
}

fn overview_model(app: &App) -> OverviewPage {
    let snapshot = app.collector.snapshot();
    let samples = app.collector.samples();
    type Counter = fn(&Sample) -> Option<i64>;
    let specs: [(&str, &str, Counter, Option<Counter>, &str); 4] = [
        ("produced", "produced (events/s)", |s| s.produced, None, ""),
        (
            "pg_applied",
            "applied to PostgreSQL (events/s)",
            |s| s.pg_applied,
            Some(|s| s.pg_lag),
            "records",
        ),
        (
            "captured",
            "captured by Debezium (events/s)",
            |s| s.captured,
            Some(|s| s.slot_lag_bytes),
            "bytes of WAL",
        ),
        (
            "cassandra_applied",
            "applied to Cassandra (events/s)",
            |s| s.cassandra_applied,
            Some(|s| s.cassandra_lag),
            "records",
        ),
    ];
    let charts = specs
        .into_iter()
        .map(|(id, title, counter, lag, lag_unit)| {
            let hop = snapshot
                .as_ref()
                .and_then(|s| s.hops.iter().find(|h| h.id == id));
            Chart {
                id,
                title,
                rate_now: hop.and_then(|h| h.rate),
                lag_now: hop.and_then(|h| h.lag),
                lag_unit,
                rate_series: collector::rate_series(&samples, counter),
                lag_series: lag
                    .map(|l| collector::gauge_series(&samples, l))
                    .unwrap_or_default(),
            }
        })
        .collect();
    OverviewPage {
        snapshot,
        charts,
        sample_interval_ms: app.options.sample_interval.as_millis(),
    }
}

/// The charts as SVG, by chart id (`<id>_rate`, `<id>_lag`).
fn overview_svgs(page: &OverviewPage) -> minijinja::Value {
    let now = chrono::Utc::now().timestamp_millis();
    let mut svgs = BTreeMap::new();
    for chart in &page.charts {
        svgs.insert(
            format!("{}_rate", chart.id),
            minijinja::Value::from_safe_string(chart::sparkline(
                chart.title,
                &chart.rate_series,
                now,
                format::rate,
            )),
        );
        let lag_format: fn(f64) -> String = if chart.lag_unit == "bytes of WAL" {
            |v| format::bytes(v as i64)
        } else {
            |v| thousands(v as i64)
        };
        if chart.lag_unit.is_empty() {
            continue;
        }
        svgs.insert(
            format!("{}_lag", chart.id),
            minijinja::Value::from_safe_string(chart::sparkline(
                &format!("lag ({})", chart.lag_unit),
                &chart.lag_series,
                now,
                lag_format,
            )),
        );
    }
    minijinja::context! { svgs => svgs }
}

async fn overview(State(app): State<App>, format: Format) -> Response {
    let page = overview_model(&app);
    let extra = (format == Format::Html).then(|| overview_svgs(&page));
    app.respond(
        format,
        meta("overview.html", "overview", "Pipeline".to_owned()),
        Vec::new(),
        page,
        extra,
    )
}

async fn overview_live(State(app): State<App>) -> Response {
    let page = overview_model(&app);
    let extra = Some(overview_svgs(&page));
    app.respond(
        Format::Html,
        meta("overview_live.html", "overview", "Pipeline".to_owned()),
        Vec::new(),
        page,
        extra,
    )
}

// --- brokers -------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct BrokerRow {
    id: i32,
    address: String,
    rack: Option<String>,
    controller: bool,
    leader_of: usize,
    replicas: usize,
    /// Partitions this broker should replicate but is not in sync for.
    under_replicated: usize,
    /// Partitions it replicates that have no leader.
    offline: usize,
}

#[derive(Debug, Serialize)]
struct BrokersPage {
    cluster_id: Option<String>,
    brokers: Vec<BrokerRow>,
    quorum: Option<Quorum>,
    partitions: usize,
    under_replicated: usize,
    offline: usize,
}

async fn brokers(State(app): State<App>, format: Format) -> Response {
    let mut errors = Vec::new();
    let wire = &app.collector.backends().wire;
    let (metadata, quorum) = tokio::join!(
        app.metadata(),
        app.within("Kafka (KRaft quorum)", wire.quorum())
    );
    let quorum = quorum.map_err(|e| errors.push(e)).ok();
    let mut page = BrokersPage {
        cluster_id: None,
        brokers: Vec::new(),
        quorum,
        partitions: 0,
        under_replicated: 0,
        offline: 0,
    };
    match metadata {
        Ok(metadata) => {
            let all: Vec<&crate::wire::PartitionInfo> =
                metadata.topics.iter().flat_map(|t| &t.partitions).collect();
            page.partitions = all.len();
            page.under_replicated = all
                .iter()
                .filter(|p| p.isr.len() < p.replicas.len())
                .count();
            page.offline = all.iter().filter(|p| p.leader < 0).count();
            page.brokers = metadata
                .brokers
                .iter()
                .map(|b| BrokerRow {
                    id: b.id,
                    address: format!("{}:{}", b.host, b.port),
                    rack: b.rack.clone(),
                    controller: page
                        .quorum
                        .as_ref()
                        .map_or(metadata.controller_id == b.id, |q| q.leader == b.id),
                    leader_of: all.iter().filter(|p| p.leader == b.id).count(),
                    replicas: all.iter().filter(|p| p.replicas.contains(&b.id)).count(),
                    under_replicated: all
                        .iter()
                        .filter(|p| p.replicas.contains(&b.id) && !p.isr.contains(&b.id))
                        .count(),
                    offline: all
                        .iter()
                        .filter(|p| p.replicas.contains(&b.id) && p.leader < 0)
                        .count(),
                })
                .collect();
            page.cluster_id = metadata.cluster_id;
        }
        Err(e) => errors.push(e),
    }
    app.respond(
        format,
        meta("brokers.html", "brokers", "Brokers".to_owned()),
        errors,
        page,
        None,
    )
}

// --- topics --------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct TopicsQuery {
    #[serde(default)]
    internal: Option<String>,
}

#[derive(Debug, Serialize)]
struct TopicRow {
    name: String,
    internal: bool,
    partitions: usize,
    replication_factor: usize,
    in_sync: bool,
    under_replicated: usize,
    offline: usize,
    messages: Option<i64>,
}

#[derive(Debug, Serialize)]
struct TopicsPage {
    show_internal: bool,
    hidden: usize,
    topics: Vec<TopicRow>,
}

fn messages_of(marks: &BTreeMap<(String, i32), Watermarks>, topic: &str) -> Option<i64> {
    let mut any = false;
    let sum = marks
        .iter()
        .filter(|((t, _), _)| t == topic)
        .map(|(_, w)| {
            any = true;
            w.messages()
        })
        .sum();
    any.then_some(sum)
}

async fn topics(
    State(app): State<App>,
    Query(query): Query<TopicsQuery>,
    format: Format,
) -> Response {
    let show_internal = query
        .internal
        .as_deref()
        .is_some_and(|v| !v.is_empty() && v != "0");
    let mut errors = Vec::new();
    let mut page = TopicsPage {
        show_internal,
        hidden: 0,
        topics: Vec::new(),
    };
    match app.metadata().await {
        Ok(metadata) => {
            let shown: Vec<&crate::wire::TopicInfo> = metadata
                .topics
                .iter()
                .filter(|t| show_internal || !t.internal)
                .collect();
            page.hidden = metadata.topics.len() - shown.len();
            let names: Vec<&str> = shown.iter().map(|t| t.name.as_str()).collect();
            let wire = &app.collector.backends().wire;
            let marks = app
                .within("Kafka", async {
                    Ok::<_, String>(wire.watermarks(&metadata, &names).await)
                })
                .await
                .map_err(|e| errors.push(e))
                .unwrap_or_default();
            page.topics = shown
                .iter()
                .map(|t| TopicRow {
                    name: t.name.clone(),
                    internal: t.internal,
                    partitions: t.partitions.len(),
                    replication_factor: t.replication_factor(),
                    in_sync: t.under_replicated() == 0,
                    under_replicated: t.under_replicated(),
                    offline: t.offline(),
                    messages: messages_of(&marks, &t.name),
                })
                .collect();
        }
        Err(e) => errors.push(e),
    }
    app.respond(
        format,
        meta("topics.html", "topics", "Topics".to_owned()),
        errors,
        page,
        None,
    )
}

#[derive(Debug, Serialize)]
struct PartitionRow {
    id: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    offline: Vec<i32>,
    in_sync: bool,
    low: Option<i64>,
    high: Option<i64>,
    messages: Option<i64>,
}

#[derive(Debug, Serialize)]
struct TopicPage {
    name: String,
    exists: bool,
    internal: bool,
    replication_factor: usize,
    messages: Option<i64>,
    partitions: Vec<PartitionRow>,
    configs: Vec<ConfigEntry>,
}

async fn topic(State(app): State<App>, Path(name): Path<String>, format: Format) -> Response {
    let mut errors = Vec::new();
    let mut page = TopicPage {
        name: name.clone(),
        exists: false,
        internal: false,
        replication_factor: 0,
        messages: None,
        partitions: Vec::new(),
        configs: Vec::new(),
    };
    match app.metadata().await {
        Ok(metadata) => match metadata.topic(&name) {
            Some(info) => {
                let wire = &app.collector.backends().wire;
                let (marks, configs) = tokio::join!(
                    app.within("Kafka", async {
                        Ok::<_, String>(wire.watermarks(&metadata, &[name.as_str()]).await)
                    }),
                    app.within("Kafka", wire.topic_configs(&name))
                );
                let marks = marks.map_err(|e| errors.push(e)).unwrap_or_default();
                page.configs = configs.map_err(|e| errors.push(e)).unwrap_or_default();
                page.exists = true;
                page.internal = info.internal;
                page.replication_factor = info.replication_factor();
                page.messages = messages_of(&marks, &name);
                page.partitions = info
                    .partitions
                    .iter()
                    .map(|p| {
                        let w = marks.get(&(name.clone(), p.id));
                        PartitionRow {
                            id: p.id,
                            leader: p.leader,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                            offline: p.offline.clone(),
                            in_sync: p.isr.len() >= p.replicas.len(),
                            low: w.map(|w| w.low),
                            high: w.map(|w| w.high),
                            messages: w.map(Watermarks::messages),
                        }
                    })
                    .collect();
            }
            None => errors.push(format!("topic `{name}` does not exist")),
        },
        Err(e) => errors.push(e),
    }
    let status = if page.exists || !errors.iter().all(|e| e.contains("does not exist")) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let mut response = app.respond(
        format,
        meta("topic.html", "topics", format!("Topic {name}")),
        errors,
        page,
        None,
    );
    *response.status_mut() = status;
    response
}

#[derive(Debug, Serialize)]
struct MessagesPage {
    name: String,
    partitions: Vec<i32>,
    query: BrowseQuery,
    browse: Option<Browse>,
    dlq: bool,
    debezium: bool,
    max_limit: usize,
}

async fn browse(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<BrowseQuery>,
    format: Format,
) -> Response {
    let mut errors = Vec::new();
    let mut page = MessagesPage {
        name: name.clone(),
        partitions: Vec::new(),
        query: query.clone(),
        browse: None,
        dlq: name.ends_with(".dlq"),
        debezium: messages::is_debezium_topic(&name),
        max_limit: messages::MAX_LIMIT,
    };
    match app.metadata().await {
        Ok(metadata) => {
            if let Some(info) = metadata.topic(&name) {
                page.partitions = info.partitions.iter().map(|p| p.id).collect();
            }
            let wire = &app.collector.backends().wire;
            let result = tokio::time::timeout(
                app.options.page_deadline + Duration::from_millis(500),
                messages::browse(
                    wire,
                    &metadata,
                    app.options.kafka.clone(),
                    &name,
                    query,
                    app.options.page_deadline,
                ),
            )
            .await;
            match result {
                Ok(Ok(browse)) => page.browse = Some(browse),
                Ok(Err(error)) => errors.push(error.to_string()),
                Err(_) => {
                    errors.push("Kafka unreachable: reading records took too long".to_owned())
                }
            }
        }
        Err(e) => errors.push(e),
    }
    app.respond(
        format,
        meta("messages.html", "topics", format!("Messages of {name}")),
        errors,
        page,
        None,
    )
}

// --- consumer groups -----------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct GroupRow {
    id: String,
    state: String,
    protocol_type: String,
    topics: Vec<String>,
    lag: Option<i64>,
}

#[derive(Debug, Serialize)]
struct GroupsPage {
    groups: Vec<GroupRow>,
}

/// Σ lag per group over the partitions it committed: high watermark − committed offset.
fn lag_of(
    committed: &BTreeMap<(String, i32), i64>,
    marks: &BTreeMap<(String, i32), Watermarks>,
) -> Option<i64> {
    let mut any = false;
    let lag = committed
        .iter()
        .filter_map(|(key, offset)| {
            let w = marks.get(key)?;
            any = true;
            Some((w.high - offset).max(0))
        })
        .sum();
    any.then_some(lag)
}

async fn groups(State(app): State<App>, format: Format) -> Response {
    let mut errors = Vec::new();
    let mut page = GroupsPage { groups: Vec::new() };
    let wire = &app.collector.backends().wire;
    let work = async {
        let metadata = wire.metadata(None).await?;
        let listed = wire.list_groups(&metadata).await?;
        let ids: Vec<String> = listed.iter().map(|g| g.id.clone()).collect();
        let committed = wire.committed(&ids).await?;
        let topics: BTreeSet<&str> = committed
            .values()
            .flat_map(|c| c.keys().map(|(t, _)| t.as_str()))
            .collect();
        let topics: Vec<&str> = topics.into_iter().collect();
        let marks = wire.watermarks(&metadata, &topics).await;
        Ok::<_, crate::wire::WireError>(
            listed
                .into_iter()
                .map(|g| {
                    let empty = BTreeMap::new();
                    let offsets = committed.get(&g.id).unwrap_or(&empty);
                    let topics: BTreeSet<String> = offsets.keys().map(|(t, _)| t.clone()).collect();
                    GroupRow {
                        lag: lag_of(offsets, &marks),
                        topics: topics.into_iter().collect(),
                        id: g.id,
                        state: g.state,
                        protocol_type: g.protocol_type,
                    }
                })
                .collect::<Vec<_>>(),
        )
    };
    match app.within("Kafka", work).await {
        Ok(groups) => page.groups = groups,
        Err(e) => errors.push(e),
    }
    app.respond(
        format,
        meta("groups.html", "groups", "Consumer groups".to_owned()),
        errors,
        page,
        None,
    )
}

#[derive(Debug, Serialize)]
struct GroupPartitionRow {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    high: Option<i64>,
    lag: Option<i64>,
    owner: Option<String>,
}

#[derive(Debug, Serialize)]
struct GroupPage {
    id: String,
    description: Option<GroupDescription>,
    partitions: Vec<GroupPartitionRow>,
    lag: Option<i64>,
}

async fn group(State(app): State<App>, Path(id): Path<String>, format: Format) -> Response {
    let mut errors = Vec::new();
    let wire = &app.collector.backends().wire;
    let mut page = GroupPage {
        id: id.clone(),
        description: None,
        partitions: Vec::new(),
        lag: None,
    };
    let work = async {
        let metadata = wire.metadata(None).await?;
        let (description, committed) = tokio::join!(
            wire.describe_group(&id),
            wire.committed(std::slice::from_ref(&id))
        );
        let committed = committed?.remove(&id).unwrap_or_default();
        let description = description?;
        let mut topics: BTreeSet<String> = committed.keys().map(|(t, _)| t.clone()).collect();
        for member in &description.members {
            topics.extend(member.assignment.iter().map(|(t, _)| t.clone()));
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let marks = wire.watermarks(&metadata, &names).await;
        Ok::<_, crate::wire::WireError>((description, committed, marks))
    };
    match app.within("Kafka", work).await {
        Ok((description, committed, marks)) => {
            let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
            for m in &description.members {
                for (topic, partitions) in &m.assignment {
                    for p in partitions {
                        owners.insert(
                            (topic.clone(), *p),
                            format!("{} ({})", m.client_id, m.client_host),
                        );
                    }
                }
            }
            let mut keys: BTreeSet<(String, i32)> = committed.keys().cloned().collect();
            keys.extend(owners.keys().cloned());
            page.partitions = keys
                .into_iter()
                .map(|key| {
                    let c = committed.get(&key).copied();
                    let high = marks.get(&key).map(|w| w.high);
                    GroupPartitionRow {
                        lag: match (c, marks.get(&key)) {
                            (Some(c), Some(w)) => Some((w.high - c).max(0)),
                            (None, Some(w)) => Some(w.messages()),
                            _ => None,
                        },
                        committed: c,
                        high,
                        owner: owners.get(&key).cloned(),
                        topic: key.0,
                        partition: key.1,
                    }
                })
                .collect();
            page.lag = page
                .partitions
                .iter()
                .map(|p| p.lag)
                .try_fold(0_i64, |acc, l| l.map(|l| acc + l));
            page.description = Some(description);
        }
        Err(e) => errors.push(e),
    }
    app.respond(
        format,
        meta("group.html", "groups", format!("Group {id}")),
        errors,
        page,
        None,
    )
}

// --- Kafka Connect -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Flash {
    #[serde(default)]
    restarted: Option<String>,
}

#[derive(Debug, Serialize)]
struct ConnectPage {
    url: String,
    worker: Option<Worker>,
    connectors: Vec<Connector>,
    restarted: Option<String>,
}

async fn connect(State(app): State<App>, Query(flash): Query<Flash>, format: Format) -> Response {
    let mut errors = Vec::new();
    let client = &app.collector.backends().connect;
    let (worker, connectors) = tokio::join!(
        app.within("Kafka Connect", client.worker()),
        app.within("Kafka Connect", client.connectors())
    );
    let worker = worker.map_err(|e| errors.push(e)).ok();
    let connectors = connectors
        .map_err(|e| {
            if !errors.contains(&e) {
                errors.push(e);
            }
        })
        .unwrap_or_default();
    let page = ConnectPage {
        url: client.url().to_owned(),
        worker,
        connectors,
        restarted: flash.restarted,
    };
    app.respond(
        format,
        meta("connect.html", "connect", "Kafka Connect".to_owned()),
        errors,
        page,
        None,
    )
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    token: String,
}

#[derive(Debug, Serialize)]
struct ActionResult {
    ok: bool,
    message: String,
}

/// Why a write request is refused, if it is.
fn refuse_write(
    app: &App,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Option<(StatusCode, String)> {
    if !app.options.enable_actions {
        return Some((
            StatusCode::FORBIDDEN,
            "actions are disabled: start the console with --enable-actions to restart connectors"
                .to_owned(),
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let host_name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let listen_ip = app.options.listen.ip().to_string();
    let allowed_host =
        ["127.0.0.1", "localhost", "[::1]"].contains(&host_name) || host_name == listen_ip;
    if !allowed_host {
        return Some((
            StatusCode::FORBIDDEN,
            format!("refused: unexpected Host `{host}`"),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host {
            return Some((
                StatusCode::FORBIDDEN,
                format!("refused: cross-site request from `{origin}`"),
            ));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some((
                StatusCode::FORBIDDEN,
                format!("refused: cross-site request ({site})"),
            ));
        }
    }
    let token_ok = token.is_some_and(|t| t == &*app.token);
    let header_ok = headers.contains_key("x-console-action");
    if !token_ok && !header_ok {
        return Some((
            StatusCode::FORBIDDEN,
            "refused: the request carries neither the console's form token nor an X-Console-Action header".to_owned(),
        ));
    }
    None
}

async fn restart(app: &App, name: &str, task: Option<u32>) -> Result<String, String> {
    let client = &app.collector.backends().connect;
    let what = match task {
        Some(t) => format!("task {t} of {name}"),
        None => format!("connector {name}"),
    };
    let outcome = match task {
        Some(t) => {
            app.within("Kafka Connect", client.restart_task(name, t))
                .await
        }
        None => {
            app.within("Kafka Connect", client.restart_connector(name))
                .await
        }
    };
    match outcome {
        Ok(()) => {
            tracing::info!(
                connector = name,
                task,
                "restart requested through the console"
            );
            Ok(format!("restart of {what} requested"))
        }
        Err(error) => {
            tracing::warn!(connector = name, task, error = %error, "restart failed");
            Err(error)
        }
    }
}

async fn restart_form(
    app: App,
    headers: HeaderMap,
    name: String,
    task: Option<u32>,
    form: ActionForm,
) -> Response {
    if let Some((status, message)) = refuse_write(&app, &headers, Some(&form.token)) {
        return (status, format!("{message}\n")).into_response();
    }
    match restart(&app, &name, task).await {
        Ok(message) => {
            Redirect::to(&format!("/connect?restarted={}", urlencode(&message))).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response(),
    }
}

async fn restart_api(app: App, headers: HeaderMap, name: String, task: Option<u32>) -> Response {
    if let Some((status, message)) = refuse_write(&app, &headers, None) {
        return (status, Json(ActionResult { ok: false, message })).into_response();
    }
    match restart(&app, &name, task).await {
        Ok(message) => Json(ActionResult { ok: true, message }).into_response(),
        Err(message) => (
            StatusCode::BAD_GATEWAY,
            Json(ActionResult { ok: false, message }),
        )
            .into_response(),
    }
}

async fn restart_connector_form(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    restart_form(app, headers, name, None, form).await
}

async fn restart_task_form(
    State(app): State<App>,
    Path((name, task)): Path<(String, u32)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    restart_form(app, headers, name, Some(task), form).await
}

async fn restart_connector_api(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    restart_api(app, headers, name, None).await
}

async fn restart_task_api(
    State(app): State<App>,
    Path((name, task)): Path<(String, u32)>,
    headers: HeaderMap,
) -> Response {
    restart_api(app, headers, name, Some(task)).await
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- PostgreSQL and Cassandra ---------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct PostgresPage {
    url: String,
    slot_name: String,
    view: Option<PostgresView>,
}

async fn postgres(State(app): State<App>, format: Format) -> Response {
    let mut errors = Vec::new();
    let pg = &app.collector.backends().postgres;
    let view = app
        .within("PostgreSQL", pg.view())
        .await
        .map_err(|e| errors.push(e))
        .ok();
    let page = PostgresPage {
        url: pg.display_url.clone(),
        slot_name: app.collector.names().slot.clone(),
        view,
    };
    app.respond(
        format,
        meta("postgres.html", "postgres", "PostgreSQL".to_owned()),
        errors,
        page,
        None,
    )
}

#[derive(Debug, Serialize)]
struct CassandraPage {
    contact_points: Vec<String>,
    view: Option<CassandraView>,
}

async fn cassandra(State(app): State<App>, format: Format) -> Response {
    let mut errors = Vec::new();
    let cassandra = &app.collector.backends().cassandra;
    let view = app
        .within("Cassandra", cassandra.view())
        .await
        .map_err(|e| errors.push(e))
        .ok();
    let page = CassandraPage {
        contact_points: cassandra.contact_points().to_vec(),
        view,
    };
    app.respond(
        format,
        meta("cassandra.html", "cassandra", "Cassandra".to_owned()),
        errors,
        page,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_urls() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(thousands(12), "12");
        assert_eq!(urlencode("task 0 of a b"), "task%200%20of%20a%20b");
    }

    #[test]
    fn every_template_parses() {
        assert!(templates().is_ok(), "{:?}", templates().err());
    }

    fn render(template: &str, context: minijinja::Value) -> String {
        let env = templates().unwrap_or_else(|e| panic!("{e}"));
        env.get_template(template)
            .and_then(|t| t.render(context))
            .unwrap_or_else(|e| panic!("{template}: {e:#}"))
    }

    #[test]
    fn the_overview_renders_states_as_attributes() {
        use crate::collector::{DeadLetterCount, Hop, ServiceState};
        let hop = |id| Hop {
            id,
            title: "t",
            from: "a",
            to: "b",
            rate: Some(12.5),
            lag: Some(3),
            lag_unit: "records",
            state: "lagging",
            note: String::new(),
        };
        let page = OverviewPage {
            snapshot: Some(Snapshot {
                at: "now".to_owned(),
                took_ms: 3,
                kafka_requests: 6,
                services: vec![
                    ServiceState {
                        name: "kafka1".to_owned(),
                        address: "127.0.0.1:9092".to_owned(),
                        up: true,
                        detail: String::new(),
                    },
                    ServiceState {
                        name: "connect".to_owned(),
                        address: "http://127.0.0.1:8083".to_owned(),
                        up: false,
                        detail: "unreachable".to_owned(),
                    },
                ],
                hops: vec![
                    hop("produced"),
                    hop("pg_applied"),
                    hop("captured"),
                    hop("cassandra_applied"),
                ],
                groups: Vec::new(),
                slot: None,
                dead_letters: vec![DeadLetterCount {
                    topic: "users.dlq".to_owned(),
                    source: "users".to_owned(),
                    count: 1,
                    pipeline: true,
                }],
                connector_state: None,
                unreachable: vec![("Kafka Connect".to_owned(), "refused".to_owned())],
                verify: None,
            }),
            charts: Vec::new(),
            sample_interval_ms: 2000,
        };
        let html = render(
            "overview_live.html",
            minijinja::context! {
                ..minijinja::Value::from(minijinja::value::Serde(&page)),
                ..overview_svgs(&page)
            },
        );
        assert!(
            html.contains(r#"data-service="kafka1" data-up="true""#),
            "{html}"
        );
        assert!(html.contains(r#"data-service="connect" data-up="false""#));
        assert!(html.contains(r#"data-hop="produced" data-state="lagging" data-rate="12.5""#));
        assert!(html.contains(r#"data-unreachable="Kafka Connect""#));
        assert!(html.contains(r#"data-dlq="users.dlq" data-count="1""#));
    }

    #[test]
    fn a_change_renders_its_columns() {
        let value = br#"{"op":"u","source":{"schema":"public","table":"users","lsn":16,"ts_ms":1},"before":{"id":"x","name":"a"},"after":{"id":"x","name":"b"}}"#;
        let change = messages::change_view(Some(br#"{"id":"x"}"#), Some(value));
        let message = messages::MessageView {
            partition: 0,
            offset: 7,
            timestamp_ms: Some(0),
            timestamp: "t".to_owned(),
            key: Some(messages::show_key(br#"{"id":"x"}"#)),
            headers: vec![
                ("dlq.reason".to_owned(), "undecodable".to_owned()),
                ("other".to_owned(), "v".to_owned()),
            ],
            dlq_reason: Some("undecodable".to_owned()),
            value: messages::show(Some(value)),
            change,
        };
        let page = MessagesPage {
            name: "cdc.public.users".to_owned(),
            partitions: vec![0],
            query: BrowseQuery::default(),
            browse: Some(Browse {
                topic: "cdc.public.users".to_owned(),
                query: BrowseQuery::default(),
                messages: vec![message],
                scanned: 1,
                incomplete: false,
            }),
            dlq: false,
            debezium: true,
            max_limit: 500,
        };
        let html = render(
            "messages.html",
            minijinja::context! {
                ..minijinja::context! { token => "t", errors => Vec::<String>::new(), unreachable => Vec::<String>::new() },
                ..minijinja::Value::from(minijinja::value::Serde(&page))
            },
        );
        assert!(
            html.contains(r#"data-column="name" data-changed="true""#),
            "{html}"
        );
        assert!(html.contains(r#"data-column="id" data-changed="false""#));
        // minijinja escapes `/` in HTML.
        assert!(html.contains(r#"class="lsn">0&#x2f;10<"#), "{html}");
        assert!(html.contains(r#"data-reason="undecodable""#));
    }
}
