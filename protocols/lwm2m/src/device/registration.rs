//! The Client Registration interface (TS Core 1.1 §6.2) of a [`Device`]:
//! Register, Update (also handed over from another source port),
//! De-register, and the register/update/de-register events.

use super::*;

impl Device {
    pub(super) fn handle_request(&mut self, mut m: Message, now: Instant) {
        // A Register/Update whose object list arrives in blocks (RFC 7959
        // Block1; Wakaama does this with small block sizes): assembled with
        // the CoAP crate's Assembler, 2.31 Continue for each block but the last.
        if let Some(raw) = m.option(opt::BLOCK1) {
            let Some(block) = BlockValue::decode(raw) else {
                let mut r = response(Code::BAD_OPTION);
                r.payload = Bytes::from_static(b"malformed Block1 option");
                self.layer.respond(&m, r, now);
                return;
            };
            let key = format!("{}?{}", m.path().join("/"), m.queries().join("&"));
            let size1 = m.uint_option(opt::SIZE1).and_then(Result::ok);
            match self.block1.feed(&key, block, &m.payload, size1, now) {
                Ok(Assembled::NeedMore) => {
                    let mut r = response(Code::CONTINUE);
                    r.add_option(opt::BLOCK1, block.encode());
                    self.layer.respond(&m, r, now);
                    return;
                }
                Ok(Assembled::Complete(body)) => {
                    m.payload = body;
                }
                Err(e) => {
                    let code = match e {
                        BlockError::TooLarge => Code::REQUEST_ENTITY_TOO_LARGE,
                        _ => Code::REQUEST_ENTITY_INCOMPLETE,
                    };
                    self.layer.respond(&m, response(code), now);
                    return;
                }
            }
        }
        let path = m.path();
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        let result = match (m.code, segs.as_slice()) {
            (Code::POST, ["rd"]) => self.register(&m, now),
            (Code::POST, ["rd", ep]) => self.update(&m, ep, now),
            (Code::DELETE, ["rd", ep]) => self.deregister(ep, now),
            (_, ["rd", ..]) => Err((Code::METHOD_NOT_ALLOWED, "POST or DELETE on /rd")),
            _ => Err((Code::NOT_FOUND, "this server only has /rd")),
        };
        let registered = result.is_ok() && segs == ["rd"];
        match result {
            Ok(mut r) => {
                if let Some(raw) = m.option(opt::BLOCK1) {
                    // The final block is acknowledged in the answer (RFC 7959 §2.3).
                    r.add_option(opt::BLOCK1, raw.to_vec());
                }
                self.layer.respond(&m, r, now)
            }
            Err((code, why)) => {
                debug!(peer = %self.peer, %code, why, "registration request refused");
                let mut r = response(code);
                r.payload = Bytes::from_static(why.as_bytes());
                self.layer.respond(&m, r, now);
            }
        }
        // The register event and the 2.01 go out first, then auto-observations.
        if registered {
            self.auto_observe(now);
        }
    }

    pub(super) fn register(&mut self, m: &Message, now: Instant) -> Result<Message, Refusal> {
        let mut ep = None;
        let mut lt = 86400u32;
        let mut lwm2m = "1.0".to_string();
        let mut binding = "U".to_string();
        let mut sms = None;
        let mut q = false;
        for item in m.queries() {
            let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
            match k {
                "ep" => ep = Some(v.to_string()),
                "lt" => {
                    lt = v
                        .parse()
                        .map_err(|_| (Code::BAD_REQUEST, "lt is a number"))?
                }
                "lwm2m" => lwm2m = v.to_string(),
                "b" => binding = v.to_string(),
                "sms" => sms = Some(v.to_string()),
                "Q" => q = true,
                _ => {}
            }
        }
        let ep = ep
            .filter(|e| !e.is_empty() && !e.contains(['/', '+', '#']))
            .ok_or((
                Code::BAD_REQUEST,
                "ep (endpoint name) is missing or invalid",
            ))?;
        if !matches!(lwm2m.as_str(), "1.0" | "1" | "1.1" | "1.2") {
            // TS Core 1.1 §6.2.1: an unsupported version is 4.12.
            return Err((
                Code::new(4, 12),
                "LwM2M version not supported (1.0, 1.1, 1.2)",
            ));
        }
        let life = Duration::from_secs(u64::from(lt));
        if life < self.config.lifetime_min || life > self.config.lifetime_max {
            return Err((Code::BAD_REQUEST, "lifetime out of the accepted range"));
        }
        let text = std::str::from_utf8(&m.payload)
            .map_err(|_| (Code::BAD_REQUEST, "object list is not UTF-8"))?;
        let objects = link::object_list(text)
            .map_err(|_| (Code::BAD_REQUEST, "object list is not link format"))?;
        let client = ClientInfo {
            client_id: ep.as_str().into(),
            username: None,
            peer: Some(self.peer),
            protocol: "lwm2m",
        };
        match self.broker.authenticator().authenticate(&client, None) {
            AuthOutcome::Allow => {}
            _ => return Err((Code::FORBIDDEN, "endpoint not authorized")),
        }
        // A re-registration from this peer replaces its registration.
        self.drop_registration(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            "re-registered",
            now,
        );
        let opened = self.broker.open_session(
            SessionRequest {
                client: client.clone(),
                clean_start: true,
                expiry_interval: 0,
                will: None,
            },
            now,
        );
        let mountpoint = expand_mountpoint(&self.config.mountpoint, &ep);
        let filter = format!("{mountpoint}{}", self.config.topics.command);
        if self.broker.authorize(&client, Action::Subscribe, &filter) {
            if let Err(e) = self.broker.subscribe(
                &opened.handle,
                &filter,
                SubOptions::at(QoS::AtLeastOnce),
                now,
            ) {
                debug!(%ep, error = %e, "command topic not subscribable");
            }
        } else {
            debug!(%ep, %filter, "command subscription not authorized");
        }
        let queue_mode = q || binding.contains('Q');
        info!(%ep, lwm2m = %lwm2m, lt, binding = %binding, peer = %self.peer, "LwM2M device registered");
        self.reg = Some(Registration {
            ep: ep.clone(),
            lwm2m,
            lifetime: lt,
            binding,
            sms,
            queue_mode,
            objects,
            expires: now + life,
            last_seen: now,
            handle: opened.handle,
            publisher: self.broker.publisher(client),
            mountpoint,
        });
        self.directory.claim(&ep, self.peer);
        let event = self.event("register", true);
        self.publish(&self.config.topics.register.clone(), &event);
        let mut r = response(Code::CREATED);
        r.add_option(opt::LOCATION_PATH, b"rd".to_vec());
        r.add_option(opt::LOCATION_PATH, ep.into_bytes());
        Ok(r)
    }

    pub(super) fn event(&self, msg_type: &str, with_objects: bool) -> Json {
        let Some(r) = &self.reg else {
            return Json::Null;
        };
        let mut data = json!({
            "ep": r.ep, "lt": r.lifetime, "lwm2m": r.lwm2m, "b": r.binding,
            "alternatePath": r.objects.alternate_path,
        });
        if let Some(s) = &r.sms {
            data["sms"] = Json::from(s.as_str());
        }
        if with_objects {
            data["objectList"] = Json::from(r.objects.objects.clone());
        }
        json!({"msgType": msg_type, "data": data})
    }

    /// Validate an Update's parameters and object list before anything changes.
    pub(super) fn parse_update(
        &self,
        queries: &[String],
        payload: &[u8],
    ) -> Result<UpdateParams, Refusal> {
        let mut u = UpdateParams::default();
        for item in queries {
            let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
            match k {
                "lt" => {
                    let lt: u32 = v
                        .parse()
                        .map_err(|_| (Code::BAD_REQUEST, "lt is a number"))?;
                    let life = Duration::from_secs(u64::from(lt));
                    if life < self.config.lifetime_min || life > self.config.lifetime_max {
                        return Err((Code::BAD_REQUEST, "lifetime out of the accepted range"));
                    }
                    u.lifetime = Some(lt);
                }
                "b" => u.binding = Some(v.to_string()),
                "sms" => u.sms = Some(v.to_string()),
                "Q" => u.queue = true,
                _ => {}
            }
        }
        if !payload.is_empty() {
            let text = std::str::from_utf8(payload)
                .map_err(|_| (Code::BAD_REQUEST, "object list is not UTF-8"))?;
            u.objects = Some(
                link::object_list(text)
                    .map_err(|_| (Code::BAD_REQUEST, "object list is not link format"))?,
            );
        }
        Ok(u)
    }

    /// Apply a validated Update (from this peer or handed over by another).
    pub(super) fn apply_update(&mut self, u: UpdateParams, now: Instant) {
        let Some(r) = &mut self.reg else { return };
        if let Some(lt) = u.lifetime {
            r.lifetime = lt;
        }
        if let Some(b) = u.binding {
            r.queue_mode = b.contains('Q');
            r.binding = b;
        }
        if u.queue {
            r.queue_mode = true;
        }
        if let Some(s) = u.sms {
            r.sms = Some(s);
        }
        let has_objects = u.objects.is_some();
        if let Some(o) = u.objects {
            r.objects = o;
        }
        r.last_seen = now;
        r.expires = now + Duration::from_secs(u64::from(r.lifetime));
        debug!(ep = %r.ep, lt = r.lifetime, "registration updated");
        if has_objects || self.config.update_publish == UpdatePublish::Always {
            let event = self.event("update", has_objects);
            self.publish(&self.config.topics.update.clone(), &event);
        }
    }

    pub(super) fn update(
        &mut self,
        m: &Message,
        ep: &str,
        now: Instant,
    ) -> Result<Message, Refusal> {
        let u = self.parse_update(&m.queries(), &m.payload)?;
        if self.endpoint() == Some(ep) {
            self.apply_update(u, now);
            return Ok(response(Code::CHANGED));
        }
        // Registered through another address (clients that send Update
        // from a fresh socket): hand it to the peer holding the registration.
        let op = Remote::Update {
            queries: m.queries(),
            payload: m.payload.clone(),
        };
        if self.directory.forward(ep, op) {
            Ok(response(Code::CHANGED))
        } else {
            Err((Code::NOT_FOUND, "no such registration"))
        }
    }

    /// An Update or De-register for this peer's registration that arrived
    /// at another peer (see [`Directory`]).
    pub fn handle_remote(&mut self, op: Remote, now: Instant) {
        self.clock = now;
        match op {
            Remote::Update { queries, payload } => match self.parse_update(&queries, &payload) {
                Ok(u) => self.apply_update(u, now),
                Err((_, why)) => debug!(why, "handed-over update refused"),
            },
            Remote::Deregister => {
                info!(ep = ?self.endpoint(), "LwM2M device de-registered (through another address)");
                self.drop_registration(
                    Some(CloseKind::Normal {
                        publish_will: false,
                    }),
                    "deregistered",
                    now,
                );
            }
        }
        self.flush_queue(now);
    }

    pub(super) fn deregister(&mut self, ep: &str, now: Instant) -> Result<Message, Refusal> {
        if self.endpoint() != Some(ep) {
            return if self.directory.forward(ep, Remote::Deregister) {
                Ok(response(Code::DELETED))
            } else {
                Err((Code::NOT_FOUND, "no such registration"))
            };
        }
        info!(%ep, "LwM2M device de-registered");
        self.drop_registration(
            Some(CloseKind::Normal {
                publish_will: false,
            }),
            "deregistered",
            now,
        );
        Ok(response(Code::DELETED))
    }

    /// End the registration: publish the de-register event (unless taken
    /// over), answer what is pending and queued, close the session.
    pub(super) fn drop_registration(
        &mut self,
        close: Option<CloseKind>,
        reason: &str,
        _now: Instant,
    ) {
        if self.reg.is_none() {
            return;
        }
        if close.is_some() {
            let mut event = self.event("deregister", false);
            event["data"]["reason"] = Json::from(reason);
            self.publish(&self.config.topics.register.clone(), &event);
        }
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            self.layer.cancel(p.message_id);
            self.answer_locally(
                &p.cmd,
                Code::SERVICE_UNAVAILABLE,
                None,
                "device de-registered",
            );
        }
        let queued: Vec<Command> = self.queue.drain(..).collect();
        for c in queued {
            self.answer_locally(&c, Code::SERVICE_UNAVAILABLE, None, "device de-registered");
        }
        self.observations.clear();
        if let Some(r) = self.reg.take() {
            self.directory.release(&r.ep, self.peer);
            if let Some(kind) = close {
                self.broker.close_session(&r.handle, kind, _now);
            }
        }
    }
}
