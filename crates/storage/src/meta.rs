//! The `meta` column family: who a data dir belongs to, read without writing ([`inspect`]),
//! and the guards that refuse another node's data dir or another configuration ([`check`]);
//! the names of the column families.

use crate::{ClusterConfig, Identity, StorageError, DIR_FORMAT};
use counter_proto::{DataState, NodeId, ShardId};
use rocksdb::{Options, DB};
use std::path::Path;

pub(crate) const META_CF: &str = "meta";
pub(crate) const META_SHARDS: &[u8] = b"shards";
pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_EPOCH: &[u8] = b"epoch";
/// The cluster id (postcard u64), written with the three below in one batch.
pub(crate) const META_CLUSTER: &[u8] = b"cluster_id";
/// The node id the data dir belongs to (postcard u32).
pub(crate) const META_NODE: &[u8] = b"node";
/// The configuration it was created with (postcard [`ClusterConfig`]).
pub(crate) const META_CONFIG: &[u8] = b"config";
/// [`DataState::Created`] until the node first serves, then [`DataState::Serving`].
pub(crate) const META_STATE: &[u8] = b"state";
/// The newest agreed configuration the node installed (postcard [`counter_proto::Config`]).
pub(crate) const META_AGREED: &[u8] = b"agreed";
/// The node's acceptor state of the configuration register.
pub(crate) const META_CONFIG_REGISTER: &[u8] = b"config_register";
/// How far the rescan of the change this node drives went (`RescanProgress`).
pub(crate) const META_RESCAN: &[u8] = b"rescan";
/// `floor/<shard>`: the shard's floor, a ballot promised to every key of the shard (postcard).
pub(crate) fn meta_floor(shard: ShardId) -> Vec<u8> {
    format!("floor/{shard}").into_bytes()
}

/// The column family of a shard's records (`shard-00000` ..).
pub(crate) fn shard_cf(shard: ShardId) -> String {
    format!("shard-{shard:05}")
}

/// What a data dir holds, as far as who it belongs to is concerned.
#[allow(clippy::large_enum_variant)] // read once at start-up, never stored in bulk
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
        /// The newest agreed configuration it installed (after a membership change).
        agreed: Option<counter_proto::Config>,
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
    let mut opts = Options::default();
    crate::store::wal_options(&mut opts);
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
///
/// [`Store::open_node`]: crate::Store::open_node
pub fn check(dir: &Path, expected: &Identity) -> Result<DirContents, StorageError> {
    let contents = inspect(dir)?;
    check_contents(dir, &contents, expected)?;
    Ok(contents)
}

pub(crate) fn check_contents(
    dir: &Path,
    contents: &DirContents,
    expected: &Identity,
) -> Result<(), StorageError> {
    match contents {
        DirContents::Empty => Ok(()),
        DirContents::Legacy { .. } => check_shards(dir, contents, expected.config.shards),
        DirContents::Identified {
            identity, agreed, ..
        } => {
            if identity.node != expected.node {
                return Err(StorageError::WrongNode {
                    dir: dir.to_path_buf(),
                    recorded: identity.node,
                    given: expected.node,
                });
            }
            let changes = identity.config.changes(&expected.config);
            if changes.is_empty() {
                return Ok(());
            }
            // After membership changes, a cluster file that lists the agreed members is fine
            // too (the file only bootstraps; placement comes from the agreed configuration).
            let Some(agreed) = agreed else {
                return Err(StorageError::ConfigChanged {
                    dir: dir.to_path_buf(),
                    changes,
                });
            };
            let now = ClusterConfig {
                version: expected.config.version,
                replication: agreed.replication,
                shards: agreed.shard_count(),
                members: agreed.members.clone(),
            };
            let against_agreed = now.changes(&expected.config);
            if against_agreed.is_empty() {
                return Ok(());
            }
            Err(StorageError::ConfigChanged {
                dir: dir.to_path_buf(),
                changes: against_agreed
                    .into_iter()
                    .map(|c| {
                        format!(
                            "{c} (against agreed configuration version {})",
                            agreed.version
                        )
                    })
                    .collect(),
            })
        }
    }
}

pub(crate) fn check_shards(
    dir: &Path,
    contents: &DirContents,
    shards: u32,
) -> Result<(), StorageError> {
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
pub(crate) fn read_meta(db: &DB, dir: &Path) -> Result<DirContents, StorageError> {
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
    // Formats 2 (before client sessions: its records are converted as they are read,
    // `counter_core::record`) and 3 (before shard floors) still read; opening the dir marks it
    // format 4.
    if !matches!(format.as_slice(), [2..=DIR_FORMAT]) {
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
    let agreed = get::<counter_proto::Config>(db, &meta, META_AGREED)?;
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
        agreed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::b;
    use crate::Store;
    use counter_proto::Register;
    use std::path::PathBuf;

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
                state: DataState::Serving,
                agreed: None,
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
            err.contains("restore the original cluster file") && err.contains("cluster add-node"),
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
}
