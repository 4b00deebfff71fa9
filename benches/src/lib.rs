//! Shared helpers for diskstream's criterion benches (`benches/benches/*.rs`) and for the
//! `kernel-rate` helper binary that `scripts/bench-compare` runs.
//!
//! - [`mixed_data`]: realistic disk content (the head of `tar -cf - -C / usr`, or the engine's
//!   sample content when tar is unavailable).
//! - [`BenchFile`]: a data file on a file system that supports `O_DIRECT` (never tmpfs),
//!   created once per bench process and deleted afterwards.
//! - [`worker_rate`]: the worker kernel on all cores (`pipeline::kernel`: zero check, digest,
//!   lz4 — what one pipeline worker does per chunk, with no I/O and no hand-offs), the ceiling
//!   the compressed export is judged by.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use diskstream_engine::digest::Checksum;
use diskstream_engine::pipeline::{kernel, zero_block_size};
use diskstream_engine::sample::Rng;
use lz4_flex::block::CompressTable;

/// 1 MiB.
pub const MIB: usize = 1 << 20;
/// The chunk size every kernel is measured at (the engine's default).
pub const CHUNK: usize = diskstream_engine::ops::DEFAULT_CHUNK as usize;

/// True when criterion runs in smoke mode (`cargo bench -- --test`): benches then use small
/// inputs so the whole suite finishes in seconds.
pub fn smoke_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Number of cores (threads for the "all cores" variants).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `len` bytes of realistic disk content: the head of `tar -cf - -C / usr` (ELF binaries,
/// libraries, text, compressed docs), repeated if `/usr` is smaller; the engine's sample content
/// (text, code-like, random and zero runs) when tar is not available.
pub fn mixed_data(len: usize) -> Vec<u8> {
    match tar_usr(len) {
        Ok(v) if v.len() == len => v,
        Ok(v) if !v.is_empty() => v.iter().copied().cycle().take(len).collect(),
        _ => diskstream_engine::bench::realistic_buffer(len, 7),
    }
}

fn tar_usr(len: usize) -> io::Result<Vec<u8>> {
    let mut child = Command::new("tar")
        .args(["-cf", "-", "-C", "/", "usr"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = Vec::with_capacity(len);
    child
        .stdout
        .take()
        .expect("piped stdout")
        .take(len as u64)
        .read_to_end(&mut out)?;
    // We stop reading early on purpose; tar then dies of SIGPIPE.
    let _ = child.kill();
    let _ = child.wait();
    Ok(out)
}

/// Incompressible bytes (xorshift64*).
pub fn random_data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(42).fill(&mut v);
    v
}

/// Where bench data files go: `$DISKSTREAM_BENCH_DIR`, else `bench-data` next to the bench
/// executable's target directory (the build tree, a real disk), else the current directory.
/// Never `/tmp`, which may be tmpfs (no `O_DIRECT`).
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DISKSTREAM_BENCH_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            // target/<profile>/deps/<bench>-<hash>
            exe.ancestors().nth(3).map(|t| t.join("bench-data"))
        })
        .unwrap_or_else(|| PathBuf::from("bench-data"))
}

/// A data file written once, fsynced, deleted on drop (with its temporary directory).
pub struct BenchFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
    len: u64,
}

impl BenchFile {
    /// Creates a file of `len` bytes of [`mixed_data`] in a fresh temporary directory under
    /// [`data_dir`]. The content is generated in 64 MiB pieces (tar output, then its copies).
    pub fn mixed(len: u64) -> io::Result<Self> {
        let base = data_dir();
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new().prefix("diskstream-bench-").tempdir_in(&base)?;
        let path = dir.path().join("source.img");
        let piece = (64 * MIB as u64).min(len) as usize;
        let head = mixed_data(len.min(1 << 30) as usize);
        let mut f = File::create(&path)?;
        let mut written = 0u64;
        while written < len {
            let at = (written as usize) % head.len();
            let n = (piece as u64).min(len - written).min((head.len() - at) as u64) as usize;
            f.write_all(&head[at..at + n])?;
            written += n as u64;
        }
        f.sync_all()?;
        Ok(Self { _dir: dir, path, len })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Per-thread output buffer for lz4 of one [`CHUNK`].
pub fn lz4_out_buf() -> Vec<u8> {
    vec![0u8; lz4_flex::block::get_maximum_output_size(CHUNK)]
}

/// Per-thread state of the worker kernel: lz4's output buffer and hash table.
pub struct WorkerState {
    out: Vec<u8>,
    table: CompressTable,
}

impl WorkerState {
    /// Buffers for one thread.
    pub fn new() -> Self {
        Self {
            out: lz4_out_buf(),
            table: CompressTable::large(),
        }
    }
}

impl Default for WorkerState {
    fn default() -> Self {
        Self::new()
    }
}

/// What one pipeline worker does per chunk: the engine's own `pipeline::kernel` (zero check,
/// digest, lz4 block compress into a reused buffer, and the stored bytes' CRC-32C, as for a
/// dsimg frame). Returns the stored size (0 for a zero chunk).
pub fn worker_chunk(chunk: &[u8], checksum: Checksum, st: &mut WorkerState) -> usize {
    let w = kernel(
        chunk,
        zero_block_size(CHUNK as u32),
        checksum,
        Some((&mut st.out, &mut st.table)),
        true,
    );
    match w.digest {
        None => 0,
        Some(_) => w.compressed.unwrap_or(chunk.len()),
    }
}

/// One pass of [`worker_chunk`] over every [`CHUNK`] of `data`, split over `states.len()`
/// threads (thread `t` takes chunks `t`, `t + n`, ...; disjoint). Returns the stored bytes.
pub fn worker_pass(data: &[u8], checksum: Checksum, states: &mut [WorkerState]) -> u64 {
    let n = states.len().max(1);
    if n == 1 {
        let st = &mut states[0];
        return data.chunks(CHUNK).map(|c| worker_chunk(c, checksum, st) as u64).sum();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = states
            .iter_mut()
            .enumerate()
            .map(|(t, st)| {
                s.spawn(move || {
                    data.chunks(CHUNK)
                        .skip(t)
                        .step_by(n)
                        .map(|c| worker_chunk(c, checksum, st) as u64)
                        .sum::<u64>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("kernel thread")).sum()
    })
}

/// Result of [`worker_rate`].
#[derive(Clone, Copy, Debug)]
pub struct KernelRate {
    /// Input bytes per second over all threads.
    pub bytes_per_s: f64,
    /// Input bytes / stored bytes (zero chunks store nothing).
    pub ratio: f64,
    /// Threads used.
    pub threads: usize,
    /// Input bytes processed in the timed part.
    pub bytes: u64,
}

/// The worker kernel (zero check, digest, lz4) on `threads` threads for `min_time`: the
/// engine's own measurement (`diskstream bench` uses the same), after one warm-up pass.
pub fn worker_rate(data: &[u8], checksum: Checksum, threads: usize, min_time: Duration) -> KernelRate {
    use diskstream_engine::bench::{kernel_rate, lz4_ratio, Kernel};
    let threads = threads.max(1);
    let rate = |d| kernel_rate(data, Kernel::Worker(checksum), threads, d).expect("start the kernel threads");
    rate(Duration::from_millis(50));
    let r = rate(min_time);
    KernelRate {
        bytes_per_s: r.bytes_per_s(),
        ratio: lz4_ratio(data),
        threads,
        bytes: r.bytes,
    }
}

/// Reads `total` bytes of `path` into memory as `slices` equal slices spread evenly over the
/// file (so the sample represents the whole disk, not its first files). Buffered reads:
/// this is the helper's setup, not something measured.
pub fn read_spread_sample(path: &Path, total: usize, slices: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path)?;
    let size = size_of(&f)?;
    let slices = slices.max(1);
    let total = (total as u64).min(size) as usize;
    let slice = (total / slices) / CHUNK * CHUNK;
    let (slice, slices) = if slice == 0 { (total, 1) } else { (slice, slices) };
    let stride = if slices > 1 {
        (size - slice as u64) / (slices as u64 - 1)
    } else {
        0
    };
    let mut v = vec![0u8; slice * slices];
    for i in 0..slices {
        let off = (i as u64 * stride) / 4096 * 4096;
        f.read_exact_at(&mut v[i * slice..(i + 1) * slice], off)?;
    }
    Ok(v)
}

/// Size of a file or block device (seek to the end).
fn size_of(f: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f.try_clone()?;
    f.seek(SeekFrom::End(0))
}
