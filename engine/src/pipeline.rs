//! The pipeline: chunks from the ring go through N worker threads (zero check, digest, lz4)
//! over bounded crossbeam channels, and come back to the caller's thread for the sink.
//!
//! Chunks travel whole (one channel message per chunk, never per sub-block: each hand-off between
//! threads on different vCPUs costs microseconds of wake-up, so per-sub-block messages would cost
//! more than the work they carry). Results arrive in any order; [`Reorder`] restores disk order
//! for sinks that need it. Every buffer goes back to its pool when dropped.
//! [`run_sequential`] is the one-thread reference path that [`run_parallel`] must match byte for byte.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::buf::{BufPool, Pages, PoolBuf};
use crate::digest::{is_zero, Checksum, Hash, ZeroDigests};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::plan::ReadPlan;
use crate::ring::{ReadBackend, ReadChunk, ReadStats};
use lz4_flex::block::CompressTable;

/// What a worker found and made of a chunk.
#[derive(Debug)]
pub enum Payload {
    /// Every byte is zero; nothing to store. The read buffer (if any) is back in its pool.
    Zero,
    /// Stored as is: the read buffer, bytes `[0, len)`.
    Raw(PoolBuf),
    /// lz4 block compression was smaller: `out[..stored]` holds it. The read buffer is kept
    /// until the sink is done: then every chunk in flight holds a read buffer, so the output
    /// pool (as large as the read pool) can never run dry while an earlier chunk waits for one.
    Lz4 {
        /// The read buffer (not needed by the sink, returned with the output buffer).
        input: PoolBuf,
        /// The compressed bytes live here.
        out: PoolBuf,
        /// Compressed length.
        stored: u32,
    },
}

/// A chunk after the workers: where it sits, its digest, and its payload.
#[derive(Debug)]
pub struct Processed {
    /// Chunk index.
    pub index: u64,
    /// Offset in the disk.
    pub offset: u64,
    /// Bytes of disk in the chunk.
    pub len: u32,
    /// Digest of the chunk's uncompressed bytes (the run's [`Checksum`]).
    pub digest: Hash,
    /// Bit `i` set: sub-block `i` (of [`zero_block_size`] bytes) is all zeroes. Lets a raw sink
    /// leave holes inside data chunks, as fine-grained as a sparse source had them.
    pub zero_map: u64,
    /// What to store.
    pub payload: Payload,
    /// CRC-32C of [`Processed::stored_bytes`], when the sink asked for it
    /// ([`crate::sink::SinkNeeds::payload_crc`]) and the chunk has data: worked out on the worker
    /// beside the digest, so a dsimg sink's one thread does not.
    pub payload_crc: Option<u32>,
}

impl Processed {
    /// The bytes a sink stores for this chunk (empty for zero chunks).
    pub fn stored_bytes(&self) -> &[u8] {
        match &self.payload {
            Payload::Zero => &[],
            Payload::Raw(buf) => &buf.as_slice()[..self.len as usize],
            Payload::Lz4 { out, stored, .. } => &out.as_slice()[..*stored as usize],
        }
    }
}

/// The most any O_DIRECT request is aligned to (a device's logical block, a page): a buffer of a
/// disk's size rounded up to it holds every aligned read and padded write of the disk's chunks.
pub const MAX_IO_ALIGN: u64 = 64 << 10;

/// How large and how many buffers a run over a disk of `disk_size` bytes in `chunk_size` chunks
/// takes where it would keep `want` chunks in flight: never more than the disk has chunks (plus
/// the two a reader may hold past the last), each no larger than a chunk or than the disk rounded
/// up to [`MAX_IO_ALIGN`]. A 1-byte disk in 64 MiB chunks gets a few 64 KiB buffers; a disk of
/// many chunks gets exactly `want` of a chunk each.
pub fn pool_shape(chunk_size: u32, disk_size: u64, want: usize) -> (usize, usize) {
    let chunks = disk_size.div_ceil(u64::from(chunk_size));
    let count = (want as u64).min(chunks.saturating_add(2)) as usize;
    let size = if disk_size >= u64::from(chunk_size) {
        chunk_size as usize
    } else {
        disk_size.next_multiple_of(MAX_IO_ALIGN).min(u64::from(chunk_size)) as usize
    };
    (size, count)
}

/// The most chunks one disk may be cut into: its read plan and its manifest hold some 100 bytes
/// per chunk in memory (64 TiB in the default 1 MiB chunks).
pub const MAX_CHUNKS: u64 = 1 << 26;

/// Refuses, before anything is allocated, a run whose per-chunk lists or whose [`Pools`]
/// (`depth` reads in flight, `threads` workers, lz4 output buffers if `compress`) would not fit:
/// more than [`MAX_CHUNKS`] chunks, or buffers over half of this machine's memory. An
/// allocation that fails aborts the process, the embedding frontend's with it.
pub fn check_memory(chunk_size: u32, disk_size: u64, depth: u32, threads: usize, compress: bool) -> Result<()> {
    check_chunks(chunk_size, disk_size)?;
    let (size, count) = pool_shape(chunk_size, disk_size, pool_want(depth, threads));
    let out = if compress {
        lz4_flex::block::get_maximum_output_size(size)
    } else {
        0
    };
    let bytes = ((size + out) as u64).saturating_mul(count as u64);
    match mem_total() {
        Some(total) if bytes > total / 2 => Err(Error::Invalid(format!(
            "chunks of {chunk_size} bytes with {depth} in flight and {threads} workers need {} MiB of \
             buffers, more than half of this machine's memory ({} MiB): use smaller chunks, fewer \
             reads in flight or fewer workers",
            bytes >> 20,
            total >> 20
        ))),
        _ => Ok(()),
    }
}

/// The read buffers a run with `depth` reads in flight and `threads` workers wants (two more
/// for the reader's hands), before [`pool_shape`] fits them to the disk: what [`Pools::new`]
/// makes and [`check_memory`] counts.
fn pool_want(depth: u32, threads: usize) -> usize {
    (depth as usize).saturating_add(threads).saturating_add(2)
}

/// Refuses a chunk size the engine does not take (a power of two from `MIN_CHUNK` to
/// `MAX_CHUNK`) and a disk of more than [`MAX_CHUNKS`] such chunks.
pub fn check_chunks(chunk_size: u32, disk_size: u64) -> Result<()> {
    use crate::format::{chunk_size_ok, MAX_CHUNK, MIN_CHUNK};
    if !chunk_size_ok(chunk_size) {
        return Err(Error::Invalid(format!(
            "chunk size {chunk_size}: must be a power of two from {MIN_CHUNK} to {MAX_CHUNK}"
        )));
    }
    let chunks = disk_size.div_ceil(u64::from(chunk_size));
    if chunks > MAX_CHUNKS {
        return Err(Error::Invalid(format!(
            "a disk of {disk_size} bytes in chunks of {chunk_size} bytes is {chunks} chunks, more than \
             {MAX_CHUNKS} (each is held in memory, in the read plan and the manifest): use chunks of \
             at least {} bytes",
            disk_size.div_ceil(MAX_CHUNKS).next_power_of_two()
        )));
    }
    Ok(())
}

/// This machine's memory (`MemTotal` of `/proc/meminfo`), if it can be read.
fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    kib.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|k| k << 10)
}

/// The buffer pools of one run: read buffers, and compression output buffers when compressing.
#[derive(Clone)]
pub struct Pools {
    /// Read buffers, one chunk each (or the disk rounded up, for a disk shorter than a chunk).
    pub input: BufPool,
    /// lz4 output buffers (sized for the worst case), if compressing.
    pub output: Option<BufPool>,
    /// With `output`: whether the workers compress the next chunk (`None`: always). A sink that
    /// adapts (`--transport-compression auto`) switches it as the transfer goes.
    pub gate: Option<Arc<AtomicBool>>,
    /// Whether the workers work out each data chunk's payload CRC-32C.
    pub payload_crc: bool,
    /// The run's chunk size (its zero maps' block size follows from it, not from the buffers').
    chunk_size: u32,
}

impl Pools {
    /// Pools for `chunk_size` chunks of a disk of `disk_size` bytes with `depth` reads in flight
    /// and `threads` workers, made of `pages`, shaped by [`pool_shape`]. The read pool bounds
    /// memory: every chunk in flight holds one of its buffers.
    pub fn new(chunk_size: u32, disk_size: u64, depth: u32, threads: usize, compress: bool, pages: Pages) -> Self {
        let (size, count) = pool_shape(chunk_size, disk_size, pool_want(depth, threads));
        let out_size = lz4_flex::block::get_maximum_output_size(size);
        let pools = Self {
            input: BufPool::with_pages(size, count, pages),
            output: compress.then(|| BufPool::with_pages(out_size, count, pages)),
            gate: None,
            payload_crc: false,
            chunk_size,
        };
        pools.input.fill();
        if let Some(out) = &pools.output {
            out.fill();
        }
        pools
    }

    /// Compresses only while `gate` is set (see [`crate::sink::adapt`]).
    pub fn with_gate(mut self, gate: Option<Arc<AtomicBool>>) -> Self {
        self.gate = gate;
        self
    }

    /// The workers also work out each data chunk's payload CRC-32C (a dsimg sink's frames).
    pub fn with_payload_crc(mut self, crc: bool) -> Self {
        self.payload_crc = crc;
        self
    }

    /// The lz4 output buffers to compress the next chunk into, if it is to be compressed.
    fn lz4_output(&self) -> Option<&BufPool> {
        self.output
            .as_ref()
            .filter(|_| self.gate.as_ref().is_none_or(|g| g.load(Ordering::Relaxed)))
    }
}

/// Totals of a pipeline run.
#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineStats {
    /// What the read ring did.
    pub read: ReadStats,
    /// Chunks found to be all zeroes (holes included).
    pub zero_chunks: u64,
    /// Bytes in zero chunks.
    pub zero_bytes: u64,
}

/// Granularity of zero detection inside a chunk: 64 KiB, or chunk/64 for chunks over 4 MiB
/// (the map is one `u64`).
pub fn zero_block_size(chunk_size: u32) -> u32 {
    (chunk_size / 64).max(64 << 10)
}

/// Which sub-blocks of `data` are all zeroes (bit `i` for block `i`).
pub fn zero_map(data: &[u8], block: u32) -> u64 {
    data.chunks(block as usize)
        .enumerate()
        .fold(0u64, |m, (i, b)| if is_zero(b) { m | 1 << i } else { m })
}

/// The map with every sub-block of a `len`-byte chunk set.
pub fn all_zero_map(len: u32, block: u32) -> u64 {
    let blocks = u64::from(len).div_ceil(u64::from(block)).max(1);
    if blocks >= 64 {
        u64::MAX
    } else {
        (1u64 << blocks) - 1
    }
}

/// What [`kernel`] made of one chunk's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Worked {
    /// Which sub-blocks are all zeroes (see [`zero_map`]).
    pub zero_map: u64,
    /// The chunk's digest; `None` when every byte is zero (nothing else was done).
    pub digest: Option<Hash>,
    /// Length of the lz4 block in the output buffer, when one was given and lz4 made the chunk
    /// strictly smaller.
    pub compressed: Option<usize>,
    /// With `crc`, for a chunk with data: the CRC-32C of what is stored (the lz4 block when
    /// `compressed`, else the chunk's bytes), the payload CRC of its dsimg frame.
    pub payload_crc: Option<u32>,
}

/// The per-chunk work of a worker: the zero map, then (for a chunk with data) the digest,
/// given an output buffer of lz4's worst-case size lz4 block compression, and with `crc` the
/// CRC-32C of the bytes to store (a dsimg frame's payload CRC). The one kernel the pipeline
/// runs, `diskstream bench` times and the criterion benches measure.
pub fn kernel(
    data: &[u8],
    block: u32,
    checksum: Checksum,
    lz4: Option<(&mut [u8], &mut CompressTable)>,
    crc: bool,
) -> Worked {
    let map = zero_map(data, block);
    if map == all_zero_map(data.len() as u32, block) {
        return Worked {
            zero_map: map,
            digest: None,
            compressed: None,
            payload_crc: None,
        };
    }
    let digest = checksum.digest(data);
    let mut stored = data;
    let mut compressed = None;
    if let Some((out, table)) = lz4 {
        let n = lz4_flex::block::compress_into_with_table(data, out, table)
            .expect("output buffer has lz4's worst-case size");
        if n < data.len() {
            compressed = Some(n);
            stored = &out[..n];
        }
    }
    Worked {
        zero_map: map,
        digest: Some(digest),
        compressed,
        payload_crc: crc.then(|| crate::format::payload_crc(stored)),
    }
}

/// The per-chunk work, shared by both paths so they cannot diverge.
fn process(chunk: ReadChunk, zeros: &ZeroDigests, pools: &Pools, table: &mut CompressTable) -> Processed {
    let ReadChunk {
        index,
        offset,
        len,
        buf,
    } = chunk;
    let block = zero_block_size(pools.chunk_size);
    let zero = |zero_map| Processed {
        index,
        offset,
        len,
        digest: zeros.of(len),
        zero_map,
        payload: Payload::Zero,
        payload_crc: None,
    };
    // A hole chunk: nothing was read.
    let Some(buf) = buf else {
        return zero(all_zero_map(len, block));
    };
    let mut out = pools.lz4_output().map(BufPool::get);
    let data = &buf.as_slice()[..len as usize];
    let w = kernel(
        data,
        block,
        zeros.checksum(),
        out.as_mut().map(|o| (o.as_mut_slice(), &mut *table)),
        pools.payload_crc,
    );
    // A read chunk whose every sub-block is zero (its buffers go back now).
    let Some(digest) = w.digest else {
        return zero(w.zero_map);
    };
    let payload = match (out, w.compressed) {
        (Some(out), Some(stored)) => Payload::Lz4 {
            input: buf,
            out,
            stored: stored as u32,
        },
        _ => Payload::Raw(buf),
    };
    Processed {
        index,
        offset,
        len,
        digest,
        zero_map: w.zero_map,
        payload,
        payload_crc: w.payload_crc,
    }
}

/// Everything a run needs besides the sink.
pub struct Job<'a> {
    /// The source disk.
    pub src: &'a Disk,
    /// The chunks to read.
    pub plans: &'a ReadPlan,
    /// The read backend.
    pub backend: &'a mut (dyn ReadBackend + Send),
    /// Buffer pools.
    pub pools: &'a Pools,
    /// Zero-chunk digests for this disk (they carry the run's [`Checksum`]).
    pub zeros: &'a ZeroDigests,
    /// Bytes of disk processed so far, for progress display.
    pub progress: Arc<AtomicU64>,
}

/// The reference path: read, process and sink each chunk on the calling thread, in order.
pub fn run_sequential(job: Job<'_>, sink: &mut dyn FnMut(Processed) -> Result<()>) -> Result<PipelineStats> {
    let mut stats = PipelineStats::default();
    let mut table = CompressTable::large();
    let read = job
        .backend
        .read_all(job.src, job.plans, &job.pools.input, &mut |chunk| {
            let p = process(chunk, job.zeros, job.pools, &mut table);
            if matches!(p.payload, Payload::Zero) {
                stats.zero_chunks += 1;
                stats.zero_bytes += u64::from(p.len);
            }
            job.progress.fetch_add(u64::from(p.len), Ordering::Relaxed);
            sink(p)
        })?;
    stats.read = read;
    Ok(stats)
}

/// The fast path: a reader thread drives the ring, `threads` workers process, and `sink`
/// runs on the calling thread, receiving chunks in completion order.
pub fn run_parallel(
    job: Job<'_>,
    threads: usize,
    sink: &mut dyn FnMut(Processed) -> Result<()>,
) -> Result<PipelineStats> {
    let threads = threads.max(1);
    let cancel = AtomicBool::new(false);
    let depth = job.pools.input.capacity();
    let (work_tx, work_rx) = crossbeam_channel::bounded::<ReadChunk>(depth);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Processed>(depth);
    let Job {
        src,
        plans,
        backend,
        pools,
        zeros,
        progress,
    } = job;
    std::thread::scope(|scope| {
        let reader = {
            let cancel = &cancel;
            spawn(scope, "ds-reader", move || {
                let res = backend.read_all(src, plans, &pools.input, &mut |chunk| {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    work_tx.send(chunk).map_err(|_| Error::Cancelled)
                });
                if res.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                res
            })
            .map_err(|e| spawn_error(0, threads + 1, &e))?
        };
        let mut spawn_err = None;
        for t in 0..threads {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let cancel = &cancel;
            let worker = spawn(scope, "ds-worker", move || {
                let mut table = CompressTable::large();
                for chunk in work_rx {
                    if cancel.load(Ordering::Relaxed) {
                        continue; // Dropping the chunk returns its buffer.
                    }
                    if done_tx.send(process(chunk, zeros, pools, &mut table)).is_err() {
                        return;
                    }
                }
            });
            if let Err(e) = worker {
                // The reader and the workers already running wind down as on any error.
                cancel.store(true, Ordering::Relaxed);
                spawn_err = Some(spawn_error(t + 1, threads + 1, &e));
                break;
            }
        }
        drop(done_tx);
        // After a failed start, drain here too: with no worker the reader waits for buffers.
        drain_if(spawn_err.is_some(), work_rx);

        let mut stats = PipelineStats::default();
        let mut sink_err = None;
        for p in done_rx {
            if sink_err.is_some() || cancel.load(Ordering::Relaxed) {
                continue; // Dropping returns the buffers to their pools.
            }
            if matches!(p.payload, Payload::Zero) {
                stats.zero_chunks += 1;
                stats.zero_bytes += u64::from(p.len);
            }
            let len = u64::from(p.len);
            if let Err(e) = sink(p) {
                cancel.store(true, Ordering::Relaxed);
                sink_err = Some(e);
            }
            progress.fetch_add(len, Ordering::Relaxed);
        }
        let read = reader.join().expect("reader thread panicked");
        if let Some(e) = spawn_err.or(sink_err) {
            return Err(e);
        }
        stats.read = read?;
        Ok(stats)
    })
}

/// Starts a named scoped thread; an error, not a panic, if it cannot be started (a pids
/// cgroup's limit, `RLIMIT_NPROC`), so the threads already running can be stopped.
pub(crate) fn spawn<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::io::Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new().name(name.into()).spawn_scoped(scope, f)
}

/// If `drain`, takes (and drops, returning their buffers) what `rx` carries until its senders
/// are gone: the reader of a run whose workers could not all start is stopped (its stop flag
/// is set) but may be waiting for a buffer that only a chunk in the channel can give back.
pub(crate) fn drain_if<T>(drain: bool, rx: crossbeam_channel::Receiver<T>) {
    if drain {
        rx.iter().for_each(drop);
    }
}

/// The error of a thread that could not be started after `started` of `wanted` were.
pub(crate) fn spawn_error(started: usize, wanted: usize, e: &std::io::Error) -> Error {
    Error::Invalid(format!(
        "cannot start thread {} of {wanted}: {e} (a pids cgroup or RLIMIT_NPROC limit? try fewer --threads)",
        started + 1
    ))
}

/// Restores disk order: feed chunks in any order, take them out in index order. A ring of slots
/// indexed from the next expected chunk: after warm-up it never allocates.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    waiting: VecDeque<Option<T>>,
}

impl<T> Reorder<T> {
    /// Starts expecting index `first`.
    pub fn new(first: u64) -> Self {
        Self {
            next: first,
            waiting: VecDeque::new(),
        }
    }

    /// Adds item `index` and hands every item that is now next in order to `ready`.
    pub fn push(&mut self, index: u64, item: T, mut ready: impl FnMut(T) -> Result<()>) -> Result<()> {
        let pos = index.checked_sub(self.next).expect("each index is pushed once") as usize;
        if self.waiting.len() <= pos {
            self.waiting.resize_with(pos + 1, || None);
        }
        debug_assert!(self.waiting[pos].is_none(), "index {index} pushed twice");
        self.waiting[pos] = Some(item);
        while let Some(Some(_)) = self.waiting.front() {
            let item = self.waiting.pop_front().flatten().expect("checked above");
            self.next += 1;
            ready(item)?;
        }
        Ok(())
    }

    /// Items still waiting for an earlier one.
    pub fn pending(&self) -> usize {
        self.waiting.iter().filter(|w| w.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn reorder_yields_source_order(perm in Just((0u64..64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut r = Reorder::new(0);
            let mut out = Vec::new();
            for i in perm {
                r.push(i, i, |x| { out.push(x); Ok(()) }).unwrap();
            }
            prop_assert_eq!(out, (0..64).collect::<Vec<_>>());
            prop_assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn the_kernel_crc_is_that_of_the_bytes_stored() {
        let block = zero_block_size(1 << 20);
        let mut noise = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let text: Vec<u8> = b"diskstream ".iter().copied().cycle().take(1 << 20).collect();
        let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(1 << 20)];
        let mut table = CompressTable::large();
        for (data, lz4) in [(&noise, true), (&text, true), (&text, false)] {
            let w = kernel(
                data,
                block,
                Checksum::Blake3,
                lz4.then(|| (&mut out[..], &mut table)),
                true,
            );
            assert_eq!(
                w.compressed.is_some(),
                lz4 && data == &text,
                "lz4 shrinks only the text"
            );
            let stored = match w.compressed {
                Some(n) => &out[..n],
                None => &data[..],
            };
            assert_eq!(w.payload_crc, Some(crate::format::payload_crc(stored)));
            let w = kernel(data, block, Checksum::Blake3, None, false);
            assert_eq!(w.payload_crc, None, "not asked for");
        }
        let zeros = vec![0u8; 1 << 20];
        let w = kernel(&zeros, block, Checksum::Blake3, Some((&mut out[..], &mut table)), true);
        assert_eq!((w.digest, w.payload_crc), (None, None), "a zero chunk has no payload");
    }
}
