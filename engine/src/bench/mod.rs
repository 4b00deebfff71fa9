//! Stage-by-stage measurements for `diskstream bench`: CPU kernels (BLAKE3, SHA-256, lz4, zero check)
//! per core and on all cores, O_DIRECT reads through the engine's ring at a sweep of queue depths
//! and chunk sizes, O_DIRECT writes to a scratch file, and the pipeline end to end. Every rate is
//! bytes of input per second. [`run::run`] measures a whole [`run::BenchPlan`] and
//! [`verdict::Verdict`] says what limits an export; a frontend only renders the report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::buf::BufPool;
use crate::digest::{is_zero, Checksum};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::pipeline::{self, zero_block_size};
use crate::plan::plan_chunks;
use crate::ring::uring::UringReader;
use crate::ring::{ReadBackend, RingOptions};
use crate::sample::{fill_content, Rng};
use crate::sink::target::Target;
use lz4_flex::block::CompressTable;

pub mod run;
pub mod verdict;

pub use run::{run, BenchPlan, BenchReport, BenchTarget, Row};
pub use verdict::{Curve, Verdict};

/// Chunk size the CPU kernels work on (the engine's default).
pub const KERNEL_CHUNK: usize = crate::ops::DEFAULT_CHUNK as usize;

/// One CPU kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The chunk digest of each chunk.
    Digest(Checksum),
    /// lz4 block compression of each chunk.
    Lz4Compress,
    /// lz4 block decompression (of the chunk compressed once beforehand).
    Lz4Decompress,
    /// The all-zero test, on an all-zero chunk (its full cost; data chunks exit early).
    ZeroCheck,
    /// What a pipeline worker does per chunk ([`crate::pipeline::kernel`]): zero check, digest,
    /// lz4 compress, and the payload CRC-32C of a dsimg frame.
    Worker(Checksum),
}

impl Kernel {
    /// Every kernel, in report order.
    pub const ALL: [Self; 7] = [
        Self::Digest(Checksum::Blake3),
        Self::Digest(Checksum::Sha256),
        Self::Lz4Compress,
        Self::Lz4Decompress,
        Self::ZeroCheck,
        Self::Worker(Checksum::Blake3),
        Self::Worker(Checksum::Sha256),
    ];

    /// Stable name (JSON key stem).
    pub fn name(self) -> &'static str {
        match self {
            Self::Digest(c) => c.name(),
            Self::Lz4Compress => "lz4_compress",
            Self::Lz4Decompress => "lz4_decompress",
            Self::ZeroCheck => "zero_check",
            Self::Worker(Checksum::Blake3) => "zero_blake3_lz4",
            Self::Worker(Checksum::Sha256) => "zero_sha256_lz4",
        }
    }
}

/// The processor, as far as the digest and compression kernels care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// Model name (`/proc/cpuinfo`), or "unknown".
    pub model: String,
    /// SHA extensions (x86 `sha_ni`, Arm `sha2`): SHA-256 in hardware.
    pub sha_ni: bool,
    /// AVX2 (BLAKE3 hashes 8 blocks at once).
    pub avx2: bool,
    /// AVX-512F (BLAKE3 hashes 16 blocks at once).
    pub avx512f: bool,
}

impl CpuInfo {
    /// Reads `/proc/cpuinfo` (the first processor's model name and flags).
    pub fn detect() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    /// Parses the text of `/proc/cpuinfo`.
    pub fn parse(text: &str) -> Self {
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
        };
        let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        Self {
            model: field("model name")
                .or_else(|| field("CPU part").map(|p| format!("Arm CPU part {p}")))
                .unwrap_or_else(|| "unknown".into()),
            sha_ni: has("sha_ni") || has("sha2"),
            avx2: has("avx2"),
            avx512f: has("avx512f"),
        }
    }

    /// "sha_ni avx2 -avx512f": the features that matter, a minus for the missing ones.
    pub fn features(&self) -> String {
        [("sha_ni", self.sha_ni), ("avx2", self.avx2), ("avx512f", self.avx512f)]
            .iter()
            .map(|(n, on)| if *on { (*n).to_owned() } else { format!("-{n}") })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A measured rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Input bytes processed.
    pub bytes: u64,
    /// Wall time.
    pub secs: f64,
}

impl Rate {
    /// Bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9)
    }
}

/// A buffer of realistic disk content: machine code, text, random (already compressed) data and
/// zero runs in 4–128 KiB runs, weighted so lz4 compresses it about 2:1 like a real system disk
/// (the `/usr` tar stream compresses 1.7–2.2:1 in 1 MiB lz4 blocks on the machines measured in
/// `docs/performance.md`).
pub fn realistic_buffer(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = vec![0u8; len];
    let mut i = 0;
    while i < len {
        let run = (4096 * (1 + rng.below(32)) as usize).min(len - i);
        let kind = match rng.below(20) {
            0..=6 => 1,   // code-like
            7..=11 => 0,  // text
            12..=16 => 2, // random: compressed files, media
            _ => 3,       // zero runs
        };
        fill_content(&mut rng, kind, &mut v[i..i + run]);
        i += run;
    }
    v
}

/// Runs `kernel` over `data` in [`KERNEL_CHUNK`] pieces on `threads` threads (each walking its
/// own chunks, round robin) until `dur` has passed; returns the aggregate rate. If a thread
/// cannot be started (a pids cgroup's limit, `RLIMIT_NPROC`), the threads already running are
/// stopped and joined and the error says how many started.
pub fn kernel_rate(data: &[u8], kernel: Kernel, threads: usize, dur: Duration) -> Result<Rate> {
    let threads = threads.max(1);
    let chunks: Vec<&[u8]> = data.chunks(KERNEL_CHUNK).collect();
    let compressed: Vec<Vec<u8>> = if kernel == Kernel::Lz4Decompress {
        chunks.iter().map(|c| lz4_flex::block::compress(c)).collect()
    } else {
        Vec::new()
    };
    let zeros = vec![0u8; if kernel == Kernel::ZeroCheck { KERNEL_CHUNK } else { 0 }];
    let work = KernelWork {
        kernel,
        chunks: &chunks,
        compressed: &compressed,
        zeros: &zeros,
        threads,
    };
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let total = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        let mut failed = None;
        for t in 0..threads {
            let (work, stop) = (&work, &stop);
            match pipeline::spawn(s, "bench-kernel", move || work.run(t, stop)) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            std::thread::sleep(dur);
        }
        // Also on a failed start: the threads already running spin until they see it.
        stop.store(true, Ordering::Relaxed);
        let started = handles.len();
        let total: u64 = handles.into_iter().map(|h| h.join().expect("kernel thread")).sum();
        match failed {
            None => Ok(total),
            Some(e) => Err(pipeline::spawn_error(started, threads, &e)),
        }
    })?;
    Ok(Rate {
        bytes: total,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// What each thread of [`kernel_rate`] works on.
struct KernelWork<'a> {
    kernel: Kernel,
    chunks: &'a [&'a [u8]],
    compressed: &'a [Vec<u8>],
    zeros: &'a [u8],
    threads: usize,
}

impl KernelWork<'_> {
    /// Thread `t`'s loop: its chunks, round robin, until `stop`; returns the bytes done.
    fn run(&self, t: usize, stop: &AtomicBool) -> u64 {
        let (chunks, threads) = (self.chunks, self.threads);
        let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(KERNEL_CHUNK)];
        let mut table = CompressTable::large();
        let mut done = 0u64;
        let mut i = t;
        while !stop.load(Ordering::Relaxed) {
            let c = chunks[i % chunks.len()];
            match self.kernel {
                Kernel::Digest(checksum) => {
                    std::hint::black_box(checksum.digest(c));
                }
                Kernel::Lz4Compress => {
                    std::hint::black_box(lz4_flex::block::compress_into(c, &mut out).ok());
                }
                Kernel::Lz4Decompress => {
                    let z = &self.compressed[i % chunks.len()];
                    std::hint::black_box(lz4_flex::block::decompress_into(z, &mut out).ok());
                }
                Kernel::ZeroCheck => {
                    // The full-scan cost: an all-zero chunk (data exits early).
                    std::hint::black_box(is_zero(std::hint::black_box(&self.zeros[..c.len()])));
                }
                Kernel::Worker(checksum) => {
                    let block = zero_block_size(KERNEL_CHUNK as u32);
                    std::hint::black_box(pipeline::kernel(c, block, checksum, Some((&mut out, &mut table)), true));
                }
            }
            done += c.len() as u64;
            i += threads;
        }
        done
    }
}

/// lz4 compression ratio (input / output) of `data` in [`KERNEL_CHUNK`] blocks.
pub fn lz4_ratio(data: &[u8]) -> f64 {
    let out: usize = data
        .chunks(KERNEL_CHUNK)
        .map(|c| lz4_flex::block::compress(c).len().min(c.len()))
        .sum();
    data.len() as f64 / out.max(1) as f64
}

/// Reads the first `limit` bytes of `dev` (all of it if smaller) with O_DIRECT through the
/// engine's io_uring reader at queue depth `qd` in `chunk`-byte reads, discarding the data.
pub fn device_read(dev: &Path, limit: u64, qd: u32, chunk: u32, cancel: &AtomicBool) -> Result<Rate> {
    let src = Disk::open(dev)?;
    let size = src.size().min(limit);
    let plans = plan_chunks(size, chunk, src.logical_block(), &[(0, size)]);
    let mut reader = UringReader::new(RingOptions {
        queue_depth: qd,
        fixed_buffers: false,
    })
    .map_err(|e| Error::io("io_uring setup", dev, 0, e))?;
    let pool = BufPool::new(chunk as usize, qd as usize + 1);
    let t0 = Instant::now();
    let stats = reader.read_all(&src, &plans, &pool, &mut |_| {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok(())
    })?;
    Ok(Rate {
        bytes: stats.bytes_read,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// Where bench writes: a private directory of its own, made fresh in the directory the user
/// named, and the scratch file inside it; removed with everything in it when dropped.
///
/// The directory's name is unpredictable (`.diskstream-bench-<pid>-<random>.tmp`) and it is made
/// with `mkdir` and mode 0700: `mkdir` fails on any name that exists, a symbolic link included,
/// so nothing another user planted in a shared (world-writable) directory is ever followed (a
/// taken name is retried with another), and no one else can put anything inside. The stages
/// create their files in it exclusively (`O_CREAT|O_EXCL`, through [`Target`]) and without
/// `force`, so a device is written only when the user named it (`BenchTarget::Device`).
#[derive(Debug)]
pub struct ScratchFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ScratchFile {
    /// Makes a fresh private directory in `parent` (`tempfile`'s: mode 0700, a random name,
    /// retried while taken); the scratch file will be created in it by the stage that writes it.
    pub fn new(parent: &Path) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!(".diskstream-bench-{}-", std::process::id()))
            .suffix(".tmp")
            .tempdir_in(parent)?;
        Ok(Self {
            path: dir.path().join("scratch"),
            dir,
        })
    }

    /// The scratch file's path (inside the private directory; not created yet).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another file's path in the private directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The private directory (removed with everything in it when this is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the scratch file now (idempotent); the directory stays until drop.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `size` bytes of realistic data to `path` with O_DIRECT through io_uring in `chunk`-byte
/// writes, `qd` in flight, then fsyncs. A file path is written under a temporary name created
/// exclusively beside it and removed afterwards (never committed, so nothing is left and nothing
/// existing is touched); a block device is written in place only with `force` (the user named
/// the device and passed `--force`): without it, a path that is or leads to a device is refused.
pub fn target_write(path: &Path, force: bool, size: u64, qd: u32, chunk: u32, cancel: &AtomicBool) -> Result<Rate> {
    let target = Target::create(path, force, true, &[])?;
    let size = target.device_size().map_or(size, |d| d.min(size));
    let mut sink = crate::sink::raw::RawSink::new(
        target,
        size,
        chunk,
        crate::ring::BackendKind::Uring,
        qd,
        crate::sink::ZeroPolicy::Write,
    )?;
    let pool = BufPool::new(chunk as usize, qd as usize + 1);
    let fill = realistic_buffer(chunk as usize, 9);
    let t0 = Instant::now();
    let mut off = 0u64;
    while off < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let len = (size - off).min(u64::from(chunk)) as u32;
        let mut buf = pool.get();
        buf.as_mut_slice()[..len as usize].copy_from_slice(&fill[..len as usize]);
        sink.write(off, len, 0, buf)?;
        off += u64::from(len);
    }
    let (target, stats) = sink.complete()?;
    target.file().sync_all().map_err(|e| Error::io("fsync", path, 0, e))?;
    Ok(Rate {
        bytes: stats.bytes_written,
        secs: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn cpuinfo_of_x86_and_arm() {
        let x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.50GHz\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\n";
        let c = CpuInfo::parse(x86);
        assert_eq!(c.model, "Intel(R) Xeon(R) CPU @ 2.50GHz");
        assert!(!c.sha_ni && c.avx2 && c.avx512f);
        assert_eq!(c.features(), "-sha_ni avx2 avx512f");
        let arm = "processor\t: 0\nFeatures\t: fp asimd sha1 sha2\nCPU part\t: 0xd0c\n";
        let c = CpuInfo::parse(arm);
        assert!(c.sha_ni && !c.avx2);
        assert_eq!(c.model, "Arm CPU part 0xd0c");
        assert_eq!(CpuInfo::parse("").model, "unknown");
    }
}
