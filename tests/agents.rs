//! Node agents in their own network namespaces: the master (node1, in-process) in namespace `m`
//! with a bridge, the primary's agent (node2) and the target's agent (node3) in `p` and `t`,
//! joined by veth pairs; all made by the test and removed (namespaces, agents, instance
//! processes) when its guard drops, also when it fails. Every client command first checks that
//! it runs in its namespace (`ip netns identify`), so no test traffic leaves the namespaces.
//! Needs root and iproute2; skipped with a message otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DS: &str = env!("CARGO_BIN_EXE_diskstream");
const PORT: u16 = 1811;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Three namespaces: `m` (10.79.S.1 on a bridge), `p` (.2) and `t` (.3) on veths into it.
struct Net {
    m: String,
    p: String,
    t: String,
    subnet: u32,
    agents: Vec<Child>,
}

impl Net {
    fn new(tag: &str, subnet: u32) -> Result<Self, String> {
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

    fn addr(&self, host: u32) -> String {
        format!("10.79.{}.{host}:{PORT}", self.subnet)
    }

    /// Starts node N's agent in its namespace, its output in `log`.
    fn start_agent(&mut self, cfg: &Path, node: u32, log: &Path) {
        let ns = if node == 2 { self.p.clone() } else { self.t.clone() };
        let f = std::fs::File::create(log).expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, DS, "agent", "--cluster"])
            .arg(cfg)
            .args([
                "--node",
                &format!("node{node}.example.com"),
                "--inactivity-timeout",
                "5",
            ])
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

    /// Runs `diskstream ARGS` in namespace `m`, after checking that it is there.
    fn master(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.m, "sh", "-c"])
            .arg(r#"ns="$1"; shift; [ "$(ip netns identify)" = "$ns" ] || { echo "not in netns $ns" >&2; exit 99; }; exec "$@""#)
            .args(["sh", &self.m, DS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run diskstream in the master namespace")
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

fn usable() -> bool {
    let ok = is_root() && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: needs root and iproute2 (scripts/test runs it as root)");
    }
    ok
}

/// A three-node cluster in `dir`: instance `inst1.example.com` on node2 with a mixed and a
/// sparse disk; node2 and node3 have agent addresses; the PKI made by `diskstream pki init`.
/// Returns (config with agents, the same cluster without addresses, the disks).
fn cluster(dir: &Path, net: &Net) -> (PathBuf, PathBuf, Vec<PathBuf>) {
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

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The dumps of an export in disk order (from its config.ini) with their manifests.
fn dumps(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
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

#[test]
fn three_node_export_over_mutual_tls_equals_source_and_local_export() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("e", 41).expect("namespaces");
    let (cfg, local, disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    net.start_agent(&cfg, 2, &dir.path().join("agent2.log"));
    net.start_agent(&cfg, 3, &dir.path().join("agent3.log"));
    let c = s(&cfg);
    for lz4 in ["lz4", "none"] {
        let out = net.master(&[
            "export",
            "--cluster",
            c,
            "-n",
            "node3.example.com",
            "inst1.example.com",
            "--transport-compression",
            lz4,
            "--long-sleep",
            "--json",
        ]);
        assert!(out.status.success(), "export ({lz4}) failed: {}", text(&out));
        let exp = export_dir(&dir.path().join("node3")).join("inst1.example.com");
        let got = dumps(&exp);
        assert_eq!(got.len(), 2, "{}", text(&out));
        for ((dump, _), disk) in got.iter().zip(&disks) {
            assert_same_bytes(dump, disk);
        }
        assert!(
            find_named(&dir.path().join("node3"), ".new").is_empty(),
            "staging left behind"
        );
    }
    // The export is listed through the agents.
    let list = net.master(&["list", "--cluster", c]);
    assert!(
        list.status.success() && text(&list).contains("inst1.example.com"),
        "{}",
        text(&list)
    );
    // The same export made on this machine has byte-identical dumps and manifests (it removes
    // the older export on node3, as Ganeti does: keep a copy).
    let kept = dir.path().join("remote-export");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(export_dir(&dir.path().join("node3")).join("inst1.example.com"))
        .arg(&kept)
        .status()
        .unwrap();
    assert!(cp.success());
    let out = Command::new(DS)
        .args([
            "export",
            "--cluster",
            s(&local),
            "-n",
            "node1.example.com",
            "inst1.example.com",
            "--long-sleep",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let remote = dumps(&kept);
    let here = dumps(&export_dir(&dir.path().join("node1")).join("inst1.example.com"));
    assert_eq!(remote.len(), 2);
    assert_eq!(here.len(), 2);
    for ((rd, rm), (ld, lm)) in remote.iter().zip(&here) {
        assert_same_bytes(rd, ld);
        assert_eq!(
            std::fs::read(rm).unwrap(),
            std::fs::read(lm).unwrap(),
            "manifests differ"
        );
    }
}
