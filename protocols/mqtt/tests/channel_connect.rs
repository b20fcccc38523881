//! CONNECT handling (MQTT 5 §3.1–§3.2, 3.1.1 §3.1–§3.2): the CONNACK each
//! version gets, what is refused, the properties an MQTT 5 CONNACK
//! announces, and the connect timeout.

mod support;

use support::*;
use tributary_core::auth::{AuthOutcome, Authenticator, RuleAuthorizer};
use tributary_core::cluster::SingleNode;
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig, ClientInfo};
use tributary_mqtt::channel::ChannelConfig;

/// Accepts user `u` with password `p`; refuses user `banned`.
#[derive(Debug)]
struct Passwords;

impl Authenticator for Passwords {
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthOutcome {
        match (client.username.as_deref(), password) {
            (Some("banned"), _) => AuthOutcome::NotAuthorized,
            (Some("u"), Some(b"p")) => AuthOutcome::Allow,
            _ => AuthOutcome::BadCredentials,
        }
    }
}

fn password_harness() -> Harness {
    let broker = Broker::with_seams(
        BrokerConfig::default(),
        Box::new(Passwords),
        Box::new(RuleAuthorizer::allow_all()),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    );
    Harness::with_broker(broker, ChannelConfig::default())
}

#[test]
fn connect_v3_1_gets_connack_accepted() {
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect_v31("old-client"));
    assert_eq!(ack.code, 0x00);
    assert!(!ack.session_present);
    assert_eq!(ack.properties, Properties::default());
    assert_eq!(h.channel(c).version(), ProtocolVersion::V3_1);
    assert_eq!(h.channel(c).client_id(), Some("old-client"));
    assert!(!h.is_closed(c));
}

#[test]
fn connect_v3_1_1_gets_connack_accepted() {
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect("c311"));
    assert_eq!(ack.code, 0x00);
    assert!(!ack.session_present);
    assert_eq!(ack.properties, Properties::default());
    assert_eq!(h.channel(c).version(), ProtocolVersion::V3_1_1);
    assert!(!h.is_closed(c));
}

#[test]
fn connect_v5_gets_connack_success() {
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect_v5("c5"));
    assert_eq!(ack.code, rc::SUCCESS);
    assert!(!ack.session_present);
    assert_eq!(h.channel(c).version(), ProtocolVersion::V5);
    assert_eq!(h.channel(c).client_id(), Some("c5"));
    h.assert_silent(c);
}

#[test]
fn pingreq_gets_pingresp() {
    let mut h = Harness::new();
    let c = h.connected(connect("p"));
    h.send(c, pingreq());
    assert_eq!(h.expect_one(c), Packet::PingResp);
}

#[test]
fn first_packet_not_connect_closes_without_answer() {
    // [MQTT-3.1.0-1]
    let mut h = Harness::new();
    let c = h.open();
    h.send(c, pingreq());
    assert!(h.is_closed(c));
    h.assert_silent(c);

    let c = h.open();
    h.send(c, publish("a", b"x"));
    assert!(h.is_closed(c));
    h.assert_silent(c);
}

#[test]
fn second_connect_v5_is_protocol_error() {
    // [MQTT-3.1.0-2]
    let mut h = Harness::new();
    let c = h.connected(connect_v5("twice"));
    h.send(c, connect_v5("twice"));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::PROTOCOL_ERROR);
    assert!(h.is_closed(c));
}

#[test]
fn second_connect_v3_closes_silently() {
    let mut h = Harness::new();
    let c = h.connected(connect("twice"));
    h.send(c, connect("twice"));
    assert!(h.is_closed(c));
    h.assert_silent(c);
}

#[test]
fn empty_client_id_v5_gets_assigned_identifier() {
    // [MQTT-3.1.3-7], §3.2.2.3.7
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect_v5(""));
    assert_eq!(ack.code, rc::SUCCESS);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned client identifier");
    assert!(!assigned.is_empty());
    assert_eq!(h.channel(c).client_id(), Some(assigned.as_str()));

    // A second anonymous client gets a different identifier.
    let (_, ack2) = h.connect(connect_v5(""));
    assert_ne!(ack2.properties.assigned_client_identifier, Some(assigned));
}

#[test]
fn empty_client_id_v5_without_clean_start_is_accepted() {
    // MQTT 5 dropped 3.1.1's clean-session requirement for empty ids.
    let mut h = Harness::new();
    let (_, ack) = h.connect(connect_v5("").clean_start(false));
    assert_eq!(ack.code, rc::SUCCESS);
    assert!(ack.properties.assigned_client_identifier.is_some());
}

#[test]
fn empty_client_id_v3_1_1_needs_clean_session() {
    // 3.1.1 [MQTT-3.1.3-7] / [MQTT-3.1.3-8]
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect(""));
    assert_eq!(ack.code, 0x00);
    assert!(h.channel(c).client_id().is_some_and(|id| !id.is_empty()));

    let (c, ack) = h.connect(connect("").clean_start(false));
    assert_eq!(ack.code, rc::V3_IDENTIFIER_REJECTED);
    assert!(h.is_closed(c));
}

#[test]
fn empty_client_id_v3_1_is_rejected() {
    // MQTT 3.1 requires 1..=23 characters.
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect_v31(""));
    assert_eq!(ack.code, rc::V3_IDENTIFIER_REJECTED);
    assert!(h.is_closed(c));

    let (c, ack) = h.connect(connect_v31("abcdefghijklmnopqrstuvwx"));
    assert_eq!(ack.code, rc::V3_IDENTIFIER_REJECTED, "24 characters");
    assert!(h.is_closed(c));
}

#[test]
fn bad_will_topic_is_refused() {
    // [MQTT-3.1.3-11] will topic is a topic name: no wildcards.
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect_v5("w").will("a/+/b", b"bye"));
    assert_eq!(ack.code, rc::TOPIC_NAME_INVALID);
    assert!(h.is_closed(c));

    let (c, ack) = h.connect(connect("w").will("a/#", b"bye"));
    assert_ne!(ack.code, 0x00);
    assert!(ack.code <= 5, "a 3.1.1 return code, got {:#x}", ack.code);
    assert!(h.is_closed(c));
}

#[test]
fn authentication_method_is_refused_with_0x8c() {
    // §4.12: no enhanced authentication method is supported.
    let mut h = Harness::new();
    let (c, ack) = h.connect(connect_v5("a").auth_method("SCRAM-SHA-1"));
    assert_eq!(ack.code, rc::BAD_AUTHENTICATION_METHOD);
    assert!(!ack.session_present);
    assert!(h.is_closed(c));
    h.assert_silent(c);
}

#[test]
fn v5_connack_announces_limits() {
    let config = ChannelConfig {
        receive_maximum: 20,
        topic_alias_maximum: 8,
        max_packet_size: 4096,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (_, ack) = h.connect(connect_v5("props"));
    assert_eq!(ack.code, rc::SUCCESS);
    assert_eq!(ack.properties.receive_maximum, Some(20));
    assert_eq!(ack.properties.topic_alias_maximum, Some(8));
    assert_eq!(ack.properties.maximum_packet_size, Some(4096));
    assert_eq!(ack.properties.assigned_client_identifier, None);
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[test]
fn v5_connack_omits_topic_alias_maximum_when_zero() {
    let config = ChannelConfig {
        topic_alias_maximum: 0,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (_, ack) = h.connect(connect_v5("props"));
    assert_eq!(ack.properties.topic_alias_maximum, None);
}

#[test]
fn server_keep_alive_overrides_client_keep_alive() {
    // §3.2.2.3.14: the client must use the Server Keep Alive.
    let config = ChannelConfig {
        server_keep_alive: Some(20),
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (c, ack) = h.connect(connect_v5("ka").keep_alive(100));
    assert_eq!(ack.properties.server_keep_alive, Some(20));
    assert_eq!(h.deadline_in(c), Some(secs(30)));
    h.advance(secs(29));
    assert!(!h.is_closed(c));
    h.advance(secs(1));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::KEEP_ALIVE_TIMEOUT);
}

#[test]
fn server_keep_alive_not_applied_to_v3() {
    let config = ChannelConfig {
        server_keep_alive: Some(20),
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.connected(connect("ka").keep_alive(100));
    assert_eq!(h.deadline_in(c), Some(secs(150)));
}

#[test]
fn connect_timeout_closes_silent_connection() {
    let mut h = Harness::new();
    let c = h.open();
    assert_eq!(h.deadline_in(c), Some(secs(10)));
    h.advance(millis(9_999));
    assert!(!h.is_closed(c));
    h.advance(millis(1));
    assert!(h.is_closed(c));
    h.assert_silent(c);
    assert_eq!(h.channel(c).next_deadline(), None);
}

#[test]
fn connect_in_time_cancels_connect_timeout() {
    let mut h = Harness::new();
    let c = h.open();
    h.advance(secs(9));
    h.send(c, connect("late"));
    assert_eq!(h.next(c).connack().code, 0);
    assert_eq!(
        h.channel(c).next_deadline(),
        None,
        "keep alive 0: no deadline"
    );
    h.advance(secs(60));
    assert!(!h.is_closed(c));
}

#[test]
fn bad_credentials_refused_per_version() {
    let mut h = password_harness();
    let (c, ack) = h.connect(connect_v5("a").username("u").password(b"wrong"));
    assert_eq!(ack.code, rc::BAD_USERNAME_OR_PASSWORD);
    assert!(h.is_closed(c));
    let (c, ack) = h.connect(connect("a").username("u").password(b"wrong"));
    assert_eq!(ack.code, rc::V3_BAD_USERNAME_OR_PASSWORD);
    assert!(h.is_closed(c));
    let (_, ack) = h.connect(connect_v5("a").username("banned").password(b"p"));
    assert_eq!(ack.code, rc::NOT_AUTHORIZED);
    let (_, ack) = h.connect(connect("a").username("banned").password(b"p"));
    assert_eq!(ack.code, rc::V3_NOT_AUTHORIZED);
    let (_, ack) = h.connect(connect_v5("a").username("u").password(b"p"));
    assert_eq!(ack.code, rc::SUCCESS);
}

#[test]
fn client_id_too_long_refused() {
    let config = ChannelConfig {
        max_clientid_len: 8,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (_, ack) = h.connect(connect_v5("123456789"));
    assert_eq!(ack.code, rc::CLIENT_IDENTIFIER_NOT_VALID);
    let (_, ack) = h.connect(connect("123456789"));
    assert_eq!(ack.code, rc::V3_IDENTIFIER_REJECTED);
    let (_, ack) = h.connect(connect("12345678"));
    assert_eq!(ack.code, 0);
}

#[test]
fn will_qos_above_maximum_refused_0x9b() {
    // [MQTT-3.2.2-12]
    let config = ChannelConfig {
        max_qos: QoS::AtLeastOnce,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (c, ack) = h.connect(connect_v5("w").will("w/t", b"x").will_qos(2));
    assert_eq!(ack.code, rc::QOS_NOT_SUPPORTED);
    assert!(h.is_closed(c));
    let (_, ack) = h.connect(connect_v5("w2"));
    assert_eq!(ack.properties.maximum_qos, Some(1));
}

#[test]
fn will_retain_when_unsupported_refused_0x9a() {
    // [MQTT-3.2.2-13]
    let config = ChannelConfig {
        retain_available: false,
        ..ChannelConfig::default()
    };
    let mut h = Harness::with_config(config);
    let (_, ack) = h.connect(connect_v5("w").will("w/t", b"x").will_retain());
    assert_eq!(ack.code, rc::RETAIN_NOT_SUPPORTED);
    let (_, ack) = h.connect(connect_v5("w2"));
    assert_eq!(ack.properties.retain_available, Some(0));
}

#[test]
fn session_expiry_capped_and_announced() {
    // §3.2.2.3.2: the server tells the client the interval it will use.
    let broker = Broker::new(BrokerConfig {
        max_session_expiry: 100,
        ..BrokerConfig::default()
    });
    let mut h = Harness::with_broker(broker, ChannelConfig::default());
    let (_, ack) = h.connect(connect_v5("long").session_expiry(3600));
    assert_eq!(ack.properties.session_expiry_interval, Some(100));
    let (_, ack) = h.connect(connect_v5("short").session_expiry(50));
    assert_eq!(ack.properties.session_expiry_interval, None);
}
