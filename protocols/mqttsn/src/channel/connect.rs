//! CONNECT and the will (§6.3, §6.4): the will flow, authentication
//! (answering now or later), the session, will updates.

#[allow(clippy::wildcard_imports)]
use super::*;

// CONNECT and the will (§6.3, §6.4).
impl Channel {
    /// The one place a CONNECT is refused: CONNACK with `code`, then close.
    pub(super) fn refuse_connect(&mut self, code: ReturnCode, why: &'static str, now: Instant) {
        debug!(?code, why, "CONNECT refused");
        self.output.push(Packet::ConnAck { code });
        if let Some(old) = self.handle.take() {
            self.broker.close_session(&old, CloseKind::Abnormal, now);
        }
        self.state = State::Closed;
    }

    pub(super) fn handle_connect(&mut self, c: Connect, now: Instant) {
        if c.protocol_id != 0x01 {
            return self.refuse_connect(
                ReturnCode::NotSupported,
                "unknown ProtocolId (§5.3.8)",
                now,
            );
        }
        if c.client_id.is_empty() || c.client_id.len() > self.config.max_clientid_len {
            return self.refuse_connect(ReturnCode::NotSupported, "client id length (§5.3.1)", now);
        }
        if c.will {
            self.state = State::WaitWillTopic(c);
            self.output.push(Packet::WillTopicReq);
        } else {
            self.complete_connect(c, None, now);
        }
    }

    pub(super) fn core_will(
        &self,
        client: &ClientInfo,
        w: &WillTopic,
        payload: Bytes,
    ) -> Option<Will> {
        let topic = self.config.mount(&w.topic);
        self.broker.check_topic_name(&topic).ok()?;
        if !self.broker.authorize(client, Action::Publish, &topic) {
            return None;
        }
        let mut message = Message::new(topic, payload, core_qos(w.qos), w.retain);
        message.publisher = Some(client.client_id.clone());
        Some(Will {
            message,
            delay_interval: 0,
            message_expiry_interval: None,
        })
    }

    pub(super) fn complete_connect(
        &mut self,
        c: Connect,
        will: Option<(WillTopic, Bytes)>,
        now: Instant,
    ) {
        let client = ClientInfo {
            client_id: c.client_id.as_str().into(),
            username: None,
            peer: self.peer,
            protocol: "mqtt-sn",
        };
        match self.broker.authenticator().check(&client, None) {
            AuthCheck::Ready(outcome) => self.connect_authenticated(c, will, client, outcome, now),
            AuthCheck::Pending(decision) => {
                debug!(client_id = %client.client_id, "waiting for the authentication backend");
                self.auth_future = Some(decision);
                self.state = State::Authenticating(Box::new(ParkedConnect {
                    connect: c,
                    will,
                    client,
                }));
            }
        }
    }

    /// An authentication decision the driver must await and pass to
    /// [`Channel::handle_auth_result`]; meanwhile it feeds no messages.
    pub fn take_auth_future(&mut self) -> Option<AuthFuture> {
        self.auth_future.take()
    }

    /// True while a CONNECT waits for an authentication backend.
    pub fn is_authenticating(&self) -> bool {
        matches!(self.state, State::Authenticating(_))
    }

    /// The authentication backend answered for the parked CONNECT.
    pub fn handle_auth_result(&mut self, outcome: AuthOutcome, now: Instant) {
        let State::Authenticating(parked) = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let ParkedConnect {
            connect,
            will,
            client,
        } = *parked;
        self.connect_authenticated(connect, will, client, outcome, now);
    }

    pub(super) fn connect_authenticated(
        &mut self,
        c: Connect,
        will: Option<(WillTopic, Bytes)>,
        client: ClientInfo,
        outcome: AuthOutcome,
        now: Instant,
    ) {
        if outcome != AuthOutcome::Allow {
            return self.refuse_connect(ReturnCode::NotSupported, "not authorized", now);
        }
        let core_will = match &will {
            Some((w, payload)) => match self.core_will(&client, w, payload.clone()) {
                Some(cw) => Some(cw),
                None => {
                    return self.refuse_connect(
                        ReturnCode::NotSupported,
                        "will topic invalid or not authorized",
                        now,
                    )
                }
            },
            None => None,
        };
        let same_client = self
            .client
            .as_ref()
            .is_some_and(|old| old.client_id == client.client_id);
        let resume_in_place =
            same_client && !c.clean_session && self.handle.as_ref().is_some_and(|h| h.is_owner());
        if resume_in_place {
            if let Some(h) = &self.handle {
                h.set_will(core_will);
            }
        } else {
            if let Some(old) = self.handle.take() {
                self.broker.close_session(
                    &old,
                    CloseKind::Normal {
                        publish_will: false,
                    },
                    now,
                );
            }
            self.pending.clear();
            self.registering = None;
            self.retries.clear();
            self.registry = Registry::new(self.config.max_registered_topics);
            let opened = self.broker.open_session(
                SessionRequest {
                    client: client.clone(),
                    clean_start: c.clean_session,
                    expiry_interval: if c.clean_session {
                        0
                    } else {
                        self.config.session_expiry
                    },
                    will: core_will,
                },
                now,
            );
            info!(client_id = %client.client_id, clean_session = c.clean_session,
                  session_present = opened.session_present, "client connected");
            self.handle = Some(opened.handle);
            for resend in opened.resend {
                match resend {
                    Resend::Publish(out) => self.pending.push_back(out),
                    Resend::PubRel(msg_id) => {
                        self.output.push(Packet::PubRel { msg_id });
                        self.arm_retry(now);
                    }
                }
            }
        }
        self.intake = Some(self.broker.publisher(client.clone()));
        self.client = Some(client);
        self.will = will;
        self.keep_alive = c.duration;
        self.output.push(Packet::ConnAck {
            code: ReturnCode::Accepted,
        });
        self.state = State::Active;
        self.flush_pending(now);
        self.poll_deliveries(now);
    }

    pub(super) fn handle_will_topic_update(&mut self, w: Option<WillTopic>) {
        let code = match (w, self.client.clone(), self.handle.clone()) {
            (None, _, Some(h)) => {
                self.will = None;
                h.set_will(None);
                ReturnCode::Accepted
            }
            (Some(w), Some(client), Some(h)) => {
                let payload = self
                    .will
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                match self.core_will(&client, &w, payload.clone()) {
                    Some(cw) => {
                        h.set_will(Some(cw));
                        self.will = Some((w, payload));
                        ReturnCode::Accepted
                    }
                    None => ReturnCode::NotSupported,
                }
            }
            _ => ReturnCode::NotSupported,
        };
        self.output.push(Packet::WillTopicResp { code });
    }

    pub(super) fn handle_will_msg_update(&mut self, payload: Bytes) {
        let code = match (self.will.clone(), self.client.clone(), self.handle.clone()) {
            (Some((w, _)), Some(client), Some(h)) => {
                match self.core_will(&client, &w, payload.clone()) {
                    Some(cw) => {
                        h.set_will(Some(cw));
                        self.will = Some((w, payload));
                        ReturnCode::Accepted
                    }
                    None => ReturnCode::NotSupported,
                }
            }
            // No will topic to attach the message to.
            _ => ReturnCode::NotSupported,
        };
        self.output.push(Packet::WillMsgResp { code });
    }
}
