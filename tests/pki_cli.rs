//! `diskstream pki init` and `pki issue` against a cluster config: files and modes, the refusal
//! to replace a CA without `--force`, an unknown node named in the error, and the `--json`
//! results naming the files written.

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

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nname = \"c.test\"\nmaster = \"node1.test\"\n\
         [[nodes]]\nname = \"node1.test\"\nuuid = \"u1\"\nroot = \"n1\"\n\
         [[nodes]]\nname = \"node2.test\"\nuuid = \"u2\"\nroot = \"n2\"\naddress = \"127.0.0.1:1811\"\n",
    )
    .unwrap();
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
    assert!(!again.status.success());
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
