//! The cluster PKI and mutual TLS over real sockets: who may connect, who is refused, and that
//! the key files stay private. Every refusal happens in the handshake or right after it, before
//! the server hands a byte of payload back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use diskstream_agent::pki::{Identity, PkiDir, PkiError};
use diskstream_agent::tls::{self, TlsError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const MASTER: &str = "node1.example.com";
const NODE2: &str = "node2.example.com";
const NODE3: &str = "node3.example.com";
const T: Duration = Duration::from_secs(5);

struct Cluster {
    _dir: tempfile::TempDir,
    pki: PkiDir,
}

fn cluster(name: &str) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = PkiDir::new(dir.path().join("pki"));
    pki.init(name, &[MASTER, NODE2, NODE3], false).expect("init PKI");
    Cluster { _dir: dir, pki }
}

/// What the server saw of one connection: the authorized peer, or why it refused.
type Served = Result<String, TlsError>;

/// Serves one connection as `id`: handshake, authorize `allowed`, then echo one line.
fn serve_once(
    ca: &CertificateDer<'static>,
    id: &Identity,
    allowed: &'static [&'static str],
) -> (SocketAddr, JoinHandle<Served>) {
    let cfg = tls::server_config(ca, id).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let h = thread::spawn(move || {
        let (tcp, peer) = listener.accept().expect("accept");
        let mut s = tls::accept(&cfg, tcp, T)?;
        let who = tls::authorize(&s.conn, allowed, &peer.to_string())?;
        let mut line = String::new();
        BufReader::new(&mut s)
            .read_line(&mut line)
            .map_err(|source| TlsError::Handshake {
                peer: who.to_string(),
                source,
            })?;
        s.write_all(format!("{who} says {line}").as_bytes()).expect("echo");
        s.flush().expect("flush");
        s.conn.send_close_notify();
        let _ = s.conn.complete_io(&mut s.sock);
        Ok(who.to_string())
    });
    (addr, h)
}

/// Dials `addr` as `id`, expecting `node` there; sends a line and returns what came back.
fn ask(ca: &CertificateDer<'static>, id: &Identity, addr: SocketAddr, node: &str) -> Result<String, String> {
    let cfg = tls::client_config(ca, id).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let mut s = tls::connect(&cfg, tcp, node, T).map_err(|e| e.to_string())?;
    s.write_all(b"hello\n").map_err(|e| e.to_string())?;
    s.flush().map_err(|e| e.to_string())?;
    let mut back = String::new();
    s.read_to_string(&mut back).map_err(|e| e.to_string())?;
    if back.is_empty() {
        return Err("nothing came back".into());
    }
    Ok(back)
}

fn server_error(h: JoinHandle<Served>) -> String {
    match h.join().expect("server thread") {
        Ok(who) => panic!("the server accepted {who}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn master_commands_a_node_over_mutual_tls() {
    let c = cluster("test.example.com");
    let ca = c.pki.load_ca().expect("ca");
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    let back = ask(&ca, &c.pki.load_identity(MASTER).expect("master"), addr, NODE2).expect("talk");
    assert_eq!(back, format!("{MASTER} says hello\n"));
    assert_eq!(h.join().expect("thread").expect("served"), MASTER);
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let c = cluster("test.example.com");
    let other = cluster("evil.example.com");
    let ca = c.pki.load_ca().expect("ca");
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    // The impostor trusts our CA (it copied ca.crt) and presents a certificate for the master's
    // name, issued by its own CA.
    let impostor = other.pki.load_identity(MASTER).expect("impostor");
    let got = ask(&ca, &impostor, addr, NODE2);
    assert!(got.is_err(), "the impostor got an answer: {got:?}");
    let e = server_error(h);
    assert!(
        e.contains("UnknownIssuer") || e.contains("unknown issuer") || e.contains("BadSignature"),
        "{e}"
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let c = cluster("test.example.com");
    let other = cluster("evil.example.com");
    let other_ca = other.pki.load_ca().expect("ca");
    let (addr, h) = serve_once(
        &other_ca,
        &other.pki.load_identity(NODE2).expect("fake node2"),
        &[MASTER],
    );
    let e = ask(
        &c.pki.load_ca().expect("ca"),
        &c.pki.load_identity(MASTER).expect("master"),
        addr,
        NODE2,
    )
    .expect_err("talked to a server of another CA");
    assert!(e.contains("UnknownIssuer") || e.contains("unknown issuer"), "{e}");
    assert!(e.contains(NODE2), "the error names the node dialled: {e}");
    let _ = h.join();
}

#[test]
fn a_server_with_another_nodes_name_is_refused() {
    let c = cluster("test.example.com");
    let ca = c.pki.load_ca().expect("ca");
    // node2 answers at the address the master believes is node3's.
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    let e = ask(&ca, &c.pki.load_identity(MASTER).expect("master"), addr, NODE3).expect_err("wrong node accepted");
    assert!(e.contains("NotValidForName") || e.contains("not valid for name"), "{e}");
    let _ = h.join();
}

#[test]
fn a_node_that_is_not_the_master_cannot_command() {
    let c = cluster("test.example.com");
    let ca = c.pki.load_ca().expect("ca");
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    let got = ask(&ca, &c.pki.load_identity(NODE3).expect("node3"), addr, NODE2);
    assert!(got.is_err(), "node3 got an answer: {got:?}");
    let e = server_error(h);
    assert!(e.contains("is not allowed here") && e.contains(MASTER), "{e}");
}

#[test]
fn plaintext_is_refused() {
    let c = cluster("test.example.com");
    let ca = c.pki.load_ca().expect("ca");
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(T)).expect("timeout");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: node2\r\n\r\nhello\n")
        .expect("write");
    let mut back = Vec::new();
    let _ = tcp.read_to_end(&mut back);
    assert!(
        !String::from_utf8_lossy(&back).contains("hello"),
        "plaintext was served: {back:?}"
    );
    let e = server_error(h);
    assert!(e.contains("TLS handshake with 127.0.0.1"), "{e}");
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let c = cluster("test.example.com");
    let ca = c.pki.load_ca().expect("ca");
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).expect("connect");
    let got = tls::connect(&Arc::new(cfg), tcp, NODE2, T).map(|mut s| {
        let _ = s.write_all(b"hello\n");
        let mut back = String::new();
        let _ = s.read_to_string(&mut back);
        back
    });
    assert!(
        !matches!(&got, Ok(b) if !b.is_empty()),
        "served without a certificate: {got:?}"
    );
    let e = server_error(h);
    assert!(
        e.contains("NoCertificatesPresented") || e.contains("no certificates"),
        "{e}"
    );
}

#[test]
fn an_expired_node_certificate_is_refused() {
    let c = cluster("test.example.com");
    let ca = c.pki.load_ca().expect("ca");
    // Issue, with the cluster's own CA, a master certificate that expired yesterday.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(c.pki.ca_key()).expect("ca.key")).expect("key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(c.pki.ca_cert()).expect("ca.crt"), ca_key)
        .expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![MASTER.to_string()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let expired = Identity {
        node: MASTER.to_string(),
        cert: cert.der().clone(),
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key der"),
    };
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    let got = ask(&ca, &expired, addr, NODE2);
    assert!(got.is_err(), "an expired certificate got an answer: {got:?}");
    let e = server_error(h);
    assert!(e.contains("Expired") || e.contains("expired"), "{e}");
}

#[test]
fn a_silent_client_times_out_in_the_handshake() {
    let c = cluster("test.example.com");
    let ca = c.pki.load_ca().expect("ca");
    let cfg = tls::server_config(&ca, &c.pki.load_identity(NODE2).expect("node2")).expect("cfg");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let _silent = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (tcp, _) = listener.accept().expect("accept");
    let t0 = Instant::now();
    let e = tls::accept(&cfg, tcp, Duration::from_millis(300)).expect_err("handshake with a silent peer");
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    assert!(e.to_string().contains("TLS handshake with 127.0.0.1"), "{e}");
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn keys_are_private_and_an_existing_ca_is_never_replaced_silently() {
    let c = cluster("test.example.com");
    assert_eq!(mode(c.pki.root()), 0o700);
    assert_eq!(mode(&c.pki.root().join("nodes")), 0o700);
    assert_eq!(mode(&c.pki.ca_key()), 0o600);
    assert_eq!(mode(&c.pki.ca_cert()), 0o644);
    for n in [MASTER, NODE2, NODE3] {
        assert_eq!(mode(&c.pki.node_key(n)), 0o600, "{n}");
        assert_eq!(mode(&c.pki.node_cert(n)), 0o644, "{n}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(c.pki.root().join("nodes"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let before = std::fs::read(c.pki.ca_key()).expect("ca.key");
    let e = c
        .pki
        .init("test.example.com", &[MASTER], false)
        .expect_err("second init");
    assert!(matches!(e, PkiError::Exists(..)), "{e}");
    assert!(
        e.to_string().contains("ca.key already exists") && e.to_string().contains("--force"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(c.pki.ca_key()).expect("ca.key"),
        before,
        "the CA key was touched"
    );

    // --force: a new CA; the re-issued master verifies, node3 (not re-issued) no longer does.
    let old_ca = c.pki.load_ca().expect("ca");
    c.pki
        .init("test.example.com", &[MASTER, NODE2], true)
        .expect("forced init");
    let ca = c.pki.load_ca().expect("new ca");
    assert_ne!(ca, old_ca);
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER, NODE3]);
    let got = ask(&ca, &c.pki.load_identity(NODE3).expect("node3"), addr, NODE2);
    assert!(got.is_err(), "a certificate of the replaced CA still works: {got:?}");
    let _ = h.join();
    let (addr, h) = serve_once(&ca, &c.pki.load_identity(NODE2).expect("node2"), &[MASTER]);
    ask(&ca, &c.pki.load_identity(MASTER).expect("master"), addr, NODE2).expect("re-issued master");
    h.join().expect("thread").expect("served");
}

#[test]
fn hostile_pki_files_and_names_are_refused_with_the_path() {
    let c = cluster("test.example.com");
    // A key that others can read.
    std::fs::set_permissions(c.pki.node_key(NODE2), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = c.pki.load_identity(NODE2).expect_err("world-readable key").to_string();
    assert!(
        e.contains("node2.example.com.key") && e.contains("mode 0644") && e.contains("chmod 600"),
        "{e}"
    );
    // A certificate that is an endless device, or huge, or not PEM.
    std::fs::remove_file(c.pki.ca_cert()).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", c.pki.ca_cert()).expect("symlink");
    let e = c.pki.load_ca().expect_err("/dev/zero as ca.crt").to_string();
    assert!(e.contains("ca.crt") && e.contains("not a PEM file"), "{e}");
    std::fs::remove_file(c.pki.ca_cert()).expect("rm");
    std::fs::write(c.pki.ca_cert(), vec![b'A'; 1 << 20]).expect("write");
    let e = c.pki.load_ca().expect_err("1 MiB ca.crt").to_string();
    assert!(e.contains("not a PEM file"), "{e}");
    std::fs::write(c.pki.ca_cert(), b"hello").expect("write");
    let e = c.pki.load_ca().expect_err("garbage ca.crt").to_string();
    assert!(e.contains("ca.crt") && e.contains("no PEM certificate"), "{e}");
    // Names that cannot be a certificate's DNS name, or would escape the nodes/ directory.
    for bad in ["", "../x", "a/b", "a b", "10.0.0.1", ".hidden", "node\n1"] {
        let e = c.pki.issue(bad).expect_err(bad);
        assert!(matches!(e, PkiError::BadName(_)), "{bad:?}: {e}");
    }
    let e = c
        .pki
        .load_identity("nodeX.example.com")
        .expect_err("no such node")
        .to_string();
    assert!(e.contains("nodeX.example.com.crt"), "{e}");
}
