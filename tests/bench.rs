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
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let st = child.wait().unwrap();
        assert!(
            st.code() == Some(130) || st.success(),
            "exit {st:?} after SIGINT at {delay_ms} ms"
        );
        assert!(
            leftovers(&target).is_empty(),
            "scratch left after SIGINT at {delay_ms} ms: {:?}",
            leftovers(&target)
        );
    }
}
