//! `config.ini` golden test: the file Ganeti 3.0's own `FinalizeExport` wrote for the example
//! instance of ecosystem.md §1.5, reproduced byte for byte.

use diskstream_orchestrator::cluster::{Cluster, DiskTemplate};
use diskstream_orchestrator::export::config_ini::{export_config, ExportedDisk, IniDocument};

/// The instance of the reference example. Its primary node's UUID is the node name because
/// the reference run gave Ganeti a node name where Ganeti normally has a UUID.
const CLUSTER: &str = r#"
[cluster]
name = "cluster.example.com"
master = "node1.example.com"

[[nodes]]
name = "node1.example.com"
uuid = "node1.example.com"
root = "node1"

[[instances]]
name = "inst1.example.com"
uuid = "inst1-uuid"
primary_node = "node1.example.com"
os = "debootstrap+default"
hypervisor = "kvm"
admin_state = "up"
tags = ["web", "prod"]

[instances.beparams]
maxmem = 1024
minmem = 512
vcpus = 2

[instances.hvparams]
kernel_path = ""
boot_order = "disk"
migration_port = 8102

[instances.osparams]
dhcp = "yes"

[instances.osparams_private]
root_pw = "s3cret"

[[instances.nics]]
mac = "aa:00:00:11:22:33"
name = "eth0"
mode = "bridged"
link = "br0"

[[instances.disks]]
uuid = "disk0-uuid"
name = "root"
size = 64
template = "plain"
path = "/dev/xenvg/inst1-root"
"#;

/// Verbatim from ecosystem.md §1.5 (note `nic0_vlan = ` and `kernel_path = ` end in a space).
const GOLDEN: &str = "[export]
version = 0
timestamp = 1795659271
source = node1.example.com
os = debootstrap+default
compression = none

[instance]
name = inst1.example.com
maxmem = 1024
minmem = 512
memory = 1024
vcpus = 2
disk_template = plain
hypervisor = kvm
tags = web prod
nic0_mac = aa:00:00:11:22:33
nic0_ip = None
nic0_network = None
nic0_name = eth0
nic0_link = br0
nic0_mode = bridged
nic0_vlan = 
nic_count = 1
disk0_ivname = disk/0
disk0_dump = aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee
disk0_size = 64
disk0_name = root
disk_count = 1

[hypervisor]
kernel_path = 
boot_order = disk

[backend]
maxmem = 1024
minmem = 512
vcpus = 2

[os]
dhcp = yes

[os_private]
root_pw = s3cret

";

fn disk() -> ExportedDisk {
    ExportedDisk {
        iv_name: "disk/0".into(),
        dump: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
        size_mib: 64,
        name: Some("root".into()),
        template: DiskTemplate::Plain,
    }
}

#[test]
fn config_ini_matches_ganetis_output_byte_for_byte() {
    let c = Cluster::from_str_at(CLUSTER, "/c/cluster.toml").unwrap();
    let inst = c.instance("inst1.example.com").unwrap();
    let doc = export_config(&c, inst, &[disk()], 1_795_659_271);
    let text = doc.to_ganeti_string();
    assert_eq!(text, GOLDEN);
    assert_eq!(IniDocument::parse(&text).unwrap(), doc);
}

#[test]
fn snapshots_without_names_percent_and_mixed_templates() {
    let text = CLUSTER.replace("dhcp = \"yes\"", "dhcp = \"yes\"\nquota = \"50%\"");
    let c = Cluster::from_str_at(&text, "/c/cluster.toml").unwrap();
    let inst = c.instance("inst1.example.com").unwrap();
    let mut second = disk();
    second.iv_name = "disk/1".into();
    second.dump = "bbbb".into();
    second.name = None;
    second.template = DiskTemplate::File;
    let doc = export_config(&c, inst, &[disk(), second], 1);
    let text = doc.to_ganeti_string();
    assert!(text.contains("\ndisk_template = mixed\n"));
    assert!(text.contains("\ndisk1_name = None\ndisk_count = 2\n"));
    assert!(text.contains("\nquota = 50%%\n"));
    let back = IniDocument::parse(&text).unwrap();
    assert_eq!(back.get("os", "quota"), Some("50%"));
    assert_eq!(back.get_ganeti("instance", "disk1_name"), None);
    assert_eq!(back.get_ganeti("instance", "nic0_ip"), None);
    assert_eq!(back.get("instance", "nic0_vlan"), Some(""));
}

#[test]
fn a_diskless_export_says_so() {
    let c = Cluster::from_str_at(CLUSTER, "/c/cluster.toml").unwrap();
    let inst = c.instance("inst1.example.com").unwrap();
    let doc = export_config(&c, inst, &[], 1);
    assert_eq!(doc.get("instance", "disk_template"), Some("diskless"));
    assert_eq!(doc.get("instance", "disk_count"), Some("0"));
    let names: Vec<&str> = doc.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["export", "instance", "hypervisor", "backend", "os", "os_private"]
    );
}
