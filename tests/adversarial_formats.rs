//! Adversarial tests of how `diskstream image verify|restore|info` read images: which format a
//! file is read as (a raw image that begins with the dsimg magic, `--format`), hostile headers
//! and manifests that once made a reader allocate gigabytes (the child's peak RSS measured),
//! the manifest of a dsimg checked by every command, one image file read through one
//! descriptor, and what `info` says of what it did not check. Each test failed before its fix.
//!
//! The RSS checks need `/usr/bin/time` (the project's test script installs it).

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_diskstream");
/// The peak RSS every image command stays under (`docs/performance.md`, bench-rss).
const RSS_LIMIT: u64 = 128 * MIB;

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `diskstream ARGS` under `/usr/bin/time` and returns its output and peak RSS in bytes.
fn ds_rss(args: &[&str]) -> (std::process::Output, u64) {
    let dir = scratch();
    let rss_file = dir.path().join("rss");
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/time is needed (apt-get install time; the test script installs it)");
    let text = std::fs::read_to_string(&rss_file).expect("rss file");
    let kib: u64 = text
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {text:?}"));
    (out, kib * 1024)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

// ---------------------------------------------------------------------------------------------
// F1: a manifest's chunk size is bounded as the writer's is.

#[test]
fn a_manifest_with_a_2_gib_chunk_is_refused_with_bounded_memory() {
    use diskstream_engine::digest::Checksum;
    use diskstream_engine::manifest::{ChunkKind, Manifest};
    let dir = scratch();
    let d = dir.path();
    let img = d.join("one.raw");
    std::fs::write(&img, b"x").unwrap();
    // A consistent manifest (its image digest matches) that no writer makes: 2 GiB chunks.
    let mut m = Manifest::new(Checksum::Blake3, 1, 1 << 31);
    m.set(0, ChunkKind::Data, Checksum::Blake3.digest(b"x"));
    let mpath = d.join("one.raw.manifest");
    std::fs::write(&mpath, m.encode()).unwrap();
    for op in ["verify", "info", "restore"] {
        let dest = d.join("dest");
        let mut args = vec!["image", op, s(&img)];
        if op == "restore" {
            args.push(s(&dest));
        }
        let (o, rss) = ds_rss(&args);
        let e = stderr_of(&o);
        assert_eq!(o.status.code(), Some(3), "{op}: {e}");
        assert!(
            e.contains("line 4: chunk size 2147483648 is not a power of two from 4096 to 67108864"),
            "{op}: {e}"
        );
        assert!(e.contains(s(&mpath)), "{op}: {e}");
        assert!(rss < RSS_LIMIT, "{op}: peak RSS {} MiB", rss >> 20);
        assert!(!dest.exists());
    }
}

// ---------------------------------------------------------------------------------------------
// F2: the index is read in pieces, whatever the header says.

/// A sparse file of `len` bytes with a dsimg header of `chunks` 4 KiB chunks, the index head
/// and a trailer that fit them, and nothing else (holes).
fn hollow_dsimg(path: &Path, len: u64, chunks: u64) {
    use diskstream_engine::digest::Checksum;
    use diskstream_engine::format::{encode_index_head, index_len, Header, Trailer};
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    let h = Header {
        disk_size: chunks * 4096,
        chunk_size: 4096,
        checksum: Checksum::Blake3,
    };
    f.write_all_at(&h.encode(), 0).unwrap();
    let index_offset = len - 64 - index_len(chunks);
    f.write_all_at(&encode_index_head(chunks), index_offset).unwrap();
    let t = Trailer {
        index_offset,
        total_len: len,
        image_digest: [0; 32],
    };
    f.write_all_at(&t.encode(), len - 64).unwrap();
}

#[test]
fn a_header_declaring_2_pow_28_chunks_in_a_sparse_file_costs_no_memory() {
    let dir = scratch();
    let d = dir.path();
    let img = d.join("hollow.dsimg");
    hollow_dsimg(&img, 64 << 30, 1 << 28);
    for op in ["info", "verify", "restore"] {
        let dest = d.join("dest");
        let mut args = vec!["image", op, s(&img)];
        if op == "restore" {
            args.push(s(&dest));
        }
        let (o, rss) = ds_rss(&args);
        let e = stderr_of(&o);
        assert_eq!(o.status.code(), Some(3), "{op}: {e}");
        assert!(
            e.contains("corrupt index entry") && e.contains("chunk 0 at 0"),
            "{op}: {e}"
        );
        assert!(rss < RSS_LIMIT, "{op}: peak RSS {} MiB", rss >> 20);
        assert!(!dest.exists());
    }
    // A file too short for the frames its header declares is refused before its index is read.
    let small = d.join("small.dsimg");
    hollow_dsimg(&small, 4 << 30, 1 << 26);
    let (o, rss) = ds_rss(&["image", "info", s(&small)]);
    let e = stderr_of(&o);
    assert_eq!(o.status.code(), Some(3), "{e}");
    assert!(e.contains("does not fit the header's 67108864 chunks"), "{e}");
    assert!(rss < RSS_LIMIT, "peak RSS {} MiB", rss >> 20);
}

// ---------------------------------------------------------------------------------------------
// F3: buffers are sized by the disk, not only by the chunk size.

#[test]
fn a_tiny_disk_in_64_mib_chunks_is_read_with_little_memory() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("tiny");
    std::fs::write(&src, [7u8; 257]).unwrap();
    for format in ["dsimg", "raw"] {
        let img = d.join(format!("tiny.{format}"));
        let (o, rss) = ds_rss(&[
            "image",
            "create",
            s(&src),
            s(&img),
            "--format",
            format,
            "--chunk-size",
            "64M",
        ]);
        assert!(o.status.success(), "create {format}: {}", stderr_of(&o));
        assert!(rss < RSS_LIMIT, "create {format}: peak RSS {} MiB", rss >> 20);
        let (o, rss) = ds_rss(&["image", "verify", s(&img)]);
        assert!(o.status.success(), "verify {format}: {}", stderr_of(&o));
        assert!(rss < RSS_LIMIT, "verify {format}: peak RSS {} MiB", rss >> 20);
        for seq in [false, true] {
            let out = d.join("out");
            let mut args = vec!["image", "restore", s(&img), s(&out), "--force"];
            if seq {
                args.push("--sequential");
            }
            let (o, rss) = ds_rss(&args);
            assert!(o.status.success(), "restore {format}: {}", stderr_of(&o));
            assert!(
                rss < RSS_LIMIT,
                "restore {format} seq={seq}: peak RSS {} MiB",
                rss >> 20
            );
            assert_eq!(read(&out), read(&src));
        }
    }
}
