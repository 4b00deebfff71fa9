//! `diskstream demo --agents` end to end, with real agent processes: as root each agent runs in
//! its own network namespace, as an ordinary user (uid 65534 through `setpriv`) on 127.0.0.1;
//! in both the dumps on node3 equal the source disks byte for byte, and afterwards no agent
//! process, namespace or link of the demo is left. A SIGTERM in the middle of the demo leaves
//! nothing behind either; after a SIGKILL the agents and the instance still die with the demo, and the next demo
//! deletes the killed one's namespaces. Every test's guard kills and deletes whatever the demo might have
//! left, also when the test fails.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use diskstream_orchestrator::export::config_ini::IniDocument;

const DS: &str = env!("CARGO_BIN_EXE_diskstream");

fn netns_usable() -> bool {
    let ok = is_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: needs root and iproute2 (scripts/test runs it as root)");
    }
    ok
}

/// The namespaces and the outer veth a demo with this pid makes (see `agent/src/netns.rs`).
fn demo_net_names(pid: u32) -> (Vec<String>, String) {
    let t = format!("ds{pid}");
    (
        vec![format!("{t}h"), format!("{t}n1"), format!("{t}n2"), format!("{t}n3")],
        format!("{t}o"),
    )
}

/// Pids of processes whose command line mentions `needle`.
fn procs_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true);
        if cmd.contains(needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// The demo process (if still running) and everything it may leave: killed and deleted on drop.
struct DemoGuard {
    dir: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
}

impl DemoGuard {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            child: None,
            pid: None,
        }
    }

    /// What is left of the demo: agent processes, the instance, namespaces, the outer link.
    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = procs_mentioning(&self.dir.join("cluster.toml").display().to_string())
            .into_iter()
            .map(|p| format!("process {p}"))
            .collect();
        let pid_file = self.dir.join("vc/node1/var/run/ganeti/instances/inst1.example.com.pid");
        if let Some(p) = instance_still_running(&pid_file) {
            left.push(format!("instance process {p}"));
        }
        if let Some(pid) = self.pid {
            let (nss, outer) = demo_net_names(pid);
            let list = cmd_out("ip", &["netns", "list"]);
            for ns in nss {
                if list.split_whitespace().any(|w| w == ns) {
                    left.push(format!("namespace {ns}"));
                }
            }
            if cmd_out("ip", &["-o", "link"]).contains(&format!(" {outer}@")) {
                left.push(format!("link {outer}"));
            }
        }
        left
    }
}

/// The pid in an instance's pid file (`PID START`) if that process still runs and leads its
/// own process group: the file may outlive the process, and with pids wrapping under a test
/// suite's churn its pid may by now be another process's, a session leader's (a shell's), whose
/// group a `kill -9 -PID` would take down. The start time (field 22 of `/proc/PID/stat`) tells.
fn instance_still_running(pid_file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let mut it = text.split_whitespace();
    let pid: u32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the command: state (3), ppid, pgrp (5), ..., starttime (22). A zombie (ended, its
    // parent gone and this machine's init not yet reaping it) no longer runs.
    let (pgrp, st): (u32, u64) = (fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?);
    let ended = fields.first().is_some_and(|s| s.starts_with(['Z', 'X']));
    (pid > 1 && st == start && pgrp == pid && !ended).then_some(pid)
}

/// SIGKILL to process group `pgid` (> 1). Never `kill -9 -PGID`: procps-ng 4.0.2's `kill` reads
/// that as `kill(-1, SIGKILL)`, every process the caller may signal (strace: `kill -9 -12472`
/// made `kill(-1, SIGKILL)`, which took down every shell on the machine); after `--` it reads the
/// group as meant.
fn kill_group(pgid: u32) {
    if pgid <= 1 {
        return; // kill(-1) signals every process; kill(0) this test's own group.
    }
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .status();
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in procs_mentioning(&self.dir.display().to_string()) {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        let pid_file = self.dir.join("vc/node1/var/run/ganeti/instances/inst1.example.com.pid");
        if let Some(p) = instance_still_running(&pid_file) {
            kill_group(p);
        }
        if let Some(pid) = self.pid {
            let (nss, outer) = demo_net_names(pid);
            let _ = Command::new("ip").args(["link", "del", &outer]).output();
            for ns in nss {
                let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            }
        }
    }
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Runs the demo (`prefix` before the binary, e.g. setpriv) with `--json` under `guard` and
/// checks everything: the mode, the dumps on node3, nothing left.
fn demo_and_check(guard: &mut DemoGuard, prefix: &[&str], mode: &str) {
    let dir = guard.dir.clone();
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(DS));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg(DS);
    }
    cmd.args(["demo", "--agents", "--dir", s(&dir), "--size", "8M", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn the demo");
    guard.pid = Some(child.id());
    let out = child.wait_with_output().expect("demo output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["op"], "demo", "{v}");
    assert_eq!(v["agents"]["mode"], mode, "{v}");
    let nodes = v["agents"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{v}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["node"], format!("node{}.example.com", i + 1));
        let addr = n["address"].as_str().expect("address");
        if mode == "loopback" {
            assert!(addr.starts_with("127.0.0.1:"), "{v}");
            assert!(n["namespace"].is_null(), "{v}");
        } else {
            assert!(addr.starts_with("10.80.") && addr.ends_with(":1811"), "{v}");
            assert_eq!(n["namespace"], format!("ds{}n{}", out_pid(guard), i + 1), "{v}");
        }
    }
    for m in [
        "agent of node3.example.com listening on",
        "the disk data went agent to agent",
        "Removing old exports for instance inst1.example.com",
        "stopped the agents",
    ] {
        assert!(stderr.contains(m), "{m:?} missing in:\n{stderr}");
    }
    if mode == "netns" {
        assert!(stderr.contains("removed the network namespaces"), "{stderr}");
    }
    // The dumps on node3 are the source disks, byte for byte; node2's export was removed.
    let exp = dir.join("vc/node3/var/lib/ganeti/export/inst1.example.com");
    let ini = IniDocument::parse(&std::fs::read_to_string(exp.join("config.ini")).expect("config.ini")).unwrap();
    for (i, src) in ["inst1-root.img", "inst1-data.img"].iter().enumerate() {
        let dump = ini.get("instance", &format!("disk{i}_dump")).expect("dump name");
        assert_same_bytes(&dir.join("vc/node1/disks").join(src), &exp.join(dump));
    }
    assert!(!dir.join("vc/node2/var/lib/ganeti/export/inst1.example.com").exists());
    let left = guard.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn out_pid(g: &DemoGuard) -> u32 {
    g.pid.expect("demo pid")
}

#[test]
fn demo_with_agents_in_network_namespaces() {
    if !netns_usable() {
        return;
    }
    let scratch = scratch();
    let dir = scratch.path().join("demo");
    let mut guard = DemoGuard::new(&dir);
    demo_and_check(&mut guard, &[], "netns");
}

#[test]
fn demo_with_agents_on_loopback_as_an_ordinary_user() {
    let tmp = tempfile::Builder::new().prefix("dsdemo-agents-").tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut guard = DemoGuard::new(&dir);
    if is_root() {
        // uid/gid 65534 (nobody) must be able to run the binary and write the directory.
        std::fs::create_dir(&dir).unwrap();
        assert!(Command::new("chmod")
            .arg("0755")
            .arg(tmp.path())
            .status()
            .unwrap()
            .success());
        assert!(Command::new("chown")
            .arg("65534:65534")
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        demo_and_check(
            &mut guard,
            &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
            "loopback",
        );
    } else {
        demo_and_check(&mut guard, &[], "loopback");
    }
}

/// Starts `demo --agents` in `dir` under `guard` and returns once its first export started
/// (three agents up), with the receiver of its remaining stdout lines and what it printed.
/// With `group`, the demo leads a process group of its own (as a shell's foreground job).
fn start_and_wait_for_export(guard: &mut DemoGuard, size: &str, group: bool) -> (mpsc::Receiver<String>, String) {
    use std::os::unix::process::CommandExt;
    let dir = guard.dir.clone();
    let mut cmd = Command::new(DS);
    if group {
        cmd.process_group(0);
    }
    let mut child = cmd
        .args(["demo", "--agents", "--dir", s(&dir), "--size", size])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the demo");
    guard.pid = Some(child.id());
    let stdout = child.stdout.take().expect("stdout");
    guard.child = Some(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let mut seen = String::new();
    while !seen.contains("$ diskstream export -n node2") {
        let line = rx
            .recv_timeout(Duration::from_secs(60).saturating_sub(t0.elapsed()))
            .unwrap_or_else(|_| panic!("the demo did not start its first export:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
    }
    let agents = procs_mentioning(&dir.join("cluster.toml").display().to_string());
    assert!(agents.len() >= 3, "expected 3 agents running: {agents:?}\n{seen}");
    (rx, seen)
}

/// Waits (at most `secs`) for the demo under `guard` to exit.
fn wait_exit(guard: &mut DemoGuard, secs: u64) -> std::process::ExitStatus {
    let child = guard.child.as_mut().expect("child");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "the demo did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    guard.child = None;
    status
}

#[test]
fn sigterm_mid_demo_leaves_no_agent_and_no_namespace() {
    let scratch = scratch();
    let dir = scratch.path().join("demo");
    let mut guard = DemoGuard::new(&dir);
    // The agents are up and the first export has started: SIGTERM.
    let (rx, mut seen) = start_and_wait_for_export(&mut guard, "64M", false);
    let pid = guard.pid.expect("pid");
    assert!(handlers_installed(pid), "the demo has no SIGTERM handler");
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(&mut guard, 120);
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(143), "not stopped by SIGTERM: {status}\n{seen}");
    let left = guard.leftovers();
    assert!(left.is_empty(), "left behind after SIGTERM: {left:?}\n{seen}");
}

#[test]
fn ctrl_c_to_the_demos_process_group_leaves_nothing() {
    let scratch = scratch();
    let dir = scratch.path().join("demo");
    let mut guard = DemoGuard::new(&dir);
    // SIGINT to the demo's whole process group, as a terminal's Ctrl-C: the agents are in groups
    // of their own, so the demo stops its export through them, then kills them.
    let (rx, mut seen) = start_and_wait_for_export(&mut guard, "64M", true);
    let pid = guard.pid.expect("pid");
    assert!(handlers_installed(pid), "the demo has no SIGINT handler");
    assert!(Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(&mut guard, 120);
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(130), "not stopped by SIGINT: {status}\n{seen}");
    let left = guard.leftovers();
    assert!(left.is_empty(), "left behind after Ctrl-C: {left:?}\n{seen}");
}

#[test]
fn sigkill_mid_demo_takes_the_agents_down_and_the_next_demo_sweeps_the_namespaces() {
    let scratch = scratch();
    let dir = scratch.path().join("demo");
    let mut guard = DemoGuard::new(&dir);
    let (_rx, seen) = start_and_wait_for_export(&mut guard, "64M", false);
    let pid = guard.pid.expect("pid");
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_exit(&mut guard, 10);
    let cfg = dir.join("cluster.toml").display().to_string();
    let t0 = Instant::now();
    while !procs_mentioning(&cfg).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "agents outlived the SIGKILLed demo: {:?}\n{seen}",
            procs_mentioning(&cfg)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its instance ends with it too: it watches the demo's pid (every 0.2 s), also when a dying
    // agent started it after the kill. A real VM would outlive a killed master.
    let t0 = Instant::now();
    let instance_left = || {
        guard
            .leftovers()
            .into_iter()
            .filter(|l| l.starts_with("instance"))
            .collect::<Vec<_>>()
    };
    while !instance_left().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the instance outlived the SIGKILLed demo: {:?}",
            instance_left()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if !netns_usable() {
        return;
    }
    // Its namespaces are still there (no guard ran): the next demo deletes them (or a demo of
    // a test running beside this one did it first).
    let next = scratch.path().join("next");
    let _next_guard = DemoGuard::new(&next);
    let out = Command::new(DS)
        .args(["demo", "--agents", "--dir", s(&next), "--size", "4M"])
        .stdin(Stdio::null())
        .output()
        .expect("run the next demo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The demo's instance ended with the demo (a real VM would outlive a killed master).
    let left = guard.leftovers();
    assert!(left.is_empty(), "left behind after the next demo: {left:?}");
}

#[test]
fn namespaces_that_cannot_be_built_fall_back_to_loopback() {
    if !netns_usable() {
        return;
    }
    // An `ip` that lists namespaces but may not add one (a container without CAP_SYS_ADMIN).
    let scratch = scratch();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real = cmd_out("sh", &["-c", "command -v ip"]);
    let fake = bin.join("ip");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$*\" in *'netns add'*) echo 'mount --make-shared /run/netns failed: Operation not permitted' >&2; exit 1;; esac\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .unwrap();
    assert!(Command::new("chmod").arg("0755").arg(&fake).status().unwrap().success());
    let dir = scratch.path().join("demo");
    let mut guard = DemoGuard::new(&dir);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let child = Command::new(DS)
        .args(["demo", "--agents", "--dir", s(&dir), "--size", "4M", "--json"])
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the demo");
    guard.pid = Some(child.id());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["agents"]["mode"], "loopback", "{v}");
    assert!(
        err.contains("cannot build the agents' network namespaces") && err.contains("Operation not permitted"),
        "{err}"
    );
    let left = guard.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}
