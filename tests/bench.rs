//! End-to-end tests of `diskstream bench` (issue 4): every stage on a real loop device and a file
//! target with a tiny size, valid JSON with `_bytes_per_s` rates, no scratch file left behind (also
//! after Ctrl-C at any moment), and the refusals.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("diskstream-bench") || n.contains(".partial-"))
        .collect()
}

/// Every number under a key ending in `_bytes_per_s`, with its path.
fn rates(v: &serde_json::Value, path: String, out: &mut Vec<(String, f64)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k.ends_with("_bytes_per_s") {
                    out.push((
                        format!("{path}.{k}"),
                        x.as_f64().unwrap_or_else(|| panic!("{path}.{k} is not a number")),
                    ));
                }
                rates(x, format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| rates(x, format!("{path}[{i}]"), out)),
        _ => {}
    }
}

#[test]
fn bench_on_a_loop_device_and_a_file_target_reports_every_stage() {
    let dir = scratch();
    let backing = dir.path().join("dev");
    make_disk(&backing, 16 * MIB, Data::Mixed, 3);
    let lo = Loop::attach(&backing, true);
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let v = ds_json(&[
        "bench",
        "--device",
        lo.path(),
        "--target",
        s(&target),
        "--size",
        "8M",
        "--duration",
        "0.05",
    ]);
    for k in [
        "blake3",
        "sha256",
        "lz4_compress",
        "lz4_decompress",
        "zero_check",
        "zero_blake3_lz4",
        "zero_sha256_lz4",
    ] {
        assert!(
            v["kernels"][k]["per_core_bytes_per_s"].as_f64().unwrap() > 0.0,
            "kernel {k}"
        );
        assert!(
            v["kernels"][k]["all_cores_bytes_per_s"].as_f64().unwrap() > 0.0,
            "kernel {k}"
        );
    }
    // The CPU as /proc/cpuinfo names it, and the features the kernels depend on.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let model = v["cpu"]["model"].as_str().unwrap();
    assert!(cpuinfo.contains(model), "{model}");
    let flag = |f: &str| {
        cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|x| x == f))
    };
    assert_eq!(v["cpu"]["sha_ni"], flag("sha_ni"));
    assert_eq!(v["cpu"]["avx2"], flag("avx2"));
    assert_eq!(v["cpu"]["avx512f"], flag("avx512f"));
    assert_eq!(v["checksum"], "blake3");
    assert_eq!(v["verdict"]["checksum"], "blake3");
    assert_eq!(v["device"]["sweep"].as_array().unwrap().len(), 8);
    assert!(v["device"]["read_bytes_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["target"]["write_bytes_per_s"].as_f64().unwrap() > 0.0);
    for k in ["raw_null", "lz4_null", "raw_target", "lz4_target"] {
        assert!(
            v["pipeline"][format!("{k}_bytes_per_s")].as_f64().unwrap() > 0.0,
            "pipeline {k}"
        );
    }
    assert_eq!(v["verdict"]["measured_end_to_end"], true);
    assert!(v["verdict"]["raw_limited_by"].is_string() && v["verdict"]["lz4_limited_by"].is_string());
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let pages = if thp.is_empty() || thp.contains("[never]") {
        "4k"
    } else {
        "thp"
    };
    assert_eq!(v["buffer_pages"], pages, "bench says what its I/O buffers are made of");
    let mut all = Vec::new();
    rates(&v, String::new(), &mut all);
    assert!(all.len() >= 25, "only {} rates", all.len());
    assert!(all.iter().all(|(_, r)| r.is_finite() && *r > 0.0), "{all:?}");
    assert!(leftovers(&target).is_empty(), "scratch left: {:?}", leftovers(&target));
    assert_eq!(std::fs::read(&backing).unwrap().len() as u64, 16 * MIB);
}

#[test]
fn bench_text_output_states_units_and_a_verdict() {
    let out = ds(&["bench", "--duration", "0.05"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MB/s") && text.contains("MiB/s"), "{text}");
    assert!(text.contains("raw export:") && text.contains("limited by"), "{text}");
    assert!(text.contains("cpu: ") && text.contains("sha_ni"), "{text}");
}

#[test]
fn bench_refuses_devices_existing_files_export_dirs_and_bad_sources() {
    let dir = scratch();
    let backing = dir.path().join("dev");
    make_disk(&backing, 4 * MIB, Data::Random, 1);
    let before = std::fs::read(&backing).unwrap();
    let lo = Loop::attach(&backing, true);
    let r = ds(&["bench", "--target", lo.path(), "--size", "1M", "--duration", "0.05"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--force"));
    drop(lo);
    assert_eq!(
        std::fs::read(&backing).unwrap(),
        before,
        "the device was written without --force"
    );

    let existing = dir.path().join("precious");
    std::fs::write(&existing, b"keep me").unwrap();
    let r = ds(&["bench", "--target", s(&existing), "--duration", "0.05"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("--force"));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let export = dir.path().join("var/lib/ganeti/export/inst1");
    std::fs::create_dir_all(&export).unwrap();
    let r = ds(&["bench", "--target", s(&export), "--duration", "0.05"]);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("export directory"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    let r = ds(&[
        "bench",
        "--device",
        s(&dir.path().join("missing")),
        "--duration",
        "0.05",
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("missing"));
    let r = ds(&["bench", "--device", "/dev/zero", "--duration", "0.05"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a block device or regular file"));
}

/// `--force` lets bench write a device, never the one it reads: the same loop device, the
/// file behind it, or another loop device over that file. Refused before any stage runs (the
/// target stage wrote the device in place before the pipeline stage's checks refused it).
#[test]
fn bench_never_writes_over_the_device_it_reads_even_with_force() {
    let dir = scratch();
    let backing = dir.path().join("dev");
    make_disk(&backing, 8 * MIB, Data::Random, 2);
    let before = std::fs::read(&backing).unwrap();
    let (a, b) = (Loop::attach(&backing, false), Loop::attach(&backing, false));
    for (device, target) in [(a.path(), a.path()), (s(&backing), a.path()), (a.path(), b.path())] {
        let r = ds(&[
            "bench",
            "--device",
            device,
            "--target",
            target,
            "--force",
            "--size",
            "4M",
            "--duration",
            "0.05",
            "--json",
        ]);
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(r.status.code(), Some(1), "--device {device} --target {target}: {out}");
        assert!(out.contains("refusing to write over it"), "{out}");
        assert!(
            std::fs::read(&backing).unwrap() == before,
            "--device {device} --target {target}: the device it reads was written"
        );
    }
}

#[test]
fn bench_ctrl_c_at_any_moment_leaves_no_scratch_file() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_disk(&src, 64 * MIB, Data::Mixed, 5);
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    // Interrupt at spread-out moments: during the CPU stages, the reads, the writes, the pipelines.
    for delay_ms in [50u64, 300, 700, 1100, 1500, 1900, 2400, 3000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args([
                "bench",
                "--device",
                s(&src),
                "--target",
                s(&target),
                "--size",
                "64M",
                "--duration",
                "0.1",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let st = child.wait().unwrap();
        assert!(
            st.code() == Some(130) || st.success(),
            "exit {st:?} after SIGINT at {delay_ms} ms"
        );
        let err = std::fs::read_to_string(dir.path().join("err")).unwrap();
        if st.code() == Some(130) {
            // Said once, not "... removed (interrupted)".
            let said = err
                .lines()
                .find(|l| l.contains("interrupted by SIGINT"))
                .unwrap_or_default();
            assert!(said.ends_with("scratch files removed"), "at {delay_ms} ms: {err}");
        }
        assert!(
            leftovers(&target).is_empty(),
            "scratch left after SIGINT at {delay_ms} ms: {:?}",
            leftovers(&target)
        );
    }
}

/// Runs `sh -c SCRIPT` (which execs the binary, `$DS`) with `env`, killing it after `limit`:
/// returns the output and whether it had to be killed.
fn sh_within(script: &str, env: &[(&str, &str)], limit: Duration) -> (std::process::Output, bool) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .env("DS", env!("CARGO_BIN_EXE_diskstream"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn sh");
    let t0 = std::time::Instant::now();
    let mut killed = false;
    while child.try_wait().expect("try_wait").is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().expect("output"), killed)
}

/// A world-writable (sticky, like /tmp) directory in `parent`.
fn shared_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// Another user of a shared target directory plants a symbolic link to a block device under the
/// scratch name bench used to take (`.diskstream-bench-<pid>.tmp`, the pid known from `$$` before
/// `exec`): bench must neither write the device (that takes `--force` and naming the device) nor
/// fail; its scratch file is made afresh under a name of its own.
#[test]
fn bench_never_writes_a_device_planted_under_its_scratch_name() {
    let dir = scratch();
    let backing = dir.path().join("victim");
    make_disk(&backing, 32 * MIB, Data::Random, 11);
    let before = std::fs::read(&backing).unwrap();
    let lo = Loop::attach(&backing, true);
    let target = shared_dir(dir.path(), "shared");
    let script = format!(
        "ln -s {dev} {t}/.diskstream-bench-$$.tmp && exec \"$DS\" bench --target {t} --size 8M --duration 0.05 \
         --threads 1 --json",
        dev = lo.path(),
        t = s(&target)
    );
    let (out, killed) = sh_within(&script, &[], Duration::from_secs(120));
    assert!(!killed, "bench did not end");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["target"]["write_bytes_per_s"].as_f64().unwrap() > 0.0, "{v}");
    drop(lo);
    assert!(
        std::fs::read(&backing).unwrap() == before,
        "bench wrote the block device planted under its scratch name, without --force"
    );
    // The planted link is someone else's: left as it was; bench's own scratch is gone.
    let left = leftovers(&target);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(std::fs::symlink_metadata(target.join(&left[0]))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// The same for the manifest of the pipeline stages, which went to a predictable name in the
/// shared `$TMPDIR` (`.diskstream-bench-<pid>.manifest`): a link planted there neither stops
/// the run nor is written through.
#[test]
fn bench_keeps_its_manifest_out_of_names_planted_in_tmpdir() {
    let dir = scratch();
    let backing = dir.path().join("victim");
    make_disk(&backing, 8 * MIB, Data::Random, 12);
    let before = std::fs::read(&backing).unwrap();
    let lo = Loop::attach(&backing, true);
    let src = dir.path().join("src");
    make_disk(&src, 8 * MIB, Data::Mixed, 13);
    let tmp = shared_dir(dir.path(), "tmp");
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let script = format!(
        "ln -s {dev} {tmp}/.diskstream-bench-$$.manifest && exec \"$DS\" bench --device {src} --target {t} \
         --size 4M --duration 0.05 --threads 1 --json",
        dev = lo.path(),
        tmp = s(&tmp),
        src = s(&src),
        t = s(&target)
    );
    let (out, killed) = sh_within(&script, &[("TMPDIR", s(&tmp))], Duration::from_secs(180));
    assert!(!killed, "bench did not end");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a planted manifest name stopped bench: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["pipeline"]["raw_target_bytes_per_s"].as_f64().unwrap() > 0.0, "{v}");
    drop(lo);
    assert!(std::fs::read(&backing).unwrap() == before, "the device was written");
    assert_eq!(leftovers(&tmp).len(), 1, "only the planted link: {:?}", leftovers(&tmp));
    assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));
}

/// Values bench cannot measure with are usage errors (exit 2, one JSON failure object), not a
/// panic (`--duration NaN` was exit 101) nor a run with zero rates (`--size 0`).
#[test]
fn bench_refuses_durations_sizes_and_thread_counts_it_cannot_run() {
    for (flag, value, says) in [
        ("--duration", "NaN", "0.05 to 60"),
        ("--duration", "inf", "0.05 to 60"),
        ("--duration", "-inf", "0.05 to 60"),
        ("--duration", "1e300", "0.05 to 60"),
        ("--duration", "0", "0.05 to 60"),
        ("--duration", "61", "0.05 to 60"),
        ("--size", "0", "minimum of 1 MiB"),
        ("--size", "4K", "minimum of 1 MiB"),
        ("--size", "1023K", "minimum of 1 MiB"),
        ("--threads", "0", "1 to 256"),
        ("--threads", "257", "1 to 256"),
        ("--threads", "1000", "1 to 256"),
    ] {
        let arg = format!("{flag}={value}");
        let mut args = vec!["bench", &arg, "--json"];
        if flag != "--duration" {
            args.extend(["--duration", "0.05"]);
        }
        let out = common::ds_within(&args, Duration::from_secs(60));
        let what = format!("{flag} {value}");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not one JSON object: {e}"));
        assert_eq!(
            (v["ok"].as_bool(), v["kind"].as_str()),
            (Some(false), Some("usage")),
            "{what}: {v}"
        );
        assert_eq!(v["exit_code"], 2, "{what}");
        assert!(v["error"].as_str().unwrap().contains(says), "{what}: {v}");
    }
}

const PIDS: &str = "/sys/fs/cgroup/pids";

/// A cgroup v1 pids group with a task limit; removed on drop (its tasks killed first, so also
/// after a failed test).
struct PidsGroup(std::path::PathBuf);

impl PidsGroup {
    fn new(max: u32) -> Self {
        assert!(
            Path::new(PIDS).join("cgroup.procs").exists(),
            "this test needs the cgroup v1 pids controller at {PIDS} (and root)"
        );
        let dir = Path::new(PIDS).join(format!("dstest-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let g = Self(dir);
        std::fs::write(g.0.join("pids.max"), max.to_string()).unwrap();
        g
    }
}

impl Drop for PidsGroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            for pid in std::fs::read_to_string(self.0.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                let _ = Command::new("kill").args(["-s", "KILL", pid]).status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

/// In a pids cgroup that allows fewer threads than `--threads`, bench used to hang for ever with
/// every started kernel thread spinning (the failed spawn panicked inside the scope, which then
/// waited for threads whose stop flag nobody set). Now it stops them and fails at once.
#[test]
fn bench_fails_cleanly_when_its_threads_cannot_be_started() {
    let group = PidsGroup::new(24);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$DS\" bench --duration 0.05 --threads 100 --json",
        group.0.display()
    );
    let t0 = std::time::Instant::now();
    let (out, killed) = sh_within(&script, &[], Duration::from_secs(30));
    let took = t0.elapsed();
    drop(group);
    assert!(!killed, "bench hung when it could not start its threads");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(
        (v["ok"].as_bool(), v["kind"].as_str()),
        (Some(false), Some("error")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("cannot start thread"), "{v}");
}
