//! Exactly-once increments against real processes: clients increment one key without pause
//! while its coordinator (the replica the router prefers) is SIGKILLed mid-flight and
//! restarted, again and again. Every increment carries a request id, the router retries lost
//! ones with the same id elsewhere, and the final count must equal the number of increments
//! that succeeded: no retry counted twice, no outcome left unknown.
//!
//! Bounded: `EXACTLY_ONCE_KILLS` kills (default 8), about 1.2 s apart.

mod common;

use common::{Answer, LocalCluster};
use counter_cluster::{Cluster, Placement};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: usize = 3;
const KEY: &str = "exactly-once";

#[test]
fn killing_the_coordinator_mid_flight_never_counts_twice() {
    let kills: usize = std::env::var("EXACTLY_ONCE_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut c = LocalCluster::start(3, 3, 8);
    let cluster = Cluster::load(&c.cluster_file).unwrap();
    let placement = Placement::new(&cluster);
    let coordinator = placement.replicas(placement.shard_of(KEY))[0] as usize - 1;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut pipe = c.pipe(10_000);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut errors) = (0i64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match pipe.run(&format!("incr {KEY}")) {
                        Answer::Value(_) => ok += 1,
                        Answer::Err(kind, msg) => errors.push(format!("{kind} {msg}")),
                    }
                }
                pipe.finish();
                (ok, errors)
            })
        })
        .collect();

    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(900));
        c.kill_node(coordinator);
        std::thread::sleep(Duration::from_millis(300));
        c.start_node(coordinator);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);

    let mut succeeded = 0;
    for client in clients {
        let (ok, errors) = client.join().unwrap();
        assert!(
            errors.is_empty(),
            "with a majority up, every increment must succeed: {errors:?}"
        );
        succeeded += ok;
    }
    let logs = c.logs();
    let retried = logs.matches("retrying the request").count();
    eprintln!("{kills} kills, {succeeded} increments, {retried} retried by the router");
    assert!(succeeded > 0);
    assert_eq!(
        c.get(KEY),
        succeeded,
        "the count must equal the increments that succeeded"
    );
    assert!(
        retried > 0,
        "no kill caught an increment in flight; the test proved nothing"
    );
}
