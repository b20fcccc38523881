//! CONNECT and authentication (§3.1, §4.12): validation, the will, the
//! authentication chain (answering now or later), enhanced authentication,
//! the session and the CONNACK.

#[allow(clippy::wildcard_imports)]
use super::*;

// CONNECT (§3.1).
impl Channel {
    pub(super) fn refuse_connect(&mut self, reason: u8, why: &'static str) {
        debug!(
            reason = format_args!("{reason:#04x}"),
            why, "CONNECT refused"
        );
        let code = if self.version.is_v5() {
            reason
        } else {
            connack_v3(reason)
        };
        let mut properties = Properties::default();
        if self.version.is_v5() {
            properties.reason_string = Some(why.to_string());
        }
        self.output.push(Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties,
        }));
        self.close_now();
    }

    pub(super) fn handle_connect(&mut self, connect: Connect, now: Instant) {
        self.version = connect.protocol;
        let v5 = self.version.is_v5();
        let cfg = self.config.clone();
        let props = &connect.properties;
        if v5 {
            self.peer_max_packet_size = props.maximum_packet_size.unwrap_or(u32::MAX);
        }

        // Client identifier rules: [MQTT-3.1.3-7], [MQTT-3.1.3-8]; 3.1 limits it to 23 bytes.
        let mut assigned = None;
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if !v5 && (!connect.clean_start || self.version == ProtocolVersion::V3_1) {
                return self.refuse_connect(
                    rc::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client id needs clean session",
                );
            }
            let id = generated_client_id();
            if v5 {
                assigned = Some(id.clone());
            }
            id.into()
        } else {
            if connect.client_id.len() > cfg.max_clientid_len
                || (self.version == ProtocolVersion::V3_1 && connect.client_id.len() > 23)
            {
                return self.refuse_connect(rc::CLIENT_IDENTIFIER_NOT_VALID, "client id too long");
            }
            connect.client_id.as_str().into()
        };

        // The will (§3.1.2.5): its topic must be a valid name.
        let mut will = None;
        if let Some(w) = &connect.will {
            if self.broker.check_topic_name(&w.topic).is_err() {
                return self.refuse_connect(rc::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if w.qos > cfg.max_qos {
                return self.refuse_connect(rc::QOS_NOT_SUPPORTED, "will QoS not supported");
            }
            if w.retain && !cfg.retain_available {
                return self.refuse_connect(rc::RETAIN_NOT_SUPPORTED, "will retain not supported");
            }
            let mut message = Message::new(
                w.topic.as_str(),
                w.payload.clone(),
                core_qos(w.qos),
                w.retain,
            );
            message.publisher = Some(client_id.clone());
            message.properties = message_properties(&w.properties);
            will = Some(Will {
                message,
                delay_interval: w.properties.will_delay_interval.unwrap_or(0),
                message_expiry_interval: w.properties.message_expiry_interval,
            });
        }

        let pre = self.pre_connect.take();
        let client = ClientInfo {
            client_id: client_id.clone(),
            username: pre
                .as_ref()
                .and_then(|p| p.transport_username.clone())
                .or_else(|| connect.username.clone()),
            peer: pre.and_then(|p| p.peer),
            protocol: "mqtt",
        };
        let mut parked = ParkedConnect {
            connect: Box::new(connect),
            client,
            will,
            assigned,
            enhanced: None,
        };
        if let Some(method) = parked.connect.properties.authentication_method.clone() {
            // Enhanced authentication (§4.12).
            match self
                .broker
                .authenticator()
                .enhanced(&method, &parked.client)
            {
                EnhancedStart::Unsupported => {
                    return self.refuse_connect(
                        rc::BAD_AUTHENTICATION_METHOD,
                        "authentication method not supported",
                    )
                }
                EnhancedStart::Refused(outcome) => {
                    self.accept_auth_outcome(outcome);
                    return;
                }
                EnhancedStart::Started(exchange) => {
                    parked.enhanced = Some((method, exchange));
                    let data = parked
                        .connect
                        .properties
                        .authentication_data
                        .clone()
                        .unwrap_or_default();
                    self.state = State::Authenticating(Box::new(parked));
                    return self.enhanced_step(&data, now);
                }
            }
        }
        let check = self
            .broker
            .authenticator()
            .check(&parked.client, parked.connect.password.as_deref());
        match check {
            AuthCheck::Ready(outcome) => {
                if self.accept_auth_outcome(outcome) {
                    self.finish_connect(parked, None, now);
                }
            }
            AuthCheck::Pending(future) => {
                self.pending_auth = Some(future);
                self.state = State::Authenticating(Box::new(parked));
            }
        }
    }

    /// Count the outcome; refuse the CONNECT unless it is `Allow`.
    pub(super) fn accept_auth_outcome(&mut self, outcome: AuthOutcome) -> bool {
        let metrics = self.broker.metrics();
        match outcome {
            AuthOutcome::Allow => {
                metrics.inc(&metrics.auth_success);
                true
            }
            AuthOutcome::BadCredentials => {
                metrics.inc(&metrics.auth_failure);
                self.refuse_connect(rc::BAD_USERNAME_OR_PASSWORD, "bad user name or password");
                false
            }
            AuthOutcome::NotAuthorized => {
                metrics.inc(&metrics.auth_failure);
                self.refuse_connect(rc::NOT_AUTHORIZED, "not authorized");
                false
            }
        }
    }

    /// An AUTH packet during enhanced authentication.
    pub(super) fn handle_auth_packet(&mut self, auth: Auth, now: Instant) {
        let method_ok = match &self.state {
            State::Authenticating(p) => p.enhanced.as_ref().is_some_and(|(m, _)| {
                auth.properties.authentication_method.as_deref() == Some(m.as_str())
            }),
            _ => false,
        };
        if auth.reason != rc::CONTINUE_AUTHENTICATION || !method_ok {
            // [MQTT-4.12.0-5]: same method; only Continue before CONNACK.
            return self.refuse_connect(rc::PROTOCOL_ERROR, "bad AUTH during authentication");
        }
        let data = auth
            .properties
            .authentication_data
            .clone()
            .unwrap_or_default();
        self.enhanced_step(&data, now);
    }

    pub(super) fn enhanced_step(&mut self, data: &[u8], now: Instant) {
        let State::Authenticating(parked) = &mut self.state else {
            return;
        };
        let Some((method, exchange)) = parked.enhanced.as_mut() else {
            return;
        };
        let method = method.clone();
        match exchange.step(data) {
            EnhancedStep::Continue(out) => {
                self.output.push(Packet::Auth(Auth {
                    reason: rc::CONTINUE_AUTHENTICATION,
                    properties: PropertyValues {
                        authentication_method: Some(method),
                        authentication_data: Some(out.into()),
                        ..PropertyValues::default()
                    }
                    .into(),
                }));
            }
            EnhancedStep::Success { username, data } => {
                let State::Authenticating(parked) =
                    std::mem::replace(&mut self.state, State::Closed)
                else {
                    return;
                };
                let mut parked = *parked;
                parked.enhanced = None;
                parked.client.username = Some(username);
                if self.accept_auth_outcome(AuthOutcome::Allow) {
                    self.finish_connect(parked, Some((method, data)), now);
                }
            }
            EnhancedStep::Failure(outcome) => {
                let outcome = if outcome == AuthOutcome::Allow {
                    AuthOutcome::NotAuthorized
                } else {
                    outcome
                };
                self.accept_auth_outcome(outcome);
            }
        }
    }

    /// The second half of CONNECT, once the client is authenticated: will
    /// ACL, session, CONNACK. `enhanced` = (method, final data) for CONNACK.
    pub(super) fn finish_connect(
        &mut self,
        parked: ParkedConnect,
        enhanced: Option<(String, Option<Vec<u8>>)>,
        now: Instant,
    ) {
        let ParkedConnect {
            connect,
            client,
            will,
            assigned,
            ..
        } = parked;
        let connect = *connect;
        let v5 = self.version.is_v5();
        let cfg = self.config.clone();
        let props = &connect.properties;
        let client_id = client.client_id.clone();
        if let Some(w) = &will {
            if !self
                .broker
                .authorize(&client, Action::Publish, &w.message.topic)
            {
                return self.refuse_connect(rc::NOT_AUTHORIZED, "will topic not authorized");
            }
        }

        let requested_expiry = if v5 {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            cfg.v3_session_expiry
        };
        let max_expiry = self.broker.config().max_session_expiry;
        let expiry = requested_expiry.min(max_expiry);
        let keep_alive = match (v5, cfg.server_keep_alive, cfg.max_keep_alive) {
            (true, Some(imposed), _) => imposed,
            (true, None, Some(max)) if connect.keep_alive == 0 || connect.keep_alive > max => max,
            _ => connect.keep_alive,
        };

        let opened = self.broker.open_session(
            SessionRequest {
                client: client.clone(),
                clean_start: connect.clean_start,
                expiry_interval: expiry,
                will,
            },
            now,
        );
        info!(client_id = %client_id, peer = ?client.peer, version = ?self.version,
              clean_start = connect.clean_start, session_present = opened.session_present,
              "client connected");

        let mut properties = Properties::default();
        if v5 {
            properties.assigned_client_identifier = assigned;
            properties.receive_maximum = Some(cfg.receive_maximum).filter(|&r| r != 65535);
            properties.topic_alias_maximum = Some(cfg.topic_alias_maximum).filter(|&t| t > 0);
            properties.maximum_packet_size = Some(cfg.max_packet_size).filter(|&m| m < 268_435_460);
            if cfg.max_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(cfg.max_qos as u8);
            }
            if !cfg.retain_available {
                properties.retain_available = Some(0);
            }
            if !cfg.wildcard_subscription {
                properties.wildcard_subscription_available = Some(0);
            }
            if !cfg.shared_subscription {
                properties.shared_subscription_available = Some(0);
            }
            if expiry != requested_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            if keep_alive != connect.keep_alive || cfg.server_keep_alive.is_some() {
                properties.server_keep_alive = Some(keep_alive);
            }
            if let Some((method, data)) = enhanced {
                properties.authentication_method = Some(method);
                properties.authentication_data = data.map(Into::into);
            }
        }
        self.output.push(Packet::ConnAck(ConnAck {
            session_present: opened.session_present,
            code: rc::SUCCESS,
            properties,
        }));

        let keep_alive_window = keep_alive_window(keep_alive, cfg.keepalive_multiplier);
        self.handle = Some(opened.handle);
        self.state = State::Connected(Box::new(Connected {
            intake: self.broker.publisher(client),
            keep_alive_window,
            client_receive_maximum: props.receive_maximum.unwrap_or(65535),
            client_max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            client_topic_alias_max: if v5 {
                props.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            aliases: None,
            problem_information: props.request_problem_information.unwrap_or(1) == 1,
            connect_expiry_zero: requested_expiry == 0,
        }));

        // Resume: resend unacknowledged messages first, in order [MQTT-4.4.0-1].
        for resend in opened.resend {
            match resend {
                Resend::Publish(out) => {
                    self.push_publish(&out, now);
                }
                Resend::PubRel(id) => self.output.push(Packet::PubRel(ack(id, rc::SUCCESS))),
            }
        }
        self.poll_deliveries(now);
    }
}
