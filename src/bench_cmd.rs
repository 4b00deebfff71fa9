//! `diskstream bench`: measures each stage an export goes through (CPU kernels, device reads,
//! target writes, the pipeline end to end), predicts raw and lz4 export throughput and names the
//! stage that limits each. Writes only to scratch files it removes (also on Ctrl-C), never to a
//! device or an existing file without `--force`, and never inside an export directory.

use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use diskstream_engine::bench::{self, BenchPlan, BenchReport, BenchTarget, Row, ScratchFile};
use diskstream_engine::digest::Checksum;
use diskstream_engine::ops;

use crate::contract::{self, Failed, Kind, Op};

/// Arguments of `diskstream bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Block device or file to read from (device and pipeline stages).
    #[arg(long)]
    device: Option<PathBuf>,
    /// Directory (or new file path) to write a scratch file to; a block device or an existing
    /// file only with --force.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Bytes to read and write per device measurement (K/M/G suffixes; at least one chunk, 1M).
    #[arg(long, default_value = "1G", value_parser = parse_bench_size)]
    size: u64,
    /// Seconds per CPU kernel measurement (0.05 to 60).
    #[arg(long, default_value_t = 0.5, value_parser = parse_duration)]
    duration: f64,
    /// Threads for "all cores" measurements, 1 to 256 (default: the number of cores).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
    /// The chunk digest the pipeline stages use and the verdict is for (both are measured as
    /// CPU kernels).
    #[arg(long, default_value = "blake3", value_parser = crate::units::checksums())]
    checksum: Checksum,
    /// Allow writing to a block device (its first --size bytes are overwritten) or next to an
    /// existing file.
    #[arg(long)]
    force: bool,
    /// Show every point of the device sweep (the global `-v`/`--verbose`).
    #[arg(skip)]
    pub verbose: bool,
    /// Print one JSON object; every rate is a number under a key ending in `_bytes_per_s`.
    #[arg(long)]
    json: bool,
}

/// Shortest and longest `--duration`, in seconds.
const DURATION_RANGE: std::ops::RangeInclusive<f64> = 0.05..=60.0;

/// `--size`: at least one chunk, since every stage reads and writes whole chunks (below it the
/// rates are zero and the verdict meaningless).
fn parse_bench_size(s: &str) -> Result<u64, String> {
    let v = crate::units::parse_size(s)?;
    let min = u64::from(ops::DEFAULT_CHUNK);
    if v < min {
        return Err(format!(
            "{s:?} is below the minimum of {} MiB (one chunk: every stage reads and writes whole chunks)",
            min >> 20
        ));
    }
    Ok(v)
}

/// `--duration`: a finite number of seconds in [`DURATION_RANGE`].
fn parse_duration(s: &str) -> Result<f64, String> {
    let (lo, hi) = (DURATION_RANGE.start(), DURATION_RANGE.end());
    match s.trim().parse::<f64>() {
        Ok(v) if DURATION_RANGE.contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from {lo} to {hi}")),
    }
}

/// `--threads`: 1 to the engine's limit, as for the image commands.
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (1..=ops::MAX_THREADS).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a thread count from 1 to {}", ops::MAX_THREADS)),
    }
}

fn err(msg: String, json_out: bool) -> ExitCode {
    errln!("diskstream bench: error: {msg}");
    Failed::new(Op::Bench, Kind::Error, msg).emit(json_out)
}

/// True if and only if `dir` is (inside) an export directory: Ganeti's `.../lib/ganeti/export`
/// or an instance export (a directory holding `config.ini`).
fn in_export_dir(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else { return false };
    dir.ancestors().any(|a| {
        (a.file_name().is_some_and(|n| n == "export")
            && a.parent().and_then(Path::file_name).is_some_and(|n| n == "ganeti"))
            || a.join("config.ini").is_file()
    })
}

fn plan_target(t: &Path, force: bool) -> Result<BenchTarget, String> {
    let meta = std::fs::metadata(t);
    let dir = match &meta {
        Ok(m) if m.is_dir() => t.to_path_buf(),
        _ => t
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    if in_export_dir(&dir) {
        return Err(format!(
            "{}: is inside an export directory; benchmark somewhere else",
            t.display()
        ));
    }
    match meta {
        Ok(m) if m.file_type().is_block_device() => {
            if force {
                Ok(BenchTarget::Device(t.to_path_buf()))
            } else {
                Err(format!(
                    "{}: is a block device; writing to it destroys its data: pass --force to allow it",
                    t.display()
                ))
            }
        }
        Ok(m) if m.is_dir() => scratch_in(t),
        Ok(m) if m.is_file() && !force => Err(format!(
            "{}: already exists; pass --force to benchmark next to it (it is left untouched)",
            t.display()
        )),
        Ok(m) if m.is_file() => scratch_in(&dir),
        Ok(_) => Err(format!("{}: not a directory, file or block device", t.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.is_dir() {
                scratch_in(&dir)
            } else {
                Err(format!(
                    "{}: its directory {} does not exist",
                    t.display(),
                    dir.display()
                ))
            }
        }
        Err(e) => Err(format!("{}: {e}", t.display())),
    }
}

/// A fresh private scratch directory in `dir` ([`ScratchFile`]).
fn scratch_in(dir: &Path) -> Result<BenchTarget, String> {
    ScratchFile::new(dir)
        .map(BenchTarget::Scratch)
        .map_err(|e| format!("{}: cannot make a scratch directory there: {e}", dir.display()))
}

fn say(json_out: bool, msg: &str) {
    if !json_out {
        errln!("bench: {msg}");
    }
}

/// Runs the benchmark.
pub fn run(a: BenchArgs) -> ExitCode {
    let interrupt = match crate::interrupt::Interrupt::install() {
        Ok(i) => i,
        Err(e) => return err(format!("cannot install the signal handler: {e}"), a.json),
    };
    let stop = interrupt.flag();
    let threads = a
        .threads
        .unwrap_or_else(|| ops::default_threads().min(ops::MAX_THREADS))
        .max(1);
    if let Some(d) = &a.device {
        if let Err(e) = diskstream_engine::source::Disk::open(d) {
            return err(format!("--device: {e}"), a.json);
        }
    }
    let target = match a.target.as_deref().map(|t| plan_target(t, a.force)).transpose() {
        Ok(t) => t,
        Err(e) => return err(e, a.json),
    };
    let plan = BenchPlan {
        device: a.device.clone(),
        target,
        size: a.size,
        duration: Duration::from_secs_f64(a.duration),
        threads,
        checksum: a.checksum,
        verbose: a.verbose,
        drop_caches: true,
    };
    let json_out = a.json;
    match bench::run(&plan, &stop, &mut |msg| say(json_out, msg)) {
        Ok(report) => {
            tracing::info!("bench ended: ok");
            render(&report, &a)
        }
        Err(e) if stop.load(Ordering::Relaxed) => {
            drop(plan);
            // The stage's own error, unless it only says it was interrupted.
            let why = if e == "interrupted" {
                String::new()
            } else {
                format!(" ({e})")
            };
            let msg = format!("interrupted by {}; scratch files removed{why}", interrupt.signal_name());
            errln!("diskstream bench: {msg}");
            Failed::new(Op::Bench, Kind::Interrupted, msg)
                .signal(interrupt.signal_name(), interrupt.code())
                .emit(a.json)
        }
        Err(e) => err(e, a.json),
    }
}

/// Prints the report: one JSON object, or the table and the verdict.
fn render(r: &BenchReport, a: &BenchArgs) -> ExitCode {
    if a.json {
        return contract::done(Op::Bench, r, true);
    }
    print_table(&r.rows);
    outln!();
    let v = &r.verdict;
    let how = if v.measured_end_to_end {
        "measured end to end"
    } else {
        "estimated from the CPU stages"
    };
    let features = [
        ("sha_ni", r.cpu.sha_ni),
        ("avx2", r.cpu.avx2),
        ("avx512f", r.cpu.avx512f),
    ]
    .iter()
    .map(|(n, on)| if *on { (*n).to_owned() } else { format!("-{n}") })
    .collect::<Vec<_>>()
    .join(" ");
    outln!("cpu: {} ({features})", r.cpu.model);
    outln!("verdict ({how}, {} chunk digests):", v.checksum);
    for (what, rate, lim) in [
        ("raw", v.raw_export_bytes_per_s, &v.raw_limited_by),
        ("lz4", v.lz4_export_bytes_per_s, &v.lz4_limited_by),
    ] {
        outln!(
            "  {what} export: {:>8.0} MB/s ({:>8.1} MiB/s), limited by {lim}",
            rate / 1e6,
            rate / 1048576.0
        );
    }
    if a.device.is_none() {
        outln!("  (give --device and --target to measure the disks too)");
    }
    if r.buffer_pages == "4k" {
        outln!(
            "  note: transparent huge pages are off here (/sys/kernel/mm/transparent_hugepage/enabled), so\n  \
             I/O buffers are scattered 4 KiB pages and large reads may be split: expect slower device\n  \
             stages (up to 2x on virtio); `image` commands can use reserved pages with --hugetlb"
        );
    }
    ExitCode::SUCCESS
}

fn print_table(rows: &[Row]) {
    let max = rows.iter().map(|r| r.bytes_per_s).fold(0.0, f64::max).max(1.0);
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(10);
    outln!(
        "{:width$}  {:>10}  {:>10}  relative to the fastest",
        "stage",
        "MB/s",
        "MiB/s"
    );
    for r in rows {
        let bar = "#".repeat(((r.bytes_per_s / max) * 40.0).round() as usize);
        outln!(
            "{:width$}  {:>10.0}  {:>10.1}  {bar}",
            r.name,
            r.bytes_per_s / 1e6,
            r.bytes_per_s / 1048576.0
        );
    }
    if std::io::stdout().is_terminal() {
        outln!("(MB = 10^6 bytes, MiB = 2^20 bytes)");
    }
}
