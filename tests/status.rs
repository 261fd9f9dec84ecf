//! `counter-cli cluster status` against real processes: every node reachable and every shard
//! available, then one node SIGKILLed (still every shard, R = 3), then two (no shard).

mod common;

use common::LocalCluster;
use std::time::{Duration, Instant};

const SHARDS: u32 = 16;

fn json(c: &LocalCluster) -> (i32, serde_json::Value) {
    let (code, out, err) = c.cli(&["cluster", "status", "--json"]);
    let value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}; stderr {err:?}"));
    (code, value)
}

/// The table's row of node `id`, split into its cells.
fn row(table: &str, id: u32) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("no row for node {id}:\n{table}"))
}

/// Runs `cluster status` until `done` holds for its answer (a node's peers notice a death
/// at once on loopback, but give it a moment), returning the last answer.
fn until(c: &LocalCluster, done: impl Fn(&(i32, String, String)) -> bool) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = c.cli(&["cluster", "status"]);
        if done(&answer) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cluster_status_shows_reachability_and_available_shards() {
    let mut c = LocalCluster::start(3, 3, SHARDS);

    // Everything up.
    let (code, table, err) = until(&c, |(_, out, _)| out.contains("3/3 ready"));
    assert_eq!(code, 0, "{table}\n{err}");
    assert!(
        table.contains(
            "3/3 nodes reachable, 3/3 ready, 16/16 shards available, configuration version 1, \
             replication 3, no moves in progress"
        ),
        "{table}"
    );
    let header = row(&table.replace("NODE", "0"), 0);
    assert_eq!(
        header[1..],
        [
            "ADDR",
            "REACHABLE",
            "STATE",
            "READY",
            "EPOCH",
            "SHARDS",
            "CONFIG",
            "VERSION",
            "UPTIME"
        ]
    );
    for id in 1..=3 {
        let r = row(&table, id);
        assert_eq!(r[1], c.node_addrs[id as usize - 1], "{table}");
        assert_eq!(r[2..5], ["yes", "serving", "yes"], "{table}");
        assert!(r[5].parse::<u32>().unwrap() >= 1, "epoch: {table}");
        assert_eq!(
            r[6],
            SHARDS.to_string(),
            "every node has every shard: {table}"
        );
        assert_eq!(r[7], "1", "{table}");
        assert_eq!(r[8], env!("CARGO_PKG_VERSION"), "{table}");
    }

    let (code, v) = json(&c);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["router"], c.router_addr.as_str());
    assert_eq!(v["nodes_total"], 3);
    assert_eq!(v["nodes_reachable"], 3);
    assert_eq!(v["nodes_ready"], 3);
    assert_eq!(v["shards"], SHARDS);
    assert_eq!(v["shards_available"], SHARDS);
    assert_eq!(v["shards_unavailable"], 0);
    assert_eq!(v["all_shards_available"], true);
    assert_eq!(v["replication"], 3);
    assert_eq!(v["config_version"], 1);
    assert_eq!(v["moves"], serde_json::json!([]));
    assert_eq!(v["warnings"], serde_json::json!([]));
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let cluster_id = nodes[0]["cluster_id"].as_str().unwrap();
    assert_eq!(cluster_id.len(), 16, "{v}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["id"], i as u64 + 1);
        assert_eq!(n["addr"], c.node_addrs[i].as_str());
        assert_eq!(n["listen"], c.node_addrs[i].as_str());
        assert_eq!(n["reachable"], true);
        assert_eq!(n["state"], "serving");
        assert_eq!(n["ready"], true);
        assert_eq!(n["shards"], SHARDS);
        assert_eq!(n["cluster_id"], cluster_id, "one cluster: {v}");
        assert_eq!(n["peers_up"].as_array().unwrap().len(), 2, "{v}");
        assert!(n["epoch"].as_u64().unwrap() >= 1);
        assert!(n["uptime_secs"].is_u64());
    }

    // One node down: a majority of every shard's replicas is still up (R = 3).
    c.kill_node(2); // node 3
    let (code, table, err) = until(&c, |(_, out, _)| out.contains("2/3 ready"));
    assert_eq!(code, 0, "{table}\n{err}");
    assert!(
        table.contains("2/3 nodes reachable, 2/3 ready, 16/16 shards available"),
        "{table}"
    );
    assert_eq!(
        row(&table, 3)[2..],
        ["no", "-", "-", "-", "-", "-", "-", "-"]
    );
    assert!(
        table.contains(&format!("node 3 ({}) is not reachable: ", c.node_addrs[2])),
        "{table}"
    );
    assert_eq!(row(&table, 1)[2..5], ["yes", "serving", "yes"]);
    let (code, v) = json(&c);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["nodes_reachable"], 2);
    assert_eq!(v["shards_available"], SHARDS);
    assert_eq!(v["nodes"][2]["reachable"], false);
    assert!(v["nodes"][2]["error"].as_str().unwrap().len() > 5, "{v}");
    assert_eq!(v["nodes"][0]["peers_up"], serde_json::json!([2]));
    // And the cluster does serve: the status is not optimistic.
    assert_eq!(c.cli(&["incr", "k"]), (0, "1".into(), String::new()));

    // Two down: no shard has a majority; the survivor is reachable but not ready.
    c.kill_node(1); // node 2: node 1 is left
    let (code, table, err) = until(&c, |(_, out, _)| out.contains("1/3 nodes reachable"));
    assert_eq!(code, 3, "{table}\n{err}");
    assert!(
        table.contains("1/3 nodes reachable, 0/3 ready, 0/16 shards available"),
        "{table}"
    );
    assert_eq!(row(&table, 1)[2..5], ["yes", "serving", "no"], "{table}");
    assert_eq!(row(&table, 2)[2], "no", "{table}");
    assert!(
        table.contains("node 1 is not ready: it reaches no majority of replicas for 16 of its 16 shards (peers up: none)"),
        "{table}"
    );
    assert!(
        table.ends_with("\nunavailable shards (no majority of replicas up): 0-15"),
        "{table}"
    );
    let (code, v) = json(&c);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["shards_available"], 0);
    assert_eq!(v["shards_unavailable"], SHARDS);
    assert_eq!(v["all_shards_available"], false);
    assert_eq!(
        v["unavailable_shards"].as_array().unwrap().len(),
        SHARDS as usize
    );
    // And the cluster does not serve: the status is not pessimistic either.
    assert_eq!(c.cli(&["--timeout-ms", "1000", "get", "k"]).0, 3);

    // Back up: everything available again.
    c.start_node(1);
    c.start_node(2);
    let (code, table, _) = until(&c, |(_, out, _)| out.contains("3/3 ready"));
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("16/16 shards available"), "{table}");
}

#[test]
fn cluster_status_errors() {
    // No router: unavailable, nothing on stdout.
    let port = common::free_port();
    for json in [false, true] {
        let mut args = vec![
            "--router".to_string(),
            format!("127.0.0.1:{port}"),
            "cluster".into(),
            "status".into(),
        ];
        if json {
            args.push("--json".into());
        }
        let out = std::process::Command::new(common::CLI)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("counter-cli: unavailable: router "),
            "{err}"
        );
    }
    // Bad admin commands are invalid, before anything is sent.
    let router = format!("127.0.0.1:{port}");
    for args in [
        vec!["cluster"],
        vec!["cluster", "stat"],
        vec!["cluster", "status", "--yaml"],
        vec!["cluster", "add-node", "4"],
        vec!["--request-id", "1:2", "cluster", "status"],
    ] {
        let out = std::process::Command::new(common::CLI)
            .arg("--router")
            .arg(&router)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty());
    }
    // Pipe mode takes key commands only, as before.
    let mut pipe = common::Pipe::spawn(&router, 1_000);
    assert!(matches!(pipe.run("cluster status"), common::Answer::Err(k, _) if k == "invalid"));
    pipe.finish();
}
