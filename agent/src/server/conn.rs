//! The control port's connections: the accept loop ([`Agent::serve`]) and one connection's life
//! ([`Agent::connection`]): a handshake place ([`admit::Admission::handshake`], evicted when a
//! newer connection needs it; marked at the client's first byte and at its whole ClientHello,
//! each making it give way after those whose clients got less far), the TLS handshake within
//! the connect timeout, the ALPN check
//! (only [`tls::ALPN`] is served: a client that offers none, or another, is closed), then either
//! the master's HTTP/2 service (a place of the master's own) or, for any other cluster member,
//! one 403 answer saying why and the close within [`admit::OTHER_GRACE`].
//!
//! Everything a peer that is not the master can cause (a refusal, a failed or evicted
//! handshake, a 403) is logged through [`admit::Admission::log_refusal`]: at most a line a
//! second, with how many were held back. A peer that closes its connection (with or without a
//! GOAWAY) is a normal end and is not logged.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::admit::{self, HandshakeSlot, Progress};
use super::{answer, raise_open_files_limit, refused, Agent, KEEPALIVE_PING};
use crate::tls;
use diskstream_orchestrator::node::NodeOps;

impl Agent {
    /// Binds `listen` (the port is then ours: a second agent of the node fails here), sweeps
    /// the staging exports a killed agent left (no master can finish them now; not before the
    /// port is ours, or a second agent would delete what the running one writes), and only then
    /// listens: once the port accepts, the sweep is done.
    fn claim_port(&self, listen: SocketAddr) -> std::io::Result<TcpListener> {
        let sock = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::STREAM, None)?;
        // As tokio's own bind: a restarted agent may take its port back at once.
        sock.set_reuse_address(true)?;
        sock.bind(&listen.into())?;
        for i in self.cluster.instances() {
            self.local.sweep_export_leftovers(&self.node, &i.name);
        }
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        TcpListener::from_std(sock.into())
    }

    /// Serves until the agent's stop is over (`stop.rs`) or the process is killed.
    pub async fn serve(&'static self, listen: SocketAddr) -> Result<(), String> {
        let listener = self
            .claim_port(listen)
            .map_err(|e| format!("listen on {listen}: {e}"))?;
        // The address bound: with port 0 the kernel chose the port.
        let bound = listener.local_addr().unwrap_or(listen);
        say!("diskstream agent: node {} listening on {bound}", self.node);
        raise_open_files_limit();
        loop {
            // Never ends on an error: out of file descriptors now is not out of them for good.
            // Ends once the agent's stop is over (looked at after every accept too, so that a
            // stream of connections cannot hold it off).
            if self.stop_is_over() {
                return Ok(());
            }
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tokio::time::sleep(super::stop::POLL) => continue,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    self.admission.log_refusal(|| format!("accept: {e}"));
                    // Out of file descriptors: a handshake short of a whole ClientHello gives
                    // its back (its second handle at once, its socket when its task ends), and
                    // the accept is tried again; else wait.
                    let out_of_fds = [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE]
                        .iter()
                        .any(|n| e.raw_os_error() == Some(n.raw_os_error()));
                    if out_of_fds && self.admission.evict_one() {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(admit::ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            };
            // Taken here, before a task is spawned, so that a flood spawns nothing. The second
            // handle lets the pool see whether the client sent anything (admit::Progress).
            let peek = std::os::fd::AsFd::as_fd(&tcp)
                .try_clone_to_owned()
                .ok()
                .map(std::net::TcpStream::from);
            let slot = self.admission.handshake(peer.ip(), peek);
            tokio::spawn(async move { self.connection(tcp, peer, slot).await });
        }
    }

    /// One control connection, from its handshake to its close.
    async fn connection(&'static self, tcp: TcpStream, peer: SocketAddr, mut slot: HandshakeSlot<'static>) {
        let _ = tcp.set_nodelay(true);
        let _ = crate::sock::keepalive(&tcp);
        let until = tokio::time::Instant::now() + self.timeouts.connect;
        let ended = |e: Ended| {
            self.admission.log_refusal(|| match e {
                Ended::Evicted => format!(
                    "{peer}: handshake evicted for a newer connection: its address had {} \
                     handshakes in progress, or all {} places were taken, and this was the \
                     oldest of those whose client got least far (nothing sent, some bytes, a \
                     whole ClientHello)",
                    admit::MAX_HANDSHAKES_PER_PEER,
                    admit::MAX_HANDSHAKES
                ),
                Ended::Failed(e) => format!("{peer}: TLS handshake: {e}"),
                Ended::TimedOut => format!("{peer}: TLS handshake timed out"),
            })
        };
        // The client's first byte is peeked (not read) and marked before anything is read, so
        // the pool always sees it, in the socket or by the mark (admit::Progress); then the
        // ClientHello: once it is whole, this handshake gives way after those of its address
        // whose clients got less far.
        let mut first = [0u8; 1];
        match step(&mut slot, until, tcp.peek(&mut first)).await {
            Ok(n) if n > 0 => slot.mark(Progress::Spoke),
            Ok(_) => return ended(Ended::Failed(io::ErrorKind::UnexpectedEof.into())),
            Err(e) => return ended(e),
        }
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match step(&mut slot, until, hello).await {
            Ok(start) => start,
            Err(e) => return ended(e),
        };
        slot.mark(Progress::Hello);
        let handshake = start.into_stream(Arc::clone(&self.server_tls));
        let s = match step(&mut slot, until, handshake).await {
            Ok(s) => s,
            Err(e) => return ended(e),
        };
        drop(slot);
        let conn = s.get_ref().1;
        if let Err(e) = tls::check_alpn(conn, &peer.to_string()) {
            // Dropping `s` closes it: nothing is served to a client of another protocol.
            return self.admission.log_refusal(|| format!("{peer}: refused: {e}"));
        }
        let master = self.cluster.master().name.as_str();
        if let Err(e) = tls::authorize(conn, &[master], &peer.to_string()) {
            let why = format!("refused: only the master ({master}) may command this agent: {e}");
            return self.other_member(s, peer, why).await;
        }
        let Some(_place) = self.admission.master() else {
            return self.admission.log_refusal(|| {
                format!(
                    "{peer}: refused: {} master connections open, the most at once",
                    admit::MAX_CONNECTIONS
                )
            });
        };
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // A master that vanished without closing (power cut, link down) is noticed by
        // HTTP/2 pings as well as by TCP keepalive.
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(KEEPALIVE_PING))
            .keep_alive_timeout(KEEPALIVE_PING * 2);
        let service = hyper::service::service_fn(move |req| self.request(req));
        if let Err(e) = builder.serve_connection(TokioIo::new(s), service).await {
            if !closed_by_peer(&e) {
                say!("diskstream agent: {peer}: HTTP/2 with the master: {e}{}", detail(&e));
            }
        }
    }

    /// A cluster member that is not the master: its first request is answered 403 with `why`,
    /// nothing runs, and the connection is closed after that answer or within
    /// [`admit::OTHER_GRACE`], whichever comes first. Beyond [`admit::MAX_OTHERS_PER_PEER`]
    /// such connections from its address (or [`admit::MAX_OTHERS`] in all) it is closed at once.
    async fn other_member(&'static self, s: TlsStream<TcpStream>, peer: SocketAddr, why: String) {
        let Some(_place) = self.admission.other(peer.ip()) else {
            return self.admission.log_refusal(|| {
                format!(
                    "{peer}: {why} (closed at once: {} such connections from this address or {} in \
                     all are open)",
                    admit::MAX_OTHERS_PER_PEER,
                    admit::MAX_OTHERS
                )
            });
        };
        self.admission.log_refusal(|| format!("{peer}: {why}"));
        let answered = Arc::new(Notify::new());
        let told = Arc::clone(&answered);
        let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
            let why = why.clone();
            told.notify_one();
            async move { Ok::<_, hyper::Error>(answer(StatusCode::FORBIDDEN, Err(refused(why)))) }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new()).max_concurrent_streams(1);
        let conn = builder.serve_connection(TokioIo::new(s), service);
        let mut conn = std::pin::pin!(conn);
        let _ = tokio::time::timeout(admit::OTHER_GRACE, async {
            tokio::select! {
                _ = conn.as_mut() => return,
                () = answered.notified() => {}
            }
            // GOAWAY: the answer in progress is sent, no other request is taken.
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        })
        .await;
    }
}

/// Whether `e` only says that the peer closed the connection (reset it, or closed it without a
/// GOAWAY): the normal end of a client's connection, not worth a log line.
pub(super) fn closed_by_peer(e: &hyper::Error) -> bool {
    let ended = |k: io::ErrorKind| {
        matches!(
            k,
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        )
    };
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            if let Some(io) = h.get_io() {
                return ended(io.kind());
            }
            return h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR);
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return ended(io.kind());
        }
        src = s.source();
    }
    false
}

/// `": CAUSE"` for an error whose display hides its cause (hyper's "connection error").
fn detail(e: &hyper::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

/// How a step of a control connection's handshake ended, if not done.
enum Ended {
    /// Its place was taken by a newer connection ([`admit::Admission::handshake`]).
    Evicted,
    /// The step failed.
    Failed(io::Error),
    /// The connect timeout passed.
    TimedOut,
}

/// Runs `fut`, one step of a handshake, until `until`, unless `slot` is evicted first.
async fn step<T>(
    slot: &mut HandshakeSlot<'_>,
    until: tokio::time::Instant,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, Ended> {
    tokio::select! {
        r = tokio::time::timeout_at(until, fut) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Ended::Failed(e)),
            Err(_) => Err(Ended::TimedOut),
        },
        () = slot.evicted() => Err(Ended::Evicted),
    }
}
