//! Acknowledgements that wait for the store: one queue, used by every
//! protocol adapter for whatever its acknowledgement is (MQTT PUBACK /
//! PUBREC / PUBCOMP / PUBREL, MQTT-SN PUBACK / PUBREC, a CoAP response,
//! a STOMP RECEIPT).
//!
//! An acknowledgement is held until the commit ticket of what it
//! acknowledges resolves, and behind every acknowledgement held before it,
//! so acknowledgements leave in the order their messages arrived
//! [MQTT-4.6.0-2..4]. The connection keeps serving other input meanwhile;
//! past [`MAX_HELD_ACKS`] its driver stops reading, so a publisher that
//! outruns the disk waits for it instead of piling up memory.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::storage::{later, CommitTicket, Commits, TicketState};

/// Held acknowledgements past which a connection's reads stop.
pub const MAX_HELD_ACKS: usize = 4096;

/// A connection's acknowledgements waiting for their commits, oldest first.
#[derive(Debug)]
pub struct HeldAcks<T> {
    /// (the ticket to wait for, the ack's own ticket, the ack).
    held: VecDeque<(CommitTicket, Option<CommitTicket>, T)>,
    /// The store's commit progress; `None` without a durable store (then
    /// nothing is ever held).
    commits: Option<Arc<Commits>>,
}

impl<T> HeldAcks<T> {
    /// An empty queue against the store's commit progress.
    pub fn new(commits: Option<Arc<Commits>>) -> HeldAcks<T> {
        HeldAcks {
            held: VecDeque::new(),
            commits,
        }
    }

    /// An acknowledgement that must not leave before `ticket` resolves
    /// (nor before any held one). Returns it with its ticket's state when
    /// it may leave now (a `Failed` state means its write did not make it:
    /// the adapter refuses instead of acknowledging).
    pub fn hold(&mut self, ack: T, ticket: Option<CommitTicket>) -> Option<(T, TicketState)> {
        let wait = later(ticket, self.held.back().map(|(t, _, _)| *t));
        let state = |t: Option<CommitTicket>| match (t, &self.commits) {
            (Some(t), Some(c)) => c.state(t),
            _ => TicketState::Durable,
        };
        match (state(wait), wait) {
            (TicketState::Pending, Some(w)) => {
                self.held.push_back((w, ticket, ack));
                None
            }
            _ => Some((ack, state(ticket))),
        }
    }

    /// The oldest acknowledgement whose commit is done, with its state;
    /// `None` once the oldest still waits (call until `None`).
    pub fn release(&mut self) -> Option<(T, TicketState)> {
        let commits = self.commits.as_ref()?;
        let (wait, _, _) = self.held.front()?;
        if commits.state(*wait) == TicketState::Pending {
            return None;
        }
        let (_, own, ack) = self.held.pop_front()?;
        let state = own.map_or(TicketState::Durable, |t| commits.state(t));
        Some((ack, state))
    }

    /// The ticket the oldest held acknowledgement waits for.
    pub fn oldest(&self) -> Option<CommitTicket> {
        self.held.front().map(|(t, _, _)| *t)
    }

    /// The store's commit progress, to wait on [`HeldAcks::oldest`].
    pub fn commits(&self) -> Option<&Arc<Commits>> {
        self.commits.as_ref()
    }

    /// Held acknowledgements.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// True when so many wait that the connection should stop reading.
    pub fn is_full(&self) -> bool {
        self.held.len() >= MAX_HELD_ACKS
    }

    /// Forget every held acknowledgement (the connection is closing).
    pub fn clear(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_leave_in_order_once_their_commits_are_done() {
        let commits = Commits::new();
        let mut acks = HeldAcks::new(Some(commits.clone()));
        assert_eq!(acks.hold("a", None), Some(("a", TicketState::Durable)));
        assert_eq!(acks.hold("b", Some(CommitTicket(2))), None);
        // Needs no commit of its own, but waits behind "b".
        assert_eq!(acks.hold("c", None), None);
        assert_eq!(acks.oldest(), Some(CommitTicket(2)));
        assert_eq!(acks.release(), None);
        commits.finish(1, true);
        assert_eq!(acks.release(), None);
        commits.finish(2, false);
        assert_eq!(acks.release(), Some(("b", TicketState::Failed)));
        // "c" had no write of its own: only its turn waited.
        assert_eq!(acks.release(), Some(("c", TicketState::Durable)));
        assert!(acks.is_empty());
    }

    #[test]
    fn without_a_store_nothing_waits() {
        let mut acks = HeldAcks::new(None);
        assert_eq!(
            acks.hold(1, Some(CommitTicket(9))),
            Some((1, TicketState::Durable))
        );
        assert!(acks.is_empty());
    }
}
