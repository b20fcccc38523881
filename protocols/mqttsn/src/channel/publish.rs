//! REGISTER and PUBLISH from the client (§6.5, §6.8, §6.9), through the
//! core's intake, with PUBACK / PUBREC held until the message is durable.

#[allow(clippy::wildcard_imports)]
use super::*;

// REGISTER, PUBLISH from the client (§6.5, §6.8, §6.9).
impl Channel {
    pub(super) fn handle_register(&mut self, msg_id: u16, name: &str) {
        let full = self.config.mount(name);
        let valid = !name.is_empty() && self.broker.check_topic_name(&full).is_ok();
        let (topic_id, code) = if !valid {
            (0, ReturnCode::NotSupported)
        } else {
            match self.registry.register(name) {
                Some(id) => (id, ReturnCode::Accepted),
                None => (0, ReturnCode::Congestion),
            }
        };
        self.output.push(Packet::RegAck {
            topic_id,
            msg_id,
            code,
        });
    }

    pub(super) fn handle_publish(&mut self, p: Publish, now: Instant) {
        if p.qos == QoS::NoConnection && !self.config.enable_qos3 {
            debug!("QoS -1 publish disabled; dropped");
            return;
        }
        let reject = |code| Packet::PubAck {
            topic_id: p.topic_id,
            msg_id: p.msg_id,
            code,
        };
        let Some(name) =
            self.config
                .inbound_name(Some(&self.registry), p.topic_id_type, p.topic_id)
        else {
            debug!(
                topic_id = p.topic_id,
                "PUBLISH with an unknown topic id (§6.9)"
            );
            self.output.push(reject(ReturnCode::InvalidTopicId));
            return;
        };
        let topic = self.config.mount(&name);
        if self.broker.check_topic_name(&topic).is_err() {
            self.output.push(reject(ReturnCode::NotSupported));
            return;
        }
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let message = Message::new(topic, p.payload, core_qos(p.qos), p.retain);
        match p.qos {
            QoS::AtMostOnce | QoS::NoConnection => {}
            QoS::AtLeastOnce => {
                if p.dup && self.recent_qos1.contains(&p.msg_id) {
                    // A resend of one already taken: acknowledge, never route twice.
                    return self.push_ack(reject(ReturnCode::Accepted), None);
                }
            }
            QoS::ExactlyOnce => match handle.begin_incoming_qos2(
                p.msg_id,
                self.config.max_awaiting_rel,
                now,
                self.config.await_rel_timeout,
            ) {
                IncomingQos2::New => {}
                // A resent PUBLISH: acknowledge again, never route twice.
                IncomingQos2::Duplicate => {
                    return self.push_ack(Packet::PubRec { msg_id: p.msg_id }, None)
                }
                IncomingQos2::Full => return self.output.push(reject(ReturnCode::Congestion)),
            },
        }
        let Some(intake) = self.intake.as_mut() else {
            return;
        };
        let admission = self.broker.admit(intake, message, now);
        let ticket = admission.ticket;
        match admission.verdict {
            Verdict::Accepted | Verdict::NoSubscribers => {}
            Verdict::Denied | Verdict::RateExceeded => {
                if p.qos == QoS::ExactlyOnce {
                    handle.release_incoming_qos2(p.msg_id);
                }
                if admission.verdict == Verdict::RateExceeded {
                    debug!(client_id = ?self.client_id(), "message rate exceeded; disconnecting");
                    self.output.push(Packet::Disconnect { duration: None });
                    return self.lost();
                }
                if matches!(p.qos, QoS::AtLeastOnce | QoS::ExactlyOnce) {
                    self.output.push(reject(ReturnCode::NotSupported));
                }
                return;
            }
        }
        match p.qos {
            QoS::AtMostOnce | QoS::NoConnection => {}
            QoS::AtLeastOnce => {
                if self.recent_qos1.len() == RECENT_QOS1 {
                    self.recent_qos1.pop_front();
                }
                self.recent_qos1.push_back(p.msg_id);
                self.push_ack(reject(ReturnCode::Accepted), ticket);
            }
            QoS::ExactlyOnce => {
                // The QoS 2 id is stored too: PUBREC once both are durable.
                let ticket = tributary_core::storage::later(ticket, handle.take_ticket());
                self.push_ack(Packet::PubRec { msg_id: p.msg_id }, ticket);
            }
        }
    }
}
