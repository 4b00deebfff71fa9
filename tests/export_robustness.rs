//! End-to-end robustness of `diskstream export`: a shared export directory keeps the new
//! export (Ganeti #1186), also seen through a mount with another device number (NFS on two
//! machines), `kill -9` at random moments never leaves a partial or no export,
//! exports of different instances overlap while exports of one instance serialize, and a
//! snapshot of an instance that keeps writing is a consistent image, and an instance whose pid
//! file is damaged is neither exported nor signalled.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use diskstream_engine::sample::Rng;
use diskstream_orchestrator::export::config_ini::IniDocument;
use sha2::{Digest, Sha256};

const INST: &str = "inst1.example.com";

fn file_disks(dir: &Path, n: usize, mib: u64, seed: u64) -> Vec<DiskSpec> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("disk{seed}-{i}.img"));
            make_disk(
                &p,
                mib << 20,
                if i == 0 { Data::Mixed } else { Data::Sparse },
                seed + i as u64,
            );
            DiskSpec {
                template: "file",
                path: p,
                mib,
            }
        })
        .collect()
}

#[test]
fn shared_export_directory_keeps_the_new_export() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 3);
    for r in &roots[..2] {
        fs::create_dir_all(export_dir(r)).unwrap();
    }
    // node3's export directory is node2's (as with an NFS-mounted export directory).
    fs::create_dir_all(roots[2].join("var/lib/ganeti")).unwrap();
    std::os::unix::fs::symlink(export_dir(&roots[1]), export_dir(&roots[2])).unwrap();
    let disks = file_disks(dir.path(), 2, 4, 1);
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state: "down",
        disks,
        process: None,
    };
    let cfg = write_cluster(dir.path(), &roots, &[inst], &[]);
    let export = |node: &str| {
        let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", node, "--json", INST]);
        assert!(ok, "{out}\n{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    export("node1");
    assert!(export_dir(&roots[0]).join(INST).exists());
    let v = export("node2");
    assert_eq!(v["removed_old_exports"], serde_json::json!(["node1.example.com"]));
    assert_eq!(v["shared_export_dir_nodes"], serde_json::json!(["node3.example.com"]));
    assert!(
        !export_dir(&roots[0]).join(INST).exists(),
        "the old export on node1 is removed"
    );
    check_export_complete(&export_dir(&roots[1]).join(INST), 4 << 20).expect("the new export survives cleanup");
    // The same the other way round: export to node3, node2 shares its directory.
    let v = export("node3");
    assert_eq!(v["shared_export_dir_nodes"], serde_json::json!(["node2.example.com"]));
    check_export_complete(&export_dir(&roots[2]).join(INST), 4 << 20).expect("the new export survives cleanup");
}

/// Two nodes' export directories are one directory seen through two mounts with different
/// device numbers and the same inodes: how an NFS export directory looks from two machines
/// (here bindfs, FUSE). Device and inode cannot tell them apart; the new export must survive.
#[test]
fn export_directory_seen_through_another_mount_keeps_the_new_export() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 3);
    for r in &roots[..2] {
        fs::create_dir_all(export_dir(r)).unwrap();
    }
    let _view = Bindfs::mount(&export_dir(&roots[1]), &export_dir(&roots[2]));
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&fs::metadata(p).unwrap());
    assert_ne!(
        dev(&export_dir(&roots[1])),
        dev(&export_dir(&roots[2])),
        "bindfs shows another device"
    );
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state: "down",
        disks: file_disks(dir.path(), 2, 4, 3),
        process: None,
    };
    let cfg = write_cluster(dir.path(), &roots, &[inst], &[]);
    let export = |node: &str| {
        let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", node, "--json", INST]);
        assert!(ok, "{out}\n{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    export("node1");
    let v = export("node2");
    assert_eq!(v["removed_old_exports"], serde_json::json!(["node1.example.com"]));
    assert_eq!(v["shared_export_dir_nodes"], serde_json::json!(["node3.example.com"]));
    check_export_complete(&export_dir(&roots[1]).join(INST), 4 << 20).expect("the new export survives cleanup");
    let v = export("node3");
    assert_eq!(v["removed_old_exports"], serde_json::json!([]));
    assert_eq!(v["shared_export_dir_nodes"], serde_json::json!(["node2.example.com"]));
    check_export_complete(&export_dir(&roots[1]).join(INST), 4 << 20).expect("the new export survives cleanup");
}

#[test]
fn kill_9_at_random_moments_never_loses_or_exposes_a_partial_export() {
    let mount = FsMount::xfs_reflink();
    let dir = scratch();
    let roots = node_roots(dir.path(), 3);
    for r in &roots {
        fs::create_dir_all(export_dir(r)).unwrap();
    }
    let mib = 24;
    let disks = file_disks(mount.path(), 2, mib, 7);
    let disk_dir = mount.path().to_path_buf();
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state: "up",
        disks,
        process: Some(sleeper()),
    };
    let cfg = write_cluster(dir.path(), &roots, &[inst], &[]);
    let _instance = InstanceGuard::new(&cfg, INST, true);
    let run = |node: &str| ds_text(&["export", "--cluster", s(&cfg), "-n", node, INST]);

    // A complete export to start from, and how long one takes.
    let t = Instant::now();
    let (ok, out, err) = run("node2");
    assert!(ok, "{out}\n{err}");
    let full = t.elapsed();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("one export takes {full:?}; kill seed {seed}");
    let mut rng = Rng::new(seed);
    // Kill times spread over a whole run (a run under load may take longer than the first).
    let window = (full.as_millis() as u64).max(50);
    let listed = |root: &Path| -> Vec<String> {
        let (ok, out, err) = ds_text(&["list", "--cluster", s(&cfg), "--no-headers", "--separator", "|"]);
        assert!(ok, "{err}");
        let node = root.file_name().unwrap().to_string_lossy().into_owned();
        out.lines()
            .filter(|l| l.starts_with(&format!("{node}.example.com|")))
            .map(|l| l.split('|').nth(1).unwrap().to_string())
            .collect()
    };
    let mut killed_mid_run = 0;
    let mut round = 0;
    while killed_mid_run < 22 {
        round += 1;
        assert!(round <= 100, "only {killed_mid_run} of 100 kills hit a running export");
        let target = if round % 3 == 2 { "node3" } else { "node2" };
        let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(["export", "--cluster", s(&cfg), "-n", target, INST])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = rng.below(window);
        std::thread::sleep(Duration::from_millis(at));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Every listed export is complete, and at least one export exists.
        let mut complete = 0;
        for r in &roots {
            for name in listed(r) {
                assert_eq!(name, INST, "round {round}: unexpected entry listed on {}", r.display());
                check_export_complete(&export_dir(r).join(&name), mib << 20)
                    .unwrap_or_else(|e| panic!("round {round} (kill after {at} ms): partial export listed: {e}"));
                complete += 1;
            }
        }
        assert!(
            complete >= 1,
            "round {round} (kill after {at} ms): the previous export was lost"
        );
    }
    eprintln!("{killed_mid_run} of {round} kills hit a running export");
    // The next export succeeds and cleans up after the killed ones.
    let (ok, out, err) = run("node3");
    assert!(ok, "{out}\n{err}");
    check_export_complete(&export_dir(&roots[2]).join(INST), mib << 20).unwrap();
    let snaps = find_named(&disk_dir, ".ds-snap-");
    assert!(snaps.is_empty(), "snapshots left after the next run: {snaps:?}");
    for r in &roots {
        let stale: Vec<_> = find_named(&export_dir(r), ".new")
            .into_iter()
            .chain(find_named(&export_dir(r), ".ds-removing-"))
            .collect();
        assert!(stale.is_empty(), "staging left after the next run: {stale:?}");
    }
    // Exactly one instance process runs: none was orphaned by a killed run.
    let disk0 = format!("DISKSTREAM_DISK0={}", disk_dir.join("disk7-0.img").display());
    let mut instances = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
        if !zombie && env.split(|b| *b == 0).any(|v| v == disk0.as_bytes()) {
            instances.push(pid);
        }
    }
    assert_eq!(instances.len(), 1, "instance processes: {instances:?}");
    for d in ["node1", "node2"] {
        assert!(
            !export_dir(&dir.path().join(d)).join(INST).exists(),
            "old export on {d} not cleaned up"
        );
    }
    // Every dump of the final export verifies against its manifest.
    let ini =
        IniDocument::parse(&fs::read_to_string(export_dir(&roots[2]).join(INST).join("config.ini")).unwrap()).unwrap();
    for i in 0..2 {
        let dump = export_dir(&roots[2])
            .join(INST)
            .join(ini.get("instance", &format!("disk{i}_dump")).unwrap());
        let (ok, out, err) = ds_text(&["image", "verify", s(&dump)]);
        assert!(ok, "{out}\n{err}");
    }
}

/// The `[pre, post]` hook times of each instance from the hook log.
fn intervals(log: &Path) -> Vec<(String, f64, f64)> {
    let text = fs::read_to_string(log).unwrap();
    let mut pre = std::collections::HashMap::new();
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let t: f64 = f[2].parse().unwrap();
        match f[0] {
            "pre" => {
                pre.insert(f[1].to_string(), t);
            }
            _ => out.push((f[1].to_string(), pre.remove(f[1]).expect("pre before post"), t)),
        }
    }
    out
}

#[test]
fn different_instances_overlap_and_one_instance_serializes() {
    let dir = scratch();
    let roots = node_roots(dir.path(), 4);
    for r in &roots {
        fs::create_dir_all(export_dir(r)).unwrap();
    }
    let log = dir.path().join("hooks.log");
    // Hooks run on the master (node1) for every export: they log when the locked part begins
    // and ends, and the pre hook lingers so that overlapping runs must overlap in the log.
    for (phase, body) in [("pre", "sleep 1"), ("post", "true")] {
        let d = roots[0].join(format!("etc/ganeti/hooks/instance-export-{phase}.d"));
        fs::create_dir_all(&d).unwrap();
        let script = d.join("10-log");
        let var = if phase == "pre" {
            "GANETI_INSTANCE_NAME"
        } else {
            "GANETI_POST_INSTANCE_NAME"
        };
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n{body}\necho {phase} ${var} $(date +%s.%N) >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        Command::new("chmod").arg("+x").arg(&script).status().unwrap();
    }
    let i1 = InstSpec {
        name: "inst1.example.com".into(),
        primary: "node1.example.com".into(),
        admin_state: "down",
        disks: file_disks(dir.path(), 1, 8, 1),
        process: None,
    };
    let i2 = InstSpec {
        name: "inst2.example.com".into(),
        primary: "node3.example.com".into(),
        admin_state: "down",
        disks: file_disks(dir.path(), 1, 8, 2),
        process: None,
    };
    let cfg = write_cluster(dir.path(), &roots, &[i1, i2], &[]);
    let spawn = |inst: &str, node: &str| {
        Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(["export", "--cluster", s(&cfg), "-n", node, inst])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // inst1 node1 -> node2 and inst2 node3 -> node4 share no instance and no node lock.
    let a = spawn("inst1", "node2");
    let b = spawn("inst2", "node4");
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let iv = intervals(&log);
    assert_eq!(iv.len(), 2);
    let ((_, s1, e1), (_, s2, e2)) = (&iv[0], &iv[1]);
    assert!(s1 < e2 && s2 < e1, "exports of two instances did not overlap: {iv:?}");

    // Two exports of the same instance serialize on the instance lock.
    fs::remove_file(&log).unwrap();
    let a = spawn("inst1", "node2");
    std::thread::sleep(Duration::from_millis(200));
    let b = spawn("inst1", "node4");
    let mut outs = String::new();
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    let iv = intervals(&log);
    assert_eq!(iv.len(), 2);
    let ((_, s1, e1), (_, s2, e2)) = (&iv[0], &iv[1]);
    assert!(e1 <= s2 || e2 <= s1, "two exports of one instance overlapped: {iv:?}");
    assert!(
        outs.contains("Waiting for lock instance/inst1.example.com (exclusive), held by pid"),
        "{outs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Consistency: an instance that keeps appending checksummed, sequence-numbered records.

const RS: usize = 4096;

/// The instance: appends records `seq` at `seq * 4096` (one `pwrite` each), resuming after the
/// last complete record when restarted.
const WRITER: &str = r#"
import hashlib, os, struct, sys, time
RS = 4096
fd = os.open(sys.argv[1], os.O_RDWR)
n = os.fstat(fd).st_size // RS
def rec(seq):
    body = struct.pack('<8sQ', b'DSREC001', seq) + struct.pack('<Q', seq) * 506
    return body + hashlib.sha256(body).digest()
seq = 0
while seq < n and os.pread(fd, 8, seq * RS) == b'DSREC001':
    seq += 1
print('writer resumes at', seq, flush=True)
while seq < n:
    os.pwrite(fd, rec(seq), seq * RS)
    seq += 1
    if seq % 16 == 0:
        time.sleep(0.004)
while True:
    time.sleep(1)
"#;

/// Checks an image is a consistent state of the writer: records `0..k` complete and in
/// sequence, everything after them never written. Returns `k`.
fn consistent_prefix(img: &[u8]) -> Result<usize, String> {
    let mut k = 0;
    for (i, r) in img.chunks(RS).enumerate() {
        if r.iter().all(|b| *b == 0) {
            continue;
        }
        if k != i {
            return Err(format!("record {i} written after a missing record {k}"));
        }
        let (body, sum) = r.split_at(RS - 32);
        if &body[..8] != b"DSREC001"
            || u64::from_le_bytes(body[8..16].try_into().unwrap()) != i as u64
            || Sha256::digest(body).as_slice() != sum
        {
            return Err(format!("record {i} is torn or corrupt"));
        }
        k = i + 1;
    }
    Ok(k)
}

#[test]
fn snapshot_of_a_writing_instance_is_consistent() {
    let mount = FsMount::xfs_reflink();
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    for r in &roots {
        fs::create_dir_all(export_dir(r)).unwrap();
    }
    let disk = mount.path().join("journal.img");
    let size: u64 = 48 << 20;
    fs::File::create(&disk).unwrap().set_len(size).unwrap();
    let script = dir.path().join("writer.py");
    fs::write(&script, WRITER).unwrap();
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state: "up",
        disks: vec![DiskSpec {
            template: "file",
            path: disk.clone(),
            mib: size >> 20,
        }],
        process: Some(vec!["/usr/bin/python3".into(), s(&script).into(), s(&disk).into()]),
    };
    let cfg = write_cluster(dir.path(), &roots, &[inst], &[]);
    let _instance = InstanceGuard::new(&cfg, INST, true);
    let written = |at: u64| read_prefix(&disk, at + 8)[at as usize..].starts_with(b"DSREC001");
    let t = Instant::now();
    while !written(400 * RS as u64) {
        assert!(t.elapsed() < Duration::from_secs(30), "the writer does not write");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut last = 0;
    // A live snapshot (crash-consistent), then one with the default shutdown and restart.
    for args in [&["--noshutdown"][..], &[][..]] {
        let mut a = vec!["export", "--cluster", s(&cfg), "-n", "node2", "--json"];
        a.extend_from_slice(args);
        a.push(INST);
        let (ok, out, err) = ds_text(&a);
        assert!(ok, "{out}\n{err}");
        assert!(err.contains("Creating a snapshot of disk/0"), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let dump = PathBuf::from(v["disks"][0]["path"].as_str().unwrap());
        let img = fs::read(&dump).unwrap();
        assert_eq!(img.len() as u64, size);
        let k = consistent_prefix(&img).unwrap_or_else(|e| panic!("export {args:?}: {e}"));
        eprintln!("export {args:?}: consistent image with {k} records");
        assert!(k >= 400 && k >= last, "k = {k}, previous {last}");
        last = k;
        // The checker does detect a torn record.
        let mut torn = img.clone();
        torn[(k - 1) * RS + 100] ^= 0xff;
        assert!(consistent_prefix(&torn).is_err());
    }
}

#[test]
fn a_damaged_pid_file_stops_the_export_before_anything_is_touched() {
    // Whether the instance runs cannot be told from a pid file that lost its start time (or
    // was hand edited): reading it as "not running" would copy a disk in use and never start
    // the instance again; trusting its pid could signal a process that reused it.
    let (dir, roots, cfg) = one_disk_instance(11, Some(vec!["/bin/sleep".into(), "1000".into()]));
    let guard = InstanceGuard::new(&cfg, INST, true);
    let pid = guard.pid().expect("the instance runs");
    let pid_file = guard.driver.pid_file.clone();
    let good = fs::read_to_string(&pid_file).unwrap();
    // --long-sleep: the disks cannot be snapshotted (ext4), and without it the export would
    // abort for that before it looks at the instance.
    let args = ["export", "--cluster", s(&cfg), "-n", "node2", "--long-sleep", INST];
    for damaged in [format!("{pid}\n"), "1 1\n".into(), String::new()] {
        fs::write(&pid_file, &damaged).unwrap();
        let (ok, out, err) = ds_text(&args);
        assert!(!ok, "{damaged:?}: {out}");
        assert!(
            err.contains(&pid_file.display().to_string()) && err.contains("damaged"),
            "{damaged:?}: the error names the pid file: {err}"
        );
        assert_eq!(
            diskstream_orchestrator::driver::proc_state(pid).map(|(s, _)| s != 'Z'),
            Some(true),
            "{damaged:?}: the instance was not signalled"
        );
        assert_eq!(fs::read_to_string(&pid_file).unwrap(), damaged, "the pid file is kept");
        assert!(
            !export_dir(&roots[1]).join(INST).exists(),
            "{damaged:?}: nothing exported"
        );
        assert!(find_named(dir.path(), ".new").is_empty());
        assert!(find_named(dir.path(), ".ds-snap-").is_empty());
    }
    // Mended, the instance is found running, and the export stops and restarts it.
    fs::write(&pid_file, good).unwrap();
    let (ok, out, err) = ds_text(&args);
    assert!(ok, "{out}\n{err}");
    assert!(guard.pid().is_some_and(|p| p != pid), "restarted after the export");
}

#[test]
fn a_target_that_cannot_take_the_export_fails_before_the_instance_is_stopped() {
    // Ganeti stops the instance, snapshots it and starts it again before the target's export
    // directory is first written: a read-only one costs the instance a restart, for nothing.
    let (dir, roots, cfg) = one_disk_instance(21, Some(sleeper()));
    let guard = InstanceGuard::new(&cfg, INST, true);
    let pid = guard.pid().expect("the instance runs");
    let target = export_dir(&roots[1]);
    let old = target.join(INST);
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("config.ini"), "an old export").unwrap();
    let ro = ReadOnlyBind::new(&target, &target);
    let plain = "read-only export directory";
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", "--long-sleep", INST]);
    assert!(!ok, "{plain}: {out}");
    assert!(
        err.contains("Could not prepare the export directory on node node2.example.com")
            && err.contains("Read-only file system")
            && err.contains("was not stopped or snapshotted"),
        "{plain}: {err}"
    );
    assert!(!out.contains("Shutting down instance"), "{plain}: {out}");
    assert_eq!(guard.pid(), Some(pid), "{plain}: the instance was never stopped");
    drop(ro);
    assert_eq!(fs::read_to_string(old.join("config.ini")).unwrap(), "an old export");
    assert!(find_named(dir.path(), ".new").is_empty());
    // An export directory that is a file is no place for an export either.
    fs::remove_dir_all(&target).unwrap();
    fs::write(&target, "not a directory").unwrap();
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node2", INST]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("create the export directory {}", target.display())),
        "{err}"
    );
    assert_eq!(guard.pid(), Some(pid), "the instance was never stopped");
    assert_eq!(fs::read_to_string(&target).unwrap(), "not a directory");
}

/// A two-node cluster in a new scratch directory with an instance of one 2 MiB disk on node1
/// (`seed` makes its data): up and running as `process`, or down without one. The directory,
/// the node roots and the config.
fn one_disk_instance(seed: u64, process: Option<Vec<String>>) -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
    let dir = scratch();
    let roots = node_roots(dir.path(), 2);
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state: if process.is_some() { "up" } else { "down" },
        disks: file_disks(dir.path(), 1, 2, seed),
        process,
    };
    let cfg = write_cluster(dir.path(), &roots, &[inst], &[]);
    (dir, roots, cfg)
}

#[test]
fn a_failed_sync_after_the_swap_is_a_warning_and_the_export_stands() {
    // Once the new export is swapped in, it is the export: a failure to sync the directory then
    // must not report the job failed (Ganeti's users would retry an export that exists).
    let (dir, roots, cfg) = one_disk_instance(23, None);
    let args = ["export", "--cluster", s(&cfg), "-n", "node2", INST];
    let (ok, out, err) = ds_text(&args);
    assert!(ok, "{out}\n{err}");
    let first = fs::read_to_string(export_dir(&roots[1]).join(INST).join("diskstream-export-id")).unwrap();
    let o = ds_env(&args, &[("DISKSTREAM_TEST_ONLY_FAIL_AT", "sync-after-swap")]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr_of(&o));
    assert!(o.status.success(), "{text}");
    let new = export_dir(&roots[1]).join(INST);
    assert!(
        text.contains(&format!("WARNING: the new export is in place in {}", new.display()))
            && text.contains("Input/output error")
            && text.contains("a crash may bring back the export it replaced"),
        "{text}"
    );
    let job = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        job.matches("WARNING: the new export is in place").count(),
        1,
        "said once: {job}"
    );
    let second = fs::read_to_string(new.join("diskstream-export-id")).unwrap();
    assert_ne!(first, second, "the new export is the one in place");
    // A script that reads only the JSON result learns it too.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let o = ds_env(&json_args, &[("DISKSTREAM_TEST_ONLY_FAIL_AT", "sync-after-swap")]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = j["warnings"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert_eq!(w.len(), 1, "{j}");
    assert!(
        w[0].as_str().unwrap().starts_with("the new export is in place in "),
        "{j}"
    );
    let third = fs::read_to_string(new.join("diskstream-export-id")).unwrap();
    assert_eq!(j["export_id"].as_str(), Some(third.trim()), "{j}");
    assert_ne!(second, third);
    check_export_complete(&new, 2 << 20).unwrap();
    assert!(
        find_named(dir.path(), ".new").is_empty(),
        "the replaced export was removed"
    );
}

#[test]
fn without_rename_exchange_a_failed_swap_keeps_the_previous_export() {
    // On a file system that cannot exchange (NFS) the previous export is moved aside under a
    // hidden removal name first; a failure of the rename that follows left it there, and the
    // next export's sweep deleted it.
    let (dir, roots, cfg) = one_disk_instance(24, None);
    let args = ["export", "--cluster", s(&cfg), "-n", "node2", INST];
    let export = export_dir(&roots[1]).join(INST);
    let id = || fs::read_to_string(export.join("diskstream-export-id")).unwrap();
    let run = |faults: &str| {
        let o = ds_env(&args, &[("DISKSTREAM_TEST_ONLY_FAIL_AT", faults)]);
        (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr_of(&o)),
        )
    };
    let (ok, text) = run("");
    assert!(ok, "{text}");
    let first = id();
    // The fallback itself replaces the export.
    let (ok, text) = run("exchange");
    assert!(ok, "{text}");
    let second = id();
    assert_ne!(first, second);
    check_export_complete(&export, 2 << 20).unwrap();
    // Its rename of the new export fails: the previous one is back under its name.
    let (ok, text) = run("exchange,rename-into-place");
    assert!(!ok, "{text}");
    assert!(text.contains("Could not finalize export"), "{text}");
    assert_eq!(id(), second, "the previous export is in place");
    check_export_complete(&export, 2 << 20).unwrap();
    assert!(find_named(dir.path(), ".ds-removing-").is_empty(), "hidden: {text}");
    assert!(find_named(dir.path(), ".new").is_empty());
    let (ok, text) = run("");
    assert!(ok, "{text}");
    assert_ne!(id(), second);
}
