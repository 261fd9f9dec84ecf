//! The group-commit thread: every change of acceptor state is queued to it; it writes whatever
//! is waiting as one `WriteBatch` with the WAL synced, then settles each change (the pending
//! overlay gives way to the cache of synced states) and releases its reply.

use crate::meta::META_CF;
use crate::SyncedCache;
use counter_core::AcceptorState;
use counter_proto::ShardId;
use dashmap::DashMap;
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Most changes gathered into one synced batch.
const MAX_BATCH: usize = 4096;

/// A pending change: the state, and which write produced it.
pub(crate) struct Pending {
    pub(crate) state: AcceptorState,
    pub(crate) gen: u64,
}

pub(crate) struct WriteReq {
    pub(crate) shard: ShardId,
    /// Written to the meta column family instead of the shard's (a shard's floor); not a
    /// key's state, so nothing to settle.
    pub(crate) meta: bool,
    pub(crate) key: Vec<u8>,
    /// The record, encoded by the caller (the committer thread only writes).
    pub(crate) record: Vec<u8>,
    pub(crate) gen: u64,
    pub(crate) done: oneshot::Sender<Result<(), String>>,
}

/// The group-commit loop: one synced WriteBatch per round of waiting changes.
pub(crate) struct Committer {
    pub(crate) db: Arc<DB>,
    pub(crate) cf_names: Arc<[String]>,
    pub(crate) pending: Arc<DashMap<(ShardId, Vec<u8>), Pending>>,
    pub(crate) synced: Arc<SyncedCache>,
    pub(crate) rx: mpsc::Receiver<WriteReq>,
    /// Tests only: holds every batch until the test lets it through ([`Gate`]).
    #[cfg(test)]
    pub(crate) gate: Arc<std::sync::Mutex<Option<Gate>>>,
}

/// Tests only: the committer reports each batch it is about to write (its size) on `held`,
/// then writes it only when `go` gets a message, so that a test can keep a change waiting
/// for its sync as long as it likes and see who waits with it.
#[cfg(test)]
pub(crate) struct Gate {
    pub(crate) held: mpsc::Sender<usize>,
    pub(crate) go: mpsc::Receiver<()>,
}

impl Committer {
    pub(crate) fn run(self) {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let mut reqs = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = self.rx.recv() {
            reqs.push(first);
            while reqs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            #[cfg(test)]
            if let Some(gate) = self.gate.lock().expect("gate lock").as_ref() {
                let _ = gate.held.send(reqs.len());
                let _ = gate.go.recv();
            }
            let mut batch = WriteBatch::default();
            let mut missing = None;
            for r in &reqs {
                let name = match r.meta {
                    true => Some(META_CF),
                    false => self.cf_names.get(r.shard as usize).map(String::as_str),
                };
                match name.and_then(|n| self.db.cf_handle(n)) {
                    Some(cf) => batch.put_cf(&cf, &r.key, &r.record),
                    None => missing = Some(r.shard),
                }
            }
            let started = std::time::Instant::now();
            let result = match missing {
                Some(shard) => Err(format!("no column family for shard {shard}")),
                None => self.db.write_opt(batch, &sync).map_err(|e| e.to_string()),
            };
            metrics::histogram!("counter_wal_sync_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("counter_wal_sync_batch_writes").record(reqs.len() as f64);
            if let Err(e) = &result {
                // After a failed sync nothing in memory can be trusted to match the disk (the
                // lesson of PostgreSQL's fsync failures): refuse every reply of this batch, then
                // stop the process, so that it restarts from what is durable.
                tracing::error!(error = %e, "synced write failed; stopping the node");
                for r in reqs.drain(..) {
                    let _ = r.done.send(Err(e.clone()));
                }
                std::process::exit(70);
            }
            for r in reqs.drain(..) {
                if !r.meta {
                    self.settle((r.shard, r.key), r.gen);
                }
                let _ = r.done.send(Ok(()));
            }
        }
    }

    /// The change `gen` of `key` is synced: if it is the key's latest, it leaves the pending
    /// overlay for the cache of synced states; if a newer one is pending, the cached state (if
    /// any) is now behind the disk and is dropped. Both under the key's pending-entry lock.
    fn settle(&self, key: (ShardId, Vec<u8>), gen: u64) {
        match self.pending.entry(key) {
            dashmap::Entry::Occupied(e) if e.get().gen == gen => {
                // Cached before the pending entry goes: in between, a change of the key would
                // find neither and could start from an older cached state. (The cache may
                // evict it at any time: a miss reads RocksDB, which holds this state now.)
                // Moved, not copied: nobody sees the emptied pending entry, we hold its lock.
                let mut e = e;
                let state = std::mem::take(&mut e.get_mut().state);
                self.synced.insert(e.key().clone(), Arc::new(state));
                e.remove();
            }
            dashmap::Entry::Occupied(e) => {
                self.synced.remove(e.key());
            }
            dashmap::Entry::Vacant(v) => {
                self.synced.remove(v.key());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::b;
    use crate::Store;
    use counter_proto::Register;
    use std::sync::Arc;

    /// The cache of synced states must agree with the disk, whatever the interleaving of
    /// changes of one key with the syncs of earlier ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_of_synced_states_agrees_with_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 2).unwrap());
        let keys = ["a", "b", "c"];
        let mut tasks = Vec::new();
        for round in 1..=300u64 {
            let store = store.clone();
            let key = keys[round as usize % keys.len()];
            tasks.push(tokio::spawn(async move {
                let ballot = b(round, 1);
                store.prepare(1, key, ballot).await.unwrap();
                store
                    .accept(1, key, ballot, Register::new(round as i64, round), None)
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let cached: Vec<_> = keys
            .iter()
            .map(|k| (store.peek(1, k).unwrap(), store.read_durable(1, k).unwrap()))
            .collect();
        drop(tasks_done(store));
        let reopened = Store::open(dir.path(), 2).unwrap();
        for (k, (state, durable)) in keys.iter().zip(cached) {
            let disk = reopened.peek(1, k).unwrap();
            assert_eq!(state, disk, "key {k}");
            assert_eq!(durable, disk.accepted.map(|(b, r)| (b, r.value)), "key {k}");
        }
    }

    fn tasks_done(store: Arc<Store>) -> Store {
        Arc::try_unwrap(store).unwrap_or_else(|_| panic!("no task holds the store"))
    }
}
