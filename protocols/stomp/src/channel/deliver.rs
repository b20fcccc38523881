//! Deliveries → MESSAGE frames, within the window and ack modes.

#[allow(clippy::wildcard_imports)]
use super::*;

// Deliveries → MESSAGE frames.
impl Channel {
    /// Turn pending deliveries into MESSAGE frames within the window.
    pub fn poll_deliveries(&mut self, now: Instant) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let window = self.config.max_inflight;
        let mut taken = 0;
        // Auto-mode deliveries complete as they are written, freeing the
        // window again: keep taking until nothing more fits this turn.
        while taken < SEND_BATCH {
            let State::Connected(conn) = &self.state else {
                return;
            };
            let acking = conn.subs.values().any(|s| s.ack != AckMode::Auto);
            let room = if acking {
                window.saturating_sub(conn.pending.len())
            } else {
                SEND_BATCH
            };
            let max = (SEND_BATCH - taken).min(room);
            if max == 0 {
                return;
            }
            let outgoing = handle.take_for_send(now, max, window, self.broker.metrics(), |_| true);
            if outgoing.is_empty() {
                return;
            }
            taken += outgoing.len();
            for out in outgoing {
                self.dispatch(&handle, out, now);
            }
        }
        if handle.has_sendable(window) {
            // More is waiting: come back after the socket has had its turn.
            handle.signal.wake();
        }
    }

    /// One core delivery → a MESSAGE per STOMP subscription it is for.
    pub(super) fn dispatch(&mut self, handle: &SessionHandle, out: Outgoing, _now: Instant) {
        let redeliver = self.config.unacked_on_disconnect == UnackedPolicy::Redeliver;
        let mountpoint_len = self.config.mountpoint.len();
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let mut targets: Vec<u32> = Vec::new();
        for id in &out.delivery.subscription_ids {
            let Some(sub) = conn.by_num.get(id).and_then(|sid| conn.subs.get(sid)) else {
                continue;
            };
            for n in conn.filters.get(&sub.filter).into_iter().flatten() {
                if !targets.contains(n) {
                    targets.push(*n);
                }
            }
        }
        if targets.is_empty() {
            // Its subscription is gone: keep a QoS 1 message for a later
            // matching SUBSCRIBE (redeliver), or complete it.
            if let Some(pid) = out.packet_id {
                if redeliver && conn.orphans.len() < self.config.max_inflight {
                    conn.orphans.push_back(out);
                } else {
                    handle.acknowledge(pid);
                }
            }
            return;
        }
        let message = &out.delivery.message;
        let topic = &message.topic;
        let destination =
            if topic.len() >= mountpoint_len && topic.starts_with(&self.config.mountpoint) {
                &topic[mountpoint_len..]
            } else {
                &topic[..]
            };
        let mut refs = 0;
        for num in targets {
            let Some(sub) = conn.by_num.get(&num).and_then(|sid| conn.subs.get(sid)) else {
                continue;
            };
            let seq = conn.next_message;
            conn.next_message += 1;
            let message_id = seq.to_string();
            let mut f = Frame::new(Command::Message)
                .with("subscription", sub.id.clone())
                .with("message-id", message_id.clone())
                .with("destination", destination);
            if sub.ack != AckMode::Auto {
                if self.version == Version::V1_2 {
                    f.push("ack", message_id);
                }
                conn.pending.insert(
                    seq,
                    Pending {
                        sub: num,
                        packet_id: out.packet_id,
                    },
                );
                refs += 1;
            }
            if let Some(ct) = &message.properties.content_type {
                f.push("content-type", ct.clone());
            }
            f.push("content-length", message.payload.len().to_string());
            if out.dup {
                f.push("redelivered", "true");
            }
            if out.delivery.retain {
                f.push("retain", "true");
            }
            for (k, v) in &message.properties.user_properties {
                if !is_control_header(k) && !f.headers.iter().any(|(n, _)| n == k) {
                    f.push(k.clone(), v.clone());
                }
            }
            f.body = message.payload.clone();
            self.broker.metrics().message_out("stomp", out.delivery.qos);
            self.output.push(Output::Frame(f));
        }
        match out.packet_id {
            Some(pid) if refs > 0 => {
                *conn.packet_refs.entry(pid).or_default() += refs;
            }
            Some(pid) => {
                handle.acknowledge(pid);
            }
            None => {}
        }
    }
}
