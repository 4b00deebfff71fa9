//! Tests of the data port's admission against floods (idle and trickling connections, many
//! source addresses), of its refusal log and of the sender's dialing, over real sockets with a
//! real cluster PKI.

use super::admit::{Admitting, Refusals, MAX_ADMITTING, MAX_PER_SOURCE};
use super::*;
use crate::pki::PkiDir;
use diskstream_orchestrator::node::DiskSource;
use rustls::ClientConfig;

/// A real PKI: the target node3's server config, the primary node1's client config.
fn pki(dir: &Path) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let p = PkiDir::new(dir.join("pki"));
    p.init("dp", &["node1", "node3"], false).unwrap();
    let ca = p.load_ca().unwrap();
    let server = tls::server_config(&ca, &p.load_identity("node3").unwrap()).unwrap();
    let client = tls::client_config(&ca, &p.load_identity("node1").unwrap()).unwrap();
    (server, client)
}

fn req() -> SendDisk {
    SendDisk {
        source_node: "node1".into(),
        instance: "inst1".into(),
        disk: 0,
        source: DiskSource::Disk,
        target_node: "node3".into(),
        dump: "dump0".into(),
        pages: Default::default(),
        checksum: Default::default(),
        lz4: false,
        lz4_auto: false,
        bwlimit: None,
    }
}

/// A plain TCP connection to `port` on 127.0.0.1 from the source address `from`.
fn tcp_from(from: [u8; 4], port: u16) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
    s.into()
}

/// Opens a data port, lets `flood` loose on it, then dials it as the primary with `dial` and
/// sends the token and a payload; asserts that the port admits the primary's stream (the
/// payload read back from it) well within the connect timeout.
fn primary_gets_through(flood: impl FnOnce(u16) -> Vec<TcpStream>) {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(dir.path());
    let (rx, opened) = Receiver::open(IpAddr::from([127, 0, 0, 1]), 1).unwrap();
    let t = Timeouts {
        connect: Duration::from_secs(10),
        open: Duration::from_secs(20),
        ..Timeouts::default()
    };
    let req = req();
    std::thread::scope(|sc| {
        let port = sc.spawn(|| {
            let mut s = rx.admit_all(&server, &req, t, "the test stream", &|| false)?.remove(0);
            let mut payload = [0u8; 7];
            s.read_exact(&mut payload).map_err(|e| e.to_string())?;
            Ok::<_, String>(payload)
        });
        let held = flood(opened.port);
        // The port accepts every 20 ms: the flood holds its slots before the primary comes.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], opened.port));
        let mut s =
            dial(&client, addr, "node3", Duration::from_secs(5), "the test stream").expect("the primary's handshake");
        s.write_all(&data_hello(&opened.token)).unwrap();
        s.write_all(b"payload").unwrap();
        s.flush().unwrap();
        let got = port.join().unwrap();
        assert_eq!(
            got.as_ref().map(|p| &p[..]),
            Ok(&b"payload"[..]),
            "the primary's stream"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "admitted after {:?}",
            t0.elapsed()
        );
        drop(held);
    });
}

#[test]
fn idle_and_trickling_connections_do_not_keep_the_primary_out() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = |port: u16| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && c.write_all(b"\x16").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut trickling = None;
    primary_gets_through(|port| {
        // Twice the slots, idle, from the primary's own address; and one trickling.
        let idle = (0..2 * MAX_ADMITTING).map(|_| tcp_from([127, 0, 0, 1], port)).collect();
        trickling = Some(trickler(port));
        idle
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickling.unwrap().join().unwrap();
}

#[test]
fn idle_connections_from_many_addresses_do_not_keep_the_primary_out() {
    primary_gets_through(|port| {
        (0..3 * MAX_ADMITTING as u8)
            .map(|i| tcp_from([127, 0, 1, 1 + i], port))
            .collect()
    });
}

#[test]
fn an_address_holding_its_share_evicts_only_its_own() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conn = |from: [u8; 4]| {
        let _c = tcp_from(from, port);
        let (s, peer) = l.accept().unwrap();
        (peer, s)
    };
    let mut a = Admitting::default();
    let (primary, s) = conn([127, 0, 0, 1]);
    let (first, _) = a.take(primary, s);
    let mut evicted = Vec::new();
    for _ in 0..3 * MAX_ADMITTING {
        let (peer, s) = conn([127, 0, 2, 1]);
        evicted.extend(a.take(peer, s).1);
    }
    assert!(
        evicted.iter().all(|p| p.ip() == IpAddr::from([127, 0, 2, 1])),
        "{evicted:?}"
    );
    assert_eq!(a.len(), 1 + MAX_PER_SOURCE);
    // Full, with new connections from many addresses: the oldest of the address holding the
    // most goes (until every address holds one: then the oldest of all).
    for i in 0..(MAX_ADMITTING - 2) as u8 {
        let (peer, s) = conn([127, 0, 3, 1 + i]);
        if let Some(p) = a.take(peer, s).1 {
            assert_eq!(p.ip(), IpAddr::from([127, 0, 2, 1]), "evicted {p} for {peer}");
        }
    }
    assert_eq!(a.len(), MAX_ADMITTING);
    assert!(a.release(first), "the primary's slot was kept");
    a.evict_all();
    assert_eq!(a.len(), 0);
}

#[test]
fn refusals_are_logged_once_a_second_with_a_count() {
    let mut r = Refusals::default();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let first = r.refused(at(0), "10.0.0.9:1: TLS handshake with 10.0.0.9:1: timed out".into());
    assert_eq!(
        first.as_deref(),
        Some("refused 10.0.0.9:1: TLS handshake with 10.0.0.9:1: timed out")
    );
    // 250 a second for 3 s: about one line a second.
    let mut lines = vec![];
    for i in 1..750 {
        lines.extend(r.refused(at(i * 4), format!("10.0.0.9:{i}: reset")));
        lines.extend(r.due(Some(at(i * 4))));
    }
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0], "refused 10.0.0.9:250: reset (and 249 more in the last 1.0 s)");
    assert_eq!(lines[1], "refused 10.0.0.9:500: reset (and 249 more in the last 1.0 s)");
    assert_eq!(r.due(Some(at(2999))), None, "not due yet");
    assert_eq!(
        r.due(Some(at(3000))).as_deref(),
        Some("refused 249 more connections in the last 1.0 s (the last: 10.0.0.9:749: reset)")
    );
    assert_eq!(r.due(None), None, "nothing held back");
}

#[test]
fn a_handshake_that_times_out_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(dir.path());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _idle = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (tcp, _) = l.accept().unwrap();
    let e = tls::accept(&server, tcp, Duration::from_millis(300))
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().ends_with(": timed out after 0.3 s"), "{e}");
}

#[test]
fn a_receive_whose_export_is_gone_stops_waiting_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(dir.path());
    let (rx, _opened) = Receiver::open(IpAddr::from([127, 0, 0, 1]), 1).unwrap();
    let t = Timeouts {
        open: Duration::from_secs(60),
        ..Timeouts::default()
    };
    let t0 = Instant::now();
    let gone = || t0.elapsed() > Duration::from_millis(200);
    let e = rx
        .admit_all(&server, &req(), t, "the test stream", &gone)
        .expect_err("no stream came");
    let took = t0.elapsed();
    assert!(e.contains("finalized or abandoned"), "{e}");
    assert!(
        took < Duration::from_secs(2),
        "it waited {took:?} of the 60 s open timeout"
    );
}

#[test]
fn a_striped_stream_is_admitted_lane_by_lane_whatever_order_they_come_in() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(dir.path());
    let (rx, opened) = Receiver::open(IpAddr::from([127, 0, 0, 1]), 3).unwrap();
    assert_eq!(opened.lanes, 3);
    let t = Timeouts {
        open: Duration::from_secs(20),
        ..Timeouts::default()
    };
    let req = req();
    let addr = SocketAddr::from(([127, 0, 0, 1], opened.port));
    let connect = |hello: &[u8], payload: &[u8]| {
        let mut s = dial(&client, addr, "node3", Duration::from_secs(5), "the test stream").unwrap();
        s.write_all(hello).unwrap();
        s.write_all(payload).unwrap();
        s.flush().unwrap();
        s
    };
    let tok = &opened.token;
    std::thread::scope(|sc| {
        let port = sc.spawn(|| rx.admit_all(&server, &req, t, "the test stream", &|| false));
        let mut held = Vec::new();
        // Not this stream's: a lane of another count, a lane past the count, another token.
        for bad in [
            crate::proto::lane_hello(tok, 0, 4),
            crate::proto::lane_hello(tok, 3, 3),
            crate::proto::lane_hello(&"0".repeat(64), 1, 3),
        ] {
            held.push(connect(&bad, b"bad"));
        }
        held.push(connect(&crate::proto::lane_hello(tok, 2, 3), b"lane2"));
        held.push(connect(&crate::proto::lane_hello(tok, 0, 3), b"lane0"));
        std::thread::sleep(Duration::from_millis(300));
        // A second lane 0 is refused, and so is a whole stream on one connection once lanes
        // came; the first lane 0 keeps its place.
        held.push(connect(&crate::proto::lane_hello(tok, 0, 3), b"again"));
        held.push(connect(&data_hello(tok), b"whole"));
        std::thread::sleep(Duration::from_millis(300));
        held.push(connect(&crate::proto::lane_hello(tok, 1, 3), b"lane1"));
        let mut lanes = port.join().unwrap().expect("all three lanes");
        let got: Vec<String> = lanes
            .iter_mut()
            .map(|s| {
                let mut p = [0u8; 5];
                s.read_exact(&mut p).unwrap();
                String::from_utf8_lossy(&p).into_owned()
            })
            .collect();
        assert_eq!(got, ["lane0", "lane1", "lane2"]);
        drop(held);
    });
}

#[test]
fn the_primary_dials_again_when_the_port_closes_its_connection_mid_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(dir.path());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let port = std::thread::spawn(move || {
        // The first two connections are closed once their ClientHello arrived (as an eviction
        // does), the third is served.
        for _ in 0..2 {
            let (mut tcp, _) = l.accept().unwrap();
            let mut hello = [0u8; 5];
            tcp.read_exact(&mut hello).unwrap();
            assert_eq!(hello[0], 0x16, "a TLS handshake record");
            tcp.shutdown(std::net::Shutdown::Both).unwrap();
        }
        let (tcp, _) = l.accept().unwrap();
        let mut s = tls::accept(&server, tcp, Duration::from_secs(5)).unwrap();
        let mut got = [0u8; 2];
        s.read_exact(&mut got).unwrap();
        got
    });
    let t0 = Instant::now();
    let mut s = dial(&client, addr, "node3", Duration::from_secs(5), "the test stream").expect("dialed again");
    s.write_all(b"ok").unwrap();
    s.flush().unwrap();
    assert_eq!(&port.join().unwrap(), b"ok");
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());

    // A port that keeps closing connections: the dial gives up at its timeout and says how
    // often it tried; a refused connect (no port) is not retried.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let closer = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            if let Ok((tcp, _)) = l.accept() {
                let _ = tcp.shutdown(std::net::Shutdown::Both);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let e = dial(&client, addr, "node3", Duration::from_millis(600), "the test stream")
        .map(|_| ())
        .unwrap_err();
    assert!(e.starts_with("the test stream: ") && e.contains(" tries)"), "{e}");
    closer.join().unwrap();
    let e = dial(&client, addr, "node3", Duration::from_secs(5), "the test stream")
        .map(|_| ())
        .unwrap_err();
    assert!(e.contains("connect for the test stream") && !e.contains("tries"), "{e}");
}

#[test]
fn a_port_that_opened_lanes_takes_a_whole_stream_on_one_connection() {
    // A primary or master from before lanes sends `DSDATA1` and one stream.
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(dir.path());
    let (rx, opened) = Receiver::open(IpAddr::from([127, 0, 0, 1]), 3).unwrap();
    let req = req();
    let addr = SocketAddr::from(([127, 0, 0, 1], opened.port));
    std::thread::scope(|sc| {
        let port = sc.spawn(|| rx.admit_all(&server, &req, Timeouts::default(), "the test stream", &|| false));
        let mut s = dial(&client, addr, "node3", Duration::from_secs(5), "the test stream").unwrap();
        s.write_all(&data_hello(&opened.token)).unwrap();
        s.write_all(b"whole").unwrap();
        s.flush().unwrap();
        let mut got = port.join().unwrap().expect("the whole stream");
        assert_eq!(got.len(), 1, "one connection");
        let mut p = [0u8; 5];
        got[0].read_exact(&mut p).unwrap();
        assert_eq!(&p, b"whole");
    });
}

#[test]
fn a_sender_whose_target_froze_fails_within_its_inactivity_timeout() {
    // The target completes the handshake, then reads nothing (a stopped process). rustls's
    // write swallows a blocked write's error and its I/O follows a blocked write with a read, so
    // per-call socket timeouts added up to many times the inactivity timeout; the socket's idle
    // clock (`tls::Sock::set_idle`) bounds them all.
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(dir.path());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (frozen, thawed) = mpsc::channel::<()>();
    let target = std::thread::spawn(move || {
        let (tcp, _) = l.accept().unwrap();
        let s = tls::accept(&server, tcp, Duration::from_secs(5)).unwrap();
        let _ = thawed.recv(); // until the sender gave up
        drop(s);
    });
    let mut s = dial(&client, addr, "node3", Duration::from_secs(5), "the test stream").unwrap();
    let idle = Duration::from_secs(1);
    arm(&mut s.sock, idle).unwrap();
    let mut out = Counted {
        inner: &mut s,
        what: "sending the test stream".into(),
        bytes: 0,
        idle,
        flip: None,
    };
    let chunk = vec![7u8; 1 << 20];
    let t0 = Instant::now();
    let e = loop {
        if let Err(e) = out.write_all(&chunk) {
            break e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still writing to a frozen target"
        );
    };
    let took = t0.elapsed();
    drop(frozen);
    target.join().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(
        e.to_string()
            .starts_with("stalled: no progress sending the test stream for 1 s"),
        "{e}"
    );
    assert!(
        took < Duration::from_secs(4),
        "failed after {took:?} with a 1 s inactivity timeout"
    );
}
