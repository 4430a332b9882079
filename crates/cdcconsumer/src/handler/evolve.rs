//! Schema evolution in a batch ([`crate::columns`]): columns the batch's changes added are added
//! to the mirrored tables before anything is written, and a change that shows a mirrored column
//! dropped, renamed or retyped stops the batch — after PostgreSQL confirmed the change (otherwise
//! the record is wrong, and is parked as `schema_mismatch`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cdc_core::debezium::Declared;
use cdc_core::outcome::Interrupted;
use cdc_core::retry::{retry, Classify};
use cdc_core::tables::{self, ColumnType, Table};
use tokio_util::sync::CancellationToken;

use super::plan::{Drift, PlanError, Write};
use super::{CdcHandler, Decoded, Step};
use crate::columns::{pg_columns, Registry};

/// PostgreSQL could not be asked about a table's columns: retried.
#[derive(Debug, thiserror::Error)]
#[error("reading the columns of {table} from PostgreSQL failed: {source}")]
struct ColumnsError {
    table: String,
    source: sqlx::Error,
}

impl Classify for ColumnsError {
    fn is_transient(&self) -> bool {
        true
    }
}

/// A column first seen in this batch: the captured table, its name, its type, and the lowest
/// position of a change carrying it.
type NewColumn = (&'static Table, Arc<str>, ColumnType, i64);

impl CdcHandler {
    /// PostgreSQL's columns of `schema.table` now, or `None` when cdcconsumer has no connection
    /// to the source (`--check-positions false`).
    async fn source_columns(
        &self,
        schema: &str,
        table: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<BTreeMap<String, Declared>>, Interrupted> {
        let Some(guard) = &self.positions else {
            return Ok(None);
        };
        let what = format!("read the columns of {table}");
        let columns = retry(&what, self.give_up_after, cancel, || async {
            pg_columns(guard.pool(), schema, table)
                .await
                .map_err(|source| ColumnsError {
                    table: table.to_owned(),
                    source,
                })
        })
        .await?
        .map_err(|error| Interrupted::gave_up(&what, error))?;
        Ok(Some(columns))
    }

    /// Stops the batch when a change shows that a mirrored table's schema changed in a way the
    /// mirror cannot follow and PostgreSQL confirms it (or cannot be asked). Changes whose schema
    /// PostgreSQL contradicts stay in `decoded.refused`, to be parked.
    pub(super) async fn stop_on_drift(
        &self,
        decoded: &Decoded<'_>,
        registry: &Arc<Registry>,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let drifts: Vec<&Drift> = decoded
            .refused
            .iter()
            .filter_map(|(_, error)| match error {
                PlanError::Drift(drift) => Some(drift),
                _ => None,
            })
            .collect();
        let mut asked = BTreeMap::new();
        for drift in drifts {
            let (schema, table, column) = drift.place();
            if let std::collections::btree_map::Entry::Vacant(slot) = asked.entry((schema, table)) {
                slot.insert(self.source_columns(schema, table, cancel).await?);
            }
            let confirmed = asked
                .get(&(schema, table))
                .and_then(Option::as_ref)
                .is_none_or(|columns| drift.confirmed_by(columns));
            if !confirmed {
                continue;
            }
            // An operator may have answered it since the batch was planned.
            let now = retry("read mirrored_columns", self.give_up_after, cancel, || {
                self.columns.reload(&self.session)
            })
            .await?
            .map_err(|error| Interrupted::gave_up("read mirrored_columns", error))?;
            if now != *registry {
                return Err(Interrupted::gave_up(
                    format!("mirror {table}"),
                    "the mirrored columns changed while the batch was planned; planning it again",
                ));
            }
            tracing::error!(
                table,
                column,
                error = %drift,
                "the table's schema changed in a way the mirror cannot follow; its mirroring \
                 stops until an operator answers it (docs/operations.md)"
            );
            return Err(Interrupted::gave_up(format!("mirror {table}"), drift));
        }
        Ok(())
    }

    /// Adds the columns the batch's changes carry and the mirror does not have yet, once
    /// PostgreSQL confirms the table has them; a column PostgreSQL does not have is not written.
    pub(super) async fn add_new_columns(
        &self,
        decoded: &mut Decoded<'_>,
        registry: &Registry,
        schema: &str,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut new: BTreeMap<(&'static str, Arc<str>), NewColumn> = BTreeMap::new();
        for plan in decoded.plans() {
            for write in &plan.writes {
                let Write::Upsert { extra, .. } = write else {
                    continue;
                };
                for cell in extra {
                    if registry.get(plan.table, &cell.name).is_some() {
                        continue;
                    }
                    let entry = new
                        .entry((plan.table.name, Arc::clone(&cell.name)))
                        .or_insert((plan.table, Arc::clone(&cell.name), cell.ty, plan.lsn));
                    entry.3 = entry.3.min(plan.lsn);
                }
            }
        }
        let mut skipped: BTreeSet<(&'static str, Arc<str>)> = BTreeSet::new();
        for ((_, name), (table, _, ty, since)) in new {
            let confirmed = match self.source_columns(schema, table.name, cancel).await? {
                None => true,
                Some(columns) => matches!(
                    columns.get(&*name),
                    Some(Ok(pg)) if ty.holds(*pg) && pg.holds(ty)
                ),
            };
            if !confirmed {
                tracing::warn!(
                    table = table.name,
                    column = &*name,
                    ty = ty.name(),
                    "a change carries a column PostgreSQL's table does not have (as that type); \
                     not mirrored"
                );
                skipped.insert((table.name, name));
                continue;
            }
            let what = format!("add column {name} to {}", table.name);
            retry(&what, self.give_up_after, cancel, || {
                self.columns.add(&self.session, table, &name, ty, since)
            })
            .await?
            .map_err(|error| Interrupted::gave_up(&what, error))?;
        }
        if !skipped.is_empty() {
            for plan in decoded.plans_mut() {
                let table = tables::source_of(plan.table).name;
                for write in &mut plan.writes {
                    if let Write::Upsert { extra, .. } = write {
                        extra.retain(|cell| !skipped.contains(&(table, Arc::clone(&cell.name))));
                    }
                }
            }
        }
        Ok(())
    }
}

impl<'a> Decoded<'a> {
    fn plans(&self) -> impl Iterator<Item = &super::plan::Plan> {
        self.steps.iter().flat_map(|step| match step {
            Step::Segment(segment) => segment.plans.iter().map(|(_, p)| p).collect::<Vec<_>>(),
            Step::Truncate { .. } => Vec::new(),
        })
    }

    fn plans_mut(&mut self) -> impl Iterator<Item = &mut super::plan::Plan> + use<'_, 'a> {
        self.steps.iter_mut().flat_map(|step| match step {
            Step::Segment(segment) => segment.plans.iter_mut().map(|(_, p)| p).collect::<Vec<_>>(),
            Step::Truncate { .. } => Vec::new(),
        })
    }
}
