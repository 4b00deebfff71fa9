//! Adversarial tests of the cluster config and what is built on it (the review of 2026-11-28):
//! a config that is a FIFO, a device, huge, binary or one long line; a node root that reaches
//! into another node's export directory through a directory not made yet and `..`; the
//! config's lock planted as a symbolic link, its directory writable by others; a config that
//! cannot be edited with `--remove-instance` (the disks are kept); hooks given absolute disk
//! paths; failed post hooks in the JSON result's warnings.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const INST: &str = "inst1.example.com";

/// A cluster of three local nodes with one stopped instance of one 2 MiB file disk on node1.
fn cluster(dir: &Path) -> (PathBuf, Vec<PathBuf>, PathBuf) {
    let roots = node_roots(dir, 3);
    let disk = dir.join("disk0.img");
    make_disk(&disk, 2 << 20, Data::Mixed, 7);
    let inst = InstSpec {
        name: INST.into(),
        primary: "node1.example.com".into(),
        admin_state: "down",
        disks: vec![DiskSpec {
            template: "file",
            path: disk.clone(),
            mib: 2,
        }],
        process: None,
    };
    (write_cluster(dir, &roots, &[inst], &[]), roots, disk)
}

/// `export --remove-instance --json` of the instance to node2 with the config `cfg`.
fn export_removing(cfg: &Path) -> std::process::Output {
    ds(&[
        "export",
        "--cluster",
        s(cfg),
        "-n",
        "node2",
        "--remove-instance",
        "--json",
        INST,
    ])
}

/// `list --cluster CFG` that must fail within 20 s: its exit code and stderr.
fn list_refused(cfg: &Path) -> (Option<i32>, String) {
    let out = ds_within(&["list", "--cluster", s(cfg)], Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted: {err}");
    (out.status.code(), err)
}

#[test]
fn a_config_that_is_not_a_small_text_file_is_refused_at_once_naming_why() {
    let dir = scratch();
    let fifo = dir.path().join("fifo.toml");
    assert!(Command::new("mkfifo")
        .arg("-m600")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (_, err) = list_refused(&fifo);
    assert!(
        err.contains("fifo.toml: not a regular file (a FIFO (named pipe))"),
        "{err}"
    );
    // Refused unread, or missing: not "corrupt" (Ganeti's label for a file whose text is wrong).
    assert!(err.starts_with("Cannot use configuration file: "), "{err}");
    let (code, err) = list_refused(&dir.path().join("typo.toml"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("Cannot use configuration file: ") && err.contains("typo.toml: No such file or directory"),
        "{err}"
    );
    let (_, err) = list_refused(Path::new("/dev/zero"));
    assert!(
        err.contains("/dev/zero: not a regular file (a character device)"),
        "{err}"
    );
    // Larger than any config: refused by its size, not read (a sparse 65 MiB file).
    let huge = dir.path().join("huge.toml");
    fs::File::create(&huge).unwrap().set_len(65 << 20).unwrap();
    fs::set_permissions(&huge, fs::Permissions::from_mode(0o600)).unwrap();
    let (_, err) = list_refused(&huge);
    assert!(err.contains("68157440 bytes: larger than any cluster config"), "{err}");
    // NUL bytes and bytes that are not UTF-8, named by line and offset.
    let nul = dir.path().join("nul.toml");
    fs::write(&nul, b"[cluster]\nname = \"c\"\n\0\0\0").unwrap();
    let (_, err) = list_refused(&nul);
    assert!(err.contains("a NUL byte at line 3, byte offset 21"), "{err}");
    assert!(err.starts_with("Corrupt configuration file: "), "{err}");
    let latin = dir.path().join("latin.toml");
    fs::write(&latin, b"[cluster]\nname = \"caf\xe9\"\n").unwrap();
    let (_, err) = list_refused(&latin);
    assert!(err.contains("not UTF-8 at line 2, byte offset 21"), "{err}");
    // One long bad line is quoted short, not whole (5 MB of it went to stderr twice).
    let long = dir.path().join("long.toml");
    fs::write(&long, format!("[cluster]\nname = \"{}", "x".repeat(5 << 20))).unwrap();
    let (_, err) = list_refused(&long);
    assert!(err.contains("long.toml"), "{err}");
    assert!(err.len() < 4096, "{} bytes of error", err.len());
}

#[test]
fn a_node_root_reaching_into_an_export_directory_through_a_new_directory_and_dotdot_is_refused() {
    let dir = scratch();
    let (cfg, roots, _) = cluster(dir.path());
    fs::create_dir_all(export_dir(&roots[1])).unwrap();
    let sneaky = dir.path().join("newdir/../node2/var/lib/ganeti/export/n3");
    let text = fs::read_to_string(&cfg).unwrap();
    let text = text.replacen(
        &format!("root = {:?}", roots[2].display().to_string()),
        &format!("root = {:?}", sneaky.display().to_string()),
        1,
    );
    fs::write(&cfg, text).unwrap();
    let (_, err) = list_refused(&cfg);
    assert!(
        err.contains("nodes[2].root") && err.contains("lies inside node node2.example.com's export directory"),
        "{err}"
    );
    // The same for the lock directory; nothing was made on the way.
    let cfg_text = fs::read_to_string(&cfg).unwrap().replacen(
        &format!("root = {:?}", sneaky.display().to_string()),
        &format!("root = {:?}", roots[2].display().to_string()),
        1,
    );
    fs::write(&cfg, cfg_text).unwrap();
    let locks = dir.path().join("nd2/../node2/var/lib/ganeti/export/locks");
    add_cluster_keys(&cfg, &format!("lock_dir = {:?}", locks.display().to_string()));
    let (ok, out, err) = ds_text(&["export", "--cluster", s(&cfg), "-n", "node3", INST]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("cluster.lock_dir") && err.contains("export directory"),
        "{err}"
    );
    assert!(!dir.path().join("newdir").exists() && !dir.path().join("nd2").exists());
    assert!(!export_dir(&roots[1]).join("locks").exists());
}

#[test]
fn the_configs_lock_is_never_followed_and_a_directory_others_can_write_is_refused() {
    let dir = scratch();
    let (cfg, _, disk) = cluster(dir.path());
    let victim = dir.path().join("created-through-the-link");
    std::os::unix::fs::symlink(&victim, dir.path().join(".cluster.toml.lock")).unwrap();
    let out = export_removing(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "a prerequisite, before anything: {err}");
    assert!(
        err.contains("Can not remove the instance: cannot edit the cluster config")
            && err.contains(".cluster.toml.lock"),
        "{err}"
    );
    assert!(!victim.exists(), "the lock was made through the planted link");
    assert!(disk.exists(), "the disk was kept");
    assert!(fs::read_to_string(&cfg).unwrap().contains(INST));
    fs::remove_file(dir.path().join(".cluster.toml.lock")).unwrap();
    // A directory anyone can write: anyone could rename another config over this one.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let (_, err) = list_refused(&cfg);
    assert!(err.contains("its directory") && err.contains("mode 777"), "{err}");
    // Sticky (as /tmp): others cannot replace our file there.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let out = ds(&["list", "--cluster", s(&cfg)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
}

/// Clears the immutable flag of a directory when dropped, also when the test fails.
struct Mutable(PathBuf);

impl Drop for Mutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn remove_instance_with_a_config_that_cannot_be_edited_keeps_the_disks() {
    let dir = scratch();
    let cfg_dir = dir.path().join("cfg");
    fs::create_dir(&cfg_dir).unwrap();
    let (cfg, roots, disk) = cluster(dir.path());
    let moved = cfg_dir.join("cluster.toml");
    fs::rename(&cfg, &moved).unwrap();
    fs::set_permissions(&moved, fs::Permissions::from_mode(0o600)).unwrap();
    let _m = Mutable(cfg_dir.clone());
    let st = Command::new("chattr").arg("+i").arg(&cfg_dir).status().unwrap();
    assert!(
        st.success(),
        "chattr +i (the tests need a file system with immutable flags)"
    );
    let out = export_removing(&moved);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON failure");
    assert_eq!(v["kind"], "prereq", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot edit the cluster config"),
        "{v}"
    );
    assert!(disk.exists(), "the disk was deleted");
    assert!(!export_dir(&roots[1]).join(INST).exists(), "refused before the export");
    assert!(fs::read_to_string(&moved).unwrap().contains(INST));
}

#[test]
fn hooks_get_absolute_disk_paths_and_failed_post_hooks_are_json_warnings() {
    let dir = scratch();
    let (cfg, roots, disk) = cluster(dir.path());
    // The config names its disk relative to itself; hooks run with cwd `/`.
    let text = fs::read_to_string(&cfg).unwrap().replacen(
        &format!("path = {:?}", disk.display().to_string()),
        "path = \"disk0.img\"",
        1,
    );
    fs::write(&cfg, text).unwrap();
    let seen = dir.path().join("seen");
    hook(
        &roots[0],
        "instance-export-pre.d",
        "05-disk",
        &format!(
            "echo \"$GANETI_INSTANCE_DISK0_ID\" > {}\ntest -e \"$GANETI_INSTANCE_DISK0_ID\"",
            s(&seen)
        ),
    );
    hook(&roots[1], "instance-export-post.d", "10-f", "echo post failed; exit 1");
    let out = ds(&["export", "--cluster", s(&cfg), "-n", "node2", "--json", INST]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        fs::read_to_string(&seen).unwrap().trim(),
        disk.display().to_string(),
        "the hook got the disk's absolute path"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the JSON result");
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("instance-export-post.d/10-f") && w.contains("post failed")),
        "{v}"
    );
}
