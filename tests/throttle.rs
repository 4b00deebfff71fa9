//! `--bwlimit`: a throttled copy takes the time the rate says and never bursts above it, read
//! back from the output file's allocated bytes while it is being written.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Allocated bytes of the output, under its final name or its `.NAME.partial-PID-N` staging name.
fn written(dir: &Path, name: &str) -> u64 {
    std::fs::read_dir(dir)
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n == name || n.starts_with(&format!(".{name}.partial-"))
        })
        .map(|e| e.metadata().map(|m| m.blocks() * 512).unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// Runs `diskstream ARGS`, sampling the output's allocated bytes every 50 ms; returns the wall
/// time and the samples.
fn run_sampled(args: &[&str], dir: &Path, out: &str) -> (Duration, Vec<(Duration, u64)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn diskstream");
    let t0 = Instant::now();
    let mut samples = Vec::new();
    loop {
        samples.push((t0.elapsed(), written(dir, out)));
        if let Some(status) = child.try_wait().expect("wait") {
            let took = t0.elapsed();
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
            assert!(status.success(), "diskstream {args:?}: {err}");
            samples.push((took, written(dir, out)));
            return (took, samples);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The most bytes written in any one-second window of the samples.
fn max_per_second(samples: &[(Duration, u64)]) -> u64 {
    let mut best = 0;
    for (i, &(t, b)) in samples.iter().enumerate() {
        let end = samples[i..]
            .iter()
            .take_while(|&&(u, _)| u <= t + Duration::from_secs(1))
            .last()
            .map_or(b, |&(_, e)| e);
        best = best.max(end - b);
    }
    best
}

#[test]
fn bwlimit_50m_copies_a_gib_in_21_5_s_without_bursts() {
    let dir = common::scratch();
    let src = dir.path().join("src.img");
    // Incompressible, no zero chunk: every byte is disk data to move.
    common::make_disk(&src, 1 << 30, common::Data::Random, 7);
    let (took, samples) = run_sampled(
        &[
            "image",
            "create",
            "--format",
            "raw",
            "--bwlimit",
            "50M",
            src.to_str().expect("utf-8"),
            dir.path().join("out.img").to_str().expect("utf-8"),
        ],
        dir.path(),
        "out.img",
    );
    let want = (1u64 << 30) as f64 / 50e6; // 21.47 s
    let secs = took.as_secs_f64();
    assert!(
        (secs - want).abs() <= want * 0.10,
        "1 GiB at 50 MB/s took {secs:.2} s, want {want:.2} s ± 10 %"
    );
    let peak = max_per_second(&samples);
    eprintln!("1 GiB at --bwlimit 50M: {secs:.2} s (want {want:.2}), busiest second {peak} bytes");
    assert!(
        peak <= 60_000_000,
        "{peak} bytes in one second (limit 50 MB/s, at most 60 MB in any second)"
    );
    assert!(peak >= 40_000_000, "the sampling saw the copy run: peak {peak} bytes/s");
    common::assert_same_bytes(&src, &dir.path().join("out.img"));
}

#[test]
fn bwlimit_paces_restore_and_is_refused_when_not_a_rate() {
    let dir = common::scratch();
    let src = dir.path().join("src.img");
    common::make_disk(&src, 100 << 20, common::Data::Random, 8);
    let img = dir.path().join("img.dsimg");
    let out = common::ds(&[
        "image",
        "create",
        "--format",
        "dsimg",
        "--compress",
        "none",
        src.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (took, samples) = run_sampled(
        &[
            "image",
            "restore",
            "--bwlimit",
            "25MB/s",
            img.to_str().unwrap(),
            dir.path().join("back.img").to_str().unwrap(),
        ],
        dir.path(),
        "back.img",
    );
    let want = (100u64 << 20) as f64 / 25e6; // 4.19 s
    let secs = took.as_secs_f64();
    assert!(
        (secs - want).abs() <= want * 0.15,
        "100 MiB at 25 MB/s took {secs:.2} s, want {want:.2} s"
    );
    let peak = max_per_second(&samples);
    assert!(peak <= 32_000_000, "{peak} bytes in one second at 25 MB/s");
    common::assert_same_bytes(&src, &dir.path().join("back.img"));

    for bad in ["fast", "-5M", "1e6", "50Mbit"] {
        let out = common::ds(&["image", "scan", &format!("--bwlimit={bad}"), src.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "--bwlimit {bad} is a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{bad:?} is not a rate")), "{err}");
    }
}

/// Runs `diskstream ARGS` with `env`, and while it runs reads its nice value
/// (/proc/PID/stat) and I/O priority (`ionice -p PID`).
fn priorities_while_running(args: &[&str], env: &[(&str, &str)]) -> (i64, String, std::process::Output) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskstream"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let t0 = Instant::now();
    let (mut nice, mut ionice) = (i64::MIN, String::new());
    // Wait until the handlers are up (the priorities are set before the work starts).
    while t0.elapsed() < Duration::from_secs(5) && !common::handlers_installed(pid) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        nice = after
            .split_whitespace()
            .nth(16)
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MIN);
    }
    if let Ok(out) = Command::new("ionice").args(["-p", &pid.to_string()]).output() {
        ionice = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    (nice, ionice, child.wait_with_output().expect("wait"))
}

#[test]
fn ionice_and_nice_apply_to_the_run_and_defaults_come_from_the_config_file() {
    let dir = common::scratch();
    let src = dir.path().join("src.img");
    common::make_disk(&src, 64 << 20, common::Data::Random, 9);
    let srcs = src.to_str().unwrap();
    // 64 MiB at 32 MB/s: about 2 s to look at the process.
    let (nice, ionice, out) = priorities_while_running(
        &[
            "image",
            "scan",
            "--bwlimit",
            "32M",
            "--ionice",
            "idle",
            "--nice",
            "7",
            srcs,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(nice, 7, "nice of the running process");
    assert_eq!(ionice, "idle", "ionice -p of the running process");

    // The same from a defaults file; a flag still wins over it.
    let conf = dir.path().join("diskstream.toml");
    std::fs::write(&conf, "bwlimit = \"32M\"\nionice = \"best-effort:6\"\nnice = 3\n").unwrap();
    let env = [("DISKSTREAM_CONFIG", conf.to_str().unwrap())];
    let (nice, ionice, out) = priorities_while_running(&["image", "scan", "--nice", "5", srcs], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((nice, ionice.as_str()), (5, "best-effort: prio 6"));
    let t0 = Instant::now();
    let out = common::ds_env(&["image", "scan", "--bwlimit", "10G", srcs], &env);
    assert!(out.status.success());
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "--bwlimit on the command line wins: {:?}",
        t0.elapsed()
    );

    // Bad defaults files are refused with the file and the key named.
    for (text, want) in [
        ("bwlimit = \"fast\"\n", "bwlimit: \"fast\" is not a rate"),
        ("ionice = \"realtime\"\n", "ionice: \"realtime\" is not an I/O priority"),
        ("nice = 40\n", "nice: 40 is not in 0..19"),
        ("bwlimt = \"5M\"\n", "unknown field `bwlimt`"),
        ("bwlimit = 5\n", "invalid type"),
    ] {
        std::fs::write(&conf, text).unwrap();
        let out = common::ds_env(&["image", "scan", srcs], &env);
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(conf.to_str().unwrap()) && err.contains(want),
            "{text}: {err}"
        );
    }
    let missing = dir.path().join("nope.toml");
    let out = common::ds_env(
        &["image", "scan", srcs],
        &[("DISKSTREAM_CONFIG", missing.to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file (named by DISKSTREAM_CONFIG)"));
    // A directory by that name is said to be one (it was "no such file").
    let out = common::ds_env(
        &["image", "scan", srcs],
        &[("DISKSTREAM_CONFIG", dir.path().to_str().unwrap())],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a regular file (a directory) (named by DISKSTREAM_CONFIG)"),
        "{err}"
    );
}

/// A SIGINT to a run paced far below the disk's speed stops it at once, on every read path:
/// the pacer's waits are cut into short naps that end on the stop flag (a 100 KB/s scan of
/// 16 MiB once took 19 s after the signal: the io_uring reader slept through its whole wait
/// in one piece, and the pread reader's wait never saw the flag). So the "still stopping"
/// notice, 2 s after the signal, has nothing to say either.
#[test]
fn sigint_stops_a_slowly_paced_run_within_2_s_on_every_read_path() {
    let dir = common::scratch();
    let src = dir.path().join("src.img");
    common::make_disk(&src, 16 << 20, common::Data::Random, 10);
    for path in [&["--backend", "uring"][..], &["--backend", "pread"], &["--sequential"]] {
        let mut args = vec!["image", "scan", "--bwlimit", "100K"];
        args.extend_from_slice(path);
        args.push(src.to_str().unwrap());
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn diskstream");
        let pid = child.id();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) && !common::handlers_installed(pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Into the paced reads: past the first burst, into a wait of about 10 s per chunk.
        std::thread::sleep(Duration::from_millis(1500));
        let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
        let signalled = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if signalled.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = signalled.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
        assert_eq!(status.and_then(|s| s.code()), Some(130), "{args:?}: {err}");
        assert!(
            took < Duration::from_secs(2),
            "{args:?}: stopped {took:?} after SIGINT: {err}"
        );
        assert!(!err.contains("still stopping"), "{args:?}: {err}");
    }
}

/// `--bwlimit 0` is no limit, as rsync and vzdump read it (it was 1 byte per second), also
/// over a defaults file's limit and as the file's own value; a rate above 0 but below a byte
/// per second is refused.
#[test]
fn bwlimit_0_is_no_limit_and_a_rate_below_a_byte_per_second_is_refused() {
    let dir = common::scratch();
    let src = dir.path().join("src.img");
    common::make_disk(&src, 16 << 20, common::Data::Random, 11);
    let srcs = src.to_str().unwrap();
    let conf = dir.path().join("diskstream.toml");
    let no_file = [("DISKSTREAM_CONFIG", "")];
    let with_file = [("DISKSTREAM_CONFIG", conf.to_str().unwrap())];
    for (args, file, env) in [
        (&["--bwlimit", "0"][..], None, &no_file),
        (&["--bwlimit", "0M/s"][..], None, &no_file),
        (&["--bwlimit", "0"][..], Some("bwlimit = \"1K\"\n"), &with_file),
        (&[][..], Some("bwlimit = \"0\"\n"), &with_file),
    ] {
        if let Some(text) = file {
            std::fs::write(&conf, text).unwrap();
        }
        let mut a = vec!["image", "scan"];
        a.extend_from_slice(args);
        a.push(srcs);
        let t0 = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(&a)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn diskstream");
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = t0.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "{a:?} with {file:?}: {status:?} after {took:?}"
        );
        assert!(took < Duration::from_secs(5), "{a:?} with {file:?}: {took:?}");
    }
    for bad in ["0.5", "0.9/s", "0.0000001M"] {
        let out = common::ds_env(&["image", "scan", &format!("--bwlimit={bad}"), srcs], &no_file);
        assert_eq!(out.status.code(), Some(2), "--bwlimit {bad} is a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{bad:?} is not a rate (below 1 byte per second)")),
            "{err}"
        );
    }
}
