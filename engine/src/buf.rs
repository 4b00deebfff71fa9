//! Owned, aligned I/O buffers and the bounded pool they are recycled through.
//!
//! `AlignedBuf` is the unit of memory that moves through every stage (source → ring →
//! pipeline → sink): the kernel DMAs into it under O_DIRECT, workers hash and compress it,
//! the raw sink hands the very same buffer back to the kernel. The pool allocates at most
//! `capacity` buffers, lazily, and never frees one until it is dropped, so peak memory is
//! bounded by the pool and steady state allocates nothing (perf.md §2, finding 1).
//!
//! One of the engine's unsafe islands: the allocator calls and the slice views below.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// Alignment of every buffer: a page, which satisfies O_DIRECT on every device we meet
/// (logical blocks are 512 or 4096 bytes) and io_uring buffer registration.
pub const BUF_ALIGN: usize = 4096;

/// A heap buffer of fixed capacity, aligned to [`BUF_ALIGN`], owned by exactly one stage.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Box<[u8]>); moving it to another
// thread moves that ownership.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the bytes, as with &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` bytes (rounded up to the alignment) and writes zeroes over them, so no
    /// uninitialised memory is ever exposed through `as_slice` and every page is resident from
    /// the start (memory use is what the pools say at once, not a slow creep as pages fault in).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(BUF_ALIGN).div_ceil(BUF_ALIGN) * BUF_ALIGN;
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer layout");
        // SAFETY: layout has a non-zero size (cap >= BUF_ALIGN).
        let raw = unsafe { alloc::alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        // SAFETY: ptr is valid for writes of cap bytes (just allocated with that size).
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, cap) };
        Self { ptr, cap }
    }

    /// Capacity in bytes (a multiple of [`BUF_ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap initialised bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The whole buffer, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap bytes and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Raw pointer for handing the buffer to the kernel; the caller keeps `self` alive and
    /// untouched until the I/O completes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("buffer layout");
        // SAFETY: ptr was allocated in `new` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("cap", &self.cap).finish()
    }
}

/// A bounded set of equally sized buffers. `get` blocks when all are out, which is the
/// back-pressure that caps memory. A [`PoolBuf`] goes back to its pool when dropped, wherever
/// that happens (error paths included), so a pool never runs dry by leaking.
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    buf_size: usize,
    capacity: usize,
    allocated: AtomicUsize,
    free_tx: Sender<AlignedBuf>,
    free_rx: Receiver<AlignedBuf>,
}

impl BufPool {
    /// A pool of at most `capacity` buffers of `buf_size` bytes each, allocated on demand.
    pub fn new(buf_size: usize, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (free_tx, free_rx) = crossbeam_channel::bounded(capacity);
        Self {
            inner: Arc::new(PoolInner {
                buf_size,
                capacity,
                allocated: AtomicUsize::new(0),
                free_tx,
                free_rx,
            }),
        }
    }

    /// Size of each buffer handed out (the requested size, not rounded).
    pub fn buf_size(&self) -> usize {
        self.inner.buf_size
    }

    /// Upper bound on the number of buffers this pool will ever allocate.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// How many buffers have been allocated so far (never more than `capacity`).
    pub fn allocated(&self) -> usize {
        self.inner.allocated.load(Ordering::Relaxed)
    }

    /// Allocates every buffer the pool may hold now, so the pool's memory is all resident from the
    /// start: peak memory then does not depend on how long a run is or how its timing goes.
    pub fn fill(&self) {
        let bufs: Vec<PoolBuf> = std::iter::from_fn(|| self.try_get())
            .take(self.inner.capacity)
            .collect();
        drop(bufs);
    }

    /// Takes a buffer, allocating one if the pool is not yet full, else waiting for a return.
    pub fn get(&self) -> PoolBuf {
        if let Some(buf) = self.try_get() {
            return buf;
        }
        let buf = self
            .inner
            .free_rx
            .recv()
            .expect("pool holds its own sender, so the channel never disconnects");
        self.wrap(buf)
    }

    /// Takes a buffer if one is free or may still be allocated; never waits.
    pub fn try_get(&self) -> Option<PoolBuf> {
        if let Ok(buf) = self.inner.free_rx.try_recv() {
            return Some(self.wrap(buf));
        }
        let mut n = self.inner.allocated.load(Ordering::Relaxed);
        while n < self.inner.capacity {
            match self
                .inner
                .allocated
                .compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.wrap(AlignedBuf::new(self.inner.buf_size))),
                Err(now) => n = now,
            }
        }
        self.inner.free_rx.try_recv().ok().map(|b| self.wrap(b))
    }

    fn wrap(&self, buf: AlignedBuf) -> PoolBuf {
        PoolBuf {
            buf: Some(buf),
            pool: Arc::clone(&self.inner),
        }
    }
}

/// A buffer on loan from a [`BufPool`]; dropping it gives it back.
pub struct PoolBuf {
    buf: Option<AlignedBuf>,
    pool: Arc<PoolInner>,
}

impl PoolBuf {
    /// Keeps the memory out of the pool for good (for a buffer the kernel may still write to).
    pub fn leak(mut self) {
        std::mem::forget(self.buf.take());
    }
}

impl std::ops::Deref for PoolBuf {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("buffer present until drop")
    }
}

impl std::ops::DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        self.buf.as_mut().expect("buffer present until drop")
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // Bounded by capacity and only this pool's buffers come back, so it never fills.
            let _ = self.pool.free_tx.try_send(buf);
        }
    }
}

impl std::fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuf").field("cap", &self.capacity()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        let mut b = AlignedBuf::new(10_000);
        assert_eq!(b.capacity(), 12_288);
        assert_eq!(b.as_mut_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn pool_allocates_at_most_capacity_and_recycles() {
        let pool = BufPool::new(4096, 2);
        let a = pool.get();
        let b = pool.get();
        assert_eq!(pool.allocated(), 2);
        let pa = a.as_slice().as_ptr() as usize;
        drop(a);
        let c = pool.get();
        assert_eq!(c.as_slice().as_ptr() as usize, pa, "the returned buffer is reused");
        assert_eq!(pool.allocated(), 2);
        drop((b, c));
        assert!(pool.try_get().is_some());
    }
}
