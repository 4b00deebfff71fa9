//! What each operation is asked to do: [`Tuning`] (how to move the bytes, shared by every
//! operation) and one options type per operation with only its own fields.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Format;
use crate::buf::Pages;
use crate::digest::Checksum;
use crate::error::{Error, Result};
use crate::format::{MAX_CHUNK, MIN_CHUNK};
use crate::ring::BackendKind;
use crate::sink::ZeroPolicy;

/// Default chunk size: 1 MiB. The CPU cost per byte is the same from 1 to 4 MiB chunks
/// (docs/performance.md, "Chunk size"), and 1 MiB chunks keep sparse disks cheap (zero padding in
/// partly filled chunks is hashed too) and memory small.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Default reads in flight: 32 MiB at the default chunk size. Measured against 16 (docs/performance.md,
/// "Queue depth"): faster in 10 of 11 alternated runs (scan +26 %, raw +30 %, dsimg +12 %).
pub const DEFAULT_QUEUE_DEPTH: u32 = 32;

/// Default writes in flight.
pub const DEFAULT_WRITE_DEPTH: u32 = 16;

/// A flag set from elsewhere (a signal handler, an orchestrator's cancel) to stop an operation at
/// the next chunk; it then fails with [`Error::Cancelled`] and cleans up like any failure.
pub type StopFlag = Arc<AtomicBool>;

/// How the bytes move: the knobs every operation shares.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Chunk size in bytes of what is written (create, scan); readers take it from the image but
    /// still refuse an invalid value.
    pub chunk_size: u32,
    /// Reads in flight.
    pub queue_depth: u32,
    /// Writes in flight (raw output and restore).
    pub write_depth: u32,
    /// Worker threads.
    pub threads: usize,
    /// Read (and write) backend wanted.
    pub backend: BackendKind,
    /// Register buffers and the file with the ring.
    pub fixed_buffers: bool,
    /// What the buffer pools' memory is made of.
    pub pages: Pages,
    /// Run the one-thread reference path instead of the pipeline.
    pub sequential: bool,
    /// Set from elsewhere to stop at the next chunk (see [`StopFlag`]).
    pub stop: Option<StopFlag>,
    /// `--bwlimit`: bytes of disk data per second, spread evenly ([`crate::pace`]); `None`
    /// runs as fast as the hardware allows.
    pub bwlimit: Option<u64>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            write_depth: DEFAULT_WRITE_DEPTH,
            threads: default_threads(),
            backend: BackendKind::Uring,
            fixed_buffers: false,
            pages: Pages::Thp,
            sequential: false,
            stop: None,
            bwlimit: None,
        }
    }
}

/// One worker per core (2 if the count is unknown).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Tuning {
    /// Refuses values outside what the engine supports.
    pub fn check(&self) -> Result<()> {
        let cs = self.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&cs) {
            return Err(Error::Invalid(format!(
                "--chunk-size {cs}: must be a power of two from {MIN_CHUNK} to {MAX_CHUNK}"
            )));
        }
        for (name, v) in [("--queue-depth", self.queue_depth), ("--write-depth", self.write_depth)] {
            if v == 0 || v > 256 {
                return Err(Error::Invalid(format!("{name} {v}: must be 1 to 256")));
            }
        }
        if self.threads == 0 || self.threads > 256 {
            return Err(Error::Invalid(format!("--threads {}: must be 1 to 256", self.threads)));
        }
        Ok(())
    }

    /// [`Error::Cancelled`] if the operation was asked to stop.
    pub fn check_stop(&self) -> Result<()> {
        check_stop(self.stop.as_ref())
    }

    /// A pacer for `bwlimit`, if one is set (each stage that paces takes its own).
    pub fn pacer(&self) -> Option<std::sync::Arc<crate::pace::Pacer>> {
        self.bwlimit.map(|r| std::sync::Arc::new(crate::pace::Pacer::new(r)))
    }

    /// The write backend: the reference path writes with pwrite too.
    pub fn write_backend(&self) -> BackendKind {
        if self.sequential {
            BackendKind::Pread
        } else {
            self.backend
        }
    }
}

/// [`Error::Cancelled`] if `stop` is set.
pub(crate) fn check_stop(stop: Option<&StopFlag>) -> Result<()> {
    if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        return Err(Error::Cancelled);
    }
    Ok(())
}

/// `create`: read a disk, write an image and its manifest.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// How the bytes move.
    pub tuning: Tuning,
    /// Output format.
    pub format: Format,
    /// lz4-compress data chunks (dsimg only; a raw copy is never compressed).
    pub compress: bool,
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
    /// The manifest of a raw image (default: `IMAGE.manifest`).
    pub manifest: Option<PathBuf>,
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
    /// The manifest of a raw image (default: `IMAGE.manifest`).
    pub manifest: Option<PathBuf>,
}
