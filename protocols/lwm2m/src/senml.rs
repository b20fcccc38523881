//! SenML JSON (110) and SenML CBOR (112) as LwM2M 1.1 uses them (RFC 8428;
//! TS Core 1.1 §7.4.4–5), and the LwM2M 1.0 JSON format (11543; TS Core
//! 1.0 §6.4.4): payload ⇄ `(full path, typed value)` lists.
//!
//! Names are the base name (`bn`, carried forward) plus `n`, resolved to a
//! path. Values: `v` number, `vs` string, `vb` boolean, `vd` opaque
//! (base64url in JSON, a byte string in CBOR), `vlo` object link. Times
//! (`bt`, `t`) are accepted and ignored: the gateway reports current values.
//! CBOR labels: bn −2, bt −3, n 0, t 6, v 2, vs 3, vb 4, vd 8; `vlo` is a
//! text key.

use base64::Engine;
use ciborium::value::Value as Cbor;
use serde_json::{Map, Value as Json};

use crate::model::{parse_objlnk, Path, Value};

/// Malformed SenML or LwM2M JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SenmlError(pub String);

fn err(s: impl Into<String>) -> SenmlError {
    SenmlError(s.into())
}

/// `bn` + `n` as a path. Names are path segments in LwM2M, so a base name
/// without its trailing `/` (`"bn":"/3/0"`, `"n":"1"`) is joined with one,
/// as EMQX does, rather than read as `/3/01`.
fn resolve(base: &str, name: &str) -> Result<Path, SenmlError> {
    let sep =
        if !base.is_empty() && !base.ends_with('/') && !name.is_empty() && !name.starts_with('/') {
            "/"
        } else {
            ""
        };
    let full = format!("{base}{sep}{name}");
    Path::parse(&full).map_err(|_| err(format!("name {full:?} is not an LwM2M path")))
}

/// Decode SenML JSON.
pub fn decode_json(b: &[u8]) -> Result<Vec<(Path, Value)>, SenmlError> {
    let v: Json = serde_json::from_slice(b).map_err(|e| err(format!("SenML JSON: {e}")))?;
    let Json::Array(records) = v else {
        return Err(err("SenML JSON is an array of records"));
    };
    let mut base = String::new();
    let mut out = Vec::new();
    for r in records {
        let Json::Object(r) = r else {
            return Err(err("SenML record is an object"));
        };
        if let Some(bn) = r.get("bn") {
            base = bn
                .as_str()
                .ok_or_else(|| err("bn is a string"))?
                .to_string();
        }
        let name = match r.get("n") {
            Some(n) => n.as_str().ok_or_else(|| err("n is a string"))?,
            None => "",
        };
        let path = resolve(&base, name)?;
        let value = if let Some(v) = r.get("v") {
            number(v)?
        } else if let Some(v) = r.get("vs") {
            Value::String(v.as_str().ok_or_else(|| err("vs is a string"))?.to_string())
        } else if let Some(v) = r.get("vb") {
            Value::Boolean(v.as_bool().ok_or_else(|| err("vb is a boolean"))?)
        } else if let Some(v) = r.get("vd") {
            let s = v.as_str().ok_or_else(|| err("vd is a string"))?;
            Value::Opaque(decode_b64url(s)?)
        } else if let Some(v) = r.get("vlo") {
            parse_objlnk(v.as_str().ok_or_else(|| err("vlo is a string"))?).map_err(|e| err(e.0))?
        } else {
            // A record without a value (e.g. a Read-Composite request): skip.
            continue;
        };
        out.push((path, value));
    }
    Ok(out)
}

fn number(v: &Json) -> Result<Value, SenmlError> {
    let Json::Number(n) = v else {
        return Err(err("v is a number"));
    };
    Ok(if let Some(i) = n.as_i64() {
        Value::Integer(i)
    } else if let Some(u) = n.as_u64() {
        Value::Unsigned(u)
    } else {
        Value::Float(n.as_f64().unwrap_or(0.0))
    })
}

fn decode_b64url(s: &str) -> Result<Vec<u8>, SenmlError> {
    let t = s.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
        .map_err(|_| err("vd is not base64"))
}

/// Names relative to `base`: `bn` = base path with a trailing `/` on the
/// first record, `n` = the rest.
fn split_names(entries: &[(Path, Value)], base: &Path) -> (String, Vec<String>) {
    let bn = if base.depth() == 0 {
        "/".to_string()
    } else {
        format!("{base}/")
    };
    let names = entries
        .iter()
        .map(|(p, _)| {
            if p.starts_with(base) {
                p.0[base.depth()..]
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            } else {
                p.to_string()
            }
        })
        .collect();
    (bn, names)
}

/// Encode SenML JSON with the base name `base`.
pub fn encode_json(entries: &[(Path, Value)], base: &Path) -> Vec<u8> {
    let (bn, names) = split_names(entries, base);
    let mut records = Vec::new();
    for (i, ((p, v), n)) in entries.iter().zip(names).enumerate() {
        let mut r = Map::new();
        if i == 0 {
            r.insert("bn".into(), Json::String(bn.clone()));
        }
        // A name relative to bn; a path outside base is absolute (bn + n must be the path).
        let n = if p.starts_with(base) {
            n
        } else {
            p.to_string()
        };
        r.insert("n".into(), Json::String(n));
        let (k, val) = match v {
            Value::Integer(i) => ("v", Json::from(*i)),
            Value::Unsigned(u) => ("v", Json::from(*u)),
            Value::Float(f) => (
                "v",
                serde_json::Number::from_f64(*f)
                    .map(Json::Number)
                    .unwrap_or(Json::Null),
            ),
            Value::Boolean(b) => ("vb", Json::Bool(*b)),
            Value::String(s) => ("vs", Json::String(s.clone())),
            Value::Opaque(b) => (
                "vd",
                Json::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)),
            ),
            Value::Objlnk(o, i) => ("vlo", Json::String(format!("{o}:{i}"))),
        };
        r.insert(k.into(), val);
        records.push(Json::Object(r));
    }
    serde_json::to_vec(&Json::Array(records)).unwrap_or_default()
}

fn cbor_label(k: &Cbor) -> Option<i64> {
    match k {
        Cbor::Integer(i) => i64::try_from(i128::from(*i)).ok(),
        Cbor::Text(t) => match t.as_str() {
            "bn" => Some(-2),
            "bt" => Some(-3),
            "n" => Some(0),
            "v" => Some(2),
            "vs" => Some(3),
            "vb" => Some(4),
            "t" => Some(6),
            "vd" => Some(8),
            "vlo" => Some(1000),
            _ => None,
        },
        _ => None,
    }
}

/// Decode SenML CBOR.
pub fn decode_cbor(b: &[u8]) -> Result<Vec<(Path, Value)>, SenmlError> {
    let v: Cbor = ciborium::de::from_reader(b).map_err(|e| err(format!("SenML CBOR: {e}")))?;
    let Cbor::Array(records) = v else {
        return Err(err("SenML CBOR is an array of records"));
    };
    let mut base = String::new();
    let mut out = Vec::new();
    for r in records {
        let Cbor::Map(fields) = r else {
            return Err(err("SenML record is a map"));
        };
        let mut name = String::new();
        let mut value = None;
        for (k, v) in fields {
            match (cbor_label(&k), v) {
                (Some(-2), Cbor::Text(t)) => base = t,
                (Some(0), Cbor::Text(t)) => name = t,
                (Some(2), Cbor::Integer(i)) => {
                    let i = i128::from(i);
                    value = Some(match i64::try_from(i) {
                        Ok(x) => Value::Integer(x),
                        Err(_) => {
                            Value::Unsigned(u64::try_from(i).map_err(|_| err("v out of range"))?)
                        }
                    });
                }
                (Some(2), Cbor::Float(f)) => value = Some(Value::Float(f)),
                (Some(3), Cbor::Text(t)) => value = Some(Value::String(t)),
                (Some(4), Cbor::Bool(b)) => value = Some(Value::Boolean(b)),
                (Some(8), Cbor::Bytes(b)) => value = Some(Value::Opaque(b)),
                (Some(1000), Cbor::Text(t)) => {
                    value = Some(parse_objlnk(&t).map_err(|e| err(e.0))?)
                }
                (Some(-2 | 0 | 2 | 3 | 4 | 8 | 1000), _) => {
                    return Err(err("SenML CBOR field of the wrong type"))
                }
                _ => {}
            }
        }
        let path = resolve(&base, &name)?;
        if let Some(v) = value {
            out.push((path, v));
        }
    }
    Ok(out)
}

/// Encode SenML CBOR with the base name `base`.
pub fn encode_cbor(entries: &[(Path, Value)], base: &Path) -> Vec<u8> {
    let (bn, names) = split_names(entries, base);
    let mut records = Vec::new();
    for (i, ((p, v), n)) in entries.iter().zip(names).enumerate() {
        let mut r = Vec::new();
        if i == 0 {
            r.push((Cbor::Integer((-2).into()), Cbor::Text(bn.clone())));
        }
        let n = if p.starts_with(base) {
            n
        } else {
            p.to_string()
        };
        r.push((Cbor::Integer(0.into()), Cbor::Text(n)));
        let (k, val) = match v {
            Value::Integer(i) => (Cbor::Integer(2.into()), Cbor::Integer((*i).into())),
            Value::Unsigned(u) => (Cbor::Integer(2.into()), Cbor::Integer((*u).into())),
            Value::Float(f) => (Cbor::Integer(2.into()), Cbor::Float(*f)),
            Value::Boolean(b) => (Cbor::Integer(4.into()), Cbor::Bool(*b)),
            Value::String(s) => (Cbor::Integer(3.into()), Cbor::Text(s.clone())),
            Value::Opaque(b) => (Cbor::Integer(8.into()), Cbor::Bytes(b.clone())),
            Value::Objlnk(o, i) => (Cbor::Text("vlo".into()), Cbor::Text(format!("{o}:{i}"))),
        };
        r.push((k, val));
        records.push(Cbor::Map(r));
    }
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(&Cbor::Array(records), &mut out);
    out
}

/// Decode LwM2M 1.0 JSON: `{"bn":"/3/0/","e":[{"n":"0","sv":"…"},{"n":"9","v":95}]}`.
pub fn decode_lwm2m_json(b: &[u8]) -> Result<Vec<(Path, Value)>, SenmlError> {
    let v: Json = serde_json::from_slice(b).map_err(|e| err(format!("LwM2M JSON: {e}")))?;
    let Json::Object(o) = v else {
        return Err(err("LwM2M JSON is an object"));
    };
    let base = match o.get("bn") {
        Some(bn) => bn.as_str().ok_or_else(|| err("bn is a string"))?,
        None => "",
    };
    let Some(Json::Array(es)) = o.get("e") else {
        return Err(err("LwM2M JSON has an \"e\" array"));
    };
    let mut out = Vec::new();
    for e in es {
        let Json::Object(e) = e else {
            return Err(err("LwM2M JSON entry is an object"));
        };
        let name = match e.get("n") {
            Some(n) => n.as_str().ok_or_else(|| err("n is a string"))?,
            None => "",
        };
        let path = resolve(base, name)?;
        let value = if let Some(v) = e.get("v") {
            number(v)?
        } else if let Some(v) = e.get("sv") {
            Value::String(v.as_str().ok_or_else(|| err("sv is a string"))?.to_string())
        } else if let Some(v) = e.get("bv") {
            Value::Boolean(v.as_bool().ok_or_else(|| err("bv is a boolean"))?)
        } else if let Some(v) = e.get("ov") {
            parse_objlnk(v.as_str().ok_or_else(|| err("ov is a string"))?).map_err(|e| err(e.0))?
        } else {
            // An entry without a value (only a time, or nothing): skipped.
            continue;
        };
        out.push((path, value));
    }
    Ok(out)
}

/// Encode LwM2M 1.0 JSON with the base name `base` (opaque as a base64 string value).
pub fn encode_lwm2m_json(entries: &[(Path, Value)], base: &Path) -> Vec<u8> {
    let (bn, names) = split_names(entries, base);
    let es: Vec<Json> = entries
        .iter()
        .zip(names)
        .map(|((_, v), n)| {
            let mut r = Map::new();
            r.insert("n".into(), Json::String(n));
            let (k, val) = match v {
                Value::Integer(_) | Value::Unsigned(_) | Value::Float(_) => ("v", v.to_json()),
                Value::Boolean(b) => ("bv", Json::Bool(*b)),
                Value::Objlnk(o, i) => ("ov", Json::String(format!("{o}:{i}"))),
                Value::String(_) | Value::Opaque(_) => ("sv", v.to_json()),
            };
            r.insert(k.into(), val);
            Json::Object(r)
        })
        .collect();
    let mut o = Map::new();
    o.insert("bn".into(), Json::String(bn));
    o.insert("e".into(), Json::Array(es));
    serde_json::to_vec(&Json::Object(o)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("path")
    }

    /// TS Core 1.1 §7.4.4 example shape: Read /3/0 in SenML JSON.
    #[test]
    fn senml_json_spec_example() {
        let b = br#"[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},
                     {"n":"1","vs":"Lightweight M2M Client"},
                     {"n":"6/0","v":1},{"n":"6/1","v":5},
                     {"n":"9","v":100},{"n":"13","v":1367491215},
                     {"n":"17","vd":"AQI"},{"n":"99","vb":true},{"n":"98","vlo":"3:0"}]"#;
        let e = decode_json(b).expect("decode");
        assert_eq!(
            e[0],
            (p("/3/0/0"), Value::String("Open Mobile Alliance".into()))
        );
        assert_eq!(e[3], (p("/3/0/6/1"), Value::Integer(5)));
        assert_eq!(e[6], (p("/3/0/17"), Value::Opaque(vec![1, 2])));
        assert_eq!(e[7], (p("/3/0/99"), Value::Boolean(true)));
        assert_eq!(e[8], (p("/3/0/98"), Value::Objlnk(3, 0)));
        assert_eq!(decode_json(&encode_json(&e, &p("/3/0"))).expect("again"), e);
    }

    #[test]
    fn senml_cbor_round_trip_and_labels() {
        let e = vec![
            (p("/3303/0/5700"), Value::Float(21.5)),
            (p("/3303/0/5701"), Value::String("Cel".into())),
            (p("/3303/0/5750"), Value::Opaque(vec![0, 255])),
        ];
        let b = encode_cbor(&e, &p("/3303/0"));
        // [{-2: "/3303/0/", 0: "5700", 2: 21.5}, …]
        assert_eq!(&b[..3], &[0x83, 0xA3, 0x21]);
        assert_eq!(decode_cbor(&b).expect("decode"), e);
    }

    #[test]
    fn lwm2m_json_spec_example() {
        let b = br#"{"bn":"/3/0/","e":[{"n":"0","sv":"Open Mobile Alliance"},{"n":"9","v":95},{"n":"6/0","v":1},{"n":"20","bv":false}]}"#;
        let e = decode_lwm2m_json(b).expect("decode");
        assert_eq!(e[1], (p("/3/0/9"), Value::Integer(95)));
        assert_eq!(e[2].0, p("/3/0/6/0"));
        assert_eq!(
            decode_lwm2m_json(&encode_lwm2m_json(&e, &p("/3/0"))).expect("again"),
            e
        );
    }

    /// A base name without its trailing slash, entries without a value.
    #[test]
    fn lenient_base_names_and_valueless_entries() {
        let b = br#"{"bn":"/3/0","e":[{"n":"0","sv":"x"},{"n":"15","t":123},{"n":"99"}]}"#;
        assert_eq!(
            decode_lwm2m_json(b).expect("decode"),
            vec![(p("/3/0/0"), Value::String("x".into()))]
        );
        let b = br#"[{"bn":"/3303/0","n":"5700","v":1.5}]"#;
        assert_eq!(
            decode_json(b).expect("decode"),
            vec![(p("/3303/0/5700"), Value::Float(1.5))]
        );
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(decode_json(b"{").is_err());
        assert!(decode_json(br#"[{"n":"x","v":1}]"#).is_err());
        assert!(decode_cbor(&[0xFF]).is_err());
        assert!(decode_lwm2m_json(br#"{"e":[{"n":"1","v":"x"}]}"#).is_err());
        assert!(decode_lwm2m_json(br#"{"e":[{"n":"x","v":1}]}"#).is_err());
    }
}
