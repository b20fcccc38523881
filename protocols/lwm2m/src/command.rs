//! EMQX's JSON commands and responses (the `dn/#` ⇄ `up/resp` contract)
//! and their translation to and from CoAP requests (TS Core 1.1 §6.3–6.4,
//! the Device Management and Information Reporting interfaces).
//!
//! ```text
//!  {"reqID":N,"msgType":"read","data":{"path":"/3/0"}}      → GET /3/0
//!  discover                                                 → GET + Accept 40
//!  write {path,type,value} | {basePath,content:[…]}         → PUT (one resource) / POST (several)
//!  write-attr {path,pmin,pmax,gt,lt,st}                     → PUT ?pmin=…&pmax=…
//!  execute {path,args}                                      → POST, args as text
//!  create {basePath,content}                                → POST /O
//!  delete {path}                                            → DELETE
//!  observe {path} / cancel-observe {path}                   → GET + Observe 0 / 1
//! ```
//!
//! A command that cannot be parsed or translated is answered on `up/resp`
//! with `4.00 bad_request` and the reason ([`error_response`]); it never
//! reaches the device.

use serde_json::{json, Map, Value as Json};
use tributary_coap::msg::{opt, Code, Message, MessageType, Token};

use crate::content::{self, ContentError};
use crate::model::{Path, ResourceType, Value};
use crate::objects::Registry;

/// What a command asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Read a path.
    Read(Path),
    /// Discover attributes and resources.
    Discover(Path),
    /// Write values under a base path.
    Write {
        /// Where the write goes (PUT target or POST target).
        base: Path,
        /// Values with their full paths and optional types.
        entries: Vec<(Path, Json, Option<ResourceType>)>,
        /// A single resource (PUT replace) rather than several (POST partial update).
        single: bool,
    },
    /// Write notification attributes.
    WriteAttr(Path, Vec<(String, String)>),
    /// Execute with arguments.
    Execute(Path, String),
    /// Create an object instance.
    Create {
        /// The object (or object instance).
        base: Path,
        /// Initial values.
        entries: Vec<(Path, Json, Option<ResourceType>)>,
    },
    /// Delete an object instance.
    Delete(Path),
    /// Observe a path.
    Observe(Path),
    /// Cancel an observation.
    CancelObserve(Path),
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Every top-level field but `msgType` and `data` (`reqID`, or
    /// `requestID`/`cacheID` as some EMQX applications send), echoed as
    /// given in the response, as EMQX does.
    pub echo: Map<String, Json>,
    /// Echoed in the response.
    pub msg_type: String,
    /// `path` or `basePath` as given, echoed as `reqPath`.
    pub req_path: String,
    /// What to do.
    pub op: Op,
}

/// A command that cannot be carried out; answered with 4.00.
#[derive(Debug, Clone, PartialEq)]
pub struct BadCommand {
    /// The fields to echo (`{"reqID": null}` when the payload was not an object).
    pub echo: Map<String, Json>,
    /// The msgType, when the payload had one.
    pub msg_type: String,
    /// The path, when the payload had one.
    pub req_path: String,
    /// Why.
    pub why: String,
}

fn get_str<'a>(data: &'a Map<String, Json>, key: &str) -> Option<&'a str> {
    data.get(key).and_then(Json::as_str)
}

/// A number or string attribute value as text.
fn attr_text(v: &Json) -> Option<String> {
    match v {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn entries(
    base: &Path,
    content: &[Json],
) -> Result<Vec<(Path, Json, Option<ResourceType>)>, String> {
    let mut out = Vec::new();
    for c in content {
        let Json::Object(c) = c else {
            return Err("content items are objects".into());
        };
        let p = match get_str(c, "path") {
            Some(s) => Path::parse(s).map_err(|e| e.to_string())?,
            None => Path::default(),
        };
        let value = c.get("value").ok_or("content item without value")?;
        let t = match get_str(c, "type") {
            Some(t) => Some(ResourceType::parse(t).ok_or(format!("unknown type {t:?}"))?),
            None => None,
        };
        out.push((Path::join(base, &p), value.clone(), t));
    }
    if out.is_empty() {
        return Err("content is empty".into());
    }
    Ok(out)
}

/// Parse a command payload.
pub fn parse(payload: &[u8]) -> Result<Command, BadCommand> {
    let mut unknown = Map::new();
    unknown.insert("reqID".into(), Json::Null);
    let mut bad = BadCommand {
        echo: unknown,
        msg_type: String::new(),
        req_path: String::new(),
        why: String::new(),
    };
    let v: Json = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            bad.why = format!("not JSON: {e}");
            return Err(bad);
        }
    };
    let Json::Object(o) = v else {
        bad.why = "a command is a JSON object".into();
        return Err(bad);
    };
    bad.echo = o
        .iter()
        .filter(|(k, _)| k.as_str() != "data" && k.as_str() != "msgType")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    bad.msg_type = get_str(&o, "msgType").unwrap_or("").to_string();
    let empty = Map::new();
    let data = match o.get("data") {
        Some(Json::Object(d)) => d,
        None => &empty,
        Some(_) => {
            bad.why = "data is an object".into();
            return Err(bad);
        }
    };
    bad.req_path = get_str(data, "path")
        .or_else(|| get_str(data, "basePath"))
        .unwrap_or("")
        .to_string();
    match op(&bad.msg_type, data) {
        Ok(op) => Ok(Command {
            echo: bad.echo,
            msg_type: bad.msg_type,
            req_path: bad.req_path,
            op,
        }),
        Err(why) => {
            bad.why = why;
            Err(bad)
        }
    }
}

fn op(msg_type: &str, data: &Map<String, Json>) -> Result<Op, String> {
    let path = || -> Result<Path, String> {
        let s = get_str(data, "path").ok_or("data.path is missing")?;
        Path::parse(s).map_err(|e| e.to_string())
    };
    let object_level = |p: &Path| -> Result<(), String> {
        if p.depth() == 0 {
            Err("the path must name an object".into())
        } else {
            Ok(())
        }
    };
    Ok(match msg_type {
        "read" => {
            let p = path()?;
            object_level(&p)?;
            Op::Read(p)
        }
        "discover" => {
            let p = path()?;
            object_level(&p)?;
            Op::Discover(p)
        }
        "write" => {
            if let Some(content) = data.get("content") {
                let base = Path::parse(get_str(data, "basePath").unwrap_or("/"))
                    .map_err(|e| e.to_string())?;
                let Json::Array(content) = content else {
                    return Err("content is an array".into());
                };
                let e = entries(&base, content)?;
                let single = e.len() == 1 && e[0].0.depth() >= 3 && e[0].0 == base;
                let base = if single { base } else { base.prefix(2) };
                if base.depth() < 2 {
                    return Err("write needs an object instance or resource path".into());
                }
                Op::Write {
                    base,
                    entries: e,
                    single,
                }
            } else {
                let p = path()?;
                if p.depth() < 3 {
                    return Err("a single write needs a resource path".into());
                }
                let value = data.get("value").ok_or("data.value is missing")?;
                let t = match get_str(data, "type") {
                    Some(t) => Some(ResourceType::parse(t).ok_or(format!("unknown type {t:?}"))?),
                    None => None,
                };
                Op::Write {
                    base: p.clone(),
                    entries: vec![(p, value.clone(), t)],
                    single: true,
                }
            }
        }
        "write-attr" => {
            let p = path()?;
            object_level(&p)?;
            let mut attrs = Vec::new();
            for k in ["pmin", "pmax", "gt", "lt", "st", "epmin", "epmax"] {
                if let Some(v) = data.get(k).and_then(attr_text) {
                    if k.starts_with('p') || k.starts_with('e') {
                        v.parse::<u32>()
                            .map_err(|_| format!("{k} is a non-negative integer"))?;
                    } else {
                        v.parse::<f64>().map_err(|_| format!("{k} is a number"))?;
                    }
                    attrs.push((k.to_string(), v));
                }
            }
            if attrs.is_empty() {
                return Err("write-attr needs one of pmin, pmax, gt, lt, st".into());
            }
            Op::WriteAttr(p, attrs)
        }
        "execute" => {
            let p = path()?;
            if p.depth() != 3 {
                return Err("execute needs a resource path".into());
            }
            let args = match data.get("args") {
                None | Some(Json::Null) => String::new(),
                Some(Json::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            Op::Execute(p, args)
        }
        "create" => {
            let base = Path::parse(get_str(data, "basePath").ok_or("data.basePath is missing")?)
                .map_err(|e| e.to_string())?;
            if base.depth() != 1 {
                return Err("create needs an object path as basePath".into());
            }
            let Some(Json::Array(content)) = data.get("content") else {
                return Err("data.content is missing".into());
            };
            Op::Create {
                entries: entries(&base, content)?,
                base,
            }
        }
        "delete" => {
            let p = path()?;
            if p.depth() != 2 {
                return Err("delete needs an object instance path".into());
            }
            Op::Delete(p)
        }
        "observe" => {
            let p = path()?;
            object_level(&p)?;
            Op::Observe(p)
        }
        "cancel-observe" => {
            let p = path()?;
            object_level(&p)?;
            Op::CancelObserve(p)
        }
        "" => return Err("msgType is missing".into()),
        other => return Err(format!("unknown msgType {other:?}")),
    })
}

/// What a device's registration tells the translator.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The alternate path (`/` unless the device registered another).
    pub alternate_path: &'a str,
    /// Content-Format for writes and creates ([`content::write_format`]).
    pub write_format: u16,
    /// Accept for reads and observations: the device's format when it
    /// announced its formats (`ct=`, 1.1+), none otherwise (the device's
    /// default: TLV or text for 1.0).
    pub accept: Option<u16>,
    /// Object definitions.
    pub registry: &'a Registry,
}

fn set_path(m: &mut Message, alt: &str, p: &Path) {
    m.remove_option(opt::URI_PATH);
    for seg in alt.split('/').filter(|s| !s.is_empty()) {
        m.add_option(opt::URI_PATH, seg.as_bytes().to_vec());
    }
    for id in p.ids() {
        m.add_option(opt::URI_PATH, id.to_string().into_bytes());
    }
}

fn typed_entries(
    entries: &[(Path, Json, Option<ResourceType>)],
    reg: &Registry,
) -> Result<Vec<(Path, Value)>, String> {
    entries
        .iter()
        .map(|(p, v, t)| {
            let t = t.or_else(|| reg.resource_type(p));
            Value::from_json(v, t)
                .map(|v| (p.clone(), v))
                .map_err(|e| format!("{p}: {}", e.0))
        })
        .collect()
}

fn encode_into(
    m: &mut Message,
    cf: u16,
    values: &[(Path, Value)],
    base: &Path,
) -> Result<(), String> {
    let body = content::encode(cf, values, base).map_err(|e: ContentError| e.to_string())?;
    m.add_uint_option(opt::CONTENT_FORMAT, u32::from(cf));
    m.payload = body.into();
    Ok(())
}

impl Command {
    /// The CoAP request (CON, token `token`; the message id is set when sent).
    pub fn request(&self, t: &Target<'_>, token: Token) -> Result<Message, String> {
        let mut m = Message::new(MessageType::Con, Code::GET, 0, token);
        match &self.op {
            Op::Read(p) => {
                set_path(&mut m, t.alternate_path, p);
                if let Some(a) = t.accept {
                    m.add_uint_option(opt::ACCEPT, u32::from(a));
                }
            }
            Op::Discover(p) => {
                set_path(&mut m, t.alternate_path, p);
                m.add_uint_option(opt::ACCEPT, u32::from(content::LINK));
            }
            Op::Observe(p) => {
                set_path(&mut m, t.alternate_path, p);
                m.add_uint_option(opt::OBSERVE, 0);
                if let Some(a) = t.accept {
                    m.add_uint_option(opt::ACCEPT, u32::from(a));
                }
            }
            Op::CancelObserve(p) => {
                set_path(&mut m, t.alternate_path, p);
                m.add_uint_option(opt::OBSERVE, 1);
                if let Some(a) = t.accept {
                    m.add_uint_option(opt::ACCEPT, u32::from(a));
                }
            }
            Op::Write {
                base,
                entries,
                single,
            } => {
                m.code = if *single { Code::PUT } else { Code::POST };
                set_path(&mut m, t.alternate_path, base);
                let values = typed_entries(entries, t.registry)?;
                // One resource: plain text (opaque as octets), which every
                // version requires for single resources (TS Core 1.0 §6.4.1);
                // several: the device's format.
                let cf = match values.as_slice() {
                    [(p, Value::Opaque(_))] if *single && p.depth() == 3 => content::OPAQUE,
                    [(p, _)] if *single && p.depth() == 3 => content::TEXT,
                    _ => t.write_format,
                };
                encode_into(&mut m, cf, &values, base)?;
            }
            Op::WriteAttr(p, attrs) => {
                m.code = Code::PUT;
                set_path(&mut m, t.alternate_path, p);
                for (k, v) in attrs {
                    m.add_option(opt::URI_QUERY, format!("{k}={v}").into_bytes());
                }
            }
            Op::Execute(p, args) => {
                m.code = Code::POST;
                set_path(&mut m, t.alternate_path, p);
                if !args.is_empty() {
                    m.add_uint_option(opt::CONTENT_FORMAT, u32::from(content::TEXT));
                    m.payload = args.clone().into_bytes().into();
                }
            }
            Op::Create { base, entries } => {
                m.code = Code::POST;
                set_path(&mut m, t.alternate_path, base);
                let values = typed_entries(entries, t.registry)?;
                encode_into(&mut m, t.write_format, &values, base)?;
            }
            Op::Delete(p) => {
                m.code = Code::DELETE;
                set_path(&mut m, t.alternate_path, p);
            }
        }
        Ok(m)
    }

    /// The path the request targets (responses are decoded against it).
    pub fn path(&self) -> &Path {
        match &self.op {
            Op::Read(p)
            | Op::Discover(p)
            | Op::Observe(p)
            | Op::CancelObserve(p)
            | Op::WriteAttr(p, _)
            | Op::Execute(p, _)
            | Op::Delete(p) => p,
            Op::Write { base, .. } | Op::Create { base, .. } => base,
        }
    }
}

/// EMQX's `codeMsg` for a response code.
pub fn code_msg(code: Code) -> &'static str {
    match (code.class(), code.detail()) {
        (2, 1) => "created",
        (2, 2) => "deleted",
        (2, 3) => "valid",
        (2, 4) => "changed",
        (2, 5) => "content",
        (2, 31) => "continue",
        (4, 0) => "bad_request",
        (4, 1) => "unauthorized",
        (4, 2) => "bad_option",
        (4, 3) => "forbidden",
        (4, 4) => "not_found",
        (4, 5) => "method_not_allowed",
        (4, 6) => "not_acceptable",
        (4, 8) => "request_entity_incomplete",
        (4, 12) => "precondition_failed",
        (4, 13) => "request_entity_too_large",
        (4, 15) => "unsupported_content_format",
        (5, 0) => "internal_server_error",
        (5, 1) => "not_implemented",
        (5, 2) => "bad_gateway",
        (5, 3) => "service_unavailable",
        (5, 4) => "gateway_timeout",
        (5, 5) => "proxying_not_supported",
        _ => "unknown",
    }
}

/// A payload echoing a command's fields with `msgType` and `data`.
pub fn envelope(echo: &Map<String, Json>, msg_type: &str, data: Json) -> Json {
    let mut o = echo.clone();
    o.insert("msgType".into(), Json::from(msg_type));
    o.insert("data".into(), data);
    Json::Object(o)
}

/// A response payload: `{"reqID","msgType","data":{"reqPath","code","codeMsg"[,"content"]}}`.
pub fn response(
    echo: &Map<String, Json>,
    msg_type: &str,
    req_path: &str,
    code: Code,
    content: Option<Json>,
) -> Json {
    let mut data = Map::new();
    data.insert("reqPath".into(), Json::from(req_path));
    data.insert("code".into(), Json::from(code.to_string()));
    data.insert("codeMsg".into(), Json::from(code_msg(code)));
    if let Some(c) = content {
        data.insert("content".into(), c);
    }
    envelope(echo, msg_type, Json::Object(data))
}

/// A response the gateway makes itself (the device never saw the
/// command, or never answered): `code`, EMQX-style `codeMsg`, and `error`
/// saying why.
pub fn local_response(
    echo: &Map<String, Json>,
    msg_type: &str,
    req_path: &str,
    code: Code,
    code_msg_override: Option<&str>,
    why: &str,
) -> Json {
    let mut v = response(echo, msg_type, req_path, code, None);
    if let Some(data) = v.get_mut("data").and_then(Json::as_object_mut) {
        if let Some(m) = code_msg_override {
            data.insert("codeMsg".into(), Json::from(m));
        }
        data.insert("error".into(), Json::from(why));
    }
    v
}

/// The answer to a command that cannot be carried out: 4.00 bad_request.
pub fn error_response(bad: &BadCommand) -> Json {
    local_response(
        &bad.echo,
        &bad.msg_type,
        &bad.req_path,
        Code::BAD_REQUEST,
        None,
        &bad.why,
    )
}

/// Decoded entries as EMQX's `content` list: `[{"path":"/3/0/0","value":…}]`.
pub fn content_json(entries: &[(Path, Value)]) -> Json {
    Json::Array(
        entries
            .iter()
            .map(|(p, v)| json!({"path": p.to_string(), "value": v.to_json()}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(reg: &Registry) -> Target<'_> {
        Target {
            alternate_path: "/",
            write_format: content::TLV,
            accept: None,
            registry: reg,
        }
    }

    #[test]
    fn read_and_discover() {
        let c = parse(br#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#).expect("p");
        let reg = Registry::new();
        let m = c.request(&target(&reg), Token::EMPTY).expect("req");
        assert_eq!(
            (m.code, m.path()),
            (Code::GET, vec!["3".into(), "0".into(), "0".into()])
        );
        assert_eq!(m.uint_option(opt::ACCEPT), None);
        let senml = Target {
            accept: Some(content::SENML_JSON),
            ..target(&reg)
        };
        let m = c.request(&senml, Token::EMPTY).expect("req");
        assert_eq!(m.uint_option(opt::ACCEPT), Some(Ok(110)));
        let d = parse(br#"{"reqID":"2","msgType":"discover","data":{"path":"/3/0"}}"#)
            .expect("p")
            .request(&target(&reg), Token::EMPTY)
            .expect("req");
        assert_eq!(d.uint_option(opt::ACCEPT), Some(Ok(40)));
    }

    #[test]
    fn writes() {
        let reg = Registry::new();
        let c = parse(
            br#"{"reqID":3,"msgType":"write","data":{"path":"/3/0/13","type":"Time","value":1367491215}}"#,
        )
        .expect("p");
        let m = c.request(&target(&reg), Token::EMPTY).expect("req");
        assert_eq!(m.code, Code::PUT);
        assert_eq!(m.content_format(), Some(content::TEXT));
        assert_eq!(&m.payload[..], b"1367491215");
        // Several resources of a 1.0 device: TLV.
        let c = parse(
            br#"{"reqID":3,"msgType":"write","data":{"basePath":"/3/0","content":[{"path":"13","type":"Time","value":1367491215},{"path":"14","value":"+02"}]}}"#,
        )
        .expect("p");
        let m = c.request(&target(&reg), Token::EMPTY).expect("req");
        assert_eq!(m.content_format(), Some(content::TLV));
        assert_eq!(&m.payload[..6], &[0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F]);
        let c = parse(
            br#"{"reqID":4,"msgType":"write","data":{"basePath":"/1/0","content":[
                {"path":"2","type":"Integer","value":10},{"path":"/1/0/3","type":"Integer","value":20}]}}"#,
        )
        .expect("p");
        let m = c.request(&target(&reg), Token::EMPTY).expect("req");
        assert_eq!((m.code, m.path().len()), (Code::POST, 2));
        assert_eq!(&m.payload[..], &[0xC1, 0x02, 10, 0xC1, 0x03, 20]);
    }

    #[test]
    fn other_ops() {
        let reg = Registry::new();
        let m = parse(br#"{"reqID":5,"msgType":"write-attr","data":{"path":"/3/0/9","pmin":"1","pmax":5,"gt":""}}"#)
            .expect("p")
            .request(&target(&reg), Token::EMPTY)
            .expect("req");
        assert_eq!(m.queries(), vec!["pmin=1", "pmax=5"]);
        let m = parse(br#"{"reqID":6,"msgType":"execute","data":{"path":"/3/0/4","args":"0,1"}}"#)
            .expect("p")
            .request(&target(&reg), Token::EMPTY)
            .expect("req");
        assert_eq!((m.code, &m.payload[..]), (Code::POST, &b"0,1"[..]));
        let m = parse(br#"{"reqID":7,"msgType":"observe","data":{"path":"/3/0/9"}}"#)
            .expect("p")
            .request(&target(&reg), Token::EMPTY)
            .expect("req");
        assert_eq!(m.uint_option(opt::OBSERVE), Some(Ok(0)));
        let m = parse(br#"{"reqID":8,"msgType":"delete","data":{"path":"/5/0"}}"#)
            .expect("p")
            .request(&target(&reg), Token::EMPTY)
            .expect("req");
        assert_eq!(m.code, Code::DELETE);
        let m = parse(br#"{"reqID":9,"msgType":"create","data":{"basePath":"/5","content":[{"path":"/5/0/1","type":"String","value":"u"}]}}"#)
            .expect("p")
            .request(&target(&reg), Token::EMPTY)
            .expect("req");
        assert_eq!(&m.payload[..], &[0x03, 0x00, 0xC1, 0x01, b'u']);
    }

    #[test]
    fn bad_commands_keep_req_id() {
        for (payload, why) in [
            (
                &br#"{"reqID":9,"msgType":"fly","data":{"path":"/3"}}"#[..],
                "unknown msgType",
            ),
            (br#"{"reqID":9,"msgType":"read","data":{}}"#, "path"),
            (
                br#"{"reqID":9,"msgType":"read","data":{"path":"/a"}}"#,
                "invalid",
            ),
            (
                br#"{"reqID":9,"msgType":"execute","data":{"path":"/3/0"}}"#,
                "resource",
            ),
        ] {
            let e = parse(payload).expect_err("bad");
            assert_eq!(e.echo["reqID"], Json::from(9));
            assert!(e.why.contains(why), "{}", e.why);
            let r = error_response(&e);
            assert_eq!(r["data"]["code"], "4.00");
        }
        assert!(parse(b"not json").is_err());
        assert!(parse(b"[1]").is_err());
    }

    #[test]
    fn response_shape() {
        let mut echo = Map::new();
        echo.insert("reqID".into(), Json::from(1));
        let r = response(
            &echo,
            "read",
            "/3/0/0",
            Code::CONTENT,
            Some(content_json(&[(
                Path::parse("/3/0/0").expect("p"),
                Value::String("x".into()),
            )])),
        );
        assert_eq!(
            r,
            json!({"reqID":1,"msgType":"read","data":{"reqPath":"/3/0/0","code":"2.05","codeMsg":"content","content":[{"path":"/3/0/0","value":"x"}]}})
        );
    }
}
