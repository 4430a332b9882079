//! The console's options and its run: backends, the collector, the web server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cdc_core::config::{parse_duration, KafkaArgs, LogArgs, PostgresArgs};
use tokio_util::sync::CancellationToken;

use crate::cassandra::Cassandra;
use crate::collector::{Backends, Collector, GroupTopics, PipelineNames};
use crate::connect::ConnectClient;
use crate::postgres::Postgres;
use crate::web::{self, AppOptions};
use crate::wire::Wire;

/// A web console for the pipeline: every hop's state and rate, brokers, topics and messages,
/// consumer groups, Kafka Connect, PostgreSQL and Cassandra, read live.
#[derive(Debug, clap::Parser)]
#[command(name = "console", version)]
pub struct Options {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,

    /// Address to serve on. Loopback by default: the console has no login.
    #[arg(long, env = "CONSOLE_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Kafka Connect's REST API.
    #[arg(long, env = "CONNECT_URL", default_value = "http://127.0.0.1:8083")]
    pub connect_url: String,

    /// Cassandra contact points, comma-separated host:port (one per node: each is shown).
    #[arg(
        long,
        env = "CASSANDRA_NODES",
        default_value = "127.0.0.1:9042,127.0.0.2:9043,127.0.0.3:9044",
        value_delimiter = ','
    )]
    pub cassandra_nodes: Vec<String>,

    #[command(flatten)]
    pub cassandra_access: cdc_core::cassandra::CassandraAccess,

    /// Allow restarting a connector or a task from the Connect page (the only write the console
    /// can make). Off by default.
    #[arg(long, env = "CONSOLE_ENABLE_ACTIONS", default_value_t = false)]
    pub enable_actions: bool,

    /// How often the pipeline's overview looks at every system.
    #[arg(long, env = "CONSOLE_SAMPLE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub sample_interval: Duration,

    /// Longest one request to a backing service may take; a page renders within this plus a
    /// little even when a service does not answer.
    #[arg(long, env = "CONSOLE_BACKEND_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    pub backend_timeout: Duration,

    /// The business topics the producer writes.
    #[arg(
        long,
        env = "CONSOLE_SOURCE_TOPICS",
        default_value = "users,orders",
        value_delimiter = ','
    )]
    pub source_topics: Vec<String>,

    /// The consumer's groups (events applied to PostgreSQL), as GROUP=TOPIC[+TOPIC...].
    #[arg(
        long,
        env = "CONSOLE_PG_GROUPS",
        default_value = "cdc-users-consumer=users,cdc-orders-consumer=orders",
        value_delimiter = ','
    )]
    pub pg_groups: Vec<GroupTopics>,

    /// Debezium's topics.
    #[arg(
        long,
        env = "CDC_TOPICS",
        default_value = "cdc.public.users,cdc.public.orders",
        value_delimiter = ','
    )]
    pub cdc_topics: Vec<String>,

    /// The cdcconsumer's group (changes applied to Cassandra), as GROUP=TOPIC[+TOPIC...].
    #[arg(
        long,
        env = "CONSOLE_CASSANDRA_GROUPS",
        default_value = "cdc-cassandra-consumer=cdc.public.users+cdc.public.orders",
        value_delimiter = ','
    )]
    pub cassandra_groups: Vec<GroupTopics>,

    /// Debezium's replication slot.
    #[arg(long, env = "SLOT_NAME", default_value = "cdc_slot")]
    pub slot: String,

    /// The Debezium connector's name.
    #[arg(long, env = "CONNECTOR_NAME", default_value = "cdc-postgres-connector")]
    pub connector: String,

    /// The stack's state folder, where `stack/stack.sh pipeline` keeps the verifier's last report
    /// (`last-verify.txt`).
    #[arg(long, env = "CDC_STACK_DIR", default_value = ".stack")]
    pub stack_dir: PathBuf,
}

/// Serves the console until `shutdown` fires.
pub async fn run(options: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(
        listen = %options.listen,
        brokers = %options.kafka.brokers,
        connect = %options.connect_url,
        actions = options.enable_actions,
        "starting the console"
    );
    let timeout = options.backend_timeout;
    let wire = Wire::new(&options.kafka.brokers, timeout);
    let postgres =
        Postgres::new(options.postgres.url(), timeout).context("reading --database-url")?;
    let backends = Backends {
        wire,
        postgres,
        connect: ConnectClient::new(&options.connect_url, timeout),
        cassandra: Cassandra::new(
            options.cassandra_nodes.clone(),
            options.cassandra_access.clone(),
            timeout,
        ),
        brokers: options
            .kafka
            .brokers
            .split(',')
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .collect(),
    };
    let names = PipelineNames {
        source_topics: options.source_topics.clone(),
        pg_groups: options.pg_groups.clone(),
        cdc_topics: options.cdc_topics.clone(),
        cassandra_groups: options.cassandra_groups.clone(),
        slot: options.slot.clone(),
        connector: options.connector.clone(),
        verify_report: options.stack_dir.join("last-verify.txt"),
    };
    let collector = Collector::new(backends, names);
    let sampling = tokio::spawn(
        collector
            .clone()
            .run(options.sample_interval, shutdown.clone()),
    );
    let app = AppOptions {
        kafka: options.kafka.client_config(),
        enable_actions: options.enable_actions,
        listen: options.listen,
        sample_interval: options.sample_interval,
        page_deadline: timeout + Duration::from_millis(300),
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    tracing::info!(address = %options.listen, "console listening");
    let served = web::serve(listener, collector, app, shutdown.clone()).await;
    shutdown.cancel();
    if let Err(error) = sampling.await {
        tracing::error!(error = %error, "the collector ended abnormally");
    }
    served.context("serving HTTP")?;
    tracing::info!("console stopped");
    Ok(())
}

/// The binary's `main` ([`cdc_core::shutdown::block_on`] says why it lives here).
pub fn main() -> anyhow::Result<()> {
    let options = <Options as clap::Parser>::parse();
    options.log.init();
    cdc_core::shutdown::block_on(async {
        let shutdown = cdc_core::shutdown::install();
        run(options, shutdown).await
    })
}
