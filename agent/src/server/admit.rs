//! [`Admission`]: what the control port lets in, so that no peer, with or without a certificate,
//! can take the agent down, fill it or lock the master out. A connection passes three pools:
//!
//! - **Handshaking** (before the peer proved anything): at most `MAX_HANDSHAKES_PER_PEER` from
//!   one address and `MAX_HANDSHAKES` in all, each bounded by the connect timeout. A new
//!   connection is never refused for want of a place: one more from an address that holds its
//!   share *evicts* one of that address's handshakes, the oldest of those whose client got least
//!   far ([`Progress`]: nothing sent (or closed), then some bytes, then a whole ClientHello); one
//!   more when all are taken evicts, of all handshakes, one whose client got least far, of the
//!   address that holds the most, the oldest (so a flood from many addresses, one silent
//!   handshake each, never evicts the master's, which got further, for being older). Progress only grows: bytes are seen in the socket itself (a peek on a second
//!   handle of it, kept with the entry: two file descriptors per handshake), so they count as
//!   soon as the kernel has them however far behind the agent's tasks are, and the connection's
//!   task marks them before it reads them.
//!
//!   So a flood that never finishes its handshakes (no certificate needed, from a few or many
//!   addresses) only ever evicts its own connections while it has more than the master has, and
//!   the master's handshake, which takes milliseconds, completes however fast the flood
//!   reconnects. Behind the same address as the master (a NAT) a flood that sends nothing
//!   evicts the master only before the master's first byte arrives; the master dials again a
//!   connection closed before the agent spoke (`remote/dial.rs`). A flood from the master's
//!   own address that sends bytes, or whole ClientHellos (no certificate is needed for one),
//!   is not stopped: it evicts the master once that address opened `MAX_HANDSHAKES_PER_PEER`
//!   connections that got as far, which at thousands a second takes milliseconds. Only a
//!   limit per client, which an address shared by a NAT cannot give, would stop that.
//! - **Master** (the certificate names the master): `MAX_CONNECTIONS` places, taken by no one
//!   else.
//! - **Other** (a cluster member that is not the master): `MAX_OTHERS_PER_PEER` per address and
//!   `MAX_OTHERS` in all; one more is closed at once. Such a connection gets one 403 answer and
//!   is closed within `OTHER_GRACE` (see `conn.rs`), so it never holds a place the master needs.
//!
//! Refusals and failed connections are logged at most once a second with how many there were
//! ([`Admission::log_refusal`], [`Refusals`]). The accept loop never ends on an error (running out of file
//! descriptors is an error of the moment): it logs, and when the process is out of file
//! descriptors a handshake whose client has not sent a whole ClientHello gives its back
//! ([`Admission::evict_one`]: the same choice as above) and the accept is tried again;
//! otherwise it waits `ACCEPT_BACKOFF` and goes on.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::refusals::Refusals;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Master connections open at once (the master needs one per export it runs, plus its calls).
pub const MAX_CONNECTIONS: usize = 256;

/// Handshakes in progress from one address; one more evicts that address's oldest.
pub const MAX_HANDSHAKES_PER_PEER: usize = 16;

/// Handshakes in progress in all; one more evicts one of those whose client got least far (of
/// the busiest address, the oldest).
pub const MAX_HANDSHAKES: usize = 128;

/// Connections of non-master cluster members open at once, from one address and in all.
pub const MAX_OTHERS_PER_PEER: usize = 2;
/// See [`MAX_OTHERS_PER_PEER`].
pub const MAX_OTHERS: usize = 32;

/// How long a non-master member's connection is kept (for its one 403 answer).
pub const OTHER_GRACE: Duration = Duration::from_secs(1);

/// The pause after an accept error (e.g. `EMFILE`) before the next accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The handshakes in progress, oldest first per address.
#[derive(Default)]
struct Handshakes {
    by_peer: HashMap<IpAddr, VecDeque<Pending>>,
    total: usize,
    next: u64,
}

/// One handshake in progress.
struct Pending {
    id: u64,
    /// Dropping it evicts the handshake (tells its connection).
    _evict: oneshot::Sender<()>,
    /// How far its client got, as its connection's task saw it.
    progress: Progress,
    /// A second handle on its socket (non-blocking, as the connection's own): whether its
    /// client sent anything yet. Dropped with the entry, so it never outlives the handshake.
    sock: Option<std::net::TcpStream>,
}

impl Pending {
    /// How far its client got: as its task marked it, or bytes already in its socket.
    fn progress(&self) -> Progress {
        if self.progress > Progress::Silent {
            return self.progress;
        }
        match self.sock.as_ref().map(|s| s.peek(&mut [0u8; 1])) {
            Some(Ok(n)) if n > 0 => Progress::Spoke,
            _ => Progress::Silent,
        }
    }
}

/// How far a handshake's client got, least first: who gives way first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// Nothing received yet, or the client closed.
    Silent,
    /// Bytes arrived (in the socket or read).
    Spoke,
    /// Its whole ClientHello was read.
    Hello,
}

/// Which of an address's handshakes (oldest first) gives way: the oldest of those whose
/// client got least far.
fn victim(q: &VecDeque<Pending>) -> usize {
    // `min_by_key` keeps the first of equals: the oldest.
    (0..q.len()).min_by_key(|&i| q[i].progress()).unwrap_or(0)
}

impl Handshakes {
    /// Evicts the `i`-th handshake of `ip`.
    fn remove(&mut self, ip: IpAddr, i: usize) {
        if let Some(q) = self.by_peer.get_mut(&ip) {
            // Dropping the entry tells its connection and closes its second handle.
            drop(q.remove(i));
            self.total -= 1;
            if q.is_empty() {
                self.by_peer.remove(&ip);
            }
        }
    }

    /// Evicts one handshake of `ip` ([`victim`]).
    fn evict_of(&mut self, ip: IpAddr) {
        if let Some(i) = self.by_peer.get(&ip).map(victim) {
            self.remove(ip, i);
        }
    }

    /// Which handshake of all gives way when the pool is full: the one whose client got least
    /// far, whatever its address; between equals, one of the address that holds the most; then
    /// the oldest. (Progress first: a flood from many addresses, one handshake each, must not
    /// evict the master's handshake that got further for being older.) Its address, its index
    /// and how far it got.
    fn victim_of_all(&self) -> Option<(IpAddr, usize, Progress)> {
        self.by_peer
            .iter()
            .flat_map(|(ip, q)| {
                q.iter()
                    .enumerate()
                    .map(move |(i, p)| ((p.progress(), std::cmp::Reverse(q.len()), p.id), *ip, i))
            })
            .min_by_key(|(key, ..)| *key)
            .map(|((progress, ..), ip, i)| (ip, i, progress))
    }

    /// Evicts one handshake ([`Handshakes::victim_of_all`]).
    fn evict(&mut self) {
        if let Some((ip, i, _)) = self.victim_of_all() {
            self.remove(ip, i);
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

    /// A handshake from `ip` (on `sock`, a second handle on the connection's socket, to see
    /// [`Progress`]; `None`: silent until marked), counted until the slot is dropped. To make
    /// room, one handshake of `ip` is evicted (its slot's
    /// [`HandshakeSlot::evicted`] resolves) when that address has `MAX_HANDSHAKES_PER_PEER` in
    /// progress (the oldest of those whose client got least far), and one whose client got
    /// least far, of the busiest address, when all handshake places are taken (module docs).
    pub fn handshake(&self, ip: IpAddr, sock: Option<std::net::TcpStream>) -> HandshakeSlot<'_> {
        let mut h = self.handshakes.lock().expect("handshakes");
        if h.by_peer.get(&ip).is_some_and(|q| q.len() >= MAX_HANDSHAKES_PER_PEER) {
            h.evict_of(ip);
        }
        while h.total >= self.max_handshakes.max(1) {
            h.evict();
        }
        let id = h.next;
        h.next += 1;
        let (tx, rx) = oneshot::channel();
        h.by_peer.entry(ip).or_default().push_back(Pending {
            id,
            _evict: tx,
            progress: Progress::Silent,
            sock: sock.filter(|s| s.set_nonblocking(true).is_ok()),
        });
        h.total += 1;
        HandshakeSlot {
            a: self,
            ip,
            id,
            evicted: Some(rx),
        }
    }

    /// Evicts one handshake (the one whose client got least far, of the address that has the
    /// most, the oldest: [`Handshakes::victim_of_all`]) whose client has not sent a whole ClientHello, to give its file
    /// descriptors back when the process has run out of them; `false` if there is none such
    /// (then the accept waits: a handshake that far along, the master's perhaps, is not
    /// evicted for a connection that may be a flood's).
    pub fn evict_one(&self) -> bool {
        let mut h = self.handshakes.lock().expect("handshakes");
        match h.victim_of_all() {
            Some((ip, i, progress)) if progress < Progress::Hello => {
                h.remove(ip, i);
                true
            }
            _ => false,
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
    /// Its client got as far as `to`: from now on it gives way only after the handshakes of
    /// its address whose clients got less far.
    pub fn mark(&self, to: Progress) {
        let mut h = self.a.handshakes.lock().expect("handshakes");
        if let Some(p) = h
            .by_peer
            .get_mut(&self.ip)
            .and_then(|q| q.iter_mut().find(|p| p.id == self.id))
        {
            p.progress = p.progress.max(to);
        }
    }

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
        if let Some(i) = q.iter().position(|p| p.id == self.id) {
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
        let mut slots: Vec<_> = (0..MAX_HANDSHAKES_PER_PEER).map(|_| a.handshake(x, None)).collect();
        let mut other = a.handshake(y, None);
        // One more from x (a master behind the flood's NAT) evicts x's oldest, not y's.
        let mut newest = a.handshake(x, None);
        assert!(is_evicted(&mut slots[0]), "the address's oldest makes room");
        assert!(!slots[1..].iter_mut().any(is_evicted) && !is_evicted(&mut newest));
        assert!(!is_evicted(&mut other), "another address is not touched");
        assert_eq!(a.handshakes.lock().unwrap().total, MAX_HANDSHAKES_PER_PEER + 1);
        // Its handshake completes before x opens its share again: it is never evicted.
        for _ in 0..MAX_HANDSHAKES_PER_PEER - 1 {
            slots.push(a.handshake(x, None));
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
            .map(|i| a.handshake(ip(&format!("10.1.0.{i}")), None))
            .collect();
        assert_eq!(a.handshakes.lock().unwrap().total, 128);
        let mut master = a.handshake(ip("10.9.9.9"), None); // a full pool evicts, never refuses
        assert_eq!(a.handshakes.lock().unwrap().total, 128);
        assert!(is_evicted(&mut flood[0]), "the oldest of the busiest address");
        assert!(!is_evicted(&mut flood[1]));
        // The flood reconnects as fast as it likes: it only evicts its own.
        for round in 0..1000 {
            let i = round % 16;
            flood.push(a.handshake(ip(&format!("10.1.0.{i}")), None));
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
    fn a_handshake_whose_hello_arrived_gives_way_after_the_silent_ones() {
        // A master behind the same address as a flood (NAT) that sends nothing: once the
        // master's ClientHello is in, the flood only evicts its own silent handshakes.
        let a = Admission::new(4, 128);
        let x = ip("10.0.0.1");
        let mut flood: Vec<_> = (0..MAX_HANDSHAKES_PER_PEER - 1).map(|_| a.handshake(x, None)).collect();
        let mut master = a.handshake(x, None);
        master.mark(Progress::Hello);
        for _ in 0..1000 {
            flood.push(a.handshake(x, None));
        }
        assert!(!is_evicted(&mut master), "evicted by a silent flood");
        assert_eq!(flood.iter_mut().map(is_evicted).filter(|e| *e).count(), 1000);
        // A flood that sends whole ClientHellos: the master is the oldest of those once the
        // silent ones are gone, and gives way when its address opens its share again.
        let mut speaking = Vec::new();
        for _ in 0..MAX_HANDSHAKES_PER_PEER - 1 {
            let s = a.handshake(x, None);
            s.mark(Progress::Hello);
            speaking.push(s);
        }
        assert!(!is_evicted(&mut master), "evicted before the silent ones");
        // (The first 1000 were seen evicted above: a slot says so once.)
        assert!(
            flood[1000..].iter_mut().all(is_evicted),
            "a silent handshake outlived a speaking one"
        );
        let _one_more = a.handshake(x, None);
        assert!(is_evicted(&mut master), "the oldest of those that spoke gives way");
        assert!(!speaking.iter_mut().any(is_evicted));

        // The same rule when the whole pool is full: the busiest address gives way with its
        // oldest silent handshake, not with its older one that spoke.
        let a = Admission::new(4, 4);
        let (y, z) = (ip("10.0.0.2"), ip("10.0.0.3"));
        let mut spoke = a.handshake(y, None);
        spoke.mark(Progress::Spoke);
        let mut silent = [a.handshake(y, None), a.handshake(y, None)];
        let _z = a.handshake(z, None);
        let _w = a.handshake(ip("10.0.0.4"), None);
        assert!(is_evicted(&mut silent[0]) && !is_evicted(&mut silent[1]));
        assert!(!is_evicted(&mut spoke));
    }

    #[test]
    fn a_flood_from_many_addresses_never_evicts_a_handshake_that_got_further() {
        // The pool full of one silent handshake per address (a flood from many addresses, as
        // many as places), the master's the oldest: the flood's own give way.
        let a = Admission::new(4, 128);
        let mut master = a.handshake(ip("10.9.9.9"), None);
        master.mark(Progress::Spoke);
        let mut flood: Vec<_> = (0..2000)
            .map(|i| {
                a.handshake(
                    ip(&format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)),
                    None,
                )
            })
            .collect();
        assert!(
            !is_evicted(&mut master),
            "evicted by a silent flood for being the oldest"
        );
        assert_eq!(flood.iter_mut().map(is_evicted).filter(|e| *e).count(), 2000 - 127);
        assert_eq!(a.handshakes.lock().unwrap().total, 128);
    }

    #[test]
    fn a_client_whose_bytes_arrived_gives_way_after_the_silent_ones_however_busy_the_agent() {
        // Real sockets, and no task ever reads them: the master's ClientHello sits in its
        // socket's queue (an agent too busy to run its task), and the pool sees it there.
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut accept = |hello: &[u8]| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(hello).unwrap();
            clients.push(c);
            let (s, _) = l.accept().unwrap();
            if !hello.is_empty() {
                // Until the bytes are in the accepted socket's queue.
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.peek(&mut [0u8; 1]).unwrap();
            }
            Some(s)
        };
        let a = Admission::new(4, 128);
        let x = ip("127.0.0.1");
        let mut master = a.handshake(x, accept(b"\x16\x03\x01 a ClientHello"));
        let mut flood: Vec<_> = (0..100).map(|_| a.handshake(x, accept(b""))).collect();
        // Its task marks the bytes, then reads them: the socket is empty, the mark stays.
        master.mark(Progress::Spoke);
        {
            use std::io::Read;
            let h = a.handshakes.lock().unwrap();
            let sock = h.by_peer[&x][0].sock.as_ref().unwrap();
            let mut got = [0u8; 64];
            assert!((&*sock).read(&mut got).unwrap() > 0);
            assert!(sock.peek(&mut got).is_err(), "the bytes are still in the socket");
        }
        flood.extend((0..200).map(|_| a.handshake(x, accept(b""))));
        assert!(!is_evicted(&mut master), "evicted by a flood that sends nothing");
        let evicted = flood.iter_mut().map(is_evicted).filter(|e| *e).count();
        assert_eq!(evicted, 300 - (MAX_HANDSHAKES_PER_PEER - 1));
        // A flood that sends bytes too: the master is then the oldest of those that spoke.
        let mut speaking: Vec<_> = (0..MAX_HANDSHAKES_PER_PEER - 1)
            .map(|_| a.handshake(x, accept(b"\x16")))
            .collect();
        assert!(!is_evicted(&mut master), "evicted before the silent ones");
        let _one_more = a.handshake(x, accept(b"\x16"));
        assert!(is_evicted(&mut master), "the oldest of those that spoke gives way");
        assert!(!speaking.iter_mut().any(is_evicted));

        // Out of file descriptors: one handshake at a time gives its back, the least far first,
        // never one whose whole ClientHello came (the master's, perhaps).
        let b = Admission::new(4, 128);
        let mut hello = b.handshake(x, accept(b"\x16"));
        hello.mark(Progress::Hello);
        let mut spoke = b.handshake(x, accept(b"\x16"));
        let mut silent = b.handshake(x, accept(b""));
        assert!(b.evict_one());
        assert!(is_evicted(&mut silent) && !is_evicted(&mut spoke));
        assert!(b.evict_one() && is_evicted(&mut spoke));
        assert!(!b.evict_one(), "a handshake with its whole ClientHello evicted");
        assert!(!is_evicted(&mut hello));
        drop(hello);
        assert!(!b.evict_one(), "nothing left to evict");
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
