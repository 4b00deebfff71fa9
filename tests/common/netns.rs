//! Node agents in their own network namespaces, for the agent tests (tests/agents*.rs): [`Net`]
//! makes a master namespace `m` with a bridge and the primary's and target's namespaces `p` and
//! `t` on veths into it, starts agents there, runs the master's commands there (checking that
//! they are), and removes namespaces and agents when it drops, also when a test fails;
//! [`cluster`] writes a three-node cluster with its PKI; the rest checks exports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub const DS: &str = env!("CARGO_BIN_EXE_diskstream");
pub const PORT: u16 = 1811;

pub use diskstream_agent::netns::ip;

/// `diskstream export` of the test instance to node3 with config `cfg` (`--long-sleep`: the
/// disks are files, no snapshots).
pub fn export_args(cfg: &str) -> Vec<&str> {
    vec![
        "export",
        "--cluster",
        cfg,
        "-n",
        "node3.example.com",
        "inst1.example.com",
        "--long-sleep",
    ]
}

/// Three namespaces: `m` (10.79.S.1 on a bridge), `p` (.2) and `t` (.3) on veths into it.
pub struct Net {
    pub m: String,
    pub p: String,
    pub t: String,
    pub subnet: u32,
    pub agents: Vec<Child>,
}

impl Net {
    pub fn new(tag: &str, subnet: u32) -> Result<Self, String> {
        let pid = std::process::id();
        let n = Net {
            m: format!("ds{tag}{pid}m"),
            p: format!("ds{tag}{pid}p"),
            t: format!("ds{tag}{pid}t"),
            subnet,
            agents: Vec::new(),
        };
        // From here on, Drop removes whatever was made.
        for ns in [&n.m, &n.p, &n.t] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &n.m, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &n.m, "link", "set", "br0", "up"])?;
        ip(&["-n", &n.m, "addr", "add", &format!("10.79.{subnet}.1/24"), "dev", "br0"])?;
        for (ns, host) in [(&n.p, 2), (&n.t, 3)] {
            let (v, b) = (format!("v{tag}{pid}{host}"), format!("b{tag}{pid}{host}"));
            ip(&[
                "link", "add", &v, "netns", ns, "type", "veth", "peer", "name", &b, "netns", &n.m,
            ])?;
            ip(&["-n", &n.m, "link", "set", &b, "master", "br0"])?;
            ip(&["-n", &n.m, "link", "set", &b, "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("10.79.{subnet}.{host}/24"), "dev", &v])?;
            ip(&["-n", ns, "link", "set", &v, "up"])?;
        }
        Ok(n)
    }

    pub fn addr(&self, host: u32) -> String {
        format!("10.79.{}.{host}:{PORT}", self.subnet)
    }

    /// Starts node N's agent in its namespace, its output in `log`.
    pub fn start_agent(&mut self, cfg: &Path, node: u32, log: &Path) {
        self.start_agent_with(cfg, node, log, &[]);
    }

    /// Starts the agents of node2 and node3 with extra arguments, their output in
    /// `dir/agent2.log` and `dir/agent3.log`.
    pub fn start_agents(&mut self, cfg: &Path, dir: &Path, extra: &[&str]) {
        for n in [2, 3] {
            self.start_agent_with(cfg, n, &dir.join(format!("agent{n}.log")), extra);
        }
    }

    /// Starts node N's agent with extra arguments.
    pub fn start_agent_with(&mut self, cfg: &Path, node: u32, log: &Path, extra: &[&str]) {
        self.start_agent_under(&[], cfg, node, log, extra);
    }

    /// Starts node N's agent run by `wrapper` (a command that execs the rest, e.g. `prlimit`).
    pub fn start_agent_under(&mut self, wrapper: &[&str], cfg: &Path, node: u32, log: &Path, extra: &[&str]) {
        let ns = if node == 2 { self.p.clone() } else { self.t.clone() };
        let f = std::fs::File::create(log).expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(wrapper)
            .args([DS, "agent", "--cluster"])
            .arg(cfg)
            .args(["--node", &format!("node{node}.example.com")])
            // 5 s unless the caller sets its own.
            .args(if extra.contains(&"--inactivity-timeout") {
                &[][..]
            } else {
                &["--inactivity-timeout", "5"][..]
            })
            .args(extra)
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("spawn agent");
        self.agents.push(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "ss", "-Htln", &format!("sport = :{PORT}")])
                .output()
                .expect("ss");
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent of node{node} did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// `diskstream ARGS` in namespace `m`, which first checks that it is there.
    pub fn master_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.m, "sh", "-c"])
            .arg(r#"ns="$1"; shift; [ "$(ip netns identify)" = "$ns" ] || { echo "not in netns $ns" >&2; exit 99; }; exec "$@""#)
            .args(["sh", &self.m, DS])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `diskstream ARGS` in namespace `m`, after checking that it is there.
    pub fn master(&self, args: &[&str]) -> Output {
        self.master_cmd(args)
            .output()
            .expect("run diskstream in the master namespace")
    }
}

impl Net {
    /// Kills the agent started `i`-th.
    pub fn kill_agent(&mut self, i: usize) {
        let _ = self.agents[i].kill();
        let _ = self.agents[i].wait();
    }

    /// Shapes node N's veth to `rate` (tc tbf, e.g. "20mbit"), so a stream lasts long enough
    /// for a fault to hit it mid-way; returns its (namespace, device).
    pub fn shape(&self, node: u32, rate: &str) -> (String, String) {
        let (ns, dev) = self.veth(node);
        let tc = Command::new("ip")
            .args([
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &dev, "root", "tbf", "rate", rate,
            ])
            .args(["burst", "64kb", "latency", "100ms"])
            .status()
            .unwrap();
        assert!(tc.success(), "tc on {dev} in {ns}");
        (ns, dev)
    }

    /// Starts `diskstream ARGS` in namespace `m` (checked as by [`Net::master_cmd`]) with its
    /// output captured.
    pub fn spawn_master(&self, args: &[&str]) -> Child {
        self.master_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The veth of node N (2 or 3) inside its namespace.
    pub fn veth(&self, node: u32) -> (String, String) {
        let ns = if node == 2 { self.p.clone() } else { self.t.clone() };
        let tag = &self.m[2..self.m.len() - 1];
        (ns, format!("v{tag}{node}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.m, &self.p, &self.t] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

pub fn usable() -> bool {
    let ok = is_root() && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: needs root and iproute2 (scripts/test runs it as root)");
    }
    ok
}

/// A three-node cluster in `dir`: instance `inst1.example.com` on node2 with a mixed and a
/// sparse disk; node2 and node3 have agent addresses; the PKI made by `diskstream pki init`.
/// Returns (config with agents, the same cluster without addresses, the disks).
pub fn cluster(dir: &Path, net: &Net) -> (PathBuf, PathBuf, Vec<PathBuf>) {
    let roots = node_roots(dir, 3);
    for r in &roots {
        std::fs::create_dir_all(export_dir(r)).unwrap();
    }
    let disks = vec![roots[1].join("d0.img"), roots[1].join("d1.img")];
    make_disk(&disks[0], 24 << 20, Data::Mixed, 7);
    make_disk(&disks[1], 16 << 20, Data::Sparse, 8);
    let inst = InstSpec {
        name: "inst1.example.com".into(),
        primary: "node2.example.com".into(),
        admin_state: "up",
        disks: vec![
            DiskSpec {
                template: "file",
                path: disks[0].clone(),
                mib: 24,
            },
            DiskSpec {
                template: "file",
                path: disks[1].clone(),
                mib: 16,
            },
        ],
        process: Some(sleeper()),
    };
    let plain = write_cluster(dir, &roots, &[inst], &["lz4"]);
    let local = dir.join("local.toml");
    std::fs::rename(&plain, &local).unwrap();
    let mut text = std::fs::read_to_string(&local).unwrap();
    for n in [2, 3] {
        let name = format!("\nname = \"node{n}.example.com\"\n");
        text = text.replacen(&name, &format!("{name}address = \"{}\"\n", net.addr(n)), 1);
    }
    let cfg = dir.join("cluster.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(DS)
        .args(["pki", "init", "--cluster"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cfg, local, disks)
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The dumps of an export in disk order (from its config.ini) with their manifests.
pub fn dumps(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let ini = std::fs::read_to_string(dir.join("config.ini")).expect("config.ini");
    let mut out = Vec::new();
    for i in 0.. {
        let key = format!("disk{i}_dump = ");
        let Some(l) = ini.lines().find(|l| l.starts_with(&key)) else {
            break;
        };
        let d = dir.join(l.trim_start_matches(&key));
        out.push((d.clone(), PathBuf::from(format!("{}.manifest", d.display()))));
    }
    out
}
/// `cluster.toml` with `[cluster]` lines added (e.g. another PKI, another master).
pub fn variant(cfg: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains(from));
    let p = cfg.with_file_name(name);
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    p
}
/// Files under a node's export directory that are not directories.
pub fn dumps_in(root: &Path) -> Vec<PathBuf> {
    find_named(&export_dir(root), "")
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}
/// The files of an export directory with their contents (to prove it was left intact).
pub fn snapshot_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = find_named(dir, "")
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// After a failed export: the previous export on node3 as it was, no staging, no stray dump.
pub fn assert_clean_failure(dir: &Path, before: &[(PathBuf, Vec<u8>)], out: &Output, expect: &str) {
    let t = text(out);
    assert!(!out.status.success(), "the export succeeded: {t}");
    assert!(t.contains(expect), "expected {expect:?} in: {t}");
    let exp = export_dir(&dir.join("node3")).join("inst1.example.com");
    assert!(snapshot_of(&exp) == before, "the previous export changed");
    assert!(find_named(&dir.join("node3"), ".new").is_empty(), "staging left behind");
    assert!(
        find_named(&dir.join("node3"), ".partial").is_empty(),
        "a partial dump left behind"
    );
}
/// Waits up to `secs` for `f`.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The test cluster of [`cluster`] (`small`, whose disk/0 is `disk0`) with disk/0 replaced by
/// a 160 MiB disk of mixed data: larger than what the primary's engine and its connections
/// hold, so that a fault can hit its stream mid-way. Returns the new config and that disk.
pub fn big_disk0_cluster(dir: &Path, small: &Path, disk0: &Path) -> (PathBuf, PathBuf) {
    let big = dir.join("node2/big.img");
    make_disk(&big, 160 << 20, Data::Mixed, 9);
    let cfg = variant(
        small,
        "big.toml",
        &format!("size = 24\ntemplate = \"file\"\npath = {:?}", s(disk0)),
        &format!("size = 160\ntemplate = \"file\"\npath = {:?}", s(&big)),
    );
    (cfg, big)
}

/// The set-up of the tests whose stream a fault must hit mid-way: the test cluster of
/// [`cluster`] with its 160 MiB disk/0 ([`big_disk0_cluster`]) and its instance running (stopped
/// when the guard drops). Returns the config, that disk and the guard.
pub fn big_cluster(dir: &Path, net: &Net) -> (PathBuf, PathBuf, InstanceGuard) {
    let (small, _local, disks) = cluster(dir, net);
    let (cfg, big) = big_disk0_cluster(dir, &small, &disks[0]);
    let inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    (cfg, big, inst)
}

/// Waits up to `secs` for node3's agent (its log `dir/agent3.log`) to log the end of its
/// receive of inst1's disk/0 (a failed receive is logged); returns whether it did in time.
pub fn target_ended_disk0(dir: &Path, secs: u64) -> bool {
    let log = dir.join("agent3.log");
    wait_for(secs, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("receiving inst1.example.com/disk0:")
    })
}

/// Starts both agents with `agent_args` and makes a first export of inst1 without compression
/// on the wire; returns its arguments and node3's export as it then is (what a failed export
/// must leave).
pub fn a_first_export<'a>(
    net: &mut Net,
    dir: &Path,
    cfg: &'a Path,
    agent_args: &[&str],
) -> (Vec<&'a str>, Vec<(PathBuf, Vec<u8>)>) {
    net.start_agents(cfg, dir, agent_args);
    let mut export = export_args(s(cfg));
    export.extend(["--transport-compression", "none"]);
    let out = net.master(&export);
    assert!(out.status.success(), "the first export failed: {}", text(&out));
    let before = snapshot_of(&export_dir(&dir.join("node3")).join("inst1.example.com"));
    (export, before)
}

/// Starts `export` in the master's namespace (its output piped) and waits until its first dump
/// is being written on node3.
pub fn export_started(net: &Net, dir: &Path, export: &[&str]) -> Child {
    let staging = export_dir(&dir.join("node3")).join("inst1.example.com.new");
    let master = net.spawn_master(export);
    assert!(
        wait_for(20, || find_named(&staging, "").iter().any(|p| p.is_file())),
        "the transfer never started"
    );
    master
}

/// Whether node2's agent (its log `dir/agent2.log`) logged that it stopped sending disk/0
/// because the master cancelled the call or went away.
pub fn primary_stopped_for_the_master(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("agent2.log"))
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.contains("sending inst1.example.com/disk0 to node3.example.com: stopped after")
                && l.contains("the master cancelled the call or went away")
        })
}
