//! Opening the data dir of a node started with `--join`: a new member of a running cluster.
//!
//! An empty data dir is created only after the member it joins through has answered with the
//! agreed configuration, and only if that configuration neither counts this id as a member (a
//! member with an empty data dir lost its disk: it must come back through `replace-node` under
//! a new id, never as an acceptor with amnesia) nor lists it as removed (ids are never reused).
//! The data dir records the cluster's id, this node's id and the configuration, in state
//! `joining`; the node becomes a member when an admin adds it (`cluster add-node`).
//!
//! A data dir that exists is opened as it is (a restart with the same command line).

use crate::bootstrap::StartError;
use counter_net::Pool;
use counter_proto::{Config, DataState, Msg, NodeId};
use counter_storage::{ClusterConfig, DirContents, Identity, StorageError, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens (creating it if empty, after the checks) the data dir of node `id` joining through
/// the member at `seed`.
pub async fn open(
    id: NodeId,
    seed: &str,
    dir: &Path,
    timeout: Duration,
) -> Result<Arc<Store>, StartError> {
    let refused = |e: StorageError| match e {
        StorageError::WrongNode { .. }
        | StorageError::ConfigChanged { .. }
        | StorageError::ShardMismatch { .. } => StartError::Refused(e.to_string()),
        e => StartError::Failed(e.to_string()),
    };
    let existing = match counter_storage::inspect(dir).map_err(refused)? {
        DirContents::Identified {
            identity, state, ..
        } => {
            if identity.node != id {
                return Err(refused(StorageError::WrongNode {
                    dir: dir.to_path_buf(),
                    recorded: identity.node,
                    given: id,
                }));
            }
            let store = Store::open_node(dir, &identity).map_err(refused)?;
            if state != DataState::Created {
                return Ok(Arc::new(store));
            }
            // Created but not finished joining (a crash between creating it and recording the
            // configuration): it never served, so the join is done again.
            Some(store)
        }
        DirContents::Legacy { .. } => {
            return Err(StartError::Refused(format!(
                "data dir {} was created by an earlier build for a cluster file: start it with \
                 --cluster, not --join",
                dir.display()
            )))
        }
        DirContents::Empty => None,
    };
    let config = newest_config(seed, timeout).await?;
    judge(id, dir, &config)?;
    let store = match existing {
        Some(store) => {
            let recorded = store.identity().map(|i| i.cluster_id);
            if recorded != Some(config.cluster_id) {
                return Err(StartError::Refused(format!(
                    "data dir {} was created for another cluster than the one {seed} belongs \
                     to: use another data dir",
                    dir.display()
                )));
            }
            store
        }
        None => {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::Failed(format!("cannot create {}: {e}", dir.display())))?;
            let identity = Identity {
                cluster_id: config.cluster_id,
                node: id,
                config: ClusterConfig {
                    version: config.version,
                    replication: config.replication,
                    shards: config.shard_count(),
                    members: config.members.clone(),
                },
            };
            Store::open_node(dir, &identity).map_err(refused)?
        }
    };
    store.save_agreed(&config).map_err(refused)?;
    store.set_state(DataState::Joining).map_err(refused)?;
    tracing::info!(
        dir = %dir.display(),
        cluster_id = %format!("{:016x}", config.cluster_id),
        version = config.version,
        "data dir created for a node joining the cluster"
    );
    Ok(Arc::new(store))
}

/// The newest agreed configuration: the seed's, then every member's it names, until no member
/// names a newer one (a seed that was down or cut off may answer an old configuration, in
/// which a wiped member would not be a member yet).
async fn newest_config(seed: &str, timeout: Duration) -> Result<Config, StartError> {
    let mut newest = ask_config(seed, timeout).await?;
    let pool = Pool::new(Duration::from_millis(500));
    for _ in 0..5 {
        let asks = newest.members.values().map(|addr| {
            let pool = &pool;
            async move {
                pool.call(addr, Msg::GetConfig, Duration::from_secs(2))
                    .await
            }
        });
        let mut changed = false;
        for answer in futures::future::join_all(asks).await {
            if let Ok(Msg::ConfigIs(config)) = answer {
                if config.cluster_id == newest.cluster_id && config.version > newest.version {
                    newest = *config;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    Ok(newest)
}

/// Whether node `id` may be created empty to join the cluster `config` describes.
pub fn judge(id: NodeId, dir: &Path, config: &Config) -> Result<(), StartError> {
    if let Some(addr) = config.addr(id) {
        return Err(StartError::Refused(format!(
            "node {id} is a member of the cluster (at {addr}) but data dir {} is empty: its disk \
             was lost or wiped, and starting it empty could lose acknowledged counts. Restore \
             the data dir it last ran with, or replace it: start a node with a new id (--id \
             NEW_ID --join ...) and run `counter-cli cluster replace-node {id} NEW_ID NEW_ADDR`",
            dir.display()
        )));
    }
    if config.removed.contains(&id) {
        return Err(StartError::Refused(format!(
            "node id {id} was removed from the cluster, and ids are never reused (a node under \
             it could bring back state the cluster has moved past): start the node with a new \
             id"
        )));
    }
    Ok(())
}

/// The agreed configuration, from the member at `seed` (asked until `timeout`).
async fn ask_config(seed: &str, timeout: Duration) -> Result<Config, StartError> {
    let pool = Pool::new(Duration::from_millis(500));
    let deadline = Instant::now() + timeout;
    loop {
        let why = match pool
            .call(seed, Msg::GetConfig, Duration::from_secs(2))
            .await
        {
            Ok(Msg::ConfigIs(config)) => return Ok(*config),
            Ok(other) => format!("it answered {other:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(StartError::Failed(format!(
                "cannot join through {seed}: {why} (after {}s, --bootstrap-timeout-secs); \
                 nothing was written. Check that a member listens there",
                timeout.as_secs()
            )));
        }
        tracing::info!(seed, why, "waiting for the member to join through");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::ShardSet;

    #[test]
    fn an_empty_member_or_a_removed_id_is_refused() {
        let config = Config {
            version: 3,
            cluster_id: 1,
            replication: 3,
            members: [(1, "a:1".to_string()), (2, "b:2".to_string())].into(),
            shards: vec![ShardSet::stable(vec![1, 2])],
            pending: None,
            removed: vec![5],
            dedup: Default::default(),
        };
        let dir = Path::new("/d");
        let Err(StartError::Refused(amnesia)) = judge(2, dir, &config) else {
            panic!("a member with an empty data dir must be refused")
        };
        assert!(amnesia.contains("replace-node 2 NEW_ID"), "{amnesia}");
        assert!(matches!(
            judge(5, dir, &config),
            Err(StartError::Refused(_))
        ));
        assert_eq!(judge(6, dir, &config), Ok(()));
    }
}
