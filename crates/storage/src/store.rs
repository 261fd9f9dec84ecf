//! [`Store`]: opening a data dir (checked, identity recorded, epoch bumped), reading acceptor
//! state (pending changes, then the cache of synced states, then RocksDB), and changing it
//! through the committer, replying only once the change is durable.

use crate::committer::{Committer, Pending, WriteReq};
use crate::meta::{
    check, check_contents, check_shards, meta_floor, read_meta, shard_cf, DirContents, META_CF,
    META_CLUSTER, META_CONFIG, META_EPOCH, META_FORMAT, META_NODE, META_SHARDS, META_STATE,
};
use crate::{decode_state, record, Identity, StorageError, SyncedCache, DIR_FORMAT};
use counter_core::{AcceptorReply, AcceptorState};
use counter_proto::{Ballot, DataState, Register, ShardId};
use dashmap::DashMap;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBRecoveryMode, Options, WriteBatch,
    WriteOptions, DB,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Most bytes of RocksDB blocks (data, index and filter) a node keeps in memory: one cache
/// shared by every column family. Left unset, RocksDB gives each column family its own 32 MiB
/// cache, so a node of 64 shards could grow to 2 GiB of cached blocks under reads spread over
/// many keys, and keeps every table's index and filter outside any bound.
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Bits per key of the tables' bloom filters: a key absent from a table (every first touch,
/// and most tables for a present key) is ruled out without reading its blocks, ~1% false
/// positives.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// The share of each memtable given to its whole-key bloom filter (80 KiB of a 4 MiB memtable:
/// ~16 bits per entry of ~100 bytes; 5 MiB over 65 column families).
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// Obsolete WAL files kept for reuse (see [`wal_options`]).
const WAL_RECYCLE_FILES: usize = 4;

/// Past this much live WAL, RocksDB flushes the column families that hold the oldest one.
/// The meta column family is written at open and at floor raises, then rarely: its memtable
/// would keep every WAL since alive (RocksDB's default bound is 4 times all write buffers,
/// gigabytes here), so no WAL would become obsolete to be reused, and a restart would replay
/// it all. The size of all memtables together: a few extra small flushes, a bounded replay.
const MAX_TOTAL_WAL_BYTES: u64 = DB_WRITE_BUFFER_BYTES as u64;

/// All memtables together are flushed past this (a trigger, not a hard cap).
const DB_WRITE_BUFFER_BYTES: usize = 64 << 20;

/// How every open of a data dir (read-only ones too) writes and replays the WAL.
pub(crate) fn wal_options(opts: &mut Options) {
    // Reuse obsolete WAL files instead of creating new ones: an fdatasync of an append inside
    // an already written file has no inode (size, extents) to write, one disk write instead of
    // two or three (0.19 -> 0.13 ms here, BENCHMARKS.md). Point-in-time recovery (the default,
    // stated here because recycling needs it: RocksDB turns recycling off under the other
    // strict modes) tells a reused file's old records from new ones by the log number each
    // record carries.
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    opts.set_recycle_log_file_num(WAL_RECYCLE_FILES);
    opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
}

/// Table options of every column family, all charging one block cache of
/// [`BLOCK_CACHE_BYTES`].
fn table_options() -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
    // Index and filter blocks count against the cache (bounded), those of level 0 stay in it.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

/// A shard's floor: a ballot promised to every key of the shard, raised here only once
/// synced (so a floor that rules can see is durable), and the lock that serialises its raises
/// (rare: a coordinator's lease of the shard; other shards' raises do not wait for it).
struct ShardFloor {
    ballot: std::sync::RwLock<Ballot>,
    raise: tokio::sync::Mutex<()>,
}

impl ShardFloor {
    fn current(&self) -> Ballot {
        *self.ballot.read().expect("floor lock")
    }
}

/// The acceptor store of one node.
pub struct Store {
    pub(crate) db: Arc<DB>,
    cf_names: Arc<[String]>,
    shards: u32,
    epoch: u32,
    /// Who the data dir belongs to (`None` when opened with [`Store::open`]).
    identity: Option<Identity>,
    state: std::sync::Mutex<DataState>,
    /// Changes written to the batch queue and not yet synced, keyed by (shard, key).
    pending: Arc<DashMap<(ShardId, Vec<u8>), Pending>>,
    /// Synced states of recently used keys (see "Caching").
    pub(crate) synced: Arc<SyncedCache>,
    /// Each shard's floor (`counter_core::floor`), by shard.
    floors: Vec<ShardFloor>,
    next_gen: AtomicU64,
    /// The committer's queue; `None` once the store is being dropped.
    tx: Option<mpsc::Sender<WriteReq>>,
    committer: Option<std::thread::JoinHandle<()>>,
    #[cfg(test)]
    gate: Arc<std::sync::Mutex<Option<crate::committer::Gate>>>,
}

impl Drop for Store {
    /// Stops the committer after it has synced what was queued, so that the database is closed
    /// (and its lock released) when `drop` returns.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the data dir for a cluster of `shards` shards, and bumps and syncs the
    /// node's incarnation counter ([`Store::epoch`]). Checks the shard count only, records no
    /// identity: for tests and benchmarks; `counter-node` uses [`Store::open_node`].
    pub fn open(dir: &Path, shards: u32) -> Result<Store, StorageError> {
        Self::open_with(dir, shards, None)
    }

    /// Opens the data dir of node `expected.node` of the cluster the cluster file describes,
    /// after checking read-only, before anything is written, that it is this node's and was
    /// created with this configuration ([`inspect`], [`check`]); else refuses with
    /// [`StorageError::WrongNode`], [`StorageError::ConfigChanged`] or
    /// [`StorageError::ShardMismatch`], the data dir untouched.
    ///
    /// An empty data dir is created in state [`DataState::Created`] (call
    /// [`Store::mark_serving`] before serving); one of an earlier build (no identity recorded)
    /// adopts `expected` in state [`DataState::Serving`]. The caller decides whether an empty
    /// data dir may be created at all (a wiped disk of an existing member must not be).
    ///
    /// [`inspect`]: crate::inspect
    pub fn open_node(dir: &Path, expected: &Identity) -> Result<Store, StorageError> {
        check(dir, expected)?;
        Self::open_with(dir, expected.config.shards, Some(expected))
    }

    fn open_with(
        dir: &Path,
        shards: u32,
        expected: Option<&Identity>,
    ) -> Result<Store, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // One WAL for all shards; bound the memtables of many column families together.
        opts.set_db_write_buffer_size(DB_WRITE_BUFFER_BYTES);
        wal_options(&mut opts);
        // The `default` column family (unused, but always there) takes these options.
        let table = table_options();
        opts.set_block_based_table_factory(&table);
        let existing = DB::list_cf(&opts, dir).ok();
        let names: Vec<String> = match &existing {
            Some(cfs) => cfs.clone(),
            None => std::iter::once(META_CF.to_string())
                .chain((0..shards).map(shard_cf))
                .collect(),
        };
        let descriptors = names.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(4 << 20);
            cf.set_block_based_table_factory(&table);
            // A key not in a memtable is found absent without searching its skiplist.
            cf.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
            cf.set_memtable_whole_key_filtering(true);
            ColumnFamilyDescriptor::new(name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, dir, descriptors)?;
        let meta = db.cf_handle(META_CF).ok_or_else(|| {
            StorageError::Corrupt(format!("{} has no meta column family", dir.display()))
        })?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        // Checked again now that we hold the database's lock (another process may have
        // created it since `inspect`).
        let contents = read_meta(&db, dir)?;
        match expected {
            Some(expected) => check_contents(dir, &contents, expected)?,
            None => check_shards(dir, &contents, shards)?,
        }
        let mut batch = WriteBatch::default();
        if contents == DirContents::Empty {
            batch.put_cf(
                &meta,
                META_SHARDS,
                postcard::to_stdvec(&shards).expect("u32"),
            );
        }
        // New records (and floors) are written in this format from now on (an older build then
        // refuses the dir instead of misreading them).
        batch.put_cf(&meta, META_FORMAT, [DIR_FORMAT]);
        let (identity, state) = match (contents, expected) {
            (
                DirContents::Identified {
                    identity, state, ..
                },
                _,
            ) => (Some(identity), state),
            (DirContents::Legacy { .. }, None) => (None, DataState::Serving),
            (DirContents::Empty, None) => (None, DataState::Serving),
            (old, Some(expected)) => {
                // New, or of an earlier build: record who it belongs to. A legacy data dir
                // may have served; a new one has not yet.
                let state = if old == DirContents::Empty {
                    tracing::info!(
                        dir = %dir.display(),
                        cluster_id = %format!("{:016x}", expected.cluster_id),
                        node = expected.node,
                        "creating the data dir"
                    );
                    DataState::Created
                } else {
                    tracing::info!(
                        dir = %dir.display(),
                        cluster_id = %format!("{:016x}", expected.cluster_id),
                        node = expected.node,
                        members = ?expected.config.members,
                        replication = expected.config.replication,
                        shards = expected.config.shards,
                        "data dir of an earlier build (no cluster identity recorded): \
                         adopting the cluster file's"
                    );
                    DataState::Serving
                };
                let postcard = |e: postcard::Error| StorageError::Corrupt(e.to_string());
                batch.put_cf(
                    &meta,
                    META_CLUSTER,
                    postcard::to_stdvec(&expected.cluster_id).map_err(postcard)?,
                );
                batch.put_cf(
                    &meta,
                    META_NODE,
                    postcard::to_stdvec(&expected.node).map_err(postcard)?,
                );
                batch.put_cf(
                    &meta,
                    META_CONFIG,
                    postcard::to_stdvec(&expected.config).map_err(postcard)?,
                );
                batch.put_cf(
                    &meta,
                    META_STATE,
                    postcard::to_stdvec(&state).map_err(postcard)?,
                );
                (Some(expected.clone()), state)
            }
        };
        if !batch.is_empty() {
            db.write_opt(batch, &sync)?;
        }
        for shard in 0..shards {
            if db.cf_handle(&shard_cf(shard)).is_none() {
                return Err(StorageError::Corrupt(format!(
                    "{} lacks column family {}",
                    dir.display(),
                    shard_cf(shard)
                )));
            }
        }
        let epoch = match db.get_cf(&meta, META_EPOCH)? {
            Some(bytes) => postcard::from_bytes::<u32>(&bytes)
                .map_err(|e| StorageError::Corrupt(format!("epoch: {e}")))?,
            None => 0,
        }
        .checked_add(1)
        .ok_or_else(|| StorageError::Corrupt("epoch counter exhausted".into()))?;
        db.put_cf_opt(
            &meta,
            META_EPOCH,
            postcard::to_stdvec(&epoch).expect("u32"),
            &sync,
        )?;

        let floors = (0..shards)
            .map(|shard| {
                let floor = match db.get_cf(&meta, meta_floor(shard))? {
                    Some(bytes) => postcard::from_bytes::<Ballot>(&bytes).map_err(|e| {
                        StorageError::Corrupt(format!("floor of shard {shard}: {e}"))
                    })?,
                    None => Ballot::ZERO,
                };
                Ok(ShardFloor {
                    ballot: std::sync::RwLock::new(floor),
                    raise: tokio::sync::Mutex::new(()),
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;

        let db = Arc::new(db);
        // Column family names, built once: looking a handle up must not format a string per op.
        let cf_names: Arc<[String]> = (0..shards).map(shard_cf).collect();
        let pending = Arc::new(DashMap::new());
        let synced = Arc::new(crate::synced_cache());
        let (tx, rx) = mpsc::channel();
        #[cfg(test)]
        let gate = Arc::default();
        let committer = Committer {
            db: db.clone(),
            cf_names: cf_names.clone(),
            pending: pending.clone(),
            synced: synced.clone(),
            rx,
            #[cfg(test)]
            gate: Arc::clone(&gate),
        };
        let committer = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || committer.run())
            .map_err(|e| StorageError::Corrupt(format!("cannot start committer thread: {e}")))?;
        tracing::info!(dir = %dir.display(), shards, epoch, %state, "storage opened");
        Ok(Store {
            db,
            cf_names,
            shards,
            epoch,
            identity,
            state: std::sync::Mutex::new(state),
            pending,
            synced,
            floors,
            next_gen: AtomicU64::new(1),
            tx: Some(tx),
            committer: Some(committer),
            #[cfg(test)]
            gate,
        })
    }

    /// Tests only: from now on the committer holds each batch (reporting its size on the first
    /// channel) until the second channel lets it through; dropping that sender opens the gate
    /// for good.
    #[cfg(test)]
    pub(crate) fn gate_commits(&self) -> (mpsc::Receiver<usize>, mpsc::Sender<()>) {
        let (held_tx, held) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        *self.gate.lock().unwrap() = Some(crate::committer::Gate {
            held: held_tx,
            go: go_rx,
        });
        (held, go)
    }

    /// Keys in the cache of synced states, and changes waiting for their sync.
    pub fn cache_sizes(&self) -> (usize, usize) {
        (self.synced.len(), self.pending.len())
    }

    /// This incarnation of the node: bumped and synced by every `open`.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Who the data dir belongs to (`None` if opened with [`Store::open`]).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// [`DataState::Created`] until [`Store::mark_serving`], then [`DataState::Serving`].
    pub fn data_state(&self) -> DataState {
        *self.state.lock().expect("state lock")
    }

    /// Records (synced) that the node is about to serve: from now on its data dir may hold
    /// promises and acceptances, and an empty data dir under its id is a lost one.
    pub fn mark_serving(&self) -> Result<(), StorageError> {
        self.set_state(DataState::Serving)
    }

    /// Records (synced) how far the data dir is ([`Store::mark_serving`], or
    /// [`DataState::Joining`] for a node created by `--join`).
    pub fn set_state(&self, state: DataState) -> Result<(), StorageError> {
        let mut current = self.state.lock().expect("state lock");
        if *current == state {
            return Ok(());
        }
        let meta = self
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| StorageError::Corrupt("the meta column family disappeared".into()))?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.put_cf_opt(
            &meta,
            META_STATE,
            postcard::to_stdvec(&state).expect("an enum"),
            &sync,
        )?;
        *current = state;
        Ok(())
    }

    /// The current acceptor state of a key: pending (not yet synced) changes included.
    pub fn peek(&self, shard: ShardId, key: &str) -> Result<AcceptorState, StorageError> {
        let k = (shard, key.as_bytes().to_vec());
        if let Some(p) = self.pending.get(&k) {
            return Ok(p.state.clone());
        }
        if let Some(s) = self.synced.get(&k) {
            return Ok((*s).clone());
        }
        self.load(shard, key.as_bytes())
    }

    /// What a key has durably accepted: the ballot and the value. Pending changes are not
    /// included, and nothing is written: this serves one-round-trip reads.
    ///
    /// RocksDB makes a write visible to reads only after the write call returned (its sequence
    /// number is published after the WAL write, which the committer syncs), so what this reads
    /// survives a crash.
    pub fn read_durable(
        &self,
        shard: ShardId,
        key: &str,
    ) -> Result<Option<(Ballot, i64)>, StorageError> {
        if shard >= self.shards {
            return Err(StorageError::NoSuchShard(shard));
        }
        let k = (shard, key.as_bytes().to_vec());
        let accepted = |s: &AcceptorState| s.accepted.as_ref().map(|(b, r)| (*b, r.value));
        if let Some(s) = self.synced.get(&k) {
            return Ok(accepted(&s));
        }
        Ok(accepted(&self.load(shard, key.as_bytes())?))
    }

    pub(crate) fn shard_cf(&self, shard: ShardId) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(
                self.cf_names
                    .get(shard as usize)
                    .ok_or(StorageError::NoSuchShard(shard))?,
            )
            .ok_or(StorageError::NoSuchShard(shard))
    }

    /// The durable acceptor state of a key (what a restart would see).
    fn load(&self, shard: ShardId, key: &[u8]) -> Result<AcceptorState, StorageError> {
        let cf = self.shard_cf(shard)?;
        match self.db.get_pinned_cf(&cf, key)? {
            Some(bytes) => decode_state(&bytes),
            None => Ok(AcceptorState::default()),
        }
    }

    /// The floor of `shard`: the ballot promised to every key of it (durable).
    pub fn floor(&self, shard: ShardId) -> Result<Ballot, StorageError> {
        Ok(self.shard_floor(shard)?.current())
    }

    fn shard_floor(&self, shard: ShardId) -> Result<&ShardFloor, StorageError> {
        self.floors
            .get(shard as usize)
            .ok_or(StorageError::NoSuchShard(shard))
    }

    /// Handles a PromiseFloor: raises the floor of `shard` to `ballot` if it is above it
    /// (`counter_core::promise_floor`). The reply is returned, and rules see the new floor,
    /// only once it is durable.
    pub async fn promise_floor(
        &self,
        shard: ShardId,
        ballot: Ballot,
    ) -> Result<AcceptorReply, StorageError> {
        let shard_floor = self.shard_floor(shard)?;
        let _raising = shard_floor.raise.lock().await;
        let (raised, reply) = counter_core::promise_floor(shard_floor.current(), ballot);
        let Some(floor) = raised else {
            return Ok(reply);
        };
        let (done, synced) = oneshot::channel();
        let req = WriteReq {
            shard,
            meta: true,
            key: meta_floor(shard),
            record: postcard::to_stdvec(&floor).expect("a ballot"),
            gen: 0,
            done,
        };
        self.queue(req)?;
        written(synced).await?;
        *shard_floor.ballot.write().expect("floor lock") = floor;
        Ok(reply)
    }

    /// Handles a ReadAtFloor (`AcceptorState::read_at_floor`): nothing is written, except that
    /// a promise reporting a change of the key that still waits for its sync is sent only
    /// once that change is durable.
    pub async fn read_at_floor(
        &self,
        shard: ShardId,
        key: &str,
        ballot: Ballot,
    ) -> Result<AcceptorReply, StorageError> {
        self.apply(shard, key, |s, pending| {
            let reply = s.read_at_floor(ballot, self.floor_in_rule(shard));
            // Written again behind the pending change: synced with it or after it.
            let wait = pending && matches!(reply, AcceptorReply::Promise { .. });
            (wait.then(|| s.clone()), reply)
        })
        .await
    }

    /// Handles a Prepare; the reply is returned only once any change it reports is durable.
    pub async fn prepare(
        &self,
        shard: ShardId,
        key: &str,
        ballot: Ballot,
    ) -> Result<AcceptorReply, StorageError> {
        self.apply(shard, key, |s, _| {
            s.prepare_over(ballot, self.floor_in_rule(shard))
        })
        .await
    }

    /// Handles an Accept (and the promise of `next` it may carry); the reply is returned only
    /// once any change it reports is durable.
    pub async fn accept(
        &self,
        shard: ShardId,
        key: &str,
        ballot: Ballot,
        register: Register,
        next: Option<Ballot>,
    ) -> Result<AcceptorReply, StorageError> {
        self.apply(shard, key, |s, _| {
            s.accept_over(ballot, register, next, self.floor_in_rule(shard))
        })
        .await
    }

    /// The floor of `shard` (checked by [`Store::apply`]), read by a rule under the key's
    /// entry lock: read before it, a floor raised in between would go unseen by a change that
    /// a read at the new floor has already been told did not happen.
    fn floor_in_rule(&self, shard: ShardId) -> Ballot {
        self.floors[shard as usize].current()
    }

    fn queue(&self, req: WriteReq) -> Result<(), StorageError> {
        self.tx
            .as_ref()
            .ok_or(StorageError::Stopped)?
            .send(req)
            .map_err(|_| StorageError::Stopped)
    }

    async fn apply(
        &self,
        shard: ShardId,
        key: &str,
        rule: impl FnOnce(&AcceptorState, bool) -> (Option<AcceptorState>, AcceptorReply),
    ) -> Result<AcceptorReply, StorageError> {
        if shard >= self.shards {
            return Err(StorageError::NoSuchShard(shard));
        }
        let (reply, done) = {
            // The entry lock serialises read-modify-write on this key until the change is queued.
            let entry = self.pending.entry((shard, key.as_bytes().to_vec()));
            // The rule reads the current state in place (no copy of its register).
            let (next, reply) = match &entry {
                dashmap::Entry::Occupied(e) => rule(&e.get().state, true),
                dashmap::Entry::Vacant(v) => match self.synced.get(v.key()) {
                    Some(cached) => rule(&cached, false),
                    None => {
                        // Nothing of this key is pending (we hold its entry), so RocksDB has
                        // its latest synced state: safe to cache.
                        let state = self.load(shard, key.as_bytes())?;
                        let decided = rule(&state, false);
                        self.synced.insert(v.key().clone(), Arc::new(state));
                        decided
                    }
                },
            };
            let Some(state) = next else {
                return Ok(reply);
            };
            let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
            let (done_tx, done_rx) = oneshot::channel();
            let req = WriteReq {
                shard,
                meta: false,
                key: key.as_bytes().to_vec(),
                record: record::encode(&state),
                gen,
                done: done_tx,
            };
            entry.insert(Pending { state, gen });
            self.queue(req)?;
            (reply, done_rx)
        };
        written(done).await?;
        Ok(reply)
    }
}

/// Waits for the committer to sync a write.
async fn written(done: oneshot::Receiver<Result<(), String>>) -> Result<(), StorageError> {
    match done.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StorageError::Corrupt(format!("write failed: {e}"))),
        Err(_) => Err(StorageError::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::b;
    use std::time::Duration;

    #[tokio::test]
    async fn state_survives_reopen_and_epoch_grows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 4).unwrap();
        assert_eq!(store.epoch(), 1);
        let reg = Register::new(5, 1);
        assert!(matches!(
            store.prepare(2, "k", b(3, 1)).await.unwrap(),
            AcceptorReply::Promise { .. }
        ));
        assert_eq!(
            store
                .accept(2, "k", b(3, 1), reg.clone(), None)
                .await
                .unwrap(),
            AcceptorReply::Accepted {
                ballot: b(3, 1),
                next: None
            }
        );
        assert!(matches!(
            store.prepare(2, "k", b(2, 9)).await.unwrap(),
            AcceptorReply::Reject { .. }
        ));
        drop(store);
        let store = Store::open(dir.path(), 4).unwrap();
        assert_eq!(store.epoch(), 2);
        let s = store.peek(2, "k").unwrap();
        assert_eq!(s.promised, b(3, 1));
        assert_eq!(s.accepted, Some((b(3, 1), reg)));
        assert_eq!(store.peek(1, "k").unwrap(), AcceptorState::default());
        assert_eq!(store.read_durable(2, "k").unwrap(), Some((b(3, 1), 5)));
        assert_eq!(store.read_durable(1, "k").unwrap(), None);
    }

    /// A shard's floor is durable, is a promise of every key of the shard (and of no other
    /// shard), and lets a read at it stand for a Prepare.
    #[tokio::test]
    async fn a_shard_floor_survives_reopen_and_promises_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 4).unwrap();
        let reg = Register::new(5, 1);
        store.prepare(2, "old", b(2, 2)).await.unwrap();
        store
            .accept(2, "old", b(2, 2), reg.clone(), None)
            .await
            .unwrap();
        assert!(matches!(
            store.promise_floor(2, b(4, 1)).await.unwrap(),
            AcceptorReply::Promise { accepted: None, .. }
        ));
        assert_eq!(
            store.promise_floor(2, b(4, 1)).await.unwrap(),
            AcceptorReply::Reject {
                ballot: b(4, 1),
                promised: b(4, 1)
            }
        );
        drop(store);
        let store = Store::open(dir.path(), 4).unwrap();
        assert_eq!(store.floor(2).unwrap(), b(4, 1));
        assert_eq!(store.floor(1).unwrap(), Ballot::ZERO);
        assert!(store.floor(4).is_err());
        // Below the floor nothing is promised or accepted, on a key never seen as on one seen.
        for key in ["old", "new"] {
            assert_eq!(
                store.prepare(2, key, b(3, 9)).await.unwrap(),
                AcceptorReply::Reject {
                    ballot: b(3, 9),
                    promised: b(4, 1)
                }
            );
            assert!(matches!(
                store
                    .accept(2, key, b(3, 9), reg.clone(), None)
                    .await
                    .unwrap(),
                AcceptorReply::Reject { .. }
            ));
        }
        // Another shard is not bound by it.
        assert!(matches!(
            store.prepare(1, "new", b(3, 9)).await.unwrap(),
            AcceptorReply::Promise { .. }
        ));
        // A read at the floor reports what a Prepare would have, and writes nothing.
        assert_eq!(
            store.read_at_floor(2, "old", b(4, 1)).await.unwrap(),
            AcceptorReply::Promise {
                ballot: b(4, 1),
                accepted: Some((b(2, 2), reg.clone()))
            }
        );
        assert_eq!(store.peek(2, "old").unwrap().promised, b(2, 2));
        assert!(matches!(
            store.read_at_floor(2, "old", b(5, 1)).await.unwrap(),
            AcceptorReply::Reject { .. }
        ));
        // The round at the floor goes on to phase 2.
        assert!(matches!(
            store
                .accept(2, "new", b(4, 1), reg.clone(), Some(b(5, 1)))
                .await
                .unwrap(),
            AcceptorReply::Accepted { .. }
        ));
        assert!(matches!(
            store.read_at_floor(2, "new", b(4, 1)).await.unwrap(),
            AcceptorReply::Reject { .. }
        ));
    }

    /// A read at the floor judges the key by its changes still waiting for their sync, not by
    /// what is synced: a change queued first happened first. (That a promise reporting such a
    /// change waits for its sync: `a_read_at_the_floor_reporting_a_change_answers_after_its_sync`.)
    #[tokio::test]
    async fn a_read_at_the_floor_sees_changes_waiting_for_their_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        store.promise_floor(1, b(4, 1)).await.unwrap();
        let reg = Register::new(7, 1);
        // `join!` polls the accept first: it is queued, not synced, when the read runs.
        let (accepted, read) = tokio::join!(
            store.accept(1, "k", b(4, 1), reg.clone(), None),
            store.read_at_floor(1, "k", b(4, 1)),
        );
        assert!(matches!(accepted.unwrap(), AcceptorReply::Accepted { .. }));
        // The accept of the floor's own ballot came first: the key has seen the floor.
        assert!(matches!(read.unwrap(), AcceptorReply::Reject { .. }));
        // A promise above the floor pending: the read is refused.
        let (promised, read) = tokio::join!(
            store.prepare(1, "i", b(6, 2)),
            store.read_at_floor(1, "i", b(4, 1)),
        );
        assert!(matches!(promised.unwrap(), AcceptorReply::Promise { .. }));
        assert!(matches!(read.unwrap(), AcceptorReply::Reject { .. }));
    }

    /// A store of 2 shards whose committer holds every batch (`Store::gate_commits`).
    #[allow(clippy::type_complexity)]
    fn gated_store() -> (
        tempfile::TempDir,
        Arc<Store>,
        mpsc::Receiver<usize>,
        mpsc::Sender<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 2).unwrap());
        let (held, go) = store.gate_commits();
        (dir, store, held, go)
    }

    /// The size of the next batch the gated committer holds.
    fn held_batch(held: &mpsc::Receiver<usize>) -> Result<usize, mpsc::RecvTimeoutError> {
        held.recv_timeout(Duration::from_secs(5))
    }

    /// A read at the floor that reports a change still waiting for its sync answers only once
    /// that change is durable: else a crash could lose a value a coordinator has already
    /// counted as accepted. The change: an accept below the floor, ruled on while the floor's
    /// own write waited (a floor counts only once synced), then held unsynced by the gate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_at_the_floor_reporting_a_change_answers_after_its_sync() {
        let (_dir, store, held, go) = gated_store();
        let floor = tokio::spawn({
            let store = store.clone();
            async move { store.promise_floor(1, b(4, 1)).await }
        });
        assert_eq!(
            held_batch(&held),
            Ok(1),
            "the floor's write alone in its batch"
        );
        let reg = Register::new(7, 1);
        let accept = tokio::spawn({
            let (store, reg) = (store.clone(), reg.clone());
            async move { store.accept(1, "k", b(2, 2), reg, None).await }
        });
        // Queued behind the floor's batch (ruled on before the floor counts): let the floor
        // through, and hold the accept.
        while store.cache_sizes().1 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        go.send(()).unwrap();
        assert!(matches!(
            floor.await.unwrap().unwrap(),
            AcceptorReply::Promise { .. }
        ));
        assert_eq!(held_batch(&held), Ok(1), "the accept alone in its batch");
        let read = tokio::spawn({
            let store = store.clone();
            async move { store.read_at_floor(1, "k", b(4, 1)).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !read.is_finished(),
            "a promise reporting an unsynced accept was sent before its sync"
        );
        drop(go);
        assert!(matches!(
            accept.await.unwrap().unwrap(),
            AcceptorReply::Accepted { .. }
        ));
        assert_eq!(
            read.await.unwrap().unwrap(),
            AcceptorReply::Promise {
                ballot: b(4, 1),
                accepted: Some((b(2, 2), reg))
            }
        );
    }

    /// Raises of one shard's floor are serialised: a raise that decided against an older floor
    /// while a higher one waited for its sync would, once synced, lower the floor in memory
    /// and on disk (a promise taken back). (A raise of another shard runs beside them; that it
    /// does not wait for their syncs is not timed here.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lower_raise_behind_a_higher_one_lowers_no_floor() {
        let (dir, store, held, go) = gated_store();
        let raise = |shard, ballot| {
            let store = store.clone();
            tokio::spawn(async move { store.promise_floor(shard, ballot).await })
        };
        let higher = raise(1, b(6, 2));
        assert_eq!(held_batch(&held), Ok(1), "the higher raise, held unsynced");
        let lower = raise(1, b(5, 1));
        let other = raise(0, b(7, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        go.send(()).unwrap();
        assert!(matches!(
            higher.await.unwrap().unwrap(),
            AcceptorReply::Promise { .. }
        ));
        drop(go);
        assert_eq!(
            lower.await.unwrap().unwrap(),
            AcceptorReply::Reject {
                ballot: b(5, 1),
                promised: b(6, 2)
            }
        );
        assert!(matches!(
            other.await.unwrap().unwrap(),
            AcceptorReply::Promise { .. }
        ));
        assert_eq!(store.floor(1).unwrap(), b(6, 2));
        assert_eq!(store.floor(0).unwrap(), b(7, 1));
        drop(held);
        let store = Arc::into_inner(store).unwrap();
        drop(store);
        let store = Store::open(dir.path(), 2).unwrap();
        assert_eq!(store.floor(1).unwrap(), b(6, 2), "on disk too");
    }

    /// Every shard's tables charge the one block cache of [`BLOCK_CACHE_BYTES`] (RocksDB's
    /// default would give each column family a cache of its own), so the node's cached blocks
    /// stay bounded however many shards it holds.
    #[tokio::test]
    async fn every_shard_shares_one_bounded_block_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 4).unwrap();
        store.prepare(0, "k", b(1, 1)).await.unwrap();
        // Shard 0's table on disk, read once: its blocks are now cached.
        let cf0 = store.db.cf_handle(&shard_cf(0)).unwrap();
        store.db.flush_cf(&cf0).unwrap();
        assert!(store.db.get_cf(&cf0, b"k").unwrap().is_some());
        let caches: Vec<(u64, u64)> = (0..4)
            .map(|shard| {
                let cf = store.db.cf_handle(&shard_cf(shard)).unwrap();
                let get = |name| store.db.property_int_value_cf(&cf, name).unwrap().unwrap();
                (
                    get("rocksdb.block-cache-capacity"),
                    get("rocksdb.block-cache-usage"),
                )
            })
            .collect();
        assert_eq!(caches[0].0, BLOCK_CACHE_BYTES as u64, "{caches:?}");
        assert!(caches[0].1 > 0, "shard 0's blocks are cached: {caches:?}");
        // Shards 1-3 hold no table: they show shard 0's blocks only if the cache is the same.
        assert!(
            caches.iter().all(|c| *c == caches[0]),
            "one cache for all shards: {caches:?}"
        );
    }

    #[test]
    fn a_different_shard_count_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), 4).unwrap());
        let err = Store::open(dir.path(), 8).err().expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("4 shards") && msg.contains("says 8"), "{msg}");
    }

    /// A data dir of the build before client sessions (meta format 2, records of format 2)
    /// opens, reads its records converted, and is marked format 3.
    #[test]
    fn a_format_2_data_dir_opens_and_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), 2).unwrap());
        let raw = || {
            let cfs = [META_CF, &shard_cf(0), &shard_cf(1)];
            DB::open_cf(&Options::default(), dir.path(), cfs).unwrap()
        };
        {
            let db = raw();
            let meta = db.cf_handle(META_CF).unwrap();
            db.put_cf(&meta, META_FORMAT, [2]).unwrap();
            // Promised and accepted (4.2.7), value -9, one client entry applied at 5 ms.
            let v2 = [2, 4, 2, 7, 1, 4, 2, 7, 17, 2, 1, 3, 4, 0, 17, 5, 1];
            db.put_cf(&db.cf_handle(&shard_cf(1)).unwrap(), b"old", v2)
                .unwrap();
        }
        let store = Store::open(dir.path(), 2).unwrap();
        let state = store.peek(1, "old").unwrap();
        let (_, register) = state.accepted.expect("accepted");
        assert_eq!((register.value, register.horizon), (-9, 1));
        assert!(register.clients[0].sessionless);
        drop(store);
        let db = raw();
        let meta = db.cf_handle(META_CF).unwrap();
        assert_eq!(
            db.get_cf(&meta, META_FORMAT).unwrap().unwrap(),
            [DIR_FORMAT]
        );
        db.put_cf(&meta, META_FORMAT, [1]).unwrap();
        drop(db);
        let err = Store::open(dir.path(), 2)
            .err()
            .expect("format 1 is refused");
        assert!(err.to_string().contains("format 1"), "{err}");
    }

    #[tokio::test]
    async fn unknown_shards_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 2).unwrap();
        assert!(matches!(
            store.prepare(2, "k", b(1, 1)).await,
            Err(StorageError::NoSuchShard(2))
        ));
    }

    #[tokio::test]
    async fn concurrent_changes_to_one_key_serialise() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 1).unwrap());
        let mut tasks = Vec::new();
        for round in 1..=50u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.prepare(0, "hot", b(round, 1)).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Whatever the interleaving, the highest ballot is the promise that stuck.
        assert_eq!(store.peek(0, "hot").unwrap().promised, b(50, 1));
    }
}
