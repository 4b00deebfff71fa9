//! Adversarial tests of how `diskstream image verify|restore|info` read images: which format a
//! file is read as (a raw image that begins with the dsimg magic, `--format`), hostile headers
//! and manifests that once made a reader allocate gigabytes (the child's peak RSS measured),
//! the manifest of a dsimg checked by every command, one image file read through one
//! descriptor, what `info` says of what it did not check, and memory flat in the number of frames.
//! Each test failed before its fix.
//!
//! The RSS checks need `/usr/bin/time` (the project's test script installs it).

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;

const MIB: u64 = 1 << 20;
/// The peak RSS every image command stays under (`docs/performance.md`, bench-rss).
const RSS_LIMIT: u64 = 128 * MIB;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

/// A dsimg of a small mixed disk, `A.dsimg` (with its manifest) in `d`; returns the disk's path.
fn small_dsimg(d: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = d.join("disk");
    make_disk(&src, 3 * MIB + 512, Data::Mixed, 11);
    let img = d.join("A.dsimg");
    ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    (src, img)
}

// ---------------------------------------------------------------------------------------------
// F4: the format is not the first 8 bytes alone.

/// `image OP IMG`, with `DEST` for a restore.
fn image_op<'a>(op: &'a str, img: &'a Path, dest: &'a Path) -> Vec<&'a str> {
    let mut args = vec!["image", op, s(img)];
    if op == "restore" {
        args.push(s(dest));
    }
    args
}

#[test]
fn a_raw_image_that_begins_with_the_dsimg_magic_is_read_as_raw() {
    let dir = scratch();
    let d = dir.path();
    let (src, a) = small_dsimg(d);
    // A raw export of the dsimg file: the same bytes, and a raw manifest beside it.
    let r = d.join("R.raw");
    ds_json(&["image", "create", s(&a), s(&r), "--format", "raw"]);
    assert_eq!(read(&r), read(&a));
    let info = ds_json(&["image", "info", s(&r)]);
    assert_eq!(info["format"], "raw", "{info}");
    assert_eq!(info["disk_size"], read(&a).len() as u64, "{info}");
    let v = ds_json(&["image", "verify", s(&r)]);
    assert_eq!(v["format"], "raw", "{v}");
    // Restore writes R.raw's own bytes (the old code wrote the disk inside it).
    let out = d.join("out");
    let j = ds_json(&["image", "restore", s(&r), s(&out)]);
    assert_eq!(j["format"], "raw", "{j}");
    assert_eq!(read(&out), read(&r), "restore of a raw image must give its bytes");
    // --format dsimg reads it as the dsimg it holds; the raw manifest beside it is not its disk's.
    let inner = d.join("inner");
    let j = ds_json(&["image", "restore", s(&r), s(&inner), "--format", "dsimg"]);
    assert_eq!(j["format"], "dsimg", "{j}");
    assert_eq!(read(&inner), read(&src));
    let i = ds_json(&["image", "info", s(&r), "--format", "dsimg"]);
    assert_eq!(i["disk_size"], 3 * MIB + 512, "{i}");
    ds_json(&["image", "verify", s(&r), "--format", "dsimg"]);
    // --format raw on a dsimg without a raw manifest: a raw image needs one.
    let o = ds(&[
        "image",
        "verify",
        s(&a),
        "--format",
        "raw",
        "--manifest",
        s(&d.join("none")),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("a raw image needs one"), "{}", stderr_of(&o));
    // The dsimg itself is still a dsimg (its own manifest beside it fits its disk).
    assert_eq!(ds_json(&["image", "info", s(&a)])["format"], "dsimg");
}

#[test]
fn a_raw_disk_that_begins_with_the_magic_but_is_no_dsimg_is_raw() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("disk");
    make_disk(&src, 2 * MIB, Data::Random, 12);
    src_magic(&src);
    let r = d.join("r.raw");
    ds_json(&["image", "create", s(&src), s(&r)]);
    ds_json(&["image", "verify", s(&r)]);
    let out = d.join("out");
    ds_json(&["image", "restore", s(&r), s(&out)]);
    assert_eq!(read(&out), read(&src));
    // Without its manifest it is taken for a (broken) dsimg: the error says so.
    std::fs::remove_file(d.join("r.raw.manifest")).unwrap();
    let o = ds(&["image", "verify", s(&r)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr_of(&o));
}

fn src_magic(p: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(b"DSIMG\0\r\n", 0).unwrap();
}

#[test]
fn magic_and_a_manifest_that_fits_neither_reading_is_a_mismatch() {
    let dir = scratch();
    let d = dir.path();
    let (_, a) = small_dsimg(d);
    let other = d.join("other");
    make_disk(&other, MIB, Data::Mixed, 13);
    let o_img = d.join("other.raw");
    ds_json(&["image", "create", s(&other), s(&o_img)]);
    let m = d.join("other.raw.manifest");
    for op in ["verify", "info", "restore"] {
        let dest = d.join("dest");
        let mut args = vec!["image", op, s(&a), "--manifest", s(&m), "--json"];
        if op == "restore" {
            args.insert(3, s(&dest));
        }
        let o = ds(&args);
        assert_eq!(o.status.code(), Some(1), "{op}: {}", stderr_of(&o));
        let e = stderr_of(&o);
        assert!(e.contains("does not belong") && e.contains("--format"), "{op}: {e}");
        assert!(!dest.exists());
    }
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
        let (o, rss) = ds_rss(&image_op(op, &img, &dest));
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
        let (o, rss) = ds_rss(&image_op(op, &img, &dest));
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

// ---------------------------------------------------------------------------------------------
// F5: restore and info check a dsimg's manifest as verify does.

#[test]
fn restore_and_info_of_a_dsimg_check_its_manifest_before_writing() {
    let dir = scratch();
    let d = dir.path();
    let (src, a) = small_dsimg(d);
    // Another disk of the same size: its manifest fits the header but not the digest.
    let b_src = d.join("b");
    make_disk(&b_src, 3 * MIB + 512, Data::Mixed, 14);
    let b = d.join("B.dsimg");
    ds_json(&["image", "create", s(&b_src), s(&b), "--format", "dsimg"]);
    let wrong = d.join("B.dsimg.manifest");
    let dest = d.join("dest");
    for (named, args) in [
        (true, vec!["image", "restore", s(&a), s(&dest), "--manifest", s(&wrong)]),
        (true, vec!["image", "info", s(&a), "--manifest", s(&wrong)]),
        (
            false,
            vec!["image", "restore", s(&a), s(&dest), "--manifest", s(&d.join("missing"))],
        ),
        (false, vec!["image", "info", s(&a), "--manifest", s(&d.join("missing"))]),
    ] {
        let o = ds(&args);
        let e = stderr_of(&o);
        assert!(!o.status.success(), "{args:?} ignored the manifest");
        if named {
            assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
            assert!(e.contains("does not belong"), "{args:?}: {e}");
        } else {
            assert!(e.contains("missing"), "{args:?}: {e}");
        }
        assert!(!dest.exists(), "{args:?} wrote its destination");
    }
    // The manifest beside it, swapped for the wrong one, is checked too.
    std::fs::copy(&wrong, d.join("A.dsimg.manifest")).unwrap();
    let o = ds(&["image", "restore", s(&a), s(&dest)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
    assert!(!dest.exists());
    // Its own manifest passes and is reported.
    std::fs::remove_file(d.join("A.dsimg.manifest")).unwrap();
    ds_json(&["image", "create", s(&src), s(&a), "--format", "dsimg", "--force"]);
    let j = ds_json(&["image", "restore", s(&a), s(&dest)]);
    assert_eq!(j["manifest"], s(&d.join("A.dsimg.manifest")), "{j}");
    let i = ds_json(&["image", "info", s(&a)]);
    assert_eq!(i["manifest"], s(&d.join("A.dsimg.manifest")), "{i}");
}

// ---------------------------------------------------------------------------------------------
// F6: one descriptor for the structure, the manifest and the frames.

#[test]
fn an_image_replaced_during_restore_is_never_mixed_with_another() {
    let dir = scratch();
    let d = dir.path();
    let (src, a) = small_dsimg(d);
    std::fs::remove_file(d.join("A.dsimg.manifest")).unwrap();
    let other = d.join("other");
    make_disk(&other, 4 * MIB, Data::Random, 15);
    let b = d.join("B.dsimg");
    ds_json(&[
        "image",
        "create",
        s(&other),
        s(&b),
        "--format",
        "dsimg",
        "--compress",
        "none",
    ]);
    std::fs::remove_file(d.join("B.dsimg.manifest")).unwrap();
    let keep_a = d.join("a.keep");
    std::fs::copy(&a, &keep_a).unwrap();
    let (want_a, want_b) = (read(&src), read(&other));
    // Put A's and B's files in turn under the name A.dsimg, as fast as renames go, while
    // restores of that name run: each writes one of the two disks whole, or fails; never a mix
    // (the old code opened the path three times and wrote B's size filled with A's frames).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, d, a) = (stop.clone(), d.to_owned(), a.clone());
        std::thread::spawn(move || {
            let tmp = d.join(".swap");
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let from = if n.is_multiple_of(2) { &b } else { &keep_a };
                let _ = std::fs::remove_file(&tmp);
                std::fs::hard_link(from, &tmp).unwrap();
                std::fs::rename(&tmp, &a).unwrap();
                n += 1;
            }
        })
    };
    let (mut restored, runs) = (0, 200);
    for i in 0..runs {
        let dest = d.join(format!("dest{i}"));
        let o = ds(&["image", "restore", s(&a), s(&dest)]);
        if o.status.success() {
            let got = read(&dest);
            assert!(
                got == want_a || got == want_b,
                "restore {i} wrote neither disk ({} bytes)",
                got.len()
            );
            restored += 1;
            std::fs::remove_file(&dest).unwrap();
        } else {
            assert!(!dest.exists(), "a failed restore left {}", dest.display());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    eprintln!("{restored} of {runs} restores completed while the image was swapped");
    assert!(restored > 0, "no restore completed");
}

// ---------------------------------------------------------------------------------------------
// F7: what info says of what it did not check, and appended bytes named as such.

#[test]
fn info_labels_the_digest_unverified_and_appended_bytes_are_named() {
    let dir = scratch();
    let d = dir.path();
    let (_, a) = small_dsimg(d);
    let (ok, out, _) = ds_text(&["image", "info", s(&a)]);
    assert!(ok);
    assert!(out.contains("recorded in the image's trailer, not verified"), "{out}");
    let len = read(&a).len() as u64;
    let f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
    f.write_all_at(&[0u8; 100], len).unwrap();
    for op in ["info", "verify"] {
        let o = ds(&["image", op, s(&a)]);
        let e = stderr_of(&o);
        assert_eq!(o.status.code(), Some(3), "{op}: {e}");
        assert!(
            e.contains(&format!(
                "100 bytes appended after the trailer (the image ends at byte {len}"
            )),
            "{op}: {e}"
        );
        assert!(!e.contains("truncated"), "{op}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// F8: the streaming reader keeps no per-frame state.

/// A dsimg of `chunks` 4 KiB zero chunks (64-byte frames without payload: the most frames a
/// file can hold per byte), written as the engine writes one.
fn zero_dsimg(path: &Path, chunks: u64) {
    use diskstream_engine::digest::Checksum;
    use diskstream_engine::format::writer::ImageWriter;
    use diskstream_engine::format::{FrameKind, Header};
    let header = Header {
        disk_size: chunks * 4096,
        chunk_size: 4096,
        checksum: Checksum::Blake3,
    };
    let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut w = ImageWriter::new(out, header).unwrap();
    let zero = Checksum::Blake3.digest(&[0u8; 4096]);
    for i in 0..chunks {
        w.push(i, FrameKind::Zero, &zero, &[]).unwrap();
    }
    let (out, _) = w.finish().unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
}

#[test]
fn verify_and_restore_of_millions_of_zero_frames_use_flat_memory() {
    let dir = scratch();
    let d = dir.path();
    let mut peak = Vec::new();
    for chunks in [1u64 << 14, 1 << 22] {
        let img = d.join(format!("zeros-{chunks}.dsimg"));
        zero_dsimg(&img, chunks);
        let out = d.join("out");
        let mut rss = Vec::new();
        for args in [
            vec!["image", "verify", s(&img)],
            vec!["image", "restore", s(&img), s(&out), "--force"],
        ] {
            let (o, r) = ds_rss(&args);
            assert!(o.status.success(), "{args:?}: {}", stderr_of(&o));
            rss.push(r);
        }
        assert_eq!(std::fs::metadata(&out).unwrap().len(), chunks * 4096);
        std::fs::remove_file(&img).unwrap();
        peak.push(rss);
    }
    eprintln!(
        "peak RSS (verify, restore) in MiB: 16 Ki frames {:?}, 4 Mi frames {:?}",
        peak[0].iter().map(|r| r >> 20).collect::<Vec<_>>(),
        peak[1].iter().map(|r| r >> 20).collect::<Vec<_>>()
    );
    // The old reader kept 16 bytes per frame: 64 MiB more for 4 Mi frames than for 16 Ki.
    for (op, (small, big)) in ["verify", "restore"].iter().zip(peak[0].iter().zip(&peak[1])) {
        assert!(
            *big < small + 16 * MIB && *big < RSS_LIMIT,
            "{op}: peak RSS {} MiB for 4 Mi frames, {} MiB for 16 Ki",
            big >> 20,
            small >> 20
        );
    }
}
