//! Staging leases: a staging export on an agent's node lives while the master keeps working on
//! it. Every call about it (opening the export, opening a receive) renews its lease, a stream
//! in progress holds it, and finalizing or abandoning it ends it. A lease with no stream in
//! progress and no word from the master for the timeout has lost its master (killed, cut off):
//! the agent abandons the staging export (removes it), so nothing is left behind. A receive
//! still waiting for its stream does not hold the lease: a master killed between opening the
//! receive and asking the primary to send leaves a port that no stream will ever reach, and
//! its staging export goes after the lease, not after the receive's open timeout.
//!
//! At most [`MAX_OPEN_RECEIVES`] receives are open at once (each a thread and a listening data
//! port until its stream ends or the open timeout passes); one more is refused.
//!
//! A receive writes into the staging directory by its name (`<instance>.new`), whichever export
//! of the instance is there when it writes. So a receive opened for a staging export that is
//! then abandoned or begun again is a *writer* of its instance until it finished (its dump
//! committed or removed): abandoning or beginning the instance's staging export raises its halt
//! flag (it stops at its next frame or wake-up, removing what it wrote), and the agent waits for
//! it to finish before the directory is removed or made again ([`Leases::wait_writers`]); a
//! finalize is refused while any writer of the instance is left ([`Leases::writers`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Lease {
    last: Instant,
    /// Which staging export this is: a new one for every `BeginExport`, so that a receive
    /// opened for an export that was since abandoned (and begun again) is told apart.
    generation: u64,
    /// The dumps being received into it, and whether their stream has begun (only those hold
    /// the lease).
    receiving: BTreeMap<String, bool>,
}

/// Receives open at once on one agent (the master opens one per disk it exports to this node;
/// a Ganeti instance has at most 16 disks).
pub const MAX_OPEN_RECEIVES: usize = 64;

/// A receive that may still write into its instance's staging directory.
struct Writer {
    id: u64,
    dump: String,
    halt: Arc<AtomicBool>,
}

/// The leases of one agent's staging exports, by instance.
pub struct Leases {
    timeout: Duration,
    m: Mutex<HashMap<String, Lease>>,
    /// The writers of each instance, whatever staging export they were opened for. Locked
    /// after `m` where both are (never the other way round).
    writers: Mutex<HashMap<String, Vec<Writer>>>,
    next: AtomicU64,
    /// The receives whose guard is alive (their export abandoned or not).
    open: AtomicUsize,
    max_open: usize,
    /// The agent stops: every writer was halted, and no receive begins.
    halted: AtomicBool,
}

impl Leases {
    /// Leases that expire after `timeout` without word from the master.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            m: Mutex::default(),
            writers: Mutex::default(),
            next: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            max_open: MAX_OPEN_RECEIVES,
            halted: AtomicBool::new(false),
        }
    }

    /// The same with a cap of `max_open` open receives.
    pub fn with_max_open(self, max_open: usize) -> Self {
        Self { max_open, ..self }
    }

    /// The receives open now (their guards alive).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lease(&self) -> Lease {
        Lease {
            last: Instant::now(),
            generation: self.next.fetch_add(1, Ordering::Relaxed),
            receiving: BTreeMap::new(),
        }
    }

    /// A staging export of `instance` begins: a lease of its own, whatever came before it.
    /// The receives opened for what came before are halted ([`Leases::wait_writers`]).
    pub fn begin(&self, instance: &str) {
        let l = self.lease();
        let mut m = self.m.lock().expect("leases");
        m.insert(instance.to_string(), l);
        self.halt_writers(instance);
    }

    fn halt_writers(&self, instance: &str) {
        let w = self.writers.lock().expect("writers");
        for w in w.get(instance).into_iter().flatten() {
            w.halt.store(true, Ordering::SeqCst);
        }
    }

    /// The agent stops: every writer is halted and no receive begins from now on.
    pub fn halt_all(&self) {
        let _m = self.m.lock().expect("leases");
        self.halted.store(true, Ordering::SeqCst);
        let w = self.writers.lock().expect("writers");
        for w in w.values().flatten() {
            w.halt.store(true, Ordering::SeqCst);
        }
    }

    /// The dumps whose receives may still write into `instance`'s staging directory, whatever
    /// staging export they were opened for.
    pub fn writers(&self, instance: &str) -> Vec<String> {
        let w = self.writers.lock().expect("writers");
        w.get(instance)
            .map(|v| v.iter().map(|w| w.dump.clone()).collect())
            .unwrap_or_default()
    }

    /// Waits (at most `limit`) until no receive may write into `instance`'s staging
    /// directory; the dumps of those left.
    pub fn wait_writers(&self, instance: &str, limit: Duration) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let left = self.writers(instance);
            if left.is_empty() || t0.elapsed() >= limit {
                return left;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The master spoke about `instance`'s staging export.
    pub fn touch(&self, instance: &str) {
        let mut m = self.m.lock().expect("leases");
        if let Some(l) = m.get_mut(instance) {
            l.last = Instant::now();
        } else {
            m.insert(instance.to_string(), self.lease());
        }
    }

    /// A receive of `dump` into `instance`'s staging export starts; it holds the lease until
    /// the returned guard drops. Refused while `dump` is already being received there, and
    /// while `MAX_OPEN_RECEIVES` receives are open (counted until their guards drop).
    pub fn begin_receive(&self, instance: &str, dump: &str) -> Result<ReceiveLease<'_>, String> {
        let mut m = self.m.lock().expect("leases");
        if self.halted.load(Ordering::SeqCst) {
            return Err("the agent is stopping".to_string());
        }
        if self.open.load(Ordering::SeqCst) >= self.max_open {
            return Err(format!(
                "{} receives are open on this node, the most at once: try again when one has ended",
                self.max_open
            ));
        }
        let l = m.entry(instance.to_string()).or_insert_with(|| self.lease());
        l.last = Instant::now();
        if l.receiving.insert(dump.to_string(), false).is_some() {
            return Err(format!(
                "dump {dump} of {instance} is already being received into its staging export"
            ));
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        let (id, halt) = (
            self.next.fetch_add(1, Ordering::Relaxed),
            Arc::new(AtomicBool::new(false)),
        );
        let writer = Writer {
            id,
            dump: dump.to_string(),
            halt: Arc::clone(&halt),
        };
        let mut w = self.writers.lock().expect("writers");
        w.entry(instance.to_string()).or_default().push(writer);
        Ok(ReceiveLease {
            leases: self,
            instance: instance.to_string(),
            dump: dump.to_string(),
            generation: l.generation,
            id,
            halt,
            done: AtomicBool::new(false),
        })
    }

    /// The dumps being received into `instance`'s staging export.
    pub fn receiving(&self, instance: &str) -> Vec<String> {
        let m = self.m.lock().expect("leases");
        m.get(instance)
            .map(|l| l.receiving.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// `instance`'s staging export was finalized or abandoned: its receives are halted
    /// ([`Leases::wait_writers`]).
    pub fn end(&self, instance: &str) {
        let mut m = self.m.lock().expect("leases");
        m.remove(instance);
        self.halt_writers(instance);
    }

    /// Removes and returns the leases that expired: no stream in progress and no word from
    /// the master for the timeout. The receives still waiting for their stream are halted
    /// ([`Leases::wait_writers`]).
    pub fn expired(&self) -> Vec<String> {
        let mut m = self.m.lock().expect("leases");
        let gone: Vec<String> = m
            .iter()
            .filter(|(_, l)| !l.receiving.values().any(|&s| s) && l.last.elapsed() > self.timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            m.remove(k);
            self.halt_writers(k);
        }
        gone
    }
}

/// A receive in progress: holds its staging export's lease until [`ReceiveLease::finish`] or
/// until dropped (a panic included).
pub struct ReceiveLease<'a> {
    leases: &'a Leases,
    instance: String,
    dump: String,
    generation: u64,
    id: u64,
    halt: Arc<AtomicBool>,
    done: AtomicBool,
}

impl ReceiveLease<'_> {
    /// Raised when the receive must stop writing: its instance's staging export was abandoned
    /// or begun again, or the agent stops. The receive's reads and its engine watch it.
    pub fn halt(&self) -> &Arc<AtomicBool> {
        &self.halt
    }

    /// Whether the staging export it was opened for is still the open one (not finalized,
    /// abandoned or begun again since) and the receive was not halted.
    pub fn current(&self) -> bool {
        let m = self.leases.m.lock().expect("leases");
        !self.halt.load(Ordering::SeqCst) && m.get(&self.instance).is_some_and(|l| l.generation == self.generation)
    }

    /// Its stream has come: from now on the receive holds the staging export's lease (its
    /// inactivity timeout bounds it). False, and nothing held, when the export it was opened
    /// for is no longer the open one ([`ReceiveLease::current`]).
    pub fn streaming(&self) -> bool {
        let mut m = self.leases.m.lock().expect("leases");
        let Some(l) = m.get_mut(&self.instance).filter(|l| l.generation == self.generation) else {
            return false;
        };
        if self.halt.load(Ordering::SeqCst) {
            return false;
        }
        l.receiving.insert(self.dump.clone(), true);
        true
    }

    /// The dump is committed (or failed and removed): the staging export no longer waits for
    /// it. Called before the primary is acknowledged, so that the master's finalize, which
    /// follows the acknowledgement, never finds it still receiving.
    pub fn finish(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut m = self.leases.m.lock().expect("leases");
        if let Some(l) = m.get_mut(&self.instance).filter(|l| l.generation == self.generation) {
            l.receiving.remove(&self.dump);
            l.last = Instant::now();
        }
        let mut w = self.leases.writers.lock().expect("writers");
        if let Some(v) = w.get_mut(&self.instance) {
            v.retain(|w| w.id != self.id);
            if v.is_empty() {
                w.remove(&self.instance);
            }
        }
    }
}

impl Drop for ReceiveLease<'_> {
    fn drop(&mut self) {
        self.finish();
        self.leases.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_only_without_streams_and_word_from_the_master() {
        let l = Leases::new(Duration::from_millis(30));
        l.touch("a");
        let r = l.begin_receive("b", "d0").unwrap();
        assert!(r.streaming());
        l.touch("c");
        l.end("c");
        assert!(l.expired().is_empty());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.expired(), ["a"]);
        drop(r);
        assert!(l.expired().is_empty(), "the end of a receive renews the lease");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.expired(), ["b"]);
        assert!(l.expired().is_empty());
    }

    #[test]
    fn a_receive_still_waiting_for_its_stream_does_not_hold_the_lease() {
        let l = Leases::new(Duration::from_millis(30));
        l.begin("i");
        let r = l.begin_receive("i", "d0").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.expired(), ["i"], "a port no stream reached kept its master's export");
        assert!(r.halt().load(Ordering::SeqCst), "the waiting receive was not halted");
        assert!(!r.current() && !r.streaming(), "a stream came after the export expired");
        assert_eq!(l.writers("i"), ["d0"], "a writer until its guard drops");
        drop(r);
        assert!(l.writers("i").is_empty());
    }

    #[test]
    fn open_receives_are_capped_until_their_guards_drop() {
        let l = Leases::new(Duration::from_secs(60)).with_max_open(2);
        l.begin("i");
        let a = l.begin_receive("i", "d0").unwrap();
        let b = l.begin_receive("i", "d1").unwrap();
        let e = l.begin_receive("j", "d0").err().expect("a third over the cap");
        assert!(e.contains("2 receives are open"), "{e}");
        // Finished (committed) or abandoned, a receive counts until its guard drops: its
        // thread and port live until then.
        a.finish();
        l.end("i");
        assert!(l.begin_receive("j", "d0").is_err());
        drop(a);
        let c = l.begin_receive("j", "d0").expect("a place given back");
        drop((b, c));
        assert_eq!(l.open.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_receive_belongs_to_the_staging_export_it_was_opened_for() {
        let l = Leases::new(Duration::from_secs(60));
        l.begin("i");
        let r = l.begin_receive("i", "d0").unwrap();
        assert!(r.current());
        assert_eq!(l.receiving("i"), ["d0"]);
        assert!(l.begin_receive("i", "d0").is_err(), "one receive per dump at a time");
        let r1 = l.begin_receive("i", "d1").unwrap();
        // Abandoned and begun again: the old receives are no longer current, and their end
        // does not touch the new export's receives.
        l.end("i");
        l.begin("i");
        assert!(!r.current() && !r1.current());
        let n = l.begin_receive("i", "d0").expect("the new export's own receive of d0");
        drop(r);
        drop(r1);
        assert_eq!(l.receiving("i"), ["d0"], "the old receives' end left the new one alone");
        assert!(n.current());
        drop(n);
        assert!(l.receiving("i").is_empty());
        // Finished before it is dropped (the dump committed, the acknowledgement not yet
        // sent): the dump may be received again, and the old guard's drop leaves that alone.
        let a = l.begin_receive("i", "d2").unwrap();
        a.finish();
        assert!(l.receiving("i").is_empty());
        let b = l.begin_receive("i", "d2").expect("received again");
        drop(a);
        assert_eq!(l.receiving("i"), ["d2"]);
        drop(b);
    }

    #[test]
    fn receives_of_an_earlier_staging_export_are_halted_and_waited_for() {
        let l = Leases::new(Duration::from_secs(60));
        l.begin("i");
        let old = l.begin_receive("i", "d0").unwrap();
        assert!(!old.halt().load(Ordering::SeqCst));
        // Begun again: the old receive is halted but may still write until it finishes.
        l.begin("i");
        assert!(old.halt().load(Ordering::SeqCst) && !old.current());
        assert_eq!(l.writers("i"), ["d0"]);
        assert_eq!(l.wait_writers("i", Duration::from_millis(30)), ["d0"]);
        let new = l.begin_receive("i", "d0").expect("the new export's own receive");
        assert!(!new.halt().load(Ordering::SeqCst), "a new receive is not halted");
        assert_eq!(l.writers("i"), ["d0", "d0"]);
        old.finish();
        assert_eq!(l.writers("i"), ["d0"]);
        // Abandoned: its receive is halted too; once finished, nothing writes.
        l.end("i");
        assert!(new.halt().load(Ordering::SeqCst));
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                drop(new);
            });
            assert!(l.wait_writers("i", Duration::from_secs(5)).is_empty());
        });
        drop(old);
        // Another instance's receives are not touched; the agent's stop halts all, and no
        // receive begins after it.
        let other = l.begin_receive("j", "d0").unwrap();
        l.begin("i");
        assert!(!other.halt().load(Ordering::SeqCst));
        l.halt_all();
        assert!(other.halt().load(Ordering::SeqCst));
        assert!(l.begin_receive("j", "d1").is_err());
    }
}
