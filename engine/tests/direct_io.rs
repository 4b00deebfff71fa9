//! Proof from the kernel's side that the fast path is what runs: the source descriptor carries
//! O_DIRECT in `/proc/self/fdinfo`, and the io_uring reader owns a real io_uring instance
//! (`anon_inode:[io_uring]`) and issues its reads through it.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use diskstream_engine::buf::BufPool;
use diskstream_engine::ring::uring::UringReader;
use diskstream_engine::ring::{pread::PreadReader, BackendKind, ReadBackend, RingOptions};
use diskstream_engine::sample::write_sample_disk;
use diskstream_engine::source::{plan_chunks, Disk};

fn scratch_file(name: &str, size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("dstest-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join(name);
    write_sample_disk(&path, size, 60, 42).unwrap();
    (dir, path)
}

/// The `flags:` field of `/proc/self/fdinfo/FD` (octal in the file).
fn fdinfo_flags(fd: i32) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let line = info.lines().find(|l| l.starts_with("flags:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

fn io_uring_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|t| t.to_string_lossy().contains("io_uring"))
        .count()
}

#[test]
fn source_descriptor_is_o_direct_in_the_kernel() {
    let (_dir, path) = scratch_file("disk", 8 << 20);
    let src = Disk::open(&path).unwrap();
    let flags = fdinfo_flags(src.file().as_raw_fd());
    assert_ne!(flags & libc::O_DIRECT as u32, 0, "fdinfo flags {flags:o} lack O_DIRECT");
    assert!(src.is_direct());
    assert!(src.warning().is_none());
}

#[test]
fn uring_reader_reads_through_a_real_ring_and_matches_pread() {
    let (_dir, path) = scratch_file("disk", 9 << 20);
    let src = Disk::open(&path).unwrap();
    let plans = plan_chunks(src.size(), 1 << 20, src.logical_block(), &src.data_extents().unwrap());
    let before = io_uring_fds();
    let mut uring = UringReader::new(RingOptions {
        queue_depth: 4,
        fixed_buffers: false,
    })
    .unwrap();
    assert_eq!(io_uring_fds(), before + 1, "no io_uring instance was created");
    assert_eq!(uring.kind(), BackendKind::Uring);
    let collect = |backend: &mut dyn ReadBackend| {
        let pool = BufPool::new(1 << 20, 6);
        let mut chunks = vec![Vec::new(); plans.len()];
        let stats = backend
            .read_all(&src, &plans, &pool, &mut |c| {
                chunks[c.index as usize] = c
                    .buf
                    .map(|b| b.as_slice()[..c.len as usize].to_vec())
                    .unwrap_or_default();
                Ok(())
            })
            .unwrap();
        (chunks, stats)
    };
    let (fast, fast_stats) = collect(&mut uring);
    let (slow, _) = collect(&mut PreadReader::new());
    assert!(fast_stats.requests > 0 && fast_stats.bytes_read > 0);
    assert_eq!(fast, slow, "io_uring and pread read different bytes");
    let mut fixed = UringReader::new(RingOptions {
        queue_depth: 4,
        fixed_buffers: true,
    })
    .unwrap();
    let (fixed_chunks, _) = collect(&mut fixed);
    assert_eq!(fixed_chunks, slow, "registered-buffer reads differ");
}
