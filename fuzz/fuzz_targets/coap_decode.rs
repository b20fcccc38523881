//! Fuzzes the CoAP decoding path: arbitrary datagrams must never panic;
//! every message the codec accepts must encode and decode back unchanged;
//! and a gateway channel fed the datagram must only ever answer with
//! datagrams that decode.
//!
//! Run with `cargo +nightly fuzz run coap_decode` from `fuzz/`.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tributary_coap::codec::{decode, encode};
use tributary_coap::{Channel, ChannelConfig};
use tributary_core::{Broker, BrokerConfig};

fn broker() -> Arc<Broker> {
    static BROKER: OnceLock<Arc<Broker>> = OnceLock::new();
    BROKER
        .get_or_init(|| Arc::new(Broker::new(BrokerConfig::default())))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(data) {
        let bytes = encode(&message).expect("whatever we accept we can send");
        assert_eq!(decode(&bytes), Ok(message));
    }
    let now = Instant::now();
    let peer = "192.0.2.1:5683".parse().expect("addr");
    let mut channel = Channel::new(broker(), Arc::new(ChannelConfig::default()), peer, 1);
    channel.handle_datagram(data, now);
    channel.handle_timeout(now + Duration::from_secs(3));
    for out in channel.take_output() {
        assert!(decode(&out).is_ok());
    }
    channel.finish(now);
});
