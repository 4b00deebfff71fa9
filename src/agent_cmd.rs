//! `diskstream pki` (the cluster CA and node certificates) and `diskstream agent` (a node's
//! agent daemon); the choice of node operations for `export`/`list`/`remove` (agents for nodes
//! with an `address`, in-process for the others).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use diskstream_agent::pki::PkiDir;
use diskstream_orchestrator::cluster::Cluster;

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
    },
    /// Issue (or renew) one node's certificate with the cluster CA.
    Issue {
        /// Cluster config (default: $DISKSTREAM_CLUSTER, else ./cluster.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// The node (as named in the cluster config).
        node: String,
    },
}

/// The cluster config path from `--cluster`, `$DISKSTREAM_CLUSTER` or `./cluster.toml`.
pub fn cluster_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("DISKSTREAM_CLUSTER").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cluster.toml"))
}

/// Runs `diskstream pki ...`.
pub fn pki(cmd: PkiCmd) -> ExitCode {
    match pki_run(cmd) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => output::fail_msg(&e),
    }
}

fn pki_run(cmd: PkiCmd) -> Result<String, String> {
    match cmd {
        PkiCmd::Init { cluster, force } => {
            let c = Cluster::load(cluster_path(cluster)).map_err(|e| e.to_string())?;
            let dir = PkiDir::new(c.pki_dir());
            let nodes: Vec<&str> = c.nodes().iter().map(|n| n.name.as_str()).collect();
            dir.init(&c.info().name, &nodes, force).map_err(|e| e.to_string())?;
            Ok(format!(
                "created the CA of cluster {} and certificates for {} in {}",
                c.info().name,
                nodes.join(", "),
                dir.root().display()
            ))
        }
        PkiCmd::Issue { cluster, node } => {
            let c = Cluster::load(cluster_path(cluster)).map_err(|e| e.to_string())?;
            if c.node(&node).is_none() {
                return Err(format!(
                    "node {node} is not in the cluster config {}",
                    c.path().display()
                ));
            }
            let dir = PkiDir::new(c.pki_dir());
            dir.issue(&node).map_err(|e| e.to_string())?;
            Ok(format!(
                "issued {} and {}",
                dir.node_cert(&node).display(),
                dir.node_key(&node).display()
            ))
        }
    }
}
