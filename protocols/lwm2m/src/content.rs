//! Content formats (TS Core 1.1 §7.4): a response or notification payload
//! → typed `(path, value)` entries, and entries → a write/create payload
//! in the format the device supports.
//!
//! | format | number | decode | encode |
//! | --- | --- | --- | --- |
//! | text/plain | 0 | one resource, typed by the registry | single values |
//! | opaque | 42 | one resource, bytes | opaque values |
//! | CBOR | 60 | one value | — |
//! | SenML JSON | 110 | yes | yes |
//! | SenML CBOR | 112 | yes | yes |
//! | TLV | 11542 (and 1542) | yes, typed by the registry | yes |
//! | LwM2M JSON | 11543 (and 1543) | yes | yes |
//!
//! A TLV or text value whose resource the registry does not define is
//! guessed: printable UTF-8 → string, 1/2/4/8 bytes → integer, else opaque.

use ciborium::value::Value as Cbor;

use crate::model::{Path, ResourceType, Value};
use crate::objects::Registry;
use crate::{senml, tlv};

/// text/plain.
pub const TEXT: u16 = 0;
/// application/link-format.
pub const LINK: u16 = 40;
/// application/octet-stream.
pub const OPAQUE: u16 = 42;
/// application/cbor.
pub const CBOR: u16 = 60;
/// application/senml+json.
pub const SENML_JSON: u16 = 110;
/// application/senml+cbor.
pub const SENML_CBOR: u16 = 112;
/// application/vnd.oma.lwm2m+tlv.
pub const TLV: u16 = 11542;
/// application/vnd.oma.lwm2m+json.
pub const LWM2M_JSON: u16 = 11543;

/// A payload that cannot be decoded or a write that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Unknown or unsupported Content-Format.
    #[error("unsupported content format {0}")]
    Unsupported(u16),
    /// Malformed TLV.
    #[error(transparent)]
    Tlv(#[from] tlv::TlvError),
    /// Malformed SenML/LwM2M JSON.
    #[error(transparent)]
    Senml(#[from] senml::SenmlError),
    /// A value that does not fit.
    #[error("{0}")]
    Value(String),
}

/// Type a raw value: by the registry, else by guessing.
pub fn typed(raw: &[u8], path: &Path, reg: &Registry, text: bool) -> Result<Value, ContentError> {
    match reg.resource_type(path) {
        Some(t) if text => Value::from_text(raw, t).map_err(|e| ContentError::Value(e.0)),
        Some(t) => Value::from_tlv_bytes(raw, t).map_err(|e| ContentError::Value(e.0)),
        None => Ok(guess(raw, text)),
    }
}

fn guess(raw: &[u8], text: bool) -> Value {
    if let Ok(s) = std::str::from_utf8(raw) {
        if text || (!s.is_empty() && !s.chars().any(char::is_control)) {
            return Value::String(s.to_string());
        }
    }
    if !text && matches!(raw.len(), 1 | 2 | 4 | 8) {
        if let Ok(v) = Value::from_tlv_bytes(raw, ResourceType::Integer) {
            return v;
        }
    }
    Value::Opaque(raw.to_vec())
}

/// Decode a payload answering a request on `req`.
pub fn decode(
    cf: Option<u16>,
    payload: &[u8],
    req: &Path,
    reg: &Registry,
) -> Result<Vec<(Path, Value)>, ContentError> {
    // A missing Content-Format: TLV when it parses, text otherwise (LwM2M 1.0 devices).
    let cf = match cf {
        Some(c) => c,
        None if payload.is_empty() => return Ok(Vec::new()),
        None if tlv::decode(payload).is_ok() && req.depth() < 3 => TLV,
        None => TEXT,
    };
    match cf {
        TEXT | 1541 => Ok(vec![(req.clone(), typed(payload, req, reg, true)?)]),
        OPAQUE => Ok(vec![(req.clone(), Value::Opaque(payload.to_vec()))]),
        CBOR => {
            let v: Cbor = ciborium::de::from_reader(payload)
                .map_err(|e| ContentError::Value(format!("CBOR: {e}")))?;
            let v = match v {
                Cbor::Integer(i) => match i64::try_from(i128::from(i)) {
                    Ok(x) => Value::Integer(x),
                    Err(_) => Value::Unsigned(
                        u64::try_from(i128::from(i))
                            .map_err(|_| ContentError::Value("CBOR integer out of range".into()))?,
                    ),
                },
                Cbor::Float(f) => Value::Float(f),
                Cbor::Bool(b) => Value::Boolean(b),
                Cbor::Text(t) => Value::String(t),
                Cbor::Bytes(b) => Value::Opaque(b),
                _ => return Err(ContentError::Value("CBOR: not a single value".into())),
            };
            Ok(vec![(req.clone(), v)])
        }
        TLV | 1542 => {
            let flat = tlv::flatten(&tlv::decode(payload)?, req)?;
            flat.into_iter()
                .map(|(p, raw)| {
                    let v = typed(&raw, &p, reg, false)?;
                    Ok((p, v))
                })
                .collect()
        }
        SENML_JSON => Ok(senml::decode_json(payload)?),
        SENML_CBOR => Ok(senml::decode_cbor(payload)?),
        LWM2M_JSON | 1543 => Ok(senml::decode_lwm2m_json(payload)?),
        other => Err(ContentError::Unsupported(other)),
    }
}

/// Encode entries written (or created) under `base` in format `cf`.
pub fn encode(cf: u16, entries: &[(Path, Value)], base: &Path) -> Result<Vec<u8>, ContentError> {
    match cf {
        TEXT => match entries {
            [(_, v)] => Ok(v.to_text()),
            _ => Err(ContentError::Value("text/plain carries one value".into())),
        },
        OPAQUE => match entries {
            [(_, Value::Opaque(b))] => Ok(b.clone()),
            _ => Err(ContentError::Value(
                "opaque carries one opaque value".into(),
            )),
        },
        TLV => {
            let raw: Vec<(Path, Vec<u8>)> = entries
                .iter()
                .map(|(p, v)| (p.clone(), v.to_tlv_bytes()))
                .collect();
            Ok(tlv::encode(&tlv::build(&raw, base)?))
        }
        SENML_JSON => Ok(senml::encode_json(entries, base)),
        SENML_CBOR => Ok(senml::encode_cbor(entries, base)),
        LWM2M_JSON => Ok(senml::encode_lwm2m_json(entries, base)),
        other => Err(ContentError::Unsupported(other)),
    }
}

/// The format to write in for a device: TLV for LwM2M 1.0 (mandatory
/// there); for 1.1/1.2, the first of SenML CBOR, SenML JSON, TLV, LwM2M
/// JSON it announced with `ct=` on registration, TLV when it announced none.
pub fn write_format(lwm2m: &str, announced: &[u16]) -> u16 {
    if lwm2m.starts_with("1.0") || lwm2m == "1" {
        return TLV;
    }
    for cf in [SENML_CBOR, SENML_JSON, TLV, LWM2M_JSON] {
        if announced.contains(&cf) {
            return cf;
        }
    }
    TLV
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("path")
    }

    #[test]
    fn text_typed_by_registry_or_guessed() {
        let mut reg = Registry::new();
        reg.add_xml(
            r#"<LWM2M><Object><ObjectID>3</ObjectID><Resources>
            <Item ID="9"><Type>Integer</Type></Item></Resources></Object></LWM2M>"#,
        )
        .expect("xml");
        assert_eq!(
            decode(Some(TEXT), b"87", &p("/3/0/9"), &reg).expect("d"),
            vec![(p("/3/0/9"), Value::Integer(87))]
        );
        assert!(decode(Some(TEXT), b"x", &p("/3/0/9"), &reg).is_err());
        assert_eq!(
            decode(None, b"hello", &p("/3/0/1"), &reg).expect("d"),
            vec![(p("/3/0/1"), Value::String("hello".into()))]
        );
        assert_eq!(
            decode(Some(TLV), &[0xC1, 0x09, 0x57], &p("/3/0"), &reg).expect("d"),
            vec![(p("/3/0/9"), Value::Integer(87))]
        );
        assert!(matches!(
            decode(Some(9999), b"", &p("/3"), &reg),
            Err(ContentError::Unsupported(9999))
        ));
    }

    #[test]
    fn write_formats() {
        assert_eq!(write_format("1.0", &[110]), TLV);
        assert_eq!(write_format("1.1", &[110]), SENML_JSON);
        assert_eq!(write_format("1.2", &[]), TLV);
        assert_eq!(write_format("1.1", &[60, 112, 110]), SENML_CBOR);
    }
}
