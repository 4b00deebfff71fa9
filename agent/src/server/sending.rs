//! The primary's sends as the agent runs them ([`Agent::send`]): the stream to the target's
//! data port, stopped by the call's stop flag, and how far each one is by token
//! ([`Agent::progress`], which the master polls for its job lines and, after giving a send up,
//! to learn that it ended).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use diskstream_engine::ops::StopFlag;
use diskstream_orchestrator::node::{SendDisk, TransferProgress};
use serde_json::Value;

use super::{refused, Agent, ENDED_KEPT};
use crate::data;
use crate::proto::{Sent, WireError};

/// A send, as `Progress` reports it.
pub(super) enum Sending {
    /// Running, this far.
    Running(Arc<TransferProgress>),
    /// Ended (however), at this time.
    Ended(std::time::Instant),
}

impl Agent {
    /// How far the send of `token` is: `[done, total]` while it runs, `"ended"` once it ended
    /// (for [`ENDED_KEPT`]), `null` for a token this agent was never asked to send.
    pub fn progress(&self, token: &str) -> Value {
        match self.sending.lock().expect("sending").get(token) {
            Some(Sending::Running(p)) => {
                serde_json::json!([p.done.load(Ordering::Relaxed), p.total.load(Ordering::Relaxed)])
            }
            Some(Sending::Ended(_)) => Value::from("ended"),
            None => Value::Null,
        }
    }

    /// Marks the send of `token` ended.
    fn send_ended(&self, token: &str) {
        let mut m = self.sending.lock().expect("sending");
        m.retain(|_, s| !matches!(s, Sending::Ended(at) if at.elapsed() > ENDED_KEPT));
        m.insert(token.to_string(), Sending::Ended(std::time::Instant::now()));
    }

    /// Sends `req` to the target's data port, until `cancel` is raised (the master cancelled
    /// the call or went away: the send stops at its next chunk and the target is told).
    pub fn send(
        &self,
        req: &SendDisk,
        port: u16,
        token: String,
        lanes: usize,
        cancel: &StopFlag,
    ) -> Result<Value, WireError> {
        let progress = Arc::new(TransferProgress::default());
        self.sending
            .lock()
            .expect("sending")
            .insert(token.clone(), Sending::Running(Arc::clone(&progress)));
        let target = self.cluster.node(&req.target_node).and_then(|n| n.address.clone());
        let Some(addr) = target else {
            self.send_ended(&token);
            return Err(refused(format!("node {} has no agent address", req.target_node)));
        };
        if cancel.load(Ordering::SeqCst) {
            self.send_ended(&token);
            return Err(WireError::new(
                "interrupted",
                "the master gave the call up before it ran",
            ));
        }
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let opened = crate::proto::Opened { port, token, lanes };
        let sent = data::send(
            &self.local,
            &self.client_tls,
            host,
            &opened,
            req,
            data::Watch {
                progress: &progress,
                stop: cancel,
            },
            self.timeouts,
        );
        self.send_ended(&opened.token);
        if let Err(f) = &sent {
            // The receiving side logs how its receive ended; so does the sending side, so that
            // the primary's log alone tells an operator why a send failed.
            // Stopped by the call's flag, however the stop surfaced (at a chunk, or in a write
            // that woke to it).
            let done = progress.done.load(Ordering::Relaxed);
            let why = match (cancel.load(Ordering::SeqCst), self.stopping()) {
                (true, true) => format!("stopped after {done} bytes: the agent is stopping"),
                (true, false) => {
                    format!("stopped after {done} bytes: the master cancelled the call or went away")
                }
                _ => f.error.to_string(),
            };
            say!(
                "diskstream agent: sending {}/disk{} to {}: {why}",
                req.instance,
                req.disk,
                req.target_node,
            );
        }
        let sent: Sent = sent.map_err(|f| {
            let mut e = WireError {
                own: f.own,
                ..WireError::transfer(&f.error)
            };
            if self.stopping() && cancel.load(Ordering::SeqCst) {
                e.msg = format!("the agent of node {} is stopping", self.node);
            }
            e
        })?;
        serde_json::to_value(sent).map_err(|e| WireError::new("failed", e.to_string()))
    }
}
