//! Adversarial tests of `diskstream image` outputs and inputs, from a review done as an attacker
//! (2026-11-27). Each failed before its fix: two writers of one new name (the second replaced the
//! first's output), a live writer whose binary is not named `diskstream` (its temporary file was
//! swept), an input named like a leftover temporary file (swept: the source deleted), a restore
//! onto a loop device backed by the image (the image destroyed), a raw image on a device larger
//! than its disk (reported corrupt), a read-only device, files of the kernel's pseudo file
//! systems (a `trace_pipe` hung every command, immune to SIGINT), flags a command ignored, and
//! messages that named an internal temporary file or two disagreeing offsets.
//!
//! Needs root (loop devices, mkfs.ext4, mount).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_diskstream");

/// A child process killed and reaped on drop (also when the test fails).
struct Bg(Option<Child>);

impl Bg {
    fn spawn(bin: &Path, args: &[&str]) -> Self {
        let c = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Self(Some(c))
    }

    fn wait(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until a temporary file of `name` exists in `dir` (the writer is under way).
fn wait_for_partial(dir: &Path, name: &str) {
    let t0 = Instant::now();
    while !partials(dir).iter().any(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!(".{name}.partial-"))
    }) {
        assert!(t0.elapsed() < Duration::from_secs(20), "no temporary file of {name}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn of_two_writers_of_one_new_name_the_second_to_finish_fails_and_keeps_the_first() {
    let dir = scratch();
    let d = dir.path();
    let (big, small, out) = (d.join("big"), d.join("small"), d.join("race.raw"));
    make_disk(&big, 48 * MIB, Data::Random, 1);
    make_disk(&small, 4 * MIB, Data::Mixed, 2);
    for format in ["raw", "dsimg"] {
        let slow = Bg::spawn(
            Path::new(BIN),
            &[
                "image",
                "create",
                s(&big),
                s(&out),
                "--format",
                format,
                "--bwlimit",
                "24M",
            ],
        );
        wait_for_partial(d, "race.raw");
        ds_json(&["image", "create", s(&small), s(&out), "--format", format]);
        let r = slow.wait();
        assert!(
            !r.status.success(),
            "{format}: the second commit replaced the first output"
        );
        let e = stderr_of(&r);
        assert!(e.contains("race.raw") && e.contains("--force"), "{format}: {e}");
        // The first's output and manifest are whole, and the pair verifies.
        ds_json(&["image", "verify", s(&out)]);
        let restored = d.join("back");
        ds_json(&["image", "restore", s(&out), s(&restored)]);
        assert_eq!(sha(&restored), sha(&small), "{format}");
        assert!(partials(d).is_empty(), "{:?}", partials(d));
        for p in [&out, &restored, &d.join("race.raw.manifest")] {
            std::fs::remove_file(p).unwrap();
        }
    }
}

#[test]
fn a_live_writer_under_another_name_keeps_its_temporary_file() {
    let dir = scratch();
    let d = dir.path();
    // The same binary under a name that does not start with `diskstream` (a distribution's
    // rename, a wrapper): its temporary file is guarded by its lock, not its name.
    let renamed = d.join("export-tool");
    std::fs::copy(BIN, &renamed).unwrap();
    let (big, small, out) = (d.join("big"), d.join("small"), d.join("o.raw"));
    make_disk(&big, 48 * MIB, Data::Random, 3);
    make_disk(&small, 4 * MIB, Data::Mixed, 4);
    let slow = Bg::spawn(
        &renamed,
        &["image", "create", s(&big), s(&out), "-f", "--bwlimit", "24M"],
    );
    wait_for_partial(d, "o.raw");
    ds_json(&["image", "create", s(&small), s(&out), "-f"]);
    let r = slow.wait();
    assert!(r.status.success(), "the first writer failed: {}", stderr_of(&r));
    // Both forced: the last to commit wins, whole.
    ds_json(&["image", "verify", s(&out)]);
    assert_eq!(sha(&out), sha(&big));
    assert!(partials(d).is_empty(), "{:?}", partials(d));
}

#[test]
fn an_input_named_like_a_leftover_is_never_swept() {
    let dir = scratch();
    let d = dir.path();
    for name in [
        ".sal.raw.partial-99999-0",
        ".sal.raw.manifest.partial-99999-0",
        ".sal.raw.partial-99999",
    ] {
        let src = d.join(name);
        make_disk(&src, 4 * MIB, Data::Mixed, 5);
        let before = sha(&src);
        ds_json(&["image", "create", s(&src), s(&d.join("sal.raw"))]);
        assert!(src.exists(), "the source {name} was swept");
        assert_eq!(sha(&src), before);
        assert_eq!(sha(&d.join("sal.raw")), before);
        std::fs::remove_file(d.join("sal.raw")).unwrap();
        std::fs::remove_file(d.join("sal.raw.manifest")).unwrap();
        std::fs::remove_file(&src).unwrap();
    }
    // restore: the image and its manifest, named like the destination's leftovers.
    let src = d.join("src");
    make_disk(&src, 4 * MIB, Data::Mixed, 6);
    let img = d.join(".back.partial-99999-1");
    let man = d.join(".back.partial-99999-2");
    ds_json(&["image", "create", s(&src), s(&img), "--manifest", s(&man)]);
    ds_json(&["image", "restore", s(&img), s(&d.join("back")), "--manifest", s(&man)]);
    assert!(img.exists() && man.exists(), "restore swept its own inputs");
    assert_eq!(sha(&d.join("back")), sha(&src));
}

#[test]
fn a_loop_device_backed_by_the_other_end_is_refused() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 8 * MIB, Data::Random, 7);
    // restore IMAGE onto a loop device over IMAGE: would overwrite the image as it reads it.
    let img = d.join("victim.ds");
    ds_json(&[
        "image",
        "create",
        s(&src),
        s(&img),
        "--format",
        "dsimg",
        "--compress",
        "none",
    ]);
    let before = sha(&img);
    let lo = Loop::attach(&img, false);
    let r = ds(&["image", "restore", s(&img), lo.path(), "-f"]);
    assert!(!r.status.success(), "restore onto the image's own loop device");
    assert!(stderr_of(&r).contains("is the input"), "{}", stderr_of(&r));
    drop(lo);
    assert_eq!(sha(&img), before, "the image changed");
    // create from a loop device onto its own backing file.
    let raw = d.join("victim.raw");
    ds_json(&["image", "create", s(&src), s(&raw)]);
    let before = sha(&raw);
    let lo = Loop::attach(&raw, false);
    let r = ds(&["image", "create", lo.path(), s(&raw), "-f"]);
    assert!(!r.status.success(), "create from a loop device onto its backing file");
    assert!(stderr_of(&r).contains("is the input"), "{}", stderr_of(&r));
    drop(lo);
    assert_eq!(sha(&raw), before, "the backing file changed");
}

#[test]
fn a_raw_image_on_a_larger_device_verifies_restores_and_is_described() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 24 * MIB, Data::Mixed, 8);
    let backing = d.join("dev40");
    std::fs::File::create(&backing).unwrap().set_len(40 * MIB).unwrap();
    let lo = Loop::attach(&backing, false);
    let man = d.join("dev.manifest");
    ds_json(&["image", "create", s(&src), lo.path(), "-f", "--manifest", s(&man)]);
    let v = ds_json(&["image", "verify", lo.path(), "--manifest", s(&man)]);
    assert_eq!(v["disk_size"], 24 * MIB);
    let i = ds_json(&["image", "info", lo.path(), "--manifest", s(&man)]);
    assert_eq!(i["disk_size"], 24 * MIB);
    let back = d.join("back");
    ds_json(&["image", "restore", lo.path(), s(&back), "--manifest", s(&man)]);
    assert_eq!(sha(&back), sha(&src));
    // A file is still held to its exact length: one byte more is damage.
    ds_json(&["image", "create", s(&src), s(&d.join("exact.raw"))]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("exact.raw"))
        .unwrap()
        .set_len(24 * MIB + 1)
        .unwrap();
    let r = ds(&["image", "verify", s(&d.join("exact.raw"))]);
    assert!(!r.status.success());
    assert!(stderr_of(&r).contains("truncated or extended"), "{}", stderr_of(&r));
}

#[test]
fn a_read_only_device_is_refused_by_name() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 4 * MIB, Data::Mixed, 9);
    let backing = d.join("ro");
    std::fs::File::create(&backing).unwrap().set_len(8 * MIB).unwrap();
    let before = sha(&backing);
    let lo = Loop::attach_read_only(&backing);
    let r = ds(&[
        "image",
        "create",
        s(&src),
        lo.path(),
        "-f",
        "--manifest",
        s(&d.join("m")),
    ]);
    assert!(!r.status.success());
    let e = stderr_of(&r);
    assert!(e.contains(lo.path()) && e.contains("read-only"), "{e}");
    assert!(!d.join("m").exists(), "a manifest was written for a refused output");
    drop(lo);
    assert_eq!(sha(&backing), before);
}

#[test]
fn files_of_the_kernels_pseudo_file_systems_are_refused_at_once() {
    let dir = scratch();
    let d = dir.path();
    let img = d.join("img.raw");
    let src = d.join("src");
    make_disk(&src, MIB, Data::Mixed, 10);
    ds_json(&["image", "create", s(&src), s(&img)]);
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "image".into(),
                "create".into(),
                "/proc/self/status".into(),
                s(&d.join("o")).into(),
            ],
            "proc",
        ),
        (
            vec!["image".into(), "verify".into(), "/proc/self/status".into()],
            "proc",
        ),
        (
            vec![
                "image".into(),
                "verify".into(),
                s(&img).into(),
                "--manifest".into(),
                "/proc/self/status".into(),
            ],
            "proc",
        ),
        (
            vec![
                "image".into(),
                "info".into(),
                "/sys/kernel/mm/transparent_hugepage/enabled".into(),
            ],
            "sysfs",
        ),
    ];
    // A file whose reads block until the kernel traces something, where tracefs is mounted.
    for trace in ["/sys/kernel/tracing/trace_pipe", "/sys/kernel/debug/tracing/trace_pipe"] {
        if Path::new(trace).exists() {
            for op in ["verify", "info"] {
                cases.push((vec!["image".into(), op.into(), trace.into()], "tracefs"));
            }
            cases.push((
                vec!["image".into(), "restore".into(), trace.into(), s(&d.join("r")).into()],
                "tracefs",
            ));
            break;
        }
    }
    for (args, fs) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ds_within(&a, Duration::from_secs(10));
        assert!(!r.status.success(), "{a:?} succeeded");
        let e = stderr_of(&r);
        assert!(e.contains(&format!("kernel's {fs} file system")), "{a:?}: {e}");
    }
    assert!(!d.join("o").exists() && !d.join("r").exists());
    assert!(partials(d).is_empty());
}

#[test]
fn flags_a_command_does_not_use_are_refused() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, MIB, Data::Mixed, 11);
    let img = d.join("img.raw");
    ds_json(&["image", "create", s(&src), s(&img)]);
    let m = d.join("m");
    for args in [
        vec!["image", "scan", s(&src), "--manifest", s(&m)],
        vec!["image", "scan", s(&src), "--zero-target", "skip"],
        vec!["image", "verify", s(&img), "--zero-target", "skip"],
        vec!["image", "verify", s(&img), "--chunk-size", "4K"],
        vec!["image", "restore", s(&img), s(&d.join("r")), "--chunk-size", "4K"],
        vec!["image", "verify", s(&img), "--write-depth", "4"],
        vec!["image", "scan", s(&src), "--write-depth", "4"],
    ] {
        let r = ds(&args);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", stderr_of(&r));
        assert!(
            stderr_of(&r).contains("unexpected argument"),
            "{args:?}: {}",
            stderr_of(&r)
        );
    }
    assert!(!m.exists() && !d.join("r").exists());
    // Where they apply, they still work.
    ds_json(&["image", "scan", s(&src), "--chunk-size", "64K"]);
    ds_json(&["image", "restore", s(&img), s(&d.join("r2")), "--write-depth", "4"]);
    ds_json(&["image", "verify", s(&img), "--manifest", s(&d.join("img.raw.manifest"))]);
}

#[test]
fn outputs_named_oddly_get_errors_that_name_them() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, MIB, Data::Mixed, 12);
    // A directory name (trailing slash), missing or not.
    std::fs::create_dir(d.join("existing")).unwrap();
    for name in ["newdir", "existing"] {
        let o = format!("{}/{name}/", d.display());
        let r = ds(&["image", "create", s(&src), &o]);
        assert!(!r.status.success());
        let e = stderr_of(&r);
        assert!(e.contains(&o) && e.contains("directory"), "{e}");
        assert!(!e.contains(".partial-"), "the message names a temporary file: {e}");
    }
    // A file in a directory that does not exist.
    let missing = d.join("nodir").join("o.raw");
    let r = ds(&["image", "create", s(&src), s(&missing)]);
    let e = stderr_of(&r);
    assert!(e.contains("nodir") && e.contains("does not exist"), "{e}");
    assert!(!e.contains(".partial-"), "{e}");
    // The longest name whose manifest name still fits (255 bytes): works.
    let long = d.join("x".repeat(243) + ".ds");
    ds_json(&["image", "create", s(&src), s(&long), "--format", "dsimg"]);
    ds_json(&["image", "verify", s(&long)]);
    assert!(partials(d).is_empty());
}

/// An output in a read-only directory is named as the user gave it, not by the temporary file
/// that was never made.
#[test]
fn an_output_that_cannot_be_created_is_named_not_its_temporary_file() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 4 * MIB, Data::Mixed, 3);
    std::fs::create_dir(dir.path().join("w")).unwrap();
    let ro = dir.path().join("ro");
    let _bind = ReadOnlyBind::new(&dir.path().join("w"), &ro);
    let out = ro.join("o.raw");
    let r = ds(&["image", "create", s(&src), s(&out)]);
    let e = stderr_of(&r);
    assert_eq!(r.status.code(), Some(1), "{e}");
    let line = e
        .lines()
        .find(|l| l.starts_with("diskstream: error:"))
        .unwrap_or_default();
    // The manifest is made first: `create OUT.manifest: Read-only file system`.
    let said = format!("create {}.manifest: Read-only file system", out.display());
    assert!(line.contains(&said), "{e}");
    assert!(!line.contains(".partial-") && !line.contains("byte offset"), "{e}");
}

#[test]
fn a_dsimg_on_a_full_file_system_names_one_file_and_one_offset() {
    let dir = scratch();
    let at = dir.path().join("small");
    let fs = LoopFs::ext4_at(&at, 16);
    let src = dir.path().join("src");
    make_disk(&src, 48 * MIB, Data::Random, 13);
    let r = ds(&["image", "create", s(&src), s(&at.join("o.ds")), "--format", "dsimg"]);
    assert!(!r.status.success());
    let e = stderr_of(&r);
    let line = e
        .lines()
        .find(|l| l.starts_with("diskstream: error:"))
        .unwrap_or_else(|| panic!("no error line: {e}"));
    assert!(line.contains("No space left"), "{line}");
    assert_eq!(line.matches("byte offset").count(), 1, "{line}");
    // With what the file system had free, and of how much.
    let free = format!(
        " MiB free of {:.1} MiB on its file system",
        fs.size() as f64 / 1048576.0
    );
    assert!(line.contains(&free) && line.contains(s(&at)), "{line}");
    // Named as the output the user asked for, not its (removed) temporary file.
    assert!(
        line.contains(&format!("{} at byte offset", at.join("o.ds").display())),
        "{line}"
    );
    assert!(!line.contains(".partial-"), "{line}");
    assert!(partials(&at).is_empty(), "{:?}", partials(&at));
    // A restore that runs out of space there names its output too.
    let img = dir.path().join("big.ds");
    ds_json(&["image", "create", s(&src), s(&img), "--format", "dsimg"]);
    let r = ds(&["image", "restore", s(&img), s(&at.join("r.raw"))]);
    let e = stderr_of(&r);
    assert!(!r.status.success(), "{e}");
    let line = e
        .lines()
        .find(|l| l.starts_with("diskstream: error:"))
        .unwrap_or_default();
    let named = format!("{} at byte offset", at.join("r.raw").display());
    assert!(line.contains("No space left") && line.contains(&named), "{e}");
    assert!(!line.contains(".partial-") && partials(&at).is_empty(), "{e}");
    drop(fs);
}

/// A cgroup (v1 `blkio`) whose reads of one device are throttled, removed on drop.
struct SlowReads {
    dir: PathBuf,
}

impl SlowReads {
    fn new(dev: &Path, bytes_per_s: u64) -> Self {
        use std::os::unix::fs::MetadataExt;
        let root = Path::new("/sys/fs/cgroup/blkio");
        assert!(
            root.join("blkio.throttle.read_bps_device").exists(),
            "this test needs the cgroup v1 blkio controller at {}",
            root.display()
        );
        let dir = root.join(format!("dstest-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("make the cgroup");
        let rdev = std::fs::metadata(dev).unwrap().rdev();
        // glibc's `major()` and `minor()`.
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        let slow = Self { dir };
        std::fs::write(
            slow.dir.join("blkio.throttle.read_bps_device"),
            format!("{major}:{minor} {bytes_per_s}"),
        )
        .expect("set the read limit");
        slow
    }
}

impl Drop for SlowReads {
    fn drop(&mut self) {
        // The test's process has exited by now; an empty cgroup can go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_stop_on_a_crawling_device_says_what_it_waits_for() {
    let dir = scratch();
    let d = dir.path();
    let backing = d.join("disk");
    make_disk(&backing, 16 * MIB, Data::Random, 14);
    let lo = Loop::attach(&backing, true);
    // 8 reads of 64 KiB in flight at 64 KiB/s: stopping waits seconds for reads it cannot call
    // back.
    let slow = SlowReads::new(&lo.dev, 64 << 10);
    let out = d.join("o.raw");
    let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", slow.dir.display());
    let child = Command::new("sh")
        .args(["-c", &script, BIN, "image", "create", lo.path(), s(&out)])
        .args(["--queue-depth", "8", "--chunk-size", "64K", "--threads", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let bg = Bg(Some(child));
    wait_for_partial(d, "o.raw");
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let st = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(st.success());
    let r = bg.wait();
    let waited = t0.elapsed();
    let e = stderr_of(&r);
    assert_eq!(r.status.code(), Some(130), "{e}");
    assert!(
        waited > Duration::from_secs(3),
        "stopped in {waited:?}: the throttle did not hold the reads (the test proves nothing)"
    );
    assert!(waited < Duration::from_secs(60), "{waited:?}");
    assert!(
        e.contains("SIGINT: still stopping"),
        "a {waited:?} wait without a word: {e}"
    );
    assert!(partials(d).is_empty(), "{:?}", partials(d));
    assert!(!out.exists());
    drop(lo);
}
