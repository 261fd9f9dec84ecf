//! The on-disk encoding of an acceptor's state: a format byte, then postcard.
//!
//! Pure, so that it can be fuzzed without a database. Decoding never panics, whatever the bytes.

use crate::change::MAX_ENTRY_BYTES;
use crate::AcceptorState;

/// Version of the record encoding. Bumped on any incompatible change of [`AcceptorState`].
/// 2: registers carry their clients' last requests (exactly-once retries).
/// 3: client sessions: entries end at their session's expiry, registers have a `floor`.
/// Records of format 2 are still read (see [`v2`]).
pub const FORMAT_VERSION: u8 = 3;

/// Longest encoding of a record without its client entries: the format byte, two ballots of
/// at most 20 bytes (a u64 and two u32 varints), the option's tag, and five 10-byte varints
/// (value, version, the entries' count, horizon, floor).
const MAX_FIXED_BYTES: usize = 1 + 20 + 1 + 20 + 5 * 10;

/// Encodes a record, into a buffer allocated once at the largest size it can take (a register
/// of tens of entries would otherwise grow it four or five times).
pub fn encode(state: &AcceptorState) -> Vec<u8> {
    let entries = state.accepted.as_ref().map_or(0, |(_, r)| r.clients.len());
    let mut out = Vec::with_capacity(MAX_FIXED_BYTES + entries * MAX_ENTRY_BYTES);
    encode_into(state, &mut out);
    out
}

/// Encodes a record into `out` (cleared first), reusing its allocation.
pub fn encode_into(state: &AcceptorState, out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT_VERSION);
    counter_proto::append_postcard(state, out)
        .expect("encoding an AcceptorState into memory cannot fail");
}

/// Decodes a record; the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<AcceptorState, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            let (state, rest) =
                postcard::take_from_bytes::<AcceptorState>(body).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err(format!("{} trailing bytes after the record", rest.len()));
            }
            Ok(state)
        }
        Some((2, body)) => v2::decode(body),
        Some((v, _)) => Err(format!("unknown record format {v}")),
        None => Err("empty record".into()),
    }
}

/// Format 2, read when a data dir written by the previous release is opened: every request id
/// of that release had no session, so its entries become sessionless ones that are kept for
/// an hour (the default `dedup_idle_secs`) from when they were applied, and its horizon stays.
mod v2 {
    use crate::AcceptorState;
    use counter_proto::{Ballot, ClientEntry, Outcome, Register};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct State {
        promised: Ballot,
        accepted: Option<(Ballot, Reg)>,
    }
    #[derive(Deserialize)]
    struct Reg {
        value: i64,
        version: u64,
        clients: Vec<Entry>,
        horizon: u64,
    }
    #[derive(Deserialize)]
    struct Entry {
        client: u64,
        seq: u64,
        outcome: Outcome,
        at_ms: u64,
    }

    pub(super) fn decode(body: &[u8]) -> Result<AcceptorState, String> {
        let (state, rest) = postcard::take_from_bytes::<State>(body).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes after the record", rest.len()));
        }
        let accepted = state.accepted.map(|(b, r)| {
            let clients = r
                .clients
                .into_iter()
                .map(|e| ClientEntry {
                    client: e.client,
                    seq: e.seq,
                    outcome: e.outcome,
                    expires_ms: e.at_ms.saturating_add(3_600_000),
                    sessionless: true,
                })
                .collect();
            let register = Register {
                value: r.value,
                version: r.version,
                clients,
                horizon: r.horizon,
                floor: 0,
            };
            (b, register)
        });
        Ok(AcceptorState {
            promised: state.promised,
            accepted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::{Ballot, Register};

    /// `encode` allocates once: the largest record (every field at its longest, a full
    /// register of the longest entries) fits the buffer it starts with.
    #[test]
    fn the_largest_record_fits_the_first_allocation() {
        let longest = Ballot {
            round: u64::MAX,
            node: u32::MAX,
            epoch: u32::MAX,
        };
        let worst = crate::change::longest_entry();
        for n in [0, 1, crate::change::MAX_CLIENTS_LIMIT] {
            let state = AcceptorState {
                promised: longest,
                accepted: Some((
                    longest,
                    Register {
                        value: i64::MIN,
                        version: u64::MAX,
                        clients: vec![worst.clone(); n],
                        horizon: u64::MAX,
                        floor: u64::MAX,
                    },
                )),
            };
            let out = encode(&state);
            assert_eq!(out.capacity(), MAX_FIXED_BYTES + n * MAX_ENTRY_BYTES);
            assert_eq!(decode(&out).unwrap(), state);
        }
    }

    /// A record with one client entry: `sessionless` and `floor` as given.
    fn sample(sessionless: bool, floor: u64) -> AcceptorState {
        let b = Ballot {
            round: 4,
            node: 2,
            epoch: 7,
        };
        AcceptorState {
            promised: b,
            accepted: Some((
                b,
                Register {
                    value: -9,
                    version: 2,
                    clients: vec![counter_proto::ClientEntry {
                        client: 3,
                        seq: 4,
                        outcome: counter_proto::Outcome::Value(-9),
                        expires_ms: 5,
                        sessionless,
                    }],
                    horizon: 1,
                    floor,
                },
            )),
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let s = sample(false, 2);
        let bytes = encode(&s);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert!(bytes.len() > 8);
        assert_eq!(decode(&bytes), Ok(s.clone()));
        let mut reused = vec![0xaa; 3];
        encode_into(&s, &mut reused);
        assert_eq!(reused, bytes);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().contains("trailing"));
        assert!(decode(&[FORMAT_VERSION + 1, 0, 0])
            .unwrap_err()
            .contains("format"));
        assert_eq!(
            decode(&encode(&AcceptorState::default())),
            Ok(AcceptorState::default())
        );
    }

    /// The exact bytes of one record of each format are pinned: reordering a field or a
    /// variant must not silently change what is on disk, and the previous format still reads.
    #[test]
    fn golden_records() {
        let s = sample(true, 6);
        let v3 = [3, 4, 2, 7, 1, 4, 2, 7, 17, 2, 1, 3, 4, 0, 17, 5, 1, 1, 6];
        assert_eq!(encode(&s), v3);
        assert_eq!(decode(&v3), Ok(s));
        // Format 2: [2], promised, Some, ballot, value, version, one entry (client 3, seq 4,
        // Value(-9), at_ms 5), horizon 1.
        let v2 = [2, 4, 2, 7, 1, 4, 2, 7, 17, 2, 1, 3, 4, 0, 17, 5, 1];
        let old = decode(&v2).expect("format 2 still reads");
        let (_, r) = old.accepted.expect("accepted");
        assert_eq!((r.value, r.version, r.horizon, r.floor), (-9, 2, 1, 0));
        assert_eq!(r.clients[0].expires_ms, 5 + 3_600_000);
        assert!(r.clients[0].sessionless);
    }
}
