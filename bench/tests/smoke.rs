//! CI smoke test: the bench tool against the real `tributary` binary, so
//! the tool cannot rot. A short fixed-rate point-to-point run at QoS 1
//! must deliver something and lose, duplicate or reorder nothing. No
//! timing threshold: CI machines are noisy.
//!
//! The binary is located like the interop tests do (`TRIBUTARY_BIN`, else
//! `target/debug/tributary`); build it first (`cargo build -p tributary`).

use std::time::Duration;

use interop_tests::TestBroker;
use tributary_bench::{run_traffic, Protocol, Shape, TrafficOptions};
use tributary_mqtt::packet::QoS;

fn smoke(protocol: Protocol, qos: QoS) {
    let broker = TestBroker::start();
    let mut opts = TrafficOptions::new(broker.addr());
    opts.protocol = protocol;
    opts.qos = qos;
    opts.rate = Some(2_000);
    opts.warmup = Duration::from_millis(300);
    opts.duration = Duration::from_secs(2);
    opts.drain_timeout = Duration::from_secs(5);
    opts.label = String::from("tributary");
    opts.progress = false;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime
        .block_on(run_traffic(Shape::P2p { pairs: 4 }, &opts))
        .expect("the scenario runs");
    eprint!("{}", result.table());
    assert!(result.received > 0, "nothing delivered: {result:?}");
    assert_eq!(
        result.expected, result.sent,
        "p2p: one receiver per message"
    );
    assert_eq!(
        (
            result.lost,
            result.duplicated,
            result.out_of_order,
            result.misrouted,
            result.corrupt,
            result.unacked
        ),
        (0, 0, 0, 0, 0, 0),
        "integrity: {result:?}"
    );
    assert_eq!(result.errors, 0, "errors: {:?}", result.error_samples);
}

#[test]
fn p2p_qos1_v311_loses_nothing() {
    smoke(Protocol::V311, QoS::AtLeastOnce);
}

#[test]
fn p2p_qos2_v5_loses_nothing() {
    smoke(Protocol::V5, QoS::ExactlyOnce);
}
