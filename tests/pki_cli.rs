//! `diskstream pki init` and `pki issue` against a cluster config: files and modes, the refusal
//! to replace a CA without `--force`, an unknown node named in the error, and the `--json`
//! results naming the files written; a PKI directory others could write to (or that another
//! user owns) refused; the JSON `op` and `kind` of a refused command line and of a bad config;
//! inits at once; an agent whose own key or certificate no peer would accept refuses to start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn ds(args: &[&str], cluster: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .arg("--cluster")
        .arg(cluster)
        .output()
        .expect("run diskstream")
}

fn two_node_cluster(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("cluster.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nname = \"c.test\"\nmaster = \"node1.test\"\n\
         [[nodes]]\nname = \"node1.test\"\nuuid = \"u1\"\nroot = \"n1\"\n\
         [[nodes]]\nname = \"node2.test\"\nuuid = \"u2\"\nroot = \"n2\"\naddress = \"127.0.0.1:1811\"\n",
    )
    .unwrap();
    cfg
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_node_cluster(dir.path());
    let out = ds(&["pki", "init"], &cfg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pki = dir.path().join("pki");
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    for n in ["node1.test", "node2.test"] {
        assert!(pki.join(format!("nodes/{n}.crt")).is_file());
        assert_eq!(mode(&pki.join(format!("nodes/{n}.key"))), 0o600);
    }
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    let again = ds(&["pki", "init"], &cfg);
    assert_eq!(again.status.code(), Some(4), "refused, nothing changed: a prerequisite");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read(pki.join("ca.crt")).unwrap(),
        ca,
        "a refused init kept the CA"
    );
    // On a node (the CA's key kept only on the master, as the README says) a second init is
    // refused too: it replaced the CA certificate and every node's key without a word.
    let aside = dir.path().join("ca.key.master");
    std::fs::rename(pki.join("ca.key"), &aside).unwrap();
    let node_key = std::fs::read(pki.join("nodes/node1.test.key")).unwrap();
    let again = ds(&["pki", "init"], &cfg);
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{e}");
    assert!(
        e.contains(&format!("{} already exists", pki.join("ca.crt").display())),
        "{e}"
    );
    assert_eq!(std::fs::read(pki.join("ca.crt")).unwrap(), ca);
    assert_eq!(std::fs::read(pki.join("nodes/node1.test.key")).unwrap(), node_key);
    assert!(!pki.join("ca.key").exists(), "no new CA key");
    std::fs::rename(&aside, pki.join("ca.key")).unwrap();
    // A key another user owns is refused (that user can read it whatever its mode).
    if std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        std::os::unix::fs::chown(pki.join("ca.key"), Some(65534), None).unwrap();
        let r = ds(&["pki", "issue", "node2.test"], &cfg);
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{e}");
        assert!(e.contains("key is owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(pki.join("ca.key"), Some(0), None).unwrap();
    }
    let key_before = std::fs::read(pki.join("nodes/node2.test.key")).unwrap();
    let issued = ds(&["pki", "issue", "node2.test"], &cfg);
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let text = String::from_utf8_lossy(&issued.stdout);
    assert!(
        text.starts_with("renewed ") && text.contains("node2.test.key"),
        "{text}"
    );
    assert_ne!(std::fs::read(pki.join("nodes/node2.test.key")).unwrap(), key_before);
    // --json: one object naming the files, the key really renewed again.
    let key_before = std::fs::read(pki.join("nodes/node2.test.key")).unwrap();
    let issued = ds(&["pki", "issue", "node2.test", "--json"], &cfg);
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let v: serde_json::Value = serde_json::from_slice(&issued.stdout).expect("one JSON object");
    assert_eq!((v["ok"].clone(), v["op"].clone()), (true.into(), "pki".into()), "{v}");
    assert_eq!(v["cluster"], "c.test", "{v}");
    assert_eq!(v["ca_cert"], pki.join("ca.crt").to_str().unwrap(), "{v}");
    assert_eq!(v["ca"], "kept", "{v}");
    assert_eq!(v["nodes"][0]["node"], "node2.test", "{v}");
    assert_eq!(v["nodes"][0]["status"], "replaced", "{v}");
    let key = v["nodes"][0]["key"].as_str().expect("key path");
    assert_eq!(key, pki.join("nodes/node2.test.key").to_str().unwrap());
    assert_ne!(std::fs::read(key).unwrap(), key_before);
    assert_eq!(mode(Path::new(key)), 0o600);
    let unknown = ds(&["pki", "issue", "node9.test"], &cfg);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("node node9.test is not in the cluster config"));
    let unknown = ds(&["pki", "issue", "node9.test", "--json"], &cfg);
    assert!(!unknown.status.success());
    let v: serde_json::Value = serde_json::from_slice(&unknown.stdout).expect("the JSON failure");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(
        (v["op"].clone(), v["kind"].clone()),
        ("pki".into(), "config".into()),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("node node9.test is not in the cluster config"),
        "{v}"
    );
    let forced = ds(&["pki", "init", "--force", "--json"], &cfg);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_ne!(std::fs::read(pki.join("ca.crt")).unwrap(), ca);
    let v: serde_json::Value = serde_json::from_slice(&forced.stdout).expect("one JSON object");
    assert_eq!(v["ca"], "replaced", "{v}");
    let names: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node1.test", "node2.test"], "{v}");
    assert!(
        v["nodes"].as_array().unwrap().iter().all(|n| n["status"] == "replaced"),
        "{v}"
    );
}

/// A PKI directory (or its `nodes/`) that a group or other users could write to, or that another
/// user owns, is refused before anything is written in it: whoever can write there can replace
/// the CA certificate or a node's key.
#[test]
fn pki_dir_others_could_write_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_node_cluster(dir.path());
    let pki = dir.path().join("pki");
    let chmod = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    std::fs::create_dir_all(pki.join("nodes")).unwrap();
    for (root, nodes) in [(0o777, 0o700), (0o700, 0o777), (0o720, 0o700)] {
        chmod(&pki, root);
        chmod(&pki.join("nodes"), nodes);
        let out = ds(&["pki", "init", "--json"], &cfg);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "modes {root:o}/{nodes:o}: {err}");
        assert!(err.contains("others could replace its certificates"), "{err}");
        assert!(
            !pki.join("ca.key").exists(),
            "modes {root:o}/{nodes:o}: a CA was written"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON failure");
        assert_eq!((v["ok"].clone(), v["op"].clone()), (false.into(), "pki".into()), "{v}");
    }
    // Owned by another user, however private its mode.
    chmod(&pki, 0o700);
    chmod(&pki.join("nodes"), 0o700);
    std::os::unix::fs::chown(&pki, Some(65534), Some(65534)).unwrap();
    let out = ds(&["pki", "init"], &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("owned by uid 65534"), "{err}");
    assert!(!pki.join("ca.key").exists());
    // Made private and ours again, it is used.
    std::os::unix::fs::chown(&pki, Some(0), Some(0)).unwrap();
    let out = ds(&["pki", "init"], &cfg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&pki).unwrap().uid(), 0);
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
}

/// The JSON failure of a refused `pki` command line names `pki` as its op (not `diskstream`),
/// and a cluster config that cannot be loaded is a `config` failure as for `export`.
#[test]
fn pki_usage_and_config_failures_name_pki() {
    let dir = tempfile::tempdir().unwrap();
    let out = ds(&["pki", "init", "--json", "--bogus"], &dir.path().join("none.toml"));
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON failure");
    assert_eq!(
        (v["op"].clone(), v["kind"].clone()),
        ("pki".into(), "usage".into()),
        "{v}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[cluster\n").unwrap();
    let out = ds(&["pki", "init", "--json"], &bad);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON failure");
    assert_eq!(
        (v["op"].clone(), v["kind"].clone()),
        ("pki".into(), "config".into()),
        "{v}"
    );
}

/// Six `pki init` processes at once: one makes the CA, the others are refused (exit 4), and
/// the CA's key is the one of its certificate (two used to install half each).
#[test]
fn inits_at_once_make_one_ca_and_refuse_the_others() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = two_node_cluster(dir.path());
        let runs: Vec<_> = (0..6)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_diskstream"))
                    .args(["pki", "init", "-q", "--cluster"])
                    .arg(&cfg)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = runs.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
        assert_eq!(
            codes.iter().filter(|c| **c == Some(0)).count(),
            1,
            "round {round}: {codes:?}"
        );
        assert_eq!(
            codes.iter().filter(|c| **c == Some(4)).count(),
            5,
            "round {round}: {codes:?}"
        );
        let issued = ds(&["pki", "issue", "node2.test"], &cfg);
        assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    }
}

/// An agent whose key is not its certificate's refuses to start, naming both files and the
/// fix (it said "keys may not be consistent: KeyMismatch"); one on port 0 says the port bound.
#[test]
fn an_agent_with_a_mismatched_key_refuses_to_start_and_one_on_port_0_says_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_node_cluster(dir.path());
    assert!(ds(&["pki", "init"], &cfg).status.success());
    let pki = dir.path().join("pki/nodes");
    let key2 = std::fs::read(pki.join("node2.test.key")).unwrap();
    std::fs::copy(pki.join("node1.test.key"), pki.join("node2.test.key")).unwrap();
    let agent = |listen: &str| {
        Command::new(env!("CARGO_BIN_EXE_diskstream"))
            .args(["agent", "--node", "node2.test", "--listen", listen, "--cluster"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut a = Reaped(agent("127.0.0.1:0"));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = a.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "the agent started with a mismatched key"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(a.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("node2.test.key: is not the key of")
            && err.contains("node2.test.crt")
            && err.contains("diskstream pki issue node2.test"),
        "{err}"
    );
    std::fs::write(pki.join("node2.test.key"), key2).unwrap();
    let mut a = Reaped(agent("127.0.0.1:0"));
    let mut line = String::new();
    let mut r = std::io::BufReader::new(a.0.stderr.take().unwrap());
    while !line.contains("listening on") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut r, &mut line).unwrap() > 0,
            "no listening line"
        );
    }
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{line}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "{line}");
}

/// Kills and reaps the child when dropped, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
