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
/// Control characters are escaped ([`log_line`]): text a peer chose (a name, an error it caused)
/// can neither forge a line nor send terminal escapes.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "{}", $crate::log_line(&format!($($arg)*)));
    }};
}

/// `tokio::io::AsyncWrite` for a stream wrapper `$t<S>` (a field `inner: S`) whose writes go
/// straight through: the wrappers that only watch or prefix what is read.
macro_rules! write_through {
    ($t:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $t<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

/// One line of the agent's log as written: `text` with its control characters escaped.
pub fn log_line(text: &str) -> std::borrow::Cow<'_, str> {
    diskstream_engine::report::escape_controls(text)
}

pub mod abort;
pub mod copies;
pub mod data;
pub mod lease;
pub mod netns;
pub mod pki;
pub mod proto;
pub mod rate;
mod refusals;
pub mod remote;
pub mod server;
pub mod sock;
pub mod tls;

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_line_cannot_be_forged_or_send_escapes() {
        let line = super::log_line("refused 10.0.0.9: bad name \"x\ndiskstream agent: forged\r\u{1b}[2J\"");
        assert!(!line.contains(['\n', '\r', '\u{1b}']), "{line}");
        assert!(line.contains("x\\ndiskstream agent: forged\\r\\u{1b}[2J"), "{line}");
        assert_eq!(super::log_line("plain\ttext"), "plain\ttext");
    }
}
