//! [`Admission`]: what the control port lets in, so that no peer, with or without a certificate,
//! can take the agent down or fill it. Open connections are capped (`MAX_CONNECTIONS`; one more
//! is closed at once), a peer address may have at most `MAX_HANDSHAKES_PER_PEER` handshakes in
//! progress (each already bounded by the connect timeout), and refusals are logged at most once
//! a second with how many there were. The accept loop itself never ends on an error (running
//! out of file descriptors is an error of the moment): it logs, waits `ACCEPT_BACKOFF` and
//! goes on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections open at once (the master needs one per export it runs, plus its calls).
pub const MAX_CONNECTIONS: usize = 256;

/// Handshakes in progress from one address.
pub const MAX_HANDSHAKES_PER_PEER: usize = 16;

/// The pause after an accept error (e.g. `EMFILE`) before the next accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The control port's limits.
pub struct Admission {
    open: Arc<Semaphore>,
    handshaking: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(MAX_CONNECTIONS)
    }
}

impl Admission {
    /// Limits of `max` open connections.
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(Semaphore::new(max)),
            handshaking: Mutex::default(),
            refused: AtomicU64::new(0),
            last_log: Mutex::default(),
        }
    }

    /// A place for one more connection, held until the permit is dropped; `None` when all are
    /// taken.
    pub fn connection(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.open).try_acquire_owned().ok()
    }

    /// A handshake from `ip`, counted until the slot is dropped; `None` when that address has
    /// `MAX_HANDSHAKES_PER_PEER` in progress.
    pub fn handshake(&self, ip: IpAddr) -> Option<HandshakeSlot<'_>> {
        let mut m = self.handshaking.lock().expect("handshakes");
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot { a: self, ip })
    }

    /// Counts a refused connection; returns how many were refused since the last time it
    /// returned a count, at most once a second (for the log).
    pub fn refusal(&self) -> Option<u64> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_log.lock().expect("refusal log");
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.refused.swap(0, Ordering::Relaxed))
    }
}

/// One handshake in progress from an address.
pub struct HandshakeSlot<'a> {
    a: &'a Admission,
    ip: IpAddr,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.a.handshaking.lock().expect("handshakes");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_handshakes_per_peer_are_capped_and_given_back() {
        let a = Admission::new(2);
        let c1 = a.connection().expect("first");
        let _c2 = a.connection().expect("second");
        assert!(a.connection().is_none(), "a third over the cap");
        drop(c1);
        assert!(a.connection().is_some(), "a place given back is taken again");

        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let slots: Vec<_> = (0..MAX_HANDSHAKES_PER_PEER)
            .map(|_| a.handshake(x).expect("under the cap"))
            .collect();
        assert!(a.handshake(x).is_none(), "one address over its cap");
        assert!(a.handshake(y).is_some(), "another address is not held up by it");
        drop(slots);
        assert!(a.handshake(x).is_some());
        assert!(
            a.handshaking.lock().unwrap().is_empty(),
            "no entry left for idle addresses"
        );
    }

    #[test]
    fn refusals_are_counted_and_reported_at_most_once_a_second() {
        let a = Admission::new(1);
        assert_eq!(a.refusal(), Some(1));
        assert_eq!(a.refusal(), None);
        assert_eq!(a.refusal(), None);
        *a.last_log.lock().unwrap() = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(a.refusal(), Some(3), "the two held back and this one");
    }
}
