//! Acknowledgements held for the durable store (DESIGN.md §1): a PUBACK /
//! PUBREC for a message queued to a persistent session leaves only once its
//! commit ticket resolves, in order; a failed commit becomes 0x97.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use support::*;
use tributary_core::auth::{AllowAll, RuleAuthorizer};
use tributary_core::cluster::SingleNode;
use tributary_core::storage::{CommitTicket, Commits, Persistence, StoreOp};
use tributary_core::{Broker, BrokerConfig};
use tributary_mqtt::channel::ChannelConfig;
use tributary_mqtt::reason as rc;

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

fn harness() -> (Harness, Arc<Commits>, Arc<AtomicU64>) {
    let commits = Commits::new();
    let open = Arc::new(AtomicU64::new(1));
    let broker = Broker::with_seams(
        BrokerConfig::default(),
        Box::new(AllowAll),
        Box::new(RuleAuthorizer::allow_all()),
        Box::new(ManualStore {
            commits: commits.clone(),
            open: open.clone(),
            seq: AtomicU64::new(0),
        }),
        Box::new(SingleNode),
    );
    (
        Harness::with_broker(broker, ChannelConfig::default()),
        commits,
        open,
    )
}

/// A persistent subscriber on `t` that went offline.
fn offline_subscriber(h: &mut Harness, qos: u8) {
    let sub = h.connected(connect_v5("sub").clean_start(false).session_expiry(600));
    h.subscribed(sub, 1, &[("t", qos)]);
    h.send(sub, disconnect());
}

#[test]
fn puback_waits_for_the_commit_and_later_acks_queue_behind_it() {
    let (mut h, commits, open) = harness();
    offline_subscriber(&mut h, 1);
    let publ = h.connected(connect_v5("pub"));
    // Batch 1 is open: the commit of the session record is not done either.
    h.send(publ, publish("t", b"kept").qos(1).id(1));
    h.assert_silent(publ);
    assert_eq!(h.channel(publ).held_ticket(), Some(CommitTicket(1)));
    // A publish nobody persistent receives needs no commit, but its PUBACK
    // may not overtake the held one [MQTT-4.6.0-2].
    h.send(publ, publish("other", b"free").qos(1).id(2));
    h.assert_silent(publ);
    open.store(2, Ordering::SeqCst);
    commits.finish(1, true);
    let now = h.now();
    h.channel_mut(publ).release_durable(now);
    h.flush(publ);
    let acks: Vec<(u16, u8)> = h
        .take(publ)
        .into_iter()
        .map(|p| {
            let a = p.puback();
            (a.packet_id, a.reason)
        })
        .collect();
    assert_eq!(
        acks,
        vec![(1, rc::SUCCESS), (2, rc::NO_MATCHING_SUBSCRIBERS)]
    );
    assert_eq!(h.channel(publ).held_ticket(), None);
}

#[test]
fn a_failed_commit_refuses_the_publish_with_quota_exceeded() {
    let (mut h, commits, _open) = harness();
    offline_subscriber(&mut h, 2);
    let publ = h.connected(connect_v5("pub"));
    h.send(publ, publish("t", b"lost").qos(2).id(7));
    h.assert_silent(publ);
    commits.finish(1, false);
    let now = h.now();
    h.channel_mut(publ).release_durable(now);
    h.flush(publ);
    let rec = h.expect_one(publ).pubrec();
    assert_eq!((rec.packet_id, rec.reason), (7, rc::QUOTA_EXCEEDED));
    let m = h.broker().metrics();
    assert_eq!(tributary_core::metrics::Metrics::get(&m.store_refused), 1);
}

#[test]
fn a_failed_commit_closes_a_v3_publisher() {
    let (mut h, commits, _open) = harness();
    offline_subscriber(&mut h, 1);
    let publ = h.connected(connect("pub"));
    h.send(publ, publish("t", b"lost").qos(1).id(3));
    h.assert_silent(publ);
    commits.finish(1, false);
    let now = h.now();
    h.channel_mut(publ).release_durable(now);
    h.flush(publ);
    assert!(
        h.channel(publ).is_closed(),
        "3.x has no negative PUBACK: the client resends"
    );
}
