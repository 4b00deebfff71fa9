//! Opening outputs: a regular file is created under a temporary name in the same directory and
//! renamed over the final name only once complete and fsynced (a failed or killed run never
//! leaves a half image under the final name, and never touches an existing one before then);
//! a block device is written in place, opened with `O_EXCL` (a mounted or otherwise claimed
//! device is refused) and only with `force`.
//!
//! An image and its manifest are committed together ([`Target::commit_with_manifest`]): both are
//! complete and synced under temporary names before either is renamed, the manifest is renamed
//! first, and the image records its whole-image digest (`user.diskstream.sha256`) so that a
//! reader can tell a manifest that belongs to another image (a commit cut between the renames)
//! from damage (docs/image-format.md, "Committing an image and its manifest").
//!
//! Each output's temporary name is its own (`.NAME.partial-<pid>-<n>`, `n` counted per
//! process, created `O_EXCL`): two outputs of one name written side by side in one process (an
//! agent receiving, a frontend embedding the engine) never share or remove each other's file,
//! and a commit renames only the bytes its own writer wrote. Leftovers of killed runs (whose
//! process is gone) are swept by the next run that writes the same NAME ([`sweep_partials`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
}

impl Target {
    /// Opens `path` for writing. A block device is opened in place (O_DIRECT, O_EXCL) and only
    /// with `force`; anything else becomes a new file `.<name>.partial-<pid>-<n>` next to it, created
    /// with mode 0600. An existing regular file is refused unless `force` (and even then replaced
    /// only on [`Self::commit`]).
    pub fn create(path: &Path, force: bool, want_direct: bool) -> Result<Self> {
        Self::open(path, force, want_direct, true)
    }

    /// Like [`Self::create`], but never a device: a manifest or other side file.
    pub fn create_file(path: &Path, force: bool) -> Result<Self> {
        Self::open(path, force, false, false)
    }

    fn open(path: &Path, force: bool, want_direct: bool, allow_device: bool) -> Result<Self> {
        match check_output(path, force, allow_device)? {
            OutputKind::Device => {
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
                let lbs =
                    sys::block_device_logical_block_size(&file).map_err(|e| Error::io("BLKSSZGET", path, 0, e))?;
                let direct = sys::is_direct(&file).unwrap_or(false);
                return Ok(Self {
                    file,
                    final_path: path.to_owned(),
                    temp_path: None,
                    direct,
                    device_size: Some(size),
                    logical_block: lbs.max(512),
                    committed: false,
                });
            }
            OutputKind::New | OutputKind::Replace => {}
        }
        sweep_partials(path);
        let name = path
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (temp, file) = create_partial(dir, &name.to_string_lossy(), want_direct)?;
        let direct = want_direct && sys::is_direct(&file).unwrap_or(false);
        Ok(Self {
            file,
            final_path: path.to_owned(),
            temp_path: Some(temp),
            direct,
            device_size: None,
            logical_block: 4096,
            committed: false,
        })
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

    /// Flushes the data to stable storage and, for a file, renames it into place and syncs the
    /// directory, so the complete output appears at once or not at all.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", self.write_path(), 0, e))?;
        if let Some(temp) = &self.temp_path {
            test_only_fault("rename")
                .and_then(|()| std::fs::rename(temp, &self.final_path))
                .map_err(|e| Error::io("rename", temp, 0, e))?;
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
    /// its old manifest was removed before its first byte was overwritten
    /// ([`remove_stale_manifest`]).
    pub fn commit_with_manifest(mut self, mut manifest: Target) -> Result<PathBuf> {
        manifest
            .file
            .sync_all()
            .map_err(|e| Error::io("fsync", manifest.write_path(), 0, e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", self.write_path(), 0, e))?;
        if let Some(temp) = &manifest.temp_path {
            test_only_fault("rename-manifest")
                .and_then(|()| std::fs::rename(temp, &manifest.final_path))
                .map_err(|e| Error::io("rename", temp, 0, e))?;
        }
        manifest.committed = true;
        if let Some(temp) = &self.temp_path {
            test_only_fault("rename-image")
                .and_then(|()| std::fs::rename(temp, &self.final_path))
                .map_err(|e| {
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
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() && allow_device => {
            if force {
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
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(OutputKind::New),
        Err(e) => Err(Error::io("stat", path, 0, e)),
    }
}

/// True if and only if `a` and `b` name the same file: the same canonical path, or the same
/// device and inode (hard links, symbolic links), or block devices with the same device number.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        if x.dev() == y.dev() && x.ino() == y.ino() {
            return true;
        }
        if x.file_type().is_block_device() && y.file_type().is_block_device() && x.rdev() == y.rdev() {
            return true;
        }
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The canonical path of `p`, or of its parent joined with its name where `p` does not exist.
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
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

/// The temporary files this process has open for writing (created and not yet committed or
/// dropped): [`sweep_partials`] never removes these, whatever their pid says.
static OPEN_PARTIALS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The `n` of the next temporary name this process makes.
static NEXT_PARTIAL: AtomicU64 = AtomicU64::new(0);

fn open_partials() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while the list was held leaves it consistent (pushes and removes are single steps).
    OPEN_PARTIALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates the temporary file `.NAME.partial-<pid>-<n>` in `dir` (mode 0600, `O_EXCL`; with
/// `O_DIRECT` where asked and the file system takes it), registered as open. A name that exists
/// already (a leftover the sweep did not remove) is passed over for the next `n`.
fn create_partial(dir: &Path, name: &str, want_direct: bool) -> Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let n = NEXT_PARTIAL.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.partial-{}-{n}", std::process::id()));
        // Listed before it exists: a sweep on another thread never sees it unlisted.
        open_partials().push(temp.clone());
        let opened = match open(&temp, true, want_direct) {
            Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(&temp);
                open(&temp, true, false)
            }
            r => r,
        };
        match opened {
            Ok(f) => return Ok((temp, f)),
            Err(e) => {
                closed_partial(&temp);
                if e.kind() != io::ErrorKind::AlreadyExists || tries == 16 {
                    return Err(Error::io("create", &temp, 0, e));
                }
                tries += 1;
            }
        }
    }
}

/// Takes `temp` off the list of this process's open temporary files.
fn closed_partial(temp: &Path) {
    let mut open = open_partials();
    if let Some(i) = open.iter().position(|p| p == temp) {
        open.swap_remove(i);
    }
}

/// The pid in a temporary name's tail after `.NAME.partial-`: `<pid>-<n>`, or `<pid>` alone
/// (the names of diskstream 0.1.0); `None` for anything else.
fn partial_pid(tail: &str) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let pid = match tail.split_once('-') {
        Some((pid, n)) if digits(n) => pid,
        Some(_) => return None,
        None => tail,
    };
    digits(pid).then(|| pid.parse().ok()).flatten()
}

/// Removes the leftovers `.NAME.partial-<pid>-<n>` (and 0.1.0's `.NAME.partial-<pid>`) beside
/// `path` (these naming patterns only, regular files only) whose process is gone, or is no
/// longer a diskstream (the pid was reused by another program, which cannot be writing our
/// partial), or is this process and not open in it (a leftover of an earlier process with the
/// same pid). A partial of another live diskstream, or one this process is writing, is left
/// alone. Returns the paths removed.
pub fn sweep_partials(path: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let (Some(name), dir) = (
        path.file_name(),
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    ) else {
        return removed;
    };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let fname = e.file_name();
        let Some(pid) = fname
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(partial_pid)
        else {
            continue;
        };
        let p = e.path();
        let ours = pid == std::process::id();
        if (!ours && live_diskstream(pid)) || (ours && open_partials().contains(&p)) {
            continue;
        }
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) && std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// True if and only if `pid` is a running (not zombie) process whose command name starts with
/// `diskstream` (the binary, or the engine's own test programs).
fn live_diskstream(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X' | 'x') | None) {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end().starts_with("diskstream"))
}

/// Test-only fault injection at a named commit step, for the tests of the commit protocol: with
/// `DISKSTREAM_TEST_ONLY_FAIL_AT=<step>` the step fails with EIO; with
/// `DISKSTREAM_TEST_ONLY_CRASH_AT=<step>` the process exits at once without any cleanup, as a
/// SIGKILL there would leave it. Steps: `rename` (a lone output), `rename-manifest`,
/// `rename-image`. Unset (always, outside tests) they cost one environment lookup per commit.
fn test_only_fault(step: &str) -> io::Result<()> {
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
        if let Some(temp) = &self.temp_path {
            if !self.committed {
                let _ = std::fs::remove_file(temp);
            }
            closed_partial(temp);
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

fn open(path: &Path, create: bool, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).read(true);
    if create {
        o.create_new(true).mode(0o600);
    }
    o.custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 });
    o.open(path)
}
