//! The CI run of the simulation: many seeds on 3- and 5-node clusters, every history checked.
//! Longer: `SIM_SEEDS=100000 cargo test --release -p counter-sim`, or
//! `cargo run --release -p counter-sim -- --forever`.

use counter_check::Verdict;
use counter_sim::{replay_command, run, Config, Mutation, Stats};

fn seeds() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn sweep(nodes: usize, mutation: Mutation, count: u64) -> Result<Stats, String> {
    let cfg = Config::cluster(nodes);
    sweep_with(cfg, mutation, count)
}

fn sweep_with(base: Config, mutation: Mutation, count: u64) -> Result<Stats, String> {
    let nodes = base.nodes;
    let mut total = Stats::default();
    for seed in 0..count {
        let mut cfg = base.clone();
        cfg.mutation = mutation;
        let r = run(seed, &cfg);
        total.ok += r.stats.ok;
        total.failed += r.stats.failed;
        total.unknown += r.stats.unknown;
        total.crashes += r.stats.crashes;
        total.partitions += r.stats.partitions;
        total.resent += r.stats.resent;
        total.expired += r.stats.expired;
        total.warm_rounds += r.stats.warm_rounds;
        match r.verdict {
            Verdict::Linearizable => {}
            Verdict::Violation(cx) => {
                return Err(format!(
                    "seed {seed} ({nodes} nodes) is not linearizable; replay: {}\n{cx}",
                    replay_command(seed, nodes)
                ))
            }
            // Rare with these settings (many unknown outcomes on one key); not a violation.
            Verdict::Inconclusive { key, steps } => {
                eprintln!("seed {seed} ({nodes} nodes): {key} inconclusive after {steps} steps")
            }
        }
    }
    Ok(total)
}

#[test]
fn three_node_clusters_stay_linearizable() {
    let stats = sweep(3, Mutation::None, seeds()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("3 nodes: {stats:?}");
    // The faults really happened and most operations still succeeded.
    assert!(
        stats.crashes > 0 && stats.partitions > 0 && stats.unknown > 0,
        "{stats:?}"
    );

    assert!(stats.ok > stats.failed + stats.unknown, "{stats:?}");
}

#[test]
fn five_node_clusters_stay_linearizable() {
    let stats = sweep(5, Mutation::None, seeds()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("5 nodes: {stats:?}");
    assert!(stats.crashes > 0 && stats.partitions > 0, "{stats:?}");
    assert!(stats.ok > stats.failed + stats.unknown, "{stats:?}");
}

/// Exactly-once: clients retry every unknown outcome with the same request id, through
/// whichever node is up, across crashes and partitions; the histories stay linearizable with
/// each request counted once, and no client is left with an unknown outcome.
#[test]
fn retried_requests_are_applied_once() {
    let cfg = Config {
        request_ids: true,
        ..Config::cluster(3)
    };
    let stats = sweep_with(cfg, Mutation::None, seeds()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("3 nodes, request ids: {stats:?}");
    assert!(stats.resent > 0 && stats.crashes > 0, "{stats:?}");
    // Many batches went straight to phase 2, in rounds prepared by the round before.
    assert!(stats.warm_rounds * 10 > stats.ok, "{stats:?}");
    assert_eq!(stats.expired, 0, "{stats:?}");
    assert!(stats.unknown * 100 <= stats.ok, "{stats:?}");
}

#[test]
fn retries_without_deduplication_are_caught() {
    let cfg = Config {
        request_ids: true,
        ..Config::hostile(3)
    };
    let caught = sweep_with(cfg, Mutation::ForgetRequestIds, 400).is_err();
    assert!(caught, "retrying without request ids went unnoticed");
}

#[test]
fn the_simulation_catches_planted_bugs() {
    for mutation in [
        Mutation::RetryAmbiguous,
        Mutation::ReadOneReplica,
        Mutation::PromiseNotPersisted,
        Mutation::QuietReadAnyReply,
    ] {
        // Stops at the first failing seed; a correct build passes these same seeds (below).
        let caught = sweep_with(Config::hostile(3), mutation, 400).is_err();
        assert!(caught, "{mutation:?} went unnoticed");
    }
}

#[test]
fn the_hostile_setting_passes_without_planted_bugs() {
    for nodes in [3, 5] {
        let stats = sweep_with(Config::hostile(nodes), Mutation::None, 200)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(stats.crashes > 0, "{stats:?}");
    }
}
