//! What diskstream 0.1.0 wrote still reads: the version-1 fixtures (`tests/fixtures/v1/`, made by
//! the 0.1.0 release and never rewritten) verify and restore byte-identically through today's
//! code, on the parallel path and the one-thread reference path, and any flipped byte in them is
//! still detected.

use std::path::{Path, PathBuf};

use diskstream_engine::digest::{sha256, Checksum};
use diskstream_engine::format::reader::check_bytes;
use diskstream_engine::manifest::Manifest;
use diskstream_engine::ops::{self, Progress, RestoreOptions, Tuning, VerifyOptions};

/// SHA-256 of the fixture disk (fixtures/v1/README.md).
const DISK_SHA256: &str = "753f2885a602dc702ca7ca131dde94f748ece938be46f22aa0df95cc22da3ecd";
/// The image digest 0.1.0 printed for it (SHA-256 chunk digests, 64 KiB chunks).
const IMAGE_DIGEST: &str = "636628b9934053548ed4a2f2ce00df57fe5195c87e8e6a19554f40b18ce00e2a";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(name)
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dstest-compat-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn paths() -> [Tuning; 2] {
    [
        Tuning {
            threads: 4,
            ..Tuning::default()
        },
        Tuning {
            sequential: true,
            ..Tuning::default()
        },
    ]
}

fn verify_options(tuning: &Tuning) -> VerifyOptions {
    VerifyOptions {
        tuning: tuning.clone(),
        ..VerifyOptions::default()
    }
}

#[test]
fn v1_dsimg_and_raw_verify_and_restore_byte_identically() {
    let dir = scratch();
    let disk = std::fs::read(fixture("disk.raw")).unwrap();
    assert_eq!(hex::encode(sha256(&disk)), DISK_SHA256, "the fixture itself changed");
    for o in paths() {
        for image in ["disk.dsimg", "disk.raw"] {
            // Raw images are read next to their manifest: work on copies, so nothing in the
            // source tree is ever written.
            let img = dir.path().join(image);
            std::fs::copy(fixture(image), &img).unwrap();
            if image == "disk.raw" {
                std::fs::copy(fixture("disk.raw.manifest"), dir.path().join("disk.raw.manifest")).unwrap();
            }
            let v = ops::verify(&img, &verify_options(&o), &Progress::default()).unwrap();
            assert_eq!(v.checksum, Checksum::Sha256, "{image}");
            assert_eq!(v.digest, IMAGE_DIGEST, "{image}");
            let dest = dir.path().join("restored");
            let _ = std::fs::remove_file(&dest);
            let r = ops::restore(
                &img,
                &dest,
                &RestoreOptions {
                    tuning: o.clone(),
                    ..RestoreOptions::default()
                },
                &Progress::default(),
            )
            .unwrap();
            assert_eq!(r.digest, IMAGE_DIGEST);
            let back = std::fs::read(&dest).unwrap();
            assert!(
                back == disk,
                "{image} restored differently (sequential: {})",
                o.sequential
            );
        }
    }
}

#[test]
fn v1_manifest_parses_as_sha256_and_re_encodes_to_the_same_bytes() {
    let text = std::fs::read(fixture("disk.raw.manifest")).unwrap();
    let m = Manifest::parse(&text, Path::new("disk.raw.manifest")).unwrap();
    assert_eq!((m.version, m.checksum), (1, Checksum::Sha256));
    assert_eq!(m.encode().as_bytes(), &text[..]);
    assert_eq!(hex::encode(m.image_digest()), IMAGE_DIGEST);
}

#[test]
fn every_flipped_byte_of_the_v1_dsimg_and_manifest_is_detected() {
    let img = std::fs::read(fixture("disk.dsimg")).unwrap();
    assert!(check_bytes(&img).is_ok());
    for i in 0..img.len() {
        let mut bad = img.clone();
        bad[i] ^= 0x10;
        assert!(check_bytes(&bad).is_err(), "flip at byte {i} of disk.dsimg accepted");
    }
    let text = std::fs::read(fixture("disk.raw.manifest")).unwrap();
    for i in 0..text.len() {
        let mut bad = text.clone();
        bad[i] ^= 0x01;
        assert!(
            Manifest::parse(&bad, Path::new("m")).is_err(),
            "flip at byte {i} of the manifest accepted"
        );
    }
}

#[test]
fn flipped_bytes_of_the_v1_images_fail_verify_on_both_paths() {
    let dir = scratch();
    std::fs::copy(fixture("disk.raw.manifest"), dir.path().join("disk.raw.manifest")).unwrap();
    for name in ["disk.dsimg", "disk.raw"] {
        let pristine = std::fs::read(fixture(name)).unwrap();
        let img = dir.path().join(name);
        // A spread of positions: headers, payloads, the zero chunk, index and trailer.
        let step = pristine.len() / 97;
        for at in (0..pristine.len()).step_by(step).chain([pristine.len() - 1]) {
            let mut bad = pristine.clone();
            bad[at] ^= 0x04;
            std::fs::write(&img, &bad).unwrap();
            for o in paths() {
                let e = ops::verify(&img, &verify_options(&o), &Progress::default())
                    .expect_err(&format!("{name}: flip at {at} accepted (sequential: {})", o.sequential));
                // A flipped magic makes it no dsimg at all (then a raw image without a manifest):
                // an error, but not one about damaged data.
                let magic = name.ends_with("dsimg") && at < 8;
                assert!(e.is_integrity() || magic, "{name} at {at}: {e}");
            }
        }
    }
}
