//! The counter store's processes, wired from the library crates.
//!
//! # Layout
//!
//! - [`node`]: a storage node: the acceptor of its shards (RocksDB via `counter-storage`) and
//!   the coordinator of the keys routed to it ([`coordinator`]).
//! - [`coordinator`]: runs single-slot Paxos rounds (`counter-core`) over the key's replicas,
//!   one queue per key so concurrent operations ride one round.
//! - [`command`]: parsing the CLI's commands (docs/CLI.md), shared by `counter-cli` and tests.
//! - [`logging`]: tracing set-up for the binaries (`--log-format text|json`).
//! - [`serving`]: the flags both servers take (metrics, connection limits, drain) and the
//!   drain at SIGTERM.
//! - [`telemetry`]: Prometheus metrics, `/healthz` and `/readyz` on `--metrics-listen`.
//! - [`bootstrap`]: the start-up check that keeps a node whose disk was lost from starting
//!   empty under its old id (asks the other members before creating a data dir).
//! - [`status`]: a node's answer to `NodeStatus` (`counter-cli cluster status`): it asks its
//!   peers whether they are up and reports whether it reaches a majority of each of its shards.
//! - [`admin`]: `counter-cli cluster status`: parsing it and showing the router's answer.
//! - `bin/`: `counter-node`, `counter-router`, `counter-cli`.

pub mod admin;
pub mod bootstrap;
pub mod command;
pub mod coordinator;
pub mod join;
pub mod logging;
pub mod membership;
pub mod node;
pub mod serving;
pub mod status;
pub mod telemetry;
