//! STOMP frames as plain data (STOMP 1.2 §"STOMP Frames"), shared by every
//! protocol version.
//!
//! A frame is a command, an ordered list of headers and a body. Header
//! order is kept and repeated headers are allowed on the wire; by the spec
//! only the first occurrence counts ([`Frame::header`]). Header names and
//! values are the *unescaped* strings; escaping is the codec's business.

use bytes::Bytes;

/// The frame commands of STOMP 1.0–1.2, client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client: open a connection (all versions).
    Connect,
    /// Client: open a connection (1.1+ alias of CONNECT).
    Stomp,
    /// Client: publish.
    Send,
    /// Client: subscribe.
    Subscribe,
    /// Client: unsubscribe.
    Unsubscribe,
    /// Client: acknowledge.
    Ack,
    /// Client: negative acknowledgement (1.1+).
    Nack,
    /// Client: begin a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: abort a transaction.
    Abort,
    /// Client: close gracefully.
    Disconnect,
    /// Server: connection accepted.
    Connected,
    /// Server: a message for a subscription.
    Message,
    /// Server: a receipt.
    Receipt,
    /// Server: an error (the connection is then closed).
    Error,
}

impl Command {
    /// Every command, for tests and generators.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parse a command line (exact, case-sensitive as the spec requires).
    pub fn parse(text: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == text)
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped (1.2 §"Value Encoding").
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }

    /// Frames that may carry a body (1.2: SEND, MESSAGE and ERROR only).
    pub fn allows_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// Headers in wire order, unescaped.
    pub headers: Vec<(String, String)>,
    /// The body (may contain NULs when sent with `content-length`).
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Builder: append a header.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Builder: set the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name` (later repeats are
    /// ignored, 1.2 §"Repeated Header Entries").
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Append a header.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }
}
