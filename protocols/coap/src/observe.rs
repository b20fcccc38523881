//! RFC 7641 Observe, server side, for any resource: the observers of one
//! peer, their sequence numbers and the flow control of their
//! notifications. Which resource an observer watches is the caller's
//! business (`K`: a topic filter for `/ps`, an object path for LwM2M).
//!
//! ```text
//!  one observer (token)
//!
//!  register ──▶ Idle ──notify NON──▶ Idle            (sent at once)
//!                │ notify CON
//!                ▼
//!             InFlight(mid) ──notify──▶ InFlight, queued (bounded: the
//!                │   │                  oldest queued is dropped, §4.5.2)
//!                │   └ ACK ──▶ send the next queued, or Idle
//!                └ RST or retransmission timeout ──▶ removed (§3.6, §4.5)
//! ```
//!
//! Sequence numbers (§3.4, §4.4) are 24-bit, assigned when a notification
//! is actually sent, so they increase in sending order whatever was queued.
//! The registration response takes the current number, the first
//! notification the next one. A re-registration (same token, §4.1) keeps
//! counting. A notification with a non-2.xx code ends the observation
//! (§3.2).

use std::collections::VecDeque;
use std::time::Instant;

use crate::layer::MessageLayer;
use crate::msg::{opt, Message, MessageType, Token};

/// Observe sequence numbers wrap at 2^24 (3-byte option, §4.4).
pub const SEQ_MODULUS: u32 = 1 << 24;

#[derive(Debug)]
struct Observer<K> {
    token: Token,
    key: K,
    seq: u32,
    in_flight: Option<u16>,
    queue: VecDeque<Message>,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The peer already has the maximum number of observations.
    TooMany,
}

/// What became of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notified {
    /// Sent with this message id.
    Sent(u16),
    /// Queued behind a CON in flight; `dropped` older ones were discarded
    /// to stay within the bound.
    Queued {
        /// Notifications discarded (0 or 1).
        dropped: usize,
    },
    /// No observer with that token.
    Unknown,
}

/// The observers of one peer.
#[derive(Debug)]
pub struct Observers<K> {
    list: Vec<Observer<K>>,
    max_observers: usize,
    max_queue: usize,
}

impl<K: Clone + PartialEq> Observers<K> {
    /// At most `max_observers` observations, each queueing at most
    /// `max_queue` notifications behind an unacknowledged CON.
    pub fn new(max_observers: usize, max_queue: usize) -> Observers<K> {
        Observers {
            list: Vec::new(),
            max_observers,
            max_queue: max_queue.max(1),
        }
    }

    /// Register (or re-register) `token` on `key`; returns the sequence
    /// number for the registration response.
    pub fn register(&mut self, token: Token, key: K) -> Result<u32, RegisterError> {
        if let Some(o) = self.list.iter_mut().find(|o| o.token == token) {
            o.key = key;
            let seq = o.seq;
            o.seq = (o.seq + 1) % SEQ_MODULUS;
            return Ok(seq);
        }
        if self.list.len() >= self.max_observers {
            return Err(RegisterError::TooMany);
        }
        self.list.push(Observer {
            token,
            key,
            seq: 3,
            in_flight: None,
            queue: VecDeque::new(),
        });
        Ok(2)
    }

    /// Remove the observer with `token`; returns what it observed.
    pub fn deregister(&mut self, token: Token, layer: &mut MessageLayer) -> Option<K> {
        let pos = self.list.iter().position(|o| o.token == token)?;
        let o = self.list.swap_remove(pos);
        if let Some(mid) = o.in_flight {
            layer.cancel(mid);
        }
        Some(o.key)
    }

    /// Remove every observer of `key`; returns how many there were.
    pub fn deregister_key(&mut self, key: &K, layer: &mut MessageLayer) -> usize {
        let tokens: Vec<Token> = self
            .list
            .iter()
            .filter(|o| &o.key == key)
            .map(|o| o.token)
            .collect();
        for t in &tokens {
            self.deregister(*t, layer);
        }
        tokens.len()
    }

    /// The observers as (token, key).
    pub fn iter(&self) -> impl Iterator<Item = (Token, &K)> {
        self.list.iter().map(|o| (o.token, &o.key))
    }

    /// Number of observers.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No observers.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// True when some observer watches `key`.
    pub fn watches(&self, key: &K) -> bool {
        self.list.iter().any(|o| &o.key == key)
    }

    /// Notify the observer `token` with `m` (type CON or NON, code, options
    /// and payload; token and Observe are set here).
    pub fn notify(
        &mut self,
        token: Token,
        mut m: Message,
        layer: &mut MessageLayer,
        now: Instant,
    ) -> Notified {
        let max_queue = self.max_queue;
        let Some(o) = self.list.iter_mut().find(|o| o.token == token) else {
            return Notified::Unknown;
        };
        m.token = token;
        if o.in_flight.is_some() {
            let mut dropped = 0;
            if o.queue.len() >= max_queue {
                o.queue.pop_front();
                dropped = 1;
            }
            o.queue.push_back(m);
            return Notified::Queued { dropped };
        }
        Notified::Sent(Self::send(o, m, layer, now))
    }

    fn send(o: &mut Observer<K>, mut m: Message, layer: &mut MessageLayer, now: Instant) -> u16 {
        if m.code.is_response() && m.code.class() == 2 {
            m.set_uint_option(opt::OBSERVE, o.seq);
            o.seq = (o.seq + 1) % SEQ_MODULUS;
        } else {
            m.remove_option(opt::OBSERVE);
        }
        let con = m.mtype == MessageType::Con;
        let mid = layer.send(m, now);
        if con {
            o.in_flight = Some(mid);
        }
        mid
    }

    /// Send queued notifications of `o` until a CON is in flight.
    fn drain(o: &mut Observer<K>, layer: &mut MessageLayer, now: Instant) {
        while o.in_flight.is_none() {
            let Some(m) = o.queue.pop_front() else { break };
            Self::send(o, m, layer, now);
        }
    }

    /// The CON `message_id` was acknowledged: the observer's next queued
    /// notification goes out. Returns true when it was a notification.
    pub fn on_ack(&mut self, message_id: u16, layer: &mut MessageLayer, now: Instant) -> bool {
        let Some(o) = self
            .list
            .iter_mut()
            .find(|o| o.in_flight == Some(message_id))
        else {
            return false;
        };
        o.in_flight = None;
        Self::drain(o, layer, now);
        true
    }

    /// The peer answered a notification with RST, or a CON notification
    /// was never acknowledged: the observer is removed (§3.6, §4.5).
    /// Matched by message id for CONs in flight, else by token (a RST to
    /// a NON notification). Returns the removed (token, key).
    pub fn on_failure(
        &mut self,
        message_id: u16,
        token: Token,
        layer: &mut MessageLayer,
    ) -> Option<(Token, K)> {
        let pos = self
            .list
            .iter()
            .position(|o| o.in_flight == Some(message_id))
            .or_else(|| self.list.iter().position(|o| o.token == token))?;
        let token = self.list[pos].token;
        self.deregister(token, layer).map(|k| (token, k))
    }

    /// End every observation with `m` (a non-2.xx code, e.g. 5.03 on
    /// shutdown), sent as NON; the observers are removed.
    pub fn end_all(&mut self, m: &Message, layer: &mut MessageLayer, now: Instant) -> Vec<K> {
        let mut keys = Vec::new();
        for mut o in std::mem::take(&mut self.list) {
            if let Some(mid) = o.in_flight.take() {
                layer.cancel(mid);
            }
            let mut n = m.clone();
            n.token = o.token;
            n.mtype = MessageType::Non;
            Self::send(&mut o, n, layer, now);
            keys.push(o.key);
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode;
    use crate::layer::{Received, TransmissionParams};
    use crate::msg::Code;

    fn notification(mtype: MessageType) -> Message {
        Message::new(mtype, Code::CONTENT, 0, Token::EMPTY)
    }

    #[test]
    fn one_con_in_flight_and_newest_kept() {
        let now = Instant::now();
        let mut layer = MessageLayer::new(TransmissionParams::default(), 3);
        let mut obs: Observers<&str> = Observers::new(4, 2);
        let t = Token::new(&[9]).expect("token");
        assert_eq!(obs.register(t, "a/#"), Ok(2));
        let Notified::Sent(first) = obs.notify(t, notification(MessageType::Con), &mut layer, now)
        else {
            panic!("sent expected")
        };
        assert_eq!(
            obs.notify(t, notification(MessageType::Con), &mut layer, now),
            Notified::Queued { dropped: 0 }
        );
        assert_eq!(
            obs.notify(t, notification(MessageType::Non), &mut layer, now),
            Notified::Queued { dropped: 0 }
        );
        assert_eq!(
            obs.notify(t, notification(MessageType::Con), &mut layer, now),
            Notified::Queued { dropped: 1 }
        );
        let sent = layer.take_output();
        assert_eq!(sent.len(), 1);
        assert!(obs.on_ack(first, &mut layer, now));
        // The NON then the CON go out; the CON is now in flight.
        let sent: Vec<Message> = layer
            .take_output()
            .iter()
            .map(|b| decode(b).expect("decode"))
            .collect();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].mtype, MessageType::Non);
        assert_eq!(sent[1].mtype, MessageType::Con);
        let seqs: Vec<u32> = sent
            .iter()
            .map(|m| m.uint_option(opt::OBSERVE).expect("observe").expect("uint"))
            .collect();
        assert_eq!(seqs, vec![4, 5]);
        // A RST to the CON removes the observer.
        let rst = crate::codec::encode(&Message::empty(MessageType::Rst, sent[1].message_id))
            .expect("enc");
        let Received::Reset { message_id, token } = layer.receive(&rst, now) else {
            panic!("reset expected")
        };
        assert_eq!(
            obs.on_failure(message_id, token, &mut layer),
            Some((t, "a/#"))
        );
        assert!(obs.is_empty());
    }
}
