//! Criterion bench: `Broker::publish` of one message to 10^3 sessions
//! subscribed to its topic, then draining every session's mailbox the way
//! the connection drivers do (`take_for_send`, and for QoS 1 the PUBACK).
//! One iteration is one message delivered 1000 times.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, Message, QoS, SessionHandle, SessionRequest, SubOptions,
};

const SESSIONS: usize = 1000;
const TOPIC: &str = "bench/fanout/topic";

fn setup(qos: QoS) -> (Broker, Vec<SessionHandle>) {
    let broker = Broker::new(BrokerConfig::default());
    let now = Instant::now();
    let handles = (0..SESSIONS)
        .map(|i| {
            let opened = broker.open_session(
                SessionRequest {
                    client: ClientInfo {
                        client_id: format!("sub-{i}").into(),
                        username: None,
                        peer: None,
                        protocol: "bench",
                    },
                    clean_start: true,
                    expiry_interval: 0,
                    will: None,
                },
                now,
            );
            broker
                .subscribe(&opened.handle, TOPIC, SubOptions::at(qos), now)
                .expect("valid filter");
            opened.handle
        })
        .collect();
    (broker, handles)
}

fn bench_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_to_1000_sessions");
    group.throughput(Throughput::Elements(SESSIONS as u64));
    for (qos, name) in [(QoS::AtMostOnce, "qos0"), (QoS::AtLeastOnce, "qos1")] {
        let (broker, handles) = setup(qos);
        let topic: Arc<str> = Arc::from(TOPIC);
        let payload = Bytes::from(vec![0x5A; 64]);
        group.bench_function(BenchmarkId::new("publish_and_drain", name), |b| {
            b.iter(|| {
                let now = Instant::now();
                let message = Message::new(topic.clone(), payload.clone(), qos, false);
                let routed = broker.publish(message, now);
                let mut sent = 0usize;
                for handle in &handles {
                    let out = handle.take_for_send(now, usize::MAX, 32, broker.metrics(), |_| true);
                    for o in &out {
                        if let Some(id) = o.packet_id {
                            handle.acknowledge(id);
                        }
                    }
                    sent += out.len();
                }
                assert_eq!(sent, routed);
                black_box(sent)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_fanout);
criterion_main!(benches);
