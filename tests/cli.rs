//! The command-line contract (docs/CLI.md) against a real cluster: exit codes, pipe mode, bad input
//! that changes nothing, and servers that keep serving after garbage.

mod common;

use common::{Answer, LocalCluster};
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn commands_print_values_and_exit_zero() {
    let c = LocalCluster::start(3, 3, 8);
    assert_eq!(c.cli(&["get", "fresh"]), (0, "0".into(), String::new()));
    assert_eq!(c.cli(&["incr", "a"]).1, "1");
    assert_eq!(c.cli(&["incr", "a", "41"]).1, "42");
    assert_eq!(c.cli(&["decr", "a", "50"]).1, "-8");
    assert_eq!(c.cli(&["get", "a"]).1, "-8");
    assert_eq!(c.cli(&["reset", "a"]).1, "0");
    assert_eq!(c.cli(&["get", "a"]).1, "0");
    assert_eq!(c.cli(&["incr", "a key with spaces"]).1, "1");
    let long = "k".repeat(1024);
    assert_eq!(c.cli(&["incr", &long]).1, "1");
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    let c = LocalCluster::start(3, 3, 8);
    assert_eq!(c.cli(&["incr", "x", "10"]).1, "10");
    let too_long = "k".repeat(1025);
    for args in [
        vec!["incr", ""],
        vec!["incr", &too_long],
        vec!["incr", "x", "0"],
        vec!["incr", "x", "-3"],
        vec!["decr", "x", "-3"],
        vec!["incr", "x", "ten"],
        vec!["incr", "x", "1.5"],
        vec!["incr", "x", "99999999999999999999999"],
        vec!["incr"],
        vec!["get", "x", "y"],
        vec!["frobnicate", "x"],
    ] {
        let (code, out, err) = c.cli(&args);
        assert_eq!(code, 2, "{args:?}: stdout {out:?} stderr {err:?}");
        assert!(out.is_empty() && !err.is_empty(), "{args:?}");
    }
    // A non-UTF-8 key.
    {
        use std::os::unix::ffi::OsStrExt;
        let out = std::process::Command::new(common::CLI)
            .args(["--router", &c.router_addr, "incr"])
            .arg(std::ffi::OsStr::from_bytes(b"\xff\xfekey"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
    }
    // Overflow is refused by the cluster and nothing changes.
    assert_eq!(
        c.cli(&["incr", "x", &(i64::MAX - 10).to_string()]).1,
        i64::MAX.to_string()
    );
    let (code, _, err) = c.cli(&["incr", "x", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("overflow"), "{err}");
    assert_eq!(c.cli(&["get", "x"]).1, i64::MAX.to_string());
    assert_eq!(c.cli(&["reset", "y"]).1, "0");
    assert_eq!(
        c.cli(&["decr", "y", &i64::MAX.to_string()]).1,
        (-i64::MAX).to_string()
    );
    assert_eq!(c.cli(&["decr", "y", "1"]).1, i64::MIN.to_string());
    assert_eq!(c.cli(&["decr", "y", "1"]).0, 2);
    assert_eq!(c.cli(&["get", "y"]).1, i64::MIN.to_string());
}

#[test]
fn pipe_mode_answers_every_line_in_order() {
    let c = LocalCluster::start(3, 3, 8);
    let mut p = c.pipe(5_000);
    assert_eq!(p.run("incr p"), Answer::Value(1));
    assert_eq!(p.run("incr p 9"), Answer::Value(10));
    assert!(matches!(p.run("incr p 0"), Answer::Err(k, _) if k == "invalid"));
    assert!(matches!(p.run(""), Answer::Err(k, _) if k == "invalid"));
    assert!(matches!(p.run("bogus"), Answer::Err(k, _) if k == "invalid"));
    assert!(matches!(p.run_bytes(b"incr \xff"), Answer::Err(k, _) if k == "invalid"));
    assert!(
        matches!(p.run(&format!("incr {}", "k".repeat(1025))), Answer::Err(k, _) if k == "invalid")
    );
    assert_eq!(p.run("decr p 3"), Answer::Value(7));
    assert_eq!(p.run("get p"), Answer::Value(7));
    assert_eq!(p.run("reset p"), Answer::Value(0));
    p.finish();
}

#[test]
fn an_unreachable_router_is_unavailable() {
    let port = common::free_port();
    let out = std::process::Command::new(common::CLI)
        .args(["--router", &format!("127.0.0.1:{port}"), "incr", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let out = std::process::Command::new(common::CLI)
        .args(["--router", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"incr k\nget k\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines.iter().all(|l| l.starts_with("ERR unavailable ")),
        "{text}"
    );
}

#[test]
fn garbage_to_a_node_or_the_router_harms_no_one_else() {
    let c = LocalCluster::start(3, 3, 8);
    let mut p = c.pipe(5_000);
    assert_eq!(p.run("incr g"), Answer::Value(1));
    let targets = [
        c.router_addr.clone(),
        c.node_addrs[0].clone(),
        c.node_addrs[1].clone(),
    ];
    for addr in &targets {
        for garbage in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            vec![0xff; 64],
            vec![0, 0, 0, 3, 0x7f, 0, 0], // unknown protocol version
            vec![0, 0, 0, 5, 1, 0, 0xff, 0xff, 0xff],
        ] {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&garbage).unwrap();
            let mut buf = Vec::new();
            // The server answers with an error frame (or nothing) and closes this connection.
            let _ = s.read_to_end(&mut buf);
        }
        // A half-sent frame that never completes must not block anyone either.
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.write_all(&[0, 0, 1, 0, 1]).unwrap();
        assert_eq!(
            p.run("incr g"),
            Answer::Value(2 + targets.iter().position(|a| a == addr).unwrap() as i64)
        );
    }
    // A node must refuse acceptor messages for keys it does not own, and client traffic goes on.
    assert_eq!(c.get("g"), 4);
    p.finish();
}

#[test]
fn a_node_refuses_a_data_dir_with_another_shard_count() {
    let mut c = LocalCluster::start(3, 3, 8);
    assert_eq!(c.cli(&["incr", "s"]).1, "1");
    c.kill_node(0);
    let other = c.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&c.cluster_file)
        .unwrap()
        .replace("shards = 8", "shards = 16");
    std::fs::write(&other, text).unwrap();
    let out = std::process::Command::new(common::NODE)
        .args(["--id", "1", "--cluster"])
        .arg(&other)
        .arg("--data-dir")
        .arg(c.data_dir(0))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("8 shards") && err.contains("says 16"), "{err}");
    // The same data dir with the right file still works, its data intact.
    c.start_node(0);
    assert_eq!(c.get("s"), 1);
}

#[test]
fn bounds_cas_set_and_request_ids() {
    let c = LocalCluster::start(3, 3, 8);
    // Bounded counters: refused with exit status 5, and nothing changes.
    assert_eq!(
        c.cli(&["set", "stock", "3"]),
        (0, "3".into(), String::new())
    );
    let (code, out, err) = c.cli(&["decr", "stock", "5", "--min", "0"]);
    assert_eq!(code, 5, "stdout {out:?} stderr {err:?}");
    assert!(out.is_empty());
    assert!(err.contains("rejected: below-min"), "{err}");
    assert_eq!(c.cli(&["decr", "stock", "3", "--min", "0"]).1, "0");
    let (code, _, err) = c.cli(&["incr", "stock", "11", "--max", "10"]);
    assert_eq!(code, 5);
    assert!(err.contains("rejected: above-max"), "{err}");
    assert_eq!(c.cli(&["incr", "stock", "10", "--max", "10"]).1, "10");
    assert_eq!(c.cli(&["get", "stock"]).1, "10");
    let mut p = c.pipe(5_000);
    assert!(
        matches!(p.run("decr stock 11 --min 0"), Answer::Err(k, m) if k == "rejected" && m.starts_with("below-min"))
    );
    assert!(
        matches!(p.run("incr stock --max 10"), Answer::Err(k, m) if k == "rejected" && m.starts_with("above-max"))
    );
    assert!(matches!(p.run("decr stock 1 --min"), Answer::Err(k, _) if k == "invalid"));
    assert!(matches!(p.run("get stock --min 1"), Answer::Err(k, _) if k == "invalid"));
    assert_eq!(p.run("decr stock 10 --min 0"), Answer::Value(0));
    p.finish();

    // Compare-and-set: prints the value held and whether it swapped.
    assert_eq!(c.cli(&["cas", "lock", "0", "7"]).1, "7 swapped");
    assert_eq!(c.cli(&["cas", "lock", "0", "9"]).1, "7 unchanged");
    assert_eq!(c.cli(&["get", "lock"]).1, "7");
    assert_eq!(c.cli(&["set", "lock", "-4"]).1, "-4");
    for bad in [
        vec!["cas", "lock", "1"],
        vec!["cas", "lock", "x", "1"],
        vec!["set", "lock"],
        vec!["set", "lock", "1", "--min", "0"],
    ] {
        assert_eq!(c.cli(&bad).0, 2, "{bad:?}");
    }
    assert_eq!(c.cli(&["get", "lock"]).1, "-4");

    // Request ids: a replay answers the first outcome and is not applied again.
    let once = |args: &[&str]| {
        let mut all = vec!["--request-id", "77:1000"];
        all.extend_from_slice(args);
        c.cli(&all)
    };
    assert_eq!(once(&["incr", "paid", "5"]).1, "5");
    assert_eq!(once(&["incr", "paid", "5"]).1, "5");
    assert_eq!(c.cli(&["get", "paid"]).1, "5");
    assert_eq!(
        c.cli(&["--request-id", "77:1001", "incr", "paid", "5"]).1,
        "10"
    );
    // Older than the one the key remembers for client 77: refused, never applied; its own
    // kind (exit 6), since an earlier attempt may have applied it.
    let (code, _, err) = once(&["incr", "paid", "5"]);
    assert_eq!(code, 6);
    assert!(err.starts_with("counter-cli: expired: "), "{err}");
    assert_eq!(c.cli(&["get", "paid"]).1, "10");
    for bad in ["77", "x:1", "1:", "-1:2"] {
        let (code, _, err) = c.cli(&["--request-id", bad, "incr", "paid"]);
        assert_eq!(code, 2, "{bad}: {err}");
    }
    assert_eq!(c.cli(&["get", "paid"]).1, "10");
}
