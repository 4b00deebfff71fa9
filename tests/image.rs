//! End-to-end tests of `diskstream image`: round trips on files and real loop devices, the fast
//! path against the reference path, corruption and truncation, and proof that O_DIRECT and
//! io_uring really ran.
//!
//! Module map: round trips (`roundtrip_*`), equivalence of paths (`paths_*`), damage
//! (`corrupt_*`, `truncated_*`), targets (`device_*`), and what ran (`really_*`).

mod common;

use std::path::Path;

use common::*;

const MIB: u64 = 1 << 20;

fn create(src: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut a = vec!["image", "create", s(src), s(out)];
    a.extend_from_slice(extra);
    ds_json(&a)
}

fn roundtrip(src: &Path, dir: &Path, format: &str, extra: &[&str]) {
    let img = dir.join(format!("img.{format}"));
    let back = dir.join(format!("back.{format}"));
    let mut args = vec!["--format", format];
    args.extend_from_slice(extra);
    let c = create(src, &img, &args);
    let v = ds_json(&["image", "verify", s(&img)]);
    assert_eq!(c["digest"], v["digest"]);
    let r = ds_json(&["image", "restore", s(&img), s(&back)]);
    assert_eq!(r["digest"], c["digest"]);
    assert_same_bytes(src, &back);
    let _ = std::fs::remove_file(&img);
    // The manifest too: an existing manifest, like an existing image, is replaced only with --force.
    let _ = std::fs::remove_file(dir.join(format!("img.{format}.manifest")));
    let _ = std::fs::remove_file(&back);
}

#[test]
fn roundtrip_all_data_kinds_and_odd_sizes() {
    let dir = scratch();
    let sizes = [0, 512, 4096, MIB + 512, 9 * MIB + 4096 + 512, 5 * MIB + 100];
    for (i, &size) in sizes.iter().enumerate() {
        for data in [Data::Random, Data::Zeros, Data::Mixed, Data::Sparse] {
            let src = dir.path().join("src");
            make_disk(&src, size, data, i as u64);
            for format in ["raw", "dsimg"] {
                roundtrip(&src, dir.path(), format, &["--chunk-size", "1M"]);
            }
        }
    }
}

#[test]
fn roundtrip_default_chunk_and_compression_off() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 13 * MIB + 4096, Data::Mixed, 7);
    roundtrip(&src, dir.path(), "raw", &[]);
    roundtrip(&src, dir.path(), "dsimg", &[]);
    roundtrip(&src, dir.path(), "dsimg", &["--compress", "none"]);
}

#[test]
fn roundtrip_sparse_source_stays_sparse_and_holes_are_not_read() {
    let dir = scratch();
    let src = dir.path().join("sparse");
    // 64 MiB with data in one MiB of every three.
    make_disk(&src, 64 * MIB, Data::Sparse, 3);
    let out = dir.path().join("out.raw");
    let c = create(&src, &out, &["--chunk-size", "4M"]);
    let read = c["bytes_read"].as_u64().unwrap();
    assert!(
        read <= allocated(&src) + MIB,
        "read {read} bytes of a file with {} allocated",
        allocated(&src)
    );
    assert!(
        allocated(&out) <= allocated(&src) + MIB,
        "output is not sparse: {} allocated",
        allocated(&out)
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * MIB);
    let zeros = dir.path().join("zeros");
    make_disk(&zeros, 16 * MIB, Data::Zeros, 0);
    let zout = dir.path().join("zeros.raw");
    let z = create(&zeros, &zout, &["--chunk-size", "4M"]);
    assert_eq!(z["zero_chunks"], 4);
    assert_eq!(allocated(&zout), 0, "all-zero disk must produce an all-hole file");
    let d = create(&zeros, &dir.path().join("zeros.dsimg"), &["--format", "dsimg"]);
    assert_eq!(d["bytes_stored"], 0);
}

#[test]
fn roundtrip_loop_devices_direct_io_on_and_off() {
    let dir = scratch();
    let backing = dir.path().join("backing");
    make_disk(&backing, 24 * MIB + 512 * 3, Data::Mixed, 11);
    for direct_io in [true, false] {
        let lo = Loop::attach(&backing, direct_io);
        for format in ["raw", "dsimg"] {
            let img = dir.path().join(format!("lo.{format}"));
            let c = create(&lo.dev, &img, &["--format", format, "--force"]);
            assert_eq!(c["disk_size"], 24 * MIB + 1536);
            assert_eq!(c["input_direct"], true);
            let back = dir.path().join("lo.back");
            ds_json(&["image", "restore", s(&img), s(&back), "--force"]);
            assert_same_bytes(&backing, &back);
        }
    }
}

#[test]
fn paths_uring_pread_sequential_threads_and_chunk_sizes_agree() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 10 * MIB + 4096 + 512, Data::Mixed, 5);
    for chunk in ["4K", "64K", "1M", "4M"] {
        let mut reference: Option<(Vec<u8>, String, Vec<u8>)> = None;
        let variants: [&[&str]; 6] = [
            &["--sequential"],
            &["--backend", "pread", "--threads", "1"],
            &["--backend", "pread", "--threads", "4"],
            &["--backend", "uring", "--threads", "1", "--queue-depth", "1"],
            &["--backend", "uring", "--threads", "4", "--queue-depth", "16"],
            &["--backend", "uring", "--fixed-buffers", "--queue-depth", "4"],
        ];
        for v in variants {
            let raw = dir.path().join("p.raw");
            let img = dir.path().join("p.dsimg");
            let mut a = vec!["--chunk-size", chunk, "--force"];
            a.extend_from_slice(v);
            create(&src, &raw, &a);
            a.extend_from_slice(&["--format", "dsimg"]);
            create(&src, &img, &a);
            let got = (
                std::fs::read(&raw).unwrap(),
                std::fs::read_to_string(dir.path().join("p.raw.manifest")).unwrap(),
                std::fs::read(&img).unwrap(),
            );
            assert_eq!(
                std::fs::read_to_string(dir.path().join("p.dsimg.manifest")).unwrap(),
                got.1,
                "raw and dsimg manifests differ ({chunk}, {v:?})"
            );
            match &reference {
                None => reference = Some(got),
                Some(r) => {
                    assert!(r.0 == got.0, "raw image differs for {chunk} {v:?}");
                    assert!(r.1 == got.1, "manifest differs for {chunk} {v:?}");
                    assert!(r.2 == got.2, "dsimg differs for {chunk} {v:?}");
                }
            }
        }
    }
}

#[test]
fn corrupt_dsimg_any_single_byte_fails_verify_with_offset() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 3 * MIB + 4096, Data::Mixed, 9);
    let img = dir.path().join("i.dsimg");
    create(&src, &img, &["--format", "dsimg", "--chunk-size", "1M"]);
    let pristine = std::fs::read(&img).unwrap();
    let len = pristine.len() as u64;
    // Every structural byte at the start and end, and a spread of payload bytes.
    let mut positions: Vec<u64> = (0..200).chain(len - 400..len).collect();
    positions.extend((0..60).map(|i| 200 + i * (len - 600) / 60));
    for at in positions {
        std::fs::write(&img, &pristine).unwrap();
        flip_byte(&img, at, 0x40);
        let out = ds(&["image", "verify", s(&img)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "flip at {at} not detected: {err}");
        assert!(
            err.contains("offset") || err.contains("bytes"),
            "error does not say where: {err}"
        );
    }
}

#[test]
fn corrupt_raw_byte_names_the_chunk_and_offset() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 6 * MIB, Data::Random, 2);
    let img = dir.path().join("i.raw");
    create(&src, &img, &["--chunk-size", "1M"]);
    flip_byte(&img, 3 * MIB + 12345, 0x40);
    let out = ds(&["image", "verify", s(&img)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("chunk 3") && err.contains(&format!("bytes {}..{}", 3 * MIB, 4 * MIB)),
        "{err}"
    );
    // A flipped manifest byte is also caught.
    flip_byte(&img, 3 * MIB + 12345, 0x40);
    let m = dir.path().join("i.raw.manifest");
    flip_byte(&m, 150, 0x40);
    assert_eq!(ds(&["image", "verify", s(&img)]).status.code(), Some(3));
}

#[test]
fn truncated_dsimg_is_rejected_by_verify_info_and_restore() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 5 * MIB, Data::Mixed, 4);
    let img = dir.path().join("t.dsimg");
    create(&src, &img, &["--format", "dsimg", "--chunk-size", "1M"]);
    let full = std::fs::read(&img).unwrap();
    for cut in [0usize, 7, 64, 100, full.len() / 2, full.len() - 65, full.len() - 1] {
        std::fs::write(&img, &full[..cut]).unwrap();
        let dest = dir.path().join("dest");
        for args in [
            vec!["image", "verify", s(&img)],
            vec!["image", "info", s(&img)],
            vec!["image", "restore", s(&img), s(&dest)],
        ] {
            let out = ds(&args);
            assert!(!out.status.success(), "{args:?} accepted an image cut at {cut}");
        }
        assert!(
            !dest.exists(),
            "restore of an image cut at {cut} left a destination behind"
        );
    }
}

#[test]
fn device_target_restore_overwrites_old_content_with_zeroes() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 8 * MIB, Data::Sparse, 6);
    let img = dir.path().join("s.dsimg");
    create(&src, &img, &["--format", "dsimg", "--chunk-size", "1M"]);
    let backing = dir.path().join("dev");
    make_disk(&backing, 8 * MIB, Data::Random, 99); // Old content that must not survive.
    let lo = Loop::attach(&backing, true);
    // Writing over a device needs --force (tests/adversarial_image.rs checks the refusal).
    let r = ds_json(&["image", "restore", s(&img), lo.path(), "--force"]);
    assert_eq!(r["output_direct"], true);
    assert_eq!(read_prefix(&lo.dev, 8 * MIB), std::fs::read(&src).unwrap());
    // A target that is too small is refused before anything is written.
    let small = dir.path().join("small");
    make_disk(&small, 4 * MIB, Data::Random, 1);
    let before = std::fs::read(&small).unwrap();
    let lo2 = Loop::attach(&small, true);
    let out = ds(&["image", "restore", s(&img), lo2.path(), "--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("target device holds"));
    drop(lo2);
    assert_eq!(std::fs::read(&small).unwrap(), before);
}

#[test]
fn device_raw_create_needs_a_manifest_path_and_existing_files_need_force() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 2 * MIB, Data::Mixed, 8);
    let out = dir.path().join("exists");
    std::fs::write(&out, b"precious").unwrap();
    let r = ds(&["image", "create", s(&src), s(&out)]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let backing = dir.path().join("dev");
    make_disk(&backing, 2 * MIB, Data::Zeros, 0);
    let lo = Loop::attach(&backing, true);
    let r = ds(&["image", "create", s(&src), lo.path()]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("--manifest"));
    let m = dir.path().join("dev.manifest");
    ds_json(&["image", "create", s(&src), lo.path(), "--manifest", s(&m), "--force"]);
    assert_eq!(read_prefix(&lo.dev, 2 * MIB), std::fs::read(&src).unwrap());
}

#[test]
fn really_o_direct_and_io_uring_ran() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 8 * MIB, Data::Random, 1);
    let c = create(&src, &dir.path().join("o.raw"), &[]);
    assert_eq!(c["backend"], "io_uring");
    assert_eq!(c["write_backend"], "io_uring");
    assert_eq!(c["input_direct"], true);
    assert_eq!(c["output_direct"], true);
    assert!(c["read_requests"].as_u64().unwrap() >= 2);
    assert!(c["write_requests"].as_u64().unwrap() >= 2);
    let p = create(&src, &dir.path().join("p.raw"), &["--sequential"]);
    assert_eq!(p["backend"], "pread");
    // The buffers' pages, as the engine found them (hugetlb only when asked: see engine/tests/hugetlb.rs).
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let want = if thp.is_empty() || thp.contains("[never]") {
        "4k"
    } else {
        "thp"
    };
    assert_eq!(c["buffer_pages"], want);
}

#[test]
fn really_ramfs_source_falls_back_with_a_warning() {
    // ramfs has no direct I/O (tmpfs has had it since Linux 6.6), so it stands in for any file
    // system that refuses O_DIRECT.
    let mnt = Mount::ramfs();
    let src = mnt.dir.path().join("src");
    make_disk(&src, MIB, Data::Mixed, 1);
    let out = scratch();
    let c = create(&src, &out.path().join("o.raw"), &[]);
    assert_eq!(c["input_direct"], false);
    let w = c["warnings"].to_string();
    assert!(w.contains("refuses O_DIRECT"), "{w}");
    let back = out.path().join("back");
    ds_json(&["image", "restore", s(&out.path().join("o.raw")), s(&back)]);
    assert_same_bytes(&src, &back);
}

#[test]
fn usage_errors_are_clear() {
    let r = ds(&["image", "create", "/nonexistent/disk", "/tmp/x"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("/nonexistent/disk"));
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, MIB, Data::Mixed, 1);
    let r = ds(&[
        "image",
        "create",
        s(&src),
        s(&dir.path().join("o")),
        "--chunk-size",
        "3000",
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("power of two"));
    let r = ds(&["image", "verify", s(&src)]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("manifest"));
}
