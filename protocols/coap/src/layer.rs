//! The RFC 7252 message layer for one peer (§4): deduplication, CON
//! retransmission with exponential back-off, ACK/RST matching, pings,
//! message ids and tokens. It knows nothing about resources: the server
//! side (`/ps`, `/mqtt/connection`) and, later, LwM2M's server-initiated
//! requests both sit on top of it.
//!
//! ```text
//!  outgoing CON (§4.2, §4.8.2)
//!
//!   send ──▶ Waiting(timeout = ACK_TIMEOUT × rand[1, ACK_RANDOM_FACTOR])
//!               │ timeout, n < MAX_RETRANSMIT: resend, timeout × 2
//!               │ ACK (empty or piggy-backed) ─▶ done: Acknowledged / Response
//!               │ RST ─▶ done: Reset
//!               └ timeout, n = MAX_RETRANSMIT ─▶ done: Timeout (reported by handle_timeout)
//!
//!  incoming CON/NON (§4.5): (peer, message id) seen within EXCHANGE_LIFETIME
//!  (CON) or NON_LIFETIME (NON)? CON → send the cached ACK/response again,
//!  NON → ignore; the request is processed once.
//! ```
//!
//! Randomness (initial timeouts, first message id, tokens) comes from a
//! seeded generator passed in at construction, and time from the `now`
//! arguments, so tests are deterministic under virtual time.
//!
//! Bounds: the deduplication cache holds at most `max_dedup` exchanges
//! (oldest forgotten first — a duplicate arriving after that is processed
//! again, the lesser evil next to unbounded memory); recently sent NON
//! message ids kept for RST matching are bounded by [`RECENT_NON`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tracing::{debug, trace};

use crate::codec::{decode, encode, DecodeError};
use crate::msg::{Code, Message, MessageType, Token};

/// NON message ids remembered for matching a RST (RFC 7641 §3.6 lets a
/// client reject a NON notification with RST).
pub const RECENT_NON: usize = 64;

/// Transmission parameters (§4.8), from configuration.
#[derive(Debug, Clone, Copy)]
pub struct TransmissionParams {
    /// ACK_TIMEOUT (default 2 s).
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR (default 1.5, at least 1.0).
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT (default 4).
    pub max_retransmit: u32,
    /// EXCHANGE_LIFETIME: how long a CON's message id is remembered (default 247 s).
    pub exchange_lifetime: Duration,
    /// NON_LIFETIME: how long a NON's message id is remembered (default 145 s).
    pub non_lifetime: Duration,
    /// Most exchanges remembered per peer for deduplication.
    pub max_dedup: usize,
}

impl Default for TransmissionParams {
    fn default() -> Self {
        TransmissionParams {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            exchange_lifetime: Duration::from_secs(247),
            non_lifetime: Duration::from_secs(145),
            max_dedup: 256,
        }
    }
}

/// What this endpoint did about a message id it received.
#[derive(Debug, Clone)]
enum Answer {
    /// Seen, nothing sent (yet): a NON, or a CON still being processed.
    None,
    /// An empty ACK was sent; a separate response follows (§5.2.2).
    EmptyAck(Bytes),
    /// The piggy-backed (or NON) response sent.
    Response(Bytes),
}

#[derive(Debug)]
struct Seen {
    expires: Instant,
    answer: Answer,
}

#[derive(Debug)]
struct Outstanding {
    message_id: u16,
    token: Token,
    datagram: Bytes,
    retransmits: u32,
    timeout: Duration,
    due: Instant,
}

/// What a received datagram turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A request seen for the first time; answer it with
    /// [`MessageLayer::respond`] (after [`MessageLayer::accept`] for a
    /// separate response).
    Request(Message),
    /// A response: piggy-backed on the ACK of one of our CONs, or a
    /// separate CON (already acknowledged here) or NON response.
    Response(Message),
    /// One of our CONs was acknowledged by an empty ACK.
    Acknowledged {
        /// Its message id.
        message_id: u16,
        /// Its token.
        token: Token,
    },
    /// The peer rejected one of our CONs or recent NONs with RST.
    Reset {
        /// Its message id.
        message_id: u16,
        /// Its token.
        token: Token,
    },
    /// A duplicate: the cached answer (if any) was sent again.
    Duplicate,
    /// A CoAP ping (empty CON): answered with RST (§4.3).
    Ping,
    /// Nothing to do: a stray ACK/RST, an ignored NON, a rejected message.
    Ignored,
    /// Malformed: a CON was rejected with RST; the caller counts it.
    Malformed(DecodeError),
}

/// A CON that was never acknowledged: MAX_RETRANSMIT exhausted (§4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaveUp {
    /// Its message id.
    pub message_id: u16,
    /// Its token.
    pub token: Token,
}

/// The message layer for one peer.
#[derive(Debug)]
pub struct MessageLayer {
    params: TransmissionParams,
    rng: SmallRng,
    next_id: u16,
    seen: HashMap<u16, Seen>,
    /// Message ids in the order they were first seen, for eviction and expiry.
    seen_order: VecDeque<u16>,
    outstanding: Vec<Outstanding>,
    recent_non: VecDeque<(u16, Token)>,
    output: Vec<Bytes>,
}

impl MessageLayer {
    /// A layer with its own random generator seeded from `seed`.
    pub fn new(params: TransmissionParams, seed: u64) -> MessageLayer {
        let mut rng = SmallRng::seed_from_u64(seed);
        let next_id = rng.gen();
        MessageLayer {
            params,
            rng,
            next_id,
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            outstanding: Vec::new(),
            recent_non: VecDeque::new(),
            output: Vec::new(),
        }
    }

    /// The parameters in force.
    pub fn params(&self) -> &TransmissionParams {
        &self.params
    }

    /// A random number from the layer's generator (tokens, ETags).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A fresh random token of `len` bytes (at most 8).
    pub fn new_token(&mut self, len: usize) -> Token {
        let bytes = self.rng.next_u64().to_be_bytes();
        Token::new(&bytes[..len.min(8)]).unwrap_or(Token::EMPTY)
    }

    /// Datagrams to send, in order.
    pub fn take_output(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.output)
    }

    /// True when datagrams are waiting.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// True when nothing is remembered or outstanding: the peer's state can go.
    pub fn is_idle(&self) -> bool {
        self.seen.is_empty() && self.outstanding.is_empty() && self.output.is_empty()
    }

    /// CONs awaiting acknowledgement.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// When [`MessageLayer::handle_timeout`] is next needed.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retransmit = self.outstanding.iter().map(|o| o.due).min();
        let forget = self
            .seen_order
            .front()
            .and_then(|id| self.seen.get(id))
            .map(|s| s.expires);
        match (retransmit, forget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some(id) = self.seen_order.front().copied() {
            match self.seen.get(&id) {
                Some(s) if s.expires > now => break,
                _ => {
                    self.seen.remove(&id);
                    self.seen_order.pop_front();
                }
            }
        }
    }

    fn remember(&mut self, message_id: u16, con: bool, now: Instant) {
        let lifetime = if con {
            self.params.exchange_lifetime
        } else {
            self.params.non_lifetime
        };
        if self.seen.len() >= self.params.max_dedup.max(1) {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self
            .seen
            .insert(
                message_id,
                Seen {
                    expires: now + lifetime,
                    answer: Answer::None,
                },
            )
            .is_some()
        {
            self.seen_order.retain(|id| *id != message_id);
        }
        self.seen_order.push_back(message_id);
    }

    /// True (and the cached answer re-sent) when `m` repeats a message id
    /// still remembered.
    fn duplicate(&mut self, m: &Message, now: Instant) -> bool {
        let Some(seen) = self.seen.get(&m.message_id) else {
            return false;
        };
        if seen.expires <= now {
            return false;
        }
        if m.mtype == MessageType::Con {
            match &seen.answer {
                Answer::EmptyAck(b) | Answer::Response(b) => self.output.push(b.clone()),
                Answer::None => {}
            }
        }
        true
    }

    fn push(&mut self, m: &Message) -> Option<Bytes> {
        match encode(m) {
            Ok(v) => {
                let b = Bytes::from(v);
                self.output.push(b.clone());
                Some(b)
            }
            Err(e) => {
                debug!(error = %e, "cannot encode CoAP message; dropped");
                None
            }
        }
    }

    fn reset(&mut self, message_id: u16) {
        self.push(&Message::empty(MessageType::Rst, message_id));
    }

    /// Process one datagram from the peer.
    pub fn receive(&mut self, data: &[u8], now: Instant) -> Received {
        self.forget_expired(now);
        let m = match decode(data) {
            Ok(m) => m,
            Err(e) => {
                if let Some(id) = e.reject_id() {
                    self.reset(id);
                }
                return Received::Malformed(e);
            }
        };
        trace!(mtype = ?m.mtype, code = %m.code, mid = m.message_id, token = ?m.token, "received");
        match m.mtype {
            MessageType::Ack | MessageType::Rst => self.receive_reply(m),
            MessageType::Con | MessageType::Non => {
                let con = m.mtype == MessageType::Con;
                if m.code.is_empty() {
                    // Ping (§4.3); an empty NON is a format error, ignored.
                    if con {
                        self.reset(m.message_id);
                        return Received::Ping;
                    }
                    return Received::Ignored;
                }
                if !(m.code.is_request() || m.code.is_response()) {
                    // Reserved classes 1, 6, 7: reject (§4.2, §4.3).
                    if con {
                        self.reset(m.message_id);
                    }
                    return Received::Ignored;
                }
                if self.duplicate(&m, now) {
                    return Received::Duplicate;
                }
                self.remember(m.message_id, con, now);
                if m.code.is_response() {
                    if con {
                        // A separate response: acknowledge it (§5.2.2).
                        self.answer_empty_ack(m.message_id);
                    }
                    return Received::Response(m);
                }
                Received::Request(m)
            }
        }
    }

    fn receive_reply(&mut self, m: Message) -> Received {
        let rst = m.mtype == MessageType::Rst;
        // An ACK carries a response or nothing; a RST is always empty (§4.2, §4.3).
        if (rst && !m.code.is_empty()) || (!rst && m.code.is_request()) {
            return Received::Ignored;
        }
        if let Some(pos) = self
            .outstanding
            .iter()
            .position(|o| o.message_id == m.message_id)
        {
            let o = self.outstanding.swap_remove(pos);
            return if rst {
                Received::Reset {
                    message_id: o.message_id,
                    token: o.token,
                }
            } else if m.code.is_empty() {
                Received::Acknowledged {
                    message_id: o.message_id,
                    token: o.token,
                }
            } else {
                Received::Response(m)
            };
        }
        if rst {
            if let Some(pos) = self
                .recent_non
                .iter()
                .position(|(id, _)| *id == m.message_id)
            {
                if let Some((message_id, token)) = self.recent_non.remove(pos) {
                    return Received::Reset { message_id, token };
                }
            }
        }
        Received::Ignored
    }

    fn answer_empty_ack(&mut self, message_id: u16) {
        if let Some(bytes) = self.push(&Message::empty(MessageType::Ack, message_id)) {
            if let Some(seen) = self.seen.get_mut(&message_id) {
                seen.answer = Answer::EmptyAck(bytes);
            }
        }
    }

    /// Acknowledge a CON request now with an empty ACK; its response will
    /// be sent separately (§5.2.2). No-op for a NON.
    pub fn accept(&mut self, request: &Message) {
        if request.mtype == MessageType::Con {
            self.answer_empty_ack(request.message_id);
        }
    }

    /// Answer `request` with `response` (code, options, payload; type,
    /// message id and token are filled in): piggy-backed on the ACK of a
    /// CON, as a new CON after [`MessageLayer::accept`], as a NON for a
    /// NON (§5.2). The answer is cached for duplicates of the request.
    pub fn respond(&mut self, request: &Message, mut response: Message, now: Instant) {
        response.token = request.token;
        let answered = self.seen.get(&request.message_id).map(|s| &s.answer);
        match (request.mtype, answered) {
            (MessageType::Con, Some(Answer::EmptyAck(_))) => {
                response.mtype = MessageType::Con;
                self.send(response, now);
            }
            (MessageType::Con, _) => {
                response.mtype = MessageType::Ack;
                response.message_id = request.message_id;
                if let Some(bytes) = self.push(&response) {
                    if let Some(seen) = self.seen.get_mut(&request.message_id) {
                        seen.answer = Answer::Response(bytes);
                    }
                }
            }
            _ => {
                response.mtype = MessageType::Non;
                self.send(response, now);
            }
        }
    }

    /// Nothing will be sent for `request` (RFC 7967 No-Response): a CON
    /// still gets its empty ACK.
    pub fn respond_nothing(&mut self, request: &Message) {
        self.accept(request);
    }

    fn next_message_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.outstanding.iter().any(|o| o.message_id == id) {
                return id;
            }
        }
    }

    /// Send a CON or NON message with a fresh message id (returned). A CON
    /// is retransmitted until acknowledged, reset, or given up.
    pub fn send(&mut self, mut m: Message, now: Instant) -> u16 {
        m.message_id = self.next_message_id();
        let Some(datagram) = self.push(&m) else {
            return m.message_id;
        };
        match m.mtype {
            MessageType::Con => {
                let factor = self.params.ack_random_factor.max(1.0);
                let base = self.params.ack_timeout;
                let timeout = if factor > 1.0 {
                    base.mul_f64(self.rng.gen_range(1.0..factor))
                } else {
                    base
                };
                self.outstanding.push(Outstanding {
                    message_id: m.message_id,
                    token: m.token,
                    datagram,
                    retransmits: 0,
                    timeout,
                    due: now + timeout,
                });
            }
            MessageType::Non => {
                if self.recent_non.len() >= RECENT_NON {
                    self.recent_non.pop_front();
                }
                self.recent_non.push_back((m.message_id, m.token));
            }
            _ => {}
        }
        m.message_id
    }

    /// Stop retransmitting the CON `message_id` (its exchange was abandoned).
    pub fn cancel(&mut self, message_id: u16) {
        self.outstanding.retain(|o| o.message_id != message_id);
    }

    /// Retransmit what is due; returns the CONs given up on (§4.2).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<GaveUp> {
        self.forget_expired(now);
        let mut gave_up = Vec::new();
        let max = self.params.max_retransmit;
        let mut i = 0;
        while i < self.outstanding.len() {
            let o = &mut self.outstanding[i];
            if o.due > now {
                i += 1;
                continue;
            }
            if o.retransmits >= max {
                gave_up.push(GaveUp {
                    message_id: o.message_id,
                    token: o.token,
                });
                self.outstanding.swap_remove(i);
                continue;
            }
            o.retransmits += 1;
            o.timeout *= 2;
            o.due = now + o.timeout;
            trace!(
                mid = o.message_id,
                attempt = o.retransmits,
                "retransmitting CON"
            );
            self.output.push(o.datagram.clone());
            i += 1;
        }
        gave_up
    }
}

/// Build a response skeleton with `code` (type, id and token are set by [`MessageLayer::respond`]).
pub fn response(code: Code) -> Message {
    Message::new(MessageType::Ack, code, 0, Token::EMPTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TransmissionParams {
        TransmissionParams::default()
    }

    fn con_get(mid: u16) -> Vec<u8> {
        let mut m = Message::new(
            MessageType::Con,
            Code::GET,
            mid,
            Token::new(&[1]).expect("t"),
        );
        m.set_path("x");
        encode(&m).expect("encode")
    }

    #[test]
    fn duplicate_con_gets_the_same_piggybacked_response() {
        let now = Instant::now();
        let mut l = MessageLayer::new(params(), 1);
        let Received::Request(req) = l.receive(&con_get(7), now) else {
            panic!("request expected")
        };
        l.respond(&req, response(Code::CONTENT), now);
        let first = l.take_output();
        assert_eq!(first.len(), 1);
        assert_eq!(
            l.receive(&con_get(7), now + Duration::from_secs(5)),
            Received::Duplicate
        );
        assert_eq!(l.take_output(), first);
        // After EXCHANGE_LIFETIME the id is new again.
        let later = now + Duration::from_secs(248);
        assert!(matches!(
            l.receive(&con_get(7), later),
            Received::Request(_)
        ));
    }

    #[test]
    fn ping_is_answered_with_rst() {
        let now = Instant::now();
        let mut l = MessageLayer::new(params(), 1);
        assert_eq!(l.receive(&[0x40, 0x00, 0x12, 0x34], now), Received::Ping);
        assert_eq!(
            l.take_output(),
            vec![Bytes::from_static(&[0x70, 0x00, 0x12, 0x34])]
        );
    }

    #[test]
    fn malformed_con_is_reset() {
        let now = Instant::now();
        let mut l = MessageLayer::new(params(), 1);
        let r = l.receive(&[0x49, 0x01, 0x00, 0x05], now);
        assert!(matches!(r, Received::Malformed(_)));
        assert_eq!(
            l.take_output(),
            vec![Bytes::from_static(&[0x70, 0x00, 0x00, 0x05])]
        );
    }
}
