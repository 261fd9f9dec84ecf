//! The agreed cluster configuration: members, and which nodes hold which shard.
//!
//! A [`Config`] is the value of the cluster's configuration register (a CASPaxos register of its
//! own, replicated on every member; `counter-cluster`'s `membership` module has the rules). Its
//! `version` only goes up. Every Prepare, Accept and Read carries the version its coordinator
//! runs, and an acceptor that holds another version refuses it ([`Msg::StaleConfig`],
//! [`Msg::NeedConfig`]), so a round never mixes two configurations.
//!
//! Placement is explicit: `shards[s]` names the nodes of shard `s`. The cluster file's hash
//! ring only proposes the first layout; an admin command moves as few shards as it must.
//!
//! [`Msg::StaleConfig`]: crate::Msg::StaleConfig
//! [`Msg::NeedConfig`]: crate::Msg::NeedConfig

use crate::{NodeId, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the configuration a cluster file describes: the bootstrap configuration.
pub const BOOTSTRAP_CONFIG_VERSION: u64 = 1;

/// The nodes of one shard. While the shard moves, `new` is the set it moves to, and every
/// round needs a majority of `old` and a majority of `new`; otherwise `new` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ShardSet {
    pub old: Vec<NodeId>,
    pub new: Vec<NodeId>,
}

impl ShardSet {
    pub fn stable(nodes: Vec<NodeId>) -> ShardSet {
        ShardSet {
            old: nodes,
            new: Vec::new(),
        }
    }

    pub fn is_moving(&self) -> bool {
        !self.new.is_empty()
    }

    /// Every node of the shard, in either set (old first).
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut all = self.old.clone();
        all.extend(self.new.iter().filter(|n| !self.old.contains(n)));
        all
    }

    pub fn holds(&self, node: NodeId) -> bool {
        self.old.contains(&node) || self.new.contains(&node)
    }

    /// The set once the move (if any) is done.
    pub fn target(&self) -> &[NodeId] {
        if self.is_moving() {
            &self.new
        } else {
            &self.old
        }
    }
}

/// An admin command, as recorded in the configuration while it is under way.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    AddNode {
        id: NodeId,
        addr: String,
    },
    RemoveNode {
        id: NodeId,
    },
    ReplaceNode {
        old: NodeId,
        new: NodeId,
        addr: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::AddNode { id, addr } => write!(f, "add-node {id} {addr}"),
            Change::RemoveNode { id } => write!(f, "remove-node {id}"),
            Change::ReplaceNode { old, new, addr } => write!(f, "replace-node {old} {new} {addr}"),
        }
    }
}

/// One version of the cluster's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    pub version: u64,
    /// The cluster it belongs to (fixed at creation).
    pub cluster_id: u64,
    pub replication: u32,
    /// Node id → the address the others reach it at.
    pub members: BTreeMap<NodeId, String>,
    /// `shards[s]`: the nodes of shard `s` (the shard count is fixed at creation).
    pub shards: Vec<ShardSet>,
    /// The admin command under way (its shards are moving), if any.
    pub pending: Option<Change>,
    /// Ids that left the cluster: never members again (a node that comes back under one
    /// would bring back state the cluster has moved past).
    pub removed: Vec<NodeId>,
    /// What registers keep of their clients' requests (the bootstrap cluster file's
    /// `dedup_clients`, `dedup_idle_secs` and `max_clock_skew_secs`), for nodes that join
    /// without a cluster file.
    pub dedup: Dedup,
}

/// The cluster file's exactly-once settings, as the configuration carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Dedup {
    pub max_clients: u32,
    pub idle_ms: u64,
    pub skew_ms: u64,
}

impl Config {
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    pub fn shard(&self, shard: ShardId) -> Option<&ShardSet> {
        self.shards.get(shard as usize)
    }

    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.members.get(&node).map(String::as_str)
    }

    pub fn is_member(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// Whether `node` holds `shard` (in either set, during a move).
    pub fn holds(&self, node: NodeId, shard: ShardId) -> bool {
        self.shard(shard).is_some_and(|s| s.holds(node))
    }

    /// Shards `node` holds.
    pub fn shards_of(&self, node: NodeId) -> impl Iterator<Item = ShardId> + '_ {
        (0..self.shard_count()).filter(move |&s| self.holds(node, s))
    }

    /// Shards moving, with their sets.
    pub fn moving(&self) -> impl Iterator<Item = (ShardId, &ShardSet)> + '_ {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_moving())
            .map(|(i, s)| (i as ShardId, s))
    }
}
