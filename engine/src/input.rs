//! Inputs checked before they are read: an image, a manifest or a source must be a regular file
//! (or, where the mode allows, a block device), decided from `stat` before any open that could
//! block (a FIFO's open waits for a writer), opened with `O_NONBLOCK` and checked again on the
//! descriptor; and every read is bounded by what the input describes (a manifest by the chunk
//! count its header declares, which the caller first checks against the image). A regular file
//! of one of the kernel's pseudo file systems (procfs, sysfs, tracefs, debugfs, ...) is refused:
//! its size says nothing of its contents, and its reads may block for ever (`trace_pipe`) or
//! consume what they read (`/proc/kmsg`).

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::{Manifest, ManifestHeader};
use crate::sys;

/// What a file type is, for messages: "a FIFO", "a character device", ...
pub fn kind_name(ft: &FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a file"
    }
}

fn acceptable(ft: &FileType, allow_device: bool) -> bool {
    ft.is_file() || (allow_device && ft.is_block_device())
}

fn refusal(path: &Path, what: &str, ft: &FileType, allow_device: bool) -> Error {
    Error::Invalid(format!(
        "{}: {what} is {}, {} (diskstream reads {what} by position, never as a stream)",
        path.display(),
        kind_name(ft),
        match (allow_device, what) {
            // A source is a disk: a device first.
            (true, "the source") => "not a block device or regular file",
            (true, _) => "not a regular file or block device",
            (false, _) => "not a regular file",
        },
    ))
}

/// The kernel's pseudo file systems, by `statfs` magic: their files are not data at rest.
const PSEUDO_FS: [(i64, &str); 16] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x7472_6163, "tracefs"),
    (0x6462_6720, "debugfs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x6165_676c, "pstore"),
    (0x6265_6570, "configfs"),
    (0xde5e_81e4, "efivarfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x6573_5543, "fusectl"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6e73_6673, "nsfs"),
    (0x1cd1, "devpts"),
];

fn pseudo_fs_name(f_type: i64) -> Option<&'static str> {
    PSEUDO_FS.iter().find(|(m, _)| *m == f_type).map(|(_, n)| *n)
}

fn pseudo_refusal(path: &Path, what: &str, fs: &str) -> String {
    format!(
        "{}: {what} is a file of the kernel's {fs} file system, not a disk or an image (its size \
         says nothing of its contents and reading it may block or consume it); refusing it",
        path.display()
    )
}

/// Refuses an empty path, which names no file (its errors said `stat : No such file or
/// directory`, naming nothing); `what` names the role ("the source", "the output").
pub fn refuse_empty(path: &Path, what: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::Invalid(format!("{what}: an empty path names no file")));
    }
    Ok(())
}

/// Refuses `path` unless it is a regular file (or, with `allow_device`, a block device) outside
/// the kernel's pseudo file systems, following symbolic links; opens nothing. `what` names the
/// role in the message ("the image").
pub fn check_kind(path: &Path, what: &str, allow_device: bool) -> Result<Metadata> {
    refuse_empty(path, what)?;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, 0, e))?;
    if !acceptable(&meta.file_type(), allow_device) {
        return Err(refusal(path, what, &meta.file_type(), allow_device));
    }
    if meta.is_file() {
        let st = rustix::fs::statfs(path).map_err(|e| Error::io("statfs", path, 0, e.into()))?;
        if let Some(fs) = pseudo_fs_name(st.f_type as i64) {
            return Err(Error::Invalid(pseudo_refusal(path, what, fs)));
        }
    }
    Ok(meta)
}

/// Opens `path` read-only after [`check_kind`], with `O_NONBLOCK` (so that a FIFO swapped in
/// between the `stat` and the `open` cannot block), checks the descriptor's type and identity
/// again, and clears `O_NONBLOCK`. `extra_flags` are added to the open (`O_DIRECT`).
pub fn open_checked(path: &Path, what: &str, allow_device: bool, extra_flags: i32) -> std::io::Result<File> {
    let before = std::fs::metadata(path)?;
    if !acceptable(&before.file_type(), allow_device) {
        return Err(std::io::Error::other(refusal(
            path,
            what,
            &before.file_type(),
            allow_device,
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | extra_flags)
        .open(path)?;
    let after = file.metadata()?;
    if !acceptable(&after.file_type(), allow_device) || after.dev() != before.dev() || after.ino() != before.ino() {
        return Err(std::io::Error::other(format!(
            "{}: {what} changed while it was being opened (now {})",
            path.display(),
            kind_name(&after.file_type())
        )));
    }
    if after.is_file() {
        if let Some(fs) = pseudo_fs_name(rustix::fs::fstatfs(&file)?.f_type as i64) {
            return Err(std::io::Error::other(pseudo_refusal(path, what, fs)));
        }
    }
    sys::clear_nonblock(&file)?;
    Ok(file)
}

/// [`open_checked`] with the engine's error: refusals stay refusals, the rest are I/O errors.
pub fn open_input(path: &Path, what: &str, allow_device: bool) -> Result<File> {
    check_kind(path, what, allow_device)?;
    open_checked(path, what, allow_device, 0).map_err(|e| open_error(path, e))
}

/// Maps an error of [`open_checked`] to the engine's error.
pub fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error().is_none() && e.kind() == std::io::ErrorKind::Other {
        if let Some(inner) = e.get_ref() {
            return Error::Invalid(inner.to_string());
        }
    }
    Error::io("open", path, 0, e)
}

/// Bytes read to find a manifest's header (its first four lines are far shorter).
const MANIFEST_HEAD: u64 = 4096;

/// A manifest whose header has been read and checked, the rest not yet read.
pub struct ManifestFile {
    path: std::path::PathBuf,
    file: File,
    head: Vec<u8>,
    header: ManifestHeader,
}

impl ManifestFile {
    /// Opens the manifest at `path` (a regular file, never a device, FIFO or directory) and
    /// parses its header from at most 4 KiB.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = open_input(path, "the manifest", false)?;
        let mut head = Vec::new();
        (&mut file)
            .take(MANIFEST_HEAD)
            .read_to_end(&mut head)
            .map_err(|e| Error::io("read", path, 0, e))?;
        let header = ManifestHeader::parse(&head, path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            head,
            header,
        })
    }

    /// The header: disk size, chunk size and chunk count.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    /// Reads and strictly parses the whole manifest, at most as many bytes as its header's chunk
    /// count can take (a manifest that goes on, e.g. a symlink to `/dev/zero` swapped in, or
    /// 200 MB of junk, is refused having read no more than that). The caller checks the header
    /// against the image first, so the bound follows from the image.
    pub fn read(mut self) -> Result<Manifest> {
        let max = self.header.max_len();
        let have = self.head.len() as u64;
        if have > max {
            return Err(Error::corrupt(
                &self.path,
                "manifest",
                max,
                format!(
                    "longer than the {max} bytes a manifest of {} chunks can take",
                    self.header.chunk_count
                ),
            ));
        }
        let mut rest = Vec::new();
        (&mut self.file)
            .take(max - have + 1)
            .read_to_end(&mut rest)
            .map_err(|e| Error::io("read", &self.path, have, e))?;
        if have + rest.len() as u64 > max {
            return Err(Error::corrupt(
                &self.path,
                "manifest",
                max,
                format!(
                    "longer than the {max} bytes a manifest of {} chunks can take",
                    self.header.chunk_count
                ),
            ));
        }
        let mut all = self.head;
        all.extend_from_slice(&rest);
        Manifest::parse(&all, &self.path)
    }
}
