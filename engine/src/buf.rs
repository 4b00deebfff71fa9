//! Owned, aligned I/O buffers and the bounded pool they are recycled through.
//!
//! `AlignedBuf` is the unit of memory that moves through every stage (source → ring →
//! pipeline → sink): the kernel DMAs into it under O_DIRECT, workers hash and compress it,
//! the raw sink hands the very same buffer back to the kernel. The pool hands out at most
//! `capacity` buffers, carved lazily out of one `Slab` and never freed until the pool and all
//! its buffers are gone, so peak memory is bounded by the pool and steady state allocates
//! nothing (`engine/tests/alloc.rs` counts it).
//!
//! Slabs are anonymous mappings aligned to 2 MiB and marked `MADV_HUGEPAGE`, so where the kernel
//! has transparent huge pages (`enabled` = `always` or `madvise`) a 1 MiB buffer is one physically
//! contiguous piece of memory instead of 256 scattered pages. The block layer describes an
//! O_DIRECT request by its physical segments, and devices cap them (`max_segments`: 254 on
//! virtio-blk, 128 on a loop device), so scattered buffers get reads split and not merged:
//! measured on this VM, the bare read ring went from 0.9–1.6 GB/s to 2.2–2.4 GB/s
//! (docs/performance.md, "Huge-page buffers"). Without THP everything still works, only slower.
//!
//! One of the engine's unsafe islands: the mapping calls and the slice views below.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// Alignment of every buffer: a page, which satisfies O_DIRECT on every device we meet
/// (logical blocks are 512 or 4096 bytes) and io_uring buffer registration.
pub const BUF_ALIGN: usize = 4096;

/// Size (and alignment) of a transparent huge page on x86-64 and arm64 with 4 KiB pages.
pub const HUGE_PAGE: usize = 2 << 20;

/// What a pool's memory is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pages {
    /// Transparent huge pages (`MADV_HUGEPAGE`) where the kernel has them enabled, 4 KiB pages
    /// otherwise. Needs no setup; the default.
    #[default]
    Thp,
    /// The kernel's reserved hugetlb pages (`vm.nr_hugepages`), when enough are free; [`Pages::Thp`]
    /// otherwise. Opt-in: on a hypervisor node those pages are usually set aside for VMs. Measured
    /// another ~10 % faster than THP for O_DIRECT reads on this VM (docs/performance.md).
    Hugetlb,
}

/// Whether the kernel gives transparent huge pages to memory that asks (`enabled` is `always` or
/// `madvise`, not `never`, in /sys/kernel/mm/transparent_hugepage).
fn thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.is_empty() && !s.contains("[never]"))
}

/// How reports name memory: `hugetlb` for reserved hugetlb pages, else `thp` where the kernel
/// gives transparent huge pages, else `4k`.
pub fn pages_name(hugetlb: bool) -> &'static str {
    if hugetlb {
        "hugetlb"
    } else if thp_enabled() {
        "thp"
    } else {
        "4k"
    }
}

/// One anonymous mapping that buffers are carved from; unmapped when the last holder drops it.
struct Slab {
    base: NonNull<u8>,
    len: usize,
    /// Backed by hugetlb pages (else anonymous memory, huge pages where THP allows).
    hugetlb: bool,
}

// SAFETY: the slab is plain memory; who may touch which bytes is governed by the AlignedBufs
// carved from it, each of which owns a disjoint range.
unsafe impl Send for Slab {}
// SAFETY: as above; the slab itself is never read or written through a shared reference.
unsafe impl Sync for Slab {}

impl Slab {
    /// Maps `len` bytes, rounded up to a page or, when at least [`HUGE_PAGE`], to whole huge
    /// pages at a huge-page-aligned address (a tail that only partly fills a huge page would get
    /// 4 KiB pages); asks for huge pages and touches nothing yet. With [`Pages::Hugetlb`] it first
    /// tries reserved hugetlb pages (the reservation is made, or refused, right here). Aborts like
    /// the global allocator when the kernel has no memory to give.
    fn new(len: usize, pages: Pages) -> Arc<Self> {
        let align = if len >= HUGE_PAGE { HUGE_PAGE } else { BUF_ALIGN };
        let len = len.max(BUF_ALIGN).next_multiple_of(align);
        if pages == Pages::Hugetlb && align == HUGE_PAGE {
            // A hugetlb mapping is huge-page aligned by the kernel and its pages are reserved at
            // mmap time, so a refusal shows here, not at first touch.
            if let Some(raw) = map_anonymous(len, libc::MAP_HUGETLB) {
                return Arc::new(Self {
                    base: NonNull::new(raw.cast()).expect("mmap never returns null"),
                    len,
                    hugetlb: true,
                });
            }
        }
        let map_len = len + (align - BUF_ALIGN);
        let Some(raw) = map_anonymous(map_len, 0) else {
            std::alloc::handle_alloc_error(std::alloc::Layout::from_size_align(len, align).expect("layout"));
        };
        let start = raw as usize;
        let base = start.next_multiple_of(align);
        let head = base - start;
        let tail = map_len - head - len;
        // SAFETY: [start, base) and [base + len, start + map_len) lie inside the mapping just made
        // and nothing refers to them; unmapping the slack keeps exactly [base, base + len).
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((base + len) as *mut libc::c_void, tail);
            }
        }
        if align == HUGE_PAGE {
            // SAFETY: advice on our own mapping; it changes how pages are backed, not their
            // contents. Refused (THP disabled or compiled out) means 4 KiB pages: ignored.
            unsafe { libc::madvise(base as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        }
        Arc::new(Self {
            base: NonNull::new(base as *mut u8).expect("mmap never returns null"),
            len,
            hugetlb: false,
        })
    }
}

/// A new private anonymous read-write mapping of `len` bytes with `extra` mmap flags, or `None`
/// if the kernel refuses it.
fn map_anonymous(len: usize, extra: libc::c_int) -> Option<*mut libc::c_void> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; the result is checked against MAP_FAILED.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    (raw != libc::MAP_FAILED).then_some(raw)
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: [base, base + len) is the mapping made in `new`; every AlignedBuf carved from
        // it holds an Arc to this slab, so none is alive any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A buffer of fixed capacity, aligned to [`BUF_ALIGN`], owned by exactly one stage.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    /// Keeps the memory mapped for as long as this buffer lives.
    _slab: Arc<Slab>,
}

// SAFETY: AlignedBuf owns its range of the slab exclusively (like Box<[u8]>); moving it to
// another thread moves that ownership.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of the bytes, as with &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` bytes (rounded up to the alignment) in a slab of its own and writes
    /// zeroes over them, so every page is resident from the start (memory use is what the
    /// pools say at once, not a slow creep as pages fault in). Buffers of 2 MiB and more are
    /// huge-page aligned (see the module comment).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        Self::carve(Slab::new(cap, Pages::Thp), 0, cap)
    }

    /// The buffer at `[offset, offset + cap)` of `slab`, zeroed; the caller hands out each range once.
    fn carve(slab: Arc<Slab>, offset: usize, cap: usize) -> Self {
        assert!(
            offset.is_multiple_of(BUF_ALIGN) && offset + cap <= slab.len,
            "buffer outside its slab"
        );
        // SAFETY: offset + cap <= slab.len (checked above), so the range lies inside the mapping.
        let ptr = unsafe { slab.base.add(offset) };
        // SAFETY: the range is mapped read-write and owned by no other buffer (each range is
        // carved once); writing zeroes makes every page resident and initialised.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, cap) };
        Self { ptr, cap, _slab: slab }
    }

    /// Capacity in bytes (a multiple of [`BUF_ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap initialised bytes for as long as self (and so the slab) lives.
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
    /// Distance between buffers in the slab (buf_size rounded up to the alignment).
    stride: usize,
    /// Where every buffer of the pool lives; mapped at once, made resident buffer by buffer.
    slab: Arc<Slab>,
    allocated: AtomicUsize,
    free_tx: Sender<AlignedBuf>,
    free_rx: Receiver<AlignedBuf>,
}

impl BufPool {
    /// A pool of at most `capacity` buffers of `buf_size` bytes each. Their memory is mapped
    /// now as one slab and made resident as buffers are first handed out (or all at once by
    /// [`BufPool::fill`]).
    pub fn new(buf_size: usize, capacity: usize) -> Self {
        Self::with_pages(buf_size, capacity, Pages::Thp)
    }

    /// [`BufPool::new`] with the memory made of `pages` (see [`BufPool::hugetlb`] for what it got).
    pub fn with_pages(buf_size: usize, capacity: usize, pages: Pages) -> Self {
        let capacity = capacity.max(1);
        let stride = buf_size.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        let (free_tx, free_rx) = crossbeam_channel::bounded(capacity);
        Self {
            inner: Arc::new(PoolInner {
                buf_size,
                capacity,
                stride,
                slab: Slab::new(stride * capacity, pages),
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

    /// Whether the pool's memory is reserved hugetlb pages (asked with [`Pages::Hugetlb`] and granted).
    pub fn hugetlb(&self) -> bool {
        self.inner.slab.hugetlb
    }

    /// What the pool's memory is made of, as reports name it: `hugetlb`, `thp` (transparent huge
    /// pages, where the kernel has them on) or `4k`.
    pub fn pages_name(&self) -> &'static str {
        pages_name(self.hugetlb())
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
                Ok(_) => {
                    let inner = &self.inner;
                    let buf = AlignedBuf::carve(Arc::clone(&inner.slab), n * inner.stride, inner.stride);
                    return Some(self.wrap(buf));
                }
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
    /// Keeps the memory out of the pool, and mapped, for good (for a buffer the kernel may still
    /// write to): its slab is then never unmapped.
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
