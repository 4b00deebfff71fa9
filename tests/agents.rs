//! Node agents in their own network namespaces: the master (node1, in-process) in namespace `m`
//! with a bridge, the primary's agent (node2) and the target's agent (node3) in `p` and `t`,
//! joined by veth pairs; all made by the test and removed (namespaces, agents, instance
//! processes) when its guard drops, also when it fails. Every client command first checks that
//! it runs in its namespace (`ip netns identify`), so no test traffic leaves the namespaces.
//! Needs root and iproute2; skipped with a message otherwise. An export made over agents is
//! also read by Ganeti 3.0's own code (`common::ganeti`), as the local export is in
//! `tests/export_ganeti.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ganeti::{ganeti, normalized};
use common::netns::*;
use common::*;

#[test]
fn three_node_export_over_mutual_tls_equals_source_and_local_export() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("e", 41).expect("namespaces");
    let (cfg, local, disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    net.start_agents(&cfg, dir.path(), &[]);
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
        // The result says what each stream carried, as the primary counted it.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let (mut data, mut packed) = (0, 0);
        for d in v["disks"].as_array().unwrap() {
            let w = &d["wire"];
            data += w["data_chunks"].as_u64().expect("wire.data_chunks");
            packed += w["lz4_chunks"].as_u64().expect("wire.lz4_chunks");
            assert_eq!(w["auto_rounds"], 0, "{w}");
        }
        assert!(data > 0, "{v}");
        if lz4 == "none" {
            assert_eq!(packed, 0, "no compression, yet lz4 frames: {v}");
        } else {
            assert!(packed > 0 && packed <= data, "lz4 on mixed data: {packed} of {data}");
        }
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
    // Ganeti 3.0's own code lists the export made over agents, reads its config.ini and would
    // import it, with the dumps it names holding the disks' bytes.
    let node3 = dir.path().join("node3");
    let exp = export_dir(&node3).join("inst1.example.com");
    let listed = ganeti(&node3, &["list"]);
    assert_eq!(listed["ok"], serde_json::json!(["inst1.example.com"]), "{listed}");
    let info = ganeti(&node3, &["info", s(&exp)]);
    assert!(
        info.get("error").is_none(),
        "ExportInfo refused the export over agents: {info}"
    );
    assert_eq!(info["version"], info["export_version"]);
    let images: Vec<PathBuf> = info["import"]["disk_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| exp.join(i.as_str().expect("a dump for every disk")))
        .collect();
    assert_eq!(images, dumps(&exp).into_iter().map(|(d, _)| d).collect::<Vec<_>>());
    for (dump, disk) in images.iter().zip(&disks) {
        assert_same_bytes(dump, disk);
    }

    // A primary without an agent (its disks on the master's machine) to the target's agent: the
    // master streams the disk itself, as the primary (its certificate from the cluster PKI).
    let mixed = variant(&cfg, "mixed.toml", &format!("address = \"{}\"\n", net.addr(2)), "");
    let out = net.master(&[
        "export",
        "--cluster",
        s(&mixed),
        "-n",
        "node3.example.com",
        "inst1.example.com",
        "--long-sleep",
    ]);
    assert!(
        out.status.success(),
        "export from an in-process primary failed: {}",
        text(&out)
    );
    let got = dumps(&export_dir(&dir.path().join("node3")).join("inst1.example.com"));
    assert_eq!(got.len(), 2);
    for ((dump, _), disk) in got.iter().zip(&disks) {
        assert_same_bytes(dump, disk);
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
    // ... and the same config.ini, but for the second it was written in and the dumps' names
    // (fresh UUIDs per export).
    let ini = |d: &Path| std::fs::read_to_string(d.join("config.ini")).unwrap();
    let here_dir = export_dir(&dir.path().join("node1")).join("inst1.example.com");
    assert_eq!(
        normalized(&ini(&kept)),
        normalized(&ini(&here_dir)),
        "config.ini differs"
    );
}

/// Export directories shared the way NFS shares one between machines: node1's (the master's,
/// in-process) and node2's (the primary's agent) are node3's seen through bindfs, with another
/// device number and the same inodes. The cleanup of old exports after an export to node3 must
/// keep the new export from every node (Ganeti #1186 across machines).
#[test]
fn an_export_directory_shared_across_machines_keeps_the_new_export() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("sd", 68).expect("namespaces");
    let (cfg, _local, disks) = cluster(dir.path(), &net);
    let target = export_dir(&dir.path().join("node3"));
    let _views: Vec<Bindfs> = [1, 2]
        .iter()
        .map(|n| Bindfs::mount(&target, &export_dir(&dir.path().join(format!("node{n}")))))
        .collect();
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    net.start_agents(&cfg, dir.path(), &[]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut args = export_args(s(&cfg));
        args.push("--json");
        let out = net.master(&args);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(
            v["shared_export_dir_nodes"],
            serde_json::json!(["node1.example.com", "node2.example.com"]),
            "{v}"
        );
        assert_eq!(v["removed_old_exports"], serde_json::json!([]), "{v}");
        let exp = target.join("inst1.example.com");
        let id = std::fs::read_to_string(exp.join("diskstream-export-id")).expect("the new export is there");
        assert_eq!(v["export_id"].as_str(), Some(id.trim()), "{v}");
        let got = dumps(&exp);
        assert_eq!(got.len(), 2, "{}", text(&out));
        for ((dump, _), disk) in got.iter().zip(&disks) {
            assert_same_bytes(dump, disk);
        }
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "each export has its own id");
}

#[test]
fn refusals_other_ca_non_master_bad_token_and_paths() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("r", 42).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    net.start_agents(&cfg, dir.path(), &[]);

    // A master whose certificates come from another CA: the handshake fails.
    let evil = variant(&cfg, "evil.toml", "master = ", "pki = \"evil-pki\"\nmaster = ");
    let out = Command::new(DS)
        .args(["pki", "init", "--cluster"])
        .arg(&evil)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = net.master(&["list", "--cluster", s(&evil), "--json"]);
    let t = text(&out);
    assert!(t.contains("node2.example.com") && t.contains("TLS handshake"), "{t}");
    assert!(!t.contains("inst1"), "{t}");

    // Another node of the cluster (right CA, right name) commanding an agent: 403, nothing runs.
    let other = variant(
        &cfg,
        "other.toml",
        "master = \"node1.example.com\"",
        "master = \"node3.example.com\"",
    );
    let out = net.master(&["list", "--cluster", s(&other), "--json"]);
    let t = text(&out);
    assert!(
        t.contains("only the master (node1.example.com) may command this agent"),
        "{t}"
    );

    // The protocol-level refusals run in the master's namespace (this test binary, re-run).
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &net.m])
        .arg(exe)
        .args(["--exact", "probe_in_namespace", "--nocapture", "--test-threads=1"])
        .env("DS_AGENT_PROBE", format!("{}|{}|{}", net.m, s(&cfg), net.addr(3)))
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success() && t.contains("probe: all refusals seen"), "{t}");
    eprintln!("{t}");
    let log3 = std::fs::read_to_string(dir.path().join("agent3.log")).unwrap();
    assert!(log3.contains("does not start with this transfer's token"), "{log3}");
    assert!(
        log3.contains("its certificate names none of 'node2.example.com'"),
        "{log3}"
    );
    assert!(
        find_named(&dir.path().join("node3"), ".new").is_empty(),
        "staging left behind"
    );
    assert!(dumps_in(&dir.path().join("node3")).is_empty(), "a dump was written");
}

/// Run by `refusals_...` inside the master's namespace (a no-op otherwise): speaks the agent
/// protocol as the master and as other nodes, and checks every refusal.
#[test]
fn probe_in_namespace() {
    use diskstream_agent::pki::PkiDir;
    use diskstream_agent::proto::{data_hello, Call, Opened};
    use diskstream_agent::remote::{Remote, RemoteTimeouts};
    use diskstream_agent::tls;
    use diskstream_orchestrator::cluster::Cluster;
    use diskstream_orchestrator::node::{DiskSource, SendDisk};
    use std::io::{Read, Write};

    let Ok(spec) = std::env::var("DS_AGENT_PROBE") else {
        return;
    };
    let [ns, cfg, addr3]: [&str; 3] = spec.splitn(3, '|').collect::<Vec<_>>().try_into().unwrap();
    let here = Command::new("ip").args(["netns", "identify"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&here.stdout).trim(),
        ns,
        "not inside the test namespace"
    );
    let cluster = Cluster::load(cfg).unwrap();
    let remote = Remote::new(&cluster, RemoteTimeouts::default()).unwrap();
    let (n2, n3, inst) = ("node2.example.com", "node3.example.com", "inst1.example.com");
    let refused = |node: &str, call: Call, what: &str| {
        let e = remote.call(node, &call, None).expect_err(what);
        assert_eq!(e.kind, "refused", "{what}: {e:?}");
        eprintln!("probe: {what}: {}", e.msg);
    };
    refused(
        n3,
        Call::RemoveExport {
            node: n3.into(),
            instance: "../../../etc".into(),
            keep: Default::default(),
        },
        "a path as instance",
    );
    refused(
        n3,
        Call::BeginExport {
            node: n3.into(),
            instance: "inst1.example.com.new".into(),
            room: false,
        },
        "a staging name",
    );
    refused(
        n3,
        Call::BeginExport {
            node: n2.into(),
            instance: inst.into(),
            room: false,
        },
        "another node",
    );
    refused(
        n3,
        Call::CreateSnapshot {
            node: n3.into(),
            instance: inst.into(),
            disk: 0,
        },
        "another node's instance",
    );
    refused(
        n3,
        Call::RunHooks {
            node: n3.into(),
            hpath: "../x".into(),
            phase: diskstream_orchestrator::hooks::Phase::Pre,
            env: Default::default(),
        },
        "a path as hooks path",
    );
    let req = SendDisk {
        source_node: n2.into(),
        instance: inst.into(),
        disk: 0,
        source: DiskSource::Disk,
        target_node: n3.into(),
        dump: "../../escape".into(),
        pages: Default::default(),
        checksum: Default::default(),
        lz4: false,
        lz4_auto: false,
        bwlimit: None,
    };
    refused(n3, Call::OpenReceive { req: req.clone() }, "a path as dump name");
    for (dump, what) in [
        ("config.ini", "an export's own file as dump name"),
        ("diskstream-export-id", "the export's id file as dump name"),
        ("d0.manifest", "a manifest's name as dump name"),
        (".partial", "a hidden dump name"),
    ] {
        let req = SendDisk {
            dump: dump.into(),
            ..req.clone()
        };
        refused(n3, Call::OpenReceive { req }, what);
    }
    refused(
        n2,
        Call::Send {
            req: req.clone(),
            port: 1,
            token: "x".into(),
            lanes: 1,
        },
        "a path as dump name (sender)",
    );

    // A staging export or a receive for an instance or a disk that the config does not have.
    let unknown = |call: Call, what: &str, says: &str| {
        let e = remote.call(n3, &call, None).expect_err(what);
        assert!(e.kind == "unknown" && e.msg.contains(says), "{what}: {e:?}");
        eprintln!("probe: {what}: {}", e.msg);
    };
    unknown(
        Call::BeginExport {
            node: n3.into(),
            instance: "ghost.example.com".into(),
            room: false,
        },
        "an export of an instance not in the config",
        "not in the cluster config",
    );
    unknown(
        Call::OpenReceive {
            req: SendDisk {
                disk: 7,
                dump: "probe-dump7".into(),
                ..req.clone()
            },
        },
        "a receive of a disk the instance does not have",
        "has no disk 7",
    );

    // Plaintext HTTP to an agent: no answer but a TLS alert, nothing served.
    let mut plain = std::net::TcpStream::connect(addr3).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain
        .write_all(b"POST /v1/list_exports HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP"),
        "plaintext was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    eprintln!("probe: plaintext: {} bytes back (a TLS alert at most)", got.len());

    // A stream for an opened receive: wrong token, wrong node, then garbage with the right one.
    remote
        .call(
            n3,
            &Call::BeginExport {
                node: n3.into(),
                instance: inst.into(),
                room: false,
            },
            None,
        )
        .unwrap();
    let req = SendDisk {
        dump: "probe-dump".into(),
        ..req
    };
    let opened: Opened =
        serde_json::from_value(remote.call(n3, &Call::OpenReceive { req: req.clone() }, None).unwrap()).unwrap();
    let pki = PkiDir::new(cluster.pki_dir());
    let ca = pki.load_ca().unwrap();
    let host = addr3.rsplit_once(':').unwrap().0;
    // Err: the port was closed (connect refused, or the handshake cut off).
    let try_dial_with = |port: u16, as_node: &str, token: &str, body: &[u8]| -> Result<Vec<u8>, String> {
        let cfg = tls::client_config(&ca, &pki.load_identity(as_node).unwrap()).unwrap();
        let tcp = std::net::TcpStream::connect((host, port)).map_err(|e| e.to_string())?;
        let mut s = tls::connect(&cfg, tcp, n3, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let _ = s
            .write_all(&data_hello(token))
            .and_then(|()| s.write_all(body))
            .and_then(|()| s.flush());
        s.conn.send_close_notify();
        let _ = s.flush();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        Ok(got)
    };
    let dial_with = |port: u16, as_node: &str, token: &str, body: &[u8]| -> Vec<u8> {
        try_dial_with(port, as_node, token, body).unwrap()
    };
    let dial = |as_node: &str, token: &str| dial_with(opened.port, as_node, token, &[0u8; 4096]);
    let wrong = "0".repeat(opened.token.len());
    assert!(dial(n2, &wrong).is_empty(), "a wrong token got an answer");
    assert!(
        dial("node1.example.com", &opened.token).is_empty(),
        "the master's own certificate was taken as the primary"
    );
    let ack = String::from_utf8(dial(n2, &opened.token)).unwrap();
    assert!(ack.contains("\"err\""), "garbage was acknowledged: {ack}");
    eprintln!("probe: garbage stream: {ack}");
    let open_receive = |dump: &str| {
        let req = SendDisk {
            dump: dump.into(),
            ..req.clone()
        };
        remote.call(n3, &Call::OpenReceive { req }, None)
    };
    let opened_for = |dump: &str| -> Opened { serde_json::from_value(open_receive(dump).unwrap()).unwrap() };
    // A valid header that claims a disk of 2^60 bytes in 4 KiB chunks (a manifest of 2^48
    // entries, which aborted the agent): refused against the size in node3's own config.
    let opened = opened_for("probe-dump2");
    let lie = diskstream_engine::format::Header {
        disk_size: 1 << 60,
        chunk_size: diskstream_engine::format::MIN_CHUNK,
        checksum: Default::default(),
    };
    let ack = String::from_utf8(dial_with(opened.port, n2, &opened.token, &lie.encode())).unwrap();
    assert!(
        ack.contains("\"err\"") && ack.contains(&(1u64 << 60).to_string()) && ack.contains("this disk has"),
        "a lying header was not refused: {ack}"
    );
    eprintln!("probe: lying header: {ack}");
    // A receive holds its staging export: the same dump cannot be opened twice, the export
    // cannot be finalized around it, and once the export is abandoned and begun again the old
    // receive takes no stream into the new one.
    let opened = opened_for("probe-dump3");
    let e = open_receive("probe-dump3").expect_err("a second receive of the same dump");
    assert!(e.msg.contains("already being received"), "{e:?}");
    let finalize = Call::FinalizeExport {
        node: n3.into(),
        instance: inst.into(),
        config_ini: "[export]\n".into(),
        id: diskstream_orchestrator::export::export_id::ExportId::new().unwrap(),
    };
    let e = remote
        .call(n3, &finalize, None)
        .expect_err("a finalize around an open receive");
    assert!(
        e.kind == "refused" && e.msg.contains("cannot be finalized") && e.msg.contains("probe-dump3"),
        "{e:?}"
    );
    // The staging export abandoned and begun again (a new generation of its leases).
    let restart_export = || {
        for call in [
            Call::AbandonExport {
                node: n3.into(),
                instance: inst.into(),
            },
            Call::BeginExport {
                node: n3.into(),
                instance: inst.into(),
                room: false,
            },
        ] {
            remote.call(n3, &call, None).unwrap();
        }
    };
    restart_export();
    let header = diskstream_engine::format::Header {
        disk_size: 24 << 20,
        chunk_size: 1 << 20,
        checksum: Default::default(),
    };
    // The old receive stops waiting as soon as it sees its export abandoned (its port closes);
    // a stream that reaches it before that is refused. Either way it takes none.
    let ack = match try_dial_with(opened.port, n2, &opened.token, &header.encode()) {
        Ok(ack) => String::from_utf8(ack).unwrap(),
        Err(e) => format!("port closed: {e}"),
    };
    assert!(
        ack.starts_with("port closed") || (ack.contains("\"err\"") && ack.contains("finalized or abandoned")),
        "a receive of an abandoned export took a stream: {ack}"
    );
    eprintln!("probe: receive of an abandoned export: {ack}");
    // A stream admitted (its hello read) before the export is abandoned and begun again, whose
    // header comes after: the old receive wrote by the staging directory's name into the new
    // export (and a finalize carried its partial files into the export). Now the restart halts
    // it and waits until it is gone; the new export has nothing of it.
    let opened = opened_for("probe-dump5");
    let cfg5 = tls::client_config(&ca, &pki.load_identity(n2).unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect((host, opened.port)).unwrap();
    let mut old = tls::connect(&cfg5, tcp, n3, Duration::from_secs(5)).unwrap();
    old.write_all(&data_hello(&opened.token))
        .and_then(|()| old.flush())
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    restart_export();
    eprintln!("probe: restart around an admitted stream took {:?}", t0.elapsed());
    let _ = old.write_all(&header.encode()).and_then(|()| old.flush());
    std::thread::sleep(Duration::from_millis(300));
    remote
        .call(n3, &finalize, None)
        .expect("finalize of the new staging export");
    let final_dir = cluster.export_dir(cluster.node(n3).unwrap()).join(inst);
    let mut names: Vec<String> = std::fs::read_dir(&final_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["config.ini", "diskstream-export-id"],
        "the receive of the abandoned export wrote into the new one"
    );
    drop(old);
    let remove = Call::RemoveExport {
        node: n3.into(),
        instance: inst.into(),
        keep: Default::default(),
    };
    remote.call(n3, &remove, None).expect("remove the probe's export");
    remote
        .call(
            n3,
            &Call::BeginExport {
                node: n3.into(),
                instance: inst.into(),
                room: false,
            },
            None,
        )
        .unwrap();
    // A connection to the data port that stalls in its handshake does not hold the port
    // against the primary: admissions run side by side.
    let opened = opened_for("probe-dump4");
    let mut stall = std::net::TcpStream::connect((host, opened.port)).unwrap();
    stall.write_all(&[0x16]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = std::time::Instant::now();
    let ack = String::from_utf8(dial_with(opened.port, n2, &opened.token, &lie.encode())).unwrap();
    assert!(ack.contains("this disk has"), "{ack}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the primary waited {:?} behind a stalled connection",
        t0.elapsed()
    );
    drop(stall);
    eprintln!(
        "probe: stalled connection beside the primary: answered in {:?}",
        t0.elapsed()
    );
    // At most 64 receives are open on a node (each holds a thread and a port until its stream
    // or its open timeout); the 65th is refused with why. Abandoning their export gives every
    // place back at once (the receives stop waiting), not after the 60 s open timeout.
    for i in 0..64 {
        open_receive(&format!("probe-cap{i}")).unwrap_or_else(|e| panic!("receive {i} of 64: {e:?}"));
    }
    let e = open_receive("probe-cap64").expect_err("a 65th open receive");
    assert!(
        e.kind == "refused" && e.msg.contains("64 receives are open on this node"),
        "{e:?}"
    );
    restart_export();
    let t0 = std::time::Instant::now();
    while open_receive("probe-cap64").is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the abandoned receives still held their places after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "probe: 64 open receives, the 65th refused; places back {:?} after the abandon",
        t0.elapsed()
    );
    remote
        .call(
            n3,
            &Call::AbandonExport {
                node: n3.into(),
                instance: inst.into(),
            },
            None,
        )
        .unwrap();
    eprintln!("probe: all refusals seen");
}

#[test]
fn faults_corrupted_frame_and_cut_link_fail_cleanly() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("f", 43).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    net.start_agents(&cfg, dir.path(), &[]);
    let c = s(&cfg);
    let export = export_args(c);
    let out = net.master(&export);
    assert!(out.status.success(), "{}", text(&out));
    let before = snapshot_of(&export_dir(&dir.path().join("node3")).join("inst1.example.com"));
    assert!(before.len() >= 5, "{before:?}");

    // A byte flipped on the wire (after the engine wrote it, before TLS): the target refuses the
    // dump on chunk 0's digest (it skips payload CRCs on an authenticated stream).
    net.kill_agent(0);
    net.start_agent_with(
        &cfg,
        2,
        &dir.path().join("agent2-flip.log"),
        &["--test-flip-wire-byte", "300000"],
    );
    let out = net.master(&export);
    assert_clean_failure(dir.path(), &before, &out, "refused the stream");
    assert!(text(&out).contains("checksum mismatch in chunk 0"), "{}", text(&out));

    // The primary's link cut mid-transfer (shaped to 40 Mbit/s so it lasts): disk/0 fails as
    // stalled within the inactivity timeout (5 s) and the master's HTTP/2 ping timeout; disk/1
    // and the instance restart then fail on connect timeouts (10 s each), as Ganeti goes on.
    net.kill_agent(2);
    net.start_agent(&cfg, 2, &dir.path().join("agent2-cut.log"));
    let (ns, dev) = net.shape(2, "40mbit");
    let cutter = {
        let (ns, dev) = (ns.clone(), dev.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            ip(&["-n", &ns, "link", "set", &dev, "down"])
        })
    };
    let t0 = Instant::now();
    let mut args = export.to_vec();
    args.extend(["--transport-compression", "none"]);
    let out = net.master(&args);
    let took = t0.elapsed();
    cutter.join().unwrap().unwrap();
    assert_clean_failure(dir.path(), &before, &out, "disk/0");
    assert!(took < Duration::from_secs(60), "took {took:?}: {}", text(&out));
    assert!(
        text(&out).contains("stalled: no progress receiving inst1.example.com/disk0"),
        "{}",
        text(&out)
    );
    let log3 = std::fs::read_to_string(dir.path().join("agent3.log")).unwrap();
    assert!(log3.contains("stalled"), "{log3}");
    eprintln!("cut link: failed after {took:?}:\n{}", text(&out));
}

#[test]
fn killed_master_and_killed_agents_leave_nothing() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("k", 44).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    let lease = ["--staging-timeout", "3"];
    net.start_agents(&cfg, dir.path(), &lease);
    let c = s(&cfg);
    let export = export_args(c);
    let out = net.master(&export);
    assert!(out.status.success(), "{}", text(&out));
    let node3 = dir.path().join("node3");
    let before = snapshot_of(&export_dir(&node3).join("inst1.example.com"));
    net.shape(2, "20mbit");
    let staging = export_dir(&node3).join("inst1.example.com.new");
    let mut args = export.to_vec();
    args.extend(["--transport-compression", "none"]);

    // The master killed mid-transfer: the target's agent removes the staging export once the
    // stream ended and the master said nothing for the lease (3 s).
    let mut master = net
        .master_cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = wait_for(20, || find_named(&staging, "").iter().any(|p| p.is_file()));
    let _ = master.kill();
    let _ = master.wait();
    assert!(started, "the transfer never started");
    assert!(
        wait_for(40, || !staging.exists()),
        "the staging export outlived its master"
    );
    assert!(snapshot_of(&export_dir(&node3).join("inst1.example.com")) == before);
    let log3 = std::fs::read_to_string(dir.path().join("agent3.log")).unwrap();
    assert!(log3.contains("no word from the master"), "{log3}");

    // The target's agent killed mid-transfer: the export fails; the agent, restarted, removes
    // the staging export its predecessor left.
    let master = net.spawn_master(&args);
    let started = wait_for(20, || find_named(&staging, "").iter().any(|p| p.is_file()));
    net.kill_agent(1);
    assert!(started, "the transfer never started");
    let out = master.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the export succeeded without its target: {}",
        text(&out)
    );
    assert!(text(&out).contains("disk/0"), "{}", text(&out));
    net.start_agent(&cfg, 3, &dir.path().join("agent3-restarted.log"));
    assert!(
        !staging.exists(),
        "the restarted agent kept the dead one's staging export"
    );
    assert!(snapshot_of(&export_dir(&node3).join("inst1.example.com")) == before);

    // The sending agent killed mid-transfer: neither end failed on its own side, so the export
    // fails naming the broken stream and what each end saw (the target: its kernel reset the
    // stream), not as a refusal; the master removes the staging export.
    let master = net.spawn_master(&args);
    let started = wait_for(20, || find_named(&staging, "").iter().any(|p| p.is_file()));
    net.kill_agent(0);
    assert!(started, "the transfer never started");
    let out = master.wait_with_output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "the export succeeded without its primary: {t}");
    assert!(
        t.contains("disk/0") && t.contains("to node node3.example.com broke") && t.contains("node node3.example.com: "),
        "{t}"
    );
    assert!(
        !t.contains("refused the stream"),
        "a broken stream reported as a refusal: {t}"
    );
    assert!(!staging.exists(), "staging left behind");
    assert!(snapshot_of(&export_dir(&node3).join("inst1.example.com")) == before);
}

/// A hook that runs long on an agent's node is reported while the master waits for it (the
/// master says so every `hooks_report_interval`, as the local path does per script).
#[test]
fn a_long_hook_on_an_agent_is_reported_while_the_master_waits() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("h", 48).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    add_cluster_keys(&cfg, "hooks_report_interval = 0.5");
    let roots = node_roots(dir.path(), 3);
    hook(&roots[1], "instance-export-pre.d", "20-slow", "sleep 2");
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    net.start_agents(&cfg, dir.path(), &[]);
    let out = net.master(&export_args(s(&cfg)));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("Hooks instance-export-pre.d on node2.example.com still running after"),
        "the wait for node2's hooks is not reported: {t}"
    );
}

/// An agent acts on its own copy of the cluster config. A master whose copy says something
/// else (here: the instance's first disk is another file) is refused before anything runs,
/// naming both digests and the fix; before, the agent exported the disk of its own copy, and
/// `--remove-instance` deleted what its copy named. `list` (which only reads the export
/// directories) still answers.
#[test]
fn an_agent_refuses_a_master_whose_config_says_something_else() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("cd", 70).expect("namespaces");
    let (cfg, _local, disks) = cluster(dir.path(), &net);
    let _inst = InstanceGuard::new(&cfg, "inst1.example.com", true);
    net.start_agents(&cfg, dir.path(), &[]);
    // The master's copy beside the agents' one (same PKI, same relative paths).
    let other = dir.path().join("other.img");
    make_disk(&other, 24 << 20, Data::Mixed, 99);
    let master_cfg = dir.path().join("master.toml");
    let body = std::fs::read_to_string(&cfg).unwrap();
    let from = format!("path = {:?}", disks[0].display().to_string());
    assert!(body.contains(&from));
    std::fs::write(&master_cfg, body.replacen(&from, &format!("path = {:?}", s(&other)), 1)).unwrap();
    std::fs::set_permissions(&master_cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pki = dir.path().join("pki");
    assert!(pki.is_dir(), "the PKI is shared through the config's directory");
    let before: Vec<Vec<u8>> = disks
        .iter()
        .chain([&other])
        .map(|d| std::fs::read(d).unwrap())
        .collect();
    let mut args = export_args(s(&master_cfg));
    args.push("--remove-instance");
    args.push("--shutdown-timeout");
    args.push("0");
    let out = net.master(&args);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("runs with a cluster config that says something else than the master's")
            && t.contains("copy the master's config to every node and restart their agents"),
        "{t}"
    );
    let after: Vec<Vec<u8>> = disks
        .iter()
        .chain([&other])
        .map(|d| std::fs::read(d).unwrap())
        .collect();
    assert!(before == after, "a disk was changed or removed");
    assert!(
        !export_dir(&node_roots(dir.path(), 3)[2])
            .join("inst1.example.com")
            .exists(),
        "an export was made"
    );
    assert!(find_named(dir.path(), ".new").is_empty(), "staging left");
    assert!(std::fs::read_to_string(&master_cfg)
        .unwrap()
        .contains("inst1.example.com"));
    // Reading the export directories is still answered.
    let out = net.master(&["list", "--cluster", s(&master_cfg)]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A second agent started for a node whose agent runs cannot take its port, and deletes
/// nothing: it swept the staging exports (which the running agent may be writing) before it
/// tried to bind. The running agent's restart still sweeps them (nothing can finish them then).
#[test]
fn a_second_agent_of_a_node_leaves_the_running_ones_staging_alone() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("dup", 71).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    net.start_agents(&cfg, dir.path(), &[]);
    let staging = export_dir(&node_roots(dir.path(), 3)[2]).join("inst1.example.com.new");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("disk0.partial"), b"being written").unwrap();
    let log = dir.path().join("agent3-again.log");
    net.start_agent(&cfg, 3, &log);
    assert!(
        wait_for(20, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("in use")),
        "the second agent did not fail on the port: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        staging.join("disk0.partial").exists(),
        "the second agent deleted the staging export"
    );
    // The running agent's restart sweeps it.
    net.kill_agent(1);
    net.start_agent(&cfg, 3, &dir.path().join("agent3-restarted.log"));
    assert!(
        wait_for(20, || !staging.exists()),
        "a restarted agent kept a staging export"
    );
}

/// Between agents a disk is paced a chunk at a time, and a receiver that sees no byte for its
/// inactivity timeout fails the stream: a `--bwlimit` that gives a disk less than 64 KiB/s is
/// refused before anything runs (it failed as "stalled" after 30 s, the master later still).
#[test]
fn a_bwlimit_too_slow_for_the_agents_is_refused_up_front() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let net = Net::new("bw", 72).expect("namespaces");
    let (cfg, _local, disks) = cluster(dir.path(), &net);
    let before = std::fs::read(&disks[0]).unwrap();
    // Two disks at once share 100K (100 000 bytes/s): 50 000 each.
    let mut args = export_args(s(&cfg));
    args.extend(["--bwlimit", "100K", "--max-parallel-disks", "2"]);
    let out = net.master(&args);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(4), "{t}");
    assert!(
        t.contains("--bwlimit 100000 gives each of the 2 disk(s) moving at once 50000 bytes/s")
            && t.contains("at least 65536 bytes/s"),
        "{t}"
    );
    assert_eq!(std::fs::read(&disks[0]).unwrap(), before);
    // One at a time, each gets all 100K: not refused for its rate (no agent runs: it fails
    // later, reaching them).
    let mut args = export_args(s(&cfg));
    args.extend(["--bwlimit", "100K"]);
    let t = text(&net.master(&args));
    assert!(!t.contains("bytes/s; between node agents"), "{t}");
}

/// `remove` with a node whose agent does not answer warns of it (Ganeti's "Failed to query
/// node ... (continuing)") in its log and its JSON `warnings`: it skipped the node silently.
#[test]
fn remove_warns_of_a_node_it_could_not_ask() {
    if !usable() {
        return;
    }
    let dir = scratch();
    let mut net = Net::new("rm", 73).expect("namespaces");
    let (cfg, _local, _disks) = cluster(dir.path(), &net);
    net.start_agents(&cfg, dir.path(), &[]);
    net.kill_agent(1);
    let out = net.master(&["remove", "--cluster", s(&cfg), "--json", "inst1.example.com"]);
    let t = text(&out);
    assert!(out.status.success(), "Ganeti's remove succeeds: {t}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let warnings = v["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("Failed to query node node3.example.com (continuing)")),
        "{v}"
    );
}
