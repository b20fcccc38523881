//! Property tests: TLV, SenML JSON, SenML CBOR and LwM2M JSON round trips,
//! and arbitrary bytes never panic any decoder.

use proptest::prelude::*;
use tributary_lwm2m::model::{Path, Value};
use tributary_lwm2m::{senml, tlv};

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        // Binary fractions with short decimal forms: serde_json parses those exactly.
        (-1_000_000i32..1_000_000).prop_map(|k| Value::Float(f64::from(k) / 64.0 + 0.5)),
        any::<bool>().prop_map(Value::Boolean),
        "[a-zA-Z0-9 ._-]{0,40}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Opaque),
        (any::<u16>(), any::<u16>()).prop_map(|(o, i)| Value::Objlnk(o, i)),
    ]
}

/// Distinct resources under /O/I with values.
fn entries() -> impl Strategy<Value = (Path, Vec<(Path, Value)>)> {
    (
        0u16..100,
        0u16..10,
        proptest::collection::btree_map(0u16..2000, value(), 1..8),
    )
        .prop_map(|(o, i, m)| {
            let base = Path(vec![o, i]);
            let e = m.into_iter().map(|(r, v)| (base.child(r), v)).collect();
            (base, e)
        })
}

proptest! {
    #[test]
    fn tlv_round_trip((base, e) in entries()) {
        let raw: Vec<(Path, Vec<u8>)> = e.iter().map(|(p, v)| (p.clone(), v.to_tlv_bytes())).collect();
        let bytes = tlv::encode(&tlv::build(&raw, &base).expect("build"));
        let back = tlv::flatten(&tlv::decode(&bytes).expect("decode"), &base).expect("flatten");
        prop_assert_eq!(back, raw);
    }

    #[test]
    fn senml_json_round_trip((base, e) in entries()) {
        let back = senml::decode_json(&senml::encode_json(&e, &base)).expect("decode");
        prop_assert_eq!(back, e);
    }

    #[test]
    fn senml_cbor_round_trip((base, e) in entries()) {
        let back = senml::decode_cbor(&senml::encode_cbor(&e, &base)).expect("decode");
        prop_assert_eq!(back, e);
    }

    #[test]
    fn lwm2m_json_round_trip((base, e) in entries()) {
        // LwM2M JSON has no opaque type: opaque travels as a base64 string.
        let e: Vec<_> = e.into_iter().filter(|(_, v)| !matches!(v, Value::Opaque(_))).collect();
        prop_assume!(!e.is_empty());
        let back = senml::decode_lwm2m_json(&senml::encode_lwm2m_json(&e, &base)).expect("decode");
        prop_assert_eq!(back, e);
    }

    #[test]
    fn tlv_strict_prefix_is_an_error((base, e) in entries(), cut in any::<prop::sample::Index>()) {
        let raw: Vec<(Path, Vec<u8>)> = e.iter().map(|(p, v)| (p.clone(), v.to_tlv_bytes())).collect();
        let bytes = tlv::encode(&tlv::build(&raw, &base).expect("build"));
        let n = cut.index(bytes.len());
        // A strict prefix either fails or decodes to fewer entries; never panics.
        if let Ok(t) = tlv::decode(&bytes[..n]) {
            let flat = tlv::flatten(&t, &base).unwrap_or_default();
            prop_assert!(flat.len() < raw.len() || n == bytes.len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        tributary_lwm2m::decode_all(&data);
    }
}
