//! `--transport-compression auto` on a `dsimg` stream ([`diskstream_engine::sink::adapt`]): the
//! sender probes lz4 off as well as on, whatever the rates, and the stream stays valid across
//! every switch: received, it is the source byte for byte.

use std::io::Cursor;
use std::path::Path;

use diskstream_engine::format::reader::ImageReader;
use diskstream_engine::format::FrameKind;
use diskstream_engine::ops::{self, CreateOptions, Format, Progress};
use diskstream_engine::write_sample_disk;

/// Sends `src` as a stream with lz4 (adaptive or not) and counts its lz4 and raw frames.
fn send(src: &Path, adaptive: bool) -> (Vec<u8>, u64, u64) {
    let o = CreateOptions {
        format: Format::Dsimg,
        compress: true,
        adaptive,
        ..Default::default()
    };
    let mut wire = Vec::new();
    let rep = ops::send(src, &mut wire, Path::new("test:disk0"), &o, &Progress::default()).expect("send");
    let mut r = ImageReader::new(Cursor::new(wire.clone()), Path::new("wire")).expect("header");
    let mut stored = vec![0u8; 2 << 20];
    let (mut lz4, mut raw) = (0, 0);
    while let Some(f) = r.next_stored(&mut stored).expect("frame") {
        match f.frame.kind {
            FrameKind::Lz4 => lz4 += 1,
            FrameKind::Raw => raw += 1,
            FrameKind::Zero => {}
        }
    }
    // The sender's own count of what it put on the wire is what the stream holds.
    let w = rep.wire.expect("a stream's report says what it carried");
    assert_eq!((w.lz4_chunks, w.data_chunks), (lz4, lz4 + raw), "{w:?}");
    if adaptive {
        assert!(w.auto_rounds >= 1, "{w:?}");
    } else {
        assert_eq!((w.auto_rounds, w.auto_link_bound_keeps), (0, 0), "{w:?}");
    }
    (wire, lz4, raw)
}

#[test]
fn an_adaptive_stream_probes_lz4_off_and_is_received_byte_identical() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("disk.img");
    // 512 chunks of compressible mixed content (text, code, some random runs): lz4 makes
    // nearly every one smaller.
    write_sample_disk(&src, 512 << 20, 100, 11).unwrap();

    let (_, lz4, raw) = send(&src, false);
    assert!(raw < 32, "lz4 always: {raw} raw frames, {lz4} lz4");
    assert!(lz4 > 480);

    // Adaptive: lz4 first (the first probe), then a probe without it, then the faster of the
    // two, whichever it is on this machine: both kinds of frames are in the stream.
    let (wire, lz4, raw) = send(&src, true);
    assert!(lz4 > 128, "adaptive: {lz4} lz4 frames");
    assert!(raw > 96, "adaptive: {raw} raw frames (the probe without lz4)");

    let out = d.path().join("dump.raw");
    let o = CreateOptions::default();
    let rep = ops::receive(
        Cursor::new(wire),
        Path::new("test:disk0"),
        &out,
        ops::Expected {
            checksum: o.checksum,
            disk_size: 512 << 20,
        },
        &o,
        &Progress::default(),
    )
    .expect("receive");
    assert_eq!(rep.disk_size, 512 << 20);
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(),
        "dump differs from the source"
    );
}
