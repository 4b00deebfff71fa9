//! diskstream's node agent layer: the cluster PKI ([`pki`]: a CA per cluster, a certificate per
//! node), mutual-TLS connections that trust that CA alone and check the peer's node name
//! ([`tls`]), the agent daemon ([`server`], [`handle`], [`lease`]) and its protocol ([`proto`]), the data
//! plane ([`data`]: one TLS connection per disk carrying the dsimg frame stream), TCP keepalive
//! on all of their sockets ([`sock`]), how a stream that failed on the primary ends ([`abort`]) and
//! the
//! master's side ([`remote`]: [`remote::AgentNodes`], a `NodeOps` that sends each node's
//! operations to its agent, or runs them in-process for nodes without an address), and [`netns`]
//! (network namespaces for agents on one machine: `diskstream demo --agents` as root).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// `eprintln!` for the agent's log lines that never panics: with stderr gone (a log reader that
/// quit, a journal that restarted) the line is lost and the agent goes on serving. (`eprintln!`
/// panics on EPIPE, and did so on the "listening" line of an agent whose log pipe had closed.)
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod abort;
pub mod data;
pub mod lease;
pub mod netns;
pub mod pki;
pub mod proto;
pub mod rate;
pub mod remote;
pub mod server;
pub mod sock;
pub mod tls;
