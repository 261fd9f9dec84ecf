//! The CI run of the simulation: 10,000 seeds per setting (2,000 for `membership`) on 3- and
//! 5-node clusters, every history checked. Longer: `SIM_SEEDS=100000 cargo test --release -p
//! counter-sim`, or `cargo run --release -p counter-sim -- --forever`.

use counter_check::Verdict;
use counter_sim::{run, Config, Mutation, Stats};

fn seeds() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

fn sweep(nodes: usize, mutation: Mutation, count: u64) -> Result<Stats, String> {
    let cfg = Config::cluster(nodes);
    sweep_with(cfg, mutation, count)
}

fn sweep_with(base: Config, mutation: Mutation, count: u64) -> Result<Stats, String> {
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
        total.sessions += r.stats.sessions;
        total.warm_rounds += r.stats.warm_rounds;
        total.floor_rounds += r.stats.floor_rounds;
        total.floors_leased += r.stats.floors_leased;
        total.changes += r.stats.changes;
        total.moves_retried += r.stats.moves_retried;
        total.identity_rounds += r.stats.identity_rounds;
        total.last_reads += r.stats.last_reads;
        total.batched += r.stats.batched;
        if let Some(problem) = r.problem(&cfg) {
            return Err(problem);
        }
        // Rare with these settings (many unknown outcomes on one key); not a violation.
        if let Verdict::Inconclusive { key, steps } = r.verdict {
            eprintln!(
                "seed {seed} ({}): {key} inconclusive after {steps} steps",
                cfg.setting
            )
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
    // Acceptor messages of several keys travelled in one batch, as between real nodes.
    assert!(stats.batched > 0, "{stats:?}");

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

/// Sessions: many clients on one key, sessions ending and renewed within a run, node clocks
/// as far apart as the limits allow: every history linearizable, and no live client ever
/// answered expired (defect 2 of the exactly-once review).
#[test]
fn sessions_never_refuse_a_live_client() {
    for nodes in [3, 5] {
        let stats = sweep_with(Config::sessions(nodes), Mutation::None, seeds())
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{nodes} nodes, sessions: {stats:?}");
        assert_eq!(stats.expired, 0, "{stats:?}");
        // Sessions really ended and were renewed within runs.
        assert!(stats.sessions > 8 * seeds() as usize, "{stats:?}");
        assert!(stats.resent > 0 && stats.crashes > 0, "{stats:?}");
    }
}

/// A key that keeps one client while four write it, under two competing coordinators: entries
/// are dropped while their requests are in doubt. Such requests are answered `expired` (their
/// outcome unknown), and the histories stay linearizable with that reading.
#[test]
fn crowded_keys_answer_expired_never_not_applied() {
    for nodes in [3, 5] {
        let stats = sweep_with(Config::crowded(nodes), Mutation::None, seeds())
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{nodes} nodes, crowded: {stats:?}");
        assert!(stats.expired > 0, "{stats:?}");
    }
}

/// Defect 1 of the exactly-once review, as the first design answered it: an expired request
/// reported as "not applied" (`invalid`), though the chosen register holds it. The crowded
/// setting finds it at once.
#[test]
fn expired_reported_as_not_applied_is_caught() {
    let found = sweep_with(Config::crowded(3), Mutation::ExpiredMeansNotApplied, 400);
    let problem = found.expect_err("expired-as-not-applied went unnoticed");
    assert!(problem.contains("not linearizable"), "{problem}");
}

/// Every node but one down around the sessions' renewal, with a request deadline longer than
/// the clock skew: clients retry through the outage and give up at their deadline; by the
/// library's rule (a session takes a request only if its deadline ends before the renewal
/// time) no retry outlives its session, so none is answered expired. Without the rule
/// (`RenewLate`), some are.
#[test]
fn outages_never_make_a_live_session_expire() {
    for nodes in [3, 5] {
        let stats = sweep_with(Config::outage(nodes), Mutation::None, seeds())
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{nodes} nodes, outage: {stats:?}");
        assert_eq!(stats.expired, 0, "{stats:?}");
        assert!(
            stats.unknown > 0 && stats.sessions > 8 * seeds() as usize,
            "{stats:?}"
        );
    }
    let late = sweep_with(Config::outage(5), Mutation::RenewLate, 2_000);
    let problem = late.expect_err("sessions used past the library's rule went unnoticed");
    assert!(problem.contains("answered expired"), "{problem}");
}

/// Clocks three times further apart than the limits allow: live sessions are refused
/// (`expired`: the bound is what keeps them alive), but nothing is applied twice or lost.
#[test]
fn clocks_beyond_the_bound_refuse_live_sessions_but_stay_linearizable() {
    let mut cfg = Config::sessions(3);
    cfg.clock_skew = 3 * cfg.limits.skew_ms;
    let stats = sweep_with(cfg, Mutation::None, seeds() / 4).unwrap_or_else(|e| panic!("{e}"));
    assert!(stats.expired > 0, "{stats:?}");
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

/// Membership changes under the cluster's faults: a node added, an original one removed and
/// another replaced (lost for good with its disk), keys in 3 shards of 3 replicas, while
/// clients count; the mover runs each command again after a fault until it is done. Every
/// history linearizable, with a last read of every key after the changes.
#[test]
fn membership_changes_stay_linearizable() {
    let count = membership_seeds();
    for nodes in [3, 5] {
        let cfg = Config::membership(nodes);
        let keys = cfg.keys;
        let stats = sweep_with(cfg, Mutation::None, count).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{nodes} nodes, membership: {stats:?}");
        // Every run made its three changes and read every key after them.
        assert_eq!(stats.changes, 3 * count as usize, "{stats:?}");
        assert_eq!(stats.last_reads, keys * count as usize, "{stats:?}");
        // Faults interrupted commands, which resumed; the rescans copied keys.
        assert!(
            stats.moves_retried > 0 && stats.identity_rounds > 0 && stats.crashes > 0,
            "{stats:?}"
        );
    }
}

/// The `membership` setting's seed count in CI, per cluster size: a fifth of the others', to
/// keep the suite about a minute (`SIM_SEEDS` scales it).
const MEMBERSHIP_SEEDS: u64 = 2_000;

fn membership_seeds() -> u64 {
    seeds() * MEMBERSHIP_SEEDS / 10_000
}

/// The bugs a membership change invites, planted one at a time, are caught within the
/// setting's seeds (first failing seed at the time of writing, of 2,000 on 3 nodes:
/// skip-rescan 2, old-votes-count 74, drop-before-commit 6, no-fence 43; no-fence is the rare
/// one, about 1 run in 350, as it needs a replica that runs an old configuration and another
/// that missed a write).
#[test]
fn membership_bugs_are_caught() {
    for mutation in [
        Mutation::SkipRescan,
        Mutation::OldVotesCount,
        Mutation::DropBeforeCommit,
        Mutation::NoFence,
    ] {
        let found = sweep_with(Config::membership(3), mutation, MEMBERSHIP_SEEDS);
        let problem = found.expect_err(&format!("{mutation:?} went unnoticed"));
        assert!(problem.contains("not linearizable"), "{problem}");
    }
}

/// Seed 5029 of `sessions` (3 nodes, batches of 8 ticks) once answered a quiet read from an
/// answer to an earlier quiet read of the key that arrived late (the simulated reply named no
/// read; in the node each answer goes to its own call): a stale value, reported as a
/// linearizability violation of the simulator's own making. The reply now names its read.
#[test]
fn a_late_answer_to_an_earlier_quiet_read_is_not_counted() {
    let cfg = Config::sessions(3);
    assert_eq!(
        cfg.batch_window, 8,
        "the seed replays only with this window"
    );
    let r = run(5029, &cfg);
    assert_eq!(r.problem(&cfg), None);
}

/// First touches (`Config::cold`): most batches find no prepared round and run at their
/// shard's floor, which two coordinators keep raising against each other while the acceptors
/// crash; every history stays linearizable.
#[test]
fn rounds_at_shard_floors_stay_linearizable() {
    for nodes in [3, 5] {
        let stats = sweep_with(Config::cold(nodes), Mutation::None, seeds() / 2)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{nodes} nodes, first touches: {stats:?}");
        assert!(stats.floors_leased > 0 && stats.crashes > 0, "{stats:?}");
        // A good share of the batches read at a floor instead of writing a promise.
        assert!(stats.floor_rounds * 10 > stats.ok, "{stats:?}");
    }
}

/// An acceptor that forgets its floor when it judges Prepares and Accepts (the floor is then
/// no promise: a round below it can be chosen after a read at it reported the key) is caught.
#[test]
fn a_floor_that_promises_nothing_is_caught() {
    // Rare per run (a coordinator must run below a floor it has not heard of, between another's
    // read at the floor and its accept), but within these seeds; a correct build passes them
    // (above).
    let caught = sweep_with(Config::cold(3), Mutation::FloorNoPromise, 4_000).is_err();
    assert!(caught, "a floor that promises nothing went unnoticed");
}
