//! The io_uring backends: [`UringReader`] keeps `queue_depth` chunk reads in flight and hands each
//! filled buffer on as it completes; [`UringWriter`] keeps positional writes in flight and hands
//! each buffer back once the kernel is done with it.
//!
//! One of the engine's unsafe islands. The contract that makes every `push` sound: a buffer whose
//! address is in a submitted SQE is owned by a slot of this ring until its CQE has been reaped,
//! and the ring is drained (never dropped with I/O in flight) before its slots are released.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use io_uring::{opcode, types, IoUring, Probe};

use super::{zero_gaps, BackendKind, ReadBackend, ReadChunk, ReadStats, RingOptions};
use crate::buf::{BufPool, PoolBuf};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::plan::{ReadPlan, MAX_SEGMENTS};

/// Segment index bits in `user_data`.
const SEG_BITS: u64 = 8;

fn build_ring(entries: u32) -> io::Result<IoUring> {
    let ring = IoUring::new(entries.next_power_of_two().clamp(8, 4096))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [(opcode::Read::CODE, "READ"), (opcode::Write::CODE, "WRITE")] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("kernel io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    Ok(ring)
}

#[derive(Clone, Copy)]
struct SegState {
    buf_off: u32,
    disk_off: u64,
    len: u32,
    done: u32,
}

struct ReadSlot {
    plan: usize,
    buf: PoolBuf,
    pending: u32,
    segs: Vec<SegState>,
}

/// io_uring reader with a fixed queue depth (chunks in flight).
pub struct UringReader {
    ring: IoUring,
    opts: RingOptions,
    pace: Option<std::sync::Arc<crate::pace::Pacer>>,
}

impl UringReader {
    /// Sets up a ring big enough for `queue_depth` chunks of up to [`MAX_SEGMENTS`] reads each.
    pub fn new(opts: RingOptions) -> io::Result<Self> {
        let opts = RingOptions {
            queue_depth: opts.queue_depth.clamp(1, 256),
            ..opts
        };
        let ring = build_ring(opts.queue_depth * MAX_SEGMENTS as u32)?;
        Ok(Self { ring, opts, pace: None })
    }
}

impl ReadBackend for UringReader {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn set_pacer(&mut self, pacer: Option<std::sync::Arc<crate::pace::Pacer>>) {
        self.pace = pacer;
    }

    fn read_all(
        &mut self,
        src: &Disk,
        plans: &ReadPlan,
        pool: &BufPool,
        deliver: &mut dyn FnMut(ReadChunk) -> Result<()>,
    ) -> Result<ReadStats> {
        let fixed = if self.opts.fixed_buffers {
            Some(register(&self.ring, src.file(), pool).map_err(|e| Error::io("io_uring register", src.path(), 0, e))?)
        } else {
            None
        };
        let mut run = ReadRun {
            ring: &mut self.ring,
            src,
            plans,
            fixed: fixed.as_ref(),
            pace: self.pace.as_deref(),
            slots: (0..self.opts.queue_depth).map(|_| None).collect(),
            stats: ReadStats::default(),
            in_kernel: 0,
            spare: Vec::new(),
            cqes: Vec::new(),
        };
        let res = run.run(pool, deliver);
        // Never leave the kernel holding a buffer we are about to give away or free.
        let drained = run.drain();
        let stats = run.stats;
        drop(run);
        if fixed.is_some() {
            let _ = self.ring.submitter().unregister_buffers();
            let _ = self.ring.submitter().unregister_files();
        }
        res.and(drained)?;
        Ok(stats)
    }
}

/// Registered buffers: pool buffer address → index in the ring's buffer table.
struct Fixed {
    index: HashMap<usize, u16>,
}

fn register(ring: &IoUring, file: &File, pool: &BufPool) -> io::Result<Fixed> {
    let mut bufs: Vec<PoolBuf> = (0..pool.capacity()).map(|_| pool.get()).collect();
    let iovecs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.capacity(),
        })
        .collect();
    // SAFETY: every iovec points at a live pool buffer. Pool buffers are only freed when the
    // pool is dropped, which happens after `read_all` unregisters them.
    let rc = unsafe { ring.submitter().register_buffers(&iovecs) };
    let index = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| (b.as_slice().as_ptr() as usize, i as u16))
        .collect();
    drop(bufs);
    rc?;
    ring.submitter().register_files(&[file.as_raw_fd()])?;
    Ok(Fixed { index })
}

struct ReadRun<'a> {
    ring: &'a mut IoUring,
    src: &'a Disk,
    plans: &'a ReadPlan,
    fixed: Option<&'a Fixed>,
    /// `--bwlimit`: reads start no faster than this allows.
    pace: Option<&'a crate::pace::Pacer>,
    slots: Vec<Option<ReadSlot>>,
    stats: ReadStats,
    /// SQEs pushed whose CQE has not been reaped yet.
    in_kernel: u32,
    /// Segment lists of finished slots, reused so steady state allocates nothing.
    spare: Vec<Vec<SegState>>,
    /// Reaped completions, reused.
    cqes: Vec<(u64, i32)>,
}

impl ReadRun<'_> {
    fn run(&mut self, pool: &BufPool, deliver: &mut dyn FnMut(ReadChunk) -> Result<()>) -> Result<()> {
        let mut next = 0usize;
        let mut inflight = 0usize;
        loop {
            // Fill free slots; take a buffer without waiting while reads are in flight, since
            // a completion we have not reaped may be what the downstream stages are waiting for.
            while next < self.plans.len() {
                let plan = &self.plans[next];
                if plan.is_hole() {
                    self.stats.hole_chunks += 1;
                    deliver(ReadChunk {
                        index: plan.index,
                        offset: plan.offset,
                        len: plan.len,
                        buf: None,
                    })?;
                    next += 1;
                    continue;
                }
                let Some(slot) = self.slots.iter().position(Option::is_none) else {
                    break;
                };
                // --bwlimit: a read starts only when the pacer allows it; while others are in
                // flight, reap them instead of sleeping. The wait ends at once on a stop
                // (nothing is in flight then, so nothing is left to drain).
                if let Some(p) = self.pace {
                    if !p.ready_in().is_zero() {
                        if inflight > 0 {
                            break;
                        }
                        if !p.ready() {
                            return Err(Error::Cancelled);
                        }
                    }
                }
                let buf = if inflight == 0 {
                    pool.get()
                } else {
                    match pool.try_get() {
                        Some(b) => b,
                        None => break,
                    }
                };
                if let Some(p) = self.pace {
                    p.take(u64::from(self.plans[next].len));
                }
                self.start(slot, next, buf)?;
                inflight += 1;
                next += 1;
            }
            if inflight == 0 {
                return Ok(());
            }
            self.ring
                .submit_and_wait(1)
                .map_err(|e| Error::io("io_uring_enter", self.src.path(), 0, e))?;
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            self.in_kernel -= cqes.len() as u32;
            for &(ud, res) in &cqes {
                if let Some(chunk) = self.complete(ud, res)? {
                    inflight -= 1;
                    deliver(chunk)?;
                }
            }
            self.cqes = cqes;
        }
    }

    fn start(&mut self, slot: usize, plan_idx: usize, mut buf: PoolBuf) -> Result<()> {
        let plan = &self.plans[plan_idx];
        let plan_segs = self.plans.segments(plan);
        zero_gaps(plan, plan_segs, &mut buf);
        let mut segs = self.spare.pop().unwrap_or_default();
        segs.clear();
        segs.extend(plan_segs.iter().map(|s| SegState {
            buf_off: s.buf_off,
            disk_off: s.disk_off,
            len: s.len,
            done: 0,
        }));
        self.slots[slot] = Some(ReadSlot {
            plan: plan_idx,
            buf,
            pending: segs.len() as u32,
            segs,
        });
        for seg in 0..plan_segs.len() {
            self.push_read(slot, seg)?;
        }
        Ok(())
    }

    fn push_read(&mut self, slot: usize, seg: usize) -> Result<()> {
        let s = self.slots[slot].as_mut().expect("slot in use");
        let st = s.segs[seg];
        let base = s.buf.as_mut_ptr();
        let ud = ((slot as u64) << SEG_BITS) | seg as u64;
        // SAFETY: buf_off + done < buf_off + len <= capacity (the plan stays inside the chunk
        // and the chunk inside the buffer), so the pointer stays inside the allocation.
        let ptr = unsafe { base.add((st.buf_off + st.done) as usize) };
        let len = st.len - st.done;
        let off = st.disk_off + u64::from(st.done);
        let entry = match self.fixed {
            Some(f) => {
                let idx = f.index[&(base as usize)];
                opcode::ReadFixed::new(types::Fixed(0), ptr, len, idx)
                    .offset(off)
                    .build()
            }
            None => opcode::Read::new(types::Fd(self.src.file().as_raw_fd()), ptr, len)
                .offset(off)
                .build(),
        }
        .user_data(ud);
        self.stats.requests += 1;
        loop {
            // SAFETY: the buffer is owned by slot `slot` until this SQE's CQE is reaped (see
            // the module comment), and the fd outlives the ring's use of it.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.in_kernel += 1;
                return Ok(());
            }
            self.ring
                .submit()
                .map_err(|e| Error::io("io_uring_enter", self.src.path(), off, e))?;
        }
    }

    /// Handles one CQE; returns the chunk once all its reads are done.
    fn complete(&mut self, ud: u64, res: i32) -> Result<Option<ReadChunk>> {
        let slot = (ud >> SEG_BITS) as usize;
        let seg = (ud & ((1 << SEG_BITS) - 1)) as usize;
        let s = self.slots[slot].as_mut().expect("completion for a live slot");
        let plan = &self.plans[s.plan];
        let st = &mut s.segs[seg];
        let off = st.disk_off + u64::from(st.done);
        if res == -libc::EINTR || res == -libc::EAGAIN {
            return self.push_read(slot, seg).map(|()| None);
        }
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            return Err(Error::io("read", self.src.path(), off, e));
        }
        st.done += res as u32;
        self.stats.bytes_read += res as u64;
        let chunk_end = plan.offset + u64::from(plan.len);
        let reached = st.disk_off + u64::from(st.done);
        let wanted = (st.disk_off + u64::from(st.len)).min(chunk_end);
        if reached < wanted {
            if res == 0 {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source ended early (was it truncated while reading?)",
                );
                return Err(Error::io("read", self.src.path(), reached, e));
            }
            return self.push_read(slot, seg).map(|()| None);
        }
        s.pending -= 1;
        if s.pending > 0 {
            return Ok(None);
        }
        let ReadSlot { plan, buf, segs, .. } = self.slots[slot].take().expect("slot");
        self.spare.push(segs);
        let plan = &self.plans[plan];
        Ok(Some(ReadChunk {
            index: plan.index,
            offset: plan.offset,
            len: plan.len,
            buf: Some(buf),
        }))
    }

    /// Waits for every SQE still in flight, so no buffer is released while the kernel uses it.
    fn drain(&mut self) -> Result<()> {
        let _ = self.ring.submit();
        while self.in_kernel > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The kernel will not tell us more; keep the buffers alive rather than free
                // memory it may still write to.
                for s in self.slots.iter_mut() {
                    if let Some(s) = s.take() {
                        s.buf.leak();
                    }
                }
                return Err(Error::io("io_uring_enter", self.src.path(), 0, e));
            }
            self.in_kernel -= self.ring.completion().count() as u32;
        }
        for s in &mut self.slots {
            *s = None;
        }
        Ok(())
    }
}

impl Drop for ReadRun<'_> {
    /// On every exit path, unwinding from a panicking consumer included: no buffer goes back to
    /// its pool (the slots drop right after this) while the kernel may still read into it.
    fn drop(&mut self) {
        if self.in_kernel > 0 {
            let _ = self.drain();
        }
    }
}

/// One write of a slot: `len` bytes from `buf_off` in the buffer to `disk_off` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSeg {
    /// Offset in the buffer.
    pub buf_off: u32,
    /// Offset in the file or device.
    pub disk_off: u64,
    /// Bytes to write (aligned for O_DIRECT).
    pub len: u32,
}

struct WriteSlot {
    buf: PoolBuf,
    segs: Vec<(WriteSeg, u32)>,
    pending: u32,
}

/// io_uring positional writer: up to `depth` buffers in flight, any order, each written as one
/// or more segments (so a chunk with zero sub-blocks leaves holes).
pub struct UringWriter {
    ring: IoUring,
    path: PathBuf,
    fd: i32,
    slots: Vec<Option<WriteSlot>>,
    inflight: usize,
    in_kernel: u32,
    spare: Vec<Vec<(WriteSeg, u32)>>,
    cqes: Vec<(u64, i32)>,
    /// Write requests issued.
    pub requests: u64,
}

impl UringWriter {
    /// A writer for `file` (which the caller keeps open for the writer's lifetime).
    pub fn new(file: &File, path: &Path, depth: u32) -> io::Result<Self> {
        let depth = depth.clamp(1, 256);
        Ok(Self {
            ring: build_ring(depth * 4)?,
            path: path.to_owned(),
            fd: file.as_raw_fd(),
            slots: (0..depth).map(|_| None).collect(),
            inflight: 0,
            in_kernel: 0,
            spare: Vec::new(),
            cqes: Vec::new(),
            requests: 0,
        })
    }

    /// Queues a write of `buf[..len]` at `offset`; `len` must already be aligned.
    pub fn write(&mut self, buf: PoolBuf, offset: u64, len: u32, done: &mut dyn FnMut(PoolBuf)) -> Result<()> {
        self.write_segments(
            buf,
            &[WriteSeg {
                buf_off: 0,
                disk_off: offset,
                len,
            }],
            done,
        )
    }

    /// Queues the writes `segs` out of `buf` (at least one). When all slots are busy it first
    /// reaps completions, handing finished buffers to `done`.
    pub fn write_segments(&mut self, buf: PoolBuf, segs: &[WriteSeg], done: &mut dyn FnMut(PoolBuf)) -> Result<()> {
        while self.inflight == self.slots.len() {
            self.reap(1, done)?;
        }
        let slot = self.slots.iter().position(Option::is_none).expect("free slot");
        let mut list = self.spare.pop().unwrap_or_default();
        list.clear();
        list.extend(segs.iter().map(|s| (*s, 0)));
        self.slots[slot] = Some(WriteSlot {
            buf,
            segs: list,
            pending: segs.len() as u32,
        });
        self.inflight += 1;
        for seg in 0..segs.len() {
            self.push(slot, seg)?;
        }
        // Reap whatever is already complete without waiting.
        self.reap(0, done)
    }

    /// Waits until every queued write has completed.
    pub fn finish(&mut self, done: &mut dyn FnMut(PoolBuf)) -> Result<()> {
        while self.inflight > 0 {
            self.reap(1, done)?;
        }
        Ok(())
    }

    fn push(&mut self, slot: usize, seg: usize) -> Result<()> {
        let s = self.slots[slot].as_mut().expect("slot in use");
        let (w, done) = s.segs[seg];
        // SAFETY: buf_off + done < buf_off + len <= capacity (the sink builds segments inside the
        // buffer), so the pointer stays inside the allocation.
        let ptr = unsafe { s.buf.as_mut_ptr().add((w.buf_off + done) as usize) };
        let off = w.disk_off + u64::from(done);
        let entry = opcode::Write::new(types::Fd(self.fd), ptr, w.len - done)
            .offset(off)
            .build()
            .user_data(((slot as u64) << SEG_BITS) | seg as u64);
        self.requests += 1;
        loop {
            // SAFETY: the buffer is owned by the slot until its CQE is reaped; `Drop` drains.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.in_kernel += 1;
                return Ok(());
            }
            self.ring
                .submit()
                .map_err(|e| Error::io("io_uring_enter", &self.path, off, e))?;
        }
    }

    fn reap(&mut self, want: usize, done: &mut dyn FnMut(PoolBuf)) -> Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(()),
            Err(e) => return Err(Error::io("io_uring_enter", &self.path, 0, e)),
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        self.in_kernel -= cqes.len() as u32;
        let mut first_err = None;
        for &(ud, res) in &cqes {
            let slot = (ud >> SEG_BITS) as usize;
            let seg = (ud & ((1 << SEG_BITS) - 1)) as usize;
            let s = self.slots[slot].as_mut().expect("completion for a live slot");
            let (w, ref mut written) = s.segs[seg];
            let off = w.disk_off + u64::from(*written);
            if res == -libc::EINTR || res == -libc::EAGAIN {
                self.push(slot, seg)?;
                continue;
            }
            if res > 0 {
                *written += res as u32;
                if *written < w.len {
                    self.push(slot, seg)?;
                    continue;
                }
            } else if res < 0 {
                let e = io::Error::from_raw_os_error(-res);
                first_err.get_or_insert(Error::io("write", &self.path, off, e));
            } else {
                let e = io::Error::new(io::ErrorKind::WriteZero, "device accepted no bytes (is it full?)");
                first_err.get_or_insert(Error::io("write", &self.path, off, e));
            }
            s.pending -= 1;
            if s.pending == 0 {
                let s = self.slots[slot].take().expect("slot");
                self.inflight -= 1;
                self.spare.push(s.segs);
                done(s.buf);
            }
        }
        self.cqes = cqes;
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for UringWriter {
    fn drop(&mut self) {
        // Drain so the kernel never writes from a freed buffer; errors no longer matter here.
        let _ = self.ring.submit();
        let mut stuck = 0;
        while self.in_kernel > 0 && stuck < 1000 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.in_kernel -= self.ring.completion().count() as u32,
                Err(_) => stuck += 1,
            }
        }
        if self.in_kernel > 0 {
            // The kernel may still write from these buffers: leak them rather than free them.
            for s in self.slots.iter_mut() {
                if let Some(s) = s.take() {
                    s.buf.leak();
                }
            }
        }
    }
}
