//! Opening outputs: a regular file is created under a temporary name in the same directory and
//! renamed over the final name only once complete and fsynced (a failed or killed run never
//! leaves a half image under the final name, and never touches an existing one before then);
//! a block device is written in place, opened with `O_EXCL` (a mounted or otherwise claimed
//! device is refused) and only with `force`.
//!
//! An image and its manifest are committed together ([`Target::commit_with_manifest`]): both are
//! complete and synced under temporary names before either is renamed, the manifest is renamed
//! first, and the image records its whole-image digest (`user.diskstream.digest`) so that a
//! reader can tell a manifest that belongs to another image (a commit cut between the renames)
//! from damage (docs/image-format.md, "Committing an image and its manifest").
//!
//! Each output's temporary file is its own, locked while it is written, and the leftovers of
//! killed runs are swept by the next run that writes the same NAME ([`super::partial`]). A new
//! output (no `force`) is renamed into place only where nothing has appeared under its name
//! since the checks (`RENAME_NOREPLACE`): of two runs writing one new name, the second to
//! finish fails instead of replacing the first's output.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use super::identity::same_file;
use super::identity::sysfs_block;
use super::replaced::{loop_refusal, Replaced};
use crate::error::{Error, Result};
use crate::sys;

/// An opened output.
#[derive(Debug)]
pub struct Target {
    file: File,
    final_path: PathBuf,
    temp_path: Option<PathBuf>,
    direct: bool,
    device_size: Option<u64>,
    logical_block: u32,
    committed: bool,
    /// Whether the commit may replace a file that is there by then (`force`).
    replace: bool,
    /// The permission bits of the file this one replaces, given to it before the rename.
    mode: Option<u32>,
    /// What the run should tell about this output.
    warnings: Vec<String>,
}

impl Target {
    /// Opens `path` for writing. A block device is opened in place (O_DIRECT, O_EXCL) and only
    /// with `force`; anything else becomes a new file `.<name>.partial-<pid>-<n>` next to it, created
    /// with mode 0600. An existing regular file is refused unless `force` (and even then replaced
    /// only on [`Self::commit`]). Leftover temporary files of `path` are swept first, never one
    /// of `spare` (the run's inputs).
    pub fn create(path: &Path, force: bool, want_direct: bool, spare: &[&Path]) -> Result<Self> {
        Self::open(path, force, want_direct, true, spare)
    }

    /// Like [`Self::create`], but never a device: a manifest or other side file.
    pub fn create_file(path: &Path, force: bool, spare: &[&Path]) -> Result<Self> {
        Self::open(path, force, false, false, spare)
    }

    fn open(path: &Path, force: bool, want_direct: bool, allow_device: bool, spare: &[&Path]) -> Result<Self> {
        let replaced = match check_output(path, force, allow_device)? {
            OutputKind::Device => return Self::open_device(path, want_direct),
            OutputKind::Replace => Some(Replaced::check(path)?),
            OutputKind::New => None,
        };
        super::partial::sweep(path, spare);
        let name = path
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (temp, file) = super::partial::create(dir, name, want_direct)?;
        let direct = want_direct && sys::is_direct(&file).unwrap_or(false);
        let mut target = Self {
            file,
            final_path: path.to_owned(),
            temp_path: Some(temp),
            direct,
            device_size: None,
            logical_block: 4096,
            committed: false,
            replace: force,
            mode: None,
            warnings: Vec::new(),
        };
        if let Some(mut r) = replaced {
            r.give_owner(&target.file, path)?;
            r.give_attrs(&target.file, path)?;
            target.mode = Some(r.mode);
            target.warnings.extend(r.warnings);
        }
        Ok(target)
    }

    /// A block device, opened in place with `O_EXCL` (and `O_DIRECT` where it takes it).
    fn open_device(path: &Path, want_direct: bool) -> Result<Self> {
        let file = open_device(path, want_direct).or_else(|e| {
            if want_direct && e.raw_os_error() == Some(libc::EINVAL) {
                open_device(path, false)
            } else {
                Err(e)
            }
        });
        let file = file.map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Invalid(format!(
                    "{}: device is in use (mounted or claimed); refusing to write",
                    path.display()
                ))
            } else {
                Error::io("open", path, 0, e)
            }
        })?;
        let size = sys::block_device_size(&file).map_err(|e| Error::io("BLKGETSIZE64", path, 0, e))?;
        let lbs = sys::block_device_logical_block_size(&file).map_err(|e| Error::io("BLKSSZGET", path, 0, e))?;
        let direct = sys::is_direct(&file).unwrap_or(false);
        Ok(Self {
            file,
            final_path: path.to_owned(),
            temp_path: None,
            direct,
            device_size: Some(size),
            logical_block: lbs.max(512),
            committed: false,
            replace: true,
            mode: None,
            warnings: Vec::new(),
        })
    }

    /// What the run should tell about this output (a replaced file's other hard links).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Gives the file about to be renamed into place the permission bits of the one it
    /// replaces (its owner and group were given at the open).
    fn adopt_mode(&self) -> Result<()> {
        match self.mode {
            Some(mode) => rustix::fs::fchmod(&self.file, rustix::fs::Mode::from_raw_mode(mode))
                .map_err(|e| Error::io("chmod", self.write_path(), 0, e.into())),
            None => Ok(()),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path being written now (the temporary name for files).
    pub fn write_path(&self) -> &Path {
        self.temp_path.as_deref().unwrap_or(&self.final_path)
    }

    /// The name the output will have.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// True if and only if the kernel reported the descriptor as `O_DIRECT` when it was opened
    /// (asked once: this is on the per-chunk path of the sinks).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Size of the device, or `None` for a file.
    pub fn device_size(&self) -> Option<u64> {
        self.device_size
    }

    /// Write alignment: the device's logical block, or a page for files.
    pub fn align(&self) -> u32 {
        self.logical_block
    }

    /// True if and only if the output is a block device written in place.
    pub fn is_device(&self) -> bool {
        self.device_size.is_some()
    }

    /// Checked again right before the rename, as at the open: the file this one would replace
    /// is no loop device's backing file (a loop device attached to it during the run would go
    /// on with the old file while its name led to the new one).
    fn still_replaceable(&self) -> Result<()> {
        if self.temp_path.is_none() {
            return Ok(());
        }
        match std::fs::metadata(&self.final_path) {
            Ok(m) if m.is_file() => match super::identity::loop_over(&m) {
                Some(dev) => Err(loop_refusal(&self.final_path, &dev)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Flushes the data to stable storage and, for a file, renames it into place and syncs the
    /// directory, so the complete output appears at once or not at all.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.still_replaceable()?;
        self.adopt_mode()?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", self.write_path(), 0, e))?;
        if let Some(temp) = &self.temp_path {
            test_only_fault("rename")
                .and_then(|()| place(temp, &self.final_path, self.replace))
                .map_err(|e| rename_error(temp, &self.final_path, e))?;
            sync_dir(&self.final_path)?;
        }
        self.committed = true;
        Ok(self.final_path.clone())
    }

    /// Commits this image and its `manifest` (written in full beforehand) as a pair: both synced
    /// under their temporary names, then the manifest renamed, then the image, then the
    /// directories synced. A crash or failure between the two renames leaves the new manifest
    /// beside the previous image, which records its own digest, so `verify` names the mismatch;
    /// it never leaves a new image beside an old manifest. A device image is in place already:
    /// its old manifest was removed just before its first byte was overwritten (by the raw sink)
    /// ([`remove_stale_manifest`]).
    pub fn commit_with_manifest(mut self, mut manifest: Target) -> Result<PathBuf> {
        manifest.still_replaceable()?;
        self.still_replaceable()?;
        manifest.adopt_mode()?;
        self.adopt_mode()?;
        manifest
            .file
            .sync_all()
            .map_err(|e| Error::io("fsync", manifest.write_path(), 0, e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", self.write_path(), 0, e))?;
        // Two runs committing pairs of one name (with --force) take turns: interleaved, their
        // renames left one run's manifest beside the other's image, though both succeeded.
        let _turn = self.temp_path.as_ref().and_then(|_| commit_turn(&self.final_path));
        if let Some(temp) = &manifest.temp_path {
            test_only_fault("rename-manifest")
                .and_then(|()| place(temp, &manifest.final_path, manifest.replace))
                .map_err(|e| rename_error(temp, &manifest.final_path, e))?;
        }
        manifest.committed = true;
        if let Some(temp) = &self.temp_path {
            test_only_fault("rename-image")
                .and_then(|()| place(temp, &self.final_path, self.replace))
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists && !manifest.replace {
                        // Another run made the image since the checks: the manifest just placed
                        // (new, nothing was under its name) describes our image, not theirs.
                        let _ = std::fs::remove_file(&manifest.final_path);
                        return rename_error(temp, &self.final_path, e);
                    }
                    Error::io(
                        "rename (the new manifest is in place, the image is not: verify will report the pair as a mismatch until the next run)",
                        temp,
                        0,
                        e,
                    )
                })?;
            sync_dir(&self.final_path)?;
        }
        self.committed = true;
        sync_dir(&manifest.final_path)?;
        Ok(self.final_path.clone())
    }
}

/// What an output path is now, as [`check_output`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Nothing there: a new file.
    New,
    /// An existing regular file, to be replaced on commit (`force` was given).
    Replace,
    /// An existing block device, to be written in place (`force` was given).
    Device,
}

/// Decides, from `stat` alone and before anything is opened or written, whether `path` may be
/// written: a new file; an existing regular file or (with `allow_device`) block device only with
/// `force`; never a directory, FIFO, socket or character device.
pub fn check_output(path: &Path, force: bool, allow_device: bool) -> Result<OutputKind> {
    crate::input::refuse_empty(path, "the output")?;
    refuse_link_to_file(path)?;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() && allow_device => {
            if force && read_only_device(&m) {
                Err(Error::Invalid(format!(
                    "{}: is a read-only block device; it cannot be written",
                    path.display()
                )))
            } else if force {
                Ok(OutputKind::Device)
            } else {
                Err(Error::Invalid(format!(
                    "{}: is a block device; writing to it destroys what it holds: pass --force to overwrite it",
                    path.display()
                )))
            }
        }
        Ok(m) if !m.is_file() => Err(Error::Invalid(format!(
            "{}: is {}; refusing to write over it (the output must be a new or regular file{})",
            path.display(),
            crate::input::kind_name(&m.file_type()),
            if allow_device { " or a block device" } else { "" }
        ))),
        Ok(_) if !force => Err(Error::Invalid(format!(
            "{}: already exists; pass --force to replace it",
            path.display()
        ))),
        Ok(_) => Ok(OutputKind::Replace),
        Err(e) if e.kind() == io::ErrorKind::NotFound => new_output(path),
        Err(e) => Err(Error::io("stat", path, 0, e)),
    }
}

/// Refuses an output path that is a symbolic link to a regular file or to nothing. A file
/// output is written under a temporary name and renamed over its path: through a link that
/// would replace the link, never the file it leads to, and a dangling link would be found only
/// at the commit, after the whole transfer. A link to a block device (`/dev/disk/by-id/...`,
/// `/dev/VG/LV`) is the device, written in place through it.
fn refuse_link_to_file(path: &Path) -> Result<()> {
    let link = std::fs::symlink_metadata(path).is_ok_and(|l| l.file_type().is_symlink());
    let dangling = match std::fs::metadata(path) {
        _ if !link => return Ok(()),
        Ok(m) if m.is_file() => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        // A device, or a kind the checks that follow name and refuse.
        _ => return Ok(()),
    };
    let to = std::fs::read_link(path).map_err(|e| Error::io("readlink", path, 0, e))?;
    Err(Error::Invalid(format!(
        "{}: is a symbolic link (to {}{}); name the file itself",
        path.display(),
        to.display(),
        if dangling { ", which does not exist" } else { "" }
    )))
}

/// A path where nothing is yet: a new file, if it names a file in a directory that exists.
fn new_output(path: &Path) -> Result<OutputKind> {
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") || path.file_name().is_none() {
        return Err(Error::Invalid(format!(
            "{}: names a directory, not a file; give the output's file name",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(OutputKind::New),
        Ok(m) => Err(Error::Invalid(format!(
            "{}: its directory {} is {}",
            path.display(),
            dir.display(),
            crate::input::kind_name(&m.file_type())
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::Invalid(format!(
            "{}: its directory {} does not exist",
            path.display(),
            dir.display()
        ))),
        Err(e) => Err(Error::io("stat", dir, 0, e)),
    }
}

/// Whether the block device `m` is read-only (a `losetup -r` loop device, a write-protected
/// disk): its sysfs `ro`.
fn read_only_device(m: &std::fs::Metadata) -> bool {
    sysfs_block(m)
        .and_then(|d| std::fs::read_to_string(d.join("ro")).ok())
        .is_some_and(|ro| ro.trim() == "1")
}

/// Before a device's first byte is overwritten: removes its previous manifest at `manifest`
/// (the device will no longer hold what it describes) and syncs the directory, so that a run
/// cut short leaves no manifest beside a half-written device.
pub fn remove_stale_manifest(manifest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(manifest) {
        Ok(_) => {
            std::fs::remove_file(manifest).map_err(|e| Error::io("remove", manifest, 0, e))?;
            sync_dir(manifest)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", manifest, 0, e)),
    }
}

/// Test-only fault injection at a named commit step, for the tests of the commit protocol: with
/// `DISKSTREAM_TEST_ONLY_FAIL_AT=<step>` the step fails with EIO; with
/// `DISKSTREAM_TEST_ONLY_CRASH_AT=<step>` the process exits at once without any cleanup, as a
/// SIGKILL there would leave it. Steps: `rename` (a lone output), `rename-manifest`,
/// `rename-image`. Unset (always, outside tests) they cost one environment lookup per commit;
/// a release build (no debug assertions) never looks.
fn test_only_fault(step: &str) -> io::Result<()> {
    if !cfg!(debug_assertions) {
        return Ok(());
    }
    if std::env::var_os("DISKSTREAM_TEST_ONLY_CRASH_AT").is_some_and(|v| v == step) {
        std::process::exit(86);
    }
    if std::env::var_os("DISKSTREAM_TEST_ONLY_FAIL_AT").is_some_and(|v| v == step) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

impl Drop for Target {
    fn drop(&mut self) {
        if !self.committed {
            if let Some(temp) = &self.temp_path {
                let _ = std::fs::remove_file(temp);
            }
        }
    }
}

/// Renames `temp` to `dest`: over whatever is there with `replace`, else only where nothing is
/// (`RENAME_NOREPLACE`; on a file system without it, a hard link then the unlink of `temp`; on
/// one without hard links either, a check then a plain rename, which only narrows the race).
fn place(temp: &Path, dest: &Path, replace: bool) -> io::Result<()> {
    if replace {
        return std::fs::rename(temp, dest);
    }
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM)
        )
    };
    match sys::rename_noreplace(temp, dest) {
        Err(e) if unsupported(&e) => match std::fs::hard_link(temp, dest) {
            Ok(()) => std::fs::remove_file(temp),
            Err(e) if unsupported(&e) => {
                if std::fs::symlink_metadata(dest).is_ok() {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                std::fs::rename(temp, dest)
            }
            Err(e) => Err(e),
        },
        r => r,
    }
}

fn rename_error(temp: &Path, dest: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::AlreadyExists {
        return Error::Invalid(format!(
            "{}: was created by someone else while this run wrote it; not replaced without --force \
             (this run's output is discarded)",
            dest.display()
        ));
    }
    Error::io("rename", temp, 0, e)
}

/// How long a commit waits for its turn ([`commit_turn`]) before it goes ahead without one.
const COMMIT_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An exclusive `flock` on the directory that holds `path`, held (until dropped) across a
/// pair's two renames, so that commits of pairs into one directory, by this process or
/// another, do not interleave. Best effort: where the directory cannot be locked (a file
/// system without `flock` on directories, such as NFS) or someone holds the lock for longer
/// than [`COMMIT_TURN_WAIT`] (it is any reader's to take), the commit goes ahead without it,
/// as it did before; an interleaving is then still caught by `verify` (each image records its
/// digest), never silent.
fn commit_turn(path: &Path) -> Option<File> {
    use rustix::fs::{flock, FlockOperation};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok()?;
    let until = std::time::Instant::now() + COMMIT_TURN_WAIT;
    loop {
        match flock(&d, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Some(d),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
}

/// Fsyncs the directory holding `path`, making a rename in it durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, 0, e))
}

fn open_device(path: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).read(true);
    // O_EXCL without O_CREAT on a block device: an exclusive claim that fails with EBUSY while the
    // device is mounted, in use by device-mapper, md or another exclusive opener.
    o.custom_flags(libc::O_CLOEXEC | libc::O_EXCL | if direct { libc::O_DIRECT } else { 0 });
    o.open(path)
}
