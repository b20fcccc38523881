//! Sequence tracking: which messages of one publisher one subscriber saw,
//! and from that lost, duplicated and out-of-order counts.
//!
//! Each (publisher, subscriber) pair keeps a bitset of the sequence numbers
//! received (one bit per message sent, so a million messages cost 128 KiB)
//! and the highest number seen:
//! - a number whose bit is already set is a **duplicate**;
//! - a number below the highest seen is **out of order**;
//! - after the run, every number below the publisher's count whose bit is
//!   clear is **lost**.
//!
//! A *receiver* is what should get each message once: a subscriber, or a
//! whole shared-subscription group. For a group the members' bitsets are
//! merged ([`SeqTracker::merge`]): a bit set twice is a duplicate across
//! members, a bit set nowhere is lost. Out-of-order stays per member
//! (round-robin dispatch makes cross-member order meaningless).
//!
//! Memory is bounded by the caller: a subscriber only records a sequence
//! number below what the publisher has announced as sent, so a corrupt
//! payload cannot make the bitset grow.

/// Received sequence numbers of one publisher at one subscriber.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// Bit `n` set: sequence number `n` was received.
    bits: Vec<u64>,
    /// Messages recorded, duplicates included.
    pub received: u64,
    /// Messages whose number had been received before.
    pub duplicated: u64,
    /// Messages whose number was below the highest seen before them.
    pub out_of_order: u64,
    /// Highest number seen so far.
    max_seen: Option<u32>,
}

impl SeqTracker {
    /// Record one received sequence number.
    pub fn record(&mut self, seq: u32) {
        self.received += 1;
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.bits.len() {
            // Grow geometrically so a steady stream costs amortised O(1).
            let want = (word + 1).max(self.bits.len() * 2);
            self.bits.resize(want, 0);
        }
        if self.bits[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        self.bits[word] |= bit;
        match self.max_seen {
            Some(max) if seq < max => self.out_of_order += 1,
            _ => self.max_seen = Some(seq),
        }
    }

    /// Distinct sequence numbers below `sent` that were received.
    pub fn unique_below(&self, sent: u32) -> u64 {
        let full_words = (sent / 64) as usize;
        let mut count: u64 = self
            .bits
            .iter()
            .take(full_words)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = sent % 64;
        if rest > 0 {
            if let Some(w) = self.bits.get(full_words) {
                count += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        count
    }

    /// Messages of a publisher that sent `sent` messages which never
    /// arrived.
    pub fn lost(&self, sent: u32) -> u64 {
        u64::from(sent) - self.unique_below(sent)
    }

    /// Merge another member's view of the same publisher (shared
    /// subscriptions): numbers both saw count as duplicates.
    pub fn merge(&mut self, other: &SeqTracker) {
        if other.bits.len() > self.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (mine, theirs) in self.bits.iter_mut().zip(&other.bits) {
            self.duplicated += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        self.received += other.received;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.max_seen = match (self.max_seen, other.max_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = SeqTracker::default();
        for seq in 0..1000 {
            t.record(seq);
        }
        assert_eq!((t.duplicated, t.out_of_order, t.lost(1000)), (0, 0, 0));
        assert_eq!(t.unique_below(1000), 1000);
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_counted() {
        let mut t = SeqTracker::default();
        for seq in [0, 1, 3, 2, 3, 5, 5, 70] {
            t.record(seq);
        }
        assert_eq!(t.received, 8);
        assert_eq!(t.duplicated, 2, "3 and 5 twice");
        assert_eq!(t.out_of_order, 1, "2 after 3");
        // Sent 72: missing 4, 6..=69 and 71.
        assert_eq!(t.lost(72), 1 + 64 + 1);
    }

    #[test]
    fn merging_shared_members_finds_cross_duplicates() {
        let mut a = SeqTracker::default();
        let mut b = SeqTracker::default();
        for seq in (0..100).step_by(2) {
            a.record(seq);
        }
        for seq in (1..100).step_by(2) {
            b.record(seq);
        }
        b.record(10); // also delivered to a
        a.merge(&b);
        assert_eq!(a.lost(100), 0);
        assert_eq!(a.duplicated, 1);
        assert_eq!(a.out_of_order, 1, "b saw 10 after 99");
    }
}
