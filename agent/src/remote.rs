//! The master's side: [`Remote`] calls agents (HTTP/2 on mutual TLS, with a connect timeout and
//! a request timeout), and [`AgentNodes`] is the [`NodeOps`] an LU runs with when nodes have an
//! `address`: each node's operation goes to its agent, or runs in-process ([`LocalNodeOps`]) for
//! a node without one. A disk between two agents goes straight from the primary to the target
//! (the master opens the receive on the target, then tells the primary to send).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use diskstream_engine::ops::Report;
use diskstream_orchestrator::cluster::Cluster;
use diskstream_orchestrator::export::cleanup::NodeListing;
use diskstream_orchestrator::hooks::env::Env;
use diskstream_orchestrator::hooks::{HookResult, HookStatus, HooksRunner, Phase};
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{NodeError, NodeOps, SendDisk, SnapshotRef, TransferError, TransferProgress};
use diskstream_orchestrator::snapshot::{Capability, Stale};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The largest answer read from an agent: the biggest real one is a hooks run (the last 64 KiB
/// of each script's output); an agent that sends more is not read into memory.
const MAX_ANSWER: usize = 64 << 20;
use tokio_rustls::TlsConnector;

use crate::data::Timeouts;
use crate::pki::PkiDir;
use crate::proto::{Call, Opened, Sent, WireError};
use crate::tls;

mod dial;

/// How often the master pings an agent during a call, and how long it waits for the answer.
const KEEPALIVE: Duration = Duration::from_secs(5);

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
}

impl Remote {
    /// The master's client for `cluster`: its identity from the cluster PKI.
    pub fn new(cluster: &Cluster, timeouts: RemoteTimeouts) -> Result<Self, String> {
        let pki = PkiDir::new(cluster.pki_dir());
        let master = &cluster.master().name;
        let ca = pki.load_ca().map_err(|e| e.to_string())?;
        let id = pki.load_identity(master).map_err(|e| e.to_string())?;
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
        })
    }

    /// Whether `node` has an agent.
    pub fn has(&self, node: &str) -> bool {
        self.addrs.contains_key(node)
    }

    /// Sends `call` to `node`'s agent and waits for its answer (at most `timeout`; `None`:
    /// as long as it takes, for a disk transfer that has its own inactivity timeout).
    pub fn call(&self, node: &str, call: &Call, timeout: Option<Duration>) -> Result<Value, WireError> {
        let addr = self
            .addrs
            .get(node)
            .ok_or_else(|| WireError::new("failed", format!("node {node} has no agent address")))?;
        let t0 = std::time::Instant::now();
        let fut = dial::call(&self.connector, self.timeouts.connect, node, addr, call);
        let reply = self.rt.block_on(async {
            match timeout {
                Some(t) => tokio::time::timeout(t, fut)
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer to {} within {} s", call.method(), t.as_secs()))),
                None => fut.await,
            }
        });
        tracing::debug!(
            node,
            method = call.method(),
            elapsed_ms = t0.elapsed().as_secs_f64() * 1e3,
            ok = reply.as_ref().is_ok_and(|r| r.err.is_none()),
            "agent call"
        );
        let reply = reply.map_err(|e| WireError::new("failed", format!("agent of node {node} ({addr}): {e}")))?;
        match (reply.ok, reply.err) {
            (_, Some(e)) => Err(e),
            (Some(v), None) => Ok(v),
            (None, None) => Ok(Value::Null),
        }
    }
}

/// The nodes of a cluster with agents: remote where a node has an `address`, in-process
/// elsewhere.
pub struct AgentNodes<'c> {
    cluster: &'c Cluster,
    local: LocalNodeOps<'c>,
    remote: Remote,
}

impl<'c> AgentNodes<'c> {
    /// The nodes of `cluster`: in-process ones run with `hooks` and `stop`.
    pub fn new(
        cluster: &'c Cluster,
        hooks: HooksRunner,
        stop: Arc<AtomicBool>,
        t: RemoteTimeouts,
    ) -> Result<Self, String> {
        Ok(Self {
            cluster,
            local: LocalNodeOps::new(cluster, hooks, stop),
            remote: Remote::new(cluster, t)?,
        })
    }

    fn ask<T: DeserializeOwned>(&self, node: &str, call: Call, timeout: Option<Duration>) -> Result<T, NodeError> {
        let v = self.remote.call(node, &call, timeout).map_err(|e| e.into_node(node))?;
        serde_json::from_value(v).map_err(|e| NodeError::Failed(format!("node {node}: unexpected answer: {e}")))
    }

    fn short(&self) -> Option<Duration> {
        Some(self.remote.timeouts.request)
    }

    /// A disk from an in-process primary (its disks are on this machine) to a target's agent:
    /// this process streams it, with the primary's certificate from the cluster PKI (the target
    /// checks that the stream comes from the primary).
    fn send_from_here(&self, req: &SendDisk, progress: &TransferProgress) -> Result<Report, TransferError> {
        let failed = |m: String| TransferError::Node(Box::new(NodeError::Failed(m)));
        let pki = PkiDir::new(self.cluster.pki_dir());
        let ca = pki.load_ca().map_err(|e| failed(e.to_string()))?;
        let id = pki.load_identity(&req.source_node).map_err(|e| failed(e.to_string()))?;
        let cfg = tls::client_config(&ca, &id).map_err(|e| failed(e.to_string()))?;
        let addr = self.remote.addrs.get(&req.target_node).cloned().unwrap_or_default();
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let opened: Opened = self.ask(&req.target_node, Call::OpenReceive { req: req.clone() }, self.short())?;
        let sent = crate::data::send(&self.local, &cfg, host, &opened, req, progress, Timeouts::default())?;
        sent.into_report()
            .map_err(|e| failed(format!("{}/disk{}: {e}", req.instance, req.disk)))
    }

    /// Asks the primary how far the send of `token` is (after 200 ms, then every second), into
    /// `progress` (the job lines and JSON events of the local path), until `done` says the send
    /// ended: it wakes at once then, so the export goes on without waiting out an interval.
    fn poll_progress(&self, req: &SendDisk, token: &str, progress: &TransferProgress, done: &Receiver<()>) {
        let call = Call::Progress {
            node: req.source_node.clone(),
            token: token.to_string(),
        };
        let mut wait = Duration::from_millis(200);
        while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(wait) {
            if let Ok(Ok((d, t))) = self
                .remote
                .call(&req.source_node, &call, self.short())
                .map(serde_json::from_value::<(u64, u64)>)
            {
                progress.total.store(t, Ordering::Relaxed);
                progress.done.store(d, Ordering::Relaxed);
            }
            wait = Duration::from_secs(1);
        }
    }

    /// A disk between two agents: open the receive on the target, then send from the primary.
    fn send_remote(&self, req: &SendDisk, progress: &TransferProgress) -> Result<Report, TransferError> {
        let opened: Opened = self.ask(&req.target_node, Call::OpenReceive { req: req.clone() }, self.short())?;
        let call = Call::Send {
            req: req.clone(),
            port: opened.port,
            token: opened.token.clone(),
            lanes: opened.lanes,
        };
        let (ended, done) = std::sync::mpsc::channel::<()>();
        let answer = std::thread::scope(|sc| {
            let token = &opened.token;
            sc.spawn(move || self.poll_progress(req, token, progress, &done));
            let r = self.remote.call(&req.source_node, &call, None);
            drop(ended); // wakes the poller
            r
        });
        let sent: Sent = match answer {
            Ok(v) => serde_json::from_value(v).map_err(|e| {
                TransferError::Node(Box::new(NodeError::Failed(format!(
                    "node {}: answer: {e}",
                    req.source_node
                ))))
            })?,
            Err(e) => return Err(self.send_failed(req, &opened.token, e)),
        };
        progress.total.store(sent.sent.disk_size, Ordering::Relaxed);
        progress.done.store(sent.sent.disk_size, Ordering::Relaxed);
        sent.into_report().map_err(|e| {
            TransferError::Node(Box::new(NodeError::Failed(format!(
                "{}/disk{} from node {} to node {}: {e}",
                req.instance, req.disk, req.source_node, req.target_node
            ))))
        })
    }

    /// The error of a send that failed on the primary with `e`: unless the primary failed on
    /// its own side, the target is asked why it ended the stream (see [`crate::abort::explain_send_failure`]).
    fn send_failed(&self, req: &SendDisk, token: &str, e: WireError) -> TransferError {
        let target = if e.own {
            None
        } else {
            let ask = Call::ReceiveResult {
                node: req.target_node.clone(),
                token: token.to_string(),
            };
            let why = self.remote.call(&req.target_node, &ask, self.short()).ok();
            why.and_then(|v| serde_json::from_value::<Option<WireError>>(v).ok())
                .flatten()
        };
        let what = format!("{}/disk{}", req.instance, req.disk);
        TransferError::Node(Box::new(crate::abort::explain_send_failure(
            &req.source_node,
            &req.target_node,
            &what,
            e,
            target,
        )))
    }
}

impl NodeOps for AgentNodes<'_> {
    fn run_hooks(&self, node: &str, hpath: &str, phase: Phase, env: &Env, report: &dyn Fn(String)) -> Vec<HookResult> {
        if !self.remote.has(node) {
            return self.local.run_hooks(node, hpath, phase, env, report);
        }
        let call = Call::RunHooks {
            node: node.into(),
            hpath: hpath.into(),
            phase,
            env: env.clone(),
        };
        let dir = format!("{hpath}-{phase:?}.d").to_lowercase();
        // The agent runs the scripts; while it does, the master says every report interval that
        // they still run, as the local path does per script.
        let every = self.cluster.hooks_report_interval();
        let (tx, rx) = std::sync::mpsc::channel();
        let asked = std::thread::scope(|sc| {
            sc.spawn(move || {
                let _ = tx.send(self.ask::<Vec<HookResult>>(node, call, None));
            });
            let mut waited = Duration::ZERO;
            loop {
                match rx.recv_timeout(every) {
                    Ok(r) => break r,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        waited += every;
                        report(format!(
                            "Hooks {dir} on {node} still running after {} s",
                            waited.as_secs()
                        ));
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        break Err(NodeError::Failed(format!(
                            "the call running {dir} on {node} ended without an answer"
                        )))
                    }
                }
            }
        });
        asked.unwrap_or_else(|e| {
            vec![HookResult {
                script: dir,
                status: HookStatus::Fail,
                output: e.to_string(),
            }]
        })
    }

    fn instance_running(&self, node: &str, instance: &str) -> Result<bool, NodeError> {
        if !self.remote.has(node) {
            return self.local.instance_running(node, instance);
        }
        let call = Call::InstanceRunning {
            node: node.into(),
            instance: instance.into(),
        };
        self.ask(node, call, self.short())
    }

    fn stop_instance(&self, node: &str, instance: &str, timeout: Duration) -> Result<(), NodeError> {
        if !self.remote.has(node) {
            return self.local.stop_instance(node, instance, timeout);
        }
        let call = Call::StopInstance {
            node: node.into(),
            instance: instance.into(),
            timeout_ms: Call::millis(timeout),
        };
        self.ask(node, call, Some(timeout + self.remote.timeouts.request))
    }

    fn start_instance(&self, node: &str, instance: &str) -> Result<(), NodeError> {
        if !self.remote.has(node) {
            return self.local.start_instance(node, instance);
        }
        let call = Call::StartInstance {
            node: node.into(),
            instance: instance.into(),
        };
        self.ask(node, call, self.short())
    }

    fn forget_instance(&self, node: &str, instance: &str) {
        if !self.remote.has(node) {
            return self.local.forget_instance(node, instance);
        }
        let call = Call::ForgetInstance {
            node: node.into(),
            instance: instance.into(),
        };
        let _: Result<(), _> = self.ask(node, call, self.short());
    }

    fn backing_size(&self, node: &str, instance: &str, disk: usize) -> Result<Option<u64>, NodeError> {
        if !self.remote.has(node) {
            return self.local.backing_size(node, instance, disk);
        }
        let call = Call::BackingSize {
            node: node.into(),
            instance: instance.into(),
            disk,
        };
        self.ask(node, call, self.short())
    }

    fn activate_disks(&self, node: &str, instance: &str) -> Result<(), NodeError> {
        if !self.remote.has(node) {
            return self.local.activate_disks(node, instance);
        }
        let call = Call::ActivateDisks {
            node: node.into(),
            instance: instance.into(),
        };
        self.ask(node, call, self.short())
    }

    fn remove_disks(&self, node: &str, instance: &str) -> Vec<(usize, NodeError)> {
        if !self.remote.has(node) {
            return self.local.remove_disks(node, instance);
        }
        let call = Call::RemoveDisks {
            node: node.into(),
            instance: instance.into(),
        };
        match self.ask::<Vec<(usize, String)>>(node, call, self.short()) {
            Ok(v) => v.into_iter().map(|(i, m)| (i, NodeError::Failed(m))).collect(),
            Err(e) => vec![(0, e)],
        }
    }

    fn sweep_stale_snapshots(&self, node: &str, instance: &str) -> Vec<Stale> {
        if !self.remote.has(node) {
            return self.local.sweep_stale_snapshots(node, instance);
        }
        let call = Call::SweepStaleSnapshots {
            node: node.into(),
            instance: instance.into(),
        };
        self.ask(node, call, self.short()).unwrap_or_default()
    }

    fn snapshot_capability(&self, node: &str, instance: &str, disk: usize) -> Capability {
        if !self.remote.has(node) {
            return self.local.snapshot_capability(node, instance, disk);
        }
        let call = Call::SnapshotCapability {
            node: node.into(),
            instance: instance.into(),
            disk,
        };
        self.ask(node, call, self.short())
            .unwrap_or_else(|e| Capability::NotCapable(e.to_string()))
    }

    fn create_snapshot(&self, node: &str, instance: &str, disk: usize) -> Result<SnapshotRef, NodeError> {
        if !self.remote.has(node) {
            return self.local.create_snapshot(node, instance, disk);
        }
        let call = Call::CreateSnapshot {
            node: node.into(),
            instance: instance.into(),
            disk,
        };
        self.ask(node, call, self.short())
    }

    fn remove_snapshot(&self, node: &str, snapshot: &SnapshotRef) -> Result<(), NodeError> {
        if !self.remote.has(node) {
            return self.local.remove_snapshot(node, snapshot);
        }
        let call = Call::RemoveSnapshot {
            node: node.into(),
            snapshot: snapshot.clone(),
        };
        self.ask(node, call, self.short())
    }

    fn begin_export(&self, node: &str, instance: &str) -> Result<(), NodeError> {
        if !self.remote.has(node) {
            return self.local.begin_export(node, instance);
        }
        let call = Call::BeginExport {
            node: node.into(),
            instance: instance.into(),
        };
        self.ask(node, call, self.short())
    }

    fn send_disk(&self, req: &SendDisk, progress: &TransferProgress) -> Result<Report, TransferError> {
        match (self.remote.has(&req.source_node), self.remote.has(&req.target_node)) {
            (false, false) => self.local.send_disk(req, progress),
            (true, true) => self.send_remote(req, progress),
            (false, true) => self.send_from_here(req, progress),
            _ => Err(TransferError::Node(Box::new(NodeError::Failed(format!(
                "disk/{} from node {} (agent) to node {} (in-process): a disk from an agent goes to \
                 an agent; give node {} an address",
                req.disk, req.source_node, req.target_node, req.target_node
            ))))),
        }
    }

    fn finalize_export(&self, node: &str, instance: &str, config_ini: &str) -> Result<std::path::PathBuf, NodeError> {
        if !self.remote.has(node) {
            return self.local.finalize_export(node, instance, config_ini);
        }
        let call = Call::FinalizeExport {
            node: node.into(),
            instance: instance.into(),
            config_ini: config_ini.into(),
        };
        self.ask(node, call, self.short())
    }

    fn abandon_export(&self, node: &str, instance: &str) {
        if !self.remote.has(node) {
            return self.local.abandon_export(node, instance);
        }
        let call = Call::AbandonExport {
            node: node.into(),
            instance: instance.into(),
        };
        let _: Result<(), _> = self.ask(node, call, self.short());
    }

    fn sweep_export_leftovers(&self, node: &str, instance: &str) {
        if !self.remote.has(node) {
            return self.local.sweep_export_leftovers(node, instance);
        }
        let call = Call::SweepExportLeftovers {
            node: node.into(),
            instance: instance.into(),
        };
        let _: Result<(), _> = self.ask(node, call, self.short());
    }

    fn list_exports(&self, node: &str) -> Result<Vec<String>, NodeError> {
        if !self.remote.has(node) {
            return self.local.list_exports(node);
        }
        self.ask(node, Call::ListExports { node: node.into() }, self.short())
    }

    fn export_listing(&self, node: &str, instance: &str) -> NodeListing {
        if !self.remote.has(node) {
            return self.local.export_listing(node, instance);
        }
        let call = Call::ExportListing {
            node: node.into(),
            instance: instance.into(),
        };
        self.ask(node, call, self.short()).unwrap_or_else(|e| NodeListing {
            node: node.to_string(),
            export_dir: std::path::PathBuf::new(),
            dir_id: None,
            export_id: None,
            exports: Err(e.to_string()),
            leftovers: false,
        })
    }

    fn remove_export(&self, node: &str, instance: &str, keep: Option<(u64, u64)>) -> Result<bool, NodeError> {
        if !self.remote.has(node) {
            return self.local.remove_export(node, instance, keep);
        }
        let call = Call::RemoveExport {
            node: node.into(),
            instance: instance.into(),
            keep,
        };
        self.ask(node, call, self.short())
    }
}
