//! `net-rate`: the link-rate probe of `scripts/bench-net` (see `diskstream_agent::rate`).
//!
//! ```text
//! net-rate pki   --dir DIR --nodes NODE...
//! net-rate serve --pki DIR --node NODE --listen ADDR --allow NODE...
//! net-rate send  --pki DIR --node NODE --connect ADDR --peer NODE --mode tls|h2-default|h2-wide --bytes N
//!                [--streams N] [--expect-netns NAME]
//! ```
//! `send` prints one JSON object (`rate::Measured`). With `--expect-netns` it refuses to connect
//! unless it runs inside the named network namespace, so a test's traffic cannot leave it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use diskstream_agent::pki::PkiDir;
use diskstream_agent::rate::{self, Mode};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a throwaway PKI for the probe (a CA and one certificate per node).
    Pki {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, required = true, num_args = 1..)]
        nodes: Vec<String>,
    },
    /// Count what arrives, answer with the count.
    Serve {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        listen: SocketAddr,
        /// Nodes allowed to connect.
        #[arg(long, required = true, num_args = 1..)]
        allow: Vec<String>,
    },
    /// Send BYTES and print the measurement as JSON.
    Send {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        peer: String,
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long)]
        bytes: u64,
        /// Raw TLS only: split the bytes over N connections sent side by side (as a disk
        /// stream striped over N lanes, `agent --data-lanes N`).
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Refuse to connect unless this process is inside network namespace NAME.
        #[arg(long)]
        expect_netns: Option<String>,
    },
}

/// Whether this process's network namespace is the one `ip netns add NAME` made.
fn in_netns(name: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mine = std::fs::metadata("/proc/self/ns/net").map_err(|e| format!("/proc/self/ns/net: {e}"))?;
    let named = std::fs::metadata(format!("/run/netns/{name}")).map_err(|e| format!("/run/netns/{name}: {e}"))?;
    if (mine.dev(), mine.ino()) == (named.dev(), named.ino()) {
        Ok(())
    } else {
        Err(format!("not inside network namespace {name}; refusing to connect"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agents' copies, so that the link rate is measured as the agents move data.
    diskstream_agent::copies::tune();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("net-rate: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Pki { dir, nodes } => {
                let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
                PkiDir::new(dir)
                    .init("net-rate", &names, false)
                    .map_err(|e| e.to_string())
                    .map(|()| String::new())
            }
            Cmd::Serve {
                pki,
                node,
                listen,
                allow,
            } => rate::serve(&PkiDir::new(pki), &node, listen, allow)
                .await
                .map(|()| String::new()),
            Cmd::Send {
                pki,
                node,
                connect,
                peer,
                mode,
                bytes,
                streams,
                expect_netns,
            } => {
                if let Some(ns) = expect_netns {
                    in_netns(&ns)?;
                }
                let m = rate::send(&PkiDir::new(pki), &node, connect, &peer, mode, bytes, streams).await?;
                serde_json::to_string(&m).map_err(|e| e.to_string())
            }
        }
    });
    match res {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("net-rate: {e}");
            ExitCode::FAILURE
        }
    }
}
