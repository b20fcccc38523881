//! Responses held for the durable store: the 2.04 to a confirmable QoS 1
//! publish a persistent session must keep leaves only once the store's
//! commit ticket resolves; a failed commit is 5.03.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use support::*;
use tributary_coap::{ChannelConfig, Code, MessageType};
use tributary_core::auth::{AllowAll, RuleAuthorizer};
use tributary_core::cluster::SingleNode;
use tributary_core::connection::Connection;
use tributary_core::metrics::Metrics;
use tributary_core::storage::{CommitTicket, Commits, Persistence, StoreOp};
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, CloseKind, QoS, SessionRequest, SubOptions,
};

/// A store whose commits the test finishes by hand: every op goes into
/// batch `open`.
#[derive(Debug)]
struct ManualStore {
    commits: Arc<Commits>,
    open: Arc<AtomicU64>,
    seq: AtomicU64,
}

impl Persistence for ManualStore {
    fn enabled(&self) -> bool {
        true
    }
    fn submit(&self, _op: StoreOp) -> Option<CommitTicket> {
        Some(CommitTicket(self.open.load(Ordering::SeqCst)))
    }
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn commits(&self) -> Option<Arc<Commits>> {
        Some(self.commits.clone())
    }
}

/// A peer on a durable broker, with a persistent subscriber on `t` that
/// went offline (its queue is what the store must keep).
fn durable_peer() -> (Peer, Arc<Commits>, Arc<AtomicU64>) {
    let commits = Commits::new();
    let open = Arc::new(AtomicU64::new(1));
    let broker = Arc::new(Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(RuleAuthorizer::allow_all()),
        Box::new(ManualStore {
            commits: commits.clone(),
            open: open.clone(),
            seq: AtomicU64::new(0),
        }),
        Box::new(SingleNode),
    ));
    let now = Instant::now();
    let opened = broker.open_session(
        SessionRequest {
            client: ClientInfo {
                client_id: "sub".into(),
                username: None,
                peer: None,
                protocol: "mqtt",
            },
            clean_start: true,
            expiry_interval: 600,
            will: None,
        },
        now,
    );
    broker
        .subscribe(&opened.handle, "t", SubOptions::at(QoS::AtLeastOnce), now)
        .expect("subscribe");
    broker.close_session(
        &opened.handle,
        CloseKind::Normal {
            publish_will: false,
        },
        now,
    );
    (
        Peer::with_broker(broker, ChannelConfig::default()),
        commits,
        open,
    )
}

/// Messages queued for the offline subscriber (its session is the only
/// "mqtt" one).
fn queued_for_sub(p: &Peer) -> usize {
    p.broker
        .queue_depths()
        .iter()
        .find(|(protocol, _, _)| *protocol == "mqtt")
        .map_or(0, |(_, queued, _)| *queued)
}

#[test]
fn changed_waits_for_the_commit() {
    let (mut p, commits, open) = durable_peer();
    // Batch 1 is open: the queued message is not on disk yet.
    let out = p.send(&con(Code::POST, "ps/t?qos=1").mid(1).payload("kept"));
    assert!(out.is_empty(), "no response before the commit: {out:?}");
    let wait = Connection::commit_wait(&p.channel).expect("the channel waits for the store");
    assert_eq!(wait.ticket, CommitTicket(1));
    // The client retransmits: nothing is answered yet, nothing published twice.
    assert!(p
        .send(&con(Code::POST, "ps/t?qos=1").mid(1).payload("kept"))
        .is_empty());
    // Nothing is released while the batch is pending.
    assert!(p.commit().is_empty());

    open.store(2, Ordering::SeqCst);
    commits.finish(1, true);
    let answers: Vec<_> = p
        .commit()
        .into_iter()
        .map(|m| (m.mtype, m.code, m.message_id))
        .collect();
    assert_eq!(answers, vec![(MessageType::Ack, Code::CHANGED, 1)]);
    assert!(Connection::commit_wait(&p.channel).is_none());
    assert_eq!(queued_for_sub(&p), 1);
}

#[test]
fn a_failed_commit_is_service_unavailable() {
    let (mut p, commits, _open) = durable_peer();
    assert!(p
        .send(&con(Code::POST, "ps/t?qos=1").payload("lost"))
        .is_empty());
    commits.finish(1, false);
    let out = p.commit();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(Metrics::get(&p.broker.metrics().store_refused), 1);
}
