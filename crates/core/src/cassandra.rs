//! The Cassandra side of the pipeline: connecting, applying `cassandra-schema.cql`, and the
//! prepared statements cdcconsumer writes with.
//!
//! Every write and delete carries `USING TIMESTAMP <source LSN>`: a change's position in
//! PostgreSQL's write-ahead log. Changes of one row are logged in commit order (a row lock orders
//! concurrent writers), so the highest LSN is the newest state, and Cassandra's
//! last-write-wins-by-timestamp makes any replay, duplicate or reordering converge to it — no
//! lightweight transactions needed. Consequences: `WRITETIME(col)` reads as the LSN, a write made
//! by another client with a wall-clock timestamp would always win, and a freshly initialised
//! PostgreSQL cluster (whose LSNs start low again) needs empty tables here.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::{CqlDecimal, MaybeUnset};
use uuid::Uuid;

use crate::debezium::Field;
use crate::retry::Classify;

/// The keyspace and tables, applied at start (idempotent).
pub const SCHEMA: &str = include_str!("../../../cassandra-schema.cql");

/// A column value to write: [`Field::Unavailable`] (an unchanged TOAST column) leaves the stored
/// cell as it is, [`Field::Null`] writes a null.
pub type Col<T> = Field<T>;

fn bind<T>(col: &Col<T>) -> MaybeUnset<Option<&T>> {
    match col {
        Field::Unavailable => MaybeUnset::Unset,
        Field::Null => MaybeUnset::Set(None),
        Field::Value(v) => MaybeUnset::Set(Some(v)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CassandraError {
    #[error("cannot connect to Cassandra: {0}")]
    Connect(#[from] NewSessionError),
    #[error("cannot prepare a statement: {0}")]
    Prepare(#[from] PrepareError),
    #[error("Cassandra request failed: {0}")]
    Execute(#[from] ExecutionError),
    #[error("Cassandra query failed: {0}")]
    Page(#[from] scylla::errors::PagerExecutionError),
    #[error("reading rows from Cassandra failed: {0}")]
    Read(String),
    #[error("Cassandra did not reach schema agreement: {0}")]
    Schema(String),
}

impl Classify for CassandraError {
    /// Timeouts, unavailable replicas, overload, broken connections and schema disagreements pass;
    /// a statement Cassandra calls invalid, or a value that cannot be serialised, does not.
    fn is_transient(&self) -> bool {
        match self {
            Self::Execute(ExecutionError::BadQuery(_)) => false,
            Self::Execute(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                db,
                _,
            ))) => !matches!(
                db,
                DbError::SyntaxError
                    | DbError::Invalid
                    | DbError::Unauthorized
                    | DbError::ConfigError
                    | DbError::AlreadyExists { .. }
                    | DbError::FunctionFailure { .. }
            ),
            Self::Execute(ExecutionError::LastAttemptError(
                RequestAttemptError::SerializationError(_),
            )) => false,
            _ => true,
        }
    }
}

/// Where the Cassandra cluster is and how to write to it.
#[derive(Debug, Clone, clap::Args)]
pub struct CassandraArgs {
    /// Contact points, comma-separated host:port (any of the cluster's nodes).
    #[arg(
        long,
        env = "CASSANDRA_NODES",
        default_value = "127.0.0.1:9042,127.0.0.2:9043,127.0.0.3:9044",
        value_delimiter = ','
    )]
    pub cassandra_nodes: Vec<String>,
    #[arg(long, env = "CASSANDRA_KEYSPACE", default_value = "cdc_keyspace")]
    pub keyspace: String,
    /// Consistency level of every write and read: one, quorum, all, local_quorum, …
    #[arg(long, env = "CASSANDRA_CONSISTENCY", default_value = "quorum", value_parser = parse_consistency)]
    pub consistency: Consistency,
}

/// Parses `one`, `quorum`, `all`, `local_quorum`, … (case-insensitive).
pub fn parse_consistency(text: &str) -> Result<Consistency, String> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => return Err(format!("unknown consistency level `{other}`")),
    })
}

/// Opens a session to `nodes` (`host:port`, any of the cluster's nodes).
pub async fn connect(nodes: &[String]) -> Result<Session, CassandraError> {
    let mut builder = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(Duration::from_secs(10));
    if let Some(translator) = port_translator(nodes) {
        builder = builder.address_translator(Arc::new(translator));
    }
    Ok(builder.build().await?)
}

/// Nodes that share one host but listen on different native ports (the local stack: 127.0.0.1:9042,
/// 127.0.0.2:9043, 127.0.0.3:9044) are announced by `system.peers` with their address only, and the
/// driver assumes the port of the node it asked — so it would reach just that node. When the contact
/// points are addresses with differing ports, map every (address, any of those ports) to the node's
/// own port; every node must then be listed. `None` in the usual case of one port for all.
fn port_translator(nodes: &[String]) -> Option<HashMap<SocketAddr, SocketAddr>> {
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

/// The statements of a CQL script: `--` comment lines dropped first (they may contain `;`), then
/// split at `;`.
fn statements(script: &str) -> Vec<String> {
    let code: Vec<&str> = script
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .map(|statement| statement.trim().to_owned())
        .filter(|statement| !statement.is_empty())
        .collect()
}

/// Applies [`SCHEMA`] with the keyspace renamed to `keyspace`, and waits for schema agreement.
pub async fn apply_schema(session: &Session, keyspace: &str) -> Result<(), CassandraError> {
    for text in statements(SCHEMA) {
        let text = text.replace("cdc_keyspace", keyspace);
        let mut statement = Statement::new(text);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        session.query_unpaged(statement, ()).await?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| CassandraError::Schema(e.to_string()))?;
    Ok(())
}

/// A users row as cdcconsumer writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub id: Uuid,
    pub name: Col<String>,
    pub email: Col<String>,
    pub created_at: Col<DateTime<Utc>>,
    pub updated_at: Col<DateTime<Utc>>,
    pub deleted_at: Col<DateTime<Utc>>,
    pub version: Col<i64>,
}

/// An orders row (also the orders_by_user row, keyed by `user_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub product: Col<String>,
    pub quantity: Col<i32>,
    pub amount: Col<Decimal>,
    pub status: Col<String>,
    pub order_date: Col<NaiveDate>,
    pub created_at: Col<DateTime<Utc>>,
    pub updated_at: Col<DateTime<Utc>>,
    pub deleted_at: Col<DateTime<Utc>>,
    pub version: Col<i64>,
}

/// The table a change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Users,
    Orders,
}

impl Table {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Orders => "orders",
        }
    }
}

/// One Cassandra mutation, stamped with the source position of the change that caused it.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    UpsertUser(UserRow),
    DeleteUser(Uuid),
    UpsertOrder(OrderRow),
    DeleteOrder(Uuid),
    UpsertOrderByUser(OrderRow),
    DeleteOrderByUser { user_id: Uuid, order_id: Uuid },
}

impl Write {
    /// The table whose truncation makes this write obsolete.
    pub const fn table(&self) -> Table {
        match self {
            Self::UpsertUser(_) | Self::DeleteUser(_) => Table::Users,
            _ => Table::Orders,
        }
    }
}

fn decimal(value: &Decimal) -> CqlDecimal {
    let mantissa = value.mantissa().to_be_bytes();
    // Shortest two's-complement form: drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start + 1 < mantissa.len() {
        let (byte, next) = (mantissa[start], mantissa[start + 1]);
        let redundant = (byte == 0x00 && next & 0x80 == 0) || (byte == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    // rust_decimal's scale is at most 28.
    let scale = i32::try_from(value.scale()).unwrap_or(i32::MAX);
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&mantissa[start..], scale)
}

fn map_col<T, U>(col: &Col<T>, f: impl Fn(&T) -> U) -> Col<U> {
    match col {
        Field::Unavailable => Field::Unavailable,
        Field::Null => Field::Null,
        Field::Value(v) => Field::Value(f(v)),
    }
}

/// The bound values of an orders or orders_by_user insert: the two key columns in the table's
/// order, then the order's columns, then the write timestamp.
#[allow(clippy::type_complexity)]
fn order_values<'a>(
    keys: (Uuid, Uuid),
    o: &'a OrderRow,
    amount: &'a Col<CqlDecimal>,
    ts: i64,
) -> (
    Uuid,
    Uuid,
    MaybeUnset<Option<&'a String>>,
    MaybeUnset<Option<&'a i32>>,
    MaybeUnset<Option<&'a CqlDecimal>>,
    MaybeUnset<Option<&'a String>>,
    MaybeUnset<Option<&'a NaiveDate>>,
    MaybeUnset<Option<&'a DateTime<Utc>>>,
    MaybeUnset<Option<&'a DateTime<Utc>>>,
    MaybeUnset<Option<&'a DateTime<Utc>>>,
    MaybeUnset<Option<&'a i64>>,
    i64,
) {
    (
        keys.0,
        keys.1,
        bind(&o.product),
        bind(&o.quantity),
        bind(amount),
        bind(&o.status),
        bind(&o.order_date),
        bind(&o.created_at),
        bind(&o.updated_at),
        bind(&o.deleted_at),
        bind(&o.version),
        ts,
    )
}

/// The prepared statements of the sink, at one consistency level.
#[derive(Debug, Clone)]
pub struct Statements {
    upsert_user: PreparedStatement,
    delete_user: PreparedStatement,
    upsert_order: PreparedStatement,
    delete_order: PreparedStatement,
    upsert_order_by_user: PreparedStatement,
    delete_order_by_user: PreparedStatement,
    set_truncation: PreparedStatement,
    truncations: PreparedStatement,
    user_ids: PreparedStatement,
    order_ids: PreparedStatement,
    order_by_user_keys: PreparedStatement,
}

const ORDER_COLUMNS: &str =
    "product, quantity, amount, status, order_date, created_at, updated_at, deleted_at, version";

impl Statements {
    pub async fn prepare(
        session: &Session,
        keyspace: &str,
        consistency: Consistency,
    ) -> Result<Self, CassandraError> {
        let prepare = |text: String| async move {
            let mut statement = session.prepare(text).await?;
            statement.set_consistency(consistency);
            // Every statement carries its own timestamp: running it twice is running it once.
            statement.set_is_idempotent(true);
            statement.set_request_timeout(Some(Duration::from_secs(10)));
            Ok::<_, CassandraError>(statement)
        };
        Ok(Self {
            upsert_user: prepare(format!(
                "INSERT INTO {keyspace}.users (id, name, email, created_at, updated_at, deleted_at, version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            delete_user: prepare(format!(
                "DELETE FROM {keyspace}.users USING TIMESTAMP ? WHERE id = ?"
            ))
            .await?,
            upsert_order: prepare(format!(
                "INSERT INTO {keyspace}.orders (id, user_id, {ORDER_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            delete_order: prepare(format!(
                "DELETE FROM {keyspace}.orders USING TIMESTAMP ? WHERE id = ?"
            ))
            .await?,
            upsert_order_by_user: prepare(format!(
                "INSERT INTO {keyspace}.orders_by_user (user_id, order_id, {ORDER_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            delete_order_by_user: prepare(format!(
                "DELETE FROM {keyspace}.orders_by_user USING TIMESTAMP ? WHERE user_id = ? AND order_id = ?"
            ))
            .await?,
            set_truncation: prepare(format!(
                "INSERT INTO {keyspace}.truncations (table_name, lsn) VALUES (?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            truncations: prepare(format!(
                "SELECT table_name, lsn FROM {keyspace}.truncations"
            ))
            .await?,
            user_ids: prepare(format!(
                "SELECT id FROM {keyspace}.users WHERE token(id) >= ? AND token(id) <= ?"
            ))
            .await?,
            order_ids: prepare(format!(
                "SELECT id FROM {keyspace}.orders WHERE token(id) >= ? AND token(id) <= ?"
            ))
            .await?,
            order_by_user_keys: prepare(format!(
                "SELECT user_id, order_id FROM {keyspace}.orders_by_user \
                 WHERE token(user_id) >= ? AND token(user_id) <= ?"
            ))
            .await?,
        })
    }

    async fn run(
        session: &Session,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<(), CassandraError> {
        session.execute_unpaged(statement, values).await?;
        Ok(())
    }

    /// Executes `write` with write timestamp `ts`.
    pub async fn execute(
        &self,
        session: &Session,
        write: &Write,
        ts: i64,
    ) -> Result<(), CassandraError> {
        match write {
            Write::UpsertUser(u) => {
                Self::run(
                    session,
                    &self.upsert_user,
                    (
                        u.id,
                        bind(&u.name),
                        bind(&u.email),
                        bind(&u.created_at),
                        bind(&u.updated_at),
                        bind(&u.deleted_at),
                        bind(&u.version),
                        ts,
                    ),
                )
                .await
            }
            Write::DeleteUser(id) => Self::run(session, &self.delete_user, (ts, id)).await,
            Write::UpsertOrder(o) => {
                let amount = map_col(&o.amount, decimal);
                Self::run(
                    session,
                    &self.upsert_order,
                    order_values((o.id, o.user_id), o, &amount, ts),
                )
                .await
            }
            Write::DeleteOrder(id) => Self::run(session, &self.delete_order, (ts, id)).await,
            Write::UpsertOrderByUser(o) => {
                let amount = map_col(&o.amount, decimal);
                Self::run(
                    session,
                    &self.upsert_order_by_user,
                    order_values((o.user_id, o.id), o, &amount, ts),
                )
                .await
            }
            Write::DeleteOrderByUser { user_id, order_id } => {
                Self::run(session, &self.delete_order_by_user, (ts, user_id, order_id)).await
            }
        }
    }

    /// Records that `table` was truncated at `lsn` (the highest such LSN wins).
    pub async fn set_truncation(
        &self,
        session: &Session,
        table: Table,
        lsn: i64,
    ) -> Result<(), CassandraError> {
        Self::run(session, &self.set_truncation, (table.name(), lsn, lsn)).await
    }

    /// The LSN of the latest truncation of each table (0 if never truncated).
    pub async fn truncations(&self, session: &Session) -> Result<Truncations, CassandraError> {
        let mut rows = session
            .execute_iter(self.truncations.clone(), ())
            .await?
            .rows_stream::<(String, Option<i64>)>()
            .map_err(|e| CassandraError::Read(e.to_string()))?;
        let mut found = Truncations::default();
        while let Some((name, lsn)) = rows
            .try_next()
            .await
            .map_err(|e| CassandraError::Read(e.to_string()))?
        {
            let lsn = lsn.unwrap_or(0);
            match name.as_str() {
                "users" => found.users = lsn,
                "orders" => found.orders = lsn,
                _ => {}
            }
        }
        Ok(found)
    }

    /// Every row of `table` (orders_by_user included for orders) as a delete to run. The table is
    /// read in [`SCAN_SLICES`] token ranges, so that no single read walks past more tombstones than
    /// Cassandra allows (earlier deletes and truncations leave many).
    pub async fn all_rows(
        &self,
        session: &Session,
        table: Table,
    ) -> Result<Vec<Write>, CassandraError> {
        let read = |e: scylla::errors::NextRowError| CassandraError::Read(e.to_string());
        let type_check = |e: scylla::errors::TypeCheckError| CassandraError::Read(e.to_string());
        let mut deletes = Vec::new();
        for (low, high) in token_slices(SCAN_SLICES) {
            match table {
                Table::Users => {
                    let mut rows = session
                        .execute_iter(self.user_ids.clone(), (low, high))
                        .await?
                        .rows_stream::<(Uuid,)>()
                        .map_err(type_check)?;
                    while let Some((id,)) = rows.try_next().await.map_err(read)? {
                        deletes.push(Write::DeleteUser(id));
                    }
                }
                Table::Orders => {
                    let mut rows = session
                        .execute_iter(self.order_ids.clone(), (low, high))
                        .await?
                        .rows_stream::<(Uuid,)>()
                        .map_err(type_check)?;
                    while let Some((id,)) = rows.try_next().await.map_err(read)? {
                        deletes.push(Write::DeleteOrder(id));
                    }
                    let mut rows = session
                        .execute_iter(self.order_by_user_keys.clone(), (low, high))
                        .await?
                        .rows_stream::<(Uuid, Uuid)>()
                        .map_err(type_check)?;
                    while let Some((user_id, order_id)) = rows.try_next().await.map_err(read)? {
                        deletes.push(Write::DeleteOrderByUser { user_id, order_id });
                    }
                }
            }
        }
        Ok(deletes)
    }
}

/// Token ranges a full-table scan is split into.
pub const SCAN_SLICES: u32 = 256;

/// `n` contiguous, inclusive ranges covering the Murmur3 token ring (`i64::MIN..=i64::MAX`).
pub fn token_slices(n: u32) -> Vec<(i64, i64)> {
    let n = i128::from(n.max(1));
    let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
    let width = (max - min + 1) / n;
    (0..n)
        .map(|i| {
            let low = min + i * width;
            let high = if i == n - 1 { max } else { low + width - 1 };
            // Both ends lie within i64 by construction.
            (
                i64::try_from(low).unwrap_or(i64::MIN),
                i64::try_from(high).unwrap_or(i64::MAX),
            )
        })
        .collect()
}

/// The LSN of each table's latest truncation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncations {
    pub users: i64,
    pub orders: i64,
}

impl Truncations {
    pub const fn of(&self, table: Table) -> i64 {
        match table {
            Table::Users => self.users,
            Table::Orders => self.orders,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn decimals_keep_value_and_scale() {
        for text in [
            "0",
            "0.00",
            "12.50",
            "-12.50",
            "127",
            "128",
            "-128",
            "-129",
            "9999999999.99",
        ] {
            let value = Decimal::from_str(text).expect("decimal");
            let encoded = decimal(&value);
            let (bytes, scale) = encoded.as_signed_be_bytes_slice_and_exponent();
            let mut wide = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                [0xffu8; 16]
            } else {
                [0u8; 16]
            };
            wide[16 - bytes.len()..].copy_from_slice(bytes);
            let back = Decimal::from_i128_with_scale(
                i128::from_be_bytes(wide),
                u32::try_from(scale).expect("scale"),
            );
            assert_eq!(back.to_string(), value.to_string(), "{text}");
            assert!(bytes.len() <= 8, "{text}: {bytes:?}");
        }
    }

    #[test]
    fn schema_script_splits_into_statements() {
        let all = statements(SCHEMA);
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS cdc_keyspace"));
        assert!(all.iter().all(|s| !s.contains("--")));
        assert!(all.iter().any(|s| s.contains("orders_by_user")));
        assert!(all.iter().any(|s| s.contains("truncations")));
    }

    #[test]
    fn nodes_on_one_host_with_their_own_ports_are_reachable() {
        let nodes: Vec<String> = ["127.0.0.1:9042", "127.0.0.2:9043", "127.0.0.3:9044"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let rules = port_translator(&nodes).expect("rules");
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
        assert!(port_translator(&same_port).is_none());
        assert!(
            port_translator(&["cassandra1:9042".to_owned(), "cassandra2:9043".to_owned()])
                .is_none()
        );
    }

    #[test]
    fn token_slices_cover_the_ring_without_gaps() {
        for n in [1, 2, 3, 256] {
            let slices = token_slices(n);
            assert_eq!(slices.len(), n as usize);
            assert_eq!(slices[0].0, i64::MIN);
            assert_eq!(slices[slices.len() - 1].1, i64::MAX);
            for pair in slices.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0, "{n}");
                assert!(pair[0].0 <= pair[0].1);
            }
        }
    }

    #[test]
    fn consistency_names() {
        assert_eq!(parse_consistency("QUORUM"), Ok(Consistency::Quorum));
        assert_eq!(parse_consistency("all"), Ok(Consistency::All));
        assert!(parse_consistency("most").is_err());
    }
}
