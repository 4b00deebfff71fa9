//! [`Admission`]: what the control port lets in, so that no peer, with or without a certificate,
//! can take the agent down, fill it or lock the master out. A connection passes three pools:
//!
//! - **Handshaking** (before the peer proved anything): at most `MAX_HANDSHAKES_PER_PEER` from
//!   one address and `MAX_HANDSHAKES` in all, each bounded by the connect timeout. A new
//!   connection is never refused for want of a place: one more from an address that holds its
//!   share *evicts* that address's oldest handshake, and one more when all are taken evicts the
//!   oldest handshake of the address that holds the most. A flood that never finishes its
//!   handshakes (no certificate needed, from a few or many addresses) thus only ever evicts its
//!   own connections while it has more than the master has, and the master's handshake, which
//!   takes milliseconds, completes however fast the flood reconnects; a master behind the same
//!   address as a flood (NAT) gets in too, as long as its handshake completes before that
//!   address opens `MAX_HANDSHAKES_PER_PEER` more connections (it was refused outright before).
//! - **Master** (the certificate names the master): `MAX_CONNECTIONS` places, taken by no one
//!   else.
//! - **Other** (a cluster member that is not the master): `MAX_OTHERS_PER_PEER` per address and
//!   `MAX_OTHERS` in all; one more is closed at once. Such a connection gets one 403 answer and
//!   is closed within `OTHER_GRACE` (see `conn.rs`), so it never holds a place the master needs.
//!
//! Refusals and failed connections are logged at most once a second with how many there were
//! ([`Admission::log_refusal`], [`Refusals`]). The accept loop never ends on an error (running out of file
//! descriptors is an error of the moment): it logs, waits `ACCEPT_BACKOFF` and goes on.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::refusals::{busiest, Refusals};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Master connections open at once (the master needs one per export it runs, plus its calls).
pub const MAX_CONNECTIONS: usize = 256;

/// Handshakes in progress from one address; one more evicts that address's oldest.
pub const MAX_HANDSHAKES_PER_PEER: usize = 16;

/// Handshakes in progress in all; one more evicts the oldest of the busiest address.
pub const MAX_HANDSHAKES: usize = 128;

/// Connections of non-master cluster members open at once, from one address and in all.
pub const MAX_OTHERS_PER_PEER: usize = 2;
/// See [`MAX_OTHERS_PER_PEER`].
pub const MAX_OTHERS: usize = 32;

/// How long a non-master member's connection is kept (for its one 403 answer).
pub const OTHER_GRACE: Duration = Duration::from_secs(1);

/// The pause after an accept error (e.g. `EMFILE`) before the next accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The handshakes in progress, oldest first per address, each with the sender whose drop
/// evicts it.
#[derive(Default)]
struct Handshakes {
    by_peer: HashMap<IpAddr, VecDeque<(u64, oneshot::Sender<()>)>>,
    total: usize,
    next: u64,
}

impl Handshakes {
    /// Evicts the oldest handshake of the address that has the most (of those, the address
    /// whose oldest is oldest).
    fn evict(&mut self) {
        let held = self
            .by_peer
            .iter()
            .flat_map(|(ip, q)| q.iter().map(|(id, _)| (*ip, *id)));
        let Some(ip) = busiest(held) else {
            return;
        };
        if let Some(q) = self.by_peer.get_mut(&ip) {
            // Dropping the sender tells its connection.
            q.pop_front();
            self.total -= 1;
            if q.is_empty() {
                self.by_peer.remove(&ip);
            }
        }
    }
}

/// The control port's limits.
pub struct Admission {
    masters: Arc<Semaphore>,
    handshakes: Mutex<Handshakes>,
    max_handshakes: usize,
    others: Mutex<(HashMap<IpAddr, usize>, usize)>,
    log: Mutex<Refusals>,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(MAX_CONNECTIONS, MAX_HANDSHAKES)
    }
}

impl Admission {
    /// Limits of `masters` master connections and `handshakes` handshakes in progress.
    pub fn new(masters: usize, handshakes: usize) -> Self {
        Self {
            masters: Arc::new(Semaphore::new(masters)),
            handshakes: Mutex::default(),
            max_handshakes: handshakes,
            others: Mutex::default(),
            log: Mutex::new(Refusals::new("")),
        }
    }

    /// A place for one more master connection, held until the permit is dropped; `None` when
    /// all are taken.
    pub fn master(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.masters).try_acquire_owned().ok()
    }

    /// A handshake from `ip`, counted until the slot is dropped. To make room, the oldest
    /// handshake of `ip` is evicted (its slot's [`HandshakeSlot::evicted`] resolves) when that
    /// address has `MAX_HANDSHAKES_PER_PEER` in progress, and the oldest of the busiest address
    /// when all handshake places are taken.
    pub fn handshake(&self, ip: IpAddr) -> HandshakeSlot<'_> {
        let mut h = self.handshakes.lock().expect("handshakes");
        if let Some(q) = h.by_peer.get_mut(&ip).filter(|q| q.len() >= MAX_HANDSHAKES_PER_PEER) {
            // Dropping the sender tells its connection.
            q.pop_front();
            h.total -= 1;
        }
        while h.total >= self.max_handshakes.max(1) {
            h.evict();
        }
        let id = h.next;
        h.next += 1;
        let (tx, rx) = oneshot::channel();
        h.by_peer.entry(ip).or_default().push_back((id, tx));
        h.total += 1;
        HandshakeSlot {
            a: self,
            ip,
            id,
            evicted: Some(rx),
        }
    }

    /// A place for a non-master member's connection from `ip`; `None` when that address or all
    /// of them have theirs.
    pub fn other(&self, ip: IpAddr) -> Option<OtherSlot<'_>> {
        let mut o = self.others.lock().expect("others");
        let (by_peer, total) = &mut *o;
        let n = by_peer.entry(ip).or_insert(0);
        if *n >= MAX_OTHERS_PER_PEER || *total >= MAX_OTHERS {
            if *n == 0 {
                by_peer.remove(&ip);
            }
            return None;
        }
        *n += 1;
        *total += 1;
        Some(OtherSlot { a: self, ip })
    }

    /// Logs `line()` for a refused or failed connection, unless a line was logged less than a
    /// second ago: then it is only counted, and the next line says how many were held back
    /// ([`Refusals`]).
    pub fn log_refusal(&self, line: impl FnOnce() -> String) {
        let due = self.log.lock().expect("refusal log").refused(Instant::now(), line());
        if let Some(line) = due {
            say!("diskstream agent: {line}");
        }
    }
}

/// One handshake in progress from an address.
pub struct HandshakeSlot<'a> {
    a: &'a Admission,
    ip: IpAddr,
    id: u64,
    evicted: Option<oneshot::Receiver<()>>,
}

impl HandshakeSlot<'_> {
    /// Resolves when this handshake was evicted to make room for a newer one.
    pub async fn evicted(&mut self) {
        if let Some(rx) = &mut self.evicted {
            let _ = rx.await;
            self.evicted = None;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        let mut h = self.a.handshakes.lock().expect("handshakes");
        let Some(q) = h.by_peer.get_mut(&self.ip) else {
            return;
        };
        // Not there when it was evicted (and counted off then).
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
            let empty = q.is_empty();
            if empty {
                h.by_peer.remove(&self.ip);
            }
            h.total -= 1;
        }
    }
}

/// One non-master member's connection.
pub struct OtherSlot<'a> {
    a: &'a Admission,
    ip: IpAddr,
}

impl Drop for OtherSlot<'_> {
    fn drop(&mut self) {
        let mut o = self.a.others.lock().expect("others");
        let (by_peer, total) = &mut *o;
        *total -= 1;
        if let Some(n) = by_peer.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn master_places_and_handshakes_per_peer_are_capped_and_given_back() {
        let a = Admission::new(2, 64);
        let c1 = a.master().expect("first");
        let _c2 = a.master().expect("second");
        assert!(a.master().is_none(), "a third over the cap");
        drop(c1);
        assert!(a.master().is_some(), "a place given back is taken again");

        let (x, y) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let mut slots: Vec<_> = (0..MAX_HANDSHAKES_PER_PEER).map(|_| a.handshake(x)).collect();
        let mut other = a.handshake(y);
        // One more from x (a master behind the flood's NAT) evicts x's oldest, not y's.
        let mut newest = a.handshake(x);
        assert!(is_evicted(&mut slots[0]), "the address's oldest makes room");
        assert!(!slots[1..].iter_mut().any(is_evicted) && !is_evicted(&mut newest));
        assert!(!is_evicted(&mut other), "another address is not touched");
        assert_eq!(a.handshakes.lock().unwrap().total, MAX_HANDSHAKES_PER_PEER + 1);
        // Its handshake completes before x opens its share again: it is never evicted.
        for _ in 0..MAX_HANDSHAKES_PER_PEER - 1 {
            slots.push(a.handshake(x));
        }
        assert!(
            !is_evicted(&mut newest),
            "evicted before its address's share turned over"
        );
        drop((slots, other, newest));
        let h = a.handshakes.lock().unwrap();
        assert!(h.by_peer.is_empty() && h.total == 0, "no entry left for idle addresses");
    }

    fn is_evicted(s: &mut HandshakeSlot<'_>) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(1), s.evicted())
                .await
                .is_ok()
        })
    }

    #[test]
    fn a_full_handshake_pool_evicts_the_busiest_addresses_oldest() {
        // 16 addresses fill the pool with 8 each (a flood that never finishes a handshake);
        // the master's one handshake is let in, and stays while the flood goes on.
        let a = Admission::new(4, 128);
        let mut flood: Vec<_> = (0..16)
            .flat_map(|i| (0..8).map(move |_| i))
            .map(|i| a.handshake(ip(&format!("10.1.0.{i}"))))
            .collect();
        assert_eq!(a.handshakes.lock().unwrap().total, 128);
        let mut master = a.handshake(ip("10.9.9.9")); // a full pool evicts, never refuses
        assert_eq!(a.handshakes.lock().unwrap().total, 128);
        assert!(is_evicted(&mut flood[0]), "the oldest of the busiest address");
        assert!(!is_evicted(&mut flood[1]));
        // The flood reconnects as fast as it likes: it only evicts its own.
        for round in 0..1000 {
            let i = round % 16;
            flood.push(a.handshake(ip(&format!("10.1.0.{i}"))));
        }
        assert!(!is_evicted(&mut master), "the master's handshake was evicted");
        let evicted = flood.iter_mut().map(is_evicted).filter(|e| *e).count();
        assert!(evicted >= 1000, "{evicted}");
        // An evicted slot's drop counts nothing off twice.
        drop(flood);
        assert_eq!(a.handshakes.lock().unwrap().total, 1);
        drop(master);
        assert_eq!(a.handshakes.lock().unwrap().total, 0);
    }

    #[test]
    fn non_master_members_are_capped_per_address_and_in_all() {
        let a = Admission::default();
        let x = ip("10.0.0.1");
        let held: Vec<_> = (0..MAX_OTHERS_PER_PEER).map(|_| a.other(x).unwrap()).collect();
        assert!(a.other(x).is_none(), "one address over its cap");
        let many: Vec<_> = (0..MAX_OTHERS - MAX_OTHERS_PER_PEER)
            .map(|i| a.other(ip(&format!("10.2.{}.{}", i / 2, i % 2))).unwrap())
            .collect();
        assert!(a.other(ip("10.3.0.1")).is_none(), "over the cap in all");
        drop(held);
        assert!(a.other(x).is_some());
        drop(many);
        let o = a.others.lock().unwrap();
        assert!(o.0.is_empty() && o.1 == 0, "{:?}", o);
    }
}
