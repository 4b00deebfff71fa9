//! [`Adapt`]: lz4 on a stream only where it makes the transfer faster (`--transport-compression
//! auto`). The sink that writes the stream measures the disk bytes per second it delivers with
//! compression on and off, keeps the faster, and probes the other again now and then.
//!
//! Whether lz4 pays depends on what limits the transfer, which no setting knows in advance: on a
//! slow link (1 Gbit/s) every byte lz4 saves is time saved; on a fast link, or where the CPUs are
//! shared with the other end, compressing costs more time than the bytes it saves. The switch is
//! one flag the workers read per chunk ([`crate::pipeline::Pools::with_gate`]); a chunk in flight
//! when it changes still goes as it was worked on (every frame says what it carries), so the
//! stream is valid whatever the flag did.
//!
//! Schedule, in disk bytes delivered: each probe first lets the chunks already worked on under
//! the previous setting drain, and the queues between the two ends refill (`settle`), then
//! measures `window` bytes. Both settings are probed
//! at the start (lz4 first); the faster then runs for `keep` bytes before both are probed again.
//! lz4 must beat no compression by `MARGIN` to be chosen: on a tie the cheaper setting wins.
//! Each round that picks what the last one picked doubles the time it is kept, up to
//! `MAX_BACKOFF` × `keep`; a round that picks the other setting starts over at `keep`. A probe of
//! the losing setting moves data at the losing rate: on a steady link the probes' share shrinks
//! from ~15 % of the data to a few %, and a change is still followed within `MAX_BACKOFF` ×
//! `keep` plus a round (a `keep` and a round while lz4 fills the link, below).
//!
//! A probe that cannot win is skipped. No compression puts every disk byte on the wire, so it
//! cannot move disk bytes faster than the link takes wire bytes. While lz4 runs, the sink
//! measures how fast the link took its bytes: wire bytes over the time spent in its writes
//! (the writes wait while the link or the receiver is full; this over-estimates the link
//! whenever the socket had room, which only makes a skip rarer). A keep of lz4 whose disk rate
//! beats that link rate by `MARGIN` goes on for another `keep` without a probe, counted in
//! `link_bound`. Time the sink spends waiting for chunks (the disk stalled, the CPUs were
//! busy) adds neither writes nor wire bytes: a stall of the reads does not set off a probe,
//! and once the link is faster than lz4 can feed it (or the CPUs the limit) the link rate the
//! sink sees rises past lz4's rate and the keep ends in a probe. A keep of no compression
//! always ends in a probe of lz4: only a probe tells what lz4 costs and saves.
//!
//! The same test ends a round early. A round that measures lz4 first (the first one, and the
//! round after a keep of no compression) skips the probe of no compression when, over lz4's
//! window, the sink spent at least `WINDOW_BOUND` of its time writing and lz4's disk rate beats
//! the link rate by `MARGIN`: a window is short and nothing else has been measured yet, so it
//! must show the sink waiting on the link, not only a ratio (a receiver short of CPU also
//! keeps the sink writing much of the time). On a 1 Gbit/s link this saves the first probe,
//! about a second of the transfer at half rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// lz4 is kept only when at least this much faster than no compression.
const MARGIN: f64 = 1.10;

/// The longest a choice is kept, in rounds' `keep`s (doubling from one while it keeps winning).
const MAX_BACKOFF: u64 = 8;

/// The share of a measuring window the sink must spend writing for lz4's window alone to show
/// that the stream is bound by the link (the first round's skip).
const WINDOW_BOUND: f64 = 0.9;

/// Chunks to let pass after a switch besides the sender's own chunks in flight: what the
/// connection and the receiving end hold (socket buffers, the receiver's pools and writes in
/// flight), during which the rate the sink sees is the queues filling or draining, not the
/// setting's.
const DOWNSTREAM: u32 = 64;

/// Where the schedule is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Draining chunks worked on before the switch to `lz4`, until `until` bytes.
    Settle { lz4: bool, until: u64 },
    /// Measuring `lz4` from `from` bytes at `t0` until `from + window`.
    Measure { lz4: bool, from: u64, t0: Instant },
    /// Running the chosen setting from `from` bytes at `t0` until `until` bytes.
    Keep { from: u64, until: u64, t0: Instant },
}

/// The controller of one stream.
#[derive(Debug)]
pub struct Adapt {
    gate: Arc<AtomicBool>,
    settle: u64,
    window: u64,
    keep: u64,
    /// How long the current choice is kept (`keep`, doubled per round it wins again).
    keep_now: u64,
    /// What the last round picked.
    last_pick: Option<bool>,
    phase: Phase,
    /// Rates measured in the current round (disk bytes per second): lz4, none.
    rates: [Option<f64>; 2],
    /// Times the choice was made, and how often lz4 won.
    pub rounds: u32,
    /// Rounds lz4 won.
    pub lz4_won: u32,
    /// Keeps of lz4 that went on without a probe because the stream was bound by the link.
    pub link_bound: u32,
    /// Time the sink spent writing since the current keep began, and the wire bytes it wrote.
    writing: Duration,
    wire: u64,
}

impl Adapt {
    /// A controller with its schedule in bytes: `settle` (at least the bytes the pipeline holds
    /// in flight), `window`, `keep`. Starts with lz4 on.
    pub fn new(settle: u64, window: u64, keep: u64) -> Self {
        Self {
            gate: Arc::new(AtomicBool::new(true)),
            settle,
            window,
            keep,
            keep_now: keep,
            last_pick: None,
            phase: Phase::Settle {
                lz4: true,
                until: settle,
            },
            rates: [None, None],
            rounds: 0,
            lz4_won: 0,
            link_bound: 0,
            writing: Duration::ZERO,
            wire: 0,
        }
    }

    /// The schedule for chunks of `chunk_size` bytes with up to `in_flight` chunks worked on
    /// ahead of the sink: settle past them and what is queued downstream, measure 128 chunks,
    /// keep the choice for 1024 (up to 8192 while it keeps winning).
    pub fn for_chunks(chunk_size: u32, in_flight: u32) -> Self {
        let c = u64::from(chunk_size);
        Self::new(c * u64::from(in_flight + DOWNSTREAM), c * 128, c * 1024)
    }

    /// The flag the workers read.
    pub fn gate(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.gate)
    }

    /// Whether lz4 is on now.
    pub fn lz4(&self) -> bool {
        self.gate.load(Ordering::Relaxed)
    }

    /// Called after each chunk is delivered, with the disk bytes delivered so far, the time
    /// the sink spent writing that chunk and the bytes it put on the wire for it.
    pub fn delivered(&mut self, done: u64, now: Instant, writing: Duration, wire: u64) {
        self.writing += writing;
        self.wire += wire;
        match self.phase {
            Phase::Settle { lz4, until } if done >= until => {
                self.phase = Phase::Measure {
                    lz4,
                    from: done,
                    t0: now,
                };
                self.writing = Duration::ZERO;
                self.wire = 0;
            }
            Phase::Measure { lz4, from, t0 } if done >= from + self.window => {
                let secs = now.duration_since(t0).as_secs_f64().max(1e-9);
                let rate = (done - from) as f64 / secs;
                if lz4 && self.rates.iter().all(Option::is_none) && self.window_link_bound(rate, secs) {
                    // No compression cannot be faster on a link that lz4 already fills.
                    self.link_bound += 1;
                    self.keep_for(self.keep, done, now);
                    return;
                }
                self.rates[usize::from(!lz4)] = Some(rate);
                match self.rates {
                    [Some(with), Some(without)] => {
                        let pick = with > without * MARGIN;
                        self.rounds += 1;
                        self.lz4_won += u32::from(pick);
                        self.rates = [None, None];
                        self.set(pick);
                        self.keep_now = if self.last_pick == Some(pick) {
                            (self.keep_now * 2).min(self.keep * MAX_BACKOFF)
                        } else {
                            self.keep
                        };
                        self.last_pick = Some(pick);
                        self.keep_for(self.keep_now, done, now);
                    }
                    _ => self.switch_to(!lz4, done),
                }
            }
            Phase::Keep { from, until, t0 } if done >= until => {
                let rate = (done - from) as f64 / now.duration_since(t0).as_secs_f64().max(1e-9);
                let link = self.wire as f64 / self.writing.as_secs_f64().max(1e-9);
                if self.lz4() && rate > link * MARGIN {
                    // No compression cannot be faster on a link that lz4 already fills.
                    self.link_bound += 1;
                    self.keep_for(self.keep, done, now);
                } else {
                    // A new round: probe the other setting first, then the current one.
                    self.switch_to(!self.lz4(), done);
                }
            }
            _ => {}
        }
    }

    /// Whether a window of lz4 that delivered `rate` disk bytes per second over `secs` shows
    /// the stream bound by the link: the sink spent `WINDOW_BOUND` of it writing and the disk
    /// rate beats the link rate (wire bytes over time spent writing) by `MARGIN`.
    fn window_link_bound(&self, rate: f64, secs: f64) -> bool {
        let writing = self.writing.as_secs_f64();
        let link = self.wire as f64 / writing.max(1e-9);
        writing >= secs * WINDOW_BOUND && rate > link * MARGIN
    }

    fn keep_for(&mut self, bytes: u64, done: u64, now: Instant) {
        self.phase = Phase::Keep {
            from: done,
            until: done + bytes,
            t0: now,
        };
        self.writing = Duration::ZERO;
        self.wire = 0;
    }

    fn set(&self, lz4: bool) {
        self.gate.store(lz4, Ordering::Relaxed);
    }

    fn switch_to(&mut self, lz4: bool, done: u64) {
        self.set(lz4);
        self.phase = Phase::Settle {
            lz4,
            until: done + self.settle,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated transfer: time and bytes go on across calls of [`Sim::drive`].
    /// lz4 halves every chunk (a ratio of 2): its bytes go on the wire every other one.
    struct Sim {
        now: Instant,
        done: u64,
        odd: bool,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                now: Instant::now(),
                done: 0,
                odd: false,
            }
        }

        /// Drives `a` over `bytes` more bytes where a byte takes `cost(lz4)` nanoseconds, none
        /// of them spent writing (the sink waits for the workers); returns the bytes delivered
        /// with lz4 on.
        fn drive(&mut self, a: &mut Adapt, bytes: u64, cost: impl Fn(bool) -> u64) -> u64 {
            self.drive_writing(a, bytes, |lz4| (cost(lz4), 0))
        }

        /// [`Sim::drive`] where `cost(lz4)` gives a byte's nanoseconds and how many of them the
        /// sink spent writing.
        fn drive_writing(&mut self, a: &mut Adapt, bytes: u64, cost: impl Fn(bool) -> (u64, u64)) -> u64 {
            let mut with_lz4 = 0;
            for _ in 0..bytes {
                let on = a.lz4();
                let (ns, writing) = cost(on);
                self.now += Duration::from_nanos(ns);
                self.done += 1;
                with_lz4 += u64::from(on);
                self.odd = !self.odd;
                let wire = u64::from(!on || self.odd);
                a.delivered(self.done, self.now, Duration::from_nanos(writing), wire);
            }
            with_lz4
        }
    }

    #[test]
    fn a_slow_link_keeps_lz4() {
        let mut a = Adapt::new(10, 50, 500);
        // lz4 halves the time per disk byte (a link-bound transfer).
        let on = Sim::new().drive(&mut a, 10_000, |lz4| if lz4 { 5 } else { 10 });
        // Rounds of 2 × (10 + 50) probe bytes, then keeps of 500, 1000, 2000, 4000 (the cap)...
        assert_eq!(a.rounds, 5, "rounds {}", a.rounds);
        assert_eq!(a.lz4_won, a.rounds);
        // ... so no compression ran only in the five probes of it: 60 bytes each.
        assert!(on >= 10_000 - 5 * 60, "lz4 on for {on} of 10000");
        assert!(a.lz4());
    }

    #[test]
    fn a_cpu_bound_transfer_turns_lz4_off() {
        let mut a = Adapt::new(10, 50, 500);
        // lz4 costs 60 % more time per byte (CPU-bound).
        let on = Sim::new().drive(&mut a, 10_000, |lz4| if lz4 { 16 } else { 10 });
        assert_eq!(a.rounds, 5);
        assert_eq!(a.lz4_won, 0);
        // lz4 ran only in the five probes of it (the first one included).
        assert!(on <= 5 * 60, "lz4 on for {on} of 10000");
        assert!(!a.lz4());
    }

    #[test]
    fn a_tie_prefers_no_compression_and_a_change_is_followed() {
        let mut a = Adapt::new(10, 50, 500);
        let mut sim = Sim::new();
        sim.drive(&mut a, 2_000, |_| 10);
        assert_eq!(a.lz4_won, 0, "a tie goes to the cheaper setting");
        // The link slows down (another transfer started): lz4 now pays and is found.
        let won = a.lz4_won;
        sim.drive(&mut a, 3_000, |lz4| if lz4 { 4 } else { 10 });
        assert!(a.lz4_won > won);
    }

    #[test]
    fn a_choice_kept_longer_while_it_wins_starts_over_when_it_loses() {
        let mut a = Adapt::new(10, 50, 500);
        let mut sim = Sim::new();
        // A slow link: lz4 wins round after round, each keep twice the last, up to the cap.
        sim.drive(&mut a, 20_000, |lz4| if lz4 { 5 } else { 10 });
        assert_eq!(a.keep_now, 500 * MAX_BACKOFF);
        assert_eq!(a.lz4_won, a.rounds);
        // The CPUs get busy (lz4 now costs more than it saves): found within the longest keep
        // and one round, and the keep starts over.
        let (won, rounds) = (a.lz4_won, a.rounds);
        let mut bytes = 0;
        while a.rounds == rounds {
            bytes += 1;
            assert!(
                bytes <= 500 * MAX_BACKOFF + 2 * 60,
                "no new round within the longest keep and a round"
            );
            sim.drive(&mut a, 1, |lz4| if lz4 { 16 } else { 10 });
        }
        assert!(!a.lz4(), "the round after the change kept lz4");
        assert_eq!(a.lz4_won, won);
        assert_eq!(
            a.keep_now, 500,
            "a changed choice is kept for one keep, not the longest"
        );
    }

    /// A link that lz4 fills: every byte's time is spent writing with lz4 (half the wire
    /// bytes), and with none too (the link is the limit either way).
    fn link_bound(lz4: bool) -> (u64, u64) {
        if lz4 {
            (5, 5)
        } else {
            (10, 10)
        }
    }

    #[test]
    fn lz4_filling_the_link_is_kept_without_probes() {
        let mut a = Adapt::new(10, 50, 500);
        let on = Sim::new().drive_writing(&mut a, 10_000, link_bound);
        // lz4's first window (10 + 50 bytes) shows the link bound: no round, no probe of no
        // compression, and every keep of 500 goes on.
        assert_eq!((a.rounds, a.lz4_won), (0, 0));
        assert_eq!(a.link_bound, 1 + (10_000 - 60) / 500, "the window and every keep");
        assert_eq!(on, 10_000, "lz4 on for {on} of 10000");
    }

    #[test]
    fn a_receiver_short_of_cpu_is_not_taken_for_a_full_link() {
        // lz4 costs 60 % more time per byte and the sink spends 10 of the 16 ns writing (the
        // receiver, short of CPU, leaves the socket full): lz4's disk rate beats the link rate
        // the sink sees (ratio 2 × share 0.62 > 1.1), but the window is not spent writing, so
        // no compression is probed, wins, and stays.
        let mut a = Adapt::new(10, 50, 500);
        let on = Sim::new().drive_writing(&mut a, 10_000, |lz4| if lz4 { (16, 10) } else { (10, 9) });
        assert_eq!(a.link_bound, 0);
        assert_eq!((a.rounds, a.lz4_won), (5, 0));
        assert!(on <= 5 * 60, "lz4 on for {on} of 10000");
    }

    #[test]
    fn a_stall_in_the_first_window_costs_one_round() {
        // The reads stall during lz4's first window (the sink waits, writing a quarter of the
        // time): the window does not show the link bound, so no compression is probed, and
        // wins that round (the stall made lz4 look slow). The round after its keep measures
        // lz4 first, sees the link full, and goes back to lz4 without probing no compression.
        let mut a = Adapt::new(10, 50, 500);
        let mut sim = Sim::new();
        sim.drive_writing(&mut a, 60, |_| (20, 5));
        assert_eq!(a.link_bound, 0, "a stalled window is not taken for a full link");
        let on = sim.drive_writing(&mut a, 60 + 500 + 60, link_bound);
        assert_eq!((a.rounds, a.lz4_won), (1, 0));
        assert_eq!(a.link_bound, 1, "the lz4-first round ended at its window");
        assert!(a.lz4());
        assert_eq!(on, 60, "lz4 ran only in its window after the keep");
        sim.drive_writing(&mut a, 3_000, link_bound);
        assert_eq!(a.rounds, 1, "no more rounds");
        assert!(a.link_bound >= 6);
    }

    #[test]
    fn a_stall_of_the_reads_does_not_end_a_link_bound_keep() {
        // In each keep of 500 bytes, 60 where the sink waits four times as long for the reads
        // (a disk stall, as slow for either setting) and writes as before. Judged by the share
        // of the keep's time spent writing (0.73 here), the stall set off a probe.
        let mut a = Adapt::new(10, 50, 500);
        let mut sim = Sim::new();
        sim.drive_writing(&mut a, 60, link_bound); // lz4's first window: link-bound
        for _ in 0..10 {
            sim.drive_writing(&mut a, 60, |_| (20, 5));
            sim.drive_writing(&mut a, 440, link_bound);
        }
        assert_eq!((a.rounds, a.lz4_won), (0, 0), "no probe at all");
        assert_eq!(a.link_bound, 1 + 10);
    }

    #[test]
    fn a_faster_link_ends_the_link_bound_keep_in_a_probe() {
        let mut a = Adapt::new(10, 50, 500);
        let mut sim = Sim::new();
        sim.drive_writing(&mut a, 3_000, link_bound);
        let (rounds, skipped) = (a.rounds, a.link_bound);
        assert!(skipped >= 3);
        // The link gets fast: the sink waits for the workers, lz4 now costs more than it
        // saves. Found within two keeps (the one under way may still count as bound) and a
        // round, and lz4 goes off.
        let mut bytes = 0;
        while a.rounds == rounds {
            bytes += 1;
            assert!(bytes <= 2 * 500 + 2 * 60, "no probe within two keeps and a round");
            sim.drive_writing(&mut a, 1, |lz4| if lz4 { (16, 1) } else { (10, 1) });
        }
        assert!(!a.lz4());
        assert!(a.link_bound <= skipped + 1, "at most the keep under way went on");
    }

    #[test]
    fn writing_without_lz4_still_probes_lz4() {
        // The sink waits for the link with no compression: only a probe tells whether lz4
        // would help (it may cost more CPU than the link saves), so the rounds go on.
        let mut a = Adapt::new(10, 50, 500);
        let on = Sim::new().drive_writing(&mut a, 10_000, |lz4| if lz4 { (16, 2) } else { (10, 10) });
        assert_eq!(a.lz4_won, 0);
        assert_eq!(a.rounds, 5);
        assert_eq!(a.link_bound, 0);
        assert!(on <= 5 * 60, "lz4 on for {on} of 10000");
    }

    #[test]
    fn the_schedule_for_chunks_settles_past_the_chunks_in_flight() {
        let a = Adapt::for_chunks(1 << 20, 36);
        assert_eq!(a.settle, 100 << 20);
        assert_eq!(a.window, 128 << 20);
        assert!(a.lz4(), "starts with lz4");
    }
}
