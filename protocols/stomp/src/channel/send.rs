//! SEND (1.2 §SEND) through the core's intake: the destination checked,
//! headers carried as user properties, the admission turned into the
//! frame's RECEIPT (held until durable) or an ERROR.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Channel {
    /// Publish `frame`. `Some(ticket)`: accepted, its RECEIPT waits for
    /// `ticket`; `None`: refused (an ERROR went out, the connection closes).
    pub(super) fn handle_send(
        &mut self,
        frame: &Frame,
        now: Instant,
    ) -> Option<Option<CommitTicket>> {
        let receipt = frame.header("receipt");
        let Some(destination) = frame.header("destination") else {
            self.violation(
                "missing destination",
                "SEND requires a destination header".into(),
                receipt,
            );
            return None;
        };
        let topic = format!("{}{destination}", self.config.mountpoint);
        if self.broker.check_topic_name(&topic).is_err() {
            self.violation(
                "invalid destination",
                format!("{destination:?} is not a valid topic name (no wildcards)"),
                receipt,
            );
            return None;
        }
        let mut properties = MessageProperties {
            content_type: frame.header("content-type").map(str::to_owned),
            ..MessageProperties::default()
        };
        let mut seen = Vec::new();
        for (k, v) in &frame.headers {
            if !is_control_header(k) && !seen.contains(&k) {
                seen.push(k);
                properties.user_properties.push((k.clone(), v.clone()));
            }
        }
        let retain = frame.header("retain") == Some("true");
        let mut message = Message::new(topic, frame.body.clone(), self.config.send_qos, retain);
        message.properties = properties;
        let State::Connected(conn) = &mut self.state else {
            return None;
        };
        let admission = self.broker.admit(&mut conn.intake, message, now);
        match admission.verdict {
            Verdict::Accepted | Verdict::NoSubscribers => Some(admission.ticket),
            Verdict::Denied => {
                self.violation(
                    "not authorized",
                    format!("publishing to {destination:?} is denied"),
                    receipt,
                );
                None
            }
            Verdict::RateExceeded => {
                self.violation(
                    "rate exceeded",
                    "the client sends faster than its message rate allows".into(),
                    receipt,
                );
                None
            }
        }
    }
}
