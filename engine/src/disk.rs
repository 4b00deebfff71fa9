//! A disk: a block device or file opened with O_DIRECT, its size, logical block size and data
//! extents (`SEEK_DATA`/`SEEK_HOLE`), which [`crate::plan`] turns into reads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

/// What kind of object the path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A block device (`BLKGETSIZE64`, `BLKSSZGET`).
    BlockDevice,
    /// A regular file (stat; holes mapped with `SEEK_DATA`).
    File,
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BlockDevice => "block-device",
            Self::File => "file",
        })
    }
}

/// An opened source disk (block device or file).
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    file: File,
    kind: SourceKind,
    size: u64,
    logical_block: u32,
    direct: bool,
    warning: Option<String>,
}

impl Disk {
    /// Opens `path` read-only with `O_DIRECT`. A file system that refuses O_DIRECT (tmpfs)
    /// gets a buffered open and a warning in [`Disk::warning`]; a device never does.
    ///
    /// A block device is claimed exclusively (`O_EXCL`) while it is read, so that no one can
    /// mount it or write it with an exclusive open (diskstream's own `create`/`restore` onto it)
    /// until the read is done. One already claimed (mounted, held by device-mapper or md, being
    /// written by another diskstream) is read without the claim, and [`Disk::warning`] says the
    /// data may change while it is read.
    pub fn open(path: &Path) -> Result<Self> {
        // A FIFO, character device, socket or directory is refused before any open that could
        // block (a FIFO's open waits for a writer): a disk is read by position.
        let meta = crate::input::check_kind(path, "the source", true)?;
        let kind = if meta.file_type().is_block_device() {
            SourceKind::BlockDevice
        } else {
            SourceKind::File
        };
        let claim = if kind == SourceKind::BlockDevice {
            libc::O_EXCL
        } else {
            0
        };
        let (file, direct, warning) = match open_source(path, libc::O_DIRECT | claim) {
            Ok(f) => (f, true, None),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && claim != 0 => {
                let f = open_source(path, libc::O_DIRECT).map_err(|e| crate::input::open_error(path, e))?;
                let w = format!(
                    "{}: the device is in use (mounted, claimed by device-mapper or md, or opened exclusively by \
                     another program, such as a diskstream writing it); it is read without an exclusive claim, so \
                     whatever holds it may change it while it is read: the image is then not a consistent copy \
                     of any one moment, though it verifies (its digests are of what was read)",
                    path.display()
                );
                (f, true, Some(w))
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && kind == SourceKind::File => {
                let f = open_source(path, 0).map_err(|e| crate::input::open_error(path, e))?;
                let w = format!(
                    "{}: the file system refuses O_DIRECT (ramfs, an old tmpfs, some FUSE file systems); falling back to buffered reads \
                     through the page cache, which is slower and pollutes the cache",
                    path.display()
                );
                (f, false, Some(w))
            }
            Err(e) => return Err(crate::input::open_error(path, e)),
        };
        let (size, logical_block) = match kind {
            SourceKind::BlockDevice => {
                let size = sys::block_device_size(&file).map_err(|e| Error::io("BLKGETSIZE64", path, 0, e))?;
                let lbs =
                    sys::block_device_logical_block_size(&file).map_err(|e| Error::io("BLKSSZGET", path, 0, e))?;
                (size, lbs.max(512))
            }
            SourceKind::File => (meta.len(), 512),
        };
        Ok(Self {
            path: path.to_owned(),
            file,
            kind,
            size,
            logical_block,
            direct,
            warning,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, for a reader that owns it (a dsimg frame stream).
    pub fn into_file(self) -> File {
        self.file
    }

    /// Block device or file.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Alignment unit for O_DIRECT reads (at least 512).
    pub fn logical_block(&self) -> u32 {
        self.logical_block
    }

    /// True if and only if the kernel reports the descriptor as `O_DIRECT` (asked via fcntl).
    pub fn is_direct(&self) -> bool {
        self.direct && sys::is_direct(&self.file).unwrap_or(false)
    }

    /// The warning to show the operator, if the source could not be opened as asked.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Data extents `[start, end)` in increasing order. Block devices are all data; files are
    /// mapped with `SEEK_DATA`/`SEEK_HOLE`, or all data if the file system cannot say.
    pub fn data_extents(&self) -> Result<Vec<(u64, u64)>> {
        if self.kind == SourceKind::BlockDevice || self.size == 0 {
            return Ok(if self.size == 0 { vec![] } else { vec![(0, self.size)] });
        }
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.size {
            let start = match sys::seek_data_hole(&self.file, pos, sys::Whence::Data) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, self.size)]),
                Err(e) => return Err(Error::io("lseek(SEEK_DATA)", &self.path, pos, e)),
            };
            if start >= self.size {
                break;
            }
            let end = sys::seek_data_hole(&self.file, start, sys::Whence::Hole)
                .map_err(|e| Error::io("lseek(SEEK_HOLE)", &self.path, start, e))?
                .unwrap_or(self.size)
                .min(self.size);
            out.push((start, end));
            pos = end;
        }
        Ok(out)
    }
}

/// Opens `path` read-only with `flags` (`O_DIRECT`, `O_EXCL`) added, after the input checks.
fn open_source(path: &Path, flags: i32) -> io::Result<File> {
    crate::input::open_checked(path, "the source", true, flags)
}
