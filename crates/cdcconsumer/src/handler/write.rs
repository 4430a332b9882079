//! Writing: each change's mutations with the change's LSN as write timestamp, one row's changes in
//! order, up to `lanes` rows at once; failures that may pass are retried with the same timestamp.

use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use cdc_core::outcome::Interrupted;
use cdc_core::retry::retry;

use super::gates::Turn;
use super::plan::{Plan, Write};
use super::CdcHandler;
use crate::cassandra::{CassandraError, Truncations};

impl CdcHandler {
    /// Runs one change's writes, all with its timestamp, as one request (see
    /// [`crate::cassandra::Statements::execute_all`]) until it succeeds; an error that is the
    /// values' own fault is returned, anything else is retried until the budget is spent.
    pub(super) async fn write_change(
        &self,
        writes: &[Write],
        ts: i64,
        cancel: &CancellationToken,
    ) -> Result<Result<(), CassandraError>, Interrupted> {
        retry("cassandra write", self.give_up_after, cancel, || {
            self.statements.execute_all(&self.session, writes, ts)
        })
        .await
    }

    /// Writes the plans of one segment (no truncation inside): each key's plans one after another,
    /// after the key's turns in earlier batches, up to `lanes` keys at once, each at its write
    /// timestamp given the tables' latest `truncations`. Returns the indexes of plans Cassandra
    /// refused because of their values, with the error.
    ///
    /// A key's future is made only when a lane is free, not all up front: each holds a whole
    /// Cassandra request's state (kilobytes), and a batch has hundreds of keys.
    pub(super) async fn write_plans(
        &self,
        plans: &[(usize, Plan)],
        chains: Vec<(Turn<'_>, Vec<usize>)>,
        truncations: &Truncations,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Interrupted> {
        let mut waiting = chains.into_iter();
        let mut running = FuturesUnordered::new();
        let mut refused = Vec::new();
        loop {
            while running.len() < self.lanes.max(1) {
                let Some((turn, chain)) = waiting.next() else {
                    break;
                };
                running.push(self.write_chain(plans, turn, chain, truncations, cancel));
            }
            match running.next().await {
                Some(result) => refused.extend(result?),
                None => return Ok(refused),
            }
        }
    }

    /// One key's plans, in order, once the key's turn has come.
    async fn write_chain(
        &self,
        plans: &[(usize, Plan)],
        mut turn: Turn<'_>,
        chain: Vec<usize>,
        truncations: &Truncations,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Interrupted> {
        turn.begin().await;
        let mut refused = Vec::new();
        for at in chain {
            let (index, plan) = &plans[at];
            let ts = plan.write_timestamp(truncations.of(plan.table));
            // One change's writes touch different rows and share a timestamp: they go in one
            // request.
            if let Err(error) = self.write_change(&plan.writes, ts, cancel).await? {
                refused.push((*index, error));
            }
        }
        drop(turn);
        Ok(refused)
    }

    /// Runs independent deletes, up to `lanes` at once; all must succeed: a delete that cannot be
    /// written leaves a row behind, so the batch gives up rather than being acknowledged.
    pub(super) async fn run_all(
        &self,
        what: &str,
        writes: &[(Write, i64)],
        cancel: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut waiting = writes.iter();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < self.lanes.max(1) {
                let Some((write, ts)) = waiting.next() else {
                    break;
                };
                running.push(self.write_change(std::slice::from_ref(write), *ts, cancel));
            }
            match running.next().await {
                Some(result) => {
                    if let Err(error) = result? {
                        return Err(Interrupted::gave_up(what, error));
                    }
                }
                None => return Ok(()),
            }
        }
    }
}
