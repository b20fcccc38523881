//! SockJS URL scheme under a service's base URL (sockjs-protocol
//! "Base URL", "Session URLs"): what a path means, before any I/O.

/// A session transport (`/{server}/{session}/{transport}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `websocket`: SockJS framing over a WebSocket.
    WebSocket,
    /// `xhr`: polling.
    Xhr,
    /// `xhr_send`: messages from the client.
    XhrSend,
    /// `xhr_streaming`.
    XhrStreaming,
    /// `eventsource`.
    EventSource,
    /// `htmlfile`.
    HtmlFile,
    /// `jsonp`: polling with a callback.
    Jsonp,
    /// `jsonp_send`: messages from the client, form-encoded or raw.
    JsonpSend,
}

impl Transport {
    fn parse(s: &str) -> Option<Transport> {
        Some(match s {
            "websocket" => Transport::WebSocket,
            "xhr" => Transport::Xhr,
            "xhr_send" => Transport::XhrSend,
            "xhr_streaming" => Transport::XhrStreaming,
            "eventsource" => Transport::EventSource,
            "htmlfile" => Transport::HtmlFile,
            "jsonp" => Transport::Jsonp,
            "jsonp_send" => Transport::JsonpSend,
            _ => return None,
        })
    }
}

/// What a path below the base URL addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `` or `/`: the greeting.
    Greeting,
    /// `/info`.
    Info,
    /// `/iframe.html`, `/iframe-{version}.html`.
    Iframe,
    /// `/websocket`: a raw WebSocket, no SockJS framing.
    RawWebSocket,
    /// `/{server}/{session}/{transport}`.
    Session {
        /// The session id (the server id is ignored).
        session: &'a str,
        /// The transport.
        transport: Transport,
    },
    /// Anything else: 404.
    NotFound,
}

/// Classify `rest`, the path after the base URL (starting with `/` or empty).
pub fn route(rest: &str) -> Route<'_> {
    match rest {
        "" | "/" => return Route::Greeting,
        "/info" => return Route::Info,
        "/websocket" => return Route::RawWebSocket,
        _ => {}
    }
    if let Some(name) = rest.strip_prefix("/iframe") {
        if let Some(middle) = name.strip_suffix(".html") {
            if middle.bytes().all(|b| {
                b.is_ascii_digit() || b.is_ascii_lowercase() || matches!(b, b'-' | b'.' | b'_')
            }) {
                return Route::Iframe;
            }
        }
        return Route::NotFound;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::NotFound;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [server, session, transport] = parts.as_slice() else {
        return Route::NotFound;
    };
    let ok = |s: &str| !s.is_empty() && !s.contains('.');
    match Transport::parse(transport) {
        Some(transport) if ok(server) && ok(session) => Route::Session { session, transport },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(""), Route::Greeting);
        assert_eq!(route("/"), Route::Greeting);
        assert_eq!(route("/info"), Route::Info);
        for ok in [
            "/iframe.html",
            "/iframe-a.html",
            "/iframe-.html",
            "/iframe-0.1.2abc-dirty.2144.html",
        ] {
            assert_eq!(route(ok), Route::Iframe, "{ok}");
        }
        for bad in [
            "/iframe.htm",
            "/iframe",
            "/IFRAME.HTML",
            "/iframe.HTML",
            "/iframe-/.html",
            "/a",
            "/a.html",
            "//",
            "///",
            "/a/a",
            "/a/a/",
            "/a./a/xhr",
            "/a/a./xhr",
            "/./. /xhr",
            "///xhr",
            "//xhr",
            "/a/a/foo",
        ] {
            assert_eq!(route(bad), Route::NotFound, "{bad}");
        }
        assert_eq!(
            route("/000/abc/xhr_send"),
            Route::Session {
                session: "abc",
                transport: Transport::XhrSend
            }
        );
        assert_eq!(route("/websocket"), Route::RawWebSocket);
    }
}
