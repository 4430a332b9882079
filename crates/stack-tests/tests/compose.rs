//! Checks that `docker-compose.yml` describes the same stack as `stack/topology.env` (the names,
//! ports and credentials that `stack/stack.sh` uses), and that its Kafka listeners are wired so that
//! both the containers and the host can reach every broker.
//!
//! Needs neither Docker nor any running service: it only reads the two files (and the files that
//! the compose file mounts).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_norway::Value;

const BROKERS: [&str; 3] = ["kafka1", "kafka2", "kafka3"];
const CASSANDRA_NODES: [&str; 3] = ["cassandra1", "cassandra2", "cassandra3"];
const CASSANDRA_CQL_CONTAINER_PORT: u16 = 9042;
const CONNECT_CONTAINER_PORT: u16 = 8083;
const POSTGRES_CONTAINER_PORT: u16 = 5432;

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

fn read_repo_file(relative: &str) -> Result<String> {
    let path = repo_root().join(relative);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `stack/topology.env`: plain `KEY=value` lines; values may contain spaces and are not quoted.
#[derive(Debug)]
struct Topology {
    values: BTreeMap<String, String>,
}

impl Topology {
    fn load() -> Result<Self> {
        Self::parse(&read_repo_file("stack/topology.env")?)
    }

    fn parse(text: &str) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').with_context(|| {
                format!(
                    "topology.env line {}: expected KEY=value, got {raw:?}",
                    index + 1
                )
            })?;
            ensure!(
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "topology.env line {}: {key:?} is not an upper-case variable name",
                index + 1
            );
            ensure!(
                values.insert(key.to_owned(), value.to_owned()).is_none(),
                "topology.env line {}: {key} is defined twice",
                index + 1
            );
        }
        Ok(Self { values })
    }

    fn get(&self, key: &str) -> Result<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("stack/topology.env has no {key}"))
    }

    fn list(&self, key: &str) -> Result<Vec<&str>> {
        Ok(self.get(key)?.split_whitespace().collect())
    }

    fn port(&self, key: &str) -> Result<u16> {
        parse_port(self.get(key)?).with_context(|| format!("topology.env {key}"))
    }

    fn ports(&self, key: &str) -> Result<Vec<u16>> {
        self.list(key)?
            .into_iter()
            .map(|p| parse_port(p).with_context(|| format!("topology.env {key}")))
            .collect()
    }
}

/// `docker-compose.yml`, with YAML merge keys (`<<: *anchor`) applied as Compose applies them.
#[derive(Debug)]
struct Compose {
    root: Value,
}

impl Compose {
    fn load() -> Result<Self> {
        let text = read_repo_file("docker-compose.yml")?;
        let mut root: Value =
            serde_norway::from_str(&text).context("docker-compose.yml is not valid YAML")?;
        root.apply_merge()
            .context("applying the YAML merge keys of docker-compose.yml")?;
        ensure!(
            root.is_mapping(),
            "docker-compose.yml: the document is not a mapping"
        );
        Ok(Self { root })
    }

    fn services(&self) -> Result<&serde_norway::Mapping> {
        self.root
            .get("services")
            .and_then(Value::as_mapping)
            .context("docker-compose.yml has no `services` mapping")
    }

    fn service_names(&self) -> Result<BTreeSet<String>> {
        self.services()?
            .keys()
            .map(|k| {
                k.as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("service name {k:?} is not a string"))
            })
            .collect()
    }

    fn service(&self, name: &str) -> Result<Service<'_>> {
        let value = self
            .services()?
            .get(name)
            .with_context(|| format!("docker-compose.yml has no service `{name}`"))?;
        ensure!(value.is_mapping(), "service `{name}` is not a mapping");
        Ok(Service {
            name: name.to_owned(),
            value,
        })
    }

    fn declared_volumes(&self) -> Result<BTreeSet<String>> {
        match self.root.get("volumes") {
            None | Some(Value::Null) => Ok(BTreeSet::new()),
            Some(Value::Mapping(volumes)) => volumes
                .keys()
                .map(|k| {
                    k.as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("volume name {k:?} is not a string"))
                })
                .collect(),
            Some(other) => bail!("top-level `volumes` is not a mapping: {other:?}"),
        }
    }
}

#[derive(Debug)]
struct Service<'a> {
    name: String,
    value: &'a Value,
}

/// A published port: `[host_ip:]host:container`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    host_ip: Option<String>,
    host: u16,
    container: u16,
}

/// A volume entry of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    source: String,
    target: String,
    read_only: bool,
}

impl Mount {
    /// Bind mounts name a path (`./x`, `../x`, `/x`); anything else is a named volume.
    fn is_bind(&self) -> bool {
        self.source.starts_with('.') || self.source.starts_with('/')
    }
}

impl Service<'_> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }

    fn image(&self) -> Result<&str> {
        self.field("image")
            .and_then(Value::as_str)
            .with_context(|| format!("service `{}` has no image", self.name))
    }

    /// `environment` in either of its forms (mapping, or list of `KEY=value`).
    fn environment(&self) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        match self.field("environment") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(map)) => {
                for (key, value) in map {
                    let key = key
                        .as_str()
                        .with_context(|| format!("`{}`: environment key {key:?}", self.name))?;
                    let value = match value {
                        Value::Null => String::new(),
                        other => scalar(other).with_context(|| {
                            format!("`{}`: environment variable {key}", self.name)
                        })?,
                    };
                    env.insert(key.to_owned(), value);
                }
            }
            Some(Value::Sequence(items)) => {
                for item in items {
                    let item = item
                        .as_str()
                        .with_context(|| format!("`{}`: environment entry {item:?}", self.name))?;
                    let (key, value) = item.split_once('=').unwrap_or((item, ""));
                    env.insert(key.to_owned(), value.to_owned());
                }
            }
            Some(other) => bail!("`{}`: environment is {other:?}", self.name),
        }
        Ok(env)
    }

    fn env(&self, key: &str) -> Result<String> {
        self.environment()?
            .remove(key)
            .with_context(|| format!("service `{}` does not set {key}", self.name))
    }

    fn ports(&self) -> Result<Vec<Published>> {
        let Some(ports) = self.field("ports") else {
            return Ok(Vec::new());
        };
        let ports = ports
            .as_sequence()
            .with_context(|| format!("`{}`: ports is not a list", self.name))?;
        ports
            .iter()
            .map(|entry| {
                parse_published(entry).with_context(|| format!("`{}`: port {entry:?}", self.name))
            })
            .collect()
    }

    fn mounts(&self) -> Result<Vec<Mount>> {
        let Some(volumes) = self.field("volumes") else {
            return Ok(Vec::new());
        };
        let volumes = volumes
            .as_sequence()
            .with_context(|| format!("`{}`: volumes is not a list", self.name))?;
        volumes
            .iter()
            .map(|entry| {
                parse_mount(entry).with_context(|| format!("`{}`: volume {entry:?}", self.name))
            })
            .collect()
    }

    /// `depends_on` as service -> condition (the list form means `service_started`).
    fn depends_on(&self) -> Result<BTreeMap<String, String>> {
        let mut deps = BTreeMap::new();
        match self.field("depends_on") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for item in items {
                    let name = item
                        .as_str()
                        .with_context(|| format!("`{}`: depends_on {item:?}", self.name))?;
                    deps.insert(name.to_owned(), "service_started".to_owned());
                }
            }
            Some(Value::Mapping(map)) => {
                for (name, spec) in map {
                    let name = name
                        .as_str()
                        .with_context(|| format!("`{}`: depends_on {name:?}", self.name))?;
                    let condition = spec
                        .get("condition")
                        .and_then(Value::as_str)
                        .unwrap_or("service_started");
                    deps.insert(name.to_owned(), condition.to_owned());
                }
            }
            Some(other) => bail!("`{}`: depends_on is {other:?}", self.name),
        }
        Ok(deps)
    }

    /// `command` or `entrypoint` as a list of words (a string is split on whitespace).
    fn words(&self, key: &str) -> Result<Vec<String>> {
        match self.field(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|item| scalar(item).with_context(|| format!("`{}`: {key}", self.name)))
                .collect(),
            Some(other) => bail!("`{}`: {key} is {other:?}", self.name),
        }
    }

    /// The healthcheck's `test`, joined into one string.
    fn healthcheck(&self) -> Result<String> {
        let test = self
            .field("healthcheck")
            .and_then(|h| h.get("test"))
            .with_context(|| format!("service `{}` has no healthcheck", self.name))?;
        match test {
            Value::String(s) => Ok(s.clone()),
            Value::Sequence(items) => Ok(items
                .iter()
                .map(scalar)
                .collect::<Result<Vec<_>>>()?
                .join(" ")),
            other => bail!("`{}`: healthcheck test is {other:?}", self.name),
        }
    }

    fn bind_mount_of(&self, source: &str) -> Result<Mount> {
        self.mounts()?
            .into_iter()
            .find(|m| m.is_bind() && normalize_source(&m.source) == source)
            .with_context(|| format!("service `{}` does not mount ./{source}", self.name))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing helpers
// ---------------------------------------------------------------------------------------------

/// Strings and numbers as text. Booleans are refused: Compose wants them quoted in `environment`.
fn scalar(value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => bail!("unquoted boolean {b}: quote it so that YAML keeps it a string"),
        other => bail!("expected a string or a number, got {other:?}"),
    }
}

fn parse_port(text: &str) -> Result<u16> {
    text.trim()
        .parse::<u16>()
        .with_context(|| format!("{text:?} is not a port number"))
}

fn parse_published(entry: &Value) -> Result<Published> {
    match entry {
        Value::String(spec) => {
            let spec = spec.split('/').next().unwrap_or(spec);
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.as_slice() {
                [host, container] => Ok(Published {
                    host_ip: None,
                    host: parse_port(host)?,
                    container: parse_port(container)?,
                }),
                [ip, host, container] => Ok(Published {
                    host_ip: Some((*ip).to_owned()),
                    host: parse_port(host)?,
                    container: parse_port(container)?,
                }),
                _ => bail!("expected [host_ip:]host_port:container_port (a port range or a bare container port publishes no fixed host port)"),
            }
        }
        Value::Mapping(_) => {
            let port = |key: &str| -> Result<u16> {
                let value = entry
                    .get(key)
                    .with_context(|| format!("long-syntax port without `{key}`"))?;
                parse_port(&scalar(value)?)
            };
            Ok(Published {
                host_ip: entry
                    .get("host_ip")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                host: port("published")?,
                container: port("target")?,
            })
        }
        Value::Number(_) => bail!("a bare container port publishes no fixed host port"),
        other => bail!("unexpected port entry {other:?}"),
    }
}

fn parse_mount(entry: &Value) -> Result<Mount> {
    match entry {
        Value::String(spec) => {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.as_slice() {
                [source, target] => Ok(Mount {
                    source: (*source).to_owned(),
                    target: (*target).to_owned(),
                    read_only: false,
                }),
                [source, target, options] => Ok(Mount {
                    source: (*source).to_owned(),
                    target: (*target).to_owned(),
                    read_only: options.split(',').any(|o| o == "ro"),
                }),
                _ => bail!("expected source:target[:options] (anonymous volumes keep no data across `down`)"),
            }
        }
        Value::Mapping(_) => {
            let text = |key: &str| -> Result<String> {
                entry
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .with_context(|| format!("long-syntax volume without `{key}`"))
            };
            Ok(Mount {
                source: text("source")?,
                target: text("target")?,
                read_only: entry
                    .get("read_only")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        }
        other => bail!("unexpected volume entry {other:?}"),
    }
}

/// `./stack/x.sh` -> `stack/x.sh`.
fn normalize_source(source: &str) -> &str {
    source.strip_prefix("./").unwrap_or(source)
}

/// A Kafka listener, `NAME://host:port` (the host may be empty: all interfaces).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listener {
    name: String,
    host: String,
    port: u16,
}

fn parse_listeners(text: &str) -> Result<Vec<Listener>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|spec| {
            let (name, address) = spec
                .split_once("://")
                .with_context(|| format!("listener {spec:?} is not NAME://host:port"))?;
            let (host, port) = address
                .rsplit_once(':')
                .with_context(|| format!("listener {spec:?} has no port"))?;
            Ok(Listener {
                name: name.to_owned(),
                host: host.to_owned(),
                port: parse_port(port).with_context(|| format!("listener {spec:?}"))?,
            })
        })
        .collect()
}

/// `host:port,host:port`.
fn parse_endpoints(text: &str) -> Result<Vec<(String, u16)>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|spec| {
            let (host, port) = spec
                .rsplit_once(':')
                .with_context(|| format!("{spec:?} is not host:port"))?;
            Ok((host.to_owned(), parse_port(port)?))
        })
        .collect()
}

/// `id@host:port,...`.
fn parse_voters(text: &str) -> Result<Vec<(String, String, u16)>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|spec| {
            let (id, endpoint) = spec
                .split_once('@')
                .with_context(|| format!("voter {spec:?} is not id@host:port"))?;
            let (host, port) = endpoint
                .rsplit_once(':')
                .with_context(|| format!("voter {spec:?} has no port"))?;
            Ok((id.to_owned(), host.to_owned(), parse_port(port)?))
        })
        .collect()
}

fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The broker's listeners by name, checked for duplicates.
fn listeners_by_name(broker: &Service<'_>, key: &str) -> Result<BTreeMap<String, Listener>> {
    let mut by_name = BTreeMap::new();
    for listener in parse_listeners(&broker.env(key)?)? {
        let name = listener.name.clone();
        ensure!(
            by_name.insert(name.clone(), listener).is_none(),
            "`{}`: listener {name} appears twice in {key}",
            broker.name
        );
    }
    Ok(by_name)
}

/// Every in-network listener that some broker advertises, as `host:port`.
fn in_network_endpoints(compose: &Compose) -> Result<BTreeSet<(String, u16)>> {
    let mut endpoints = BTreeSet::new();
    for name in BROKERS {
        let broker = compose.service(name)?;
        for listener in parse_listeners(&broker.env("KAFKA_ADVERTISED_LISTENERS")?)? {
            if listener.host == name {
                endpoints.insert((listener.host, listener.port));
            }
        }
    }
    Ok(endpoints)
}

/// Checks that a client's bootstrap list names only in-network listeners, one per broker.
fn assert_in_network_bootstrap(compose: &Compose, who: &str, bootstrap: &str) -> Result<()> {
    let endpoints = in_network_endpoints(compose)?;
    let listed = parse_endpoints(bootstrap)?;
    for (host, port) in &listed {
        ensure!(
            endpoints.contains(&(host.clone(), *port)),
            "{who} bootstraps to {host}:{port}, which no broker advertises on the compose network \
             (in-network listeners: {endpoints:?})"
        );
    }
    let hosts: BTreeSet<&str> = listed.iter().map(|(h, _)| h.as_str()).collect();
    let brokers: BTreeSet<&str> = BROKERS.into_iter().collect();
    ensure!(
        hosts == brokers,
        "{who} should bootstrap through all brokers {brokers:?}, lists {hosts:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_defines_every_service_of_the_stack() -> Result<()> {
    let compose = Compose::load()?;
    let names = compose.service_names()?;
    let expected = BROKERS
        .into_iter()
        .chain(["postgres"])
        .chain(CASSANDRA_NODES)
        .chain(["cassandra-init", "connect", "debezium-init", "kafka-ui"]);
    for service in expected {
        ensure!(
            names.contains(service),
            "docker-compose.yml lacks service `{service}` (has {names:?})"
        );
    }
    for name in &names {
        compose.service(name)?.image()?;
    }
    Ok(())
}

#[test]
fn published_host_ports_match_topology() -> Result<()> {
    let compose = Compose::load()?;
    let topology = Topology::load()?;

    let kafka_ports = topology.ports("KAFKA_CLIENT_PORTS")?;
    let cql_ports = topology.ports("CASSANDRA_CQL_PORTS")?;
    ensure!(
        kafka_ports.len() == BROKERS.len(),
        "topology.env KAFKA_CLIENT_PORTS has {} ports for {} brokers",
        kafka_ports.len(),
        BROKERS.len()
    );
    ensure!(
        cql_ports.len() == CASSANDRA_NODES.len(),
        "topology.env CASSANDRA_CQL_PORTS has {} ports for {} nodes",
        cql_ports.len(),
        CASSANDRA_NODES.len()
    );

    // service -> (host port, container port or None when the container port is checked elsewhere)
    let mut expected: BTreeMap<String, Vec<(u16, Option<u16>)>> = BTreeMap::new();
    for (broker, port) in BROKERS.into_iter().zip(&kafka_ports) {
        expected.insert(broker.to_owned(), vec![(*port, None)]);
    }
    for (node, port) in CASSANDRA_NODES.into_iter().zip(&cql_ports) {
        expected.insert(
            node.to_owned(),
            vec![(*port, Some(CASSANDRA_CQL_CONTAINER_PORT))],
        );
    }
    expected.insert(
        "postgres".to_owned(),
        vec![(
            topology.port("POSTGRES_PORT")?,
            Some(POSTGRES_CONTAINER_PORT),
        )],
    );
    expected.insert(
        "connect".to_owned(),
        vec![(topology.port("CONNECT_PORT")?, Some(CONNECT_CONTAINER_PORT))],
    );
    expected.insert(
        "kafka-ui".to_owned(),
        vec![(topology.port("KAFKA_UI_PORT")?, None)],
    );

    // Each Cassandra node is published on its own loopback address, as on the local stack.
    let cassandra_addresses: BTreeMap<&str, String> = CASSANDRA_NODES
        .into_iter()
        .zip(
            topology
                .get("CASSANDRA_ADDRESSES")?
                .split_whitespace()
                .map(str::to_owned),
        )
        .collect();
    let mut seen_host_ports = BTreeMap::new();
    for name in compose.service_names()? {
        let published = compose.service(&name)?.ports()?;
        for p in &published {
            if let Some(previous) = seen_host_ports.insert(p.host, name.clone()) {
                bail!(
                    "host port {} is published by both `{previous}` and `{name}`",
                    p.host
                );
            }
            if let Some(address) = cassandra_addresses.get(name.as_str()) {
                ensure!(
                    p.host_ip.as_ref() == Some(address),
                    "`{name}` publishes {} on {:?}; the binaries and the local stack reach it at \
                     {address}",
                    p.host,
                    p.host_ip
                );
            } else if let Some(ip) = &p.host_ip {
                ensure!(
                    ip == "127.0.0.1" || ip == "0.0.0.0",
                    "`{name}` publishes {} on {ip}, which host clients on 127.0.0.1 cannot reach",
                    p.host
                );
            }
        }
        let want = expected.get(&name).cloned().unwrap_or_default();
        let got_hosts: Vec<u16> = published.iter().map(|p| p.host).collect();
        let want_hosts: Vec<u16> = want.iter().map(|(h, _)| *h).collect();
        ensure!(
            got_hosts == want_hosts,
            "`{name}` publishes host ports {got_hosts:?}, topology.env says {want_hosts:?}"
        );
        for ((_, container), p) in want.iter().zip(&published) {
            if let Some(container) = container {
                ensure!(
                    p.container == *container,
                    "`{name}` maps host port {} to container port {}, expected {container}",
                    p.host,
                    p.container
                );
            }
        }
    }
    Ok(())
}

#[test]
fn kafka_listeners_are_reachable_where_they_are_advertised() -> Result<()> {
    let compose = Compose::load()?;
    let topology = Topology::load()?;
    let client_ports = topology.ports("KAFKA_CLIENT_PORTS")?;
    let controller_ports = topology.ports("KAFKA_CONTROLLER_PORTS")?;

    for (i, name) in BROKERS.into_iter().enumerate() {
        let broker = compose.service(name)?;
        let host_port = *client_ports
            .get(i)
            .with_context(|| format!("topology.env KAFKA_CLIENT_PORTS has no port for {name}"))?;
        let listeners = listeners_by_name(&broker, "KAFKA_LISTENERS")?;
        let advertised = listeners_by_name(&broker, "KAFKA_ADVERTISED_LISTENERS")?;

        let protocols: BTreeSet<String> =
            comma_list(&broker.env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")?)
                .iter()
                .filter_map(|entry| entry.split_once(':').map(|(n, _)| n.to_owned()))
                .collect();
        let mut bound_ports = BTreeSet::new();
        for listener in listeners.values() {
            ensure!(
                protocols.contains(&listener.name),
                "`{name}`: listener {} has no entry in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                listener.name
            );
            ensure!(
                bound_ports.insert(listener.port),
                "`{name}`: two listeners bind port {}",
                listener.port
            );
        }

        // The controller listener: its own port (topology.env's), never advertised to clients.
        let controller_name = broker.env("KAFKA_CONTROLLER_LISTENER_NAMES")?;
        let controller = listeners.get(&controller_name).with_context(|| {
            format!("`{name}`: controller listener {controller_name} is not in KAFKA_LISTENERS")
        })?;
        ensure!(
            Some(&controller.port) == controller_ports.get(i),
            "`{name}`: controller listener on port {}, topology.env KAFKA_CONTROLLER_PORTS says {:?}",
            controller.port,
            controller_ports.get(i)
        );
        ensure!(
            !advertised.contains_key(&controller_name),
            "`{name}`: the controller listener must not be advertised to clients"
        );

        // Everything advertised is served: same listener name, same port.
        for listener in advertised.values() {
            let bound = listeners.get(&listener.name).with_context(|| {
                format!(
                    "`{name}` advertises {}://{}:{} but has no such listener",
                    listener.name, listener.host, listener.port
                )
            })?;
            ensure!(
                bound.port == listener.port,
                "`{name}` advertises {} on port {} but that listener binds port {}",
                listener.name,
                listener.port,
                bound.port
            );
        }

        // Exactly one listener for host clients, advertised as 127.0.0.1:<its host port> and
        // published on that same host port.
        let host_listeners: Vec<&Listener> = advertised
            .values()
            .filter(|l| l.host == "127.0.0.1")
            .collect();
        let [host_listener] = host_listeners.as_slice() else {
            bail!(
                "`{name}` should advertise exactly one listener on 127.0.0.1, advertises {:?}",
                advertised.values().collect::<Vec<_>>()
            );
        };
        ensure!(
            host_listener.port == host_port,
            "`{name}` advertises 127.0.0.1:{}, topology.env KAFKA_CLIENT_PORTS says {host_port}",
            host_listener.port
        );
        let published = broker.ports()?;
        ensure!(
            published
                .iter()
                .any(|p| p.host == host_port && p.container == host_listener.port),
            "`{name}` advertises 127.0.0.1:{host_port} but does not publish host port {host_port} \
             to container port {} (publishes {published:?})",
            host_listener.port
        );

        // The others are for the compose network: they name this very service.
        let in_network: Vec<&Listener> = advertised
            .values()
            .filter(|l| l.host != "127.0.0.1")
            .collect();
        ensure!(
            !in_network.is_empty(),
            "`{name}` advertises no listener for the compose network"
        );
        for listener in &in_network {
            ensure!(
                listener.host == name,
                "`{name}` advertises {}://{}:{}; containers reach it as `{name}`, and host clients \
                 cannot resolve container names",
                listener.name,
                listener.host,
                listener.port
            );
        }
        let inter_broker = broker.env("KAFKA_INTER_BROKER_LISTENER_NAME")?;
        ensure!(
            in_network.iter().any(|l| l.name == inter_broker),
            "`{name}`: inter-broker listener {inter_broker} is not an in-network advertised listener"
        );
    }
    Ok(())
}

#[test]
fn kafka_cluster_settings_match_topology() -> Result<()> {
    let compose = Compose::load()?;
    let topology = Topology::load()?;
    let node_ids = topology.list("KAFKA_NODE_IDS")?;
    let controller_ports = topology.ports("KAFKA_CONTROLLER_PORTS")?;
    let rf = topology.get("KAFKA_DEFAULT_REPLICATION_FACTOR")?;
    let min_isr = topology.get("KAFKA_MIN_INSYNC_REPLICAS")?;
    ensure!(
        node_ids.len() == BROKERS.len(),
        "topology.env KAFKA_NODE_IDS {node_ids:?} should name {} nodes",
        BROKERS.len()
    );

    let mut cluster_ids = BTreeSet::new();
    let mut voter_lists = BTreeSet::new();
    for (i, name) in BROKERS.into_iter().enumerate() {
        let broker = compose.service(name)?;
        let env = broker.environment()?;
        let get = |key: &str| -> Result<&str> {
            env.get(key)
                .map(String::as_str)
                .with_context(|| format!("`{name}` does not set {key}"))
        };
        ensure!(
            broker.image()?.starts_with("apache/kafka:"),
            "`{name}` should run apache/kafka, runs {}",
            broker.image()?
        );
        ensure!(
            get("KAFKA_NODE_ID")? == node_ids[i],
            "`{name}`: KAFKA_NODE_ID {} but topology.env KAFKA_NODE_IDS gives {}",
            get("KAFKA_NODE_ID")?,
            node_ids[i]
        );
        let roles: BTreeSet<String> = comma_list(get("KAFKA_PROCESS_ROLES")?)
            .into_iter()
            .collect();
        ensure!(
            roles == BTreeSet::from(["broker".to_owned(), "controller".to_owned()]),
            "`{name}` should be a combined broker+controller node, has roles {roles:?}"
        );

        let expectations = [
            ("KAFKA_DEFAULT_REPLICATION_FACTOR", rf),
            ("KAFKA_MIN_INSYNC_REPLICAS", min_isr),
            ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", rf),
            ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", rf),
            ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", min_isr),
            ("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE", "false"),
            ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false"),
            ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
        ];
        for (key, want) in expectations {
            let got = get(key)?;
            ensure!(got == want, "`{name}`: {key} is {got:?}, expected {want:?}");
        }

        let cluster_id = get("CLUSTER_ID")?;
        ensure!(!cluster_id.is_empty(), "`{name}`: CLUSTER_ID is empty");
        cluster_ids.insert(cluster_id.to_owned());
        voter_lists.insert(get("KAFKA_CONTROLLER_QUORUM_VOTERS")?.to_owned());
    }
    ensure!(
        cluster_ids.len() == 1,
        "the brokers must share one CLUSTER_ID, found {cluster_ids:?}"
    );
    ensure!(
        voter_lists.len() == 1,
        "the brokers must share one controller.quorum.voters, found {voter_lists:?}"
    );

    let voters_text = voter_lists
        .first()
        .ok_or_else(|| anyhow!("no KAFKA_CONTROLLER_QUORUM_VOTERS found"))?;
    let voters = parse_voters(voters_text)?;
    ensure!(
        voters.len() == BROKERS.len(),
        "expected {} voters, KAFKA_CONTROLLER_QUORUM_VOTERS is {voters_text:?}",
        BROKERS.len()
    );
    for (i, (id, host, port)) in voters.iter().enumerate() {
        ensure!(
            id == node_ids[i] && host == BROKERS[i] && Some(port) == controller_ports.get(i),
            "voter {} is {id}@{host}:{port}, expected {}@{}:{:?} (in-network name, controller port)",
            i + 1,
            node_ids[i],
            BROKERS[i],
            controller_ports.get(i)
        );
    }

    let rf: usize = rf
        .parse()
        .context("topology.env KAFKA_DEFAULT_REPLICATION_FACTOR")?;
    let min_isr: usize = min_isr
        .parse()
        .context("topology.env KAFKA_MIN_INSYNC_REPLICAS")?;
    ensure!(
        rf <= BROKERS.len() && min_isr < rf,
        "replication factor {rf} / min ISR {min_isr} cannot tolerate a broker loss with {} brokers",
        BROKERS.len()
    );
    Ok(())
}

#[test]
fn clients_bootstrap_through_in_network_listeners() -> Result<()> {
    let compose = Compose::load()?;
    let topology = Topology::load()?;

    let connect = compose.service("connect")?;
    assert_in_network_bootstrap(&compose, "connect", &connect.env("BOOTSTRAP_SERVERS")?)?;

    let init = compose.service("debezium-init")?;
    assert_in_network_bootstrap(&compose, "debezium-init", &init.env("KAFKA_BOOTSTRAP")?)?;

    let ui = compose.service("kafka-ui")?;
    assert_in_network_bootstrap(
        &compose,
        "kafka-ui",
        &ui.env("KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS")?,
    )?;
    ensure!(
        ui.env("KAFKA_CLUSTERS_0_NAME")? == topology.get("KAFKA_CLUSTER_NAME")?,
        "kafka-ui cluster name should be topology.env KAFKA_CLUSTER_NAME"
    );

    let connect_url = format!("http://connect:{CONNECT_CONTAINER_PORT}");
    ensure!(
        ui.env("KAFKA_CLUSTERS_0_KAFKACONNECT_0_ADDRESS")? == connect_url,
        "kafka-ui should reach Kafka Connect at {connect_url}"
    );
    ensure!(
        init.env("CONNECT_URL")? == connect_url,
        "debezium-init should reach Kafka Connect at {connect_url}"
    );
    Ok(())
}

#[test]
fn connect_and_connector_registration_match_topology() -> Result<()> {
    let compose = Compose::load()?;
    let topology = Topology::load()?;
    let rf = topology.get("KAFKA_DEFAULT_REPLICATION_FACTOR")?;

    let connect = compose.service("connect")?;
    ensure!(
        connect.image()?.starts_with("quay.io/debezium/connect:"),
        "connect should run quay.io/debezium/connect, runs {}",
        connect.image()?
    );
    let expectations = [
        ("GROUP_ID", topology.get("CONNECT_GROUP_ID")?),
        (
            "CONFIG_STORAGE_TOPIC",
            topology.get("CONNECT_CONFIG_TOPIC")?,
        ),
        (
            "OFFSET_STORAGE_TOPIC",
            topology.get("CONNECT_OFFSET_TOPIC")?,
        ),
        (
            "STATUS_STORAGE_TOPIC",
            topology.get("CONNECT_STATUS_TOPIC")?,
        ),
        ("CONNECT_CONFIG_STORAGE_REPLICATION_FACTOR", rf),
        ("CONNECT_OFFSET_STORAGE_REPLICATION_FACTOR", rf),
        ("CONNECT_STATUS_STORAGE_REPLICATION_FACTOR", rf),
    ];
    for (key, want) in expectations {
        let got = connect.env(key)?;
        ensure!(got == want, "connect: {key} is {got:?}, expected {want:?}");
    }
    let deps = connect.depends_on()?;
    for dependency in BROKERS.into_iter().chain(["postgres"]) {
        ensure!(
            deps.get(dependency).map(String::as_str) == Some("service_healthy"),
            "connect should wait for `{dependency}` to be healthy (depends_on: {deps:?})"
        );
    }
    connect.healthcheck()?;

    let init = compose.service("debezium-init")?;
    ensure!(
        init.image()? == connect.image()?,
        "debezium-init should use the connect image ({}), uses {}",
        connect.image()?,
        init.image()?
    );
    let expectations = [
        ("DATABASE_HOSTNAME", "postgres".to_owned()),
        ("DATABASE_PORT", POSTGRES_CONTAINER_PORT.to_string()),
        ("KAFKA_TOPICS_CMD", "/kafka/bin/kafka-topics.sh".to_owned()),
        ("TOPIC_REPLICATION_FACTOR", rf.to_owned()),
    ];
    for (key, want) in expectations {
        let got = init.env(key)?;
        ensure!(
            got == want,
            "debezium-init: {key} is {got:?}, expected {want:?}"
        );
    }
    let script = init.bind_mount_of("debezium-config.sh")?;
    let runs_script = init
        .words("entrypoint")?
        .into_iter()
        .chain(init.words("command")?)
        .any(|word| word.split_whitespace().any(|w| w == script.target));
    ensure!(
        runs_script,
        "debezium-init mounts debezium-config.sh at {} but does not run it",
        script.target
    );
    ensure!(
        init.depends_on()?.get("connect").map(String::as_str) == Some("service_healthy"),
        "debezium-init should wait for connect to be healthy"
    );

    // The password reaches the connector through the worker's FileConfigProvider: the file is
    // mounted where debezium-init says the worker sees it, and holds topology.env's password.
    ensure!(
        connect.env("CONNECT_CONFIG_PROVIDERS")? == "file"
            && connect.env("CONNECT_CONFIG_PROVIDERS_FILE_CLASS")?
                == "org.apache.kafka.common.config.provider.FileConfigProvider",
        "connect should offer Kafka's FileConfigProvider as `file`"
    );
    let secrets_file = init.env("CONNECT_SECRETS_FILE")?;
    let config = connect
        .field("configs")
        .and_then(Value::as_sequence)
        .and_then(|configs| {
            configs
                .iter()
                .find(|c| c.get("target").and_then(Value::as_str) == Some(secrets_file.as_str()))
        })
        .and_then(|c| c.get("source"))
        .and_then(Value::as_str)
        .with_context(|| format!("connect mounts no config at {secrets_file}"))?;
    let content = compose
        .root
        .get("configs")
        .and_then(|configs| configs.get(config))
        .and_then(|c| c.get("content"))
        .and_then(Value::as_str)
        .with_context(|| format!("top-level config `{config}` has no content"))?;
    let password = topology.get("POSTGRES_REPLICATION_PASSWORD")?;
    ensure!(
        content
            .lines()
            .any(|line| line == format!("database.password={password}")),
        "config `{config}` should hold database.password as topology.env says"
    );
    Ok(())
}

/// The images are the exact versions the local stack runs (stack/maven/*.pom.xml, the PostgreSQL
/// major of stack.sh); none floats on a major or minor tag.
#[test]
fn images_are_pinned_to_the_local_stacks_versions() -> Result<()> {
    let compose = Compose::load()?;
    let pom = |name: &str, property: &str| -> Result<String> {
        let text = read_repo_file(&format!("stack/maven/{name}.pom.xml"))?;
        let (open, close) = (format!("<{property}>"), format!("</{property}>"));
        text.split_once(&open)
            .and_then(|(_, rest)| rest.split_once(&close))
            .map(|(value, _)| value.trim().to_owned())
            .with_context(|| format!("stack/maven/{name}.pom.xml has no {property}"))
    };
    let kafka = format!("apache/kafka:{}", pom("kafka", "kafka.version")?);
    let cassandra = format!("cassandra:{}", pom("cassandra", "cassandra.version")?);
    let debezium = format!(
        "quay.io/debezium/connect:{}",
        pom("debezium", "debezium.version")?
    );
    let mut expected: Vec<(&str, String)> = BROKERS.iter().map(|b| (*b, kafka.clone())).collect();
    expected.extend(CASSANDRA_NODES.iter().map(|n| (*n, cassandra.clone())));
    expected.push(("cassandra-init", cassandra.clone()));
    expected.push(("connect", debezium.clone()));
    expected.push(("debezium-init", debezium));
    for (service, want) in &expected {
        let got = compose.service(service)?.image()?.to_owned();
        ensure!(
            &got == want,
            "`{service}` runs {got}, the local stack runs {want}"
        );
    }
    for name in compose.service_names()? {
        let image = compose.service(&name)?.image()?.to_owned();
        let tag = image
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .with_context(|| format!("`{name}` runs {image} without a tag"))?;
        let numbers = tag
            .trim_start_matches('v')
            .split('.')
            .take_while(|part| part.chars().next().is_some_and(|c| c.is_ascii_digit()));
        ensure!(
            numbers.count() >= 2 && tag != "latest",
            "`{name}` runs {image}: pin an exact version"
        );
    }
    Ok(())
}

#[test]
fn postgres_matches_topology() -> Result<()> {
    let compose = Compose::load()?;
    let topology = Topology::load()?;
    let postgres = compose.service("postgres")?;

    ensure!(
        postgres.image()?.starts_with("postgres:15"),
        "postgres should run PostgreSQL 15, runs {}",
        postgres.image()?
    );

    let command = postgres.words("command")?;
    let settings: BTreeMap<&str, &str> = command
        .windows(2)
        .filter(|w| w[0] == "-c")
        .filter_map(|w| w[1].split_once('='))
        .collect();
    ensure!(
        settings.get("wal_level") == Some(&"logical"),
        "postgres must run with -c wal_level=logical for Debezium (command: {command:?})"
    );
    // The local stack's cap on the WAL a slot may hold back, the same here.
    let stack = read_repo_file("stack/stack.sh")?;
    let keep = stack
        .lines()
        .find_map(|line| line.strip_prefix("max_slot_wal_keep_size = "))
        .map(|value| value.trim_matches('\''))
        .context("stack/stack.sh sets no max_slot_wal_keep_size")?;
    ensure!(
        settings.get("max_slot_wal_keep_size") == Some(&keep),
        "postgres should run with -c max_slot_wal_keep_size={keep} as the local stack does \
         (command: {command:?})"
    );
    for key in ["max_wal_senders", "max_replication_slots"] {
        let value: u32 = settings
            .get(key)
            .with_context(|| format!("postgres command does not set -c {key}"))?
            .parse()
            .with_context(|| format!("postgres -c {key}"))?;
        ensure!(
            value >= 1,
            "postgres -c {key}={value} leaves no room for Debezium"
        );
    }

    let env = postgres.environment()?;
    for key in [
        "POSTGRES_DB",
        "POSTGRES_APP_USER",
        "POSTGRES_APP_PASSWORD",
        "POSTGRES_REPLICATION_USER",
        "POSTGRES_REPLICATION_PASSWORD",
        "DEBEZIUM_PUBLICATION_NAME",
    ] {
        let want = topology.get(key)?;
        let got = env
            .get(key)
            .with_context(|| format!("postgres does not set {key}"))?;
        ensure!(
            got == want,
            "postgres: {key} is {got:?}, topology.env says {want:?}"
        );
    }
    ensure!(
        env.get("POSTGRES_HOST_AUTH_METHOD").map(String::as_str) == Some("scram-sha-256"),
        "postgres should require scram-sha-256 passwords over TCP"
    );

    let init = postgres.bind_mount_of("stack/docker/postgres-init.sh")?;
    let superuser = env.get("POSTGRES_USER").map_or("postgres", String::as_str);
    let script = read_repo_file("stack/docker/postgres-init.sh")?;
    ensure!(
        script.contains("all    reject") && script.contains("replication    %s    all    reject"),
        "stack/docker/postgres-init.sh should reject the superuser ({superuser}) over TCP"
    );
    ensure!(
        init.target.starts_with("/docker-entrypoint-initdb.d/") && init.target.ends_with(".sh"),
        "postgres-init.sh should be mounted as a .sh file in /docker-entrypoint-initdb.d, is at {}",
        init.target
    );
    let sql_dir = env
        .get("CDC_INIT_SQL_DIR")
        .context("postgres does not set CDC_INIT_SQL_DIR for postgres-init.sh")?;
    for source in [
        "stack/postgres-roles.sql",
        "postgres-schema.sql",
        "stack/postgres-replication.sql",
    ] {
        let mount = postgres.bind_mount_of(source)?;
        let file = Path::new(source)
            .file_name()
            .and_then(|f| f.to_str())
            .with_context(|| format!("file name of {source}"))?;
        ensure!(mount.read_only, "postgres should mount {source} read-only");
        ensure!(
            mount.target == format!("{sql_dir}/{file}"),
            "postgres mounts {source} at {}, postgres-init.sh reads {sql_dir}/{file}",
            mount.target
        );
        ensure!(
            !mount.target.starts_with("/docker-entrypoint-initdb.d"),
            "{source} must not be in /docker-entrypoint-initdb.d (the image would run it itself, \
             without its psql variables)"
        );
        ensure!(
            script.contains(file),
            "stack/docker/postgres-init.sh never applies {file}"
        );
    }
    ensure!(
        postgres.healthcheck()?.contains("pg_isready"),
        "postgres healthcheck should use pg_isready"
    );
    Ok(())
}

#[test]
fn cassandra_matches_topology() -> Result<()> {
    let compose = Compose::load()?;
    let topology = Topology::load()?;
    let cluster_name = topology.get("CASSANDRA_CLUSTER_NAME")?;
    let keyspace = topology.get("CASSANDRA_KEYSPACE")?;
    let rf = topology.get("CASSANDRA_REPLICATION_FACTOR")?;

    for (i, name) in CASSANDRA_NODES.into_iter().enumerate() {
        let node = compose.service(name)?;
        ensure!(
            node.image()?.starts_with("cassandra:5.0"),
            "`{name}` should run Cassandra 5.0, runs {}",
            node.image()?
        );
        // Drivers on the host are told the address the node is published on.
        let address = topology
            .get("CASSANDRA_ADDRESSES")?
            .split_whitespace()
            .nth(i)
            .with_context(|| {
                format!("topology.env CASSANDRA_ADDRESSES has no address for {name}")
            })?;
        let expectations = [
            ("CASSANDRA_CLUSTER_NAME", cluster_name),
            ("CASSANDRA_ENDPOINT_SNITCH", "SimpleSnitch"),
            ("CASSANDRA_SEEDS", CASSANDRA_NODES[0]),
            ("CASSANDRA_BROADCAST_RPC_ADDRESS", address),
        ];
        for (key, want) in expectations {
            let got = node.env(key)?;
            ensure!(got == want, "`{name}`: {key} is {got:?}, expected {want:?}");
        }
        // cassandra-env.sh wants both or neither.
        node.env("MAX_HEAP_SIZE")?;
        node.env("HEAP_NEWSIZE")?;
        let health = node.healthcheck()?;
        ensure!(
            health.contains("cqlsh") || health.contains("nodetool"),
            "`{name}` healthcheck should use cqlsh or nodetool, is {health:?}"
        );
        // Nodes join one at a time.
        if let Some(previous) = i.checked_sub(1).map(|p| CASSANDRA_NODES[p]) {
            let deps = node.depends_on()?;
            ensure!(
                deps.get(previous).map(String::as_str) == Some("service_healthy"),
                "`{name}` should start once `{previous}` is healthy (depends_on: {deps:?})"
            );
        }
    }

    let init = compose.service("cassandra-init")?;
    let deps = init.depends_on()?;
    for node in CASSANDRA_NODES {
        ensure!(
            deps.get(node).map(String::as_str) == Some("service_healthy"),
            "cassandra-init should wait for `{node}` to be healthy (depends_on: {deps:?})"
        );
    }
    let schema_mount = init.bind_mount_of("cassandra-schema.cql")?;
    ensure!(
        init.env("CASSANDRA_SCHEMA")? == schema_mount.target,
        "cassandra-init applies {} but mounts cassandra-schema.cql at {}",
        init.env("CASSANDRA_SCHEMA")?,
        schema_mount.target
    );
    ensure!(
        init.env("CASSANDRA_KEYSPACE")? == keyspace,
        "cassandra-init should check keyspace {keyspace}"
    );
    let hosts = init.env("CASSANDRA_HOSTS")?;
    ensure!(
        hosts.split_whitespace().next() == Some(CASSANDRA_NODES[0]),
        "cassandra-init should apply the schema through {}, CASSANDRA_HOSTS is {hosts:?}",
        CASSANDRA_NODES[0]
    );

    // The keyspace the schema creates is topology.env's, replicated as topology.env says, which
    // the cluster has enough nodes for.
    let schema: String = read_repo_file("cassandra-schema.cql")?
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    ensure!(
        schema.contains(&format!(
            "createkeyspaceifnotexists{}",
            keyspace.to_lowercase()
        )),
        "cassandra-schema.cql does not create keyspace {keyspace}"
    );
    ensure!(
        schema.contains(&format!("'replication_factor':{rf}")),
        "cassandra-schema.cql should replicate {keyspace} {rf} times (topology.env)"
    );
    let rf: usize = rf
        .parse()
        .context("topology.env CASSANDRA_REPLICATION_FACTOR")?;
    ensure!(
        rf <= CASSANDRA_NODES.len(),
        "replication factor {rf} needs more than the {} Cassandra nodes",
        CASSANDRA_NODES.len()
    );
    Ok(())
}

#[test]
fn mounts_exist_and_data_lives_in_named_volumes() -> Result<()> {
    let compose = Compose::load()?;
    let declared = compose.declared_volumes()?;
    let root = repo_root();

    for name in compose.service_names()? {
        let service = compose.service(&name)?;
        for mount in service.mounts()? {
            if mount.is_bind() {
                ensure!(
                    mount.source.starts_with("./"),
                    "`{name}` bind-mounts {}: use a path relative to the repository",
                    mount.source
                );
                let path = root.join(normalize_source(&mount.source));
                ensure!(
                    path.exists(),
                    "`{name}` bind-mounts {}, which does not exist",
                    mount.source
                );
                ensure!(
                    mount.read_only,
                    "`{name}` should bind-mount {} read-only",
                    mount.source
                );
            } else {
                ensure!(
                    declared.contains(&mount.source),
                    "`{name}` uses volume {} which the top-level `volumes` does not declare",
                    mount.source
                );
            }
        }
    }

    let data_dirs = BROKERS
        .into_iter()
        .map(|b| (b, "/var/lib/kafka/data"))
        .chain([("postgres", "/var/lib/postgresql/data")])
        .chain(
            CASSANDRA_NODES
                .into_iter()
                .map(|c| (c, "/var/lib/cassandra")),
        );
    for (name, target) in data_dirs {
        let service = compose.service(name)?;
        ensure!(
            service
                .mounts()?
                .iter()
                .any(|m| !m.is_bind() && m.target == target),
            "`{name}` should keep {target} in a named volume"
        );
    }
    let broker = compose.service(BROKERS[0])?;
    ensure!(
        broker.env("KAFKA_LOG_DIRS")? == "/var/lib/kafka/data",
        "the brokers' KAFKA_LOG_DIRS should be their volume, /var/lib/kafka/data"
    );
    Ok(())
}

#[test]
fn topology_parser_reads_values_with_spaces() -> Result<()> {
    let topology = Topology::parse("# comment\n\nA=1 2 3\nB=x=y\n")?;
    ensure!(topology.list("A")? == ["1", "2", "3"], "A: {topology:?}");
    ensure!(topology.get("B")? == "x=y", "B: {topology:?}");
    ensure!(
        Topology::parse("A=1\nA=2\n").is_err(),
        "duplicate keys must be refused"
    );
    ensure!(
        Topology::parse("not a line\n").is_err(),
        "lines without `=` must be refused"
    );
    Ok(())
}
