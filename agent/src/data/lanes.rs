//! One disk stream over several TLS connections ("lanes", `data/stripe.rs`): a thread per lane
//! on each side runs its connection's TLS, so encryption and decryption are no longer one
//! core's work. The target opens the lanes ([`super::Receiver::open`], `agent --data-lanes`);
//! a stream over one lane is the plain stream of [`super::send`] and [`super::receive`].

use std::io;
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::Duration;

use diskstream_engine::report::Report;
use diskstream_engine::source::FrameStream;
use diskstream_engine::Error;
use diskstream_orchestrator::node::local::LocalNodeOps;
use diskstream_orchestrator::node::{SendDisk, TransferError, TransferProgress};

use super::stripe::{self, StripeReader};
use super::{acknowledge, received, Counted, Timeouts};
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
    for s in &lanes {
        // Failing leaves the inactivity timeout: a lane then stops only at that.
        let _ = s.sock.tcp().set_read_timeout(Some(POLL.min(t.inactivity)));
    }
    let (reader, ins) = stripe::reader(lanes.len());
    let what_in = format!("receiving {what}");
    let reply = std::thread::scope(|sc| {
        for (lane, s) in ins.into_iter().zip(lanes.iter_mut()) {
            let what_in = &what_in;
            sc.spawn(move || lane.run(s, t.inactivity, what_in));
        }
        // The reader is dropped when the receive ends, however it ends: the lanes stop.
        received(local, reader, req, what, lease)
    });
    for s in &lanes {
        let _ = s.sock.tcp().set_read_timeout(Some(t.inactivity));
    }
    acknowledge(&mut lanes, &reply);
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
    progress: &TransferProgress,
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
        for (j, (out, s)) in outs.into_iter().zip(lanes.iter_mut()).enumerate() {
            let lane = Counted {
                inner: s,
                what: format!("sending {to} (lane {j})"),
                bytes: 0,
                idle: t.inactivity,
                flip: t.flip_byte.filter(|_| j == 0),
            };
            sc.spawn(move || out.run(lane));
        }
        let sent = local
            .send_disk_to(req, &mut w, name, progress)
            .and_then(|r| w.finish().map(|()| r).map_err(|e| wire(name, w.written(), e)));
        if sent.is_err() {
            drop(w);
            if !sent.as_ref().is_err_and(|e| crate::abort::on_the_wire(e, name)) {
                shut();
            }
        }
        sent
    })
}

/// A failure of the stream's connections, as the engine reports its sink's.
fn wire(name: &Path, at: u64, e: io::Error) -> TransferError {
    TransferError::Engine(Error::io("write", name, at, e))
}
