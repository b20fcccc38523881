//! CI smoke test: the bench tool against the real `tributary` binary, so
//! the tool cannot rot. A short fixed-rate point-to-point run at QoS 1
//! must deliver something and lose, duplicate or reorder nothing; so must
//! the gateway scenarios (MQTT-SN and CoAP publishers over UDP → MQTT
//! subscribers) at a low fixed rate. No timing threshold: CI machines are
//! noisy.
//!
//! The binary is located like the interop tests do (`GATEWAY_BIN`, else
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

/// A UDP port free on 127.0.0.1 right now (the gateway binds it next).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Wait until the UDP gateway answers on `port`: the MQTT port the harness
/// waits for can be listening a moment before the UDP gateways are bound,
/// and a datagram sent then is refused. The probe is a datagram every
/// gateway answers without a session: MQTT-SN SEARCHGW (GWINFO back) or a
/// CoAP ping (RST back).
fn wait_for_udp_gateway(port: u16, ingress: &tributary_bench::Ingress) {
    let probe: &[u8] = match ingress {
        tributary_bench::Ingress::MqttSn { .. } => &[0x03, 0x01, 0x00],
        _ => &[0x40, 0x00, 0x12, 0x34],
    };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a probe socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    loop {
        let _ = socket.send_to(probe, ("127.0.0.1", port));
        if socket.recv(&mut buf).is_ok() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway on UDP port {port} did not answer"
        );
    }
}

/// A gateway ingress scenario at a low fixed rate: something delivered,
/// nothing duplicated or reordered, no errors; with answered publishes
/// (MQTT-SN QoS 1, CoAP CON) nothing lost either.
fn smoke_ingress(ingress: tributary_bench::Ingress, env_key: &str) {
    use tributary_bench::{run_ingress, IngressOptions};
    let udp = free_udp_port();
    let bind = format!("127.0.0.1:{udp}");
    let broker = TestBroker::start_with_env(&[(env_key, bind.as_str())]);
    wait_for_udp_gateway(udp, &ingress);
    let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], udp));
    let mut opts = IngressOptions::new(gateway, broker.addr(), ingress);
    opts.publishers = 4;
    opts.subscribers = 2;
    opts.mqtt.rate = Some(1_000);
    opts.mqtt.warmup = Duration::from_millis(300);
    opts.mqtt.duration = Duration::from_secs(2);
    opts.mqtt.drain_timeout = Duration::from_secs(5);
    opts.mqtt.label = String::from("tributary");
    opts.mqtt.progress = false;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime
        .block_on(run_ingress(&opts))
        .expect("the scenario runs");
    eprint!("{}", result.table());
    assert!(result.received > 0, "nothing delivered: {result:?}");
    assert_eq!(
        result.expected,
        result.sent * 2,
        "two receivers per message"
    );
    assert_eq!(
        (
            result.duplicated,
            result.out_of_order,
            result.misrouted,
            result.corrupt
        ),
        (0, 0, 0, 0),
        "integrity: {result:?}"
    );
    assert_eq!(result.errors, 0, "errors: {:?}", result.error_samples);
    if result.responses.is_some() && result.unacked == 0 {
        assert_eq!(result.lost, 0, "answered publishes lost: {result:?}");
    }
}

#[test]
fn mqttsn_in_qos1_registered_topics() {
    use tributary_bench::mqttsn::{SnQos, TopicKind};
    let ingress = tributary_bench::Ingress::MqttSn {
        qos: SnQos::One,
        topics: TopicKind::Normal,
        predefined_base: 1,
    };
    smoke_ingress(ingress, "TRIBUTARY_MQTTSN__BIND");
}

#[test]
fn mqttsn_in_qos_minus_one_short_topics() {
    use tributary_bench::mqttsn::{SnQos, TopicKind};
    let ingress = tributary_bench::Ingress::MqttSn {
        qos: SnQos::MinusOne,
        topics: TopicKind::Short,
        predefined_base: 1,
    };
    smoke_ingress(ingress, "TRIBUTARY_MQTTSN__BIND");
}

#[test]
fn coap_in_con() {
    let ingress = tributary_bench::Ingress::Coap {
        confirmable: true,
        qos: None,
        no_response: false,
    };
    smoke_ingress(ingress, "TRIBUTARY_COAP__BIND");
}
