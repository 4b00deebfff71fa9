//! Compatibility with Ganeti itself: Ganeti 3.0's own Python code (Debian's `ganeti-3.0`,
//! `/usr/share/ganeti/3.0`, run by `/usr/bin/python3` as a virtual-cluster node through
//! `GANETI_ROOTDIR` / `GANETI_HOSTNAME`) lists, reads and imports a real export made by the real
//! `diskstream` binary, and its `backend.FinalizeExport` writes the same `config.ini` for the
//! same instance.
//!
//! The oracle is `common::ganeti::ORACLE`, a small Python script driving `backend.ListExports`,
//! `backend.ExportInfo`, `objects.SerializableConfigParser`, the import side's own reading code
//! (`LUInstanceCreate._ReadExportParams`) and `backend.FinalizeExport`. It builds Ganeti's
//! `objects.Instance` from the cluster's `cluster.toml` with Python's own TOML reader, so the
//! reference does not go through any of our Rust code.

mod common;

use std::fs;
use std::path::PathBuf;

use common::ganeti::{ganeti, normalized};
use common::*;
use serde_json::{json, Value};

const INST: &str = "inst1.example.com";

/// A three-node cluster whose instance exercises every part of `config.ini`: two NICs (one on
/// a network, with IP and VLAN), named disks with and without an explicit `iv_name`, several
/// tags, hypervisor parameters of several types including a cluster-global one (never
/// exported), OS parameters with `%` and spaces, and private OS parameters.
struct Fixture {
    cfg: PathBuf,
    roots: Vec<PathBuf>,
    disks: Vec<PathBuf>,
    _instance: Option<InstanceGuard>,
    _mount: Option<FsMount>,
    dir: tempfile::TempDir,
}

fn fixture(snapshot: bool) -> Fixture {
    let dir = scratch();
    // A running instance on XFS is snapshotted (reflink); a down one on the build's file
    // system is exported from its disks directly.
    let mount = snapshot.then(FsMount::xfs_reflink);
    let disk_dir = mount
        .as_ref()
        .map_or_else(|| dir.path().to_path_buf(), |m| m.path().to_path_buf());
    let roots: Vec<PathBuf> = (1..=3).map(|i| dir.path().join(format!("node{i}"))).collect();
    let disks = vec![disk_dir.join("root.img"), disk_dir.join("data.img")];
    make_disk(&disks[0], 8 << 20, Data::Mixed, 11);
    make_disk(&disks[1], 4 << 20, Data::Sparse, 12);
    let cfg = dir.path().join("cluster.toml");
    let text = format!(
        r#"[cluster]
name = "test.example.com"
master = "node1.example.com"

[[nodes]]
name = "node1.example.com"
uuid = "9a0c1e2f-0000-4000-8000-000000000001"
root = {r1:?}

[[nodes]]
name = "node2.example.com"
uuid = "9a0c1e2f-0000-4000-8000-000000000002"
root = {r2:?}

[[nodes]]
name = "node3.example.com"
uuid = "9a0c1e2f-0000-4000-8000-000000000003"
root = {r3:?}

[[instances]]
name = "{INST}"
uuid = "5f0e7d6c-0000-4000-8000-000000000001"
primary_node = "node1.example.com"
os = "debootstrap+default"
hypervisor = "kvm"
admin_state = "{state}"
tags = ["web", "prod", "db"]

[instances.beparams]
maxmem = 1024
minmem = 512
vcpus = 2
auto_balance = true
spindle_use = 1

[instances.hvparams]
kernel_path = ""
boot_order = "disk"
migration_port = 8102
cpu_cores = 0
use_chroot = false
kernel_args = "ro console=ttyS0"

[instances.osparams]
dhcp = "yes"
fill_ratio = "50% of 100%"
banner = "it's  \"quoted\"; ; # not a comment"

[instances.osparams_private]
root_pw = "s3cret%x"

[[instances.nics]]
mac = "aa:00:00:11:22:33"
name = "eth0"
link = "br0"

[[instances.nics]]
mac = "aa:00:00:44:55:66"
ip = "192.0.2.10"
network = "net-a"
name = "eth1"
mode = "openvswitch"
link = "ovs0"
vlan = ".100"

[[instances.disks]]
uuid = "6b1d2c3e-0000-4000-8000-000000000001"
name = "root"
size = 8
template = "file"
path = {d0:?}

[[instances.disks]]
uuid = "6b1d2c3e-0000-4000-8000-000000000002"
name = "data"
iv_name = "disk/1"
size = 4
template = "file"
path = {d1:?}

[instances.driver]
kind = "process"
start = ["/bin/sleep", "100000"]
"#,
        r1 = s(&roots[0]),
        r2 = s(&roots[1]),
        r3 = s(&roots[2]),
        state = if snapshot { "up" } else { "down" },
        d0 = s(&disks[0]),
        d1 = s(&disks[1]),
    );
    fs::write(&cfg, text).expect("cluster.toml");
    for r in &roots {
        fs::create_dir_all(r.join("var/lib/ganeti/export")).unwrap();
    }
    let instance = snapshot.then(|| InstanceGuard::new(&cfg, INST, true));
    Fixture {
        cfg,
        roots,
        disks,
        _instance: instance,
        _mount: mount,
        dir,
    }
}

impl Fixture {
    /// `diskstream export --json -n node2 [--noshutdown]`; the JSON result.
    fn export(&self, live: bool) -> Value {
        let mut a = vec!["export", "--cluster", s(&self.cfg), "-n", "node2"];
        if live {
            a.push("--noshutdown");
        }
        a.push(INST);
        ds_json(&a)
    }

    fn export_dir(&self, node: usize) -> PathBuf {
        self.roots[node - 1].join("var/lib/ganeti/export")
    }

    fn config_ini(&self) -> String {
        fs::read_to_string(self.export_dir(2).join(INST).join("config.ini")).expect("config.ini")
    }
}

fn names(v: &Value) -> Vec<String> {
    v["ok"]
        .as_array()
        .unwrap_or_else(|| panic!("ListExports failed: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ganeti_lists_our_export_and_only_ours_hides_staging_dirs() {
    let f = fixture(false);
    let r = f.export(false);
    assert_eq!(r["result"], json!([true, [true, true]]));
    let node2 = &f.roots[1];
    let listed = ganeti(node2, &["list"]);
    assert_eq!(
        listed["export_dir"],
        s(&f.export_dir(2)),
        "GANETI_ROOTDIR maps to our node root"
    );
    // Exactly our instance: no staging or hidden directory left behind by the export.
    assert_eq!(names(&listed), [INST]);
    let entries: Vec<String> = fs::read_dir(f.export_dir(2))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, [INST], "nothing but the export in the export directory");
    // Ganeti, like us, says so for a node without an export directory.
    let empty = f.dir.path().join("node4");
    assert_eq!(ganeti(&empty, &["list"])["error"], "RPCFail: No exports directory");

    // A staging directory (an export being written, or left by a crash) and a half-removed
    // export. Ganeti's ListExports hides only dot-entries, so it lists `<inst>.new`
    // (docs/ganeti-compat.md #3): this documents the difference, it is not a failure. Our list
    // hides both.
    let staging = f.export_dir(2).join(format!("{INST}.new"));
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("partial-dump"), b"half").unwrap();
    fs::create_dir(f.export_dir(2).join(format!(".{INST}.ds-removing-4242"))).unwrap();
    let listed = ganeti(node2, &["list"]);
    assert_eq!(
        names(&listed),
        [INST.to_string(), format!("{INST}.new")],
        "Ganeti 3.0 lists staging directories (its ListExports quirk); if this changes, update \
         docs/ganeti-compat.md #3"
    );
    // ... and then fails to read it as an export.
    let info = ganeti(node2, &["info", s(&staging)]);
    assert_eq!(
        info["error"],
        "RPCFail: Export info file doesn't have the required fields"
    );
    let ours = ds_json(&["list", "--cluster", s(&f.cfg), "--node", "node2"]);
    // `list --json` is an envelope with the rows under "nodes" (docs/json.md).
    assert_eq!(
        ours["nodes"],
        json!([{ "node": "node2.example.com", "exports": [INST] }])
    );
}

#[test]
fn ganeti_reads_our_config_ini_back_and_would_import_it() {
    let f = fixture(false);
    let r = f.export(false);
    let export = f.export_dir(2).join(INST);
    let v = ganeti(&f.roots[1], &["info", s(&export)]);
    assert!(v.get("error").is_none(), "ExportInfo refused our export: {v}");
    // _ReadExportInfo: the version check.
    assert_eq!(v["version"], 0);
    assert_eq!(v["version"], v["export_version"]);
    let sec = &v["sections"];
    assert_eq!(
        sec.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["backend", "export", "hypervisor", "instance", "os", "os_private"]
    );
    // Every key, as SerializableConfigParser.get returns it: None for a value equal to "none"
    // in any case, so even Ganeti's own `compression = none` reads as None.
    let ts = sec["export"]["timestamp"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(ts > 1_700_000_000, "timestamp {ts}");
    assert_eq!(
        sec["export"],
        json!({
            "version": "0", "timestamp": ts.to_string(),
            "source": "9a0c1e2f-0000-4000-8000-000000000001",
            "os": "debootstrap+default", "compression": null,
        })
    );
    let dumps: Vec<String> = r["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dump"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sec["instance"],
        json!({
            "name": INST, "maxmem": "1024", "minmem": "512", "memory": "1024", "vcpus": "2",
            "disk_template": "file", "hypervisor": "kvm", "tags": "web prod db",
            "nic0_mac": "aa:00:00:11:22:33", "nic0_ip": null, "nic0_network": null,
            "nic0_name": "eth0", "nic0_link": "br0", "nic0_mode": "bridged", "nic0_vlan": "",
            "nic1_mac": "aa:00:00:44:55:66", "nic1_ip": "192.0.2.10", "nic1_network": "net-a",
            "nic1_name": "eth1", "nic1_link": "ovs0", "nic1_mode": "openvswitch",
            "nic1_vlan": ".100",
            "nic_count": "2",
            "disk0_ivname": "disk/0", "disk0_dump": dumps[0], "disk0_size": "8",
            "disk0_name": "root",
            "disk1_ivname": "disk/1", "disk1_dump": dumps[1], "disk1_size": "4",
            "disk1_name": "data",
            "disk_count": "2",
        })
    );
    assert_eq!(
        sec["hypervisor"],
        json!({
            "kernel_path": "", "boot_order": "disk", "cpu_cores": "0", "use_chroot": "False",
            "kernel_args": "ro console=ttyS0",
        }),
        "migration_port is cluster-global (HVC_GLOBALS) and never exported"
    );
    assert_eq!(
        sec["backend"],
        json!({ "maxmem": "1024", "minmem": "512", "vcpus": "2", "auto_balance": "True", "spindle_use": "1" })
    );
    // '%' was written as '%%' and Ganeti's parser reads the original value back.
    assert_eq!(
        sec["os"],
        json!({
            "dhcp": "yes", "fill_ratio": "50% of 100%",
            "banner": "it's  \"quoted\"; ; # not a comment",
        })
    );
    assert_eq!(sec["os_private"], json!({ "root_pw": "s3cret%x" }));
    assert!(f.config_ini().contains("fill_ratio = 50%% of 100%%\n"));

    // What Ganeti's import (LUInstanceCreate._ReadExportParams and CheckPrereq) takes from it.
    let imp = &v["import"];
    assert_eq!(imp["os_type"], "debootstrap+default");
    assert_eq!(
        imp["disks"],
        json!([{ "size": 8, "name": "root" }, { "size": 4, "name": "data" }])
    );
    assert_eq!(
        imp["nics"],
        json!([
            { "ip": null, "mac": "aa:00:00:11:22:33", "name": "eth0", "link": "br0", "mode": "bridged", "vlan": "" },
            // With a network, link and mode come from the node group, not the export.
            { "ip": "192.0.2.10", "mac": "aa:00:00:44:55:66", "name": "eth1", "network": "net-a" },
        ]),
        "_ReadExportParams' view of the NICs (JSON objects compare as maps)"
    );
    assert_eq!(imp["tags"], json!(["web", "prod", "db"]));
    assert_eq!(imp["hypervisor"], "kvm");
    assert_eq!(imp["hvparams"]["boot_order"], "disk");
    assert_eq!(imp["beparams"]["maxmem"], "1024");
    assert_eq!(imp["osparams"]["fill_ratio"], "50% of 100%");
    assert_eq!(imp["osparams_private"], json!({ "root_pw": "s3cret%x" }));
    // The dumps Ganeti would import exist and hold the disks' bytes.
    let images: Vec<String> = imp["disk_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().expect("a dump for every disk").to_string())
        .collect();
    assert_eq!(images, dumps);
    for (dump, disk) in images.iter().zip(&f.disks) {
        assert_same_bytes(&export.join(dump), disk);
    }
}

fn compare_with_finalize_export(snapshot: bool) {
    let f = fixture(snapshot);
    let r = f.export(snapshot);
    let snapshotted: Vec<bool> = r["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["snapshot"].as_bool().unwrap())
        .collect();
    assert_eq!(snapshotted, [snapshot, snapshot]);
    let ours = f.config_ini();
    // Ganeti writes its reference on a node of its own, never into our export directory.
    let reference_root = f.dir.path().join("ganeti-ref").join("node2");
    let v = ganeti(
        &reference_root,
        &[
            "finalize",
            s(&f.cfg),
            INST,
            &serde_json::to_string(&snapshotted).unwrap(),
        ],
    );
    // Ganeti's own bug (docs/ganeti-compat.md #5): a '%' in a parameter crashes FinalizeExport.
    let raw_error = v["raw"]["error"].as_str().unwrap_or_default();
    assert!(
        raw_error.starts_with("ValueError: invalid interpolation syntax"),
        "expected Ganeti's FinalizeExport to fail on '%': {}",
        v["raw"]
    );
    let theirs = v["escaped"].as_str().expect("Ganeti's config.ini");
    assert_eq!(
        normalized(&ours),
        normalized(theirs),
        "our config.ini differs from Ganeti's FinalizeExport.\n--- ours\n{ours}\n--- Ganeti's\n{theirs}"
    );
    // The excluded values are well-formed on our side.
    assert!(ours.contains("\ntimestamp = 1"), "{ours}");
    for d in r["disks"].as_array().unwrap() {
        let dump = d["dump"].as_str().unwrap();
        assert_eq!(dump.len(), 36, "a UUID: {dump}");
        assert!(ours.contains(&format!("_dump = {dump}\n")));
    }
}

#[test]
fn config_ini_is_ganetis_finalize_export_for_an_offline_instance() {
    // Disks exported directly: Ganeti's snap_disks are the instance's own disks (named).
    compare_with_finalize_export(false);
}

#[test]
fn config_ini_is_ganetis_finalize_export_for_a_snapshot_export() {
    // A running instance snapshotted live: Ganeti's snapshot disks have no name (None).
    compare_with_finalize_export(true);
}

// ---------------------------------------------------------------------------------------------
// `--remove-instance` when the disks cannot be removed (Ganeti's `RemoveInstance` with and
// without `ignore_failures`, `lib/cmdlib/instance_utils.py`).

/// A down instance whose disks are reached through a read-only bind mount: they can be read
/// (exported) but not removed.
fn unremovable_disks_fixture() -> (Fixture, ReadOnlyBind) {
    let f = fixture(false);
    let ro_dir = f.dir.path().join("ro");
    let ro = ReadOnlyBind::new(f.dir.path(), &ro_dir);
    // Point the instance's disks at their read-only view.
    let text = fs::read_to_string(&f.cfg).unwrap();
    let mut text = text;
    for d in &f.disks {
        let ro_path = ro_dir.join(d.file_name().unwrap());
        text = text.replace(&format!("path = {:?}", s(d)), &format!("path = {:?}", s(&ro_path)));
    }
    fs::write(&f.cfg, text).unwrap();
    (f, ro)
}

fn export_and_remove(f: &Fixture, ignore: bool) -> (bool, String, String) {
    let mut a = vec!["export", "--cluster", s(&f.cfg), "-n", "node2", "--remove-instance"];
    if ignore {
        a.push("--ignore-remove-failures");
    }
    a.push(INST);
    ds_text(&a)
}

#[test]
fn remove_instance_failure_fails_the_export_like_ganeti() {
    let (f, _ro) = unremovable_disks_fixture();
    let (ok, out, err) = export_and_remove(&f, false);
    assert!(!ok, "{out}\n{err}");
    assert!(out.contains("Removing instance inst1.example.com"), "{out}");
    // Ganeti: OpExecError("Can't remove instance's disks"); we add which disk and why.
    assert!(
        err.contains("Failure: command execution error:\nCan't remove instance's disks: disk/0: "),
        "{err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    // Like Ganeti, the export was finalized before the removal and stays; the instance stays
    // in the config, with its disks.
    assert!(f.disks.iter().all(|d| d.exists()));
    let cfg = fs::read_to_string(&f.cfg).unwrap();
    assert!(cfg.contains(INST), "the instance is kept");
    assert_eq!(names(&ganeti(&f.roots[1], &["list"])), [INST]);
}

#[test]
fn remove_instance_failure_is_a_warning_with_ignore_remove_failures() {
    let (f, _ro) = unremovable_disks_fixture();
    let (ok, out, err) = export_and_remove(&f, true);
    assert!(ok, "{out}\n{err}");
    // Ganeti: feedback_fn("Warning: can't remove instance's disks").
    assert!(
        out.contains(" - WARNING: can't remove instance's disks: disk/0: "),
        "{out}"
    );
    assert!(
        out.contains("Removing old exports for instance inst1.example.com"),
        "{out}"
    );
    // The disks are still there (they could not be removed), the instance is gone from the
    // config, and the export is complete and accepted by Ganeti.
    assert!(f.disks.iter().all(|d| d.exists()));
    let cfg = fs::read_to_string(&f.cfg).unwrap();
    assert!(!cfg.contains(INST), "the instance is removed from the config:\n{cfg}");
    assert_eq!(names(&ganeti(&f.roots[1], &["list"])), [INST]);
    let info = ganeti(&f.roots[1], &["info", s(&f.export_dir(2).join(INST))]);
    assert_eq!(info["import"]["disks"].as_array().map(Vec::len), Some(2), "{info}");
}

/// Our `config.ini` writer against Ganeti's reader where the file could go wrong: a `\r` in a
/// value (Ganeti reads the file with universal newlines) must not become a key of its own, and
/// the names and texts the cluster config accepts (an OS parameter with `-`, a value with line
/// breaks) are read back exactly. The cluster config refuses `\r` in the first place
/// (`orchestrator/tests/cluster.rs`); this is the writer's own guard.
#[test]
fn ganeti_reads_no_injected_key_from_a_carriage_return() {
    use diskstream_orchestrator::export::config_ini::IniDocument;
    let f = fixture(false);
    f.export(false);
    let ini = f.export_dir(2).join(INST).join("config.ini");
    let mut doc = IniDocument::parse(&fs::read_to_string(&ini).unwrap()).unwrap();
    let os = doc.sections.iter_mut().find(|s| s.name == "os").unwrap();
    os.entries.push(("cr".into(), "one\rinjected = 1".into()));
    os.entries.push(("crlf".into(), "two\r\n[backend]".into()));
    os.entries.push(("dhcp-allowed".into(), "a\nb = c".into()));
    fs::write(&ini, doc.to_ganeti_string()).unwrap();
    let v = ganeti(&f.roots[1], &["info", s(&f.export_dir(2).join(INST))]);
    assert!(v.get("error").is_none(), "Ganeti cannot read the file: {v}");
    let sec = &v["sections"];
    assert_eq!(
        sec["os"],
        json!({
            "dhcp": "yes", "fill_ratio": "50% of 100%",
            "banner": "it's  \"quoted\"; ; # not a comment",
            "cr": "one\ninjected = 1", "crlf": "two\n[backend]", "dhcp-allowed": "a\nb = c",
        }),
        "no key or section injected"
    );
    assert_eq!(sec["backend"]["maxmem"], "1024", "[backend] is still the real one");
}
