//! Criterion benches for the MQTT codec's hot path: encoding and decoding
//! PUBLISH packets with 16 B, 1 KiB and 64 KiB payloads, for MQTT 3.1.1
//! and 5. Decoding starts from a fresh buffer per iteration (prepared
//! outside the timing), as a connection's read buffer would hold it.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tributary_mqtt::codec::{decode, encode};
use tributary_mqtt::packet::{Packet, Properties, ProtocolVersion, Publish, QoS};

const SIZES: [usize; 3] = [16, 1024, 64 * 1024];
const MAX_PACKET: usize = 1024 * 1024;

fn publish(size: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "site/17/building/3/floor/2/sensor/temperature".into(),
        packet_id: Some(4242),
        properties: Properties::default(),
        payload: Bytes::from(vec![0x5A; size]),
    })
}

fn versions() -> [(ProtocolVersion, &'static str); 2] {
    [
        (ProtocolVersion::V3_1_1, "v311"),
        (ProtocolVersion::V5, "v5"),
    ]
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish");
    for (version, name) in versions() {
        for size in SIZES {
            let packet = publish(size);
            let mut buf = BytesMut::with_capacity(size + 128);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &packet, |b, packet| {
                b.iter(|| {
                    buf.clear();
                    encode(black_box(packet), version, &mut buf).expect("encodes");
                    black_box(buf.len())
                })
            });
        }
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_publish");
    for (version, name) in versions() {
        for size in SIZES {
            let mut wire = BytesMut::new();
            encode(&publish(size), version, &mut wire).expect("encodes");
            let wire = wire.freeze();
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &wire, |b, wire| {
                b.iter_batched(
                    || BytesMut::from(&wire[..]),
                    |mut buf| {
                        let packet = decode(&mut buf, version, MAX_PACKET).expect("decodes");
                        black_box(packet)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
