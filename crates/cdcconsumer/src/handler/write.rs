//! Writing: each change's mutations with the change's LSN as write timestamp, one row's changes in
//! order, up to `lanes` rows at once; failures that may pass are retried with the same timestamp.

use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use cdc_core::outcome::Interrupted;
use cdc_core::retry::retry;

use super::gates::Turn;
use super::plan::{Plan, Write};
use super::CdcHandler;
use crate::cassandra::{CassandraError, Truncations};

impl CdcHandler {
    /// Runs one write with its timestamp until it succeeds; an error that is the value's own
    /// fault is returned, anything else is retried until the budget is spent.
    pub(super) async fn write(
        &self,
        write: &Write,
        ts: i64,
        cancel: &CancellationToken,
    ) -> Result<Result<(), CassandraError>, Interrupted> {
        retry("cassandra write", self.give_up_after, cancel, || {
            self.statements.execute(&self.session, write, ts)
        })
        .await
    }

    /// Writes the plans of one segment (no truncation inside): each key's plans one after another,
    /// after the key's turns in earlier batches, up to `lanes` keys at once, each at its write
    /// timestamp given the tables' latest `truncations`. Returns the indexes of plans Cassandra
    /// refused because of their values, with the error.
    pub(super) async fn write_plans(
        &self,
        plans: &[(usize, Plan)],
        chains: Vec<(Turn<'_>, Vec<usize>)>,
        truncations: &Truncations,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Interrupted> {
        let pending: Vec<_> = chains
            .into_iter()
            .map(|(mut turn, chain)| async move {
                turn.begin().await;
                let mut refused = Vec::new();
                for at in chain {
                    let (index, plan) = &plans[at];
                    let ts = plan.write_timestamp(truncations.of(plan.table));
                    // One change's writes touch different rows and share a timestamp: they may
                    // run together.
                    let written = futures::future::join_all(
                        plan.writes.iter().map(|w| self.write(w, ts, cancel)),
                    )
                    .await;
                    for result in written {
                        if let Err(error) = result? {
                            refused.push((*index, error));
                            break;
                        }
                    }
                }
                drop(turn);
                Ok::<_, Interrupted>(refused)
            })
            .collect();
        let mut running = stream::iter(pending).buffer_unordered(self.lanes.max(1));
        let mut refused = Vec::new();
        while let Some(result) = running.next().await {
            refused.extend(result?);
        }
        Ok(refused)
    }

    /// Runs independent deletes with bounded concurrency; all must succeed: a delete that cannot be
    /// written leaves a row behind, so the batch gives up rather than being acknowledged.
    pub(super) async fn run_all(
        &self,
        what: &str,
        writes: &[(Write, i64)],
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let pending: Vec<_> = writes
            .iter()
            .map(|(write, ts)| self.write(write, *ts, cancel))
            .collect();
        let mut results = stream::iter(pending).buffer_unordered(self.lanes.max(1));
        while let Some(result) = results.next().await {
            if let Err(error) = result? {
                return Err(Interrupted::gave_up(what, error));
            }
        }
        Ok(())
    }
}
