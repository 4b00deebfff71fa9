//! The master's side: [`AgentNodes`] is the [`NodeOps`] an LU runs with when nodes have an
//! `address`: each node's operation goes to its agent through [`Remote`] (`remote/client.rs`),
//! or runs in-process ([`LocalNodeOps`]) for a node without one. A disk between two agents goes
//! straight from the primary to the target (the master opens the receive on the target, then
//! tells the primary to send); a SIGINT/SIGTERM of the master gives the send call up, which
//! stops the send on the primary at its next chunk, and the master waits until it ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use diskstream_engine::ops::Report;
use diskstream_orchestrator::cluster::Cluster;
use diskstream_orchestrator::export::cleanup::{Keep, NodeListing};
use diskstream_orchestrator::export::export_id::ExportId;
use diskstream_orchestrator::export::store::Finalized;
use diskstream_orchestrator::hooks::env::Env;
use diskstream_orchestrator::hooks::{HookResult, HookStatus, HooksRunner, Note, Phase};
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{NodeError, NodeOps, SendDisk, SnapshotRef, TransferError, TransferProgress};
use diskstream_orchestrator::snapshot::{Capability, Stale};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::data::Timeouts;
use crate::pki::PkiDir;
use crate::proto::{Call, Opened, Sent, WireError};
use crate::tls;

mod client;
mod dial;

pub use client::{Remote, RemoteTimeouts};

/// How long the master waits, after giving up a send, for the primary to say that the send
/// ended (it stops at its next chunk; a write blocked on a stalled target ends within the
/// agent's inactivity timeout, 30 s by default): until then its snapshot is still being read.
const SEND_END_WAIT: Duration = Duration::from_secs(300);

/// How long one `Progress` call of that wait may take.
const PROGRESS_WAIT: Duration = Duration::from_secs(5);

/// How long the primary may fail to answer before that wait ends.
const UNREACHABLE: Duration = Duration::from_secs(15);

/// How often a shutdown wait on an agent looks at the stop flag.
const HURRY_POLL: Duration = Duration::from_millis(50);

/// How long a primary that does not know a send's token must say so before the master takes it
/// that the send never ran.
const NEVER_RAN: Duration = Duration::from_secs(1);

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

    /// [`AgentNodes::ask`] given up once this process is interrupted (SIGINT/SIGTERM): the
    /// agent cuts what it runs for the call short (see `server/handle.rs`). `Ok(None)` then.
    fn ask_unless_stopped<T: DeserializeOwned>(
        &self,
        node: &str,
        call: Call,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, NodeError> {
        let stop = Some(self.local.stop_flag().as_ref());
        match self.remote.call_unless(node, &call, timeout, stop) {
            Ok(Some(v)) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| NodeError::Failed(format!("node {node}: unexpected answer: {e}"))),
            Ok(None) => Ok(None),
            Err(e) => Err(e.into_node(node)),
        }
    }

    fn interrupted(&self) -> bool {
        self.local.stop_flag().load(Ordering::SeqCst)
    }

    fn short(&self) -> Option<Duration> {
        Some(self.remote.timeouts().request)
    }

    /// A disk from an in-process primary (its disks are on this machine) to a target's agent:
    /// this process streams it, with the primary's certificate from the cluster PKI (the target
    /// checks that the stream comes from the primary).
    fn send_from_here(&self, req: &SendDisk, progress: &TransferProgress) -> Result<Report, TransferError> {
        let failed = |m: String| TransferError::Node(Box::new(NodeError::Failed(m)));
        let pki = PkiDir::new(self.cluster.pki_dir());
        let (ca, id) = pki.load_checked(&req.source_node).map_err(|e| failed(e.to_string()))?;
        let cfg = tls::client_config(&ca, &id).map_err(|e| failed(e.to_string()))?;
        let addr = self.remote.address(&req.target_node).unwrap_or_default().to_string();
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let opened: Opened = self.ask(&req.target_node, Call::OpenReceive { req: req.clone() }, self.short())?;
        let watch = crate::data::Watch {
            progress,
            stop: self.local.stop_flag(),
        };
        let sent = crate::data::send(&self.local, &cfg, host, &opened, req, watch, Timeouts::default())?;
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
        test_only_crash("open-receive");
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
            let stop = Some(self.local.stop_flag().as_ref());
            let r = self.remote.call_unless(&req.source_node, &call, None, stop);
            drop(ended); // wakes the poller
            r
        });
        let sent: Sent = match answer {
            Ok(None) => {
                self.wait_send_ended(req, &opened.token);
                return Err(TransferError::Engine(diskstream_engine::Error::Cancelled));
            }
            Ok(Some(v)) => serde_json::from_value(v).map_err(|e| {
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

    /// Waits (at most [`SEND_END_WAIT`]) until the primary says that the send of `token`,
    /// whose call this master gave up, has ended: the LU's clean-up that follows removes the
    /// snapshot it reads. A token the primary does not know for [`NEVER_RAN`] was never sent
    /// (the call was given up before it reached the agent, and a reset call is not run later).
    /// A primary that cannot be asked for [`UNREACHABLE`] cannot be asked to remove its
    /// snapshot either: the wait ends.
    fn wait_send_ended(&self, req: &SendDisk, token: &str) {
        let call = Call::Progress {
            node: req.source_node.clone(),
            token: token.to_string(),
        };
        let t0 = std::time::Instant::now();
        let (mut unknown_since, mut failing_since) = (None, None);
        let since = |t: &mut Option<std::time::Instant>| t.get_or_insert_with(std::time::Instant::now).elapsed();
        while t0.elapsed() < SEND_END_WAIT {
            let answer = self.remote.call(&req.source_node, &call, Some(PROGRESS_WAIT));
            if answer.is_ok() {
                failing_since = None;
            }
            match answer {
                Ok(Value::String(s)) if s == "ended" => return,
                Ok(Value::Null) if since(&mut unknown_since) >= NEVER_RAN => return,
                Ok(Value::Null) => {}
                Ok(_) => unknown_since = None,
                Err(_) if since(&mut failing_since) >= UNREACHABLE => return,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::warn!(
            node = %req.source_node,
            "the send of {}/disk{} did not end within {} s of its cancel",
            req.instance,
            req.disk,
            SEND_END_WAIT.as_secs()
        );
    }

    /// The error of a send that failed on the primary with `e`: unless the primary failed on
    /// its own side, the target is asked why it ended the stream (see [`crate::abort::explain_send_failure`]).
    fn send_failed(&self, req: &SendDisk, token: &str, e: WireError) -> TransferError {
        // A send the primary failed on its own side, or one that never reached it: the target
        // has nothing to say (it would wait for a stream that never came).
        let target = if e.own || e.kind == "unreachable" {
            None
        } else {
            let ask = Call::ReceiveResult {
                node: req.target_node.clone(),
                token: token.to_string(),
            };
            match self.remote.call(&req.target_node, &ask, self.short()) {
                Ok(v) => serde_json::from_value::<Option<WireError>>(v).ok().flatten(),
                // Its agent cannot say (killed, stopped, cut off): that is its view.
                Err(why) => Some(WireError::new(
                    "unreachable",
                    format!("its agent did not answer why the stream ended: {}", why.msg),
                )),
            }
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
    fn run_hooks(&self, node: &str, hpath: &str, phase: Phase, env: &Env, report: &dyn Fn(Note)) -> Vec<HookResult> {
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
                // Interrupted, the master gives the call up: the agent kills the running script.
                let r = self.ask_unless_stopped::<Vec<HookResult>>(node, call, None);
                let _ = tx.send(r.and_then(|r| {
                    r.ok_or_else(|| NodeError::Failed("interrupted: the running script was killed".into()))
                }));
            });
            let mut waited = Duration::ZERO;
            loop {
                match rx.recv_timeout(every) {
                    Ok(r) => break r,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        waited += every;
                        report(Note::info(format!(
                            "Hooks {dir} on {node} still running after {} s",
                            waited.as_secs()
                        )));
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
                // Not a script's failure: Ganeti's "Communication failure to node".
                output: format!("Communication failure to node {node}: {e} (no hook script ran there)"),
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
        // Once interrupted, an instance is stopped at once (as `LocalNodeOps` does with its
        // stop flag set). An interrupt during the wait sends the same call with no wait, which
        // cuts the first one's wait short; the master still waits for the first call's answer,
        // so nothing it does next about the instance overtakes the stop.
        let interrupted = self.interrupted();
        let timeout = if interrupted { Duration::ZERO } else { timeout };
        let stop = |timeout: Duration| Call::StopInstance {
            node: node.into(),
            instance: instance.into(),
            timeout_ms: Call::millis(timeout),
        };
        let wait = Some(timeout + self.remote.timeouts().request);
        if interrupted {
            return self.ask(node, stop(timeout), wait);
        }
        let (asked, done) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|sc| {
            sc.spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(HURRY_POLL) {
                    if self.interrupted() {
                        let _: Result<(), _> = self.ask(node, stop(Duration::ZERO), self.short());
                        return;
                    }
                }
            });
            let r = self.ask(node, stop(timeout), wait);
            drop(asked); // ends the watch
            r
        })
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

    fn begin_export(&self, node: &str, instance: &str) -> Result<Option<u64>, NodeError> {
        if !self.remote.has(node) {
            return self.local.begin_export(node, instance);
        }
        let call = Call::BeginExport {
            node: node.into(),
            instance: instance.into(),
            room: true,
        };
        // Given up at once when this process is interrupted: the instance may be about to stop
        // (or be down) while a slow target makes the directory. The caller abandons it.
        self.ask_unless_stopped(node, call, self.short())?
            .ok_or_else(|| NodeError::Failed("interrupted while the staging export was opened".into()))
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

    fn finalize_export(
        &self,
        node: &str,
        instance: &str,
        config_ini: &str,
        id: &ExportId,
    ) -> Result<Finalized, NodeError> {
        if !self.remote.has(node) {
            return self.local.finalize_export(node, instance, config_ini, id);
        }
        let call = Call::FinalizeExport {
            node: node.into(),
            instance: instance.into(),
            config_ini: config_ini.into(),
            id: id.clone(),
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
            mark: None,
            exports: Err(e.to_string()),
            leftovers: false,
        })
    }

    fn remove_export(&self, node: &str, instance: &str, keep: &Keep) -> Result<bool, NodeError> {
        if !self.remote.has(node) {
            return self.local.remove_export(node, instance, keep);
        }
        let call = Call::RemoveExport {
            node: node.into(),
            instance: instance.into(),
            keep: keep.clone(),
        };
        self.ask(node, call, self.short())
    }
}

/// Test-only: with `DISKSTREAM_TEST_ONLY_CRASH_AT=<step>` a debug build of the master exits at
/// once at `step`, as a SIGKILL there would leave it (`open-receive`: the target has opened a
/// receive and the primary was never asked to send). A release build never looks.
fn test_only_crash(step: &str) {
    if cfg!(debug_assertions) && std::env::var_os("DISKSTREAM_TEST_ONLY_CRASH_AT").is_some_and(|v| v == step) {
        std::process::exit(86);
    }
}
