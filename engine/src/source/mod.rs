//! Sources: where chunks come from. A [`Source`] produces every chunk of one disk, each already
//! worked on (zero map, digest, lz4 for a disk; structure, CRC, lz4 and digest checked for a dsimg
//! frame stream), and hands them to the transfer, which feeds the sink.
//!
//! - [`crate::disk`]: a block device or file opened with O_DIRECT, its geometry and data extents;
//!   [`crate::plan`]: the pure chunk planner (which reads each chunk needs; holes are never read).
//! - [`chunks::DiskSource`]: a disk read through the ring and the worker pipeline.
//! - [`frames::FrameSource`]: a `dsimg` frame stream (a file read with O_DIRECT, or any byte
//!   stream: a pipe or socket) checked on the workers.

pub mod chunks;
pub mod frames;

use std::path::PathBuf;

pub use crate::disk::{Disk, SourceKind};
pub use crate::plan::{plan_chunks, ChunkPlan, ReadPlan, Segment, MAX_SEGMENTS};
pub use chunks::DiskSource;
pub use frames::{FrameSource, FrameStream};

use crate::digest::{Checksum, Hash};
use crate::error::Result;
use crate::pipeline::Processed;
use crate::ring::BackendKind;
use crate::sink::SinkNeeds;
use crate::stop::Progress;
use crate::tuning::Tuning;

/// What a source holds, known before it is read.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    /// The path it was opened from (what errors and the report name).
    pub input: PathBuf,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// The chunk digest algorithm of the chunks it yields.
    pub checksum: Checksum,
    /// True if and only if it is read with O_DIRECT (as the kernel reports it).
    pub input_direct: bool,
}

impl SourceInfo {
    /// Chunks in the disk.
    pub fn chunks(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.chunk_size))
    }
}

/// What reading a source did.
#[derive(Clone, Debug, Default)]
pub struct SourceStats {
    /// Read backend that ran, where a ring read the source.
    pub backend: Option<BackendKind>,
    /// What the read buffers are made of, where a pool sized for the ring held them.
    pub buffer_pages: Option<&'static str>,
    /// Bytes read from the device, file or stream.
    pub bytes_read: u64,
    /// Read requests issued.
    pub read_requests: u64,
    /// Payload bytes the source holds stored, where it is an image (a dsimg: the frames' payloads).
    pub stored: Option<u64>,
    /// The whole-image digest the source recorded and checked, where it is an image.
    pub digest: Option<Hash>,
    /// Things the operator should know (an O_DIRECT or io_uring fallback).
    pub warnings: Vec<String>,
}

/// Everything a source run needs besides the sink: the tuning, what the sink needs, progress.
#[derive(Clone, Copy)]
pub struct RunSpec<'a> {
    /// Depths, threads, backend, pages, sequential.
    pub tuning: &'a Tuning,
    /// What the sink asked for (in-flight chunks it keeps, zero maps, lz4).
    pub needs: SinkNeeds,
    /// Bytes of disk processed so far, for progress display.
    pub progress: &'a Progress,
    /// `--bwlimit`: the one pacer of this transfer. A source spends it where its input is read
    /// (a disk: before each read starts; a frame stream: before each data chunk is handed on), so
    /// the rate holds however deep the pools are.
    pub pace: Option<&'a std::sync::Arc<crate::pace::Pacer>>,
    /// The sink's [`crate::sink::Sink::lz4_gate`]: compress a chunk only while it is set.
    pub lz4_gate: Option<&'a std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// A source of chunks: a disk read through the ring, a dsimg frame stream, and (later) a byte
/// stream from another node.
///
/// # Protocol
///
/// [`Source::run`] hands every chunk of the disk to `deliver` exactly once, worked on and checked
/// (a [`Processed`] whose digest is over its uncompressed bytes), on the calling thread, in any
/// order; with [`crate::ops::Tuning::sequential`] it runs on the calling thread alone, in disk
/// order (the reference path). The first error (its own or `deliver`'s) stops the run; every
/// buffer goes back to its pool. A source that checks what it reads (an image) fails before
/// `deliver` sees a chunk that does not pass.
pub trait Source {
    /// What the source holds.
    fn info(&self) -> SourceInfo;

    /// Reads, works on and delivers every chunk (see the protocol above).
    fn run(&mut self, spec: RunSpec<'_>, deliver: &mut dyn FnMut(Processed) -> Result<()>) -> Result<SourceStats>;
}
