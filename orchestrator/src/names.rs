//! The names diskstream gives what it creates beside the user's data (staging and removal
//! directories, snapshots), kept in one place so the cluster config can refuse instance names
//! that would collide with them, and the modules that create them use the same spelling.

/// The suffix of staging directories.
pub const STAGING_SUFFIX: &str = ".new";
/// The marker of directories being removed.
pub const REMOVING_MARKER: &str = ".ds-removing-";
/// The marker in snapshot names.
pub const SNAP_MARKER: &str = ".ds-snap-";
/// The file in an export that holds its id (`export::export_id`).
pub const EXPORT_ID_FILE: &str = "diskstream-export-id";

/// Why `dump` cannot name a disk's dump in an export, if it cannot: it would be (or be taken
/// for) a file the export already has, `config.ini`, the export's id file or a dump's
/// manifest, or a hidden file (partial files are hidden). The master names dumps with UUIDs;
/// this is what an agent refuses of a request.
pub fn reserved_dump_name(dump: &str) -> Option<&'static str> {
    if dump == "config.ini" || dump == EXPORT_ID_FILE {
        Some("the name of a file every export has")
    } else if dump.ends_with(".manifest") {
        Some("ends with '.manifest', the suffix of a dump's manifest")
    } else if dump.starts_with('.') {
        Some("a hidden name (partial files are hidden)")
    } else {
        None
    }
}

/// The snapshot name of a disk file or LV `base` for `instance` made by process `pid`.
pub fn snapshot_name(base: &str, instance: &str, pid: u32) -> String {
    format!("{base}{SNAP_MARKER}{}-{pid}", sanitize(instance))
}

/// LVM names allow letters, digits and `+_.-`; anything else becomes `_`.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
