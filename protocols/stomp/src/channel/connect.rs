//! CONNECT / STOMP (1.2 §"Connecting"): version and heart-beat
//! negotiation, authentication (answering now or later), the session.

#[allow(clippy::wildcard_imports)]
use super::*;

// CONNECT / STOMP (1.2 §"Connecting").
impl Channel {
    pub(super) fn handle_connect(&mut self, frame: Frame, now: Instant) {
        let cfg = self.config.clone();
        // Version negotiation: the highest common version; none given = 1.0.
        let version = match frame.header("accept-version") {
            None => Version::V1_0,
            Some(list) => match list.split(',').filter_map(Version::parse).max() {
                Some(v) => v,
                None => {
                    self.version = Version::V1_2;
                    self.output.push(Output::Frame(
                        error_frame(
                            "unsupported protocol version",
                            format!("supported protocol versions are 1.0 1.1 1.2, got {list:?}"),
                            None,
                        )
                        .with("version", "1.0,1.1,1.2"),
                    ));
                    self.state = State::Closed;
                    return;
                }
            },
        };
        self.version = version;

        // Heart-beating (1.2 §"Heart-beating"): cx,cy from the client.
        let (cx, cy) = match frame.header("heart-beat") {
            None => (0, 0),
            Some(hb) => match parse_heartbeat(hb) {
                Some(v) => v,
                None => {
                    return self.violation(
                        "invalid heart-beat header",
                        format!("expected two comma-separated integers, got {hb:?}"),
                        None,
                    )
                }
            },
        };
        let sx = millis(cfg.heartbeat_send);
        let sy = millis(cfg.heartbeat_receive);
        let outgoing = if sx == 0 || cy == 0 { 0 } else { sx.max(cy) };
        let incoming = if sy == 0 || cx == 0 { 0 } else { sy.max(cx) };

        let given_id = frame
            .header("client-id")
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let client_id: Arc<str> = given_id.clone().unwrap_or_else(generated_client_id).into();
        let client = ClientInfo {
            client_id: client_id.clone(),
            username: self
                .transport_username
                .clone()
                .or_else(|| frame.header("login").map(str::to_owned)),
            peer: self.peer,
            protocol: "stomp",
        };
        let password = frame.header("passcode").map(str::as_bytes);
        let parked = ParkedConnect {
            client,
            given_id,
            host: frame.header("host").map(str::to_owned),
            announce: (sx, sy),
            outgoing,
            incoming,
        };
        match self.broker.authenticator().check(&parked.client, password) {
            AuthCheck::Ready(outcome) => self.complete_connect(parked, outcome, now),
            AuthCheck::Pending(decision) => {
                debug!(client_id = %parked.client.client_id, "waiting for the authentication backend");
                self.auth_future = Some(decision);
                self.state = State::Authenticating(Box::new(parked));
            }
        }
    }

    /// Authentication answered: refuse, or open the session and reply CONNECTED.
    pub(super) fn complete_connect(
        &mut self,
        parked: ParkedConnect,
        outcome: AuthOutcome,
        now: Instant,
    ) {
        let cfg = self.config.clone();
        let version = self.version;
        let ParkedConnect {
            client,
            given_id,
            host,
            announce: (sx, sy),
            outgoing,
            incoming,
        } = parked;
        let client_id = client.client_id.clone();
        match outcome {
            AuthOutcome::Allow => {}
            AuthOutcome::BadCredentials => {
                return self.violation("login failed", "bad login or passcode".into(), None)
            }
            AuthOutcome::NotAuthorized => {
                return self.violation("not authorized", "connection refused".into(), None)
            }
        }

        self.persistent = given_id.is_some()
            && cfg.unacked_on_disconnect == UnackedPolicy::Redeliver
            && cfg.session_expiry > 0;
        let opened = self.broker.open_session(
            SessionRequest {
                client: client.clone(),
                clean_start: !self.persistent,
                expiry_interval: if self.persistent {
                    cfg.session_expiry
                } else {
                    0
                },
                will: None,
            },
            now,
        );
        info!(client_id = %client_id, version = version.as_str(), host = ?host,
              session_present = opened.session_present, "STOMP client connected");

        let mut connected = Frame::new(Command::Connected);
        if version != Version::V1_0 {
            connected.push("version", version.as_str());
            connected.push("heart-beat", format!("{sx},{sy}"));
        }
        connected.push("server", cfg.server_name.clone());
        connected.push("session", client_id.to_string());
        self.output.push(Output::Frame(connected));

        self.send_interval = Duration::from_millis(outgoing);
        self.heartbeat_at = (outgoing > 0).then(|| now + self.send_interval);
        let receive_interval = Duration::from_millis(incoming);
        // Messages left unacknowledged by an earlier connection wait for a
        // matching SUBSCRIBE.
        let orphans = opened
            .resend
            .into_iter()
            .filter_map(|r| match r {
                Resend::Publish(o) => Some(o),
                Resend::PubRel(_) => None,
            })
            .collect();
        self.handle = Some(opened.handle);
        self.state = State::Connected(Box::new(Connected {
            intake: self.broker.publisher(client),
            subs: HashMap::new(),
            by_num: HashMap::new(),
            filters: HashMap::new(),
            pending: BTreeMap::new(),
            packet_refs: HashMap::new(),
            orphans,
            next_message: 1,
            transactions: HashMap::new(),
            receive_interval,
        }));
        self.poll_deliveries(now);
    }
}
