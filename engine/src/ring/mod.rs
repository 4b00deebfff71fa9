//! The read ring: turns a chunk plan into filled, owned buffers, many reads in flight.
//!
//! Two backends implement [`ReadBackend`]: [`uring::UringReader`] (the fast path, io_uring with a
//! configurable queue depth, optionally registered buffers and files) and [`pread::PreadReader`]
//! (the reference path: one blocking `pread` at a time). Both deliver the same bytes; tests hold
//! them to that. [`probe`] decides at start-up which one can run here.

pub mod pread;
pub mod uring;

use crate::buf::{BufPool, PoolBuf};
use crate::disk::Disk;
use crate::error::Result;
use crate::plan::{ChunkPlan, ReadPlan, Segment};

/// Which read backend ran (serialized as in the CLI's JSON: "io_uring" or "pread").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub enum BackendKind {
    /// io_uring, the fast path.
    #[serde(rename = "io_uring")]
    Uring,
    /// Blocking pread, the reference path and fallback.
    #[serde(rename = "pread")]
    Pread,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Uring => "io_uring",
            Self::Pread => "pread",
        })
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" | "io_uring" => Ok(Self::Uring),
            "pread" => Ok(Self::Pread),
            _ => Err(format!("unknown backend {s:?} (expected uring or pread)")),
        }
    }
}

/// A chunk as it leaves the ring: its place in the disk and, unless it lay wholly in a hole,
/// the buffer holding its bytes in `[0, len)`.
#[derive(Debug)]
pub struct ReadChunk {
    /// Chunk index.
    pub index: u64,
    /// Offset in the disk.
    pub offset: u64,
    /// Bytes of disk in the chunk.
    pub len: u32,
    /// The bytes, or `None` for a hole chunk (all zeroes, never read).
    pub buf: Option<PoolBuf>,
}

/// Counters a backend reports, so callers (and tests) can see what really ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Bytes the device returned.
    pub bytes_read: u64,
    /// Read requests issued (SQEs for io_uring, syscalls for pread).
    pub requests: u64,
    /// Chunks that needed no read at all.
    pub hole_chunks: u64,
}

/// Reads every planned chunk and hands it to `deliver`, in any order.
pub trait ReadBackend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Paces the reads to come: none starts before `pacer` allows its bytes (`--bwlimit`).
    fn set_pacer(&mut self, pacer: Option<std::sync::Arc<crate::pace::Pacer>>);

    /// Reads `plans` from `src` into buffers taken from `pool`. Blocks on the pool when all
    /// buffers are out (that is the back-pressure). Stops at the first error, from the device
    /// or from `deliver`.
    fn read_all(
        &mut self,
        src: &Disk,
        plans: &ReadPlan,
        pool: &BufPool,
        deliver: &mut dyn FnMut(ReadChunk) -> Result<()>,
    ) -> Result<ReadStats>;
}

/// How the read ring should be set up.
#[derive(Clone, Copy, Debug)]
pub struct RingOptions {
    /// Chunks in flight at once.
    pub queue_depth: u32,
    /// Register the pool's buffers with the ring and use `READ_FIXED`.
    pub fixed_buffers: bool,
}

/// Builds the asked-for backend. If io_uring was asked for but the kernel refuses it, returns
/// the pread backend and the reason, so the caller can report the fallback.
pub fn probe(want: BackendKind, opts: RingOptions) -> (Box<dyn ReadBackend + Send>, Option<String>) {
    match want {
        BackendKind::Pread => (Box::new(pread::PreadReader::new()), None),
        BackendKind::Uring => match uring::UringReader::new(opts) {
            Ok(r) => (Box::new(r), None),
            Err(e) => (
                Box::new(pread::PreadReader::new()),
                Some(format!("io_uring is not available ({e}); using the pread backend")),
            ),
        },
    }
}

/// Zeroes the parts of `buf[..len]` that no segment of `plan` will fill (holes inside a chunk).
pub(crate) fn zero_gaps(plan: &ChunkPlan, segments: &[Segment], buf: &mut PoolBuf) {
    let bytes = buf.as_mut_slice();
    let mut pos = 0usize;
    for seg in segments {
        let start = seg.buf_off as usize;
        if start > pos {
            bytes[pos..start].fill(0);
        }
        pos = pos.max(start + seg.len as usize);
    }
    let len = plan.len as usize;
    if pos < len {
        bytes[pos..len].fill(0);
    }
}
