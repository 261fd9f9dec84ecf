//! One coordinator round in memory: the `Decider` against three `AcceptorState`s, no I/O. What
//! the safety rules cost per batch, and what request-id deduplication adds.

use counter_benches::{increments, register_with_clients};
use counter_core::{AcceptorReply, AcceptorState, Action, Ctx, Decider};
use counter_proto::{Ballot, Command, Register};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const REPLICAS: [u32; 3] = [1, 2, 3];

/// Runs one batch to its decision; returns the chosen register.
fn round(acceptors: &mut [AcceptorState; 3], cmds: Vec<Command>) -> Register {
    let seen = acceptors[0].highest();
    let mut d = Decider::new(1, 1, &REPLICAS, cmds, seen, Ctx::default());
    let mut action = d.start_round();
    loop {
        let replies: Vec<(u32, AcceptorReply)> = match &action {
            Action::Prepare(b) => acceptors
                .iter_mut()
                .zip(REPLICAS)
                .map(|(a, n)| step(a, n, |s| s.prepare(*b)))
                .collect(),
            Action::Accept(b, r, next) => acceptors
                .iter_mut()
                .zip(REPLICAS)
                .map(|(a, n)| step(a, n, |s| s.accept(*b, r.clone(), *next)))
                .collect(),
            Action::Done(_) => {
                return acceptors[0].accepted.clone().expect("chosen").1;
            }
            other => panic!("a quiet round does not {other:?}"),
        };
        let mut next = None;
        for (from, reply) in replies {
            if let Some(a) = d.on_reply(from, reply) {
                next = Some(a);
                break;
            }
        }
        action = next.expect("three replies decide a phase");
    }
}

fn step(
    a: &mut AcceptorState,
    n: u32,
    rule: impl FnOnce(&AcceptorState) -> (Option<AcceptorState>, AcceptorReply),
) -> (u32, AcceptorReply) {
    let (next, reply) = rule(a);
    if let Some(next) = next {
        *a = next;
    }
    (n, reply)
}

fn fresh(reg: Register) -> [AcceptorState; 3] {
    let b = Ballot {
        round: 1,
        node: 2,
        epoch: 1,
    };
    std::array::from_fn(|_| AcceptorState {
        promised: b,
        accepted: Some((b, reg.clone())),
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_round");
    for (batch, ids, clients) in [
        (1, false, 0),
        (1, true, 256),
        (64, false, 0),
        (64, true, 256),
    ] {
        g.throughput(Throughput::Elements(batch));
        let name = format!(
            "batch{batch}-{}",
            if ids {
                "request-ids-256-clients"
            } else {
                "no-ids"
            }
        );
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let start = fresh(register_with_clients(clients));
            let cmds = increments(batch, ids);
            b.iter_batched(
                || (start.clone(), cmds.clone()),
                |(mut acceptors, cmds)| black_box(round(&mut acceptors, cmds)),
                criterion::BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
