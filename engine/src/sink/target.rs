//! Opening outputs: a regular file is created under a temporary name in the same directory and
//! renamed over the final name only once complete and fsynced (a failed or killed run never
//! leaves a half image under the final name, and never touches an existing one before then);
//! a block device is written in place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
    /// Opens `path` for writing. A block device is opened in place (O_DIRECT); anything else
    /// becomes a new file `.<name>.partial-<pid>` next to it, created with mode 0600. An existing
    /// regular file is refused unless `force` (and even then replaced only on [`Self::commit`]).
    pub fn create(path: &Path, force: bool, want_direct: bool) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => {
                let file = open(path, false, want_direct).or_else(|e| {
                    if want_direct && e.raw_os_error() == Some(libc::EINVAL) {
                        open(path, false, false)
                    } else {
                        Err(e)
                    }
                });
                let file = file.map_err(|e| Error::io("open", path, 0, e))?;
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
            Ok(m) if m.is_dir() => return Err(Error::Invalid(format!("{}: is a directory", path.display()))),
            Ok(m) if !m.is_file() => {
                return Err(Error::Invalid(format!(
                    "{}: not a regular file or block device",
                    path.display()
                )))
            }
            Ok(_) if !force => {
                return Err(Error::Invalid(format!(
                    "{}: already exists; pass --force to replace it",
                    path.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", path, 0, e)),
        }
        let name = path
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let temp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&temp); // A leftover of an earlier run of this same pid.
        let (file, direct) = match open(&temp, true, want_direct) {
            Ok(f) => {
                let direct = want_direct && sys::is_direct(&f).unwrap_or(false);
                (f, direct)
            }
            Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(&temp);
                (
                    open(&temp, true, false).map_err(|e| Error::io("create", &temp, 0, e))?,
                    false,
                )
            }
            Err(e) => return Err(Error::io("create", &temp, 0, e)),
        };
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

    /// Flushes the data to stable storage and, for a file, renames it into place and syncs the
    /// directory, so the complete output appears at once or not at all.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync", self.write_path(), 0, e))?;
        if let Some(temp) = &self.temp_path {
            std::fs::rename(temp, &self.final_path).map_err(|e| Error::io("rename", temp, 0, e))?;
            sync_dir(&self.final_path)?;
        }
        self.committed = true;
        Ok(self.final_path.clone())
    }
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

fn open(path: &Path, create: bool, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).read(true);
    if create {
        o.create_new(true).mode(0o600);
    }
    o.custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 });
    o.open(path)
}
