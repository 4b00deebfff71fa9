//! A data port's admission bookkeeping: the connections being admitted side by side (TLS
//! handshake, certificate, token), bounded in all and per source address, where a new
//! connection evicts the oldest one still being admitted instead of being refused; and the
//! refusals' log lines, aggregated so that a flood cannot flood the log ([`Refusals`], the
//! control port's too).
//!
//! Why eviction and not refusal: a connection that sends nothing holds its slot for the whole
//! connect timeout (10 s by default), so with "refuse when full" eight idle TCP connections
//! from anyone who learned the port kept the primary out for good (its one connection was
//! closed at once). With eviction, a flood must keep opening connections faster than the
//! primary's handshake completes (milliseconds) to touch it, and then it only ever evicts its
//! own connections first:
//! - a source address holding [`MAX_PER_SOURCE`] slots makes room among its own (its oldest
//!   goes), so one attacking address can never evict a connection from another address;
//! - when all [`MAX_ADMITTING`] slots are taken, the oldest connection of the address holding
//!   the most slots goes;
//! - the primary ([`super::send`]) dials again, within its connect timeout, when the port closes
//!   its connection before the handshake completed.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};

use crate::refusals::busiest;
pub(super) use crate::refusals::Refusals;

/// Connections a data port admits at once (handshake and token, each within the connect
/// timeout).
pub(super) const MAX_ADMITTING: usize = 8;

/// Of those, the most from one source address.
pub(super) const MAX_PER_SOURCE: usize = 4;

/// A connection being admitted.
struct Slot {
    id: u64,
    peer: SocketAddr,
    /// A handle on the socket (its clone), to shut it down when evicted.
    tcp: TcpStream,
}

/// The connections being admitted, oldest first.
#[derive(Default)]
pub(super) struct Admitting {
    next: u64,
    slots: Vec<Slot>,
}

impl Admitting {
    /// Takes a slot for a connection from `peer` (`tcp`: a clone of its socket), evicting one
    /// first when its address or the port is full (see the module's rules). Returns the slot's
    /// id and the peer evicted, if any.
    pub(super) fn take(&mut self, peer: SocketAddr, tcp: TcpStream) -> (u64, Option<SocketAddr>) {
        let evicted = self.victim(peer.ip()).map(|i| {
            let s = self.slots.remove(i);
            // Its admitting thread's read or write fails at once; it reports nothing.
            let _ = s.tcp.shutdown(Shutdown::Both);
            s.peer
        });
        self.next += 1;
        self.slots.push(Slot {
            id: self.next,
            peer,
            tcp,
        });
        (self.next, evicted)
    }

    /// The index of the slot to evict for a new connection from `ip`, if one must go.
    fn victim(&self, ip: IpAddr) -> Option<usize> {
        let held = |ip: IpAddr| self.slots.iter().filter(|s| s.peer.ip() == ip).count();
        let target = if held(ip) >= MAX_PER_SOURCE {
            ip
        } else if self.slots.len() >= MAX_ADMITTING {
            busiest(self.slots.iter().map(|s| (s.peer.ip(), s.id)))?
        } else {
            return None;
        };
        self.slots.iter().position(|s| s.peer.ip() == target)
    }

    /// The admission of slot `id` ended. False when it had been evicted (its outcome is void).
    pub(super) fn release(&mut self, id: u64) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| s.id != id);
        self.slots.len() < before
    }

    /// Ends every admission in progress (a stream was admitted, or the port closes).
    pub(super) fn evict_all(&mut self) {
        for s in self.slots.drain(..) {
            let _ = s.tcp.shutdown(Shutdown::Both);
        }
    }

    /// Connections being admitted.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}
