//! What `counter-cli cluster status` shows: each node's own report ([`NodeStatus`]) and the
//! router's view of the whole cluster built from them ([`ClusterStatus`]).
//!
//! A client asks a router ([`Msg::Status`]); the router asks every member of its cluster file
//! at once ([`Msg::NodeStatus`], a short timeout each), and answers with every member's report
//! or the error reaching it, plus which shards can be served.
//!
//! **Readiness.** A node is *ready* when it serves (its data dir is `serving`) and, for every
//! shard it replicates, reaches a majority of the shard's replicas (itself included): it could
//! coordinate a command on any of its keys. It finds out when asked, by sending `Identify` to
//! every other member (a cheap question that writes nothing): a peer counts as up if it
//! answers, within a short timeout, as a serving member of the same cluster ([`NodeStatus::peers_up`]).
//! This is the node's own view, so a node the router reaches but that is cut off from its
//! peers shows as reachable and not ready.
//!
//! **Shard availability.** A shard is *available* when some replica of it answered the router,
//! serves, and reaches a majority of the shard's replicas (itself included, by its
//! `peers_up`): a coordinator for its keys exists. Without a partition this is "a majority of
//! the shard's replicas are up".
//!
//! **Moves.** Membership changes (and so shard moves) are not supported yet:
//! [`ClusterStatus::moves`] is always empty. It is on the wire so that a later version can fill
//! it without changing this message.
//!
//! [`Msg::Status`]: crate::Msg::Status
//! [`Msg::NodeStatus`]: crate::Msg::NodeStatus

use crate::{DataState, NodeId, ShardId};
use serde::{Deserialize, Serialize};

/// One node's report of itself, answered to [`Msg::NodeStatus`](crate::Msg::NodeStatus).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id (`--id`).
    pub node: NodeId,
    /// The address it listens on (`--listen`, default its addr in the cluster file).
    pub listen: String,
    /// The cluster its data dir belongs to (for an empty data dir: the one its cluster file
    /// describes).
    pub cluster_id: u64,
    /// The configuration version it runs (1: the bootstrap configuration).
    pub config_version: u64,
    /// How far its data dir is: `serving`, or `empty`/`created` while a new cluster starts.
    pub state: DataState,
    /// Its incarnation (ballot epoch), bumped at every start; `None` before its data dir is
    /// open (a new cluster still starting).
    pub epoch: Option<u32>,
    /// Shards it replicates.
    pub shards: u32,
    /// Shards of the cluster.
    pub shards_total: u32,
    /// Replicas of every shard.
    pub replication: u32,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// Version of its `counter-node` binary.
    pub version: String,
    /// The other members that answered it just now as serving members of its cluster.
    pub peers_up: Vec<NodeId>,
    /// Of its shards, how many it cannot reach a majority of replicas for.
    pub shards_without_quorum: u32,
    /// The rescan this node drives (a membership change under way), per moving shard.
    pub rescan: Vec<RescanReport>,
    /// It serves and reaches a majority of every one of its shards' replicas.
    pub ready: bool,
}

/// A member of the router's cluster file: its report, or why the router has none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: NodeId,
    /// Its address in the router's cluster file.
    pub addr: String,
    /// Its report, or the error reaching it (not reachable).
    pub status: Result<NodeStatus, String>,
}

/// A shard moving from one replica set to another (its joint configuration is agreed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMove {
    pub shard: ShardId,
    pub from: Vec<NodeId>,
    pub to: Vec<NodeId>,
    /// Keys copied to the new set so far (as the node driving the change reports it).
    pub keys_copied: u64,
    /// Every key of the shard copied; the final configuration comes next.
    pub copied: bool,
}

/// A node's report of the rescan it drives: per shard, keys copied and whether it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescanReport {
    pub shard: ShardId,
    pub keys_copied: u64,
    pub done: bool,
}

/// The router's view of the cluster, answered to [`Msg::Status`](crate::Msg::Status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Version of the router's binary.
    pub router_version: String,
    /// The configuration version of the router's cluster file (1: the bootstrap one).
    pub config_version: u64,
    pub replication: u32,
    pub shards: u32,
    /// Members in the router's cluster file.
    pub nodes: u32,
    /// Members that answered.
    pub nodes_reachable: u32,
    /// Members that answered ready.
    pub nodes_ready: u32,
    /// Every member, by id (all of them unless `warnings` says some rows were left out to
    /// fit in one frame).
    pub members: Vec<MemberStatus>,
    /// Shards a coordinator with a majority of replicas exists for.
    pub shards_available: u32,
    /// The first [`MAX_LISTED_SHARDS`] shards that are not available (`shards -
    /// shards_available` in all).
    pub unavailable_shards: Vec<ShardId>,
    /// Shard moves in progress: always empty (membership changes are not supported yet).
    pub moves: Vec<ShardMove>,
    /// Inconsistencies the router noticed (differing cluster files, ids, versions).
    pub warnings: Vec<String>,
}

/// Most unavailable shards listed by id in a [`ClusterStatus`].
pub const MAX_LISTED_SHARDS: usize = 64;

impl ClusterStatus {
    /// Whether every shard can be served.
    pub fn all_available(&self) -> bool {
        self.shards_available == self.shards
    }
}
