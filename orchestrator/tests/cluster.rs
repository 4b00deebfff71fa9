//! Cluster config tests: the shipped example, validation messages, name expansion, and the
//! locked atomic rewrite.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;

use diskstream_orchestrator::cluster::{
    update_file, AdminState, Cluster, CommandSpec, ConfigError, DiskTemplate, Driver, ParamValue,
};
use diskstream_orchestrator::{Ecode, ErrorKind};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster.toml")
}

/// A minimal valid config; tests append or replace pieces of it.
const BASE: &str = r#"
[cluster]
name = "c.example.com"
master = "node1.example.com"

[[nodes]]
name = "node1.example.com"
uuid = "n-1"
root = "vc/node1"

[[nodes]]
name = "node2.example.com"
uuid = "n-2"
root = "/abs/node2"
offline = true

[[instances]]
name = "inst1.example.com"
uuid = "i-1"
primary_node = "node1.example.com"
os = "noop"
hypervisor = "kvm"
admin_state = "up"
beparams = { maxmem = 128, minmem = 128, vcpus = 1 }
[[instances.disks]]
uuid = "d-1"
size = 10
template = "file"
path = "disks/d1.img"
"#;

fn parse(text: &str) -> Result<Cluster, ConfigError> {
    Cluster::from_str_at(text, "/etc/ds/cluster.toml")
}

fn invalid(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted an invalid config:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_shipped_example_loads() {
    let c = Cluster::load(example_path()).unwrap();
    assert_eq!(c.info().name, "cluster.example.com");
    assert_eq!(c.master().name, "node1.example.com");
    assert_eq!(c.nodes().len(), 3);
    assert!(c.node("node3.example.com").unwrap().drained);
    let i = c.instance("inst1.example.com").unwrap();
    assert_eq!(i.admin_state, AdminState::Up);
    assert_eq!(i.disk_template(), "mixed");
    assert_eq!(i.be_int("maxmem"), Some(1024));
    assert_eq!(
        i.hvparams.keys().collect::<Vec<_>>(),
        ["kernel_path", "boot_order"],
        "parameter order is kept as written"
    );
    assert_eq!(i.disks[0].template, DiskTemplate::File);
    assert!(matches!(
        &i.driver,
        Some(Driver::Process { start: CommandSpec::Argv(v) }) if v[0] == "/bin/sleep"
    ));
    let i2 = c.instance("inst2.example.com").unwrap();
    assert!(
        matches!(&i2.driver, Some(Driver::Command { status: CommandSpec::Shell(s), .. }) if s.contains("domstate"))
    );
    let n1 = c.node("node1.example.com").unwrap();
    let base = example_path().parent().unwrap().to_path_buf();
    assert_eq!(c.export_dir(n1), base.join("vc/node1/var/lib/ganeti/export"));
    assert_eq!(c.hooks_dir(n1), base.join("vc/node1/etc/ganeti/hooks"));
    assert_eq!(c.data_dir(n1), base.join("vc/node1/var/lib/ganeti"));
    assert_eq!(c.disk_path(&i.disks[1]), PathBuf::from("/dev/xenvg/inst1-data"));
}

#[test]
fn defaults_and_paths() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.info().compression_tools, ["gzip", "gzip-fast", "gzip-slow"]);
    let n2 = c.node("node2.example.com").unwrap();
    assert!(n2.offline && !n2.drained);
    assert_eq!(c.export_dir(n2), PathBuf::from("/abs/node2/var/lib/ganeti/export"));
    let n1 = c.node("node1.example.com").unwrap();
    assert_eq!(c.node_root(n1), PathBuf::from("/etc/ds/vc/node1"));
    let i = c.instance("inst1.example.com").unwrap();
    assert_eq!(i.disks[0].mode, "rw");
    assert_eq!(c.disk_path(&i.disks[0]), PathBuf::from("/etc/ds/disks/d1.img"));
    assert_eq!(i.beparams.get("vcpus"), Some(&ParamValue::Int(1)));
}

#[test]
fn validation_names_the_file_and_the_key() {
    let cases: Vec<(String, &str)> = vec![
        (
            BASE.replace("master = \"node1.example.com\"", "master = \"nodeX\""),
            "/etc/ds/cluster.toml: cluster.master: node 'nodeX' is not defined in [[nodes]]",
        ),
        (
            BASE.replace("uuid = \"n-2\"", "uuid = \"n-1\""),
            "/etc/ds/cluster.toml: nodes[1].uuid: duplicate UUID 'n-1'",
        ),
        (
            BASE.replace("name = \"node2.example.com\"", "name = \"node1.example.com\""),
            "nodes[1].name: duplicate node name 'node1.example.com'",
        ),
        (
            BASE.replace("primary_node = \"node1.example.com\"", "primary_node = \"node9\""),
            "instances[0].primary_node: node 'node9' is not defined in [[nodes]] (instance 'inst1.example.com')",
        ),
        (
            BASE.replace("maxmem = 128, ", ""),
            "instances[0].beparams.maxmem: is required (instance 'inst1.example.com')",
        ),
        (
            BASE.replace("vcpus = 1", "vcpus = \"one\""),
            "instances[0].beparams.vcpus: must be a non-negative integer",
        ),
        (
            BASE.replace("uuid = \"d-1\"", "uuid = \"i-1\""),
            "instances[0].disks[0].uuid: duplicate UUID 'i-1'",
        ),
        (
            BASE.replace("size = 10", "size = 0"),
            "instances[0].disks[0].size: must be at least 1 (MiB)",
        ),
        (
            BASE.replace("name = \"inst1.example.com\"", "name = \"../x\""),
            "instances[0].name: invalid instance name '../x'",
        ),
        (
            format!("{BASE}secondary_nodes = []\n"),
            "unknown field `secondary_nodes`",
        ),
        (
            BASE.replace("template = \"file\"", "template = \"drbd\""),
            "unknown variant `drbd`",
        ),
        (
            BASE.replace("offline = true", "ofline = true"),
            "unknown field `ofline`",
        ),
        (
            BASE.replace(
                "name = \"c.example.com\"",
                "name = \"c.example.com\"\ncompression_tools = [\"gz ip\"]",
            ),
            "cluster.compression_tools[0]: invalid compression tool name 'gz ip'",
        ),
    ];
    // A second instance with the same name, and one naming its primary as secondary.
    let dup = format!(
        "{BASE}{}",
        &BASE[BASE.find("[[instances]]").unwrap()..].replace("uuid = \"i-1\"", "uuid = \"i-2\"")
    );
    let sec = BASE.replace(
        "os = \"noop\"",
        "secondary_nodes = [\"node1.example.com\"]\nos = \"noop\"",
    );
    // One that differs only in case or a final dot: Ganeti's lookup (and a file system that
    // ignores case) takes them for one, while their locks would not.
    let case = format!(
        "{BASE}{}",
        &BASE[BASE.find("[[instances]]").unwrap()..]
            .replace("uuid = \"i-1\"", "uuid = \"i-2\"")
            .replace("name = \"inst1.example.com\"", "name = \"Inst1.Example.com.\"")
            .replace("d-1", "d-2")
            .replace("disks/d1.img", "disks/d2.img")
    );
    let mut cases = cases;
    cases.push((dup, "instances[1].name: duplicate instance name 'inst1.example.com'"));
    cases.push((
        case,
        "instances[1].name: duplicate instance name 'Inst1.Example.com.' (of instance 'inst1.example.com'",
    ));
    cases.push((sec, "secondary_nodes[0]: the primary node cannot also be a secondary"));
    for (text, want) in cases {
        let got = invalid(&text);
        assert!(got.contains(want), "got {got:?}, want {want:?}");
    }
}

#[test]
fn expand_names_like_ganeti() {
    let c = Cluster::load(example_path()).unwrap();
    assert_eq!(c.expand_instance("inst1", None).unwrap().name, "inst1.example.com");
    assert_eq!(
        c.expand_instance("inst1.example.com", Some("7d1f2a9e-5b8c-4e3d-a6f0-1c2b3d4e0001"))
            .unwrap()
            .name,
        "inst1.example.com"
    );
    let e = c.expand_instance("inst", None).unwrap_err();
    assert_eq!(e.to_string(), "Instance 'inst' not known");
    assert_eq!((e.kind, e.ecode), (ErrorKind::Prereq, Ecode::NoEnt));
    let e = c.expand_instance("inst1", Some("other-uuid")).unwrap_err();
    assert_eq!(e.ecode, Ecode::NotUnique);
    assert!(e.msg.starts_with("The instances UUID '7d1f2a9e-5b8c-4e3d-a6f0-1c2b3d4e0001' does not match the expected UUID 'other-uuid' for instance 'inst1.example.com'."));
    assert_eq!(c.expand_node("node2", None).unwrap().name, "node2.example.com");
    let e = c.expand_node("node9", None).unwrap_err();
    assert_eq!(e.to_string(), "Node 'node9' not known");
    assert_eq!(e.ecode, Ecode::NoEnt);
    assert_eq!(c.expand_node("node", None).unwrap_err().ecode, Ecode::NoEnt);
}

#[test]
fn remove_instance_rewrites_atomically_and_keeps_comments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    fs::copy(example_path(), &path).unwrap();
    Cluster::remove_instance(&path, "inst1.example.com").unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("# A three-node diskstream cluster"));
    assert!(text.contains("drained = true             # cannot be an export target"));
    let c = Cluster::load(&path).unwrap();
    assert!(c.instance("inst1.example.com").is_none());
    assert!(c.instance("inst2.example.com").is_some());
    // Removing it again names it as unknown and leaves the file as it was.
    let e = Cluster::remove_instance(&path, "inst1.example.com").unwrap_err();
    assert_eq!(e.to_string(), "Instance 'inst1.example.com' not known");
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
    // Only the config and its lock file are in the directory (no temporary files).
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".cluster.toml.lock", "cluster.toml"]);
}

#[test]
fn an_edit_that_breaks_the_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    fs::copy(example_path(), &path).unwrap();
    let before = fs::read_to_string(&path).unwrap();
    let e = update_file(&path, |doc| {
        doc["cluster"]["master"] = toml_edit::value("nobody");
        Ok(())
    })
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.msg.contains("cluster.master: node 'nobody' is not defined"), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn concurrent_removals_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    let mut text = BASE.to_string();
    for i in 2..10 {
        text.push_str(&format!(
            "\n[[instances]]\nname = \"inst{i}\"\nuuid = \"i-{i}\"\nprimary_node = \"node1.example.com\"\n\
             os = \"noop\"\nhypervisor = \"kvm\"\nadmin_state = \"down\"\n\
             beparams = {{ maxmem = 1, minmem = 1, vcpus = 1 }}\n"
        ));
    }
    fs::write(&path, text).unwrap();
    let handles: Vec<_> = (2..10)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || Cluster::remove_instance(&path, &format!("inst{i}")))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let c = Cluster::load(&path).unwrap();
    let names: Vec<&str> = c.instances().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["inst1.example.com"]);
}

#[test]
fn load_errors_name_the_file() {
    let e = Cluster::load("/nonexistent/cluster.toml").unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/cluster.toml: "), "{e}");
    let e = parse("[cluster\nname=1").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }));
    assert!(e.to_string().starts_with("/etc/ds/cluster.toml: "), "{e}");
}

#[test]
fn agent_addresses_and_the_pki_dir() {
    let c = parse(BASE).unwrap();
    assert!(!c.has_agents());
    assert_eq!(c.pki_dir(), PathBuf::from("/etc/ds/pki"));
    let with = BASE
        .replace(
            "root = \"/abs/node2\"",
            "root = \"/abs/node2\"\naddress = \"10.0.0.2:1811\"",
        )
        .replace(
            "master = \"node1.example.com\"",
            "master = \"node1.example.com\"\npki = \"/srv/pki\"",
        );
    let c = parse(&with).unwrap();
    assert!(c.has_agents());
    assert_eq!(c.pki_dir(), PathBuf::from("/srv/pki"));
    assert_eq!(
        c.node("node2.example.com").unwrap().address.as_deref(),
        Some("10.0.0.2:1811")
    );
    assert!(parse(&BASE.replace("root = \"/abs/node2\"", "root = \"/abs/node2\"\naddress = \"[::1]:7\"")).is_ok());
    for (addr, why) in [
        ("10.0.0.2", "no port"),
        ("10.0.0.2:0", "bad port"),
        ("10.0.0.2:99999", "bad port"),
        (":1811", "bad host"),
        ("::1:1811", "bad host"),
    ] {
        let e = invalid(&BASE.replace(
            "root = \"/abs/node2\"",
            &format!("root = \"/abs/node2\"\naddress = \"{addr}\""),
        ));
        assert!(
            e.contains(&format!("nodes[1].address: invalid address '{addr}': {why}")),
            "{addr}: {e}"
        );
    }
    let e = invalid(&BASE.replace(
        "master = \"node1.example.com\"",
        "master = \"node1.example.com\"\npki = \"\"",
    ));
    assert!(e.contains("cluster.pki: must not be empty"), "{e}");
    let e = invalid(&BASE.replace(
        "master = \"node1.example.com\"",
        "master = \"node1.example.com\"\nlock_dir = \"\"",
    ));
    assert!(e.contains("cluster.lock_dir: must not be empty"), "{e}");
}

/// BASE with a second instance `inst2` whose one disk is `path` (on node `node`).
fn with_second_disk(node: &str, path: &str) -> String {
    format!(
        "{BASE}\n[[instances]]\nname = \"inst2\"\nuuid = \"i-2\"\nprimary_node = \"{node}\"\nos = \"noop\"\n\
         hypervisor = \"kvm\"\nadmin_state = \"down\"\nbeparams = {{ maxmem = 1, minmem = 1, vcpus = 1 }}\n\
         [[instances.disks]]\nuuid = \"d-2\"\nsize = 10\ntemplate = \"file\"\npath = {path:?}\n"
    )
}

#[test]
fn disk_paths_named_like_snapshots_are_refused() {
    // The stale-snapshot sweep of inst1 would take `d1.img.ds-snap-inst1.example.com-1` for a
    // snapshot a killed export left, and delete inst2's disk.
    for p in [
        "disks/d1.img.ds-snap-inst1.example.com-1",
        "/srv/x.ds-snap-y",
        "/dev/vg/lv.ds-snap-a-1",
    ] {
        let e = invalid(&with_second_disk("node1.example.com", p));
        assert!(
            e.contains("instances[1].disks[0].path") && e.contains(p) && e.contains(".ds-snap-"),
            "{p}: {e}"
        );
    }
    // `ds-snap` without the marker's dots is an ordinary name.
    parse(&with_second_disk("node1.example.com", "disks/ds-snap.img")).unwrap();
}

#[test]
fn two_disks_with_one_backing_file_are_refused_naming_both() {
    // Relative and absolute spellings of one path (the config lives in /etc/ds).
    for p in [
        "disks/d1.img",
        "/etc/ds/disks/d1.img",
        "./disks//d1.img",
        "/etc/ds/disks/./d1.img/",
    ] {
        let e = invalid(&with_second_disk("node1.example.com", p));
        for part in [
            "instances[1].disks[0].path",
            "/etc/ds/disks/d1.img",
            "instance 'inst2'",
            "disk/0 of instance 'inst1.example.com'",
            "instances[0].disks[0].path",
        ] {
            assert!(e.contains(part), "{p}: the error names {part}: {e}");
        }
    }
    // Two disks of one instance.
    let two = BASE.replace(
        "path = \"disks/d1.img\"\n",
        "path = \"disks/d1.img\"\n[[instances.disks]]\nuuid = \"d-1b\"\nsize = 10\ntemplate = \"file\"\npath = \"disks/d1.img\"\n",
    );
    let e = invalid(&two);
    assert!(
        e.contains("instances[0].disks[1].path") && e.contains("disk/0 of instance 'inst1.example.com'"),
        "{e}"
    );
    // A symbolic link to an existing disk file is the same file.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("disks")).unwrap();
    fs::write(dir.path().join("disks/d1.img"), b"").unwrap();
    std::os::unix::fs::symlink("disks/d1.img", dir.path().join("alias.img")).unwrap();
    let cfg = dir.path().join("cluster.toml");
    fs::write(&cfg, with_second_disk("node1.example.com", "alias.img")).unwrap();
    let e = Cluster::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("instances[1].disks[0].path") && e.contains("alias.img"),
        "{e}"
    );
    // Different files are fine, and so is one path on two agents' machines.
    parse(&with_second_disk("node1.example.com", "disks/d2.img")).unwrap();
    let agents = with_second_disk("node2.example.com", "/etc/ds/disks/d1.img")
        .replace(
            "root = \"vc/node1\"",
            "root = \"vc/node1\"\naddress = \"10.0.0.1:1811\"",
        )
        .replace("offline = true", "address = \"10.0.0.2:1811\"");
    parse(&agents).unwrap();
}

#[test]
fn nothing_that_must_last_may_lie_inside_an_export_directory() {
    // node1's export directory is /etc/ds/vc/node1/var/lib/ganeti/export (the config is in
    // /etc/ds). An export of inst1 replaces or removes whole directories there: a disk of inst2
    // put there (a dump brought back as a disk) was deleted by the next export's cleanup.
    let e1 = "/etc/ds/vc/node1/var/lib/ganeti/export";
    for p in [
        format!("{e1}/inst1.example.com/0b1c.dump"),
        "vc/node1/var/lib/ganeti/export/inst1.example.com.new/x".into(),
        format!("{e1}/other/d.img"),
    ] {
        let e = invalid(&with_second_disk("node1.example.com", &p));
        assert!(
            e.contains("instances[1].disks[0].path")
                && e.contains("disk/0 of instance 'inst2'")
                && e.contains(&format!("lies inside node node1.example.com's export directory {e1}")),
            "{p}: {e}"
        );
    }
    // Beside it is fine, and so is the same path on another agent's machine.
    parse(&with_second_disk(
        "node1.example.com",
        "vc/node1/var/lib/ganeti/exports.img",
    ))
    .unwrap();
    let agents = with_second_disk("node2.example.com", &format!("{e1}/x.img"))
        .replace(
            "root = \"vc/node1\"",
            "root = \"vc/node1\"\naddress = \"10.0.0.1:1811\"",
        )
        .replace("offline = true", "address = \"10.0.0.2:1811\"");
    parse(&agents).unwrap();
    // A node whose root is inside another's export directory: the other's `list` showed it as
    // an export, and `remove` deleted the node's whole root.
    let e = invalid(&BASE.replace("root = \"/abs/node2\"", &format!("root = \"{e1}/node2root\"")));
    assert!(
        e.contains("nodes[1].root") && e.contains("node node2.example.com's root") && e.contains(e1),
        "{e}"
    );
    // Nodes sharing one root (one export directory, as NFS shares it) are fine.
    parse(&BASE.replace("root = \"/abs/node2\"", "root = \"vc/node1\"")).unwrap();
    // The lock directory, the PKI and the config itself.
    for (key, line) in [
        ("cluster.lock_dir", format!("lock_dir = \"{e1}/locks\"")),
        ("cluster.pki", format!("pki = \"{e1}/pki\"")),
    ] {
        let e = invalid(&BASE.replace(
            "master = \"node1.example.com\"",
            &format!("master = \"node1.example.com\"\n{line}"),
        ));
        assert!(e.contains(key) && e.contains(e1), "{key}: {e}");
    }
    // A disk that is the config, or lies in the lock directory or the PKI: --remove-instance
    // deleted the config.
    for (p, what) in [
        ("/etc/ds/cluster.toml", "the cluster config"),
        ("/etc/ds/pki/ca.key", "the PKI directory"),
        ("vc/node1/var/run/ganeti/locks/x", "the lock directory"),
    ] {
        let e = invalid(&with_second_disk("node1.example.com", p));
        assert!(
            e.contains("instances[1].disks[0].path") && e.contains(&format!("is or lies in {what}")),
            "{p}: {e}"
        );
    }
}

#[test]
fn an_export_directory_reached_through_a_symbolic_link_is_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("vc/node1/var/lib/ganeti/export");
    fs::create_dir_all(export.join("inst1.example.com")).unwrap();
    std::os::unix::fs::symlink(export.join("inst1.example.com"), dir.path().join("dumps")).unwrap();
    let cfg = dir.path().join("cluster.toml");
    fs::write(&cfg, with_second_disk("node1.example.com", "dumps/0b1c.dump")).unwrap();
    let e = Cluster::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("instances[1].disks[0].path") && e.contains("export directory"),
        "{e}"
    );
}

#[test]
fn a_config_others_may_write_or_own_is_refused() {
    // It names the commands that start and stop instances, run as this user (root on a node).
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    fs::write(&cfg, BASE).unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    Cluster::load(&cfg).unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o666)).unwrap();
    let e = Cluster::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("mode 666: writable by others"), "{e}");
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&cfg, Some(65534), Some(65534)).unwrap();
        let e = Cluster::load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("owned by uid 65534, not by this user (uid 0) or root"),
            "{e}"
        );
    }
}

#[test]
fn remove_instance_through_a_symlink_edits_and_locks_the_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    let link_dir = dir.path().join("link");
    fs::create_dir(&real_dir).unwrap();
    fs::create_dir(&link_dir).unwrap();
    let real = real_dir.join("cluster.toml");
    let link = link_dir.join("cluster.toml");
    fs::write(&real, with_second_disk("node1.example.com", "disks/d2.img")).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    Cluster::remove_instance(&link, "inst2").unwrap();
    assert!(
        fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
        "the link is still a link"
    );
    assert!(
        Cluster::load(&real).unwrap().instance("inst2").is_none(),
        "the real file changed"
    );
    assert!(Cluster::load(&link).unwrap().instance("inst1.example.com").is_some());
    // The lock is the real file's: one lock whatever name the file is edited through.
    assert!(real_dir.join(".cluster.toml.lock").exists());
    let names: Vec<_> = fs::read_dir(&link_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["cluster.toml"], "nothing created next to the link");
}

#[test]
fn parameter_names_must_be_ganeti_names_and_texts_carry_no_cr_or_nul() {
    let with = |table: &str, kv: &str| {
        BASE.replace(
            "beparams = { maxmem = 128, minmem = 128, vcpus = 1 }",
            &format!("beparams = {{ maxmem = 128, minmem = 128, vcpus = 1 }}\n{table} = {{ {kv} }}"),
        )
    };
    for (table, kv, key) in [
        (
            "hvparams",
            r#"Kernel_Path = "a", kernel_path = "b""#,
            "hvparams.Kernel_Path",
        ),
        ("osparams", r#""nl\nkey" = "v""#, r"osparams.nl\nkey"),
        ("osparams", r#""k=v" = "v""#, "osparams.k=v"),
        ("osparams_private", r#""[sec]" = "v""#, "osparams_private.[sec]"),
        ("hvparams", r#""a-b" = "v""#, "hvparams.a-b"),
        ("osparams", r#""" = "v""#, "osparams."),
    ] {
        let e = invalid(&with(table, kv));
        assert!(
            e.contains(&format!("instances[0].{key}: invalid")) && e.contains("parameter name"),
            "{kv}: {e}"
        );
    }
    for (table, kv, key, shown) in [
        (
            "osparams",
            r#"x = "one\rinjected = 1""#,
            "osparams.x",
            r#""one\rinjected = 1""#,
        ),
        (
            "hvparams",
            r#"kernel_args = "a\u0000b""#,
            "hvparams.kernel_args",
            r#""a\0b""#,
        ),
        (
            "osparams_private",
            r#"pw = "s3cret\r""#,
            "osparams_private.pw",
            "(not shown)",
        ),
    ] {
        let e = invalid(&with(table, kv));
        assert!(
            e.contains(&format!("instances[0].{key}: ")) && e.contains(shown),
            "{kv}: {e}"
        );
        assert!(!e.contains("s3cret"), "a private value is never shown: {e}");
    }
    let e = invalid(&BASE.replace("os = \"noop\"", "os = \"noop\\r[x]\""));
    assert!(
        e.contains("instances[0].os: the value \"noop\\r[x]\" contains a carriage return"),
        "{e}"
    );
    // Ganeti's names, OS parameters with '-', and line breaks in values are fine.
    parse(&with("hvparams", r#"kernel_path = "", vnc_x509_path = "/x""#)).unwrap();
    parse(&with("osparams", r#"dhcp-allowed = "yes", motd = "a\nb""#)).unwrap();
}

/// The digest an agent compares with the master's: what the config says, not how it is
/// written, nor each machine's own view (addresses, lock directory, PKI); a disk path, a node
/// root or an instance's command counts. The example config (drivers, NICs, parameters) has one.
#[test]
fn the_config_digest_is_what_the_config_says_about_the_cluster() {
    let base = parse(BASE).unwrap().digest();
    assert_eq!(base.len(), 32, "{base}");
    let same = [
        format!("# a comment\n{BASE}\n# another\n"),
        BASE.replace(
            "name = \"node2.example.com\"",
            "name = \"node2.example.com\"\naddress = \"10.0.0.2:1811\"",
        ),
        BASE.replace(
            "master = \"node1.example.com\"",
            "master = \"node1.example.com\"\nlock_dir = \"/run/l\"\npki = \"/etc/p\"",
        ),
        BASE.replace("size = 10", "size    =    10"),
    ];
    for text in &same {
        assert_eq!(parse(text).unwrap().digest(), base, "{text}");
    }
    let other = [
        BASE.replace("disks/d1.img", "disks/d2.img"),
        BASE.replace("root = \"vc/node1\"", "root = \"vc/node9\""),
        BASE.replace("admin_state = \"up\"", "admin_state = \"down\""),
        BASE.replace("maxmem = 128", "maxmem = 256"),
    ];
    for text in &other {
        assert_ne!(parse(text).unwrap().digest(), base, "{text}");
    }
    let example = Cluster::load(example_path()).unwrap();
    assert_eq!(example.digest(), Cluster::load(example_path()).unwrap().digest());
}
