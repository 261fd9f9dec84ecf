//! Real processes, real faults: 3 `counter-node`s and a router, concurrent clients through
//! `counter-cli` pipe mode on a few keys (incr, decr, get, reset), and a nemesis that SIGKILLs
//! and restarts nodes and SIGSTOPs and resumes them. The whole history goes through the
//! linearizability checker.
//!
//! Bounded for CI (`CHAOS_SECS`, default 15 s of faults); a longer run:
//! `CHAOS_SECS=600 cargo test --release -p counter --test chaos -- --nocapture`.
//!
//! Network cuts: when the test can create Linux network namespaces (root), every node runs in
//! its own namespace, joined to the router's namespace (which holds a bridge) by a veth pair;
//! the nemesis cuts a node off by taking its link down, then heals it. Addresses exist only in
//! those namespaces, and they are deleted at the end. Without root it says so and runs the
//! nodes on loopback without cuts.

mod common;

use common::{Answer, LocalCluster, Rng};
use counter_check::{check_history, OpKind, Operation, Outcome, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 6;
const KEYS: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

#[test]
fn histories_under_kills_and_pauses_are_linearizable() {
    let secs: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos seed {seed} (replay with CHAOS_SEED={seed}), {secs} s of faults");
    let mut cluster = match LocalCluster::start_in_namespaces(3, 3, 8) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("NOTE: network cuts skipped, nodes run on loopback: {why}");
            LocalCluster::start(3, 3, 8)
        }
    };
    let can_cut = cluster.netns.is_some();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            let mut rng = Rng(seed ^ (c as u64 + 1).wrapping_mul(0x1234_5678_9abc));
            let mut pipe = cluster.pipe(2_000);
            std::thread::spawn(move || {
                let mut history = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                    let (kind, line) = match rng.below(100) {
                        0..=54 => {
                            let d = 1 + rng.below(3);
                            (OpKind::Incr(d), format!("incr {key} {d}"))
                        }
                        55..=69 => (OpKind::Decr(1), format!("decr {key} 1")),
                        70..=96 => (OpKind::Get, format!("get {key}")),
                        _ => (OpKind::Reset, format!("reset {key}")),
                    };
                    let call = start.elapsed().as_micros() as u64;
                    let answer = pipe.run(&line);
                    let ret = start.elapsed().as_micros() as u64;
                    let outcome = match answer {
                        Answer::Value(v) => Outcome::Ok(v),
                        Answer::Err(kind, msg) => match kind.as_str() {
                            "unavailable" => Outcome::Failed,
                            "unknown" => Outcome::Unknown,
                            _ => panic!("{line}: {kind} {msg}"),
                        },
                    };
                    history.push(Operation {
                        key: key.to_string(),
                        kind,
                        call,
                        ret,
                        outcome,
                        client: c as u32,
                    });
                }
                pipe.finish();
                history
            })
        })
        .collect();

    // The nemesis: one fault at a time, each healed before the next.
    let mut rng = Rng(seed);
    let (mut kills, mut pauses, mut cuts) = (0, 0, 0);
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
        let node = rng.below(3) as usize;
        let fault = rng.below(if can_cut { 3 } else { 2 });
        if fault == 2 {
            cluster.cut(node, true);
            cuts += 1;
            std::thread::sleep(Duration::from_millis(200 + rng.below(2_500)));
            cluster.cut(node, false);
        } else if fault == 0 {
            cluster.kill_node(node);
            kills += 1;
            std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
            cluster.start_node(node);
        } else if let Some(pid) = cluster.node_pid(node) {
            signal(pid, "-STOP");
            pauses += 1;
            std::thread::sleep(Duration::from_millis(200 + rng.below(2_500)));
            signal(pid, "-CONT");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<Operation> = Vec::new();
    for c in clients {
        history.extend(c.join().unwrap());
    }
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|o| f(&o.outcome)).count();
    let ok = count(|o| matches!(o, Outcome::Ok(_)));
    let unknown = count(|o| matches!(o, Outcome::Unknown));
    let failed = count(|o| matches!(o, Outcome::Failed));
    eprintln!(
        "{} ops: {ok} ok, {unknown} unknown, {failed} unavailable; {kills} kills, {pauses} pauses, {cuts} cuts",
        history.len()
    );
    assert!(
        kills + pauses > 0 && ok > 100,
        "the run did too little to mean anything"
    );
    match check_history(&history, 20_000_000) {
        Verdict::Linearizable => {}
        Verdict::Violation(cx) => panic!("not linearizable (CHAOS_SEED={seed}):\n{cx}"),
        Verdict::Inconclusive { key, steps } => {
            panic!("check of {key} inconclusive after {steps} steps (CHAOS_SEED={seed})")
        }
    }
}
