//! CoRE Link Format (RFC 6690) as LwM2M uses it: the object list of a
//! Register/Update payload (`</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>`,
//! TS Core 1.1 §6.2.1) and Discover responses.
//!
//! Parsing is lenient where the spec lets devices differ (spaces, quoted
//! or bare values, attributes without values) and strict about the shape
//! `<uri>` so that a malformed list gets 4.00 instead of a guess.

/// One link: its target and attributes (`name`, optional value without quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The target between `<` and `>`.
    pub uri: String,
    /// Attributes in order.
    pub attrs: Vec<(String, Option<String>)>,
}

impl Link {
    /// The value of an attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Not link format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed link format: {0}")]
pub struct LinkError(pub &'static str);

/// Parse a link-format document.
pub fn parse(s: &str) -> Result<Vec<Link>, LinkError> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        rest = rest
            .strip_prefix('<')
            .ok_or(LinkError("a link starts with <"))?;
        let end = rest.find('>').ok_or(LinkError("unterminated <"))?;
        let uri = rest[..end].to_string();
        rest = &rest[end + 1..];
        let mut attrs = Vec::new();
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r.trim_start();
                break;
            }
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix(';')
                .ok_or(LinkError("attributes follow ;"))?
                .trim_start();
            let name_end = rest.find(['=', ';', ',']).unwrap_or(rest.len());
            let name = rest[..name_end].trim().to_string();
            if name.is_empty() {
                return Err(LinkError("empty attribute name"));
            }
            rest = &rest[name_end..];
            let value = if let Some(r) = rest.strip_prefix('=') {
                if let Some(r) = r.strip_prefix('"') {
                    let q = r.find('"').ok_or(LinkError("unterminated quote"))?;
                    let v = r[..q].to_string();
                    rest = &r[q + 1..];
                    Some(v)
                } else {
                    let e = r.find([';', ',']).unwrap_or(r.len());
                    let v = r[..e].trim().to_string();
                    rest = &r[e..];
                    Some(v)
                }
            } else {
                None
            };
            attrs.push((name, value));
        }
        out.push(Link { uri, attrs });
    }
    Ok(out)
}

/// Serialise one link back to text (for Discover results in JSON).
pub fn to_string(l: &Link) -> String {
    let mut s = format!("<{}>", l.uri);
    for (n, v) in &l.attrs {
        s.push(';');
        s.push_str(n);
        if let Some(v) = v {
            s.push('=');
            if v.contains([',', ';', ' ']) || n == "rt" || n == "ct" && v.contains(' ') {
                s.push('"');
                s.push_str(v);
                s.push('"');
            } else {
                s.push_str(v);
            }
        }
    }
    s
}

/// What a registration's object list says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectList {
    /// Object and instance paths (`/1/0`, `/3/0`, `/5`), with the
    /// alternate path removed.
    pub objects: Vec<String>,
    /// The alternate path (`rt="oma.lwm2m"` link), `/` by default.
    pub alternate_path: String,
    /// Content formats the device announced (`ct=` on the root link).
    pub content_formats: Vec<u16>,
}

/// Interpret a Register/Update payload.
pub fn object_list(payload: &str) -> Result<ObjectList, LinkError> {
    let links = parse(payload)?;
    let mut ol = ObjectList {
        alternate_path: "/".into(),
        ..ObjectList::default()
    };
    for l in &links {
        if l.attr("rt") == Some("oma.lwm2m") {
            ol.alternate_path = if l.uri.is_empty() {
                "/".into()
            } else {
                l.uri.clone()
            };
            if let Some(ct) = l.attr("ct") {
                ol.content_formats = ct
                    .split([' ', ','])
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
            }
        }
    }
    let alt = ol.alternate_path.trim_end_matches('/').to_string();
    for l in links {
        if l.attr("rt") == Some("oma.lwm2m") {
            continue;
        }
        let uri = match l.uri.strip_prefix(&alt) {
            Some(rest) if !alt.is_empty() => rest.to_string(),
            _ => l.uri.clone(),
        };
        if uri.is_empty() || uri == "/" {
            continue;
        }
        ol.objects.push(uri);
    }
    Ok(ol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_payload() {
        let ol = object_list(r#"</>;rt="oma.lwm2m";ct=110, </1/0>,</3/0>,</5>;ver=1.1,</3303/0>"#)
            .expect("parse");
        assert_eq!(ol.objects, vec!["/1/0", "/3/0", "/5", "/3303/0"]);
        assert_eq!(ol.alternate_path, "/");
        assert_eq!(ol.content_formats, vec![110]);
        let ol = object_list(r#"</lwm2m>;rt="oma.lwm2m";ct="60 110",</lwm2m/1/0>"#).expect("p");
        assert_eq!(ol.objects, vec!["/1/0"]);
        assert_eq!(ol.alternate_path, "/lwm2m");
        assert_eq!(ol.content_formats, vec![60, 110]);
    }

    #[test]
    fn discover_links() {
        let l = parse("</3/0>;pmin=10;pmax=60,</3/0/1>,</3/0/7>;dim=8").expect("p");
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].attr("pmax"), Some("60"));
        assert_eq!(to_string(&l[2]), "</3/0/7>;dim=8");
    }

    #[test]
    fn malformed() {
        assert!(parse("/3/0").is_err());
        assert!(parse("</3/0").is_err());
        assert!(parse(r#"</3>;rt="x"#).is_err());
        assert!(parse("</3>x").is_err());
    }
}
