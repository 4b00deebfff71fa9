//! The engine's error type: every failure names what (path), the operation, and where (offset).

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context for an operator to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed. The offset is said where it means something (reads, writes,
    /// sends; a truncate's length), not for an open or a stat.
    #[error("{op} {path}{}: {source}", place(op, *offset))]
    Io {
        /// The operation, e.g. "read", "write", "open".
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// Byte offset in that file (0 where none applies).
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The bytes do not match their recorded digest: data corruption.
    #[error(
        "{path}: checksum mismatch in chunk {chunk} (bytes {offset}..{end}): expected {checksum} {expected}, found {found}"
    )]
    ChecksumMismatch {
        /// The image or disk being checked.
        path: PathBuf,
        /// Chunk index.
        chunk: u64,
        /// First byte of the chunk in the disk.
        offset: u64,
        /// One past the last byte of the chunk in the disk.
        end: u64,
        /// The digest algorithm.
        checksum: crate::digest::Checksum,
        /// Digest recorded in the manifest or image.
        expected: String,
        /// Digest of the bytes found.
        found: String,
    },
    /// The image or manifest is malformed or cut short.
    #[error("{path}: corrupt {what} at byte offset {offset}: {detail}")]
    Corrupt {
        /// The image or manifest file.
        path: PathBuf,
        /// Which structure, e.g. "frame header", "trailer", "manifest".
        what: &'static str,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// What exactly is wrong.
        detail: String,
    },
    /// The caller asked for something the engine cannot do.
    #[error("{0}")]
    Invalid(String),
    /// The operation was stopped from outside (`Tuning::stop`, set by a SIGINT/SIGTERM handler)
    /// and cleaned up what it had created.
    #[error("interrupted")]
    Cancelled,
    /// A failure of a run that writes a block device in place (a restore that met a damaged
    /// chunk mid-way, or was interrupted): the error, and how much of the device is gone (none:
    /// it is untouched).
    #[error("{source}; {}", device_state(.dest, *.chunks, *.reach))]
    PartlyWritten {
        /// The device.
        dest: PathBuf,
        /// Chunks written (or zeroed) on it.
        chunks: u64,
        /// One past the furthest byte written.
        reach: u64,
        /// What stopped the run.
        source: Box<Error>,
    },
    /// A manifest and an image that are not a pair: the manifest describes another image (for
    /// example one whose commit was cut between the two renames). Neither is known to be damaged.
    #[error("{manifest}: manifest does not belong to {image} ({detail})")]
    ManifestMismatch {
        /// The manifest.
        manifest: PathBuf,
        /// The image.
        image: PathBuf,
        /// Which identities differ.
        detail: String,
    },
}

/// The kind of an [`Error`], for callers that act on it (exit codes, JSON, an orchestrator
/// carrying it up) without matching on every variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The data is damaged: a checksum mismatch, a corrupt or truncated image or manifest.
    Integrity,
    /// A manifest and an image that are not a pair (neither known to be damaged).
    Mismatch,
    /// Stopped from outside (a signal, a cancel flag).
    Cancelled,
    /// A system call failed.
    Io,
    /// The caller asked for something the engine cannot do.
    Invalid,
}

impl ErrorKind {
    /// The `kind` the CLI's JSON error objects carry: "integrity", "mismatch", "interrupted",
    /// or "error" for I/O failures and invalid requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integrity => "integrity",
            Self::Mismatch => "mismatch",
            Self::Cancelled => "interrupted",
            Self::Io | Self::Invalid => "error",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// An I/O error with its context.
    /// A full file system (ENOSPC) is said with its free space: `No space left on device (os
    /// error 28); 3.0 MiB free of 96.0 MiB on its file system`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, offset: u64, source: io::Error) -> Self {
        let path = path.into();
        let source = if source.raw_os_error() == Some(libc::ENOSPC) {
            with_free_space(&path, source)
        } else {
            source
        };
        Self::Io {
            op,
            path,
            offset,
            source,
        }
    }

    /// The error with its path `temp` (an output's temporary file, which is removed) given as
    /// `real` (the output's own name), so that an error names what the user asked for.
    pub fn naming(self, temp: &Path, real: &Path) -> Self {
        match self {
            Self::Io {
                op,
                path,
                offset,
                source,
            } if path == temp => Self::Io {
                op,
                path: real.to_owned(),
                offset,
                source,
            },
            e => e,
        }
    }

    /// [`Self::naming`] for each `(temporary, real)` pair of an operation's outputs.
    pub fn naming_all(self, pairs: &[(PathBuf, PathBuf)]) -> Self {
        pairs.iter().fold(self, |e, (temp, real)| e.naming(temp, real))
    }

    /// [`Self::io`], unless `source` carries an engine error already (a write that failed
    /// deeper down, under its own path and offset): that one, not both with two offsets.
    pub fn io_or_inner(op: &'static str, path: impl Into<PathBuf>, offset: u64, source: io::Error) -> Self {
        match source.downcast::<Self>() {
            Ok(inner) => inner,
            Err(source) => Self::io(op, path, offset, source),
        }
    }

    /// Corrupt data with its context.
    pub fn corrupt(path: impl Into<PathBuf>, what: &'static str, offset: u64, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            what,
            offset,
            detail: detail.into(),
        }
    }

    /// What kind of failure this is: what a caller maps to an exit code or a JSON `kind`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::ChecksumMismatch { .. } | Self::Corrupt { .. } => ErrorKind::Integrity,
            Self::ManifestMismatch { .. } => ErrorKind::Mismatch,
            Self::Cancelled => ErrorKind::Cancelled,
            Self::Io { .. } => ErrorKind::Io,
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::PartlyWritten { source, .. } => source.kind(),
        }
    }

    /// True if and only if this error means the data is damaged (not the environment).
    pub fn is_integrity(&self) -> bool {
        self.kind() == ErrorKind::Integrity
    }

    /// True if and only if the operation was stopped from outside ([`Error::Cancelled`], also
    /// where it says what became of a device it was writing).
    pub fn is_cancelled(&self) -> bool {
        match self {
            Self::Cancelled => true,
            Self::PartlyWritten { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }

    /// What became of the block device a failed run was writing in place, if it was writing one.
    pub fn device_written(&self) -> Option<String> {
        match self {
            Self::PartlyWritten {
                dest, chunks, reach, ..
            } => Some(device_state(dest, *chunks, *reach)),
            _ => None,
        }
    }
}

/// How much of `dest` a failed run wrote.
fn device_state(dest: &Path, chunks: u64, reach: u64) -> String {
    if chunks == 0 {
        return format!("nothing was written to {}: it holds its old data", dest.display());
    }
    format!(
        "{} was partly overwritten: {chunks} chunk(s) within its bytes 0..{reach} were written before the \
         failure, so it now holds neither its old data nor the image's disk",
        dest.display()
    )
}

/// `e` (a full file system) with what is free on the file system of `path` (or of the
/// directory it would be in), as far as `statvfs` tells.
fn with_free_space(path: &Path, e: io::Error) -> io::Error {
    let fs = path
        .ancestors()
        .find_map(|p| rustix::fs::statvfs(if p.as_os_str().is_empty() { Path::new(".") } else { p }).ok());
    let Some(fs) = fs else {
        return e;
    };
    let mib = |blocks: u64| format!("{:.1} MiB", (blocks.saturating_mul(fs.f_frsize)) as f64 / 1048576.0);
    let msg = format!(
        "{e}; {} free of {} on its file system",
        mib(fs.f_bavail),
        mib(fs.f_blocks)
    );
    io::Error::new(e.kind(), msg)
}

/// Where in the file an I/O error happened, for the operations that have a place.
fn place(op: &str, offset: u64) -> String {
    match op {
        "read" | "write" | "send" => format!(" at byte offset {offset}"),
        "truncate" => format!(" to {offset} bytes"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_an_offset_only_where_it_has_one() {
        let e = |op, off| Error::io(op, "/d/x", off, io::Error::from_raw_os_error(libc::ENOENT)).to_string();
        assert_eq!(e("stat", 0), "stat /d/x: No such file or directory (os error 2)");
        assert_eq!(e("open", 0), "open /d/x: No such file or directory (os error 2)");
        assert_eq!(
            e("read", 4096),
            "read /d/x at byte offset 4096: No such file or directory (os error 2)"
        );
        assert_eq!(
            e("truncate", 8),
            "truncate /d/x to 8 bytes: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_full_file_system_is_said_with_its_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone/dump");
        let e = Error::io("write", &path, 0, io::Error::from_raw_os_error(libc::ENOSPC)).to_string();
        assert!(e.contains("No space left on device (os error 28); "), "{e}");
        assert!(e.ends_with(" on its file system") && e.contains(" MiB free of "), "{e}");
    }
}
