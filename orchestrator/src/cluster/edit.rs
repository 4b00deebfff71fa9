//! Changing the cluster config: an edit of the TOML document in place (comments survive),
//! under an exclusive lock, re-validated, replaced atomically.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use super::Cluster;
use crate::error::OpError;
use crate::fsutil;

impl Cluster {
    /// Removes an instance from the config file at `path` (after `--remove-instance`).
    ///
    /// The edit keeps the rest of the file as written, including comments. Fails with
    /// `Instance 'X' not known` if the file no longer has it.
    pub fn remove_instance(path: &Path, name: &str) -> Result<(), OpError> {
        update_file(path, |doc| {
            let removed = doc
                .get_mut("instances")
                .and_then(|item| item.as_array_of_tables_mut())
                .map(|arr| {
                    let before = arr.len();
                    arr.retain(|t| t.get("name").and_then(|v| v.as_str()) != Some(name));
                    before != arr.len()
                })
                .unwrap_or(false);
            if removed {
                Ok(())
            } else {
                Err(OpError::not_known("Instance", name))
            }
        })
    }
}

/// Edits the config file at `path` under an exclusive lock, re-validates it, and replaces it
/// atomically.
///
/// `path` is resolved once to the real file (symbolic links followed): the lock is `flock(2)`
/// on `.<file name>.lock` next to the real file, so every edit of one file takes one lock
/// whatever link it was named through, and concurrent edits by several processes serialize
/// and none is lost; the file is re-read inside the lock, and the real file is replaced (a
/// symbolic link to it stays a link to it). Relative paths in the file keep being read against
/// the directory of `path` as named, as [`Cluster::load`] reads them. An edit that leaves the
/// config invalid is refused and the file is left untouched.
pub fn update_file(
    path: &Path,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), OpError>,
) -> Result<(), OpError> {
    let io_err = |e: io::Error| OpError::config(format!("{}: {e}", path.display()));
    let real = fs::canonicalize(path).map_err(io_err)?;
    let file_name = real
        .file_name()
        .ok_or_else(|| OpError::config(format!("{}: not a file path", path.display())))?;
    let lock_path = fsutil::parent_dir(&real).join(format!(".{}.lock", file_name.to_string_lossy()));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io_err(e.into()))?;
    let text = fs::read_to_string(&real).map_err(io_err)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| OpError::config(format!("{}: {e}", path.display())))?;
    edit(&mut doc)?;
    let new_text = doc.to_string();
    Cluster::from_str_at(&new_text, path).map_err(OpError::from)?;
    fsutil::atomic_write(&real, new_text.as_bytes(), 0o600).map_err(io_err)?;
    drop(lock);
    Ok(())
}
