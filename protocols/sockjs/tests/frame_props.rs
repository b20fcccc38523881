//! SockJS framing properties: every string survives quoting (the client
//! decodes what we encode), array frames parse back, arbitrary payloads
//! never panic, and encoded frames hold none of the characters the
//! protocol says browsers mangle.

use proptest::prelude::*;
use tributary_sockjs::frame::{messages, parse_messages, quote};

proptest! {
    #[test]
    fn quoted_strings_decode_back(s in any::<String>()) {
        let q = quote(&s);
        let back: String = serde_json::from_str(&q).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, s);
    }

    #[test]
    fn array_frames_parse_back(msgs in proptest::collection::vec(any::<String>(), 0..5)) {
        let frame = messages(&msgs);
        prop_assert!(frame.starts_with("a["));
        prop_assert_eq!(parse_messages(&frame.as_bytes()[1..], false), Ok(msgs));
    }

    #[test]
    fn escapable_characters_never_appear_raw(s in any::<String>()) {
        let q = quote(&s);
        for c in q.chars() {
            let u = c as u32;
            prop_assert!(!(u < 0x20 || (0x200c..=0x200f).contains(&u) || (0x2028..=0x202f).contains(&u)
                || (0x2060..=0x206f).contains(&u) || (0xfff0..=0xffff).contains(&u)), "{:?}", c);
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), single in any::<bool>()) {
        let _ = parse_messages(&bytes, single);
    }
}
