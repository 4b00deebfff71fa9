//! One disk stream over several TLS connections ("lanes", `data/stripe.rs`): a thread per lane
//! on each side runs its connection's TLS, so encryption and decryption are no longer one
//! core's work. The target opens the lanes ([`super::Receiver::open`], `agent --data-lanes`);
//! a stream over one lane is the plain stream of [`super::send`] and [`super::receive`].

use std::io;
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diskstream_engine::report::Report;
use diskstream_engine::source::FrameStream;
use diskstream_engine::Error;
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{SendDisk, TransferError};

use super::stripe::{self, StripeReader};
use super::{acknowledge, received, Counted, Timeouts, Watch};
use crate::lease::ReceiveLease;
use crate::proto::Reply;
use crate::tls;

/// How often a receiving lane's blocked read wakes to see whether the stream was given up
/// (its socket's read timeout; only the inactivity timeout without a byte is a stall).
const POLL: Duration = Duration::from_millis(200);

/// Every lane is mutual TLS, whose AEAD authenticates every byte (as for one connection).
impl FrameStream for StripeReader {
    fn authenticated(&self) -> bool {
        true
    }
}

/// The target's side: reads the admitted `lanes` (in lane order) on a thread each, receives the
/// stream they carry, and acknowledges on lane 0.
pub(super) fn receive(
    local: &LocalNodeOps<'_>,
    mut lanes: Vec<tls::ServerStream>,
    req: &SendDisk,
    what: &str,
    t: Timeouts,
    lease: &ReceiveLease<'_>,
) -> Reply {
    for s in &mut lanes {
        // Each lane's thread keeps its own time (`LaneIn::run`): its reads only poll. Failing
        // leaves the socket's timeout at a second: a lane then stops at its next wake-up.
        let _ = s.sock.set_idle(None);
        let _ = s.sock.tcp().set_read_timeout(Some(POLL.min(t.inactivity)));
    }
    let (reader, ins) = stripe::reader(lanes.len());
    let what_in = format!("receiving {what}");
    let reply = std::thread::scope(|sc| {
        for (lane, s) in ins.into_iter().zip(lanes.iter_mut()) {
            let what_in = &what_in;
            // A lane silent under the receive's halt (the agent's stop, its staging export
            // abandoned or begun again) ends at its next poll.
            let lane = lane.halted_by(Arc::clone(lease.halt()));
            sc.spawn(move || lane.run(s, t.inactivity, what_in));
        }
        // The reader is dropped when the receive ends, however it ends: the lanes stop.
        received(local, reader, req, what, lease)
    });
    acknowledge(&mut lanes, &reply, t.inactivity);
    reply
}

/// The primary's side: streams the disk of `req` over `lanes` (their hellos sent), sink `name`
/// in the engine's errors; every lane is ended (its end mark written) only if the whole stream
/// was. When the engine fails on this side, every lane is shut down at once, so that no lane's
/// thread waits on a target that waits for the stripe that will not come.
pub(super) fn send(
    local: &LocalNodeOps<'_>,
    lanes: &mut [tls::ClientStream],
    req: &SendDisk,
    name: &Path,
    to: &str,
    watch: Watch<'_>,
    t: Timeouts,
) -> Result<Report, TransferError> {
    let socks: Vec<TcpStream> = lanes.iter().filter_map(|s| s.sock.tcp().try_clone().ok()).collect();
    let shut = || {
        for s in &socks {
            let _ = s.shutdown(Shutdown::Both);
        }
    };
    if socks.len() != lanes.len() {
        return Err(wire(name, 0, io::Error::other("no descriptor left for a lane")));
    }
    let (mut w, outs) = stripe::writer(lanes.len());
    std::thread::scope(|sc| {
        let threads: Vec<_> = outs
            .into_iter()
            .zip(lanes.iter_mut())
            .enumerate()
            .map(|(j, (out, s))| {
                let lane = Counted {
                    inner: s,
                    what: format!("sending {to} (lane {j})"),
                    bytes: 0,
                    idle: t.inactivity,
                    flip: t.flip_byte.filter(|_| j == 0),
                };
                sc.spawn(move || out.run(lane))
            })
            .collect();
        let sent = local
            .send_disk_to(req, &mut w, name, watch.progress, watch.stop)
            .and_then(|r| w.finish().map(|()| r).map_err(|e| wire(name, w.written(), e)));
        let written = w.written();
        drop(w); // After `finish`, the lanes have their end marks; else they stop without.
        if sent.as_ref().is_err_and(|e| !crate::abort::on_the_wire(e, name)) {
            shut();
        }
        // `finish` only hands the lanes their last records and end marks: a lane that fails
        // writing them fails the stream, with its own error (a stall, the target gone).
        let mut lanes_ended = Ok(());
        for (j, th) in threads.into_iter().enumerate() {
            let ended = match th.join() {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err(io::Error::other(format!("lane {j} stopped before its end mark"))),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::other(format!("lane {j}'s thread panicked"))),
            };
            if lanes_ended.is_ok() {
                lanes_ended = ended;
            }
        }
        match (sent, lanes_ended) {
            (Ok(r), Ok(())) => Ok(r),
            (Ok(_), Err(e)) => Err(wire(name, written, e)),
            (Err(e), _) => Err(e),
        }
    })
}

/// A failure of the stream's connections, as the engine reports its sink's.
fn wire(name: &Path, at: u64, e: io::Error) -> TransferError {
    TransferError::Engine(Error::io("write", name, at, e))
}
