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
//! The last synced state of recently used keys is kept in memory ([`SyncedCache`]: at most
//! [`CACHE_BYTES`] of keys and states by an estimate of their size; when full, `quick_cache`
//! evicts a key not used recently), so that a Prepare or an Accept does not search RocksDB's memtable, where every change
//! of a hot key is another version. The cache only ever holds durable states: the committer
//! moves a state into it after the state's batch was synced and before the reply is released,
//! under the same lock that orders changes of the key; a key read from RocksDB is cached only
//! while no change of it is pending.
//!
//! A failed synced write stops the process (exit status 70): after a failed fsync the page
//! cache may hold data the disk does not, and only a restart from the durable state is safe.
//!
//! # Modules
//!
//! - `store`: [`Store`], opening, reading and changing acceptor state.
//! - `committer`: the group-commit thread.
//! - `meta`: the `meta` column family, [`inspect`], [`check`] and the guards.
//! - [`identity`]: who a data dir belongs to, and the cluster id.
//!
//! [`DataState`]: counter_proto::DataState

use counter_core::AcceptorState;
use counter_proto::{NodeId, ShardId};
use std::path::PathBuf;

mod agreed;
mod committer;
#[cfg(test)]
mod crash;
mod meta;
mod store;

/// The record encoding of shard column families lives in `counter-core` (pure, fuzzed).
pub use counter_core::record::{self, encode as encode_state, FORMAT_VERSION};

/// The data dir's format, recorded in its meta column family: [`FORMAT_VERSION`] while it was
/// the same as the records', then 4: records of format 3, plus shard floors (promises of every
/// key of a shard, `counter_core::floor`) in the meta column family. An older build, which
/// would not know the floors and could accept below them, refuses a dir of format 4. Dirs of
/// formats 2 and 3 are opened and become format 4.
pub const DIR_FORMAT: u8 = 4;
pub mod identity;
pub use agreed::{RescanProgress, ShardProgress};
pub use identity::{ClusterConfig, Identity, BOOTSTRAP_CONFIG_VERSION};
pub use meta::{check, inspect, DirContents};
pub use store::Store;

/// Most bytes (estimated: [`StateWeight`]) of keys and synced states kept in memory.
pub const CACHE_BYTES: u64 = 64 << 20;

/// The cache of synced acceptor states by (shard, key). Values are shared (`Arc`): a hit costs
/// no copy of the register.
pub type SyncedCache =
    quick_cache::sync::Cache<(ShardId, Vec<u8>), std::sync::Arc<AcceptorState>, StateWeight>;

/// An estimate of the memory a cached key and state hold: the key, the state's fixed part and
/// the hash table's entry, and each client entry of the register.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateWeight;

impl quick_cache::Weighter<(ShardId, Vec<u8>), std::sync::Arc<AcceptorState>> for StateWeight {
    fn weight(&self, key: &(ShardId, Vec<u8>), state: &std::sync::Arc<AcceptorState>) -> u64 {
        let clients = state.accepted.as_ref().map_or(0, |(_, r)| r.clients.len());
        (key.1.len() + 160 + clients * 64) as u64
    }
}

/// A new, empty cache of synced states bounded by [`CACHE_BYTES`].
pub fn synced_cache() -> SyncedCache {
    // About 250 bytes per entry for a small register.
    SyncedCache::with_weighter((CACHE_BYTES / 250) as usize, CACHE_BYTES, StateWeight)
}

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
        "data dir {dir} uses on-disk format {found}, this build reads formats 2 to {DIR_FORMAT}"
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
         cluster file, and change members online with `counter-cli cluster add-node`, \
         `remove-node` or `replace-node`",
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

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::{Ballot, Register};

    pub(crate) fn b(round: u64, node: u32) -> Ballot {
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

    #[test]
    fn the_cache_of_synced_states_is_bounded_by_bytes_and_keeps_hot_keys() {
        use std::sync::Arc;
        let cache = SyncedCache::with_weighter(100, 20_000, StateWeight);
        let hot = (1, b"hot".to_vec());
        cache.insert(hot.clone(), Arc::new(AcceptorState::default()));
        for k in 0..10_000u32 {
            let key = (0, format!("key-{k}").into_bytes());
            cache.insert(key, Arc::new(AcceptorState::default()));
            assert!(cache.weight() <= 20_000, "weight {}", cache.weight());
            assert!(
                cache.get(&hot).is_some(),
                "a key used all along is kept ({k})"
            );
        }
        assert!(cache.len() < 200, "{} entries", cache.len());
    }
}
