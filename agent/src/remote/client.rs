//! The master's client of the cluster's agents: one call on a connection of its own (`dial.rs`),
//! with a connect timeout, a request timeout, and a stop that gives the call up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diskstream_orchestrator::cluster::Cluster;
use serde_json::Value;
use tokio_rustls::TlsConnector;

use super::dial;
use crate::pki::PkiDir;
use crate::proto::{Call, WireError};
use crate::tls;

/// The largest answer read from an agent: the biggest real one is a hooks run (the last 64 KiB
/// of each script's output); an agent that sends more is not read into memory.
pub(super) const MAX_ANSWER: usize = 64 << 20;

/// How often the master pings an agent during a call, and how long it waits for the answer.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long the master waits for an agent.
#[derive(Debug, Clone, Copy)]
pub struct RemoteTimeouts {
    /// Opening a connection: TCP connect, TLS handshake and the agent's first word, all the
    /// tries of a call together (`remote/dial.rs`).
    pub connect: Duration,
    /// A call's answer (calls that run hooks, stop an instance or send a disk wait longer).
    pub request: Duration,
}

impl Default for RemoteTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(120),
        }
    }
}

/// A client of the cluster's agents, as the master.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    connector: TlsConnector,
    addrs: HashMap<String, String>,
    timeouts: RemoteTimeouts,
    /// [`Cluster::digest`] of the master's config, sent with every call.
    config: String,
}

impl Remote {
    /// The master's client for `cluster`: its identity from the cluster PKI.
    pub fn new(cluster: &Cluster, timeouts: RemoteTimeouts) -> Result<Self, String> {
        let pki = PkiDir::new(cluster.pki_dir());
        let master = &cluster.master().name;
        let (ca, id) = pki.load_checked(master).map_err(|e| e.to_string())?;
        let cfg = tls::client_config(&ca, &id).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let addrs = cluster
            .nodes()
            .iter()
            .filter_map(|n| n.address.clone().map(|a| (n.name.clone(), a)))
            .collect();
        Ok(Self {
            rt,
            connector: TlsConnector::from(cfg),
            addrs,
            timeouts,
            config: cluster.digest(),
        })
    }

    /// How long this client waits.
    pub fn timeouts(&self) -> RemoteTimeouts {
        self.timeouts
    }

    /// `node`'s agent address (`host:port`), if it has one.
    pub fn address(&self, node: &str) -> Option<&str> {
        self.addrs.get(node).map(String::as_str)
    }

    /// Whether `node` has an agent.
    pub fn has(&self, node: &str) -> bool {
        self.addrs.contains_key(node)
    }

    /// Sends `call` to `node`'s agent and waits for its answer (at most `timeout`; `None`:
    /// as long as it takes, for a disk transfer that has its own inactivity timeout).
    pub fn call(&self, node: &str, call: &Call, timeout: Option<Duration>) -> Result<Value, WireError> {
        self.call_unless(node, call, timeout, None)
            .map(|v| v.unwrap_or(Value::Null))
    }

    /// [`Remote::call`] that gives the call up as soon as `stop` is raised (this process's
    /// SIGINT or SIGTERM): `Ok(None)`. Dropping the call resets its HTTP/2 stream, which the
    /// agent takes as the call's cancel (a send stops at its next chunk).
    pub fn call_unless(
        &self,
        node: &str,
        call: &Call,
        timeout: Option<Duration>,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<Value>, WireError> {
        let addr = self
            .addrs
            .get(node)
            .ok_or_else(|| WireError::new("failed", format!("node {node} has no agent address")))?;
        let t0 = std::time::Instant::now();
        let fut = dial::call(&self.connector, self.timeouts.connect, node, addr, call, &self.config);
        let stopped = async {
            match stop {
                Some(s) => {
                    while !s.load(Ordering::SeqCst) {
                        tokio::time::sleep(STOP_POLL).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let reply = self.rt.block_on(async {
            let answer = async {
                match timeout {
                    Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
                        Err(dial::CallFailed {
                            msg: format!("no answer to {} within {} s", call.method(), t.as_secs()),
                            sent: true,
                        })
                    }),
                    None => fut.await,
                }
            };
            tokio::select! {
                // An answer that is there wins over a stop raised meanwhile.
                biased;
                r = answer => Some(r),
                () = stopped => None,
            }
        });
        tracing::debug!(
            node,
            method = call.method(),
            elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
            ok = reply
                .as_ref()
                .is_some_and(|r| r.as_ref().is_ok_and(|r| r.err.is_none())),
            stopped = reply.is_none(),
            "agent call"
        );
        let Some(reply) = reply else {
            return Ok(None);
        };
        // `unreachable`: the call never reached the agent (a kind only this client makes).
        let reply = reply.map_err(|f| {
            let kind = if f.sent { "failed" } else { "unreachable" };
            WireError::new(kind, format!("agent of node {node} ({addr}): {}", f.msg))
        })?;
        match (reply.ok, reply.err) {
            (_, Some(e)) => Err(e),
            (Some(v), None) => Ok(Some(v)),
            (None, None) => Ok(Some(Value::Null)),
        }
    }
}

/// How often a call that a stop may give up looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
