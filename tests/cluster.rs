//! Real processes: 3 `counter-node`s and a `counter-router` on loopback, concurrent clients
//! through `counter-cli` pipe mode, a node SIGKILLed and restarted mid-run, then every process
//! restarted. Checks what a user is promised: no acknowledged increment is lost or repeated.

mod common;

use common::{Answer, LocalCluster};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: usize = 8;
const OPS: usize = 300;
const KEYS: [&str; 4] = [
    "page_views",
    "stock:sku-123",
    "quota:tenant-9",
    "ünïcode-ключ",
];

#[derive(Default, Debug)]
struct KeyOutcomes {
    ok_values: Vec<i64>,
    unknown: usize,
    unavailable: usize,
}

#[test]
fn increments_survive_a_killed_node_and_a_full_restart() {
    let mut cluster = LocalCluster::start(3, 3, 16);
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let router = cluster.router_addr.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut pipe = common::Pipe::spawn(&router, 5_000);
                let mut seen: Vec<(usize, Answer)> = Vec::with_capacity(OPS);
                for i in 0..OPS {
                    let k = (c + i) % KEYS.len();
                    // Keys with spaces cannot be written in pipe mode; use the others there.
                    let k = if KEYS[k].contains(' ') { 0 } else { k };
                    seen.push((k, pipe.run(&format!("incr {}", KEYS[k]))));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                pipe.finish();
                seen
            })
        })
        .collect();

    // Nemesis: once the clients are going, SIGKILL a node, let them run without it, restart it.
    let total = CLIENTS * OPS;
    while done.load(Ordering::Relaxed) < total / 4 {
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.kill_node(0);
    while done.load(Ordering::Relaxed) < total / 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.start_node(0);

    let mut per_key: BTreeMap<usize, KeyOutcomes> = BTreeMap::new();
    for client in clients {
        for (k, answer) in client.join().unwrap() {
            let o = per_key.entry(k).or_default();
            match answer {
                Answer::Value(v) => o.ok_values.push(v),
                Answer::Err(kind, msg) => match kind.as_str() {
                    "unknown" => o.unknown += 1,
                    "unavailable" => o.unavailable += 1,
                    _ => panic!("incr failed with {kind}: {msg}"),
                },
            }
        }
    }

    let mut finals = BTreeMap::new();
    for (&k, o) in &per_key {
        let key = KEYS[k];
        let mut values = o.ok_values.clone();
        values.sort();
        let before = values.len();
        values.dedup();
        assert_eq!(
            before,
            values.len(),
            "{key}: two increments returned the same value"
        );
        let ok = o.ok_values.len() as i64;
        let final_value = cluster.get(key);
        assert!(
            final_value >= ok && final_value <= ok + o.unknown as i64,
            "{key}: final {final_value} is not {ok} acknowledged + a subset of {} unknown",
            o.unknown
        );
        // Every acknowledged value is one the counter passed through.
        assert!(
            values.iter().all(|&v| v >= 1 && v <= final_value),
            "{key}: {values:?}"
        );
        eprintln!(
            "{key}: {ok} ok, {} unknown, {} unavailable, final {final_value}",
            o.unknown, o.unavailable
        );
        finals.insert(k, final_value);
    }
    assert!(
        per_key.values().map(|o| o.ok_values.len()).sum::<usize>() > total / 2,
        "most increments should succeed with one node down"
    );

    cluster.restart_all();
    for (&k, &v) in &finals {
        assert_eq!(
            cluster.get(KEYS[k]),
            v,
            "{} changed across a restart",
            KEYS[k]
        );
    }
}

#[test]
fn a_minority_down_keeps_serving_and_a_majority_down_is_unavailable() {
    let mut cluster = LocalCluster::start(3, 3, 8);
    assert_eq!(cluster.cli(&["incr", "k", "5"]).1, "5");
    cluster.kill_node(1);
    assert_eq!(cluster.cli(&["incr", "k"]).1, "6");
    cluster.kill_node(2);
    let (code, _, err) = cluster.cli(&["--timeout-ms", "1500", "incr", "k"]);
    // Prepare cannot get a majority: nothing was accepted, so the answer is "not applied".
    assert_eq!(code, 3, "expected unavailable, got {code}: {err}");
    cluster.start_node(1);
    cluster.start_node(2);
    assert_eq!(cluster.get("k"), 6);
}

/// One key hammered through every node at once: three coordinators compete for its ballots.
/// Ballot fast-forward and randomized backoff must let all of them finish (no livelock), and
/// the outcomes must still add up.
#[test]
fn one_hot_key_through_every_coordinator_makes_progress() {
    const PER_CLIENT: usize = 150;
    let cluster = LocalCluster::start(3, 3, 8);
    let clients: Vec<_> = cluster
        .node_addrs
        .iter()
        .flat_map(|addr| [addr.clone(), addr.clone()])
        .map(|addr| {
            std::thread::spawn(move || {
                // Nodes take commands directly, so each client here has its own coordinator.
                let mut pipe = common::Pipe::spawn(&addr, 10_000);
                let answers: Vec<Answer> = (0..PER_CLIENT).map(|_| pipe.run("incr hot")).collect();
                pipe.finish();
                answers
            })
        })
        .collect();
    let mut values = Vec::new();
    let mut unknown = 0;
    for c in clients {
        for a in c.join().unwrap() {
            match a {
                Answer::Value(v) => values.push(v),
                Answer::Err(kind, msg) => {
                    assert_eq!(kind, "unknown", "{msg}");
                    unknown += 1;
                }
            }
        }
    }
    let ok = values.len() as i64;
    values.sort();
    values.dedup();
    assert_eq!(
        values.len() as i64,
        ok,
        "two increments returned the same value"
    );
    let total = (6 * PER_CLIENT) as i64;
    assert!(
        ok >= total * 9 / 10,
        "only {ok} of {total} increments succeeded"
    );
    let final_value = cluster.get("hot");
    assert!(
        final_value >= ok && final_value <= ok + unknown,
        "final {final_value}, ok {ok}, unknown {unknown}"
    );
}

/// Bytes in the nodes' RocksDB write-ahead logs (`*.log` in their data dirs).
fn wal_bytes(c: &LocalCluster) -> u64 {
    (0..3)
        .flat_map(|i| std::fs::read_dir(c.data_dir(i)).unwrap())
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn reads_of_a_quiet_key_write_nothing() {
    let c = LocalCluster::start(3, 3, 8);
    assert_eq!(c.cli(&["incr", "quiet", "5"]).1, "5");
    let mut p = c.pipe(5_000);
    // Let the slowest replica's accept land, so that all three agree.
    std::thread::sleep(Duration::from_millis(200));
    let before = wal_bytes(&c);
    assert!(before > 0, "the data dirs hold no write-ahead log");
    for _ in 0..50 {
        assert_eq!(p.run("get quiet"), Answer::Value(5));
    }
    assert_eq!(wal_bytes(&c), before, "reads of a quiet key wrote to disk");
    assert_eq!(p.run("incr quiet"), Answer::Value(6));
    assert!(wal_bytes(&c) > before, "a write must reach the log");
    p.finish();
}
