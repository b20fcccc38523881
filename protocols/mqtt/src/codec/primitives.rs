//! Wire primitives shared by every packet: the body [`Reader`], the
//! [`Sink`] the encoders write to (a byte buffer, or a [`Counter`] that
//! only measures), and the data representations of MQTT §1.5: two-byte
//! integers, four-byte integers, UTF-8 strings (§1.5.4, no U+0000), binary
//! data (§1.5.6) and variable byte integers (§1.5.5 / 3.1.1 §2.2.3).
//!
//! Encoders are generic over [`Sink`] so that one function both measures
//! and writes a packet: `encoded_len` can never disagree with `encode`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{DecodeError, EncodeError};

/// Largest value a variable byte integer can hold (four bytes).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

const TRUNCATED: DecodeError = DecodeError::Malformed("field runs past the end of the packet");

/// Cursor over the body of one complete packet. Running past the end is a
/// malformed packet: the fixed header already said how long the body is.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    /// Reads from `buf`, which holds exactly one packet body (or one
    /// property block).
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// True when everything has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless the body has been read to its last byte.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "unexpected bytes after the last field",
            ))
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.buf.try_get_u8().map_err(|_| TRUNCATED)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.buf.try_get_u16().map_err(|_| TRUNCATED)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.buf.try_get_u32().map_err(|_| TRUNCATED)
    }

    /// The next `n` bytes, sharing the packet's allocation.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything left, sharing the packet's allocation (PUBLISH payload,
    /// reason code lists).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Variable byte integer (§1.5.5): at most four bytes [MQTT-1.5.5-1].
    /// Non-minimal encodings are accepted.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes [MQTT-1.5.5-1]",
        ))
    }

    /// Binary data (§1.5.6): two-byte length, then the bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 encoded string (§1.5.4): well-formed UTF-8 [MQTT-1.5.4-1]
    /// without U+0000 [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        self.with_str(str::to_owned)
    }

    /// A UTF-8 string as [`string`](Self::string) checks it, shared: what
    /// a PUBLISH topic is kept as, so every copy after this one is a
    /// reference count.
    pub(crate) fn shared_string(&mut self) -> Result<std::sync::Arc<str>, DecodeError> {
        self.with_str(|s| std::sync::Arc::from(s))
    }

    fn with_str<T>(&mut self, make: impl FnOnce(&str) -> T) -> Result<T, DecodeError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw)
            .map_err(|_| DecodeError::Malformed("string is not valid UTF-8 [MQTT-1.5.4-1]"))?;
        if text.contains('\0') {
            return Err(DecodeError::Malformed(
                "string contains U+0000 [MQTT-1.5.4-2]",
            ));
        }
        Ok(make(text))
    }

    /// Packet identifier: non-zero [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]).
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol("packet identifier 0 [MQTT-2.2.1-3]")),
            id => Ok(id),
        }
    }
}

/// Parses the remaining length that follows the first byte of a fixed
/// header. `Ok(None)`: not all of its bytes have arrived yet; otherwise the
/// value and the number of bytes it took.
pub(crate) fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = bytes.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes [MQTT-1.5.5-1]",
    ))
}

/// Where encoders write. Implemented by [`BytesMut`] (writes) and
/// [`Counter`] (only adds up lengths).
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, s: &[u8]);
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, s: &[u8]) {
        BufMut::put_slice(self, s);
    }
}

/// A [`Sink`] that counts the bytes it would have written.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, s: &[u8]) {
        self.0 += s.len();
    }
}

/// Number of bytes the variable byte integer `value` takes (1..=4 for
/// values up to [`VARINT_MAX`]).
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer; fails above [`VARINT_MAX`].
pub(crate) fn put_varint<S: Sink>(s: &mut S, value: usize) -> Result<(), EncodeError> {
    if value > VARINT_MAX as usize {
        return Err(EncodeError::Invalid(
            "variable byte integer above 268435455",
        ));
    }
    let mut rest = value;
    loop {
        // Masked to 7 bits, so the cast cannot truncate.
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        s.put_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// Writes binary data with its two-byte length.
pub(crate) fn put_binary<S: Sink>(s: &mut S, data: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::StringTooLong(data.len()))?;
    s.put_u16(len);
    s.put_slice(data);
    Ok(())
}

/// Writes a UTF-8 string with its two-byte length.
pub(crate) fn put_string<S: Sink>(s: &mut S, text: &str) -> Result<(), EncodeError> {
    put_binary(s, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_varint(value: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, value).expect("in range");
        buf.to_vec()
    }

    /// The table of §1.5.5 (3.1.1 §2.2.3, Table 2.4).
    #[test]
    fn varint_spec_examples() {
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(value, bytes) in cases {
            assert_eq!(encode_varint(value), bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len(), "length of {value}");
            assert_eq!(
                remaining_length(bytes),
                Ok(Some((value, bytes.len()))),
                "decoding {value}"
            );
            let mut r = Reader::new(Bytes::copy_from_slice(bytes));
            assert_eq!(r.varint(), Ok(value as u32));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn varint_limits() {
        assert!(put_varint(&mut Counter(0), 268_435_456).is_err());
        assert!(matches!(
            remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
        // A fifth byte is rejected as soon as the fourth says "more".
        assert!(matches!(
            remaining_length(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(remaining_length(&[0x80, 0x80]), Ok(None));
        assert_eq!(remaining_length(&[]), Ok(None));
        let mut r = Reader::new(Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x01]));
        assert!(matches!(r.varint(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0x80]));
        assert!(matches!(r.varint(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'h', b'i']));
        assert_eq!(r.string().as_deref(), Ok("hi"));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0x28]));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 1, 0]));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        // Encoded surrogate U+D800 is not UTF-8 [MQTT-1.5.4-1].
        let mut r = Reader::new(Bytes::from_static(&[0, 3, 0xED, 0xA0, 0x80]));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a']));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let long = "x".repeat(65_536);
        assert_eq!(
            put_string(&mut Counter(0), &long),
            Err(EncodeError::StringTooLong(65_536))
        );
        let mut c = Counter(0);
        assert_eq!(put_string(&mut c, &long[..65_535]), Ok(()));
        assert_eq!(c.0, 65_537);
    }
}
