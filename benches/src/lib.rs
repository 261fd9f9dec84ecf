//! Criterion micro-benchmarks of the counter store (`cargo bench -p counter-benches`); the
//! benchmarks are in `benches/`, this library only shares their fixtures.

use counter_proto::{ClientEntry, Command, Op, Outcome, Register, RequestId};

/// A register remembering `clients` clients, as a busy key's would.
pub fn register_with_clients(clients: u64) -> Register {
    Register {
        value: 1_000_000,
        version: 5_000,
        clients: (0..clients)
            .map(|c| ClientEntry {
                client: c * 7_919,
                seq: 1 + c,
                outcome: Outcome::Value(999_000 + c as i64),
                expires_ms: 1_700_000_000_000 + c,
                sessionless: false,
            })
            .collect(),
        horizon: 0,
        floor: 0,
    }
}

/// `n` increments, with request ids of `n` distinct clients when `ids`.
pub fn increments(n: u64, ids: bool) -> Vec<Command> {
    (0..n)
        .map(|c| Command {
            op: Op::Incr(1),
            request: ids.then_some(RequestId {
                client: c * 7_919 + 1,
                seq: 2,
                expires_ms: 1_800_000_000_000 + c,
            }),
            ..Command::default()
        })
        .collect()
}
