//! What a cluster is and where its keys live: shared by the node, the router and clients
//! (a client in direct mode places keys as the router does), so none of them needs another's
//! crate for it.
//!
//! # Layout
//!
//! - [`cluster`]: the cluster file (docs/CLI.md): nodes, replication, shard count.
//! - [`placement`]: `shard = xxh3(key) % shards`; shards onto nodes with consistent hashing
//!   (the `hashring` crate, virtual nodes); a shard's replicas are the first R distinct nodes
//!   clockwise from the shard's point.
//! - [`directory`]: placement plus addresses, as a client in direct mode learns them.

pub mod cluster;
pub mod directory;
pub mod placement;

pub use cluster::{Cluster, ConfigError};
pub use directory::{placement_msg, Directory};
pub use placement::{shard_of, Placement};
