//! Adversarial tests of what `diskstream image` writes to and reads from, from a report-only
//! review of the engine's sources and targets. Each failed before its fix: a loop device whose
//! backing file's name was removed while another hard link remained (restore overwrote its own
//! image through it), a block device read while `restore --force` wrote it (the image mixed old
//! and new chunks, and verified), `--force` over a file (its owner and mode lost, a loop
//! device's file replaced under it), a symbolic link as output (a dangling one failed only after
//! the whole transfer, one to a file was replaced by a regular file), and a damaged chunk met
//! mid-restore onto a device (the device was half overwritten, and the error did not say so: a
//! device restore now checks the whole image first), and a refused create onto a device removed
//! the manifest that still described it.
//!
//! Needs root (loop devices).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_diskstream");

/// A `diskstream` child process killed and reaped on drop (also when the test fails).
struct Bg {
    child: Option<Child>,
    /// The rest of its stderr, once [`Bg::wait_for_progress`] read the first lines.
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Bg {
    fn spawn(args: &[&str]) -> Self {
        let c = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Self {
            child: Some(c),
            rest: None,
        }
    }

    /// Waits for a `--progress json` event with bytes done: the command has opened its output
    /// and is writing it.
    fn wait_for_progress(&mut self) {
        use std::io::{BufRead, Read};
        let err = self.child.as_mut().unwrap().stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(err);
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = lines.read_line(&mut line).unwrap();
            assert!(n > 0, "it ended before any progress: {seen}");
            seen.push_str(&line);
            let v: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            if v.is_some_and(|v| v["done_bytes"].as_u64().is_some_and(|b| b > 0)) {
                break;
            }
        }
        self.rest = Some(std::thread::spawn(move || {
            let mut rest = seen;
            let _ = lines.read_to_string(&mut rest);
            rest
        }));
    }

    fn wait(mut self) -> std::process::Output {
        let mut out = self.child.take().unwrap().wait_with_output().unwrap();
        if let Some(rest) = self.rest.take() {
            out.stderr = rest.join().unwrap().into_bytes();
        }
        out
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until a temporary file of `name` exists in `dir` (its writer is under way).
fn wait_for_partial(dir: &Path, name: &str) {
    let t0 = Instant::now();
    let prefix = format!(".{name}.partial-");
    while !partials(dir)
        .iter()
        .any(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "no temporary file of {name}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_loop_device_over_another_link_of_the_other_end_is_refused() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 8 * MIB, Data::Random, 21);
    // restore T2 onto a loop device over T, T2 being T's other hard link and T's name removed:
    // the loop device writes T2's blocks as restore reads them.
    let (t, t2) = (d.join("t.ds"), d.join("t2.ds"));
    ds_json(&[
        "image",
        "create",
        s(&src),
        s(&t),
        "--format",
        "dsimg",
        "--compress",
        "none",
    ]);
    std::fs::hard_link(&t, &t2).unwrap();
    let before = sha(&t2);
    let lo = Loop::attach(&t, false);
    std::fs::remove_file(&t).unwrap();
    let r = ds(&["image", "restore", s(&t2), lo.path(), "-f"]);
    assert!(!r.status.success(), "restore onto a loop device over its own image");
    assert!(stderr_of(&r).contains("is the input"), "{}", stderr_of(&r));
    drop(lo);
    assert_eq!(sha(&t2), before, "the image changed");
    // create from a loop device over R onto R2, R's other hard link, R's name removed.
    let (raw, raw2) = (d.join("r.raw"), d.join("r2.raw"));
    ds_json(&["image", "create", s(&src), s(&raw)]);
    std::fs::hard_link(&raw, &raw2).unwrap();
    let lo = Loop::attach(&raw, false);
    std::fs::remove_file(&raw).unwrap();
    let r = ds(&["image", "create", lo.path(), s(&raw2), "-f"]);
    assert!(!r.status.success(), "create from a loop device onto its backing file");
    assert!(stderr_of(&r).contains("is the input"), "{}", stderr_of(&r));
    // The removed name is no longer the loop device's file: a new file there is another file.
    ds_json(&["image", "create", lo.path(), s(&raw), "-f"]);
    drop(lo);
    assert_eq!(sha(&raw), sha(&src));
    assert_eq!(sha(&raw2), sha(&src), "the backing file changed");
}

#[test]
fn a_device_being_read_is_not_written_and_one_being_written_is_read_with_a_warning() {
    let dir = scratch();
    let d = dir.path();
    let (backing, other) = (d.join("disk"), d.join("other"));
    make_disk(&backing, 16 * MIB, Data::Random, 22);
    make_disk(&other, 16 * MIB, Data::Random, 23);
    let before = sha(&backing);
    let img = d.join("other.raw");
    ds_json(&["image", "create", s(&other), s(&img)]);
    let lo = Loop::attach(&backing, false);
    // create reads the device (4 s at 4 MB/s) while restore --force is asked to write it.
    let out = d.join("o.raw");
    let reader = Bg::spawn(&["image", "create", lo.path(), s(&out), "--bwlimit", "4M", "--json"]);
    wait_for_partial(d, "o.raw");
    let r = ds(&["image", "restore", s(&img), lo.path(), "-f"]);
    assert!(!r.status.success(), "restore wrote the device create was reading");
    assert!(stderr_of(&r).contains("device is in use"), "{}", stderr_of(&r));
    let c = reader.wait();
    assert!(c.status.success(), "{}", stderr_of(&c));
    let report: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    assert_eq!(sha(&out), before, "the image is not the disk");
    ds_json(&["image", "verify", s(&out)]);
    // The other way: create from a device restore is writing reads it, and says so.
    let mut writer = Bg::spawn(&[
        "image",
        "restore",
        s(&img),
        lo.path(),
        "-f",
        "--bwlimit",
        "4M",
        "--progress",
        "json",
    ]);
    writer.wait_for_progress();
    let c = ds_json(&["image", "create", lo.path(), s(&d.join("o2.raw"))]);
    let w = c["warnings"].to_string();
    assert!(
        w.contains("the device is in use") && w.contains("not a consistent copy"),
        "{w}"
    );
    let r = writer.wait();
    assert!(r.status.success(), "{}", stderr_of(&r));
    drop(lo);
    assert_eq!(sha(&backing), sha(&other));
    assert!(partials(d).is_empty(), "{:?}", partials(d));
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn set_owner_and_mode(p: &Path, uid: u32, gid: u32, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn force_keeps_a_replaced_files_owner_and_mode_and_never_replaces_a_loop_devices_file() {
    let dir = scratch();
    let d = dir.path();
    let (a, b) = (d.join("a"), d.join("b"));
    make_disk(&a, 4 * MIB, Data::Mixed, 24);
    make_disk(&b, 4 * MIB, Data::Mixed, 25);
    // An image and its manifest that a VM running as 4242:4343 uses.
    let out = d.join("vm.raw");
    let man = d.join("vm.raw.manifest");
    ds_json(&["image", "create", s(&a), s(&out)]);
    set_owner_and_mode(&out, 4242, 4343, 0o660);
    set_owner_and_mode(&man, 4242, 4343, 0o644);
    let c = ds_json(&["image", "create", s(&b), s(&out), "-f"]);
    assert_eq!(c["warnings"], serde_json::json!([]), "{c}");
    assert_eq!(owner_and_mode(&out), (4242, 4343, 0o660));
    assert_eq!(owner_and_mode(&man), (4242, 4343, 0o644));
    assert_eq!(sha(&out), sha(&b));
    // restore --force onto a disk file the VM uses.
    let disk = d.join("disk");
    make_disk(&disk, 4 * MIB, Data::Zeros, 0);
    set_owner_and_mode(&disk, 4242, 4343, 0o600);
    ds_json(&["image", "restore", s(&out), s(&disk), "-f"]);
    assert_eq!(owner_and_mode(&disk), (4242, 4343, 0o600));
    assert_eq!(sha(&disk), sha(&b));
    // Another hard link keeps the old content, and the run says so.
    let link = d.join("disk-link");
    std::fs::hard_link(&disk, &link).unwrap();
    ds_json(&["image", "create", s(&a), s(&d.join("a.raw"))]);
    let r = ds_json(&["image", "restore", s(&d.join("a.raw")), s(&disk), "-f"]);
    let w = r["warnings"].to_string();
    assert!(
        w.contains("1 other hard link") && w.contains("keep the old content"),
        "{w}"
    );
    assert_eq!(sha(&disk), sha(&a));
    assert_eq!(sha(&link), sha(&b));
    // A file a loop device is over is refused: the loop device would go on with the old file.
    let lo = Loop::attach(&disk, false);
    for args in [
        vec!["image", "restore", s(&out), s(&disk), "-f"],
        vec!["image", "create", s(&b), s(&disk), "-f"],
    ] {
        let r = ds(&args);
        assert!(!r.status.success(), "{args:?} replaced a loop device's backing file");
        let e = stderr_of(&r);
        assert!(
            e.contains("backing file of the loop device") && e.contains(lo.path()),
            "{e}"
        );
    }
    drop(lo);
    assert_eq!(sha(&disk), sha(&a));
    assert!(!d.join("disk.manifest").exists());
    assert!(partials(d).is_empty(), "{:?}", partials(d));
}

/// Runs an `acl`/`attr` tool (the project's test script installs them).
fn attr_tool(tool: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed (apt-get install acl attr; scripts/test does): {e}"));
    assert!(o.status.success(), "{tool} {args:?}: {}", stderr_of(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn force_keeps_a_replaced_files_acl_label_and_user_attributes_and_names_what_it_drops() {
    // A VM disk that libvirt gave an SELinux label and an ACL for the qemu user: a replacement
    // without them would shut the VM out, as one without the old owner did.
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 4 * MIB, Data::Mixed, 35);
    let img = d.join("img.raw");
    ds_json(&["image", "create", s(&src), s(&img)]);
    let disk = d.join("disk");
    make_disk(&disk, 4 * MIB, Data::Zeros, 0);
    set_owner_and_mode(&disk, 4242, 4343, 0o600);
    let label = "system_u:object_r:svirt_image_t:s0:c1,c2";
    attr_tool("setfacl", &["-m", "u:4444:rw", s(&disk)]);
    attr_tool("setfattr", &["-n", "security.selinux", "-v", label, s(&disk)]);
    attr_tool("setfattr", &["-n", "user.vm", "-v", "web1-disk0", s(&disk)]);
    // Attributes that vouch for the old content, and our own recorded digest, are not carried.
    attr_tool("setfattr", &["-n", "trusted.overlay.origin", "-v", "x", s(&disk)]);
    attr_tool("setfattr", &["-n", "user.diskstream.digest", "-v", "stale", s(&disk)]);
    let acl_before = attr_tool("getfacl", &["-cp", s(&disk)]);
    assert!(acl_before.contains("user:4444:rw-"), "{acl_before}");
    let r = ds_json(&["image", "restore", s(&img), s(&disk), "-f"]);
    assert_eq!(sha(&disk), sha(&src));
    assert_eq!(owner_and_mode(&disk).0, 4242);
    assert_eq!(attr_tool("getfacl", &["-cp", s(&disk)]), acl_before, "the ACL");
    let attrs = attr_tool("getfattr", &["-d", "-m", "-", s(&disk)]);
    assert!(attrs.contains(&format!("security.selinux=\"{label}\"")), "{attrs}");
    assert!(attrs.contains("user.vm=\"web1-disk0\""), "{attrs}");
    assert!(!attrs.contains("trusted.overlay.origin"), "{attrs}");
    assert!(!attrs.contains("user.diskstream.digest"), "{attrs}");
    let w = r["warnings"].to_string();
    assert!(
        w.contains("does not take the extended attribute(s) trusted.overlay.origin of the file it replaces"),
        "{w}"
    );
    assert!(!w.contains("user.diskstream"), "{w}");
}

#[test]
fn a_loop_device_attached_to_the_replaced_file_during_the_run_is_refused_at_the_rename() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 8 * MIB, Data::Random, 36);
    let img = d.join("img.raw");
    ds_json(&["image", "create", s(&src), s(&img)]);
    let disk = d.join("disk");
    make_disk(&disk, 8 * MIB, Data::Random, 37);
    let before = sha(&disk);
    // 8 MiB at 8 MB/s: the loop device is attached while the run writes its temporary file.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(["image", "restore", s(&img), s(&disk), "-f", "--bwlimit", "8M"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while partials(d).is_empty() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "no temporary file");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let lo = Loop::attach(&disk, false);
    let o = child.wait_with_output().unwrap();
    let e = stderr_of(&o);
    assert!(!o.status.success(), "the file under {} was replaced: {e}", lo.path());
    assert!(
        e.contains("is the backing file of the loop device") && e.contains(lo.path()),
        "{e}"
    );
    drop(lo);
    assert_eq!(sha(&disk), before);
    assert!(partials(d).is_empty(), "{:?}", partials(d));
}

#[test]
fn an_output_that_is_a_symbolic_link_is_refused_before_any_data_moves() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 8 * MIB, Data::Mixed, 26);
    let img = d.join("img.raw");
    ds_json(&["image", "create", s(&src), s(&img)]);
    // A dangling link: refused at once, not after the whole transfer.
    let dangling = d.join("dangling.raw");
    std::os::unix::fs::symlink("nowhere.raw", &dangling).unwrap();
    // A link to an existing file: --force would replace the link, not the file.
    let victim = d.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let link = d.join("link.raw");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    for (out, to) in [(&dangling, "nowhere.raw, which does not exist"), (&link, s(&victim))] {
        for args in [
            vec!["image", "create", s(&src), s(out), "--bwlimit", "1M"],
            vec!["image", "create", s(&src), s(out), "-f", "--format", "dsimg"],
            vec!["image", "restore", s(&img), s(out), "-f", "--bwlimit", "1M"],
        ] {
            let t0 = Instant::now();
            let r = ds(&args);
            assert!(!r.status.success(), "{args:?}");
            let e = stderr_of(&r);
            assert!(
                e.contains(&format!("is a symbolic link (to {to})")) && e.contains("name the file itself"),
                "{args:?}: {e}"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(4),
                "{args:?}: refused only after the transfer"
            );
            assert!(std::fs::symlink_metadata(out).unwrap().file_type().is_symlink());
        }
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(!d.join("nowhere.raw").exists() && !d.join("dangling.raw.manifest").exists());
    assert!(partials(d).is_empty(), "{:?}", partials(d));
    // A link to a block device (/dev/disk/by-id/..., /dev/VG/LV) is written through.
    let backing = d.join("dev");
    std::fs::File::create(&backing).unwrap().set_len(8 * MIB).unwrap();
    let lo = Loop::attach(&backing, false);
    let dev_link = d.join("by-id");
    std::os::unix::fs::symlink(&lo.dev, &dev_link).unwrap();
    ds_json(&["image", "restore", s(&img), s(&dev_link), "-f"]);
    drop(lo);
    assert_eq!(sha(&backing), sha(&src));
}

#[test]
fn a_damaged_chunk_leaves_a_device_untouched_or_says_how_much_was_overwritten() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 16 * MIB, Data::Random, 27);
    let img = d.join("img.raw");
    ds_json(&["image", "create", s(&src), s(&img)]);
    // One byte of chunk 12 flipped: the image's structure is whole, that chunk is damaged.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 12 * MIB + 100).unwrap();
        f.write_all_at(&[!b[0]], 12 * MIB + 100).unwrap();
    }
    let backing = d.join("dev");
    make_disk(&backing, 16 * MIB, Data::Random, 28);
    let lo = Loop::attach(&backing, false);
    // By default the whole image is checked before a byte is written to a device.
    let before = sha(&backing);
    let r = ds(&["image", "restore", s(&img), lo.path(), "-f", "--json"]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr_of(&r));
    let e = stderr_of(&r);
    assert!(e.contains("checksum mismatch in chunk 12"), "{e}");
    assert!(
        e.contains(&format!("nothing was written to {}: it holds its old data", lo.path())),
        "{e}"
    );
    assert_eq!(sha(lo.path().as_ref()), before, "the device was written");
    // Written as it is checked (--no-verify-first), the device is partly overwritten by then.
    let r = ds(&[
        "image",
        "restore",
        s(&img),
        lo.path(),
        "-f",
        "--no-verify-first",
        "--json",
    ]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr_of(&r));
    let e = stderr_of(&r);
    assert!(e.contains("checksum mismatch in chunk 12"), "{e}");
    assert!(
        e.contains(&format!("{} was partly overwritten", lo.path())) && e.contains("within its bytes 0.."),
        "the error does not say the device was partly overwritten: {e}"
    );
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["kind"], "integrity", "{j}");
    drop(lo);
    // As it says: the device's first chunk is the image's now, no longer its own.
    assert_eq!(read_prefix(&backing, MIB), read_prefix(&src, MIB));
    // A file DEST is written under a temporary name: the same failure leaves it untouched.
    let file = d.join("file");
    make_disk(&file, 16 * MIB, Data::Random, 29);
    let before = sha(&file);
    let r = ds(&["image", "restore", s(&img), s(&file), "-f"]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr_of(&r));
    assert!(!stderr_of(&r).contains("partly overwritten"), "{}", stderr_of(&r));
    assert_eq!(sha(&file), before);
    assert!(partials(d).is_empty(), "{:?}", partials(d));
}

#[test]
fn a_device_restore_checks_the_whole_image_first_and_a_file_restore_when_asked() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 8 * MIB + 4096, Data::Mixed, 33);
    for format in ["raw", "dsimg"] {
        let img = d.join(format!("img.{format}"));
        ds_json(&["image", "create", s(&src), s(&img), "--format", format]);
        let backing = d.join("dev");
        make_disk(&backing, 9 * MIB, Data::Random, 34);
        let lo = Loop::attach(&backing, false);
        let j = ds_json(&["image", "restore", s(&img), lo.path(), "-f"]);
        let first = j["verified_first_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("{format}: {j}"));
        assert!(
            first > 0.0 && first <= j["elapsed_s"].as_f64().unwrap(),
            "{format}: {j}"
        );
        let j = ds_json(&["image", "restore", s(&img), lo.path(), "-f", "--no-verify-first"]);
        assert!(j.get("verified_first_s").is_none(), "{format}: {j}");
        drop(lo);
        assert_eq!(read_prefix(&backing, 8 * MIB + 4096), std::fs::read(&src).unwrap());
        // A file is written under a temporary name: checked as it is written, unless asked.
        let out = d.join("out");
        let j = ds_json(&["image", "restore", s(&img), s(&out), "-f"]);
        assert!(j.get("verified_first_s").is_none(), "{format}: {j}");
        let j = ds_json(&["image", "restore", s(&img), s(&out), "-f", "--verify-first"]);
        assert!(j["verified_first_s"].as_f64().is_some(), "{format}: {j}");
        assert_eq!(sha(&out), sha(&src));
    }
}

/// A device's manifest from an earlier run describes what the device still holds until the next
/// create writes its first chunk: a create refused (the disk does not fit) or stopped before
/// then leaves it in place, and `verify` still passes. It used to be removed as soon as the
/// device was opened (review of the engine as a library: a raw image without its manifest
/// cannot be verified or restored). Once a chunk is written it goes, since it no longer holds.
#[test]
fn a_devices_manifest_stays_until_its_first_byte_is_overwritten() {
    use diskstream_engine::ops::{self, CreateOptions};
    let dir = scratch();
    let d = dir.path();
    let (src, big, backing, man) = (d.join("src"), d.join("big"), d.join("dev"), d.join("dev.manifest"));
    make_disk(&src, 16 * MIB, Data::Random, 41);
    make_disk(&big, 32 * MIB, Data::Random, 42);
    make_disk(&backing, 16 * MIB, Data::Zeros, 0);
    let lo = Loop::attach(&backing, false);
    let create = |from: &Path, extra: &[&str]| {
        let mut args = vec!["image", "create", s(from), lo.path(), "--manifest", s(&man), "-f"];
        args.extend_from_slice(extra);
        ds(&args)
    };
    let verified = || {
        ds(&["image", "verify", lo.path(), "--manifest", s(&man)])
            .status
            .success()
    };
    let out = create(&src, &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(verified());
    let kept = std::fs::read(&man).unwrap();
    // Refused: the disk does not fit on the device.
    let out = create(&big, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("target device holds"), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read(&man).ok(),
        Some(kept.clone()),
        "the refusal removed the manifest"
    );
    assert!(verified(), "the device no longer matches its manifest");
    // Stopped before the first chunk (through the library: the stop flag raised at the start).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut o = CreateOptions {
        force: true,
        manifest: Some(man.clone()),
        ..CreateOptions::default()
    };
    o.tuning.stop = Some(stop);
    let err = ops::create(&src, lo.path().as_ref(), &o, &Default::default()).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(std::fs::read(&man).ok(), Some(kept), "the stop removed the manifest");
    assert!(verified());
    // Written over in full: the new manifest describes it.
    let out = create(&src, &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(verified());
    drop(lo);
}
