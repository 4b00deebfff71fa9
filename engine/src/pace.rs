//! `--bwlimit`: a pacer that spreads disk data evenly over time, so a throttled export moves at
//! a steady rate instead of in bursts.
//!
//! It is a GCRA (the "virtual scheduling" form of a token bucket): each transfer of `n` bytes
//! moves a theoretical arrival time `tat` forward by `n / rate`; a transfer may start once
//! `now ≥ tat − burst`. The burst allowance is [`BURST`] worth of bytes (at least one chunk gets
//! through at once), so in any window of `w` seconds at most `rate·w + rate·BURST + one chunk`
//! bytes start, and over a long run the mean is the rate.
//!
//! Every wait sleeps in slices of at most `NAP` and ends as soon as the run's stop flag is
//! raised (SIGINT/SIGTERM), however low the rate: a stop never waits for the pacer. A rate of 0
//! is no limit (as rsync and vzdump read it): [`crate::tuning::Tuning::pacer`] then makes none.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::stop::StopFlag;

/// The burst a pacer allows beyond the steady rate, as time at that rate.
pub const BURST: Duration = Duration::from_millis(50);

/// Longest single sleep, so a stop flag is noticed promptly.
const NAP: Duration = Duration::from_millis(50);

/// Paces byte transfers to a rate (bytes per second). Shared by reference between the threads
/// that start transfers.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    tat: Mutex<Option<Instant>>,
    /// The run's stop flag: a wait ends when it is raised.
    stop: Option<StopFlag>,
}

impl Pacer {
    /// A pacer for `bytes_per_s` (at least 1: 0, no limit, is no pacer at all) whose waits end
    /// when `stop` is raised.
    pub fn new(bytes_per_s: u64, stop: Option<StopFlag>) -> Self {
        Self {
            rate: bytes_per_s.max(1) as f64,
            tat: Mutex::new(None),
            stop,
        }
    }

    /// The rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// How long until a transfer may start (zero: now).
    pub fn ready_in(&self) -> Duration {
        let tat = *self.tat.lock().expect("pacer");
        match tat {
            Some(tat) => tat.saturating_duration_since(Instant::now() + BURST),
            None => Duration::ZERO,
        }
    }

    /// Records a transfer of `bytes` starting now.
    pub fn take(&self, bytes: u64) {
        let now = Instant::now();
        let mut tat = self.tat.lock().expect("pacer");
        let from = tat.map_or(now, |t| t.max(now));
        *tat = Some(from + Duration::from_secs_f64(bytes as f64 / self.rate));
    }

    /// Waits until a transfer may start, in naps of at most `NAP`. Returns false as soon as
    /// the stop flag is raised (the caller then ends the run with [`crate::Error::Cancelled`]),
    /// true when the transfer may start.
    pub fn ready(&self) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let d = self.ready_in();
            if d.is_zero() {
                return true;
            }
            std::thread::sleep(d.min(NAP));
        }
    }

    /// Waits until a transfer of `bytes` may start ([`Self::ready`]), then records it. Returns
    /// false, without recording, if the stop flag was raised.
    #[must_use = "false means stop: the run must end"]
    pub fn wait(&self, bytes: u64) -> bool {
        if !self.ready() {
            return false;
        }
        self.take(bytes);
        true
    }

    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_keeps_to_the_rate_after_one_burst() {
        // 100 MB/s, 1 MB transfers: 50 ms of burst is 5 transfers, then one every 10 ms.
        let p = Pacer::new(100_000_000, None);
        let t0 = Instant::now();
        for _ in 0..40 {
            assert!(p.wait(1_000_000));
        }
        let took = t0.elapsed();
        // 40 MB at 100 MB/s is 400 ms; the burst lets the first ~50 ms go at once.
        assert!(took >= Duration::from_millis(330), "{took:?}");
        assert!(took <= Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn ready_in_does_not_consume_and_take_does() {
        let p = Pacer::new(1_000_000, None);
        assert!(p.ready_in().is_zero());
        assert!(p.ready_in().is_zero(), "asking twice takes nothing");
        p.take(1_000_000); // one second's worth
        let d = p.ready_in();
        assert!(
            d > Duration::from_millis(900) && d <= Duration::from_millis(951),
            "{d:?}"
        );
    }

    #[test]
    fn a_stop_flag_ends_the_wait() {
        let stop: StopFlag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let p = Pacer::new(1, Some(stop));
        p.take(1_000); // 1000 s ahead
        let t0 = Instant::now();
        assert!(!p.wait(1), "a stopped wait says so");
        assert!(!p.ready());
        assert!(t0.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_stop_raised_during_a_long_wait_ends_it_within_a_nap() {
        let stop: StopFlag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = Pacer::new(100, Some(std::sync::Arc::clone(&stop)));
        p.take(1_000); // 10 s ahead at 100 B/s
        let raiser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let t0 = Instant::now();
        assert!(!p.ready());
        let took = t0.elapsed();
        raiser.join().unwrap();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(200) + 2 * NAP,
            "{took:?}"
        );
    }
}
