//! The checking pipeline for `dsimg` streams (verify, restore): one thread reads frames in order
//! ([`ImageReader::next_stored`]: structure, index, trailer), N workers check each frame's
//! payload ([`check_frame`]: CRC-32C, lz4, digest) and find its zero blocks, and the caller's
//! thread hands the checked chunks to the sink in completion order. The one-thread reference is
//! [`ImageReader::next_frame`] in a loop; both accept and reject exactly the same images (tested).

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::buf::{BufPool, Pages, PoolBuf};
use crate::error::{Error, Result};
use crate::format::reader::{check_frame, FrameCheck, ImageReader, StoredFrame};
use crate::format::FrameKind;
use crate::pipeline::{
    all_zero_map, drain_if, pool_shape, spawn, spawn_error, zero_block_size, zero_map, Payload, Processed,
};

/// Buffers of a checking run: stored payloads as read, and decompressed chunks of lz4 frames.
pub struct FramePools {
    /// Stored payloads (a chunk each: a payload is never longer than its chunk).
    pub stored: BufPool,
    /// Decompressed chunks.
    pub chunks: BufPool,
}

impl FramePools {
    /// Pools for `chunk_size` chunks of a disk of `disk_size` bytes, `threads` workers and a sink
    /// that keeps up to `sink_depth` chunks in flight (raw writes); allocated and touched up
    /// front, shaped by [`pool_shape`] (a 1-byte disk in 64 MiB chunks takes a few 64 KiB
    /// buffers, not `sink_depth + 2 * threads + 2` chunks twice).
    pub fn new(chunk_size: u32, disk_size: u64, threads: usize, sink_depth: u32, pages: Pages) -> Self {
        let (size, count) = pool_shape(chunk_size, disk_size, sink_depth as usize + 2 * threads + 2);
        let p = Self {
            stored: BufPool::with_pages(size, count, pages),
            chunks: BufPool::with_pages(size, count, pages),
        };
        p.stored.fill();
        p.chunks.fill();
        p
    }
}

/// Whether the sink needs each chunk's zero map (a raw sink leaves zero blocks as holes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroMaps {
    /// Compute them (restore).
    Want,
    /// Skip the extra pass (verify).
    Skip,
}

/// Checks one stored frame and makes it a [`Processed`] chunk: the payload of a raw frame is the
/// chunk itself; an lz4 frame is decoded into a buffer from `chunks`.
fn check_one(
    at: StoredFrame,
    stored: PoolBuf,
    check: &FrameCheck<'_>,
    chunks: &BufPool,
    maps: ZeroMaps,
) -> Result<Processed> {
    let f = at.frame;
    let cs = check.chunk_size;
    let block = zero_block_size(cs);
    let len = f.raw_len;
    let payload = &stored.as_slice()[..f.stored_len as usize];
    let mut dst = (f.kind == FrameKind::Lz4).then(|| chunks.get());
    let mut none: [u8; 0] = [];
    let out = dst.as_mut().map_or(&mut none[..], |d| d.as_mut_slice());
    check_frame(check, &f, payload, at.payload_at, out)?;
    let (payload, map) = match (f.kind, dst) {
        (FrameKind::Zero, _) => (Payload::Zero, all_zero_map(len, block)),
        (FrameKind::Lz4, Some(d)) => (Payload::Raw(d), 0),
        _ => (Payload::Raw(stored), 0),
    };
    let map = match (&payload, maps) {
        (Payload::Raw(b), ZeroMaps::Want) => zero_map(&b.as_slice()[..len as usize], block),
        _ => map,
    };
    Ok(Processed {
        index: f.index,
        offset: f.index * u64::from(cs),
        len,
        digest: f.digest,
        zero_map: map,
        payload,
        payload_crc: None,
    })
}

/// Reads every frame of `reader` and checks it on `threads` workers; `sink` gets each checked
/// chunk (in completion order) on the calling thread. Returns once the index, the trailer and
/// the image digest are checked too. The first error stops the run (every buffer goes back).
pub fn run_frames<R: Read + Send>(
    reader: &mut ImageReader<R>,
    pools: &FramePools,
    threads: usize,
    maps: ZeroMaps,
    progress: &Arc<AtomicU64>,
    sink: &mut dyn FnMut(Processed) -> Result<()>,
) -> Result<()> {
    let threads = threads.max(1);
    let cancel = AtomicBool::new(false);
    let depth = pools.stored.capacity();
    let (work_tx, work_rx) = crossbeam_channel::bounded::<(StoredFrame, PoolBuf)>(depth);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Result<Processed>>(depth);
    // The workers' copy of how frames are checked: owned here, since the reader thread borrows
    // `reader` mutably.
    let (zeros, path, chunk_size, payload_crc) = {
        let c = reader.check();
        (c.zeros.clone(), c.path.to_owned(), c.chunk_size, c.payload_crc)
    };
    let ctx = FrameCheck {
        zeros: &zeros,
        chunk_size,
        path: &path,
        payload_crc,
    };
    std::thread::scope(|scope| {
        let read = {
            let cancel = &cancel;
            spawn(scope, "ds-frame-reader", move || -> Result<()> {
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    let mut buf = pools.stored.get();
                    let res = reader.next_stored(buf.as_mut_slice());
                    let next = match res {
                        Ok(n) => n,
                        Err(e) => {
                            cancel.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    };
                    let Some(at) = next else { return Ok(()) };
                    if work_tx.send((at, buf)).is_err() {
                        return Err(Error::Cancelled);
                    }
                }
            })
            .map_err(|e| spawn_error(0, threads + 1, &e))?
        };
        let mut first_err = None;
        for t in 0..threads {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let (cancel, ctx) = (&cancel, &ctx);
            let started = spawn(scope, "ds-checker", move || {
                for (at, buf) in work_rx {
                    if cancel.load(Ordering::Relaxed) {
                        continue; // Dropping returns the buffer.
                    }
                    if done_tx.send(check_one(at, buf, ctx, &pools.chunks, maps)).is_err() {
                        return;
                    }
                }
            });
            if let Err(e) = started {
                cancel.store(true, Ordering::Relaxed); // All wind down as on any error.
                first_err = Some(spawn_error(t + 1, threads + 1, &e));
                break;
            }
        }
        drop(done_tx);
        // After a failed start, drain here too: with no worker the reader waits for buffers.
        drain_if(first_err.is_some(), work_rx);

        for p in done_rx {
            if first_err.is_some() {
                continue; // Dropping returns the buffers to their pools.
            }
            let res = p.and_then(|p| {
                let len = u64::from(p.len);
                sink(p)?;
                progress.fetch_add(len, Ordering::Relaxed);
                Ok(())
            });
            if let Err(e) = res {
                cancel.store(true, Ordering::Relaxed);
                first_err = Some(e);
            }
        }
        let read = read.join().expect("frame reader thread panicked");
        match first_err {
            Some(e) => Err(e),
            None => read,
        }
    })
}
