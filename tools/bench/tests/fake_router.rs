//! Runs the `counter-bench` binary against an in-process fake router (no cluster needed): an
//! honest one, one that loses some answers after applying, and one that counts twice.

use counter_proto::{ClientError, Command, Msg, Op};
use std::collections::HashMap;
use std::process::Command as Process;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Every 7th change is applied but answered `unknown`.
    LoseAnswers,
    /// Every 50th increment is applied twice.
    DoubleApply,
    /// Every answer takes 20 ms.
    Slow,
}

#[derive(Default)]
struct Key {
    value: i64,
    /// Per client: last sequence applied and its answer.
    seen: HashMap<u64, (u64, i64)>,
}

struct Fake {
    fault: Fault,
    keys: Mutex<HashMap<String, Key>>,
    ops: AtomicU64,
}

impl Fake {
    fn handle(&self, msg: Msg) -> Msg {
        if let Msg::OpenSession { .. } = msg {
            return Msg::Session {
                expires_ms: counter_proto::unix_ms() + 3_600_000,
                renew_after_ms: 3_480_000,
            };
        }
        let Msg::Command { key, command, .. } = msg else {
            return Msg::Error(ClientError::invalid("commands only"));
        };
        let Command { op, request, .. } = command;
        let n = self.ops.fetch_add(1, Relaxed);
        let mut keys = self.keys.lock().unwrap();
        let k = keys.entry(key).or_default();
        let delta = match op {
            Op::Get => return Msg::Value(k.value),
            Op::Incr(d) => d as i64,
            Op::Decr(d) => -(d as i64),
            _ => return Msg::Error(ClientError::invalid("not in the fake")),
        };
        if let Some(r) = request {
            if let Some(&(seq, answer)) = k.seen.get(&r.client) {
                if seq == r.seq {
                    return Msg::Value(answer); // a retry: the first outcome again
                }
            }
        }
        k.value += delta;
        if self.fault == Fault::DoubleApply && delta > 0 && n % 50 == 0 {
            k.value += delta;
        }
        if let Some(r) = request {
            k.seen.insert(r.client, (r.seq, k.value));
        }
        if self.fault == Fault::LoseAnswers && n % 7 == 0 {
            return Msg::Error(ClientError::unknown("answer lost (fake)"));
        }
        Msg::Value(k.value)
    }
}

/// Starts a fake router on a loopback port of its own thread; returns its address.
fn start(fault: Fault) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let fake = Arc::new(Fake {
        fault,
        keys: Mutex::default(),
        ops: AtomicU64::new(0),
    });
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            counter_net::serve(listener, Default::default(), move |msg| {
                let fake = fake.clone();
                async move {
                    if fake.fault == Fault::Slow {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    fake.handle(msg)
                }
            })
            .await;
        });
    });
    addr
}

/// Runs the bench with `args`; returns its exit code and its JSON report.
fn bench(addr: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let timeout: &[&str] = if args.contains(&"--timeout-ms") {
        &[]
    } else {
        &["--timeout-ms", "2000"]
    };
    let out = Process::new(env!("CARGO_BIN_EXE_counter-bench"))
        .args(["--router", addr, "--json"])
        .args(timeout)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}); stderr: {stderr}"));
    (out.status.code().unwrap(), json)
}

#[test]
fn an_honest_router_passes_closed_and_open_loop() {
    let addr = start(Fault::None);
    let (code, r) = bench(
        &addr,
        &[
            "--ops",
            "2000",
            "--clients",
            "8",
            "--keys",
            "50",
            "--mix",
            "incr=80,decr=10,get=10",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["counts"]["ok"], 2000);
    assert_eq!(r["counts"]["unknown"], 0);
    assert_eq!(r["verify"]["failed"], 0);
    assert_eq!(r["verify"]["exact"], r["verify"]["keys"]);
    assert_eq!(r["latency_by_kind_ms"].as_object().unwrap().len(), 3);

    let (code, r) = bench(
        &addr,
        &[
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--warmup",
            "500ms",
            "--distribution",
            "zipf:1.1",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    // 1.5s at 2000/s: 3000 ops sent, the last 2000 measured.
    assert_eq!(r["counts"]["sent"], 3000);
    assert_eq!(r["latency_ms"]["count"], 2000);
    let rate = r["throughput"]["ops_per_s"].as_f64().unwrap();
    assert!((1700.0..2300.0).contains(&rate), "{rate}");
    assert!(r["send_lag_ms"].is_object());
}

#[test]
fn an_open_loop_that_falls_behind_shows_it_and_stops() {
    let addr = start(Fault::Slow);
    // 2 clients at 20 ms per op manage 100 ops/s; 500/s are due for 1s. Latency counts from
    // the due time, so it grows with the backlog instead of staying at 20 ms.
    let (code, r) = bench(
        &addr,
        &[
            "--rate",
            "500",
            "--duration",
            "1s",
            "--clients",
            "2",
            "--timeout-ms",
            "500",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    let sent = r["counts"]["sent"].as_u64().unwrap();
    assert!((100..=200).contains(&sent), "{r:#}");
    assert_eq!(r["unsent"].as_u64().unwrap(), 500 - sent);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 200.0, "{r:#}");
    assert!(r["latency_ms"]["max"].as_f64().unwrap() > 1000.0, "{r:#}");
    assert!(r["send_lag_ms"]["max"].as_f64().unwrap() > 900.0, "{r:#}");
    assert_eq!(r["verify"]["failed"], 0);
}

#[test]
fn lost_answers_are_retried_with_the_same_request_id() {
    let addr = start(Fault::LoseAnswers);
    let (code, r) = bench(&addr, &["--ops", "700", "--clients", "4", "--keys", "20"]);
    assert_eq!(code, 0, "{r:#}");
    assert!(r["retries"].as_u64().unwrap() >= 90, "{r:#}");
    assert_eq!(r["counts"]["ok"], 700);
    assert_eq!(r["verify"]["exact"], r["verify"]["keys"]);
    // Without request ids an unknown outcome stays unknown: the key is only within a range.
    let (code, r) = bench(
        &addr,
        &[
            "--ops",
            "700",
            "--clients",
            "4",
            "--keys",
            "20",
            "--no-request-ids",
        ],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["retries"], 0);
    assert!(r["counts"]["unknown"].as_u64().unwrap() >= 90);
    assert!(r["verify"]["within_unknown"].as_u64().unwrap() > 0, "{r:#}");
}

#[test]
fn counting_twice_fails_verification() {
    let addr = start(Fault::DoubleApply);
    let (code, r) = bench(&addr, &["--ops", "500", "--keys", "10"]);
    assert_eq!(code, 1, "{r:#}");
    assert!(r["verify"]["failed"].as_u64().unwrap() > 0);
    let reason = r["verify"]["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("acknowledged changes lead to"), "{reason}");
}

#[test]
fn no_router_means_exit_3_and_bad_arguments_exit_2() {
    // A port nobody listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (code, r) = bench(&addr, &["--ops", "20", "--no-verify"]);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(r["counts"]["unavailable"], 20);
    let out = Process::new(env!("CARGO_BIN_EXE_counter-bench"))
        .args(["--router", &addr, "--mix", "incr=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("add up to 0"));
}
