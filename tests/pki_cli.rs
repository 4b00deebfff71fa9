//! `diskstream pki init` and `pki issue` against a cluster config: files and modes, the refusal
//! to replace a CA without `--force`, and an unknown node named in the error.

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
    assert_ne!(std::fs::read(pki.join("nodes/node2.test.key")).unwrap(), key_before);
    let unknown = ds(&["pki", "issue", "node9.test"], &cfg);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("node node9.test is not in the cluster config"));
    let forced = ds(&["pki", "init", "--force"], &cfg);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_ne!(std::fs::read(pki.join("ca.crt")).unwrap(), ca);
}
