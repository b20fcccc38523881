//! PUBLISH both ways and its acknowledgements (§3.3–§3.7, §4.3): the
//! intake, held acknowledgements, in-session retransmission (3.x), and
//! deliveries turned into PUBLISH packets (topic aliases, sizes).

#[allow(clippy::wildcard_imports)]
use super::*;

// PUBLISH and its acknowledgements (§3.3–§3.7, §4.3).
impl Channel {
    pub(super) fn handle_publish(&mut self, publish: Publish, now: Instant) {
        let v5 = self.version.is_v5();
        if !publish.properties.subscription_identifiers.is_empty() {
            return self.violation(
                rc::PROTOCOL_ERROR,
                "subscription identifier on a client PUBLISH [MQTT-3.3.4-6]",
            );
        }
        if publish.qos > self.config.max_qos {
            return self.violation(rc::QOS_NOT_SUPPORTED, "QoS not supported [MQTT-3.2.2-11]");
        }
        if publish.retain && !self.config.retain_available {
            return self.violation(
                rc::RETAIN_NOT_SUPPORTED,
                "retain not supported [MQTT-3.2.2-14]",
            );
        }
        let alias_max = self.config.topic_alias_maximum;
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        // Topic alias, client→server (§3.3.2.3.4).
        let topic: Arc<str> = match publish.properties.topic_alias {
            Some(alias) if alias == 0 || alias > alias_max => {
                return self.violation(
                    rc::TOPIC_ALIAS_INVALID,
                    "topic alias out of range [MQTT-3.3.2-9]",
                );
            }
            Some(alias) if publish.topic.is_empty() => {
                match conn.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(t) => t.clone(),
                    None => return self.violation(rc::PROTOCOL_ERROR, "unknown topic alias"),
                }
            }
            Some(alias) => {
                conn.aliases
                    .get_or_insert_with(Box::default)
                    .inbound
                    .insert(alias, publish.topic.clone());
                publish.topic.clone()
            }
            None => publish.topic.clone(),
        };
        if self.broker.check_topic_name(&topic).is_err() {
            return self.violation(rc::TOPIC_NAME_INVALID, "invalid topic name [MQTT-3.3.2-2]");
        }
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let problem_information = conn.problem_information;
        let mut message = Message::new(
            topic,
            publish.payload,
            core_qos(publish.qos),
            publish.retain,
        );
        message.properties = message_properties(&publish.properties);
        let message = message.with_expiry_interval(publish.properties.message_expiry_interval, now);

        let id = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) => Some(id),
            (_, None) => return self.violation(rc::PROTOCOL_ERROR, "QoS > 0 without packet id"),
        };
        if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, id) {
            let limit = if v5 {
                usize::from(self.config.receive_maximum)
            } else {
                self.config.max_awaiting_rel
            };
            match handle.begin_incoming_qos2(id, limit, now, self.config.await_rel_timeout) {
                IncomingQos2::New => {}
                // A resent PUBLISH: acknowledge again, never route twice [MQTT-4.3.3-10].
                IncomingQos2::Duplicate => {
                    return self.push_ack(Packet::PubRec(ack(id, rc::SUCCESS)), None)
                }
                IncomingQos2::Full if v5 => {
                    return self.violation(
                        rc::RECEIVE_MAXIMUM_EXCEEDED,
                        "receive maximum exceeded [MQTT-3.3.4-9]",
                    )
                }
                IncomingQos2::Full => {
                    return self.violation(
                        rc::QUOTA_EXCEEDED,
                        "too many QoS 2 messages awaiting PUBREL",
                    )
                }
            }
        }
        let admission = self.broker.admit(&mut conn.intake, message, now);
        let reason = match admission.verdict {
            Verdict::Accepted => rc::SUCCESS,
            Verdict::NoSubscribers => rc::NO_MATCHING_SUBSCRIBERS,
            Verdict::Denied => {
                if self.config.disconnect_on_denied_publish {
                    return self.violation(rc::NOT_AUTHORIZED, "publish not authorized");
                }
                rc::NOT_AUTHORIZED
            }
            Verdict::RateExceeded => {
                return self.violation(rc::MESSAGE_RATE_TOO_HIGH, "message rate too high")
            }
        };
        // The QoS 2 id (and its store write) is the ticket's too.
        let mut ticket = admission.ticket;
        if publish.qos == QoS::ExactlyOnce {
            if let Some(id) = id.filter(|_| !admission.accepted()) {
                handle.release_incoming_qos2(id);
            }
            ticket = tributary_core::storage::later(ticket, handle.take_ticket());
        }
        match (publish.qos, id) {
            (QoS::AtLeastOnce, Some(id)) => self.push_ack(
                Packet::PubAck(ack_with(id, reason, problem_information)),
                ticket,
            ),
            (QoS::ExactlyOnce, Some(id)) => self.push_ack(
                Packet::PubRec(ack_with(id, reason, problem_information)),
                ticket,
            ),
            _ => {}
        }
    }

    /// MQTT 3.x: resend what has waited `retry_interval` for its
    /// acknowledgement, with DUP set.
    pub(super) fn retransmit(&mut self, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            self.retry_at = None;
            return;
        };
        let (due, next) = handle.retry_due(now, self.config.retry_interval);
        self.retry_at = next;
        for resend in due {
            match resend {
                Resend::Publish(out) => {
                    self.push_publish(&out, now);
                }
                Resend::PubRel(id) => self.output.push(Packet::PubRel(ack(id, rc::SUCCESS))),
            }
        }
    }

    pub(super) fn handle_pubrec(&mut self, rec: PubResponse, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let known = handle.received(rec.packet_id, rec.reason < 0x80);
        if rec.reason < 0x80 {
            let reason = if known {
                rc::SUCCESS
            } else {
                rc::PACKET_IDENTIFIER_NOT_FOUND
            };
            // Released only once durable: a restart must not send the
            // message again after its PUBREL.
            let ticket = handle.take_ticket();
            self.push_ack(Packet::PubRel(ack(rec.packet_id, reason)), ticket);
        }
        self.poll_deliveries(now);
    }

    /// Turn pending deliveries into PUBLISH packets within the client's
    /// receive window and maximum packet size.
    pub fn poll_deliveries(&mut self, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let State::Connected(conn) = &self.state else {
            return;
        };
        let window = usize::from(conn.client_receive_maximum.min(self.config.max_inflight));
        let max_size = conn.client_max_packet_size as usize;
        // Most clients announce no Maximum Packet Size: skip sizing then.
        let unlimited = conn.client_max_packet_size == u32::MAX;
        let version = self.version;
        let outgoing = handle.take_for_send(now, SEND_BATCH, window, self.broker.metrics(), |d| {
            unlimited || publish_size(d, version, now) <= max_size
        });
        if outgoing.len() == SEND_BATCH && handle.has_sendable(window) {
            // More is waiting: come back after the socket has had its turn.
            handle.signal.wake();
        }
        for out in outgoing {
            if out.packet_id.is_some() && !version.is_v5() && self.retry_at.is_none() {
                self.retry_at = Some(now + self.config.retry_interval);
            }
            self.push_publish(&out, now);
        }
    }

    /// Queue the PUBLISH for `out`, built in place in the output queue.
    pub(super) fn push_publish(&mut self, out: &Outgoing, now: Instant) {
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let d = &out.delivery;
        // MQTT 3.x carries no properties: nothing to build for it.
        let mut properties = if self.version.is_v5() {
            publish_properties(d, now)
        } else {
            Properties::default()
        };
        let mut topic = d.message.topic.clone();
        // Topic alias, server→client: assign while there is room, then reuse.
        if conn.client_topic_alias_max > 0 {
            match conn
                .aliases
                .as_ref()
                .and_then(|a| a.outbound.get(&d.message.topic))
            {
                Some(&alias) => {
                    properties.topic_alias = Some(alias);
                    topic = no_topic();
                }
                None => {
                    let aliases = conn.aliases.get_or_insert_with(Box::default);
                    let next = aliases.outbound.len() + 1;
                    if next <= usize::from(conn.client_topic_alias_max) {
                        let alias = next as u16;
                        aliases.outbound.insert(d.message.topic.clone(), alias);
                        properties.topic_alias = Some(alias);
                    }
                }
            }
        }
        self.broker.metrics().message_out("mqtt", d.qos);
        self.output.push(Packet::Publish(Publish {
            dup: out.dup,
            qos: mqtt_qos(d.qos),
            retain: d.retain,
            topic,
            packet_id: out.packet_id,
            properties,
            payload: d.message.payload.clone(),
        }));
    }
}
