//! The ACL file, in the syntax of EMQX's `acl.conf` (Erlang terms, one rule
//! per term, each ending with `.`, `%` comments):
//!
//! ```text
//! {allow, {username, "dashboard"}, subscribe, ["$SYS/#"]}.
//! {allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
//! {allow, {'and', [{clientid, "c1"}, {ipaddr, "10.0.0.0/8"}]}, publish, ["t/%c/#"]}.
//! {deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
//! {allow, all}.
//! ```
//!
//! Subjects: `all`, `{username|user, "u"}`, `{clientid|client, "c"}`,
//! `{ipaddr, "cidr"}`, `{ipaddrs, ["cidr", ...]}`, `{'and', [...]}`,
//! `{'or', [...]}`. Actions: `publish`, `subscribe`, `all` (`pubsub` too).
//! Topics: strings with `%u` / `%c`, or `{eq, "filter"}` for an exact
//! filter. A final `{allow, all}.` or `{deny, all}.` is the decision when no
//! rule matches. Regular expressions and QoS/retain conditions are not
//! supported and are reported as errors with their line.

use std::path::Path;

use tributary_core::auth::{AclRule, Permission, RuleAction, Who};

/// A problem in the file, with its 1-based line.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct AclFileError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The rules of a file and its catch-all decision, if it has one.
#[derive(Debug, Default)]
pub struct AclFile {
    /// Rules in order.
    pub rules: Vec<AclRule>,
    /// `{allow, all}.` / `{deny, all}.`.
    pub catch_all: Option<Permission>,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Atom(String),
    Str(String),
    Num(i64),
    Tuple(Vec<Term>),
    List(Vec<Term>),
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
}

type PResult<T> = Result<T, (usize, String)>;

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while let Some(&c) = self.src.get(self.pos) {
            match c {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'%' => {
                    while self.src.get(self.pos).is_some_and(|&c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn err<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err((self.line, msg.into()))
    }

    fn expect(&mut self, c: u8) -> PResult<()> {
        self.skip_ws();
        if self.src.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(format!("expected `{}`", c as char))
        }
    }

    fn quoted(&mut self, q: u8) -> PResult<String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.src.get(self.pos) {
                None => return self.err("unterminated quote"),
                Some(&c) if c == q => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&n) = self.src.get(self.pos + 1) else {
                        return self.err("unterminated escape");
                    };
                    out.push(match n {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.pos += 2;
                }
                Some(&c) => {
                    if c == b'\n' {
                        self.line += 1;
                    }
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).or_else(|_| self.err("not UTF-8"))
    }

    fn seq(&mut self, close: u8) -> PResult<Vec<Term>> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.src.get(self.pos) == Some(&close) {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(self.term()?);
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(&c) if c == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return self.err(format!("expected `,` or `{}`", close as char)),
            }
        }
    }

    fn term(&mut self) -> PResult<Term> {
        self.skip_ws();
        match self.src.get(self.pos) {
            Some(b'{') => Ok(Term::Tuple(self.seq(b'}')?)),
            Some(b'[') => Ok(Term::List(self.seq(b']')?)),
            Some(b'"') => Ok(Term::Str(self.quoted(b'"')?)),
            Some(b'\'') => Ok(Term::Atom(self.quoted(b'\'')?)),
            Some(c) if c.is_ascii_lowercase() => {
                let start = self.pos;
                while self
                    .src
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'@')
                {
                    self.pos += 1;
                }
                Ok(Term::Atom(
                    String::from_utf8_lossy(&self.src[start..self.pos]).into_owned(),
                ))
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let start = self.pos;
                self.pos += 1;
                while self.src.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                let text = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
                text.parse()
                    .map(Term::Num)
                    .or_else(|_| self.err("bad number"))
            }
            Some(c) => self.err(format!("unexpected `{}`", *c as char)),
            None => self.err("unexpected end of file"),
        }
    }
}

fn parse_net(text: &str) -> Option<Who> {
    let (ip, prefix) = tributary_config::security::parse_ip_net(text)?;
    Some(Who::IpNet(ip, prefix))
}

/// A subject: alternatives (for `'or'`), each a conjunction.
fn subject(t: &Term) -> Result<Vec<Vec<Who>>, String> {
    match t {
        Term::Atom(a) if a == "all" => Ok(vec![vec![Who::All]]),
        Term::Tuple(items) => match items.as_slice() {
            [Term::Atom(k), Term::Str(v)] if k == "username" || k == "user" => {
                Ok(vec![vec![Who::Username(v.clone())]])
            }
            [Term::Atom(k), Term::Str(v)] if k == "clientid" || k == "client" => {
                Ok(vec![vec![Who::ClientId(v.clone())]])
            }
            [Term::Atom(k), Term::Str(v)] if k == "ipaddr" => parse_net(v)
                .map(|w| vec![vec![w]])
                .ok_or_else(|| format!("bad address or CIDR range {v:?}")),
            [Term::Atom(k), Term::List(vs)] if k == "ipaddrs" => vs
                .iter()
                .map(|v| match v {
                    Term::Str(s) => parse_net(s)
                        .map(|w| vec![w])
                        .ok_or_else(|| format!("bad address or CIDR range {s:?}")),
                    _ => Err("ipaddrs takes a list of strings".into()),
                })
                .collect(),
            [Term::Atom(k), Term::List(parts)] if k == "and" => {
                let mut all = Vec::new();
                for p in parts {
                    let mut alts = subject(p)?;
                    if alts.len() != 1 {
                        return Err("'or' / ipaddrs inside 'and' is not supported".into());
                    }
                    all.append(&mut alts[0]);
                }
                Ok(vec![all])
            }
            [Term::Atom(k), Term::List(parts)] if k == "or" => {
                let mut alts = Vec::new();
                for p in parts {
                    alts.extend(subject(p)?);
                }
                Ok(alts)
            }
            [Term::Atom(_), Term::Tuple(inner)] if matches!(inner.first(), Some(Term::Atom(r)) if r == "re") => {
                Err("regular expressions ({re, ...}) are not supported".into())
            }
            _ => Err(format!("unknown subject {t:?}")),
        },
        _ => Err(format!("unknown subject {t:?}")),
    }
}

fn action(t: &Term) -> Result<RuleAction, String> {
    match t {
        Term::Atom(a) if a == "publish" => Ok(RuleAction::Publish),
        Term::Atom(a) if a == "subscribe" => Ok(RuleAction::Subscribe),
        Term::Atom(a) if a == "all" || a == "pubsub" => Ok(RuleAction::All),
        Term::Tuple(_) => Err("QoS / retain conditions on actions are not supported".into()),
        _ => Err(format!("unknown action {t:?} (publish, subscribe or all)")),
    }
}

fn topic(t: &Term) -> Result<String, String> {
    match t {
        Term::Str(s) if !s.is_empty() => Ok(s.clone()),
        Term::Tuple(items) => match items.as_slice() {
            [Term::Atom(eq), Term::Str(s)] if eq == "eq" => Ok(format!("eq {s}")),
            _ => Err(format!("unknown topic {t:?}")),
        },
        _ => Err(format!("unknown topic {t:?}")),
    }
}

fn permission(t: &Term) -> Result<Permission, String> {
    match t {
        Term::Atom(a) if a == "allow" => Ok(Permission::Allow),
        Term::Atom(a) if a == "deny" => Ok(Permission::Deny),
        _ => Err(format!("expected allow or deny, got {t:?}")),
    }
}

/// Parse the text of an ACL file (`name` is used in errors).
pub fn parse(name: &str, text: &str) -> Result<AclFile, AclFileError> {
    let mut p = Parser {
        src: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut out = AclFile::default();
    let err = |line, message: String| AclFileError {
        file: name.to_owned(),
        line,
        message,
    };
    loop {
        p.skip_ws();
        if p.pos >= p.src.len() {
            break;
        }
        let line = p.line;
        let term = p.term().map_err(|(l, m)| err(l, m))?;
        p.expect(b'.').map_err(|(l, m)| err(l, m))?;
        if out.catch_all.is_some() {
            return Err(err(
                line,
                "rule after the catch-all `{allow|deny, all}.` can never match".into(),
            ));
        }
        let Term::Tuple(items) = term else {
            return Err(err(
                line,
                "a rule is a tuple `{Permission, Who, Action, Topics}`".into(),
            ));
        };
        match items.as_slice() {
            [perm, Term::Atom(all)] if all == "all" => {
                out.catch_all = Some(permission(perm).map_err(|m| err(line, m))?);
            }
            [perm, who, act, topics] => {
                let permission = permission(perm).map_err(|m| err(line, m))?;
                let alternatives = subject(who).map_err(|m| err(line, m))?;
                let action = action(act).map_err(|m| err(line, m))?;
                let topics = match topics {
                    Term::List(ts) => ts.iter().map(topic).collect::<Result<Vec<_>, _>>(),
                    single => topic(single).map(|t| vec![t]),
                }
                .map_err(|m| err(line, m))?;
                if topics.is_empty() {
                    return Err(err(line, "empty topic list".into()));
                }
                for who in alternatives {
                    out.rules.push(AclRule {
                        permission,
                        who,
                        action,
                        topics: topics.clone(),
                    });
                }
            }
            _ => {
                return Err(err(
                    line,
                    "a rule is `{Permission, Who, Action, Topics}` or `{Permission, all}`".into(),
                ))
            }
        }
    }
    Ok(out)
}

/// Read and parse the file at `path`.
pub fn load(path: &Path) -> Result<AclFile, AclFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| AclFileError {
        file: name.clone(),
        line: 0,
        message: e.to_string(),
    })?;
    parse(&name, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_core::auth::{Action, Authorizer, RuleAuthorizer};
    use tributary_core::ClientInfo;

    const EMQX_DEFAULT: &str = r#"
%% EMQX's shipped acl.conf
{allow, {username, {re, "^dashboard$"}}, subscribe, ["$SYS/#"]}.
"#;

    const FILE: &str = r##"
%% comment
{allow, {username, "dashboard"}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
{allow, {'and', [{clientid, "c1"}, {ipaddr, "10.0.0.0/8"}]}, publish, ["t/%c/#"]}.
{allow, {'or', [{user, "a"}, {user, "b"}]}, publish, "ab/#"}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{allow, all}.
"##;

    fn client(id: &str, user: Option<&str>, ip: &str) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            username: user.map(String::from),
            peer: Some(format!("{ip}:1000").parse().expect("addr")),
            protocol: "mqtt",
        }
    }

    #[test]
    fn emqx_style_file() {
        let f = parse("acl.conf", FILE).expect("parse");
        assert_eq!(f.rules.len(), 6);
        assert_eq!(f.catch_all, Some(Permission::Allow));
        let authz = RuleAuthorizer {
            rules: f.rules,
            no_match: Permission::Deny,
        };
        let remote = client("c1", None, "10.1.1.1");
        assert_eq!(
            authz.authorize(&remote, Action::Subscribe, "#"),
            Permission::Deny
        );
        assert_eq!(
            authz.authorize(&remote, Action::Subscribe, "$SYS/x"),
            Permission::Deny
        );
        assert_eq!(
            authz.authorize(&remote, Action::Publish, "t/c1/x"),
            Permission::Allow
        );
        let local = client("x", None, "127.0.0.1");
        assert_eq!(
            authz.authorize(&local, Action::Subscribe, "#"),
            Permission::Allow
        );
        let dash = client("d", Some("dashboard"), "10.9.9.9");
        assert_eq!(
            authz.authorize(&dash, Action::Subscribe, "$SYS/#"),
            Permission::Allow
        );
        let b = client("q", Some("b"), "10.9.9.9");
        assert_eq!(
            authz.authorize(&b, Action::Publish, "ab/1"),
            Permission::Allow
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("f", EMQX_DEFAULT).expect_err("re unsupported");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("regular expressions"), "{e}");
        let e = parse("f", "{allow, all}.\n{deny, all, all, [\"#\"]}.").expect_err("dead rule");
        assert_eq!(e.line, 2);
        let e = parse("f", "{allow, all, publish, [\"a\"]}").expect_err("no dot");
        assert!(e.message.contains("expected `.`"), "{e}");
        let e = parse("f", "{allow, {ipaddr, \"10.0.0.0/40\"}, all, [\"#\"]}.").expect_err("cidr");
        assert!(e.message.contains("CIDR"), "{e}");
    }
}
