//! End-to-end tests of the chunk digest algorithm as a recorded property: `--checksum` on create
//! and scan, the algorithm in every JSON result, manifest and image header; the parallel checking
//! path of verify and restore against the one-thread reference; damage found on both; and the
//! 0.1.0 fixtures through the binary.

mod common;

use std::path::Path;

use common::*;

const MIB: u64 = 1 << 20;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("engine/tests/fixtures/v1")
        .join(name)
}

#[test]
fn both_checksums_round_trip_and_are_reported_everywhere() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 6 * MIB + 4096 + 100, Data::Mixed, 11);
    let mut digests = Vec::new();
    for sum in ["blake3", "sha256"] {
        for format in ["raw", "dsimg"] {
            let img = dir.path().join(format!("{sum}.{format}"));
            let c = ds_json(&[
                "image",
                "create",
                s(&src),
                s(&img),
                "--format",
                format,
                "--checksum",
                sum,
            ]);
            assert_eq!(c["checksum"], sum, "create {format}");
            let manifest = std::fs::read_to_string(dir.path().join(format!("{sum}.{format}.manifest"))).unwrap();
            assert!(
                manifest.starts_with(&format!("diskstream-manifest v2\nchecksum {sum}\n")),
                "{manifest}"
            );
            assert!(manifest.contains(&format!("\nimage-{sum} {}\n", c["digest"].as_str().unwrap())));
            if format == "dsimg" {
                let head = std::fs::read(&img).unwrap();
                assert_eq!(&head[8..10], &[2, 0], "dsimg version");
                assert_eq!(head[28], if sum == "sha256" { 1 } else { 2 }, "algorithm byte");
            }
            let i = ds_json(&["image", "info", s(&img)]);
            assert_eq!(i["checksum"], sum);
            assert_eq!(i["digest"], c["digest"]);
            let v = ds_json(&["image", "verify", s(&img)]);
            assert_eq!(
                (v["checksum"].clone(), v["digest"].clone()),
                (c["checksum"].clone(), c["digest"].clone())
            );
            let back = dir.path().join(format!("back-{sum}-{format}"));
            let r = ds_json(&["image", "restore", s(&img), s(&back)]);
            assert_eq!(r["checksum"], sum);
            assert_same_bytes(&src, &back);
            let scan = ds_json(&["image", "scan", s(&src), "--checksum", sum]);
            assert_eq!(scan["digest"], c["digest"], "scan and create agree");
            digests.push((sum, c["digest"].as_str().unwrap().to_owned()));
        }
    }
    // The digest depends on the algorithm, not on the format.
    assert_eq!(digests[0].1, digests[1].1);
    assert_eq!(digests[2].1, digests[3].1);
    assert_ne!(digests[0].1, digests[2].1);
    // The default is BLAKE3.
    let img = dir.path().join("default.dsimg");
    let c = ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    assert_eq!(c["checksum"], "blake3");
    let out = ds(&[
        "image",
        "create",
        s(&src),
        s(&dir.path().join("x")),
        "--checksum",
        "md5",
    ]);
    assert_eq!(out.status.code(), Some(2), "an unknown algorithm is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("md5"));
}

#[test]
fn parallel_verify_and_restore_match_the_reference_path() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 9 * MIB + 4096 + 512, Data::Sparse, 3);
    for sum in ["blake3", "sha256"] {
        for compress in ["lz4", "none"] {
            for chunk in ["64K", "1M"] {
                let img = dir.path().join("p.dsimg");
                let c = ds_json(&[
                    "image",
                    "create",
                    s(&src),
                    s(&img),
                    "--format",
                    "dsimg",
                    "--force",
                    "--checksum",
                    sum,
                    "--compress",
                    compress,
                    "--chunk-size",
                    chunk,
                ]);
                let variants: [&[&str]; 4] = [
                    &["--sequential"],
                    &["--threads", "1"],
                    &["--threads", "2"],
                    &["--threads", "5", "--queue-depth", "3"],
                ];
                for v in variants {
                    let mut a = vec!["image", "verify", s(&img)];
                    a.extend_from_slice(v);
                    assert_eq!(
                        ds_json(&a)["digest"],
                        c["digest"],
                        "verify {sum} {compress} {chunk} {v:?}"
                    );
                    let back = dir.path().join("back");
                    let _ = std::fs::remove_file(&back);
                    let mut a = vec!["image", "restore", s(&img), s(&back)];
                    a.extend_from_slice(v);
                    ds_json(&a);
                    assert_same_bytes(&src, &back);
                }
            }
        }
    }
}

#[test]
fn damage_is_found_by_the_parallel_and_the_reference_path() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 8 * MIB, Data::Mixed, 21);
    let img = dir.path().join("d.dsimg");
    ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    let pristine = std::fs::read(&img).unwrap();
    let len = pristine.len() as u64;
    for at in [70, 64 + 64 + 1000, len / 3, len / 2, len - 200, len - 10] {
        std::fs::write(&img, &pristine).unwrap();
        flip_byte(&img, at, 0x08);
        for v in [&["--sequential"][..], &["--threads", "3"][..]] {
            let mut a = vec!["image", "verify", s(&img)];
            a.extend_from_slice(v);
            let out = ds(&a);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "verify {v:?}: flip at {at}: {err}");
            let dest = dir.path().join("dest");
            let mut a = vec!["image", "restore", s(&img), s(&dest)];
            a.extend_from_slice(v);
            let out = ds(&a);
            assert_eq!(out.status.code(), Some(3), "restore {v:?}: flip at {at}");
            assert!(!dest.exists(), "a failed restore left {}", dest.display());
        }
    }
}

#[test]
fn the_0_1_0_fixtures_verify_and_restore_through_the_binary() {
    let dir = scratch();
    for name in ["disk.dsimg", "disk.raw", "disk.raw.manifest"] {
        std::fs::copy(fixture(name), dir.path().join(name)).unwrap();
    }
    for name in ["disk.dsimg", "disk.raw"] {
        let img = dir.path().join(name);
        let v = ds_json(&["image", "verify", s(&img)]);
        assert_eq!(v["checksum"], "sha256");
        let back = dir.path().join(format!("{name}.back"));
        ds_json(&["image", "restore", s(&img), s(&back)]);
        assert_same_bytes(&fixture("disk.raw"), &back);
        let i = ds_json(&["image", "info", s(&img)]);
        assert_eq!(i["checksum"], "sha256");
    }
}
