//! Writing: each change's mutations with the change's LSN as write timestamp, leaving out those a
//! newer write of the same row in the segment replaces; consecutive rows' changes packed into one
//! request while they are small, up to `lanes` requests at once; failures that may pass are
//! retried with the same timestamps.

use std::borrow::Borrow;

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
    pub(super) async fn write_change<W: Borrow<Write> + Sync>(
        &self,
        writes: &[W],
        ts: i64,
        cancel: &CancellationToken,
    ) -> Result<Result<(), CassandraError>, Interrupted> {
        retry("cassandra write", self.give_up_after, cancel, || {
            self.statements.execute_all(&self.session, writes, ts)
        })
        .await
    }

    /// Writes the pending writes of one segment (no truncation inside, see [`pending`]): each
    /// key's after the key's turns in earlier batches, several keys' in one request where they
    /// are small ([`group_chains`]), up to `lanes` requests at once. Returns the records
    /// (positions in the batch) whose writes Cassandra refused because of their values, with the
    /// error.
    ///
    /// A group's future is made only when a lane is free, not all up front: each holds a whole
    /// Cassandra request's state (kilobytes), and a batch has hundreds of keys.
    pub(super) async fn write_plans(
        &self,
        pending: &[Pending<'_>],
        chains: Vec<(Turn<'_>, Vec<usize>)>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Interrupted> {
        let mut waiting = group_chains(pending, chains).into_iter();
        let mut running = FuturesUnordered::new();
        let mut refused = Vec::new();
        loop {
            while running.len() < self.lanes.max(1) {
                let Some(group) = waiting.next() else {
                    break;
                };
                running.push(self.write_group(pending, group, cancel));
            }
            match running.next().await {
                Some(result) => refused.extend(result?),
                None => return Ok(refused),
            }
        }
    }

    /// The writes of a group of keys, once every key's turn has come: in one request when there
    /// are several changes' and they fit; change by change, in order, otherwise or when that
    /// request is refused for its values (so that a refusal is only ever a single change's own).
    async fn write_group(
        &self,
        pending: &[Pending<'_>],
        group: Group<Turn<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(usize, CassandraError)>, Interrupted> {
        let Group {
            mut turns,
            positions,
            fits,
        } = group;
        for turn in &mut turns {
            turn.begin().await;
        }
        let changes = || positions.iter().map(|at| &pending[*at]);
        if fits && changes().filter(|change| !change.writes.is_empty()).count() > 1 {
            let together: Vec<(&Write, i64)> = changes()
                .flat_map(|change| change.writes.iter().map(|write| (*write, change.ts)))
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
        for change in changes() {
            // One change's writes touch different rows and share a timestamp: they go in one
            // request.
            if let Err(error) = self.write_change(&change.writes, change.ts, cancel).await? {
                refused.push((change.index, error));
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

/// One change's writes still to send, at its write timestamp.
#[derive(Debug)]
pub(super) struct Pending<'p> {
    /// The record's position in the batch.
    pub index: usize,
    pub ts: i64,
    pub writes: Vec<&'p Write>,
}

/// Each plan of a segment with its write timestamp (given the tables' latest `truncations`) and
/// the writes it still needs, positions as in `plans`; and how many writes were left out.
///
/// A write is left out when a write of the same row in the same segment, with a higher
/// timestamp, replaces it whole ([`Write::replaces`]): every write of a segment lands before the
/// batch is durable (or the batch stalls and is read again whole), and Cassandra would keep
/// the newer write's cells over the older's anyway, so the rows end exactly as if every write
/// had been sent — a key created and updated twice in one batch costs one write per row, not
/// three. Only the newest write of each row is asked: fewer writes left out where it does not
/// replace, never a wrong one.
pub(super) fn pending<'p, T>(
    plans: &'p [(usize, Plan)],
    chains: &[(T, Vec<usize>)],
    truncations: &Truncations,
) -> (Vec<Pending<'p>>, u64) {
    let mut pending: Vec<Pending<'p>> = plans
        .iter()
        .map(|(index, plan)| Pending {
            index: *index,
            ts: plan.write_timestamp(truncations.of(plan.table)),
            writes: plan.writes.iter().collect(),
        })
        .collect();
    let mut left_out = 0;
    for (_, chain) in chains.iter().filter(|(_, chain)| chain.len() > 1) {
        // Per row the key's changes touch: its newest write (most keys touch one to three rows).
        let mut newest: Vec<(&Write, i64)> = Vec::new();
        for change in chain.iter().map(|at| &pending[*at]) {
            for write in &change.writes {
                match newest.iter_mut().find(|(seen, _)| seen.same_row(write)) {
                    Some(row) if row.1 < change.ts => *row = (write, change.ts),
                    Some(_) => {}
                    None => newest.push((write, change.ts)),
                }
            }
        }
        for at in chain {
            let change = &mut pending[*at];
            let ts = change.ts;
            let before = change.writes.len();
            change.writes.retain(|write| {
                !newest
                    .iter()
                    .any(|(row, at)| *at > ts && row.replaces(write))
            });
            left_out += (before - change.writes.len()) as u64;
        }
    }
    (pending, left_out)
}

/// How many writes `changes` make, and about how many value bytes they carry.
fn footprint<'a, 'p: 'a>(changes: impl Iterator<Item = &'a Pending<'p>>) -> (usize, usize) {
    changes
        .flat_map(|change| &change.writes)
        .fold((0, 0), |(writes, bytes), write| {
            (writes + 1, bytes + write.approx_bytes())
        })
}

/// Packs consecutive keys' chains into groups, each as large as still fits one request
/// ([`pack_groups`]); a chain too large for that alone is a group of its own. Each write carries
/// its own change's timestamp, so writing a group's changes in one request ends as writing them
/// one after another would.
pub(super) fn group_chains<T>(
    pending: &[Pending<'_>],
    chains: Vec<(T, Vec<usize>)>,
) -> Vec<Group<T>> {
    pack_groups(chains, |(_, chain)| {
        footprint(chain.iter().map(|at| &pending[*at]))
    })
    .into_iter()
    .map(|group| {
        let (turns, chains): (Vec<T>, Vec<Vec<usize>>) = group.into_iter().unzip();
        let positions: Vec<usize> = chains.into_iter().flatten().collect();
        let (writes, bytes) = footprint(positions.iter().map(|at| &pending[*at]));
        Group {
            turns,
            positions,
            fits: fits_in_a_group(writes, bytes),
        }
    })
    .collect()
}

/// Keys whose writes go in one request: their turns (`T`: [`Turn`] when writing), and the
/// positions of their changes, key after key, each key's in batch order.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Group<T> {
    turns: Vec<T>,
    positions: Vec<usize>,
    /// Whether the group's writes fit one request; a single chain too large for one does not.
    fits: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::{ExtraCell, BATCH_LIMIT, GROUP_WRITES};
    use cdc_core::debezium::Field;
    use cdc_core::tables::{self, ColumnType};
    use scylla::value::CqlValue;
    use std::sync::Arc;
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
        let chains: Vec<(usize, Vec<usize>)> = chains.into_iter().enumerate().collect();
        let (pending, _) = pending(plans, &chains, &Truncations::default());
        group_chains(&pending, chains)
    }

    fn group(turns: Vec<usize>, positions: Vec<usize>) -> Group<usize> {
        Group {
            turns,
            positions,
            fits: true,
        }
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
        let alone = |at| Group {
            fits: false,
            ..group(vec![at], vec![at])
        };
        assert_eq!(
            groups(&plans, chains),
            vec![
                group(vec![0, 1], vec![0, 1]),
                group(vec![2], vec![2]),
                alone(3),
                alone(4),
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

    fn text(value: &str) -> Field<CqlValue> {
        Field::Value(CqlValue::Text(value.to_owned()))
    }

    /// An upsert of user `id` named `name`, every other column null.
    fn user(id: Uuid, name: Field<CqlValue>) -> Write {
        let mut cells = vec![Field::Null; tables::USERS.columns.len()];
        cells[0] = Field::Value(CqlValue::Uuid(id));
        cells[1] = name;
        Write::Upsert {
            table: &tables::USERS,
            cells,
            extra: Vec::new(),
        }
    }

    fn gone(id: Uuid) -> Write {
        Write::Delete {
            table: &tables::USERS,
            key: vec![CqlValue::Uuid(id)],
        }
    }

    /// A change of one key with `writes`, at source position `lsn` (a snapshot read when `fill`).
    fn change(index: usize, lsn: i64, fill: bool, writes: Vec<Write>) -> (usize, Plan) {
        let plan = Plan {
            table: &tables::USERS,
            key: Uuid::nil(),
            lsn,
            fill,
            commit_micros: 0,
            writes,
        };
        (index, plan)
    }

    /// Two changes of one key: `older` at 10, then `newer` at 20.
    fn then(older: Write, newer: Write) -> Vec<(usize, Plan)> {
        vec![
            change(0, 10, false, vec![older]),
            change(1, 20, false, vec![newer]),
        ]
    }

    /// Per change: how many of its writes are pending; and how many were left out.
    fn left(plans: &[(usize, Plan)]) -> (Vec<usize>, u64) {
        let chains = vec![((), (0..plans.len()).collect::<Vec<_>>())];
        let (pending, left_out) = pending(plans, &chains, &Truncations::default());
        (pending.iter().map(|p| p.writes.len()).collect(), left_out)
    }

    #[test]
    fn a_row_written_again_in_the_segment_is_written_once() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let plans = vec![
            change(0, 10, false, vec![user(a, text("a1")), user(b, text("b1"))]),
            change(1, 20, false, vec![user(a, text("a2"))]),
            change(2, 30, false, vec![user(a, text("a3"))]),
        ];
        // b's row is written once anyway; a's only at its newest.
        assert_eq!(left(&plans), (vec![1, 0, 1], 2));
        let chains = vec![((), vec![0, 1, 2])];
        let (pending, _) = pending(&plans, &chains, &Truncations::default());
        assert_eq!(pending[2].writes, vec![&user(a, text("a3"))]);
        assert_eq!((pending[2].index, pending[2].ts), (2, 30));
        assert_eq!(pending[0].writes, vec![&user(b, text("b1"))]);
    }

    #[test]
    fn a_newer_write_that_keeps_a_cell_replaces_nothing() {
        let a = Uuid::new_v4();
        let plans = then(user(a, text("a1")), user(a, Field::Unavailable));
        assert_eq!(left(&plans), (vec![1, 1], 0));
    }

    #[test]
    fn a_delete_replaces_older_upserts_but_an_upsert_never_a_delete() {
        let a = Uuid::new_v4();
        let deleted_last = then(user(a, text("a1")), gone(a));
        assert_eq!(left(&deleted_last), (vec![0, 1], 1));
        let created_again = then(gone(a), user(a, text("a2")));
        assert_eq!(left(&created_again), (vec![1, 1], 0));
    }

    #[test]
    fn only_a_higher_timestamp_replaces() {
        let a = Uuid::new_v4();
        // Two snapshot reads share their write timestamp: Cassandra decides between them by
        // value, so both go.
        let reads = vec![
            change(0, 10, true, vec![user(a, text("a1"))]),
            change(1, 20, true, vec![user(a, text("a2"))]),
        ];
        assert_eq!(left(&reads), (vec![1, 1], 0));
        // A read is written below every change it did not see, whatever its place in the batch:
        // the change replaces it, not the other way round.
        let read_after = vec![
            change(0, 50, false, vec![user(a, text("changed"))]),
            change(1, 60, true, vec![user(a, text("read"))]),
        ];
        assert_eq!(left(&read_after), (vec![1, 0], 1));
    }

    #[test]
    fn a_write_that_may_be_refused_or_lacks_an_added_column_replaces_nothing() {
        let a = Uuid::new_v4();
        let large = text(&"x".repeat(BATCH_LIMIT + 1));
        let plans = then(user(a, text("a1")), user(a, large));
        assert_eq!(left(&plans), (vec![1, 1], 0));

        let mut with_extra = user(a, text("a1"));
        if let Write::Upsert { extra, .. } = &mut with_extra {
            extra.push(ExtraCell {
                name: Arc::from("nickname"),
                ty: ColumnType::Text,
                value: text("al"),
            });
        }
        let plans = then(with_extra.clone(), user(a, text("a2")));
        assert_eq!(left(&plans), (vec![1, 1], 0));
        let plans = then(user(a, text("a1")), with_extra);
        assert_eq!(left(&plans), (vec![0, 1], 1));
    }

    #[test]
    fn other_rows_and_single_changes_are_untouched() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let plans = then(user(a, text("a1")), user(b, text("b1")));
        assert_eq!(left(&plans), (vec![1, 1], 0));
        // Chains of one change are not looked at.
        let chains = vec![((), vec![0]), ((), vec![1])];
        let same = then(user(a, text("a1")), user(a, text("a2")));
        let (pending, left_out) = pending(&same, &chains, &Truncations::default());
        assert_eq!((pending[0].writes.len(), left_out), (1, 0));
    }
}
