//! Postcard's output for every encoding we write (frames and on-disk records): appends to a
//! `Vec<u8>`.
//!
//! Postcard hands its output each varint as a slice of 1 to 10 bytes. Its own `Vec` output
//! copies each with a `memcpy` call, which cost more than the encoding itself: a register of
//! 256 client entries is ~1,500 such calls, and `memmove` was 6% of all CPU at W3
//! (BENCHMARKS.md, "Encodings without a memcpy per varint"). Short slices are pushed byte by
//! byte here; long ones (keys, strings) are still copied at once.

use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// Longest slice pushed byte by byte: a varint of a u64 or i64.
const SHORT: usize = 10;

/// Appends the postcard encoding of `value` to `out` (what was there stays).
pub fn append_postcard<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, AppendTo(out))
}

struct AppendTo<'a>(&'a mut Vec<u8>);

impl Flavor for AppendTo<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() <= SHORT {
            self.0.reserve(bytes.len());
            for &b in bytes {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientEntry, Outcome, Register};

    /// The same bytes as postcard's own encoder, appended after what `out` held.
    #[test]
    fn appends_the_same_bytes_as_postcard() {
        let reg = Register {
            value: -5,
            version: u64::MAX,
            clients: (0..300u64)
                .map(|i| ClientEntry {
                    client: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    seq: i << (i % 60),
                    outcome: Outcome::Value(i as i64 - 150),
                    expires_ms: 1_800_000_000_000 + i,
                    sessionless: i % 2 == 0,
                })
                .collect(),
            horizon: 7,
            floor: 1 << 40,
        };
        let value = (
            reg,
            "a key of more than ten bytes".to_string(),
            vec![1u8; 40],
        );
        let mut out = vec![0xAB, 0xCD];
        append_postcard(&value, &mut out).unwrap();
        let mut expected = vec![0xAB, 0xCD];
        expected.extend(postcard::to_stdvec(&value).unwrap());
        assert_eq!(out, expected);
    }
}
