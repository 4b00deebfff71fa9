//! The export store of a node: staging, atomic finalize, listing (`ListExports`) and removal.
//!
//! An export of instance `I` is written into `<export dir>/I.new/` (cleared first), one raw
//! dump per disk plus the engine's manifests, `config.ini` and the export's id (a random UUID
//! the master gives it, `diskstream-export-id`: see `export_id`), every file `0600`, the
//! directory `0700`, all fsynced. [`Staging::finalize`] then swaps it in with
//! `renameat2(I.new, I, RENAME_EXCHANGE)` (a plain no-replace rename when there is no previous
//! export) and removes the old export, now at `I.new`. Readers therefore always see either the
//! complete previous export or the complete new one. A [`Staging`] dropped without finalize
//! removes `I.new`, so a failed export leaves the previous one untouched and nothing behind.
//!
//! Removal ([`remove_export`]) first renames `I` to a hidden `.I.ds-removing-<pid>` and then
//! deletes that, so an interrupted removal never leaves a half export under a listed name.
//! Listing ([`list_exports`]) is Ganeti's `ListExports` without its staging bug: hidden
//! entries, `*.new` staging directories and `lost+found` on a mount point are not exports.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, CWD};
use rustix::io::Errno;

use super::export_id::{self, ExportId};
use crate::fsutil;

pub use crate::names::{REMOVING_MARKER, STAGING_SUFFIX};

/// Why a node's export store could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The node has no export directory (Ganeti's text).
    #[error("No exports directory")]
    NoExportsDir,
    /// The export directory could not be listed.
    #[error("{}: {source}", path.display())]
    List {
        /// The export directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Staging, finalizing or removing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The staging directory name of `instance`.
pub fn staging_name(instance: &str) -> String {
    format!("{instance}{STAGING_SUFFIX}")
}

/// Whether an export directory entry is an export (what `list` shows).
pub fn is_export_name(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(STAGING_SUFFIX)
}

/// Ganeti's `ListExports` for one node's export directory: the sorted exports, or
/// `No exports directory` if it is missing.
pub fn list_exports(export_dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = fs::read_dir(export_dir).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NoExportsDir
        } else {
            StoreError::List {
                path: export_dir.to_path_buf(),
                source,
            }
        }
    })?;
    let mount_point = is_mount_point(export_dir);
    let mut names: Vec<String> = entries
        .flatten()
        // A name that is not UTF-8 is listed with U+FFFD (docs/json.md), not hidden; it can
        // never equal an instance's name, so no clean-up takes it for one.
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_export_name(n))
        .filter(|n| !(mount_point && n == "lost+found"))
        .collect();
    names.sort();
    Ok(names)
}

fn is_mount_point(dir: &Path) -> bool {
    match (fs::metadata(dir), fs::metadata(dir.join(".."))) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// `(device, inode)` of a path, following symlinks: two paths with the same identity are the
/// same directory, even through NFS mounts, bind mounts or symlinks.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// An export being written. Dropping it without [`Staging::finalize`] removes it.
#[derive(Debug)]
pub struct Staging {
    export_dir: PathBuf,
    instance: String,
    dir: PathBuf,
    done: bool,
}

impl Staging {
    /// Creates `<export_dir>/<instance>.new/` (mode 0700), removing any stale one first.
    /// Creates the export directory itself if it is missing.
    pub fn begin(export_dir: &Path, instance: &str) -> io::Result<Self> {
        // Each step's error names the path and the step (`File exists` alone names neither).
        let at = |what: &str, p: &Path| {
            let (what, p) = (what.to_string(), p.to_path_buf());
            move |e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        };
        fs::create_dir_all(export_dir).map_err(at("create the export directory", export_dir))?;
        let dir = export_dir.join(staging_name(instance));
        fsutil::remove_tree(&dir).map_err(at("remove the leftover staging directory", &dir))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(at("create the staging directory", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(at("chmod 0700", &dir))?;
        fsutil::sync_dir(export_dir).map_err(at("fsync", export_dir))?;
        Ok(Self {
            export_dir: export_dir.to_path_buf(),
            instance: instance.to_string(),
            dir,
            done: false,
        })
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `config.ini` and the export's id ([`export_id::EXPORT_ID_FILE`]), makes every
    /// file private and durable, and atomically replaces the previous export with this one,
    /// which is deleted before this returns. Returns the final directory.
    pub fn finalize(self, config_ini: &str, id: &ExportId) -> io::Result<Finalized> {
        self.finalize_with(config_ini, id, Removal::Now)
    }

    /// [`Staging::finalize`], with the replaced export deleted as `removal` says. Once the new
    /// export is swapped in, nothing fails the finalize (it would report a complete export as
    /// missing): what goes wrong after is in [`Finalized::warnings`].
    pub fn finalize_with(mut self, config_ini: &str, id: &ExportId, removal: Removal) -> io::Result<Finalized> {
        export_id::write(&self.dir, id)?;
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600))?;
                fsutil::sync_file(&e.path())?;
            }
        }
        fsutil::atomic_write(&self.dir.join("config.ini"), config_ini.as_bytes(), 0o600)?;
        fsutil::sync_dir(&self.dir)?;
        let target = self.export_dir.join(&self.instance);
        let replaced = swap_in(&self.dir, &target)?;
        self.done = true;
        let mut fin = Finalized {
            dir: target,
            warnings: Vec::new(),
        };
        self.sync_swapped(&mut fin);
        if replaced {
            // The previous export is now at the staging name, which is never listed.
            match removal {
                Removal::Now => {
                    let _ = fsutil::remove_tree(&self.dir);
                }
                Removal::Background => {
                    // Under a hidden removal name first, so that the staging name is free for
                    // the next export at once and an interrupted deletion is swept as a
                    // half-removed export (`sweep_leftovers`); whatever cannot go to the
                    // thread is deleted now, as with `Removal::Now`.
                    let aside = unique_removal_path(&fin.dir)
                        .ok()
                        .filter(|aside| fs::rename(&self.dir, aside).is_ok());
                    match aside {
                        Some(aside) => {
                            let mine = aside.clone();
                            let spawned = std::thread::Builder::new()
                                .name("ds-remove-old".into())
                                .spawn(move || fsutil::remove_tree(&mine));
                            if spawned.is_err() {
                                let _ = fsutil::remove_tree(&aside);
                            }
                        }
                        None => {
                            let _ = fsutil::remove_tree(&self.dir);
                        }
                    }
                }
            }
            self.sync_swapped(&mut fin);
        }
        Ok(fin)
    }

    /// Syncs the export directory after the swap; a failure is a warning of `fin` (said once).
    fn sync_swapped(&self, fin: &mut Finalized) {
        let synced = test_only_fault("sync-after-swap").and_then(|()| fsutil::sync_dir(&self.export_dir));
        if let (Err(e), true) = (synced, fin.warnings.is_empty()) {
            fin.warnings.push(format!(
                "the new export is in place in {}, but syncing {} failed: {e}; until the file system \
                 writes it back, a crash may bring back the export it replaced",
                fin.dir.display(),
                self.export_dir.display()
            ));
        }
    }
}

/// A finalized export: its directory, and what went wrong after it was in place (it stays, the
/// swap is done): the job's warnings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finalized {
    /// The export directory.
    pub dir: PathBuf,
    /// What went wrong after the swap.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A failure injected by the tests at `step` (`DISKSTREAM_TEST_ONLY_FAIL_AT=<step>[,<step>...]`:
/// EIO). Steps: `sync-after-swap`; `exchange` (the file system cannot exchange: EINVAL, as on
/// NFS) and `rename-into-place` (the fallback's rename of the new export fails). Unset (always,
/// outside tests) it costs one environment lookup; a release build never looks.
fn test_only_fault(step: &str) -> io::Result<()> {
    if !cfg!(debug_assertions) {
        return Ok(());
    }
    let asked = std::env::var("DISKSTREAM_TEST_ONLY_FAIL_AT").unwrap_or_default();
    if asked.split(',').any(|s| s == step) {
        let errno = if step == "exchange" { 22 } else { 5 };
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(())
}

/// When [`Staging::finalize_with`] deletes the export it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Removal {
    /// Before finalize returns (a command that exits when it is done).
    #[default]
    Now,
    /// On a thread of its own after the swap (a long-running agent: deleting a large old dump
    /// takes as long as a good part of the transfer, and the new export is complete without it).
    Background,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fsutil::remove_tree(&self.dir);
        }
    }
}

/// Moves `new` to `target`: exchanged atomically with an existing `target` (then `new` holds
/// the old content and `true` is returned), or renamed without replacing anything.
fn swap_in(new: &Path, target: &Path) -> io::Result<bool> {
    let exchanged = match test_only_fault("exchange") {
        Ok(()) => renameat_with(CWD, new, CWD, target, RenameFlags::EXCHANGE),
        Err(_) => Err(Errno::INVAL),
    };
    match exchanged {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) if fs::symlink_metadata(new).is_ok() => {
            renameat_with(CWD, new, CWD, target, RenameFlags::NOREPLACE)?;
            Ok(false)
        }
        Err(Errno::INVAL | Errno::NOSYS) => {
            // The file system cannot exchange (e.g. NFS): move the old export aside under a
            // hidden name first. There is a short window without an export under the name.
            let aside = hidden_removal_path(target)?;
            match fs::rename(target, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = test_only_fault("rename-into-place").and_then(|()| fs::rename(new, target)) {
                // The previous export goes back under its name: a hidden removal name would be
                // swept (deleted) by the next export.
                let _ = fs::rename(&aside, target);
                return Err(e);
            }
            fs::rename(&aside, new).or_else(|_| fsutil::remove_tree(&aside))?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

fn hidden_removal_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a directory path"))?
        .to_string_lossy()
        .into_owned();
    Ok(fsutil::parent_dir(path).join(format!(".{name}{REMOVING_MARKER}{}", std::process::id())))
}

/// A hidden removal name for `path` that no other removal of this process uses (several
/// background deletions of the same instance's old exports may overlap): the pid followed by a
/// counter, digits only, as [`sweep_leftovers`] expects.
fn unique_removal_path(path: &Path) -> io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = hidden_removal_path(path)?;
    let mut name = base.into_os_string();
    name.push(format!("{n:06}"));
    Ok(PathBuf::from(name))
}

/// Removes export `name` from an export directory: renamed to a hidden name first (atomic),
/// then deleted.
pub fn remove_export(export_dir: &Path, name: &str) -> io::Result<()> {
    let path = export_dir.join(name);
    let aside = hidden_removal_path(&path)?;
    fs::rename(&path, &aside)?;
    fsutil::sync_dir(export_dir)?;
    fsutil::remove_tree(&aside)
}

/// Removes what interrupted runs left for `instance` in an export directory: its staging
/// directory and half-removed exports. Call only while holding the node's lock.
pub fn sweep_leftovers(export_dir: &Path, instance: &str) -> Vec<PathBuf> {
    let removing = format!(".{instance}{REMOVING_MARKER}");
    let staging = staging_name(instance);
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(export_dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if is_leftover(&n, &staging, &removing) && fsutil::remove_tree(&e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Whether `name` is `staging` itself or `removing` followed by a pid (digits only), so that
/// no other instance's entry can match (instance names are validated not to end with `.new`
/// nor to contain the removal marker; see `cluster::reserved_instance_name`).
fn is_leftover(name: &str, staging: &str, removing: &str) -> bool {
    name == staging
        || name
            .strip_prefix(removing)
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether interrupted runs left `instance`'s staging or half-removed directories here.
pub fn has_leftovers(export_dir: &Path, instance: &str) -> bool {
    let removing = format!(".{instance}{REMOVING_MARKER}");
    let staging = staging_name(instance);
    fs::read_dir(export_dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            is_leftover(&n, &staging, &removing)
        })
    })
}

/// Files of an export directory with sizes, for reports.
pub fn files(dir: &Path) -> io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.metadata()?.len()));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_replaces_atomically_and_failures_leave_the_old_export() {
        let d = tempfile::tempdir().unwrap();
        let ed = d.path().join("export");
        // First export: no previous one.
        let s = Staging::begin(&ed, "i1").unwrap();
        fs::write(s.dir().join("dump1"), b"one").unwrap();
        let fin = s.finalize("[export]\n", &ExportId::new().unwrap()).unwrap();
        assert_eq!(fin.warnings, Vec::<String>::new());
        let fin = fin.dir;
        assert_eq!(fin, ed.join("i1"));
        assert_eq!(list_exports(&ed).unwrap(), ["i1"]);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&fin), 0o700);
        assert_eq!(mode(&fin.join("dump1")), 0o600);
        assert_eq!(mode(&fin.join("config.ini")), 0o600);
        // A failed export: staging dropped, old export intact, nothing listed in between.
        {
            let s = Staging::begin(&ed, "i1").unwrap();
            fs::write(s.dir().join("partial"), b"x").unwrap();
            assert_eq!(list_exports(&ed).unwrap(), ["i1"]);
        }
        assert!(!ed.join("i1.new").exists());
        assert!(ed.join("i1/dump1").exists());
        // Second export replaces the first.
        let s = Staging::begin(&ed, "i1").unwrap();
        fs::write(s.dir().join("dump2"), b"two").unwrap();
        s.finalize("[export]\n", &ExportId::new().unwrap()).unwrap();
        assert!(ed.join("i1/dump2").exists());
        assert!(!ed.join("i1/dump1").exists());
        assert!(!ed.join("i1.new").exists());
        // A stale staging dir is cleared and never listed.
        fs::create_dir_all(ed.join("i2.new")).unwrap();
        fs::write(ed.join("i2.new/stale"), b"old").unwrap();
        assert_eq!(list_exports(&ed).unwrap(), ["i1"]);
        let s = Staging::begin(&ed, "i2").unwrap();
        assert!(!s.dir().join("stale").exists());
        drop(s);
        // Removal goes through a hidden name.
        remove_export(&ed, "i1").unwrap();
        assert!(list_exports(&ed).unwrap().is_empty());
        // Not UTF-8: listed with U+FFFD, not hidden.
        use std::os::unix::ffi::OsStrExt;
        fs::create_dir(ed.join(std::ffi::OsStr::from_bytes(b"caf\xe9"))).unwrap();
        assert_eq!(list_exports(&ed).unwrap(), ["caf\u{fffd}"]);
        fs::remove_dir(ed.join(std::ffi::OsStr::from_bytes(b"caf\xe9"))).unwrap();
        assert!(fs::read_dir(&ed).unwrap().next().is_none());
        assert!(matches!(
            list_exports(&d.path().join("missing")),
            Err(StoreError::NoExportsDir)
        ));
        assert_eq!(
            list_exports(&d.path().join("missing")).unwrap_err().to_string(),
            "No exports directory"
        );
    }

    #[test]
    fn background_removal_frees_the_staging_name_at_once_and_deletes_the_old_export() {
        let d = tempfile::tempdir().unwrap();
        let ed = d.path().join("export");
        let s = Staging::begin(&ed, "i1").unwrap();
        fs::write(s.dir().join("dump1"), vec![7u8; 1 << 20]).unwrap();
        s.finalize_with("[export]\n", &ExportId::new().unwrap(), Removal::Background)
            .unwrap();
        // Three replacements in a row, each while the previous deletion may still run.
        for round in 2..5 {
            let s = Staging::begin(&ed, "i1").unwrap();
            fs::write(s.dir().join(format!("dump{round}")), b"new").unwrap();
            let fin = s
                .finalize_with("[export]\n", &ExportId::new().unwrap(), Removal::Background)
                .unwrap()
                .dir;
            assert!(fin.join(format!("dump{round}")).exists());
            assert!(!ed.join("i1.new").exists(), "the staging name is free after finalize");
            assert_eq!(list_exports(&ed).unwrap(), ["i1"], "only the new export is listed");
        }
        // The old exports go away on their own; only the last export is left.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let names: Vec<String> = fs::read_dir(&ed)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            if names == ["i1"] {
                break;
            }
            assert!(names
                .iter()
                .all(|n| n == "i1" || is_leftover(n, "i1.new", ".i1.ds-removing-")));
            assert!(
                std::time::Instant::now() < deadline,
                "old exports still there: {names:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(ed.join("i1/dump4").exists());
        assert!(!ed.join("i1/dump3").exists());
    }

    #[test]
    fn sweep_removes_only_this_instances_leftovers() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a.new", ".a.ds-removing-12", "a", "b.new", ".b.ds-removing-3"] {
            fs::create_dir_all(d.path().join(n)).unwrap();
        }
        let mut removed: Vec<String> = sweep_leftovers(d.path(), "a")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, [".a.ds-removing-12", "a.new"]);
        assert!(d.path().join("a").exists() && d.path().join("b.new").exists());
        // Another instance's names never match, even one that starts like this instance's.
        for n in [
            "a.new.new",
            ".a.ds-removing-1.ds-removing-2",
            ".a.ds-removing-",
            "a.news",
        ] {
            fs::create_dir_all(d.path().join(n)).unwrap();
        }
        assert!(sweep_leftovers(d.path(), "a").is_empty());
        assert!(!has_leftovers(d.path(), "a"));
    }
}
