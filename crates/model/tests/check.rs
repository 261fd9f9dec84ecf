//! Exhaustive model checking of the real core (to a depth): 2 clients x 3 servers, a lossy
//! reordering network, acceptor messages duplicated, one crash.
//! Deeper: `MODEL_DEPTH=12 cargo test --release -p counter-model` (memory grows ~20x a level).

use counter_model::Config;
use stateright::{Checker, Model};

/// Search depth (steps of the whole system); `MODEL_DEPTH` for a longer run.
fn depth() -> usize {
    std::env::var("MODEL_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(10)
}

fn check(cfg: Config, depth: usize) -> usize {
    let checker = cfg
        .clone()
        .into_model()
        .checker()
        .target_max_depth(depth)
        .spawn_bfs()
        .join();
    checker.assert_properties();
    eprintln!("{cfg:?}: {} unique states", checker.unique_state_count());
    checker.unique_state_count()
}

/// 2 clients x 3 servers, lossy reordering network, one crash; acceptor messages duplicated
/// or not. At the default depth the unique state count is pinned to `pinned`: a change means
/// the model or the core changed what it can do.
fn two_clients_three_servers(duplicate_internal: bool, pinned: usize) {
    let n = check(
        Config {
            servers: 3,
            clients: 2,
            max_crashes: 1,
            lossy: true,
            duplicating: false,
            duplicate_internal,
        },
        depth(),
    );
    if std::env::var_os("MODEL_DEPTH").is_none() {
        assert_eq!(n, pinned);
    }
}

#[test]
fn lossy_reordering_network_with_a_crash() {
    two_clients_three_servers(false, 1_012_651);
}

#[test]
fn duplicated_acceptor_messages_with_a_crash() {
    two_clients_three_servers(true, 3_845_633);
}
