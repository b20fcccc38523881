//! Codec properties for every version: encode → decode round-trips, any
//! strict prefix of a frame decodes to "need more", arbitrary bytes never
//! panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tributary_stomp::codec::{decode, encode, Item, Limits, Version};
use tributary_stomp::{Command, Frame};

const LIMITS: Limits = Limits {
    max_headers: 64,
    max_header_length: 4096,
    max_body_length: 1 << 16,
};

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::V1_0),
        Just(Version::V1_1),
        Just(Version::V1_2)
    ]
}

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(Command::ALL.to_vec())
}

/// Header text representable in `version` for a frame of `command`.
fn text(version: Version, command: Command, name: bool) -> BoxedStrategy<String> {
    let raw = version == Version::V1_0 || !command.escapes_headers();
    if raw {
        // Unescaped headers cannot carry EOLs; names cannot carry colons.
        // 1.2 strips a CR before LF; 1.0/1.1 keep it, but a trailing CR
        // is still ambiguous on the command line only.
        let re = if name {
            "[a-zA-Z0-9_. -]{1,12}"
        } else {
            "[a-zA-Z0-9_.: /\\\\-]{0,16}"
        };
        re.prop_map(String::from).boxed()
    } else if version == Version::V1_1 {
        // 1.1 cannot escape CR.
        "[a-zA-Z0-9_.:\\n\\\\ é-]{1,12}"
            .prop_map(String::from)
            .boxed()
    } else {
        "[a-zA-Z0-9_.:\\r\\n\\\\ é-]{1,12}"
            .prop_map(String::from)
            .boxed()
    }
}

fn frame_for(version: Version) -> impl Strategy<Value = Frame> {
    command().prop_flat_map(move |cmd| {
        let header = (text(version, cmd, true), text(version, cmd, false));
        (
            proptest::collection::vec(header, 0..6),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(move |(headers, body)| {
                let mut f = Frame::new(cmd);
                for (k, v) in headers {
                    if k != "content-length" {
                        f.push(k, v);
                    }
                }
                f.push("content-length", body.len().to_string());
                f.body = Bytes::from(body);
                f
            })
    })
}

fn versioned_frame() -> impl Strategy<Value = (Version, Frame)> {
    version().prop_flat_map(|v| frame_for(v).prop_map(move |f| (v, f)))
}

proptest! {
    #[test]
    fn round_trip((v, frame) in versioned_frame()) {
        let mut buf = BytesMut::new();
        encode(&frame, v, &mut buf);
        // Heart-beats before and after do not disturb the frame.
        let mut wire = BytesMut::from(&b"\n\r\n"[..]);
        wire.extend_from_slice(&buf);
        wire.extend_from_slice(b"\n");
        prop_assert_eq!(decode(&mut wire, v, &LIMITS), Ok(Some(Item::HeartBeat)));
        prop_assert_eq!(decode(&mut wire, v, &LIMITS), Ok(Some(Item::Frame(frame))));
        prop_assert_eq!(decode(&mut wire, v, &LIMITS), Ok(Some(Item::HeartBeat)));
        prop_assert!(wire.is_empty());
    }

    #[test]
    fn strict_prefix_needs_more((v, frame) in versioned_frame(), cut in any::<prop::sample::Index>()) {
        let mut buf = BytesMut::new();
        encode(&frame, v, &mut buf);
        let n = cut.index(buf.len());
        let mut prefix = BytesMut::from(&buf[..n]);
        prop_assert_eq!(decode(&mut prefix, v, &LIMITS), Ok(None));
        prop_assert_eq!(prefix.len(), n, "nothing consumed");
    }

    #[test]
    fn arbitrary_bytes_never_panic(v in version(), bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let small = Limits { max_headers: 4, max_header_length: 32, max_body_length: 64 };
        for _ in 0..64 {
            match decode(&mut buf, v, &small) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn body_without_content_length_ends_at_nul(body in "[a-z ]{0,40}") {
        let wire = format!("SEND\ndestination:a\n\n{body}\0");
        let mut buf = BytesMut::from(wire.as_bytes());
        let Ok(Some(Item::Frame(f))) = decode(&mut buf, Version::V1_2, &LIMITS) else {
            return Err(TestCaseError::fail("frame expected"));
        };
        prop_assert_eq!(&f.body[..], body.as_bytes());
    }
}
