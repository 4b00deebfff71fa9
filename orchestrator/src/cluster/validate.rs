//! Checks of a parsed cluster config: unique names and UUIDs, references to nodes that exist,
//! required backend parameters, safe file names, limits; and Ganeti's name matching. An
//! inconsistency is an [`Invalid`]: the key at fault and what is wrong with it.

use std::collections::HashSet;

use super::schema::*;

/// Ganeti's `MAX_DISKS`: an instance has at most this many disks.
pub const MAX_DISKS: usize = 16;
/// Ganeti's `MAX_NICS`: an instance has at most this many NICs.
pub const MAX_NICS: usize = 8;

/// The backend parameters every instance must define (Ganeti fills them from cluster defaults;
/// our config has no cluster-level defaults, so they are explicit).
pub const REQUIRED_BEPARAMS: [&str; 3] = ["maxmem", "minmem", "vcpus"];

/// Every backend parameter Ganeti knows (`BES_PARAMETER_TYPES`); any other key is refused.
pub const KNOWN_BEPARAMS: [&str; 6] = [
    "always_failover",
    "auto_balance",
    "maxmem",
    "minmem",
    "spindle_use",
    "vcpus",
];

/// The longest instance, node or disk name (bytes). File and lock names are built from
/// instance and node names with up to 24 more bytes (`.<name>.ds-removing-<pid>`,
/// `<name>.holders`), and a file name may have at most 255 bytes (`NAME_MAX`); 200 leaves room
/// and still fits any DNS name used in practice (Ganeti's names are FQDNs, at most 253).
pub const MAX_NAME_LEN: usize = 200;

/// The largest declared disk size, in MiB: 2^33 MiB = 2^53 bytes (8 PiB). Bytes stay exact in
/// an `f64` (progress and rates) and far from `u64` overflow; no single disk comes near it.
pub const MAX_DISK_SIZE_MIB: u64 = 1 << 33;

/// The longest per-script hook timeout or report interval accepted in the config (seconds):
/// one week.
pub const MAX_HOOKS_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// What is wrong with a config, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct Invalid {
    /// The key at fault, e.g. `instances[1].primary_node`.
    pub key: String,
    /// What is wrong.
    pub msg: String,
}

/// Ganeti's `utils.MatchNameComponent(key, names, case_sensitive=False)`.
///
/// Returns the exact match if there is one; otherwise the single name equal to `key` ignoring
/// case, or else the single name that is `key` followed by `.` and anything (ignoring case).
/// Anything ambiguous is `None`.
pub fn match_name_component<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    if let Some(exact) = names.iter().find(|n| **n == key) {
        return Some(exact);
    }
    let key_up = key.to_uppercase();
    let mut filtered = Vec::new();
    let mut string_matches = Vec::new();
    for name in names {
        let up = name.to_uppercase();
        let matches =
            up == key_up || (up.len() > key_up.len() && up.starts_with(&key_up) && up.as_bytes()[key_up.len()] == b'.');
        if matches {
            filtered.push(*name);
            if up == key_up {
                string_matches.push(*name);
            }
        }
    }
    if string_matches.len() == 1 {
        return Some(string_matches[0]);
    }
    if filtered.len() == 1 {
        return Some(filtered[0]);
    }
    None
}

/// A name that is safe as a file name and a lock name: letters, digits, `.`, `_`, `-`, `:`,
/// not starting with `.` or `-`.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Why an instance name cannot be used although it is a safe file name: it collides with the
/// names the export store and the snapshots give their own entries (`<name>.new` staging
/// directories, hidden `.<name>.ds-removing-<pid>` directories, `<disk>.ds-snap-<name>-<pid>`
/// snapshots), or `None` if it is fine.
pub fn reserved_instance_name(name: &str) -> Option<String> {
    use crate::names::SNAP_MARKER;
    use crate::names::{REMOVING_MARKER, STAGING_SUFFIX};
    if name.ends_with(STAGING_SUFFIX) {
        return Some(format!(
            "ends with '{STAGING_SUFFIX}', the suffix of export staging directories (its export \
             would be hidden from listings and removed as another instance's staging directory)"
        ));
    }
    for marker in [REMOVING_MARKER, SNAP_MARKER] {
        if name.contains(marker) {
            return Some(format!(
                "contains '{marker}', which diskstream uses in the names of its own temporary \
                 directories and snapshots"
            ));
        }
    }
    None
}

/// Why a disk's path cannot be used, or `None` if it is fine: a file or LV name containing
/// `.ds-snap-` looks like the snapshot of another disk (`<disk>.ds-snap-<instance>-<pid>`), and
/// the export of that instance would remove it as a snapshot a killed export left behind.
pub fn reserved_disk_path(path: &std::path::Path) -> Option<String> {
    use crate::names::SNAP_MARKER;
    let name = path.file_name()?.to_string_lossy();
    name.contains(SNAP_MARKER).then(|| {
        format!(
            "its name contains '{SNAP_MARKER}', which diskstream uses in the names of disk \
             snapshots (an export could remove it as a stale snapshot of another disk)"
        )
    })
}

fn check_name_len(key: &str, what: &str, name: &str) -> Result<(), Invalid> {
    if name.len() > MAX_NAME_LEN {
        Err(invalid(
            key,
            format!(
                "{what} name '{}...' is {} bytes long; the limit is {MAX_NAME_LEN} bytes",
                name.chars().take(32).collect::<String>(),
                name.len()
            ),
        ))
    } else {
        Ok(())
    }
}

fn check_seconds(key: &str, v: Option<f64>) -> Result<(), Invalid> {
    match v {
        Some(s) if !(s > 0.0 && s <= MAX_HOOKS_SECONDS) => Err(invalid(
            key,
            format!("must be a number of seconds above 0 and at most {MAX_HOOKS_SECONDS} (one week), not {s}"),
        )),
        _ => Ok(()),
    }
}

/// Ganeti's compression tool name pattern (`^[-_a-zA-Z0-9]+$`).
fn is_tool_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// Checks a whole parsed config.
pub fn validate(c: &ClusterConfig) -> Result<(), Invalid> {
    if c.cluster.name.is_empty() {
        return Err(invalid("cluster.name", "must not be empty"));
    }
    check_text("cluster.name", &c.cluster.name, false)?;
    check_seconds("cluster.hooks_timeout", c.cluster.hooks_timeout)?;
    check_seconds("cluster.hooks_report_interval", c.cluster.hooks_report_interval)?;
    if c.cluster.pki.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(invalid("cluster.pki", "must not be empty"));
    }
    // Empty would be the config's own directory.
    if c.cluster.lock_dir.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(invalid("cluster.lock_dir", "must not be empty"));
    }
    for (i, tool) in c.cluster.compression_tools.iter().enumerate() {
        if !is_tool_name(tool) {
            return Err(invalid(
                format!("cluster.compression_tools[{i}]"),
                format!("invalid compression tool name '{tool}'"),
            ));
        }
    }

    let mut node_names = HashSet::new();
    let mut folded_names = HashSet::new();
    let mut uuids = HashSet::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let key = format!("nodes[{i}]");
        check_name_len(&format!("{key}.name"), "node", &n.name)?;
        if !is_safe_name(&n.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("invalid node name '{}'", n.name),
            ));
        }
        // As DNS names (and certificates) compare them: without case, a final dot ignored.
        // Two nodes that differ only so would each pass for the other in a TLS handshake.
        node_names.insert(n.name.as_str());
        if !folded_names.insert(n.name.trim_end_matches('.').to_ascii_lowercase()) {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "duplicate node name '{}' (node names are compared without case and a final '.')",
                    n.name
                ),
            ));
        }
        check_uuid(&mut uuids, &n.uuid, &format!("{key}.uuid"))?;
        if n.root.as_os_str().is_empty() {
            return Err(invalid(format!("{key}.root"), "must not be empty"));
        }
        if let Some(a) = &n.address {
            check_address(&format!("{key}.address"), a)?;
        }
    }
    if !node_names.contains(c.cluster.master.as_str()) {
        return Err(invalid(
            "cluster.master",
            format!("node '{}' is not defined in [[nodes]]", c.cluster.master),
        ));
    }

    let mut inst_names = HashSet::new();
    for (i, inst) in c.instances.iter().enumerate() {
        let key = format!("instances[{i}]");
        validate_instance(inst, &key, &node_names, &mut inst_names, &mut uuids)
            .map_err(|e| invalid(e.key, format!("{} (instance '{}')", e.msg, inst.name)))?;
    }
    Ok(())
}

/// An agent address: `host:port` with a port in 1..=65535 (`[v6]:port` for IPv6 literals).
fn check_address(key: &str, a: &str) -> Result<(), Invalid> {
    let bad = |why: &str| {
        invalid(
            key,
            format!("invalid address '{a}': {why} (expected host:port, e.g. node2.example.com:1811)"),
        )
    };
    let (host, port) = a.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) || (host.contains(':') && !a.starts_with('[')) {
        return Err(bad("bad host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("bad port")),
    }
}

fn check_uuid<'a>(seen: &mut HashSet<&'a str>, uuid: &'a str, key: &str) -> Result<(), Invalid> {
    if !is_safe_name(uuid) {
        return Err(invalid(key, format!("invalid UUID '{uuid}'")));
    }
    if !seen.insert(uuid) {
        return Err(invalid(key, format!("duplicate UUID '{uuid}'")));
    }
    Ok(())
}

fn validate_instance<'a>(
    inst: &'a Instance,
    key: &str,
    node_names: &HashSet<&str>,
    inst_names: &mut HashSet<&'a str>,
    uuids: &mut HashSet<&'a str>,
) -> Result<(), Invalid> {
    check_name_len(&format!("{key}.name"), "instance", &inst.name)?;
    if !is_safe_name(&inst.name) {
        return Err(invalid(
            format!("{key}.name"),
            format!("invalid instance name '{}'", inst.name),
        ));
    }
    if let Some(why) = reserved_instance_name(&inst.name) {
        return Err(invalid(
            format!("{key}.name"),
            format!("instance name '{}' cannot be used: it {why}", inst.name),
        ));
    }
    // As Ganeti's name lookup does (and a file system that ignores case would): without case,
    // a final dot ignored. Two such instances would share export directories but not locks.
    let fold = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
    if let Some(other) = inst_names.iter().find(|o| fold(o) == fold(&inst.name)) {
        return Err(invalid(
            format!("{key}.name"),
            format!(
                "duplicate instance name '{}' (of instance '{other}': instance names are compared \
                 without case and a final '.')",
                inst.name
            ),
        ));
    }
    inst_names.insert(inst.name.as_str());
    check_uuid(uuids, &inst.uuid, &format!("{key}.uuid"))?;
    if !node_names.contains(inst.primary_node.as_str()) {
        return Err(invalid(
            format!("{key}.primary_node"),
            format!("node '{}' is not defined in [[nodes]]", inst.primary_node),
        ));
    }
    for (j, s) in inst.secondary_nodes.iter().enumerate() {
        let k = format!("{key}.secondary_nodes[{j}]");
        if !node_names.contains(s.as_str()) {
            return Err(invalid(k, format!("node '{s}' is not defined in [[nodes]]")));
        }
        if *s == inst.primary_node {
            return Err(invalid(k, "the primary node cannot also be a secondary"));
        }
    }
    if inst.os.is_empty() {
        return Err(invalid(format!("{key}.os"), "must not be empty"));
    }
    if inst.hypervisor.is_empty() {
        return Err(invalid(format!("{key}.hypervisor"), "must not be empty"));
    }
    check_params(inst, key)?;
    check_instance_texts(inst, key)?;
    check_nics(inst, key, uuids)?;
    check_disks(inst, key, uuids)?;
    check_driver(inst, key)
}

/// Backend parameters and the NIC and disk counts.
fn check_params(inst: &Instance, key: &str) -> Result<(), Invalid> {
    for p in REQUIRED_BEPARAMS {
        match inst.beparams.get(p) {
            Some(ParamValue::Int(v)) if *v >= 0 => {}
            Some(_) => return Err(invalid(format!("{key}.beparams.{p}"), "must be a non-negative integer")),
            None => return Err(invalid(format!("{key}.beparams.{p}"), "is required")),
        }
    }
    check_param_tables(inst, key)?;
    if let Some(k) = inst.beparams.keys().find(|k| !KNOWN_BEPARAMS.contains(&k.as_str())) {
        return Err(invalid(
            format!("{key}.beparams.{k}"),
            format!("unknown backend parameter '{k}' (known: {})", KNOWN_BEPARAMS.join(", ")),
        ));
    }
    if inst.nics.len() > MAX_NICS {
        return Err(invalid(
            format!("{key}.nics"),
            format!("at most {MAX_NICS} NICs are allowed"),
        ));
    }
    if inst.disks.len() > MAX_DISKS {
        return Err(invalid(
            format!("{key}.disks"),
            format!("at most {MAX_DISKS} disks are allowed"),
        ));
    }
    Ok(())
}

/// Whether `k` is a parameter name as Ganeti spells them: lower-case ASCII letters, digits and
/// `_` (every name in Ganeti's `HVS_PARAMETERS` and `BES_PARAMETERS`), and for OS parameters
/// also `-` (Ganeti turns it into `_` in the OS scripts' `OSP_*` variables).
pub fn is_param_name(k: &str, dash: bool) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (dash && b == b'-'))
}

/// Refuses a text that reaches `config.ini` and hook environments with a character neither can
/// carry: `\r` (Ganeti reads `config.ini` with universal newlines, so a `\r` ends the line and
/// what follows is read as a key of its own) and NUL (no environment variable can hold one).
/// A private value (`osparams_private`) is not shown in the message.
pub fn check_text(key: &str, s: &str, private: bool) -> Result<(), Invalid> {
    let bad = if s.contains('\r') {
        "a carriage return ('\\r'), which Ganeti's config.ini reader takes for a line break"
    } else if s.contains('\0') {
        "a NUL byte, which no hook environment variable can hold"
    } else {
        return Ok(());
    };
    let value = if private {
        "the private value (not shown)".to_string()
    } else {
        let shown: String = s.chars().take(64).collect();
        let more = if shown.len() < s.len() { "..." } else { "" };
        format!("the value \"{}\"{more}", shown.escape_debug())
    };
    Err(invalid(key, format!("{value} contains {bad}")))
}

/// Keys and values of `hvparams`, `beparams`, `osparams` and `osparams_private`: keys must be
/// Ganeti parameter names ([`is_param_name`]; `config.ini` writes them as keys, where `=`, `:`,
/// `[` or a line break would make Ganeti read other keys or sections, and lower-cases them, so
/// `Kernel_Path` and `kernel_path` would become one key twice), values pass [`check_text`].
fn check_param_tables(inst: &Instance, key: &str) -> Result<(), Invalid> {
    let tables = [
        ("hvparams", &inst.hvparams, false, "hypervisor"),
        ("beparams", &inst.beparams, false, "backend"),
        ("osparams", &inst.osparams, true, "OS"),
        ("osparams_private", &inst.osparams_private, true, "OS"),
    ];
    for (table, map, dash, what) in tables {
        for (k, v) in map {
            let pk = format!("{key}.{table}.{}", k.escape_debug());
            if !is_param_name(k, dash) {
                let chars = if dash { "'_' and '-'" } else { "'_'" };
                return Err(invalid(
                    pk,
                    format!(
                        "invalid {what} parameter name \"{}\": Ganeti's parameter names are lower-case \
                         letters, digits and {chars} (config.ini lower-cases keys and cannot hold '=', \
                         ':', '[' or line breaks in them)",
                        k.escape_debug()
                    ),
                ));
            }
            if let ParamValue::Str(s) = v {
                check_text(&pk, s, table == "osparams_private")?;
            }
        }
    }
    Ok(())
}

/// The texts of an instance that reach `config.ini` and hooks besides its parameters.
fn check_instance_texts(inst: &Instance, key: &str) -> Result<(), Invalid> {
    check_text(&format!("{key}.os"), &inst.os, false)?;
    check_text(&format!("{key}.hypervisor"), &inst.hypervisor, false)?;
    for (j, t) in inst.tags.iter().enumerate() {
        check_text(&format!("{key}.tags[{j}]"), t, false)?;
    }
    for (j, n) in inst.nics.iter().enumerate() {
        let fields = [
            ("mac", Some(&n.mac)),
            ("ip", n.ip.as_ref()),
            ("network", n.network.as_ref()),
            ("name", n.name.as_ref()),
            ("mode", Some(&n.mode)),
            ("link", Some(&n.link)),
            ("vlan", Some(&n.vlan)),
        ];
        for (f, v) in fields {
            if let Some(v) = v {
                check_text(&format!("{key}.nics[{j}].{f}"), v, false)?;
            }
        }
    }
    for (j, d) in inst.disks.iter().enumerate() {
        for (f, v) in [("name", d.name.as_ref()), ("iv_name", d.iv_name.as_ref())] {
            if let Some(v) = v {
                check_text(&format!("{key}.disks[{j}].{f}"), v, false)?;
            }
        }
    }
    Ok(())
}

/// NIC names and UUIDs.
fn check_nics<'a>(inst: &'a Instance, key: &str, uuids: &mut HashSet<&'a str>) -> Result<(), Invalid> {
    let mut nic_names = HashSet::new();
    for (j, nic) in inst.nics.iter().enumerate() {
        if let Some(name) = &nic.name {
            if !nic_names.insert(name.as_str()) {
                return Err(invalid(
                    format!("{key}.nics[{j}].name"),
                    format!("duplicate NIC name '{name}'"),
                ));
            }
        }
        if let Some(uuid) = &nic.uuid {
            check_uuid(uuids, uuid, &format!("{key}.nics[{j}].uuid"))?;
        }
    }
    Ok(())
}

/// Disk UUIDs, names, sizes, paths and modes.
fn check_disks<'a>(inst: &'a Instance, key: &str, uuids: &mut HashSet<&'a str>) -> Result<(), Invalid> {
    let mut disk_names = HashSet::new();
    for (j, d) in inst.disks.iter().enumerate() {
        let dk = format!("{key}.disks[{j}]");
        check_uuid(uuids, &d.uuid, &format!("{dk}.uuid"))?;
        if let Some(name) = &d.name {
            check_name_len(&format!("{dk}.name"), "disk", name)?;
            if !disk_names.insert(name.as_str()) {
                return Err(invalid(format!("{dk}.name"), format!("duplicate disk name '{name}'")));
            }
        }
        if d.size == 0 {
            return Err(invalid(format!("{dk}.size"), "must be at least 1 (MiB)"));
        }
        if d.size > MAX_DISK_SIZE_MIB {
            return Err(invalid(
                format!("{dk}.size"),
                format!(
                    "{} MiB is absurd: the largest disk size accepted is {MAX_DISK_SIZE_MIB} MiB (8 PiB)",
                    d.size
                ),
            ));
        }
        check_snapshot_name_len(inst, d, &dk)?;
        if d.path.as_os_str().is_empty() {
            return Err(invalid(format!("{dk}.path"), "must not be empty"));
        }
        if let Some(why) = reserved_disk_path(&d.path) {
            return Err(invalid(
                format!("{dk}.path"),
                format!("disk path '{}' cannot be used: {why}", d.path.display()),
            ));
        }
        if d.mode != "rw" && d.mode != "ro" {
            return Err(invalid(
                format!("{dk}.mode"),
                format!("must be 'rw' or 'ro', not '{}'", d.mode),
            ));
        }
    }
    Ok(())
}

/// The driver's commands.
fn check_driver(inst: &Instance, key: &str) -> Result<(), Invalid> {
    match &inst.driver {
        Some(Driver::Process { start }) => check_command(start, &format!("{key}.driver.start"))?,
        Some(Driver::Command { start, stop, status }) => {
            check_command(start, &format!("{key}.driver.start"))?;
            check_command(stop, &format!("{key}.driver.stop"))?;
            check_command(status, &format!("{key}.driver.status"))?;
        }
        None => {}
    }
    Ok(())
}

/// The snapshot of a disk is named `<disk file or LV>.ds-snap-<instance>-<pid>`: it must fit a
/// file name (255 bytes) or an LVM name (127 bytes), else the export would fail at the snapshot.
fn check_snapshot_name_len(inst: &Instance, d: &Disk, dk: &str) -> Result<(), Invalid> {
    let (limit, what) = match d.template {
        DiskTemplate::File => (255, "a file name (255 bytes)"),
        DiskTemplate::Plain => (127, "an LVM volume name (127 bytes)"),
        DiskTemplate::Blockdev => return Ok(()),
    };
    let base = d.path.file_name().map_or(0, |b| b.len());
    let snap = crate::names::snapshot_name(&"x".repeat(base), &inst.name, u32::MAX).len();
    if snap > limit {
        return Err(invalid(
            format!("{dk}.path"),
            format!(
                "the disk's snapshot name (<disk>{}<instance>-<pid>) would be {snap} bytes, longer than \
                 {what}: shorten the disk's file name or the instance name",
                crate::names::SNAP_MARKER
            ),
        ));
    }
    Ok(())
}

fn check_command(c: &CommandSpec, key: &str) -> Result<(), Invalid> {
    let empty = match c {
        CommandSpec::Shell(s) => s.trim().is_empty(),
        CommandSpec::Argv(v) => v.first().is_none_or(|p| p.is_empty()),
    };
    if empty {
        Err(invalid(key, "the command must not be empty"))
    } else {
        Ok(())
    }
}
