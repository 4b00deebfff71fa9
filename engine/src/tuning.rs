//! [`Tuning`]: how the bytes move (chunk size, depths, threads, backend, buffers, the reference
//! path, the stop flag, the rate limit): the knobs every operation shares, and their defaults.

use crate::buf::Pages;
use crate::error::{Error, Result};
use crate::format::{chunk_size_ok, MAX_CHUNK, MIN_CHUNK};
use crate::ring::BackendKind;
use crate::stop::{check_stop, StopFlag};

/// Default chunk size: 1 MiB. The CPU cost per byte is the same from 1 to 4 MiB chunks
/// (docs/performance.md, "Chunk size"), and 1 MiB chunks keep sparse disks cheap (zero padding in
/// partly filled chunks is hashed too) and memory small.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Default reads in flight: 32 MiB at the default chunk size. Measured against 16 (docs/performance.md,
/// "Queue depth"): faster in 10 of 11 alternated runs (scan +26 %, raw +30 %, dsimg +12 %).
pub const DEFAULT_QUEUE_DEPTH: u32 = 32;

/// Default writes in flight.
pub const DEFAULT_WRITE_DEPTH: u32 = 16;

/// The most worker threads a run may ask for (`--threads`).
pub const MAX_THREADS: usize = 256;

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
    /// `--bwlimit`: bytes of disk data per second, spread evenly ([`crate::pace`]); `None` (or
    /// `Some(0)`, as rsync and vzdump read 0) runs as fast as the hardware allows.
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

/// One worker per core (2 if the count is unknown), at most [`MAX_THREADS`] (a machine with more
/// cores would otherwise fail its own defaults' check).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(MAX_THREADS)
}

impl Tuning {
    /// Refuses values outside what the engine supports.
    pub fn check(&self) -> Result<()> {
        let cs = self.chunk_size;
        if !chunk_size_ok(cs) {
            return Err(Error::Invalid(format!(
                "--chunk-size {cs}: must be a power of two from {MIN_CHUNK} to {MAX_CHUNK}"
            )));
        }
        for (name, v) in [("--queue-depth", self.queue_depth), ("--write-depth", self.write_depth)] {
            if v == 0 || v > 256 {
                return Err(Error::Invalid(format!("{name} {v}: must be 1 to 256")));
            }
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(Error::Invalid(format!(
                "--threads {}: must be 1 to {MAX_THREADS}",
                self.threads
            )));
        }
        Ok(())
    }

    /// [`Error::Cancelled`] if the operation was asked to stop.
    pub fn check_stop(&self) -> Result<()> {
        check_stop(self.stop.as_ref())
    }

    /// The limit `bwlimit` sets: `None` for none and for 0 (no limit, as rsync reads it).
    pub fn rate_limit(&self) -> Option<u64> {
        self.bwlimit.filter(|&r| r > 0)
    }

    /// A pacer for `bwlimit`, if one is set (each stage that paces takes its own), whose waits
    /// end when the stop flag is raised.
    pub fn pacer(&self) -> Option<std::sync::Arc<crate::pace::Pacer>> {
        self.rate_limit()
            .map(|r| std::sync::Arc::new(crate::pace::Pacer::new(r, self.stop.clone())))
    }

    /// With `bwlimit`, how often a raw output is synced while it is written: about half a
    /// second's worth, 16 to 256 MiB (see `sink::raw`'s flusher).
    pub fn flush_every(&self) -> Option<u64> {
        self.rate_limit().map(|r| (r / 2).clamp(16 << 20, 256 << 20))
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
