//! Membership changes against real processes. New nodes start with `counter-node --join` and
//! are added, removed and replaced by the admin commands (`counter-cli cluster add-node /
//! remove-node / replace-node`) through the router, while clients keep counting through the
//! same router:
//!
//! - a cluster grows from 3 to 5 nodes and shrinks back to 3 (two of them new) under load, with
//!   a node SIGKILLed in the middle of a change: no acknowledged increment is lost, none is
//!   counted twice, every client's history is linearizable, and the counts are on the final
//!   members (read with the removed nodes stopped);
//! - a node whose disk was wiped is refused under its old id and replaced by a new one, whose
//!   copies then serve (with the other originals down);
//! - bad admin commands (unknown ids, ids or addresses taken, too few members left, a node
//!   nobody runs) are refused with the documented exit status and change nothing.
//!
//! Bounded: every load loop stops after `LOAD_LIMIT` or `MAX_OPS` operations per client,
//! every retry has a deadline.

mod common;

use common::{cli_wait, free_port, LocalCluster, Rng};
use counter_check::{check_history, OpKind, Operation, Outcome, Verdict};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: u32 = 16;
/// `--timeout-ms` of the admin commands.
const ADMIN_TIMEOUT_MS: &str = "120000";
/// How long an admin command is re-run while it answers 3 (unavailable).
const ADMIN_RETRY_FOR: Duration = Duration::from_secs(60);
/// Exit status of a refused start of `counter-node`.
const REFUSED: i32 = 78;

const CLIENTS: usize = 3;
const KEYS: u64 = 20;
/// Per-client bounds of the load: operations, wall time, pause between operations.
const MAX_OPS: usize = 10_000;
const LOAD_LIMIT: Duration = Duration::from_secs(75);
const PAUSE: Duration = Duration::from_millis(3);
/// `--timeout-ms` of the clients.
const CLIENT_TIMEOUT_MS: u32 = 5_000;

/// Sets the flag when dropped: the clients stop however the test ends.
struct StopOnDrop(Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn key_name(k: u64) -> String {
    format!("member-{k}")
}

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// One answer line of pipe mode as an outcome: `unavailable` is definitely not applied;
/// `unknown` and `expired` may or may not have been (docs/CLI.md).
fn outcome(line: &str, answer: &str) -> Outcome {
    if let Ok(v) = answer.parse::<i64>() {
        return Outcome::Ok(v);
    }
    match answer
        .strip_prefix("ERR ")
        .and_then(|rest| rest.split(' ').next())
    {
        Some("unavailable") => Outcome::Failed,
        Some("unknown" | "expired") => Outcome::Unknown,
        _ => panic!("{line}: unexpected answer {answer:?}"),
    }
}

/// `counter-cli --router R --timeout-ms ADMIN_TIMEOUT_MS cluster <args>`, once.
fn admin_once(c: &LocalCluster, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--timeout-ms", ADMIN_TIMEOUT_MS, "cluster"];
    all.extend_from_slice(args);
    c.cli(&all)
}

/// Checks a successful admin command's answer: exit 0 and one line on stdout.
fn assert_done(args: &[&str], (code, out, err): &(i32, String, String)) {
    assert_eq!(*code, 0, "cluster {args:?}: stdout {out:?}, stderr {err:?}");
    assert!(
        !out.is_empty() && out.lines().count() == 1,
        "cluster {args:?} must print one line on stdout: {out:?}"
    );
}

/// Runs an admin command until it exits 0: while it exits 3 (unavailable: a node down, no
/// quorum yet), runs it again (which resumes an interrupted change), for at most
/// `ADMIN_RETRY_FOR`. Any other exit status fails the test.
fn admin(c: &LocalCluster, args: &[&str]) {
    let deadline = Instant::now() + ADMIN_RETRY_FOR;
    loop {
        let answer = admin_once(c, args);
        if answer.0 == 3 && Instant::now() < deadline {
            eprintln!("cluster {args:?}: unavailable ({}); again", answer.2);
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        assert_done(args, &answer);
        eprintln!("cluster {args:?}: {}", answer.1);
        return;
    }
}

/// The member ids listed by `cluster status --json`, sorted.
fn members(v: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes array: {v}"))
        .iter()
        .map(|n| n["id"].as_u64().unwrap_or_else(|| panic!("node id: {v}")))
        .collect();
    ids.sort_unstable();
    ids
}

fn config_version(v: &Value) -> u64 {
    v["config_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no config_version: {v}"))
}

/// Waits (at most 30 s: the router learns a change from the nodes) until `cluster status
/// --json` lists exactly the members `ids`, every one reachable at its address, and no move
/// in progress; returns the configuration version.
fn wait_config(c: &LocalCluster, ids: &[u64]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = c.status_json();
        let settled = members(&v) == ids
            && v["moves"].as_array().is_some_and(|m| m.is_empty())
            && v["nodes"].as_array().unwrap().iter().all(|n| {
                let i = n["id"].as_u64().unwrap() as usize - 1;
                n["reachable"] == true && n["addr"] == c.node_addrs[i].as_str()
            });
        if settled {
            return config_version(&v);
        }
        assert!(
            Instant::now() < deadline,
            "the configuration never became members {ids:?}, all reachable, no moves: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `incr key` on the command line, expecting `expected`; re-sent only when it was definitely
/// not applied (exit 3), for at most 30 s.
fn incr_to(c: &LocalCluster, key: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = c.cli(&["incr", key]);
        if code == 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert_eq!(
            (code, out.as_str()),
            (0, expected.to_string().as_str()),
            "incr {key}: {err}"
        );
        return;
    }
}

fn assert_values(c: &LocalCluster, known: &BTreeMap<String, i64>, when: &str) {
    for (key, value) in known {
        assert_eq!(c.get(key), *value, "{key} {when}");
    }
}

/// 3 nodes grow to 5 (`add-node 4`, `add-node 5` with node 3 SIGKILLed in the middle and
/// restarted with its usual command line) and shrink to 3 (`remove-node 1`, `remove-node 4`)
/// while clients increment and read 20 keys through the router. Then, with the removed nodes
/// and node 5 stopped, nodes 2 and 3 alone must hold every count: at least the acknowledged
/// increments, at most those plus the unknown ones, and the whole history linearizable.
#[test]
fn grow_to_five_and_shrink_to_three_under_load() {
    let seed: u64 = std::env::var("MEMBERSHIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("membership seed {seed} (replay with MEMBERSHIP_SEED={seed})");
    let mut c = LocalCluster::start(3, 3, SHARDS);
    let mut version = wait_config(&c, &[1, 2, 3]);
    assert_eq!(version, 1, "a new cluster's configuration version");
    let first_version = version;

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let mut pipe = c.pipe(CLIENT_TIMEOUT_MS);
            let stop = stop.clone();
            let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x1234_5678_9abc));
            std::thread::spawn(move || {
                let mut history = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && history.len() < MAX_OPS
                    && start.elapsed() < LOAD_LIMIT
                {
                    let key = key_name(rng.below(KEYS));
                    let (kind, line) = if rng.below(5) == 0 {
                        (OpKind::Get, format!("get {key}"))
                    } else {
                        (OpKind::Incr(1), format!("incr {key}"))
                    };
                    let call = micros(start);
                    let answer = pipe.run_line(&line);
                    let ret = micros(start);
                    history.push(Operation {
                        key,
                        kind,
                        call,
                        ret,
                        outcome: outcome(&line, &answer),
                        client: client as u32,
                    });
                    std::thread::sleep(PAUSE);
                }
                pipe.finish();
                history
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let changes_from = micros(start);

    // Grow: node 4 joins through node 1, waits, and is added.
    let n4 = c.start_joining_node(0);
    assert_eq!(n4, 3);
    let (_, v) = c.status_json();
    assert_eq!(members(&v), [1, 2, 3], "a joining node is no member: {v}");
    assert_eq!(config_version(&v), version, "{v}");
    admin(&c, &["add-node", "4", &c.node_addrs[n4]]);
    let next = wait_config(&c, &[1, 2, 3, 4]);
    assert!(next > version, "add-node 4: version {version} -> {next}");
    version = next;

    // Node 5 joins through node 2; an original node (3) is SIGKILLed while it is being added,
    // and restarted with its usual command line (the original cluster file).
    let n5 = c.start_joining_node(1);
    assert_eq!(n5, 4);
    let addr5 = c.node_addrs[n5].clone();
    let add5 = ["add-node", "5", addr5.as_str()];
    let child = c.cli_spawn(&[
        "--timeout-ms",
        ADMIN_TIMEOUT_MS,
        "cluster",
        "add-node",
        "5",
        &addr5,
    ]);
    let mut rng = Rng(seed);
    std::thread::sleep(Duration::from_millis(50 + rng.below(450)));
    c.kill_node(2);
    std::thread::sleep(Duration::from_millis(500 + rng.below(1_000)));
    c.start_node(2);
    let answer = cli_wait(child);
    eprintln!("add-node 5 with node 3 killed in the middle: {answer:?}");
    match answer.0 {
        // Interrupted: run it again, which resumes it.
        3 => admin(&c, &add5),
        _ => assert_done(&add5, &answer),
    }
    let next = wait_config(&c, &[1, 2, 3, 4, 5]);
    assert!(next > version, "add-node 5: version {version} -> {next}");
    version = next;

    // Shrink: an original member and a new one leave.
    admin(&c, &["remove-node", "1"]);
    let next = wait_config(&c, &[2, 3, 4, 5]);
    assert!(next > version, "remove-node 1: version {version} -> {next}");
    version = next;
    admin(&c, &["remove-node", "4"]);
    let next = wait_config(&c, &[2, 3, 5]);
    assert!(next > version, "remove-node 4: version {version} -> {next}");
    version = next;
    assert!(version >= first_version + 4, "four changes: {version}");
    let changes_to = micros(start);

    // A little load on the final members, then stop.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<Operation> = Vec::new();
    for client in clients {
        history.extend(client.join().expect("a client panicked"));
    }

    // The removed nodes are gone for good; node 5 stops too, so that nodes 2 and 3 (a
    // majority of every shard's replicas) answer alone: every count must be on them.
    c.kill_node(0);
    c.kill_node(3);
    c.kill_node(4);
    let mut finals = BTreeMap::new();
    for k in 0..KEYS {
        let key = key_name(k);
        let call = micros(start);
        let value = c.get(&key);
        let ret = micros(start);
        history.push(Operation {
            key: key.clone(),
            kind: OpKind::Get,
            call,
            ret,
            outcome: Outcome::Ok(value),
            client: 1_000,
        });
        finals.insert(key, value);
    }

    let is_ok = |o: &&Operation| matches!(o.outcome, Outcome::Ok(_));
    let ok = history.iter().filter(is_ok).count();
    let unknown = history
        .iter()
        .filter(|o| o.outcome == Outcome::Unknown)
        .count();
    let failed = history
        .iter()
        .filter(|o| o.outcome == Outcome::Failed)
        .count();
    let ok_during_changes = history
        .iter()
        .filter(is_ok)
        .filter(|o| o.call >= changes_from && o.ret <= changes_to)
        .count();
    eprintln!(
        "{} ops: {ok} ok ({ok_during_changes} during the changes), {unknown} unknown, \
         {failed} unavailable; configuration version {first_version} -> {version}",
        history.len()
    );
    assert!(
        ok_during_changes > 50,
        "too few acknowledged operations during the changes to mean anything"
    );
    for (key, value) in &finals {
        let incrs = |o: &&Operation| &o.key == key && o.kind == OpKind::Incr(1);
        let acked = history.iter().filter(incrs).filter(is_ok).count() as i64;
        let maybe = history
            .iter()
            .filter(incrs)
            .filter(|o| o.outcome == Outcome::Unknown)
            .count() as i64;
        assert!(
            acked <= *value && *value <= acked + maybe,
            "{key} reads {value} on nodes 2 and 3: {acked} increments acknowledged, {maybe} \
             unknown (seed {seed})"
        );
    }
    match check_history(&history, 20_000_000) {
        Verdict::Linearizable => {}
        Verdict::Violation(cx) => panic!("not linearizable (MEMBERSHIP_SEED={seed}):\n{cx}"),
        Verdict::Inconclusive { key, steps } => {
            panic!("check of {key} inconclusive after {steps} steps (MEMBERSHIP_SEED={seed})")
        }
    }

    // Node 5 restarts with the same command line (its data dir exists: --join is ignored),
    // and the three members serve.
    c.start_node(4);
    assert_eq!(wait_config(&c, &[2, 3, 5]), version, "no change since");
    for (key, value) in &finals {
        incr_to(&c, key, value + 1);
    }
    let (code, v) = c.status_json();
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["shards_available"], SHARDS, "{v}");
}

/// Node 2's data dir is wiped. Its old command line must be refused (the start-up guard);
/// instead node 4 joins and `replace-node 2 4` moves node 2's replicas to it. With node 3
/// down, nodes 1 and 4 serve every count. Then node 3 is wiped (while down) and replaced by
/// node 5, and with node 1 down the two new nodes alone serve every count: they were copied.
#[test]
fn a_wiped_node_is_replaced_not_restarted() {
    let mut c = LocalCluster::start(3, 3, SHARDS);
    let mut known = BTreeMap::new();
    for k in 0..10i64 {
        let key = format!("wiped-{k}");
        let delta = 10 * k + 3;
        assert_eq!(
            c.cli(&["incr", &key, &delta.to_string()]),
            (0, delta.to_string(), String::new())
        );
        incr_to(&c, &key, delta + 1);
        known.insert(key, delta + 1);
    }
    let v1 = wait_config(&c, &[1, 2, 3]);
    assert_eq!(v1, 1);

    // Node 2 loses its disk: its old command line is refused, and creates nothing.
    c.kill_node(1);
    std::fs::remove_dir_all(c.data_dir(1)).unwrap();
    let (code, stderr) = c.run_node_to_exit(
        1,
        &["--bootstrap-timeout-secs", "10"],
        Duration::from_secs(60),
    );
    assert_eq!(code, REFUSED, "restarting a wiped node 2: {stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("counter-node: ")),
        "{stderr}"
    );
    assert!(
        !c.data_dir(1).exists(),
        "a refused start created {}",
        c.data_dir(1).display()
    );
    assert_values(&c, &known, "with node 2 wiped");

    // A new node (id 4) joins through node 1 and replaces node 2.
    let n4 = c.start_joining_node(0);
    assert_eq!(n4, 3);
    let (_, v) = c.status_json();
    assert_eq!(members(&v), [1, 2, 3], "before replace-node: {v}");
    admin(&c, &["replace-node", "2", "4", &c.node_addrs[n4]]);
    let v2 = wait_config(&c, &[1, 3, 4]);
    assert!(v2 > v1, "replace-node: version {v1} -> {v2}");

    // No key is read or written from here until only new nodes hold the data: a read would
    // copy its key to node 4 by itself, and hide a replacement that copied nothing.
    // Node 3 goes down and loses its disk too; node 5 joins through node 4 (a member since
    // the replacement) and replaces it: node 5's copies can only come from nodes 1 and 4.
    c.kill_node(2);
    std::fs::remove_dir_all(c.data_dir(2)).unwrap();
    let n5 = c.start_joining_node(3);
    assert_eq!(n5, 4);
    admin(&c, &["replace-node", "3", "5", &c.node_addrs[n5]]);
    let v3 = wait_config(&c, &[1, 4, 5]);
    assert!(v3 > v2, "replace-node: version {v2} -> {v3}");

    // Node 1 down: the two new nodes alone are a majority, and hold every count.
    c.kill_node(0);
    assert_values(&c, &known, "on nodes 4 and 5 alone");
    for (key, value) in known.iter_mut() {
        *value += 1;
        incr_to(&c, key, *value);
    }
    c.start_node(0);
    assert_values(&c, &known, "with nodes 1, 4 and 5");
    assert_eq!(wait_config(&c, &[1, 4, 5]), v3, "no change since");
}

/// Refused admin commands, each with its documented exit status, and the configuration
/// unchanged after each; then a valid `add-node` still goes through.
#[test]
fn bad_admin_commands_change_nothing() {
    let mut c = LocalCluster::start(3, 3, SHARDS);
    assert_eq!(
        c.cli(&["incr", "bad-admin", "7"]),
        (0, "7".into(), String::new())
    );
    let version = wait_config(&c, &[1, 2, 3]);
    // A real joining node (id 4), so that only the named fault is wrong with each command.
    let n4 = c.start_joining_node(0);
    let addr4 = c.node_addrs[n4].clone();
    let addr1 = c.node_addrs[0].clone();
    let addr2 = c.node_addrs[1].clone();
    let nobody = format!("127.0.0.1:{}", free_port());

    let unchanged = |what: &str| {
        let (_, v) = c.status_json();
        assert_eq!(members(&v), [1, 2, 3], "after {what}: {v}");
        assert_eq!(config_version(&v), version, "after {what}: {v}");
        assert_eq!(v["moves"], serde_json::json!([]), "after {what}: {v}");
    };
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["remove-node", "9"], 2, "an unknown id"),
        (
            vec!["replace-node", "9", "4", &addr4],
            2,
            "an unknown old id",
        ),
        (vec!["add-node", "2", &addr4], 2, "an id already a member"),
        (
            vec!["replace-node", "1", "2", &addr4],
            2,
            "a new id already a member",
        ),
        (vec!["add-node", "4", &addr1], 2, "another member's address"),
        (
            vec!["replace-node", "1", "4", &addr2],
            2,
            "another member's address",
        ),
        (
            vec!["remove-node", "3"],
            2,
            "fewer members than the replication",
        ),
    ];
    for (args, expected, what) in cases {
        let (code, out, err) = admin_once(&c, &args);
        assert_eq!(code, expected, "cluster {args:?} ({what}): {out:?} {err:?}");
        assert!(out.is_empty(), "cluster {args:?}: stdout {out:?}");
        assert!(!err.is_empty(), "cluster {args:?}: no message on stderr");
        unchanged(&format!("cluster {args:?}"));
    }

    // A node nobody runs: unavailable (a shorter timeout, in case it is tried until then).
    let args = ["--timeout-ms", "20000", "cluster", "add-node", "5", &nobody];
    let started = Instant::now();
    let (code, out, err) = c.cli(&args);
    assert_eq!(code, 3, "{args:?}: {out:?} {err:?}");
    assert!(
        out.is_empty() && !err.is_empty(),
        "{args:?}: {out:?} {err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(40), "{args:?}");
    unchanged("add-node of a node nobody runs");

    // Nothing lost, and the same cluster still changes: node 4 is added, once.
    assert_eq!(c.get("bad-admin"), 7);
    admin(&c, &["add-node", "4", &addr4]);
    let next = wait_config(&c, &[1, 2, 3, 4]);
    assert!(next > version, "add-node 4: version {version} -> {next}");
    // Idempotent: the same command again says it is done and changes nothing.
    let (code, out, err) = admin_once(&c, &["add-node", "4", &addr4]);
    assert_eq!(code, 0, "add-node 4 again: {out:?} {err:?}");
    assert!(out.contains("already done"), "add-node 4 again: {out:?}");
    // Another node at node 4's address, or node 4 at another one, is refused.
    let (code, out, err) = admin_once(&c, &["add-node", "4", &addr1]);
    assert_eq!(code, 2, "add-node 4 at another address: {out:?} {err:?}");
    assert_eq!(wait_config(&c, &[1, 2, 3, 4]), next, "add-node 4 again");
    incr_to(&c, "bad-admin", 8);
}

/// The node driving a change is SIGKILLed in the middle of its rescan: the command fails
/// (unavailable or unknown), `cluster status` showed the move and its progress, and running
/// the same command again, once the node is back, finishes the change where it stood. No
/// count is lost.
#[test]
fn a_change_resumes_after_its_driver_is_killed() {
    let mut c = LocalCluster::start(3, 3, 2);
    const FILLED: u64 = 4000;
    let mut pipe = c.pipe(10_000);
    for k in 0..FILLED {
        assert_eq!(
            pipe.run_line(&format!("incr resume-{k} {}", k + 1)),
            (k + 1).to_string()
        );
    }
    pipe.finish();
    let n4 = c.start_joining_node(1);
    let addr4 = c.node_addrs[n4].clone();
    // The router hands the command to the first member that answers: node 1.
    let run = c.cli_spawn(&[
        "--timeout-ms",
        ADMIN_TIMEOUT_MS,
        "cluster",
        "add-node",
        "4",
        &addr4,
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_move = false;
    while Instant::now() < deadline {
        let (_, v) = c.status_json();
        let copied = v["moves"]
            .as_array()
            .and_then(|m| m.first())
            .and_then(|m| m["keys_copied"].as_u64())
            .unwrap_or(0);
        if copied > 0 {
            seen_move = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen_move, "cluster status never showed the move's progress");
    c.kill_node(0);
    let (code, out, err) = cli_wait(run);
    assert!(
        code == 3 || code == 4,
        "add-node with its driver killed: {code} {out:?} {err:?}"
    );
    let (_, v) = c.status_json();
    assert!(
        !v["moves"].as_array().unwrap().is_empty(),
        "the move is still under way: {v}"
    );
    c.start_node(0);
    admin(&c, &["add-node", "4", &addr4]);
    wait_config(&c, &[1, 2, 3, 4]);
    // Every count survived the interrupted and resumed move.
    for k in (0..FILLED).step_by(97) {
        assert_eq!(
            c.get(&format!("resume-{k}")),
            (k + 1) as i64,
            "key resume-{k}"
        );
    }
}
