//! Acceptor state in RocksDB.
//!
//! # Layout on disk
//!
//! One RocksDB database per node. Column family `meta` holds the shard count the data dir was
//! created with, the on-disk format version, the node's incarnation counter (its ballot
//! epoch), and who the data dir belongs to: the cluster id, the node id, the configuration it
//! was created with (replication, shards, members, configuration version; see [`identity`])
//! and how far its creation went ([`DataState`]: created, or serving). Column families
//! `shard-00000` .. hold one record per key: a format byte followed by the postcard encoding
//! of [`AcceptorState`].
//!
//! # Guards
//!
//! [`Store::open_node`] reads the `meta` column family read-only first ([`inspect`]) and refuses
//! (writing nothing) a data dir of another node id or one created with another configuration
//! than the cluster file's. A data dir of an earlier build, which recorded no identity, adopts
//! the cluster file's (logged). Whether an *empty* data dir may be created at all is decided
//! before, by asking the other members (`counter-node`'s bootstrap check).
//!
//! # Durability
//!
//! Every change of acceptor state goes through one committer thread that gathers whatever
//! changes are waiting into one `WriteBatch` and writes it with the WAL synced (group commit).
//! A handler's reply future resolves only after the batch holding its change was synced, so no
//! reply leaves the node before its promise or accept is durable. While a change waits for its
//! sync, later requests on the same key see it (an in-memory overlay of pending changes), and
//! because batches are synced in order, their replies cannot overtake it.
//!
//! # Caching
//!
//! The last synced state of recently used keys is kept in memory (at most [`CACHED_KEYS`]
//! keys; when full, an arbitrary one makes room), so that a Prepare or an Accept does not search RocksDB's memtable, where every change
//! of a hot key is another version. The cache only ever holds durable states: the committer
//! moves a state into it after the state's batch was synced and before the reply is released,
//! under the same lock that orders changes of the key; a key read from RocksDB is cached only
//! while no change of it is pending.
//!
//! A failed synced write stops the process (exit status 70): after a failed fsync the page
//! cache may hold data the disk does not, and only a restart from the durable state is safe.

use counter_core::{AcceptorReply, AcceptorState};
use counter_proto::{Ballot, DataState, NodeId, Register, ShardId};
use dashmap::DashMap;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// The record encoding of shard column families lives in `counter-core` (pure, fuzzed).
pub use counter_core::record::{self, encode as encode_state, FORMAT_VERSION};
pub mod identity;
pub use identity::{ClusterConfig, Identity, BOOTSTRAP_CONFIG_VERSION};

const META_CF: &str = "meta";
const META_SHARDS: &[u8] = b"shards";
const META_FORMAT: &[u8] = b"format";
const META_EPOCH: &[u8] = b"epoch";
/// The cluster id (postcard u64), written with the three below in one batch.
const META_CLUSTER: &[u8] = b"cluster_id";
/// The node id the data dir belongs to (postcard u32).
const META_NODE: &[u8] = b"node";
/// The configuration it was created with (postcard [`ClusterConfig`]).
const META_CONFIG: &[u8] = b"config";
/// [`DataState::Created`] until the node first serves, then [`DataState::Serving`].
const META_STATE: &[u8] = b"state";
/// Most keys whose synced state is kept in memory.
pub const CACHED_KEYS: usize = 500_000;

/// Makes room for one more entry in a map bounded to `cap` entries by dropping an arbitrary
/// one (the first in iteration order, spread by the hash) when it is full. Callers must hold
/// no guard of `map`.
pub fn make_room<K: Eq + std::hash::Hash + Clone, V>(map: &DashMap<K, V>, cap: usize) {
    if map.len() >= cap {
        let victim = map.iter().next().map(|e| e.key().clone());
        if let Some(k) = victim {
            map.remove(&k);
        }
    }
}
/// Most changes gathered into one synced batch.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "data dir {dir} was created for {on_disk} shards but the cluster file says {configured}; \
         refusing to start (shards cannot change without moving data)"
    )]
    ShardMismatch {
        dir: PathBuf,
        on_disk: u32,
        configured: u32,
    },
    #[error(
        "data dir {dir} uses on-disk format {found}, this build reads format {FORMAT_VERSION}"
    )]
    FormatMismatch { dir: PathBuf, found: u8 },
    #[error(
        "data dir {dir} belongs to node {recorded}, not node {given}: refusing to start \
         (a data dir holds one node's promises and acceptances). Start node {recorded} on it \
         (--id {recorded}), and node {given} on the data dir it last ran with"
    )]
    WrongNode {
        dir: PathBuf,
        recorded: NodeId,
        given: NodeId,
    },
    #[error(
        "the cluster file differs from the configuration data dir {dir} was created with ({}): \
         refusing to start. Members, replication and shards cannot be changed by editing the \
         cluster file (keys would move to replicas that never saw them); restore the original \
         cluster file. Online membership changes (`cluster add-node/remove-node/replace-node` \
         admin commands) are planned, not yet available",
        changes.join("; ")
    )]
    ConfigChanged { dir: PathBuf, changes: Vec<String> },
    #[error("{0}")]
    Io(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("shard {0} is not stored here")]
    NoSuchShard(ShardId),
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("the storage committer has stopped")]
    Stopped,
}

/// Decodes a record. Never panics, whatever the bytes.
pub fn decode_state(bytes: &[u8]) -> Result<AcceptorState, StorageError> {
    record::decode(bytes).map_err(StorageError::Corrupt)
}

fn shard_cf(shard: ShardId) -> String {
    format!("shard-{shard:05}")
}

/// What a data dir holds, as far as who it belongs to is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirContents {
    /// No database, or one that never recorded its shard count (a first start that stopped
    /// before it finished creating it): it has never served.
    Empty,
    /// Created by an earlier build, which recorded the shard count but no identity.
    Legacy { shards: u32 },
    /// Created by this build.
    Identified {
        identity: Identity,
        state: DataState,
    },
}

/// Reads what `dir` holds without writing to it (RocksDB opened read-only, its `meta` column
/// family only; no database is created where there is none).
pub fn inspect(dir: &Path) -> Result<DirContents, StorageError> {
    match std::fs::metadata(dir.join("CURRENT")) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirContents::Empty),
        Err(e) => {
            return Err(StorageError::Io(format!(
                "cannot read data dir {}: {e}",
                dir.display()
            )))
        }
    }
    let opts = Options::default();
    let cfs = DB::list_cf(&opts, dir)?;
    if !cfs.iter().any(|cf| cf == META_CF) {
        return Err(StorageError::Corrupt(format!(
            "{} has no meta column family",
            dir.display()
        )));
    }
    let db = DB::open_cf_for_read_only(&opts, dir, [META_CF], false)?;
    read_meta(&db, dir)
}

/// [`inspect`]s `dir` and checks it may be opened as `expected` (see [`Store::open_node`]).
/// Writes nothing.
pub fn check(dir: &Path, expected: &Identity) -> Result<DirContents, StorageError> {
    let contents = inspect(dir)?;
    check_contents(dir, &contents, expected)?;
    Ok(contents)
}

fn check_contents(
    dir: &Path,
    contents: &DirContents,
    expected: &Identity,
) -> Result<(), StorageError> {
    match contents {
        DirContents::Empty => Ok(()),
        DirContents::Legacy { .. } => check_shards(dir, contents, expected.config.shards),
        DirContents::Identified { identity, .. } => {
            if identity.node != expected.node {
                return Err(StorageError::WrongNode {
                    dir: dir.to_path_buf(),
                    recorded: identity.node,
                    given: expected.node,
                });
            }
            let changes = identity.config.changes(&expected.config);
            if !changes.is_empty() {
                return Err(StorageError::ConfigChanged {
                    dir: dir.to_path_buf(),
                    changes,
                });
            }
            Ok(())
        }
    }
}

fn check_shards(dir: &Path, contents: &DirContents, shards: u32) -> Result<(), StorageError> {
    let on_disk = match contents {
        DirContents::Empty => return Ok(()),
        DirContents::Legacy { shards } => *shards,
        DirContents::Identified { identity, .. } => identity.config.shards,
    };
    if on_disk != shards {
        return Err(StorageError::ShardMismatch {
            dir: dir.to_path_buf(),
            on_disk,
            configured: shards,
        });
    }
    Ok(())
}

/// The `meta` column family's account of who the data dir belongs to.
fn read_meta(db: &DB, dir: &Path) -> Result<DirContents, StorageError> {
    let meta = db.cf_handle(META_CF).ok_or_else(|| {
        StorageError::Corrupt(format!("{} has no meta column family", dir.display()))
    })?;
    fn get<T: serde::de::DeserializeOwned>(
        db: &DB,
        meta: &impl rocksdb::AsColumnFamilyRef,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match db.get_cf(meta, key)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| {
                StorageError::Corrupt(format!("meta {}: {e}", String::from_utf8_lossy(key)))
            }),
        }
    }
    let Some(shards) = get::<u32>(db, &meta, META_SHARDS)? else {
        return Ok(DirContents::Empty);
    };
    let format = db.get_cf(&meta, META_FORMAT)?.unwrap_or_default();
    // Format 2 (before client sessions) still reads: its records are converted as they are
    // read (`counter_core::record`), and opening the dir marks it format 3.
    if format != [FORMAT_VERSION] && format != [2] {
        return Err(StorageError::FormatMismatch {
            dir: dir.to_path_buf(),
            found: format.first().copied().unwrap_or(0),
        });
    }
    let Some(cluster_id) = get::<u64>(db, &meta, META_CLUSTER)? else {
        return Ok(DirContents::Legacy { shards });
    };
    let missing = |what: &str| {
        StorageError::Corrupt(format!(
            "{} records a cluster id but no {what}",
            dir.display()
        ))
    };
    let node = get::<NodeId>(db, &meta, META_NODE)?.ok_or_else(|| missing("node id"))?;
    let config =
        get::<ClusterConfig>(db, &meta, META_CONFIG)?.ok_or_else(|| missing("configuration"))?;
    let state = get::<DataState>(db, &meta, META_STATE)?.ok_or_else(|| missing("state"))?;
    if config.shards != shards {
        return Err(StorageError::Corrupt(format!(
            "{} records {shards} shards and a configuration of {}",
            dir.display(),
            config.shards
        )));
    }
    Ok(DirContents::Identified {
        identity: Identity {
            cluster_id,
            node,
            config,
        },
        state,
    })
}

/// A pending change: the state, and which write produced it.
struct Pending {
    state: AcceptorState,
    gen: u64,
}

struct WriteReq {
    shard: ShardId,
    key: Vec<u8>,
    /// The record, encoded by the caller (the committer thread only writes).
    record: Vec<u8>,
    gen: u64,
    done: oneshot::Sender<Result<(), String>>,
}

/// The acceptor store of one node.
pub struct Store {
    db: Arc<DB>,
    cf_names: Arc<[String]>,
    shards: u32,
    epoch: u32,
    /// Who the data dir belongs to (`None` when opened with [`Store::open`]).
    identity: Option<Identity>,
    state: DataState,
    /// Changes written to the batch queue and not yet synced, keyed by (shard, key).
    pending: Arc<DashMap<(ShardId, Vec<u8>), Pending>>,
    /// Synced states of recently used keys (see "Caching").
    synced: Arc<DashMap<(ShardId, Vec<u8>), AcceptorState>>,
    next_gen: AtomicU64,
    /// The committer's queue; `None` once the store is being dropped.
    tx: Option<mpsc::Sender<WriteReq>>,
    committer: Option<std::thread::JoinHandle<()>>,
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
        opts.set_db_write_buffer_size(64 << 20);
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
        // New records are written in this format from now on (an older build then refuses
        // the dir instead of misreading them).
        batch.put_cf(&meta, META_FORMAT, [FORMAT_VERSION]);
        let (identity, state) = match (contents, expected) {
            (DirContents::Identified { identity, state }, _) => (Some(identity), state),
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

        let db = Arc::new(db);
        // Column family names, built once: looking a handle up must not format a string per op.
        let cf_names: Arc<[String]> = (0..shards).map(shard_cf).collect();
        let pending = Arc::new(DashMap::new());
        let synced = Arc::new(DashMap::new());
        let (tx, rx) = mpsc::channel();
        let committer = Committer {
            db: db.clone(),
            cf_names: cf_names.clone(),
            pending: pending.clone(),
            synced: synced.clone(),
            rx,
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
            state,
            pending,
            synced,
            next_gen: AtomicU64::new(1),
            tx: Some(tx),
            committer: Some(committer),
        })
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
        self.state
    }

    /// Records (synced) that the node is about to serve: from now on its data dir may hold
    /// promises and acceptances, and an empty data dir under its id is a lost one.
    pub fn mark_serving(&mut self) -> Result<(), StorageError> {
        if self.state == DataState::Serving {
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
            postcard::to_stdvec(&DataState::Serving).expect("an enum"),
            &sync,
        )?;
        self.state = DataState::Serving;
        Ok(())
    }

    /// The current acceptor state of a key: pending (not yet synced) changes included.
    pub fn peek(&self, shard: ShardId, key: &str) -> Result<AcceptorState, StorageError> {
        let k = (shard, key.as_bytes().to_vec());
        if let Some(p) = self.pending.get(&k) {
            return Ok(p.state.clone());
        }
        if let Some(s) = self.synced.get(&k) {
            return Ok(s.clone());
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

    /// The durable acceptor state of a key (what a restart would see).
    fn load(&self, shard: ShardId, key: &[u8]) -> Result<AcceptorState, StorageError> {
        let cf = self
            .db
            .cf_handle(
                self.cf_names
                    .get(shard as usize)
                    .ok_or(StorageError::NoSuchShard(shard))?,
            )
            .ok_or(StorageError::NoSuchShard(shard))?;
        match self.db.get_pinned_cf(&cf, key)? {
            Some(bytes) => decode_state(&bytes),
            None => Ok(AcceptorState::default()),
        }
    }

    /// Handles a Prepare; the reply is returned only once any change it reports is durable.
    pub async fn prepare(
        &self,
        shard: ShardId,
        key: &str,
        ballot: Ballot,
    ) -> Result<AcceptorReply, StorageError> {
        self.apply(shard, key, |s| s.prepare(ballot)).await
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
        self.apply(shard, key, |s| s.accept(ballot, register, next))
            .await
    }

    async fn apply(
        &self,
        shard: ShardId,
        key: &str,
        rule: impl FnOnce(&AcceptorState) -> (Option<AcceptorState>, AcceptorReply),
    ) -> Result<AcceptorReply, StorageError> {
        if shard >= self.shards {
            return Err(StorageError::NoSuchShard(shard));
        }
        let (reply, done) = {
            // The entry lock serialises read-modify-write on this key until the change is queued.
            let entry = self.pending.entry((shard, key.as_bytes().to_vec()));
            // The rule reads the current state in place (no copy of its register).
            let (next, reply) = match &entry {
                dashmap::Entry::Occupied(e) => rule(&e.get().state),
                dashmap::Entry::Vacant(v) => match self.synced.get(v.key()) {
                    Some(cached) => rule(&cached),
                    None => {
                        // Nothing of this key is pending (we hold its entry), so RocksDB has
                        // its latest synced state: safe to cache.
                        let state = self.load(shard, key.as_bytes())?;
                        let decided = rule(&state);
                        make_room(&self.synced, CACHED_KEYS);
                        self.synced.insert(v.key().clone(), state);
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
                key: key.as_bytes().to_vec(),
                record: record::encode(&state),
                gen,
                done: done_tx,
            };
            entry.insert(Pending { state, gen });
            self.tx
                .as_ref()
                .ok_or(StorageError::Stopped)?
                .send(req)
                .map_err(|_| StorageError::Stopped)?;
            (reply, done_rx)
        };
        match done.await {
            Ok(Ok(())) => Ok(reply),
            Ok(Err(e)) => Err(StorageError::Corrupt(format!("write failed: {e}"))),
            Err(_) => Err(StorageError::Stopped),
        }
    }
}

impl Committer {
    /// The change `gen` of `key` is synced: if it is the key's latest, it leaves the pending
    /// overlay for the cache of synced states; if a newer one is pending, the cached state (if
    /// any) is now behind the disk and is dropped. Both under the key's pending-entry lock.
    fn settle(&self, key: (ShardId, Vec<u8>), gen: u64) {
        match self.pending.entry(key) {
            dashmap::Entry::Occupied(e) if e.get().gen == gen => {
                // Cached before the pending entry goes: in between, a change of the key would
                // find neither and could start from an older cached state.
                if !self.synced.contains_key(e.key()) {
                    make_room(&self.synced, CACHED_KEYS);
                }
                // Moved, not copied: nobody sees the emptied pending entry, we hold its lock.
                let mut e = e;
                let state = std::mem::take(&mut e.get_mut().state);
                self.synced.insert(e.key().clone(), state);
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

/// The group-commit loop: one synced WriteBatch per round of waiting changes.
struct Committer {
    db: Arc<DB>,
    cf_names: Arc<[String]>,
    pending: Arc<DashMap<(ShardId, Vec<u8>), Pending>>,
    synced: Arc<DashMap<(ShardId, Vec<u8>), AcceptorState>>,
    rx: mpsc::Receiver<WriteReq>,
}

impl Committer {
    fn run(self) {
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
            let mut batch = WriteBatch::default();
            let mut missing = None;
            for r in &reqs {
                let name = self.cf_names.get(r.shard as usize);
                match name.and_then(|n| self.db.cf_handle(n)) {
                    Some(cf) => batch.put_cf(&cf, &r.key, &r.record),
                    None => missing = Some(r.shard),
                }
            }
            let result = match missing {
                Some(shard) => Err(format!("no column family for shard {shard}")),
                None => self.db.write_opt(batch, &sync).map_err(|e| e.to_string()),
            };
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
                self.settle((r.shard, r.key), r.gen);
                let _ = r.done.send(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(round: u64, node: u32) -> Ballot {
        Ballot {
            round,
            node,
            epoch: 0,
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let s = AcceptorState {
            promised: b(4, 2),
            accepted: Some((b(3, 1), Register::new(-9, 2))),
        };
        let bytes = encode_state(&s);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_state(&bytes).unwrap(), s);
        for cut in 0..bytes.len() {
            assert!(decode_state(&bytes[..cut]).is_err());
        }
        assert!(decode_state(&[9, 0, 0]).is_err());
        let mut long = bytes.clone();
        long.push(1);
        assert!(decode_state(&long).is_err());
    }

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
        {
            let db = DB::open_cf(
                &Options::default(),
                dir.path(),
                [META_CF, &shard_cf(0), &shard_cf(1)],
            )
            .unwrap();
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
        let db = DB::open_cf(
            &Options::default(),
            dir.path(),
            [META_CF, &shard_cf(0), &shard_cf(1)],
        )
        .unwrap();
        let meta = db.cf_handle(META_CF).unwrap();
        assert_eq!(
            db.get_cf(&meta, META_FORMAT).unwrap().unwrap(),
            [FORMAT_VERSION]
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

    fn config(members: &[u32], shards: u32) -> ClusterConfig {
        ClusterConfig::bootstrap(
            3,
            shards,
            members
                .iter()
                .map(|&i| (i, format!("127.0.0.1:{}", 7100 + i)))
                .collect(),
        )
    }

    /// Every file under `dir` with its length and modification time.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                (e.path(), m.len(), m.modified().unwrap())
            })
            .collect();
        files.sort();
        files
    }

    /// Refused with `expected_error`, and the data dir is exactly as before: no file created,
    /// grown or touched (the epoch is not bumped, no identity is adopted).
    fn refused_untouched(dir: &Path, expected: &Identity, expected_error: &str) -> String {
        let before = snapshot(dir);
        let meta_before = inspect(dir).unwrap();
        let err = Store::open_node(dir, expected)
            .err()
            .expect("must refuse")
            .to_string();
        assert!(err.contains(expected_error), "{err}");
        assert_eq!(
            snapshot(dir),
            before,
            "a refused open wrote to the data dir"
        );
        assert_eq!(inspect(dir).unwrap(), meta_before);
        err
    }

    #[tokio::test]
    async fn a_new_data_dir_records_its_identity_created_then_serving() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::new(2, config(&[1, 2, 3], 4));
        assert_eq!(inspect(dir.path()).unwrap(), DirContents::Empty);
        let mut store = Store::open_node(dir.path(), &me).unwrap();
        assert_eq!(store.identity(), Some(&me));
        assert_eq!(store.data_state(), DataState::Created);
        assert_eq!(store.epoch(), 1);
        drop(store);
        // A restart before it served is still `Created` (it waits for its peers again).
        store = Store::open_node(dir.path(), &me).unwrap();
        assert_eq!(store.data_state(), DataState::Created);
        store.mark_serving().unwrap();
        drop(store);
        assert_eq!(
            inspect(dir.path()).unwrap(),
            DirContents::Identified {
                identity: me.clone(),
                state: DataState::Serving
            }
        );
        let store = Store::open_node(dir.path(), &me).unwrap();
        assert_eq!(store.data_state(), DataState::Serving);
        assert_eq!(store.epoch(), 3);
    }

    #[test]
    fn inspecting_a_missing_data_dir_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("node-1");
        assert_eq!(inspect(&missing).unwrap(), DirContents::Empty);
        assert!(!missing.exists());
    }

    #[test]
    fn another_node_id_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::new(1, config(&[1, 2, 3], 4));
        drop(Store::open_node(dir.path(), &me).unwrap());
        let other = Identity::new(2, me.config.clone());
        let err = refused_untouched(dir.path(), &other, "belongs to node 1, not node 2");
        assert!(!err.contains('\n'), "one line: {err}");
        // Still node 1's, and the refusal did not bump its epoch.
        assert_eq!(Store::open_node(dir.path(), &me).unwrap().epoch(), 2);
    }

    #[test]
    fn a_changed_member_list_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::new(1, config(&[1, 2, 3], 4));
        drop(Store::open_node(dir.path(), &me).unwrap());
        let err = refused_untouched(
            dir.path(),
            &Identity::new(1, config(&[1, 2, 3, 4], 4)),
            "node 4 (127.0.0.1:7104) added",
        );
        assert!(
            err.contains("restore the original cluster file") && err.contains("not yet available"),
            "{err}"
        );
        refused_untouched(
            dir.path(),
            &Identity::new(1, config(&[1, 2], 4)),
            "node 3 (127.0.0.1:7103) removed",
        );
        let mut moved = config(&[1, 2, 3], 4);
        moved.members.insert(2, "10.0.0.2:7101".into());
        refused_untouched(
            dir.path(),
            &Identity::new(1, moved),
            "node 2 addr 127.0.0.1:7102 -> 10.0.0.2:7101",
        );
        let mut replication = config(&[1, 2, 3], 4);
        replication.replication = 1;
        refused_untouched(
            dir.path(),
            &Identity::new(1, replication),
            "replication 3 -> 1",
        );
        assert_eq!(Store::open_node(dir.path(), &me).unwrap().epoch(), 2);
    }

    #[test]
    fn changed_shards_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::new(3, config(&[1, 2, 3], 4));
        drop(Store::open_node(dir.path(), &me).unwrap());
        refused_untouched(
            dir.path(),
            &Identity::new(3, config(&[1, 2, 3], 8)),
            "created for 4 shards but the cluster file says 8",
        );
        assert_eq!(Store::open_node(dir.path(), &me).unwrap().epoch(), 2);
    }

    #[tokio::test]
    async fn a_data_dir_of_an_earlier_build_adopts_the_cluster_file_identity() {
        let dir = tempfile::tempdir().unwrap();
        // What the previous build did: shards and format, no identity.
        let legacy = Store::open(dir.path(), 4).unwrap();
        legacy.prepare(1, "k", b(3, 1)).await.unwrap();
        legacy
            .accept(1, "k", b(3, 1), Register::new(7, 1), None)
            .await
            .unwrap();
        drop(legacy);
        assert_eq!(
            inspect(dir.path()).unwrap(),
            DirContents::Legacy { shards: 4 }
        );
        // Its shard count is still checked, before anything is written.
        refused_untouched(
            dir.path(),
            &Identity::new(1, config(&[1, 2, 3], 8)),
            "created for 4 shards but the cluster file says 8",
        );
        let me = Identity::new(1, config(&[1, 2, 3], 4));
        let store = Store::open_node(dir.path(), &me).unwrap();
        // It may have served: no waiting for peers.
        assert_eq!(store.data_state(), DataState::Serving);
        assert_eq!(store.identity(), Some(&me));
        assert_eq!(store.epoch(), 2, "the epoch goes on from the old one");
        assert_eq!(store.read_durable(1, "k").unwrap(), Some((b(3, 1), 7)));
        drop(store);
        // Adopted for good: now the guards hold.
        refused_untouched(
            dir.path(),
            &Identity::new(2, me.config.clone()),
            "belongs to node 1",
        );
        refused_untouched(
            dir.path(),
            &Identity::new(1, config(&[1, 2, 3, 4], 4)),
            "node 4 (127.0.0.1:7104) added",
        );
    }

    #[test]
    fn a_full_map_makes_room_and_stays_bounded() {
        let map = DashMap::new();
        for k in 0..100u32 {
            make_room(&map, 10);
            map.insert(k, k);
            assert!(map.len() <= 10);
        }
        assert!(map.contains_key(&99), "the newest entry is kept");
    }
}
