//! The durable store end to end through the core broker: what a broker
//! wrote is what the next one restores; expiry, compaction and corruption.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tributary_core::auth::{AllowAll, RuleAuthorizer};
use tributary_core::cluster::SingleNode;
use tributary_core::storage::{Persistence, Restored, TicketState};
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, CloseKind, Message, QoS, SessionRequest, SubOptions,
};
use tributary_storage::{
    open_fjall, Backend, DurableStore, FjallBackend, SharedStore, StoreOptions,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tributary-store-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn broker(store: Arc<DurableStore>, restored: Restored, now: Instant) -> Broker {
    let b = Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(RuleAuthorizer::allow_all()),
        Box::new(SharedStore(store)),
        Box::new(SingleNode),
    );
    b.restore(restored, now);
    b
}

fn client(id: &str) -> ClientInfo {
    ClientInfo {
        client_id: id.into(),
        username: None,
        peer: None,
        protocol: "mqtt",
    }
}

/// Admit `m` from a publisher client; the ticket its acknowledgement waits for.
fn admit(b: &Broker, m: Message, now: Instant) -> Option<tributary_core::storage::CommitTicket> {
    let mut p = b.publisher(client("pub"));
    b.admit(&mut p, m, now).ticket
}

fn request(id: &str, clean: bool, expiry: u32) -> SessionRequest {
    SessionRequest {
        client: client(id),
        clean_start: clean,
        expiry_interval: expiry,
        will: None,
    }
}

fn msg(topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
    let mut m = Message::new(topic, Bytes::from(payload.to_string()), qos, retain);
    m.publisher = Some("pub".into());
    m
}

fn wait_durable(store: &DurableStore, ticket: Option<tributary_core::storage::CommitTicket>) {
    let (Some(commits), Some(t)) = (store.commits(), ticket) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    assert_eq!(rt.block_on(commits.wait(t)), TicketState::Durable);
}

#[test]
fn offline_session_queue_and_retained_survive_a_reopen() {
    let dir = TempDir::new("roundtrip");
    let now = Instant::now();
    {
        let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("opens");
        assert!(restored.sessions.is_empty());
        let b = broker(store.clone(), restored, now);
        let opened = b.open_session(request("sub", true, 3600), now);
        b.subscribe(&opened.handle, "t/#", SubOptions::at(QoS::ExactlyOnce), now)
            .expect("subscribes");
        b.close_session(
            &opened.handle,
            CloseKind::Normal {
                publish_will: false,
            },
            now,
        );
        // A clean session never reaches the store.
        let clean = b.open_session(request("clean", true, 0), now);
        b.subscribe(&clean.handle, "t/#", SubOptions::at(QoS::AtLeastOnce), now)
            .expect("subscribes");
        let mut last = None;
        for i in 0..10 {
            let mut ticket = None;
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            ticket = tributary_core::storage::later(
                ticket,
                admit(&b, msg("t/a", &format!("m{i}"), qos, false), now),
            );
            assert!(
                ticket.is_some(),
                "queued for a persistent session: ticketed"
            );
            last = ticket;
        }
        let retained = admit(&b, msg("t/r", "kept", QoS::AtMostOnce, true), now);
        let zero = admit(&b, msg("t/q0", "zero", QoS::AtMostOnce, false), now);
        assert!(zero.is_some(), "an offline session's queue is in the store");
        let all = [last, retained, zero].into_iter().flatten().max();
        wait_durable(&store, all);
        store.close();
    }
    let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("reopens");
    assert_eq!(restored.sessions.len(), 1, "only the persistent session");
    let s = &restored.sessions[0];
    assert_eq!(&*s.record.client_id, "sub");
    assert_eq!(s.record.subscriptions.len(), 1);
    // The offline session's whole queue was in the store, QoS 0 included
    // (the retained QoS 0 message reached it too).
    let payloads: Vec<_> = s
        .messages
        .iter()
        .map(|m| m.delivery.message.payload.clone())
        .collect();
    let mut expected: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("m{i}"))).collect();
    expected.push(Bytes::from("kept"));
    expected.push(Bytes::from("zero"));
    assert_eq!(payloads, expected);
    assert_eq!(restored.retained.len(), 1);
    let b = broker(store, restored, now);
    let opened = b.open_session(request("sub", false, 3600), now);
    assert!(opened.session_present);
    let out = opened
        .handle
        .take_for_send(now, 100, 100, b.metrics(), |_| true);
    assert_eq!(out.len(), 12);
    // Subscriptions are active again.
    assert_eq!(
        b.publish(msg("t/b", "after", QoS::AtLeastOnce, false), now),
        1
    );
}

#[test]
fn inflight_state_is_restored_for_resend_with_dup() {
    let dir = TempDir::new("inflight");
    let now = Instant::now();
    {
        let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("opens");
        let b = broker(store.clone(), restored, now);
        let opened = b.open_session(request("sub", true, 3600), now);
        b.subscribe(&opened.handle, "t", SubOptions::at(QoS::ExactlyOnce), now)
            .expect("subscribes");
        b.publish(msg("t", "one", QoS::ExactlyOnce, false), now);
        b.publish(msg("t", "two", QoS::ExactlyOnce, false), now);
        let out = opened
            .handle
            .take_for_send(now, 10, 10, b.metrics(), |_| true);
        assert_eq!(out.len(), 2);
        let first = out[0].packet_id.expect("qos 2 has an id");
        assert!(opened.handle.received(first, true), "PUBREC → PUBREL");
        let ticket = opened.handle.take_ticket();
        assert!(ticket.is_some(), "the PUBREL state is ticketed");
        wait_durable(&store, ticket);
        store.close();
    }
    let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("reopens");
    let b = broker(store, restored, now);
    let opened = b.open_session(request("sub", false, 3600), now);
    assert!(opened.session_present);
    assert_eq!(opened.resend.len(), 2);
    assert!(matches!(
        opened.resend[0],
        tributary_core::Resend::PubRel(_)
    ));
    match &opened.resend[1] {
        tributary_core::Resend::Publish(o) => {
            assert!(o.dup);
            assert_eq!(o.delivery.message.payload, Bytes::from("two"));
        }
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

#[test]
fn expired_sessions_and_messages_are_dropped_on_restore() {
    let dir = TempDir::new("expiry");
    let now = Instant::now();
    {
        let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("opens");
        let b = broker(store.clone(), restored, now);
        for (id, expiry) in [("short", 1), ("long", 3600)] {
            let o = b.open_session(request(id, true, expiry), now);
            b.subscribe(&o.handle, "t", SubOptions::at(QoS::AtLeastOnce), now)
                .expect("subscribes");
            b.close_session(&o.handle, CloseKind::Abnormal, now);
        }
        let mut m = msg("t", "brief", QoS::AtLeastOnce, false);
        m.expires_at = Some(now + Duration::from_secs(1));
        let mut ticket = None;
        ticket = tributary_core::storage::later(ticket, admit(&b, m, now));
        ticket = tributary_core::storage::later(
            ticket,
            admit(&b, msg("t", "stays", QoS::AtLeastOnce, false), now),
        );
        wait_durable(&store, ticket);
        store.close();
    }
    std::thread::sleep(Duration::from_millis(1100));
    let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("reopens");
    let b = broker(store, restored, Instant::now());
    assert_eq!(b.session_count(), 1, "the expired session is gone");
    let o = b.open_session(request("long", false, 3600), Instant::now());
    let out = o
        .handle
        .take_for_send(Instant::now(), 10, 10, b.metrics(), |_| true);
    let payloads: Vec<_> = out
        .iter()
        .map(|o| o.delivery.message.payload.clone())
        .collect();
    assert_eq!(payloads, vec![Bytes::from("stays")]);
}

#[test]
fn acknowledged_messages_are_deleted_and_compaction_reclaims_space() {
    let dir = TempDir::new("compact");
    let now = Instant::now();
    let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("opens");
    let b = broker(store.clone(), restored, now);
    let o = b.open_session(request("sub", true, 3600), now);
    b.subscribe(&o.handle, "t", SubOptions::at(QoS::AtLeastOnce), now)
        .expect("subscribes");
    let payload = "x".repeat(100);
    for round in 0..20 {
        let mut ticket = None;
        for _ in 0..100 {
            ticket = tributary_core::storage::later(
                ticket,
                admit(&b, msg("t", &payload, QoS::AtLeastOnce, false), now),
            );
        }
        wait_durable(&store, ticket);
        for out in o
            .handle
            .take_for_send(now, 1000, 1000, b.metrics(), |_| true)
        {
            assert!(
                o.handle.acknowledge(out.packet_id.expect("id")),
                "round {round}"
            );
        }
    }
    let t = o.handle.take_ticket();
    wait_durable(&store, t);
    store.close();
    drop(b);
    drop(store);
    let mut backend = FjallBackend::open(&dir.0).expect("opens");
    let mut left = 0;
    backend
        .scan(&mut |k, _| {
            left += usize::from(k[0] == b'M' || k[0] == b'F');
            std::ops::ControlFlow::Continue(())
        })
        .expect("scans");
    assert_eq!(left, 0, "no message left after every acknowledgement");
    backend.compact().expect("compacts");
    assert!(backend.disk_bytes() > 0);
}

#[test]
fn a_corrupt_record_fails_the_open_with_its_key() {
    let dir = TempDir::new("corrupt");
    {
        let mut backend = FjallBackend::open(&dir.0).expect("opens");
        backend
            .apply(
                &[tributary_storage::KvOp::Put(
                    b"Sbroken".to_vec(),
                    b"\x00\x01".to_vec(),
                )],
                tributary_storage::SyncMode::Fsync,
            )
            .expect("writes");
    }
    let err = open_fjall(&dir.0, StoreOptions::default()).expect_err("refuses");
    let text = err.to_string();
    assert!(text.contains("corrupt store"), "{text}");
    assert!(text.contains("Sbroken"), "{text}");
}

#[test]
fn an_unreadable_store_directory_fails_the_open() {
    let dir = TempDir::new("unreadable");
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    // The engine's own files replaced by garbage.
    std::fs::write(dir.0.join("version"), b"garbage").expect("write");
    std::fs::create_dir_all(dir.0.join("keyspaces")).expect("mkdir");
    std::fs::create_dir_all(dir.0.join("journals")).expect("mkdir");
    assert!(open_fjall(&dir.0, StoreOptions::default()).is_err());
}

/// Reads of an engine that holds nothing.
struct NoReads;

impl tributary_storage::backend::BackendReader for NoReads {
    fn range(
        &self,
        _prefix: &[u8],
        _from: &[u8],
        _max: usize,
    ) -> Result<tributary_storage::backend::Records, tributary_storage::BackendError> {
        Ok(Vec::new())
    }
}

/// An engine that accepts its first `ok` batches, then fails every write as
/// a full disk would.
struct FullDisk {
    path: PathBuf,
    ok: usize,
}

impl Backend for FullDisk {
    fn apply(
        &mut self,
        _ops: &[tributary_storage::KvOp],
        _sync: tributary_storage::SyncMode,
    ) -> Result<(), tributary_storage::BackendError> {
        if self.ok == 0 {
            return Err(tributary_storage::BackendError::Engine {
                path: self.path.clone(),
                message: "No space left on device (os error 28)".into(),
            });
        }
        self.ok -= 1;
        Ok(())
    }
    fn sync(&mut self) -> Result<(), tributary_storage::BackendError> {
        Ok(())
    }
    fn scan(
        &self,
        _visit: tributary_storage::backend::Visit<'_>,
    ) -> Result<(), tributary_storage::BackendError> {
        Ok(())
    }
    fn reader(&self) -> Arc<dyn tributary_storage::backend::BackendReader> {
        Arc::new(NoReads)
    }
    fn disk_bytes(&self) -> u64 {
        0
    }
    fn compact(&mut self) -> Result<(), tributary_storage::BackendError> {
        Ok(())
    }
    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[test]
fn a_full_disk_fails_the_tickets_and_the_broker_keeps_running() {
    let now = Instant::now();
    let backend = FullDisk {
        path: PathBuf::from("full"),
        ok: 1, // the format marker written at open
    };
    let (store, restored) =
        DurableStore::open(Box::new(backend), StoreOptions::default()).expect("opens");
    let b = broker(store.clone(), restored, now);
    let o = b.open_session(request("sub", true, 3600), now);
    b.subscribe(&o.handle, "t", SubOptions::at(QoS::AtLeastOnce), now)
        .expect("subscribes");
    let mut ticket = None;
    let mut p = b.publisher(client("pub"));
    let a = b.admit(&mut p, msg("t", "x", QoS::AtLeastOnce, false), now);
    ticket = tributary_core::storage::later(ticket, a.ticket);
    assert_eq!(
        a.verdict,
        tributary_core::intake::Verdict::Accepted,
        "routing does not depend on the disk"
    );
    let (Some(commits), Some(t)) = (store.commits(), ticket) else {
        panic!("a persistent delivery is ticketed");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    assert_eq!(rt.block_on(commits.wait(t)), TicketState::Failed);
    assert!(store.stats().failures >= 1);
    // The session is still served from memory.
    assert_eq!(
        o.handle
            .take_for_send(now, 10, 10, b.metrics(), |_| true)
            .len(),
        1
    );
}

#[test]
fn a_pending_delayed_will_survives_a_reopen_and_fires_when_due() {
    let dir = TempDir::new("will");
    let now = Instant::now();
    {
        let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("opens");
        let b = broker(store.clone(), restored, now);
        let watcher = b.open_session(request("watcher", true, 3600), now);
        b.subscribe(
            &watcher.handle,
            "wills/#",
            SubOptions::at(QoS::AtLeastOnce),
            now,
        )
        .expect("subscribes");
        b.close_session(
            &watcher.handle,
            CloseKind::Normal {
                publish_will: false,
            },
            now,
        );
        let mut req = request("dies", true, 3600);
        req.will = Some(tributary_core::Will {
            message: msg("wills/dies", "gone", QoS::AtLeastOnce, false),
            delay_interval: 1,
            message_expiry_interval: None,
        });
        let o = b.open_session(req, now);
        b.close_session(&o.handle, CloseKind::Abnormal, now);
        assert_eq!(
            b.metrics()
                .wills_published
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // A later durable write covers the session record written before it.
        let mut ticket = None;
        ticket = tributary_core::storage::later(
            ticket,
            admit(&b, msg("wills/x", "marker", QoS::AtLeastOnce, false), now),
        );
        wait_durable(&store, ticket);
        store.close();
    }
    let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("reopens");
    let later = Instant::now();
    let b = broker(store.clone(), restored, later);
    b.tick(later + Duration::from_secs(2));
    assert_eq!(
        b.metrics()
            .wills_published
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the delayed will fires after the restart"
    );
    let w = b.open_session(request("watcher", false, 3600), later);
    let take = || {
        w.handle
            .take_for_send(later + Duration::from_secs(2), 10, 10, b.metrics(), |_| {
                true
            })
            .into_iter()
            .map(|o| o.delivery.message.payload.clone())
            .collect::<Vec<_>>()
    };
    let mut got = take();
    // The will reached the offline watcher's queue in the store only: it is
    // read back once its write is committed.
    if let Some(t) = w.handle.refill_ticket() {
        wait_durable(&store, Some(t));
        got.extend(take());
    }
    assert_eq!(got, vec![Bytes::from("marker"), Bytes::from("gone")]);
}

/// Take and acknowledge everything `handle` has, waiting for the store
/// whenever the spilled part of the queue is not committed yet.
fn drain_acked(
    b: &Broker,
    store: &DurableStore,
    handle: &tributary_core::SessionHandle,
    now: Instant,
) -> Vec<Bytes> {
    let mut got = Vec::new();
    loop {
        let out = handle.take_for_send(now, 500, 500, b.metrics(), |_| true);
        if out.is_empty() {
            match handle.refill_ticket() {
                Some(t) => wait_durable(store, Some(t)),
                None => return got,
            }
            continue;
        }
        for o in out {
            if let Some(id) = o.packet_id {
                handle.acknowledge(id);
            }
            got.push(o.delivery.message.payload.clone());
        }
    }
}

#[test]
fn an_offline_queue_lives_in_the_store_and_comes_back_in_order_after_a_reopen() {
    let dir = TempDir::new("spill");
    let now = Instant::now();
    let n = 5_000;
    {
        let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("opens");
        let b = broker(store.clone(), restored, now);
        let o = b.open_session(request("sub", true, 3600), now);
        b.subscribe(&o.handle, "t", SubOptions::at(QoS::AtLeastOnce), now)
            .expect("subscribes");
        b.close_session(&o.handle, CloseKind::Abnormal, now);
        let mut last = None;
        for i in 0..n {
            last = tributary_core::storage::later(
                last,
                admit(&b, msg("t", &format!("m{i}"), QoS::AtLeastOnce, false), now),
            );
        }
        let session = &o.handle.session;
        assert_eq!(session.queue_len(), n);
        assert_eq!(session.resident_len(), 0, "nothing of it in memory");
        assert_eq!(
            session.queue_bytes(),
            (0..n).map(|i| 1 + format!("m{i}").len() as u64).sum()
        );
        wait_durable(&store, last);
        store.close();
    }
    let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("reopens");
    let s = &restored.sessions[0];
    assert_eq!(s.messages.len(), tributary_storage::store::RESTORE_RESIDENT);
    assert_eq!(
        s.spilled.map(|q| q.count),
        Some(n - tributary_storage::store::RESTORE_RESIDENT)
    );
    let b = broker(store.clone(), restored, now);
    let opened = b.open_session(request("sub", false, 3600), now);
    assert_eq!(opened.handle.session.queue_len(), n);
    let got = drain_acked(&b, &store, &opened.handle, now);
    let expected: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(got.len(), n);
    assert!(got == expected, "every message, once, in order");
    assert_eq!(opened.handle.session.queue_len(), 0);
}

#[test]
fn drop_oldest_on_a_spilled_queue_counts_at_once_and_deletes_when_reached() {
    let dir = TempDir::new("spill-drop");
    let now = Instant::now();
    let (store, restored) = open_fjall(&dir.0, StoreOptions::default()).expect("opens");
    let b = Broker::with_seams(
        BrokerConfig {
            queue: tributary_core::session::QueueLimits {
                max_len: 10,
                ..Default::default()
            },
            ..BrokerConfig::default()
        },
        Box::new(AllowAll),
        Box::new(RuleAuthorizer::allow_all()),
        Box::new(SharedStore(store.clone())),
        Box::new(SingleNode),
    );
    b.restore(restored, now);
    let o = b.open_session(request("sub", true, 3600), now);
    b.subscribe(&o.handle, "t", SubOptions::at(QoS::AtLeastOnce), now)
        .expect("subscribes");
    b.close_session(&o.handle, CloseKind::Abnormal, now);
    for i in 0..25 {
        admit(&b, msg("t", &format!("m{i}"), QoS::AtLeastOnce, false), now);
    }
    let session = o.handle.session.clone();
    assert_eq!(session.queue_len(), 10);
    assert_eq!(
        session
            .drop_counts()
            .get(tributary_core::session::DropReason::QueueFull),
        15
    );
    let opened = b.open_session(request("sub", false, 3600), now);
    let got = drain_acked(&b, &store, &opened.handle, now);
    let expected: Vec<Bytes> = (15..25).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(got, expected, "the newest ten, in order");
    assert_eq!(session.queue_len(), 0);
    assert_eq!(session.queue_bytes(), 0);
}
