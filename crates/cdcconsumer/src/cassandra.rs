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

use std::borrow::{Borrow, Cow};
use std::sync::Arc;
use std::time::Duration;

pub use cdc_core::cassandra::{AccessError, CassandraAccess};
use cdc_core::debezium::Field;
use cdc_core::retry::Classify;
use cdc_core::tables::{self, Table};
use futures::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, MaybeUnset, Row};

/// How long one write or read may take before it counts as timed out (and is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most value bytes one change's writes may carry and still go in one batch: under
/// Cassandra's default `batch_size_warn_threshold` (5 KiB), far under its failure threshold
/// (50 KiB). A change with large values gains nothing from a batch, and would make every node log
/// a warning or refuse it.
pub const BATCH_LIMIT: usize = 4 * 1024;

/// The most writes (rows, so partitions at most) one request may carry when it joins several
/// changes: Cassandra warns, to the client and in its log, about an unlogged batch over more
/// partitions (`unlogged_batch_across_partitions_warn_threshold`, 10 by default).
pub const GROUP_WRITES: usize = 10;

/// The keyspace and tables, applied at start (idempotent).
pub const SCHEMA: &str = include_str!("../../../cassandra-schema.cql");

/// A column value to write: [`Field::Unavailable`] (an unchanged TOAST column) leaves the stored
/// cell as it is, [`Field::Null`] writes a null.
pub type Col = Field<CqlValue>;

/// A column added to a captured table after the description ([`crate::columns`]), and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraCell {
    pub name: Arc<str>,
    pub ty: tables::ColumnType,
    pub value: Col,
}

/// One Cassandra mutation, stamped with the source position of the change that caused it.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Every column of `table`, in the description's order, and the added columns the change
    /// carried.
    Upsert {
        table: &'static Table,
        cells: Vec<Col>,
        extra: Vec<ExtraCell>,
    },
    /// The row of `table` with this key (the key columns' values, in key order).
    Delete {
        table: &'static Table,
        key: Vec<CqlValue>,
    },
}

impl Write {
    /// The mirrored table the mutation goes to.
    pub const fn table(&self) -> &'static Table {
        match self {
            Self::Upsert { table, .. } | Self::Delete { table, .. } => table,
        }
    }

    /// The captured table whose truncation makes this write obsolete.
    pub fn source(&self) -> &'static Table {
        tables::source_of(self.table())
    }

    /// The key values of the row the write touches.
    pub fn key(&self) -> Vec<CqlValue> {
        match self {
            Self::Delete { key, .. } => key.clone(),
            Self::Upsert { table, cells, .. } => table
                .key
                .iter()
                .filter_map(|name| table.position(name))
                .filter_map(|at| match &cells[at] {
                    Field::Value(value) => Some(value.clone()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// The key cells of the row the write touches, in key order, without copying them (`None` for
    /// a key cell an upsert lacks, which planning never leaves).
    fn key_cells(&self) -> impl Iterator<Item = Option<&CqlValue>> + '_ {
        let (upsert, delete) = match self {
            Self::Upsert { table, cells, .. } => (Some((table, cells)), None),
            Self::Delete { key, .. } => (None, Some(key)),
        };
        let upsert = upsert.into_iter().flat_map(|(table, cells)| {
            table.key.iter().map(
                |name| match table.position(name).and_then(|at| cells.get(at)) {
                    Some(Field::Value(value)) => Some(value),
                    _ => None,
                },
            )
        });
        let delete = delete.into_iter().flatten().map(Some);
        upsert.chain(delete)
    }

    /// Whether both writes touch the same row of the same table.
    pub fn same_row(&self, other: &Self) -> bool {
        std::ptr::eq(self.table(), other.table()) && self.key_cells().eq(other.key_cells())
    }

    /// Whether this write, given a higher write timestamp than `older`'s, leaves nothing of
    /// `older` visible in Cassandra, so that `older` need not be written at all: the same row,
    /// and either a delete (its row tombstone shadows every older cell) or an upsert that sets
    /// every column `older` sets (no cell left unchanged, every added column of `older` among
    /// its own). An upsert never replaces a delete: the tombstone also hides older cells of
    /// columns the upsert does not know. And this write must be one Cassandra cannot refuse for
    /// its size ([`BATCH_LIMIT`]): `older` is left out only for a write that is sure to land.
    pub fn replaces(&self, older: &Self) -> bool {
        if self.approx_bytes() > BATCH_LIMIT || !self.same_row(older) {
            return false;
        }
        match (self, older) {
            (Self::Delete { .. }, _) => true,
            (Self::Upsert { .. }, Self::Delete { .. }) => false,
            (
                Self::Upsert { cells, extra, .. },
                Self::Upsert {
                    extra: older_extra, ..
                },
            ) => {
                let set = |cell: &Col| !matches!(cell, Field::Unavailable);
                cells.iter().all(set)
                    && older_extra.iter().all(|old| {
                        extra
                            .iter()
                            .any(|new| new.name == old.name && set(&new.value))
                    })
            }
        }
    }

    /// About how many bytes the write's values take on the wire (a fixed 16 for every value that
    /// is not text, bytes or a collection of them): what decides whether it may join a batch.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Self::Delete { key, .. } => key.iter().map(value_bytes).sum(),
            Self::Upsert { cells, extra, .. } => cells
                .iter()
                .chain(extra.iter().map(|e| &e.value))
                .map(|cell| match cell {
                    Field::Value(value) => value_bytes(value),
                    Field::Null | Field::Unavailable => 4,
                })
                .sum(),
        }
    }

    /// The cell of column `name` in an upsert.
    pub fn cell(&self, name: &str) -> Option<&Col> {
        match self {
            Self::Upsert {
                table,
                cells,
                extra,
            } => table
                .position(name)
                .and_then(|at| cells.get(at))
                .or_else(|| extra.iter().find(|e| &*e.name == name).map(|e| &e.value)),
            Self::Delete { .. } => None,
        }
    }
}

/// Whether changes whose writes number `writes` and carry about `bytes` (see
/// [`Write::approx_bytes`]) may go in one request ([`Statements::execute_group`]).
pub const fn fits_in_a_group(writes: usize, bytes: usize) -> bool {
    writes <= GROUP_WRITES && bytes <= BATCH_LIMIT
}

/// Packs `items`, in order, into groups each as large as still fits one request
/// ([`fits_in_a_group`]), `size` giving an item's writes and value bytes; an item too large for a
/// request alone is a group of its own.
pub fn pack_groups<T>(
    items: impl IntoIterator<Item = T>,
    size: impl Fn(&T) -> (usize, usize),
) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut filled = (0, 0);
    for item in items {
        let (writes, bytes) = size(&item);
        let joined = (filled.0 + writes, filled.1 + bytes);
        match groups.last_mut() {
            Some(group) if fits_in_a_group(joined.0, joined.1) => {
                group.push(item);
                filled = joined;
            }
            _ => {
                groups.push(vec![item]);
                filled = (writes, bytes);
            }
        }
    }
    groups
}

/// About how many bytes `value` takes on the wire; see [`Write::approx_bytes`].
fn value_bytes(value: &CqlValue) -> usize {
    match value {
        CqlValue::Text(text) | CqlValue::Ascii(text) => text.len(),
        CqlValue::Blob(bytes) => bytes.len(),
        CqlValue::List(items) | CqlValue::Set(items) => items.iter().map(value_bytes).sum(),
        CqlValue::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| value_bytes(k) + value_bytes(v))
            .sum(),
        _ => 16,
    }
}

/// A cell as a bound value, borrowed (the driver serialises it straight from the write).
fn bind(col: &Col) -> Bound<'_> {
    match col {
        Field::Unavailable => MaybeUnset::Unset,
        Field::Null => MaybeUnset::Set(None),
        Field::Value(v) => MaybeUnset::Set(Some(v)),
    }
}

/// One bound value of a statement.
type Bound<'a> = MaybeUnset<Option<&'a CqlValue>>;

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
    /// A column cannot be added as asked (a name Cassandra cannot take unquoted, or a column of
    /// that name with another type): retrying cannot help.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Access(#[from] AccessError),
}

impl CassandraError {
    /// Whether the value written caused the failure, so that retrying can never help: Cassandra
    /// refuses the mutation (or the batch carrying it) as too large. Everything else — timeouts,
    /// unavailable replicas, overload, broken connections, a missing table or keyspace, missing
    /// permissions — is the cluster's or the operator's, and a record is never parked for it. So is
    /// a value the driver cannot serialise for its column: planning already converted it to the
    /// column's type in the tables' description, so the table in Cassandra differs from it (an
    /// operator's change), which stalls the partition visibly until the table is mended.
    pub fn is_record_fault(&self) -> bool {
        match self {
            Self::Execute(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::Invalid,
                message,
            ))) => message.contains("too large"),
            _ => false,
        }
    }
}

impl Classify for CassandraError {
    /// Everything that is not the written value's own fault may pass, or be fixed while the
    /// partition waits: it is retried, and past the retry budget the worker gives up visibly.
    fn is_transient(&self) -> bool {
        !self.is_record_fault() && !matches!(self, Self::Conflict(_))
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
    /// Keyspace of the mirrored tables: a CQL identifier (a letter, then up to 47 letters,
    /// digits or `_`).
    #[arg(long, env = "CASSANDRA_KEYSPACE", default_value = "cdc_keyspace", value_parser = parse_keyspace)]
    pub keyspace: String,
    /// Consistency level of every write and read: one, quorum, all, local_quorum, …
    #[arg(long, env = "CASSANDRA_CONSISTENCY", default_value = "quorum", value_parser = parse_consistency)]
    pub consistency: Consistency,
    /// Speculative execution: when a write or read (all are idempotent) has no answer after this
    /// many milliseconds, the driver sends it to a second node too and takes the first answer.
    /// 0 (the default) never does.
    #[arg(long, env = "CASSANDRA_SPECULATIVE_AFTER_MS", default_value_t = 0)]
    pub speculative_after_ms: u64,
    #[command(flatten)]
    pub access: CassandraAccess,
}

impl CassandraArgs {
    /// A session to the cluster with these settings (credentials, TLS, speculative execution).
    pub async fn connect(&self) -> Result<Session, CassandraError> {
        let speculative = (self.speculative_after_ms > 0)
            .then(|| Duration::from_millis(self.speculative_after_ms));
        open(&self.cassandra_nodes, &self.access, speculative).await
    }
}

/// A keyspace name Cassandra accepts unquoted: a letter, then letters, digits or `_`, at most 48
/// characters. Refused otherwise, since it is spliced into CQL.
pub fn parse_keyspace(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text.len() <= 48;
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a keyspace name: a letter, then letters, digits or `_`, at most 48 characters"
        ))
    }
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

/// The name [`parse_consistency`] reads back: `quorum`, `local_quorum`, …
pub fn consistency_name(consistency: Consistency) -> &'static str {
    match consistency {
        Consistency::Any => "any",
        Consistency::One => "one",
        Consistency::Two => "two",
        Consistency::Three => "three",
        Consistency::Quorum => "quorum",
        Consistency::All => "all",
        Consistency::LocalQuorum => "local_quorum",
        Consistency::EachQuorum => "each_quorum",
        Consistency::LocalOne => "local_one",
        Consistency::Serial => "serial",
        Consistency::LocalSerial => "local_serial",
    }
}

/// Opens a session to `nodes` (`host:port`, any of the cluster's nodes), plaintext and without
/// authentication.
pub async fn connect(nodes: &[String]) -> Result<Session, CassandraError> {
    open(nodes, &CassandraAccess::default(), None).await
}

/// Opens a session to `nodes` with `access`'s credentials, TLS and datacenter preference, and
/// speculative execution when `speculative_after` is set (every statement is idempotent).
async fn open(
    nodes: &[String],
    access: &CassandraAccess,
    speculative_after: Option<Duration>,
) -> Result<Session, CassandraError> {
    let mut builder = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(Duration::from_secs(10));
    if let Some(translator) = cdc_core::config::cassandra_port_translations(nodes) {
        builder = builder.address_translator(Arc::new(translator));
    }
    if let Some(retry_interval) = speculative_after {
        let policy = SimpleSpeculativeExecutionPolicy {
            max_retry_count: 1,
            retry_interval,
        };
        let profile = ExecutionProfile::builder()
            .speculative_execution_policy(Some(Arc::new(policy)))
            .build();
        builder = builder.default_execution_profile_handle(profile.into_handle());
    }
    let builder = access.apply(builder)?;
    Ok(builder.build().await?)
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

/// How often one schema statement is tried while its coordinator has not yet learned the
/// keyspace it names.
const SCHEMA_ATTEMPTS: u32 = 10;

/// Whether `error` is a coordinator not knowing a keyspace or table yet: a keyspace just created
/// elsewhere (another member starting, an operator) that has not reached this node; `CREATE …
/// IF NOT EXISTS` on a node that knows it is a no-op, so the driver had no schema change to wait
/// for.
fn not_yet_known(error: &ExecutionError) -> bool {
    matches!(
        error,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, message))
            if message.contains("doesn't exist") || message.contains("does not exist")
    )
}

/// Applies [`SCHEMA`] with the keyspace renamed to `keyspace`, and waits for schema agreement.
/// A statement whose coordinator does not know the keyspace yet is tried again once the
/// cluster agrees on its schema (at most [`SCHEMA_ATTEMPTS`] times, a second apart).
pub async fn apply_schema(session: &Session, keyspace: &str) -> Result<(), CassandraError> {
    for text in statements(SCHEMA) {
        let text = text.replace("cdc_keyspace", keyspace);
        let mut statement = Statement::new(text);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        let mut attempt = 1;
        loop {
            match session.query_unpaged(statement.clone(), ()).await {
                Ok(_) => break,
                Err(error) if attempt < SCHEMA_ATTEMPTS && not_yet_known(&error) => {
                    tracing::info!(%error, attempt, "schema not yet known to the coordinator; waiting for agreement");
                    session
                        .await_schema_agreement()
                        .await
                        .map_err(|e| CassandraError::Schema(e.to_string()))?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| CassandraError::Schema(e.to_string()))?;
    Ok(())
}

/// The prepared statements of one mirrored table.
#[derive(Debug, Clone)]
struct TableStatements {
    table: &'static Table,
    upsert: PreparedStatement,
    delete: PreparedStatement,
    /// The key columns of every row in a token range.
    keys: PreparedStatement,
}

/// The prepared statements of the sink, at one consistency level, built from the tables'
/// description: every statement carries `USING TIMESTAMP ?`.
#[derive(Debug, Clone)]
pub struct Statements {
    tables: Vec<TableStatements>,
    keyspace: String,
    consistency: Consistency,
    /// Upserts that also write added columns, by statement text, prepared when first needed.
    with_extras: Arc<std::sync::Mutex<std::collections::HashMap<String, PreparedStatement>>>,
    set_truncation: PreparedStatement,
    truncations: PreparedStatement,
    source_identifier: PreparedStatement,
    set_source_identifier: PreparedStatement,
}

/// `a = ? AND b = ?` over the key columns.
fn key_condition(table: &Table) -> String {
    table
        .key
        .iter()
        .map(|name| format!("{name} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

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
            statement.set_request_timeout(Some(REQUEST_TIMEOUT));
            Ok::<_, CassandraError>(statement)
        };
        let mut prepared = Vec::new();
        for table in tables::MIRRORED {
            let name = table.name;
            let marks = vec!["?"; table.columns.len()].join(", ");
            let partition_key = table.key.first().copied().unwrap_or("id");
            prepared.push(TableStatements {
                table,
                upsert: prepare(format!(
                    "INSERT INTO {keyspace}.{name} ({}) VALUES ({marks}) USING TIMESTAMP ?",
                    table.column_list()
                ))
                .await?,
                delete: prepare(format!(
                    "DELETE FROM {keyspace}.{name} USING TIMESTAMP ? WHERE {}",
                    key_condition(table)
                ))
                .await?,
                keys: prepare(format!(
                    "SELECT {} FROM {keyspace}.{name} \
                     WHERE token({partition_key}) >= ? AND token({partition_key}) <= ?",
                    table.key.join(", ")
                ))
                .await?,
            });
        }
        Ok(Self {
            tables: prepared,
            keyspace: keyspace.to_owned(),
            consistency,
            with_extras: Arc::default(),
            set_truncation: prepare(format!(
                "INSERT INTO {keyspace}.truncations (table_name, lsn) VALUES (?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            truncations: prepare(format!(
                "SELECT table_name, lsn FROM {keyspace}.truncations"
            ))
            .await?,
            source_identifier: prepare(format!(
                "SELECT system_identifier FROM {keyspace}.source WHERE name = 'postgresql'"
            ))
            .await?,
            set_source_identifier: prepare(format!(
                "INSERT INTO {keyspace}.source (name, system_identifier) VALUES ('postgresql', ?)"
            ))
            .await?,
        })
    }

    fn of(&self, table: &Table) -> Option<&TableStatements> {
        self.tables.iter().find(|t| t.table.name == table.name)
    }

    /// Executes `write` with write timestamp `ts`.
    pub async fn execute(
        &self,
        session: &Session,
        write: &Write,
        ts: i64,
    ) -> Result<(), CassandraError> {
        let ts = CqlValue::BigInt(ts);
        let (statement, values) = self.bound(session, write, &ts).await?;
        session.execute_unpaged(statement.as_ref(), values).await?;
        Ok(())
    }

    /// Executes the writes of one change, all with write timestamp `ts`, in as few requests as
    /// is safe: a lone write alone; several small ones in one unlogged batch; several whose values
    /// together pass [`BATCH_LIMIT`] as separate requests, run together. The batch is no promise
    /// of atomicity (the writes touch different partitions, and a timed-out batch is retried
    /// whole, which its timestamps make harmless); it saves a round trip, and the coordinator's
    /// and this client's work per request, for every change that writes more than one row.
    ///
    /// A batch Cassandra refuses for its values (a cluster whose batch limit is set lower than
    /// [`BATCH_LIMIT`]) is sent again as separate writes, so a refusal is only ever a single
    /// write's own.
    pub async fn execute_all<W: Borrow<Write> + Sync>(
        &self,
        session: &Session,
        writes: &[W],
        ts: i64,
    ) -> Result<(), CassandraError> {
        match writes {
            [] => Ok(()),
            [write] => self.execute(session, write.borrow(), ts).await,
            _ if writes
                .iter()
                .map(|w| w.borrow().approx_bytes())
                .sum::<usize>()
                > BATCH_LIMIT =>
            {
                self.execute_each(session, writes, ts).await
            }
            _ => {
                let stamped: Vec<(&Write, i64)> = writes.iter().map(|w| (w.borrow(), ts)).collect();
                match self.execute_batch(session, &stamped).await {
                    Err(error) if error.is_record_fault() => {
                        tracing::debug!(%error, writes = writes.len(), "batch refused; writing its rows one by one");
                        self.execute_each(session, writes, ts).await
                    }
                    other => other,
                }
            }
        }
    }

    /// Executes the writes of several changes, each at its own write timestamp, in one unlogged
    /// batch: the caller keeps them within [`GROUP_WRITES`] and [`BATCH_LIMIT`] (see
    /// [`fits_in_a_group`]). Each write carries its own timestamp, so the order of the writes
    /// inside the request, a partial application or a retry of the whole changes nothing. A
    /// refusal is not split here: the caller writes the changes one by one to learn whose it is.
    pub async fn execute_group(
        &self,
        session: &Session,
        writes: &[(&Write, i64)],
    ) -> Result<(), CassandraError> {
        match writes {
            [] => Ok(()),
            [(write, ts)] => self.execute(session, write, *ts).await,
            _ => self.execute_batch(session, writes).await,
        }
    }

    /// `writes` as separate requests, run together; the first error, if any.
    async fn execute_each<W: Borrow<Write>>(
        &self,
        session: &Session,
        writes: &[W],
        ts: i64,
    ) -> Result<(), CassandraError> {
        futures::future::try_join_all(writes.iter().map(|w| self.execute(session, w.borrow(), ts)))
            .await
            .map(drop)
    }

    /// `writes` in one unlogged batch, each at its timestamp.
    async fn execute_batch(
        &self,
        session: &Session,
        writes: &[(&Write, i64)],
    ) -> Result<(), CassandraError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_consistency(self.consistency);
        batch.set_is_idempotent(true);
        batch.set_request_timeout(Some(REQUEST_TIMEOUT));
        let stamps: Vec<CqlValue> = writes.iter().map(|(_, ts)| CqlValue::BigInt(*ts)).collect();
        let mut values = Vec::with_capacity(writes.len());
        for ((write, _), ts) in writes.iter().zip(&stamps) {
            let (statement, bound) = self.bound(session, write, ts).await?;
            batch.append_statement(statement.into_owned());
            values.push(bound);
        }
        session.batch(&batch, values).await?;
        Ok(())
    }

    /// The prepared statement of `write` and its values, the write timestamp among them.
    async fn bound<'a>(
        &'a self,
        session: &Session,
        write: &'a Write,
        ts: &'a CqlValue,
    ) -> Result<(Cow<'a, PreparedStatement>, Vec<Bound<'a>>), CassandraError> {
        let statements = self.of(write.table()).ok_or_else(|| {
            CassandraError::Read(format!("no statements for {}", write.table().name))
        })?;
        Ok(match write {
            Write::Upsert { cells, extra, .. } => {
                let mut values = Vec::with_capacity(cells.len() + extra.len() + 1);
                values.extend(cells.iter().chain(extra.iter().map(|e| &e.value)).map(bind));
                values.push(MaybeUnset::Set(Some(ts)));
                let statement = if extra.is_empty() {
                    Cow::Borrowed(&statements.upsert)
                } else {
                    Cow::Owned(self.upsert_with(session, write.table(), extra).await?)
                };
                (statement, values)
            }
            Write::Delete { key, .. } => {
                let mut values = Vec::with_capacity(key.len() + 1);
                values.push(MaybeUnset::Set(Some(ts)));
                values.extend(key.iter().map(|v| MaybeUnset::Set(Some(v))));
                (Cow::Borrowed(&statements.delete), values)
            }
        })
    }

    /// The upsert of every column of `table` and the added columns `extra`, in that order.
    async fn upsert_with(
        &self,
        session: &Session,
        table: &Table,
        extra: &[ExtraCell],
    ) -> Result<PreparedStatement, CassandraError> {
        let mut columns = table.column_list();
        for cell in extra {
            columns.push_str(", ");
            columns.push_str(&cell.name);
        }
        let marks = vec!["?"; table.columns.len() + extra.len()].join(", ");
        let text = format!(
            "INSERT INTO {}.{} ({columns}) VALUES ({marks}) USING TIMESTAMP ?",
            self.keyspace, table.name
        );
        let known = self
            .with_extras
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&text)
            .cloned();
        if let Some(statement) = known {
            return Ok(statement);
        }
        let mut statement = session.prepare(text.clone()).await?;
        statement.set_consistency(self.consistency);
        statement.set_is_idempotent(true);
        statement.set_request_timeout(Some(REQUEST_TIMEOUT));
        self.with_extras
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(text, statement.clone());
        Ok(statement)
    }

    /// Records that `table` was truncated at `lsn` (the highest such LSN wins).
    pub async fn set_truncation(
        &self,
        session: &Session,
        table: &Table,
        lsn: i64,
    ) -> Result<(), CassandraError> {
        session
            .execute_unpaged(&self.set_truncation, (table.name, lsn, lsn))
            .await?;
        Ok(())
    }

    /// The system identifier of the PostgreSQL cluster the keyspace was filled from, if recorded.
    pub async fn source_identifier(
        &self,
        session: &Session,
    ) -> Result<Option<i64>, CassandraError> {
        let rows = session
            .execute_unpaged(&self.source_identifier, ())
            .await?
            .into_rows_result()
            .map_err(|e| CassandraError::Read(e.to_string()))?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| CassandraError::Read(e.to_string()))?;
        Ok(row.and_then(|(id,)| id))
    }

    /// Records the system identifier of the PostgreSQL cluster the keyspace is filled from.
    pub async fn set_source_identifier(
        &self,
        session: &Session,
        identifier: i64,
    ) -> Result<(), CassandraError> {
        session
            .execute_unpaged(&self.set_source_identifier, (identifier,))
            .await?;
        Ok(())
    }

    /// The LSN of the latest truncation of each captured table (0 if never truncated).
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
            if let Some(table) = tables::captured(&name) {
                found.lsns.insert(table.name, lsn.unwrap_or(0));
            }
        }
        Ok(found)
    }

    /// Every row Cassandra holds for the captured `table` (orders_by_user included for orders) as
    /// a delete to run. Tables are read in [`SCAN_SLICES`] token ranges, so that no single read
    /// walks past more tombstones than Cassandra allows (earlier deletes and truncations leave many).
    pub async fn all_rows(
        &self,
        session: &Session,
        table: &Table,
    ) -> Result<Vec<Write>, CassandraError> {
        let read = |e: scylla::errors::NextRowError| CassandraError::Read(e.to_string());
        let type_check = |e: scylla::errors::TypeCheckError| CassandraError::Read(e.to_string());
        let mut deletes = Vec::new();
        for statements in self
            .tables
            .iter()
            .filter(|t| tables::source_of(t.table).name == table.name)
        {
            for (low, high) in token_slices(SCAN_SLICES) {
                let mut rows = session
                    .execute_iter(statements.keys.clone(), (low, high))
                    .await?
                    .rows_stream::<Row>()
                    .map_err(type_check)?;
                while let Some(row) = rows.try_next().await.map_err(read)? {
                    let key: Option<Vec<CqlValue>> = row.columns.into_iter().collect();
                    if let Some(key) = key {
                        deletes.push(Write::Delete {
                            table: statements.table,
                            key,
                        });
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

/// The LSN of each captured table's latest truncation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truncations {
    lsns: std::collections::BTreeMap<&'static str, i64>,
}

impl Truncations {
    /// The latest truncation of the captured `table` (0 if never truncated).
    pub fn of(&self, table: &Table) -> i64 {
        self.lsns.get(table.name).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_are_cql_identifiers() {
        assert_eq!(
            parse_keyspace("cdc_keyspace"),
            Ok("cdc_keyspace".to_owned())
        );
        assert!(parse_keyspace("k1").is_ok());
        for bad in [
            "",
            "1k",
            "_k",
            "k-1",
            "k; DROP KEYSPACE x",
            "\"K\"",
            &"k".repeat(49),
        ] {
            assert!(parse_keyspace(bad).is_err(), "{bad:?} accepted");
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

    /// An order as cdcconsumer writes it: both of its rows (orders, orders_by_user) with a
    /// product name of `product_len` bytes.
    fn order_writes(product_len: usize) -> Vec<Write> {
        [&tables::ORDERS, &tables::ORDERS_BY_USER]
            .into_iter()
            .map(|table| Write::Upsert {
                table,
                cells: table
                    .columns
                    .iter()
                    .map(|column| match column.name {
                        "product" => Field::Value(CqlValue::Text("p".repeat(product_len))),
                        "deleted_at" => Field::Null,
                        _ => Field::Value(CqlValue::Int(1)),
                    })
                    .collect(),
                extra: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_change_goes_in_one_batch_only_while_its_values_are_small() {
        let small: usize = order_writes(40).iter().map(Write::approx_bytes).sum();
        assert!(small <= BATCH_LIMIT, "{small}");
        // The text counts whole, in both rows: 2,100 bytes twice passes the limit.
        let large: usize = order_writes(2_100).iter().map(Write::approx_bytes).sum();
        assert!(large > BATCH_LIMIT, "{large}");
        assert!(large >= 4_200);
        let delete = Write::Delete {
            table: &tables::USERS,
            key: vec![CqlValue::Text("k".repeat(5_000))],
        };
        assert!(delete.approx_bytes() > BATCH_LIMIT);
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
        for level in [
            Consistency::One,
            Consistency::Quorum,
            Consistency::All,
            Consistency::LocalQuorum,
            Consistency::LocalOne,
        ] {
            assert_eq!(parse_consistency(consistency_name(level)), Ok(level));
        }
        assert_eq!(parse_consistency("all"), Ok(Consistency::All));
        assert!(parse_consistency("most").is_err());
    }
}
