//! Who holds a lock: [`Holder`] (from `/proc/locks`, with what the holder's side file adds:
//! command and time), and the side files themselves (`<name>.holders/<pid>-<owner id>`): read,
//! and swept once their writer no longer holds the lock.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::level::LockMode;
use super::proc::{format_utc, proc_locks_holders};

/// A process holding a lock, as far as it can be known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder's pid (from `/proc/locks`).
    pub pid: u32,
    /// The mode it holds.
    pub mode: LockMode,
    /// The owner's command as it registered it, or the process's command line.
    pub command: Option<String>,
    /// When it acquired the lock (Unix seconds), if it registered.
    pub since: Option<u64>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(cmd) = &self.command {
            write!(f, " ({cmd})")?;
        }
        write!(f, " {}", self.mode)?;
        if let Some(since) = self.since {
            write!(f, " since {}", format_utc(since))?;
        }
        Ok(())
    }
}

/// "held by ..." for an error.
pub(super) fn describe_holders(holders: &[Holder]) -> String {
    if holders.is_empty() {
        "held by a process that released it meanwhile".into()
    } else {
        let list: Vec<String> = holders.iter().map(Holder::to_string).collect();
        format!("held by {}", list.join(", "))
    }
}

/// Removes side files whose writer no longer holds the lock (it died without cleaning up).
pub(super) fn remove_stale_side_files(lock_path: &Path, dir: &Path) {
    let Ok(meta) = fs::metadata(lock_path) else {
        return;
    };
    if !Path::new("/proc/locks").exists() {
        return;
    }
    let live: Vec<u32> = proc_locks_holders(meta.dev(), meta.ino())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let fname = entry.file_name();
        let pid = fname
            .to_str()
            .and_then(|s| s.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !live.contains(&pid) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// What a side file says of its writer.
#[derive(Debug)]
pub(super) struct SideInfo {
    pub(super) pid: u32,
    pub(super) start_time: Option<u64>,
    pub(super) mode: LockMode,
    pub(super) since: u64,
    pub(super) command: String,
}

/// The side files in `dir`, oldest first (unreadable or malformed ones skipped).
pub(super) fn read_side_files(dir: &Path) -> Vec<SideInfo> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let kv: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let parsed = (|| {
            Some(SideInfo {
                pid: kv.get("pid")?.parse().ok()?,
                start_time: kv.get("start_time").and_then(|s| s.parse().ok()),
                mode: kv.get("mode")?.parse().ok()?,
                since: kv.get("since")?.parse().ok()?,
                command: kv.get("command")?.to_string(),
            })
        })();
        out.extend(parsed);
    }
    out.sort_by_key(|i| (i.since, i.pid));
    out
}
