//! Mutual TLS between cluster members: configurations that trust the cluster CA alone, require a
//! certificate on both ends, and checks that the peer's certificate names the node it must be.
//!
//! Rules (the agent's protocol builds on them):
//! - TLS 1.3 only, with rustls' `ring` provider; both ends present a certificate issued by the
//!   cluster CA ([`crate::pki`]); anything else fails the handshake before a byte of payload.
//! - A client names the node it dials (`ServerName` = node name); the server's certificate must
//!   carry that name, so a connection to the wrong node (or a node whose address now belongs to
//!   another) fails.
//! - A server learns who the client is from its certificate ([`peer_node`]) and authorizes by
//!   name ([`authorize`]): an agent takes commands only from the node the cluster config names as
//!   master, and data streams only from the node a master-opened transfer names.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

use crate::pki::Identity;

/// The ALPN protocol both ends announce. A client offering another is refused by the handshake
/// (rustls: `NoApplicationProtocol`); one offering none completes it, and is refused right after
/// by [`check_alpn`] (the agent's control and data ports both check), before a byte is served.
pub const ALPN: &[u8] = b"diskstream/1";

/// Why a TLS connection was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The configuration could not be built (bad certificate or key).
    #[error("TLS configuration for node {node}: {detail}")]
    Config {
        /// The local node.
        node: String,
        /// rustls' complaint.
        detail: String,
    },
    /// The handshake failed: wrong CA, wrong name, no certificate, not TLS at all.
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        /// Who was at the other end, as far as it is known (address or node name).
        peer: String,
        /// The error (a rustls error wrapped in `io::Error`, or the socket's).
        #[source]
        source: io::Error,
    },
    /// The peer proved an identity, but not one allowed to do this.
    #[error("{peer} is not allowed here: {why}")]
    Refused {
        /// The peer's node name (from its certificate) or address.
        peer: String,
        /// What it would have needed to be.
        why: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>, node: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| TlsError::Config {
        node: node.to_string(),
        detail: format!("cluster CA certificate: {e}"),
    })?;
    Ok(Arc::new(roots))
}

fn config_err(node: &str) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Config {
        node: node.to_string(),
        detail: e.to_string(),
    }
}

/// The server side of a node: presents `id`, requires a client certificate from the CA `ca`.
pub fn server_config(ca: &CertificateDer<'static>, id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let node = id.node.as_str();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca, node)?, provider())
        .build()
        .map_err(|e| TlsError::Config {
            node: node.to_string(),
            detail: e.to_string(),
        })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err(node))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        .map_err(config_err(node))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The client side of a node (or the master): presents `id`, trusts only the CA `ca`.
pub fn client_config(ca: &CertificateDer<'static>, id: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let node = id.node.as_str();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca, node)?, provider())
        .build()
        .map_err(|e| TlsError::Config {
            node: node.to_string(),
            detail: e.to_string(),
        })?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err(node))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
        .map_err(config_err(node))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Whether the end-entity certificate `cert` names `node` (its subjectAltName DNS names).
pub fn names_node(cert: &CertificateDer<'_>, node: &str) -> bool {
    let (Ok(parsed), Ok(name)) = (ParsedCertificate::try_from(cert), ServerName::try_from(node)) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// Of `candidates`, the node that the client's certificate names (the handshake has already
/// checked that the CA issued it). `None` when it names none of them.
pub fn peer_node<'a>(conn: &ServerConnection, candidates: &[&'a str]) -> Option<&'a str> {
    let cert = conn.peer_certificates()?.first()?;
    candidates.iter().copied().find(|n| names_node(cert, n))
}

/// Refuses a client whose certificate does not name one of `allowed` (e.g. the master, for a
/// command; the primary node of an opened transfer, for a disk stream).
pub fn authorize<'a>(conn: &ServerConnection, allowed: &[&'a str], addr: &str) -> Result<&'a str, TlsError> {
    peer_node(conn, allowed).ok_or_else(|| TlsError::Refused {
        peer: addr.to_string(),
        why: format!(
            "its certificate names none of {}",
            allowed.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Refuses a connection whose handshake did not agree on [`ALPN`] (a client that offered no
/// ALPN at all: rustls lets that one through).
pub fn check_alpn(conn: &rustls::CommonState, addr: &str) -> Result<(), TlsError> {
    match conn.alpn_protocol() {
        Some(p) if p == ALPN => Ok(()),
        got => Err(TlsError::Refused {
            peer: addr.to_string(),
            why: format!(
                "it must speak ALPN '{}', it offered {}",
                String::from_utf8_lossy(ALPN),
                got.map_or("none".to_string(), |p| format!("'{}'", String::from_utf8_lossy(p)))
            ),
        }),
    }
}

/// A finished server-side handshake on a blocking socket.
pub type ServerStream = StreamOwned<ServerConnection, Sock>;
/// A finished client-side handshake on a blocking socket.
pub type ClientStream = StreamOwned<ClientConnection, Sock>;

/// The socket under a blocking TLS stream, its reads buffered: rustls asks for one TLS record
/// (at most ~16 KiB) per read, which unbuffered is one `recv` per record, 65 000 per GiB on
/// the receiving end of a disk stream; through this buffer it is one per [`SOCK_READ_BUF`].
/// Writes go straight to the socket (rustls already writes its queued records in one
/// vectored write).
///
/// Until [`Sock::set_deadline`] clears it, every read must end by a deadline (each read's
/// timeout is the time left), so a peer that trickles a byte now and then cannot stretch a
/// handshake past it.
///
/// With [`Sock::set_idle`], reads and writes fail once no byte moved either way for the idle
/// time, however rustls chains its I/O: rustls's `write` swallows a blocked write's error and
/// its `complete_io` follows a blocked write with a read, so per-call socket timeouts added up
/// (a primary whose target froze failed after about 12 times its inactivity timeout).
#[derive(Debug)]
pub struct Sock {
    io: BufReader<TcpStream>,
    deadline: Option<Instant>,
    /// The socket's own read timeout while a deadline is set, put back when it is cleared.
    own_timeout: Option<Duration>,
    idle: Option<Idle>,
    /// Raised: a read or write blocked under [`Sock::set_idle`] fails at its next wake-up.
    stop: Option<Arc<AtomicBool>>,
}

/// No byte moved for `limit` since `last`: fail.
#[derive(Debug, Clone, Copy)]
struct Idle {
    limit: Duration,
    last: Instant,
}

/// Bytes read from the socket at a time.
pub const SOCK_READ_BUF: usize = 256 << 10;

/// How long one blocked read or write waits before [`Sock`] looks at its idle time again.
const IDLE_SLICE: Duration = Duration::from_secs(1);

impl Sock {
    /// Buffers the reads of `tcp`.
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            io: BufReader::with_capacity(SOCK_READ_BUF, tcp),
            deadline: None,
            own_timeout: None,
            idle: None,
            stop: None,
        }
    }

    /// From now on a read or write blocked under [`Sock::set_idle`] fails (`ConnectionAborted`,
    /// "stopped") within a second of `stop` being raised, not after the idle time.
    pub fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = Some(stop);
    }

    /// Reads from now on must end by `deadline` (`None`: each within the socket's own read
    /// timeout, as it was when the deadline was set; it is put back).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        match (self.deadline, deadline) {
            (None, Some(_)) => self.own_timeout = self.tcp().read_timeout().ok().flatten(),
            (Some(_), None) => {
                let _ = self.tcp().set_read_timeout(self.own_timeout);
            }
            _ => {}
        }
        self.deadline = deadline;
    }

    /// From now on (the clock starts now), reads and writes fail with `TimedOut` once no byte
    /// moved either way for `limit` (`None`: each call within the socket's own timeouts, left as
    /// they are). Sets the socket's read and write timeouts to at most a second: a blocked call
    /// wakes that often to look at the clock.
    pub fn set_idle(&mut self, limit: Option<Duration>) -> io::Result<()> {
        self.idle = limit.map(|limit| Idle {
            limit,
            last: Instant::now(),
        });
        if let Some(l) = limit {
            let slice = Some(l.min(IDLE_SLICE).max(Duration::from_millis(1)));
            self.tcp().set_read_timeout(slice)?;
            self.tcp().set_write_timeout(slice)?;
        }
        Ok(())
    }

    /// The TCP socket (timeouts, keepalive, linger).
    pub fn tcp(&self) -> &TcpStream {
        self.io.get_ref()
    }
}

/// Runs `op` (a read or a write) under `idle`: retried while it times out and the idle time has
/// not passed; failed at once, before any syscall, once it has.
fn within_idle(
    idle: Option<&mut Idle>,
    stop: Option<&AtomicBool>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    let Some(idle) = idle else {
        return op();
    };
    loop {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "stopped"));
        }
        if idle.last.elapsed() >= idle.limit {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no byte moved for {} s", idle.limit.as_secs_f64()),
            ));
        }
        match op() {
            Ok(n) => {
                if n > 0 {
                    idle.last = Instant::now();
                }
                return Ok(n);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            self.io.get_ref().set_read_timeout(Some(left))?;
            return self.io.read(buf);
        }
        within_idle(self.idle.as_mut(), self.stop.as_deref(), || self.io.read(buf))
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        within_idle(self.idle.as_mut(), self.stop.as_deref(), || {
            self.io.get_mut().write(buf)
        })
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        within_idle(self.idle.as_mut(), self.stop.as_deref(), || {
            self.io.get_mut().write_vectored(bufs)
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        self.io.get_mut().flush()
    }
}

/// Completes the server side of a handshake on `tcp` within `timeout` in all. The returned
/// stream keeps that deadline for its reads until [`Sock::set_deadline`] clears it.
pub fn accept(cfg: &Arc<ServerConfig>, tcp: TcpStream, timeout: Duration) -> Result<ServerStream, TlsError> {
    let addr = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let hs = |source| TlsError::Handshake {
        peer: addr.clone(),
        source,
    };
    tcp.set_read_timeout(Some(timeout)).map_err(hs)?;
    tcp.set_write_timeout(Some(timeout)).map_err(hs)?;
    let conn = ServerConnection::new(Arc::clone(cfg)).map_err(|e| hs(io::Error::other(e)))?;
    let mut sock = Sock::new(tcp);
    sock.set_deadline(Some(Instant::now() + timeout));
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| hs(timed_out(e, timeout)))?;
    }
    check_alpn(&s.conn, &addr)?;
    Ok(s)
}

/// A socket timeout or a passed deadline (`WouldBlock` from a blocking socket's timeout reads
/// "Resource temporarily unavailable") as what it is: "timed out after N s". Other errors as
/// they are.
pub(crate) fn timed_out(e: io::Error, after: Duration) -> io::Error {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {} s", after.as_secs_f64()),
        )
    } else {
        e
    }
}

/// Dials `node` over `tcp` and completes the handshake within `timeout`; the server's
/// certificate must name `node`.
pub fn connect(
    cfg: &Arc<ClientConfig>,
    tcp: TcpStream,
    node: &str,
    timeout: Duration,
) -> Result<ClientStream, TlsError> {
    let hs = |source| TlsError::Handshake {
        peer: node.to_string(),
        source,
    };
    let name = ServerName::try_from(node.to_string()).map_err(|e| hs(io::Error::other(e)))?;
    tcp.set_read_timeout(Some(timeout)).map_err(hs)?;
    tcp.set_write_timeout(Some(timeout)).map_err(hs)?;
    let conn = ClientConnection::new(Arc::clone(cfg), name).map_err(|e| hs(io::Error::other(e)))?;
    let mut s = StreamOwned::new(conn, Sock::new(tcp));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| hs(timed_out(e, timeout)))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_deadline_ends_reads_of_a_peer_that_trickles() {
        // A byte every 50 ms never trips a per-read timeout of 50 ms or more; the deadline
        // ends the reads all the same.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let trickle = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for _ in 0..40 {
                if c.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (tcp, _) = l.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut s = Sock::new(tcp);
        let t0 = Instant::now();
        s.set_deadline(Some(t0 + Duration::from_millis(300)));
        let mut got = 0;
        let e = loop {
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        let took = t0.elapsed();
        assert!(
            matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock),
            "{e:?}"
        );
        assert!(got >= 2, "the trickle was read until the deadline: {got}");
        assert!(took < Duration::from_millis(700), "took {took:?}");
        // Cleared, reads wait for data again.
        s.set_deadline(None);
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 1);
        drop(s);
        trickle.join().unwrap();
    }
}
