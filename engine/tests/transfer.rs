//! The Sink protocol seen through `Transfer`: the order a sink asks for is the order it gets,
//! every chunk arrives once, a failed transfer drops its sink unfinished and that removes the
//! partial output, the verify sink names a bad chunk and a missing one, and a dsimg read as a
//! plain byte stream (no file, no O_DIRECT) gives the same chunks as the file on both paths.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use diskstream_engine::buf::BufPool;
use diskstream_engine::digest::Checksum;
use diskstream_engine::error::{Error, Result};
use diskstream_engine::manifest::{ChunkKind, Manifest};
use diskstream_engine::ops::{self, CreateOptions, Format, Progress, Tuning};
use diskstream_engine::pipeline::{Payload, Processed};
use diskstream_engine::report::ReportHead;
use diskstream_engine::sample::write_sample_disk;
use diskstream_engine::sink::null::NullSink;
use diskstream_engine::sink::raw::RawSink;
use diskstream_engine::sink::target::Target;
use diskstream_engine::sink::verify::VerifySink;
use diskstream_engine::sink::{Order, Sink, SinkNeeds, SinkStats, ZeroPolicy};
use diskstream_engine::source::{Disk, DiskSource, FrameSource, RunSpec, Source, SourceInfo, SourceStats};
use diskstream_engine::transfer::Transfer;

const CS: u32 = 1 << 16;

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dstest-transfer-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn tuning(sequential: bool) -> Tuning {
    Tuning {
        chunk_size: CS,
        threads: 4,
        sequential,
        ..Tuning::default()
    }
}

fn run(source: &mut dyn Source, sink: Box<dyn Sink + '_>, t: &Tuning) -> Result<ops::Report> {
    Transfer::new(ReportHead::new("test"), t, &Progress::default(), Instant::now()).run(source, sink)
}

/// Records the indices it receives.
struct Recorder {
    order: Order,
    seen: Arc<Mutex<Vec<u64>>>,
}

impl Sink for Recorder {
    fn needs(&self) -> SinkNeeds {
        SinkNeeds {
            order: self.order,
            ..SinkNeeds::ANY
        }
    }
    fn put(&mut self, p: Processed) -> Result<()> {
        self.seen.lock().unwrap().push(p.index);
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<SinkStats> {
        Ok(SinkStats::default())
    }
}

/// Delivers chunks `0..count` in the order given (some may be left out), then fails if `fail`.
struct Scripted {
    order: Vec<u64>,
    count: u64,
    fail: bool,
}

impl Source for Scripted {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            input: PathBuf::from("<scripted>"),
            disk_size: self.count * u64::from(CS),
            chunk_size: CS,
            checksum: Checksum::Blake3,
            input_direct: false,
        }
    }
    fn run(&mut self, _: RunSpec<'_>, deliver: &mut dyn FnMut(Processed) -> Result<()>) -> Result<SourceStats> {
        // Room for every chunk: an ordering transfer or a sink with writes in flight holds them.
        let pool = BufPool::new(CS as usize, self.order.len() + 8);
        for &i in &self.order {
            let mut buf = pool.get();
            buf.as_mut_slice().fill(i as u8 + 1);
            deliver(Processed {
                index: i,
                offset: i * u64::from(CS),
                len: CS,
                digest: Checksum::Blake3.digest(&buf.as_slice()[..CS as usize]),
                zero_map: 0,
                payload: Payload::Raw(buf),
                payload_crc: None,
            })?;
        }
        if self.fail {
            return Err(Error::Invalid("scripted failure".into()));
        }
        Ok(SourceStats::default())
    }
}

#[test]
fn a_sink_gets_the_order_it_asks_for_and_every_chunk_once() {
    let dir = scratch();
    let src = dir.path().join("disk");
    write_sample_disk(&src, 256 * u64::from(CS), 70, 5).unwrap();
    for order in [Order::Disk, Order::Any] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Recorder {
            order,
            seen: Arc::clone(&seen),
        };
        let mut source = DiskSource::new(Disk::open(&src).unwrap(), CS, Checksum::Blake3);
        let rep = run(&mut source, Box::new(sink), &tuning(false)).unwrap();
        assert_eq!(rep.chunks, 256);
        let mut got = seen.lock().unwrap().clone();
        if order == Order::Disk {
            assert_eq!(got, (0..256).collect::<Vec<_>>(), "disk order asked for");
        }
        got.sort_unstable();
        assert_eq!(got, (0..256).collect::<Vec<_>>(), "{order:?}: every chunk exactly once");
    }
    // A scripted source out of order: the transfer reorders for an ordered sink.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut source = Scripted {
        order: vec![3, 1, 0, 2],
        count: 4,
        fail: false,
    };
    let sink = Recorder {
        order: Order::Disk,
        seen: Arc::clone(&seen),
    };
    run(&mut source, Box::new(sink), &tuning(false)).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3]);
}

#[test]
fn a_failed_transfer_drops_the_sink_and_removes_the_partial_output() {
    let dir = scratch();
    let out = dir.path().join("out.raw");
    let target = Target::create(&out, false, true, &[]).unwrap();
    let sink = RawSink::new(
        target,
        8 * u64::from(CS),
        CS,
        Tuning::default().backend,
        4,
        ZeroPolicy::Write,
    )
    .unwrap();
    let mut source = Scripted {
        order: vec![0, 1, 2],
        count: 8,
        fail: true,
    };
    let e = run(&mut source, Box::new(sink), &tuning(false)).unwrap_err();
    assert!(e.to_string().contains("scripted failure"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "partial output left behind: {left:?}");
}

#[test]
fn the_verify_sink_names_a_bad_chunk_and_a_missing_one() {
    let mut m = Manifest::new(Checksum::Blake3, 4 * u64::from(CS), CS);
    for i in 0..4u64 {
        let bytes = vec![i as u8 + 1; CS as usize];
        m.set(i, ChunkKind::Data, Checksum::Blake3.digest(&bytes));
    }
    let path = Path::new("<scripted>");
    let all = || Scripted {
        order: vec![2, 0, 3, 1],
        count: 4,
        fail: false,
    };
    // A good run: the digest is the manifest's.
    let rep = run(
        &mut all(),
        Box::new(VerifySink::check_only(path, 4).against(&m)),
        &tuning(false),
    )
    .unwrap();
    assert_eq!(rep.digest, diskstream_engine::digest::hex(&m.image_digest()));
    // A chunk whose digest is not the recorded one.
    let mut bad = m.clone();
    bad.set(3, ChunkKind::Data, [7; 32]);
    let e = run(
        &mut all(),
        Box::new(VerifySink::check_only(path, 4).against(&bad)),
        &tuning(false),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ChecksumMismatch { chunk: 3, .. }), "{e}");
    assert!(e.is_integrity());
    // A source that skips a chunk.
    let mut short = Scripted {
        order: vec![0, 1, 3],
        count: 4,
        fail: false,
    };
    let e = run(&mut short, Box::new(VerifySink::check_only(path, 4)), &tuning(false)).unwrap_err();
    assert!(e.to_string().contains("3 of 4 chunks"), "{e}");
    // One delivered twice.
    let mut twice = Scripted {
        order: vec![0, 1, 1, 2, 3],
        count: 4,
        fail: false,
    };
    let e = run(&mut twice, Box::new(VerifySink::check_only(path, 4)), &tuning(false)).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

#[test]
fn a_dsimg_byte_stream_gives_the_same_chunks_as_the_file_on_both_paths() {
    let dir = scratch();
    let src = dir.path().join("disk");
    write_sample_disk(&src, 200 * u64::from(CS) + 4096, 60, 9).unwrap();
    let img = dir.path().join("disk.dsimg");
    let o = CreateOptions {
        tuning: tuning(false),
        format: Format::Dsimg,
        ..CreateOptions::default()
    };
    let created = ops::create(&src, &img, &o, &Progress::default()).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    for sequential in [false, true] {
        let t = tuning(sequential);
        let stream = std::io::Cursor::new(bytes.clone());
        let mut source = FrameSource::new(stream, &img).unwrap();
        let sink = NullSink::new(false).with_digest(Checksum::Blake3, created.disk_size, CS);
        let rep = run(&mut source, Box::new(sink), &t).unwrap();
        assert_eq!(rep.digest, created.digest, "sequential: {sequential}");
        assert_eq!(rep.bytes_read, bytes.len() as u64);
        assert_eq!(rep.bytes_stored, created.bytes_stored);
        assert_eq!(rep.zero_chunks, created.zero_chunks);
        // The scan of the source disk, through the null sink, names the same digest.
        let scan = ops::scan(
            &src,
            &ops::ScanOptions {
                tuning: t,
                ..ops::ScanOptions::default()
            },
            &Progress::default(),
        )
        .unwrap();
        assert_eq!(scan.digest, created.digest);
    }
    // A damaged byte in the stream is refused, not delivered.
    let mut bad = bytes.clone();
    let at = bad.len() / 2;
    bad[at] ^= 1;
    let mut source = FrameSource::new(std::io::Cursor::new(bad), &img).unwrap();
    let e = run(&mut source, Box::new(NullSink::new(false)), &tuning(false)).unwrap_err();
    assert!(e.is_integrity(), "{e}");
}

/// A stream whose transport authenticates every byte (as the agents' mutual TLS does).
struct Authenticated(std::io::Cursor<Vec<u8>>);

impl std::io::Read for Authenticated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl diskstream_engine::source::FrameStream for Authenticated {
    fn authenticated(&self) -> bool {
        true
    }
}

#[test]
fn an_authenticated_stream_skips_payload_crcs_and_still_checks_every_payload_byte() {
    use diskstream_engine::format::reader::ImageReader;
    use diskstream_engine::format::{FrameKind, FRAME_HEADER_LEN};
    let dir = scratch();
    let src = dir.path().join("disk");
    write_sample_disk(&src, 400 * u64::from(CS) + 4096, 80, 5).unwrap();
    let img = dir.path().join("disk.dsimg");
    let o = CreateOptions {
        tuning: tuning(false),
        format: Format::Dsimg,
        compress: true,
        ..CreateOptions::default()
    };
    let created = ops::create(&src, &img, &o, &Progress::default()).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    // Where each frame with a payload is.
    let mut frames = Vec::new();
    let mut r = ImageReader::new(bytes.as_slice(), &img).unwrap();
    let mut buf = vec![0u8; CS as usize];
    while let Some(at) = r.next_stored(&mut buf).unwrap() {
        if at.frame.kind != FrameKind::Zero {
            frames.push((at.payload_at as usize, at.frame.stored_len as usize, at.frame.kind));
        }
    }
    // The first three of each kind.
    let pick = |k: FrameKind| frames.iter().filter(move |f| f.2 == k).take(3);
    let frames: Vec<_> = pick(FrameKind::Raw).chain(pick(FrameKind::Lz4)).copied().collect();
    assert_eq!(frames.len(), 6, "the sample disk has three raw and three lz4 frames");
    let check = |b: Vec<u8>, authenticated: bool, sequential: bool| {
        let mut source: Box<dyn Source> = if authenticated {
            Box::new(FrameSource::new(Authenticated(std::io::Cursor::new(b)), &img).unwrap())
        } else {
            Box::new(FrameSource::new(std::io::Cursor::new(b), &img).unwrap())
        };
        run(source.as_mut(), Box::new(NullSink::new(false)), &tuning(sequential))
    };
    for sequential in [false, true] {
        for &(payload_at, len, kind) in &frames {
            // A wrong payload CRC (the header resealed): only the CRC can tell, and an
            // authenticated stream does not ask it; the chunk's bytes and digest are right.
            let mut wrong_crc = bytes.clone();
            let h = payload_at - FRAME_HEADER_LEN;
            wrong_crc[h + 56] ^= 0x10;
            let seal = crc32c::crc32c(&wrong_crc[h..h + 60]);
            wrong_crc[h + 60..h + 64].copy_from_slice(&seal.to_le_bytes());
            let e = check(wrong_crc.clone(), false, sequential).unwrap_err();
            assert!(e.to_string().contains("CRC-32C mismatch"), "{kind:?}: {e}");
            let rep = check(wrong_crc, true, sequential).unwrap();
            assert_eq!(rep.digest, created.digest);
            // A flipped payload byte is refused either way (the digest, or lz4 itself).
            for at in [payload_at, payload_at + len / 2, payload_at + len - 1] {
                let mut bad = bytes.clone();
                bad[at] ^= 0x01;
                for authenticated in [false, true] {
                    let e = check(bad.clone(), authenticated, sequential).unwrap_err();
                    assert!(e.is_integrity(), "{kind:?} at {at}, authenticated {authenticated}: {e}");
                }
            }
        }
    }
}

#[test]
fn reports_serialize_with_the_cli_keys() {
    let rep = ops::Report {
        op: "create",
        format: Some(Format::Dsimg),
        backend: Some(diskstream_engine::ring::BackendKind::Uring),
        checksum: Checksum::Sha256,
        ..ops::Report::default()
    };
    let v = serde_json_like(&rep);
    for key in [
        "\"format\":\"dsimg\"",
        "\"backend\":\"io_uring\"",
        "\"write_backend\":null",
        "\"checksum\":\"sha256\"",
        "\"zero_bytes_skipped\":0",
        "\"elapsed_s\":0.0",
        "\"throughput_bytes_per_s\":0.0",
    ] {
        assert!(v.contains(key), "{key} missing in {v}");
    }
}

fn serde_json_like(r: &ops::Report) -> String {
    serde_json::to_string(r).unwrap()
}
