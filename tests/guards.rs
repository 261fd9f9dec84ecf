//! Real processes: the start-up guards refuse, loudly and without writing anything, the starts
//! that would lose data (a wiped node under its old id, an edited member list, another node's
//! data dir), and let the safe ones through (a full restart, a restart with every peer down,
//! a new cluster whose members start at different times).

mod common;

use common::{free_port, LocalCluster, CLI, NODE, ROUTER};
use counter_proto::{ClientError, DataState, Msg};
use counter_storage::ClusterConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Exit status of a refused start.
const REFUSED: i32 = 78;

/// Runs `counter-node` until it exits (at most 60 s): its exit code and its `counter-node: `
/// line on stderr (the refusal), checked to be exactly one.
fn run_node(
    id: u32,
    cluster_file: &Path,
    data_dir: &Path,
    log: &Path,
    extra: &[&str],
) -> (i32, String) {
    let mut child = spawn_node(id, cluster_file, data_dir, log, extra);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "counter-node --id {id} did not exit within 60 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("counter-node: "))
        .collect();
    assert_eq!(lines.len(), 1, "one message on stderr, got:\n{stderr}");
    (status.code().unwrap_or(-1), lines[0].to_string())
}

fn spawn_node(id: u32, cluster_file: &Path, data_dir: &Path, log: &Path, extra: &[&str]) -> Child {
    Command::new(NODE)
        .arg("--id")
        .arg(id.to_string())
        .arg("--cluster")
        .arg(cluster_file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn counter-node")
}

/// Every file under `dir` (recursively) with its length and modification time; `None` if
/// `dir` does not exist.
fn snapshot(dir: &Path) -> Option<Vec<(PathBuf, u64, SystemTime)>> {
    if !dir.exists() {
        return None;
    }
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            files.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    files.sort();
    Some(files)
}

/// The tests run whatever `counter-node` is in the target dir: make sure it has the guards.
fn binary_has_guards() {
    let help = Command::new(NODE).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--bootstrap-timeout-secs") && help.contains("Guards"),
        "{NODE} is not a build with the start-up guards:\n{help}"
    );
}

/// Node 1 loses its disk. Started again under its old id, it must refuse (its peers have
/// served with it) and write nothing; the counts it helped acknowledge stay readable.
#[test]
fn a_wiped_node_refuses_to_start_empty_and_no_count_is_lost() {
    binary_has_guards();
    let mut c = LocalCluster::start(3, 3, 8);
    for i in 1..=5 {
        assert_eq!(
            c.cli(&["incr", "guarded"]),
            (0, i.to_string(), String::new())
        );
    }
    c.kill_node(0);
    let dir = c.data_dir(0);
    std::fs::remove_dir_all(&dir).unwrap();
    let log = c.dir.path().join("node-1-wiped.log");
    // (A bounded wait, so that a node that waits instead of refusing fails fast.)
    let timeout = ["--bootstrap-timeout-secs", "10"];
    let (code, message) = run_node(1, &c.cluster_file, &dir, &log, &timeout);
    assert_eq!(code, REFUSED, "{message}");
    assert!(
        message.contains(&format!(
            "data dir {} is empty but the cluster already has data for node 1 (its disk was \
             lost or wiped?)",
            dir.display()
        )) && message.contains("Do not start it with an empty data dir"),
        "{message}"
    );
    assert!(!dir.exists(), "a refused start created {}", dir.display());
    // Emptied rather than removed: the same, and it stays empty.
    std::fs::create_dir(&dir).unwrap();
    let (code, message) = run_node(1, &c.cluster_file, &dir, &log, &timeout);
    assert_eq!(code, REFUSED, "{message}");
    assert!(message.contains("already has data for node 1"), "{message}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "wrote to {}",
        dir.display()
    );
    // The count survives on the other two replicas, and they keep serving.
    assert_eq!(c.get("guarded"), 5);
    assert_eq!(c.cli(&["incr", "guarded"]).1, "6");
}

/// An edited member list and another node's data dir are refused untouched; the original
/// file and the right id start again; a full restart, and a restart with every peer down,
/// still work.
#[test]
fn edited_members_and_foreign_data_dirs_are_refused_and_restarts_work() {
    binary_has_guards();
    let mut c = LocalCluster::start(3, 3, 8);
    for i in 1..=3 {
        assert_eq!(c.cli(&["incr", "k"]).1, i.to_string());
    }
    let log = c.dir.path().join("refused.log");

    // (ii) Node 2 restarted with a cluster file that has an extra member.
    c.kill_node(1);
    let before = snapshot(&c.data_dir(1));
    let extra = format!("127.0.0.1:{}", free_port());
    let edited = c.dir.path().join("cluster-with-node-4.toml");
    let text = std::fs::read_to_string(&c.cluster_file).unwrap();
    std::fs::write(
        &edited,
        format!("{text}[[node]]\nid = 4\naddr = \"{extra}\"\n"),
    )
    .unwrap();
    let (code, message) = run_node(2, &edited, &c.data_dir(1), &log, &[]);
    assert_eq!(code, REFUSED, "{message}");
    assert!(
        message.contains(&format!("node 4 ({extra}) added"))
            && message.contains("restore the original cluster file")
            && message.contains("cluster add-node`"),
        "{message}"
    );
    assert_eq!(
        snapshot(&c.data_dir(1)),
        before,
        "a refused start wrote to the data dir"
    );

    // (iii) Node 2's data dir started as node 3 (node 3 is running: the guard speaks first).
    let (code, message) = run_node(3, &c.cluster_file, &c.data_dir(1), &log, &[]);
    assert_eq!(code, REFUSED, "{message}");
    assert!(
        message.contains(&format!(
            "data dir {} belongs to node 2, not node 3",
            c.data_dir(1).display()
        )),
        "{message}"
    );
    assert_eq!(
        snapshot(&c.data_dir(1)),
        before,
        "a refused start wrote to the data dir"
    );

    // The original file and the right id: back in service, nothing lost.
    c.start_node(1);
    assert_eq!(c.get("k"), 3);

    // (iv) A full restart.
    c.restart_all();
    assert_eq!(c.get("k"), 3);
    assert_eq!(c.cli(&["incr", "k"]).1, "4");

    // A node whose data dir exists starts with every peer down (a restart after a crash).
    c.kill_router();
    for i in 0..3 {
        c.kill_node(i);
    }
    let node_log = c.dir.path().join("node-1.log");
    let serving = || {
        std::fs::read_to_string(&node_log)
            .unwrap()
            .matches("counter-node serving")
            .count()
    };
    let served_before = serving();
    c.start_node(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while serving() == served_before {
        assert!(
            Instant::now() < deadline,
            "node 1 did not serve with its peers down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.start_node(1);
    c.start_node(2);
    c.start_router();
    assert_eq!(c.get("k"), 4);
}

/// Processes killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Procs {
    /// Panics with its log if node `i + 1` (the `i`th process) has exited.
    fn all_running(&mut self, log: &dyn Fn(&str) -> PathBuf) {
        for (i, child) in self.0.iter_mut().enumerate() {
            if let Some(status) = child.try_wait().unwrap() {
                let name = format!("node-{}", i + 1);
                panic!(
                    "{name} exited with {status}:\n{}",
                    std::fs::read_to_string(log(&name)).unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Answers `Identify` at `addr` as member `id` of cluster `cluster_id` whose data dir is
/// empty, until dropped: a member that is up and new but has not created its data dir yet.
struct NewMember(tokio::runtime::Runtime);

impl NewMember {
    fn start(addr: &str, id: u32, cluster_id: u64) -> NewMember {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr.to_string()))
            .unwrap();
        rt.spawn(counter_net::serve(
            listener,
            counter_net::ServerConfig::default(),
            move |msg| async move {
                match msg {
                    Msg::Identify => Msg::Identity {
                        cluster_id,
                        node: id,
                        config_version: 1,
                        state: DataState::Empty,
                    },
                    _ => Msg::Error(ClientError::unavailable("starting")),
                }
            },
        ));
        NewMember(rt)
    }

    /// Stops answering and frees the address.
    fn stop(self) {
        self.0.shutdown_timeout(Duration::from_secs(5));
    }
}

/// A new cluster whose third member is up (answering that it is new) while the first two
/// create their data dirs, but creates its own only later. The first two must not serve
/// before it has: it would hear "serving" and refuse as if its disk had been lost. And alone,
/// a member of a new cluster gives up after the bootstrap timeout, writing nothing.
#[test]
fn a_new_cluster_waits_for_a_late_member_and_needs_every_member_once() {
    binary_has_guards();
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut text = "replication = 3\nshards = 8\n".to_string();
    for (i, addr) in addrs.iter().enumerate() {
        text += &format!("[[node]]\nid = {}\naddr = \"{addr}\"\n", i + 1);
    }
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, text).unwrap();
    let cluster_id =
        ClusterConfig::bootstrap(3, 8, (1..=3).zip(addrs.iter().cloned()).collect()).cluster_id();
    let dir = |id: u32| tmp.path().join(format!("node-{id}"));
    let log = |name: &str| tmp.path().join(format!("{name}.log"));

    // Alone, a member of a new cluster gives up after the bootstrap timeout, writing nothing.
    let started = Instant::now();
    let (code, message) = run_node(
        1,
        &file,
        &dir(1),
        &log("alone"),
        &["--bootstrap-timeout-secs", "2"],
    );
    assert_eq!(code, 1, "{message}");
    assert!(
        message.contains("creating one needs every member of the cluster file to answer once")
            && message.contains(&format!("node 2 ({}", addrs[1])),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        !dir(1).exists(),
        "a start that gave up created its data dir"
    );

    let late = NewMember::start(&addrs[2], 3, cluster_id);
    let mut procs = Procs(Vec::new());
    for id in [1, 2] {
        procs.0.push(spawn_node(
            id,
            &file,
            &dir(id),
            &log(&format!("node-{id}")),
            &[],
        ));
    }
    // Nodes 1 and 2 hear that node 3 is new, create their data dirs, and wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(dir(1).exists() && dir(2).exists()) {
        procs.all_running(&log);
        assert!(
            Instant::now() < deadline,
            "nodes 1 and 2 never created their data dirs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let router = format!("127.0.0.1:{}", free_port());
    let _router = Procs(vec![Command::new(ROUTER)
        .arg("--cluster")
        .arg(&file)
        .arg("--listen")
        .arg(&router)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log("router")).unwrap())
        .spawn()
        .unwrap()]);
    // Meanwhile `cluster status` shows why the cluster does not serve: nodes 1 and 2 are
    // reachable, their data dirs created, not open yet (no epoch), not ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(CLI)
            .args(["--router", &router, "cluster", "status", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let waiting = (0..2).all(|i| {
            let n = &v["nodes"][i];
            n["reachable"] == true && n["state"] == "created"
        });
        if waiting {
            assert_eq!(out.status.code(), Some(3), "{v}");
            assert_eq!(v["nodes_ready"], 0, "{v}");
            assert_eq!(v["shards_available"], 0, "{v}");
            for i in 0..2 {
                assert_eq!(v["nodes"][i]["epoch"], serde_json::Value::Null, "{v}");
                assert_eq!(v["nodes"][i]["ready"], false, "{v}");
            }
            // Node 3 (a stand-in answering only Identify) has no status to give.
            assert_eq!(v["nodes"][2]["reachable"], false, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "status while waiting: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    late.stop();
    procs
        .0
        .push(spawn_node(3, &file, &dir(3), &log("node-3"), &[]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(CLI)
            .args(["--router", &router, "incr", "new"])
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
            break;
        }
        procs.all_running(&log);
        assert!(
            Instant::now() < deadline,
            "the new cluster never served: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
