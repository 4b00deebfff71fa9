//! An export's `config.ini`, written byte for byte as Ganeti's `FinalizeExport` writes it.
//!
//! Ganeti's import (`gnt-backup import`) reads this file with Python's `configparser`, so the
//! format is a compatibility boundary: sections `export`, `instance`, `hypervisor`, `backend`,
//! `os`, `os_private` in that order; keys in Ganeti's order and lower case; `key = value`
//! lines (a trailing space after `= ` for an empty value); a blank line after each section;
//! values as Python `str()` renders them (`True`, `None`). Two things Ganeti gets wrong are done
//! right: `%` is written as `%%` (Ganeti crashes at finalize on a `%`, and its reader turns
//! `%%` back into `%`), and embedded newlines become continuation lines (`\n\t`), which is
//! what `configparser` itself writes.
//!
//! [`IniDocument::parse`] is a small reader with the same rules, for our own tests and tools.

use std::fmt::Write as _;

use crate::cluster::{disk_template_of, Cluster, DiskTemplate, Instance};

/// Ganeti's `EXPORT_VERSION`.
pub const EXPORT_VERSION: u32 = 0;

/// Hypervisor parameters that are cluster-global and never exported (`HVC_GLOBALS`).
pub const HVC_GLOBALS: [&str; 3] = ["migration_bandwidth", "migration_mode", "migration_port"];

/// One `[section]` with its entries in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniSection {
    /// The section name.
    pub name: String,
    /// `(key, value)` pairs, in file order; values unescaped.
    pub entries: Vec<(String, String)>,
}

/// A whole ini file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IniDocument {
    /// Sections in file order.
    pub sections: Vec<IniSection>,
}

/// Why an ini text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct IniError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl IniDocument {
    /// Appends a section and returns it for filling.
    pub fn section(&mut self, name: &str) -> &mut IniSection {
        self.sections.push(IniSection {
            name: name.to_string(),
            entries: Vec::new(),
        });
        self.sections.last_mut().expect("just pushed")
    }

    /// The value of `key` in `section`, as written.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .iter()
            .find(|s| s.name == section)?
            .entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value as Ganeti's `SerializableConfigParser.get` returns it: `None` for a missing
    /// key or a value equal to `none` in any case.
    pub fn get_ganeti(&self, section: &str, key: &str) -> Option<&str> {
        self.get(section, key).filter(|v| !v.eq_ignore_ascii_case("none"))
    }

    /// The text, as Python's `ConfigParser.write` (through Ganeti's `Dumps`) produces it.
    ///
    /// Keys are lower-cased and must then be parameter-like names (ASCII letters, digits, `_`,
    /// `-`; the cluster config refuses any other, [`crate::cluster::is_param_name`]): anything
    /// else (`=`, `:`, a leading `[`, a line break) would make Ganeti read another key or
    /// section, so it panics rather than write a file Ganeti misreads. In values, `\r\n` and a
    /// lone `\r` are written as line breaks (Ganeti reads the file with universal newlines: a
    /// `\r` written as is would end the line and start a key of its own), every line break as a
    /// continuation line, `%` as `%%`.
    pub fn to_ganeti_string(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            let _ = writeln!(out, "[{}]", s.name);
            for (k, v) in &s.entries {
                let k = k.to_lowercase();
                assert!(
                    is_ini_key(&k),
                    "config.ini key {k:?} in [{}] is not a parameter name",
                    s.name
                );
                let v = v
                    .replace("\r\n", "\n")
                    .replace('\r', "\n")
                    .replace('%', "%%")
                    .replace('\n', "\n\t");
                let _ = writeln!(out, "{k} = {v}");
            }
            out.push('\n');
        }
        out
    }

    /// Reads ini text with `configparser`'s rules as Ganeti uses them: `=` or `:` separators,
    /// lower-cased keys, stripped values, continuation lines joined with `\n`, `%%` read as
    /// `%`, and a bare `%` or a duplicate key or section refused. `%(name)s` interpolation is
    /// not supported (refused), since our writer never produces it.
    pub fn parse(text: &str) -> Result<Self, IniError> {
        let mut doc = Self::default();
        let err = |line: usize, msg: String| IniError { line, msg };
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() || raw.trim_start().starts_with(['#', ';']) {
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                let entry = doc
                    .sections
                    .last_mut()
                    .and_then(|s| s.entries.last_mut())
                    .ok_or_else(|| err(line, "continuation line without a key".into()))?;
                entry.1.push('\n');
                entry.1.push_str(&unescape(raw.trim(), line)?);
                continue;
            }
            if let Some(name) = raw.trim_end().strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                if doc.sections.iter().any(|s| s.name == name) {
                    return Err(err(line, format!("duplicate section '{name}'")));
                }
                doc.section(name);
                continue;
            }
            let pos = raw
                .find(['=', ':'])
                .ok_or_else(|| err(line, format!("not a key = value line: {raw:?}")))?;
            let key = raw[..pos].trim().to_lowercase();
            let value = unescape(raw[pos + 1..].trim(), line)?;
            let section = doc
                .sections
                .last_mut()
                .ok_or_else(|| err(line, "key outside any section".into()))?;
            if section.entries.iter().any(|(k, _)| *k == key) {
                return Err(err(
                    line,
                    format!("duplicate key '{key}' in section '{}'", section.name),
                ));
            }
            section.entries.push((key, value));
        }
        Ok(doc)
    }
}

/// A key [`IniDocument::to_ganeti_string`] writes: a parameter name as the cluster config
/// allows them (lower-case ASCII letters, digits, `_`, and the `-` of OS parameters).
fn is_ini_key(k: &str) -> bool {
    crate::cluster::is_param_name(k, true)
}

fn unescape(v: &str, line: usize) -> Result<String, IniError> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '%' && chars.next() != Some('%') {
            return Err(IniError {
                line,
                msg: "'%' must be followed by '%'".into(),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// One disk as it was exported (a snapshot or the instance's own disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedDisk {
    /// Ganeti's `iv_name`, e.g. `disk/0`.
    pub iv_name: String,
    /// The dump file's name in the export directory (a fresh UUID per export).
    pub dump: String,
    /// Size in MiB.
    pub size_mib: u64,
    /// The disk's name; Ganeti's snapshots have none (`None` in the file).
    pub name: Option<String>,
    /// The template of what was transferred (a snapshot of an LV is `plain`).
    pub template: DiskTemplate,
}

fn py_opt(v: Option<&str>) -> String {
    v.unwrap_or("None").to_string()
}

/// The `config.ini` of an export of `inst` with the transferred `disks`, as Ganeti's
/// `FinalizeExport` builds it.
pub fn export_config(cluster: &Cluster, inst: &Instance, disks: &[ExportedDisk], timestamp: u64) -> IniDocument {
    let mut doc = IniDocument::default();
    let source = cluster
        .node(&inst.primary_node)
        .map(|n| n.uuid.clone())
        .unwrap_or_else(|| inst.primary_node.clone());
    let e = doc.section("export");
    let mut put = |k: &str, v: String| e.entries.push((k.to_string(), v));
    put("version", EXPORT_VERSION.to_string());
    put("timestamp", timestamp.to_string());
    put("source", source);
    put("os", inst.os.clone());
    put("compression", "none".into());

    let s = doc.section("instance");
    let mut put = |k: String, v: String| s.entries.push((k, v));
    let be = |k: &str| inst.be_int(k).map(|v| v.to_string()).unwrap_or_default();
    put("name".into(), inst.name.clone());
    put("maxmem".into(), be("maxmem"));
    put("minmem".into(), be("minmem"));
    put("memory".into(), be("maxmem"));
    put("vcpus".into(), be("vcpus"));
    put(
        "disk_template".into(),
        disk_template_of(disks.iter().map(|d| d.template)).into(),
    );
    put("hypervisor".into(), inst.hypervisor.clone());
    put("tags".into(), inst.tags.join(" "));
    for (i, nic) in inst.nics.iter().enumerate() {
        put(format!("nic{i}_mac"), nic.mac.clone());
        put(format!("nic{i}_ip"), py_opt(nic.ip.as_deref()));
        put(format!("nic{i}_network"), py_opt(nic.network.as_deref()));
        put(format!("nic{i}_name"), py_opt(nic.name.as_deref()));
        // NICS_PARAMETER_TYPES, in Ganeti's (sorted) order.
        put(format!("nic{i}_link"), nic.link.clone());
        put(format!("nic{i}_mode"), nic.mode.clone());
        put(format!("nic{i}_vlan"), nic.vlan.clone());
    }
    put("nic_count".into(), inst.nics.len().to_string());
    for (i, d) in disks.iter().enumerate() {
        put(format!("disk{i}_ivname"), d.iv_name.clone());
        put(format!("disk{i}_dump"), d.dump.clone());
        put(format!("disk{i}_size"), d.size_mib.to_string());
        put(format!("disk{i}_name"), py_opt(d.name.as_deref()));
    }
    put("disk_count".into(), disks.len().to_string());

    let params = [
        ("hypervisor", &inst.hvparams),
        ("backend", &inst.beparams),
        ("os", &inst.osparams),
        ("os_private", &inst.osparams_private),
    ];
    for (name, map) in params {
        let s = doc.section(name);
        for (k, v) in map {
            if name == "hypervisor" && HVC_GLOBALS.contains(&k.as_str()) {
                continue;
            }
            s.entries.push((k.to_lowercase(), v.python_str()));
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_newlines_round_trip() {
        let mut doc = IniDocument::default();
        let s = doc.section("os");
        s.entries.push(("ratio".into(), "50%".into()));
        s.entries.push(("motd".into(), "a\nb".into()));
        s.entries.push(("Empty".into(), String::new()));
        let text = doc.to_ganeti_string();
        assert_eq!(text, "[os]\nratio = 50%%\nmotd = a\n\tb\nempty = \n\n");
        let back = IniDocument::parse(&text).unwrap();
        assert_eq!(back.get("os", "ratio"), Some("50%"));
        assert_eq!(back.get("os", "motd"), Some("a\nb"));
        assert_eq!(back.get("os", "empty"), Some(""));
    }

    #[test]
    fn carriage_returns_become_continuation_lines() {
        let mut doc = IniDocument::default();
        let s = doc.section("os");
        s.entries.push(("a".into(), "one\rinjected = 1".into()));
        s.entries.push(("b".into(), "x\r\ny".into()));
        let text = doc.to_ganeti_string();
        assert_eq!(text, "[os]\na = one\n\tinjected = 1\nb = x\n\ty\n\n");
        assert!(!text.contains('\r'));
    }

    #[test]
    fn keys_that_are_not_names_are_never_written() {
        for k in ["k=v", "[sec]", "nl\nkey", "c:d", "", "a b"] {
            let mut doc = IniDocument::default();
            doc.section("os").entries.push((k.into(), "v".into()));
            let r = std::panic::catch_unwind(|| doc.to_ganeti_string());
            assert!(r.is_err(), "{k:?} was written");
        }
    }

    #[test]
    fn reader_follows_configparser() {
        let doc = IniDocument::parse("[s]\nX = v\ny: w\nz =   spaced   \nn = NoNe\nc = a ; c\n").unwrap();
        assert_eq!(doc.get("s", "x"), Some("v"));
        assert_eq!(doc.get("s", "y"), Some("w"));
        assert_eq!(doc.get("s", "z"), Some("spaced"));
        assert_eq!(doc.get_ganeti("s", "n"), None);
        assert_eq!(doc.get_ganeti("s", "x"), Some("v"));
        assert_eq!(doc.get("s", "c"), Some("a ; c"));
        assert_eq!(doc.get("s", "missing"), None);
        let e = IniDocument::parse("[s]\nx = 50%\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = IniDocument::parse("[s]\nx = 1\nX = 2\n").unwrap_err();
        assert_eq!(e.msg, "duplicate key 'x' in section 's'");
        assert!(IniDocument::parse("x = 1\n").is_err());
    }
}
