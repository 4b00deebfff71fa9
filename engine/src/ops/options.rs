//! What each operation is asked to do: [`Tuning`] (how to move the bytes, shared by every
//! operation) and one options type per operation with only its own fields.

use std::path::{Path, PathBuf};

pub use crate::stop::StopFlag;
pub use crate::tuning::{
    default_threads, Tuning, DEFAULT_CHUNK, DEFAULT_QUEUE_DEPTH, DEFAULT_WRITE_DEPTH, MAX_THREADS,
};

use crate::digest::Checksum;
use crate::format::Format;
use crate::sink::ZeroPolicy;

/// `create`: read a disk, write an image and its manifest.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// How the bytes move.
    pub tuning: Tuning,
    /// Output format.
    pub format: Format,
    /// lz4-compress data chunks (dsimg only; a raw copy is never compressed).
    pub compress: bool,
    /// With `compress`, on a stream ([`super::send`]): compress only while it makes the stream
    /// faster (`--transport-compression auto`, [`crate::sink::adapt`]).
    pub adaptive: bool,
    /// Chunk digest algorithm recorded in the image and manifest.
    pub checksum: Checksum,
    /// Replace an existing output file (and manifest).
    pub force: bool,
    /// Zero chunks on a device target.
    pub zero_policy: ZeroPolicy,
    /// Where the manifest goes (default: `OUT.manifest`; required for a device output).
    pub manifest: Option<PathBuf>,
    /// Read only the first `limit` bytes of the source (benchmarks).
    pub limit: Option<u64>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            tuning: Tuning::default(),
            format: Format::Raw,
            compress: true,
            adaptive: false,
            checksum: Checksum::default(),
            force: false,
            zero_policy: ZeroPolicy::Write,
            manifest: None,
            limit: None,
        }
    }
}

/// `verify`: re-read an image and check every chunk.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// How the bytes move.
    pub tuning: Tuning,
    /// The manifest (default: `IMAGE.manifest`; a raw image needs one, a dsimg is checked against
    /// one if it exists).
    pub manifest: Option<PathBuf>,
    /// Read the image as this format (`--format`); `None`: the dsimg magic, unless a manifest
    /// describes a raw image of the image's size ([`super::detect`]).
    pub format: Option<Format>,
}

/// `restore`: write the disk an image holds to a file or device.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// How the bytes move.
    pub tuning: Tuning,
    /// Replace an existing destination file.
    pub force: bool,
    /// Zero chunks on a device destination.
    pub zero_policy: ZeroPolicy,
    /// The manifest of a raw image (default: `IMAGE.manifest`), or one a dsimg is checked against.
    pub manifest: Option<PathBuf>,
    /// Read the image as this format (`--format`); `None`: the dsimg magic, unless a manifest
    /// describes a raw image of the image's size ([`super::detect`]).
    pub format: Option<Format>,
    /// Check every chunk of the image before writing a byte (`--verify-first`), or not
    /// (`--no-verify-first`); `None`: for a block device, which is written in place, so that a
    /// damaged image never leaves it partly overwritten ([`Self::verifies_first`]).
    pub verify_first: Option<bool>,
}

impl RestoreOptions {
    /// Whether a restore to `dest` checks the whole image before it writes: as asked, else when
    /// `dest` is a block device (or a link to one). Such a restore reads the image twice.
    pub fn verifies_first(&self, dest: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.verify_first
            .unwrap_or_else(|| std::fs::metadata(dest).is_ok_and(|m| m.file_type().is_block_device()))
    }
}

/// `scan`: read a disk through the whole pipeline into a null sink.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// How the bytes move.
    pub tuning: Tuning,
    /// Also lz4-compress each chunk (and discard the result).
    pub compress: bool,
    /// Chunk digest algorithm.
    pub checksum: Checksum,
    /// Read only the first `limit` bytes of the source (benchmarks).
    pub limit: Option<u64>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            tuning: Tuning::default(),
            compress: true,
            checksum: Checksum::default(),
            limit: None,
        }
    }
}

/// `info`: describe an image from its structure.
#[derive(Clone, Debug, Default)]
pub struct InfoOptions {
    /// The manifest of a raw image (default: `IMAGE.manifest`), or one a dsimg is checked against.
    pub manifest: Option<PathBuf>,
    /// Read the image as this format (`--format`); `None`: the dsimg magic, unless a manifest
    /// describes a raw image of the image's size ([`super::detect`]).
    pub format: Option<Format>,
}
