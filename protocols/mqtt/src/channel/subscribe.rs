//! SUBSCRIBE, UNSUBSCRIBE and DISCONNECT (§3.8–§3.14).

#[allow(clippy::wildcard_imports)]
use super::*;

// SUBSCRIBE, UNSUBSCRIBE, DISCONNECT (§3.8–§3.14).
impl Channel {
    pub(super) fn handle_subscribe(&mut self, subscribe: Subscribe, now: Instant) {
        let v5 = self.version.is_v5();
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let State::Connected(conn) = &self.state else {
            return;
        };
        let client = conn.intake.client().clone();
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        // Filters held, for the per-client subscription quota.
        let mut held: Option<std::collections::HashSet<Arc<str>>> =
            (self.config.max_subscriptions > 0).then(|| {
                handle
                    .session
                    .subscriptions()
                    .into_iter()
                    .map(|(f, _)| f)
                    .collect()
            });
        for (raw, opts) in &subscribe.filters {
            let parsed = match self.broker.check_filter(raw) {
                Ok(p) => p,
                Err(_) => {
                    reasons.push(if v5 {
                        rc::TOPIC_FILTER_INVALID
                    } else {
                        rc::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            if parsed.share_group.is_some() && opts.no_local && v5 {
                // [MQTT-3.8.3-4]
                return self.violation(rc::PROTOCOL_ERROR, "no local on a shared subscription");
            }
            if parsed.share_group.is_some() && !self.config.shared_subscription {
                reasons.push(if v5 {
                    rc::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            }
            if tributary_core::topic::has_wildcard(parsed.filter)
                && !self.config.wildcard_subscription
            {
                reasons.push(if v5 {
                    rc::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            }
            if !self
                .broker
                .authorize(&client, Action::Subscribe, parsed.filter)
            {
                reasons.push(if v5 {
                    self.config.subscribe_denied_reason
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            }
            if let Some(held) = held.as_mut() {
                if !held.contains(raw.as_str()) {
                    if held.len() >= self.config.max_subscriptions {
                        let m = self.broker.metrics();
                        m.inc(&m.subscriptions_refused_quota);
                        reasons.push(if v5 {
                            rc::QUOTA_EXCEEDED
                        } else {
                            rc::UNSPECIFIED_ERROR
                        });
                        continue;
                    }
                    held.insert(raw.as_str().into());
                }
            }
            let granted = opts.qos.min(self.config.max_qos);
            let options = SubOptions {
                qos: core_qos(granted),
                no_local: opts.no_local,
                retain_as_published: opts.retain_as_published,
                retain_handling: opts.retain_handling,
                subscription_id,
            };
            match self.broker.subscribe(&handle, raw, options, now) {
                Ok(_) => reasons.push(granted as u8),
                Err(_) => reasons.push(if v5 {
                    rc::TOPIC_FILTER_INVALID
                } else {
                    rc::UNSPECIFIED_ERROR
                }),
            }
        }
        // SUBACK goes out before any retained message it triggered [MQTT-3.8.4-1].
        self.output.push(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        }));
        self.poll_deliveries(now);
    }

    pub(super) fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|f| {
                if self.broker.unsubscribe(&handle, f) {
                    rc::SUCCESS
                } else {
                    rc::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.output.push(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons: if self.version.is_v5() {
                reasons
            } else {
                Vec::new()
            },
        }));
    }

    pub(super) fn handle_disconnect(&mut self, disconnect: Disconnect, _now: Instant) {
        let State::Connected(conn) = &self.state else {
            return;
        };
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if conn.connect_expiry_zero && expiry != 0 {
                // [MQTT-3.14.2-2]
                return self.violation(
                    rc::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after zero in CONNECT",
                );
            }
            if let Some(h) = &self.handle {
                h.set_expiry_interval(expiry.min(self.broker.config().max_session_expiry));
            }
        }
        debug!(client_id = %conn.intake.client().client_id, reason = disconnect.reason, "client disconnected");
        self.close_kind = CloseKind::Normal {
            publish_will: disconnect.reason == rc::DISCONNECT_WITH_WILL,
        };
        self.state = State::Closed;
    }
}
