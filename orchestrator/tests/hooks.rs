//! Hooks tests: the run-parts cases of Ganeti's `hooks_unittest` (empty dir, non-executable,
//! invalid name, directory, success, symlink, failure, combined, ordering, environment), the
//! per-script timeout, and the exact `instance-export` environment across nodes.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diskstream_orchestrator::cluster::Cluster;
use diskstream_orchestrator::hooks::env::{export_hook_nodes, export_lu_env, phase_env, ExportHookParams, HookContext};
use diskstream_orchestrator::hooks::{check_pre_results, on_node, HookStatus, HooksRunner, Note, Phase, OUTPUT_GRACE};
use diskstream_orchestrator::ErrorKind;

use HookStatus::{Fail, Skip, Success};

fn runner() -> HooksRunner {
    HooksRunner::new(Duration::from_secs(20))
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn env_ab() -> BTreeMap<String, String> {
    [("A", "a"), ("B", "b c")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn statuses(dir: &Path) -> Vec<(String, HookStatus)> {
    runner()
        .run_parts(dir, &env_ab())
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect()
}

fn st(name: &str, s: HookStatus) -> (String, HookStatus) {
    (name.to_string(), s)
}

#[test]
fn empty_and_missing_dirs_give_no_results() {
    let d = tempfile::tempdir().unwrap();
    assert!(statuses(d.path()).is_empty());
    assert!(statuses(&d.path().join("missing")).is_empty());
}

#[test]
fn non_executable_files_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    let p = script(d.path(), "noexec", "exit 0");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let r = runner().run_parts(d.path(), &env_ab());
    assert_eq!(r, [("noexec".to_string(), Skip, String::new())]);
}

#[test]
fn invalid_names_are_skipped_and_hidden_files_ignored() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("ran");
    for name in ["a.sh", "b~", "c d", ".hidden"] {
        script(d.path(), name, &format!("touch {}", marker.display()));
    }
    assert_eq!(statuses(d.path()), [st("a.sh", Skip), st("b~", Skip), st("c d", Skip)]);
    assert!(!marker.exists(), "a skipped script ran");
}

#[test]
fn directories_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("subdir")).unwrap();
    fs::set_permissions(d.path().join("subdir"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(statuses(d.path()), [st("subdir", Skip)]);
}

#[test]
fn successful_scripts() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "s1", "echo one");
    script(d.path(), "s2", "echo two >&2; echo more");
    let r = runner().run_parts(d.path(), &env_ab());
    assert_eq!(
        r,
        [
            ("s1".to_string(), Success, "one".to_string()),
            ("s2".to_string(), Success, "two\nmore".to_string()),
        ]
    );
}

#[test]
fn symlinks_are_followed() {
    let d = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let real = script(target.path(), "real", "echo via link");
    symlink(&real, d.path().join("link")).unwrap();
    symlink("/bin/true", d.path().join("true")).unwrap();
    symlink(target.path(), d.path().join("todir")).unwrap();
    symlink("/nonexistent/x", d.path().join("dangling")).unwrap();
    let r = runner().run_parts(d.path(), &env_ab());
    assert_eq!(
        r,
        [
            ("dangling".to_string(), Skip, String::new()),
            ("link".to_string(), Success, "via link".to_string()),
            ("todir".to_string(), Skip, String::new()),
            ("true".to_string(), Success, String::new()),
        ]
    );
}

#[test]
fn failing_scripts_and_exec_errors() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "f1", "echo '  broken  '; exit 1");
    let bad = d.path().join("f2");
    fs::write(&bad, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o755)).unwrap();
    let r = runner().run_parts(d.path(), &env_ab());
    assert_eq!(r[0], ("f1".to_string(), Fail, "broken".to_string()));
    assert_eq!(r[1].1, Fail);
    assert!(r[1].2.starts_with("Hook script execution error: "), "{:?}", r[1].2);
}

#[test]
fn combined_results() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "a-ok", "exit 0");
    script(d.path(), "b-fail", "exit 3");
    script(d.path(), "c.skip", "exit 0");
    let noexec = script(d.path(), "d-noexec", "exit 0");
    fs::set_permissions(&noexec, fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(d.path().join("e-dir")).unwrap();
    script(d.path(), "f-ok", "exit 0");
    assert_eq!(
        statuses(d.path()),
        [
            st("a-ok", Success),
            st("b-fail", Fail),
            st("c.skip", Skip),
            st("d-noexec", Skip),
            st("e-dir", Skip),
            st("f-ok", Success),
        ]
    );
}

#[test]
fn scripts_run_in_lexical_order() {
    let d = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let names = ["10-b", "2-a", "A", "_z", "a", "Z-9", "10-a"];
    for n in names {
        script(d.path(), n, &format!("echo {n} >> {}", log.path().display()));
    }
    let mut want: Vec<&str> = names.to_vec();
    want.sort(); // Byte order, as Python's sorted() on str.
    assert_eq!(want, ["10-a", "10-b", "2-a", "A", "Z-9", "_z", "a"]);
    let order: Vec<String> = runner()
        .run_parts(d.path(), &env_ab())
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(order, want);
    let ran = fs::read_to_string(log.path()).unwrap();
    assert_eq!(ran.lines().collect::<Vec<_>>(), want);
}

/// The script records its exact initial environment (not what the shell adds), its cwd and
/// its stdin.
fn env_dump_script(dir: &Path, name: &str, out: &Path) {
    script(
        dir,
        name,
        &format!(
            "tr '\\0' '\\n' < /proc/$$/environ > {out}.env\npwd > {out}.cwd\ncat > {out}.stdin",
            out = out.display()
        ),
    );
}

fn read_env(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn environment_is_reset_to_exactly_the_hook_env() {
    let d = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("dump");
    env_dump_script(d.path(), "dump", &base);
    // Something in our own environment that must not leak.
    assert!(std::env::var_os("HOME").is_some() || std::env::var_os("PWD").is_some());
    let r = runner().run_parts(d.path(), &env_ab());
    assert_eq!(r, [("dump".to_string(), Success, String::new())]);
    let mut want = env_ab();
    want.insert("PATH".into(), "/sbin:/bin:/usr/sbin:/usr/bin".into());
    assert_eq!(read_env(&base.with_extension("env")), want);
    assert_eq!(fs::read_to_string(base.with_extension("cwd")).unwrap(), "/\n");
    assert_eq!(fs::read_to_string(base.with_extension("stdin")).unwrap(), "");
}

#[test]
fn a_script_over_its_timeout_is_killed_with_its_process_group() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("bg.pid");
    script(
        d.path(),
        "slow",
        &format!("sleep 60 &\necho $! > {}\necho started\nsleep 60", pidfile.display()),
    );
    script(d.path(), "then", "echo next");
    let start = Instant::now();
    let r = HooksRunner::new(Duration::from_millis(500)).run_parts(d.path(), &env_ab());
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(took >= Duration::from_millis(500));
    assert_eq!(r[0].0, "slow");
    assert_eq!(r[0].1, Fail);
    assert_eq!(r[0].2, "started\nHook script killed after the 0.5s timeout");
    assert_eq!(r[1], ("then".to_string(), Success, "next".to_string()));
    // The background child of the script died with it.
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    let gone = (0..50).any(|_| {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let dead = state.is_none_or(|s| s.rsplit(')').next().unwrap().trim().starts_with('Z'));
        if !dead {
            std::thread::sleep(Duration::from_millis(20));
        }
        dead
    });
    assert!(gone, "background process {pid} survived the timeout");
}

/// Kills the process whose pid a hook wrote to `.0` when dropped, so a failing test leaves no
/// `sleep` behind.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

fn gone(pid: &str) -> bool {
    (0..100).any(|_| {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let dead = state.is_none_or(|s| s.rsplit(')').next().unwrap().trim().starts_with('Z'));
        if !dead {
            std::thread::sleep(Duration::from_millis(20));
        }
        dead
    })
}

#[test]
fn a_script_that_exits_leaving_a_child_on_its_output_is_cut_off_after_the_grace() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("bg.pid");
    let _kill = KillOnDrop(pidfile.clone());
    script(
        d.path(),
        "bg",
        &format!("echo before\nsleep 300 &\necho $! > {}\nexit 0", pidfile.display()),
    );
    script(d.path(), "then", "echo next");
    let reports = std::sync::Mutex::new(Vec::new());
    let start = Instant::now();
    let r = HooksRunner::new(Duration::from_secs(30))
        .run_parts_reporting(d.path(), &env_ab(), &|m| reports.lock().unwrap().push(m));
    let took = start.elapsed();
    // Not the whole 30 s timeout: the grace after the script's exit, then on.
    assert!(took >= OUTPUT_GRACE, "took {took:?}");
    assert!(took < OUTPUT_GRACE + Duration::from_secs(8), "took {took:?}");
    assert_eq!(
        r[0],
        (
            "bg".to_string(),
            Success,
            "before\nHook script exited, but processes it left behind kept its output open: output \
             cut off and those processes killed after 2.0s"
                .to_string()
        )
    );
    assert_eq!(r[1], ("then".to_string(), Success, "next".to_string()));
    assert_eq!(
        *reports.lock().unwrap(),
        [Note::warning(
            "bg exited, leaving processes behind still running with its output open; they were killed \
          after 2.0s and its output was cut off"
                .to_string()
        )]
    );
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert!(gone(&pid), "the leftover {pid} was not killed");
}

#[test]
fn a_process_that_left_the_scripts_session_is_not_read_from_after_the_grace() {
    // It escapes the process group that is killed; its output used to be read for as long as it
    // lived (in an agent: a thread and a pipe for ever per such hook).
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("daemon.pid");
    let marker = d.path().join("still-read");
    let _kill = KillOnDrop(pidfile.clone());
    let hooks = d.path().join("hooks");
    fs::create_dir(&hooks).unwrap();
    script(
        &hooks,
        "daemon",
        &format!(
            "setsid sh -c 'echo $$ > {}; sleep 4; echo late; touch {}' &\nexit 0",
            pidfile.display(),
            marker.display()
        ),
    );
    let start = Instant::now();
    let r = HooksRunner::new(Duration::from_secs(30)).run_parts(&hooks, &env_ab());
    assert!(
        start.elapsed() < OUTPUT_GRACE + Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(r[0].1, Success, "{r:?}");
    // Not said to be killed: it still runs.
    assert!(
        r[0].2.ends_with(
            "output cut off and those in its process group killed (one that left it, with setsid, \
             still runs) after 2.0s"
        ),
        "{r:?}"
    );
    // Its next write finds the pipe closed (SIGPIPE): it never gets to the marker.
    let pid = loop {
        if let Ok(p) = fs::read_to_string(&pidfile) {
            break p.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let t0 = Instant::now();
    while !gone(&pid) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{pid} still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!marker.exists(), "the escaped process's output was still read");
}

#[test]
fn a_script_whose_background_child_closed_its_output_is_not_waited_for() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("bg.pid");
    let _kill = KillOnDrop(pidfile.clone());
    script(
        d.path(),
        "bg",
        &format!(
            "sleep 300 >/dev/null 2>&1 &\necho $! > {}\necho done",
            pidfile.display()
        ),
    );
    let start = Instant::now();
    let r = HooksRunner::new(Duration::from_secs(30)).run_parts(d.path(), &env_ab());
    assert!(start.elapsed() < OUTPUT_GRACE, "took {:?}", start.elapsed());
    assert_eq!(r, [("bg".to_string(), Success, "done".to_string())]);
}

// ---------------------------------------------------------------------------------------------
// The instance-export environment, and the pre/post phases across nodes.

const CLUSTER: &str = r#"
[cluster]
name = "cluster.example.com"
master = "node1.example.com"

[[nodes]]
name = "node1.example.com"
uuid = "n1"
root = "node1"

[[nodes]]
name = "node2.example.com"
uuid = "n2"
root = "node2"

[[nodes]]
name = "node3.example.com"
uuid = "n3"
root = "node3"

[[nodes]]
name = "node4.example.com"
uuid = "n4"
root = "node4"
offline = true

[[instances]]
name = "inst1.example.com"
uuid = "i1"
primary_node = "node2.example.com"
secondary_nodes = ["node4.example.com"]
os = "debootstrap+default"
hypervisor = "kvm"
admin_state = "up"
tags = ["web", "prod"]
beparams = { maxmem = 1024, minmem = 512, vcpus = 2, auto_balance = true }
hvparams = { boot_order = "disk", kernel_path = "" }
osparams = { dhcp = "yes" }

[[instances.nics]]
mac = "aa:00:00:11:22:33"
name = "eth0"
uuid = "nic-0"
link = "br0"

[[instances.nics]]
mac = "aa:00:00:11:22:34"
ip = "192.0.2.10"
mode = "routed"
link = "rt1"
vlan = ".100"
network = "net-a"

[[instances.disks]]
uuid = "d0"
name = "root"
size = 64
template = "plain"
path = "/dev/xenvg/inst1-root"

[[instances.disks]]
uuid = "d1"
size = 128
template = "file"
path = "/srv/disks/inst1-d1.img"
mode = "ro"
"#;

fn expected_lu_env() -> BTreeMap<String, String> {
    [
        ("EXPORT_MODE", "local"),
        ("EXPORT_NODE", "node3.example.com"),
        ("EXPORT_DO_SHUTDOWN", "True"),
        ("SHUTDOWN_TIMEOUT", "120"),
        ("REMOVE_INSTANCE", "False"),
        ("OP_TARGET", "inst1.example.com"),
        ("INSTANCE_NAME", "inst1.example.com"),
        ("INSTANCE_PRIMARY", "node2.example.com"),
        ("INSTANCE_SECONDARIES", "node4.example.com"),
        ("INSTANCE_OS_TYPE", "debootstrap+default"),
        ("INSTANCE_STATUS", "up"),
        ("INSTANCE_MINMEM", "512"),
        ("INSTANCE_MAXMEM", "1024"),
        ("INSTANCE_MEMORY", "1024"),
        ("INSTANCE_VCPUS", "2"),
        ("INSTANCE_DISK_TEMPLATE", "mixed"),
        ("INSTANCE_HYPERVISOR", "kvm"),
        ("INSTANCE_NIC0_NAME", "eth0"),
        ("INSTANCE_NIC0_UUID", "nic-0"),
        ("INSTANCE_NIC0_IP", ""),
        ("INSTANCE_NIC0_MAC", "aa:00:00:11:22:33"),
        ("INSTANCE_NIC0_MODE", "bridged"),
        ("INSTANCE_NIC0_LINK", "br0"),
        ("INSTANCE_NIC0_VLAN", ""),
        ("INSTANCE_NIC0_BRIDGE", "br0"),
        ("INSTANCE_NIC1_UUID", ""),
        ("INSTANCE_NIC1_IP", "192.0.2.10"),
        ("INSTANCE_NIC1_MAC", "aa:00:00:11:22:34"),
        ("INSTANCE_NIC1_MODE", "routed"),
        ("INSTANCE_NIC1_LINK", "rt1"),
        ("INSTANCE_NIC1_VLAN", ".100"),
        ("INSTANCE_NIC1_NETWORK_NAME", "net-a"),
        ("INSTANCE_NIC_COUNT", "2"),
        ("INSTANCE_DISK0_NAME", "root"),
        ("INSTANCE_DISK0_UUID", "d0"),
        ("INSTANCE_DISK0_SIZE", "64"),
        ("INSTANCE_DISK0_MODE", "rw"),
        ("INSTANCE_DISK0_VG", "xenvg"),
        ("INSTANCE_DISK0_ID", "inst1-root"),
        ("INSTANCE_DISK0_DEV_TYPE", "plain"),
        ("INSTANCE_DISK1_UUID", "d1"),
        ("INSTANCE_DISK1_SIZE", "128"),
        ("INSTANCE_DISK1_MODE", "ro"),
        ("INSTANCE_DISK1_DRIVER", "loop"),
        ("INSTANCE_DISK1_ID", "/srv/disks/inst1-d1.img"),
        ("INSTANCE_DISK1_DEV_TYPE", "file"),
        ("INSTANCE_DISK_COUNT", "2"),
        ("INSTANCE_TAGS", "web prod"),
        ("INSTANCE_BE_maxmem", "1024"),
        ("INSTANCE_BE_minmem", "512"),
        ("INSTANCE_BE_vcpus", "2"),
        ("INSTANCE_BE_auto_balance", "True"),
        ("INSTANCE_HV_boot_order", "disk"),
        ("INSTANCE_HV_kernel_path", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn params() -> ExportHookParams {
    ExportHookParams {
        mode: "local".into(),
        target_node: "node3.example.com".into(),
        shutdown: true,
        shutdown_timeout: 120,
        remove_instance: false,
    }
}

#[test]
fn export_lu_env_matches_ganeti_variables() {
    let c = Cluster::from_str_at(CLUSTER, "/c/cluster.toml").unwrap();
    let inst = c.instance("inst1.example.com").unwrap();
    assert_eq!(export_lu_env(inst, &params()), expected_lu_env());
}

fn fixed(phase: &str) -> BTreeMap<String, String> {
    [
        ("PATH", "/sbin:/bin:/usr/sbin:/usr/bin"),
        ("GANETI_HOOKS_VERSION", "2"),
        ("GANETI_OP_CODE", "OP_BACKUP_EXPORT"),
        ("GANETI_HOOKS_PHASE", phase),
        ("GANETI_HOOKS_PATH", "instance-export"),
        ("GANETI_OBJECT_TYPE", "INSTANCE"),
        ("GANETI_CLUSTER", "cluster.example.com"),
        ("GANETI_MASTER", "node1.example.com"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn pre_and_post_hooks_run_on_master_primary_and_target_with_the_exact_env() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("cluster.toml");
    fs::write(&path, CLUSTER).unwrap();
    let c = Cluster::load(&path).unwrap();
    let inst = c.instance("inst1.example.com").unwrap();
    let target = c.node("node3.example.com").unwrap();
    let nodes = export_hook_nodes(&c, inst, Some(target));
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node1.example.com", "node2.example.com", "node3.example.com"]);

    let dumps = root.path().join("dumps");
    fs::create_dir(&dumps).unwrap();
    for n in c.nodes() {
        for phase in ["pre", "post"] {
            let dir = c.hooks_dir(n).join(format!("instance-export-{phase}.d"));
            fs::create_dir_all(&dir).unwrap();
            env_dump_script(&dir, "dump", &dumps.join(format!("{}-{phase}", n.uuid)));
        }
    }
    let ctx = HookContext::instance_export(&c);
    let lu_env = export_lu_env(inst, &params());
    let runner = runner();

    let pre_env = phase_env(&ctx, Phase::Pre, &lu_env, None);
    let pre = runner.run_on_nodes(&c, &nodes, "instance-export", Phase::Pre, &pre_env);
    assert_eq!(pre.len(), 3);
    check_pre_results(&pre).unwrap();
    let data_dir = root.path().join("node1/var/lib/ganeti").display().to_string();
    let mut want = fixed("pre");
    want.insert("GANETI_DATA_DIR".into(), data_dir.clone());
    for (k, v) in expected_lu_env() {
        want.insert(format!("GANETI_{k}"), v);
    }
    for uuid in ["n1", "n2", "n3"] {
        assert_eq!(read_env(&dumps.join(format!("{uuid}-pre.env"))), want);
    }

    let post_env = phase_env(&ctx, Phase::Post, &lu_env, Some(&lu_env));
    runner.run_on_nodes(&c, &nodes, "instance-export", Phase::Post, &post_env);
    for (k, v) in expected_lu_env() {
        want.insert(format!("GANETI_POST_{k}"), v);
    }
    want.insert("GANETI_HOOKS_PHASE".into(), "post".into());
    for uuid in ["n1", "n2", "n3"] {
        assert_eq!(read_env(&dumps.join(format!("{uuid}-post.env"))), want);
    }
    // Neither the secondary (offline) node nor anything else ran hooks.
    assert!(!dumps.join("n4-pre.env").exists());

    // A failing pre hook on the target aborts, naming node, script and output.
    let dir = c.hooks_dir(target).join("instance-export-pre.d");
    script(&dir, "50-space", "echo 'not enough space'; exit 1");
    let pre = runner.run_on_nodes(&c, &nodes, "instance-export", Phase::Pre, &pre_env);
    let e = check_pre_results(&pre).unwrap_err();
    assert_eq!(e.kind, ErrorKind::HooksAbort);
    assert_eq!(
        e.msg,
        "  node: node3.example.com, script: instance-export-pre.d/50-space, output: not enough space"
    );
}

#[test]
fn offline_nodes_run_no_hooks() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("cluster.toml");
    fs::write(&path, CLUSTER).unwrap();
    let c = Cluster::load(&path).unwrap();
    let offline = c.node("node4.example.com").unwrap();
    let dir = c.hooks_dir(offline).join("instance-export-pre.d");
    fs::create_dir_all(&dir).unwrap();
    script(&dir, "fail", "exit 1");
    let r = runner().run_on_nodes(&c, &[offline], "instance-export", Phase::Pre, &env_ab());
    assert!(r.is_empty());
    // The same directory does fail when run directly, so the skip above is the offline flag.
    let direct = runner().run_phase(&c.hooks_dir(offline), "instance-export", Phase::Pre, &env_ab());
    assert_eq!(direct[0].status, Fail);
    assert_eq!(direct[0].script, "instance-export-pre.d/fail");
}

#[test]
fn a_note_names_the_node_after_the_script() {
    assert_eq!(
        on_node(
            "Hook instance-export-pre.d/10-x still running after 60 s (timeout 900 s)",
            "node1"
        ),
        "Hook instance-export-pre.d/10-x on node1 still running after 60 s (timeout 900 s)"
    );
    assert_eq!(
        on_node(
            "Hook instance-export-post.d/bg exited, leaving processes behind still running",
            "n2"
        ),
        "Hook instance-export-post.d/bg on n2 exited, leaving processes behind still running"
    );
    // Not a script's note: the node is said at the end.
    assert_eq!(on_node("something else", "n3"), "something else (on n3)");
}

#[test]
fn a_script_killed_by_a_signal_says_which() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "10-oom", "echo before\nkill -KILL $$");
    script(d.path(), "20-term", "kill -TERM $$");
    let r = HooksRunner::new(Duration::from_secs(30)).run_parts(d.path(), &env_ab());
    assert_eq!(
        r[0],
        (
            "10-oom".to_string(),
            Fail,
            "before\nHook script killed by signal 9 (SIGKILL)".to_string()
        )
    );
    assert_eq!(
        r[1],
        (
            "20-term".to_string(),
            Fail,
            "Hook script killed by signal 15 (SIGTERM)".to_string()
        )
    );
}
