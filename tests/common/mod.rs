//! A local cluster of real processes for tests: `counter-node`s and a `counter-router` on
//! loopback, each node with its own data dir under one temporary folder.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const NODE: &str = env!("CARGO_BIN_EXE_counter-node");
pub const ROUTER: &str = env!("CARGO_BIN_EXE_counter-router");
pub const CLI: &str = env!("CARGO_BIN_EXE_counter-cli");

/// A free loopback port (bound and released; good enough for tests on one machine).
/// A port nothing listens on now, never the same twice in this process: the kernel may hand
/// out a port it just handed out, and two members given one address answer for each other
/// (a guards test once saw node 1 answer at node 2's address).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub cluster_file: PathBuf,
    pub node_addrs: Vec<String>,
    pub router_addr: String,
    nodes: Vec<Option<Child>>,
    /// Per node: the member address it joined through (`--join`), or `None` for a member of
    /// the cluster file (`--cluster`).
    joins: Vec<Option<String>>,
    router: Option<Child>,
    /// When set, every node runs in a network namespace of its own (see [`Netns`]).
    pub netns: Option<Netns>,
    /// Extra arguments of node `i` (by index; none beyond the end), and of the router.
    pub node_args: Vec<Vec<String>>,
    pub router_args: Vec<String>,
    /// Extra environment of the router (e.g. `RUST_LOG`).
    pub router_env: Vec<(String, String)>,
}

impl LocalCluster {
    /// Starts `n` nodes with replication `r` and a router, and waits until a command succeeds.
    pub fn start(n: usize, r: usize, shards: u32) -> LocalCluster {
        Self::start_in(n, r, shards, None, Vec::new(), Vec::new())
    }

    /// Like `start`, with extra arguments for node `i` (`node_args[i]`) and for the router.
    pub fn start_with(
        n: usize,
        r: usize,
        shards: u32,
        node_args: Vec<Vec<String>>,
        router_args: Vec<String>,
    ) -> LocalCluster {
        Self::start_in(n, r, shards, None, node_args, router_args)
    }

    /// Like `start`, with every node in its own network namespace joined to the router's by
    /// veth pairs, so that a node can be cut off the network ([`LocalCluster::cut`]).
    pub fn start_in_namespaces(n: usize, r: usize, shards: u32) -> Result<LocalCluster, String> {
        let netns = Netns::create(n)?;
        Ok(Self::start_in(
            n,
            r,
            shards,
            Some(netns),
            Vec::new(),
            Vec::new(),
        ))
    }

    fn start_in(
        n: usize,
        r: usize,
        shards: u32,
        netns: Option<Netns>,
        node_args: Vec<Vec<String>>,
        router_args: Vec<String>,
    ) -> LocalCluster {
        let dir = tempfile::tempdir().unwrap();
        let node_addrs: Vec<String> = match &netns {
            Some(ns) => (0..n).map(|i| format!("{}:7101", ns.node_ip(i))).collect(),
            None => (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
        };
        let mut text = format!("replication = {r}\nshards = {shards}\n");
        for (i, addr) in node_addrs.iter().enumerate() {
            text += &format!("[[node]]\nid = {}\naddr = \"{addr}\"\n", i + 1);
        }
        let cluster_file = dir.path().join("cluster.toml");
        std::fs::write(&cluster_file, text).unwrap();
        let router_addr = match &netns {
            Some(ns) => format!("{}:7100", ns.router_ip()),
            None => format!("127.0.0.1:{}", free_port()),
        };
        let mut c = LocalCluster {
            dir,
            cluster_file,
            node_addrs,
            router_addr,
            nodes: (0..n).map(|_| None).collect(),
            joins: vec![None; n],
            router: None,
            netns,
            node_args,
            router_args,
            router_env: Vec::new(),
        };
        for i in 0..n {
            c.start_node(i);
        }
        c.start_router();
        c.wait_ready();
        c
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}", i + 1))
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap()
    }

    /// Starts (or restarts) node `i` (0-based; its id is i + 1), with its command line
    /// ([`LocalCluster::node_command`]).
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {} already running", i + 1);
        let log = self.log(&format!("node-{}", i + 1));
        let child = self
            .node_command(i)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn counter-node");
        self.nodes[i] = Some(child);
        if self.joins[i].is_some() {
            self.wait_joining_node_listening(i);
        } else {
            self.wait_listening(Some(i), &self.node_addrs[i]);
        }
    }

    /// Node `i`'s command line, always the same for that node (without output redirections):
    /// `--id <i + 1> --cluster <FILE> --data-dir <DIR>` for a member of the cluster file,
    /// `--id <i + 1> --join <ADDR> --listen <ADDR> --data-dir <DIR>` for a node started by
    /// [`LocalCluster::start_joining_node`].
    pub fn node_command(&self, i: usize) -> Command {
        let mut command = self.command(Some(i), NODE);
        command.arg("--id").arg((i + 1).to_string());
        match &self.joins[i] {
            Some(via) => command
                .arg("--join")
                .arg(via)
                .arg("--listen")
                .arg(&self.node_addrs[i]),
            None => command.arg("--cluster").arg(&self.cluster_file),
        };
        command.arg("--data-dir").arg(self.data_dir(i));
        command.args(self.node_args.get(i).into_iter().flatten());
        command
    }

    /// Starts a new node, not in the cluster file: the next id (`node_addrs.len() + 1`), a
    /// fresh loopback address (pushed to `node_addrs`) and data dir, joining through member
    /// `via` (0-based): `counter-node --id <ID> --join <ADDR of via> --listen <ADDR>
    /// --data-dir <DIR>`. It is no member until an admin adds it (`cluster add-node`,
    /// `replace-node`). Returns its index: `kill_node`, `start_node` (the same command line
    /// again), `node_pid` and `data_dir` work for it as for the others. Loopback only.
    pub fn start_joining_node(&mut self, via: usize) -> usize {
        assert!(self.netns.is_none(), "joining nodes run on loopback only");
        let join = self.node_addrs[via].clone();
        self.node_addrs.push(format!("127.0.0.1:{}", free_port()));
        self.joins.push(Some(join));
        self.nodes.push(None);
        let i = self.nodes.len() - 1;
        self.start_node(i);
        i
    }

    /// Waits until node `i` (a joining node) listens, failing at once, with its log, if it
    /// exits instead.
    fn wait_joining_node_listening(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.node_addrs[i]).is_err() {
            let exited = self.nodes[i]
                .as_mut()
                .and_then(|child| child.try_wait().unwrap());
            if let Some(status) = exited {
                self.nodes[i] = None;
                panic!(
                    "joining node {} exited with {status} before listening:\n{}",
                    i + 1,
                    std::fs::read_to_string(self.dir.path().join(format!("node-{}.log", i + 1)))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "joining node {} never listened on {}",
                i + 1,
                self.node_addrs[i]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs node `i`'s command line (plus `extra` arguments) in the foreground until it exits,
    /// at most `limit` (else kills it and panics): its exit code and its stderr. For starts
    /// that must be refused; node `i` must not be running.
    pub fn run_node_to_exit(&self, i: usize, extra: &[&str], limit: Duration) -> (i32, String) {
        assert!(self.nodes[i].is_none(), "node {} is running", i + 1);
        let log = self
            .dir
            .path()
            .join(format!("node-{}-foreground.log", i + 1));
        let mut child = self
            .node_command(i)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn counter-node");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "counter-node --id {} did not exit within {limit:?}:\n{}",
                    i + 1,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            status.code().unwrap_or(-1),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    pub fn start_router(&mut self) {
        let log = self.log("router");
        let child = self
            .command(None, ROUTER)
            .arg("--cluster")
            .arg(&self.cluster_file)
            .arg("--listen")
            .arg(&self.router_addr)
            .args(&self.router_args)
            .envs(self.router_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn counter-router");
        self.router = Some(child);
        self.wait_listening(None, &self.router_addr);
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill_router(&mut self) {
        if let Some(mut child) = self.router.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `i` and waits (at most `limit`) for it to exit: its exit code.
    pub fn term_node(&mut self, i: usize, limit: Duration) -> i32 {
        let child = self.nodes[i].take().expect("node running");
        term_and_wait(child, limit)
    }

    /// Sends SIGTERM to the router and waits (at most `limit`) for it to exit: its exit code.
    pub fn term_router(&mut self, limit: Duration) -> i32 {
        let child = self.router.take().expect("router running");
        term_and_wait(child, limit)
    }

    pub fn router_pid(&self) -> Option<u32> {
        self.router.as_ref().map(|c| c.id())
    }

    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].as_ref().map(|c| c.id())
    }

    /// SIGKILLs everything and starts it all again on the same data dirs.
    pub fn restart_all(&mut self) {
        self.kill_router();
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        self.start_router();
        self.wait_ready();
    }

    /// Runs one command through `counter-cli`: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(None, CLI)
            .arg("--router")
            .arg(&self.router_addr)
            .args(args)
            .output()
            .expect("run counter-cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    /// Starts `counter-cli --router <router> <args>` without waiting for it (stdout and
    /// stderr piped); [`cli_wait`] collects it.
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        self.command(None, CLI)
            .arg("--router")
            .arg(&self.router_addr)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn counter-cli")
    }

    /// `cluster status --json`: its exit code and its JSON object (retrying, at most 20 s,
    /// while the output is not JSON, e.g. the router is not up yet).
    pub fn status_json(&self) -> (i32, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, out, err) = self.cli(&["cluster", "status", "--json"]);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
                if v.is_object() {
                    return (code, v);
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster status --json: exit {code}, not a JSON object: {out:?}; stderr {err:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of `key`, read through the CLI (retrying while the cluster settles).
    pub fn get(&self, key: &str) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out, err) = self.cli(&["get", key]);
            if code == 0 {
                return out.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "get {key} keeps failing: {err}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pipe(&self, timeout_ms: u32) -> Pipe {
        Pipe::spawn_with(self.command(None, CLI), &self.router_addr, timeout_ms)
    }

    /// A command for `program`, run in node `node`'s namespace (or the router's for `None`)
    /// when the cluster uses namespaces.
    pub fn command(&self, node: Option<usize>, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name(node), program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Cuts node `i` off the network (its link goes down) or heals it.
    pub fn cut(&self, i: usize, cut: bool) {
        let ns = self.netns.as_ref().expect("cuts need namespaces");
        ns.set_link(i, !cut);
    }

    fn wait_listening(&self, node: Option<usize>, addr: &str) {
        if self.netns.is_none() {
            return wait_listening(addr);
        }
        let (host, port) = addr.rsplit_once(':').unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = self
                .command(node, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{host}/{port}")])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if probe.success() {
                return;
            }
            assert!(Instant::now() < deadline, "{addr} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node serves and reaches its peers (`cluster status`), and a command
    /// succeeds. A command alone is not enough: a new cluster's last node may still be
    /// starting (waiting for the others) after the router can serve through the first two,
    /// and a command sent straight to it would be refused.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out, err) = self.cli(&["cluster", "status", "--json"]);
            let ready = serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|v| v["nodes_ready"] == v["nodes_total"]);
            if code == 0 && ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster never became ready: {out} {err}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let (code, _, err) = self.cli(&["get", "__ready__"]);
            if code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster never became ready: {err}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                all += &format!("==> {} <==\n", path.display());
                all += &std::fs::read_to_string(&path).unwrap_or_default();
            }
        }
        all
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_router();
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Waits for a `counter-cli` started by [`LocalCluster::cli_spawn`]: (exit code, stdout,
/// stderr), trimmed as [`LocalCluster::cli`] returns them.
pub fn cli_wait(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().expect("wait for counter-cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// SIGTERM, then the exit code within `limit` (SIGKILL and a panic past it).
pub fn term_and_wait(mut child: Child, limit: Duration) -> i32 {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM failed");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} did not exit within {limit:?} of SIGTERM",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over HTTP/1.1 from `addr`: (status code, body), or `None` if nothing answered.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of the Prometheus sample `series` (name with its labels, exactly as rendered)
/// in a scrape; 0 when absent (a counter not incremented yet).
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `counter-cli` in pipe mode.
pub struct Pipe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One answer line of pipe mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Value(i64),
    Err(String, String),
}

impl Pipe {
    pub fn spawn(router: &str, timeout_ms: u32) -> Pipe {
        Self::spawn_with(Command::new(CLI), router, timeout_ms)
    }

    pub fn spawn_with(mut command: Command, router: &str, timeout_ms: u32) -> Pipe {
        let mut child = command
            .arg("--router")
            .arg(router)
            .arg("--timeout-ms")
            .arg(timeout_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn counter-cli");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Pipe {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command line, returns its answer line.
    pub fn run(&mut self, line: &str) -> Answer {
        self.run_bytes(line.as_bytes())
    }

    /// Sends one command line, returns its answer line as it came (without the newline),
    /// unparsed: any `ERR <kind>`, `expired` included.
    pub fn run_line(&mut self, line: &str) -> String {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert!(!answer.is_empty(), "counter-cli pipe closed its output");
        answer.trim_end().to_string()
    }

    pub fn run_bytes(&mut self, line: &[u8]) -> Answer {
        self.stdin.write_all(line).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        parse_answer(answer.trim_end())
    }

    /// Closes stdin and checks the process exits 0.
    pub fn finish(mut self) {
        drop(self.stdin);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "counter-cli pipe exited with {status}");
    }
}

pub fn parse_answer(line: &str) -> Answer {
    if let Some(rest) = line.strip_prefix("ERR ") {
        let (kind, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        assert!(
            matches!(kind, "invalid" | "unavailable" | "unknown" | "rejected"),
            "bad error line {line:?}"
        );
        Answer::Err(kind.to_string(), msg.to_string())
    } else {
        Answer::Value(
            line.parse()
                .unwrap_or_else(|_| panic!("answer {line:?} is neither a value nor ERR")),
        )
    }
}

/// Network namespaces for a test: the router's (`<prefix>-r`, holding a bridge) and one per
/// node (`<prefix>-n<i>`), each node joined to the bridge by a veth pair. Addresses are in a
/// private /24 that exists only inside these namespaces. Everything is deleted on drop.
pub struct Netns {
    prefix: String,
    subnet: String,
    nodes: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespaces, or says why it cannot (not root, no `ip`, ...).
    pub fn create(nodes: usize) -> Result<Netns, String> {
        let pid = std::process::id();
        let ns = Netns {
            prefix: format!("ctr{pid}"),
            subnet: format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 250),
            nodes,
        };
        ns.setup()
            .inspect_err(|_| drop(ns_cleanup(&ns.prefix, nodes)))?;
        Ok(ns)
    }

    fn setup(&self) -> Result<(), String> {
        let r = self.name(None);
        ip(&["netns", "add", &r])?;
        ip(&["-n", &r, "link", "set", "lo", "up"])?;
        ip(&["-n", &r, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("{}/24", self.router_ip()),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &r, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes {
            let n = self.name(Some(i));
            ip(&["netns", "add", &n])?;
            ip(&["-n", &n, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &n,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &format!("p{i}"),
                "netns",
                &r,
            ])?;
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("{}/24", self.node_ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &n, "link", "set", "eth0", "up"])?;
            ip(&["-n", &r, "link", "set", &format!("p{i}"), "master", "br0"])?;
            ip(&["-n", &r, "link", "set", &format!("p{i}"), "up"])?;
        }
        Ok(())
    }

    pub fn name(&self, node: Option<usize>) -> String {
        match node {
            Some(i) => format!("{}-n{i}", self.prefix),
            None => format!("{}-r", self.prefix),
        }
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    pub fn router_ip(&self) -> String {
        format!("{}.100", self.subnet)
    }

    /// Brings node `i`'s link on the bridge up or down.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.name(None),
            "link",
            "set",
            &format!("p{i}"),
            if up { "up" } else { "down" },
        ])
        .expect("toggle a link");
    }
}

fn ns_cleanup(prefix: &str, nodes: usize) -> Result<(), String> {
    for i in 0..nodes {
        let _ = ip(&["netns", "del", &format!("{prefix}-n{i}")]);
    }
    ip(&["netns", "del", &format!("{prefix}-r")])
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ns_cleanup(&self.prefix, self.nodes);
    }
}

/// SplitMix64, so a run's choices can be replayed from its printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
