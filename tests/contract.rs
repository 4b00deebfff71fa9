//! The JSON contract (docs/json.md) and the CLI's conventions, end to end: every command's
//! `--json` result and every `--progress json` line validates against the checked-in schema
//! (docs/schema/), one induced failure of each kind exits with the code of the table and names
//! its `kind`, the log obeys -q, -v and DISKSTREAM_LOG, and `--help` lists enum values, hides
//! Ganeti's refused flags and names `$DISKSTREAM_CLUSTER`. Runs without root (files only).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const INST: &str = "inst1.example.com";

fn validator(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema").join(name);
    let schema: Value = serde_json::from_str(&fs::read_to_string(&path).expect("schema file")).expect("schema JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

/// What one run printed: exit code, the stdout JSON result (if any), the stderr JSON lines.
struct Run {
    code: Option<i32>,
    result: Option<Value>,
    events: Vec<Value>,
    stderr: String,
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .env_remove("DISKSTREAM_LOG")
        .env_remove("DISKSTREAM_CLUSTER")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run diskstream");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let result = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok());
    let events = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stderr line {l:?} is not JSON: {e}")))
        .collect();
    Run {
        code: out.status.code(),
        result,
        events,
        stderr,
    }
}

/// Checks a run's result against the schema, its op and ok, and every event line; returns the
/// result.
fn checked(r: &Run, op: &str, ok: bool) -> Value {
    let v = r
        .result
        .clone()
        .unwrap_or_else(|| panic!("{op}: no JSON result; stderr: {}", r.stderr));
    if let Err(e) = validator("result.schema.json").validate(&v) {
        panic!("{op}: result does not validate: {e}\n{v}");
    }
    assert_eq!(v["op"], op, "{v}");
    assert_eq!(v["ok"], ok, "{v}");
    assert_eq!(v["schema_version"], 1, "{v}");
    let events = validator("progress.schema.json");
    for e in &r.events {
        if let Err(err) = events.validate(e) {
            panic!("{op}: progress line does not validate: {err}\n{e}");
        }
    }
    v
}

/// A cluster of two nodes with one stopped instance on file disks.
fn cluster(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let roots = node_roots(dir, 2);
    let disk = dir.join("disk0.img");
    make_disk(&disk, 4 << 20, Data::Mixed, 7);
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state: "down",
        disks: vec![DiskSpec {
            template: "file",
            path: disk,
            mib: 4,
        }],
        process: None,
    };
    (write_cluster(dir, &roots, &[inst], &[]), roots)
}

fn pre_hook(root: &Path, body: &str) {
    let d = root.join("etc/ganeti/hooks/instance-export-pre.d");
    fs::create_dir_all(&d).unwrap();
    let p = d.join("10-test");
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn image_commands_results_and_progress_lines_validate() {
    let dir = scratch();
    let src = dir.path().join("src.img");
    make_disk(&src, 16 << 20, Data::Mixed, 1);
    let img = dir.path().join("out.dsimg");
    let back = dir.path().join("back.img");
    let (src_s, img_s, back_s) = (s(&src), s(&img), s(&back));
    let cases: [(&str, Vec<&str>); 4] = [
        (
            "image create",
            vec!["image", "create", src_s, img_s, "--format", "dsimg"],
        ),
        ("image verify", vec!["image", "verify", img_s]),
        ("image restore", vec!["image", "restore", img_s, back_s]),
        ("image scan", vec!["image", "scan", src_s]),
    ];
    for (op, args) in cases {
        let r = run(&[&args[..], &["--json", "--progress", "json"]].concat(), &[]);
        assert_eq!(r.code, Some(0), "{op}: {}", r.stderr);
        let v = checked(&r, op, true);
        assert_eq!(v["disk_size"], 16 << 20, "{v}");
        let last = r
            .events
            .last()
            .unwrap_or_else(|| panic!("{op}: no progress line: {}", r.stderr));
        assert_eq!(last["event"], "progress");
        assert_eq!(last["op"], op);
        assert_eq!(last["done_bytes"], 16 << 20, "{last}");
        assert!(last["bytes_per_s"].as_f64().unwrap() > 0.0, "{last}");
    }
    // The schema can fail: a result under another command's name, without a field, or with a
    // rate of the wrong type does not validate.
    let r = run(&["image", "scan", src_s, "--json"], &[]);
    let good = checked(&r, "image scan", true);
    let results = validator("result.schema.json");
    for (key, bad) in [
        ("op", Value::from("list")),
        ("throughput_bytes_per_s", Value::from("fast")),
        ("ok", Value::from(false)),
    ] {
        let mut v = good.clone();
        v[key] = bad;
        assert!(!results.is_valid(&v), "{key} changed, still valid: {v}");
    }
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("digest");
    assert!(!results.is_valid(&v), "without digest, still valid: {v}");
    let r = run(&["image", "info", img_s, "--json"], &[]);
    assert_eq!(checked(&r, "image info", true)["chunks"], 16);
    // A failure is an envelope too.
    let r = run(&["image", "verify", "/nonexistent/x.dsimg", "--json"], &[]);
    let v = checked(&r, "image verify", false);
    assert_eq!(
        (r.code, &v["kind"], &v["exit_code"]),
        (Some(1), &Value::from("error"), &Value::from(1))
    );
}

#[test]
fn cluster_commands_results_and_progress_lines_validate() {
    let dir = scratch();
    let (cfg, _roots) = cluster(dir.path());
    let c = s(&cfg);
    let r = run(
        &["export", "--cluster", c, "-n", "node2", "--dry-run", "--json", INST],
        &[],
    );
    assert_eq!(checked(&r, "export", true)["dry_run"], true);
    let r = run(
        &["export", "-n", "node2", "--json", "--progress", "json", INST],
        &[("DISKSTREAM_CLUSTER", c)],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v = checked(&r, "export", true);
    assert_eq!(v["result"], serde_json::json!([true, [true]]), "{v}");
    assert!(r.events.iter().any(|e| e["event"] == "message"), "{}", r.stderr);
    let p = r
        .events
        .iter()
        .rfind(|e| e["event"] == "progress")
        .expect("a progress event");
    assert_eq!(p["done_bytes"], 4 << 20, "{p}");
    assert!(p.get("mbytes").is_none() && p.get("throughput_mib_s").is_none(), "{p}");
    let r = run(&["list", "--cluster", c, "--json"], &[]);
    let v = checked(&r, "list", true);
    assert_eq!(v["nodes"][1]["exports"], serde_json::json!([INST]), "{v}");
    let r = run(&["remove", "--cluster", c, "--json", INST], &[]);
    assert_eq!(
        checked(&r, "remove", true)["removed"],
        serde_json::json!(["node2.example.com"])
    );
    let r = run(&["bench", "--size", "8M", "--json"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    checked(&r, "bench", true);
    let demo = dir.path().join("demo");
    let r = run(&["demo", "--dir", s(&demo), "--size", "8M", "--json"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v = checked(&r, "demo", true);
    assert_eq!(v["dir"], s(&demo));
    assert!(v.get("agents").is_none(), "no agents without --agents: {v}");
    let demo = dir.path().join("demo-agents");
    let r = run(&["demo", "--agents", "--dir", s(&demo), "--size", "8M", "--json"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v = checked(&r, "demo", true);
    let netns = is_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success());
    let mode = if netns { "netns" } else { "loopback" };
    assert_eq!(v["agents"]["mode"], mode, "{v}");
    assert_eq!(v["agents"]["nodes"].as_array().map(Vec::len), Some(3), "{v}");
}

#[test]
fn pki_results_validate() {
    let dir = scratch();
    let (cfg, _roots) = cluster(dir.path());
    let c = s(&cfg);
    let pki = dir.path().join("pki");
    let r = run(&["pki", "init", "--cluster", c, "--json"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v = checked(&r, "pki", true);
    assert_eq!(v["cluster"], "test.example.com", "{v}");
    assert_eq!(v["pki_dir"], s(&pki), "{v}");
    assert_eq!(v["ca_cert"], s(&pki.join("ca.crt")), "{v}");
    assert_eq!(v["ca"], "created", "{v}");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2, "{v}");
    for (i, n) in nodes.iter().enumerate() {
        let name = format!("node{}.example.com", i + 1);
        assert_eq!(n["node"], name.as_str(), "{v}");
        assert_eq!(n["cert"], s(&pki.join(format!("nodes/{name}.crt"))), "{v}");
        assert_eq!(n["key"], s(&pki.join(format!("nodes/{name}.key"))), "{v}");
        assert_eq!(n["status"], "created", "{v}");
        assert!(pki.join(format!("nodes/{name}.key")).is_file());
    }
    let r = run(&["pki", "issue", "--cluster", c, "--json", "node2.example.com"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v = checked(&r, "pki", true);
    assert_eq!(v["ca"], "kept", "{v}");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["nodes"][0]["node"], "node2.example.com", "{v}");
    assert_eq!(v["nodes"][0]["status"], "replaced", "{v}");
    let r = run(&["pki", "init", "--cluster", c, "--force", "--json"], &[]);
    assert_eq!(checked(&r, "pki", true)["ca"], "replaced");
    let r = run(&["pki", "init", "--cluster", c, "--json"], &[]);
    let v = checked(&r, "pki", false);
    // Refused with nothing changed: a prerequisite (exit 4), as Ganeti's refusals.
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert_eq!(v["kind"], "prereq", "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("already exists"), "{v}");
}

/// Runs `args` and checks exit code, JSON kind and exit_code of the failure.
fn expect_failure(args: &[&str], code: i32, kind: &str) {
    let r = run(args, &[]);
    let v = checked(
        &r,
        r.result.as_ref().map_or("?", |v| v["op"].as_str().unwrap_or("?")),
        false,
    );
    assert_eq!(r.code, Some(code), "{args:?}: {}", r.stderr);
    assert_eq!(v["kind"], kind, "{args:?}: {v}");
    assert_eq!(v["exit_code"], code, "{args:?}: {v}");
}

#[test]
fn one_failure_of_each_kind_exits_with_the_code_of_the_table() {
    let dir = scratch();
    let (cfg, roots) = cluster(dir.path());
    let c = s(&cfg);
    // 1: failure.
    expect_failure(&["image", "scan", "/nonexistent", "--json"], 1, "error");
    // 2: usage, from clap and from export without -n.
    expect_failure(
        &["image", "create", "a", "b", "--format", "qcow2", "--json"],
        2,
        "usage",
    );
    expect_failure(&["export", "--cluster", c, "--json", INST], 2, "usage");
    // Values out of range are usage errors too: the engine's tuning limits, and waits too long
    // to compute a deadline for (these panicked, one of them after the instance was stopped).
    for bad in [
        &["--chunk-size", "3000"][..],
        &["--chunk-size", "128M"],
        &["--threads", "0"],
        &["--queue-depth", "100000"],
    ] {
        let mut args = vec!["image", "scan", "/nonexistent", "--json"];
        args.extend_from_slice(bad);
        expect_failure(&args, 2, "usage");
    }
    for bad in [
        &["--shutdown-timeout", "18446744073709551615"][..],
        &["--lock-timeout", "inf"],
        &["--lock-timeout", "NaN"],
        &["--lock-timeout", "1e300"],
        &["--lock-timeout", "-1"],
        &["--progress-interval", "inf"],
        &["--max-parallel-disks", "0"],
        &["--hooks-timeout", "0"],
        &["--hooks-timeout", "604801"],
    ] {
        let mut args = vec!["export", "--cluster", c, "-n", "node2", "--json", INST];
        args.extend_from_slice(bad);
        expect_failure(&args, 2, "usage");
    }
    expect_failure(
        &["remove", "--cluster", c, "--lock-timeout", "NaN", "--json", INST],
        2,
        "usage",
    );
    // 3: integrity.
    let src = dir.path().join("src.img");
    make_disk(&src, 8 << 20, Data::Random, 3);
    let img = dir.path().join("x.dsimg");
    assert!(ds(&["image", "create", s(&src), s(&img), "--format", "dsimg"])
        .status
        .success());
    flip_byte(&img, 5 << 20, 0x40);
    expect_failure(&["image", "verify", s(&img), "--json"], 3, "integrity");
    // 4: refused by a prerequisite, and by a pre hook.
    expect_failure(
        &["export", "--cluster", c, "-n", "node2", "--json", "nosuch"],
        4,
        "prereq",
    );
    pre_hook(&roots[0], "exit 1");
    expect_failure(
        &["export", "--cluster", c, "-n", "node2", "--json", INST],
        4,
        "hooks_abort",
    );
    // 5: busy. An export holds the locks (its pre hook sleeps); another cannot take them.
    pre_hook(&roots[0], "sleep 3");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(["export", "--cluster", c, "-n", "node2", "--dry-run", INST])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let lock_args = [
        "export",
        "--cluster",
        c,
        "-n",
        "node2",
        "--lock-timeout",
        "0.2",
        "--json",
        INST,
    ];
    expect_failure(&lock_args, 5, "lock");
    // 130/143: interrupted (the sleeping pre hook is stopped).
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let _ = holder.wait();
        let child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(["export", "--cluster", c, "-n", "node2", "--json", INST])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while !handlers_installed(child.id()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status();
        assert!(st.unwrap().success());
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).expect("the JSON result");
        validator("result.schema.json").validate(&v).expect("validates");
        assert_eq!(out.status.code(), Some(code), "{v}");
        assert_eq!(
            (&v["kind"], &v["exit_code"]),
            (&Value::from("interrupted"), &Value::from(code))
        );
        holder = Command::new("true").spawn().unwrap();
    }
    let _ = holder.wait();
}

#[test]
fn the_log_obeys_quiet_verbose_and_diskstream_log() {
    let dir = scratch();
    let src = dir.path().join("src.img");
    make_disk(&src, 4 << 20, Data::Mixed, 2);
    let scan = ["image", "scan", s(&src)];
    // Default: info, the start and the end with sizes and rates.
    let r = run(&scan, &[]);
    assert!(
        r.stderr.contains("INFO") && r.stderr.contains("image scan started"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("image scan ended: ok") && r.stderr.contains("bytes_per_s="),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("DEBUG"), "{}", r.stderr);
    // -q: nothing but warnings and errors.
    let r = run(&[&scan[..], &["-q"]].concat(), &[]);
    assert_eq!(r.stderr, "", "-q");
    // -v: debug.
    let r = run(&[&scan[..], &["-v"]].concat(), &[]);
    assert!(r.stderr.contains("DEBUG"), "{}", r.stderr);
    // DISKSTREAM_LOG overrides the flags.
    let r = run(&scan, &[("DISKSTREAM_LOG", "warn")]);
    assert_eq!(r.stderr, "", "DISKSTREAM_LOG=warn");
    let r = run(&[&scan[..], &["-q"]].concat(), &[("DISKSTREAM_LOG", "debug")]);
    assert!(r.stderr.contains("DEBUG"), "{}", r.stderr);
}

#[test]
fn help_lists_enum_values_hides_refused_flags_and_names_the_cluster_variable() {
    let help = |args: &[&str]| String::from_utf8(ds(args).stdout).unwrap();
    let create = help(&["image", "create", "--help"]);
    for values in [
        "[possible values: raw, dsimg]",
        "[possible values: lz4, none]",
        "[possible values: blake3, sha256]",
        "[possible values: uring, pread]",
        "[possible values: write, discard, skip]",
        "- json:",
        "-f, --force",
    ] {
        assert!(create.contains(values), "{values} missing from:\n{create}");
    }
    let export = help(&["export", "--help"]);
    assert!(export.contains("- local:") && export.contains("- remote:"), "{export}");
    assert!(export.contains("[env: DISKSTREAM_CLUSTER="), "{export}");
    assert!(
        export.contains("-q, --quiet") && export.contains("-v, --verbose"),
        "{export}"
    );
    assert!(
        !export.contains("zero-free-space") && !export.contains("zeroing-timeout"),
        "{export}"
    );
    // The hidden flag is still answered with Ganeti's message.
    let dir = scratch();
    let (cfg, _) = cluster(dir.path());
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", "--zero-free-space", INST]);
    assert!(!ok, "{out}");
    assert!(err.contains("zero"), "Ganeti's message: {err}");
    // $DISKSTREAM_CLUSTER through clap.
    let out = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(["list", "--no-headers", "--separator", "|"])
        .env("DISKSTREAM_CLUSTER", &cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("node1.example.com|"));
}

/// Runs diskstream with stdout and stderr pipes whose readers are gone before it writes (a
/// `| head` that quit): every write fails with EPIPE.
fn run_readers_gone(args: &[&str]) -> Option<i32> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .env_remove("DISKSTREAM_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run diskstream");
    drop(child.stdout.take());
    drop(child.stderr.take());
    child.wait().expect("wait").code()
}

/// A reader that quits (`| head`, `| true`) does not turn a command into a panic (exit 101): the
/// export finishes its work and cleanup and exits 0, human output is dropped; only a `--json`
/// result that could not be delivered makes the exit code non-zero.
#[test]
fn readers_that_quit_do_not_make_a_command_panic() {
    let dir = scratch();
    let (cfg, roots) = cluster(dir.path());
    let c = s(&cfg);
    assert_eq!(
        run_readers_gone(&["export", "--cluster", c, "-n", "node2", "-v", INST]),
        Some(0)
    );
    check_export_complete(&export_dir(&roots[1]).join(INST), 4 << 20).unwrap();
    assert_eq!(run_readers_gone(&["list", "--cluster", c]), Some(0));
    let disk = dir.path().join("disk0.img");
    let img = dir.path().join("x.dsimg");
    assert_eq!(
        run_readers_gone(&["image", "create", s(&disk), s(&img), "--format", "dsimg", "-v"]),
        Some(0)
    );
    assert_eq!(run_readers_gone(&["image", "info", s(&img)]), Some(0));
    assert_eq!(run_readers_gone(&["man"]), Some(0));
    assert_eq!(run_readers_gone(&["image", "info", s(&img), "--json"]), Some(1));
}

/// A text listing that cannot be written (stdout on a full device) fails with exit 1 and says
/// so; it exited 0, which a cron job reads as success. `--json` already did.
#[test]
fn a_listing_that_cannot_be_printed_is_not_a_success() {
    let dir = scratch();
    let (cfg, _roots) = cluster(dir.path());
    for json in [false, true] {
        let mut args = vec!["list", "--cluster", s(&cfg)];
        if json {
            args.push("--json");
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(&args)
            .stdout(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot print the"), "{args:?}: {err}");
    }
}
