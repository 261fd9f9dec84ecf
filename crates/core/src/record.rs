//! The on-disk encoding of an acceptor's state: a format byte, then postcard.
//!
//! Pure, so that it can be fuzzed without a database. Decoding never panics, whatever the bytes.

use crate::AcceptorState;

/// Version of the record encoding. Bumped on any incompatible change of [`AcceptorState`].
/// 2: registers carry their clients' last requests (exactly-once retries).
pub const FORMAT_VERSION: u8 = 2;

/// Encodes a record.
pub fn encode(state: &AcceptorState) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    encode_into(state, &mut out);
    out
}

/// Encodes a record into `out` (cleared first), reusing its allocation.
pub fn encode_into(state: &AcceptorState, out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT_VERSION);
    *out = postcard::to_extend(state, std::mem::take(out))
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
        Some((v, _)) => Err(format!("unknown record format {v}")),
        None => Err("empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::{Ballot, Register};

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let b = Ballot {
            round: 4,
            node: 2,
            epoch: 7,
        };
        let s = AcceptorState {
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
                        at_ms: 5,
                    }],
                    horizon: 1,
                },
            )),
        };
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
}
