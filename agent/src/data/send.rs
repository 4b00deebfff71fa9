//! The primary's side of a disk stream: dials the target's data port (once per lane), sends
//! the token, streams the disk through the engine, and reads the acknowledgement.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{SendDisk, TransferError};
use rustls::ClientConfig;

use super::{arm, lanes, Counted, Timeouts, Watch, MAX_ACK, MAX_LANES, SEND_BUF};
use crate::proto::{data_hello, Opened, Reply, Sent, WireReport};
use crate::tls;

/// Why a send failed, and whether the failure is the primary's own ([`crate::proto::WireError::own`]: its
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
/// `watch.progress`), and returns
/// both ends' reports once the target acknowledged the committed dump. `watch.stop` ends the
/// stream at the next chunk (a failure of this side's own: the target is told at once).
pub fn send(
    local: &LocalNodeOps<'_>,
    cfg: &Arc<ClientConfig>,
    host: &str,
    opened: &Opened,
    req: &SendDisk,
    watch: Watch<'_>,
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
    let lanes = opened.lanes;
    let mut streams = open_lanes(cfg, addr, &req.target_node, opened, t, &to).map_err(failed)?;
    for s in &mut streams {
        // A write blocked on a stalled target ends within a second of the stop, not after the
        // inactivity timeout.
        s.sock.set_stop(Arc::clone(watch.stop));
    }
    let name = format!("{}:{to}", req.source_node);
    let sent = match streams.as_mut_slice() {
        [s] => {
            let out = Counted {
                inner: s,
                what: format!("sending {to}"),
                bytes: 0,
                idle: t.inactivity,
                flip: t.flip_byte,
            };
            let out = BufWriter::with_capacity(SEND_BUF, out);
            local.send_disk_to(req, out, Path::new(&name), watch.progress, watch.stop)
        }
        lanes => lanes::send(local, lanes, req, Path::new(&name), &to, watch, t),
    };
    let sent_at = Instant::now();
    let sent = match sent {
        Ok(mut r) => {
            if let Some(w) = &mut r.wire {
                w.lanes = lanes as u32;
            }
            r
        }
        // Stopped (however the stop surfaced: at a chunk, or in a write it woke), or failed here.
        Err(e) if watch.stop.load(Ordering::SeqCst) || !crate::abort::on_the_wire(&e, Path::new(&name)) => {
            // It failed here: the reset tells the target now (see abort).
            for s in &streams {
                crate::abort::reset(s.sock.tcp());
            }
            return Err(SendFailed { error: e, own: true });
        }
        Err(e) => {
            // The target may have stopped reading because it refused the stream: its reason
            // is the better message.
            let s = &mut streams[0];
            let _ = s.sock.set_idle(Some(Duration::from_secs(2)));
            return Err(match read_ack_only(s) {
                Ok(Reply { err: Some(w), .. }) => {
                    failed(format!("node {} refused the stream: {}", req.target_node, w.msg))
                }
                _ => SendFailed { error: e, own: false },
            });
        }
    };
    // The end of the stream (the reader checks that nothing follows the trailer); TLS 1.3
    // keeps the other direction open for the acknowledgement.
    for s in &mut streams {
        s.conn.send_close_notify();
        s.flush().map_err(|e| failed(format!("{to}: ending the stream: {e}")))?;
    }
    let reply = read_ack(&mut streams[0]).map_err(|e| failed(format!("{to}: {e}")))?;
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

/// Dials the `opened.lanes` connections of a stream to `node`'s data port at `addr`, each
/// armed with the inactivity timeout and its hello (the token) sent. Errors name the stream `to`.
fn open_lanes(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    node: &str,
    opened: &Opened,
    t: Timeouts,
    to: &str,
) -> Result<Vec<tls::ClientStream>, String> {
    let lanes = opened.lanes;
    if !(1..=MAX_LANES).contains(&lanes) {
        return Err(format!("{to}: {lanes} lanes (1 to {MAX_LANES})"));
    }
    let mut streams = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let mut s = dial(cfg, addr, node, t.connect, to)?;
        arm(&mut s.sock, t.inactivity).map_err(|e| format!("{to}: {e}"))?;
        let hello = match lanes {
            1 => data_hello(&opened.token),
            n => crate::proto::lane_hello(&opened.token, lane, n),
        };
        s.write_all(&hello)
            .map_err(|e| format!("{to}: sending the token: {e}"))?;
        streams.push(s);
    }
    Ok(streams)
}

/// Connects to `node`'s data port at `addr` and completes the handshake, within `timeout` in
/// all. A connection the port closed or reset before the handshake completed is dialed again
/// (after a short pause) while time is left: a port whose admission slots a flood fills evicts
/// the oldest connection it is admitting ([`admit`]), which may be this one. A refused
/// connect (no port) or a handshake the peer refused (an alert) is not retried. Errors name
/// the stream `to`.
pub(super) fn dial(
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

/// Reads the target's acknowledgement line after a write to it failed: through rustls's
/// connection directly, not its stream, which would first try again to write the records the
/// failed write left queued and fail the same way (a target that refused the stream mid-way,
/// its agent stopping say, sent its reason before it closed).
fn read_ack_only(s: &mut tls::ClientStream) -> Result<Reply, String> {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    // However the target trickles it (the socket's idle time counts from the last byte).
    let until = Instant::now() + ACK_AFTER_FAILURE;
    while !line.contains(&b'\n') && (line.len() as u64) < MAX_ACK && Instant::now() < until {
        match s.conn.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let got = s
                    .conn
                    .read_tls(&mut s.sock)
                    .map_err(|e| format!("no acknowledgement: {e}"))?;
                if got == 0 {
                    break;
                }
                s.conn
                    .process_new_packets()
                    .map_err(|e| format!("no acknowledgement: {e}"))?;
            }
            Err(e) => return Err(format!("no acknowledgement: {e}")),
        }
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = String::from_utf8_lossy(&line[..end]);
    serde_json::from_str(&line).map_err(|e| format!("the target's acknowledgement is not valid ({e}): {line:?}"))
}

/// How long a primary whose write failed reads for the target's reason.
const ACK_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Reads the target's acknowledgement line.
fn read_ack(s: &mut tls::ClientStream) -> Result<Reply, String> {
    let mut line = String::new();
    BufReader::new(Read::take(s, MAX_ACK))
        .read_line(&mut line)
        .map_err(|e| format!("no acknowledgement: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("the target's acknowledgement is not valid ({e}): {line:?}"))
}
