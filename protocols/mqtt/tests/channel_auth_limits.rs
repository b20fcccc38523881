//! Authentication that takes time, MQTT 5 enhanced authentication (§4.12),
//! the transport-proved user name, per-client rates (0x96 or a read pause)
//! and the subscription quota (0x97).

mod support;

use tributary_core::intake::RateLimits;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tributary_core::auth::{
    AuthCheck, AuthOutcome, Authenticator, EnhancedAuth, EnhancedStart, EnhancedStep,
    RuleAuthorizer,
};
use tributary_core::cluster::SingleNode;
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig, ClientInfo};
use tributary_mqtt::channel::ChannelConfig;
use tributary_mqtt::packet::{Auth, PropertyValues};

/// Answers later: `u`/`p` allowed, anything else bad credentials.
#[derive(Debug, Default)]
struct Later {
    asked: AtomicUsize,
}

impl Authenticator for Later {
    fn authenticate(&self, _client: &ClientInfo, _password: Option<&[u8]>) -> AuthOutcome {
        AuthOutcome::NotAuthorized
    }

    fn check(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthCheck {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let ok = client.username.as_deref() == Some("u") && password == Some(b"p");
        AuthCheck::Pending(Box::pin(async move {
            if ok {
                AuthOutcome::Allow
            } else {
                AuthOutcome::BadCredentials
            }
        }))
    }

    fn enhanced(&self, method: &str, _client: &ClientInfo) -> EnhancedStart {
        match method {
            "TEST" => EnhancedStart::Started(Box::new(Echo { round: 0 })),
            "BANNED" => EnhancedStart::Refused(AuthOutcome::NotAuthorized),
            _ => EnhancedStart::Unsupported,
        }
    }
}

/// Two rounds: "hello" → "challenge", "answer" → success as `echo-user`.
#[derive(Debug)]
struct Echo {
    round: u8,
}

impl EnhancedAuth for Echo {
    fn step(&mut self, data: &[u8]) -> EnhancedStep {
        self.round += 1;
        match (self.round, data) {
            (1, b"hello") => EnhancedStep::Continue(b"challenge".to_vec()),
            (2, b"answer") => EnhancedStep::Success {
                username: "echo-user".into(),
                data: Some(b"done".to_vec()),
            },
            _ => EnhancedStep::Failure(AuthOutcome::BadCredentials),
        }
    }
}

fn harness(config: ChannelConfig) -> Harness {
    let broker = Broker::with_seams(
        BrokerConfig::default(),
        Box::new(Later::default()),
        Box::new(RuleAuthorizer::allow_all()),
        Box::new(MemoryPersistence),
        Box::new(SingleNode),
    );
    Harness::with_broker(broker, config)
}

/// Drive the pending decision the way the gateway's driver does.
fn resolve(h: &mut Harness, c: Conn) {
    let mut future = h
        .channel_mut(c)
        .take_auth_future()
        .expect("a pending decision");
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(outcome) = future.as_mut().poll(&mut cx) else {
        panic!("test futures resolve at once");
    };
    let now = h.now();
    h.channel_mut(c).handle_auth_result(outcome, now);
    h.flush(c);
}

#[test]
fn pending_decision_parks_the_connect_until_resolved() {
    let mut h = harness(ChannelConfig::default());
    let c = h.open();
    h.send(c, connect_v5("late").username("u").password(b"p"));
    assert!(h.channel(c).awaiting_auth_result());
    h.assert_silent(c);
    resolve(&mut h, c);
    let ack = h.next(c).connack();
    assert_eq!(ack.code, rc::SUCCESS);
    assert!(!h.channel(c).awaiting_auth_result());
    assert_eq!(h.broker().metrics().auth_success.load(Ordering::Relaxed), 1);
}

#[test]
fn pending_refusal_gets_0x86_or_4() {
    let mut h = harness(ChannelConfig::default());
    let c = h.open();
    h.send(c, connect_v5("late").username("u").password(b"wrong"));
    resolve(&mut h, c);
    assert_eq!(h.next(c).connack().code, rc::BAD_USERNAME_OR_PASSWORD);
    assert!(h.is_closed(c));
    let c3 = h.open();
    h.send(c3, connect("late3").username("x").password(b"y"));
    resolve(&mut h, c3);
    assert_eq!(h.next(c3).connack().code, 0x04);
    assert_eq!(h.broker().metrics().auth_failure.load(Ordering::Relaxed), 2);
}

#[test]
fn connect_timeout_applies_while_a_decision_is_pending() {
    let mut h = harness(ChannelConfig::default());
    let c = h.open();
    h.send(c, connect_v5("slow").username("u").password(b"p"));
    let _parked = h.channel_mut(c).take_auth_future();
    h.advance(Duration::from_secs(11));
    assert!(h.is_closed(c));
}

fn auth(reason: u8, method: &str, data: &[u8]) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: PropertyValues {
            authentication_method: Some(method.into()),
            authentication_data: Some(Bytes::copy_from_slice(data)),
            ..PropertyValues::default()
        }
        .into(),
    })
}

fn connect_with_auth(id: &str, method: &str, data: &[u8]) -> Packet {
    let mut p = connect_v5(id).auth_method(method).build();
    if let Packet::Connect(c) = &mut p {
        c.properties.authentication_data = Some(Bytes::copy_from_slice(data));
    }
    p
}

#[test]
fn enhanced_authentication_exchange() {
    let mut h = harness(ChannelConfig::default());
    let c = h.open();
    h.send(c, connect_with_auth("scrammy", "TEST", b"hello"));
    let Packet::Auth(challenge) = h.next(c) else {
        panic!("expected AUTH");
    };
    assert_eq!(challenge.reason, rc::CONTINUE_AUTHENTICATION);
    assert_eq!(
        challenge.properties.authentication_method.as_deref(),
        Some("TEST")
    );
    assert_eq!(
        challenge.properties.authentication_data.as_deref(),
        Some(&b"challenge"[..])
    );
    h.send(c, auth(rc::CONTINUE_AUTHENTICATION, "TEST", b"answer"));
    let ack = h.next(c).connack();
    assert_eq!(ack.code, rc::SUCCESS);
    assert_eq!(
        ack.properties.authentication_method.as_deref(),
        Some("TEST")
    );
    assert_eq!(
        ack.properties.authentication_data.as_deref(),
        Some(&b"done"[..])
    );
    let clients = h.broker().clients();
    assert_eq!(clients[0].0.username.as_deref(), Some("echo-user"));
}

#[test]
fn enhanced_authentication_failures() {
    let mut h = harness(ChannelConfig::default());
    let c = h.open();
    h.send(c, connect_with_auth("x", "TEST", b"hello"));
    let _challenge = h.next(c);
    h.send(c, auth(rc::CONTINUE_AUTHENTICATION, "TEST", b"wrong"));
    assert_eq!(h.next(c).connack().code, rc::BAD_USERNAME_OR_PASSWORD);
    assert!(h.is_closed(c));
    // Another method in the AUTH packet [MQTT-4.12.0-5].
    let c = h.open();
    h.send(c, connect_with_auth("y", "TEST", b"hello"));
    let _challenge = h.next(c);
    h.send(c, auth(rc::CONTINUE_AUTHENTICATION, "OTHER", b"answer"));
    assert_eq!(h.next(c).connack().code, rc::PROTOCOL_ERROR);
    // Unsupported and refused methods.
    let (_, ack) = h.connect(connect_with_auth("z", "NOPE", b""));
    assert_eq!(ack.code, rc::BAD_AUTHENTICATION_METHOD);
    let (_, ack) = h.connect(connect_with_auth("w", "BANNED", b""));
    assert_eq!(ack.code, rc::NOT_AUTHORIZED);
    // Any other packet before the exchange ends closes the connection.
    let c = h.open();
    h.send(c, connect_with_auth("v", "TEST", b"hello"));
    let _challenge = h.next(c);
    h.send(c, pingreq());
    assert!(h.is_closed(c));
}

#[test]
fn transport_username_replaces_the_connects() {
    let mut h = Harness::new();
    let c = h.open();
    h.channel_mut(c)
        .set_transport_username(Some("device-7".into()));
    h.send(c, connect("cn").username("mallory").password(b"x"));
    assert_eq!(h.next(c).connack().code, rc::SUCCESS);
    assert_eq!(
        h.broker().clients()[0].0.username.as_deref(),
        Some("device-7")
    );
}

#[test]
fn message_rate_disconnects_with_0x96() {
    let mut h = Harness::with_broker(
        Broker::new(BrokerConfig {
            rates: RateLimits {
                messages_rate: 2,
                bytes_rate: 0,
                disconnect: true,
            },
            ..BrokerConfig::default()
        }),
        ChannelConfig::default(),
    );
    let c = h.connected(connect_v5("fast"));
    h.send(c, publish("t", b"1"));
    h.send(c, publish("t", b"2"));
    assert!(!h.is_closed(c));
    h.send(c, publish("t", b"3"));
    assert!(h.is_closed(c));
    let Packet::Disconnect(d) = h.next(c) else {
        panic!("expected DISCONNECT");
    };
    assert_eq!(d.reason, rc::MESSAGE_RATE_TOO_HIGH);
    assert_eq!(h.broker().metrics().rate_limited.load(Ordering::Relaxed), 1);
}

#[test]
fn message_rate_refills_over_time() {
    let mut h = Harness::with_broker(
        Broker::new(BrokerConfig {
            rates: RateLimits {
                messages_rate: 2,
                bytes_rate: 0,
                disconnect: true,
            },
            ..BrokerConfig::default()
        }),
        ChannelConfig::default(),
    );
    let c = h.connected(connect_v5("steady"));
    for _ in 0..6 {
        h.send(c, publish("t", b"x"));
        h.advance(Duration::from_millis(500));
    }
    assert!(!h.is_closed(c));
}

#[test]
fn throttle_pauses_input_until_the_bucket_refills() {
    let mut h = Harness::with_broker(
        Broker::new(BrokerConfig {
            rates: RateLimits {
                messages_rate: 2,
                bytes_rate: 0,
                disconnect: false,
            },
            ..BrokerConfig::default()
        }),
        ChannelConfig::default(),
    );
    let c = h.connected(connect("throttled"));
    h.send(c, publish("t", b"1"));
    h.send(c, publish("t", b"2"));
    assert_eq!(h.channel(c).read_paused_until(), None);
    h.send(c, publish("t", b"3"));
    let until = h.channel(c).read_paused_until().expect("paused");
    assert_eq!(until - h.now(), Duration::from_millis(500));
    assert_eq!(h.deadline_in(c), Some(Duration::from_millis(500)));
    h.advance(Duration::from_millis(500));
    assert_eq!(h.channel(c).read_paused_until(), None);
    assert!(!h.is_closed(c));
}

#[test]
fn byte_rate_counts_payloads() {
    let mut h = Harness::with_broker(
        Broker::new(BrokerConfig {
            rates: RateLimits {
                messages_rate: 0,
                bytes_rate: 1000,
                disconnect: false,
            },
            ..BrokerConfig::default()
        }),
        ChannelConfig::default(),
    );
    let c = h.connected(connect("bytes"));
    h.send(c, publish("t", &[0u8; 999]));
    assert_eq!(h.channel(c).read_paused_until(), None);
    h.send(c, publish("t", &[0u8; 1000]));
    assert!(h.channel(c).read_paused_until().is_some());
}

#[test]
fn subscription_quota() {
    let mut h = Harness::with_config(ChannelConfig {
        max_subscriptions: 2,
        ..ChannelConfig::default()
    });
    let c = h.connected(connect_v5("quota"));
    h.send(c, subscribe(1, &[("a", 0), ("b", 1), ("c", 0)]));
    assert_eq!(h.next(c).suback().reasons, [0, 1, rc::QUOTA_EXCEEDED]);
    h.send(c, subscribe(2, &[("a", 1)]));
    assert_eq!(h.next(c).suback().reasons, [1]);
    h.send(c, unsubscribe(3, &["b"]));
    let _ = h.next(c);
    h.send(c, subscribe(4, &[("c", 0)]));
    assert_eq!(h.next(c).suback().reasons, [0]);
    let c3 = h.connected(connect("quota3"));
    h.send(c3, subscribe(1, &[("x", 0), ("y", 0), ("z", 0)]));
    assert_eq!(h.next(c3).suback().reasons, [0, 0, 0x80]);
    assert_eq!(
        h.broker()
            .metrics()
            .subscriptions_refused_quota
            .load(Ordering::Relaxed),
        2
    );
}
