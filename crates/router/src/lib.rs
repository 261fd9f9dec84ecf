//! Where keys live, and getting a client's command to them.
//!
//! # Layout
//!
//! - [`cluster`]: the cluster file (docs/CLI.md): nodes, replication, shard count.
//! - [`placement`]: `shard = xxh3(key) % shards`; shards onto nodes with consistent hashing
//!   (the `hashring` crate, virtual nodes); a shard's replicas are the first R distinct nodes
//!   clockwise from the shard's point.
//! - [`forward`]: the stateless router: send a command to the key's first reachable replica,
//!   fail over only while nothing has been sent.
//! - [`status`]: `cluster status`: every member's report, and which shards can be served.

pub mod cluster;
pub mod forward;
pub mod placement;
pub mod status;

pub use cluster::{Cluster, ConfigError};
pub use forward::Router;
pub use placement::{shard_of, Placement};
