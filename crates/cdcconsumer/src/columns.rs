//! Columns added to the captured tables after the pipeline's description ([`cdc_core::tables`]):
//! schema evolution.
//!
//! When a change carries a column the mirror does not have yet (its Connect schema declares it),
//! cdcconsumer asks PostgreSQL whether the table really has it, adds it to the table's mirrored
//! tables (`ALTER TABLE … ADD`, `orders_by_user` too for `orders`) with the mapped CQL type, and
//! records it in `mirrored_columns` with `since`: the position of a change that carried it. From
//! then on a change without the column is an older one (position at or below `since`: its
//! cells are left as they are) — or, above `since`, proof that the column was dropped or renamed,
//! which stops the table's mirroring (see `handler::plan::Drift`).
//!
//! The registry is shared by every instance through Cassandra and kept in memory per process; it
//! is read again whenever a change disagrees with it, so an operator's fix is seen without a
//! restart.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cdc_core::debezium::Declared;
use cdc_core::tables::{self, ColumnType, Table};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use sqlx::PgPool;

use crate::cassandra::CassandraError;

/// A column added to a captured table, as mirrored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub name: Arc<str>,
    pub ty: ColumnType,
    /// The position of a change that carried the column: every change after the column was
    /// added has one above the `ALTER TABLE`, so a change above `since` without it means the
    /// column is gone.
    pub since: i64,
}

/// The added columns of each captured table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    by_table: BTreeMap<&'static str, Vec<Added>>,
}

impl Registry {
    /// The added columns of the captured `table`, in name order.
    pub fn of(&self, table: &Table) -> &[Added] {
        self.by_table.get(table.name).map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, table: &Table, column: &str) -> Option<&Added> {
        self.of(table).iter().find(|a| &*a.name == column)
    }

    /// With `added` registered for the captured `table` (replacing a column of the same name).
    pub fn with(&self, table: &'static Table, added: Added) -> Self {
        let mut next = self.clone();
        let columns = next.by_table.entry(table.name).or_default();
        columns.retain(|a| a.name != added.name);
        columns.push(added);
        columns.sort_by(|a, b| a.name.cmp(&b.name));
        next
    }
}

/// A column name Cassandra takes unquoted and PostgreSQL writes the same way: lower-case letters,
/// digits and `_`, not starting with a digit, at most 48 characters.
pub fn plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 48
}

/// The registry in Cassandra (`<keyspace>.mirrored_columns`) and in memory.
#[derive(Debug)]
pub struct MirroredColumns {
    keyspace: String,
    current: RwLock<Arc<Registry>>,
    /// One column added at a time per process.
    adding: tokio::sync::Mutex<()>,
}

fn timeout(text: String) -> Statement {
    let mut statement = Statement::new(text);
    statement.set_request_timeout(Some(Duration::from_secs(60)));
    statement
}

/// Waits until every node has the same schema, then runs `cql` (a registry write) with `values`.
async fn after_agreement(
    session: &Session,
    cql: String,
    values: impl scylla::serialize::row::SerializeRow,
) -> Result<(), CassandraError> {
    session
        .await_schema_agreement()
        .await
        .map_err(|e| CassandraError::Schema(e.to_string()))?;
    session.query_unpaged(timeout(cql), values).await?;
    Ok(())
}

impl MirroredColumns {
    /// Reads the registry of `keyspace`.
    pub async fn load(session: &Session, keyspace: &str) -> Result<Self, CassandraError> {
        let this = Self {
            keyspace: keyspace.to_owned(),
            current: RwLock::default(),
            adding: tokio::sync::Mutex::new(()),
        };
        this.reload(session).await?;
        Ok(this)
    }

    /// The registry as last read or changed.
    pub fn current(&self) -> Arc<Registry> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, registry: Registry) -> Arc<Registry> {
        let registry = Arc::new(registry);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&registry);
        registry
    }

    /// Reads the registry from Cassandra again.
    pub async fn reload(&self, session: &Session) -> Result<Arc<Registry>, CassandraError> {
        let read = |e: String| CassandraError::Read(e);
        let mut rows = session
            .query_iter(
                timeout(format!(
                    "SELECT table_name, column_name, column_type, since FROM {}.mirrored_columns",
                    self.keyspace
                )),
                (),
            )
            .await?
            .rows_stream::<(String, String, String, i64)>()
            .map_err(|e| read(e.to_string()))?;
        let mut registry = Registry::default();
        while let Some((table, column, ty, since)) =
            rows.try_next().await.map_err(|e| read(e.to_string()))?
        {
            let (Some(table), Some(ty)) = (tables::captured(&table), ColumnType::parse(&ty)) else {
                tracing::warn!(
                    table,
                    column,
                    ty,
                    "mirrored_columns row not understood; skipped"
                );
                continue;
            };
            registry = registry.with(
                table,
                Added {
                    name: Arc::from(column.as_str()),
                    ty,
                    since,
                },
            );
        }
        Ok(self.set(registry))
    }

    /// The CQL types of the columns of mirrored table `table`.
    async fn cassandra_columns(
        &self,
        session: &Session,
        table: &str,
    ) -> Result<BTreeMap<String, String>, CassandraError> {
        let read = |e: String| CassandraError::Read(e);
        let mut rows = session
            .query_iter(
                "SELECT column_name, type FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ?",
                (self.keyspace.as_str(), table),
            )
            .await?
            .rows_stream::<(String, String)>()
            .map_err(|e| read(e.to_string()))?;
        let mut found = BTreeMap::new();
        while let Some((name, ty)) = rows.try_next().await.map_err(|e| read(e.to_string()))? {
            found.insert(name, ty);
        }
        Ok(found)
    }

    /// Whether mirrored table `table` once had a column `column` and dropped it.
    async fn was_dropped(
        &self,
        session: &Session,
        table: &str,
        column: &str,
    ) -> Result<bool, CassandraError> {
        let read = |e: String| CassandraError::Read(e);
        let mut rows = session
            .query_iter(
                "SELECT column_name FROM system_schema.dropped_columns \
                 WHERE keyspace_name = ? AND table_name = ?",
                (self.keyspace.as_str(), table),
            )
            .await?
            .rows_stream::<(String,)>()
            .map_err(|e| read(e.to_string()))?;
        while let Some((name,)) = rows.try_next().await.map_err(|e| read(e.to_string()))? {
            if name == column {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Adds `column` of type `ty` to the mirrored tables of the captured `table` (when not there
    /// yet) and registers it, `since` a change that carried it.
    pub async fn add(
        &self,
        session: &Session,
        table: &'static Table,
        column: &str,
        ty: ColumnType,
        since: i64,
    ) -> Result<(), CassandraError> {
        let _one = self.adding.lock().await;
        if self.current().get(table, column).is_some() {
            return Ok(());
        }
        if !plain_name(column) {
            return Err(CassandraError::Conflict(format!(
                "column `{column}` of {} cannot be mirrored: Cassandra takes lower-case letters, \
                 digits and `_` unquoted",
                table.name
            )));
        }
        for mirrored in tables::mirrors_of(table) {
            if self.was_dropped(session, mirrored.name, column).await? {
                return Err(CassandraError::Conflict(format!(
                    "column `{column}` of {} cannot be mirrored: Cassandra's {}.{} had a column of \
                     that name and dropped it, and it hides every cell written below the drop's \
                     wall-clock time — all of cdcconsumer's, which are written at WAL positions. \
                     Rename the column in PostgreSQL (docs/operations.md)",
                    table.name, self.keyspace, mirrored.name
                )));
            }
            match self
                .cassandra_columns(session, mirrored.name)
                .await?
                .get(column)
            {
                Some(existing) if existing == ty.cql() => {}
                Some(existing) => {
                    return Err(CassandraError::Conflict(format!(
                        "column `{column}` of {} is {}, but Cassandra's {}.{} has it as {existing}",
                        table.name,
                        ty.name(),
                        self.keyspace,
                        mirrored.name
                    )))
                }
                None => {
                    session
                        .query_unpaged(
                            timeout(format!(
                                "ALTER TABLE {}.{} ADD {column} {}",
                                self.keyspace,
                                mirrored.name,
                                ty.cql()
                            )),
                            (),
                        )
                        .await?;
                }
            }
        }
        after_agreement(
            session,
            format!(
                "INSERT INTO {}.mirrored_columns (table_name, column_name, column_type, since) \
                 VALUES (?, ?, ?, ?)",
                self.keyspace
            ),
            (table.name, column, ty.name(), since),
        )
        .await?;
        let registry = self.current().with(
            table,
            Added {
                name: Arc::from(column),
                ty,
                since,
            },
        );
        self.set(registry);
        tracing::info!(
            table = table.name,
            column,
            ty = ty.name(),
            cql = ty.cql(),
            since,
            "mirroring a column added in PostgreSQL"
        );
        Ok(())
    }

    /// Drops `column` from the mirrored tables of the captured `table` and from the registry:
    /// the operator's answer to a column dropped in PostgreSQL.
    pub async fn forget(
        &self,
        session: &Session,
        table: &'static Table,
        column: &str,
    ) -> Result<(), CassandraError> {
        if !plain_name(column) {
            return Err(CassandraError::Conflict(format!(
                "`{column}` is not a column cdcconsumer mirrors"
            )));
        }
        for mirrored in tables::mirrors_of(table) {
            let present = self
                .cassandra_columns(session, mirrored.name)
                .await?
                .contains_key(column);
            if present {
                session
                    .query_unpaged(
                        timeout(format!(
                            "ALTER TABLE {}.{} DROP {column}",
                            self.keyspace, mirrored.name
                        )),
                        (),
                    )
                    .await?;
            }
        }
        after_agreement(
            session,
            format!(
                "DELETE FROM {}.mirrored_columns WHERE table_name = ? AND column_name = ?",
                self.keyspace
            ),
            (table.name, column),
        )
        .await?;
        self.reload(session).await?;
        Ok(())
    }
}

/// The columns PostgreSQL's `schema.table` has now, each with its mirrored type or why it has
/// none.
pub async fn pg_columns(
    pool: &PgPool,
    schema: &str,
    table: &str,
) -> Result<BTreeMap<String, Declared>, sqlx::Error> {
    let rows: Vec<(String, String, Option<i32>)> = sqlx::query_as(
        "SELECT column_name::text, udt_name::text, numeric_scale::int4 \
         FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, udt, scale)| (name, ColumnType::from_pg(&udt, scale)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cassandra_takes_unquoted() {
        for good in ["tier", "loyalty_tier", "_x", "a1"] {
            assert!(plain_name(good), "{good}");
        }
        for bad in ["", "1a", "Tier", "a-b", "a b", "\"a\"", &"a".repeat(49)] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn registering_replaces_a_column_of_the_same_name() {
        let added = |name: &str, since| Added {
            name: Arc::from(name),
            ty: ColumnType::Text,
            since,
        };
        let registry = Registry::default()
            .with(&tables::USERS, added("tier", 5))
            .with(&tables::USERS, added("alpha", 7))
            .with(&tables::USERS, added("tier", 9));
        let names: Vec<&str> = registry
            .of(&tables::USERS)
            .iter()
            .map(|a| &*a.name)
            .collect();
        assert_eq!(names, ["alpha", "tier"]);
        assert_eq!(
            registry.get(&tables::USERS, "tier").map(|a| a.since),
            Some(9)
        );
        assert!(registry.of(&tables::ORDERS).is_empty());
    }
}

/// `cdcconsumer columns`: the columns added to the mirrored tables, and an operator's answer to
/// one dropped in PostgreSQL.
#[derive(Debug, clap::Args)]
pub struct ColumnsArgs {
    #[command(subcommand)]
    pub command: ColumnsCommand,
    #[command(flatten)]
    pub cassandra: crate::cassandra::CassandraArgs,
    /// PostgreSQL, to check that a column to drop is gone there.
    #[command(flatten)]
    pub postgres: cdc_core::config::PostgresArgs,
    #[command(flatten)]
    pub log: cdc_core::config::LogArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ColumnsCommand {
    /// Print the added columns of every captured table: name, type, and since which position.
    List,
    /// Drop a column PostgreSQL no longer has from the mirrored tables and the registry, so that
    /// a table stopped for it mirrors again (without a restart). Refused while PostgreSQL still
    /// has the column.
    Drop {
        /// The captured table (`users` or `orders`).
        #[arg(long)]
        table: String,
        #[arg(long)]
        column: String,
        /// PostgreSQL schema of the table.
        #[arg(long, default_value = "public")]
        schema: String,
    },
}

/// Why `cdcconsumer columns` did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ColumnsCommandError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Cassandra(Box<CassandraError>),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
}

impl From<CassandraError> for ColumnsCommandError {
    fn from(error: CassandraError) -> Self {
        Self::Cassandra(Box::new(error))
    }
}

impl ColumnsCommandError {
    /// 1 when refused, 2 when a store could not be used.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Refused(_) => 1,
            Self::Cassandra(_) | Self::Postgres(_) => 2,
        }
    }
}

/// Runs `cdcconsumer columns …`; what it did is printed.
pub async fn run_command(args: &ColumnsArgs) -> Result<(), ColumnsCommandError> {
    let session = args.cassandra.connect().await?;
    let registry = MirroredColumns::load(&session, &args.cassandra.keyspace).await?;
    match &args.command {
        ColumnsCommand::List => {
            for table in tables::CAPTURED {
                for added in registry.current().of(table) {
                    println!(
                        "{}.{} {} (cql {}) since {}",
                        table.name,
                        added.name,
                        added.ty.name(),
                        added.ty.cql(),
                        added.since
                    );
                }
            }
            Ok(())
        }
        ColumnsCommand::Drop {
            table,
            column,
            schema,
        } => {
            let table = tables::captured(table).ok_or_else(|| {
                ColumnsCommandError::Refused(format!("`{table}` is not a captured table"))
            })?;
            if table.column(column).is_some() {
                return Err(ColumnsCommandError::Refused(format!(
                    "`{column}` is one of {}'s described columns: dropping it needs a new release",
                    table.name
                )));
            }
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(args.postgres.url())
                .await?;
            if pg_columns(&pool, schema, table.name)
                .await?
                .contains_key(column.as_str())
            {
                return Err(ColumnsCommandError::Refused(format!(
                    "PostgreSQL's {schema}.{} still has `{column}`; drop it there first",
                    table.name
                )));
            }
            registry.forget(&session, table, column).await?;
            println!(
                "dropped {column} from the mirror of {} and from the registry",
                table.name
            );
            Ok(())
        }
    }
}
