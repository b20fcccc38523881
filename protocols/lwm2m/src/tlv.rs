//! OMA TLV (`application/vnd.oma.lwm2m+tlv`, Content-Format 11542;
//! TS Core 1.0 §6.4.3): bytes ⇄ a tree of identifiers, and the tree ⇄
//! flat `(path, raw value)` lists the rest of the crate works with.
//!
//! ```text
//!  type byte: 7-6 identifier kind  00 object instance   01 resource instance
//!                                  10 multiple resource 11 resource with value
//!             5   identifier length (0: 8 bits, 1: 16 bits)
//!             4-3 length type (00: in bits 2-0, 01/10/11: 8/16/24-bit length field)
//!             2-0 length when length type is 00
//! ```
//!
//! Values stay raw bytes here; the object registry gives them a type.
//! Nesting is bounded by the format itself (instance → resource →
//! resource instance), so decoding recursion is at most three deep.

use crate::model::Path;

/// What a TLV identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An object instance, containing resources.
    ObjectInstance,
    /// One instance of a multiple resource, with a value.
    ResourceInstance,
    /// A multiple resource, containing resource instances.
    MultipleResource,
    /// A single resource with a value.
    Resource,
}

impl Kind {
    fn bits(self) -> u8 {
        match self {
            Kind::ObjectInstance => 0,
            Kind::ResourceInstance => 1,
            Kind::MultipleResource => 2,
            Kind::Resource => 3,
        }
    }

    /// The path level its identifier sits at (1 = instance, 2 = resource, 3 = resource instance).
    fn level(self) -> usize {
        match self {
            Kind::ObjectInstance => 1,
            Kind::MultipleResource | Kind::Resource => 2,
            Kind::ResourceInstance => 3,
        }
    }
}

/// One TLV: a value or children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    /// What it identifies.
    pub kind: Kind,
    /// Its identifier.
    pub id: u16,
    /// The value (resource, resource instance) or nested TLVs (containers).
    pub body: Body,
}

/// A TLV's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A value, still raw.
    Value(Vec<u8>),
    /// Nested TLVs.
    Children(Vec<Tlv>),
}

/// Malformed TLV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// The data ends inside a TLV.
    #[error("TLV truncated")]
    Truncated,
    /// A container holds the wrong kind of TLV (e.g. an instance in a resource).
    #[error("TLV nesting not allowed: {0:?} inside {1:?}")]
    Nesting(Kind, Kind),
    /// The TLV cannot sit under the request path.
    #[error("TLV {0:?} does not fit under {1}")]
    Misplaced(Kind, String),
    /// Entries cannot be arranged into TLV.
    #[error("cannot encode as TLV: {0}")]
    Encode(String),
}

/// `(full path, raw value)` entries.
type Entries = Vec<(Path, Vec<u8>)>;

/// Decode a sequence of TLVs.
pub fn decode(mut b: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (t, rest) = decode_one(b, None)?;
        out.push(t);
        b = rest;
    }
    Ok(out)
}

fn decode_one(b: &[u8], parent: Option<Kind>) -> Result<(Tlv, &[u8]), TlvError> {
    let (&ty, mut rest) = b.split_first().ok_or(TlvError::Truncated)?;
    let kind = match ty >> 6 {
        0 => Kind::ObjectInstance,
        1 => Kind::ResourceInstance,
        2 => Kind::MultipleResource,
        _ => Kind::Resource,
    };
    let id_len = if ty & 0x20 != 0 { 2 } else { 1 };
    if rest.len() < id_len {
        return Err(TlvError::Truncated);
    }
    let id = if id_len == 2 {
        u16::from_be_bytes([rest[0], rest[1]])
    } else {
        u16::from(rest[0])
    };
    rest = &rest[id_len..];
    let len_len = usize::from((ty >> 3) & 0x3);
    let len = if len_len == 0 {
        usize::from(ty & 0x7)
    } else {
        if rest.len() < len_len {
            return Err(TlvError::Truncated);
        }
        let l = rest[..len_len]
            .iter()
            .fold(0usize, |a, x| (a << 8) | usize::from(*x));
        rest = &rest[len_len..];
        l
    };
    if rest.len() < len {
        return Err(TlvError::Truncated);
    }
    let (content, rest) = rest.split_at(len);
    if let Some(p) = parent {
        let ok = matches!(
            (p, kind),
            (
                Kind::ObjectInstance,
                Kind::Resource | Kind::MultipleResource
            ) | (Kind::MultipleResource, Kind::ResourceInstance)
        );
        if !ok {
            return Err(TlvError::Nesting(kind, p));
        }
    }
    let body = match kind {
        Kind::Resource | Kind::ResourceInstance => Body::Value(content.to_vec()),
        Kind::ObjectInstance | Kind::MultipleResource => {
            let mut children = Vec::new();
            let mut c = content;
            while !c.is_empty() {
                let (t, r) = decode_one(c, Some(kind))?;
                children.push(t);
                c = r;
            }
            Body::Children(children)
        }
    };
    Ok((Tlv { kind, id, body }, rest))
}

/// Encode TLVs.
pub fn encode(tlvs: &[Tlv]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tlvs {
        encode_one(t, &mut out);
    }
    out
}

fn encode_one(t: &Tlv, out: &mut Vec<u8>) {
    let content = match &t.body {
        Body::Value(v) => v.clone(),
        Body::Children(c) => encode(c),
    };
    let mut ty = t.kind.bits() << 6;
    if t.id > 0xFF {
        ty |= 0x20;
    }
    let len = content.len();
    let len_bytes: Vec<u8> = if len < 8 {
        ty |= len as u8;
        Vec::new()
    } else if len <= 0xFF {
        ty |= 0x08;
        vec![len as u8]
    } else if len <= 0xFFFF {
        ty |= 0x10;
        (len as u16).to_be_bytes().to_vec()
    } else {
        ty |= 0x18;
        (len as u32).to_be_bytes()[1..].to_vec()
    };
    out.push(ty);
    if t.id > 0xFF {
        out.extend_from_slice(&t.id.to_be_bytes());
    } else {
        out.push(t.id as u8);
    }
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&content);
}

/// Decoded TLVs as `(full path, raw value)`, given the request path: a
/// TLV's identifier goes at its kind's level, the levels above come from
/// the request path (TS Core 1.0 §6.4.3.1–3).
pub fn flatten(tlvs: &[Tlv], req: &Path) -> Result<Vec<(Path, Vec<u8>)>, TlvError> {
    let mut out = Vec::new();
    for t in tlvs {
        let level = t.kind.level();
        if req.depth() < level {
            return Err(TlvError::Misplaced(t.kind, req.to_string()));
        }
        walk(t, &req.prefix(level), &mut out);
    }
    Ok(out)
}

fn walk(t: &Tlv, base: &Path, out: &mut Vec<(Path, Vec<u8>)>) {
    let here = base.child(t.id);
    match &t.body {
        Body::Value(v) => out.push((here, v.clone())),
        Body::Children(c) => {
            for child in c {
                walk(child, &here, out);
            }
        }
    }
}

/// Build TLVs for `(full path, encoded value)` entries written under
/// `base`: entries under an instance become resources (grouped into a
/// multiple resource when they reach a resource instance); when `base`
/// is an object, entries with an instance id are wrapped in an
/// object-instance TLV.
pub fn build(entries: &[(Path, Vec<u8>)], base: &Path) -> Result<Vec<Tlv>, TlvError> {
    match base.depth() {
        0 => Err(TlvError::Encode("cannot write to /".into())),
        1 => {
            // Create: /O/I/R… grouped by instance, or /O/R… without one.
            let with_instance = entries.iter().all(|(p, _)| p.depth() >= 3);
            if with_instance {
                let mut instances: Vec<(u16, Entries)> = Vec::new();
                for (p, v) in entries {
                    let i = p.0[1];
                    match instances.iter_mut().find(|(id, _)| *id == i) {
                        Some((_, list)) => list.push((p.clone(), v.clone())),
                        None => instances.push((i, vec![(p.clone(), v.clone())])),
                    }
                }
                instances
                    .into_iter()
                    .map(|(i, list)| {
                        Ok(Tlv {
                            kind: Kind::ObjectInstance,
                            id: i,
                            body: Body::Children(resources(&list, 2)?),
                        })
                    })
                    .collect()
            } else {
                // No instance id given: levels are shifted (/O/R/RI).
                resources(entries, 1)
            }
        }
        2 | 3 => resources(entries, 2),
        _ => match entries {
            [(p, v)] if p.depth() == 4 => Ok(vec![Tlv {
                kind: Kind::ResourceInstance,
                id: p.0[3],
                body: Body::Value(v.clone()),
            }]),
            _ => Err(TlvError::Encode(
                "a resource instance takes one value".into(),
            )),
        },
    }
}

/// Resource TLVs for entries whose resource id sits at `level`.
fn resources(entries: &[(Path, Vec<u8>)], level: usize) -> Result<Vec<Tlv>, TlvError> {
    let mut out: Vec<Tlv> = Vec::new();
    for (p, v) in entries {
        let Some(&rid) = p.0.get(level) else {
            return Err(TlvError::Encode(format!("{p} is not a resource")));
        };
        match p.0.get(level + 1) {
            None => out.push(Tlv {
                kind: Kind::Resource,
                id: rid,
                body: Body::Value(v.clone()),
            }),
            Some(&ri) => {
                let inst = Tlv {
                    kind: Kind::ResourceInstance,
                    id: ri,
                    body: Body::Value(v.clone()),
                };
                match out
                    .iter_mut()
                    .find(|t| t.kind == Kind::MultipleResource && t.id == rid)
                {
                    Some(Tlv {
                        body: Body::Children(c),
                        ..
                    }) => c.push(inst),
                    _ => out.push(Tlv {
                        kind: Kind::MultipleResource,
                        id: rid,
                        body: Body::Children(vec![inst]),
                    }),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ResourceType, Value};

    fn p(s: &str) -> Path {
        Path::parse(s).expect("path")
    }

    /// TS Core 1.0 §6.4.3.1 example: Read /3/0 (Device), first resources.
    #[test]
    fn spec_example_single_instance() {
        let mut b = vec![0xC8, 0x00, 0x14];
        b.extend_from_slice(b"Open Mobile Alliance");
        b.extend_from_slice(&[0xC8, 0x01, 0x16]);
        b.extend_from_slice(b"Lightweight M2M Client");
        // Available power sources: multiple resource 6 with instances 0=1, 1=5.
        b.extend_from_slice(&[0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05]);
        // Current time (13) as 4 bytes.
        b.extend_from_slice(&[0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F]);
        let tlvs = decode(&b).expect("decode");
        assert_eq!(tlvs.len(), 4);
        let flat = flatten(&tlvs, &p("/3/0")).expect("flatten");
        assert_eq!(flat[0].0, p("/3/0/0"));
        assert_eq!(flat[0].1, b"Open Mobile Alliance");
        assert_eq!(flat[2].0, p("/3/0/6/0"));
        assert_eq!(flat[3].0, p("/3/0/6/1"));
        assert_eq!(
            Value::from_tlv_bytes(&flat[4].1, ResourceType::Time),
            Ok(Value::Integer(1367491215))
        );
        assert_eq!(encode(&tlvs), b);
    }

    /// §6.4.3.2 shape: Read /1 returning object instances.
    #[test]
    fn object_instances() {
        let inner = encode(&[
            Tlv {
                kind: Kind::Resource,
                id: 0,
                body: Body::Value(vec![1]),
            },
            Tlv {
                kind: Kind::Resource,
                id: 1,
                body: Body::Value(vec![0x0E, 0x10]),
            },
        ]);
        let mut b = vec![0x08, 0x00, inner.len() as u8];
        b.extend_from_slice(&inner);
        let flat = flatten(&decode(&b).expect("decode"), &p("/1")).expect("flatten");
        assert_eq!(flat[1], (p("/1/0/1"), vec![0x0E, 0x10]));
        // A resource TLV cannot answer a request for a whole object.
        assert!(flatten(&decode(&inner).expect("d"), &p("/1")).is_err());
    }

    #[test]
    fn build_create_and_write() {
        let e = vec![
            (p("/5/0/1"), b"coap://x".to_vec()),
            (p("/5/0/3/2"), vec![7]),
        ];
        let t = build(&e, &p("/5")).expect("build");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].kind, Kind::ObjectInstance);
        let back = flatten(&decode(&encode(&t)).expect("d"), &p("/5")).expect("f");
        assert_eq!(back, e);
        let w = build(&[(p("/3/0/13"), vec![1, 2, 3, 4])], &p("/3/0/13")).expect("b");
        assert_eq!(encode(&w), vec![0xC4, 0x0D, 1, 2, 3, 4]);
    }

    #[test]
    fn errors_not_panics() {
        assert_eq!(decode(&[0xC8]), Err(TlvError::Truncated));
        assert_eq!(decode(&[0xC8, 0x00, 0x05, 1]), Err(TlvError::Truncated));
        // A resource instance directly inside an object instance.
        assert!(matches!(
            decode(&[0x03, 0x00, 0x41, 0x00, 0x01]),
            Err(TlvError::Nesting(..))
        ));
    }

    #[test]
    fn long_lengths_and_ids() {
        let t = vec![Tlv {
            kind: Kind::Resource,
            id: 300,
            body: Body::Value(vec![9; 70000]),
        }];
        let b = encode(&t);
        assert_eq!(b[0], 0xF8);
        assert_eq!(decode(&b).expect("d"), t);
    }
}
