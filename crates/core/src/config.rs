//! Command-line option groups shared by the binaries, each option with an environment-variable
//! fallback (`--flag` wins over the variable, the variable over the default), plus helpers that keep
//! secrets out of logs.
//!
//! A binary flattens the groups it needs into its own `clap::Parser`:
//!
//! ```
//! use cdc_core::config::{KafkaArgs, LogArgs};
//!
//! #[derive(Debug, clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     log: LogArgs,
//!     #[command(flatten)]
//!     kafka: KafkaArgs,
//! }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rdkafka::config::ClientConfig;
pub use secrecy::{ExposeSecret, SecretString};

use crate::logging;
pub use crate::logging::LogFormat;
use crate::retry::DEFAULT_GIVE_UP_AFTER;
use crate::runtime::{self, RuntimeError, RuntimeOptions};
use crate::topics::TopicSpec;

/// The local stack's three brokers.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094";

/// Logging options: `--log-level` / `LOG_LEVEL` and `--log-format` / `LOG_FORMAT`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or a full filter such as
    /// `info,rdkafka=warn`. `RUST_LOG`, when set, takes precedence.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", value_name = "FILTER")]
    pub log_level: String,

    /// Log line format: `text` for people, `json` for log collectors.
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "text",
        value_name = "text|json"
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global tracing subscriber (see [`logging::init`]).
    pub fn init(&self) {
        logging::init(&self.log_level, self.log_format);
    }
}

/// One librdkafka setting given as `KEY=VALUE`. Its value is hidden when printed with `{:?}` if the
/// key names a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    pub key: String,
    pub value: String,
}

impl KafkaOption {
    /// Whether the key names a credential or key material (`sasl.password`,
    /// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`, …).
    pub fn is_sensitive(&self) -> bool {
        let key = self.key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "token",
            "jaas",
            "credential",
            "ssl.key.pem",
            "private",
        ]
        .iter()
        .any(|word| key.contains(word))
    }
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_sensitive() {
            write!(f, "{}=***", self.key)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

impl FromStr for KafkaOption {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((key, value)) = text.split_once('=') else {
            return Err("expected KEY=VALUE, e.g. security.protocol=SASL_SSL".to_owned());
        };
        let key = key.trim();
        if key.is_empty() {
            return Err("the key before `=` is empty".to_owned());
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.trim().to_owned(),
        })
    }
}

/// Kafka connection options: `--brokers` / `KAFKA_BROKERS` and any number of librdkafka settings
/// for TLS, SASL and tuning — from a properties file (`--kafka-config` / `KAFKA_CONFIG`), which
/// keeps secrets off the command line, and from `--kafka-option KEY=VALUE` (repeatable) or
/// `KAFKA_OPTIONS` (one setting per line), which win over the file.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_BROKERS, value_name = "HOST:PORT,...")]
    pub brokers: String,

    /// A librdkafka properties file: one `KEY=VALUE` per line, `#` starts a comment line. The
    /// place for `sasl.password` and other secrets (they never show in `ps`).
    #[arg(
        long = "kafka-config",
        env = "KAFKA_CONFIG",
        value_name = "FILE",
        value_parser = KafkaConfigFile::read
    )]
    pub kafka_config: Option<KafkaConfigFile>,

    /// Extra librdkafka setting, e.g. `security.protocol=SASL_SSL` or `debug=cgrp,topic` (a value
    /// may hold commas). Repeat the flag for several; in `KAFKA_OPTIONS`, one setting per line.
    #[arg(
        long = "kafka-option",
        env = "KAFKA_OPTIONS",
        value_name = "KEY=VALUE",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub kafka_options: Vec<KafkaOption>,
}

impl Default for KafkaArgs {
    fn default() -> Self {
        Self {
            brokers: DEFAULT_BROKERS.to_owned(),
            kafka_config: None,
            kafka_options: Vec::new(),
        }
    }
}

impl KafkaArgs {
    /// A client configuration with `bootstrap.servers`, then the settings of `--kafka-config`,
    /// then every `--kafka-option` (either may override `bootstrap.servers`). Callers add their
    /// role's settings on top.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        let from_file = self.kafka_config.iter().flat_map(|file| &file.options);
        for option in from_file.chain(&self.kafka_options) {
            config.set(&option.key, &option.value);
        }
        config
    }

    /// Every extra setting, the file's first, as `KEY=VALUE` lines (for a child process's
    /// `KAFKA_OPTIONS`).
    pub fn options_env(&self) -> String {
        let from_file = self.kafka_config.iter().flat_map(|file| &file.options);
        from_file
            .chain(&self.kafka_options)
            .map(|o| format!("{}={}", o.key, o.value))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The settings of a librdkafka properties file (`--kafka-config`), read when the options are
/// parsed so that a missing or malformed file stops the program before it starts.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfigFile {
    pub path: std::path::PathBuf,
    pub options: Vec<KafkaOption>,
}

impl fmt::Debug for KafkaConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfigFile")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish()
    }
}

impl KafkaConfigFile {
    /// Reads and parses `path`.
    pub fn read(path: &str) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|error| format!("reading {path}: {error}"))?;
        let options = Self::parse(&text).map_err(|error| format!("{path}: {error}"))?;
        Ok(Self {
            path: path.into(),
            options,
        })
    }

    /// `KEY=VALUE` lines; blank lines and lines starting with `#` or `!` are skipped.
    pub fn parse(text: &str) -> Result<Vec<KafkaOption>, String> {
        text.lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line.trim()))
            .filter(|(_, line)| {
                !line.is_empty() && !line.starts_with('#') && !line.starts_with('!')
            })
            .map(|(number, line)| {
                line.parse::<KafkaOption>()
                    .map_err(|error| format!("line {number}: {error}"))
            })
            .collect()
    }
}

/// Names and layout of the pipeline's two business topics.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicArgs {
    /// Topic of user events.
    #[arg(long, env = "USERS_TOPIC", default_value = "users")]
    pub users_topic: String,

    /// Topic of order events.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    pub orders_topic: String,

    /// Partitions of the users topic, used when creating it and checked when it exists.
    #[arg(long, env = "USERS_PARTITIONS", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub users_partitions: i32,

    /// Partitions of the orders topic, used when creating it and checked when it exists.
    #[arg(long, env = "ORDERS_PARTITIONS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..))]
    pub orders_partitions: i32,

    /// Replication factor of both topics.
    #[arg(long, env = "REPLICATION_FACTOR", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,
}

impl TopicArgs {
    /// The two topics as [`crate::topics::ensure_topics`] wants them: users first, then orders.
    pub fn specs(&self) -> Vec<TopicSpec> {
        vec![
            TopicSpec::new(
                &self.users_topic,
                self.users_partitions,
                self.replication_factor,
            ),
            TopicSpec::new(
                &self.orders_topic,
                self.orders_partitions,
                self.replication_factor,
            ),
        ]
    }
}

/// The local stack's application database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://cdc_user:cdc_password@127.0.0.1:5432/cdc_db";

/// Where PostgreSQL is: `--database-url` / `DATABASE_URL`, or a file holding the URL
/// (`--database-url-file` / `DATABASE_URL_FILE`) so that its password stays off the command line
/// and out of the environment. TLS settings go in the URL: `sslmode` (`disable` … `verify-full`),
/// `sslrootcert`, `sslcert`, `sslkey`.
#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection URL (the password is never logged).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub database_url: Secret,

    /// A file whose first line is the connection URL; wins over `--database-url`.
    #[arg(
        long,
        env = "DATABASE_URL_FILE",
        value_name = "FILE",
        value_parser = read_secret_file
    )]
    pub database_url_file: Option<Secret>,
}

impl PostgresArgs {
    /// The connection URL: the file's when one is given.
    pub fn url(&self) -> &str {
        self.database_url_file
            .as_ref()
            .unwrap_or(&self.database_url)
            .expose_secret()
    }
}

impl Default for PostgresArgs {
    fn default() -> Self {
        Self {
            database_url: Secret::from(DEFAULT_DATABASE_URL),
            database_url_file: None,
        }
    }
}

/// A secret kept in a file: its first line, without surrounding whitespace. The error names the
/// file, never its content.
pub fn read_secret_file(path: &str) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("reading {path}: {error}"))?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(Secret::from(secret))
}

/// A batch's size limit unless `--max-batch-bytes` says otherwise: 1 MiB, about 200 of Debezium's
/// envelopes with their embedded schemas (the consumer's events are far smaller, so its batches end
/// at `--max-batch` records first).
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 1024 * 1024;

/// How the per-partition runtime consumes: the same for the consumer and the cdcconsumer.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// Most records handled in one batch.
    #[arg(long, env = "MAX_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,

    /// Most bytes (record keys and payloads) in one batch; a batch ends at `--max-batch` records
    /// or at this size, whichever comes first. What a partition holds in memory is about
    /// `--pipeline` batches of this size. A larger record makes a batch on its own.
    #[arg(long, env = "MAX_BATCH_BYTES", default_value_t = DEFAULT_MAX_BATCH_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_bytes: u64,

    /// Stop after this many seconds without a record (and nothing in flight or stalled); 0 runs
    /// until SIGINT/SIGTERM.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 10)]
    pub idle_timeout_secs: u64,

    /// How long a revoked or stopping partition may take to finish its batch before it is
    /// abandoned (read again by the next owner). Must be below the consumer session timeout
    /// (`session.timeout.ms`, 10 s unless set with `--kafka-option`).
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "8s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How long a failure that is not a record's own fault (database or cluster unavailable,
    /// permission denied, …) is retried before the partition's worker gives up: the partition is
    /// then reported stalled and its worker restarts from the stored offset after a backoff.
    #[arg(long, env = "GIVE_UP_AFTER", default_value = "1h", value_parser = parse_duration)]
    pub give_up_after: Duration,

    /// Exit non-zero once one partition's worker has been restarted this many times in a row
    /// without progress (for a supervisor to restart the process); 0 restarts for ever.
    #[arg(long, env = "MAX_WORKER_RESTARTS", default_value_t = 0)]
    pub max_worker_restarts: u32,
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        Self {
            max_batch: 500,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            idle_timeout_secs: 10,
            drain_timeout: runtime::DEFAULT_DRAIN_TIMEOUT,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            max_worker_restarts: 0,
        }
    }
}

impl RuntimeArgs {
    /// The runtime's options; callers set their own batching on top.
    pub fn options(&self) -> RuntimeOptions {
        RuntimeOptions {
            max_batch: usize::try_from(self.max_batch).unwrap_or(usize::MAX),
            max_batch_bytes: usize::try_from(self.max_batch_bytes).unwrap_or(usize::MAX),
            idle_timeout: (self.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(self.idle_timeout_secs)),
            drain_timeout: self.drain_timeout,
            max_worker_restarts: (self.max_worker_restarts > 0).then_some(self.max_worker_restarts),
            ..RuntimeOptions::default()
        }
    }

    /// Refuses a drain deadline that is not below the session timeout `kafka` will use.
    pub fn check(&self, kafka: &ClientConfig) -> Result<(), RuntimeError> {
        runtime::check_drain_deadline(kafka, self.drain_timeout)
    }
}

/// A password, token or URL with credentials: `{:?}` prints `[REDACTED]` and only
/// [`ExposeSecret::expose_secret`] gives the text, so it cannot end up in a log line by accident;
/// the memory is zeroed when dropped.
pub type Secret = SecretString;

/// Parses an RFC 3339 time (`2026-11-24T10:00:00Z`).
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&chrono::Utc))
        .map_err(|error| format!("`{text}` is not an RFC 3339 time ({error})"))
}

/// Parses a duration such as `30s`, `500ms`, `5m`, `1h30m` or `2m 5s` (humantime's units: `ms`,
/// `s`, `m`, `h`, `d` and their long forms); a bare number, fractions allowed, means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))
}

/// Nodes that share one host but listen on different native ports (the local stack: 127.0.0.1:9042,
/// 127.0.0.2:9043, 127.0.0.3:9044) are announced by `system.peers` with their address only, and the
/// driver assumes the port of the node it asked — so it would reach just that node. When the contact
/// points are addresses with differing ports, map every (address, any of those ports) to the node's
/// own port; every node must then be listed. `None` in the usual case of one port for all.
pub fn cassandra_port_translations(nodes: &[String]) -> Option<HashMap<SocketAddr, SocketAddr>> {
    let addresses: Vec<SocketAddr> = nodes
        .iter()
        .map(|n| n.trim().parse().ok())
        .collect::<Option<_>>()?;
    let ports: BTreeSet<u16> = addresses.iter().map(SocketAddr::port).collect();
    if ports.len() < 2 {
        return None;
    }
    let mut rules = HashMap::new();
    for node in &addresses {
        for port in &ports {
            rules.insert(SocketAddr::new(node.ip(), *port), *node);
        }
    }
    Some(rules)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::from("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose_secret(), "hunter2");
        let option: KafkaOption = "sasl.password=hunter2".parse().unwrap_or(KafkaOption {
            key: String::new(),
            value: String::new(),
        });
        assert_eq!(format!("{option:?}"), "sasl.password=***");
        let plain: Result<KafkaOption, _> = "security.protocol = SASL_SSL".parse();
        assert_eq!(
            plain.map(|o| format!("{o:?}")),
            Ok("security.protocol=SASL_SSL".to_owned())
        );
        assert!("no-equals-sign".parse::<KafkaOption>().is_err());
        assert!("=value".parse::<KafkaOption>().is_err());
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicArgs,
    }

    #[test]
    fn flags_parse_into_a_client_config() {
        let cli = Cli::try_parse_from([
            "test",
            "--brokers",
            "b1:9092",
            "--kafka-option",
            "security.protocol=SASL_SSL",
            "--kafka-option",
            "sasl.mechanism=SCRAM-SHA-512",
            "--kafka-option",
            "debug=cgrp,topic",
            "--log-format",
            "json",
            "--orders-partitions",
            "7",
        ]);
        let Ok(cli) = cli else {
            panic!("parse failed: {cli:?}");
        };
        assert_eq!(cli.log.log_format, LogFormat::Json);
        let config = cli.kafka.client_config();
        assert_eq!(config.get("bootstrap.servers"), Some("b1:9092"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        // A value keeps its commas.
        assert_eq!(config.get("debug"), Some("cgrp,topic"));
        let specs = cli.topics.specs();
        assert_eq!(specs[1], TopicSpec::new("orders", 7, 3));
        assert!(Cli::try_parse_from(["test", "--users-partitions", "0"]).is_err());
        assert!(Cli::try_parse_from(["test", "--kafka-option", "oops"]).is_err());
    }

    #[test]
    fn a_properties_file_is_read_and_the_flags_win_over_it() {
        let file = KafkaConfigFile::parse(
            "# the secure cluster\n\nsecurity.protocol = SASL_SSL\n! also a comment\n\
             sasl.password=p=w,d\ncompression.type=lz4\n",
        );
        let Ok(options) = file else {
            panic!("parse failed: {file:?}");
        };
        assert_eq!(
            format!("{options:?}"),
            "[security.protocol=SASL_SSL, sasl.password=***, compression.type=lz4]"
        );
        let args = KafkaArgs {
            kafka_config: Some(KafkaConfigFile {
                path: "k.properties".into(),
                options,
            }),
            kafka_options: vec![KafkaOption {
                key: "compression.type".to_owned(),
                value: "zstd".to_owned(),
            }],
            ..KafkaArgs::default()
        };
        let config = args.client_config();
        assert_eq!(config.get("sasl.password"), Some("p=w,d"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(
            args.options_env(),
            "security.protocol=SASL_SSL\nsasl.password=p=w,d\ncompression.type=lz4\n\
             compression.type=zstd"
        );
        assert_eq!(
            KafkaConfigFile::parse("a=1\nnot a setting\n"),
            Err("line 2: expected KEY=VALUE, e.g. security.protocol=SASL_SSL".to_owned())
        );
        let missing = KafkaConfigFile::read("/nonexistent/k.properties");
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("reading /nonexistent/k.properties")),
            "{missing:?}"
        );
    }

    /// The client library is built with what secured and compressed clusters need: TLS, SASL
    /// PLAIN and SCRAM, and every codec (librdkafka refuses `builtin.features` it lacks).
    #[test]
    fn the_kafka_client_has_tls_sasl_and_every_codec() {
        let created: Result<rdkafka::producer::BaseProducer, _> = ClientConfig::new()
            .set(
                "builtin.features",
                "ssl,sasl_plain,sasl_scram,gzip,snappy,lz4,zstd",
            )
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "app")
            .set("sasl.password", "not-a-real-password")
            .set("compression.type", "zstd")
            .create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn a_secret_file_gives_its_first_line() {
        let dir = std::env::temp_dir().join(format!("cdc-secret-{}", std::process::id()));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let path = dir.join("url");
        assert!(std::fs::write(&path, "postgres://u:s3cret@h/db\n").is_ok());
        let path = path.to_string_lossy().into_owned();
        let secret = read_secret_file(&path);
        assert_eq!(
            secret.as_ref().map(ExposeSecret::expose_secret),
            Ok("postgres://u:s3cret@h/db")
        );
        let args = PostgresArgs {
            database_url_file: secret.ok(),
            ..PostgresArgs::default()
        };
        assert_eq!(args.url(), "postgres://u:s3cret@h/db");
        assert!(std::fs::write(dir.join("empty"), "\n").is_ok());
        let empty = read_secret_file(&dir.join("empty").to_string_lossy());
        assert!(empty.is_err_and(|e| e.ends_with("is empty")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m 5s"), Ok(Duration::from_secs(125)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn nodes_on_one_host_with_their_own_ports_are_reachable() {
        let nodes: Vec<String> = ["127.0.0.1:9042", "127.0.0.2:9043", "127.0.0.3:9044"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let rules = cassandra_port_translations(&nodes).expect("rules");
        let at = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert_eq!(
            rules.get(&at("127.0.0.3:9042")),
            Some(&at("127.0.0.3:9044"))
        );
        assert_eq!(
            rules.get(&at("127.0.0.2:9044")),
            Some(&at("127.0.0.2:9043"))
        );
        assert_eq!(
            rules.get(&at("127.0.0.1:9042")),
            Some(&at("127.0.0.1:9042"))
        );
        assert_eq!(rules.len(), 9);
        let same_port: Vec<String> = vec!["10.0.0.1:9042".into(), "10.0.0.2:9042".into()];
        assert!(cassandra_port_translations(&same_port).is_none());
        assert!(cassandra_port_translations(&[
            "cassandra1:9042".to_owned(),
            "cassandra2:9043".to_owned()
        ])
        .is_none());
    }
}
