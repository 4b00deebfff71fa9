//! The receiving end of a `dsimg` stream checks its header against what it knows of the disk
//! from its own configuration ([`diskstream_engine::ops::Expected`]): a header that claims
//! another size, other chunks or another digest is refused before any file is created and
//! before any memory sized by the header is taken.

use std::io::Cursor;
use std::path::Path;

use diskstream_engine::digest::Checksum;
use diskstream_engine::format::{Header, MIN_CHUNK};
use diskstream_engine::ops::{self, CreateOptions, Expected, Format, Progress};
use diskstream_engine::write_sample_disk;

/// Receives `wire` into a fresh directory; returns the error text and what the directory holds.
fn refused(wire: Vec<u8>, expect: Expected) -> (String, Vec<String>) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("dump.raw");
    let o = CreateOptions::default();
    let e = ops::receive(
        Cursor::new(wire),
        Path::new("node3:inst1/disk0"),
        &out,
        expect,
        &o,
        &Progress::default(),
    )
    .expect_err("the stream must be refused");
    let left = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    (e.to_string(), left)
}

#[test]
fn a_header_that_disagrees_with_the_receivers_config_is_refused_before_any_file() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.img");
    write_sample_disk(&src, 8 << 20, 100, 3).unwrap();
    let send = |o: &CreateOptions| {
        let mut wire = Vec::new();
        ops::send(&src, &mut wire, Path::new("node2:inst1/disk0"), o, &Progress::default()).expect("send");
        wire
    };
    let o = CreateOptions {
        format: Format::Dsimg,
        ..Default::default()
    };
    let wire = send(&o);
    let good = Expected {
        checksum: o.checksum,
        disk_size: 8 << 20,
    };

    // The disk is larger or smaller than the stream says.
    for size in [4 << 20, 16 << 20, (8 << 20) + 1] {
        let (e, left) = refused(
            wire.clone(),
            Expected {
                disk_size: size,
                ..good
            },
        );
        assert!(
            e.contains("node3:inst1/disk0") && e.contains(&format!("{}", 8 << 20)) && e.contains(&size.to_string()),
            "{e}"
        );
        assert!(left.is_empty(), "{left:?}");
    }
    // Another chunk digest.
    let other = if o.checksum == Checksum::Sha256 {
        Checksum::Blake3
    } else {
        Checksum::Sha256
    };
    let (e, left) = refused(
        wire.clone(),
        Expected {
            checksum: other,
            ..good
        },
    );
    assert!(e.contains("chunk digest"), "{e}");
    assert!(left.is_empty(), "{left:?}");
    // Chunks other than the receiver's own.
    let mut small = o.clone();
    small.tuning.chunk_size = 256 << 10;
    let (e, left) = refused(send(&small), good);
    assert!(e.contains("chunks are of 262144 bytes"), "{e}");
    assert!(left.is_empty(), "{left:?}");

    // And the stream as it is goes through.
    let out = d.path().join("dump.raw");
    ops::receive(
        Cursor::new(wire),
        Path::new("x"),
        &out,
        good,
        &CreateOptions::default(),
        &Progress::default(),
    )
    .expect("the matching stream");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn a_header_claiming_an_exabyte_of_the_smallest_chunks_is_refused_without_allocating_for_it() {
    // 2^60 bytes in chunks of MIN_CHUNK would size a manifest of 2^48 entries: before the
    // check, the receiving agent aborted on the allocation. The header alone is sent.
    let header = Header {
        disk_size: 1 << 60,
        chunk_size: MIN_CHUNK,
        checksum: Checksum::Blake3,
    };
    let (e, left) = refused(
        header.encode().to_vec(),
        Expected {
            checksum: Checksum::Blake3,
            disk_size: 1 << 30,
        },
    );
    assert!(e.contains(&(1u64 << 60).to_string()), "{e}");
    assert!(left.is_empty(), "{left:?}");
}
