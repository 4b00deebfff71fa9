//! Striping over real socket pairs: the stream comes back byte-identical for every lane count
//! and write pattern; every way a lane can misbehave fails the stream with a message.

use super::*;
use std::os::unix::net::UnixStream;
use std::thread;

const POLL: Duration = Duration::from_millis(50);

/// A deterministic, not very compressible stream of `len` bytes.
fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Socket pairs, the receiving ends polling every [`POLL`].
fn pairs(lanes: usize) -> Vec<(UnixStream, UnixStream)> {
    (0..lanes)
        .map(|_| {
            let (a, b) = UnixStream::pair().unwrap();
            b.set_read_timeout(Some(POLL)).unwrap();
            (a, b)
        })
        .collect()
}

/// Sends `src` over `lanes` lanes in writes of `piece` bytes (a flush every `flush_every`
/// writes, if any) and returns what the reader read, or its error.
fn round_trip(src: &[u8], lanes: usize, piece: usize, flush_every: Option<usize>) -> io::Result<Vec<u8>> {
    let socks = pairs(lanes);
    let (mut w, outs) = writer(lanes);
    let (mut r, ins) = reader(lanes);
    thread::scope(|sc| {
        for ((out, inn), (a, b)) in outs.into_iter().zip(ins).zip(&socks) {
            sc.spawn(move || {
                assert!(out.run(a).unwrap(), "lane not ended");
                a.shutdown(std::net::Shutdown::Write).unwrap(); // as the TLS close
            });
            sc.spawn(move || inn.run(b, Duration::from_secs(10), "test"));
        }
        let reading = sc.spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).map(|_| got)
        });
        for (i, p) in src.chunks(piece.max(1)).enumerate() {
            w.write_all(p).unwrap();
            if flush_every.is_some_and(|k| i % k == k - 1) {
                w.flush().unwrap();
            }
        }
        assert_eq!(w.written(), src.len() as u64);
        w.finish().unwrap();
        reading.join().unwrap()
    })
}

#[test]
fn every_lane_count_and_write_pattern_gives_the_stream_back_byte_identical() {
    let sizes = [0, 1, STRIPE - 1, STRIPE, STRIPE + 1, 3 * STRIPE, 5 * STRIPE + 12_345];
    for lanes in [1, 2, 3, 4, 7] {
        for &len in &sizes {
            let src = data(len);
            for (piece, flush) in [(1 << 20, None), (4096 + 17, None), (300_001, Some(3))] {
                let got = round_trip(&src, lanes, piece, flush).unwrap();
                assert!(
                    got == src,
                    "{lanes} lanes, {len} bytes, pieces of {piece}, flush {flush:?}"
                );
            }
        }
    }
}

/// Runs a reader over hand-written lanes (`lanes[j]` is what lane `j` carries, then it closes;
/// a lane with nothing stays open, to be silent) and returns its result.
fn read_raw(lanes: Vec<Vec<u8>>, idle: Duration) -> io::Result<Vec<u8>> {
    read_raw_as(lanes, idle, false)
}

/// [`read_raw`]; with `close_all`, empty lanes are closed too.
fn read_raw_as(lanes: Vec<Vec<u8>>, idle: Duration, close_all: bool) -> io::Result<Vec<u8>> {
    let n = lanes.len();
    let socks = pairs(n);
    let (mut r, ins) = reader(n);
    thread::scope(|sc| {
        for (inn, (_, b)) in ins.into_iter().zip(&socks) {
            sc.spawn(move || inn.run(b, idle, "receiving test"));
        }
        let mut writers = Vec::new();
        for (bytes, (a, _)) in lanes.into_iter().zip(&socks) {
            let mut a = a.try_clone().unwrap();
            writers.push(sc.spawn(move || {
                let _ = a.write_all(&bytes);
                if close_all || !bytes.is_empty() {
                    let _ = a.shutdown(std::net::Shutdown::Write);
                }
            }));
        }
        let mut got = Vec::new();
        let res = r.read_to_end(&mut got).map(|_| got);
        drop(r);
        for (a, _) in &socks {
            let _ = a.shutdown(std::net::Shutdown::Both);
        }
        res
    })
}

fn record(bytes: &[u8]) -> Vec<u8> {
    let mut v = (bytes.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

const END: [u8; 4] = [0; 4];

#[test]
fn hand_written_lanes_are_read_in_turn() {
    let lane0 = [record(b"ab"), record(b"ef"), END.to_vec()].concat();
    let lane1 = [record(b"cd"), END.to_vec()].concat();
    let got = read_raw(vec![lane0, lane1], Duration::from_secs(5)).unwrap();
    assert_eq!(got, b"abcdef");
}

#[test]
fn a_lane_with_data_past_the_end_is_refused() {
    // Stripes: 0 on lane 0, 1 on lane 1; the stream ends at stripe 2 (lane 0's end mark), but
    // lane 1 carries one more stripe.
    let lane0 = [record(b"ab"), END.to_vec()].concat();
    let lane1 = [record(b"cd"), record(b"extra"), END.to_vec()].concat();
    let e = read_raw(vec![lane0, lane1], Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("lane 1 carries data past the end"), "{e}");
    // Anything after a lane's end mark but the connection's end.
    let lane0 = [record(b"ab"), END.to_vec(), b"x".to_vec()].concat();
    let e = read_raw(vec![lane0], Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("lane 0 carries data after its end mark"), "{e}");
}

#[test]
fn a_lane_that_closes_before_its_end_mark_fails_the_stream() {
    let lane0 = [record(b"ab"), record(b"ef"), END.to_vec()].concat();
    let lane1 = record(b"cd"); // then closed, no end mark
    let e = read_raw(vec![lane0, lane1], Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert!(
        e.to_string()
            .contains("lane 1 ended before the end of the stream (after 6 bytes)"),
        "{e}"
    );
    // Cut inside a record's length field, and inside its bytes.
    for cut in [2, 5] {
        let lane0 = record(b"abcd")[..cut].to_vec();
        let e = read_raw(vec![lane0, END.to_vec()], Duration::from_secs(5)).unwrap_err();
        assert!(
            e.to_string().contains("lane 0 ended before the end"),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn a_stripe_longer_than_the_limit_is_refused_before_it_is_read() {
    let mut lane0 = ((STRIPE + 1) as u32).to_le_bytes().to_vec();
    lane0.extend_from_slice(b"whatever follows");
    let e = read_raw(vec![lane0], Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(
        e.to_string().contains(&format!("a stripe of {} bytes", STRIPE + 1)),
        "{e}"
    );
    let e = read_raw(vec![u32::MAX.to_le_bytes().to_vec()], Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("a stripe of 4294967295 bytes"), "{e}");
}

#[test]
fn a_silent_lane_is_stalled_after_the_inactivity_timeout_not_at_its_poll() {
    // Lane 0 sends its first stripe; lane 1 sends nothing and stays open.
    let t0 = Instant::now();
    let e = read_raw(vec![record(b"ab"), Vec::new()], Duration::from_millis(600)).unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(
        e.to_string()
            .contains("stalled: no progress receiving test (lane 1) for 0 s after 0 bytes"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(600),
        "stalled after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(5), "stalled only after {took:?}");
}

#[test]
fn dropping_the_reader_stops_its_lanes_at_their_next_poll() {
    let socks = pairs(3);
    let (r, ins) = reader(3);
    let t0 = Instant::now();
    thread::scope(|sc| {
        for (inn, (_, b)) in ins.into_iter().zip(&socks) {
            sc.spawn(move || inn.run(b, Duration::from_secs(60), "test"));
        }
        thread::sleep(POLL * 2);
        drop(r);
    });
    // The lanes' peers never wrote or closed: only the stop ended them.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "lanes ran on for {:?}",
        t0.elapsed()
    );
}

/// A lane that accepts `left` bytes, then fails.
struct Failing {
    left: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "the target went away"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_lane_fails_the_writer_with_its_own_error() {
    let (mut w, outs) = writer(2);
    let src = data(40 * STRIPE);
    let (e, ended) = thread::scope(|sc| {
        let mut outs = outs.into_iter();
        let bad = sc.spawn({
            let out = outs.next().unwrap();
            move || out.run(Failing { left: STRIPE + 100 })
        });
        let good = sc.spawn({
            let out = outs.next().unwrap();
            move || out.run(io::sink())
        });
        let e = w.write_all(&src).and_then(|()| w.finish()).unwrap_err();
        drop(w);
        let ended = (bad.join().unwrap().is_err(), good.join().unwrap().unwrap());
        (e, ended)
    });
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    assert!(e.to_string().contains("the target went away"), "{e}");
    // The failed lane reports its error; the other one stopped without an end mark.
    assert_eq!(ended, (true, false));
}

#[test]
fn a_writer_dropped_without_finish_ends_no_lane() {
    let socks = pairs(2);
    let (mut w, outs) = writer(2);
    let (mut r, ins) = reader(2);
    let e = thread::scope(|sc| {
        let mut ends = Vec::new();
        for ((out, inn), (a, b)) in outs.into_iter().zip(ins).zip(&socks) {
            ends.push(sc.spawn(move || out.run(a).unwrap()));
            sc.spawn(move || inn.run(b, Duration::from_secs(10), "test"));
        }
        w.write_all(&data(3 * STRIPE + 5)).unwrap();
        drop(w);
        assert!(
            ends.into_iter().all(|h| !h.join().unwrap()),
            "a lane wrote its end mark"
        );
        for (a, _) in &socks {
            a.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap_err()
    });
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}

/// The reference reading of hand-written lanes, the simple way: each lane's records parsed
/// front to back, then the stripes taken in turn. `None` where the reader must refuse.
fn reference(lanes: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut records: Vec<Vec<&[u8]>> = Vec::new();
    for lane in lanes {
        let (mut at, mut recs) = (0, Vec::new());
        loop {
            let head = lane.get(at..at + 4)?;
            let len = u32::from_le_bytes(head.try_into().unwrap()) as usize;
            at += 4;
            if len == 0 {
                if at != lane.len() {
                    return None; // Only the connection's end may follow an end mark.
                }
                break;
            }
            if len > STRIPE {
                return None;
            }
            recs.push(lane.get(at..at + len)?);
            at += len;
        }
        records.push(recs);
    }
    // Stripe s from lane s % n: the stream ends at the first lane out of stripes in turn, and
    // every lane must have carried exactly its share by then.
    let n = lanes.len();
    let total: usize = records.iter().map(Vec::len).sum();
    let (mut out, mut s) = (Vec::new(), 0);
    while let Some(r) = records[s % n].get(s / n) {
        out.extend_from_slice(r);
        s += 1;
    }
    (s == total).then_some(out)
}

/// Hostile lanes: valid streams cut, with a length byte changed, with a record added or
/// dropped, or plain noise. The reader never panics or hangs, and reads exactly what the
/// reference reads, or refuses where it refuses.
#[test]
fn hostile_lanes_are_read_as_the_reference_reads_them_or_refused() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n.max(1) as u64) as usize
    };
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..300 {
        let n = 1 + rnd(4);
        let stripes = rnd(9);
        let mut lanes = vec![Vec::new(); n];
        for s in 0..stripes {
            let len = 1 + rnd(40);
            let bytes: Vec<u8> = (0..len).map(|_| rnd(256) as u8).collect();
            lanes[s % n].extend(record(&bytes));
        }
        for lane in &mut lanes {
            lane.extend(END);
        }
        let j = rnd(n);
        match rnd(7) {
            0 => {
                let cut = rnd(lanes[j].len());
                lanes[j].truncate(cut);
            }
            1 if !lanes[j].is_empty() => {
                let i = rnd(lanes[j].len());
                lanes[j][i] = rnd(256) as u8;
            }
            2 => {
                let at = lanes[j].len() - 4;
                lanes[j].splice(at..at, record(b"one more"));
            }
            3 => lanes[j] = (0..rnd(64)).map(|_| rnd(256) as u8).collect(),
            4 => lanes[j].splice(0..0, [0xff, 0xff, 0x10, 0x00]).for_each(drop),
            _ => {} // valid
        }
        let want = reference(&lanes);
        let got = read_closed(lanes.clone());
        match (&want, &got) {
            (Some(w), Ok(g)) => {
                assert!(w == g, "case {case}: read other bytes than the reference: {lanes:?}");
                accepted += 1;
            }
            (None, Err(_)) => refused += 1,
            _ => panic!("case {case}: reference {want:?}, reader {got:?}, lanes {lanes:?}"),
        }
    }
    // Both outcomes were exercised.
    assert!(accepted > 50 && refused > 50, "accepted {accepted}, refused {refused}");
}

/// [`read_raw`] with every lane closed after its bytes (empty ones too), within a deadline.
fn read_closed(lanes: Vec<Vec<u8>>) -> io::Result<Vec<u8>> {
    let t0 = Instant::now();
    let r = read_raw_as(lanes, Duration::from_secs(5), true);
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    r
}

/// A stream that moves slowly but steadily (a stripe every 300 ms, as a mostly-zero disk's
/// frames do) is not stalled with a 1 s inactivity timeout, however many lanes: with 4 lanes
/// each lane waits 1.2 s between its own stripes.
#[test]
fn a_slow_steady_stream_is_not_stalled_on_a_lane_waiting_its_turn() {
    for lanes in [1, 4] {
        let socks = pairs(lanes);
        let (mut w, outs) = writer(lanes);
        let (mut r, ins) = reader(lanes);
        let src = data(8 * STRIPE);
        let got = thread::scope(|sc| {
            for ((out, inn), (a, b)) in outs.into_iter().zip(ins).zip(&socks) {
                sc.spawn(move || {
                    assert!(out.run(a).unwrap(), "lane not ended");
                    a.shutdown(std::net::Shutdown::Write).unwrap();
                });
                sc.spawn(move || inn.run(b, Duration::from_secs(1), "receiving slow"));
            }
            let reading = sc.spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).map(|_| got)
            });
            for stripe in src.chunks(STRIPE) {
                thread::sleep(Duration::from_millis(300));
                w.write_all(stripe).unwrap();
            }
            w.finish().unwrap();
            reading.join().unwrap()
        });
        match got {
            Ok(g) => assert!(g == src, "{lanes} lanes: other bytes"),
            Err(e) => panic!("{lanes} lanes: {e}"),
        }
    }
}

/// A lane whose peer is silent (connected, sending nothing) fails at its next poll once its
/// halt flag is raised (the agent stops), not after the idle time; the reader gets the error.
#[test]
fn a_silent_lane_stops_when_halted() {
    let socks = pairs(1);
    let (mut r, ins) = reader(1);
    let halt = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let res = thread::scope(|sc| {
        for (inn, (_, b)) in ins.into_iter().zip(&socks) {
            let inn = inn.halted_by(Arc::clone(&halt));
            sc.spawn(move || inn.run(b, Duration::from_secs(60), "receiving test"));
        }
        let h = Arc::clone(&halt);
        sc.spawn(move || {
            thread::sleep(Duration::from_millis(300));
            h.store(true, Ordering::SeqCst);
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got)
    });
    let e = res.expect_err("a halted lane read on");
    assert!(e.to_string().contains("lane 0 stopped"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
}
