//! Adversarial tests of `diskstream export` (issue 8, export side): every defect found by the
//! adversarial run is encoded here as a test that failed before its fix — names colliding with
//! staging, hooks with a relative cluster path, a hook printing 50 MB, hooks that hang (timeout
//! flag and key, "still running" reports, killed with diskstream, not orphaned by SIGKILL),
//! declared disk sizes, absurd sizes and over-long names, unknown beparams, SIGINT/SIGTERM/SIGHUP in
//! every phase — plus a loop that kills exports at pseudo-random moments with SIGINT, SIGTERM
//! and SIGKILL and checks that nothing is lost, left behind or left locked, and that the
//! instance is left as the user had it.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use diskstream_engine::sample::Rng;

const INST: &str = "inst1.example.com";

fn file_disks(dir: &Path, n: usize, mib: u64, seed: u64) -> Vec<DiskSpec> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("disk{seed}-{i}.img"));
            make_disk(&p, mib << 20, Data::Mixed, seed + i as u64);
            DiskSpec {
                template: "file",
                path: p,
                mib,
            }
        })
        .collect()
}

fn inst(name: &str, state: &'static str, disks: Vec<DiskSpec>, process: Option<Vec<String>>) -> InstSpec {
    InstSpec {
        name: name.into(),
        primary: "node1.example.com".into(),
        admin_state: state,
        disks,
        process,
    }
}

/// Replaces `from` by `to` in a config file (asserting it was there).
fn edit(cfg: &Path, from: &str, to: &str) {
    let t = fs::read_to_string(cfg).unwrap();
    assert!(t.contains(from), "{from:?} not in {}", cfg.display());
    fs::write(cfg, t.replacen(from, to, 1)).unwrap();
}

/// `diskstream list` on a config that must be refused: its error text.
fn refused(cfg: &Path) -> String {
    let (ok, out, err) = ds_text(&["list", "--cluster", s(cfg)]);
    assert!(!ok, "config accepted:\n{out}\n{}", fs::read_to_string(cfg).unwrap());
    err
}

fn spawn_export(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .arg("export")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run diskstream export")
}

fn output_of(child: &mut Child) -> (String, String) {
    use std::io::Read;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (out, err)
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// Waits until a file exists and has `lines` lines; returns them.
fn wait_lines(p: &Path, lines: usize, limit: Duration) -> Vec<String> {
    let t = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(p) {
            let v: Vec<String> = text.lines().map(String::from).collect();
            if v.len() >= lines {
                return v;
            }
        }
        assert!(t.elapsed() < limit, "{} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_dead(pids: &[u32], limit: Duration) {
    let t = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        if t.elapsed() > limit {
            for p in pids {
                let _ = Command::new("kill").args(["-KILL", &p.to_string()]).status();
            }
            panic!("hook processes {pids:?} outlived diskstream by {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Staging, half-removed exports and snapshots anywhere under `dirs`.
fn leftovers(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in dirs {
        v.extend(find_named(d, ".new"));
        v.extend(find_named(d, ".ds-removing-"));
        v.extend(find_named(d, ".ds-snap-"));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// 6. Names that collide with staging and hidden names.

#[test]
fn instance_names_colliding_with_staging_or_hidden_names_are_refused() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    for bad in ["x.example.com.new", "x.ds-removing-12", "x.ds-snap-y", ".x.example.com"] {
        // With the instance `x` the name would collide with (the reproduction of the issue).
        let a = inst("x.example.com", "down", Vec::new(), None);
        let b = inst(bad, "down", Vec::new(), None);
        let cfg = write_cluster(dir.path(), &roots, &[a, b], &[]);
        let err = refused(&cfg);
        assert!(err.contains(bad), "{bad}: the error names the instance: {err}");
        assert!(
            err.contains("instances[1].name"),
            "{bad}: the error names the key: {err}"
        );
    }
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst("x.example.com.new", "down", Vec::new(), None)],
        &[],
    );
    let err = refused(&cfg);
    assert!(err.contains("staging"), "the reason is given: {err}");
}

#[test]
fn exporting_an_instance_never_removes_another_instances_export() {
    // `x` and `x-1` (no reserved names) side by side: exports of one never touch the other's,
    // even when the other has leftovers that start with the first one's name.
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let a = inst("x", "down", file_disks(dir.path(), 1, 1, 1), None);
    let b = inst("x-1", "down", file_disks(dir.path(), 1, 1, 2), None);
    let cfg = write_cluster(dir.path(), &roots, &[a, b], &[]);
    for i in ["x-1", "x", "x"] {
        let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", i]);
        assert!(ok, "{out}\n{err}");
    }
    let ed = export_dir(&roots[1]);
    check_export_complete(&ed.join("x-1"), 1 << 20).unwrap();
    // A half-removed export of another instance whose name starts like `x`'s marker.
    fs::create_dir_all(ed.join(".x.ds-removing-1.ds-removing-2")).unwrap();
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", "x"]);
    assert!(ok, "{out}\n{err}");
    assert!(ed.join(".x.ds-removing-1.ds-removing-2").exists());
    let (ok, out, _) = ds_text(&[
        "list",
        "--cluster",
        s(&cfg),
        "--node",
        "node2",
        "--no-headers",
        "--separator",
        "|",
    ]);
    assert!(ok);
    assert_eq!(out, "node2.example.com|x\nnode2.example.com|x-1\n");
}

#[test]
fn an_export_directory_that_is_a_file_is_named_in_the_error() {
    // Found by the review of 2026-11-27: the warning said `File exists (os error 17)` and named
    // neither the path nor the step.
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let a = inst("x", "down", file_disks(dir.path(), 1, 1, 3), None);
    let cfg = write_cluster(dir.path(), &roots, &[a], &[]);
    let ed = export_dir(&roots[1]);
    fs::create_dir_all(ed.parent().unwrap()).unwrap();
    let _ = fs::remove_dir_all(&ed);
    fs::write(&ed, b"not a directory").unwrap();
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", "x"]);
    assert!(!ok, "{out}\n{err}");
    let all = format!("{out}\n{err}");
    assert!(
        all.contains(&format!("create the export directory {}", ed.display())),
        "{all}"
    );
    assert_eq!(fs::read(&ed).unwrap(), b"not a directory", "the file was touched");
}

// ---------------------------------------------------------------------------------------------
// 7. Hooks with a relative cluster path.

#[test]
fn hooks_run_with_a_relative_cluster_path() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(INST, "down", file_disks(dir.path(), 1, 1, 3), None)],
        &[],
    );
    // Node roots relative to the config's directory, as in examples/cluster.toml.
    for (i, r) in roots.iter().enumerate() {
        edit(&cfg, &format!("{:?}", s(r)), &format!("\"node{}\"", i + 1));
    }
    let marker = dir.path().join("hook-ran");
    hook(
        &roots[0],
        "instance-export-pre.d",
        "10-mark",
        &format!("echo pre >> {}", s(&marker)),
    );
    for args in [
        vec!["export", "--cluster", "cluster.toml", "-n", "node2", INST],
        vec!["export", "--cluster", "./cluster.toml", "-n", "node2", INST],
        vec!["export", "-n", "node2", INST], // the default ./cluster.toml
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(&args)
            .current_dir(dir.path())
            .env_remove("DISKSTREAM_CLUSTER")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(fs::read_to_string(&marker).unwrap(), "pre\npre\npre\n");
    check_export_complete(&export_dir(&roots[1]).join(INST), 1 << 20).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8b. Hook output is bounded.

/// Peak RSS in KiB of `diskstream ARGS`, measured by GNU time, with its output.
fn peak_rss_kib(args: &[&str]) -> (u64, bool, String, String) {
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .and_then(|v| v.trim().parse().ok())
        .expect("GNU time's maximum resident set size");
    (
        rss,
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

#[test]
fn a_hook_printing_50_mb_is_kept_as_a_bounded_tail() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(INST, "down", file_disks(dir.path(), 1, 1, 4), None)],
        &[],
    );
    // 50 MB of output, then a recognisable last line, then failure (so the output is reported).
    hook(
        &roots[0],
        "instance-export-pre.d",
        "10-loud",
        "head -c 52428800 /dev/zero | tr '\\0' x; echo; echo LAST-LINE; exit 1",
    );
    let (rss, ok, out, err) = peak_rss_kib(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    eprintln!("peak RSS of the export with a 50 MB hook: {rss} KiB");
    assert!(!ok, "the failing pre hook vetoes the export: {out}");
    assert!(err.contains("LAST-LINE"), "the tail of the output is kept");
    assert!(err.contains("bytes of earlier output not kept"), "the cut is said");
    assert!(
        err.len() < 256 << 10,
        "the error carries a bounded tail, not {} bytes",
        err.len()
    );
    assert!(rss < 128 << 10, "peak RSS {rss} KiB is not under 128 MiB");
    // A succeeding loud hook does not hold its output either.
    hook(
        &roots[0],
        "instance-export-pre.d",
        "10-loud",
        "head -c 52428800 /dev/zero | tr '\\0' x; exit 0",
    );
    let (rss, ok, out, err) = peak_rss_kib(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    eprintln!("peak RSS of the export with a 50 MB hook that succeeds: {rss} KiB");
    assert!(ok, "{out}\n{err}");
    assert!(rss < 128 << 10, "peak RSS {rss} KiB is not under 128 MiB");
}

// ---------------------------------------------------------------------------------------------
// 9. Hooks that hang.

/// A hook that records its pid and its background child's pid, then hangs.
fn hanging_hook(root: &Path, pids: &Path) {
    hook(
        root,
        "instance-export-pre.d",
        "20-hang",
        &format!(
            "sleep 100000 &\necho $$ > {p}.tmp; echo $! >> {p}.tmp; mv {p}.tmp {p}\nwait",
            p = s(pids)
        ),
    );
}

fn pids_in(p: &Path) -> Vec<u32> {
    wait_lines(p, 2, Duration::from_secs(20))
        .iter()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

#[test]
fn hanging_hooks_time_out_by_flag_or_key_and_are_reported_while_waiting() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(INST, "down", file_disks(dir.path(), 1, 1, 5), None)],
        &[],
    );
    add_cluster_keys(&cfg, "hooks_report_interval = 0.5");
    let pids = dir.path().join("pids");
    hanging_hook(&roots[0], &pids);
    // The flag: without it the default (15 minutes) would block the test.
    let t = Instant::now();
    let mut child = spawn_export(&["--cluster", s(&cfg), "-n", "node2", "--hooks-timeout", "2", INST]);
    let (st, _) = wait_exit(&mut child, Duration::from_secs(60));
    let (out, err) = output_of(&mut child);
    assert!(!st.success(), "{out}\n{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(err.contains("Hook script killed after the 2.0s timeout"), "{err}");
    assert!(
        out.contains("Hook instance-export-pre.d/20-hang on node1.example.com still running after"),
        "the wait is reported: {out}"
    );
    wait_dead(&pids_in(&pids), Duration::from_secs(5));
    let _ = fs::remove_file(&pids);
    // The cluster key.
    add_cluster_keys(&cfg, "hooks_timeout = 1");
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    assert!(!ok, "{out}");
    assert!(err.contains("Hook script killed after the 1.0s timeout"), "{err}");
    wait_dead(&pids_in(&pids), Duration::from_secs(5));
    // A nonsense key is refused.
    edit(&cfg, "hooks_timeout = 1", "hooks_timeout = -1");
    assert!(refused(&cfg).contains("cluster.hooks_timeout"));
}

#[test]
fn a_hook_that_leaves_a_process_on_its_output_is_a_warning_naming_script_and_node() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(INST, "down", file_disks(dir.path(), 1, 1, 5), None)],
        &[],
    );
    let pids = dir.path().join("pids");
    // The script exits at once; the sleep it started keeps its output open.
    hook(
        &roots[0],
        "instance-export-pre.d",
        "30-bg",
        &format!(
            "sleep 100000 &\necho $$ > {p}.tmp; echo $! >> {p}.tmp; mv {p}.tmp {p}\nexit 0",
            p = s(&pids)
        ),
    );
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    assert!(ok, "the script's own status decides: {out}\n{err}");
    let line = "WARNING: Hook instance-export-pre.d/30-bg on node1.example.com exited, leaving processes \
                behind still running with its output open; they were killed after 2.0s";
    assert!(out.contains(line), "{out}\n{err}");
    wait_dead(&pids_in(&pids), Duration::from_secs(5));
}

#[test]
fn sigint_sigterm_and_sigkill_of_diskstream_kill_a_hanging_hook() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(INST, "down", file_disks(dir.path(), 1, 1, 6), None)],
        &[],
    );
    let pids = dir.path().join("pids");
    hanging_hook(&roots[0], &pids);
    for (sig, code) in [("INT", Some(130)), ("TERM", Some(143)), ("KILL", None)] {
        let _ = fs::remove_file(&pids);
        let mut child = spawn_export(&["--cluster", s(&cfg), "-n", "node2", "--json", INST]);
        let hook_pids = pids_in(&pids);
        let t = Instant::now();
        signal(child.id(), sig);
        let (st, took) = wait_exit(&mut child, Duration::from_secs(20));
        let (out, err) = output_of(&mut child);
        eprintln!("SIG{sig} during a hook: exit after {took:?}");
        assert_eq!(st.code(), code, "SIG{sig}: {out}\n{err}");
        if code.is_some() {
            assert!(took < Duration::from_secs(2), "SIG{sig} took {took:?}");
            assert!(err.contains(&format!("interrupted by SIG{sig}")), "{err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["interrupted"], true);
            assert_eq!(v["signal"], format!("SIG{sig}"));
        }
        // The hook's whole process group is gone, even after SIGKILL of diskstream.
        wait_dead(&hook_pids, Duration::from_secs(3));
        eprintln!("hook processes gone {:?} after SIG{sig}", t.elapsed());
    }
}

#[test]
fn sigint_while_waiting_for_a_lock_stops_at_once_and_leaves_the_holder_alone() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(INST, "down", file_disks(dir.path(), 1, 1, 11), None)],
        &[],
    );
    let pids = dir.path().join("pids");
    hanging_hook(&roots[0], &pids);
    // The first export holds the instance lock while its hook hangs.
    let mut holder = spawn_export(&["--cluster", s(&cfg), "-n", "node2", "--hooks-timeout", "30", INST]);
    let hook_pids = pids_in(&pids);
    let mut waiter = spawn_export(&["--cluster", s(&cfg), "-n", "node2", INST]);
    let mut lines = BufReader::new(waiter.stdout.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap().contains("Waiting for lock") {
            break;
        }
    }
    signal(waiter.id(), "INT");
    let (st, took) = wait_exit(&mut waiter, Duration::from_secs(20));
    let (_, err) = output_of(&mut waiter);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(err.contains("interrupted while waiting for lock instance/"), "{err}");
    assert!(holder.try_wait().unwrap().is_none(), "the holder runs on");
    assert!(hook_pids.iter().all(|p| alive(*p)), "the holder's hook runs on");
    signal(holder.id(), "TERM");
    let (st, _) = wait_exit(&mut holder, Duration::from_secs(20));
    assert_eq!(st.code(), Some(143));
    wait_dead(&hook_pids, Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------------
// 11, 12. Declared sizes, absurd sizes, over-long names, unknown beparams.

#[test]
fn declared_disk_size_must_match_the_backing_file() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let disk = dir.path().join("big.img");
    fs::File::create(&disk).unwrap().set_len(300 << 20).unwrap();
    let d = DiskSpec {
        template: "file",
        path: disk.clone(),
        mib: 64,
    };
    let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "down", vec![d], None)], &[]);
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    assert!(!ok, "a 300 MiB file declared as 64 MiB is refused: {out}");
    for part in ["disk/0", "300 MiB", "size = 64", s(&disk)] {
        assert!(err.contains(part), "the error names {part}: {err}");
    }
    assert!(!export_dir(&roots[1]).join(INST).exists());
    // Smaller than declared too.
    fs::File::create(&disk).unwrap().set_len(63 << 20).unwrap();
    let (ok, _, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    assert!(!ok && err.contains("63 MiB"), "{err}");
    // The declared size exports.
    fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    assert!(ok, "{out}\n{err}");
    check_export_complete(&export_dir(&roots[1]).join(INST), 64 << 20).unwrap();
}

#[test]
fn absurd_sizes_long_names_and_unknown_beparams_are_refused_at_validation() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let d = |mib| DiskSpec {
        template: "file",
        path: dir.path().join("d.img"),
        mib,
    };
    for (mib, want) in [(i64::MAX as u64, "absurd"), (1 << 34, "absurd"), (0, "at least 1")] {
        let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "down", vec![d(mib)], None)], &[]);
        let err = refused(&cfg);
        assert!(
            err.contains("instances[0].disks[0].size") && err.contains(want),
            "size {mib}: {err}"
        );
    }
    // Over-long names: instance, node, disk; the limit is named.
    let long = format!("{}.example.com", "a".repeat(240));
    let cfg = write_cluster(dir.path(), &roots, &[inst(&long, "down", vec![d(1)], None)], &[]);
    let err = refused(&cfg);
    assert!(
        err.contains("instances[0].name") && err.contains("limit is 200 bytes"),
        "{err}"
    );
    let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "down", vec![d(1)], None)], &[]);
    edit(&cfg, "node2.example.com", &long);
    let err = refused(&cfg);
    assert!(
        err.contains("nodes[1].name") && err.contains("limit is 200 bytes"),
        "{err}"
    );
    let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "down", vec![d(1)], None)], &[]);
    edit(&cfg, "name = \"disk0\"", &format!("name = \"{}\"", "d".repeat(300)));
    let err = refused(&cfg);
    assert!(
        err.contains("disks[0].name") && err.contains("limit is 200 bytes"),
        "{err}"
    );
    // A name that fits but whose snapshot name would not fit a file name.
    let name = format!("{}.example.com", "b".repeat(150));
    let mut disk = d(1);
    disk.path = dir.path().join(format!("{}.img", "c".repeat(100)));
    let cfg = write_cluster(dir.path(), &roots, &[inst(&name, "up", vec![disk], None)], &[]);
    let err = refused(&cfg);
    assert!(err.contains("snapshot name") && err.contains("255 bytes"), "{err}");
    // Unknown beparams.
    let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "down", vec![d(1)], None)], &[]);
    edit(&cfg, "vcpus = 1", "vcpus = 1\nmaxmen = 512");
    let err = refused(&cfg);
    assert!(
        err.contains("instances[0].beparams.maxmen") && err.contains("unknown backend parameter 'maxmen'"),
        "{err}"
    );
    // Ganeti's other beparams are accepted.
    let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "down", vec![d(1)], None)], &[]);
    edit(
        &cfg,
        "vcpus = 1",
        "vcpus = 1\nauto_balance = true\nalways_failover = false\nspindle_use = 1",
    );
    let (ok, _, err) = ds_text(&["list", "--cluster", s(&cfg)]);
    assert!(ok, "{err}");
}

// ---------------------------------------------------------------------------------------------
// 3. SIGINT/SIGTERM in the middle of an export.

/// An instance process that takes `secs` to shut down after SIGTERM.
fn slow_stopper(secs: &str) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("trap 'sleep {secs}; exit 0' TERM; while :; do sleep 0.05; done"),
    ]
}

#[test]
fn sigint_during_the_shutdown_wait_restarts_the_instance_at_once() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(
            INST,
            "up",
            file_disks(dir.path(), 1, 1, 7),
            Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap '' TERM; while :; do sleep 0.05; done".into(),
            ]),
        )],
        &[],
    );
    let guard = InstanceGuard::new(&cfg, INST, true);
    let before = guard.pid().unwrap();
    let mut child = spawn_export(&[
        "--cluster",
        s(&cfg),
        "-n",
        "node2",
        "--shutdown-timeout",
        "600",
        "--long-sleep",
        INST,
    ]);
    // Wait for the shutdown to begin.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap().contains("Shutting down instance") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(child.id(), "INT");
    let (st, took) = wait_exit(&mut child, Duration::from_secs(20));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let (_, err) = output_of(&mut child);
    eprintln!("SIGINT during the shutdown wait: exit after {took:?}");
    assert_eq!(st.code(), Some(130), "{rest:?}\n{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let now = guard.pid().expect("the instance runs again");
    assert_ne!(now, before, "it was stopped, then started again");
    // Said as it is: killed when the wait was cut short, then booted again.
    assert!(
        err.contains("is running again (it was shut down for the export and started again)"),
        "{err}"
    );
    assert!(rest.iter().any(|l| l.contains("Starting instance")), "{rest:?}");
    assert!(leftovers(&[dir.path()]).is_empty());
}

#[test]
fn sigterm_or_sighup_during_a_long_sleep_transfer_restarts_the_instance_and_keeps_the_previous_export() {
    let mount = FsMount::ext4(); // no reflinks: the instance is down for the whole transfer
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let mut disks = file_disks(mount.path(), 1, 2, 8);
    let big = mount.path().join("big.img");
    make_disk(&big, 48 << 20, Data::Random, 9);
    disks.push(DiskSpec {
        template: "file",
        path: big,
        mib: 48,
    });
    let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "up", disks, Some(sleeper()))], &[]);
    let guard = InstanceGuard::new(&cfg, INST, true);
    let args = [
        "--cluster",
        s(&cfg),
        "-n",
        "node2",
        "--long-sleep",
        "--progress",
        "json",
        "--json",
        INST,
    ];
    let (ok, out, err) = ds_text(&[&["export"][..], &args[..]].concat());
    assert!(ok, "{out}\n{err}");
    let ed = export_dir(&roots[1]).join(INST);
    let before = fs::read_to_string(ed.join("config.ini")).unwrap();
    // SIGHUP (an ssh session that drops) is handled as SIGTERM is: it used to kill the export
    // with the instance down and the staging directory left.
    // Paced, so that the signal lands in the transfer of disk/1 (48 MiB in ~3 s, not 0.1 s).
    let slow = [&args[..], &["--bwlimit", "16M"]].concat();
    // The export through `wrapper` (which sets SIGHUP's disposition), signalled with `sig` once
    // disk/1's transfer has begun; its exit status, the --progress json lines after the signal
    // (stderr, the JSON contract) and stdout (the result).
    let signalled = |wrapper: &[&str], sig: &str| {
        let mut child = Command::new(wrapper[0])
            .args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_diskstream"))
            .arg("export")
            .args(&slow)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run diskstream export");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for l in lines.by_ref() {
            if l.unwrap().contains("Exporting disk/1") {
                break;
            }
        }
        signal(child.id(), sig);
        let (st, took) = wait_exit(&mut child, Duration::from_secs(60));
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let (out, _) = output_of(&mut child);
        (st, took, rest, out)
    };
    for (sig, code, name) in [("TERM", 143, "SIGTERM"), ("HUP", 129, "SIGHUP")] {
        // SIGHUP at its default disposition: a test run under nohup (or a CI runner that
        // ignores SIGHUP) would hand the ignore down, and diskstream rightly keeps it.
        let (st, took, rest, out) = signalled(&["env", "--default-signal=HUP"], sig);
        eprintln!("{name} during a transfer: exit after {took:?}");
        assert_eq!(st.code(), Some(code), "{name}: {out}\n{rest:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(guard.pid().is_some(), "the instance runs again");
        let result = out.lines().last().expect("the JSON result");
        let v: serde_json::Value = serde_json::from_str(result).unwrap();
        assert_eq!(v["interrupted"], true, "{result}");
        assert_eq!(v["signal"], name, "{result}");
        assert_eq!(v["ok"], false);
        assert_eq!(fs::read_to_string(ed.join("config.ini")).unwrap(), before);
        assert!(leftovers(&[dir.path(), mount.path()]).is_empty());
    }
    // Started with SIGHUP ignored (nohup), the export ignores it and completes.
    let (st, _, rest, _) = signalled(&["nohup"], "HUP");
    assert_eq!(st.code(), Some(0), "under nohup SIGHUP is ignored: {rest:?}");
    assert!(guard.pid().is_some(), "the instance runs again");
    assert!(leftovers(&[dir.path(), mount.path()]).is_empty());
    // Locks were released: the next export runs.
    let (ok, out, err) = ds_text(&[&["export"][..], &args[..]].concat());
    assert!(ok, "{out}\n{err}");
}

// ---------------------------------------------------------------------------------------------
// The export kill loop.

#[test]
fn export_kill_loop_sigint_sigterm_sigkill() {
    let xfs = FsMount::xfs_reflink();
    let ext4 = FsMount::ext4();
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let mib = 12;
    // One instance with snapshots (XFS), one exported with --long-sleep (ext4). Both take a
    // moment to shut down, and hooks take a moment, so kills land in every phase.
    let snap = "snap.example.com";
    let sleepy = "sleepy.example.com";
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[
            inst(
                snap,
                "up",
                file_disks(xfs.path(), 2, mib, 10),
                Some(slow_stopper("0.2")),
            ),
            inst(
                sleepy,
                "up",
                file_disks(ext4.path(), 2, mib, 20),
                Some(slow_stopper("0.2")),
            ),
        ],
        &[],
    );
    for phase in ["instance-export-pre.d", "instance-export-post.d"] {
        hook(&roots[0], phase, "10-pause", "sleep 0.15");
    }
    let guards = [
        InstanceGuard::new(&cfg, snap, true),
        InstanceGuard::new(&cfg, sleepy, true),
    ];
    let args = |name: &'static str| -> Vec<String> {
        let mut a: Vec<String> = [
            "export",
            "--cluster",
            s(&cfg),
            "-n",
            "node2",
            "--shutdown-timeout",
            "10",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if name == sleepy {
            a.push("--long-sleep".into());
        }
        a.push(name.into());
        a
    };
    let run_full = |name: &'static str| {
        let out = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(args(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Previous exports, and how long an export takes.
    let t = Instant::now();
    run_full(snap);
    run_full(sleepy);
    let full = t.elapsed() / 2;
    let seed = 0x5eed_u64;
    eprintln!("one export takes {full:?}; seed {seed:#x}");
    let mut rng = Rng::new(seed);
    // The first exports may run beside the other tests of this binary and take far longer than
    // the later ones: a signal that came after the export ended shrinks the window.
    let mut window = (full.as_millis() as u64).max(50);
    let configs = |name: &str| fs::read_to_string(export_dir(&roots[1]).join(name).join("config.ini")).unwrap();
    let mut stats: std::collections::BTreeMap<String, u32> = Default::default();
    let (mut hits, mut max_latency) = (0, Duration::ZERO);
    let mut round = 0;
    while hits < 30 {
        round += 1;
        assert!(round <= 80, "only {hits} of 80 signals hit a running export");
        let name = if round % 2 == 0 { snap } else { sleepy };
        let g = &guards[usize::from(name == sleepy)];
        // Mostly running, sometimes stopped by the user (admin state still up): either way an
        // interrupted export leaves it so.
        let user_running = round % 5 != 3;
        {
            use diskstream_orchestrator::driver::InstanceDriver;
            if user_running && g.pid().is_none() {
                g.driver.start().unwrap();
            } else if !user_running {
                g.driver.stop(Duration::ZERO).unwrap();
            }
        }
        let before = configs(name);
        let sig = ["INT", "TERM", "KILL"][rng.below(3) as usize];
        let at = Duration::from_millis(rng.below(window));
        let out_file = dir.path().join("out.txt");
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(args(name))
            .stdout(fs::File::create(&out_file).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The delay counts from the moment diskstream has its SIGINT/SIGTERM handlers: a signal
        // before that (the first microseconds of the process) ends it by the default action,
        // before it has done anything.
        let t0 = Instant::now();
        while !handlers_installed(child.id()) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(at);
        let running = child.try_wait().unwrap().is_none();
        let phase = phase_of(&fs::read_to_string(&out_file).unwrap_or_default());
        if running {
            signal(child.id(), sig);
        }
        let (st, took) = wait_exit(&mut child, Duration::from_secs(30));
        let (_, err) = output_of(&mut child);
        let ctx = format!(
            "round {round} ({name}, {}, SIG{sig} after {at:?} in {phase}): exit {st:?}\n{err}",
            if user_running { "running" } else { "stopped by the user" }
        );
        if !running {
            assert!(st.success(), "{ctx}");
            window = (window * 3 / 4).max(50);
            continue;
        }
        hits += 1;
        *stats.entry(format!("SIG{sig} in {phase}")).or_default() += 1;
        *stats
            .entry(format!(
                "exit {} (instance {})",
                st.code().map_or("by SIGKILL".to_string(), |c| c.to_string()),
                if user_running { "running" } else { "stopped" }
            ))
            .or_default() += 1;
        // The previous export is intact, or the complete new one replaced it.
        let ed = export_dir(&roots[1]).join(name);
        check_export_complete(&ed, mib << 20).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let after = configs(name);
        if sig == "KILL" {
            // The next run sweeps what a killed one left, and finds the locks free.
            run_full(name);
            assert!(leftovers(&[dir.path(), xfs.path(), ext4.path()]).is_empty(), "{ctx}");
            assert!(g.pid().is_some(), "{ctx}: the next export started the instance again");
            continue;
        }
        let code = st.code();
        // 130/143, or 0 when the export had completed before the signal was noticed.
        let want = if sig == "INT" { 130 } else { 143 };
        assert!(code == Some(want) || code == Some(0), "{ctx}");
        if code == Some(want) {
            assert!(err.contains(&format!("interrupted by SIG{sig}")), "{ctx}");
            max_latency = max_latency.max(took);
            assert!(took < Duration::from_secs(3), "{ctx}: took {took:?} to stop");
        } else {
            assert_ne!(after, before, "{ctx}: exit 0 but the export was not replaced");
        }
        // Nothing left behind, the instance as the user had it (running), locks released.
        let left = leftovers(&[dir.path(), xfs.path(), ext4.path()]);
        assert!(left.is_empty(), "{ctx}: left behind: {left:?}");
        if user_running {
            assert!(g.pid().is_some(), "{ctx}: the instance was left stopped");
        } else if code == Some(want) && !err.contains("stopped after the export completed") {
            // (A signal during the post hooks comes after Exec completed: the instance was
            // started as by any complete export of an instance whose admin state is up.)
            assert!(
                g.pid().is_none(),
                "{ctx}: the instance the user had stopped was left running"
            );
        }
        let (ok, out, err2) = ds_text(&[
            "export",
            "--cluster",
            s(&cfg),
            "-n",
            "node2",
            "--dry-run",
            "--lock-timeout",
            "0",
            name,
        ]);
        assert!(ok, "{ctx}: locks still held: {out}{err2}");
    }
    eprintln!("{hits} signals hit a running export in {round} rounds; longest stop {max_latency:?}");
    for (k, v) in &stats {
        eprintln!("  {k}: {v}");
    }
    run_full(snap);
    run_full(sleepy);
    assert!(leftovers(&[dir.path(), xfs.path(), ext4.path()]).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Disk paths: another instance's disk named like a snapshot, one file shared by two instances,
// a FIFO, a missing disk of a running instance.

fn disk_spec(path: PathBuf, mib: u64) -> DiskSpec {
    DiskSpec {
        template: "file",
        path,
        mib,
    }
}

#[test]
fn another_instances_disk_named_like_a_snapshot_is_never_swept() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let disks = dir.path().join("disks");
    fs::create_dir(&disks).unwrap();
    let a_disk = disks.join("a.img");
    let b_disk = disks.join("a.img.ds-snap-a-1");
    make_disk(&a_disk, 1 << 20, Data::Mixed, 1);
    make_disk(&b_disk, 1 << 20, Data::Mixed, 2);
    let b_bytes = fs::read(&b_disk).unwrap();
    // b's disk named like a snapshot of a's disk by process 1: the config is refused.
    let a = inst("a", "down", vec![disk_spec(a_disk.clone(), 1)], None);
    let b = inst("b", "down", vec![disk_spec(b_disk.clone(), 1)], None);
    let cfg = write_cluster(dir.path(), &roots, &[a.clone(), b], &[]);
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", "a"]);
    assert!(!ok, "exported:\n{out}\n{err}");
    assert!(
        err.contains("instances[1].disks[0].path") && err.contains(".ds-snap-") && err.contains(s(&b_disk)),
        "{err}"
    );
    // b's disk reached through a symbolic link of an ordinary name: the config cannot see the
    // name, the sweep of a's snapshots must still keep the file.
    let link = disks.join("b.img");
    std::os::unix::fs::symlink("a.img.ds-snap-a-1", &link).unwrap();
    let b = inst("b", "down", vec![disk_spec(link, 1)], None);
    let cfg = write_cluster(dir.path(), &roots, &[a, b], &[]);
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", "a"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(fs::read(&b_disk).unwrap(), b_bytes, "b's disk is untouched");
    assert!(
        err.contains("disk/0 of instance b") && !err.contains("Removed stale snapshot"),
        "the sweep says why it kept the file: {err}"
    );
    check_export_complete(&export_dir(&roots[1]).join("a"), 1 << 20).unwrap();
}

#[test]
fn remove_instance_never_deletes_a_disk_another_instance_shares() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let shared = dir.path().join("shared.img");
    make_disk(&shared, 1 << 20, Data::Mixed, 3);
    // The same file spelled differently by each instance.
    let a = inst("a", "down", vec![disk_spec(shared.clone(), 1)], None);
    let b = inst("b", "down", vec![disk_spec(dir.path().join(".//shared.img"), 1)], None);
    let cfg = write_cluster(dir.path(), &roots, &[a, b], &[]);
    let before = fs::read_to_string(&cfg).unwrap();
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", "--remove-instance", "a"]);
    assert!(!ok, "exported and removed:\n{out}\n{err}");
    for part in [
        "instances[1].disks[0].path",
        "instance 'b'",
        "disk/0 of instance 'a'",
        s(&shared),
    ] {
        assert!(err.contains(part), "the error names {part}: {err}");
    }
    assert!(shared.exists(), "the shared disk is still there");
    assert_eq!(fs::read_to_string(&cfg).unwrap(), before, "the config is unchanged");
}

#[test]
fn a_disk_that_is_a_fifo_is_refused_at_once() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let fifo = dir.path().join("disk.fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo");
    let cfg = write_cluster(
        dir.path(),
        &roots,
        &[inst(INST, "down", vec![disk_spec(fifo.clone(), 1)], None)],
        &[],
    );
    // Before the fix the size check's open blocked for ever (holding the locks).
    let out = ds_within(
        &["export", "--cluster", s(&cfg), "-n", "node2", INST],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for part in ["disk/0", INST, s(&fifo), "FIFO"] {
        assert!(err.contains(part), "the error names {part}: {err}");
    }
    assert!(!export_dir(&roots[1]).join(INST).exists());
}

#[test]
fn a_missing_disk_of_a_running_instance_is_refused_before_it_is_stopped() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let there = dir.path().join("there.img");
    make_disk(&there, 1 << 20, Data::Mixed, 4);
    let missing = dir.path().join("missing.img");
    let disks = vec![disk_spec(there, 1), disk_spec(missing.clone(), 1)];
    let cfg = write_cluster(dir.path(), &roots, &[inst(INST, "up", disks, Some(sleeper()))], &[]);
    let guard = InstanceGuard::new(&cfg, INST, true);
    let pid = guard.pid().expect("the instance runs");
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    assert!(!ok, "exported:\n{out}\n{err}");
    for part in ["disk/1", s(&missing), "does not exist"] {
        assert!(err.contains(part), "the error names {part}: {err}");
    }
    assert!(!err.contains("Shutting down"), "nothing was stopped: {err}");
    assert_eq!(guard.pid(), Some(pid), "the instance kept running, never restarted");
}
