//! Per-key ordering: one row's changes are written in source order, even though different rows
//! are written concurrently and a partition may have several batches in flight.
//!
//! Within a batch a row's changes form one chain ([`chains_by_key`]). Across batches each chain
//! takes a turn ([`KeyGates::claim`]) when its batch starts — before the batch's first `.await`, so
//! batches claim in the order the runtime starts them — and a turn waits for the same row's turn
//! in the earlier batch to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use uuid::Uuid;

use super::plan::Plan;

/// A row's identity: the captured table's name and the row's key.
pub type RowKey = (&'static str, Uuid);

/// The positions of `plans` grouped by row key, each group in batch order, groups in order of
/// first appearance.
pub fn chains_by_key(plans: &[(usize, Plan)]) -> Vec<(RowKey, Vec<usize>)> {
    let mut position: HashMap<RowKey, usize> = HashMap::new();
    let mut chains: Vec<(RowKey, Vec<usize>)> = Vec::new();
    for (at, (_, plan)) in plans.iter().enumerate() {
        let key = (plan.table.name, plan.key);
        let chain = *position.entry(key).or_insert_with(|| {
            chains.push((key, Vec::new()));
            chains.len() - 1
        });
        chains[chain].1.push(at);
    }
    chains
}

/// Keeps each row's writes in order across the batches a partition has in flight at once: a
/// batch claims a turn for each of its keys when it starts (in batch order, before its first
/// `.await`), and a turn waits for the key's previous turn to end before writing.
#[derive(Debug, Default)]
pub struct KeyGates {
    /// Per key, the latest turn: its id and a signal that resolves when that turn ends.
    latest: std::sync::Mutex<HashMap<RowKey, (u64, TurnEnded)>>,
    next_id: AtomicU64,
}

impl KeyGates {
    fn latest(&self) -> std::sync::MutexGuard<'_, HashMap<RowKey, (u64, TurnEnded)>> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next turn of `key`; it runs after every turn claimed before it.
    pub fn claim(&self, key: RowKey) -> Turn<'_> {
        let id = self.next_id.fetch_add(1, AtomicOrdering::Relaxed);
        let (ended, signal) = oneshot::channel();
        let after = self
            .latest()
            .insert(key, (id, signal.shared()))
            .map(|(_, previous)| previous);
        Turn {
            gates: self,
            key,
            id,
            after,
            _ended: ended,
        }
    }

    /// Keys with a turn claimed and not yet ended.
    pub fn pending(&self) -> usize {
        self.latest().len()
    }
}

type TurnEnded = Shared<oneshot::Receiver<()>>;

/// One key's turn. It ends when dropped: written, refused or abandoned.
pub struct Turn<'a> {
    gates: &'a KeyGates,
    key: RowKey,
    id: u64,
    after: Option<TurnEnded>,
    /// Dropping the sender resolves the signal the next turn waits on.
    _ended: oneshot::Sender<()>,
}

impl std::fmt::Debug for Turn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("key", &self.key)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Turn<'_> {
    /// Waits until the key's previous turn has ended.
    pub async fn begin(&mut self) {
        if let Some(previous) = &self.after {
            // Err only means the sender is gone, which is how a turn ends.
            let _ = previous.clone().await;
        }
        self.after = None;
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut latest = self.gates.latest();
        if latest.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            latest.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_core::tables;

    #[test]
    fn one_key_s_changes_form_one_chain_in_batch_order() {
        let template = Plan {
            table: &tables::USERS,
            key: Uuid::nil(),
            lsn: 1,
            fill: false,
            commit_micros: 0,
            writes: Vec::new(),
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let plans: Vec<(usize, Plan)> = [a, b, a, a, b]
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let mut plan = template.clone();
                plan.key = *key;
                (i, plan)
            })
            .collect();
        let chains = chains_by_key(&plans);
        let keys: Vec<Uuid> = chains.iter().map(|((_, key), _)| *key).collect();
        assert_eq!(keys, vec![a, b]);
        let positions: Vec<Vec<usize>> = chains.into_iter().map(|(_, chain)| chain).collect();
        assert_eq!(positions, vec![vec![0, 2, 3], vec![1, 4]]);
    }

    #[tokio::test]
    async fn a_key_s_turn_waits_for_the_turns_claimed_before_it() {
        let gates = KeyGates::default();
        let key = ("users", Uuid::new_v4());
        let first = gates.claim(key);
        let mut second = gates.claim(key);
        let mut third = gates.claim(key);
        let mut other = gates.claim(("orders", key.1));
        assert_eq!(gates.pending(), 2);
        assert!(
            other.begin().now_or_never().is_some(),
            "another key does not wait"
        );
        {
            let mut waiting = std::pin::pin!(second.begin());
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            drop(first);
            assert!(futures::poll!(waiting.as_mut()).is_ready());
        }
        assert!(
            third.begin().now_or_never().is_none(),
            "the third waits for the second"
        );
        drop(second);
        assert!(third.begin().now_or_never().is_some());
        drop(other);
        assert_eq!(gates.pending(), 1, "the key's latest turn is still held");
        drop(third);
        assert_eq!(gates.pending(), 0, "ended turns leave nothing behind");
    }
}
