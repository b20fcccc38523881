//! ACK / NACK (1.2 §ACK, §NACK) and transactions (§BEGIN, §COMMIT, §ABORT).

#[allow(clippy::wildcard_imports)]
use super::*;

// ACK / NACK (1.2 §ACK, §NACK) and transactions (§BEGIN, §COMMIT, §ABORT).
impl Channel {
    /// Apply an ACK or NACK; false when refused (the connection is closing).
    pub(super) fn handle_ack(&mut self, frame: &Frame) -> bool {
        let Some(id) = frame.header("id").or_else(|| frame.header("message-id")) else {
            self.violation(
                "missing id",
                format!(
                    "{} requires an id (1.2) or message-id (1.0, 1.1) header",
                    frame.command
                ),
                frame.header("receipt"),
            );
            return false;
        };
        let Some(handle) = self.handle.clone() else {
            return false;
        };
        let State::Connected(conn) = &mut self.state else {
            return false;
        };
        // Unknown ids (already acknowledged, auto mode) are ignored.
        let Some(seq) = id.parse::<u64>().ok() else {
            return true;
        };
        let Some(p) = conn.pending.get(&seq).copied() else {
            return true;
        };
        let cumulative = conn
            .by_num
            .get(&p.sub)
            .and_then(|sid| conn.subs.get(sid))
            .is_some_and(|s| s.ack == AckMode::Client);
        let acked: Vec<u64> = if cumulative {
            conn.pending
                .range(..=seq)
                .filter(|(_, q)| q.sub == p.sub)
                .map(|(k, _)| *k)
                .collect()
        } else {
            vec![seq]
        };
        let mut done = Vec::new();
        for k in acked {
            if let Some(q) = conn.pending.remove(&k) {
                release(&mut conn.packet_refs, q.packet_id, &mut done);
            }
        }
        // NACK: the message is discarded (1.2 allows discarding); either way
        // the core's delivery is complete.
        for pid in done {
            handle.acknowledge(pid);
        }
        true
    }

    pub(super) fn buffer_in_transaction(&mut self, frame: Frame) {
        let max = self.config.max_transaction_frames;
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let tx = frame.header("transaction").unwrap_or_default().to_owned();
        match conn.transactions.get_mut(&tx) {
            None => self.violation(
                "unknown transaction",
                format!("transaction {tx:?} was not begun"),
                frame.header("receipt"),
            ),
            Some(frames) if frames.len() >= max => self.violation(
                "transaction too large",
                format!("at most {max} frames per transaction"),
                frame.header("receipt"),
            ),
            Some(frames) => {
                let receipt = frame.header("receipt").map(str::to_owned);
                frames.push(frame);
                if let Some(id) = receipt {
                    self.output.push(Output::Frame(
                        Frame::new(Command::Receipt).with("receipt-id", id),
                    ));
                }
            }
        }
    }

    pub(super) fn handle_transaction(&mut self, frame: Frame, now: Instant) {
        let receipt = frame.header("receipt");
        let Some(tx) = frame.header("transaction") else {
            return self.violation(
                "missing transaction",
                format!("{} requires a transaction header", frame.command),
                receipt,
            );
        };
        let max = self.config.max_transactions;
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        match frame.command {
            Command::Begin => {
                if conn.transactions.contains_key(tx) {
                    return self.violation(
                        "transaction exists",
                        format!("transaction {tx:?} is already open"),
                        receipt,
                    );
                }
                if conn.transactions.len() >= max {
                    return self.violation(
                        "too many transactions",
                        format!("at most {max} open transactions"),
                        receipt,
                    );
                }
                conn.transactions.insert(tx.to_owned(), Vec::new());
            }
            Command::Commit => {
                let Some(frames) = conn.transactions.remove(tx) else {
                    return self.violation(
                        "unknown transaction",
                        format!("transaction {tx:?} was not begun"),
                        receipt,
                    );
                };
                // The COMMIT's RECEIPT waits for every SEND in it.
                let mut ticket = None;
                for f in frames {
                    let ok = match f.command {
                        Command::Send => match self.handle_send(&f, now) {
                            Some(t) => {
                                ticket = later(ticket, t);
                                true
                            }
                            None => false,
                        },
                        _ => self.handle_ack(&f),
                    };
                    if !ok {
                        return;
                    }
                }
                self.receipt_after(&frame, ticket);
                self.poll_deliveries(now);
                return;
            }
            _ => {
                if conn.transactions.remove(tx).is_none() {
                    return self.violation(
                        "unknown transaction",
                        format!("transaction {tx:?} was not begun"),
                        receipt,
                    );
                }
            }
        }
        self.receipt(&frame);
    }
}
