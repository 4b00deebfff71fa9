//! Steady state allocates nothing per chunk: a counting global allocator measures whole runs of
//! scan, raw create and dsimg create on a disk of 128 chunks and on one of 1024 chunks (64 KiB
//! chunks; both disks have more chunks than the pools have buffers, so both fill the pools); the
//! larger disk may only add the few allocations of logarithmic growth (manifest, index), not one
//! per chunk.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use diskstream_engine::ops::{self, CreateOptions, Format, Progress, ScanOptions, Tuning};
use diskstream_engine::sample::write_sample_disk;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    f();
    ALLOCS.load(Ordering::Relaxed) - before
}

fn runs(dir: &Path, chunks: u64) -> [u64; 3] {
    let src = dir.join(format!("src{chunks}"));
    write_sample_disk(&src, chunks << 16, 100, chunks).unwrap();
    let tuning = Tuning {
        chunk_size: 1 << 16,
        threads: 2,
        ..Tuning::default()
    };
    let o = CreateOptions {
        tuning: tuning.clone(),
        force: true,
        ..CreateOptions::default()
    };
    let p: Progress = Default::default();
    let scan = count(|| {
        ops::scan(
            &src,
            &ScanOptions {
                tuning,
                compress: true,
                ..ScanOptions::default()
            },
            &p,
        )
        .unwrap();
    });
    let raw = count(|| {
        ops::create(&src, &dir.join("o.raw"), &o, &p).unwrap();
    });
    let dsimg = count(|| {
        ops::create(
            &src,
            &dir.join("o.dsimg"),
            &CreateOptions {
                format: Format::Dsimg,
                ..o.clone()
            },
            &p,
        )
        .unwrap();
    });
    [scan, raw, dsimg]
}

#[test]
fn allocations_do_not_grow_with_the_number_of_chunks() {
    let dir = tempfile::Builder::new()
        .prefix("dstest-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let _warm = runs(dir.path(), 128);
    let small = runs(dir.path(), 128);
    let large = runs(dir.path(), 1024);
    for (i, name) in ["scan", "create raw", "create dsimg"].iter().enumerate() {
        let extra = large[i].saturating_sub(small[i]);
        eprintln!("{name}: {} allocations for 128 chunks, {} for 1024", small[i], large[i]);
        assert!(
            extra < 32,
            "{name}: 896 more chunks cost {extra} more allocations (128 chunks: {}, 1024: {})",
            small[i],
            large[i]
        );
    }
}
