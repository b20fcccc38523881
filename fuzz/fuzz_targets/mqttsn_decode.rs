//! Fuzzes the MQTT-SN datagram decoder: arbitrary input must never panic,
//! and every message it decodes must encode and decode back unchanged.
//!
//! Run with `cargo +nightly fuzz run mqttsn_decode` from `fuzz/`.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tributary_mqttsn::codec::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let datagram = Bytes::copy_from_slice(data);
    if let Ok(packet) = decode(&datagram) {
        let mut again = BytesMut::new();
        assert_eq!(encode(&packet, &mut again), Ok(()));
        assert_eq!(decode(&again.freeze()), Ok(packet));
    }
});
