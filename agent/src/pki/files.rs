//! The PKI directory's files: who may have written them (owner and mode checks), reading them
//! with bounds, writing them atomically under names a kill never leaves half-installed without
//! a trace, and the lock that makes `init` and `issue` one at a time.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{PkiError, Result};

/// The longest PEM file we read: certificates and keys are a few KiB.
const MAX_PEM: u64 = 64 << 10;

/// What a temporary file's name ends with: `.tmp-` and the writer's pid.
const TMP_MARK: &str = ".tmp-";

pub(super) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, detail: String) -> PkiError {
    PkiError::Bad {
        path: path.to_path_buf(),
        detail,
    }
}

/// Whether `uid` may own what we trust: this user or root (who can change anything anyway).
fn trusted_owner(uid: u32) -> bool {
    uid == rustix::process::geteuid().as_raw() || uid == 0
}

/// Creates `dir` with mode 0700, or accepts an existing directory only if no one else could
/// have changed what is in it ([`check_private_dir`]).
pub(super) fn make_private_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_private_dir(dir),
        Err(source) => Err(PkiError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Refuses a directory that someone other than this user or root owns, or that a group or other
/// users can write: anyone who can write there can swap the CA certificate or a node's key and
/// so defeat the mutual TLS. Also refuses what is not a directory, saying what it is.
pub(super) fn check_private_dir(dir: &Path) -> Result<()> {
    let m = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.symlink_metadata().is_ok() => {
            return Err(bad(
                dir,
                "is a symbolic link to nothing; expected the PKI directory".into(),
            ))
        }
        Err(e) => return Err(io("stat", dir)(e)),
    };
    if !m.is_dir() {
        return Err(bad(dir, "is not a directory; expected the PKI directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if !trusted_owner(m.uid()) {
        return Err(bad(
            dir,
            format!(
                "the PKI directory is owned by uid {}, not by this user (uid {me}) or root; refusing to use it",
                m.uid()
            ),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(bad(
            dir,
            format!(
                "the PKI directory is mode {:o}: others could replace its certificates and keys; \
                 refusing to use it (chmod 700 it, or remove it and run pki init again)",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Reads a certificate: a regular file of at most [`MAX_PEM`] bytes that no one but this user
/// or root owns and that no group or other user can write.
pub(super) fn read_cert_text(path: &Path) -> Result<String> {
    let (text, m) = read_text(path)?;
    if !trusted_owner(m.uid()) {
        return Err(bad(
            path,
            format!(
                "certificate is owned by uid {}, not by this user or root: that user could replace it; chown it",
                m.uid()
            ),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(bad(
            path,
            format!(
                "certificate is writable by group or others (mode {:04o}): they could replace it; chmod 644 it",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(text)
}

/// Reads a key file, refusing one that group or others can read, or that another user owns
/// (who can read it whatever its mode, and so act as that node), as ssh does.
pub(super) fn read_key_text(path: &Path) -> Result<String> {
    let (text, m) = read_text(path)?;
    let me = rustix::process::geteuid().as_raw();
    if !trusted_owner(m.uid()) {
        return Err(bad(
            path,
            format!(
                "key is owned by uid {}, not by this user (uid {me}) or root: that user can read it \
                 and act as this node; chown it",
                m.uid()
            ),
        ));
    }
    let mode = m.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(bad(
            path,
            format!(
                "key is accessible to group or others (mode {:04o}); chmod 600 it",
                mode & 0o7777
            ),
        ));
    }
    Ok(text)
}

/// The text of `path` and the metadata of the file it was read from.
fn read_text(path: &Path) -> Result<(String, fs::Metadata)> {
    // Opened once, then checked: what is read is what was checked. Non-blocking, so that a
    // FIFO put in a file's place is refused, not waited on for ever.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io("read", path))?;
    let meta = f.metadata().map_err(io("read", path))?;
    if !meta.is_file() || meta.len() > MAX_PEM {
        return Err(bad(
            path,
            format!("not a PEM file (a regular file of at most {MAX_PEM} bytes)"),
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_PEM), &mut text).map_err(io("read", path))?;
    Ok((text, meta))
}

/// A file's contents to be installed at `path` with `mode` ([`install`]).
pub(super) struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Writes `bytes` under a temporary name beside `path`: created exclusively with the final
    /// mode from the first byte, fsynced. Errors name `path` (the temporary file is removed).
    pub(super) fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<Self> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!("{TMP_MARK}{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let _ = fs::remove_file(&tmp);
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", path))?;
        let staged = Self {
            tmp,
            path: path.to_path_buf(),
        };
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io("write", path))?;
        Ok(staged)
    }
}

impl Drop for Staged {
    /// A staged file never installed is removed (a failure on the way, or before [`install`]).
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Renames each staged file over its path in order, then fsyncs their directories.
pub(super) fn install(staged: Vec<Staged>) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for s in &staged {
        fs::rename(&s.tmp, &s.path).map_err(io("rename", &s.path))?;
        if let Some(d) = s.path.parent() {
            if !dirs.iter().any(|x| x == d) {
                dirs.push(d.to_path_buf());
            }
        }
    }
    for d in dirs {
        File::open(&d).and_then(|f| f.sync_all()).map_err(io("sync", &d))?;
    }
    Ok(())
}

/// The PKI directory locked for writing: `init` and `issue` run one at a time (two at once
/// could each install half of a CA). Released on drop.
pub(super) struct Lock {
    _held: File,
}

/// Locks `dir` (an exclusive `flock` on the directory itself), waiting for another `init` or
/// `issue` to end, then removes the temporary files that runs killed before their end left.
pub(super) fn lock(dir: &Path) -> Result<Lock> {
    let f = File::open(dir).map_err(io("open", dir))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io("lock", dir)(std::io::Error::from(e)))?;
    sweep_temps(dir);
    sweep_temps(&dir.join("nodes"));
    Ok(Lock { _held: f })
}

/// Removes `*.tmp-PID` files in `dir`: under the lock, only a run that was killed leaves one
/// (our own files end in `.crt` or `.key`).
fn sweep_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_temp = name
            .rsplit_once(TMP_MARK)
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if is_temp && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}
