//! Writing: each change's mutations with the change's LSN as write timestamp; consecutive rows'
//! changes packed into one request while they are small, up to `lanes` requests at once; failures
//! that may pass are retried with the same timestamps.

use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use cdc_core::outcome::Interrupted;
use cdc_core::retry::retry;

use super::gates::Turn;
use super::plan::{Plan, Write};
use super::CdcHandler;
use crate::cassandra::{fits_in_a_group, pack_groups, CassandraError, Truncations};

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

    /// Writes the plans of one segment (no truncation inside): each key's plans after the key's
    /// turns in earlier batches, several keys' plans in one request where they are small
    /// ([`group_chains`]), up to `lanes` requests at once, each write at its plan's timestamp
    /// given the tables' latest `truncations`. Returns the indexes of plans Cassandra refused
    /// because of their values, with the error.
    ///
    /// A group's future is made only when a lane is free, not all up front: each holds a whole
    /// Cassandra request's state (kilobytes), and a batch has hundreds of keys.
    pub(super) async fn write_plans(
        &self,
        plans: &[(usize, Plan)],
        chains: Vec<(Turn<'_>, Vec<usize>)>,
        truncations: &Truncations,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Interrupted> {
        let mut waiting = group_chains(plans, chains).into_iter();
        let mut running = FuturesUnordered::new();
        let mut refused = Vec::new();
        loop {
            while running.len() < self.lanes.max(1) {
                let Some(group) = waiting.next() else {
                    break;
                };
                running.push(self.write_group(plans, group, truncations, cancel));
            }
            match running.next().await {
                Some(result) => refused.extend(result?),
                None => return Ok(refused),
            }
        }
    }

    /// The plans of a group of keys, once every key's turn has come: in one request when there
    /// are several and they fit; one by one, in order, otherwise or when that request is refused
    /// for its values (so that a refusal is only ever a single change's own).
    async fn write_group(
        &self,
        plans: &[(usize, Plan)],
        group: Group<Turn<'_>>,
        truncations: &Truncations,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Interrupted> {
        let Group {
            mut turns,
            positions,
        } = group;
        for turn in &mut turns {
            turn.begin().await;
        }
        let stamped = |at: &usize| {
            let (index, plan) = &plans[*at];
            (
                *index,
                plan,
                plan.write_timestamp(truncations.of(plan.table)),
            )
        };
        let (writes, bytes) = footprint(positions.iter().map(|at| &plans[*at].1));
        if positions.len() > 1 && fits_in_a_group(writes, bytes) {
            let together: Vec<(&Write, i64)> = positions
                .iter()
                .map(stamped)
                .flat_map(|(_, plan, ts)| plan.writes.iter().map(move |write| (write, ts)))
                .collect();
            let written = retry("cassandra write", self.give_up_after, cancel, || {
                self.statements.execute_group(&self.session, &together)
            })
            .await?;
            match written {
                Ok(()) => return Ok(Vec::new()),
                Err(error) => tracing::debug!(
                    %error,
                    changes = positions.len(),
                    "a request of several changes was refused; writing them one by one"
                ),
            }
        }
        let mut refused = Vec::new();
        for (index, plan, ts) in positions.iter().map(stamped) {
            // One change's writes touch different rows and share a timestamp: they go in one
            // request.
            if let Err(error) = self.write_change(&plan.writes, ts, cancel).await? {
                refused.push((index, error));
            }
        }
        drop(turns);
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

/// How many writes `plans` make, and about how many value bytes they carry.
fn footprint<'p>(plans: impl Iterator<Item = &'p Plan>) -> (usize, usize) {
    plans
        .flat_map(|plan| &plan.writes)
        .fold((0, 0), |(writes, bytes), write| {
            (writes + 1, bytes + write.approx_bytes())
        })
}

/// Packs consecutive keys' chains into groups, each as large as still fits one request
/// ([`pack_groups`]); a chain too large for that alone is a group of its own. Each write carries
/// its own change's timestamp, so writing a group's changes in one request ends as writing them
/// one after another would.
pub(super) fn group_chains<T>(
    plans: &[(usize, Plan)],
    chains: Vec<(T, Vec<usize>)>,
) -> Vec<Group<T>> {
    pack_groups(chains, |(_, chain)| {
        footprint(chain.iter().map(|at| &plans[*at].1))
    })
    .into_iter()
    .map(|group| {
        let (turns, chains): (Vec<T>, Vec<Vec<usize>>) = group.into_iter().unzip();
        Group {
            turns,
            positions: chains.into_iter().flatten().collect(),
        }
    })
    .collect()
}

/// Keys whose plans go in one request: their turns (`T`: [`Turn`] when writing), and the
/// positions of their plans, key after key, each key's in batch order.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Group<T> {
    turns: Vec<T>,
    positions: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::{BATCH_LIMIT, GROUP_WRITES};
    use cdc_core::tables;
    use scylla::value::CqlValue;
    use uuid::Uuid;

    /// A plan of `writes` deletes, each carrying `bytes` value bytes.
    fn plan(writes: usize, bytes: usize) -> Plan {
        Plan {
            table: &tables::USERS,
            key: Uuid::new_v4(),
            lsn: 1,
            fill: false,
            commit_micros: 0,
            writes: (0..writes)
                .map(|_| Write::Delete {
                    table: &tables::USERS,
                    key: vec![CqlValue::Text("k".repeat(bytes))],
                })
                .collect(),
        }
    }

    fn groups(plans: &[(usize, Plan)], chains: Vec<Vec<usize>>) -> Vec<Group<usize>> {
        let chains = chains.into_iter().enumerate().collect();
        group_chains(plans, chains)
    }

    fn group(turns: Vec<usize>, positions: Vec<usize>) -> Group<usize> {
        Group { turns, positions }
    }

    #[test]
    fn small_chains_share_a_request_up_to_its_write_limit() {
        // Order changes: two writes each; five fit one request.
        let plans: Vec<(usize, Plan)> = (0..7).map(|i| (i, plan(2, 30))).collect();
        let chains = (0..7).map(|at| vec![at]).collect();
        assert_eq!(
            groups(&plans, chains),
            vec![
                group(vec![0, 1, 2, 3, 4], vec![0, 1, 2, 3, 4]),
                group(vec![5, 6], vec![5, 6]),
            ]
        );
        assert_eq!(GROUP_WRITES, 10);
    }

    #[test]
    fn a_key_s_changes_stay_together_and_in_order() {
        let plans: Vec<(usize, Plan)> = (0..5).map(|i| (i, plan(1, 30))).collect();
        let chains = vec![vec![0, 2, 4], vec![1, 3]];
        assert_eq!(
            groups(&plans, chains),
            vec![group(vec![0, 1], vec![0, 2, 4, 1, 3])]
        );
    }

    #[test]
    fn large_values_split_groups_and_a_chain_too_large_goes_alone() {
        let half = BATCH_LIMIT / 2;
        let plans = vec![
            (0, plan(1, half)),
            (1, plan(1, half)),
            (2, plan(1, 10)),
            (3, plan(1, BATCH_LIMIT + 1)),
            (4, plan(12, 1)),
            (5, plan(1, 10)),
        ];
        let chains = (0..6).map(|at| vec![at]).collect();
        assert_eq!(
            groups(&plans, chains),
            vec![
                group(vec![0, 1], vec![0, 1]),
                group(vec![2], vec![2]),
                group(vec![3], vec![3]),
                group(vec![4], vec![4]),
                group(vec![5], vec![5]),
            ]
        );
    }

    #[test]
    fn plans_without_writes_cost_nothing() {
        let mut plans: Vec<(usize, Plan)> = (0..12).map(|i| (i, plan(0, 0))).collect();
        plans.push((12, plan(10, 1)));
        let chains: Vec<Vec<usize>> = (0..13).map(|at| vec![at]).collect();
        let found = groups(&plans, chains);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].positions, (0..13).collect::<Vec<_>>());
    }
}
