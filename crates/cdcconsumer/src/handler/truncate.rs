//! Truncations: a `TRUNCATE` in PostgreSQL empties the mirrored tables, and a change older than a
//! truncation never survives it.
//!
//! The truncation's LSN is recorded in `truncations`, then every row Cassandra holds for the table
//! is deleted at that timestamp. A change older than the truncation may still be on its way on
//! another partition, so every batch reads the truncation LSNs once its writes are done and
//! deletes, at the truncation's timestamp, whatever it wrote that is older. Either the
//! truncation's scan saw the row, or the writer sees the truncation.

use tokio_util::sync::CancellationToken;

use cdc_core::outcome::Interrupted;
use cdc_core::retry::retry;
use cdc_core::tables::Table;

use super::plan::{undo, Plan, Write};
use super::CdcHandler;
use crate::cassandra::Truncations;

impl CdcHandler {
    /// Records the truncation of `table` at `lsn` and deletes every row the table has at `lsn`.
    pub(super) async fn truncate(
        &self,
        table: &'static Table,
        lsn: i64,
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        tracing::info!(table = table.name, lsn, "applying truncation");
        let budget = self.give_up_after;
        retry("record truncation", budget, cancel, || {
            self.statements.set_truncation(&self.session, table, lsn)
        })
        .await?
        .map_err(|error| Interrupted::gave_up("record truncation", error))?;
        let rows = retry("scan for truncation", budget, cancel, || {
            self.statements.all_rows(&self.session, table)
        })
        .await?
        .map_err(|error| Interrupted::gave_up("scan for truncation", error))?;
        // A large table takes a while: say how much there is to delete, and when it is done.
        tracing::info!(
            table = table.name,
            lsn,
            rows = rows.len(),
            "deleting the truncated table's rows"
        );
        let deletes: Vec<(Write, i64)> = rows.into_iter().map(|w| (w, lsn)).collect();
        self.run_all("delete for truncation", &deletes, cancel)
            .await?;
        tracing::info!(table = table.name, lsn, "truncation applied");
        Ok(())
    }

    /// The latest truncation of each table, as recorded in Cassandra.
    pub(super) async fn read_truncations(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Truncations, Interrupted> {
        retry("read truncations", self.give_up_after, cancel, || {
            self.statements.truncations(&self.session)
        })
        .await?
        .map_err(|error| Interrupted::gave_up("read truncations", error))
    }

    /// Undoes, at the truncation's timestamp, upserts older than a truncation of their table.
    pub(super) async fn settle_truncations(
        &self,
        plans: &[(usize, Plan)],
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let truncations = self.read_truncations(cancel).await?;
        let obsolete: Vec<(Write, i64)> = plans
            .iter()
            .filter(|(_, plan)| plan.lsn < truncations.of(plan.table))
            .flat_map(|(_, plan)| {
                let at = truncations.of(plan.table);
                undo(plan).into_iter().map(move |w| (w, at))
            })
            .collect();
        if !obsolete.is_empty() {
            tracing::info!(
                writes = obsolete.len(),
                "undoing changes older than a truncation"
            );
        }
        self.run_all("undo before a truncation", &obsolete, cancel)
            .await
    }
}
