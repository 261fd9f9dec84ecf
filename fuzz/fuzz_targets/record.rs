//! Bytes from the disk: an acceptor record as stored in RocksDB.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = counter_core::record::decode(data) {
        let again = counter_core::record::encode(&state);
        assert_eq!(counter_core::record::decode(&again).unwrap(), state);
    }
});
