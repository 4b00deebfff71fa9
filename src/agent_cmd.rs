//! `diskstream pki` (the cluster CA and node certificates) and `diskstream agent` (a node's
//! agent daemon); the choice of node operations for `export`/`list`/`remove` (agents for nodes
//! with an `address`, in-process for the others).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use diskstream_agent::data::Timeouts;
use diskstream_agent::pki::{PkiDir, PkiError};
use diskstream_agent::remote::{AgentNodes, RemoteTimeouts};
use diskstream_agent::server::AgentOptions;
use diskstream_orchestrator::backup::{self, RunOptions};
use diskstream_orchestrator::cluster::Cluster;
use diskstream_orchestrator::feedback::Feedback;
use diskstream_orchestrator::hooks::HooksRunner;
use diskstream_orchestrator::lu::LogicalUnit;
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::NodeOps;
use diskstream_orchestrator::{Ecode, ErrorKind, OpError};

use crate::contract::{self, Kind, Op, PkiNode, PkiResult, PkiStatus};
use crate::output;

/// `diskstream pki`.
#[derive(Subcommand, Debug)]
pub enum PkiCmd {
    /// Create the cluster CA and a certificate for every node of the cluster config, in the
    /// config's PKI directory (`[cluster] pki`, default `<config dir>/pki`).
    Init {
        /// Cluster config (default: $DISKSTREAM_CLUSTER, else ./cluster.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Replace an existing CA (every node certificate must then be reissued).
        #[arg(long)]
        force: bool,
        /// Print the result as one JSON object on stdout (docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Issue (or renew) one node's certificate with the cluster CA.
    Issue {
        /// Cluster config (default: $DISKSTREAM_CLUSTER, else ./cluster.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// The node (as named in the cluster config).
        node: String,
        /// Print the result as one JSON object on stdout (docs/json.md).
        #[arg(long)]
        json: bool,
    },
}

/// The cluster config path from `--cluster`, `$DISKSTREAM_CLUSTER` or `./cluster.toml`.
pub fn cluster_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("DISKSTREAM_CLUSTER").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cluster.toml"))
}

/// Runs `diskstream pki ...`: a sentence, or with `--json` the [`PkiResult`] envelope.
pub fn pki(cmd: PkiCmd) -> ExitCode {
    let json = match &cmd {
        PkiCmd::Init { json, .. } | PkiCmd::Issue { json, .. } => *json,
    };
    match pki_run(cmd) {
        Ok(r) => {
            if !json {
                outln!("{}", pki_sentence(&r));
            }
            contract::done(Op::Pki, r, json)
        }
        Err((kind, e)) => output::fail_msg(Op::Pki, kind, &e, json),
    }
}

/// What `pki` did, in one sentence.
fn pki_sentence(r: &PkiResult) -> String {
    match r.ca {
        PkiStatus::Kept => r
            .nodes
            .iter()
            .map(|n| {
                let verb = if n.status == PkiStatus::Replaced {
                    "renewed"
                } else {
                    "issued"
                };
                format!("{verb} {} and {}", n.cert.display(), n.key.display())
            })
            .collect::<Vec<_>>()
            .join("; "),
        ca => format!(
            "{} the CA of cluster {} and certificates for {} in {}",
            if ca == PkiStatus::Replaced {
                "replaced"
            } else {
                "created"
            },
            r.cluster,
            r.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>().join(", "),
            r.pki_dir.display()
        ),
    }
}

/// [`pki`]'s work; the error with its JSON kind (`config` for a cluster config that cannot be
/// loaded or does not name the node, as `export`, `list` and `remove` report it).
fn pki_run(cmd: PkiCmd) -> Result<PkiResult, (Kind, String)> {
    let load = |cluster| Cluster::load(cluster_path(cluster)).map_err(|e| (Kind::Config, e.to_string()));
    match cmd {
        PkiCmd::Init { cluster, force, .. } => {
            let c = load(cluster)?;
            let dir = PkiDir::new(c.pki_dir());
            let (ca, nodes) = pki_before(&c, &dir);
            match dir.init(&c.info().name, &nodes.iter().map(|n| n.0).collect::<Vec<_>>(), force) {
                Ok(()) => Ok(pki_result(&c, &dir, ca, &nodes)),
                // Nothing was changed: a prerequisite, as Ganeti's refusals (exit 4).
                Err(e @ PkiError::Exists(..)) => Err((Kind::Prereq, e.to_string())),
                Err(e) => Err((Kind::Error, e.to_string())),
            }
        }
        PkiCmd::Issue { cluster, node, .. } => {
            let c = load(cluster)?;
            if c.node(&node).is_none() {
                let msg = format!("node {node} is not in the cluster config {}", c.path().display());
                return Err((Kind::Config, msg));
            }
            let dir = PkiDir::new(c.pki_dir());
            let existed = dir.node_cert(&node).exists();
            dir.issue(&node).map_err(|e| (Kind::Error, e.to_string()))?;
            Ok(pki_result(&c, &dir, PkiStatus::Kept, &[(node.as_str(), existed)]))
        }
    }
}

/// `pki init` on `c`: the CA and a certificate for every node of its config.
pub fn pki_init(c: &Cluster, force: bool) -> Result<PkiResult, String> {
    let dir = PkiDir::new(c.pki_dir());
    let (ca, nodes) = pki_before(c, &dir);
    let names: Vec<&str> = nodes.iter().map(|n| n.0).collect();
    dir.init(&c.info().name, &names, force).map_err(|e| e.to_string())?;
    Ok(pki_result(c, &dir, ca, &nodes))
}

/// What `init` finds in `dir`: whether it replaces a CA, and each node of `c` with whether it
/// had a certificate.
fn pki_before<'c>(c: &'c Cluster, dir: &PkiDir) -> (PkiStatus, Vec<(&'c str, bool)>) {
    let ca = if dir.ca_key().exists() || dir.ca_cert().exists() {
        PkiStatus::Replaced
    } else {
        PkiStatus::Created
    };
    let nodes = c
        .nodes()
        .iter()
        .map(|n| (n.name.as_str(), dir.node_cert(&n.name).exists()))
        .collect();
    (ca, nodes)
}

/// The result for `nodes` (name, whether a certificate existed before).
fn pki_result(c: &Cluster, dir: &PkiDir, ca: PkiStatus, nodes: &[(&str, bool)]) -> PkiResult {
    PkiResult {
        cluster: c.info().name.clone(),
        pki_dir: dir.root().to_path_buf(),
        ca_cert: dir.ca_cert(),
        ca,
        nodes: nodes
            .iter()
            .map(|&(n, existed)| PkiNode {
                node: n.to_string(),
                cert: dir.node_cert(n),
                key: dir.node_key(n),
                status: if existed {
                    PkiStatus::Replaced
                } else {
                    PkiStatus::Created
                },
            })
            .collect(),
    }
}

/// `diskstream agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Cluster config (default: $DISKSTREAM_CLUSTER, else ./cluster.toml).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// The node this agent serves (it listens on the node's `address`).
    #[arg(long)]
    pub node: String,
    /// Listen here instead of the node's `address` (e.g. 0.0.0.0:1811).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Seconds without a byte moving on a disk stream before it fails as stalled.
    #[arg(long, default_value_t = 30)]
    pub inactivity_timeout: u64,
    /// Seconds a staging export may go without word from the master (and without a disk
    /// stream in progress) before the agent removes it (a master that died mid-export).
    #[arg(long, default_value_t = 600)]
    pub staging_timeout: u64,
    /// TLS connections each disk stream this node receives is striped over, 1 to 16 (default:
    /// one per four CPUs of this node, at most 4). More lanes spread TLS over more cores on
    /// both ends; the primary uses what the target opens.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=16))]
    pub data_lanes: Option<u8>,
    /// Test hook: flip byte N of every disk stream this agent sends (the target must refuse it).
    #[arg(long, hide = true)]
    pub test_flip_wire_byte: Option<u64>,
    /// Exit when the process PID (this agent's parent, e.g. `diskstream demo --agents`) exits.
    #[arg(long, hide = true, value_name = "PID")]
    pub exit_with_parent: Option<u32>,
}

/// Runs `diskstream agent` until SIGTERM or SIGINT (then it stops in order) or killed.
pub fn agent(a: AgentArgs) -> ExitCode {
    if let Some(parent) = a.exit_with_parent {
        if let Err(e) = diskstream_agent::netns::exit_with_parent(parent) {
            return output::fail_msg(Op::Agent, Kind::Error, &format!("agent of node {}: {e}", a.node), false);
        }
    }
    let opts = AgentOptions {
        listen: a.listen,
        timeouts: Timeouts {
            inactivity: Duration::from_secs(a.inactivity_timeout.max(1)),
            flip_byte: a.test_flip_wire_byte,
            ..Timeouts::default()
        },
        staging_timeout: Duration::from_secs(a.staging_timeout.max(1)),
        data_lanes: a
            .data_lanes
            .map_or_else(diskstream_agent::server::default_data_lanes, usize::from),
    };
    // SIGTERM (a service manager's stop) and SIGINT stop the agent in order; it exits 0.
    let stop = match crate::interrupt::Interrupt::install_with_notice(
        "waiting for the running calls and streams to end, then removing the staging exports \
         and snapshots this agent holds",
    ) {
        Ok(i) => i.flag(),
        Err(e) => {
            let msg = format!("agent of node {}: signal handlers: {e}", a.node);
            return output::fail_msg(Op::Agent, Kind::Error, &msg, false);
        }
    };
    match diskstream_agent::server::run(&cluster_path(a.cluster), &a.node, &opts, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => output::fail_msg(Op::Agent, Kind::Error, &format!("agent of node {}: {e}", a.node), false),
    }
}

/// The nodes an LU runs with: agents for nodes with an `address` ([`AgentNodes`]), this
/// machine for the others; a config without any address runs everything in-process, as before.
fn make_nodes<'c>(
    cluster: &'c Cluster,
    hooks: HooksRunner,
    stop: Arc<AtomicBool>,
) -> Result<Box<dyn NodeOps + 'c>, OpError> {
    if !cluster.has_agents() {
        return Ok(Box::new(LocalNodeOps::new(cluster, hooks, stop)));
    }
    AgentNodes::new(cluster, hooks, stop, RemoteTimeouts::default())
        .map(|n| Box::new(n) as Box<dyn NodeOps + 'c>)
        .map_err(|e| OpError::new(ErrorKind::Exec, Ecode::Environ, format!("cannot reach the agents: {e}")))
}

/// Runs an LU on the cluster config at `path` with [`make_nodes`].
pub fn run_on_cluster<L: LogicalUnit>(
    path: &Path,
    lu: &mut L,
    feedback: &dyn Feedback,
    opts: &RunOptions,
) -> Result<Option<L::Output>, OpError> {
    backup::run_on_cluster_with(path, lu, feedback, opts, make_nodes)
}

/// `gnt-backup list` through the nodes [`make_nodes`] picks.
pub fn list(cluster: &Cluster, nodes: &[String]) -> Result<Vec<backup::NodeExports>, OpError> {
    let ops = make_nodes(cluster, HooksRunner::default(), Arc::default())?;
    backup::list_on(cluster, ops.as_ref(), nodes)
}
