//! Operating the store: metrics, health and readiness endpoints, JSON logs, the drain at
//! SIGTERM, and a router under a flood of connections that send half a frame.

mod common;

use common::{free_port, http_get, sample, Answer, LocalCluster, Pipe};
use std::io::Write;
use std::time::{Duration, Instant};

/// A cluster of 3 whose nodes and router serve metrics; their metrics addresses (nodes, then
/// the router).
fn cluster_with_metrics(router_extra: &[&str]) -> (LocalCluster, Vec<String>, String) {
    let node_metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let router_metrics = format!("127.0.0.1:{}", free_port());
    let node_args = node_metrics
        .iter()
        .map(|a| vec!["--metrics-listen".to_string(), a.clone()])
        .collect();
    let mut router_args = vec!["--metrics-listen".to_string(), router_metrics.clone()];
    router_args.extend(router_extra.iter().map(|s| s.to_string()));
    let c = LocalCluster::start_with(3, 3, 4, node_args, router_args);
    (c, node_metrics, router_metrics)
}

/// Polls `addr`'s `path` until it answers `code` (at most `limit`); the last answer.
fn wait_for(addr: &str, path: &str, code: u16, limit: Duration) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        let answer = http_get(addr, path);
        if let Some((got, body)) = &answer {
            if *got == code {
                return (*got, body.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{addr}{path} never answered {code}; last: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_move_with_load_and_readiness_follows_quorums() {
    let (mut c, nodes, router) = cluster_with_metrics(&[]);
    for addr in nodes.iter().chain([&router]) {
        assert_eq!(http_get(addr, "/healthz").map(|a| a.0), Some(200), "{addr}");
        wait_for(addr, "/readyz", 200, Duration::from_secs(20));
        let (code, _) = http_get(addr, "/nowhere").unwrap();
        assert_eq!(code, 404);
    }
    let incr_ok = r#"counter_requests_total{server="router",command="incr",outcome="ok"}"#;
    let rejected = r#"counter_requests_total{server="router",command="incr",outcome="rejected"}"#;
    let before = http_get(&router, "/metrics").unwrap().1;
    let node_before: Vec<String> = nodes
        .iter()
        .map(|a| http_get(a, "/metrics").unwrap().1)
        .collect();

    let mut pipe = c.pipe(5000);
    for i in 0..200 {
        assert!(matches!(
            pipe.run(&format!("incr m{} 1", i % 10)),
            Answer::Value(_)
        ));
    }
    for _ in 0..3 {
        assert!(matches!(pipe.run("incr capped 1 --max 0"), Answer::Err(k, _) if k == "rejected"));
    }
    pipe.finish();

    let after = http_get(&router, "/metrics").unwrap().1;
    assert_eq!(
        sample(&after, incr_ok) - sample(&before, incr_ok),
        200.0,
        "{after}"
    );
    assert_eq!(sample(&after, rejected) - sample(&before, rejected), 3.0);
    let latency = r#"counter_request_duration_seconds_count{server="router",command="incr"}"#;
    assert!(sample(&after, latency) >= 203.0, "{after}");
    assert!(sample(&after, r#"counter_connections_open{server="router"}"#) >= 0.0);

    // The nodes coordinated those increments: rounds, syncs, requests.
    let mut rounds = 0.0;
    let mut syncs = 0.0;
    let mut node_requests = 0.0;
    for (addr, before) in nodes.iter().zip(&node_before) {
        let scrape = http_get(addr, "/metrics").unwrap().1;
        for outcome in ["one_trip", "two_trips", "conflict"] {
            let series = format!(r#"counter_rounds_total{{outcome="{outcome}"}}"#);
            rounds += sample(&scrape, &series) - sample(before, &series);
        }
        let series = "counter_wal_sync_duration_seconds_count";
        syncs += sample(&scrape, series) - sample(before, series);
        let series = r#"counter_requests_total{server="node",command="incr",outcome="ok"}"#;
        node_requests += sample(&scrape, series) - sample(before, series);
        assert_eq!(sample(&scrape, "counter_config_version"), 1.0, "{scrape}");
        assert!(sample(&scrape, "counter_node_epoch") >= 1.0, "{scrape}");
        assert!(
            sample(&scrape, "process_resident_memory_bytes") > 1e6,
            "{scrape}"
        );
        assert!(scrape.contains("# TYPE counter_wal_sync_duration_seconds histogram"));
        assert!(scrape.contains("counter_wal_sync_batch_writes_bucket{le="));
    }
    assert_eq!(
        node_requests, 200.0,
        "every increment counted once by its coordinator"
    );
    assert!(rounds >= 200.0 / 8.0, "rounds {rounds}");
    assert!(
        syncs >= rounds,
        "every round syncs on a majority: {syncs} < {rounds}"
    );

    // Two nodes down: the third reaches no majority, nor can the router serve any shard.
    c.kill_node(1);
    c.kill_node(2);
    let (_, why) = wait_for(&nodes[0], "/readyz", 503, Duration::from_secs(20));
    assert!(why.contains("no majority"), "{why}");
    assert_eq!(http_get(&nodes[0], "/healthz").map(|a| a.0), Some(200));
    wait_for(&router, "/readyz", 503, Duration::from_secs(20));
    c.start_node(1);
    wait_for(&nodes[0], "/readyz", 200, Duration::from_secs(20));
    wait_for(&router, "/readyz", 200, Duration::from_secs(20));
}

/// One client's history: ok answers per key, and the error kinds seen.
#[derive(Default)]
struct Tally {
    ok: Vec<u64>,
    errors: Vec<String>,
}

fn count_until(mut pipe: Pipe, keys: usize, offset: usize, stop: Instant) -> Tally {
    let mut tally = Tally {
        ok: vec![0; keys],
        errors: Vec::new(),
    };
    let mut i = 0;
    while Instant::now() < stop {
        // Client `offset` has keys of its own (offset, offset + 5, ...): no two clients race on
        // a key, so no command waits out its deadline behind another coordinator's rounds.
        let k = offset + 5 * (i % (keys / 5));
        match pipe.run(&format!("incr drain{k} 1")) {
            Answer::Value(_) => tally.ok[k] += 1,
            Answer::Err(kind, msg) => {
                tally.errors.push(format!("{kind} {msg}"));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        i += 1;
    }
    pipe.finish();
    tally
}

/// SIGTERM under load: the router and a node each answer every request they have read before
/// they exit 0, so no client sees `unknown` (their retries cannot reach a process that is
/// gone: the restarts come after the clients' deadlines) and every key holds exactly its
/// acknowledged increments.
#[test]
fn sigterm_drains_what_was_read_and_loses_nothing() {
    let mut c = LocalCluster::start(3, 3, 4);
    let keys = 10;
    let stop = Instant::now() + Duration::from_secs(16);
    let mut clients = Vec::new();
    for t in 0..4 {
        let pipe = c.pipe(5000);
        clients.push(std::thread::spawn(move || count_until(pipe, keys, t, stop)));
    }
    // One client talks to node 1 directly (a node coordinates any key).
    let direct = Pipe::spawn(&c.node_addrs[0], 5000);
    clients.push(std::thread::spawn(move || {
        count_until(direct, keys, 4, stop)
    }));

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.term_node(0, Duration::from_secs(20)), 0, "node 1 exits 0");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        c.term_router(Duration::from_secs(20)),
        0,
        "the router exits 0"
    );
    // Down for longer than the clients' 5 s deadline (generous: a loaded CI machine), so that a
    // request cut off would be `unknown`: their retries could not reach a process that is gone.
    std::thread::sleep(Duration::from_millis(5500));
    c.start_node(0);
    c.start_router();

    let mut ok = vec![0u64; keys];
    let mut errors = Vec::new();
    for client in clients {
        let tally = client.join().unwrap();
        for (k, n) in tally.ok.iter().enumerate() {
            ok[k] += n;
        }
        errors.extend(tally.errors);
    }
    let unknown: Vec<&String> = errors
        .iter()
        .filter(|e| !e.starts_with("unavailable"))
        .collect();
    assert!(
        unknown.is_empty(),
        "a drained process answers what it read; only `unavailable` (not applied) may be \
         seen: {unknown:?} (router {}, nodes {:?}); logs:\n{}",
        c.router_addr,
        c.node_addrs,
        c.logs()
    );
    assert!(ok.iter().sum::<u64>() > 100, "the load ran: {ok:?}");
    for (k, n) in ok.iter().enumerate() {
        assert_eq!(c.get(&format!("drain{k}")), *n as i64, "key drain{k}");
    }
    let logs = c.logs();
    assert!(
        logs.contains("drained; every request read was answered"),
        "{logs}"
    );
}

#[test]
fn json_logs_carry_the_request_span() {
    let mut c = LocalCluster::start(3, 3, 4);
    c.kill_router();
    c.router_args = vec!["--log-format".into(), "json".into()];
    c.kill_node(0);
    // Debug lines of the router are written inside the request's span.
    let log_path = c.dir.path().join("router.log");
    let earlier = std::fs::read_to_string(&log_path).unwrap().len();
    c.router_env = vec![("RUST_LOG".into(), "info,counter_router=debug".into())];
    c.start_router();
    let mut pipe = c.pipe(5000);
    for i in 0..40 {
        assert!(matches!(
            pipe.run(&format!("incr j{i} 1")),
            Answer::Value(_)
        ));
    }
    pipe.finish();
    let log = std::fs::read_to_string(&log_path).unwrap()[earlier..].to_string();
    let mut with_request = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        if let Some(span) = v.get("span") {
            assert_eq!(span["name"], "request", "{line}");
            assert_eq!(span["op"], "incr", "{line}");
            let id = span["request"].as_str().unwrap_or_default();
            assert!(id.contains('/'), "a request id client/seq: {line}");
            with_request += 1;
        }
    }
    assert!(
        with_request > 0,
        "node 1 is down: failing over from it is logged: {log}"
    );
}

/// 1,100 connections that each send the first bytes of a frame and nothing more: the router
/// sheds the longest idle and keeps serving well-behaved clients at once, with bounded memory.
#[test]
fn a_flood_of_half_sent_frames_does_not_stop_the_router() {
    let (c, _, router_metrics) = cluster_with_metrics(&[]);
    let mut bad = Vec::new();
    for _ in 0..1100 {
        let mut s = std::net::TcpStream::connect(&c.router_addr).unwrap();
        // The prefix declares a 60,000-byte frame; 3 bytes of it follow.
        s.write_all(&[0, 0, 0xea, 0x60, 1, 2, 3]).unwrap();
        bad.push(s);
    }
    for i in 0..20 {
        let started = Instant::now();
        let (code, out, err) = c.cli(&["incr", &format!("flood{i}")]);
        assert_eq!((code, out.as_str()), (0, "1"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "served at once");
    }
    let scrape = http_get(&router_metrics, "/metrics").unwrap().1;
    assert!(
        sample(
            &scrape,
            r#"counter_connections_shed_total{server="router"}"#
        ) >= 70.0,
        "{scrape}"
    );
    assert!(sample(&scrape, r#"counter_connections_open{server="router"}"#) <= 1024.0);
    let rss = sample(&scrape, "process_resident_memory_bytes");
    assert!(
        rss < 150e6,
        "router RSS {rss} bytes with 1,024 half-sent frames"
    );
    drop(bad);
}

/// SIGTERM drains the Redis front door too: every INCR a client sent gets a reply, either its
/// value or `-UNAVAILABLE ... draining` (not run), and the key holds exactly the values given.
#[test]
fn sigterm_drains_the_redis_front_door() {
    use std::io::{BufRead, BufReader};
    let resp = format!("127.0.0.1:{}", free_port());
    let mut c = LocalCluster::start_with(
        3,
        3,
        4,
        Vec::new(),
        vec!["--resp-listen".into(), resp.clone()],
    );
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let resp = resp.clone();
            std::thread::spawn(move || {
                let stream = std::net::TcpStream::connect(&resp).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut write = stream.try_clone().unwrap();
                let mut read = BufReader::new(stream);
                let (mut values, mut refused) = (0u64, 0u64);
                loop {
                    // Four pipelined at a time: some are in flight when the drain begins.
                    let sent = (0..4)
                        .take_while(|_| {
                            write.write_all(b"*2\r\n$4\r\nINCR\r\n$2\r\nrk\r\n").is_ok()
                        })
                        .count();
                    for _ in 0..sent {
                        let mut line = String::new();
                        match read.read_line(&mut line) {
                            Ok(0) | Err(_) => return (values, refused, sent > 0),
                            Ok(_) if line.starts_with(':') => values += 1,
                            Ok(_) => {
                                assert!(
                                    line.starts_with("-UNAVAILABLE") && line.contains("draining"),
                                    "{line}"
                                );
                                refused += 1;
                            }
                        }
                    }
                    if sent < 4 {
                        return (values, refused, true);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Clients that keep sending are told "draining" for a moment, then closed: the drain
    // does not wait for its deadline.
    assert_eq!(c.term_router(Duration::from_secs(5)), 0);
    let mut total = 0;
    for client in clients {
        let (values, _refused, _) = client.join().unwrap();
        assert!(values > 0);
        total += values;
    }
    c.router_args.clear();
    c.start_router();
    assert_eq!(
        c.get("rk"),
        total as i64,
        "every value given was applied once"
    );
}
