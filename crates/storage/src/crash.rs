//! A real crash of a writing store: a child process (this test binary again) accepts and
//! reports each acknowledged accept on its stdout, and is killed (SIGKILL: no close, no
//! flush) while it writes. The reopened store must hold every acknowledged accept.
//!
//! The child flushes its memtables every few milliseconds, so that its WAL files become
//! obsolete and are reused (`recycle_log_file_num`): it writes into files whose old records
//! are still on disk past the new end, the case where a recovery that read too far would bring
//! an older register back, or one that stopped too early would lose an acknowledged one.
//!
//! What a process crash cannot show: a write that reached the page cache but not the disk
//! (power loss). That the committer syncs before it answers is the committer's own rule.

use crate::meta::META_CF;
use crate::tests::b;
use crate::Store;
use counter_proto::Register;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set (to the data directory) in the child's environment: the test then plays the writer.
const CHILD_DIR: &str = "COUNTER_STORAGE_CRASH_CHILD_DIR";
const SHARDS: u32 = 2;
const KEYS: u32 = 16;
/// Acknowledgements the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: usize = 6_000;
/// The child's own bounds, should the parent never kill it.
const CHILD_MAX_WRITES_PER_KEY: u64 = 100_000;
const CHILD_MAX_RUN: Duration = Duration::from_secs(60);

fn key(k: u32) -> (u32, String) {
    (k % SHARDS, format!("key-{k}"))
}

#[test]
fn a_store_killed_while_writing_into_reused_wal_files_keeps_every_acknowledged_accept() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        write_until_killed(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // This very test, alone, in the child role.
    let name = format!(
        "{}::a_store_killed_while_writing_into_reused_wal_files_keeps_every_acknowledged_accept",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: HashMap<u32, u64> = HashMap::new();
    let mut seen = 0;
    for line in lines.by_ref() {
        seen += note(&mut acked, &line.unwrap());
        if seen >= ACKS_BEFORE_KILL {
            break;
        }
    }
    child.kill().unwrap();
    // What the child acknowledged before it died, still in the pipe, counts too.
    for line in lines {
        seen += note(&mut acked, &line.unwrap());
    }
    child.wait().unwrap();
    assert!(
        seen >= ACKS_BEFORE_KILL,
        "the child stopped after {seen} acknowledgements"
    );

    let logs: String = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("LOG"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        logs.contains("from recycle list"),
        "the child never wrote into a reused WAL file: the test did not test recycling"
    );

    // A read-only look first (what `counter-node` does before it opens a data dir), then
    // the store itself: both replay the WAL.
    assert!(matches!(
        crate::inspect(dir.path()).unwrap(),
        crate::DirContents::Legacy { shards: SHARDS }
    ));
    let store = Store::open(dir.path(), SHARDS).unwrap();
    for (k, last) in acked {
        let (shard, key) = key(k);
        let (ballot, register) = store
            .peek(shard, &key)
            .unwrap()
            .accepted
            .unwrap_or_else(|| panic!("{key}: acknowledged {last}, nothing after the crash"));
        assert!(
            register.value >= last as i64 && ballot >= b(last, 1),
            "{key}: acknowledged {last}, found {} at {ballot:?} after the crash",
            register.value
        );
    }
}

/// Records a child's line `acked KEY VALUE` (1 if it was one): each key's values only grow.
fn note(acked: &mut HashMap<u32, u64>, line: &str) -> usize {
    let Some((k, v)) = line
        .strip_prefix("acked ")
        .and_then(|rest| rest.split_once(' '))
    else {
        return 0;
    };
    let (k, v): (u32, u64) = (k.parse().unwrap(), v.parse().unwrap());
    let last = acked.entry(k).or_default();
    assert!(v > *last, "key {k}: acknowledged {v} after {last}");
    *last = v;
    1
}

/// The child: KEYS writers accept ever higher registers (one per key, each waiting for its
/// acknowledgement before the next) while the memtables are flushed over and over.
fn write_until_killed(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(Store::open(dir, SHARDS).unwrap());
        for k in 0..KEYS {
            let store = store.clone();
            tokio::spawn(async move {
                let (shard, key) = key(k);
                for v in 1..=CHILD_MAX_WRITES_PER_KEY {
                    let register = Register::new(v as i64, v);
                    store
                        .accept(shard, &key, b(v, 1), register, None)
                        .await
                        .unwrap();
                    // One line per write: the parent may kill us between any two.
                    writeln!(std::io::stdout().lock(), "acked {k} {v}").unwrap();
                }
            });
        }
        let start = Instant::now();
        while start.elapsed() < CHILD_MAX_RUN {
            tokio::time::sleep(Duration::from_millis(5)).await;
            // Every column family that holds data, or its oldest WAL would stay alive.
            store.db.flush().unwrap();
            store
                .db
                .flush_cf(store.db.cf_handle(META_CF).unwrap())
                .unwrap();
            for shard in 0..SHARDS {
                store.db.flush_cf(store.shard_cf(shard).unwrap()).unwrap();
            }
        }
    });
}
