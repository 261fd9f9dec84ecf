//! Who a data dir belongs to: the cluster, the node, and the configuration it was created with.
//!
//! Recorded in the `meta` column family when a data dir is created, and compared with
//! `--id` and the cluster file at every start, before anything is written (see
//! [`crate::Store::open_node`]): a node refuses to start on another node's data dir, and with a
//! cluster file whose members, replication or shards differ from the recorded configuration
//! (editing the file would move keys to replica sets that never saw them).
//!
//! # The cluster id
//!
//! A stable hash of the bootstrap configuration: XXH3-64 (seed 0) of the text
//!
//! ```text
//! counter-store cluster
//! replication <R>
//! shards <S>
//! node <id> <addr>        (one line per member, by increasing id)
//! ```
//!
//! with every line ended by `\n` and addrs exactly as the cluster file spells them. Every
//! member computes it from its own cluster file without talking to the others, so members of
//! one cluster agree on it, and nodes started with differing files see that they differ. It
//! names the configuration, not the moment: a cluster created again from the same file (every
//! data dir emptied) gets the same id. It is fixed at creation; a later configuration version
//! (after membership changes) keeps it.

use counter_proto::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the configuration a cluster file describes (defined in `counter-proto`, which
/// routers share without RocksDB).
pub use counter_proto::BOOTSTRAP_CONFIG_VERSION;

/// What decides placement: the members and how keys are spread over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// [`BOOTSTRAP_CONFIG_VERSION`] for a cluster file's configuration.
    pub version: u64,
    pub replication: u32,
    pub shards: u32,
    /// Node id → the address the others reach it at.
    pub members: BTreeMap<NodeId, String>,
}

impl ClusterConfig {
    /// The configuration a cluster file describes.
    pub fn bootstrap(
        replication: u32,
        shards: u32,
        members: BTreeMap<NodeId, String>,
    ) -> ClusterConfig {
        ClusterConfig {
            version: BOOTSTRAP_CONFIG_VERSION,
            replication,
            shards,
            members,
        }
    }

    /// The id of a cluster created with this configuration (see the module doc).
    pub fn cluster_id(&self) -> u64 {
        let mut text = format!(
            "counter-store cluster\nreplication {}\nshards {}\n",
            self.replication, self.shards
        );
        for (id, addr) in &self.members {
            text += &format!("node {id} {addr}\n");
        }
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    /// How `now` (the cluster file) differs from `self` (recorded), one phrase per difference;
    /// empty if they are the same.
    pub fn changes(&self, now: &ClusterConfig) -> Vec<String> {
        let mut changes = Vec::new();
        if self.version != now.version {
            changes.push(format!(
                "configuration version {} recorded, {} in the file",
                self.version, now.version
            ));
        }
        if self.replication != now.replication {
            changes.push(format!(
                "replication {} -> {}",
                self.replication, now.replication
            ));
        }
        if self.shards != now.shards {
            // (Worded as the earlier shard-count refusal, which scripts may match.)
            changes.push(format!(
                "created for {} shards but the cluster file says {}",
                self.shards, now.shards
            ));
        }
        for (id, addr) in &now.members {
            match self.members.get(id) {
                None => changes.push(format!("node {id} ({addr}) added")),
                Some(was) if was != addr => changes.push(format!("node {id} addr {was} -> {addr}")),
                Some(_) => {}
            }
        }
        for (id, addr) in &self.members {
            if !now.members.contains_key(id) {
                changes.push(format!("node {id} ({addr}) removed"));
            }
        }
        changes
    }
}

/// Who a data dir belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: u64,
    pub node: NodeId,
    pub config: ClusterConfig,
}

impl Identity {
    /// Node `node` of the cluster created with `config` (its id computed from it).
    pub fn new(node: NodeId, config: ClusterConfig) -> Identity {
        Identity {
            cluster_id: config.cluster_id(),
            node,
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(members: &[(NodeId, &str)]) -> ClusterConfig {
        ClusterConfig::bootstrap(
            3,
            64,
            members.iter().map(|(i, a)| (*i, a.to_string())).collect(),
        )
    }

    #[test]
    fn the_cluster_id_is_a_pinned_hash_of_the_configuration() {
        let a = config(&[(1, "h:1"), (2, "h:2"), (3, "h:3")]);
        // Pinned: every build must compute the same id for the same file.
        assert_eq!(
            a.cluster_id(),
            xxhash_rust::xxh3::xxh3_64(
                b"counter-store cluster\nreplication 3\nshards 64\nnode 1 h:1\nnode 2 h:2\nnode 3 h:3\n"
            )
        );
        assert_eq!(a.cluster_id(), a.clone().cluster_id());
        let mut b = a.clone();
        b.members.insert(4, "h:4".into());
        assert_ne!(a.cluster_id(), b.cluster_id());
        let mut c = a.clone();
        c.shards = 32;
        assert_ne!(a.cluster_id(), c.cluster_id());
        let mut d = a.clone();
        d.version = 2;
        assert_eq!(
            a.cluster_id(),
            d.cluster_id(),
            "the version is not the cluster"
        );
    }

    #[test]
    fn changes_name_each_difference() {
        let a = config(&[(1, "h:1"), (2, "h:2"), (3, "h:3")]);
        assert!(a.changes(&a).is_empty());
        let mut b = config(&[(1, "h:1"), (2, "x:2"), (4, "h:4")]);
        b.replication = 1;
        b.shards = 8;
        assert_eq!(
            a.changes(&b),
            [
                "replication 3 -> 1",
                "created for 64 shards but the cluster file says 8",
                "node 2 addr h:2 -> x:2",
                "node 4 (h:4) added",
                "node 3 (h:3) removed"
            ]
        );
    }
}
