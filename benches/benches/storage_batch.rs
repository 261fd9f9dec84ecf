//! The store's synced writes (fsync on): one accept at a time (one WAL sync each), 64
//! accepts on 64 keys at once, which the committer gathers into one synced WriteBatch, and
//! the same over 10,000 keys in 64 shards (W3's spread: memtables of thousands of keys). The
//! data dir is a temporary directory on the same disk as `target/` (set TMPDIR to measure
//! another one).

use counter_benches::register_with_clients;
use counter_proto::{Ballot, Register};
use counter_storage::Store;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A ballot above every earlier one of this run (each iteration's accepts need a higher one).
fn next_ballot(round: &AtomicU64) -> Ballot {
    Ballot {
        round: round.fetch_add(1, Ordering::Relaxed),
        node: 1,
        epoch: 1,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| ".".into())).unwrap();
    let store = Arc::new(Store::open(dir.path(), 4).unwrap());
    let round = AtomicU64::new(1);
    let keys: Vec<String> = (0..64).map(|i| format!("bench-key-{i}")).collect();
    let mut g = c.benchmark_group("storage_batch");
    g.sample_size(20);
    for (name, register) in [
        ("0-clients", Register::new(5, 5)),
        ("256-clients", register_with_clients(256)),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("one-accept/{name}"), |b| {
            b.iter(|| {
                let ballot = next_ballot(&round);
                rt.block_on(store.accept(0, &keys[0], ballot, register.clone(), None))
                    .unwrap()
            })
        });
        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_function(format!("64-keys-at-once/{name}"), |b| {
            b.iter(|| {
                let ballot = next_ballot(&round);
                rt.block_on(futures::future::join_all(keys.iter().map(|k| {
                    let store = store.clone();
                    let register = register.clone();
                    async move { store.accept(1, k, ballot, register, None).await.unwrap() }
                })))
            })
        });
    }
    let wide = Arc::new(Store::open(dir.path().join("wide").as_path(), 64).unwrap());
    let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
    let next = AtomicU64::new(0);
    let register = register_with_clients(32);
    g.throughput(Throughput::Elements(64));
    g.bench_function("64-of-10k-keys-in-64-shards/32-clients", |b| {
        b.iter(|| {
            let ballot = next_ballot(&round);
            let first = next.fetch_add(64, Ordering::Relaxed) as usize;
            rt.block_on(futures::future::join_all((first..first + 64).map(|i| {
                let (store, register) = (wide.clone(), register.clone());
                let i = i.wrapping_mul(7_919) % keys.len();
                let key = &keys[i];
                async move {
                    let shard = (i % 64) as u32;
                    store
                        .accept(shard, key, ballot, register, None)
                        .await
                        .unwrap()
                }
            })))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
