//! Durable file-system helpers: atomic file replacement, directory fsync, fresh UUIDs; and a
//! process's state and start time from `/proc` (who holds a lock, is an instance alive).
//!
//! Every file the orchestrator rewrites (the cluster config, an export's `config.ini`) goes
//! through [`atomic_write`], so a crash leaves either the old or the new content, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Replaces `path` with `data` atomically and durably.
///
/// The data goes to a temporary file in the same directory, which is fsynced and renamed over
/// `path`; then the directory is fsynced so the rename itself survives a crash. If `path`
/// exists its permission bits are kept (not a symbolic link's target's: the link is replaced,
/// not followed), otherwise the file gets `mode`. Errors never name the temporary file (it is
/// gone): the caller names `path`.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(without_temp_path)?;
    let mode = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.permissions().mode() & 0o7777,
        Ok(_) => mode,
        Err(e) if e.kind() == io::ErrorKind::NotFound => mode,
        Err(e) => return Err(e),
    };
    tmp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// `e` without the " at path \"…/.tmp-XXXX\"" that `tempfile` appends: that file was never made.
pub(crate) fn without_temp_path(e: io::Error) -> io::Error {
    let text = e.to_string();
    match text.split_once(" at path ") {
        Some((head, _)) => io::Error::new(e.kind(), head.to_string()),
        None => e,
    }
}

/// Fsyncs a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory containing `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A fresh random (version 4) UUID, e.g. `3f0c2a8e-1b7d-4c55-9e2a-5d1f0b6c7a80`.
///
/// Sixteen bytes from `/dev/urandom` with the version and variant bits set (RFC 4122 §4.4),
/// the same thing the kernel's `/proc/sys/kernel/random/uuid` returns.
pub fn new_uuid() -> io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Removes a directory tree; a missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a file or directory with metadata `m` cannot be trusted by this process: owned by another
/// user than this one or root, or writable by group or others. `None` if it can.
pub fn untrusted(m: &fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        Some(format!("owned by uid {}, not by this user (uid {me}) or root", m.uid()))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "mode {:o}: writable by others (chmod go-w it)",
            m.mode() & 0o7777
        ))
    } else {
        None
    }
}

/// Fsyncs a file's data and metadata.
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// `(state, start time in clock ticks since boot)` of a process, from `/proc/<pid>/stat`; with
/// the pid, the start time identifies a process even after pid reuse. The command (field 2) may
/// contain spaces and parentheses, so the fields are counted after the last `)`.
pub fn proc_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_version_4_and_fresh() {
        let a = new_uuid().unwrap();
        let b = new_uuid().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'));
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
    }

    use super::*;

    #[test]
    fn atomic_write_creates_and_replaces_keeping_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.toml");
        atomic_write(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
