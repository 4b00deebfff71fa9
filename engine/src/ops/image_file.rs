//! An image opened once for reading ([`ImageFile`]) and which format it is read as
//! ([`ImageFile::format`]): `--format` when given; else a raw image's manifest decides over the
//! dsimg magic (a raw export of a disk that begins with the magic, or of a dsimg file, is still
//! raw), and a manifest that fits neither reading is a mismatch, never a guess.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::image::image_manifest_path;
use super::Format;
use crate::direct_read::DirectReader;
use crate::error::{Error, Result};
use crate::format::{Header, HEADER_LEN, MAGIC};
use crate::input::ManifestFile;
use crate::manifest::ManifestHeader;

/// An image file or device, opened once and checked (regular file or block device); every
/// structural read of it goes through this descriptor.
pub(super) struct ImageFile {
    path: PathBuf,
    file: File,
    size: u64,
    device: bool,
}

impl ImageFile {
    /// Opens `path` as an image (a FIFO, directory or character device is refused before it is
    /// opened) and takes its size: a regular file's length or a block device's size.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = crate::input::open_input(path, "the image", true)?;
        let m = file.metadata().map_err(|e| Error::io("stat", path, 0, e))?;
        let device = m.file_type().is_block_device();
        let size = if device {
            crate::sys::block_device_size(&file).map_err(|e| Error::io("BLKGETSIZE64", path, 0, e))?
        } else {
            m.len()
        };
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            device,
        })
    }

    /// The same open file through a second descriptor (`dup`: a file put in its place
    /// meanwhile is not it), for a second pass over it.
    pub(super) fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(|e| Error::io("dup", &self.path, 0, e))?,
            size: self.size,
            device: self.device,
        })
    }

    /// The path it was opened from.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The open descriptor.
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Its size in bytes (a file's length, a device's size).
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Whether it is a block device.
    pub(super) fn is_device(&self) -> bool {
        self.device
    }

    /// The descriptor as a dsimg frame stream, read with O_DIRECT (set on this very descriptor,
    /// never by opening the path again: a file put in its place meanwhile is never read), or
    /// buffered where the file system refuses it; with the warning to show then.
    pub(super) fn into_stream(self) -> (DirectReader, bool, Option<String>) {
        let warning = match crate::sys::set_direct(&self.file) {
            Ok(()) => None,
            Err(_) => Some(format!(
                "{}: the file system refuses O_DIRECT; reading the image through the page cache",
                self.path.display()
            )),
        };
        let direct = crate::sys::is_direct(&self.file).unwrap_or(false);
        (DirectReader::new(self.file), direct, warning)
    }

    /// Whether `other` (opened from the same path) is this very file, not one put in its place
    /// since: same device and inode.
    pub(super) fn same_as(&self, other: &File) -> Result<bool> {
        let a = self.file.metadata().map_err(|e| Error::io("stat", &self.path, 0, e))?;
        let b = other.metadata().map_err(|e| Error::io("stat", &self.path, 0, e))?;
        Ok(a.dev() == b.dev() && a.ino() == b.ino() && a.rdev() == b.rdev())
    }

    /// The first [`HEADER_LEN`] bytes, if the image has that many.
    fn head(&self) -> Result<Option<[u8; HEADER_LEN]>> {
        let mut b = [0u8; HEADER_LEN];
        match self.file.read_exact_at(&mut b, 0) {
            Ok(()) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(Error::io("read", &self.path, 0, e)),
        }
    }

    /// Which format the image is read as. `forced` (`--format`) decides when given. Otherwise an
    /// image that does not begin with the dsimg magic is raw; one that does is a dsimg unless a
    /// manifest (`explicit`, or `IMAGE.manifest` if it exists) describes a raw image of this
    /// image's size and not the disk the dsimg header describes. A manifest that fits both is
    /// ambiguous, one that fits neither a mismatch: both are errors asking for `--format`.
    pub(super) fn format(&self, forced: Option<Format>, explicit: Option<&Path>) -> Result<Format> {
        if let Some(f) = forced {
            return Ok(f);
        }
        let head = self.head()?;
        if head.is_none_or(|h| h[..MAGIC.len()] != MAGIC) {
            return Ok(Format::Raw);
        }
        let Ok(mpath) = image_manifest_path(&self.path, explicit) else {
            // A device without --manifest, or a manifest that is the image: none to ask (the
            // dsimg's own check refuses the latter).
            return Ok(Format::Dsimg);
        };
        if explicit.is_none() && std::fs::symlink_metadata(&mpath).is_err() {
            return Ok(Format::Dsimg);
        }
        let m = *ManifestFile::open(&mpath)?.header();
        let dsimg = head.and_then(|h| Header::decode(&h).ok());
        let as_raw = self.raw_fits(&m);
        let as_dsimg = dsimg.is_some_and(|d| d.disk_size == m.disk_size && d.chunk_size == m.chunk_size);
        match (as_raw, as_dsimg) {
            (true, false) => Ok(Format::Raw),
            (false, true) => Ok(Format::Dsimg),
            // The magic, a damaged header, and not a raw image of its manifest: a damaged
            // dsimg, which its reader reports as such (where, and exit code 3).
            (false, false) if dsimg.is_none() => Ok(Format::Dsimg),
            (true, true) => Err(Error::Invalid(format!(
                "{}: begins with the dsimg magic and its manifest {} fits it both as a raw image of {} bytes and as \
                 the dsimg's disk; say which it is with --format raw or --format dsimg",
                self.path.display(),
                mpath.display(),
                self.size
            ))),
            (false, false) => Err(Error::ManifestMismatch {
                manifest: mpath,
                image: self.path.clone(),
                detail: format!(
                    "the image begins with the dsimg magic{}, the manifest describes a disk of {} bytes in chunks of \
                     {}, neither a raw image of the image's {} bytes nor the dsimg's disk; --format raw or \
                     --format dsimg says which the image is",
                    dsimg.map_or(String::new(), |d| format!(
                        " (a dsimg of a {} byte disk in chunks of {})",
                        d.disk_size, d.chunk_size
                    )),
                    m.disk_size,
                    m.chunk_size,
                    self.size
                ),
            }),
        }
    }

    /// Whether a manifest with header `m` describes this image as a raw image: a file exactly
    /// its disk size long, or a device at least that large.
    fn raw_fits(&self, m: &ManifestHeader) -> bool {
        self.size == m.disk_size || (self.device && self.size > m.disk_size)
    }
}
