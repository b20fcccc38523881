//! SUBSCRIBE / UNSUBSCRIBE (1.2 §SUBSCRIBE, §UNSUBSCRIBE).

#[allow(clippy::wildcard_imports)]
use super::*;

// SUBSCRIBE / UNSUBSCRIBE (1.2 §SUBSCRIBE, §UNSUBSCRIBE).
impl Channel {
    pub(super) fn handle_subscribe(&mut self, frame: Frame, now: Instant) {
        let receipt = frame.header("receipt");
        let Some(destination) = frame.header("destination") else {
            return self.violation(
                "missing destination",
                "SUBSCRIBE requires a destination header".into(),
                receipt,
            );
        };
        // 1.0 makes the id optional: the destination then identifies it.
        let id = match (frame.header("id"), self.version) {
            (Some(id), _) => id.to_owned(),
            (None, Version::V1_0) => destination.to_owned(),
            (None, _) => {
                return self.violation(
                    "missing id",
                    "SUBSCRIBE requires an id header".into(),
                    receipt,
                )
            }
        };
        let ack = match frame.header("ack").map(AckMode::parse) {
            None => AckMode::Auto,
            Some(Some(a)) => a,
            Some(None) => {
                return self.violation(
                    "invalid ack mode",
                    "ack must be auto, client or client-individual".into(),
                    receipt,
                )
            }
        };
        let filter = mount_filter(&self.config.mountpoint, destination);
        let plain = match self.broker.check_filter(&filter) {
            Ok(p) => p.filter.to_owned(),
            Err(e) => {
                return self.violation(
                    "invalid destination",
                    format!("{destination:?} is not a valid topic filter: {e}"),
                    receipt,
                )
            }
        };
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let cfg = self.config.clone();
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        if conn.subs.contains_key(&id) {
            return self.violation(
                "duplicate subscription id",
                format!("subscription {id:?} exists"),
                receipt,
            );
        }
        if conn.subs.len() >= cfg.max_subscriptions {
            return self.violation(
                "too many subscriptions",
                format!(
                    "at most {} subscriptions per connection",
                    cfg.max_subscriptions
                ),
                receipt,
            );
        }
        let client = conn.intake.client().clone();
        if !self.broker.authorize(&client, Action::Subscribe, &plain) {
            return self.violation(
                "not authorized",
                format!("subscribing to {destination:?} is denied"),
                receipt,
            );
        }
        let want_retained = cfg.retained_on_subscribe || frame.header("retain") == Some("true");
        let num = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let sharing = conn.filters.get(&filter).is_some_and(|v| !v.is_empty());
        conn.filters.entry(filter.clone()).or_default().push(num);
        conn.by_num.insert(num, id.clone());
        conn.subs.insert(
            id.clone(),
            Subscription {
                id: id.clone(),
                num,
                filter: filter.clone(),
                ack,
            },
        );
        let mut retained_direct = Vec::new();
        if sharing {
            // The core subscription exists already (another STOMP id on the
            // same destination): retained messages come straight from the store.
            if want_retained && !filter.starts_with("$share/") {
                retained_direct = self.broker.retained_matching(&plain, now);
            }
        } else {
            let mut options = SubOptions::at(cfg.subscribe_qos);
            options.subscription_id = Some(num);
            options.retain_handling = if want_retained { 0 } else { 2 };
            if let Err(e) = self.broker.subscribe(&handle, &filter, options, now) {
                return self.violation("invalid destination", e.to_string(), receipt);
            }
        }
        debug!(client_id = %client.client_id, id = %id, filter = %filter, ?ack, "subscribed");
        self.receipt(&frame);
        for message in retained_direct {
            let out = Outgoing {
                packet_id: None,
                delivery: tributary_core::Delivery {
                    message,
                    qos: QoS::AtMostOnce,
                    retain: true,
                    subscription_ids: vec![num],
                    shared: None,
                },
                dup: false,
            };
            self.dispatch(&handle, out, now);
        }
        // Redeliveries from an earlier connection that this destination matches.
        if let State::Connected(conn) = &mut self.state {
            let (take, keep): (Vec<_>, Vec<_>) = conn
                .orphans
                .drain(..)
                .partition(|o| matches(&o.delivery.message.topic, &plain));
            conn.orphans = keep.into();
            for mut o in take {
                o.delivery.subscription_ids = vec![num];
                self.dispatch(&handle, o, now);
            }
        }
        self.poll_deliveries(now);
    }

    pub(super) fn handle_unsubscribe(&mut self, frame: Frame, now: Instant) {
        let receipt = frame.header("receipt");
        let id = match (
            frame.header("id"),
            frame.header("destination"),
            self.version,
        ) {
            (Some(id), _, _) => id.to_owned(),
            (None, Some(dest), Version::V1_0) => dest.to_owned(),
            _ => {
                return self.violation(
                    "missing id",
                    "UNSUBSCRIBE requires an id header".into(),
                    receipt,
                )
            }
        };
        let Some(handle) = self.handle.clone() else {
            return;
        };
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        if let Some(sub) = conn.subs.remove(&id) {
            conn.by_num.remove(&sub.num);
            let nums = conn.filters.entry(sub.filter.clone()).or_default();
            let was_primary = nums.first() == Some(&sub.num);
            nums.retain(|n| *n != sub.num);
            let next = nums.first().copied();
            if next.is_none() {
                conn.filters.remove(&sub.filter);
            }
            // Messages still awaiting ACK on this subscription are dropped.
            let gone: Vec<u64> = conn
                .pending
                .iter()
                .filter(|(_, p)| p.sub == sub.num)
                .map(|(k, _)| *k)
                .collect();
            let mut done = Vec::new();
            for seq in gone {
                if let Some(p) = conn.pending.remove(&seq) {
                    release(&mut conn.packet_refs, p.packet_id, &mut done);
                }
            }
            for pid in done {
                handle.acknowledge(pid);
            }
            match next {
                None => {
                    self.broker.unsubscribe(&handle, &sub.filter);
                }
                Some(n) if was_primary => {
                    let mut options = SubOptions::at(self.config.subscribe_qos);
                    options.subscription_id = Some(n);
                    options.retain_handling = 2;
                    let _ = self.broker.subscribe(&handle, &sub.filter, options, now);
                }
                Some(_) => {}
            }
            debug!(id = %sub.id, "unsubscribed");
        }
        self.receipt(&frame);
        self.poll_deliveries(now);
    }
}
