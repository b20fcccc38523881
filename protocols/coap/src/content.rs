//! Content-Format (RFC 7252 §12.3) ⇄ MQTT 5 Content Type and Payload
//! Format Indicator, so a CoAP publisher's format reaches MQTT 5
//! subscribers and an MQTT 5 publisher's reaches CoAP observers.
//!
//! Known numbers map to their media type; text-like ones (text/plain,
//! link-format, JSON, SenML JSON) also set the payload format indicator
//! to 1 (UTF-8). An unknown number is carried as
//! `application/coap-content-format;cf=N` so it survives the round trip.
//! Going back, a message with no content type but indicator 1 is
//! `text/plain;charset=utf-8` (0).

use tributary_core::MessageProperties;

/// (Content-Format, media type, is UTF-8 text).
const TABLE: &[(u16, &str, bool)] = &[
    (0, "text/plain;charset=utf-8", true),
    (40, "application/link-format", true),
    (41, "application/xml", false),
    (42, "application/octet-stream", false),
    (47, "application/exi", false),
    (50, "application/json", true),
    (60, "application/cbor", false),
    (110, "application/senml+json", true),
    (112, "application/senml+cbor", false),
    (11542, "application/vnd.oma.lwm2m+tlv", false),
    (11543, "application/vnd.oma.lwm2m+json", true),
];

const UNKNOWN_PREFIX: &str = "application/coap-content-format;cf=";

/// MQTT properties for a CoAP Content-Format.
pub fn to_properties(content_format: Option<u16>) -> MessageProperties {
    let mut p = MessageProperties::default();
    let Some(cf) = content_format else {
        return p;
    };
    match TABLE.iter().find(|(n, _, _)| *n == cf) {
        Some((_, media, text)) => {
            p.content_type = Some((*media).to_string());
            p.payload_format_indicator = Some(u8::from(*text));
        }
        None => p.content_type = Some(format!("{UNKNOWN_PREFIX}{cf}")),
    }
    p
}

/// The CoAP Content-Format for MQTT properties, if one applies.
pub fn from_properties(p: &MessageProperties) -> Option<u16> {
    if let Some(ct) = &p.content_type {
        let norm: String = ct
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(n) = norm.strip_prefix(UNKNOWN_PREFIX) {
            return n.parse().ok();
        }
        if norm == "text/plain" {
            return Some(0);
        }
        if let Some((n, _, _)) = TABLE.iter().find(|(_, media, _)| *media == norm) {
            return Some(*n);
        }
        return None;
    }
    (p.payload_format_indicator == Some(1)).then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for cf in [0u16, 40, 42, 50, 60, 110, 11542, 9999] {
            assert_eq!(from_properties(&to_properties(Some(cf))), Some(cf), "{cf}");
        }
        assert_eq!(to_properties(Some(50)).payload_format_indicator, Some(1));
        assert_eq!(to_properties(Some(42)).payload_format_indicator, Some(0));
        assert_eq!(from_properties(&MessageProperties::default()), None);
        let text = MessageProperties {
            payload_format_indicator: Some(1),
            ..MessageProperties::default()
        };
        assert_eq!(from_properties(&text), Some(0));
    }
}
