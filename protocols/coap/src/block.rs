//! Block-wise transfers (RFC 7959), independent of any resource: the
//! Block1/Block2 option value, an assembler for bodies arriving in blocks
//! (Block1 requests on a server, Block2 responses on a client) and a store
//! of representations being served in blocks (Block2 responses and
//! notifications, §2.4, §3.4).
//!
//! ```text
//!  Assembler (one body, keyed by the caller: URI for Block1 per §2.5)
//!
//!   block num 0 ──▶ Collecting(next = 1) ──num == next──▶ Collecting(next + 1)
//!        ▲               │ M = 0                         │ num ≠ next: 4.08
//!        │               ▼                               │ too large:  4.13
//!        └──────── Complete(body)                        ▼ (assembly dropped)
//! ```
//!
//! Everything is bounded: a body's size (`max_body`), the number of
//! concurrent assemblies and stored representations (oldest evicted), and
//! their lifetime (dropped after `lifetime` without activity).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

/// Largest block number: the option carries 20 bits of NUM (§2.2).
pub const MAX_NUM: u32 = (1 << 20) - 1;

/// A Block1/Block2 option value (§2.2): NUM, M and SZX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockValue {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: the block size is 2^(szx + 4), 16 to 1024 bytes.
    pub szx: u8,
}

impl BlockValue {
    /// A block value; `None` when `num` or `szx` is out of range.
    pub fn new(num: u32, more: bool, szx: u8) -> Option<BlockValue> {
        (num <= MAX_NUM && szx <= 6).then_some(BlockValue { num, more, szx })
    }

    /// The block size in bytes.
    pub fn size(&self) -> usize {
        1 << (self.szx + 4)
    }

    /// Byte offset of this block.
    pub fn offset(&self) -> usize {
        self.num as usize * self.size()
    }

    /// Decode the option value (0–3 bytes); SZX 7 (reserved, BERT over TCP) is refused.
    pub fn decode(bytes: &[u8]) -> Option<BlockValue> {
        if bytes.len() > 3 {
            return None;
        }
        let v = bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        BlockValue::new(v >> 4, v & 0x8 != 0, (v & 0x7) as u8)
    }

    /// Encode the option value in the fewest bytes.
    pub fn encode(&self) -> Vec<u8> {
        crate::msg::encode_uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }
}

/// SZX for a block size (a power of two between 16 and 1024).
pub fn szx_for(size: usize) -> Option<u8> {
    (0..=6u8).find(|s| 1usize << (s + 4) == size)
}

/// Block `num` of size `2^(szx+4)` of `body`: the slice and whether more follow.
/// `None` when the block starts past the end (and the body is not empty).
pub fn slice(body: &Bytes, num: u32, szx: u8) -> Option<(Bytes, BlockValue)> {
    let block = BlockValue::new(num, false, szx)?;
    let start = block.offset();
    if start >= body.len() && !(start == 0 && body.is_empty()) {
        return None;
    }
    let end = (start + block.size()).min(body.len());
    Some((
        body.slice(start..end),
        BlockValue {
            more: end < body.len(),
            ..block
        },
    ))
}

/// Why a block could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// A block other than the next one expected (or a later block with no
    /// assembly in progress): 4.08 Request Entity Incomplete (§2.9.2).
    Incomplete,
    /// The body would exceed the limit: 4.13 with Size1 = the limit (§2.9.3).
    TooLarge,
    /// A non-final block whose payload is not exactly the block size (§2.2).
    BadSize,
}

/// Progress of an assembly after one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// More blocks expected; answer 2.31 Continue (Block1) or ask for the next (Block2).
    NeedMore,
    /// The whole body.
    Complete(Bytes),
}

#[derive(Debug)]
struct Assembly<K> {
    key: K,
    body: BytesMut,
    szx: u8,
    next: u32,
    touched: Instant,
}

/// Bodies arriving in blocks, keyed by `K` (e.g. the request URI, §2.5).
#[derive(Debug)]
pub struct Assembler<K> {
    assemblies: VecDeque<Assembly<K>>,
    max_assemblies: usize,
    max_body: usize,
    lifetime: Duration,
}

impl<K: PartialEq + Clone> Assembler<K> {
    /// An assembler holding at most `max_assemblies` bodies of at most
    /// `max_body` bytes, each forgotten `lifetime` after its last block.
    pub fn new(max_assemblies: usize, max_body: usize, lifetime: Duration) -> Assembler<K> {
        Assembler {
            assemblies: VecDeque::new(),
            max_assemblies: max_assemblies.max(1),
            max_body,
            lifetime,
        }
    }

    /// Largest body accepted.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Feed one block. Block 0 (re)starts the body for `key`; later blocks
    /// must come in order. A block may be smaller than the one before
    /// (the peer may lower SZX mid-transfer, §2.3): the offset decides.
    pub fn feed(
        &mut self,
        key: &K,
        block: BlockValue,
        payload: &[u8],
        size_hint: Option<u32>,
        now: Instant,
    ) -> Result<Assembled, BlockError> {
        self.expire(now);
        if size_hint.is_some_and(|s| s as usize > self.max_body) {
            self.remove(key);
            return Err(BlockError::TooLarge);
        }
        if block.more && payload.len() != block.size() {
            self.remove(key);
            return Err(BlockError::BadSize);
        }
        let pos = self.assemblies.iter().position(|a| &a.key == key);
        let offset = block.offset();
        let index = match (block.num, pos) {
            (0, Some(i)) => {
                let a = &mut self.assemblies[i];
                a.body.clear();
                a.szx = block.szx;
                i
            }
            (0, None) => {
                if self.assemblies.len() >= self.max_assemblies {
                    self.assemblies.pop_front();
                }
                self.assemblies.push_back(Assembly {
                    key: key.clone(),
                    body: BytesMut::new(),
                    szx: block.szx,
                    next: 0,
                    touched: now,
                });
                self.assemblies.len() - 1
            }
            (_, Some(i)) if offset == self.assemblies[i].body.len() => i,
            (_, Some(i)) => {
                // A duplicate of the block just taken is answered again
                // without changing anything (the message layer normally
                // catches those; a NON duplicate may still get here).
                let a = &self.assemblies[i];
                if offset + payload.len() == a.body.len() && block.more {
                    return Ok(Assembled::NeedMore);
                }
                self.assemblies.remove(i);
                return Err(BlockError::Incomplete);
            }
            (_, None) => return Err(BlockError::Incomplete),
        };
        let a = &mut self.assemblies[index];
        if a.body.len() + payload.len() > self.max_body {
            self.assemblies.remove(index);
            return Err(BlockError::TooLarge);
        }
        a.body.extend_from_slice(payload);
        a.szx = block.szx;
        a.next = block.num + 1;
        a.touched = now;
        if block.more {
            return Ok(Assembled::NeedMore);
        }
        let done = self.assemblies.remove(index).map(|a| a.body.freeze());
        Ok(Assembled::Complete(done.unwrap_or_default()))
    }

    /// Forget the assembly for `key`.
    pub fn remove(&mut self, key: &K) {
        self.assemblies.retain(|a| &a.key != key);
    }

    /// Drop assemblies idle for longer than the lifetime.
    pub fn expire(&mut self, now: Instant) {
        let lifetime = self.lifetime;
        self.assemblies
            .retain(|a| now.saturating_duration_since(a.touched) < lifetime);
    }

    /// When the oldest assembly expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.assemblies
            .iter()
            .map(|a| a.touched + self.lifetime)
            .min()
    }

    /// Assemblies in progress.
    pub fn len(&self) -> usize {
        self.assemblies.len()
    }

    /// No assembly in progress.
    pub fn is_empty(&self) -> bool {
        self.assemblies.is_empty()
    }
}

/// A representation being served block by block.
#[derive(Debug, Clone)]
pub struct Representation {
    /// The whole body.
    pub body: Bytes,
    /// Content-Format to repeat on every block.
    pub content_format: Option<u16>,
    /// ETag telling the blocks of one representation apart from another's (§2.4).
    pub etag: Vec<u8>,
    /// Max-Age to repeat, if any.
    pub max_age: Option<u32>,
}

#[derive(Debug)]
struct Stored<K> {
    key: K,
    rep: Representation,
    touched: Instant,
}

/// Representations larger than one block, kept so later blocks can be
/// requested (§2.4; for notifications the client fetches the rest with
/// fresh tokens and no Observe option, §3.4). Keyed by `K` (the request
/// URI); a newer representation under the same key replaces the older.
#[derive(Debug)]
pub struct Block2Store<K> {
    entries: VecDeque<Stored<K>>,
    max_entries: usize,
    lifetime: Duration,
}

impl<K: PartialEq> Block2Store<K> {
    /// At most `max_entries`, each dropped `lifetime` after its last use.
    pub fn new(max_entries: usize, lifetime: Duration) -> Block2Store<K> {
        Block2Store {
            entries: VecDeque::new(),
            max_entries: max_entries.max(1),
            lifetime,
        }
    }

    /// Keep `rep` under `key`, replacing what was there.
    pub fn insert(&mut self, key: K, rep: Representation, now: Instant) {
        self.entries.retain(|e| e.key != key);
        if self.entries.len() >= self.max_entries {
            self.entries.pop_front();
        }
        self.entries.push_back(Stored {
            key,
            rep,
            touched: now,
        });
    }

    /// The representation under `key`, if still held.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<&Representation> {
        self.expire(now);
        let e = self.entries.iter_mut().find(|e| &e.key == key)?;
        e.touched = now;
        Some(&e.rep)
    }

    /// Forget `key` (its last block was served).
    pub fn remove(&mut self, key: &K) {
        self.entries.retain(|e| &e.key != key);
    }

    /// Drop entries idle for longer than the lifetime.
    pub fn expire(&mut self, now: Instant) {
        let lifetime = self.lifetime;
        self.entries
            .retain(|e| now.saturating_duration_since(e.touched) < lifetime);
    }

    /// When the oldest entry expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.touched + self.lifetime).min()
    }

    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_value_examples() {
        // RFC 7959 §2.2: NUM 0, M 0, SZX 6 (1024) encodes as one byte 0x06.
        let b = BlockValue::new(0, false, 6).expect("block");
        assert_eq!(b.encode(), vec![0x06]);
        assert_eq!(b.size(), 1024);
        let b = BlockValue::new(0x12345, true, 2).expect("block");
        assert_eq!(BlockValue::decode(&b.encode()), Some(b));
        assert_eq!(BlockValue::decode(&[0x07]), None); // SZX 7 reserved
        assert_eq!(BlockValue::decode(&[]), BlockValue::new(0, false, 0));
        assert_eq!(szx_for(1024), Some(6));
        assert_eq!(szx_for(100), None);
    }

    #[test]
    fn slicing() {
        let body = Bytes::from(vec![1u8; 40]);
        let (b0, v0) = slice(&body, 0, 0).expect("block 0");
        assert_eq!((b0.len(), v0.more), (16, true));
        let (b2, v2) = slice(&body, 2, 0).expect("block 2");
        assert_eq!((b2.len(), v2.more), (8, false));
        assert!(slice(&body, 3, 0).is_none());
        assert!(slice(&Bytes::new(), 0, 0).is_some());
    }

    #[test]
    fn assembles_in_order_and_refuses_gaps() {
        let now = Instant::now();
        let mut a: Assembler<&str> = Assembler::new(2, 100, Duration::from_secs(10));
        let b = |n, m| BlockValue::new(n, m, 0).expect("block");
        assert_eq!(
            a.feed(&"k", b(0, true), &[0; 16], None, now),
            Ok(Assembled::NeedMore)
        );
        assert_eq!(
            a.feed(&"k", b(2, true), &[0; 16], None, now),
            Err(BlockError::Incomplete)
        );
        assert!(a.is_empty());
        assert_eq!(
            a.feed(&"k", b(0, true), &[1; 16], None, now),
            Ok(Assembled::NeedMore)
        );
        assert_eq!(
            a.feed(&"k", b(1, false), &[2; 3], None, now),
            Ok(Assembled::Complete(Bytes::from(
                [vec![1; 16], vec![2; 3]].concat()
            )))
        );
        assert_eq!(
            a.feed(&"k", b(0, true), &[1; 16], Some(101), now),
            Err(BlockError::TooLarge)
        );
        assert_eq!(
            a.feed(&"k", b(0, true), &[1; 15], None, now),
            Err(BlockError::BadSize)
        );
    }
}
