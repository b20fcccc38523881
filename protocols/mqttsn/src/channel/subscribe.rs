//! SUBSCRIBE, UNSUBSCRIBE (§6.9), PINGREQ and sleep (§6.14), DISCONNECT (§6.6).

#[allow(clippy::wildcard_imports)]
use super::*;

// SUBSCRIBE, UNSUBSCRIBE (§6.9), PINGREQ and sleep (§6.14), DISCONNECT (§6.6).
impl Channel {
    /// The client name and core filter of a SUBSCRIBE/UNSUBSCRIBE topic.
    pub(super) fn sub_filter(&self, topic: &SubTopic) -> Option<(String, String)> {
        let name = match topic {
            SubTopic::Name(n) => n.clone(),
            SubTopic::Predefined(id) => self.config.predefined.name(*id)?.to_string(),
            SubTopic::Short(b) => std::str::from_utf8(b).ok()?.to_string(),
        };
        let filter = self.config.mount_filter(&name);
        Some((name, filter))
    }

    pub(super) fn handle_subscribe(&mut self, s: Subscribe, now: Instant) {
        let suback = |qos, topic_id, code| Packet::SubAck {
            qos,
            topic_id,
            msg_id: s.msg_id,
            code,
        };
        let (Some(client), Some(handle)) = (self.client.clone(), self.handle.clone()) else {
            return;
        };
        if s.qos == QoS::NoConnection {
            self.output
                .push(suback(QoS::AtMostOnce, 0, ReturnCode::NotSupported));
            return;
        }
        let Some((name, filter)) = self.sub_filter(&s.topic) else {
            self.output
                .push(suback(s.qos, 0, ReturnCode::InvalidTopicId));
            return;
        };
        let allowed = match self.broker.check_filter(&filter) {
            Ok(parsed) => self
                .broker
                .authorize(&client, Action::Subscribe, parsed.filter),
            Err(_) => false,
        };
        if name.is_empty()
            || !allowed
            || self
                .broker
                .subscribe(&handle, &filter, SubOptions::at(core_qos(s.qos)), now)
                .is_err()
        {
            debug!(client_id = %client.client_id, %filter, "subscription refused");
            self.output.push(suback(s.qos, 0, ReturnCode::NotSupported));
            return;
        }
        let topic_id = match &s.topic {
            SubTopic::Predefined(id) => *id,
            SubTopic::Short(_) => 0,
            // A concrete name gets its topic id now (§6.9); wildcards get
            // 0x0000 and each matching topic is REGISTERed before its
            // first PUBLISH.
            SubTopic::Name(n) if has_wildcard(n) || n.starts_with("$share/") => 0,
            SubTopic::Name(n) => self.registry.register(n).unwrap_or(0),
        };
        self.output
            .push(suback(s.qos, topic_id, ReturnCode::Accepted));
        // Retained messages go out after the SUBACK.
        self.poll_deliveries(now);
    }

    pub(super) fn handle_unsubscribe(&mut self, msg_id: u16, topic: SubTopic) {
        if let (Some((_, filter)), Some(handle)) = (self.sub_filter(&topic), self.handle.clone()) {
            self.broker.unsubscribe(&handle, &filter);
        }
        self.output.push(Packet::UnsubAck { msg_id });
    }

    pub(super) fn handle_pingreq(&mut self, client_id: Option<String>, now: Instant) {
        match (&self.state, client_id) {
            (State::Asleep(duration), Some(id)) if Some(id.as_str()) == self.client_id() => {
                let duration = *duration;
                debug!(client_id = %id, "sleeping client awake (§6.14)");
                self.state = State::Awake(duration);
                // What waited unacknowledged while it slept goes first.
                if let Some(h) = self.handle.clone() {
                    let (due, _) = h.retry_due(now, Duration::ZERO);
                    self.resend(due, now, false);
                }
                self.flush_pending(now);
                self.poll_deliveries(now);
                self.maybe_finish_awake(now);
            }
            // Asleep, or awake: PINGRESP (the datagram itself restarted the
            // driver's sleep or keep-alive window).
            _ => self.output.push(Packet::PingResp),
        }
    }

    /// Awake and nothing left to deliver: PINGRESP, back to sleep (§6.14).
    pub(super) fn maybe_finish_awake(&mut self, _now: Instant) {
        let State::Awake(duration) = self.state else {
            return;
        };
        let Some(h) = &self.handle else { return };
        if self.registering.is_none()
            && self.pending.is_empty()
            && h.inflight_len() == 0
            && h.session.queue_len() == 0
        {
            self.output.push(Packet::PingResp);
            self.state = State::Asleep(duration);
            self.retry_at = None;
        }
    }

    pub(super) fn handle_disconnect(&mut self, duration: Option<u16>, _now: Instant) {
        self.output.push(Packet::Disconnect { duration: None });
        match duration {
            Some(d) if d > 0 => {
                debug!(client_id = ?self.client_id(), duration = d, "client asleep (§6.14)");
                self.state = State::Asleep(d);
                // Retransmission pauses while the client sleeps.
                self.retry_at = None;
            }
            _ => {
                debug!(client_id = ?self.client_id(), "client disconnected");
                self.close_kind = CloseKind::Normal {
                    publish_will: false,
                };
                self.state = State::Closed;
            }
        }
    }
}
