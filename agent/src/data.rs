//! The data plane: one dedicated mutual-TLS connection per disk carrying the engine's `dsimg`
//! frame stream (blocking rustls on plain threads, like the engine's own I/O).
//!
//! - The target ([`Receiver`]): [`Receiver::open`] binds a port for one stream the master
//!   opened, with a one-time token. The first connection whose certificate names the primary the
//!   master named and that starts with the token is taken (anything else is refused before a
//!   byte of disk data is read, and the port keeps waiting until its deadline); its frames are
//!   read through [`diskstream_orchestrator::node::local::LocalNodeOps::receive_disk`] (every
//!   frame and the trailer checked, the dump fsynced and renamed) and only then acknowledged
//!   with one JSON line. Connections are admitted side by side and a new one evicts the oldest
//!   still being admitted when the slots are full, so a flood cannot keep the primary out
//!   (`data/admit.rs`).
//! - The primary ([`send`]): connects (again, within its connect timeout, while the port closes
//!   the connection before the handshake completed), sends the token, streams the disk, reads the
//!   acknowledgement.
//!
//! Both ends time out when no byte moves for the inactivity timeout ("stalled").

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use diskstream_engine::source::FrameStream;
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{NodeError, SendDisk, TransferError, TransferProgress};
use rustls::{ClientConfig, ServerConfig};

use crate::lease::ReceiveLease;
use crate::proto::{data_hello, new_token, Opened, Reply, Sent, WireError, WireReport, HELLO_LEN};
use crate::tls;

mod admit;

/// The buffer between the engine's frame stream and the sender's TLS connection: frame headers
/// and payloads go out in large TLS writes, not one record per piece.
const SEND_BUF: usize = 1 << 20;

/// The buffer between the target's TLS connection and the engine's frame reader: one TLS
/// record's plaintext (16 KiB). Frame headers are served from it; a payload read of this size
/// or more (most of each data frame) goes past it, from rustls straight into the engine's
/// buffer, one copy less than through a larger buffer.
const RECV_BUF: usize = 16 << 10;

/// The longest acknowledgement line read.
const MAX_ACK: u64 = 1 << 20;

/// How long the ends of a data connection wait.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect and TLS handshake.
    pub connect: Duration,
    /// No byte moving for this long fails the transfer ("stalled").
    pub inactivity: Duration,
    /// How long an opened receive waits for its stream.
    pub open: Duration,
    /// Test hook (`diskstream agent --test-flip-wire-byte N`): the sender flips byte N of
    /// every stream it sends, after the engine wrote it, so the target must catch it.
    pub flip_byte: Option<u64>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            inactivity: Duration::from_secs(30),
            open: Duration::from_secs(60),
            flip_byte: None,
        }
    }
}

/// A socket end that counts bytes and names a stall: a timeout becomes "stalled: no data ...".
struct Counted<S> {
    inner: S,
    what: String,
    bytes: u64,
    idle: Duration,
    flip: Option<u64>,
}

impl<S> Counted<S> {
    fn stalled(&self, e: io::Error) -> io::Error {
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "stalled: no progress {} for {} s after {} bytes",
                    self.what,
                    self.idle.as_secs(),
                    self.bytes
                ),
            )
        } else {
            e
        }
    }
}

impl<S: Read> Read for Counted<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => Err(self.stalled(e)),
        }
    }
}

impl<S: Write> Write for Counted<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(at) = self
            .flip
            .filter(|&at| at >= self.bytes && at < self.bytes + buf.len() as u64)
        {
            let i = (at - self.bytes) as usize;
            let mut b = buf[..=i].to_vec();
            b[i] ^= 0x01;
            self.flip = None;
            self.inner.write_all(&b).map_err(|e| self.stalled(e))?;
            self.bytes += b.len() as u64;
            return Ok(b.len());
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => Err(self.stalled(e)),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.stalled(e))
    }
}

/// The target's end of a disk stream: mutual TLS, whose AEAD authenticates every byte, so the
/// frames' payload CRCs are not checked again (their digests are).
impl FrameStream for Counted<BufReader<&mut tls::ServerStream>> {
    fn authenticated(&self) -> bool {
        true
    }
}

fn set_timeouts(tcp: &TcpStream, t: Duration) -> io::Result<()> {
    tcp.set_read_timeout(Some(t))?;
    tcp.set_write_timeout(Some(t))?;
    crate::sock::keepalive(tcp)?;
    tcp.set_nodelay(true)
}

/// The target's side of one disk stream.
pub struct Receiver {
    listener: TcpListener,
    token: String,
}

impl Receiver {
    /// Binds a data port on `ip` for one stream, with a fresh token.
    pub fn open(ip: IpAddr) -> io::Result<(Self, Opened)> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
        let port = listener.local_addr()?.port();
        let token = new_token()?;
        let opened = Opened {
            port,
            token: token.clone(),
        };
        Ok((Self { listener, token }, opened))
    }

    /// Waits (until `t.open`) for the stream of `req` from `req.source_node`, receives it into
    /// the staging export through `local` if `lease` says that export is still the one the
    /// receive was opened for, finishes the lease and acknowledges it. Returns what it
    /// acknowledged (for the agent's log); an error when no valid stream came.
    pub fn run(
        self,
        local: &LocalNodeOps<'_>,
        cfg: &Arc<ServerConfig>,
        req: &SendDisk,
        t: Timeouts,
        lease: &ReceiveLease<'_>,
    ) -> Result<Reply, String> {
        let what = format!("{}/disk{} from {}", req.instance, req.disk, req.source_node);
        // An export abandoned (or begun again) while this port waits ends the wait at once: the
        // receive's thread, port and place among the open receives are given back.
        let stream = self.admit_first(cfg, req, t, &what, &|| !lease.current())?;
        Ok(receive(local, stream, req, &what, t, lease))
    }

    /// Waits (until `t.open`) for the first connection that passes [`Receiver::admit`].
    ///
    /// Connections are admitted side by side (each within `t.connect`), so one that stalls its
    /// handshake or its token cannot hold the port against the primary; and a new connection
    /// evicts the oldest one being admitted when the slots are full ([`admit::Admitting`]), so
    /// that a flood of idle connections cannot either. Refusals are logged at most once a
    /// second ([`admit::Refusals`]). It gives up as soon as `gone` says the staging export the
    /// receive was opened for is gone.
    fn admit_first(
        &self,
        cfg: &Arc<ServerConfig>,
        req: &SendDisk,
        t: Timeouts,
        what: &str,
        gone: &dyn Fn() -> bool,
    ) -> Result<tls::ServerStream, String> {
        let deadline = Instant::now() + t.open;
        self.listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (tx, admitted) = mpsc::channel();
        let slots = Mutex::new(admit::Admitting::default());
        let mut log = admit::Refusals::default();
        let say = |line: Option<String>| {
            if let Some(line) = line {
                say!("diskstream agent: data port for {what}: {line}");
            }
        };
        let got = std::thread::scope(|sc| {
            let got = loop {
                let now = Instant::now();
                match admitted.try_recv() {
                    Ok(Ok(stream)) => break Ok(stream),
                    Ok(Err((peer, e))) => {
                        say(log.refused(now, format!("{peer}: {e}")));
                        continue;
                    }
                    Err(_) => say(log.due(Some(now))),
                }
                if now > deadline {
                    break Err(format!("no valid stream for {what} within {} s", t.open.as_secs()));
                }
                if gone() {
                    break Err(format!(
                        "no stream for {what}: the staging export it was opened for was finalized or abandoned"
                    ));
                }
                let (tcp, peer) = match self.listener.accept() {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => break Err(format!("accept on the data port for {what}: {e}")),
                };
                let Ok(handle) = tcp.try_clone() else {
                    continue; // Out of descriptors: dropping `tcp` closes it.
                };
                let (id, evicted) = slots.lock().expect("slots").take(peer, handle);
                if let Some(old) = evicted {
                    say(log.refused(now, format!("{old}: evicted for {peer}, slots full")));
                }
                let (tx, slots) = (tx.clone(), &slots);
                sc.spawn(move || {
                    let r = self.admit(cfg, tcp, peer, req, t).map_err(|e| (peer, e));
                    // An evicted connection's outcome is void (its socket was shut down).
                    if slots.lock().expect("slots").release(id) {
                        let _ = tx.send(r);
                    }
                });
            };
            // The connections still being admitted are refused at once, so that their
            // threads end now (the scope waits for them).
            slots.lock().expect("slots").evict_all();
            got
        });
        say(log.due(None));
        got
    }

    /// The handshake, the client's certificate and the token; nothing of the disk is read.
    fn admit(
        &self,
        cfg: &Arc<ServerConfig>,
        tcp: TcpStream,
        peer: SocketAddr,
        req: &SendDisk,
        t: Timeouts,
    ) -> Result<tls::ServerStream, String> {
        tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
        let mut s = tls::accept(cfg, tcp, t.connect).map_err(|e| e.to_string())?;
        tls::authorize(&s.conn, &[req.source_node.as_str()], &peer.to_string()).map_err(|e| e.to_string())?;
        let mut hello = [0u8; HELLO_LEN];
        s.read_exact(&mut hello)
            .map_err(|e| format!("reading the token: {}", tls::timed_out(e, t.connect)))?;
        if !constant_eq(&hello, &data_hello(&self.token)) {
            return Err("the stream does not start with this transfer's token".into());
        }
        s.sock.set_deadline(None);
        set_timeouts(s.sock.tcp(), t.inactivity).map_err(|e| e.to_string())?;
        Ok(s)
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Receives and acknowledges one admitted stream (refuses it, before reading a frame, if its
/// staging export is no longer the `lease`'s); the lease is finished before the acknowledgement.
fn receive(
    local: &LocalNodeOps<'_>,
    mut s: tls::ServerStream,
    req: &SendDisk,
    what: &str,
    t: Timeouts,
    lease: &ReceiveLease<'_>,
) -> Reply {
    let progress = TransferProgress::default();
    let name = format!("{}:{what}", req.target_node);
    let reply = {
        let stream = Counted {
            inner: BufReader::with_capacity(RECV_BUF, &mut s),
            what: format!("receiving {what}"),
            bytes: 0,
            idle: t.inactivity,
            flip: None,
        };
        let t0 = Instant::now();
        let received = if lease.current() {
            local.receive_disk(req, stream, Path::new(&name), &progress)
        } else {
            Err(NodeError::Unknown(format!(
                "{name}: the staging export this stream was opened for was finalized or abandoned"
            ))
            .into())
        };
        lease.finish();
        tracing::debug!(stream = %what, ok = received.is_ok(), elapsed_s = t0.elapsed().as_secs_f64(), "stream received and committed");
        match received {
            Ok(r) => Reply {
                ok: serde_json::to_value(WireReport::from(&r)).ok(),
                err: None,
            },
            Err(e) => Reply {
                ok: None,
                // Its own failure unless the stream broke under it.
                err: Some(WireError {
                    own: !crate::abort::on_the_wire(&e, Path::new(&name)),
                    ..WireError::transfer(&e)
                }),
            },
        }
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    let _ = s.write_all(&line).and_then(|()| s.flush());
    s.conn.send_close_notify();
    let _ = s.flush();
    linger(s.sock.tcp());
    reply
}

/// How long, and how many bytes, a receive that ended reads and discards what its peer still
/// sends before it closes the socket.
const LINGER: (Duration, u64) = (Duration::from_millis(200), 1 << 20);

/// A lingering close: the write side is shut, and what the peer sent that was not read (a
/// stream refused before its frames, or cut short) is read and discarded until its end, for at
/// most [`LINGER`]. Closing with unread bytes would make the kernel reset the connection, and a
/// peer that has sent all it had would lose the acknowledgement it is about to read.
fn linger(tcp: &TcpStream) {
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER.0;
    let mut sink = [0u8; 16 << 10];
    let mut left = LINGER.1;
    while left > 0 {
        let Some(wait) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return;
        };
        if tcp.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match (&mut &*tcp).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// Why a send failed, and whether the failure is the primary's own ([`WireError::own`]: its
/// disk, its engine, a stop) or the connection's or the target's.
#[derive(Debug)]
pub struct SendFailed {
    /// The error.
    pub error: TransferError,
    /// The primary failed on its own side (it reset the connection).
    pub own: bool,
}

impl From<SendFailed> for TransferError {
    fn from(f: SendFailed) -> Self {
        f.error
    }
}

/// The primary's side: streams `req` to the target at `host`:`port` with `token` (counting in
/// `progress`), and returns
/// both ends' reports once the target acknowledged the committed dump.
pub fn send(
    local: &LocalNodeOps<'_>,
    cfg: &Arc<ClientConfig>,
    host: &str,
    opened: &Opened,
    req: &SendDisk,
    progress: &TransferProgress,
    t: Timeouts,
) -> Result<Sent, SendFailed> {
    let failed = |msg: String| SendFailed {
        error: TransferError::Node(Box::new(diskstream_orchestrator::node::NodeError::Failed(msg))),
        own: false,
    };
    let to = format!(
        "{}/disk{} to {} ({host}:{})",
        req.instance, req.disk, req.target_node, opened.port
    );
    let addr = (host, opened.port)
        .to_socket_addrs()
        .map_err(|e| failed(format!("resolving {host}: {e}")))?
        .next()
        .ok_or_else(|| failed(format!("{host} has no address")))?;
    let mut s = dial(cfg, addr, &req.target_node, t.connect, &to).map_err(failed)?;
    set_timeouts(s.sock.tcp(), t.inactivity).map_err(|e| failed(format!("{to}: {e}")))?;
    s.write_all(&data_hello(&opened.token))
        .map_err(|e| failed(format!("{to}: sending the token: {e}")))?;
    let name = format!("{}:{to}", req.source_node);
    let sent = {
        let out = Counted {
            inner: &mut s,
            what: format!("sending {to}"),
            bytes: 0,
            idle: t.inactivity,
            flip: t.flip_byte,
        };
        local.send_disk_to(req, BufWriter::with_capacity(SEND_BUF, out), Path::new(&name), progress)
    };
    let sent_at = Instant::now();
    let sent = match sent {
        Ok(r) => r,
        Err(e) if !crate::abort::on_the_wire(&e, Path::new(&name)) => {
            // It failed here: the reset tells the target now (see abort).
            crate::abort::reset(s.sock.tcp());
            return Err(SendFailed { error: e, own: true });
        }
        Err(e) => {
            // The target may have stopped reading because it refused the stream: its reason
            // is the better message.
            let _ = s.sock.tcp().set_read_timeout(Some(Duration::from_secs(2)));
            return Err(match read_ack(&mut s) {
                Ok(Reply { err: Some(w), .. }) => {
                    failed(format!("node {} refused the stream: {}", req.target_node, w.msg))
                }
                _ => SendFailed { error: e, own: false },
            });
        }
    };
    // The end of the stream (the reader checks that nothing follows the trailer); TLS 1.3
    // keeps the other direction open for the acknowledgement.
    s.conn.send_close_notify();
    s.flush().map_err(|e| failed(format!("{to}: ending the stream: {e}")))?;
    let reply = read_ack(&mut s).map_err(|e| failed(format!("{to}: {e}")))?;
    tracing::debug!(stream = %to, waited_s = sent_at.elapsed().as_secs_f64(), "acknowledged by the target");
    match (reply.ok, reply.err) {
        (Some(v), None) => Ok(Sent {
            sent: WireReport::from(&sent),
            received: serde_json::from_value(v).map_err(|e| failed(format!("{to}: acknowledgement: {e}")))?,
        }),
        (_, Some(e)) => Err(failed(format!(
            "node {} refused the stream: {}",
            req.target_node, e.msg
        ))),
        _ => Err(failed(format!("{to}: empty acknowledgement"))),
    }
}

/// Connects to `node`'s data port at `addr` and completes the handshake, within `timeout` in
/// all. A connection the port closed or reset before the handshake completed is dialed again
/// (after a short pause) while time is left: a port whose admission slots a flood fills evicts
/// the oldest connection it is admitting ([`admit`]), which may be this one. A refused
/// connect (no port) or a handshake the peer refused (an alert) is not retried. Errors name
/// the stream `to`.
fn dial(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    node: &str,
    timeout: Duration,
    to: &str,
) -> Result<tls::ClientStream, String> {
    let until = Instant::now() + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let tcp = TcpStream::connect_timeout(&addr, left).map_err(|e| format!("connect for {to}: {e}"))?;
        let e = match tls::connect(cfg, tcp, node, left) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let closed = matches!(&e, tls::TlsError::Handshake { source, .. } if matches!(
            source.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        ));
        if !closed || until.saturating_duration_since(Instant::now()) < DIAL_PAUSE * 2 {
            return Err(match tries {
                1 => format!("{to}: {e}"),
                n => format!("{to}: {e} (after {n} tries)"),
            });
        }
        std::thread::sleep(DIAL_PAUSE);
    }
}

/// The pause before dialing a data port again.
const DIAL_PAUSE: Duration = Duration::from_millis(50);

/// Reads the target's acknowledgement line.
fn read_ack(s: &mut tls::ClientStream) -> Result<Reply, String> {
    let mut line = String::new();
    BufReader::new(Read::take(s, MAX_ACK))
        .read_line(&mut line)
        .map_err(|e| format!("no acknowledgement: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("the target's acknowledgement is not valid ({e}): {line:?}"))
}

#[cfg(test)]
mod tests;
