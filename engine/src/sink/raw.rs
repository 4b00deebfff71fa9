//! The raw sink: writes each chunk's buffer at its own offset, out of order, through io_uring
//! with O_DIRECT (the buffer the ring read is the buffer the ring writes), or with `pwrite` on the
//! reference path. Zero chunks become holes in a file and, on a device, follow [`ZeroPolicy`].
//! As a [`Sink`] it takes chunks in any order, keeps up to its write depth in flight, and commits
//! its output (with the manifest, for `create`) on [`Sink::finish`].

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::manifest::{commit, ManifestOut};
use super::target::{remove_stale_manifest, Target};
use super::{Order, Sink, SinkNeeds, SinkStats, ZeroPolicy};
use crate::buf::{AlignedBuf, PoolBuf};
use crate::error::{Error, Result};
use crate::pipeline::{Payload, Processed};
use crate::ring::uring::{UringWriter, WriteSeg};
use crate::ring::BackendKind;
use crate::stop::StopFlag;
use crate::sys;

/// Counters of a raw sink.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawStats {
    /// Bytes written with write requests (padding included).
    pub bytes_written: u64,
    /// Bytes of zero chunks (holes in a file; zeroed, discarded or skipped on a device).
    pub zero_bytes: u64,
    /// Write requests issued.
    pub requests: u64,
    /// Syncs asked for while writing ([`RawSink::with_flush_every`]).
    pub syncs: u64,
}

/// What a device output has had written so far: shared with the operation, which reports it
/// after a failure (the sink is gone by then). Writes go out of order: `reach` bounds them.
#[derive(Debug, Default)]
pub struct Overwritten {
    chunks: AtomicU64,
    reach: AtomicU64,
}

impl Overwritten {
    /// Chunks written (or zeroed) on the device.
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    /// One past the furthest byte written.
    pub fn reach(&self) -> u64 {
        self.reach.load(Ordering::Relaxed)
    }

    fn mark(&self, end: u64) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.reach.fetch_max(end, Ordering::Relaxed);
    }
}

enum Writer {
    Uring(Box<UringWriter>),
    Pwrite,
}

/// A raw copy of the disk being written.
pub struct RawSink {
    /// Declared (so dropped) before `target`: a ring drains its in-flight writes while the file
    /// they name is still open, never after its descriptor could have been reused.
    writer: Writer,
    target: Target,
    size: u64,
    chunk_size: u32,
    zero_policy: ZeroPolicy,
    zero_buf: Option<AlignedBuf>,
    /// Write segments of the current chunk, reused.
    segs: Vec<WriteSeg>,
    stats: RawStats,
    /// Writes in flight at most (the read buffers the sink holds).
    depth: u32,
    /// Data bytes of the chunks written (what the copy stores).
    stored: u64,
    manifest: Option<ManifestOut>,
    stop: Option<StopFlag>,
    /// Syncs the output as it grows (a throttled run), so the commit's fsync is short.
    flusher: Option<Flusher>,
    /// Where a device output's writes are counted.
    overwritten: Option<Arc<Overwritten>>,
    /// A device output's manifest from an earlier run, removed just before the first chunk is
    /// written: until then the device holds what it describes, and a refusal, a stop or a
    /// read error before that leaves both as they were.
    stale_manifest: Option<std::path::PathBuf>,
}

/// Syncs a file's data on a thread of its own every `every` bytes written, at most one sync
/// pending at a time; the writer never waits for one. The flushes the commit's fsync would pay
/// at the end (the file system's allocation metadata of O_DIRECT writes, the device's write
/// cache) are thus spread over the run. Measured: a throttled 1 GiB copy used to spend 2.4 s in
/// its final fsync; a 1 GiB export received over agents went from 175–181 to 213–224 MB/s with a
/// sync every 16 MiB (`docs/performance.md`, "Node-to-node exports at 4 GiB, again").
struct Flusher {
    every: u64,
    next: u64,
    /// The output (a descriptor of its own), until the thread takes it on the first sync.
    file: Option<std::fs::File>,
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Syncs asked for.
    asked: u64,
}

impl Flusher {
    fn new(file: std::fs::File, every: u64) -> Self {
        Self {
            every,
            next: every,
            file: Some(file),
            tx: None,
            thread: None,
            asked: 0,
        }
    }

    /// Asks for a sync each time `written` passes another `every` bytes (the thread starts on
    /// the first).
    fn written(&mut self, written: u64) {
        if written < self.next {
            return;
        }
        self.next = written + self.every;
        if let Some(file) = self.file.take() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            self.thread = std::thread::Builder::new()
                .name("ds-flush".into())
                .spawn(move || {
                    // A failed sync here is not reported: the commit's fsync reports it.
                    while rx.recv().is_ok() {
                        let _ = file.sync_data();
                    }
                })
                .ok();
            self.tx = self.thread.is_some().then_some(tx);
        }
        if let Some(tx) = &self.tx {
            if tx.try_send(()).is_ok() {
                self.asked += 1;
            }
        }
    }

    /// Waits for the last sync asked for; returns how many were asked for.
    fn stop(&mut self) -> u64 {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.asked
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RawSink {
    /// Prepares `target` to receive a disk of `size` bytes in `chunk_size` chunks. With
    /// `BackendKind::Uring` writes go through an io_uring with `depth` buffers in flight (falling
    /// back to pwrite if refused).
    pub fn new(
        target: Target,
        size: u64,
        chunk_size: u32,
        backend: BackendKind,
        depth: u32,
        zero_policy: ZeroPolicy,
    ) -> Result<Self> {
        if let Some(dev) = target.device_size() {
            if dev < size {
                return Err(Error::Invalid(format!(
                    "{}: target device holds {dev} bytes, the disk needs {size}",
                    target.final_path().display()
                )));
            }
        }
        let writer = match backend {
            BackendKind::Uring => match UringWriter::new(target.file(), target.write_path(), depth) {
                Ok(w) => Writer::Uring(Box::new(w)),
                Err(_) => Writer::Pwrite,
            },
            BackendKind::Pread => Writer::Pwrite,
        };
        if target.device_size().is_none() {
            // Give the file its final size first: writes inside i_size are not "extending", which
            // ext4 and XFS would otherwise serialise and complete synchronously under O_DIRECT.
            target
                .file()
                .set_len(size)
                .map_err(|e| Error::io("truncate", target.write_path(), size, e))?;
        }
        Ok(Self {
            target,
            writer,
            size,
            chunk_size,
            zero_policy,
            zero_buf: None,
            segs: Vec::new(),
            stats: RawStats::default(),
            depth,
            stored: 0,
            manifest: None,
            stop: None,
            flusher: None,
            overwritten: None,
            stale_manifest: None,
        })
    }

    /// [`RawSink::new`] with what an operation's [`crate::ops::Tuning`] says: the write backend
    /// and depth, the stop flag, and (with `--bwlimit`) syncing as the output grows.
    pub fn tuned(
        target: Target,
        size: u64,
        chunk_size: u32,
        t: &crate::tuning::Tuning,
        zero_policy: ZeroPolicy,
    ) -> Result<Self> {
        Ok(
            Self::new(target, size, chunk_size, t.write_backend(), t.write_depth, zero_policy)?
                .with_stop(t.stop.clone())
                .with_flush_every(t.flush_every()),
        )
    }

    /// Syncs the output on a thread of its own every `every` bytes written (used with
    /// `--bwlimit`: the run then ends when the rate says, not after a long final fsync).
    pub fn with_flush_every(mut self, every: Option<u64>) -> Self {
        self.flusher = every
            .filter(|&e| e > 0)
            .and_then(|e| self.target.file().try_clone().ok().map(|f| Flusher::new(f, e)));
        self
    }

    /// Records every chunk in `manifest`, committed with the image as a pair. On a device
    /// output (written in place), the manifest already at that path is removed just before
    /// the first chunk is written ([`remove_stale_manifest`]), not before.
    pub fn with_manifest(mut self, manifest: ManifestOut) -> Self {
        if self.target.is_device() {
            self.stale_manifest = Some(manifest.final_path().to_owned());
        }
        self.manifest = Some(manifest);
        self
    }

    /// Counts in `overwritten` what is written to a device output (a file is written under a
    /// temporary name, so a failed run leaves it untouched).
    pub fn with_overwritten(mut self, overwritten: Arc<Overwritten>) -> Self {
        if self.target.is_device() {
            self.overwritten = Some(overwritten);
        }
        self
    }

    /// Honours `stop` up to the commit.
    pub fn with_stop(mut self, stop: Option<StopFlag>) -> Self {
        self.stop = stop;
        self
    }

    /// The output.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Which backend writes.
    pub fn backend(&self) -> BackendKind {
        match self.writer {
            Writer::Uring(_) => BackendKind::Uring,
            Writer::Pwrite => BackendKind::Pread,
        }
    }

    /// Writes `buf[..len]` at `offset`. Sub-blocks marked in `zero_map` (see
    /// [`crate::pipeline::zero_map`]) are left as holes in a file target; a device gets the whole
    /// chunk. A short last chunk is padded with zeroes to the write alignment (the file is
    /// truncated back to size in [`Self::complete`]).
    pub fn write(&mut self, offset: u64, len: u32, zero_map: u64, mut buf: PoolBuf) -> Result<()> {
        let align = if self.target.is_direct() {
            self.target.align()
        } else {
            1
        };
        let padded = len.div_ceil(align) * align;
        if padded > len {
            buf.as_mut_slice()[len as usize..padded as usize].fill(0);
        }
        let mut segs = std::mem::take(&mut self.segs);
        segs.clear();
        let block = crate::pipeline::zero_block_size(self.chunk_size);
        if self.target.device_size().is_none() && zero_map != 0 {
            let mut start = None;
            let blocks = len.div_ceil(block);
            for i in 0..=blocks {
                let zero = i == blocks || zero_map & (1 << i) != 0;
                match (zero, start) {
                    (false, None) => start = Some(i),
                    (true, Some(s)) => {
                        let from = s * block;
                        let to = (i * block).min(padded);
                        segs.push(WriteSeg {
                            buf_off: from,
                            disk_off: offset + u64::from(from),
                            len: to - from,
                        });
                        start = None;
                    }
                    _ => {}
                }
            }
        } else {
            segs.push(WriteSeg {
                buf_off: 0,
                disk_off: offset,
                len: padded,
            });
        }
        if segs.is_empty() {
            self.segs = segs;
            return Ok(());
        }
        self.stats.bytes_written += segs.iter().map(|s| u64::from(s.len)).sum::<u64>();
        if let Some(f) = &mut self.flusher {
            f.written(self.stats.bytes_written);
        }
        let res = self.submit(buf, &segs);
        self.segs = segs;
        res
    }

    fn submit(&mut self, buf: PoolBuf, segs: &[WriteSeg]) -> Result<()> {
        match &mut self.writer {
            Writer::Uring(w) => w.write_segments(buf, segs, &mut drop),
            Writer::Pwrite => {
                let path = self.target.write_path();
                for s in segs {
                    self.stats.requests += 1;
                    let bytes = &buf.as_slice()[s.buf_off as usize..(s.buf_off + s.len) as usize];
                    self.target
                        .file()
                        .write_all_at(bytes, s.disk_off)
                        .map_err(|e| Error::io("write", path, s.disk_off, e))?;
                }
                Ok(())
            }
        }
    }

    /// Records a zero chunk: a hole in a file; on a device, whatever the zero policy says.
    pub fn zero(&mut self, offset: u64, len: u32) -> Result<()> {
        self.stats.zero_bytes += u64::from(len);
        if self.target.device_size().is_none() || self.zero_policy == ZeroPolicy::Skip {
            return Ok(());
        }
        let path = self.target.write_path().to_owned();
        let mode = match self.zero_policy {
            ZeroPolicy::Discard => sys::ZeroMode::Punch,
            _ => sys::ZeroMode::Zero,
        };
        match sys::zero_range(self.target.file(), offset, u64::from(len), mode) {
            Ok(()) => Ok(()),
            Err(e) if self.zero_policy == ZeroPolicy::Write && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // The device cannot zero a range: write zeroes from a buffer kept for that.
                let align = self.target.align();
                let padded = len.div_ceil(align) * align;
                let zb = self.zero_buf.get_or_insert_with(|| AlignedBuf::new(padded as usize));
                if zb.capacity() < padded as usize {
                    *zb = AlignedBuf::new(padded as usize);
                }
                self.stats.bytes_written += u64::from(padded);
                self.target
                    .file()
                    .write_all_at(&zb.as_slice()[..padded as usize], offset)
                    .map_err(|e| Error::io("write", &path, offset, e))
            }
            Err(e) => Err(Error::io(
                if self.zero_policy == ZeroPolicy::Discard {
                    "discard (fallocate PUNCH_HOLE)"
                } else {
                    "zero (fallocate ZERO_RANGE)"
                },
                &path,
                offset,
                e,
            )),
        }
    }

    /// Waits for all writes and sets a file's length to the disk size. Returns the target (ready
    /// to [`Target::commit`]) and the counters; [`Sink::finish`] commits it too.
    pub fn complete(mut self) -> Result<(Target, RawStats)> {
        if let Writer::Uring(w) = &mut self.writer {
            w.finish(&mut drop)?;
            self.stats.requests += w.requests;
        }
        if let Some(mut f) = self.flusher.take() {
            self.stats.syncs = f.stop();
        }
        if self.target.device_size().is_none() {
            let path = self.target.write_path().to_owned();
            self.target
                .file()
                .set_len(self.size)
                .map_err(|e| Error::io("truncate", &path, self.size, e))?;
        }
        Ok((self.target, self.stats))
    }
}

impl Sink for RawSink {
    fn needs(&self) -> SinkNeeds {
        SinkNeeds {
            order: Order::Any,
            in_flight: self.depth,
            zero_maps: true,
            lz4: false,
            payload_crc: false,
        }
    }

    fn put(&mut self, p: Processed) -> Result<()> {
        if let Some(stale) = self.stale_manifest.take() {
            remove_stale_manifest(&stale)?;
        }
        if let Some(m) = &mut self.manifest {
            m.record(&p);
        }
        let skipped = matches!(p.payload, Payload::Zero) && self.zero_policy == ZeroPolicy::Skip;
        if let Some(o) = self.overwritten.as_ref().filter(|_| !skipped) {
            o.mark(p.offset + u64::from(p.len));
        }
        match p.payload {
            Payload::Zero => self.zero(p.offset, p.len),
            Payload::Raw(buf) => {
                self.stored += u64::from(p.len);
                self.write(p.offset, p.len, p.zero_map, buf)
            }
            Payload::Lz4 { .. } => Err(Error::Invalid("a raw sink received a compressed chunk".into())),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<SinkStats> {
        let backend = self.backend();
        let (manifest, stop, stored) = (self.manifest.take(), self.stop.take(), self.stored);
        let (target, raw) = self.complete()?;
        let output_direct = target.is_direct();
        let digest = commit(target, manifest, true, stop.as_ref())?;
        Ok(SinkStats {
            write_backend: Some(backend),
            output_direct,
            bytes_written: raw.bytes_written,
            write_requests: raw.requests,
            bytes_stored: stored,
            digest,
            wire: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::BufPool;

    /// Puts `chunks` 1 MiB data chunks into a pwrite raw sink syncing every `every` bytes, and
    /// returns its stats and the file's bytes.
    fn write_chunks(chunks: u64, every: Option<u64>) -> (RawStats, Vec<u8>) {
        const MIB: u32 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let target = Target::create(&dir.path().join("dump"), false, false, &[]).unwrap();
        let mut sink = RawSink::new(
            target,
            chunks * u64::from(MIB),
            MIB,
            BackendKind::Pread,
            1,
            ZeroPolicy::Write,
        )
        .unwrap()
        .with_flush_every(every);
        let pool = BufPool::new(MIB as usize, 1);
        for i in 0..chunks {
            let mut buf = pool.get();
            buf.as_mut_slice().fill(i as u8 + 1);
            let p = Processed {
                index: i,
                offset: i * u64::from(MIB),
                len: MIB,
                digest: [0; 32],
                zero_map: 0,
                payload: Payload::Raw(buf),
                payload_crc: None,
            };
            sink.put(p).unwrap();
        }
        let (target, stats) = sink.complete().unwrap();
        // Read under its staging name: the target is dropped uncommitted.
        let bytes = std::fs::read(target.write_path()).unwrap();
        (stats, bytes)
    }

    #[test]
    fn syncs_as_the_output_grows_and_writes_the_same_bytes() {
        let (plain, a) = write_chunks(8, None);
        assert_eq!(plain.syncs, 0, "no sync without an interval");
        let (flushed, b) = write_chunks(8, Some(2 << 20));
        // Asked at 2, 4, 6 and 8 MiB; one may find the previous still pending and be dropped.
        assert!((1..=4).contains(&flushed.syncs), "syncs asked: {}", flushed.syncs);
        assert_eq!(a.len(), 8 << 20);
        assert!(a == b, "syncing changed what was written");
        assert_eq!(b[(5 << 20) + 7], 6);
    }
}
