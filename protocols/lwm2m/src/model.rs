//! The LwM2M data model as plain data (TS Core §6): paths
//! (`/object/instance/resource/resource-instance`), resource data types
//! and typed values, and their JSON form in EMQX's payloads.
//!
//! A value decoded from TLV or text/plain is raw bytes until the object
//! registry says what type the resource has ([`Value::from_bytes`]); SenML
//! and LwM2M JSON carry their own types.

use std::fmt;

use base64::Engine;
use serde_json::Value as Json;

/// A path of 0 to 4 ids: `/`, `/3`, `/3/0`, `/3/0/1`, `/3/0/7/1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Path(pub Vec<u16>);

/// A path that is not `/`-separated ids of at most 4 levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LwM2M path {0:?}")]
pub struct BadPath(pub String);

impl Path {
    /// Parse `"/3/0/1"`, `"3/0/1"` or `"/3/0/"`.
    pub fn parse(s: &str) -> Result<Path, BadPath> {
        let mut ids = Vec::new();
        for seg in s.trim().split('/').filter(|x| !x.is_empty()) {
            let id: u16 = seg.parse().map_err(|_| BadPath(s.to_string()))?;
            ids.push(id);
        }
        if ids.len() > 4 {
            return Err(BadPath(s.to_string()));
        }
        Ok(Path(ids))
    }

    /// Number of levels (0 = root).
    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// The ids.
    pub fn ids(&self) -> &[u16] {
        &self.0
    }

    /// This path with `id` appended.
    pub fn child(&self, id: u16) -> Path {
        let mut v = self.0.clone();
        v.push(id);
        Path(v)
    }

    /// The first `n` levels.
    pub fn prefix(&self, n: usize) -> Path {
        Path(self.0[..n.min(self.0.len())].to_vec())
    }

    /// True when `self` starts with every id of `other`.
    pub fn starts_with(&self, other: &Path) -> bool {
        self.0.starts_with(&other.0)
    }

    /// The object id, when the path has one.
    pub fn object(&self) -> Option<u16> {
        self.0.first().copied()
    }

    /// The resource id, when the path reaches a resource.
    pub fn resource(&self) -> Option<u16> {
        self.0.get(2).copied()
    }

    /// `basePath` and `path` of a command joined: `path` is taken as is
    /// when it already starts with `base`, appended to it otherwise.
    pub fn join(base: &Path, path: &Path) -> Path {
        if path.starts_with(base) && path.depth() > base.depth() {
            return path.clone();
        }
        let mut v = base.0.clone();
        v.extend_from_slice(&path.0);
        Path(v)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for id in &self.0 {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

/// Resource data types (TS Core 1.1 Appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// UTF-8 string.
    String,
    /// Signed integer (1, 2, 4 or 8 bytes in TLV).
    Integer,
    /// Unsigned integer (1.1).
    UnsignedInteger,
    /// IEEE 754 float (4 or 8 bytes).
    Float,
    /// Boolean (one byte 0 or 1).
    Boolean,
    /// Opaque bytes (base64 in JSON).
    Opaque,
    /// Seconds since the epoch, an integer.
    Time,
    /// Object link `object:instance`.
    Objlnk,
    /// CoRE link (1.1), carried as a string.
    Corelnk,
    /// Executable resources have no value.
    None,
}

impl ResourceType {
    /// From the `<Type>` of an object definition or the `type` of a command
    /// (case-insensitive; `Unsigned Integer` with or without the space).
    pub fn parse(s: &str) -> Option<ResourceType> {
        let norm: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Some(match norm.as_str() {
            "string" => ResourceType::String,
            "integer" | "int" => ResourceType::Integer,
            "unsignedinteger" | "unsigned" => ResourceType::UnsignedInteger,
            "float" => ResourceType::Float,
            "boolean" | "bool" => ResourceType::Boolean,
            "opaque" => ResourceType::Opaque,
            "time" => ResourceType::Time,
            "objlnk" => ResourceType::Objlnk,
            "corelnk" => ResourceType::Corelnk,
            "" | "none" => ResourceType::None,
            _ => return None,
        })
    }
}

/// A typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Signed integer (also Time).
    Integer(i64),
    /// Unsigned integer.
    Unsigned(u64),
    /// Float.
    Float(f64),
    /// Boolean.
    Boolean(bool),
    /// String (also Corelnk).
    String(String),
    /// Opaque bytes.
    Opaque(Vec<u8>),
    /// Object link.
    Objlnk(u16, u16),
}

/// A value that does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

fn bad(s: impl Into<String>) -> BadValue {
    BadValue(s.into())
}

impl Value {
    /// Decode the binary (TLV) form of a value of type `t` (TS Core 1.0 §6.4.3).
    pub fn from_tlv_bytes(b: &[u8], t: ResourceType) -> Result<Value, BadValue> {
        Ok(match t {
            ResourceType::Integer | ResourceType::Time => Value::Integer(match b.len() {
                1 => i64::from(b[0] as i8),
                2 => i64::from(i16::from_be_bytes([b[0], b[1]])),
                4 => i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                8 => i64::from_be_bytes(arr8(b)),
                n => return Err(bad(format!("integer of {n} bytes"))),
            }),
            ResourceType::UnsignedInteger => Value::Unsigned(match b.len() {
                1 | 2 | 4 | 8 => b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)),
                n => return Err(bad(format!("unsigned integer of {n} bytes"))),
            }),
            ResourceType::Float => Value::Float(match b.len() {
                4 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                8 => f64::from_be_bytes(arr8(b)),
                n => return Err(bad(format!("float of {n} bytes"))),
            }),
            ResourceType::Boolean => match b {
                [0] => Value::Boolean(false),
                [1] => Value::Boolean(true),
                _ => return Err(bad("boolean is one byte 0 or 1")),
            },
            ResourceType::Objlnk => match b {
                [a, b2, c, d] => {
                    Value::Objlnk(u16::from_be_bytes([*a, *b2]), u16::from_be_bytes([*c, *d]))
                }
                _ => return Err(bad("objlnk is 4 bytes")),
            },
            ResourceType::Opaque | ResourceType::None => Value::Opaque(b.to_vec()),
            ResourceType::String | ResourceType::Corelnk => Value::String(
                String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))?,
            ),
        })
    }

    /// Decode the text/plain form (TS Core 1.1 §7.4.1) of a value of type `t`.
    pub fn from_text(b: &[u8], t: ResourceType) -> Result<Value, BadValue> {
        if matches!(t, ResourceType::Opaque) {
            return Ok(Value::Opaque(b.to_vec()));
        }
        let s = std::str::from_utf8(b).map_err(|_| bad("text is not UTF-8"))?;
        Ok(match t {
            ResourceType::Integer | ResourceType::Time => {
                Value::Integer(s.trim().parse().map_err(|_| bad("not an integer"))?)
            }
            ResourceType::UnsignedInteger => Value::Unsigned(
                s.trim()
                    .parse()
                    .map_err(|_| bad("not an unsigned integer"))?,
            ),
            ResourceType::Float => Value::Float(s.trim().parse().map_err(|_| bad("not a float"))?),
            ResourceType::Boolean => match s.trim() {
                "0" | "false" => Value::Boolean(false),
                "1" | "true" => Value::Boolean(true),
                _ => return Err(bad("boolean is 0 or 1")),
            },
            ResourceType::Objlnk => parse_objlnk(s)?,
            _ => Value::String(s.to_string()),
        })
    }

    /// The binary (TLV) form.
    pub fn to_tlv_bytes(&self) -> Vec<u8> {
        match self {
            Value::Integer(i) => {
                let i = *i;
                if let Ok(v) = i8::try_from(i) {
                    v.to_be_bytes().to_vec()
                } else if let Ok(v) = i16::try_from(i) {
                    v.to_be_bytes().to_vec()
                } else if let Ok(v) = i32::try_from(i) {
                    v.to_be_bytes().to_vec()
                } else {
                    i.to_be_bytes().to_vec()
                }
            }
            Value::Unsigned(u) => {
                let u = *u;
                if let Ok(v) = u8::try_from(u) {
                    vec![v]
                } else if let Ok(v) = u16::try_from(u) {
                    v.to_be_bytes().to_vec()
                } else if let Ok(v) = u32::try_from(u) {
                    v.to_be_bytes().to_vec()
                } else {
                    u.to_be_bytes().to_vec()
                }
            }
            Value::Float(f) => {
                let narrow = *f as f32;
                if f64::from(narrow) == *f {
                    narrow.to_be_bytes().to_vec()
                } else {
                    f.to_be_bytes().to_vec()
                }
            }
            Value::Boolean(b) => vec![u8::from(*b)],
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Opaque(b) => b.clone(),
            Value::Objlnk(o, i) => {
                let mut v = o.to_be_bytes().to_vec();
                v.extend_from_slice(&i.to_be_bytes());
                v
            }
        }
    }

    /// The text/plain form (opaque values are sent as they are).
    pub fn to_text(&self) -> Vec<u8> {
        match self {
            Value::Integer(i) => i.to_string().into_bytes(),
            Value::Unsigned(u) => u.to_string().into_bytes(),
            Value::Float(f) => f.to_string().into_bytes(),
            Value::Boolean(b) => if *b { "1" } else { "0" }.as_bytes().to_vec(),
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Opaque(b) => b.clone(),
            Value::Objlnk(o, i) => format!("{o}:{i}").into_bytes(),
        }
    }

    /// The JSON form in EMQX payloads: numbers, booleans, strings, opaque
    /// as base64, object links as `"3:0"`.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Integer(i) => Json::from(*i),
            Value::Unsigned(u) => Json::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            Value::Boolean(b) => Json::Bool(*b),
            Value::String(s) => Json::String(s.clone()),
            Value::Opaque(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Objlnk(o, i) => Json::String(format!("{o}:{i}")),
        }
    }

    /// A value from a command's JSON `value`, of type `t` when known
    /// (`type` in the command, else the object registry), else inferred
    /// from the JSON type.
    pub fn from_json(v: &Json, t: Option<ResourceType>) -> Result<Value, BadValue> {
        match t {
            Some(ResourceType::Integer) | Some(ResourceType::Time) => match v {
                Json::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                    .map(Value::Integer)
                    .ok_or_else(|| bad("not an integer")),
                Json::String(s) => s
                    .trim()
                    .parse()
                    .map(Value::Integer)
                    .map_err(|_| bad("not an integer")),
                _ => Err(bad("not an integer")),
            },
            Some(ResourceType::UnsignedInteger) => match v {
                Json::Number(n) => n
                    .as_u64()
                    .map(Value::Unsigned)
                    .ok_or_else(|| bad("not an unsigned integer")),
                Json::String(s) => s
                    .trim()
                    .parse()
                    .map(Value::Unsigned)
                    .map_err(|_| bad("not an unsigned integer")),
                _ => Err(bad("not an unsigned integer")),
            },
            Some(ResourceType::Float) => match v {
                Json::Number(n) => n
                    .as_f64()
                    .map(Value::Float)
                    .ok_or_else(|| bad("not a float")),
                Json::String(s) => s
                    .trim()
                    .parse()
                    .map(Value::Float)
                    .map_err(|_| bad("not a float")),
                _ => Err(bad("not a float")),
            },
            Some(ResourceType::Boolean) => match v {
                Json::Bool(b) => Ok(Value::Boolean(*b)),
                Json::Number(n) if n.as_u64() == Some(0) => Ok(Value::Boolean(false)),
                Json::Number(n) if n.as_u64() == Some(1) => Ok(Value::Boolean(true)),
                Json::String(s) => Value::from_text(s.as_bytes(), ResourceType::Boolean),
                _ => Err(bad("not a boolean")),
            },
            Some(ResourceType::Opaque) => match v {
                Json::String(s) => base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map(Value::Opaque)
                    .map_err(|_| bad("opaque value must be base64")),
                _ => Err(bad("opaque value must be a base64 string")),
            },
            Some(ResourceType::Objlnk) => match v {
                Json::String(s) => parse_objlnk(s),
                _ => Err(bad("objlnk is \"object:instance\"")),
            },
            Some(ResourceType::String) | Some(ResourceType::Corelnk) => match v {
                Json::String(s) => Ok(Value::String(s.clone())),
                Json::Number(n) => Ok(Value::String(n.to_string())),
                Json::Bool(b) => Ok(Value::String(b.to_string())),
                _ => Err(bad("not a string")),
            },
            Some(ResourceType::None) | None => match v {
                Json::Bool(b) => Ok(Value::Boolean(*b)),
                Json::Number(n) => Ok(match n.as_i64() {
                    Some(i) => Value::Integer(i),
                    None => Value::Float(n.as_f64().unwrap_or(0.0)),
                }),
                Json::String(s) => Ok(Value::String(s.clone())),
                _ => Err(bad("value must be a number, boolean or string")),
            },
        }
    }
}

fn arr8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

/// `"3:0"` → object link.
pub fn parse_objlnk(s: &str) -> Result<Value, BadValue> {
    let (o, i) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| bad("objlnk is \"object:instance\""))?;
    Ok(Value::Objlnk(
        o.parse().map_err(|_| bad("objlnk object id"))?,
        i.parse().map_err(|_| bad("objlnk instance id"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Path::parse("/3/0/1").expect("p").to_string(), "/3/0/1");
        assert_eq!(Path::parse("3/0/").expect("p").to_string(), "/3/0");
        assert_eq!(Path::parse("/").expect("p").depth(), 0);
        assert!(Path::parse("/3/x").is_err());
        assert!(Path::parse("/1/2/3/4/5").is_err());
        assert!(Path::parse("/70000").is_err());
        let base = Path::parse("/3/0").expect("p");
        assert_eq!(
            Path::join(&base, &Path::parse("13").expect("p")).to_string(),
            "/3/0/13"
        );
        assert_eq!(
            Path::join(&base, &Path::parse("/3/0/13").expect("p")).to_string(),
            "/3/0/13"
        );
    }

    #[test]
    fn tlv_integer_widths() {
        for (i, len) in [(0i64, 1), (-128, 1), (200, 2), (-40000, 4), (1 << 40, 8)] {
            let b = Value::Integer(i).to_tlv_bytes();
            assert_eq!(b.len(), len, "{i}");
            assert_eq!(
                Value::from_tlv_bytes(&b, ResourceType::Integer),
                Ok(Value::Integer(i))
            );
        }
    }

    #[test]
    fn json_values() {
        assert_eq!(
            Value::from_json(&Json::from("AQI="), Some(ResourceType::Opaque)),
            Ok(Value::Opaque(vec![1, 2]))
        );
        assert_eq!(Value::Opaque(vec![1, 2]).to_json(), Json::from("AQI="));
        assert_eq!(
            Value::from_json(&Json::from("5:1"), Some(ResourceType::Objlnk)),
            Ok(Value::Objlnk(5, 1))
        );
        assert!(Value::from_json(&Json::from("x"), Some(ResourceType::Integer)).is_err());
        assert_eq!(
            Value::from_json(&Json::from(1.5), None),
            Ok(Value::Float(1.5))
        );
    }
}
