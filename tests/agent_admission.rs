//! The agent's control port under floods that once locked the master out (namespaces and agents
//! from `common::netns`, removed when the guards drop, also when a test fails): a cluster member
//! that is not the master reconnecting as fast as it can with its valid certificate, and an
//! outsider without a certificate holding connections that never send a ClientHello from 16
//! addresses, and the same from the master's own address (a NAT). While each flood runs, a real `diskstream export` through the flooded agent must
//! succeed with dumps byte-identical to the disks, and the agent's log must stay at a few lines
//! a second. Also: a client that negotiates no ALPN is closed unserved. Each flood runs in a
//! child process (this test binary re-run inside a namespace, `DS_ADMISSION`), killed at the
//! end however the test ends. Needs root and iproute2; skipped with a message otherwise.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::netns::*;
use common::*;
use diskstream_agent::{pki::PkiDir, tls};

/// Extra source addresses of the outsider's flood (10.79.S.100 up) in node2's namespace.
const FLOOD_ADDRS: u32 = 16;

/// A flood child (this binary in namespace `ns`), killed and reaped on drop.
struct Flood(Child);

impl Flood {
    fn start(ns: &str, spec: &str) -> Self {
        let exe = std::env::current_exe().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .args([
                "--exact",
                "admission_client_in_namespace",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DS_ADMISSION", format!("{ns}|{spec}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Flood(child)
    }

    /// Waits for the child to end (it runs for the seconds it was given) and returns its output.
    fn finish(mut self) -> String {
        let mut out = String::new();
        let _ = self.0.stdout.take().unwrap().read_to_string(&mut out);
        let _ = self.0.wait();
        out
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The export under a flood: it must succeed and hold the disks' bytes.
fn export_under_flood(net: &Net, cfg: &Path, dir: &Path, disks: &[std::path::PathBuf]) {
    let t0 = Instant::now();
    let out = net.master(&export_args(s(cfg)));
    assert!(
        out.status.success(),
        "the export failed under the flood after {:?}: {}",
        t0.elapsed(),
        text(&out)
    );
    let exp = export_dir(&dir.join("node3")).join("inst1.example.com");
    let got = dumps(&exp);
    assert_eq!(got.len(), disks.len(), "{}", text(&out));
    for ((dump, _), disk) in got.iter().zip(disks) {
        assert_same_bytes(dump, disk);
    }
}

/// Lines of `log` (the agent's) written while a flood of `secs` seconds ran: a few a second.
fn assert_quiet_log(log: &Path, before: usize, secs: u64) {
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = text.lines().skip(before).collect();
    let most = 2 * secs as usize + 10;
    assert!(
        lines.len() <= most,
        "{} log lines in {secs} s (at most {most}); the first: {:#?}",
        lines.len(),
        &lines[..lines.len().min(20)]
    );
}

fn lines_of(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().count()
}

/// How long each flood runs.
const FLOOD_SECS: u64 = 12;

/// Starts the flood `spec` from namespace `ns`, runs the export under it once it has built
/// up (2.5 s), and asserts that the flood was one (its report `flood: WHAT N`, N at least
/// `at_least`) and that node3's agent logged only a few lines a second meanwhile.
fn export_through_flood(
    ns: &str,
    net: &Net,
    cfg: &Path,
    dir: &Path,
    disks: &[std::path::PathBuf],
    spec: &str,
    (what, at_least): (&str, u64),
) {
    let log3 = dir.join("agent3.log");
    let before = lines_of(&log3);
    let flood = Flood::start(ns, spec);
    std::thread::sleep(Duration::from_millis(2500));
    export_under_flood(net, cfg, dir, disks);
    let out = flood.finish();
    let made: u64 = out
        .lines()
        .find_map(|l| l.split_once(&format!("flood: {what} ")).map(|(_, n)| n))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no flood report: {out}"));
    eprintln!("{what} flood from {ns}: {made} in {FLOOD_SECS} s");
    assert!(made >= at_least, "the flood was not one: {out}");
    assert_quiet_log(&log3, before, FLOOD_SECS);
}

fn started(cfg: &Path, dir: &Path, net: &mut Net) -> std::path::PathBuf {
    net.start_agents(cfg, dir, &[]);
    dir.join("agent3.log")
}

#[test]
fn a_non_master_member_cannot_lock_the_master_out() {
    // node2's certificate is valid but not the master's: it reconnects to node3's agent as fast
    // as it can, holding every connection. Before, each was kept 10 s (served 403s), 256 filled
    // in a second and the master's export failed with "TLS handshake eof".
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("ad", 50).expect("namespaces");
    let (cfg, _local, disks) = cluster(dir.path(), &net);
    let log3 = started(&cfg, dir.path(), &mut net);
    let spec = format!("member|{}|{}|{FLOOD_SECS}", net.addr(3), s(&cfg));
    export_through_flood(&net.p, &net, &cfg, dir.path(), &disks, &spec, ("handshakes", 300));
    let log = std::fs::read_to_string(&log3).unwrap();
    assert!(log.contains("only the master"), "the refusal is logged: {log}");
    let log2 = std::fs::read_to_string(dir.path().join("agent2.log")).unwrap();
    assert!(
        !log.contains("connection error") && !log2.contains("connection error"),
        "a client's close logged as an error: {log}\n{log2}"
    );
}

#[test]
fn an_outsider_without_a_certificate_cannot_lock_the_master_out() {
    // Two threads for each of 16 addresses hold connections to node3's agent that never send a
    // ClientHello, reconnecting as soon as one is closed. Before, 16 per address filled all 256
    // places for the 10 s handshake timeout and the master's export failed ("Connection reset
    // by peer").
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("ae", 51).expect("namespaces");
    let (cfg, _local, disks) = cluster(dir.path(), &net);
    let (ns, dev) = net.veth(2);
    for i in 0..FLOOD_ADDRS {
        let a = format!("10.79.{}.{}/24", net.subnet, 100 + i);
        ip(&["-n", &ns, "addr", "add", &a, "dev", &dev]).unwrap();
    }
    started(&cfg, dir.path(), &mut net);
    let spec = format!("outsider|{}|{}|{FLOOD_SECS}", net.addr(3), net.subnet);
    export_through_flood(&net.p, &net, &cfg, dir.path(), &disks, &spec, ("connections", 256));
}

#[test]
fn a_master_behind_the_floods_address_gets_through() {
    // The outsider's flood from the master's own address (a master behind the same NAT as
    // the flood): two threads each holding 16 connections that never send a ClientHello,
    // reconnecting at once. The address holds its 16 handshakes all the time, so each new
    // connection from it, the master's too, evicts one of them: the one whose client got least
    // far, oldest first, so the flood's silent ones go before the master's once its first byte
    // arrives; a master connection evicted before that is dialed again (remote/dial.rs).
    // Before, the address's oldest was evicted whatever it had sent, and the master's export
    // failed 3 runs in 4.
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("an", 58).expect("namespaces");
    let (cfg, _local, disks) = cluster(dir.path(), &net);
    let log3 = started(&cfg, dir.path(), &mut net);
    let master_ip = format!("10.79.{}.1", net.subnet);
    let spec = format!("outsider|{}|{master_ip}|{FLOOD_SECS}", net.addr(3));
    export_through_flood(&net.m, &net, &cfg, dir.path(), &disks, &spec, ("connections", 256));
    let log = std::fs::read_to_string(&log3).unwrap();
    assert!(
        log.contains("handshake evicted for a newer connection"),
        "the flood never filled its address's share: {log}"
    );
}

#[test]
fn a_client_without_the_agents_alpn_is_not_served() {
    // The master's own certificate, but no ALPN offered: rustls completes the handshake, and
    // the agent used to serve HTTP/2 on it (its SETTINGS frame came back).
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("af", 52).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    let log3 = started(&cfg, dir.path(), &mut net);
    let flood = Flood::start(&net.m, &format!("alpn|{}|{}|0", net.addr(3), s(&cfg)));
    let out = flood.finish();
    assert!(out.contains("alpn: with ALPN served"), "{out}");
    assert!(out.contains("alpn: without ALPN closed"), "{out}");
    let log = std::fs::read_to_string(&log3).unwrap();
    assert!(log.contains("ALPN"), "no reason logged: {log}");
}

/// The identity `node` of the cluster `cfg` as a TLS client.
fn client(cfg: &str, node: &str) -> Arc<rustls::ClientConfig> {
    let cluster = diskstream_orchestrator::cluster::Cluster::load(cfg).unwrap();
    let pki = PkiDir::new(cluster.pki_dir());
    tls::client_config(&pki.load_ca().unwrap(), &pki.load_identity(node).unwrap()).unwrap()
}

/// Whether the peer closed `c` (a read says end of file or fails), without waiting.
fn closed(c: &TcpStream) -> bool {
    let _ = c.set_nonblocking(true);
    let mut b = [0u8; 64];
    match c.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// node2 as a TLS client of `addr`: 4 threads, each holding up to 100 connections and opening
/// the next at once, for `secs`.
fn member_flood(addr: SocketAddr, cfg: &str, secs: u64) {
    let tls_cfg = client(cfg, "node2.example.com");
    let made = std::sync::atomic::AtomicU64::new(0);
    let end = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                let mut held = std::collections::VecDeque::new();
                while Instant::now() < end {
                    let Ok(tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                        continue;
                    };
                    if let Ok(s) = tls::connect(&tls_cfg, tcp, "node3.example.com", Duration::from_secs(2)) {
                        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        held.push_back(s);
                        if held.len() > 100 {
                            held.pop_front();
                        }
                    }
                }
            });
        }
    });
    println!("flood: handshakes {} in {secs} s", made.into_inner());
}

/// From each source address (`FROM`: a subnet `S`, for 10.79.S.100 up, `FLOOD_ADDRS` addresses;
/// or one address `A.B.C.D`), 2 threads each holding up to 16 connections to `addr` that never
/// send a byte, reconnecting as soon as one is closed, for `secs`.
fn outsider_flood(addr: SocketAddr, from: &str, secs: u64) {
    let sources: Vec<String> = match from.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => vec![ip.to_string()],
        Err(_) => (0..FLOOD_ADDRS).map(|i| format!("10.79.{from}.{}", 100 + i)).collect(),
    };
    let made = std::sync::atomic::AtomicU64::new(0);
    let end = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|sc| {
        for i in 0..sources.len() * 2 {
            let src: SocketAddr = format!("{}:0", sources[i / 2]).parse().unwrap();
            let made = &made;
            sc.spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while Instant::now() < end {
                    held.retain(|c| !closed(c));
                    if held.len() >= 16 {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                    sock.bind(&src.into()).unwrap();
                    if sock.connect_timeout(&addr.into(), Duration::from_secs(2)).is_ok() {
                        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        held.push(sock.into());
                    }
                }
            });
        }
    });
    println!("flood: connections {} in {secs} s", made.into_inner());
}

/// The master's identity without ALPN, then with it: whether the agent answers an HTTP/2
/// preface (its SETTINGS frame) or closes.
fn alpn_probe(addr: SocketAddr, cfg: &str) {
    let with = client(cfg, "node1.example.com");
    let mut without = (*with).clone();
    without.alpn_protocols.clear();
    for (what, c) in [("with", with), ("without", Arc::new(without))] {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        let mut s = tls::connect(&c, tcp, "node3.example.com", Duration::from_secs(5)).unwrap();
        s.sock.tcp().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0");
        let _ = s.flush();
        let mut b = [0u8; 9];
        match s.read(&mut b) {
            Ok(n) if n > 0 => println!("alpn: {what} ALPN served ({n} bytes)"),
            r => println!("alpn: {what} ALPN closed ({r:?})"),
        }
    }
}

/// Run by the tests above inside a namespace (a no-op otherwise): `DS_ADMISSION` is
/// `NS|MODE|ADDR|ARG|SECS`.
#[test]
fn admission_client_in_namespace() {
    let Ok(spec) = std::env::var("DS_ADMISSION") else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let here = Command::new("ip").args(["netns", "identify"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&here.stdout).trim(),
        f[0],
        "not in the namespace"
    );
    let addr: SocketAddr = f[2].parse().unwrap();
    let secs: u64 = f[4].parse().unwrap();
    match f[1] {
        "member" => member_flood(addr, f[3], secs),
        "outsider" => outsider_flood(addr, f[3], secs),
        "alpn" => alpn_probe(addr, f[3]),
        m => panic!("unknown mode {m}"),
    }
}
