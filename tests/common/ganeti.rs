//! Ganeti 3.0's own Python code as the oracle of our exports (Debian's `ganeti-3.0`,
//! `/usr/share/ganeti/3.0`, run by `/usr/bin/python3` as a virtual-cluster node through
//! `GANETI_ROOTDIR` / `GANETI_HOSTNAME`): `ListExports`, `ExportInfo` with the import side's own
//! reading code, and `FinalizeExport` for a reference `config.ini`. Used by
//! `tests/export_ganeti.rs` (local exports) and `tests/agents.rs` (exports over agents).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const GANETI_LIB: &str = "/usr/share/ganeti/3.0";
const PYTHON: &str = "/usr/bin/python3";

/// The Python side. `argv[1]` is the command; the node comes from `GANETI_ROOTDIR` and
/// `GANETI_HOSTNAME`. Prints one JSON object.
pub const ORACLE: &str = r#"
import json, os, sys, tomllib, types
sys.path.insert(0, "/usr/share/ganeti/3.0")
from ganeti import backend, constants, objects, pathutils, serializer
from ganeti.cmdlib import instance_create

INS, EXP = constants.INISECT_INS, constants.INISECT_EXP

def out(v):
    print(json.dumps(v))

def fail_text(f):
    try:
        return {"ok": f()}
    except Exception as e:
        return {"error": "%s: %s" % (type(e).__name__, e)}

def plain(v):
    return v.Get() if isinstance(v, serializer.Private) else v

cmd = sys.argv[1]
if cmd == "list":
    out(dict(fail_text(backend.ListExports), export_dir=pathutils.EXPORT_DIR))
elif cmd == "info":
    path = sys.argv[2]
    r = fail_text(lambda: backend.ExportInfo(path))
    if "error" in r:
        out(r)
        sys.exit(0)
    text = r["ok"]
    einfo = objects.SerializableConfigParser.Loads(str(text))
    # LUInstanceCreate._ReadExportInfo's checks.
    assert einfo.has_section(EXP), "Corrupted export config"
    version = einfo.get(EXP, "version")
    # LUInstanceCreate._ReadExportParams itself, on an empty import opcode.
    op = types.SimpleNamespace(disks=[], nics=[], tags=[], hypervisor=None, hvparams={},
                               beparams={}, osparams={}, osparams_private={},
                               disk_template=constants.DT_PLAIN, os_type=None)
    instance_create.LUInstanceCreate._ReadExportParams(types.SimpleNamespace(op=op), einfo)
    # LUInstanceCreate.CheckPrereq: the dump of each disk.
    images = []
    for idx in range(len(op.disks)):
        option = "disk%d_dump" % idx
        images.append(einfo.get(INS, option) if einfo.has_option(INS, option) else False)
    out({
        "version": int(version),
        "export_version": constants.EXPORT_VERSION,
        "sections": {s: {k: einfo.get(s, k) for k in einfo.options(s)} for s in einfo.sections()},
        "import": {
            "os_type": op.os_type, "disks": op.disks, "nics": op.nics, "tags": op.tags,
            "hypervisor": op.hypervisor, "hvparams": op.hvparams, "beparams": op.beparams,
            "osparams": op.osparams,
            "osparams_private": {k: plain(v) for k, v in op.osparams_private.items()},
            "disk_images": images,
        },
    })
elif cmd == "finalize":
    # backend.FinalizeExport for an instance built from cluster.toml, as Ganeti's config would
    # hold it. argv: cluster.toml, instance name, JSON list of "was this disk snapshotted".
    with open(sys.argv[2], "rb") as f:
        cluster = tomllib.load(f)
    spec = [i for i in cluster["instances"] if i["name"] == sys.argv[3]][0]
    snapshotted = json.loads(sys.argv[4])
    node_uuid = {n["name"]: n["uuid"] for n in cluster["nodes"]}

    def build(esc):
        # Defaults of docs/cluster-config.md (NIC mode bridged, link and vlan empty, iv_name
        # disk/<i>).
        nics = [objects.NIC(mac=n["mac"], ip=n.get("ip"), network=n.get("network"),
                            name=n.get("name"), uuid=n.get("uuid"),
                            nicparams={"mode": esc(n.get("mode", "bridged")),
                                       "link": esc(n.get("link", "")),
                                       "vlan": esc(n.get("vlan", ""))})
                for n in spec.get("nics", [])]
        disks = []
        for i, d in enumerate(spec.get("disks", [])):
            iv_name = d.get("iv_name", "disk/%d" % i)
            if snapshotted[i]:
                # masterd.instance.ExportInstanceHelper.CreateSnapshots: a new Disk with the
                # size and iv_name of the original, no name, a fresh UUID. Ganeti's snapshots
                # are LVs (dev_type plain); ours of a file disk is a reflinked file (file).
                disk = objects.Disk(dev_type=d["template"], size=d["size"], iv_name=iv_name)
                disk.uuid = "00000000-0000-0000-0000-snapshot%04d" % i
            else:
                disk = objects.Disk(dev_type=d["template"], size=d["size"], iv_name=iv_name,
                                    name=d.get("name"), uuid=d["uuid"])
            disks.append(disk)
        params = lambda key: {k: esc(v) for k, v in spec.get(key, {}).items()}
        inst = objects.Instance(
            name=spec["name"], uuid=spec["uuid"], primary_node=node_uuid[spec["primary_node"]],
            os=spec["os"], hypervisor=spec["hypervisor"], beparams=params("beparams"),
            hvparams=params("hvparams"), osparams=params("osparams"),
            osparams_private=serializer.PrivateDict(params("osparams_private")),
            nics=nics, disks=[d.uuid for d in disks], tags=set(spec.get("tags", [])))
        return inst, disks

    def finalize(esc):
        os.makedirs(os.path.join(pathutils.EXPORT_DIR, spec["name"] + ".new"), exist_ok=True)
        backend.FinalizeExport(*build(esc))
        with open(os.path.join(pathutils.EXPORT_DIR, spec["name"], "config.ini")) as f:
            return f.read()

    raw = fail_text(lambda: finalize(lambda v: v))
    # Ganeti passes values to configparser unescaped, so a '%' crashes it. With '%' written as
    # '%%' (what a writer has to do for Ganeti's reader to read the original value back) it
    # produces the file its import reads the instance's real values from.
    escape = lambda v: v.replace("%", "%%") if isinstance(v, str) else v
    out({"raw": raw, "escaped": finalize(escape)})
else:
    sys.exit("unknown command " + cmd)
"#;

/// Fails (never skips) when Ganeti's code is not installed.
pub fn require_ganeti() {
    assert!(
        Path::new(GANETI_LIB).join("ganeti/backend.py").is_file() && Path::new(PYTHON).is_file(),
        "Ganeti 3.0's Python code ({GANETI_LIB}, run by {PYTHON}) is the oracle of these tests but \
         is not installed: run scripts/test as root, which installs Debian's ganeti-3.0 \
         (apt-get install --no-install-recommends ganeti-3.0)"
    );
}

/// Runs the oracle as the Ganeti node whose root is `node_root` (its last path component is
/// the virtual host name, as Ganeti's vcluster requires).
pub fn ganeti(node_root: &Path, args: &[&str]) -> Value {
    require_ganeti();
    let script = node_root.with_file_name("ganeti_oracle.py");
    fs::create_dir_all(node_root).expect("node root");
    fs::write(&script, ORACLE).expect("write oracle");
    let host = node_root.file_name().expect("root name").to_str().expect("utf-8");
    let out = Command::new(PYTHON)
        .arg(&script)
        .args(args)
        .env("GANETI_ROOTDIR", node_root)
        .env("GANETI_HOSTNAME", host)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "Ganeti oracle {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oracle output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `text` with the values of keys that cannot agree replaced, so the rest can be compared
/// byte for byte.
pub fn normalized(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let Some((key, value)) = line.trim_end_matches('\n').split_once(" = ") else {
                return line.to_string();
            };
            let is_dump = key.starts_with("disk") && key.ends_with("_dump");
            if key == "timestamp" || is_dump {
                // timestamp: the second each file was written. diskN_dump: the dump file
                // name, a fresh UUID per export on both sides (Ganeti: the snapshot's new
                // UUID or the disk's own; ours always fresh, docs/ganeti-compat.md #14).
                format!("{key} = <differs>\n")
            } else if key == "tags" {
                // Ganeti keeps tags in a Python set, so its order is the set's iteration
                // order (string hashing is randomized per process); ours is the config's.
                let mut tags: Vec<&str> = value.split(' ').collect();
                tags.sort_unstable();
                format!("{key} = {}\n", tags.join(" "))
            } else {
                line.to_string()
            }
        })
        .collect()
}
