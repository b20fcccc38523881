//! Requests to the device on behalf of applications (TS Core 1.1 §6.3–6.4):
//! submitting or buffering commands (queue mode, `max_inflight`), sending
//! them through the message layer, matching answers (piggy-backed,
//! separate, Block2) and notifications, and the answers the gateway makes
//! itself.

use super::*;

impl Device {
    pub(super) fn answer_locally(
        &mut self,
        cmd: &Command,
        code: Code,
        code_msg: Option<&str>,
        why: &str,
    ) {
        let body =
            command::local_response(&cmd.echo, &cmd.msg_type, &cmd.req_path, code, code_msg, why);
        self.publish(&self.config.topics.response.clone(), &body);
    }

    pub(super) fn handle_response(&mut self, m: Message, now: Instant) {
        if let Some(p) = self.pending.remove(&m.token) {
            // A request going out in Block1 blocks: the next one after 2.31.
            if let Some((body, num, szx)) = p.block1.clone() {
                if m.code == Code::CONTINUE {
                    // The device may ask for smaller blocks (§2.3).
                    let want = m
                        .option(opt::BLOCK1)
                        .and_then(BlockValue::decode)
                        .map_or(szx, |b| b.szx.min(szx));
                    let next = ((num + 1) as usize * (1usize << (szx + 4))) >> (want + 4);
                    self.send_block1(p, body, next as u32, want, now);
                    return;
                }
            }
            // Too large for the device: again in blocks of the size it names
            // (Block1 in the 4.13), else half of ours (§2.9.3).
            if m.code == Code::REQUEST_ENTITY_TOO_LARGE && !p.request.payload.is_empty() {
                let ours = p
                    .block1
                    .as_ref()
                    .map_or(self.config.block_szx.min(6), |b| b.2);
                let want = m
                    .option(opt::BLOCK1)
                    .and_then(BlockValue::decode)
                    .map(|b| b.szx)
                    .unwrap_or(ours.saturating_sub(1));
                if want < ours || (p.block1.is_none() && want <= ours) {
                    let body = p
                        .block1
                        .as_ref()
                        .map_or(p.request.payload.clone(), |b| b.0.clone());
                    debug!(szx = want, "device wants the request in smaller blocks");
                    self.send_block1(p, body, 0, want, now);
                    return;
                }
            }
            let block = m.option(opt::BLOCK2).and_then(BlockValue::decode);
            match block {
                Some(b) if m.code.class() == 2 => self.block2(p, b, m, now),
                _ => self.answer(p.cmd, p.first_token, m, now),
            }
            return;
        }
        if let Some(o) = self.observations.get(&m.token) {
            let seq = m.uint_option(opt::OBSERVE).and_then(Result::ok);
            let data = self.decode_data(&o.req_path, &o.path, &m, false);
            let mut body = command::envelope(&o.echo, "notify", data);
            body["seqNum"] = seq.map_or(Json::Null, Json::from);
            self.publish(&self.config.topics.notify.clone(), &body);
            if !m.code.is_response() || m.code.class() != 2 || seq.is_none() {
                // An error or a final response ends the observation (RFC 7641 §3.2).
                self.observations.remove(&m.token);
            }
            return;
        }
        debug!(peer = %self.peer, token = ?m.token, "response to no request; ignored");
    }

    pub(super) fn decode_data(
        &self,
        req_path: &str,
        path: &Path,
        m: &Message,
        discover: bool,
    ) -> Json {
        let mut data = json!({"reqPath": req_path, "code": m.code.to_string(),
                              "codeMsg": command::code_msg(m.code)});
        if m.payload.is_empty() {
            return data;
        }
        let cf = m.content_format();
        // Discover answers are link format even when a device omits the format.
        if cf == Some(content::LINK) || (discover && cf.is_none()) {
            let text = String::from_utf8_lossy(&m.payload);
            match link::parse(&text) {
                Ok(links) => {
                    data["content"] =
                        Json::from(links.iter().map(link::to_string).collect::<Vec<_>>());
                }
                Err(e) => data["error"] = Json::from(e.to_string()),
            }
            return data;
        }
        match content::decode(cf, &m.payload, path, &self.registry) {
            Ok(entries) => data["content"] = command::content_json(&entries),
            Err(e) => {
                debug!(error = %e, "device payload not decodable");
                data["error"] = Json::from(e.to_string());
            }
        }
        data
    }

    /// Send block `num` (of size 2^(szx+4)) of a request body with Block1
    /// (RFC 7959 §2.5), a fresh token each, Size1 on the first.
    pub(super) fn send_block1(&mut self, p: Pending, body: Bytes, num: u32, szx: u8, now: Instant) {
        let Some((part, block)) = tributary_coap::block::slice(&body, num, szx) else {
            self.answer_locally(
                &p.cmd,
                Code::REQUEST_ENTITY_INCOMPLETE,
                Some("request_entity_incomplete"),
                "block-wise request out of range",
            );
            return;
        };
        let token = self.layer.new_token(4);
        let mut m = p.request.clone();
        m.token = token;
        m.mtype = MessageType::Con;
        m.remove_option(opt::BLOCK1);
        m.remove_option(opt::SIZE1);
        m.add_option(opt::BLOCK1, block.encode());
        if num == 0 {
            m.add_uint_option(opt::SIZE1, u32::try_from(body.len()).unwrap_or(u32::MAX));
        }
        m.payload = part;
        let message_id = self.layer.send(m, now);
        self.pending.insert(
            token,
            Pending {
                message_id,
                deadline: now + self.config.response_timeout,
                block1: Some((body, num, szx)),
                ..p
            },
        );
    }

    /// One block of a Block2 answer (RFC 7959 §2.4): assembled with the CoAP
    /// crate's [`Assembler`]; the next block is asked for with the same
    /// request (without Observe) and a fresh token.
    pub(super) fn block2(&mut self, p: Pending, b: BlockValue, m: Message, now: Instant) {
        let key = p.first_token;
        let size2 = m.uint_option(opt::SIZE2).and_then(Result::ok);
        match self.blocks.feed(&key, b, &m.payload, size2, now) {
            Ok(Assembled::Complete(body)) => {
                let mut full = m;
                full.remove_option(opt::BLOCK2);
                full.payload = body;
                self.answer(p.cmd, p.first_token, full, now);
            }
            Ok(Assembled::NeedMore) => {
                let token = self.layer.new_token(4);
                let mut next = p.request.clone();
                next.token = token;
                next.mtype = MessageType::Con;
                next.remove_option(opt::OBSERVE);
                next.remove_option(opt::BLOCK2);
                let want = BlockValue {
                    num: b.num + 1,
                    more: false,
                    szx: b.szx,
                };
                next.add_option(opt::BLOCK2, want.encode());
                let message_id = self.layer.send(next.clone(), now);
                // An observation's first answer keeps its token for the notifications.
                if matches!(p.cmd.op, Op::Observe(_)) && m.has_option(opt::OBSERVE) && b.num == 0 {
                    self.first_blocks.insert(p.first_token, m.clone());
                }
                self.pending.insert(
                    token,
                    Pending {
                        message_id,
                        deadline: now + self.config.response_timeout,
                        request: next,
                        ..p
                    },
                );
            }
            Err(e) => {
                debug!(error = ?e, "block-wise answer abandoned");
                self.answer_locally(
                    &p.cmd,
                    Code::new(4, 8),
                    Some("request_entity_incomplete"),
                    "block-wise answer from the device could not be assembled",
                );
            }
        }
    }

    pub(super) fn answer(&mut self, cmd: Command, token: Token, m: Message, _now: Instant) {
        debug!(msg_type = %cmd.msg_type, code = %m.code, cf = ?m.content_format(), bytes = m.payload.len(), "answer from the device");
        let data = self.decode_data(
            &cmd.req_path,
            cmd.path(),
            &m,
            matches!(cmd.op, Op::Discover(_)),
        );
        let first = self.first_blocks.remove(&token);
        let observing =
            m.has_option(opt::OBSERVE) || first.is_some_and(|f| f.has_option(opt::OBSERVE));
        if matches!(cmd.op, Op::Observe(_)) && m.code == Code::CONTENT && observing {
            // The observation lives on under the first request's token.
            self.observations.insert(
                token,
                Observation {
                    echo: cmd.echo.clone(),
                    req_path: cmd.req_path.clone(),
                    path: cmd.path().clone(),
                },
            );
        }
        let body = command::envelope(&cmd.echo, &cmd.msg_type, data);
        self.publish(&self.config.topics.response.clone(), &body);
    }

    pub(super) fn reachable(&self, now: Instant) -> bool {
        match &self.reg {
            Some(r) if r.queue_mode => now < r.last_seen + self.config.qmode_time_window,
            Some(_) => true,
            None => false,
        }
    }

    /// Buffer or send one command.
    pub(super) fn submit(&mut self, cmd: Command, now: Instant) {
        if !self.reachable(now)
            || self.pending.len() >= self.config.max_inflight.max(1)
            || !self.queue.is_empty()
        {
            if self.queue.len() >= self.config.max_queued {
                self.answer_locally(
                    &cmd,
                    Code::SERVICE_UNAVAILABLE,
                    Some("queue_full"),
                    "command buffer full",
                );
                return;
            }
            debug!(ep = ?self.endpoint(), msg_type = %cmd.msg_type, "command buffered");
            self.queue.push_back(cmd);
            return;
        }
        self.send(cmd, now);
    }

    pub(super) fn flush_queue(&mut self, now: Instant) {
        while !self.queue.is_empty()
            && self.reachable(now)
            && self.pending.len() < self.config.max_inflight.max(1)
        {
            if let Some(cmd) = self.queue.pop_front() {
                self.send(cmd, now);
            }
        }
    }

    pub(super) fn send(&mut self, cmd: Command, now: Instant) {
        let Some(r) = &self.reg else { return };
        let mut token = self.layer.new_token(4);
        if let Op::CancelObserve(p) = &cmd.op {
            // RFC 7641 §3.6: cancel with a GET Observe=1 on the observation's token.
            if let Some(t) = self
                .observations
                .iter()
                .find(|(_, o)| &o.path == p)
                .map(|(t, _)| *t)
            {
                self.observations.remove(&t);
                token = t;
            }
        }
        let write_format = content::write_format(&r.lwm2m, &r.objects.content_formats);
        let v10 = r.lwm2m == "1.0" || r.lwm2m == "1";
        let target = Target {
            alternate_path: &r.objects.alternate_path,
            write_format,
            accept: (!v10 && !r.objects.content_formats.is_empty()).then_some(write_format),
            registry: &self.registry,
        };
        match cmd.request(&target, token) {
            Ok(m) => {
                debug!(msg_type = %cmd.msg_type, code = %m.code, path = ?m.path(), token = ?token, "request to the device");
                let szx = self.config.block_szx.min(6);
                if m.payload.len() > 1 << (szx + 4) {
                    // Larger than a block: Block1 from the start (RFC 7959 §2.5).
                    let body = m.payload.clone();
                    let p = Pending {
                        cmd,
                        message_id: 0,
                        deadline: now + self.config.response_timeout,
                        request: m,
                        first_token: token,
                        block1: None,
                    };
                    self.send_block1(p, body, 0, szx, now);
                    return;
                }
                let message_id = self.layer.send(m.clone(), now);
                let deadline = now + self.config.response_timeout;
                self.pending.insert(
                    token,
                    Pending {
                        cmd,
                        message_id,
                        deadline,
                        request: m,
                        first_token: token,
                        block1: None,
                    },
                );
            }
            Err(why) => self.answer_locally(&cmd, Code::BAD_REQUEST, None, &why),
        }
    }

    pub(super) fn auto_observe(&mut self, now: Instant) {
        let Some(r) = &self.reg else { return };
        let mut cmds = Vec::new();
        for p in &self.config.auto_observe {
            let Ok(path) = Path::parse(p) else { continue };
            let registered = r.objects.objects.iter().any(|o| {
                Path::parse(o).is_ok_and(|op| path.starts_with(&op) || op.starts_with(&path))
            });
            if registered && path.depth() > 0 {
                cmds.push(Command {
                    echo: [("reqID".to_string(), Json::from(0))].into_iter().collect(),
                    msg_type: "observe".into(),
                    req_path: path.to_string(),
                    op: Op::Observe(path),
                });
            }
        }
        for c in cmds {
            self.submit(c, now);
        }
    }
}
