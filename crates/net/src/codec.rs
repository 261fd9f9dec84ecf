//! The frame codec: length prefix + versioned postcard body.

use bytes::{Buf, BufMut, BytesMut};
use counter_proto::{decode_frame, encode_frame, DecodeError, EncodeError, Frame, MAX_FRAME_LEN};
use tokio_util::codec::{Decoder, Encoder};

/// Why a connection's bytes could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
}

/// Bytes of the big-endian length prefix.
const LEN_PREFIX: usize = 4;

/// Length-delimited (a 4-byte big-endian prefix), versioned postcard frames, at most
/// [`MAX_FRAME_LEN`] bytes each.
#[derive(Debug, Default)]
pub struct FrameCodec {
    scratch: Vec<u8>,
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = NetError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, NetError> {
        // The length prefix is read here rather than by tokio-util's LengthDelimitedCodec, which
        // reserves the whole declared length as soon as the prefix arrives: a thousand peers
        // that each send a prefix and nothing more would hold 64 KiB each. The buffer grows as
        // bytes actually arrive instead.
        let Some(prefix) = src.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_LEN {
            return Err(NetError::Decode(DecodeError::Malformed(format!(
                "declared frame length {len} exceeds the limit of {MAX_FRAME_LEN} bytes"
            ))));
        }
        if src.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let body = src.split_to(len);
        Ok(Some(decode_frame(&body)?))
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = NetError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), NetError> {
        self.scratch.clear();
        encode_frame(frame, &mut self.scratch)?;
        // The prefix and the body straight into `dst` (no intermediate buffer per frame).
        let len = u32::try_from(self.scratch.len()).expect("at most MAX_FRAME_LEN");
        dst.reserve(LEN_PREFIX + self.scratch.len());
        dst.put_u32(len);
        dst.extend_from_slice(&self.scratch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::Msg;

    #[test]
    fn frames_round_trip_through_the_codec() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let a = Frame {
            id: 1,
            msg: Msg::Value(7),
        };
        let b = Frame {
            id: 2,
            msg: Msg::Value(-7),
        };
        codec.encode(&a, &mut buf).unwrap();
        codec.encode(&b, &mut buf).unwrap();
        let half = buf.split_to(3);
        let mut partial = half;
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.unsplit(buf);
        assert_eq!(codec.decode(&mut partial).unwrap(), Some(a));
        assert_eq!(codec.decode(&mut partial).unwrap(), Some(b));
        assert_eq!(codec.decode(&mut partial).unwrap(), None);
    }

    #[test]
    fn oversized_declared_length_is_an_error() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut buf), Err(NetError::Decode(_))));
    }

    #[test]
    fn a_declared_length_reserves_nothing_until_bytes_arrive() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&60_000u32.to_be_bytes());
        buf.extend_from_slice(&[1, 2, 3]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn garbage_body_is_an_error() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut buf), Err(NetError::Decode(_))));
    }
}
