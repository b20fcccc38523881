//! MQTT 5 interoperability: `rumqttc`'s v5 client against the real
//! `tributary` binary.
//!
//! Each test starts its own gateway process ([`TestBroker`]) and talks to it
//! over loopback. Every wait is bounded by [`WAIT`]; nothing sleeps for a
//! fixed time. Negative checks ("this was NOT delivered") use a fence: after
//! the action under test, a message is published on a topic the observer
//! also matches, and the observer must see the fence before anything
//! unexpected. The gateway delivers to one session in routing order, so
//! anything wrongly produced earlier would arrive ahead of the fence.
//!
//! Spec references are to MQTT Version 5.0 (OASIS Standard, 7 March 2019).

use std::collections::VecDeque;
use std::time::Duration;

use interop_tests::TestBroker;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, ConnectReturnCode, DisconnectReasonCode, LastWill, Packet, Publish,
    PublishProperties, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Longest wait for any single expected event.
const WAIT: Duration = Duration::from_secs(5);

/// Events buffered between a client's event loop task and the test.
///
/// Generous so a test that publishes in bulk before draining never stalls
/// the event loop; if it ever fills, the loop just waits (no loss).
const EVENT_BUFFER: usize = 4096;

/// Capacity of rumqttc's request channel (client → event loop).
const REQUEST_CAPACITY: usize = 16;

/// Messages per QoS in the ordering tests.
const ORDERED_COUNT: usize = 100;

/// One rumqttc client plus the task polling its event loop.
///
/// The task forwards every event to the test and stops at the first
/// connection error, so rumqttc never reconnects behind the test's back
/// (a reconnect would, for example, turn a takeover test into ping-pong).
struct Peer {
    /// Client id, for failure messages.
    id: String,
    /// Request side.
    client: AsyncClient,
    /// Events from the event loop task; the last one is an error, if any.
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    /// PUBLISH packets seen while waiting for something else.
    inbox: VecDeque<Publish>,
    /// The event loop task; aborting it drops the socket without DISCONNECT.
    task: JoinHandle<()>,
}

impl Peer {
    /// Connect with a clean start and default options.
    async fn connect(broker: &TestBroker, id: &str) -> Peer {
        Peer::connect_with(broker, id, |_| {}).await.0
    }

    /// Connect after `configure` adjusts the options; returns the CONNACK.
    async fn connect_with(
        broker: &TestBroker,
        id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> (Peer, ConnAck) {
        let mut options = MqttOptions::new(id, broker.host(), broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        configure(&mut options);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (events, task) = pump(eventloop);
        let mut peer = Peer {
            id: id.to_owned(),
            client,
            events,
            inbox: VecDeque::new(),
            task,
        };
        let connack = peer
            .wait_for("CONNACK", |event| match event {
                Event::Incoming(Packet::ConnAck(ack)) => Some(ack.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            connack.code,
            ConnectReturnCode::Success,
            "{id}: connection refused"
        );
        (peer, connack)
    }

    /// The next event, or a panic after [`WAIT`].
    async fn next_event(&mut self, what: &str) -> Result<Event, ConnectionError> {
        match timeout(WAIT, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("{}: event loop ended while waiting for {what}", self.id),
            Err(_) => panic!("{}: no {what} within {WAIT:?}", self.id),
        }
    }

    /// Wait for the first event `pick` accepts. PUBLISH packets passed over
    /// are kept for [`Peer::recv`]; a connection error panics.
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            let event = match self.next_event(what).await {
                Ok(event) => event,
                Err(e) => panic!(
                    "{}: connection error while waiting for {what}: {e:?}",
                    self.id
                ),
            };
            if let Some(found) = pick(&event) {
                return found;
            }
            if let Event::Incoming(Packet::Publish(publish)) = event {
                self.inbox.push_back(publish);
            }
        }
    }

    /// Subscribe (with optional properties) and wait for the SUBACK.
    async fn subscribe_with(
        &mut self,
        filter: &str,
        qos: QoS,
        properties: Option<SubscribeProperties>,
    ) -> Vec<SubscribeReasonCode> {
        let sent = match properties {
            Some(p) => self.client.subscribe_with_properties(filter, qos, p).await,
            None => self.client.subscribe(filter, qos).await,
        };
        sent.expect("event loop gone");
        self.wait_for("SUBACK", |event| match event {
            Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribe and assert the broker granted exactly `qos`.
    async fn subscribe_ok(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe_with(filter, qos, None).await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "{}: SUBACK for {filter}",
            self.id
        );
    }

    /// Subscribe with a Subscription Identifier and assert success.
    async fn subscribe_with_id(&mut self, filter: &str, qos: QoS, id: usize) {
        let properties = SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        };
        let codes = self.subscribe_with(filter, qos, Some(properties)).await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "{}: SUBACK for {filter}",
            self.id
        );
    }

    /// Queue a PUBLISH without waiting for anything.
    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        let payload: Vec<u8> = payload.into();
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("event loop gone");
    }

    /// Queue a PUBLISH carrying `properties`.
    async fn publish_props(
        &self,
        topic: &str,
        qos: QoS,
        payload: &'static str,
        properties: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, false, payload, properties)
            .await
            .expect("event loop gone");
    }

    /// Wait until `count` PUBLISH packets at `qos` are complete from this
    /// side: written (QoS 0), PUBACKed (QoS 1) or PUBCOMPed (QoS 2).
    async fn confirm(&mut self, qos: QoS, count: usize) {
        for _ in 0..count {
            self.wait_for("publish confirmation", |event| match (qos, event) {
                (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_))) => Some(()),
                (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_))) => Some(()),
                (QoS::ExactlyOnce, Event::Incoming(Packet::PubComp(_))) => Some(()),
                _ => None,
            })
            .await;
        }
    }

    /// Publish one message and wait until it is complete (see [`Peer::confirm`]).
    async fn publish_confirmed(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.publish(topic, qos, retain, payload).await;
        self.confirm(qos, 1).await;
    }

    /// The next PUBLISH received.
    async fn recv(&mut self) -> Publish {
        if let Some(publish) = self.inbox.pop_front() {
            return publish;
        }
        self.wait_for("PUBLISH", |event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// Every PUBLISH received before the first one on `fence` (consumed).
    async fn recv_until(&mut self, fence: &str) -> Vec<Publish> {
        let mut before = Vec::new();
        loop {
            let publish = self.recv().await;
            if topic(&publish) == fence {
                return before;
            }
            before.push(publish);
        }
    }

    /// Wait for the connection to end and return the error that ended it.
    async fn closed(&mut self) -> ConnectionError {
        loop {
            match self.next_event("connection close").await {
                Err(e) => return e,
                Ok(Event::Incoming(Packet::Publish(publish))) => self.inbox.push_back(publish),
                Ok(_) => {}
            }
        }
    }

    /// Send DISCONNECT (reason 0x00) and wait until the broker closes the
    /// connection.
    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("event loop gone");
        self.closed().await;
        let _ = timeout(WAIT, self.task).await;
    }

    /// Drop the connection without DISCONNECT (as a crashed client would).
    async fn kill(self) {
        self.task.abort();
        // The event loop, and with it the socket, is dropped once the task ends.
        let _ = timeout(WAIT, self.task).await;
    }
}

/// Poll `eventloop` on its own task, forwarding events until the first error.
fn pump(
    mut eventloop: EventLoop,
) -> (
    mpsc::Receiver<Result<Event, ConnectionError>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let task = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() || failed {
                break;
            }
        }
    });
    (rx, task)
}

fn topic(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.topic).into_owned()
}

fn text(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
}

/// The properties of a delivered PUBLISH, or the empty set.
fn props(publish: &Publish) -> PublishProperties {
    publish.properties.clone().unwrap_or_default()
}

/// Publish [`ORDERED_COUNT`] messages at `qos` and check the subscriber gets
/// each exactly once, in order, at `qos` ([MQTT-4.6.0-6], §4.3).
async fn round_trip_in_order(qos: QoS) {
    let broker = TestBroker::start();
    let topic_name = format!("order/{}", qos as u8);
    let mut subscriber = Peer::connect(&broker, "order-sub").await;
    subscriber.subscribe_ok(&topic_name, qos).await;
    let mut publisher = Peer::connect(&broker, "order-pub").await;

    for i in 0..ORDERED_COUNT {
        publisher
            .publish(&topic_name, qos, false, i.to_string())
            .await;
    }
    publisher.confirm(qos, ORDERED_COUNT).await;
    publisher
        .publish_confirmed(&topic_name, qos, false, "fence")
        .await;

    let mut received = Vec::new();
    for _ in 0..ORDERED_COUNT {
        let publish = subscriber.recv().await;
        assert_eq!(topic(&publish), topic_name);
        assert_eq!(publish.qos, qos, "delivered at the granted QoS");
        assert!(!publish.retain, "a live message is not flagged retained");
        received.push(text(&publish));
    }
    let expected: Vec<String> = (0..ORDERED_COUNT).map(|i| i.to_string()).collect();
    assert_eq!(
        received, expected,
        "QoS {qos:?}: lost, duplicated or reordered messages"
    );
    let next = subscriber.recv().await;
    assert_eq!(
        text(&next),
        "fence",
        "QoS {qos:?}: extra delivery after the {ORDERED_COUNT} messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_round_trip_keeps_order() {
    round_trip_in_order(QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_round_trip_keeps_order_without_duplicates() {
    round_trip_in_order(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_round_trip_keeps_order_exactly_once() {
    round_trip_in_order(QoS::ExactlyOnce).await;
}

/// A message is delivered at the lower of its publish QoS and the granted
/// subscription QoS [MQTT-3.8.4-8].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_the_minimum_of_publish_and_subscription_qos() {
    let broker = TestBroker::start();
    let mut subscriber = Peer::connect(&broker, "downgrade-sub").await;
    subscriber.subscribe_ok("qos/1", QoS::AtLeastOnce).await;
    subscriber.subscribe_ok("qos/2", QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(&broker, "downgrade-pub").await;

    publisher
        .publish_confirmed("qos/1", QoS::ExactlyOnce, false, "2 to 1")
        .await;
    publisher
        .publish_confirmed("qos/2", QoS::AtMostOnce, false, "0 to 2")
        .await;
    publisher
        .publish_confirmed("qos/2", QoS::AtLeastOnce, false, "1 to 2")
        .await;

    let got: Vec<(String, QoS)> = [
        subscriber.recv().await,
        subscriber.recv().await,
        subscriber.recv().await,
    ]
    .iter()
    .map(|p| (text(p), p.qos))
    .collect();
    let expected = [
        ("2 to 1", QoS::AtLeastOnce),
        ("0 to 2", QoS::AtMostOnce),
        ("1 to 2", QoS::AtLeastOnce),
    ];
    let expected: Vec<(String, QoS)> = expected.iter().map(|(t, q)| (t.to_string(), *q)).collect();
    assert_eq!(got, expected);
}

/// `+` matches exactly one level, `#` any number including the parent
/// level itself (§4.7.1.2, §4.7.1.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_match_per_spec() {
    let broker = TestBroker::start();
    let mut single = Peer::connect(&broker, "wild-plus").await;
    single.subscribe_ok("w/+/temp", QoS::AtLeastOnce).await;
    let mut multi = Peer::connect(&broker, "wild-hash").await;
    multi.subscribe_ok("w/#", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(&broker, "wild-pub").await;

    let published = [
        "w",
        "w/a/temp",
        "w/a/b/temp",
        "w/a/humidity",
        "x/a/temp",
        "w/b/temp",
        "w/end/temp",
    ];
    for t in published {
        publisher
            .publish_confirmed(t, QoS::AtLeastOnce, false, t)
            .await;
    }

    let got: Vec<String> = single
        .recv_until("w/end/temp")
        .await
        .iter()
        .map(topic)
        .collect();
    assert_eq!(got, ["w/a/temp", "w/b/temp"], "w/+/temp");
    let got: Vec<String> = multi
        .recv_until("w/end/temp")
        .await
        .iter()
        .map(topic)
        .collect();
    assert_eq!(
        got,
        ["w", "w/a/temp", "w/a/b/temp", "w/a/humidity", "w/b/temp"],
        "w/#"
    );
}

/// A retained message reaches a new subscriber with RETAIN set
/// ([MQTT-3.3.1-6], [MQTT-3.3.1-9] with the default Retain As Published = 0
/// only governing live messages); a zero-byte retained PUBLISH removes it
/// ([MQTT-3.3.1-6], [MQTT-3.3.1-7]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_delivered_on_subscribe_and_cleared_by_empty_payload() {
    let broker = TestBroker::start();
    let mut publisher = Peer::connect(&broker, "retain-pub").await;
    publisher
        .publish_confirmed("r/t", QoS::AtLeastOnce, true, "hello")
        .await;

    let mut first = Peer::connect(&broker, "retain-sub-1").await;
    first.subscribe_ok("r/+", QoS::AtLeastOnce).await;
    let retained = first.recv().await;
    assert_eq!(
        (topic(&retained).as_str(), text(&retained).as_str()),
        ("r/t", "hello")
    );
    assert!(
        retained.retain,
        "retained message sent on subscribe must have RETAIN=1 [MQTT-3.3.1-12]"
    );

    publisher
        .publish_confirmed("r/t", QoS::AtLeastOnce, true, Vec::new())
        .await;
    let cleared = first.recv().await;
    assert!(
        cleared.payload.is_empty(),
        "zero-byte retained publish forwarded as is"
    );

    let mut second = Peer::connect(&broker, "retain-sub-2").await;
    second.subscribe_ok("r/+", QoS::AtLeastOnce).await;
    publisher
        .publish_confirmed("r/fence", QoS::AtLeastOnce, false, "fence")
        .await;
    let before = second.recv_until("r/fence").await;
    assert!(
        before.is_empty(),
        "retained message not cleared by empty payload: got {before:?}"
    );
}

/// Clean Start = 0 with a Session Expiry Interval: the session outlives the
/// connection and QoS 1 messages published meanwhile are delivered on
/// reconnect ([MQTT-3.1.2-5], [MQTT-3.1.2-23], [MQTT-3.2.2-2]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_delivers_offline_qos1_messages_after_reconnect() {
    let broker = TestBroker::start();
    let persistent = |o: &mut MqttOptions| {
        o.set_clean_start(false);
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = Some(60);
        o.set_connect_properties(properties);
    };
    let (mut sleeper, connack) = Peer::connect_with(&broker, "persist-5", persistent).await;
    assert!(
        !connack.session_present,
        "new session must not be reported present [MQTT-3.2.2-3]"
    );
    sleeper.subscribe_ok("persist/t", QoS::AtLeastOnce).await;
    sleeper.disconnect().await;

    let mut publisher = Peer::connect(&broker, "persist-pub").await;
    for i in 0..10 {
        publisher
            .publish("persist/t", QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    publisher.confirm(QoS::AtLeastOnce, 10).await;

    let (mut sleeper, connack) = Peer::connect_with(&broker, "persist-5", persistent).await;
    assert!(
        connack.session_present,
        "stored session must be reported present [MQTT-3.2.2-2]"
    );
    let mut got = Vec::new();
    for _ in 0..10 {
        let publish = sleeper.recv().await;
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        got.push(text(&publish));
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(
        got, expected,
        "offline messages lost, duplicated or reordered"
    );

    publisher
        .publish_confirmed("persist/t", QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(text(&sleeper.recv().await), "live");
}

/// Clean Start = 0 without a Session Expiry Interval (0): the session ends
/// with the network connection, so the next CONNECT finds none
/// ([MQTT-3.1.2-23], [MQTT-3.2.2-3]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_without_expiry_interval_ends_with_the_connection() {
    let broker = TestBroker::start();
    let resume = |o: &mut MqttOptions| {
        o.set_clean_start(false);
    };
    let (mut first, _) = Peer::connect_with(&broker, "no-expiry", resume).await;
    first.subscribe_ok("noexp/t", QoS::AtLeastOnce).await;
    first.disconnect().await;

    let (mut again, connack) = Peer::connect_with(&broker, "no-expiry", resume).await;
    assert!(
        !connack.session_present,
        "session with expiry 0 must not survive the connection"
    );
    let mut publisher = Peer::connect(&broker, "no-expiry-pub").await;
    publisher
        .publish_confirmed("noexp/t", QoS::AtLeastOnce, false, "old subscription")
        .await;
    again.subscribe_ok("noexp/fence", QoS::AtLeastOnce).await;
    publisher
        .publish_confirmed("noexp/fence", QoS::AtLeastOnce, false, "fence")
        .await;
    let before = again.recv_until("noexp/fence").await;
    assert!(
        before.is_empty(),
        "subscription of an ended session still delivering: {before:?}"
    );
}

/// A connection lost without DISCONNECT publishes the will ([MQTT-3.1.2-8]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_connection_drops() {
    let broker = TestBroker::start();
    let mut watcher = Peer::connect(&broker, "will-watcher").await;
    watcher.subscribe_ok("will/#", QoS::AtLeastOnce).await;
    let (dying, _) = Peer::connect_with(&broker, "will-dying", |o| {
        o.set_last_will(LastWill::new(
            "will/dying",
            "gone",
            QoS::AtLeastOnce,
            false,
            None,
        ));
    })
    .await;

    dying.kill().await;

    let will = watcher.recv().await;
    assert_eq!(
        (topic(&will).as_str(), text(&will).as_str()),
        ("will/dying", "gone")
    );
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(!will.retain);
}

/// DISCONNECT with reason 0x00 discards the will ([MQTT-3.1.2-10],
/// [MQTT-3.14.4-3]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_not_published_after_normal_disconnect() {
    let broker = TestBroker::start();
    let mut watcher = Peer::connect(&broker, "will-watcher").await;
    watcher.subscribe_ok("will/#", QoS::AtLeastOnce).await;
    let (polite, _) = Peer::connect_with(&broker, "will-polite", |o| {
        o.set_last_will(LastWill::new(
            "will/polite",
            "gone",
            QoS::AtLeastOnce,
            false,
            None,
        ));
    })
    .await;

    polite.disconnect().await;

    watcher
        .publish_confirmed("will/fence", QoS::AtLeastOnce, false, "fence")
        .await;
    let before = watcher.recv_until("will/fence").await;
    assert!(
        before.is_empty(),
        "will published despite DISCONNECT 0x00: {before:?}"
    );
}

/// A second CONNECT with the same client id takes the session over: the
/// first client gets DISCONNECT 0x8E Session taken over and is closed
/// ([MQTT-3.1.4-3], §4.13.2).
///
/// rumqttc (0.24 and 0.25) cannot parse a DISCONNECT whose Property Length
/// is omitted (`e0 01 8e`, allowed by §3.14.2.2.1 when the Remaining Length
/// is below 2): it waits for one more byte and then reports the close as an
/// I/O error. Both outcomes are accepted here; any other reason code is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_same_client_id_takes_over() {
    let broker = TestBroker::start();
    let mut first = Peer::connect(&broker, "twin").await;
    let mut second = Peer::connect(&broker, "twin").await;

    match first.closed().await {
        ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
            assert_eq!(
                reason_code,
                DisconnectReasonCode::SessionTakenOver,
                "DISCONNECT reason"
            );
        }
        ConnectionError::MqttState(StateError::Io(_)) | ConnectionError::Io(_) => {}
        other => panic!("expected DISCONNECT 0x8E Session taken over and a close, got {other:?}"),
    }

    second.subscribe_ok("twin/t", QoS::AtLeastOnce).await;
    second
        .publish_confirmed("twin/t", QoS::AtLeastOnce, false, "still here")
        .await;
    assert_eq!(text(&second.recv().await), "still here");
}

/// `$share/{group}/{filter}`: each message goes to exactly one member of the
/// group (§4.8.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_to_exactly_one_member() {
    let broker = TestBroker::start_with_env(&[(
        "TRIBUTARY_MQTT__SHARED_SUBSCRIPTION_STRATEGY",
        "round_robin",
    )]);
    let mut members = Vec::new();
    for id in ["share-a", "share-b"] {
        let mut member = Peer::connect(&broker, id).await;
        member
            .subscribe_ok("$share/g/shared/t", QoS::AtLeastOnce)
            .await;
        member.subscribe_ok("shared/fence", QoS::AtLeastOnce).await;
        members.push(member);
    }
    let mut publisher = Peer::connect(&broker, "share-pub").await;
    let count = 20;
    for i in 0..count {
        publisher
            .publish("shared/t", QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    publisher.confirm(QoS::AtLeastOnce, count).await;
    publisher
        .publish_confirmed("shared/fence", QoS::AtLeastOnce, false, "fence")
        .await;

    let mut all = Vec::new();
    for member in &mut members {
        let got: Vec<usize> = member
            .recv_until("shared/fence")
            .await
            .iter()
            .map(|p| {
                assert_eq!(topic(p), "shared/t");
                text(p).parse().expect("numeric payload")
            })
            .collect();
        assert!(
            !got.is_empty(),
            "{}: round robin gave this member nothing",
            member.id
        );
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{}: out of order: {got:?}",
            member.id
        );
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..count).collect::<Vec<_>>(),
        "each message exactly once across the group"
    );
}

/// Payload Format Indicator, Content Type, Response Topic, Correlation Data
/// and User Properties reach the subscriber unaltered, user properties in
/// order ([MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17],
/// [MQTT-3.3.2-18], [MQTT-3.3.2-20]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_are_forwarded_unaltered() {
    let broker = TestBroker::start();
    let mut subscriber = Peer::connect(&broker, "props-sub").await;
    subscriber.subscribe_ok("props/t", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(&broker, "props-pub").await;

    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".to_owned()),
        response_topic: Some("props/reply".to_owned()),
        correlation_data: Some(vec![0, 1, 2, 0xff].into()),
        user_properties: vec![
            ("k".to_owned(), "v1".to_owned()),
            ("other".to_owned(), "x".to_owned()),
            ("k".to_owned(), "v2".to_owned()),
        ],
        ..PublishProperties::default()
    };
    publisher
        .publish_props("props/t", QoS::AtLeastOnce, "{\"a\":1}", sent.clone())
        .await;
    publisher.confirm(QoS::AtLeastOnce, 1).await;

    let publish = subscriber.recv().await;
    assert_eq!(text(&publish), "{\"a\":1}");
    let got = props(&publish);
    assert_eq!(
        got.payload_format_indicator, sent.payload_format_indicator,
        "payload format indicator"
    );
    assert_eq!(got.content_type, sent.content_type, "content type");
    assert_eq!(got.response_topic, sent.response_topic, "response topic");
    assert_eq!(
        got.correlation_data, sent.correlation_data,
        "correlation data"
    );
    assert_eq!(
        got.user_properties, sent.user_properties,
        "user properties (with order)"
    );
}

/// The Subscription Identifier of the matching subscription is attached to
/// the delivered PUBLISH; a subscription without one adds none
/// ([MQTT-3.3.4-3], [MQTT-3.3.4-4], [MQTT-3.3.4-5]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifier_is_attached_to_delivered_messages() {
    let broker = TestBroker::start();
    let mut subscriber = Peer::connect(&broker, "sid-sub").await;
    subscriber
        .subscribe_with_id("sid/a", QoS::AtLeastOnce, 42)
        .await;
    subscriber.subscribe_ok("sid/b", QoS::AtLeastOnce).await;
    subscriber
        .subscribe_with_id("sid/c/+", QoS::AtLeastOnce, 7)
        .await;
    subscriber
        .subscribe_with_id("sid/c/x", QoS::AtLeastOnce, 8)
        .await;
    let mut publisher = Peer::connect(&broker, "sid-pub").await;

    for t in ["sid/a", "sid/b", "sid/c/x", "sid/b"] {
        publisher
            .publish_confirmed(t, QoS::AtLeastOnce, false, t)
            .await;
    }

    let a = subscriber.recv().await;
    assert_eq!(topic(&a), "sid/a");
    assert_eq!(
        props(&a).subscription_identifiers,
        vec![42],
        "identifier of sid/a"
    );
    let b = subscriber.recv().await;
    assert_eq!(topic(&b), "sid/b");
    assert_eq!(
        props(&b).subscription_identifiers,
        Vec::<usize>::new(),
        "sid/b has no identifier"
    );
    // Overlapping subscriptions: one PUBLISH with both identifiers or one
    // PUBLISH per subscription, each with its own ([MQTT-3.3.4-3]).
    let mut ids: Vec<usize> = subscriber
        .recv_until("sid/b")
        .await
        .iter()
        .flat_map(|p| {
            assert_eq!(topic(p), "sid/c/x");
            props(p).subscription_identifiers
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![7, 8],
        "identifiers of the overlapping sid/c/+ and sid/c/x"
    );
}

/// The Message Expiry Interval is forwarded, reduced by the time the message
/// waited in the server ([MQTT-3.3.2-6]); a message without one gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_interval_is_forwarded() {
    let broker = TestBroker::start();
    let mut subscriber = Peer::connect(&broker, "expiry-sub").await;
    subscriber.subscribe_ok("expiry/t", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(&broker, "expiry-pub").await;

    let with_expiry = PublishProperties {
        message_expiry_interval: Some(60),
        ..PublishProperties::default()
    };
    publisher
        .publish_props("expiry/t", QoS::AtLeastOnce, "expiring", with_expiry)
        .await;
    publisher
        .publish_props(
            "expiry/t",
            QoS::AtLeastOnce,
            "forever",
            PublishProperties::default(),
        )
        .await;
    publisher.confirm(QoS::AtLeastOnce, 2).await;

    let expiring = subscriber.recv().await;
    assert_eq!(text(&expiring), "expiring");
    let interval = props(&expiring).message_expiry_interval;
    assert!(
        matches!(interval, Some(s) if (55..=60).contains(&s)),
        "expected a Message Expiry Interval of about 60 s, got {interval:?}"
    );
    let forever = subscriber.recv().await;
    assert_eq!(text(&forever), "forever");
    assert_eq!(
        props(&forever).message_expiry_interval,
        None,
        "no expiry invented"
    );
}

/// A client may replace the topic name by a Topic Alias it set earlier on
/// the same connection (§3.3.2.3.4, [MQTT-3.3.2-12]); subscribers see the
/// full topic name, and no alias since they allowed none ([MQTT-3.1.2-26]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_client_is_resolved() {
    let broker = TestBroker::start();
    let mut subscriber = Peer::connect(&broker, "alias-sub").await;
    subscriber.subscribe_ok("alias/t", QoS::AtLeastOnce).await;
    let (mut publisher, connack) = Peer::connect_with(&broker, "alias-pub", |_| {}).await;
    let alias_max = connack
        .properties
        .as_ref()
        .and_then(|p| p.topic_alias_max)
        .unwrap_or(0);
    assert!(
        alias_max >= 1,
        "CONNACK must announce a Topic Alias Maximum to allow aliases, got {alias_max}"
    );

    let set_alias = PublishProperties {
        topic_alias: Some(1),
        ..PublishProperties::default()
    };
    publisher
        .publish_props("alias/t", QoS::AtLeastOnce, "one", set_alias.clone())
        .await;
    publisher
        .publish_props("", QoS::AtLeastOnce, "two", set_alias.clone())
        .await;
    publisher
        .publish_props("", QoS::AtLeastOnce, "three", set_alias)
        .await;
    publisher.confirm(QoS::AtLeastOnce, 3).await;

    for expected in ["one", "two", "three"] {
        let publish = subscriber.recv().await;
        assert_eq!(text(&publish), expected);
        assert_eq!(
            topic(&publish),
            "alias/t",
            "alias resolved to the topic name it was set for"
        );
        assert_eq!(
            props(&publish).topic_alias,
            None,
            "no alias toward a client that allowed none"
        );
    }
}
