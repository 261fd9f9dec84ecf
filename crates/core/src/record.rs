//! The on-disk encoding of an acceptor's state: a format byte, then postcard.
//!
//! Pure, so that it can be fuzzed without a database. Decoding never panics, whatever the bytes.

use crate::AcceptorState;

/// Version of the record encoding. Bumped on any incompatible change of [`AcceptorState`].
pub const FORMAT_VERSION: u8 = 1;

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
