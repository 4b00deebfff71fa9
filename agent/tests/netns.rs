//! Two nodes in their own network namespaces (ip netns + a veth pair, made by the test and
//! always removed): the probe crosses the link over mutual TLS in every mode and the byte count
//! checks out; the sender refuses to connect from outside its namespace. Needs root and
//! iproute2 (installed by scripts/test); skipped with a message otherwise.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diskstream_agent::netns::ip;

const NET_RATE: &str = env!("CARGO_BIN_EXE_net-rate");

/// Two namespaces joined by a veth pair (10.77.N.1 in `a`, 10.77.N.2 in `b`), removed on drop
/// with every process started in them.
struct Link {
    a: String,
    b: String,
    subnet: u32,
    children: Vec<Child>,
}

impl Link {
    fn new(tag: &str, subnet: u32) -> Result<Self, String> {
        let pid = std::process::id();
        let l = Link {
            a: format!("ds{tag}{pid}a"),
            b: format!("ds{tag}{pid}b"),
            subnet,
            children: Vec::new(),
        };
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &l.a])?;
        ip(&["netns", "add", &l.b])?;
        let (va, vb) = (format!("v{tag}{pid}a"), format!("v{tag}{pid}b"));
        ip(&[
            "link", "add", &va, "netns", &l.a, "type", "veth", "peer", "name", &vb, "netns", &l.b,
        ])?;
        for (ns, dev, host) in [(&l.a, &va, 1), (&l.b, &vb, 2)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.77.{subnet}.{host}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(l)
    }

    fn addr(&self, host: u32) -> String {
        format!("10.77.{}.{host}", self.subnet)
    }

    /// Starts `net-rate ARGS` inside namespace `ns`.
    fn spawn(&mut self, ns: &str, args: &[&str]) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, NET_RATE])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn net-rate");
        self.children.push(child);
        self.children.last_mut().expect("child")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn usable() -> bool {
    let root = is_root();
    let has_ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !(root && has_ip) {
        eprintln!("skipped: needs root and iproute2 (scripts/test runs it as root)");
    }
    root && has_ip
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn make_pki(dir: &Path) {
    let out = Command::new(NET_RATE)
        .args(["pki", "--dir"])
        .arg(dir)
        .args(["--nodes", "node1.test", "node2.test"])
        .output()
        .expect("net-rate pki");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `net-rate send` in namespace `a` until it exits (at most 60 s).
fn send(link: &Link, pki: &Path, mode: &str, bytes: u64, expect: &str) -> std::process::Output {
    let child = Command::new("ip")
        .args(["netns", "exec", &link.a, NET_RATE, "send", "--pki"])
        .arg(pki)
        .args(["--node", "node1.test", "--peer", "node2.test", "--connect"])
        .arg(format!("{}:7700", link.addr(2)))
        .args(["--mode", mode, "--bytes", &bytes.to_string(), "--expect-netns", expect])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn send");
    child.wait_with_output().expect("send output")
}

fn wait_listening(link: &Link) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let out = Command::new("ip")
            .args(["netns", "exec", &link.b, "ss", "-Htln", "sport = :7700"])
            .output()
            .expect("ss");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("net-rate serve did not listen within 10 s");
}

#[test]
fn bytes_cross_between_namespaces_over_mutual_tls_in_every_mode() {
    if !usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    make_pki(&pki);
    let mut link = Link::new("r", 71).expect("namespaces");
    let listen = format!("{}:7700", link.addr(2));
    let b = link.b.clone();
    let pki_s = pki.to_str().expect("utf-8").to_string();
    link.spawn(
        &b,
        &[
            "serve",
            "--pki",
            &pki_s,
            "--node",
            "node2.test",
            "--listen",
            &listen,
            "--allow",
            "node1.test",
        ],
    );
    wait_listening(&link);
    for mode in ["tls", "h2-default", "h2-wide"] {
        let out = send(&link, &pki, mode, 64 << 20, &link.a);
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(m["bytes"], 64u64 << 20, "{mode}: {m}");
        assert_eq!(m["mode"], mode);
        assert!(m["bytes_per_s"].as_f64().expect("rate") > 0.0, "{m}");
    }
    // The sender's namespace check: told it should be in `b` while it runs in `a`, it refuses.
    let out = send(&link, &pki, "tls", 1 << 20, &link.b);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("not inside network namespace {}", link.b)),
        "{err}"
    );
}

#[test]
fn namespaces_and_links_are_gone_after_the_guard() {
    if !usable() {
        return;
    }
    let (a, b) = {
        let link = Link::new("g", 72).expect("namespaces");
        (link.a.clone(), link.b.clone())
    };
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(!list.contains(&a) && !list.contains(&b), "left behind: {list}");
    let links = Command::new("ip").args(["link"]).output().expect("ip link");
    let pid = std::process::id().to_string();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&format!("vg{pid}")),
        "a veth end was left in the root namespace"
    );
}
