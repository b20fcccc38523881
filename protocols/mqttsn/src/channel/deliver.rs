//! Deliveries to the client, REGISTER/REGACK from the gateway, and
//! retransmission (§6.10, §6.13).

#[allow(clippy::wildcard_imports)]
use super::*;

// Deliveries to the client, REGISTER/REGACK from the gateway, retransmission (§6.10, §6.13).
impl Channel {
    pub(super) fn can_send(&self) -> bool {
        matches!(self.state, State::Active | State::Awake(_))
    }

    /// Turn pending deliveries into PUBLISH messages within the window.
    pub fn poll_deliveries(&mut self, now: Instant) {
        if !self.can_send() || self.registering.is_some() {
            return;
        }
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let window = usize::from(self.config.max_inflight.max(1));
        let outgoing = handle.take_for_send(now, SEND_BATCH, window, self.broker.metrics(), |d| {
            // PUBLISH header is at most 4 + 5 octets.
            d.message.payload.len() + 9 <= MAX_MESSAGE_LEN
        });
        if outgoing.len() == SEND_BATCH && handle.has_sendable(window) {
            handle.signal.wake();
        }
        self.pending.extend(outgoing);
        self.flush_pending(now);
    }

    pub(super) fn out_topic(&self, topic: &str) -> OutTopic {
        let Some(name) = topic.strip_prefix(self.config.mountpoint.as_str()) else {
            return OutTopic::Unsendable;
        };
        if name.is_empty() {
            return OutTopic::Unsendable;
        }
        if let Some(id) = self.config.predefined.id(name) {
            return OutTopic::Ready(TopicIdType::Predefined, id);
        }
        if let [a, b] = name.as_bytes() {
            return OutTopic::Ready(TopicIdType::Short, u16::from_be_bytes([*a, *b]));
        }
        match self.registry.id(name) {
            Some(id) => OutTopic::Ready(TopicIdType::Normal, id),
            None => OutTopic::NeedsRegister(name.into()),
        }
    }

    /// Send what was held, until a topic needs registering first.
    pub(super) fn flush_pending(&mut self, now: Instant) {
        while self.can_send() && self.registering.is_none() {
            let Some(front) = self.pending.front() else {
                break;
            };
            match self.out_topic(&front.delivery.message.topic) {
                OutTopic::Ready(kind, id) => {
                    if let Some(out) = self.pending.pop_front() {
                        self.send_publish(&out, kind, id, now);
                    }
                }
                OutTopic::NeedsRegister(name) => match self.registry.register(&name) {
                    Some(topic_id) => {
                        let msg_id = self.next_msg_id();
                        self.output.push(Packet::Register {
                            topic_id,
                            msg_id,
                            topic_name: name.to_string(),
                        });
                        self.registering = Some(Registering {
                            topic_id,
                            msg_id,
                            name,
                            sent_at: now,
                            retries: 0,
                        });
                        self.arm_retry(now);
                    }
                    None => {
                        debug!(topic = %name, "topic registry full; delivery dropped");
                        if let Some(out) = self.pending.pop_front() {
                            self.abandon(&out);
                        }
                    }
                },
                OutTopic::Unsendable => {
                    if let Some(out) = self.pending.pop_front() {
                        self.abandon(&out);
                    }
                }
            }
        }
    }

    pub(super) fn next_msg_id(&mut self) -> u16 {
        let id = self.next_msg_id;
        self.next_msg_id = if id == u16::MAX { 1 } else { id + 1 };
        id
    }

    pub(super) fn send_publish(
        &mut self,
        out: &Outgoing,
        kind: TopicIdType,
        topic_id: u16,
        now: Instant,
    ) {
        let d = &out.delivery;
        self.broker.metrics().message_out("mqtt-sn", d.qos);
        self.output.push(Packet::Publish(Publish {
            dup: out.dup,
            qos: sn_qos(d.qos),
            retain: d.retain,
            topic_id_type: kind,
            topic_id,
            msg_id: out.packet_id.unwrap_or(0),
            payload: d.message.payload.clone(),
        }));
        if out.packet_id.is_some() {
            self.arm_retry(now);
        }
    }

    /// A delivery that cannot be sent: release it in the core.
    pub(super) fn abandon(&self, out: &Outgoing) {
        let (Some(h), Some(id)) = (&self.handle, out.packet_id) else {
            return;
        };
        match out.delivery.qos {
            tributary_core::QoS::AtLeastOnce => {
                h.acknowledge(id);
            }
            tributary_core::QoS::ExactlyOnce => {
                h.received(id, false);
            }
            tributary_core::QoS::AtMostOnce => {}
        }
    }

    pub(super) fn handle_regack(
        &mut self,
        topic_id: u16,
        msg_id: u16,
        code: ReturnCode,
        now: Instant,
    ) {
        let Some(reg) = self.registering.take_if(|r| r.msg_id == msg_id) else {
            debug!(msg_id, topic_id, "REGACK for no pending REGISTER; ignored");
            return;
        };
        if code != ReturnCode::Accepted {
            debug!(topic = %reg.name, ?code, "client refused REGISTER; its deliveries dropped");
            self.registry.remove(reg.topic_id);
            let (drop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|o| {
                    self.out_topic(&o.delivery.message.topic)
                        .is_named(&reg.name)
                });
            for out in &drop {
                self.abandon(out);
            }
            self.pending = keep.into();
        }
        self.after_ack(now);
    }

    pub(super) fn after_ack(&mut self, now: Instant) {
        self.flush_pending(now);
        self.poll_deliveries(now);
        self.maybe_finish_awake(now);
    }

    pub(super) fn arm_retry(&mut self, now: Instant) {
        if self.retry_at.is_none() && !self.is_asleep() {
            self.retry_at = Some(now + self.config.retry_interval);
        }
    }

    /// Resend PUBLISH/PUBREL/REGISTER that waited `retry_interval` (§6.13).
    pub(super) fn retransmit(&mut self, now: Instant) {
        self.retry_at = None;
        if !self.can_send() {
            return;
        }
        let interval = self.config.retry_interval;
        let mut next: Option<Instant> = None;
        if let Some(reg) = &mut self.registering {
            if now.saturating_duration_since(reg.sent_at) >= interval {
                reg.retries += 1;
                reg.sent_at = now;
                let (topic_id, msg_id, name, retries) =
                    (reg.topic_id, reg.msg_id, reg.name.to_string(), reg.retries);
                if retries > self.config.max_retries {
                    info!(client_id = ?self.client_id(), "REGISTER unanswered; client lost (§6.13)");
                    return self.lost();
                }
                self.output.push(Packet::Register {
                    topic_id,
                    msg_id,
                    topic_name: name,
                });
            }
            if let Some(reg) = &self.registering {
                next = Some(reg.sent_at + interval);
            }
        }
        if let Some(h) = self.handle.clone() {
            let (due, core_next) = h.retry_due(now, interval);
            if !self.resend(due, now, true) {
                return;
            }
            next = match (next, core_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.retry_at = next;
    }

    /// Resend inflight messages; with `count`, each resend counts toward
    /// Nretry. Returns false when the client was declared lost.
    pub(super) fn resend(&mut self, due: Vec<Resend>, now: Instant, count: bool) -> bool {
        for r in due {
            let msg_id = match &r {
                Resend::Publish(out) => out.packet_id.unwrap_or(0),
                Resend::PubRel(id) => *id,
            };
            if self.pending.iter().any(|o| o.packet_id == Some(msg_id)) {
                continue; // Never sent yet: waits behind a REGISTER.
            }
            if count {
                let n = self.retries.entry(msg_id).or_insert(0);
                *n += 1;
                if *n > self.config.max_retries {
                    info!(client_id = ?self.client_id(), msg_id, "no acknowledgement after Nretry resends; client lost (§6.13)");
                    self.lost();
                    return false;
                }
            }
            match r {
                Resend::PubRel(msg_id) => self.output.push(Packet::PubRel { msg_id }),
                Resend::Publish(mut out) => {
                    out.dup = true;
                    match self.out_topic(&out.delivery.message.topic) {
                        OutTopic::Ready(kind, id) => self.send_publish(&out, kind, id, now),
                        OutTopic::NeedsRegister(_) => self.pending.push_back(out),
                        OutTopic::Unsendable => self.abandon(&out),
                    }
                }
            }
        }
        self.flush_pending(now);
        true
    }
}
