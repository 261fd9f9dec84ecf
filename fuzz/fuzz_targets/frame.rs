//! Bytes from the network: a frame body (after the length prefix).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = counter_proto::decode_frame(data) {
        // Whatever decodes re-encodes to something that decodes to the same frame.
        let mut again = Vec::new();
        counter_proto::encode_frame(&frame, &mut again).expect("a decoded frame re-encodes");
        assert_eq!(counter_proto::decode_frame(&again).unwrap(), frame);
    }
});
