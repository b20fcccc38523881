//! Fuzzes SockJS client payload parsing and framing: arbitrary input never
//! panics, and any messages accepted survive a server array frame and
//! every transport wrapping.
//!
//! Run with `cargo +nightly fuzz run sockjs_frames` from `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_sockjs::frame::{messages, parse_messages, Wrap};
use tributary_sockjs::route;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = route(path);
    }
    for single in [false, true] {
        if let Ok(msgs) = parse_messages(data, single) {
            let frame = messages(&msgs);
            assert_eq!(parse_messages(&frame.as_bytes()[1..], false), Ok(msgs));
            for wrap in [
                Wrap::Xhr,
                Wrap::EventSource,
                Wrap::HtmlFile,
                Wrap::Jsonp("cb".into()),
            ] {
                let _ = wrap.wrap(&frame);
            }
        }
    }
});
