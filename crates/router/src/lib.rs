//! Getting a client's command to its key's replicas.
//!
//! # Layout
//!
//! - [`forward`]: the stateless router: send a command to the key's first reachable replica,
//!   fail over only while nothing has been sent.
//! - [`status`]: `cluster status`: every member's report, and which shards can be served.
//! - [`resp`]: the Redis-protocol (RESP2) front door (`counter-router --resp-listen`).
//!
//! The cluster file and placement live in `counter-cluster` (the node and clients use them
//! without this crate); they are re-exported here, so `counter_router::{cluster, placement}`
//! and `counter_router::{Cluster, Placement, ...}` still name them.

pub mod forward;
pub mod resp;
pub mod status;

pub use counter_cluster::{cluster, placement, shard_of, Cluster, ConfigError, Placement};
pub use forward::Router;
