//! MQTT 3.1.1 interoperability: `rumqttc`'s v3.1.1 client against the real
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
//! Spec references are to MQTT 3.1.1 (OASIS Standard, 29 October 2014).

use std::collections::VecDeque;
use std::time::Duration;

use interop_tests::TestBroker;
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill,
    MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
};
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
    /// Connect with a clean session and default options.
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

    /// Subscribe and wait for the SUBACK; returns its return codes.
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("event loop gone");
        self.wait_for("SUBACK", |event| match event {
            Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribe and assert the broker granted exactly `qos`.
    async fn subscribe_ok(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe(filter, qos).await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "{}: SUBACK for {filter}",
            self.id
        );
    }

    /// Queue a PUBLISH without waiting for anything.
    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload)
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
            if publish.topic == fence {
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

    /// Send DISCONNECT and wait until the broker closes the connection.
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

fn text(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
}

/// Publish [`ORDERED_COUNT`] messages at `qos` and check the subscriber gets
/// each exactly once, in order, at `qos` ([MQTT-4.6.0-5], [MQTT-4.3.3-2]).
async fn round_trip_in_order(qos: QoS) {
    let broker = TestBroker::start();
    let topic = format!("order/{}", qos as u8);
    let mut subscriber = Peer::connect(&broker, "order-sub").await;
    subscriber.subscribe_ok(&topic, qos).await;
    let mut publisher = Peer::connect(&broker, "order-pub").await;

    for i in 0..ORDERED_COUNT {
        publisher.publish(&topic, qos, false, i.to_string()).await;
    }
    publisher.confirm(qos, ORDERED_COUNT).await;
    publisher
        .publish_confirmed(&topic, qos, false, "fence")
        .await;

    let mut received = Vec::new();
    for _ in 0..ORDERED_COUNT {
        let publish = subscriber.recv().await;
        assert_eq!(publish.topic, topic);
        assert_eq!(publish.qos, qos, "delivered at the granted QoS");
        assert!(
            !publish.retain,
            "a live message is not flagged retained [MQTT-3.3.1-9]"
        );
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
/// subscription QoS [MQTT-3.8.4-6].
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
/// level itself ([MQTT-4.7.1-2], [MQTT-4.7.1-3], §4.7.1.2 non-normative
/// example: "sport/tennis/player1/#" matches "sport/tennis/player1").
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
    for topic in published {
        publisher
            .publish_confirmed(topic, QoS::AtLeastOnce, false, topic)
            .await;
    }

    let got: Vec<String> = single
        .recv_until("w/end/temp")
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(got, ["w/a/temp", "w/b/temp"], "w/+/temp");
    let got: Vec<String> = multi
        .recv_until("w/end/temp")
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(
        got,
        ["w", "w/a/temp", "w/a/b/temp", "w/a/humidity", "w/b/temp"],
        "w/#"
    );
}

/// A retained message reaches a new subscriber with RETAIN set
/// ([MQTT-3.3.1-6], [MQTT-3.3.1-8]); a zero-byte retained PUBLISH removes it
/// ([MQTT-3.3.1-10], [MQTT-3.3.1-11]).
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
        (retained.topic.as_str(), text(&retained).as_str()),
        ("r/t", "hello")
    );
    assert!(
        retained.retain,
        "retained message sent on subscribe must have RETAIN=1 [MQTT-3.3.1-8]"
    );

    publisher
        .publish_confirmed("r/t", QoS::AtLeastOnce, true, Vec::new())
        .await;
    // The clearing PUBLISH is still forwarded to existing subscribers (§3.3.1.3).
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

/// clean_session=0: subscriptions and QoS 1 messages published while the
/// client is offline survive until it reconnects ([MQTT-3.1.2-4],
/// [MQTT-3.1.2-5], [MQTT-3.2.2-2]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_delivers_offline_qos1_messages_after_reconnect() {
    let broker = TestBroker::start();
    let persistent = |o: &mut MqttOptions| {
        o.set_clean_session(false);
    };
    let (mut sleeper, connack) = Peer::connect_with(&broker, "persist-311", persistent).await;
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

    let (mut sleeper, connack) = Peer::connect_with(&broker, "persist-311", persistent).await;
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

    // The subscription itself survived too.
    publisher
        .publish_confirmed("persist/t", QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(text(&sleeper.recv().await), "live");
}

/// A connection lost without DISCONNECT publishes the will ([MQTT-3.1.2-8]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_connection_drops() {
    let broker = TestBroker::start();
    let mut watcher = Peer::connect(&broker, "will-watcher").await;
    watcher.subscribe_ok("will/#", QoS::AtLeastOnce).await;
    let (dying, _) = Peer::connect_with(&broker, "will-dying", |o| {
        o.set_last_will(LastWill::new("will/dying", "gone", QoS::AtLeastOnce, false));
    })
    .await;

    dying.kill().await;

    let will = watcher.recv().await;
    assert_eq!(
        (will.topic.as_str(), text(&will).as_str()),
        ("will/dying", "gone")
    );
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(!will.retain);
}

/// DISCONNECT discards the will ([MQTT-3.1.2-10], [MQTT-3.14.4-3]).
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
        "will published despite DISCONNECT: {before:?}"
    );
}

/// A second CONNECT with the same client id closes the first connection
/// ([MQTT-3.1.4-2]); the newcomer works normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_same_client_id_takes_over() {
    let broker = TestBroker::start();
    let mut first = Peer::connect(&broker, "twin").await;
    let mut second = Peer::connect(&broker, "twin").await;

    let error = first.closed().await;
    assert!(
        matches!(
            error,
            ConnectionError::Io(_) | ConnectionError::MqttState(_)
        ),
        "first connection should be closed by the broker, got {error:?}"
    );

    second.subscribe_ok("twin/t", QoS::AtLeastOnce).await;
    second
        .publish_confirmed("twin/t", QoS::AtLeastOnce, false, "still here")
        .await;
    assert_eq!(text(&second.recv().await), "still here");
}

/// `$share/{group}/{filter}`: each message goes to exactly one member of
/// the group (a 3.1.1 extension; MQTT 5 §4.8.2 semantics).
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
                assert_eq!(p.topic, "shared/t");
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
