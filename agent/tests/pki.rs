//! The PKI directory against its own failure modes and against other local users: two `init`s
//! at once, runs killed between two renames (a key that is not its certificate's), leftover
//! temporary files, a directory or certificate others could have replaced, and a node's own
//! certificate that no peer would accept (expired, from another CA, naming another node).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use diskstream_agent::pki::{PkiDir, PkiError};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};

const MASTER: &str = "node1.example.com";
const NODE2: &str = "node2.example.com";

fn pki_in(dir: &Path) -> PkiDir {
    pki_of("test.example.com", dir)
}

fn pki_of(cluster: &str, dir: &Path) -> PkiDir {
    std::fs::create_dir_all(dir).expect("mkdir");
    let pki = PkiDir::new(dir.join("pki"));
    pki.init(cluster, &[MASTER, NODE2], false).expect("init PKI");
    pki
}

fn temps_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn of_many_inits_at_once_exactly_one_makes_the_ca_and_its_key_matches() {
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = PkiDir::new(dir.path().join("pki"));
        let results: Vec<Result<(), PkiError>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..6)
                .map(|_| s.spawn(|| pki.init("test.example.com", &[MASTER, NODE2], false)))
                .collect();
            runs.into_iter().map(|r| r.join().expect("thread")).collect()
        });
        let made = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(made, 1, "round {round}: {results:?}");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(e, PkiError::Exists(..)), "round {round}: {e}");
        }
        // The CA key signs for the CA certificate: issuing works, and both nodes verify.
        pki.issue(NODE2).expect("issue with the CA that won");
        for n in [MASTER, NODE2] {
            pki.load_checked(n)
                .unwrap_or_else(|e| panic!("round {round}: {n}: {e}"));
        }
        assert!(temps_in(pki.root()).is_empty(), "{:?}", temps_in(pki.root()));
    }
}

#[test]
fn a_ca_key_that_is_not_the_ca_certificates_is_refused_before_anything_is_issued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki_in(dir.path());
    let other = pki_in(&dir.path().join("other"));
    // What a kill between the two renames of `init --force` leaves: the new key, the old
    // certificate, and (from a run before the temporary files were swept) a stray temporary.
    std::fs::copy(other.ca_key(), pki.ca_key()).expect("cp");
    let stray = pki.root().join("ca.crt.tmp-4242");
    std::fs::write(&stray, "half a certificate").expect("stray");
    let node2 = std::fs::read(pki.node_cert(NODE2)).expect("node2.crt");
    let e = pki.issue(NODE2).expect_err("mismatched CA pair").to_string();
    assert!(
        e.contains(&pki.ca_key().display().to_string())
            && e.contains(&format!("is not the key of {}", pki.ca_cert().display()))
            && e.contains("diskstream pki init --force"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(pki.node_cert(NODE2)).expect("node2.crt"),
        node2,
        "nothing issued"
    );
    assert!(!stray.exists(), "the stray temporary was swept under the lock");
    // init --force makes a whole new pair again.
    pki.init("test.example.com", &[MASTER, NODE2], true).expect("force");
    pki.load_checked(NODE2).expect("node2 after --force");
}

#[test]
fn a_node_key_that_is_not_its_certificates_is_named_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki_in(dir.path());
    std::fs::copy(pki.node_key(NODE2), pki.node_key(MASTER)).expect("cp");
    let e = pki.load_checked(MASTER).expect_err("mismatched node pair").to_string();
    assert!(
        e.contains(&pki.node_key(MASTER).display().to_string())
            && e.contains(&format!("is not the key of {}", pki.node_cert(MASTER).display()))
            && e.contains("diskstream pki issue node1.example.com"),
        "{e}"
    );
    pki.issue(MASTER).expect("issue again");
    pki.load_checked(MASTER).expect("a matching pair again");
}

#[test]
fn a_directory_or_certificate_others_could_replace_is_refused_when_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki_in(dir.path());
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
    set(pki.root(), 0o777);
    for (what, e) in [
        ("ca", pki.load_ca().map(|_| ()).expect_err("777 root")),
        ("identity", pki.load_identity(NODE2).map(|_| ()).expect_err("777 root")),
        ("issue", pki.issue(NODE2).expect_err("777 root")),
    ] {
        let e = e.to_string();
        assert!(
            e.contains("mode 777") && e.contains("refusing to use it"),
            "{what}: {e}"
        );
    }
    set(pki.root(), 0o700);
    set(&pki.root().join("nodes"), 0o775);
    let e = pki
        .load_identity(NODE2)
        .map(|_| ())
        .expect_err("775 nodes/")
        .to_string();
    assert!(e.contains("nodes") && e.contains("mode 775"), "{e}");
    set(&pki.root().join("nodes"), 0o700);
    set(&pki.ca_cert(), 0o666);
    let e = pki.load_ca().map(|_| ()).expect_err("666 ca.crt").to_string();
    assert!(
        e.contains("ca.crt") && e.contains("writable by group or others (mode 0666)"),
        "{e}"
    );
    set(&pki.ca_cert(), 0o644);
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(pki.ca_cert(), Some(65534), None).expect("chown");
        let e = pki.load_ca().map(|_| ()).expect_err("ca.crt of nobody").to_string();
        assert!(e.contains("ca.crt") && e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(pki.ca_cert(), Some(0), None).expect("chown");
    }
    // A FIFO in the certificate's place is refused, not waited on.
    std::fs::remove_file(pki.ca_cert()).expect("rm");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        pki.ca_cert(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let e = pki.load_ca().map(|_| ()).expect_err("fifo ca.crt").to_string();
    assert!(e.contains("not a PEM file"), "{e}");
    // A PKI path that is a file, or a link to nothing, is said as such.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").expect("file");
    let e = PkiDir::new(&file)
        .load_ca()
        .map(|_| ())
        .expect_err("a file")
        .to_string();
    assert!(e.contains("is not a directory"), "{e}");
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
    let e = PkiDir::new(&dangling)
        .load_ca()
        .map(|_| ())
        .expect_err("dangling")
        .to_string();
    assert!(e.contains("symbolic link to nothing"), "{e}");
}

/// Signs a certificate for `node` with the PKI's CA key (what an operator's openssl would make).
fn sign(pki: &PkiDir, node: &str, days: (i64, i64)) -> (String, String) {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.ca_key()).expect("ca.key")).expect("ca key");
    let issuer =
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.ca_cert()).expect("ca.crt"), ca_key).expect("issuer");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec![node.to_string()]).expect("params");
    p.distinguished_name.push(DnType::CommonName, node);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(days.0);
    p.not_after = now + time::Duration::days(days.1);
    let cert = p.signed_by(&key, &issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn install(pki: &PkiDir, node: &str, (cert, key): (String, String)) {
    std::fs::write(pki.node_cert(node), cert).expect("crt");
    std::fs::write(pki.node_key(node), key).expect("key");
}

#[test]
fn a_node_certificate_no_peer_would_accept_is_refused_at_load_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki_in(dir.path());
    let other = pki_of("other.example.com", &dir.path().join("other"));
    let check = |what: &str, want: &str| {
        let e = pki.load_checked(NODE2).map(|_| ()).expect_err(what).to_string();
        assert!(
            e.contains(&pki.node_cert(NODE2).display().to_string())
                && e.contains(want)
                && e.contains("diskstream pki issue node2.example.com"),
            "{what}: {e}"
        );
    };
    install(&pki, NODE2, sign(&pki, NODE2, (-400, -30)));
    check("expired", "expired");
    install(&pki, NODE2, sign(&pki, NODE2, (30, 400)));
    check("not yet valid", "not valid yet");
    install(&pki, NODE2, sign(&other, NODE2, (-1, 400)));
    check("another CA", "UnknownIssuer");
    // Another CA of the same name: the signature gives it away.
    let same_name = pki_in(&dir.path().join("same-name"));
    install(&pki, NODE2, sign(&same_name, NODE2, (-1, 400)));
    check("another CA of the same name", "BadSignature");
    install(&pki, NODE2, sign(&pki, MASTER, (-1, 400)));
    check("another node", "not valid for name");
    pki.issue(NODE2).expect("issue again");
    pki.load_checked(NODE2).expect("valid again");
}
