//! One SockJS session's state, independent of the HTTP transport that
//! carries it (sockjs-protocol "Session URLs", "Protocol and framing",
//! "Handling close").
//!
//! ```text
//!        new ──first receiver──▶ Open ──app closes──▶ Closing ──close frame sent──▶ Closed
//!                                 │ receiver lost mid-request (interrupted)            ▲
//!                                 └────────────────────────────────────────────────────┘
//! ```
//!
//! At most one receiving request is attached at a time; a second one gets
//! `c[2010,"Another connection still open"]`. Once closed, every receiver
//! gets the close frame again until the session is garbage-collected, which
//! happens when no receiver has been attached for the disconnect delay.
//! Outgoing messages wait in a bounded queue while no receiver is attached.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::frame;

/// Close code and reason for "another receiver is attached".
pub const ANOTHER_CONNECTION: (u16, &str) = (2010, "Another connection still open");
/// Close code and reason for a receiving request lost mid-way.
pub const INTERRUPTED: (u16, &str) = (1002, "Connection interrupted");

/// Where the session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Created; the open frame has not been sent.
    New,
    /// Open.
    Open,
    /// The application closed it; the close frame is sent after the queued messages.
    Closing(u16, String),
    /// Closed; receivers get the close frame.
    Closed(u16, String),
}

/// What attaching a receiver gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// Attached: poll frames with [`Session::poll`].
    Attached,
    /// Refused: send this (close) frame and end the request.
    Refused(String),
}

/// The outgoing queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("SockJS session queue full")]
pub struct QueueFull;

/// One session.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    queue: VecDeque<String>,
    max_queued: usize,
    attached: bool,
    /// The open frame has been sent.
    opened: bool,
    /// When the last receiver detached (or the session was created).
    detached_at: Instant,
}

impl Session {
    /// A new session at `now`, buffering up to `max_queued` messages.
    pub fn new(now: Instant, max_queued: usize) -> Session {
        Session {
            phase: Phase::New,
            queue: VecDeque::new(),
            max_queued,
            attached: false,
            opened: false,
            detached_at: now,
        }
    }

    /// Where the session stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// True once the application side is finished (closing or closed).
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing(..) | Phase::Closed(..))
    }

    /// True while a receiver is attached.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// A receiving request arrives.
    pub fn attach(&mut self) -> Attach {
        if let Phase::Closed(code, reason) = &self.phase {
            return Attach::Refused(frame::close(*code, reason));
        }
        if self.attached {
            return Attach::Refused(frame::close(ANOTHER_CONNECTION.0, ANOTHER_CONNECTION.1));
        }
        self.attached = true;
        Attach::Attached
    }

    /// The receiving request ended at `now`; `interrupted` when the client
    /// went away before the response was complete (the session is then
    /// closed with 1002).
    pub fn detach(&mut self, now: Instant, interrupted: bool) {
        self.attached = false;
        self.detached_at = now;
        if interrupted && !matches!(self.phase, Phase::Closed(..)) {
            self.phase = Phase::Closed(INTERRUPTED.0, INTERRUPTED.1.to_string());
            self.queue.clear();
        }
    }

    /// The next frame for the attached receiver, if any: the open frame,
    /// then all queued messages as one array frame, then the close frame.
    pub fn poll(&mut self) -> Option<String> {
        if !self.opened {
            // Even a session the application closed at once opens first.
            self.opened = true;
            if self.phase == Phase::New {
                self.phase = Phase::Open;
            }
            return Some(frame::OPEN.to_string());
        }
        match &self.phase {
            Phase::New => None,
            _ if !self.queue.is_empty() => {
                let msgs: Vec<String> = self.queue.drain(..).collect();
                Some(frame::messages(&msgs))
            }
            Phase::Open => None,
            Phase::Closing(code, reason) | Phase::Closed(code, reason) => {
                let f = frame::close(*code, reason);
                self.phase = Phase::Closed(*code, reason.clone());
                Some(f)
            }
        }
    }

    /// True when [`Session::poll`] would return a frame.
    pub fn has_frame(&self) -> bool {
        !self.opened || !matches!(self.phase, Phase::Open) || !self.queue.is_empty()
    }

    /// The application sends a message.
    pub fn send(&mut self, message: String) -> Result<(), QueueFull> {
        if self.is_closing() {
            return Ok(());
        }
        if self.queue.len() >= self.max_queued {
            return Err(QueueFull);
        }
        self.queue.push_back(message);
        Ok(())
    }

    /// The application closes the session.
    pub fn close(&mut self, code: u16, reason: &str) {
        if !self.is_closing() {
            self.phase = Phase::Closing(code, reason.to_string());
        }
    }

    /// True when no receiver has been attached for `delay`: the session
    /// can be forgotten.
    pub fn expired(&self, now: Instant, delay: Duration) -> bool {
        !self.attached && now.saturating_duration_since(self.detached_at) >= delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_messages_close() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, 10);
        assert_eq!(s.attach(), Attach::Attached);
        assert_eq!(s.poll().as_deref(), Some("o"));
        assert_eq!(s.poll(), None);
        s.send("a".into()).expect("room");
        s.send("b".into()).expect("room");
        assert_eq!(s.poll().as_deref(), Some("a[\"a\",\"b\"]"));
        // A second receiver is refused while one is attached.
        assert_eq!(
            s.attach(),
            Attach::Refused("c[2010,\"Another connection still open\"]".into())
        );
        s.close(3000, "Go away!");
        assert_eq!(s.poll().as_deref(), Some("c[3000,\"Go away!\"]"));
        s.detach(t0, false);
        assert_eq!(s.attach(), Attach::Refused("c[3000,\"Go away!\"]".into()));
    }

    #[test]
    fn closed_at_once_still_opens_first() {
        let mut s = Session::new(Instant::now(), 10);
        s.close(3000, "Go away!");
        assert_eq!(s.attach(), Attach::Attached);
        assert_eq!(s.poll().as_deref(), Some("o"));
        assert_eq!(s.poll().as_deref(), Some("c[3000,\"Go away!\"]"));
        assert_eq!(s.poll().as_deref(), Some("c[3000,\"Go away!\"]"));
    }

    #[test]
    fn interrupted_and_expiry() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, 1);
        assert_eq!(s.attach(), Attach::Attached);
        assert_eq!(s.poll().as_deref(), Some("o"));
        s.send("x".into()).expect("room");
        assert_eq!(s.send("y".into()), Err(QueueFull));
        assert!(!s.expired(t0 + Duration::from_secs(60), Duration::from_secs(5)));
        s.detach(t0, true);
        assert_eq!(
            s.attach(),
            Attach::Refused("c[1002,\"Connection interrupted\"]".into())
        );
        assert!(!s.expired(t0 + Duration::from_secs(4), Duration::from_secs(5)));
        assert!(s.expired(t0 + Duration::from_secs(5), Duration::from_secs(5)));
    }
}
