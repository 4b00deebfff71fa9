//! Staging leases: a staging export on an agent's node lives while the master keeps working on
//! it. Every call about it (opening the export, opening a receive) renews its lease, a receive
//! in progress holds it, and finalizing or abandoning it ends it. A lease with no receive in
//! progress and no word from the master for the timeout has lost its master (killed, cut off):
//! the agent abandons the staging export (removes it), so nothing is left behind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Lease {
    last: Instant,
    receiving: usize,
}

/// The leases of one agent's staging exports, by instance.
pub struct Leases {
    timeout: Duration,
    m: Mutex<HashMap<String, Lease>>,
}

impl Leases {
    /// Leases that expire after `timeout` without word from the master.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            m: Mutex::default(),
        }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn with(&self, instance: &str, f: impl FnOnce(&mut Lease)) {
        let mut m = self.m.lock().expect("leases");
        let l = m.entry(instance.to_string()).or_insert(Lease {
            last: Instant::now(),
            receiving: 0,
        });
        l.last = Instant::now();
        f(l);
    }

    /// The master spoke about `instance`'s staging export.
    pub fn touch(&self, instance: &str) {
        self.with(instance, |_| {});
    }

    /// A receive into `instance`'s staging export starts (it holds the lease until it ends).
    pub fn begin_receive(&self, instance: &str) {
        self.with(instance, |l| l.receiving += 1);
    }

    /// A receive into `instance`'s staging export ended.
    pub fn end_receive(&self, instance: &str) {
        self.with(instance, |l| l.receiving = l.receiving.saturating_sub(1));
    }

    /// `instance`'s staging export was finalized or abandoned.
    pub fn end(&self, instance: &str) {
        self.m.lock().expect("leases").remove(instance);
    }

    /// Removes and returns the leases that expired.
    pub fn expired(&self) -> Vec<String> {
        let mut m = self.m.lock().expect("leases");
        let gone: Vec<String> = m
            .iter()
            .filter(|(_, l)| l.receiving == 0 && l.last.elapsed() > self.timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            m.remove(k);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_only_without_receives_and_word_from_the_master() {
        let l = Leases::new(Duration::from_millis(30));
        l.touch("a");
        l.begin_receive("b");
        l.touch("c");
        l.end("c");
        assert!(l.expired().is_empty());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.expired(), ["a"]);
        l.end_receive("b");
        assert!(l.expired().is_empty(), "the end of a receive renews the lease");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.expired(), ["b"]);
        assert!(l.expired().is_empty());
    }
}
