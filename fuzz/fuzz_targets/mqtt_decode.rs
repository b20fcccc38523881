//! Fuzzes the MQTT decoder with every protocol version: arbitrary input
//! must never panic, and every packet it decodes must encode, with
//! `encoded_len` exact, and survive encode → decode unchanged.
//!
//! Run with `cargo +nightly fuzz run mqtt_decode` from `fuzz/`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tributary_mqtt::codec::{decode, encode, encoded_len};
use tributary_mqtt::packet::ProtocolVersion;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Large enough for anything a fuzzer produces, small enough that a
/// declared huge remaining length takes the `TooLarge` path.
const MAX_PACKET_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            // Whatever we accept we can also send.
            let mut again = BytesMut::new();
            assert_eq!(encode(&packet, version, &mut again), Ok(()));
            assert_eq!(encoded_len(&packet, version), Ok(again.len()));
            let decoded = decode(&mut again, version, usize::MAX);
            assert_eq!(decoded, Ok(Some(packet)));
            assert!(again.is_empty());
        }
    }
});
