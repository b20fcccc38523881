//! The stamp at the front of every benchmark payload.
//!
//! ```text
//!  0        4            8                       16          payload len
//!  +--------+------------+-----------------------+--- ... ---+
//!  | seq    | publisher  | sent at (ns since the | padding   |
//!  | u32 BE | id u32 BE  | run's epoch) u64 BE   | 0x2A ...  |
//!  +--------+------------+-----------------------+--- ... ---+
//! ```
//!
//! Publishers and subscribers live in one process and share one monotonic
//! epoch (`Instant`), so end-to-end latency is `now - epoch - sent_at` with
//! no clock synchronisation. Sequence numbers start at 0 per publisher and
//! increase by one per message.

/// Bytes taken by the stamp; the smallest payload the tool accepts.
pub const STAMP_LEN: usize = 16;

/// Byte used to pad payloads beyond the stamp.
pub const PADDING: u8 = 0x2A;

/// What a publisher writes at the front of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Sequence number within the publisher, from 0.
    pub seq: u32,
    /// Publisher index within the run.
    pub publisher: u32,
    /// Send time in nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// Write the stamp over the first [`STAMP_LEN`] bytes of `out`, which
    /// must be at least that long (templates guarantee it).
    pub fn write(&self, out: &mut [u8]) {
        if let Some(head) = out.get_mut(..STAMP_LEN) {
            head[0..4].copy_from_slice(&self.seq.to_be_bytes());
            head[4..8].copy_from_slice(&self.publisher.to_be_bytes());
            head[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
        }
    }

    /// Read a stamp from a received payload; `None` when it is too short
    /// (not a benchmark message).
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let head = payload.get(..STAMP_LEN)?;
        let mut seq = [0u8; 4];
        let mut publisher = [0u8; 4];
        let mut sent = [0u8; 8];
        seq.copy_from_slice(&head[0..4]);
        publisher.copy_from_slice(&head[4..8]);
        sent.copy_from_slice(&head[8..16]);
        Some(Stamp {
            seq: u32::from_be_bytes(seq),
            publisher: u32::from_be_bytes(publisher),
            sent_ns: u64::from_be_bytes(sent),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let stamp = Stamp {
            seq: 7,
            publisher: 3,
            sent_ns: 123_456_789,
        };
        let mut buf = [PADDING; 20];
        stamp.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(buf[16..], [PADDING; 4]);
        assert_eq!(Stamp::read(&buf[..15]), None);
    }
}
