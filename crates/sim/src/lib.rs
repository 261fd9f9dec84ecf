//! Deterministic simulation of a counter cluster, from a seed.
//!
//! Why a simulator over the pure core rather than turmoil over the real `net` code: every
//! decision that matters for safety (acceptor rules, ballots, counting replies, what to propose,
//! how to report an unfinished batch) is in `counter-core`, and the node's tokio code only
//! carries messages for it ([`counter_core::Decider`] and [`counter_core::AcceptorState`] are
//! driven here exactly as the node drives them). A simulator of our own controls every fault
//! precisely (loss, duplication, reordering, delay, partitions, crashes that keep durable
//! state and lose volatile state) and runs thousands of seeds a second in one thread. What it
//! does not cover, the framing and the RocksDB store, is covered by the real-process tests.
//!
//! The model: `nodes` nodes, each an acceptor of every key (R = nodes) and a coordinator of
//! what clients send it; clients issue operations one at a time on a few keys through a random
//! live node (the router's job), with a timeout. Every history is checked by `counter-check`.
//!
//! In the `membership` setting, keys are split into shards of 3 replicas and the cluster
//! changes while clients count: a mover adds a node, removes an original one and replaces
//! another (lost for good with its disk), as the admin command does (joint configuration,
//! barrier, rescan, switch), and runs each command again after a fault. Nodes run agreed
//! configurations and fence every acceptor request by version, as the node does; the
//! simplifications are listed in `sim/membership.rs`. After the changes every key is read once
//! more, so a count lost by a move shows in the history.
//!
//! # Layout
//!
//! - `config`: [`Config`] (fault and workload settings, the presets), [`Mutation`] (planted
//!   bugs), [`replay_command`].
//! - `sim`: the simulated cluster and its event loop ([`run`]); `sim/client.rs` the clients,
//!   `sim/node.rs` what a node does with a message, `sim/membership.rs` configurations, the
//!   fence and the mover.
//! - `rng`: [`Rng`], the seeded PRNG every random choice comes from.
//! - here: what a run yields ([`Run`], [`Stats`]) and how it is judged ([`Run::problem`]).

mod config;
mod rng;
mod sim;

pub use config::{replay_command, Config, Mutation};
pub use rng::Rng;
pub use sim::run;

use counter_check::{Operation, Verdict};

/// Counts of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub messages: usize,
    pub chosen_values: usize,
    /// Requests resent by their clients after an unknown outcome (exactly-once mode).
    pub resent: usize,
    /// Requests answered expired (their session ended or their key forgot it): 0 unless a key
    /// has more clients than it keeps, or the clocks are further apart than the limits allow.
    pub expired: usize,
    /// Sessions the clients opened (exactly-once mode).
    pub sessions: usize,
    /// Batches that started in phase 2, prepared by the round before (one round trip).
    pub warm_rounds: usize,
    /// Batches whose first round read at its shard's floor (`counter_core::floor`).
    pub floor_rounds: usize,
    /// Floors a coordinator leased.
    pub floors_leased: usize,
    /// Membership changes done (`membership` setting: 3 per run when the mover finishes).
    pub changes: usize,
    /// Runs of an admin command that failed (a fault) and were run again.
    pub moves_retried: usize,
    /// Identity rounds of the rescans.
    pub identity_rounds: usize,
    /// Keys read by the last reader once the changes were done (`membership` setting).
    pub last_reads: usize,
    /// Acceptor messages that joined a batch opened by an earlier one (`Config::batch_window`).
    pub batched: usize,
}

/// A finished run.
pub struct Run {
    pub seed: u64,
    pub history: Vec<Operation>,
    pub stats: Stats,
    pub verdict: Verdict,
}

impl Run {
    /// What is wrong with this run of `cfg`, if anything: a history that is not linearizable,
    /// or a live client refused (an expired answer where none may be).
    pub fn problem(&self, cfg: &Config) -> Option<String> {
        let replay = replay_command(self.seed, cfg);
        match &self.verdict {
            Verdict::Violation(cx) => {
                return Some(format!(
                    "seed {} ({} nodes, {}) is not linearizable; replay: {replay}\n{cx}",
                    self.seed, cfg.nodes, cfg.setting
                ))
            }
            Verdict::Linearizable | Verdict::Inconclusive { .. } => {}
        }
        if cfg.expects_no_expired() && self.stats.expired > 0 {
            return Some(format!(
                "seed {} ({} nodes, {}): {} requests of live sessions were answered expired; \
                 replay: {replay}",
                self.seed, cfg.nodes, cfg.setting, self.stats.expired
            ));
        }
        None
    }
}
