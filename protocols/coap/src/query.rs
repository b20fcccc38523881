//! The query parameters of EMQX's CoAP scheme (`?clientid=&token=&qos=…`),
//! with their short names (`c u p t q r`), and percent-decoding of path
//! segments and query values.

use tributary_core::QoS;

/// Parsed query parameters; unknown names are ignored (as EMQX does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `clientid` / `c`.
    pub clientid: Option<String>,
    /// `username` / `u`.
    pub username: Option<String>,
    /// `password` / `p`.
    pub password: Option<String>,
    /// `token` / `t`.
    pub token: Option<String>,
    /// `qos` / `q`.
    pub qos: Option<QoS>,
    /// `retain` / `r`.
    pub retain: Option<bool>,
    /// `expiry`: message expiry interval in seconds.
    pub expiry: Option<u32>,
}

/// Why a query was refused (answered 4.00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub &'static str);

impl Query {
    /// Parse Uri-Query items `name=value`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Result<Query, BadQuery> {
        let mut q = Query::default();
        for item in items {
            let item = String::from_utf8_lossy(item);
            let (name, value) = item.split_once('=').unwrap_or((&item, ""));
            let value = percent_decode(value);
            match name {
                "clientid" | "c" => q.clientid = Some(value),
                "username" | "u" => q.username = Some(value),
                "password" | "p" => q.password = Some(value),
                "token" | "t" => q.token = Some(value),
                "qos" | "q" => {
                    let level = value
                        .parse::<u8>()
                        .ok()
                        .and_then(QoS::from_u8)
                        .ok_or(BadQuery("qos must be 0, 1 or 2"))?;
                    q.qos = Some(level);
                }
                "retain" | "r" => {
                    q.retain = Some(match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(BadQuery("retain must be true or false")),
                    })
                }
                "expiry" => {
                    q.expiry = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| BadQuery("expiry must be a number of seconds"))?,
                    )
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Decode `%XX` sequences; anything malformed is kept as it is. Invalid
/// UTF-8 after decoding is replaced (topics are UTF-8).
pub fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(items: &[&str]) -> Result<Query, BadQuery> {
        Query::parse(items.iter().map(|s| s.as_bytes()))
    }

    #[test]
    fn long_and_short_names() {
        let q = parse(&[
            "c=dev1",
            "u=user",
            "p=pw%21",
            "t=abc",
            "q=2",
            "r=true",
            "expiry=60",
            "x=1",
        ])
        .expect("query");
        assert_eq!(q.clientid.as_deref(), Some("dev1"));
        assert_eq!(q.password.as_deref(), Some("pw!"));
        assert_eq!(q.qos, Some(QoS::ExactlyOnce));
        assert_eq!(q.retain, Some(true));
        assert_eq!(q.expiry, Some(60));
        assert!(parse(&["qos=3"]).is_err());
        assert!(parse(&["retain=yes"]).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("%23"), "#");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
