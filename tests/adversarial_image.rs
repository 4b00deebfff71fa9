//! Adversarial tests of `diskstream image` (issue 8): each test encodes a defect found by trying
//! the commands as a careless or hostile user would, and failed before its fix. Mounted and
//! unforced block devices, manifests that would clobber the source or the image, hostile
//! manifests (endless, huge) with the child's peak RSS measured, FIFOs and `/dev/stdin` as inputs,
//! a commit cut between its two renames, leftovers of killed runs, and kill loops (SIGINT,
//! SIGTERM and SIGKILL at seeded pseudo-random moments) over `create` (raw and dsimg) and
//! `restore`.
//!
//! Needs root (loop devices, mkfs.ext4, mount) and `/usr/bin/time` (the project's test script
//! installs it).

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use diskstream_engine::sample::Rng;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_diskstream");

/// An ext4 file system made on a device and mounted, unmounted on drop (also on failure).
struct MountedDev {
    dir: tempfile::TempDir,
}

impl MountedDev {
    fn ext4(dev: &Path) -> Self {
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(dev)
            .output()
            .expect("mkfs.ext4 (install e2fsprogs)");
        assert!(out.status.success(), "mkfs.ext4: {}", stderr_of(&out));
        let dir = scratch();
        let out = Command::new("mount").arg(dev).arg(dir.path()).output().expect("mount");
        assert!(out.status.success(), "mount: {}", stderr_of(&out));
        Self { dir }
    }
}

impl Drop for MountedDev {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A FIFO made with mkfifo.
fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(st.success());
}

// ---------------------------------------------------------------------------------------------
// 1, 12b: block devices.

#[test]
fn device_mounted_ext4_is_refused_by_restore_and_create() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 32 * MIB, Data::Mixed, 1);
    let img = dir.path().join("s.dsimg");
    ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    let backing = dir.path().join("dev");
    std::fs::File::create(&backing).unwrap().set_len(32 * MIB).unwrap();
    let lo = Loop::attach(&backing, true);
    let m = MountedDev::ext4(&lo.dev);
    let canary = m.dir.path().join("canary");
    std::fs::write(&canary, b"still here").unwrap();
    // Even with --force: a mounted device is claimed, and O_EXCL refuses it.
    let r = ds(&["image", "restore", s(&img), lo.path(), "--force"]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "restore onto a mounted device: {}",
        stderr_of(&r)
    );
    assert!(
        stderr_of(&r).contains(&format!(
            "{}: device is in use (mounted or claimed); refusing to write",
            lo.path()
        )),
        "{}",
        stderr_of(&r)
    );
    let man = dir.path().join("dev.manifest");
    let r = ds(&["image", "create", s(&src), lo.path(), "--manifest", s(&man), "--force"]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "create onto a mounted device: {}",
        stderr_of(&r)
    );
    assert!(stderr_of(&r).contains("device is in use"), "{}", stderr_of(&r));
    assert!(!man.exists(), "a refused create left a manifest");
    assert!(partials(dir.path()).is_empty());
    assert_eq!(std::fs::read(&canary).unwrap(), b"still here");
    drop(m);
    let fsck = Command::new("e2fsck").arg("-fn").arg(&lo.dev).output().expect("e2fsck");
    assert!(fsck.status.success(), "e2fsck after the refusals: {}", stderr_of(&fsck));
}

#[test]
fn device_needs_force_for_restore_and_create_and_never_takes_a_dsimg() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 8 * MIB, Data::Mixed, 2);
    let img = dir.path().join("s.dsimg");
    ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    let backing = dir.path().join("dev");
    make_disk(&backing, 8 * MIB, Data::Random, 3);
    let lo = Loop::attach(&backing, true);
    let before = read_prefix(&lo.dev, 8 * MIB);
    let r = ds(&["image", "restore", s(&img), lo.path()]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr_of(&r).contains(lo.path()) && stderr_of(&r).contains("--force"),
        "{}",
        stderr_of(&r)
    );
    let man = dir.path().join("dev.manifest");
    let r = ds(&["image", "create", s(&src), lo.path(), "--manifest", s(&man)]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr_of(&r).contains("is a block device") && stderr_of(&r).contains("--force"),
        "{}",
        stderr_of(&r)
    );
    // A dsimg cannot go to a device: refused before the first write (it failed mid-write with EINVAL).
    let r = ds(&[
        "image",
        "create",
        s(&src),
        lo.path(),
        "--manifest",
        s(&man),
        "--format",
        "dsimg",
        "--force",
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr_of(&r).contains("dsimg") && stderr_of(&r).contains("cannot be written to a device"),
        "{}",
        stderr_of(&r)
    );
    assert!(
        read_prefix(&lo.dev, 8 * MIB) == before,
        "a refused command wrote to the device"
    );
    assert!(!man.exists());
    // With --force both work.
    ds_json(&["image", "restore", s(&img), lo.path(), "--force"]);
    assert_eq!(read_prefix(&lo.dev, 8 * MIB), std::fs::read(&src).unwrap());
    make_disk(&backing, 8 * MIB, Data::Random, 4);
    ds_json(&["image", "create", s(&src), lo.path(), "--manifest", s(&man), "--force"]);
    assert_eq!(read_prefix(&lo.dev, 8 * MIB), std::fs::read(&src).unwrap());
    ds_json(&["image", "verify", lo.path(), "--manifest", s(&man)]);
    // Without --manifest, a device's raw image has none beside it: said so (not "output").
    for cmd in ["verify", "info"] {
        let r = ds(&["image", cmd, lo.path()]);
        let e = stderr_of(&r);
        assert_eq!(r.status.code(), Some(1), "{cmd}: {e}");
        assert!(
            e.contains("has no manifest beside it") && !e.contains("device output"),
            "{cmd}: {e}"
        );
    }
    // A dsimg copied onto a device (dd) is refused as such, not reported as a damaged image.
    let bytes = std::fs::read(&img).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&lo.dev)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    for cmd in ["verify", "info"] {
        let r = ds(&["image", cmd, lo.path(), "--format", "dsimg"]);
        let e = stderr_of(&r);
        assert_eq!(r.status.code(), Some(1), "{cmd}: {e}");
        assert!(
            e.contains("a dsimg image is read only from a regular file"),
            "{cmd}: {e}"
        );
    }
}

/// A raw image cut short while `verify` or `restore` reads it is damaged data (exit 3,
/// `integrity`, naming the image), as one found short before the run is; it was an I/O error
/// (exit 1) about a "source".
#[test]
fn a_raw_image_truncated_while_it_is_read_is_an_integrity_error() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 64 * MIB, Data::Random, 21);
    for cmd in ["verify", "restore"] {
        let img = dir.path().join(format!("{cmd}.raw"));
        ds_json(&["image", "create", s(&src), s(&img), "--compress", "none"]);
        let out = dir.path().join("restored");
        let mut args = vec!["image", cmd, s(&img)];
        if cmd == "restore" {
            args.push(s(&out));
        }
        args.extend(["--bwlimit", "16MiB", "--json"]);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(20 * MIB)
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        assert_eq!(o.status.code(), Some(3), "{cmd}: {v}");
        assert_eq!(v["kind"], "integrity", "{cmd}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains(s(&img)) && e.contains("truncated while it was read"),
            "{cmd}: {e}"
        );
        assert!(!out.exists(), "{cmd}: a partial restore was left");
    }
}

// ---------------------------------------------------------------------------------------------
// 2: --manifest never clobbers.

#[test]
fn manifest_never_clobbers_the_source_the_output_links_devices_or_fifos() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 8 * MIB, Data::Mixed, 5);
    let src_sha = sha(&src);
    let out = d.join("o.raw");
    ds_json(&["image", "create", s(&src), s(&out)]);
    let out_sha = sha(&out);
    std::fs::hard_link(&src, d.join("hard")).unwrap();
    std::os::unix::fs::symlink(&src, d.join("soft")).unwrap();
    std::os::unix::fs::symlink("src", d.join("soft-rel")).unwrap();
    mkfifo(&d.join("fifo"));
    std::fs::create_dir(d.join("adir")).unwrap();
    let backing = d.join("devback");
    make_disk(&backing, 4 * MIB, Data::Random, 6);
    let lo = Loop::attach(&backing, true);
    let dev_before = read_prefix(&lo.dev, 4 * MIB);
    let cases: Vec<(String, &str)> = vec![
        (s(&src).to_string(), "is the input"),
        (s(&out).to_string(), "is the output"),
        (s(&d.join("hard")).to_string(), "is the input"),
        (s(&d.join("soft")).to_string(), "is the input"),
        (s(&d.join("soft-rel")).to_string(), "is the input"),
        (format!("{}/./src", s(d)), "is the input"),
        (lo.path().to_string(), "block device"),
        ("/dev/null".to_string(), "character device"),
        (s(&d.join("fifo")).to_string(), "FIFO"),
        (s(&d.join("adir")).to_string(), "directory"),
    ];
    for (m, want) in &cases {
        for force in [false, true] {
            // A new OUT, so that only the manifest can be refused (but OUT itself where it is the case).
            let fresh = d.join("new.raw");
            let o = if m.as_str() == s(&out) {
                out.as_path()
            } else {
                fresh.as_path()
            };
            let mut a = vec!["image", "create", s(&src), s(o), "--manifest", m.as_str()];
            if force {
                a.push("--force");
            }
            let r = ds_within(&a, Duration::from_secs(20));
            assert_eq!(r.status.code(), Some(1), "--manifest {m} (force {force}) was accepted");
            let e = stderr_of(&r);
            assert!(e.contains(want) && e.contains(m.as_str()), "--manifest {m}: {e}");
            assert_eq!(sha(&src), src_sha, "--manifest {m} changed the source");
            assert_eq!(sha(&out), out_sha, "--manifest {m} changed the output");
            assert!(!fresh.exists(), "--manifest {m}: a refused run wrote its image");
        }
    }
    assert!(
        read_prefix(&lo.dev, 4 * MIB) == dev_before,
        "a device manifest was written"
    );
    assert!(std::fs::metadata(d.join("fifo")).unwrap().file_type().is_fifo());
    assert!(partials(d).is_empty(), "refusals left partials: {:?}", partials(d));
    // An existing regular manifest: refused without --force, replaced with it.
    let other = d.join("other.raw");
    let m = d.join("m");
    std::fs::write(&m, b"precious").unwrap();
    let r = ds(&["image", "create", s(&src), s(&other), "--manifest", s(&m)]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr_of(&r).contains("--force"));
    assert_eq!(std::fs::read(&m).unwrap(), b"precious");
    assert!(!other.exists(), "a refused manifest still let the image be written");
    ds_json(&["image", "create", s(&src), s(&other), "--manifest", s(&m), "--force"]);
    ds_json(&["image", "verify", s(&other), "--manifest", s(&m)]);
    // OUT may not be the source either, and restore's DEST may not be its image or manifest.
    let r = ds(&["image", "create", s(&src), s(&d.join("hard")), "--force"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr_of(&r).contains("is the input"), "{}", stderr_of(&r));
    let r = ds(&["image", "restore", s(&out), s(&out), "--force"]);
    assert_eq!(r.status.code(), Some(1));
    let r = ds(&["image", "restore", s(&out), s(&d.join("o.raw.manifest")), "--force"]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(sha(&src), src_sha);
    assert_eq!(sha(&out), out_sha);
    ds_json(&["image", "verify", s(&out)]);
}

// ---------------------------------------------------------------------------------------------
// 8a, 10: bounded, regular inputs.

const RSS_LIMIT: u64 = 128 * MIB;

#[test]
fn hostile_manifests_are_refused_with_bounded_memory() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 64 * MIB, Data::Mixed, 7);
    let img = d.join("o.raw");
    ds_json(&["image", "create", s(&src), s(&img)]);
    let good = std::fs::read(d.join("o.raw.manifest")).unwrap();
    // A manifest that is a symlink to /dev/zero (it grew RSS ~1.5 GB/s until OOM).
    let zm = d.join("zero.manifest");
    std::os::unix::fs::symlink("/dev/zero", &zm).unwrap();
    for op in ["verify", "info"] {
        let (r, rss) = ds_rss(&["image", op, s(&img), "--manifest", s(&zm)]);
        assert_eq!(r.status.code(), Some(1), "{op}: {}", stderr_of(&r));
        assert!(stderr_of(&r).contains("character device"), "{op}: {}", stderr_of(&r));
        assert!(
            rss < RSS_LIMIT,
            "{op} with a /dev/zero manifest: peak RSS {} MiB",
            rss >> 20
        );
        eprintln!("{op} --manifest -> /dev/zero: refused, peak RSS {} KiB", rss >> 10);
    }
    // A 200 MB manifest: the real one followed by zeroes (sparse, cheap to make).
    let big = d.join("big.manifest");
    std::fs::write(&big, &good).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(200_000_000)
        .unwrap();
    for op in ["verify", "info", "restore"] {
        let mut a = vec!["image", op, s(&img), "--manifest", s(&big)];
        let dest = d.join("dest");
        if op == "restore" {
            a.insert(3, s(&dest));
        }
        let (r, rss) = ds_rss(&a);
        assert_eq!(r.status.code(), Some(3), "{op} 200 MB manifest: {}", stderr_of(&r));
        assert!(stderr_of(&r).contains("longer than"), "{op}: {}", stderr_of(&r));
        assert!(
            rss < RSS_LIMIT,
            "{op} with a 200 MB manifest: peak RSS {} MiB",
            rss >> 20
        );
        assert!(!dest.exists());
        eprintln!("{op} --manifest (200 MB): refused, peak RSS {} KiB", rss >> 10);
    }
    // A header that declares a huge disk is checked against the image before the rest is read.
    let mut huge = String::from_utf8(good.clone()).unwrap();
    huge = huge.replacen(
        "disk-size 67108864\nchunk-size 1048576\nchunk-count 64\n",
        "disk-size 1099511627776\nchunk-size 1048576\nchunk-count 1048576\n",
        1,
    );
    assert_ne!(huge.as_bytes(), &good[..], "the header edit did not apply");
    let hm = d.join("huge.manifest");
    std::fs::write(&hm, huge).unwrap();
    let (r, rss) = ds_rss(&["image", "verify", s(&img), "--manifest", s(&hm)]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr_of(&r));
    assert!(
        stderr_of(&r).contains("its manifest says 1099511627776"),
        "{}",
        stderr_of(&r)
    );
    assert!(rss < RSS_LIMIT);
    // The default manifest path as a symlink to /dev/zero, and as a FIFO: refused, no hang.
    let dm = d.join("o.raw.manifest");
    std::fs::remove_file(&dm).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &dm).unwrap();
    let r = ds_within(&["image", "verify", s(&img)], Duration::from_secs(20));
    assert_eq!(r.status.code(), Some(1), "{}", stderr_of(&r));
    std::fs::remove_file(&dm).unwrap();
    mkfifo(&dm);
    let r = ds_within(&["image", "verify", s(&img)], Duration::from_secs(20));
    assert_eq!(r.status.code(), Some(1), "{}", stderr_of(&r));
    assert!(stderr_of(&r).contains("FIFO"), "{}", stderr_of(&r));
}

#[test]
fn fifo_stdin_and_char_devices_as_inputs_are_refused_at_once() {
    let dir = scratch();
    let d = dir.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let limit = Duration::from_secs(10);
    let dest = d.join("dest");
    for a in [
        vec!["image", "verify", s(&fifo)],
        vec!["image", "info", s(&fifo)],
        vec!["image", "restore", s(&fifo), s(&dest)],
        vec!["image", "create", s(&fifo), s(&dest)],
        vec!["image", "scan", s(&fifo)],
    ] {
        let t0 = Instant::now();
        let r = ds_within(&a, limit);
        assert_eq!(r.status.code(), Some(1), "{a:?}: {}", stderr_of(&r));
        assert!(
            stderr_of(&r).contains("FIFO") && stderr_of(&r).contains(s(&fifo)),
            "{a:?}: {}",
            stderr_of(&r)
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "{a:?} took {:?}", t0.elapsed());
        assert!(!dest.exists());
    }
    for a in [
        vec!["image", "create", "/dev/zero", s(&dest)],
        vec!["image", "scan", "/dev/zero"],
    ] {
        let r = ds_within(&a, limit);
        assert_eq!(r.status.code(), Some(1), "{a:?}: {}", stderr_of(&r));
        assert!(stderr_of(&r).contains("character device"), "{a:?}: {}", stderr_of(&r));
    }
    // /dev/stdin as IMAGE, with stdin a pipe that stays open: "not a regular file", not "not a
    // dsimg image", and no hang.
    let mut child = Command::new(BIN)
        .args(["image", "verify", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("verify /dev/stdin hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = child.wait_with_output().unwrap();
    assert_eq!(r.status.code(), Some(1));
    let e = stderr_of(&r);
    assert!(
        e.contains("/dev/stdin") && e.contains("not a regular file") && !e.contains("not a dsimg"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5: image and manifest committed together.

fn ds_env(args: &[&str], env: (&str, &str)) -> std::process::Output {
    Command::new(BIN).args(args).env(env.0, env.1).output().expect("run")
}

#[test]
fn commit_cut_between_the_renames_is_named_a_mismatch_never_corruption() {
    let dir = scratch();
    let d = dir.path();
    let a = d.join("a");
    let b = d.join("b");
    make_disk(&a, 8 * MIB, Data::Mixed, 8);
    make_disk(&b, 8 * MIB, Data::Mixed, 9);
    for format in ["raw", "dsimg"] {
        let out = d.join(format!("o.{format}"));
        let man = d.join(format!("o.{format}.manifest"));
        ds_json(&["image", "create", s(&a), s(&out), "--format", format, "--force"]);
        let old_img = std::fs::read(&out).unwrap();
        let old_man = d.join("old.manifest");
        std::fs::copy(&man, &old_man).unwrap();
        // A failure on the second rename (the image's): the run fails and cleans up ...
        let r = ds_env(
            &["image", "create", s(&b), s(&out), "--format", format, "--force"],
            ("DISKSTREAM_TEST_ONLY_FAIL_AT", "rename-image"),
        );
        assert_eq!(r.status.code(), Some(1), "{format}: {}", stderr_of(&r));
        assert!(partials(d).is_empty(), "{format}: {:?}", partials(d));
        // ... the previous image is intact, and verify names the pair a mismatch, not damage.
        assert!(
            std::fs::read(&out).unwrap() == old_img,
            "{format}: the old image changed"
        );
        let v = ds(&["image", "verify", s(&out), "--json"]);
        assert_eq!(v.status.code(), Some(1), "{format}: verify said {}", stderr_of(&v));
        let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(j["kind"], "mismatch", "{format}: {j}");
        let e = stderr_of(&v);
        assert!(
            e.contains(&format!("{}: manifest does not belong to {}", s(&man), s(&out))),
            "{format}: {e}"
        );
        assert!(
            !e.contains("checksum mismatch") && !e.contains("corrupt"),
            "{format}: {e}"
        );
        // The old image is good: it verifies against its own manifest.
        ds_json(&["image", "verify", s(&out), "--manifest", s(&old_man)]);
        // A crash (no cleanup at all) at the same step: the same, plus a leftover ...
        let r = ds_env(
            &["image", "create", s(&b), s(&out), "--format", format, "--force"],
            ("DISKSTREAM_TEST_ONLY_CRASH_AT", "rename-image"),
        );
        assert_eq!(r.status.code(), Some(86), "{format}: {}", stderr_of(&r));
        assert!(
            !partials(d).is_empty(),
            "{format}: the simulated crash left nothing to sweep"
        );
        assert!(std::fs::read(&out).unwrap() == old_img);
        let v = ds(&["image", "verify", s(&out)]);
        assert_eq!(v.status.code(), Some(1));
        assert!(stderr_of(&v).contains("does not belong"), "{}", stderr_of(&v));
        // ... which the next run sweeps, committing a good pair.
        ds_json(&["image", "create", s(&b), s(&out), "--format", format, "--force"]);
        assert!(partials(d).is_empty(), "{format}: {:?}", partials(d));
        ds_json(&["image", "verify", s(&out)]);
        // A crash before the first rename leaves the old pair as it was.
        let r = ds_env(
            &["image", "create", s(&a), s(&out), "--format", format, "--force"],
            ("DISKSTREAM_TEST_ONLY_CRASH_AT", "rename-manifest"),
        );
        assert_eq!(r.status.code(), Some(86));
        ds_json(&["image", "verify", s(&out)]);
        ds_json(&["image", "create", s(&a), s(&out), "--format", format, "--force"]);
        assert!(partials(d).is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// 4: leftovers of killed runs.

#[test]
fn stale_partials_of_dead_pids_are_swept_and_a_live_diskstreams_are_kept() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 4 * MIB, Data::Mixed, 10);
    // A pid that is gone.
    let mut t = Command::new("true").spawn().unwrap();
    let dead = t.id();
    t.wait().unwrap();
    // A live diskstream (its command name is what counts) and a live process that is not one.
    let fake = d.join("diskstream-fake");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let live = Kill(Command::new(&fake).arg("600").spawn().unwrap());
    let other = Kill(Command::new("sleep").arg("600").spawn().unwrap());
    std::thread::sleep(Duration::from_millis(100)); // Let both exec.
    let write = |name: String| {
        let p = d.join(name);
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        p
    };
    let swept = [
        write(format!(".o.raw.partial-{dead}")),
        write(format!(".o.raw.manifest.partial-{dead}")),
        write(format!(".o.raw.partial-{}", other.0.id())),
        write(format!(".o.raw.partial-{dead}-0")),
        write(format!(".o.raw.partial-{}-17", other.0.id())),
        // Today's names are judged by their writer's lock alone: none is held on this one,
        // whatever its pid.
        write(format!(".o.raw.partial-{}-3", live.0.id())),
    ];
    let kept = [
        write(format!(".o.raw.partial-{}", live.0.id())),
        write(format!(".elsewhere.raw.partial-{dead}")),
        write(".o.raw.partial-12x".to_string()),
        write(format!(".o.raw.partial-{dead}.keep")),
        write(format!(".o.raw.partial-{dead}-")),
        write(format!(".o.raw.partial-{dead}-1-2")),
    ];
    // A writer (any process; here this test) holds the lock on its file: kept, pid or not.
    let held = write(format!(".o.raw.partial-{dead}-9"));
    let writer = FlockHolder::lock(&held);
    ds_json(&["image", "create", s(&src), s(&d.join("o.raw"))]);
    assert!(held.exists(), "a locked temporary file was swept");
    drop(writer);
    for p in &swept {
        assert!(!p.exists(), "{} was not swept", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} was swept", p.display());
    }
    // restore sweeps beside its DEST too.
    let back = write(format!(".back.partial-{dead}"));
    ds_json(&["image", "restore", s(&d.join("o.raw")), s(&d.join("back"))]);
    assert!(!back.exists());
    drop(live);
    drop(other);
}

// ---------------------------------------------------------------------------------------------
// 4: kill loops.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sig {
    Int,
    Term,
    Kill,
}

/// Runs `args`, sends `sig` `delay` after the process installed its handlers, and waits.
/// The delay counts from the moment the process has its handlers (or, for a build without
/// them, has created its temporary output: the signal then still lands mid-run).
fn run_and_signal(args: &[&str], dir: &Path, sig: Sig, delay: Duration) -> ExitStatus {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while !handlers_installed(child.id()) && partials(dir).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no handlers after 10 s");
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(delay);
    match sig {
        Sig::Kill => {
            let _ = child.kill();
        }
        Sig::Int | Sig::Term => {
            let name = if sig == Sig::Int { "INT" } else { "TERM" };
            let _ = Command::new("kill")
                .args(["-s", name, &child.id().to_string()])
                .status();
        }
    }
    // Within a second of the signal (generous for a loaded 2-core machine: 10 s).
    let t1 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t1.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not stop within 10 s of {sig:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Like [`run_and_signal`] with the output kept: (status, stderr, time from signal to exit).
fn signal_and_collect(args: &[&str], sig: Sig) -> (ExitStatus, String, Duration) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while !handlers_installed(child.id()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "no handlers after 10 s");
        std::thread::sleep(Duration::from_micros(200));
    }
    // Straight from here: spawning `kill` could take longer than a short verify lasts.
    let signal = if sig == Sig::Int {
        rustix::process::Signal::INT
    } else {
        rustix::process::Signal::TERM
    };
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("kill");
    let t1 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t1.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not stop within 10 s of {sig:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let waited = t1.elapsed();
    let out = child.wait_with_output().unwrap();
    (out.status, stderr_of(&out), waited)
}

#[test]
fn sigint_and_sigterm_stop_every_image_command_with_130_143_and_a_message() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 64 * MIB, Data::Mixed, 30);
    let raw = d.join("i.raw");
    let img = d.join("i.dsimg");
    ds_json(&["image", "create", s(&src), s(&raw)]);
    ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    let out = d.join("new.raw");
    let dest = d.join("dest");
    let cases: Vec<(Vec<&str>, bool)> = vec![
        (vec!["image", "create", s(&src), s(&out)], true),
        (vec!["image", "create", s(&src), s(&out), "--format", "dsimg"], true),
        (vec!["image", "restore", s(&img), s(&dest)], true),
        (vec!["image", "restore", s(&raw), s(&dest)], true),
        (vec!["image", "verify", s(&raw)], false),
        (vec!["image", "verify", s(&img)], false),
        (vec!["image", "scan", s(&src), "--compress", "lz4"], false),
    ];
    let mut slowest = Duration::ZERO;
    for (args, writes) in &cases {
        for sig in [Sig::Int, Sig::Term] {
            // The signal arrives as soon as the handlers are in: before or at the first chunk.
            let (st, err, waited) = signal_and_collect(args, sig);
            let (code, name) = if sig == Sig::Int {
                (130, "SIGINT")
            } else {
                (143, "SIGTERM")
            };
            assert_eq!(st.code(), Some(code), "{args:?} {sig:?}: {err}");
            let want = if *writes {
                format!("interrupted by {name}; partial output removed")
            } else {
                format!("interrupted by {name}")
            };
            assert!(err.contains(&want), "{args:?} {sig:?}: {err}");
            assert!(
                !out.exists() && !dest.exists(),
                "{args:?}: an interrupted run left its output"
            );
            assert!(partials(d).is_empty(), "{args:?}: {:?}", partials(d));
            slowest = slowest.max(waited);
        }
    }
    eprintln!("slowest stop after the signal: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "a command took {slowest:?} to stop");
}

#[test]
fn an_interrupted_restore_or_copy_onto_a_device_says_what_became_of_the_device() {
    // A device is written in place: "partial output removed" would be false. By default the
    // whole image is checked first, so a signal then leaves the device as it was.
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 64 * MIB, Data::Mixed, 31);
    let img = d.join("i.dsimg");
    ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    let backing = d.join("dev");
    make_disk(&backing, 64 * MIB, Data::Random, 32);
    let before = sha(&backing);
    let lo = Loop::attach(&backing, false);
    for sig in [Sig::Int, Sig::Term] {
        let (st, err, _) = signal_and_collect(&["image", "restore", s(&img), lo.path(), "-f"], sig);
        assert_eq!(st.code(), Some(if sig == Sig::Int { 130 } else { 143 }), "{err}");
        assert!(
            err.contains(&format!("nothing was written to {}: it holds its old data", lo.path())),
            "{sig:?}: {err}"
        );
        assert!(!err.contains("partial output removed"), "{err}");
        assert_eq!(sha(lo.path().as_ref()), before, "{sig:?}: the device was written");
    }
    // Written as it is checked, the device may be partly overwritten by then: the message says
    // which of the two it is.
    let dev = lo.path();
    let man = d.join("dev.manifest");
    for args in [
        vec!["image", "restore", s(&img), dev, "-f", "--no-verify-first"],
        // A raw copy onto a device is written in place as well.
        vec!["image", "create", s(&src), dev, "-f", "--manifest", s(&man)],
    ] {
        let (st, err, _) = signal_and_collect(&args, Sig::Int);
        assert_eq!(st.code(), Some(130), "{args:?}: {err}");
        assert!(
            err.contains(&format!("nothing was written to {dev}"))
                || err.contains(&format!("{dev} was partly overwritten")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("partial output removed"), "{args:?}: {err}");
    }
}

#[derive(Default, Debug)]
struct Tally {
    runs: u32,
    int_term: u32,
    kills: u32,
    finished: u32,
    stopped: u32,
    between_renames: u32,
}

/// The kill loop: `kills` runs of `cmd(src) OUT --force`, alternating between two sources so the
/// previous output and the new one always differ, each signalled at a seeded pseudo-random
/// moment spread over the run (some before the first chunk, some mid-run, some at the commit,
/// some after it finished). `expect[i]` is the complete output (and manifest, if any) of source
/// `i`.
/// What a kill loop runs and where its outputs land.
struct LoopSpec<'a> {
    name: &'a str,
    seed: u64,
    kills: u32,
    /// The directory of the output (checked for partials).
    dir: &'a Path,
    out: &'a Path,
    manifest: Option<&'a Path>,
    argv: &'a dyn Fn(usize) -> Vec<String>,
    expect: &'a [(Vec<u8>, Option<Vec<u8>>); 2],
}

fn kill_loop(spec: LoopSpec<'_>) -> Tally {
    let LoopSpec {
        name,
        seed,
        kills,
        dir: d,
        out,
        manifest,
        argv,
        expect,
    } = spec;
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    // The previous output is source 0's, complete.
    let full = |i: usize| {
        let a = argv(i);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let r = ds(&a);
        assert!(r.status.success(), "{name}: {a:?}: {}", stderr_of(&r));
    };
    full(0);
    let mut cur = 0usize;
    // How long one run takes, to spread the signals over it: the shorter of two runs (a run
    // slowed by the disk flushing someone else's writes would spread most signals past the end).
    let timed = |i: usize| {
        let t0 = Instant::now();
        full(i);
        t0.elapsed()
    };
    let span = timed(1).min(timed(0));
    let span_us = (span.as_micros() as u64).max(1000);
    for i in 0..kills {
        let next = 1 - cur;
        let sig = match rng.below(3) {
            0 => Sig::Int,
            1 => Sig::Term,
            _ => Sig::Kill,
        };
        let delay = Duration::from_micros(rng.below(span_us));
        let a = argv(next);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let st = run_and_signal(&a, d, sig, delay);
        tally.runs += 1;
        let img =
            std::fs::read(out).unwrap_or_else(|e| panic!("{name} #{i}: {} gone after {sig:?}: {e}", out.display()));
        let man = manifest.map(|m| std::fs::read(m).unwrap_or_default());
        // No half output: the previous output byte for byte, or the complete new one.
        let got = if img == expect[cur].0 {
            cur
        } else if img == expect[next].0 {
            next
        } else {
            panic!(
                "{name} #{i}: half output under {} after {sig:?} at {delay:?}",
                out.display()
            );
        };
        if let (Some(man), Some(mpath)) = (&man, manifest) {
            let want = expect[got].1.as_ref().unwrap();
            if man != want {
                // Only a SIGKILL between the two renames: the new manifest beside the previous
                // image, which verify names a mismatch.
                assert_eq!(
                    sig,
                    Sig::Kill,
                    "{name} #{i}: manifest and image do not pair after {sig:?}"
                );
                assert_eq!(got, cur, "{name} #{i}: a new image beside an old manifest");
                assert!(
                    man == expect[next].1.as_ref().unwrap(),
                    "{name} #{i}: half manifest at {}",
                    mpath.display()
                );
                let v = ds(&["image", "verify", s(out)]);
                assert_eq!(v.status.code(), Some(1));
                assert!(stderr_of(&v).contains("does not belong"), "{}", stderr_of(&v));
                tally.between_renames += 1;
            }
        }
        match sig {
            Sig::Int | Sig::Term => {
                tally.int_term += 1;
                let want = if sig == Sig::Int { 130 } else { 143 };
                match st.code() {
                    Some(0) => {
                        assert_eq!(got, next, "{name} #{i}: exit 0 but the output is the old one");
                        tally.finished += 1;
                    }
                    Some(c) => {
                        assert_eq!(c, want, "{name} #{i}: exit code after {sig:?}");
                        assert_eq!(got, cur, "{name} #{i}: interrupted but the output was replaced");
                        tally.stopped += 1;
                    }
                    None => panic!(
                        "{name} #{i}: died of signal {:?} instead of handling {sig:?}",
                        st.signal()
                    ),
                }
                assert!(partials(d).is_empty(), "{name} #{i}: {sig:?} left {:?}", partials(d));
            }
            Sig::Kill => {
                tally.kills += 1;
                if st.success() {
                    tally.finished += 1;
                }
                // The next run sweeps what the killed one left.
                let a = argv(1 - got);
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let r = ds(&a);
                assert!(r.status.success(), "{name} #{i}: run after SIGKILL: {}", stderr_of(&r));
                assert!(
                    partials(d).is_empty(),
                    "{name} #{i}: the run after SIGKILL left {:?}",
                    partials(d)
                );
                cur = 1 - got;
                assert!(std::fs::read(out).unwrap() == expect[cur].0);
                continue;
            }
        }
        cur = got;
    }
    eprintln!("{name}: {tally:?}");
    tally
}

fn kill_loop_create(format: &str, seed: u64) {
    let dir = scratch();
    let d = dir.path().to_owned();
    let srcs = [d.join("a"), d.join("b")];
    make_disk(&srcs[0], 32 * MIB, Data::Mixed, seed);
    make_disk(&srcs[1], 32 * MIB, Data::Mixed, seed + 1);
    let out = d.join(format!("o.{format}"));
    let man = d.join(format!("o.{format}.manifest"));
    // The complete outputs, made beside (in a directory of their own).
    let refdir = scratch();
    let mut expect: [(Vec<u8>, Option<Vec<u8>>); 2] = Default::default();
    for (i, src) in srcs.iter().enumerate() {
        let o = refdir.path().join(format!("ref{i}"));
        ds_json(&["image", "create", s(src), s(&o), "--format", format]);
        let mut m = o.clone().into_os_string();
        m.push(".manifest");
        expect[i] = (std::fs::read(&o).unwrap(), Some(std::fs::read(&m).unwrap()));
    }
    let argv = |i: usize| -> Vec<String> {
        ["image", "create", s(&srcs[i]), s(&out), "--format", format, "--force"]
            .iter()
            .map(|x| x.to_string())
            .collect()
    };
    let t = kill_loop(LoopSpec {
        name: &format!("create {format}"),
        seed,
        kills: 24,
        dir: &d,
        out: &out,
        manifest: Some(&man),
        argv: &argv,
        expect: &expect,
    });
    assert!(t.int_term + t.kills >= 20);
    assert!(t.kills > 0 && t.int_term > 0);
    assert!(
        t.stopped > 0,
        "no run was stopped mid-way: the delays do not cover the run"
    );
    ds_json(&["image", "verify", s(&out)]);
}

#[test]
fn kill_loop_create_raw() {
    kill_loop_create("raw", 0x5eed_0001);
}

#[test]
fn kill_loop_create_dsimg() {
    kill_loop_create("dsimg", 0x5eed_0002);
}

#[test]
fn kill_loop_restore() {
    let dir = scratch();
    let d = dir.path().to_owned();
    let refdir = scratch();
    let disks = [refdir.path().join("a"), refdir.path().join("b")];
    make_disk(&disks[0], 32 * MIB, Data::Mixed, 21);
    make_disk(&disks[1], 32 * MIB, Data::Mixed, 22);
    let imgs = [refdir.path().join("a.dsimg"), refdir.path().join("b.dsimg")];
    for i in 0..2 {
        ds_json(&["image", "create", s(&disks[i]), s(&imgs[i]), "--format", "dsimg"]);
    }
    let expect: [(Vec<u8>, Option<Vec<u8>>); 2] = [
        (std::fs::read(&disks[0]).unwrap(), None),
        (std::fs::read(&disks[1]).unwrap(), None),
    ];
    let dest = d.join("dest");
    let argv = |i: usize| -> Vec<String> {
        ["image", "restore", s(&imgs[i]), s(&dest), "--force"]
            .iter()
            .map(|x| x.to_string())
            .collect()
    };
    let t = kill_loop(LoopSpec {
        name: "restore",
        seed: 0x5eed_0003,
        kills: 24,
        dir: &d,
        out: &dest,
        manifest: None,
        argv: &argv,
        expect: &expect,
    });
    assert!(t.int_term + t.kills >= 20);
    assert!(t.stopped > 0, "no run was stopped mid-way");
}

/// A source file that grows while `image create` reads it is imaged at the size it had, and
/// the result says so (a shrink fails the read); the image is consistent with its manifest.
#[test]
fn a_source_that_grows_while_it_is_read_is_warned_of() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 32 * MIB, Data::Mixed, 22);
    let img = dir.path().join("o.raw");
    let child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(["image", "create", s(&src), s(&img), "--bwlimit", "16MiB", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let f = std::fs::OpenOptions::new().append(true).open(&src).unwrap();
    std::io::Write::write_all(&mut &f, &vec![7u8; 8 << 20]).unwrap();
    let o = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert!(o.status.success(), "{v}");
    assert_eq!(v["disk_size"], 32 * MIB, "{v}");
    let warned = v["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .is_some_and(|w| w.contains(&format!("grew from {} to {} bytes", 32 * MIB, 40 * MIB)))
    });
    assert!(warned, "no warning of the growth: {v}");
    ds_json(&["image", "verify", s(&img)]);
}

/// `--manifest` naming the image itself is a usage mistake (exit 1, said as such), not a
/// damaged manifest (it read as one, "not UTF-8", exit 3); for a raw image and a dsimg.
#[test]
fn a_manifest_that_is_the_image_itself_is_a_usage_error() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 4 * MIB, Data::Mixed, 23);
    let (raw, dsimg) = (dir.path().join("a.raw"), dir.path().join("a.ds"));
    ds_json(&["image", "create", s(&src), s(&raw)]);
    ds_json(&["image", "create", s(&src), s(&dsimg), "--format", "dsimg"]);
    let out = dir.path().join("b.raw");
    for img in [&raw, &dsimg] {
        for cmd in ["verify", "info", "restore"] {
            let mut a = vec!["image", cmd, s(img)];
            if cmd == "restore" {
                a.push(s(&out));
            }
            a.extend(["--manifest", s(img)]);
            let r = ds(&a);
            let e = stderr_of(&r);
            assert_eq!(r.status.code(), Some(1), "{a:?}: {e}");
            let said = format!("is {} itself, not its manifest", img.display());
            assert!(e.contains(&said), "{a:?}: {e}");
        }
        assert!(!out.exists());
        ds_json(&["image", "verify", s(img)]);
    }
}
