//! [`DiskSource`]: a disk read through the ring (io_uring or pread) and the worker pipeline (zero
//! map, digest, lz4), or on one thread with [`crate::ops::Tuning::sequential`] (the reference).

use std::sync::Arc;

use super::{plan_chunks, Disk, RunSpec, Source, SourceInfo, SourceStats};
use crate::buf::Pages;
use crate::digest::{Checksum, ZeroDigests};
use crate::error::Result;
use crate::pipeline::{self, Job, Pools, Processed};
use crate::ring::{self, RingOptions};

/// A block device or file read chunk by chunk.
#[derive(Debug)]
pub struct DiskSource {
    disk: Disk,
    size: u64,
    chunk_size: u32,
    checksum: Checksum,
}

impl DiskSource {
    /// Reads all of `disk` in `chunk_size` chunks, digests with `checksum`.
    pub fn new(disk: Disk, chunk_size: u32, checksum: Checksum) -> Self {
        let size = disk.size();
        Self {
            disk,
            size,
            chunk_size,
            checksum,
        }
    }

    /// Reads only the first `limit` bytes (if given and smaller than the disk).
    pub fn limit(mut self, limit: Option<u64>) -> Self {
        self.size = limit.map_or(self.size, |l| l.min(self.size));
        self
    }

    /// This source, if the engine can take its disk in its chunks
    /// ([`pipeline::check_chunks`]): call it before anything sized by the chunk count (a
    /// manifest) is made; [`Source::run`] checks again.
    pub fn checked(self) -> Result<Self> {
        pipeline::check_chunks(self.chunk_size, self.size)?;
        Ok(self)
    }

    /// The disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}

impl Source for DiskSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            input: self.disk.path().to_owned(),
            disk_size: self.size,
            chunk_size: self.chunk_size,
            checksum: self.checksum,
            input_direct: self.disk.is_direct(),
        }
    }

    fn run(&mut self, spec: RunSpec<'_>, deliver: &mut dyn FnMut(Processed) -> Result<()>) -> Result<SourceStats> {
        let t = spec.tuning;
        let cs = self.chunk_size;
        // Checked here too, for a frontend that runs a source without an operation of `ops`.
        t.check()?;
        let depth = t.queue_depth.saturating_add(spec.needs.in_flight);
        pipeline::check_memory(cs, self.size, depth, t.threads, spec.needs.lz4)?;
        let plans = plan_chunks(self.size, cs, self.disk.logical_block(), &self.disk.data_extents()?);
        let (mut backend, note) = ring::probe(
            t.backend,
            RingOptions {
                queue_depth: t.queue_depth,
                fixed_buffers: t.fixed_buffers,
            },
        );
        backend.set_pacer(spec.pace.cloned());
        // A sink that keeps chunks in flight (raw writes) holds read buffers too.
        let pools = Pools::new(cs, self.size, depth, t.threads, spec.needs.lz4, t.pages)
            .with_gate(spec.lz4_gate.cloned())
            .with_payload_crc(spec.needs.payload_crc);
        let mut warnings: Vec<String> = self.disk.warning().map(str::to_owned).into_iter().chain(note).collect();
        let pages = pools.input.pages_name();
        if t.pages == Pages::Hugetlb && !pools.input.hugetlb() {
            warnings.push(format!(
                "no free hugetlb pages for the buffers (vm.nr_hugepages); using {pages} pages instead"
            ));
        }
        let zeros = ZeroDigests::new(self.checksum, self.size, cs);
        let kind = backend.kind();
        let job = Job {
            src: &self.disk,
            plans: &plans,
            backend: backend.as_mut(),
            pools: &pools,
            zeros: &zeros,
            progress: Arc::clone(spec.progress),
        };
        let stats = if t.sequential {
            pipeline::run_sequential(job, deliver)?
        } else {
            pipeline::run_parallel(job, t.threads, deliver)?
        };
        Ok(SourceStats {
            backend: Some(kind),
            buffer_pages: Some(pages),
            bytes_read: stats.read.bytes_read,
            read_requests: stats.read.requests,
            stored: None,
            digest: None,
            warnings,
        })
    }
}
