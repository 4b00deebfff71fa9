//! Changing the cluster config: an edit of the TOML document in place (comments survive),
//! under an exclusive lock, re-validated, replaced atomically.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::Cluster;
use crate::error::OpError;
use crate::fsutil;

impl Cluster {
    /// Removes an instance from the config file at `path` (after `--remove-instance`).
    ///
    /// The edit keeps the rest of the file as written, including comments. Fails with
    /// `Instance 'X' not known` if the file no longer has it.
    pub fn remove_instance(path: &Path, name: &str) -> Result<(), OpError> {
        ConfigEdit::begin(path)?.remove_instance(name)
    }
}

/// The cluster config locked for an edit, with a new file shown to be creatable beside it:
/// what a destructive step takes before it destroys what the edit will record (the disks of
/// `--remove-instance`), so that an edit that cannot be made is known while nothing is lost.
///
/// `path` is resolved once to the real file (symbolic links followed): the lock is `flock(2)`
/// on `.<file name>.lock` next to the real file (created mode 0600, never through a symbolic
/// link), so every edit of one file takes one lock whatever link it was named through, and
/// concurrent edits by several processes serialize and none is lost; the file is re-read
/// inside the lock, and the real file is replaced (a symbolic link to it stays a link to it).
/// Relative paths in the file keep being read against the directory of `path` as named, as
/// [`Cluster::load`] reads them. An edit that leaves the config invalid is refused and the file
/// is left untouched.
#[derive(Debug)]
pub struct ConfigEdit {
    path: PathBuf,
    real: PathBuf,
    _lock: File,
}

impl ConfigEdit {
    /// Locks the config at `path` for an edit and makes (and removes) a file beside it.
    pub fn begin(path: &Path) -> Result<Self, OpError> {
        let cannot = |step: String, e: io::Error| {
            OpError::config(format!(
                "cannot edit the cluster config {}: {step}: {e}",
                path.display()
            ))
        };
        let real = fs::canonicalize(path).map_err(|e| cannot("resolve it".into(), e))?;
        let file_name = real
            .file_name()
            .ok_or_else(|| OpError::config(format!("{}: not a file path", path.display())))?;
        let dir = fsutil::parent_dir(&real);
        let lock_path = dir.join(format!(".{}.lock", file_name.to_string_lossy()));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock_path)
            .map_err(|e| cannot(format!("open its lock {}", lock_path.display()), e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| cannot(format!("lock {}", lock_path.display()), e.into()))?;
        // What the edit's atomic replacement will do first.
        tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(|e| {
            cannot(
                format!("create a file in {}", dir.display()),
                fsutil::without_temp_path(e),
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            real,
            _lock: lock,
        })
    }

    /// [`Cluster::remove_instance`] under this lock.
    pub fn remove_instance(self, name: &str) -> Result<(), OpError> {
        self.apply(|doc| {
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

    /// Re-reads the file, edits it, re-validates it and replaces it atomically; the lock is
    /// released after.
    pub fn apply(self, edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), OpError>) -> Result<(), OpError> {
        let path = &self.path;
        let text = super::read_config(&self.real).map_err(OpError::from)?;
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| OpError::config(format!("{}: {e}", path.display())))?;
        edit(&mut doc)?;
        let new_text = doc.to_string();
        Cluster::from_str_at(&new_text, path).map_err(OpError::from)?;
        fsutil::atomic_write(&self.real, new_text.as_bytes(), 0o600)
            .map_err(|e| OpError::config(format!("cannot write the cluster config {}: {e}", path.display())))
    }
}

/// Edits the config file at `path` under an exclusive lock, re-validates it, and replaces it
/// atomically ([`ConfigEdit`]).
pub fn update_file(
    path: &Path,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), OpError>,
) -> Result<(), OpError> {
    ConfigEdit::begin(path)?.apply(edit)
}
