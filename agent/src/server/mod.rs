//! The agent daemon (`diskstream agent --cluster FILE --node NAME`): serves one node's side of
//! every [`NodeOps`] method to the cluster's master over HTTP/2 on mutual TLS, running
//! [`LocalNodeOps`] for its own node, so each call has exactly the local path's semantics.
//!
//! Refusals, all before anything is touched: a client whose certificate does not name the
//! master (the handshake already refused any other CA; see `conn.rs` for how connections are
//! admitted, `admit.rs` for the limits); a call naming another node; an
//! instance that is not this node's (for instance and disk operations) or a name that could be
//! a path (for export-directory operations: instances, dumps, hook paths must be safe names).
//! The agent reads only the disks and writes only the export directory that the cluster config
//! gives its node: every path is derived by [`LocalNodeOps`] from the config.

mod admit;
mod conn;
mod drift;
mod handle;
mod sending;
mod stop;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use diskstream_engine::ops::StopFlag;
use diskstream_orchestrator::cluster::{is_safe_name, reserved_instance_name, Cluster, Instance};
use diskstream_orchestrator::export::store::Removal;
use diskstream_orchestrator::hooks::HooksRunner;
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{NodeOps, SendDisk};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rustls::{ClientConfig, ServerConfig};
use serde_json::Value;

use crate::data::{Receiver, Timeouts};
use crate::lease::Leases;
use crate::pki::PkiDir;
use crate::proto::{Call, Reply, WireError};
use crate::tls;
use sending::Sending;

/// How often an idle master connection is pinged (HTTP/2 PING); twice this without an answer
/// closes it.
const KEEPALIVE_PING: Duration = Duration::from_secs(10);

/// Raises the soft limit on open files to the hard one (systemd's default soft limit is 1024,
/// its hard limit far higher): connections, data ports and disks all take descriptors. The
/// limits of [`admit::Admission`] hold either way.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            say!("diskstream agent: raising the open files limit: {e}");
        }
    }
}

/// How long the result of a receive is kept for the master to ask for.
const ENDED_KEPT: Duration = Duration::from_secs(600);

/// The largest request body accepted (a `config.ini` and a hook environment fit easily).
const MAX_BODY: usize = 4 << 20;

/// How long a `BeginExport` or `AbandonExport` waits for the receives of the instance's
/// earlier staging export to stop (they stop at their next frame or wake-up: a second or two).
const WRITERS_WAIT: Duration = Duration::from_secs(10);

/// A running agent's state: its node, the cluster config, the node's operations, TLS.
pub struct Agent {
    cluster: &'static Cluster,
    /// [`Cluster::digest`] of `cluster`: a call from a master whose config differs is refused.
    config: String,
    node: String,
    local: LocalNodeOps<'static>,
    server_tls: Arc<ServerConfig>,
    client_tls: Arc<ClientConfig>,
    data_ip: IpAddr,
    timeouts: Timeouts,
    data_lanes: usize,
    /// How each receive ended, by token (`None`: committed), and when.
    ended: Mutex<HashMap<String, (std::time::Instant, Option<WireError>)>>,
    leases: Leases,
    /// The sends in progress, and those that ended in the last [`ENDED_KEPT`], by token.
    sending: Mutex<HashMap<String, Sending>>,
    /// The shutdown waits in progress, by instance: the flags that cut them short. A master
    /// interrupted during a wait sends `StopInstance` again with no wait, which raises them
    /// (and waits for the first call's answer, as the local path waits for its stop).
    shutdowns: Mutex<HashMap<String, Vec<StopFlag>>>,
    /// The control port's limits.
    admission: admit::Admission,
    /// The calls being run, and how many began (see `stop.rs`).
    calls: AtomicUsize,
    begun: AtomicUsize,
    /// The stop is over: the accept loop ends.
    stopped: AtomicBool,
}

/// Raises its flag when dropped: a call's future dropped before the call ended (hyper drops it
/// when the client resets the stream or the connection ends) stops what the call runs.
#[derive(Default)]
struct Cancel(StopFlag);

impl Drop for Cancel {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Where an agent listens and how long it waits.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Listen here instead of the node's `address`.
    pub listen: Option<SocketAddr>,
    /// Data-plane timeouts.
    pub timeouts: Timeouts,
    /// A staging export with no word from the master (and no receive in progress) for this long
    /// is abandoned (see [`crate::lease`]).
    pub staging_timeout: Duration,
    /// How many TLS connections each disk stream this node receives is striped over (1 ..=
    /// [`data::MAX_LANES`]; see [`default_data_lanes`]).
    pub data_lanes: usize,
}

/// The lanes a received disk stream uses unless `agent --data-lanes` says: one per four CPUs,
/// at least 1 and at most 4. Each lane is a TLS thread on both ends; the receiving side also
/// runs the digest workers and the writer, and on a machine of few cores extra lanes only
/// compete with them.
pub fn default_data_lanes() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus / 4).clamp(1, 4)
}

fn refused(msg: impl Into<String>) -> WireError {
    WireError::new("refused", msg)
}

impl Agent {
    /// The agent of `node` in `cluster` (loaded once; the daemon keeps it for its lifetime);
    /// `stop` (SIGTERM, SIGINT) stops it in order (`stop.rs`).
    pub fn new(
        cluster: Cluster,
        node: &str,
        opts: &AgentOptions,
        stop: StopFlag,
    ) -> Result<(Self, SocketAddr), String> {
        let cluster: &'static Cluster = Box::leak(Box::new(cluster));
        let n = cluster
            .node(node)
            .ok_or_else(|| format!("node {node} is not in the cluster config {}", cluster.path().display()))?;
        let listen = match (opts.listen, &n.address) {
            (Some(l), _) => l,
            (None, Some(a)) => a
                .to_socket_addrs()
                .map_err(|e| format!("node {node}: address {a}: {e}"))?
                .next()
                .ok_or_else(|| format!("node {node}: address {a} resolves to nothing"))?,
            (None, None) => {
                return Err(format!(
                    "node {node} has no address in the cluster config (or pass --listen)"
                ))
            }
        };
        let pki = PkiDir::new(cluster.pki_dir());
        let (ca, id) = pki.load_checked(node).map_err(|e| e.to_string())?;
        let server_tls = tls::server_config(&ca, &id).map_err(|e| e.to_string())?;
        let client_tls = tls::client_config(&ca, &id).map_err(|e| e.to_string())?;
        let hooks = HooksRunner::new(cluster.hooks_timeout()).with_report_interval(cluster.hooks_report_interval());
        let local = LocalNodeOps::new(cluster, hooks, stop).with_removal(Removal::Background);
        let agent = Self {
            cluster,
            config: cluster.digest(),
            node: node.to_string(),
            local,
            server_tls,
            client_tls,
            data_ip: listen.ip(),
            timeouts: opts.timeouts,
            data_lanes: opts.data_lanes, // clamped where the port opens (`Receiver::open`)
            ended: Mutex::default(),
            leases: Leases::new(opts.staging_timeout),
            sending: Mutex::default(),
            shutdowns: Mutex::default(),
            admission: admit::Admission::default(),
            calls: Default::default(),
            begun: Default::default(),
            stopped: AtomicBool::new(false),
        };
        Ok((agent, listen))
    }

    async fn request(&'static self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let method = req.uri().path().strip_prefix("/v1/").unwrap_or("").to_string();
        if let Some(msg) = self.config_differs(&method, req.headers().get(crate::proto::CONFIG_HEADER)) {
            return Ok(answer(StatusCode::FORBIDDEN, Err(refused(msg))));
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(answer(StatusCode::BAD_REQUEST, Err(refused(format!("body: {e}"))))),
        };
        let call: Call = match serde_json::from_slice(&body) {
            Ok(c) => c,
            Err(e) => {
                return Ok(answer(
                    StatusCode::BAD_REQUEST,
                    Err(refused(format!("not a call: {e}"))),
                ))
            }
        };
        if call.method() != method {
            let msg = format!("POST /v1/{method} carries a {} call", call.method());
            return Ok(answer(StatusCode::BAD_REQUEST, Err(refused(msg))));
        }
        // Counted while its work runs (not while this future lives: hyper may drop it first).
        let Some(running) = self.call_begins(&call) else {
            // Its own refusal: nothing ran (the master need not ask a send's target why).
            let msg = format!("the agent of node {} is stopping", self.node);
            let e = WireError {
                own: true,
                ..WireError::new("failed", msg)
            };
            return Ok(answer(StatusCode::SERVICE_UNAVAILABLE, Err(e)));
        };
        // The call's own stop: raised when this future is dropped before the call ended (the
        // master reset the stream: it was interrupted; or its connection closed: it died), or
        // when the agent stops.
        let cancel = Cancel::default();
        let flag = Arc::clone(&cancel.0);
        let mut task = tokio::task::spawn_blocking(move || {
            let _running = running;
            self.dispatch(call, &flag)
        });
        let out = loop {
            tokio::select! {
                biased;
                r = &mut task => break r,
                () = tokio::time::sleep(stop::POLL) => {
                    if self.stopping() {
                        cancel.0.store(true, Ordering::SeqCst);
                    }
                }
            }
        };
        let out = out.unwrap_or_else(|e| Err(WireError::new("failed", format!("the operation panicked: {e}"))));
        let status = match &out {
            Err(e) if e.kind == "refused" => StatusCode::FORBIDDEN,
            _ => StatusCode::OK,
        };
        Ok(answer(status, out))
    }

    /// Checks and runs one call on this node; `cancel` is raised when its master gives the
    /// call up or goes away (see [`handle::run`]).
    pub fn dispatch(&'static self, call: Call, cancel: &StopFlag) -> Result<Value, WireError> {
        self.check(&call)?;
        match &call {
            Call::BeginExport { instance, .. } => {
                // The receives opened for the staging export this one replaces write by the
                // staging directory's name: they are halted, and must be gone before it is
                // made again.
                self.leases.begin(instance);
                let left = self.leases.wait_writers(instance, WRITERS_WAIT);
                if !left.is_empty() {
                    return Err(WireError::new(
                        "failed",
                        format!(
                            "receives into the previous staging export of {instance} are still ending \
                             after {} s: {}",
                            WRITERS_WAIT.as_secs(),
                            left.join(", ")
                        ),
                    ));
                }
            }
            Call::OpenReceive { req } => self.leases.touch(&req.instance),
            Call::FinalizeExport { instance, .. } => {
                // A dump still being written would be swapped into the export half done; so
                // would one of a receive opened for an earlier staging export of the instance.
                let open = self.leases.writers(instance);
                if !open.is_empty() {
                    return Err(refused(format!(
                        "the staging export of {instance} cannot be finalized while dumps are \
                         being received into it: {}",
                        open.join(", ")
                    )));
                }
                self.leases.end(instance)
            }
            Call::AbandonExport { instance, .. } => {
                // Its receives are halted; the directory goes once they are gone (or after the
                // wait: a receive that ends later removes its own partial files).
                self.leases.end(instance);
                let left = self.leases.wait_writers(instance, WRITERS_WAIT);
                if !left.is_empty() {
                    say!(
                        "diskstream agent: abandoning the staging export of {instance}: receives still ending after {} s: {}",
                        WRITERS_WAIT.as_secs(),
                        left.join(", ")
                    );
                }
            }
            _ => {}
        }
        handle::run(self, call, cancel)
    }

    /// Abandons the staging exports whose master went silent (every second, for ever).
    fn reap(&'static self) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            for inst in self.leases.expired() {
                say!(
                    "diskstream agent: no word from the master about the staging export of {inst} for {} s: removing it",
                    self.leases.timeout().as_secs()
                );
                // Receives still waiting for a stream were halted; they leave within a poll.
                self.leases.wait_writers(&inst, WRITERS_WAIT);
                self.local.abandon_export(&self.node, &inst);
            }
        }
    }

    /// The refusals: another node, an instance not on this node, a name that could be a path.
    fn check(&self, call: &Call) -> Result<(), WireError> {
        if call.node() != self.node {
            return Err(refused(format!(
                "this agent serves node {}, not {}",
                self.node,
                call.node()
            )));
        }
        use Call::*;
        match call {
            RunHooks { hpath, .. } => safe("hook path", hpath),
            InstanceRunning { instance, .. }
            | StopInstance { instance, .. }
            | StartInstance { instance, .. }
            | ForgetInstance { instance, .. }
            | BackingSize { instance, .. }
            | ActivateDisks { instance, .. }
            | RemoveDisks { instance, .. }
            | SweepStaleSnapshots { instance, .. }
            | SnapshotCapability { instance, .. }
            | CreateSnapshot { instance, .. } => self.own_instance(instance),
            RemoveSnapshot { snapshot, .. } => self.own_instance(&snapshot.instance),
            Send { req, .. } => {
                self.own_instance(&req.instance)?;
                self.transfer_names(req)
            }
            OpenReceive { req } => {
                export_name(&req.instance)?;
                self.known_disk(&req.instance, Some(req.disk))?;
                self.transfer_names(req)
            }
            // A new export is only ever of an instance in the config (whose disks size what
            // it receives); the others below also act on exports of instances since removed.
            BeginExport { instance, .. } => {
                export_name(instance)?;
                self.known_disk(instance, None)
            }
            FinalizeExport { instance, .. }
            | AbandonExport { instance, .. }
            | SweepExportLeftovers { instance, .. }
            | ExportListing { instance, .. }
            | RemoveExport { instance, .. } => export_name(instance),
            ListExports { .. } | ReceiveResult { .. } | Progress { .. } => Ok(()),
        }
    }

    /// The instance `name` of the cluster config (any node's).
    fn instance(&self, name: &str) -> Result<&Instance, WireError> {
        self.cluster
            .instance(name)
            .ok_or_else(|| WireError::new("unknown", format!("instance {name} is not in the cluster config")))
    }

    /// `name` is an instance of the cluster config (any node's), with a disk `disk`.
    fn known_disk(&self, name: &str, disk: Option<usize>) -> Result<(), WireError> {
        let i = self.instance(name)?;
        match disk {
            Some(d) if d >= i.disks.len() => Err(WireError::new(
                "unknown",
                format!("instance {name} has no disk {d} ({} disks)", i.disks.len()),
            )),
            _ => Ok(()),
        }
    }

    fn own_instance(&self, name: &str) -> Result<(), WireError> {
        let i = self.instance(name)?;
        if i.primary_node != self.node {
            return Err(refused(format!(
                "instance {name} runs on node {}, not on {}",
                i.primary_node, self.node
            )));
        }
        Ok(())
    }

    fn transfer_names(&self, req: &SendDisk) -> Result<(), WireError> {
        safe("dump name", &req.dump)?;
        if let Some(why) = diskstream_orchestrator::names::reserved_dump_name(&req.dump) {
            return Err(refused(format!("invalid dump name '{}': {why}", req.dump)));
        }
        for n in [&req.source_node, &req.target_node] {
            if self.cluster.node(n).is_none() {
                return Err(WireError::new(
                    "unknown",
                    format!("node {n} is not in the cluster config"),
                ));
            }
        }
        Ok(())
    }

    /// This node's operations.
    pub fn local(&self) -> &LocalNodeOps<'static> {
        &self.local
    }

    /// The cluster config.
    pub fn cluster(&self) -> &'static Cluster {
        self.cluster
    }

    /// Opens a receive for `req` and runs it on a thread of its own.
    pub fn open_receive(&'static self, req: SendDisk) -> Result<Value, WireError> {
        if !self.local.is_staging(&req.target_node, &req.instance) {
            return Err(WireError::new(
                "unknown",
                format!("no staging export of {} on node {}", req.instance, self.node),
            ));
        }
        // Held by the receive until it ends, however it ends.
        let lease = self.leases.begin_receive(&req.instance, &req.dump).map_err(refused)?;
        let (rx, opened) = Receiver::open(self.data_ip, self.data_lanes)
            .map_err(|e| WireError::new("failed", format!("opening a data port on {}: {e}", self.data_ip)))?;
        let t = self.timeouts;
        let token = opened.token.clone();
        std::thread::spawn(move || {
            let ended = match rx.run(&self.local, &self.server_tls, &req, t, &lease) {
                Ok(Reply { err: Some(e), .. }) => Some(e),
                Ok(_) => None,
                Err(e) => Some(WireError::new("failed", e)),
            };
            drop(lease);
            if let Some(e) = &ended {
                say!(
                    "diskstream agent: receiving {}/disk{}: {}",
                    req.instance,
                    req.disk,
                    e.msg
                );
            }
            let mut m = self.ended.lock().expect("ended");
            // The master asks right after the send ends; results it never asked for (it died)
            // are dropped after a while, not all at once with those it is about to ask for.
            m.retain(|_, (at, _)| at.elapsed() < ENDED_KEPT);
            m.insert(token, (std::time::Instant::now(), ended));
        });
        serde_json::to_value(opened).map_err(|e| WireError::new("failed", e.to_string()))
    }

    /// How the receive of `token` ended, waiting up to 10 s for it.
    pub fn receive_result(&self, token: &str) -> Result<Value, WireError> {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Some((_, r)) = self.ended.lock().expect("ended").remove(token) {
                return Ok(serde_json::to_value(r).unwrap_or(Value::Null));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(WireError::new(
            "unknown",
            "no receive with this token ended in the last 10 s",
        ))
    }

    /// Stops `instance`, waiting up to `timeout` for it to shut down. With no wait, the waits
    /// of the stops of the instance in progress are cut short too (the driver then stops the
    /// instance at once, as on SIGINT; a command driver's wait is not cut, as on the local
    /// path), and this call answers once its own immediate stop is done. Not tied to the call's
    /// cancel: a master that dies or loses its connection during the wait leaves the shutdown
    /// to finish as asked, not the instance killed.
    pub fn stop_instance(&self, instance: &str, timeout: Duration) -> Result<Value, WireError> {
        let mine = StopFlag::new(AtomicBool::new(timeout.is_zero()));
        {
            let mut m = self.shutdowns.lock().expect("shutdowns");
            let waits = m.entry(instance.to_string()).or_default();
            if timeout.is_zero() {
                waits.iter().for_each(|f| f.store(true, Ordering::SeqCst));
            }
            waits.push(Arc::clone(&mine));
        }
        // Taken out again however the stop ends (a driver that panics included).
        let _listed = Listed(self, instance, &mine);
        let r = self.local.stop_instance_until(instance, timeout, &mine);
        r.map(|()| Value::Null).map_err(|e| WireError::node(&e))
    }
}

/// A stop of an instance listed among its shutdown waits while this lives.
struct Listed<'a>(&'a Agent, &'a str, &'a StopFlag);

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        let mut m = self.0.shutdowns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waits) = m.get_mut(self.1) {
            waits.retain(|f| !Arc::ptr_eq(f, self.2));
            if waits.is_empty() {
                m.remove(self.1);
            }
        }
    }
}

fn safe(what: &str, name: &str) -> Result<(), WireError> {
    if is_safe_name(name) {
        Ok(())
    } else {
        Err(refused(format!("invalid {what} '{name}': not a plain name")))
    }
}

fn export_name(instance: &str) -> Result<(), WireError> {
    safe("instance name", instance)?;
    match reserved_instance_name(instance) {
        Some(why) => Err(refused(format!("invalid instance name '{instance}': {why}"))),
        None => Ok(()),
    }
}

fn answer(status: StatusCode, out: Result<Value, WireError>) -> Response<Full<Bytes>> {
    let reply = match out {
        Ok(v) => Reply { ok: Some(v), err: None },
        Err(e) => Reply { ok: None, err: Some(e) },
    };
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Runs the agent of `node` from the cluster config at `path` until `stop` is raised (SIGTERM,
/// SIGINT), then stops in order ([`Agent::wind_down`]).
pub fn run(path: &std::path::Path, node: &str, opts: &AgentOptions, stop: StopFlag) -> Result<(), String> {
    let cluster = Cluster::load(path).map_err(|e| e.to_string())?;
    let (agent, listen) = Agent::new(cluster, node, opts, stop)?;
    // The daemon's state lives as long as the process.
    let agent: &'static Agent = Box::leak(Box::new(agent));
    std::thread::spawn(move || agent.reap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    // The control port serves while the agent winds down (the master's clean-up calls), until
    // the wind-down is over.
    std::thread::spawn(move || agent.wind_down_on_stop());
    rt.block_on(agent.serve(listen))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The default inactivity timeout, for the CLI's help.
pub const DEFAULT_INACTIVITY: Duration = Duration::from_secs(30);
