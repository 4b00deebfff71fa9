//! Faults between node agents (namespaces and agents from `common::netns`, all removed when the
//! guards drop): the target's file system fills up mid-stream (a small loop-mounted ext4), and
//! either end of a disk stream dies; with the agents' inactivity timeout set high (60 s), each
//! export must fail within a few seconds because the aborted side tells its peer, with a clear
//! error, no finalized partial export, the previous export intact and no staging left. A target
//! frozen mid-stream (`SIGSTOP`) tells nothing: the primary gives up on its inactivity timeout.
//! A master interrupted (SIGINT) or killed mid-stream stops the primary's send at once.
//! Needs root, iproute2 and e2fsprogs; skipped with a message otherwise.

mod common;

use std::time::{Duration, Instant};

use common::netns::*;
use common::*;

/// Well above every bound asserted here: a failure seen in time was told, not timed out.
const LONG: [&str; 2] = ["--inactivity-timeout", "60"];
/// How soon an aborted stream must fail the export.
const PROMPT: Duration = Duration::from_secs(10);

#[test]
fn target_file_system_full_fails_fast_and_cleanly() {
    if !usable() {
        return;
    }
    let dir = scratch();
    // node3's /var/lib/ganeti is a 96 MiB ext4 of its own (mounted before the agents start, so
    // their mount namespaces see it); declared before the namespaces, so it goes after them.
    let fs = LoopFs::ext4_at(&dir.path().join("node3/var/lib/ganeti"), 96);
    let mut net = Net::new("s", 45).expect("namespaces");
    let (cfg, _local, disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &LONG);
    let node3 = dir.path().join("node3");
    assert!(before.len() >= 5, "{before:?}");

    // Fill the file system but 3 MiB: the next disk stream (24 MiB) runs out of space early,
    // with most of the disk still to send.
    let ballast = fs.at.join("ballast");
    let room = fs.avail();
    let fill = std::process::Command::new("fallocate")
        .args(["-l", &(room - (3 << 20)).to_string()])
        .arg(&ballast)
        .status()
        .unwrap();
    assert!(fill.success());
    assert!(fs.avail() < 4 << 20, "{} bytes still free", fs.avail());

    let t0 = Instant::now();
    let mut json = args.clone();
    json.push("--json");
    let out = net.master(&json);
    let took = t0.elapsed();
    let t = text(&out);
    // The JSON failure carries each failed disk's own error, not only Ganeti's summary.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON failure");
    let cause = v["cause"].as_str().unwrap_or_default();
    assert!(
        cause.starts_with("disk/0: ") && cause.contains("No space left on device"),
        "{v}"
    );
    eprintln!(
        "file system full: failed after {took:?} (exit {:?}):\n{t}",
        out.status.code()
    );
    assert_clean_failure(dir.path(), &before, &out, "No space left on device");
    assert!(
        t.contains("disk/0") && t.contains("node node3.example.com refused the stream"),
        "the target's reason did not reach the master: {t}"
    );
    // Said before the instance was stopped: node3 has less room than the disks are large.
    let room = t.find("The export directory on node node3.example.com has ");
    assert!(
        room.is_some_and(|w| t.find("Shutting down instance").is_some_and(|s| w < s)),
        "no warning of the full target before the shutdown: {t}"
    );
    // With what node3's file system had free, and no empty "(recent output: )".
    let free = format!(
        " MiB free of {:.1} MiB on its file system",
        fs.size() as f64 / 1048576.0
    );
    assert!(t.contains(&free) && !t.contains("recent output"), "{t}");
    // The dump is named, not its (removed) temporary file.
    assert!(!t.contains(".partial-"), "{t}");
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        took < PROMPT,
        "the full file system took {took:?} to fail the export: {t}"
    );
    assert!(dumps_in(&node3).iter().all(|p| !p.ends_with("ballast")));

    // Both agents still serve: with room again, the same export succeeds.
    std::fs::remove_file(&ballast).unwrap();
    let out = net.master(&args);
    assert!(
        out.status.success(),
        "the export after the fault failed: {}",
        text(&out)
    );
    let got = dumps(&export_dir(&node3).join("inst1.example.com"));
    assert_eq!(got.len(), 2);
    for ((dump, _), disk) in got.iter().zip(&disks) {
        assert_same_bytes(dump, disk);
    }
    assert!(find_named(&node3, ".new").is_empty(), "staging left behind");
}

#[test]
fn an_aborted_end_tells_its_peer_before_any_timeout() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("a", 46).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &LONG);
    let node3 = dir.path().join("node3");

    // The target refuses a corrupted frame: the sender hears it at once. The byte is flipped
    // before TLS, in chunk 0's raw payload: the TLS link carries it intact, and the chunk's
    // digest (not the payload CRC, which the target skips on an authenticated stream) fails.
    net.kill_agent(0);
    let flip = [&LONG[..], &["--test-flip-wire-byte", "300000"]].concat();
    net.start_agent_with(&cfg, 2, &dir.path().join("agent2-flip.log"), &flip);
    let t0 = Instant::now();
    let out = net.master(&args);
    let took = t0.elapsed();
    eprintln!("corrupted frame: failed after {took:?}:\n{}", text(&out));
    assert_clean_failure(dir.path(), &before, &out, "refused the stream");
    assert!(text(&out).contains("checksum mismatch in chunk 0"), "{}", text(&out));
    assert!(took < PROMPT, "a corrupted frame took {took:?} to fail the export");

    // The sending agent dies mid-stream (the link shaped to 20 Mbit/s so the stream lasts):
    // the target aborts at once, and the export fails with its reason, staging removed.
    net.kill_agent(2);
    net.start_agent_with(&cfg, 2, &dir.path().join("agent2-killed.log"), &LONG);
    let (ns, _) = net.shape(2, "20mbit");
    let staging = export_dir(&node3).join("inst1.example.com.new");
    let master = net.spawn_master(&args);
    let started = wait_for(20, || find_named(&staging, "").iter().any(|p| p.is_file()));
    // Meanwhile: TCP keepalive is on for the target's end of the disk stream and for both ends
    // of the control connections (the kernel's keepalive timer runs on every idle socket; the
    // sender's data socket always has data in flight, so its retransmit timer shows instead).
    let ka = |ns: &str, min: usize, only: &str| {
        let mut last = String::new();
        let ok = wait_for(5, || {
            last = established(ns, only);
            last.lines().count() >= min && last.lines().all(|l| l.contains("timer:(keepalive"))
        });
        assert!(ok, "namespace {ns}: not every connection has TCP keepalive:\n{last}");
    };
    let (ns3, _) = net.veth(3);
    ka(&ns3, 1, "");
    ka(&net.m, 1, "");
    ka(&ns, 1, ":1811 ");
    let receives = |log: &str| log.matches("receiving inst1.example.com/disk0:").count();
    let log3 = dir.path().join("agent3.log");
    let seen = receives(&std::fs::read_to_string(&log3).unwrap());
    let t0 = Instant::now();
    net.kill_agent(3);
    assert!(started, "the transfer never started");
    // The target's receive ends at once (not after 60 s), its partial dump removed; the export
    // goes on (disk/1, the instance restart) and fails on the dead agent's connect timeouts.
    let aborted = wait_for(PROMPT.as_secs(), || {
        receives(&std::fs::read_to_string(&log3).unwrap_or_default()) > seen
            && find_named(&node3, ".partial").is_empty()
    });
    let took = t0.elapsed();
    let out = master.wait_with_output().unwrap();
    let t = text(&out);
    let log = std::fs::read_to_string(&log3).unwrap();
    eprintln!("sender killed: the target aborted {took:?} after the kill:\n{log}\n{t}");
    assert!(
        aborted,
        "the target had not aborted {PROMPT:?} after its sender died: {log}"
    );
    assert!(
        !log.contains("stalled"),
        "the target timed out instead of hearing the abort: {log}"
    );
    assert_clean_failure(dir.path(), &before, &out, "to node node3.example.com broke");
    assert!(t.contains("disk/0"), "{t}");
    assert!(
        !t.contains("refused the stream"),
        "a broken stream reported as a refusal: {t}"
    );
}

#[test]
fn a_source_read_error_ends_the_stream_at_once() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("i", 47).expect("namespaces");
    let (cfg, big, _inst) = big_cluster(dir.path(), &net);
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &LONG);
    let node3 = dir.path().join("node3");

    // disk/0, sent at 8 Mbit/s, is truncated to nothing as soon as its stream starts: the
    // primary's engine reads past the end and fails.
    net.shape(2, "8mbit");
    let master = export_started(&net, dir.path(), &args);
    let t0 = Instant::now();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(0))
        .unwrap();
    let log3 = dir.path().join("agent3.log");
    let aborted = wait_for(PROMPT.as_secs(), || {
        std::fs::read_to_string(&log3)
            .unwrap_or_default()
            .contains("receiving inst1.example.com/disk0:")
            && find_named(&node3, ".partial").is_empty()
    });
    let took = t0.elapsed();
    let out = master.wait_with_output().unwrap();
    let t = text(&out);
    let log = std::fs::read_to_string(&log3).unwrap();
    eprintln!("source read error: the target aborted {took:?} after the truncation:\n{t}\nagent3:\n{log}");
    assert!(
        aborted,
        "the target had not aborted {PROMPT:?} after its sender failed: {log}"
    );
    assert!(
        !log.contains("stalled"),
        "the target timed out instead of hearing the abort: {log}"
    );
    assert_clean_failure(dir.path(), &before, &out, "disk/0");
    assert!(
        t.contains("source ended early"),
        "the sender's reason did not reach the master: {t}"
    );
    // The primary failed on its own side: its reason is the message, not the target's
    // "connection reset" (which only followed from it).
    assert!(
        !t.contains("refused the stream") && !t.contains("broke") && !t.to_lowercase().contains("connection reset"),
        "the master led with the target's view of the sender's failure: {t}"
    );
}

/// `ss -tno` of the established TCP connections in namespace `ns` (those whose line contains
/// `only`), one a line.
fn established(ns: &str, only: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-tnoH", "state", "established"])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(only))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn a_connection_flood_neither_ends_nor_fills_the_agent() {
    // 300 connections that never finish a handshake, from node2's address, against node3's
    // agent run with 32 file descriptors: before, its accept loop ended at the first EMFILE and
    // the agent exited. It must refuse what it cannot take, stay up, and serve the master once
    // the flood is over.
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("fl", 47).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    let log3 = dir.path().join("agent3.log");
    net.start_agent_with(&cfg, 2, &dir.path().join("agent2.log"), &[]);
    net.start_agent_under(&["prlimit", "--nofile=32:32"], &cfg, 3, &log3, &[]);
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &net.p])
        .arg(exe)
        .args(["--exact", "flood_in_namespace", "--nocapture", "--test-threads=1"])
        .env("DS_AGENT_FLOOD", format!("{}|{}", net.p, net.addr(3)))
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success() && t.contains("flood: held"), "{t}");
    eprintln!(
        "{}",
        t.lines()
            .filter(|l| l.starts_with("flood:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        net.agents[1].try_wait().unwrap().is_none(),
        "the agent exited: {}",
        std::fs::read_to_string(&log3).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&log3).unwrap();
    assert!(
        log.contains("handshake evicted for a newer connection") || log.contains("accept: Too many open files"),
        "no refusal or eviction logged: {log}"
    );
    // The master is served again: node3 answers its listing (not `?`).
    let list = ["list", "--cluster", s(&cfg), "--separator", ":", "--no-headers"];
    let listed = wait_for(15, || {
        let out = net.master(&list);
        out.status.success() && !text(&out).contains("node3.example.com:?")
    });
    let out = net.master(&list);
    assert!(listed, "node3 not served after the flood: {}\n{log}", text(&out));
    // What the check above would have seen of an agent that does not answer.
    net.kill_agent(1);
    let out = net.master(&list);
    assert!(text(&out).contains("node3.example.com:?"), "{}", text(&out));
}

#[test]
fn an_agent_whose_log_pipe_closed_keeps_serving() {
    // The agent's stdout and stderr are a pipe whose reader has quit (a log reader that died, a
    // journal that restarted): every log line fails with EPIPE. `eprintln!` panicked on the
    // first one, "listening", and the agent exited before it listened.
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("lp", 49).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    net.start_agent_with(&cfg, 2, &dir.path().join("agent2.log"), &[]);
    // `--exit-with-parent $$`: the agent dies with the shell the test kills at the end.
    let closed = ["sh", "-c", r#""$@" --exit-with-parent $$ 2>&1 | true"#, "sh"];
    net.start_agent_under(&closed, &cfg, 3, &dir.path().join("agent3.log"), &[]);
    let out = net.master(&export_args(s(&cfg)));
    assert!(out.status.success(), "{}", text(&out));
    let list = net.master(&["list", "--cluster", s(&cfg), "--separator", ":", "--no-headers"]);
    assert!(
        text(&list).contains(&format!("node3.example.com:{}", "inst1.example.com")),
        "{}",
        text(&list)
    );
    assert!(net.agents[1].try_wait().unwrap().is_none(), "the agent's shell exited");
}

/// Run by `a_connection_flood_...` inside node2's namespace (a no-op otherwise): opens 300
/// connections to the agent at the given address, sends each a byte of a ClientHello, holds
/// them 3 s, then closes them all.
#[test]
fn flood_in_namespace() {
    use std::io::Write;
    let Ok(spec) = std::env::var("DS_AGENT_FLOOD") else {
        return;
    };
    let (ns, addr) = spec.split_once('|').unwrap();
    let here = std::process::Command::new("ip")
        .args(["netns", "identify"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&here.stdout).trim(),
        ns,
        "not inside the test namespace"
    );
    let mut held = Vec::new();
    let mut failed = 0;
    for _ in 0..300 {
        match std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(mut c) => {
                let _ = c.write_all(&[0x16]);
                held.push(c);
            }
            Err(_) => failed += 1,
        }
    }
    println!("flood: held {} connections ({failed} not made)", held.len());
    std::thread::sleep(Duration::from_secs(3));
    drop(held);
}

/// A process stopped with `SIGSTOP` while this lives; `SIGCONT` when it drops (a failed test
/// leaves no frozen agent behind).
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Self {
        let st = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "SIGSTOP to {pid}");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// The bytes written into the data connection (any port but the agents' control port) to
/// `peer_ip` from namespace `ns` so far, as `ss` reports them (`bytes_sent` + `notsent`: what
/// went out plus what waits in the socket); `None` while there is no such connection.
fn data_written(ns: &str, peer_ip: &str) -> Option<u64> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ss",
            "-tniH",
            "state",
            "established",
            "dst",
            peer_ip,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut data = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // A connection: "RECV-Q SEND-Q LOCAL PEER"; the data connection's peer port is not 1811.
            data = line.split_whitespace().nth(3).is_some_and(|p| !p.ends_with(":1811"));
        } else if data {
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            return Some(field("bytes_sent:") + field("notsent:"));
        }
    }
    None
}

/// The target's agent frozen (`SIGSTOP`) mid-stream: it neither reads nor answers, while its
/// kernel still holds the connections open and takes what fits in their buffers. The primary's
/// send fails on its own inactivity timeout (3 s here) counted from the last byte that moved
/// either way, not once per blocked call (which made it ~12x); the master's calls to the
/// frozen agent end on their own timeouts, and the export fails without finalizing. Once the
/// agent runs again (`SIGCONT`) it removes the staging export after its lease (4 s without
/// word from the master); the previous export is intact.
#[test]
fn a_frozen_target_fails_the_export_and_its_staging_goes_when_it_thaws() {
    use std::io::{BufRead, BufReader};
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("fz", 57).expect("namespaces");
    let (cfg, _big, _inst) = big_cluster(dir.path(), &net);
    let lease = ["--inactivity-timeout", "3", "--staging-timeout", "4"];
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &lease);
    let node3 = dir.path().join("node3");

    // disk/0 (160 MiB) at 40 Mbit/s lasts half a minute; the target freezes as it starts. The
    // master's output is read line by line, each line with the time it came.
    net.shape(2, "40mbit");
    let staging = export_dir(&node3).join("inst1.example.com.new");
    let mut master = export_started(&net, dir.path(), &args);
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(master.stdout.take().unwrap()),
        Box::new(master.stderr.take().unwrap()),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(p).lines().map_while(Result::ok) {
                    let _ = tx.send((Instant::now(), line));
                }
            })
        })
        .collect();
    drop(tx);
    let frozen = Frozen::new(net.agents[1].id());
    let t0 = Instant::now();

    // Until the master reports disk/0's failure, every 100 ms: when did the primary last write
    // into its data connection, and when did that connection end?
    let target_ip = format!("10.79.{}.3", net.subnet);
    let (mut written, mut last_write, mut ended) = (0u64, t0, None);
    let mut lines = Vec::new();
    let mut failed_at = None;
    while failed_at.is_none() && t0.elapsed() < Duration::from_secs(90) {
        match data_written(&net.p, &target_ip) {
            Some(w) if w != written => (written, last_write) = (w, Instant::now()),
            None if ended.is_none() => ended = Some(Instant::now()),
            _ => {}
        }
        while let Ok((at, line)) = rx.try_recv() {
            if line.contains("disk/0 failed to send data") && failed_at.is_none() {
                failed_at = Some(at);
            }
            lines.push(line);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = master.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    lines.extend(rx.try_iter().map(|(_, l)| l));
    let t = lines.join("\n");
    let failed_at = failed_at.unwrap_or_else(|| panic!("disk/0 had not failed 90 s after the freeze:\n{t}"));
    let ended = ended.unwrap_or_else(|| panic!("the primary's data connection outlived the export:\n{t}"));
    eprintln!(
        "frozen target: the primary wrote for {:?} after the freeze ({written} bytes), its send ended {:?} \
         after its last write, the master reported it {:?} after the freeze and ended {:?} after it:\n{t}",
        last_write - t0,
        ended - last_write,
        failed_at - t0,
        t0.elapsed()
    );
    // 3 s without a byte moving either way, up to 1 s more until the blocked write wakes to
    // look at the clock, then 2 s waiting for the target's reason (it has none to give): 6 s,
    // plus the 100 ms polls and slack. Counting per blocked call instead took 24 s here.
    assert!(
        ended - last_write < Duration::from_secs(8),
        "the primary's send ended {:?} after its last write, on a 3 s inactivity timeout",
        ended - last_write
    );
    assert!(!status.success(), "the export succeeded with its target frozen: {t}");
    assert!(
        t.contains("stalled: no progress sending inst1.example.com/disk0"),
        "{t}"
    );
    let log2 = std::fs::read_to_string(dir.path().join("agent2.log")).unwrap();
    assert!(
        log2.lines()
            .any(|l| l.contains("sending inst1.example.com/disk0 to node3.example.com: ") && l.contains("stalled")),
        "the primary's log does not say why its send failed: {log2}"
    );

    // The staging export stays while its agent is frozen, and goes once it runs again.
    assert!(staging.exists(), "the frozen agent's staging export vanished");
    drop(frozen);
    assert!(
        wait_for(20, || !staging.exists()),
        "the thawed agent kept its staging export"
    );
    assert!(snapshot_of(&export_dir(&node3).join("inst1.example.com")) == before);
    assert!(find_named(&node3, ".partial").is_empty(), "a partial dump left behind");
    let log3 = std::fs::read_to_string(dir.path().join("agent3.log")).unwrap();
    assert!(log3.contains("no word from the master"), "{log3}");
}

/// The master interrupted (SIGINT) while a disk streams from the primary's agent: the master
/// gives the send call up, which stops the send on the primary at its next chunk (and tells
/// the target), waits until the primary says it ended, abandons the new export and exits 130
/// within seconds. Before, the master waited for the whole disk to arrive (43 s for 1 GiB at
/// 200 Mbit/s; here, 160 MiB at 8 Mbit/s, almost three minutes).
#[test]
fn an_interrupted_master_stops_the_primarys_send_at_once() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("mi", 59).expect("namespaces");
    let (cfg, _big, _inst) = big_cluster(dir.path(), &net);
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &LONG);

    net.shape(2, "8mbit");
    let master = export_started(&net, dir.path(), &args);
    let t0 = Instant::now();
    signal(master.id(), "INT");
    let out = master.wait_with_output().unwrap();
    let took = t0.elapsed();
    let t = text(&out);
    let target_ip = format!("10.79.{}.3", net.subnet);
    let connection = data_written(&net.p, &target_ip);
    let log2 = std::fs::read_to_string(dir.path().join("agent2.log")).unwrap();
    eprintln!("SIGINT mid-stream: the master exited {took:?} after it:\n{t}\nagent2:\n{log2}");
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(took < PROMPT, "the master took {took:?} to stop: {t}");
    assert!(
        t.contains("interrupted by SIGINT") && t.contains("is running again (it was shut down for the export"),
        "{t}"
    );
    assert!(
        primary_stopped_for_the_master(dir.path()),
        "the primary's log does not say that it stopped sending: {log2}"
    );
    assert_eq!(connection, None, "the primary's data connection outlived the export");
    assert!(target_ended_disk0(dir.path(), 5), "the target's receive did not end");
    assert_clean_failure(dir.path(), &before, &out, "interrupted");
}

/// The master killed (SIGKILL) while a disk streams: its connection to the primary's agent
/// closes, which stops the send there at its next chunk (the target is told), and the target
/// removes the staging export once its lease (3 s without word from the master) ran out.
/// Before, the primary kept sending until the whole disk was through (here almost three
/// minutes), and the receive in progress held the staging export's lease all that time.
#[test]
fn a_killed_master_stops_the_primarys_send_and_the_target_its_staging() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("mk", 60).expect("namespaces");
    let (cfg, _big, _inst) = big_cluster(dir.path(), &net);
    let agents = ["--inactivity-timeout", "60", "--staging-timeout", "3"];
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &agents);
    let node3 = dir.path().join("node3");
    let staging = export_dir(&node3).join("inst1.example.com.new");

    net.shape(2, "8mbit");
    let mut master = export_started(&net, dir.path(), &args);
    let t0 = Instant::now();
    let _ = master.kill();
    let _ = master.wait();
    let stopped = wait_for(PROMPT.as_secs(), || primary_stopped_for_the_master(dir.path()));
    let stopped_after = t0.elapsed();
    let gone = wait_for(20, || !staging.exists());
    let log2 = std::fs::read_to_string(dir.path().join("agent2.log")).unwrap();
    let log3 = std::fs::read_to_string(dir.path().join("agent3.log")).unwrap();
    eprintln!(
        "master killed mid-stream: the primary stopped {stopped_after:?} after, the staging export went {:?} \
         after\nagent2:\n{log2}\nagent3:\n{log3}",
        t0.elapsed()
    );
    assert!(
        stopped,
        "the primary still sent {PROMPT:?} after its master died: {log2}"
    );
    assert!(gone, "the staging export outlived its master: {log3}");
    assert!(log3.contains("no word from the master"), "{log3}");
    assert!(snapshot_of(&export_dir(&node3).join("inst1.example.com")) == before);
    assert!(find_named(&node3, ".partial").is_empty(), "a partial dump left behind");
}

/// Whether process `pid` runs a command line containing `what` (so a reused pid does not count).
fn runs(pid: u32, what: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(what))
}

/// The master interrupted (SIGINT) while the primary's agent runs a long pre hook: the master
/// gives the call up, the agent kills the script (as the local path does), and the export
/// stops with nothing changed. Before, the master waited for the script (up to the hooks
/// timeout, an hour by default).
#[test]
fn an_interrupted_master_has_its_agent_kill_the_hook_it_runs() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("mh", 61).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &[]);
    let pid_file = dir.path().join("hook.pid");
    let roots = node_roots(dir.path(), 3);
    let body = format!("echo $$ > {}; exec sleep 300", s(&pid_file));
    hook(&roots[1], "instance-export-pre.d", "20-long", &body);

    let master = net.spawn_master(&args);
    assert!(wait_for(20, || pid_file.exists()), "the hook never started");
    std::thread::sleep(Duration::from_millis(200));
    let hook_pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(runs(hook_pid, "sleep 300"), "the hook is not running");
    let t0 = Instant::now();
    signal(master.id(), "INT");
    let out = master.wait_with_output().unwrap();
    let took = t0.elapsed();
    let t = text(&out);
    let killed = wait_for(5, || !runs(hook_pid, "sleep 300"));
    eprintln!("SIGINT during a hook on an agent: the master exited {took:?} after it:\n{t}");
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(took < PROMPT, "the master took {took:?} to stop: {t}");
    assert!(t.contains("stopped during the pre hooks"), "{t}");
    assert!(killed, "the agent's hook script outlived the interrupted export");
    assert!(snapshot_of(&export_dir(&dir.path().join("node3")).join("inst1.example.com")) == before);
}

/// The master interrupted (SIGINT) while the primary's agent waits for the instance to shut
/// down (an instance that ignores SIGTERM, a 600 s shutdown timeout): the master gives the call
/// up, the agent stops the instance at once (as the local path does), and the master starts it
/// again before it exits (and says so: not "as before"). The agent's lock per instance makes
/// the master's next calls about it wait until the cancelled shutdown is over.
#[test]
fn an_interrupted_master_cuts_its_agents_shutdown_wait_short() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("ms", 62).expect("namespaces");
    let (plain, _local, _disks) = cluster(dir.path(), &net);
    let cfg = variant(
        &plain,
        "stubborn.toml",
        r#"start = ["/bin/sleep", "100000"]"#,
        r#"start = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"]"#,
    );
    let inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    let first = inst.pid().expect("the instance runs");
    net.start_agents(&cfg, dir.path(), &[]);
    let mut args = export_args(s(&cfg));
    args.extend(["--shutdown-timeout", "600"]);

    let mut master = net.spawn_master(&args);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(master.stdout.take().unwrap()));
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("Shutting down instance")),
        "the shutdown never began"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(runs(first, "trap"), "the instance did not wait out its SIGTERM");
    let t0 = Instant::now();
    signal(master.id(), "INT");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = master.wait_with_output().unwrap();
    let took = t0.elapsed();
    let t = format!("{}\n{}", rest.join("\n"), text(&out));
    eprintln!("SIGINT during the shutdown wait on an agent: the master exited {took:?} after it:\n{t}");
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(took < PROMPT, "the master took {took:?} to stop: {t}");
    assert!(t.contains("is running again (it was shut down for the export"), "{t}");
    let now = inst.pid().expect("the instance runs again");
    assert_ne!(now, first, "it was stopped, then started again");
    assert!(!runs(first, "trap"), "the first instance process still runs");
}

/// The master killed (SIGKILL) while the primary's agent waits for the instance to shut down:
/// the shutdown finishes as asked (the instance's own SIGTERM handling, 2 s here, runs to its
/// end); the master going away does not turn it into a kill.
#[test]
fn a_killed_master_leaves_its_agents_shutdown_to_finish_gracefully() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("mg", 65).expect("namespaces");
    let (plain, _local, _disks) = cluster(dir.path(), &net);
    let clean = dir.path().join("clean-exit");
    let cfg = variant(
        &plain,
        "graceful.toml",
        r#"start = ["/bin/sleep", "100000"]"#,
        &format!(
            r#"start = ["/bin/sh", "-c", "trap 'sleep 2; echo clean > {}; exit 0' TERM; while :; do sleep 0.05; done"]"#,
            s(&clean)
        ),
    );
    let inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    let first = inst.pid().expect("the instance runs");
    net.start_agents(&cfg, dir.path(), &[]);
    let mut args = export_args(s(&cfg));
    args.extend(["--shutdown-timeout", "60"]);

    let mut master = net.spawn_master(&args);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(master.stdout.take().unwrap()));
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("Shutting down instance")),
        "the shutdown never began"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = master.kill();
    let _ = master.wait();
    let finished = wait_for(10, || {
        std::fs::read_to_string(&clean).is_ok_and(|t| t.contains("clean"))
    });
    assert!(
        finished,
        "the instance did not finish its shutdown after its master died (killed instead?)"
    );
    assert!(wait_for(5, || !runs(first, "trap")), "the instance still runs");
}

/// Waits up to `secs` for `child` to exit; its status, or `None` if it still runs.
fn exited(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// An agent stopped by its service manager (SIGTERM) mid-stream stops in order: the primary's
/// agent stops its send (the target drops its partial dump at once, the master abandons the
/// staging export), and the target's agent stops its receive and removes the staging export
/// itself before it exits, instead of leaving it for its next start. Each exits 0 within
/// seconds, and the master's error says which agent stopped.
#[test]
fn an_agent_stopped_mid_stream_stops_in_order_and_leaves_nothing() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("st", 66).expect("namespaces");
    let (cfg, _big, _inst) = big_cluster(dir.path(), &net);
    let (args, before) = a_first_export(&mut net, dir.path(), &cfg, &LONG);
    let node3 = dir.path().join("node3");
    net.shape(2, "8mbit");

    for (i, node) in [(0, "node2.example.com"), (1, "node3.example.com")] {
        let master = export_started(&net, dir.path(), &args);
        let t0 = Instant::now();
        signal(net.agents[i].id(), "TERM");
        let st = exited(&mut net.agents[i], 20);
        let took = t0.elapsed();
        let out = master.wait_with_output().unwrap();
        let master_took = t0.elapsed();
        let t = text(&out);
        // The next disk's call cannot reach the stopped agent: the master does not wait for the
        // other end's receive of a stream that never started (it waited 10 s for that).
        assert!(
            master_took < Duration::from_secs(5),
            "the master took {master_took:?} to fail: {t}"
        );
        let log = std::fs::read_to_string(dir.path().join(format!("agent{}.log", i + 2))).unwrap();
        eprintln!("SIGTERM to the agent of {node} mid-stream: it exited {took:?} after, {st:?}:\n{t}\nits log:\n{log}");
        assert!(
            st.is_some_and(|s| s.success()),
            "the agent of {node} did not stop in order: {st:?}\n{log}"
        );
        assert!(took < PROMPT, "the agent of {node} took {took:?} to stop");
        assert!(log.contains(&format!("node {node}: stopped")), "{log}");
        assert!(t.contains(&format!("the agent of node {node} is stopping")), "{t}");
        // Nothing left on node3, at once: no staging export, no partial dump.
        assert_clean_failure(dir.path(), &before, &out, "disk/0");
        // Started again for the next round (or the end).
        let n = if i == 0 { 2 } else { 3 };
        let restarted = dir.path().join(format!("agent{n}-restarted.log"));
        net.start_agent_with(&cfg, n, &restarted, &LONG);
        // The new agent takes the stopped one's place (already reaped: `wait` returns at once).
        let _ = net.agents.swap_remove(i).wait();
    }
    assert!(find_named(&node3, ".new").is_empty());
}

/// The primary's agent stopped (SIGTERM) while its stream is stalled (the target frozen) and it
/// holds a snapshot of the disk (XFS reflink): its blocked write wakes to the stop within a
/// second, the send ends, and the agent deletes the snapshot it holds before it exits 0 (within
/// seconds, not after its 60 s inactivity timeout; before, the snapshot stayed until the next
/// export of the instance swept it).
#[test]
fn an_agent_stopped_with_a_stalled_stream_releases_its_snapshot() {
    if !usable() {
        return;
    }
    let xfs = FsMount::xfs_reflink();
    let dir = scratch();
    let mut net = Net::new("sx", 67).expect("namespaces");
    let (small, _local, disks) = cluster(dir.path(), &net);
    let big = xfs.path().join("big.img");
    make_disk(&big, 160 << 20, Data::Mixed, 9);
    let d1 = xfs.path().join("d1.img");
    std::fs::copy(&disks[1], &d1).unwrap();
    let cfg = variant(
        &small,
        "xfs0.toml",
        &format!("size = 24\ntemplate = \"file\"\npath = {:?}", s(&disks[0])),
        &format!("size = 160\ntemplate = \"file\"\npath = {:?}", s(&big)),
    );
    // Both disks on the XFS: both are snapshotted.
    let cfg = variant(
        &cfg,
        "xfs.toml",
        &format!("{:?}", s(&disks[1])),
        &format!("{:?}", s(&d1)),
    );
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    net.start_agents(&cfg, dir.path(), &LONG);
    net.shape(2, "8mbit");
    let args = [
        "export",
        "--cluster",
        s(&cfg),
        "-n",
        "node3.example.com",
        "inst1.example.com",
        "--transport-compression",
        "none",
    ];
    let mut master = net.spawn_master(&args);
    let staging = export_dir(&dir.path().join("node3")).join("inst1.example.com.new");
    if !wait_for(20, || find_named(&staging, "").iter().any(|p| p.is_file())) {
        let _ = master.kill();
        panic!(
            "the transfer never started: {}",
            text(&master.wait_with_output().unwrap())
        );
    }
    let snapshots = || find_named(xfs.path(), ".ds-snap-");
    assert!(!snapshots().is_empty(), "the export made no snapshot");
    let frozen = Frozen::new(net.agents[1].id());
    std::thread::sleep(Duration::from_secs(2)); // the primary's writes block
    let t0 = Instant::now();
    signal(net.agents[0].id(), "TERM");
    let st = exited(&mut net.agents[0], 20);
    let took = t0.elapsed();
    let _ = master.kill();
    let _ = master.wait();
    drop(frozen);
    let log2 = std::fs::read_to_string(dir.path().join("agent2.log")).unwrap();
    eprintln!("SIGTERM to the primary's agent with its stream stalled: it exited {took:?} after, {st:?}:\n{log2}");
    assert!(st.is_some_and(|s| s.success()), "{st:?}: {log2}");
    assert!(took < Duration::from_secs(5), "the agent took {took:?} to stop: {log2}");
    assert!(snapshots().is_empty(), "snapshots left: {:?}\n{log2}", snapshots());
}
