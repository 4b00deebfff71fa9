//! Striping one byte stream over several connections ("lanes"): the sender cuts the stream into
//! stripes of at most [`STRIPE`] bytes and deals them round-robin to the lanes; the receiver reads
//! every lane on a thread of its own and puts the stripes back in order.
//!
//! This is what lets one disk's frame stream use more than one core for TLS on each side (one
//! rustls connection encrypts, and decrypts, on one thread). It knows nothing of TLS: a lane is
//! any [`Write`] on the sending side and any [`Read`] on the receiving side.
//!
//! On each lane, after its hello, the wire carries records `[length: u32 LE][length bytes]`;
//! a record of length 0 ends the lane, and nothing may follow it but the connection's end.
//! Stripe `s` travels on lane `s % lanes`. The stream ends
//! where the next lane in turn ends; every other lane must end there too, or the stream is
//! refused ("data past the end"). A lane that closes or fails before its end mark fails the
//! stream. Memory is bounded: [`DEPTH`] stripes queued per lane on each side.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most lanes one stream may use.
pub const MAX_LANES: usize = 16;

/// The most bytes of the stream in one stripe.
pub const STRIPE: usize = 1 << 20;

/// Stripes queued per lane, on each side.
const DEPTH: usize = 2;

/// A record's length field.
const HEAD: usize = 4;

/// What the writer hands a sending lane.
enum Out {
    /// A record: its length field and its bytes.
    Record(Vec<u8>),
    /// Write the end mark.
    End,
}

/// The first failure of a sending lane, kept for the writer to report (an `io::Error` is not
/// `Clone`).
type Failure = Arc<Mutex<Option<(io::ErrorKind, String)>>>;

/// The sending side: a [`Write`] that deals the stream to the lanes. [`StripeWriter::finish`]
/// ends every lane; dropped without it, the lanes stop without an end mark (the receiver then
/// refuses the stream).
pub struct StripeWriter {
    lanes: Vec<SyncSender<Out>>,
    free: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    seq: usize,
    written: u64,
    failed: Failure,
}

/// One sending lane's end of the writer; [`LaneOut::run`] it on a thread of its own.
pub struct LaneOut {
    rx: Receiver<Out>,
    free: Sender<Vec<u8>>,
    failed: Failure,
}

/// A writer over `lanes` lanes (1 ..= [`MAX_LANES`]) and each lane's end.
pub fn writer(lanes: usize) -> (StripeWriter, Vec<LaneOut>) {
    assert!((1..=MAX_LANES).contains(&lanes), "{lanes} lanes");
    let failed = Failure::default();
    let (free_tx, free) = mpsc::channel();
    for _ in 0..lanes * (DEPTH + 1) {
        let _ = free_tx.send(Vec::with_capacity(HEAD + STRIPE));
    }
    let (senders, outs) = (0..lanes)
        .map(|_| {
            let (tx, rx) = mpsc::sync_channel(DEPTH);
            let out = LaneOut {
                rx,
                free: free_tx.clone(),
                failed: Arc::clone(&failed),
            };
            (tx, out)
        })
        .unzip();
    let w = StripeWriter {
        lanes: senders,
        free,
        cur: new_record(Vec::with_capacity(HEAD + STRIPE)),
        seq: 0,
        written: 0,
        failed,
    };
    (w, outs)
}

fn new_record(mut b: Vec<u8>) -> Vec<u8> {
    b.clear();
    b.extend_from_slice(&[0; HEAD]);
    b
}

impl StripeWriter {
    /// Bytes of the stream taken so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Sends what is buffered and ends every lane. An error is a lane's (the connection's).
    pub fn finish(&mut self) -> io::Result<()> {
        self.push()?;
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].send(Out::End).is_err() {
                return Err(self.lane_failed(lane));
            }
        }
        self.lanes.clear();
        Ok(())
    }

    fn push(&mut self) -> io::Result<()> {
        if self.cur.len() == HEAD {
            return Ok(());
        }
        let len = u32::try_from(self.cur.len() - HEAD).expect("a stripe fits a u32");
        self.cur[..HEAD].copy_from_slice(&len.to_le_bytes());
        let lane = self.seq % self.lanes.len().max(1);
        let next = match self.free.recv() {
            Ok(b) => new_record(b),
            Err(_) => return Err(self.lane_failed(lane)),
        };
        let record = std::mem::replace(&mut self.cur, next);
        match self.lanes.get(lane).map(|l| l.send(Out::Record(record))) {
            Some(Ok(())) => {
                self.seq += 1;
                Ok(())
            }
            _ => Err(self.lane_failed(lane)),
        }
    }

    /// The error of a lane that stopped taking stripes: the first lane failure recorded, else
    /// that `lane` is gone.
    fn lane_failed(&self, lane: usize) -> io::Error {
        match &*self.failed.lock().expect("failed") {
            Some((kind, msg)) => io::Error::new(*kind, msg.clone()),
            None => io::Error::new(io::ErrorKind::BrokenPipe, format!("lane {lane} of the stream stopped")),
        }
    }
}

impl Write for StripeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = (HEAD + STRIPE - self.cur.len()).min(buf.len());
        self.cur.extend_from_slice(&buf[..n]);
        self.written += n as u64;
        if self.cur.len() == HEAD + STRIPE {
            self.push()?;
        }
        Ok(n)
    }

    /// Sends the partial stripe buffered (a short record).
    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

impl LaneOut {
    /// Writes this lane's records to `w` until the writer ends the lane (`Ok(true)`, the end
    /// mark written and `w` flushed) or is dropped without ending it (`Ok(false)`). A write
    /// error is kept for the writer and returned.
    pub fn run<W: Write>(self, mut w: W) -> io::Result<bool> {
        let r = (|| -> io::Result<bool> {
            for m in &self.rx {
                match m {
                    Out::Record(b) => {
                        w.write_all(&b)?;
                        let _ = self.free.send(b);
                    }
                    Out::End => {
                        w.write_all(&[0; HEAD])?;
                        w.flush()?;
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })();
        if let Err(e) = &r {
            let mut f = self.failed.lock().expect("failed");
            f.get_or_insert_with(|| (e.kind(), e.to_string()));
        }
        r
    }
}

/// What a receiving lane hands the reader.
enum In {
    /// A stripe: its buffer and length.
    Stripe(Vec<u8>, usize),
    /// The lane's end mark.
    End,
    /// The lane failed.
    Failed(io::Error),
}

/// When the stream last moved: a byte read on any lane, or the reader taking bytes. A lane
/// waits for its turn while the others carry the stream (with N lanes, N stripes go by between
/// two of its own), so only the stream's progress, not the lane's, says it stalled.
struct Clock {
    t0: Instant,
    last_ns: AtomicU64,
}

impl Clock {
    fn touch(&self) {
        let ns = u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.t0
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last_ns.load(Ordering::Relaxed)))
    }
}

/// The receiving side: a [`Read`] of the stream put back in order. Dropping it stops the lanes
/// (their threads return within their poll interval).
pub struct StripeReader {
    lanes: Vec<(Receiver<In>, Sender<Vec<u8>>)>,
    seq: usize,
    cur: Option<(usize, Vec<u8>, usize, usize)>,
    ended: bool,
    stop: Arc<AtomicBool>,
    clock: Arc<Clock>,
}

/// One receiving lane; [`LaneIn::run`] it on a thread of its own.
pub struct LaneIn {
    lane: usize,
    tx: SyncSender<In>,
    free: Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    clock: Arc<Clock>,
    /// Raised from outside (the agent stops): the lane fails at its next poll.
    halt: Option<Arc<AtomicBool>>,
}

/// A reader over `lanes` lanes (1 ..= [`MAX_LANES`]) and each lane's end.
pub fn reader(lanes: usize) -> (StripeReader, Vec<LaneIn>) {
    assert!((1..=MAX_LANES).contains(&lanes), "{lanes} lanes");
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(Clock {
        t0: Instant::now(),
        last_ns: AtomicU64::new(0),
    });
    let (ends, ins) = (0..lanes)
        .map(|lane| {
            let (tx, rx) = mpsc::sync_channel(DEPTH);
            let (free_tx, free) = mpsc::channel();
            for _ in 0..DEPTH + 1 {
                let _ = free_tx.send(vec![0u8; STRIPE]);
            }
            let (stop, clock) = (Arc::clone(&stop), Arc::clone(&clock));
            let lane = LaneIn {
                lane,
                tx,
                free,
                stop,
                clock,
                halt: None,
            };
            ((rx, free_tx), lane)
        })
        .unzip();
    let r = StripeReader {
        lanes: ends,
        seq: 0,
        cur: None,
        ended: false,
        stop,
        clock,
    };
    (r, ins)
}

impl StripeReader {
    /// Every lane but `lane` (which just ended) must end here too.
    fn check_ends(&mut self, lane: usize) -> io::Result<()> {
        let n = self.lanes.len();
        for j in (1..n).map(|k| (lane + k) % n) {
            match self.lanes[j].0.recv() {
                Ok(In::End) => {}
                Ok(In::Stripe(..)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("lane {j} carries data past the end of the stream"),
                    ))
                }
                Ok(In::Failed(e)) => return Err(e),
                Err(_) => return Err(gone(j)),
            }
        }
        Ok(())
    }
}

fn gone(lane: usize) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("lane {lane} stopped"))
}

impl Read for StripeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            if let Some((lane, buf, len, pos)) = &mut self.cur {
                if *pos < *len {
                    let n = (*len - *pos).min(out.len());
                    out[..n].copy_from_slice(&buf[*pos..*pos + n]);
                    *pos += n;
                    self.clock.touch();
                    return Ok(n);
                }
                let lane = *lane;
                let (_, buf, _, _) = self.cur.take().expect("current stripe");
                let _ = self.lanes[lane].1.send(buf);
            }
            let lane = self.seq % self.lanes.len();
            match self.lanes[lane].0.recv() {
                Ok(In::Stripe(buf, len)) => {
                    self.seq += 1;
                    self.cur = Some((lane, buf, len, 0));
                }
                Ok(In::End) => {
                    self.check_ends(lane)?;
                    self.ended = true;
                }
                Ok(In::Failed(e)) => return Err(e),
                Err(_) => return Err(gone(lane)),
            }
        }
    }
}

impl Drop for StripeReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl LaneIn {
    /// The lane fails ("stopped") at its next poll once `halt` is raised, not after the idle
    /// time of a silent peer.
    pub fn halted_by(mut self, halt: Arc<AtomicBool>) -> Self {
        self.halt = Some(halt);
        self
    }

    /// Reads this lane's records from `r` until its end mark, a failure (handed on to the
    /// reader), or the reader is dropped. `r`'s reads must time out every so often (a short
    /// socket read timeout): a timeout is a poll, and only `idle` without the stream moving
    /// (no byte on any lane, nothing taken by the reader) is "stalled" (the message names
    /// `what`).
    pub fn run<R: Read>(self, mut r: R, idle: Duration, what: &str) {
        let mut bytes = 0u64;
        // Fills `buf`; with `at_end`, the peer's close before a byte is not an error (0).
        let mut fill = |buf: &mut [u8], at_end: bool| -> Result<usize, Option<io::Error>> {
            let mut pos = 0;
            while pos < buf.len() {
                match r.read(&mut buf[pos..]) {
                    Ok(0) if at_end && pos == 0 => return Ok(0),
                    Ok(0) => {
                        return Err(Some(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "{what}: lane {} ended before the end of the stream (after {bytes} bytes)",
                                self.lane
                            ),
                        )))
                    }
                    Ok(n) => {
                        pos += n;
                        bytes += n as u64;
                        self.clock.touch();
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        if self.stop.load(Ordering::Relaxed) {
                            return Err(None);
                        }
                        if self.halt.as_ref().is_some_and(|h| h.load(Ordering::Relaxed)) {
                            return Err(Some(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!("{what}: lane {} stopped", self.lane),
                            )));
                        }
                        if self.clock.idle() >= idle {
                            return Err(Some(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "stalled: no progress {what} (lane {}) for {} s after {bytes} bytes",
                                    self.lane,
                                    idle.as_secs()
                                ),
                            )));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Some(e)),
                }
            }
            Ok(pos)
        };
        loop {
            let mut head = [0u8; HEAD];
            let item = match fill(&mut head, false) {
                Err(e) => e.map(In::Failed),
                Ok(_) => match u32::from_le_bytes(head) as usize {
                    // The end mark, then the end of the connection (the sender's TLS close).
                    0 => match fill(&mut [0u8], true) {
                        Ok(0) => Some(In::End),
                        Ok(_) => Some(In::Failed(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{what}: lane {} carries data after its end mark", self.lane),
                        ))),
                        Err(e) => e.map(In::Failed),
                    },
                    len if len > STRIPE => Some(In::Failed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{what}: lane {}: a stripe of {len} bytes (at most {STRIPE})", self.lane),
                    ))),
                    len => {
                        let Ok(mut buf) = self.free.recv() else {
                            return; // The reader is gone.
                        };
                        match fill(&mut buf[..len], false) {
                            Ok(_) => Some(In::Stripe(buf, len)),
                            Err(e) => e.map(In::Failed),
                        }
                    }
                },
            };
            let Some(item) = item else {
                return; // Stopped.
            };
            let last_one = !matches!(item, In::Stripe(..));
            if self.tx.send(item).is_err() || last_one {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
