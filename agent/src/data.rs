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

use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use diskstream_engine::ops::StopFlag;
use diskstream_engine::source::FrameStream;
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{NodeError, SendDisk, TransferProgress};
use rustls::ServerConfig;

use crate::lease::ReceiveLease;
use crate::proto::{
    constant_eq, data_hello, hello_lane, new_token, Opened, Reply, WireError, WireReport, HELLO_LEN, LANE_HELLO_LEN,
};
use crate::tls;

mod admit;
mod lanes;
mod send;
mod stripe;

#[cfg(test)]
use send::dial;
pub use send::{send, SendFailed};
pub use stripe::MAX_LANES;

/// The buffer between the engine's frame stream and the sender's TLS connection: frame headers
/// and payloads go out in large TLS writes, not one record per piece.
const SEND_BUF: usize = 1 << 20;

/// The buffer between the target's TLS connection and the engine's frame reader: one TLS
/// record's plaintext (16 KiB). Frame headers are served from it; a payload read of this size
/// or more (most of each data frame) goes past it, from rustls straight into the engine's
/// buffer, one copy less than through a larger buffer.
const RECV_BUF: usize = 16 << 10;

/// How a send is watched and stopped from outside: the bytes done so far, and the flag that
/// ends it at the next chunk.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    /// Counts the send's progress.
    pub progress: &'a TransferProgress,
    /// Ends the send (this process's SIGINT/SIGTERM, or the master's cancel of the call).
    pub stop: &'a StopFlag,
}

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

/// A data connection's socket for its stream: keepalive, no Nagle delay, and the inactivity
/// timeout `t` over reads and writes together ([`tls::Sock::set_idle`]).
fn arm(sock: &mut tls::Sock, t: Duration) -> io::Result<()> {
    crate::sock::keepalive(sock.tcp())?;
    sock.tcp().set_nodelay(true)?;
    sock.set_idle(Some(t))
}

/// The target's side of one disk stream.
pub struct Receiver {
    listener: TcpListener,
    token: String,
    lanes: usize,
}

impl Receiver {
    /// Binds a data port on `ip` for one stream over `lanes` connections (1 ..=
    /// [`MAX_LANES`]; see `data/stripe.rs`), with a fresh token.
    pub fn open(ip: IpAddr, lanes: usize) -> io::Result<(Self, Opened)> {
        let lanes = lanes.clamp(1, MAX_LANES);
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
        let port = listener.local_addr()?.port();
        let token = new_token()?;
        let opened = Opened {
            port,
            token: token.clone(),
            lanes,
        };
        Ok((Self { listener, token, lanes }, opened))
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
        // An export abandoned (or begun again) while this port waits, or the agent's stop, ends
        // the wait at once: the receive's thread, port and place among the open receives are
        // given back.
        let mut streams = self.admit_all(cfg, req, t, &what, &|| {
            !lease.current() || local.stop_flag().load(Ordering::SeqCst)
        })?;
        // From here the receive holds the lease (until its stream ends or stalls); before, a
        // silent master's export expires around the waiting port. Not current any more: the
        // receives below refuse to write.
        lease.streaming();
        if streams.len() > 1 {
            return Ok(lanes::receive(local, streams, req, &what, t, lease));
        }
        Ok(receive(local, streams.remove(0), req, &what, t, lease))
    }

    /// Waits (until `t.open`) for one connection per lane that passes [`Receiver::admit`];
    /// returns them in lane order.
    ///
    /// Connections are admitted side by side (each within `t.connect`), so one that stalls its
    /// handshake or its token cannot hold the port against the primary; and a new connection
    /// evicts the oldest one being admitted when the slots are full ([`admit::Admitting`]), so
    /// that a flood of idle connections cannot either. Refusals are logged at most once a
    /// second ([`admit::Refusals`]). It gives up as soon as `gone` says the staging export the
    /// receive was opened for is gone.
    fn admit_all(
        &self,
        cfg: &Arc<ServerConfig>,
        req: &SendDisk,
        t: Timeouts,
        what: &str,
        gone: &dyn Fn() -> bool,
    ) -> Result<Vec<tls::ServerStream>, String> {
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
        let mut lanes: Vec<Option<tls::ServerStream>> = (0..self.lanes).map(|_| None).collect();
        let got = std::thread::scope(|sc| {
            let got = loop {
                let now = Instant::now();
                match admitted.try_recv() {
                    Ok(Ok((stream, None, peer))) => {
                        // The whole stream on one connection, unless lanes already came.
                        if lanes.iter().all(Option::is_none) {
                            break Ok(vec![stream]);
                        }
                        say(log.refused(now, format!("{peer}: a one-connection stream after its lanes")));
                        continue;
                    }
                    Ok(Ok((stream, Some(lane), peer))) => {
                        let slot: &mut Option<tls::ServerStream> = &mut lanes[lane];
                        if slot.is_some() {
                            say(log.refused(now, format!("{peer}: lane {lane} is already connected")));
                        } else {
                            *slot = Some(stream);
                        }
                        if lanes.iter().all(Option::is_some) {
                            break Ok(lanes.drain(..).flatten().collect());
                        }
                        continue;
                    }
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
                        "no stream for {what}: the staging export it was opened for was finalized or abandoned, \
                         or the agent is stopping"
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
                    let r = self
                        .admit(cfg, tcp, peer, req, t)
                        .map(|(s, lane)| (s, lane, peer))
                        .map_err(|e| (peer, e));
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

    /// The handshake, the client's certificate and the token with the lane it names (`None`:
    /// the whole stream on this one connection, `DSDATA1`); nothing of the disk is read.
    fn admit(
        &self,
        cfg: &Arc<ServerConfig>,
        tcp: TcpStream,
        peer: SocketAddr,
        req: &SendDisk,
        t: Timeouts,
    ) -> Result<(tls::ServerStream, Option<usize>), String> {
        tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
        let mut s = tls::accept(cfg, tcp, t.connect).map_err(|e| e.to_string())?;
        tls::authorize(&s.conn, &[req.source_node.as_str()], &peer.to_string()).map_err(|e| e.to_string())?;
        // The one-connection hello is the shorter and differs from a lane's within its length:
        // a port that opened lanes still takes a whole stream on one connection (a primary
        // or master from before lanes).
        let mut hello = [0u8; LANE_HELLO_LEN];
        let reading = |e: io::Error| format!("reading the token: {}", tls::timed_out(e, t.connect));
        s.read_exact(&mut hello[..HELLO_LEN]).map_err(reading)?;
        let lane = if constant_eq(&hello[..HELLO_LEN], &data_hello(&self.token)) {
            Some(None)
        } else if self.lanes > 1 {
            s.read_exact(&mut hello[HELLO_LEN..]).map_err(reading)?;
            hello_lane(&hello, &self.token, self.lanes).map(Some)
        } else {
            None
        };
        let Some(lane) = lane else {
            return Err(match self.lanes {
                1 => "the stream does not start with this transfer's token".into(),
                n => format!("the stream does not start with this transfer's token and a lane of {n}"),
            });
        };
        s.sock.set_deadline(None);
        arm(&mut s.sock, t.inactivity).map_err(|e| e.to_string())?;
        Ok((s, lane))
    }
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
    // A read blocked on a primary that went silent ends within a second of the receive's halt
    // (the agent's stop, or its staging export abandoned or begun again).
    s.sock.set_stop(Arc::clone(lease.halt()));
    let stream = Counted {
        inner: BufReader::with_capacity(RECV_BUF, &mut s),
        what: format!("receiving {what}"),
        bytes: 0,
        idle: t.inactivity,
        flip: None,
    };
    let reply = received(local, stream, req, what, lease);
    acknowledge(std::slice::from_mut(&mut s), &reply, t.inactivity);
    reply
}

/// Receives `stream` (one connection's, or the lanes' put back in order) into the staging
/// export, unless the `lease` says it is no longer the one the receive was opened for; the
/// lease is finished before the reply is made.
fn received<R: FrameStream>(
    local: &LocalNodeOps<'_>,
    stream: R,
    req: &SendDisk,
    what: &str,
    lease: &ReceiveLease<'_>,
) -> Reply {
    let progress = TransferProgress::default();
    let name = format!("{}:{what}", req.target_node);
    let t0 = Instant::now();
    let received = if lease.current() {
        local.receive_disk_until(req, stream, Path::new(&name), &progress, lease.halt())
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
        Err(e) => {
            // Its own failure unless the stream broke under it.
            let mut err = WireError {
                own: !crate::abort::on_the_wire(&e, Path::new(&name)),
                ..WireError::transfer(&e)
            };
            // However the stop surfaced: at a frame, or in a read it woke.
            if local.stop_flag().load(Ordering::SeqCst) {
                err.msg = format!("the agent of node {} is stopping", req.target_node);
            }
            Reply {
                ok: None,
                err: Some(err),
            }
        }
    }
}

/// Writes `reply` on the stream's first connection, ends every connection (TLS close, then a
/// lingering close, [`linger`], on every connection at once), each within `idle` from now
/// (a stalled stream's reason is still sent).
fn acknowledge(lanes: &mut [tls::ServerStream], reply: &Reply, idle: Duration) {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    for s in lanes.iter_mut() {
        let _ = s.sock.set_idle(Some(idle));
    }
    if let Some(s) = lanes.first_mut() {
        let _ = s.write_all(&line).and_then(|()| s.flush());
    }
    for s in lanes.iter_mut() {
        s.conn.send_close_notify();
        let _ = s.flush();
    }
    std::thread::scope(|sc| {
        for s in lanes.iter() {
            sc.spawn(|| linger(s.sock.tcp()));
        }
    });
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

#[cfg(test)]
mod tests;
