//! Fuzzes the LwM2M decoders: arbitrary bytes through every content
//! format (TLV, SenML JSON/CBOR, LwM2M JSON, text, opaque, CBOR), link
//! format, the object XML loader and the JSON command parser must never
//! panic; a TLV that decodes must encode and decode back to the same tree;
//! and a device fed the bytes as a datagram (registration interface) must
//! only answer with datagrams that decode.
//!
//! Run with `cargo +nightly fuzz run lwm2m_decode` from `fuzz/`.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tributary_coap::codec::decode;
use tributary_core::{Broker, BrokerConfig};
use tributary_lwm2m::{tlv, Device, DeviceConfig, NoDirectory, Registry};

fn broker() -> Arc<Broker> {
    static BROKER: OnceLock<Arc<Broker>> = OnceLock::new();
    BROKER
        .get_or_init(|| Arc::new(Broker::new(BrokerConfig::default())))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    tributary_lwm2m::decode_all(data);
    if let Ok(tree) = tlv::decode(data) {
        assert_eq!(tlv::decode(&tlv::encode(&tree)), Ok(tree));
    }
    let now = Instant::now();
    let peer = "192.0.2.1:5783".parse().expect("addr");
    let mut device = Device::new(
        broker(),
        Arc::new(DeviceConfig::default()),
        Arc::new(Registry::new()),
        Arc::new(NoDirectory),
        peer,
        1,
        now,
    );
    device.handle_datagram(data, now);
    device.handle_timeout(now + Duration::from_secs(3));
    for out in device.take_output() {
        assert!(decode(&out).is_ok());
    }
    device.finish(now);
});
