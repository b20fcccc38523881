//! Connection lifetime around the session: keep alive (§3.1.2.10),
//! takeover (§3.1.4), persistent session resume with retransmission
//! (§4.4), server shutdown, and the core's wake-up signal.

mod support;

use support::*;
use tributary_core::KickReason;

/// A client listening on `will/#`, to observe wills.
fn will_watcher(h: &mut Harness) -> Conn {
    let w = h.connected(connect("watcher"));
    h.subscribed(w, 1, &[("will/#", 0)]);
    w
}

#[test]
fn keep_alive_timeout_v5_disconnect_0x8d_and_will() {
    // [MQTT-3.1.2-22] / [MQTT-3.1.2-24]: 1.5 × keep alive without a packet.
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(connect_v5("idle").keep_alive(10).will("will/idle", b"gone"));
    assert_eq!(h.deadline_in(c), Some(secs(15)));

    h.advance(millis(14_999));
    assert!(!h.is_closed(c));
    h.assert_silent(w);

    h.advance(millis(1));
    let d = h.expect_one(c).disconnect();
    assert_eq!(d.reason, rc::KEEP_ALIVE_TIMEOUT);
    assert!(h.is_closed(c));
    let will = h.expect_one(w).publish();
    assert_eq!(&*will.topic, "will/idle");
    assert_eq!(&will.payload[..], b"gone");
}

#[test]
fn keep_alive_timeout_v3_closes_silently_with_will() {
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(connect("idle").keep_alive(4).will("will/idle", b"gone"));
    h.advance(secs(6));
    assert!(h.is_closed(c));
    h.assert_silent(c);
    assert_eq!(&*h.expect_one(w).publish().topic, "will/idle");
}

#[test]
fn activity_resets_keep_alive_deadline() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("busy").keep_alive(10));
    h.advance(secs(10));
    h.send(c, pingreq());
    assert_eq!(h.expect_one(c), Packet::PingResp);
    assert_eq!(h.deadline_in(c), Some(secs(15)));

    h.advance(secs(10)); // 20 s since CONNECT, 10 s since PINGREQ
    assert!(!h.is_closed(c));
    // Any packet counts, not only PINGREQ.
    h.send(c, publish("x", b"y"));
    h.advance(secs(14));
    assert!(!h.is_closed(c));
    h.advance(secs(1));
    assert_eq!(h.expect_one(c).disconnect().reason, rc::KEEP_ALIVE_TIMEOUT);
}

#[test]
fn keep_alive_zero_never_times_out() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("forever"));
    assert_eq!(h.channel(c).next_deadline(), None);
    h.advance(secs(86_400));
    assert!(!h.is_closed(c));
}

#[test]
fn takeover_old_channel_gets_0x8e_new_one_works() {
    // [MQTT-3.1.4-3]
    let mut h = Harness::new();
    let old = h.connected(connect_v5("same"));
    h.subscribed(old, 1, &[("t", 1)]);

    let new = h.connected(connect_v5("same"));
    let d = h.expect_one(old).disconnect();
    assert_eq!(d.reason, rc::SESSION_TAKEN_OVER);
    assert!(h.is_closed(old));

    // The new connection works: subscribe, publish to itself, ack.
    h.subscribed(new, 2, &[("t", 1)]);
    h.send(new, publish("t", b"mine").qos(1).id(1));
    let packets = h.take(new);
    assert_eq!(packets.len(), 2, "{packets:?}");
    let mut puback_seen = false;
    let mut publish_seen = false;
    for p in packets {
        match p {
            Packet::PubAck(a) => {
                assert_eq!((a.packet_id, a.reason), (1, rc::SUCCESS));
                puback_seen = true;
            }
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], b"mine");
                publish_seen = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(puback_seen && publish_seen);
    h.assert_silent(old);
}

#[test]
fn takeover_v3_old_channel_closed_silently() {
    let mut h = Harness::new();
    let old = h.connected(connect("same"));
    let _new = h.connected(connect("same"));
    assert!(h.is_closed(old));
    h.assert_silent(old);
}

#[test]
fn takeover_publishes_old_connections_will() {
    // MQTT 5 §3.1.4: the existing connection's will is published (no delay).
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let _old = h.connected(connect_v5("same").will("will/same", b"old"));
    let _new = h.connected(connect_v5("same"));
    assert_eq!(&h.expect_one(w).publish().payload[..], b"old");
}

#[test]
fn persistent_session_resumes_with_dup_publish_and_pubrel() {
    // [MQTT-4.4.0-1]: unacknowledged PUBLISH (DUP=1) and PUBREL resent, in order.
    let mut h = Harness::new();
    let s = h.connected(connect_v5("durable").session_expiry(300));
    h.subscribed(s, 1, &[("t", 2)]);
    let p = h.connected(connect_v5("pub"));

    h.send(p, publish("t", b"q1").qos(1).id(1));
    h.send(p, publish("t", b"q2").qos(2).id(2));
    let got = h.take(s);
    assert_eq!(got.len(), 2, "{got:?}");
    let mut got = got.into_iter();
    let q1 = got.next().expect("q1").publish();
    let q2 = got.next().expect("q2").publish();
    let id1 = q1.packet_id.expect("id");
    let id2 = q2.packet_id.expect("id");
    // Acknowledge the QoS 2 halfway: PUBREC → PUBREL, no PUBCOMP.
    h.send(s, pubrec(id2));
    assert_eq!(h.expect_one(s).pubrel().packet_id, id2);

    h.drop_connection(s);
    // Queued while offline.
    h.send(p, publish("t", b"q3").qos(1).id(3));

    let (s2, ack) = h.connect(connect_v5("durable").clean_start(false).session_expiry(300));
    assert_eq!(ack.code, rc::SUCCESS);
    assert!(ack.session_present);
    let packets = h.take(s2);
    assert_eq!(packets.len(), 3, "{packets:?}");
    let mut it = packets.into_iter();

    let again = it.next().expect("resent PUBLISH").publish();
    assert!(again.dup, "DUP set on retransmission [MQTT-3.3.1-1]");
    assert_eq!(again.packet_id, Some(id1));
    assert_eq!(again.qos, QoS::AtLeastOnce);
    assert_eq!(&again.payload[..], b"q1");

    let rel = it.next().expect("resent PUBREL").pubrel();
    assert_eq!(rel.packet_id, id2);

    let fresh = it.next().expect("queued PUBLISH").publish();
    assert!(!fresh.dup);
    assert_eq!(&fresh.payload[..], b"q3");
    let id3 = fresh.packet_id.expect("id");
    assert!(id3 != id1 && id3 != id2, "packet id in use reused");

    h.send(s2, puback(id1));
    h.send(s2, pubcomp(id2));
    h.send(s2, puback(id3));
    h.assert_silent(s2);

    // Everything acknowledged: nothing is resent on the next resume.
    h.drop_connection(s2);
    let (s3, ack) = h.connect(connect_v5("durable").clean_start(false).session_expiry(300));
    assert!(ack.session_present);
    h.assert_silent(s3);
}

#[test]
fn persistent_session_v3_keeps_subscriptions() {
    let mut h = Harness::new();
    let s = h.connected(connect("durable").clean_start(false));
    h.subscribed(s, 1, &[("t", 1)]);
    h.send(s, disconnect());
    assert!(h.is_closed(s));

    let p = h.connected(connect("pub"));
    h.send(p, publish("t", b"while away").qos(1).id(1));
    assert_eq!(h.expect_one(p).puback().packet_id, 1);

    let (s2, ack) = h.connect(connect("durable").clean_start(false));
    assert!(ack.session_present);
    assert_eq!(&h.expect_one(s2).publish().payload[..], b"while away");
}

#[test]
fn clean_start_discards_session() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("c").session_expiry(300));
    h.subscribed(s, 1, &[("t", 1)]);
    h.drop_connection(s);

    let (s2, ack) = h.connect(connect_v5("c").clean_start(true));
    assert!(!ack.session_present);
    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("t", b"x"));
    h.assert_silent(s2);
}

#[test]
fn session_expiry_zero_ends_session_on_close() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("short").clean_start(false));
    h.subscribed(s, 1, &[("t", 1)]);
    h.drop_connection(s);
    let (_, ack) = h.connect(connect_v5("short").clean_start(false));
    assert!(!ack.session_present);
}

#[test]
fn session_expires_after_interval() {
    let mut h = Harness::new();
    let s = h.connected(connect_v5("e").session_expiry(60));
    h.subscribed(s, 1, &[("t", 1)]);
    h.drop_connection(s);
    h.advance(secs(59));
    let (s2, ack) = h.connect(connect_v5("e").clean_start(false).session_expiry(60));
    assert!(ack.session_present, "still within the expiry interval");
    h.drop_connection(s2);
    h.advance(secs(60));
    let (_, ack) = h.connect(connect_v5("e").clean_start(false));
    assert!(!ack.session_present, "expired");
}

#[test]
fn server_shutdown_v5_disconnect_0x8b_without_will() {
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(connect_v5("c").will("will/c", b"x"));
    h.shutdown(c);
    assert_eq!(
        h.expect_one(c).disconnect().reason,
        rc::SERVER_SHUTTING_DOWN
    );
    assert!(h.is_closed(c));
    h.assert_silent(w);
}

#[test]
fn administrative_kick_v5_disconnect_0x98() {
    let mut h = Harness::new();
    let c = h.connected(connect_v5("kickme"));
    assert!(h.broker().kick("kickme", KickReason::Administrative));
    // The kick arrives through the signal when the driver wakes.
    h.settle();
    assert_eq!(
        h.expect_one(c).disconnect().reason,
        rc::ADMINISTRATIVE_ACTION
    );
    assert!(h.is_closed(c));
}

#[test]
fn routing_signals_the_subscriber() {
    // The driver sleeps on `signal()`; a publish routed to the session must
    // wake it (the harness also fails any wake-up that produced packets
    // without a signal).
    let mut h = Harness::new();
    let s = h.connected(connect("s"));
    h.subscribed(s, 1, &[("t", 0)]);
    let p = h.connected(connect("p"));
    let before = h.signalled_wakes(s);
    h.send(p, publish("t", b"wake"));
    assert_eq!(&h.expect_one(s).publish().payload[..], b"wake");
    assert_eq!(h.signalled_wakes(s), before + 1);
}

#[test]
fn takeover_sets_kick_reason_on_old_signal() {
    let mut h = Harness::new();
    let old = h.connected(connect_v5("same"));
    let signal = h.channel(old).signal().expect("signal");
    assert_eq!(signal.kicked(), None);
    let _new = h.connected(connect_v5("same"));
    assert_eq!(signal.kicked(), Some(KickReason::Takeover));
}

#[test]
fn takeover_with_session_resume_resends_inflight() {
    // The new connection continues the session: unacked QoS 1 resent with DUP.
    let mut h = Harness::new();
    let old = h.connected(connect_v5("same").session_expiry(120));
    h.subscribed(old, 1, &[("t", 1)]);
    let p = h.connected(connect_v5("pub"));
    h.send(p, publish("t", b"m").qos(1).id(1));
    let first = h.expect_one(old).publish();

    let (new, ack) = h.connect(connect_v5("same").clean_start(false).session_expiry(120));
    assert!(ack.session_present);
    assert_eq!(
        h.expect_one(old).disconnect().reason,
        rc::SESSION_TAKEN_OVER
    );
    let again = h.expect_one(new).publish();
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.payload, first.payload);

    // The old connection's late PUBACK must not complete the new one's flow.
    h.send(old, puback(first.packet_id.expect("id")));
    h.send(new, puback(first.packet_id.expect("id")));
    h.assert_silent(new);
}

#[test]
fn reconnect_within_will_delay_cancels_will() {
    // [MQTT-3.1.3-9]: a new connection before the delay elapses cancels it.
    let mut h = Harness::new();
    let w = will_watcher(&mut h);
    let c = h.connected(
        connect_v5("c")
            .session_expiry(300)
            .will("will/c", b"x")
            .will_delay(10),
    );
    h.drop_connection(c);
    h.advance(secs(5));
    let _c2 = h.connected(connect_v5("c").clean_start(false).session_expiry(300));
    h.advance(secs(20));
    h.assert_silent(w);
}

#[test]
fn resume_backlog_larger_than_one_send_batch_is_delivered() {
    // The channel turns at most one batch of deliveries into packets per
    // wake-up. A backlog queued while offline (here 300 QoS 0 messages) must
    // still all arrive: after a full batch the driver must be woken again,
    // or it sleeps with messages in the mailbox until some unrelated event.
    let mut h = Harness::new();
    let s = h.connected(connect("backlog").clean_start(false));
    h.subscribed(s, 1, &[("t", 0)]);
    h.drop_connection(s);
    let p = h.connected(connect("pub"));
    for i in 0..300u32 {
        h.send(p, publish("t", &i.to_be_bytes()));
    }
    let (s2, ack) = h.connect(connect("backlog").clean_start(false));
    assert!(ack.session_present);
    let got = h.take(s2);
    assert_eq!(got.len(), 300);
    for (i, m) in got.into_iter().enumerate() {
        assert_eq!(&m.publish().payload[..], &(i as u32).to_be_bytes());
    }
}
