//! The router's Redis-protocol front door (`counter-router --resp-listen`) against a real
//! cluster: the `redis` crate (values, error kinds, exactly-once `CINCRBY ... ID`, concurrent
//! increments), `redis-cli`, and bad input over raw sockets (garbage, oversized frames, a
//! half-sent frame, pipelining, a client that never reads, the connection cap).

mod common;

use common::{free_port, LocalCluster, ROUTER};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `counter-router` with `--resp-listen` (and `extra` flags) on the cluster's file, beside
/// the cluster's own router.
struct RespRouter {
    child: Child,
    addr: String,
    port: u16,
}

impl RespRouter {
    fn start(c: &LocalCluster, name: &str, extra: &[&str]) -> RespRouter {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(c.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(ROUTER)
            .arg("--cluster")
            .arg(&c.cluster_file)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--resp-listen")
            .arg(&addr)
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn counter-router");
        let r = RespRouter { child, addr, port };
        // Listening, and a key command goes through.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = Raw::connect(&r.addr) {
                s.send(b"*2\r\n$3\r\nGET\r\n$5\r\nwarm0\r\n");
                if s.line().starts_with('$') {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the RESP router never served");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// The router's resident memory, in bytes (VmRSS).
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

impl Drop for RespRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw connection, reading replies line by line (10 s at most per read).
struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: &str) -> std::io::Result<Raw> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Raw {
            reader: BufReader::new(s),
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Sends one command as an array of bulk strings.
    fn cmd(&mut self, args: &[&str]) {
        self.send(&encode(args));
    }

    /// One line of reply, without its CRLF; "" at end of input.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end_matches("\r\n").to_string()
    }

    /// True if the router closes the connection within `limit` (reading and dropping
    /// anything it still sends).
    fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.reader.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The error code (first word) of a failed command.
fn code(result: redis::RedisResult<redis::Value>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().unwrap_or("(none)").to_string(),
    }
}

#[test]
fn redis_clients_count_and_see_every_error_kind() {
    let mut c = LocalCluster::start(3, 3, 8);
    let r = RespRouter::start(&c, "resp-router", &[]);
    let url = format!("redis://{}/", r.addr);
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            macro_rules! q {
                ($t:ty, $($arg:expr),+) => {{
                    let args: Vec<String> = vec![$(($arg).to_string()),+];
                    redis::cmd(&args[0]).arg(&args[1..]).query_async::<$t>(&mut con).await
                }};
            }
            assert_eq!(q!(String, "PING").unwrap(), "PONG");
            assert_eq!(q!(String, "ECHO", "hi").unwrap(), "hi");
            assert_eq!(q!(String, "SET", "k", 10).unwrap(), "OK");
            assert_eq!(q!(i64, "GET", "k").unwrap(), 10);
            assert_eq!(q!(i64, "INCR", "k").unwrap(), 11);
            assert_eq!(q!(i64, "INCRBY", "k", 5).unwrap(), 16);
            assert_eq!(q!(i64, "INCRBY", "k", -6).unwrap(), 10);
            assert_eq!(q!(i64, "DECR", "k").unwrap(), 9);
            assert_eq!(q!(i64, "DECRBY", "k", 4).unwrap(), 5);
            assert_eq!(q!(i64, "DECRBY", "k", -5).unwrap(), 10);
            assert_eq!(q!(i64, "INCRBY", "k", 0).unwrap(), 10, "0 reads");
            assert_eq!(
                q!(Vec<i64>, "MGET", "k", "never-written", "k").unwrap(),
                vec![10, 0, 10]
            );
            // Errors: the first word names the kind.
            assert_eq!(code(q!(redis::Value, "SET", "k", "abc")), "INVALID");
            assert_eq!(code(q!(redis::Value, "SET", "k", "1", "NX")), "ERR");
            assert_eq!(code(q!(redis::Value, "INCRBY", "k", "x")), "ERR");
            assert_eq!(code(q!(redis::Value, "INCR", "")), "INVALID", "empty key");
            assert_eq!(code(q!(redis::Value, "NOSUCH", "a")), "ERR");
            assert_eq!(q!(i64, "GET", "k").unwrap(), 10, "nothing applied");
            assert_eq!(q!(String, "SET", "big", i64::MAX).unwrap(), "OK");
            assert_eq!(code(q!(redis::Value, "INCR", "big")), "INVALID", "overflow");
            assert_eq!(q!(i64, "GET", "big").unwrap(), i64::MAX);
            // Bounds: CINCRBY / CDECRBY.
            assert_eq!(q!(String, "SET", "stock", 10).unwrap(), "OK");
            assert_eq!(
                code(q!(redis::Value, "CINCRBY", "stock", 1, "MAX", 10)),
                "REJECTED"
            );
            assert_eq!(q!(i64, "CDECRBY", "stock", 3, "MIN", 0).unwrap(), 7);
            assert_eq!(
                code(q!(redis::Value, "CDECRBY", "stock", 8, "MIN", 0)),
                "REJECTED"
            );
            assert_eq!(
                q!(i64, "CINCRBY", "stock", 3, "MIN", 0, "MAX", 10).unwrap(),
                10
            );
            assert_eq!(
                code(q!(redis::Value, "CINCRBY", "stock", 1, "MIN", 5, "MAX", 1)),
                "INVALID"
            );
            assert_eq!(
                code(q!(redis::Value, "CINCRBY", "stock", 1, "BOGUS", 1)),
                "ERR"
            );
            // The caller's request id: applied once however often it is sent.
            let seq = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64;
            for _ in 0..3 {
                assert_eq!(q!(i64, "CINCRBY", "once", 5, "ID", 42, seq).unwrap(), 5);
            }
            assert_eq!(q!(i64, "GET", "once").unwrap(), 5, "applied exactly once");
            assert_eq!(
                q!(i64, "CINCRBY", "once", 5, "ID", 42, seq + 1).unwrap(),
                10
            );
            assert_eq!(
                code(q!(redis::Value, "CINCRBY", "once", 5, "ID", 42, 0)),
                "INVALID"
            );
            // Connection commands.
            assert_eq!(code(q!(redis::Value, "HELLO", 3)), "NOPROTO");
            let hello: Vec<redis::Value> = q!(Vec<redis::Value>, "HELLO", 2).unwrap();
            assert_eq!(hello.len(), 14, "{hello:?}");
            assert_eq!(hello[5], redis::Value::Int(2), "proto 2: {hello:?}");
            assert_eq!(q!(String, "SELECT", 0).unwrap(), "OK");
            assert_eq!(code(q!(redis::Value, "SELECT", 1)), "ERR");
            assert_eq!(q!(String, "CLIENT", "SETNAME", "t1").unwrap(), "OK");
            assert_eq!(q!(String, "CLIENT", "GETNAME").unwrap(), "t1");
            assert!(q!(i64, "CLIENT", "ID").unwrap() > 0);
            assert_eq!(
                q!(Vec<String>, "CONFIG", "GET", "save").unwrap(),
                ["save", ""]
            );
            assert_eq!(
                q!(Vec<String>, "CONFIG", "GET", "APPENDONLY", "nosuch").unwrap(),
                ["appendonly", "yes"]
            );
            assert_eq!(q!(i64, "COMMAND", "COUNT").unwrap(), 0);
            assert!(q!(String, "INFO").unwrap().contains("connected_clients:"));
            assert_eq!(code(q!(redis::Value, "INCR")), "ERR", "arity");

            // Many INCRs from several connections at once: every one applied once, each
            // answered with a value of its own.
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let mut con = client.get_multiplexed_async_connection().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let incrs = (0..50).map(|_| {
                        let mut con = con.clone();
                        async move {
                            redis::cmd("INCR")
                                .arg("hot")
                                .query_async::<i64>(&mut con)
                                .await
                                .unwrap()
                        }
                    });
                    let mut got = futures::future::join_all(incrs).await;
                    got.push(
                        redis::cmd("INCR")
                            .arg("hot")
                            .query_async(&mut con)
                            .await
                            .unwrap(),
                    );
                    got
                }));
            }
            let mut seen = Vec::new();
            for t in tasks {
                seen.extend(t.await.unwrap());
            }
            seen.sort();
            assert_eq!(
                seen,
                (1..=204).collect::<Vec<i64>>(),
                "distinct values 1..=204"
            );
            assert_eq!(q!(i64, "GET", "hot").unwrap(), 204);
        })
        .await
        .expect("bounded in time");
    });

    // redis-cli: values printed, an unknown command's error printed and the connection kept.
    let cli = |args: &[&str], stdin: &str| {
        let mut child = Command::new("redis-cli")
            .arg("-p")
            .arg(r.port.to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli (Debian package redis-tools) must be installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["incr", "clik"], ""), "1\n");
    assert_eq!(cli(&["incrby", "clik", "4"], ""), "5\n");
    assert_eq!(cli(&["get", "clik"], ""), "5\n");
    let out = cli(&[], "nosuch a b\nincr clik\nping\n");
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        [
            "ERR unknown command 'nosuch', with args beginning with: 'a' 'b' ",
            "6",
            "PONG"
        ],
        "{out}"
    );

    // The cluster gone: a clear kind, in bounded time.
    for i in 0..3 {
        c.kill_node(i);
    }
    let started = Instant::now();
    let mut s = Raw::connect(&r.addr).unwrap();
    s.cmd(&["INCR", "k"]);
    let line = s.line();
    assert!(
        line.starts_with("-UNAVAILABLE ") || line.starts_with("-UNKNOWN "),
        "{line}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn bad_input_is_answered_or_cut_off_and_harms_no_one_else() {
    let c = LocalCluster::start(3, 3, 8);
    let r = RespRouter::start(
        &c,
        "resp-router",
        &[
            "--resp-frame-timeout-ms",
            "1000",
            "--resp-idle-timeout-secs",
            "4",
        ],
    );
    let protocol_error = |input: &[u8], expect: &str| {
        let mut s = Raw::connect(&r.addr).unwrap();
        s.send(input);
        let line = s.line();
        assert!(line.starts_with("-ERR Protocol error: "), "{line}");
        assert!(line.contains(expect), "{line}");
        assert!(
            s.closed_within(Duration::from_secs(5)),
            "closed after {line}"
        );
    };
    protocol_error(b"\x16\x03\x01\x02\x00garbage\r\n", "expected '*'");
    protocol_error(b"GET k\r\n", "expected '*'");
    protocol_error(
        b"*2\r\n$4\r\nECHO\r\n$1000000000\r\n",
        "invalid bulk length",
    );
    protocol_error(b"*2\r\n$4\r\nECHO\r\n$524289\r\n", "invalid bulk length");
    protocol_error(b"*100000\r\n", "invalid multibulk length");
    protocol_error(b"*2\r\n$4\r\nINCR\r\n:1\r\n", "expected '$'");

    // A half-sent frame, then silence: closed after the frame timeout; others served meanwhile.
    let mut half = Raw::connect(&r.addr).unwrap();
    half.send(b"*2\r\n$4\r\nINCR\r\n$4\r\nha");
    let sent = Instant::now();
    let mut other = Raw::connect(&r.addr).unwrap();
    other.cmd(&["INCR", "other"]);
    assert_eq!(other.line(), ":1");
    assert!(
        half.closed_within(Duration::from_secs(5)),
        "half-sent frame"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "{:?}",
        sent.elapsed()
    );
    other.cmd(&["GET", "half"]);
    assert_eq!(
        (other.line(), other.line()),
        ("$1".into(), "0".into()),
        "never applied"
    );

    // Pipelined: 1000 INCRs in one write, answered in order.
    let mut pipe = Raw::connect(&r.addr).unwrap();
    let mut batch = Vec::new();
    for _ in 0..1000 {
        batch.extend(encode(&["INCR", "pipe"]));
    }
    pipe.send(&batch);
    for i in 1..=1000 {
        assert_eq!(pipe.line(), format!(":{i}"));
    }
    // A pipeline's commands on one key apply in the order sent, others' at once.
    let mut batch = encode(&["SET", "seq", "10"]);
    batch.extend(encode(&["INCR", "elsewhere"]));
    batch.extend(encode(&["INCRBY", "seq", "5"]));
    batch.extend(encode(&["MGET", "seq", "elsewhere"]));
    batch.extend(encode(&["DECR", "seq"]));
    batch.extend(encode(&["GET", "seq"]));
    pipe.send(&batch);
    let replies: Vec<String> = (0..10).map(|_| pipe.line()).collect();
    assert_eq!(
        replies,
        ["+OK", ":1", ":15", "*2", "$2", "15", "$1", "1", ":14", "$2"],
        "{replies:?}"
    );
    assert_eq!(pipe.line(), "14");

    // Redis's wording for arity, integers and unknown commands; the connection stays.
    pipe.cmd(&["INCR"]);
    assert_eq!(
        pipe.line(),
        "-ERR wrong number of arguments for 'incr' command"
    );
    pipe.cmd(&["INCRBY", "pipe", "1.5"]);
    assert_eq!(pipe.line(), "-ERR value is not an integer or out of range");
    pipe.cmd(&["FLUSHALL", "ASYNC"]);
    assert_eq!(
        pipe.line(),
        "-ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' "
    );
    pipe.cmd(&["SET", "pipe", "x"]);
    assert!(pipe.line().starts_with("-INVALID "));
    pipe.cmd(&["CINCRBY", "pipe", "1", "MAX", "1000"]);
    assert!(pipe.line().starts_with("-REJECTED "));
    pipe.cmd(&["HELLO", "3"]);
    assert_eq!(
        pipe.line(),
        "-NOPROTO sorry, this protocol version is not supported"
    );
    pipe.cmd(&["PING"]);
    assert_eq!(pipe.line(), "+PONG");
    pipe.cmd(&["QUIT"]);
    assert_eq!(pipe.line(), "+OK");
    assert!(pipe.closed_within(Duration::from_secs(2)), "QUIT closes");

    // An idle connection is closed after the idle timeout (4 s).
    let mut idle = Raw::connect(&r.addr).unwrap();
    idle.cmd(&["PING"]);
    assert_eq!(idle.line(), "+PONG");
    let since = Instant::now();
    assert!(idle.closed_within(Duration::from_secs(10)), "idle");
    assert!(
        since.elapsed() >= Duration::from_secs(3),
        "{:?}",
        since.elapsed()
    );

    // Over the connection cap: the connection idle the longest is shed.
    let capped = RespRouter::start(&c, "resp-router-capped", &["--resp-max-clients", "3"]);
    std::thread::sleep(Duration::from_millis(200)); // the start-up probe has left
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = Raw::connect(&capped.addr).unwrap();
        conn.cmd(&["PING"]);
        assert_eq!(conn.line(), "+PONG");
        conns.push(conn);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut newcomer = Raw::connect(&capped.addr).unwrap();
    newcomer.cmd(&["INCR", "cap"]);
    assert_eq!(newcomer.line(), ":1");
    assert!(
        conns[0].closed_within(Duration::from_secs(5)),
        "oldest idle shed"
    );
    conns[1].cmd(&["PING"]);
    assert_eq!(conns[1].line(), "+PONG", "the others kept");
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory() {
    let c = LocalCluster::start(3, 3, 8);
    let r = RespRouter::start(&c, "resp-router", &[]);
    let before = r.rss();
    // 100,000 pipelined commands with 4 KiB replies (400 MB), never reading a reply.
    let addr = r.addr.clone();
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let payload = "x".repeat(4096);
        let echo = encode(&["ECHO", &payload]);
        let incr = encode(&["INCR", "unread"]);
        let mut sent = 0u64;
        for i in 0..100_000 {
            let frame = if i % 10 == 0 { &incr } else { &echo };
            if s.write_all(frame).is_err() {
                break; // the router stopped reading: the write timed out
            }
            sent += 1;
        }
        (s, sent)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writer.is_finished() {
        assert!(Instant::now() < deadline, "the writer never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (stalled, sent) = writer.join().unwrap();
    let during = r.rss();
    eprintln!(
        "never-reading client: {sent} of 100000 commands sent before the router stopped \
         reading; router RSS {} MB (before {} MB)",
        during >> 20,
        before >> 20
    );
    assert!(
        sent < 100_000,
        "the router read everything ({sent} commands)"
    );
    assert!(
        during < 200 << 20,
        "router RSS {} MB (before: {} MB) with {sent} commands sent",
        during >> 20,
        before >> 20
    );
    // Another client is served meanwhile.
    let mut other = Raw::connect(&r.addr).unwrap();
    other.cmd(&["INCR", "served"]);
    assert_eq!(other.line(), ":1");
    drop(stalled);
    other.cmd(&["PING"]);
    assert_eq!(other.line(), "+PONG");
    assert!(r.rss() < 200 << 20);
}
