//! Frame encode and decode: a client command, and an Accept carrying a register with no client
//! entries and with 256 (a busy key under exactly-once requests); and the on-disk record of an
//! acceptor state holding such a register (encoded at every accept).

use counter_benches::register_with_clients;
use counter_proto::{
    decode_frame, encode_frame, AcceptorMsg, Ballot, Command, Frame, Msg, Op, RequestId,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn frames() -> Vec<(&'static str, Frame)> {
    let ballot = Ballot {
        round: 812,
        node: 2,
        epoch: 3,
    };
    let accept = |clients| Frame {
        id: 77,
        msg: Msg::Acceptor(AcceptorMsg::Accept {
            shard: 12,
            key: "page_views:tenant-42".into(),
            ballot,
            register: register_with_clients(clients),
            next: Some(Ballot {
                round: 813,
                ..ballot
            }),
            config: 3,
        }),
    };
    vec![
        (
            "command",
            Frame {
                id: 9,
                msg: Msg::Command {
                    key: "page_views:tenant-42".into(),
                    command: Command {
                        op: Op::Incr(1),
                        request: Some(RequestId {
                            client: 0xdead_beef,
                            seq: 17,
                            expires_ms: 1_764_000_000_000,
                        }),
                        ..Command::default()
                    },
                    timeout_ms: 9_000,
                },
            },
        ),
        ("accept-0-clients", accept(0)),
        ("accept-256-clients", accept(256)),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for (name, frame) in frames() {
        let mut bytes = Vec::new();
        encode_frame(&frame, &mut bytes).unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode/{name}"), |b| {
            let mut out = Vec::with_capacity(bytes.len());
            b.iter(|| {
                out.clear();
                encode_frame(black_box(&frame), &mut out).unwrap();
            })
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode_frame(black_box(&bytes)).unwrap())
        });
    }
    for clients in [0, 32, 256] {
        let state = counter_core::AcceptorState {
            promised: Ballot::ZERO,
            accepted: Some((Ballot::ZERO, register_with_clients(clients))),
        };
        g.throughput(Throughput::Bytes(
            counter_core::record::encode(&state).len() as u64,
        ));
        g.bench_function(format!("record/{clients}-clients"), |b| {
            b.iter(|| counter_core::record::encode(black_box(&state)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
