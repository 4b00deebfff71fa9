//! `diskstream bench`: measures each stage an export goes through (CPU kernels, device reads,
//! target writes, the pipeline end to end), predicts raw and lz4 export throughput and names the
//! stage that limits each. Writes only to scratch files it removes (also on Ctrl-C), never to a
//! device or an existing file without `--force`, and never inside an export directory.

use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use diskstream_engine::bench::{self, CpuInfo, Kernel, ScratchFile};
use diskstream_engine::digest::Checksum;
use diskstream_engine::ops::{self, CreateOptions, Format, Progress, ScanOptions, Tuning};
use serde_json::{json, Map, Value};

use crate::contract::{self, BenchResult, Failed, Kind, Op};

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
    /// Bytes to read and write per device measurement (K/M/G suffixes).
    #[arg(long, default_value = "1G", value_parser = crate::units::parse_size)]
    size: u64,
    /// Seconds per CPU kernel measurement.
    #[arg(long, default_value_t = 0.5)]
    duration: f64,
    /// Threads for "all cores" measurements (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The chunk digest the pipeline stages use and the verdict is for (both are measured as
    /// CPU kernels).
    #[arg(long, default_value = "blake3", value_parser = crate::cli::checksums())]
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

/// Queue depths and chunk sizes the device read sweep tries.
const SWEEP_QD: [u32; 4] = [1, 4, 16, 32];
const SWEEP_CHUNK: [u32; 2] = [1 << 20, 4 << 20];
/// Writes in flight for the target stage: what an export uses.
const WRITE_QD: u32 = ops::DEFAULT_WRITE_DEPTH;

/// One measured stage, for the table.
struct Row {
    name: String,
    bytes_per_s: f64,
}

/// Where the write stages go.
enum TargetPlan {
    /// A scratch file (in a directory, or at a new path), removed afterwards.
    Scratch(ScratchFile),
    /// A block device written in place (`--force`).
    Device(PathBuf),
}

fn err(msg: String, json_out: bool) -> ExitCode {
    eprintln!("diskstream bench: error: {msg}");
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

fn plan_target(t: &Path, force: bool) -> Result<TargetPlan, String> {
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
                Ok(TargetPlan::Device(t.to_path_buf()))
            } else {
                Err(format!(
                    "{}: is a block device; writing to it destroys its data: pass --force to allow it",
                    t.display()
                ))
            }
        }
        Ok(m) if m.is_dir() => Ok(TargetPlan::Scratch(ScratchFile::new(t))),
        Ok(m) if m.is_file() && !force => Err(format!(
            "{}: already exists; pass --force to benchmark next to it (it is left untouched)",
            t.display()
        )),
        Ok(m) if m.is_file() => Ok(TargetPlan::Scratch(ScratchFile::new(&dir))),
        Ok(_) => Err(format!("{}: not a directory, file or block device", t.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.is_dir() {
                Ok(TargetPlan::Scratch(ScratchFile::new(&dir)))
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

fn say(json_out: bool, msg: &str) {
    if !json_out {
        eprintln!("bench: {msg}");
    }
}

/// Runs the benchmark.
pub fn run(a: BenchArgs) -> ExitCode {
    let interrupt = match crate::interrupt::Interrupt::install() {
        Ok(i) => i,
        Err(e) => return err(format!("cannot install the signal handler: {e}"), a.json),
    };
    let stop = interrupt.flag();
    let threads = a.threads.unwrap_or_else(ops::default_threads).max(1);
    if let Some(d) = &a.device {
        if let Err(e) = diskstream_engine::source::Disk::open(d) {
            return err(format!("--device: {e}"), a.json);
        }
    }
    let target = match a.target.as_deref().map(|t| plan_target(t, a.force)).transpose() {
        Ok(t) => t,
        Err(e) => return err(e, a.json),
    };
    match measure(&a, threads, target.as_ref(), &stop) {
        Ok(out) => {
            tracing::info!("bench ended: ok");
            contract::done(Op::Bench, BenchResult(out), a.json)
        }
        Err(e) if stop.load(Ordering::Relaxed) => {
            drop(target);
            let msg = format!(
                "interrupted by {}; scratch files removed ({e})",
                interrupt.signal_name()
            );
            eprintln!("diskstream bench: {msg}");
            Failed::new(Op::Bench, Kind::Interrupted, msg)
                .signal(interrupt.signal_name(), interrupt.code())
                .emit(a.json)
        }
        Err(e) => err(e, a.json),
    }
}

fn measure(
    a: &BenchArgs,
    threads: usize,
    target: Option<&TargetPlan>,
    stop: &Arc<AtomicBool>,
) -> Result<Map<String, Value>, String> {
    let check = || {
        if stop.load(Ordering::Relaxed) {
            Err("interrupted".to_string())
        } else {
            Ok(())
        }
    };
    let dur = Duration::from_secs_f64(a.duration.clamp(0.05, 60.0));
    let mut rows: Vec<Row> = Vec::new();
    let mut out = Map::new();

    // CPU kernels on a realistic buffer.
    say(
        a.json,
        "CPU kernels on 64 MiB of realistic data (machine code, text, compressed data, zero runs)",
    );
    let data = bench::realistic_buffer(64 << 20, 1);
    let ratio = bench::lz4_ratio(&data);
    let cpu_info = CpuInfo::detect();
    say(a.json, &format!("CPU: {} ({})", cpu_info.model, cpu_info.features()));
    let mut kernels = Map::new();
    let mut worker_all = 0.0;
    let mut digest_all = 0.0;
    for k in Kernel::ALL {
        check()?;
        let one = bench::kernel_rate(&data, k, 1, dur).bytes_per_s();
        let all = bench::kernel_rate(&data, k, threads, dur).bytes_per_s();
        rows.push(Row {
            name: format!("cpu {} (1 core)", k.name()),
            bytes_per_s: one,
        });
        rows.push(Row {
            name: format!("cpu {} ({threads} threads)", k.name()),
            bytes_per_s: all,
        });
        kernels.insert(
            k.name().into(),
            json!({ "per_core_bytes_per_s": one, "all_cores_bytes_per_s": all }),
        );
        match k {
            Kernel::Worker(c) if c == a.checksum => worker_all = all,
            Kernel::Digest(c) if c == a.checksum => digest_all = all,
            _ => {}
        }
    }
    out.insert("kernels".into(), Value::Object(kernels));
    out.insert(
        "cpu".into(),
        json!({
            "model": cpu_info.model,
            "sha_ni": cpu_info.sha_ni,
            "avx2": cpu_info.avx2,
            "avx512f": cpu_info.avx512f,
        }),
    );
    out.insert("checksum".into(), json!(a.checksum.name()));
    out.insert("sample".into(), json!({ "bytes": data.len(), "lz4_ratio": ratio }));
    drop(data);

    // Device reads.
    let mut read_best = 0.0;
    if let Some(dev) = &a.device {
        say(
            a.json,
            &format!("O_DIRECT reads of {} through the io_uring ring", dev.display()),
        );
        let mut sweep = Vec::new();
        let mut best = (0.0, 0, 0);
        for chunk in SWEEP_CHUNK {
            for qd in SWEEP_QD {
                check()?;
                drop_caches();
                let r = bench::device_read(dev, a.size, qd, chunk, stop).map_err(|e| e.to_string())?;
                let bps = r.bytes_per_s();
                if a.verbose {
                    rows.push(Row {
                        name: format!("device read qd {qd} chunk {} MiB", chunk >> 20),
                        bytes_per_s: bps,
                    });
                }
                sweep.push(json!({ "queue_depth": qd, "chunk_size": chunk, "read_bytes_per_s": bps }));
                if bps > best.0 {
                    best = (bps, qd, chunk);
                }
            }
        }
        read_best = best.0;
        rows.push(Row {
            name: format!("device read (best: qd {} chunk {} MiB)", best.1, best.2 >> 20),
            bytes_per_s: best.0,
        });
        out.insert(
            "device".into(),
            json!({ "path": dev, "read_bytes_per_s": best.0, "best_queue_depth": best.1, "best_chunk_size": best.2, "sweep": sweep }),
        );
    }

    // Target writes.
    let mut write_rate = 0.0;
    let manifest = std::env::temp_dir().join(format!(".diskstream-bench-{}.manifest", std::process::id()));
    if let Some(t) = target {
        check()?;
        say(a.json, "O_DIRECT writes to the target");
        let r = match t {
            TargetPlan::Scratch(s) => bench::target_write(s.path(), a.size, WRITE_QD, ops::DEFAULT_CHUNK, stop),
            TargetPlan::Device(d) => bench::target_write(d, a.size, WRITE_QD, ops::DEFAULT_CHUNK, stop),
        }
        .map_err(|e| e.to_string())?;
        write_rate = r.bytes_per_s();
        rows.push(Row {
            name: format!("target write (qd {WRITE_QD}, {} MiB)", ops::DEFAULT_CHUNK >> 20),
            bytes_per_s: write_rate,
        });
        out.insert("target".into(), json!({ "write_bytes_per_s": write_rate }));
    }

    // The pipeline end to end.
    let mut pipe = Map::new();
    let (mut raw_pred, mut lz4_pred) = (0.0, 0.0);
    if let Some(dev) = &a.device {
        let tuning = Tuning {
            threads,
            stop: Some(Arc::clone(stop)),
            ..Tuning::default()
        };
        let o = CreateOptions {
            tuning: tuning.clone(),
            limit: Some(a.size),
            checksum: a.checksum,
            force: true,
            ..CreateOptions::default()
        };
        let scan = ScanOptions {
            tuning,
            limit: o.limit,
            checksum: o.checksum,
            ..ScanOptions::default()
        };
        let progress: Progress = Default::default();
        let dev_size = diskstream_engine::source::Disk::open(dev)
            .map_err(|e| e.to_string())?
            .size();
        for (name, compress) in [("raw_null", false), ("lz4_null", true)] {
            check()?;
            drop_caches();
            let (r, curve) = watched(&progress, || {
                ops::scan(
                    dev,
                    &ScanOptions {
                        compress,
                        ..scan.clone()
                    },
                    &progress,
                )
            });
            let r = r.map_err(|e| e.to_string())?;
            let full = record_pipeline(&mut rows, &mut pipe, name, &r, &curve, dev_size);
            if compress {
                lz4_pred = full;
            } else {
                raw_pred = full;
            }
        }
        if let Some(t) = target {
            for (name, format) in [("raw_target", Format::Raw), ("lz4_target", Format::Dsimg)] {
                check()?;
                drop_caches();
                let (out_path, scratch) = match t {
                    TargetPlan::Scratch(s) => (s.path().to_path_buf(), Some(s)),
                    TargetPlan::Device(d) => (d.clone(), None),
                };
                if format == Format::Dsimg && scratch.is_none() {
                    continue; // A dsimg is a file; a device target only measures raw.
                }
                let oo = CreateOptions {
                    format,
                    manifest: Some(manifest.clone()),
                    ..o.clone()
                };
                let (res, curve) = watched(&progress, || ops::create(dev, &out_path, &oo, &progress));
                if let Some(s) = scratch {
                    s.remove();
                }
                let _ = std::fs::remove_file(&manifest);
                let r = res.map_err(|e| e.to_string())?;
                let full = record_pipeline(&mut rows, &mut pipe, name, &r, &curve, dev_size);
                if format == Format::Raw {
                    raw_pred = full;
                } else {
                    lz4_pred = full;
                }
            }
        }
        out.insert("pipeline".into(), Value::Object(pipe));
    }

    // The verdict: the prediction is the measured end-to-end rate; the limit is the slowest stage.
    let mut verdict = Map::new();
    let digest_stage = format!("{} on all cores", a.checksum);
    let worker_stage = format!("zero check + {} + lz4 on all cores", a.checksum);
    let mut raw_limits: Vec<(&str, f64)> = vec![(&digest_stage, digest_all)];
    let mut lz4_limits: Vec<(&str, f64)> = vec![(&worker_stage, worker_all)];
    if a.device.is_some() {
        raw_limits.push(("device read", read_best));
        lz4_limits.push(("device read", read_best));
    }
    if target.is_some() {
        raw_limits.push(("target write", write_rate));
        lz4_limits.push(("target write (of lz4 output)", write_rate * ratio));
    }
    let (raw_lim, raw_lim_rate) = slowest(&raw_limits);
    let (lz4_lim, lz4_lim_rate) = slowest(&lz4_limits);
    if raw_pred == 0.0 {
        raw_pred = raw_lim_rate;
    }
    if lz4_pred == 0.0 {
        lz4_pred = lz4_lim_rate;
    }
    verdict.insert("raw_export_bytes_per_s".into(), json!(raw_pred));
    verdict.insert("raw_limited_by".into(), json!(raw_lim));
    verdict.insert("lz4_export_bytes_per_s".into(), json!(lz4_pred));
    verdict.insert("lz4_limited_by".into(), json!(lz4_lim));
    verdict.insert("measured_end_to_end".into(), json!(a.device.is_some()));
    verdict.insert("checksum".into(), json!(a.checksum.name()));
    out.insert("verdict".into(), Value::Object(verdict));
    out.insert("threads".into(), json!(threads));
    // The I/O buffers' memory shapes the device numbers (docs/performance.md, "Huge-page buffers").
    let pages = diskstream_engine::buf::pages_name(false);
    out.insert("buffer_pages".into(), json!(pages));
    out.insert(
        "units".into(),
        json!("bytes per second; MB = 10^6 bytes, MiB = 2^20 bytes"),
    );

    if !a.json {
        print_table(&rows);
        println!();
        let how = if a.device.is_some() {
            "measured end to end"
        } else {
            "estimated from the CPU stages"
        };
        println!("cpu: {} ({})", cpu_info.model, cpu_info.features());
        println!("verdict ({how}, {} chunk digests):", a.checksum);
        println!(
            "  raw export: {:>8.0} MB/s ({:>8.1} MiB/s), limited by {raw_lim}",
            raw_pred / 1e6,
            raw_pred / 1048576.0
        );
        println!(
            "  lz4 export: {:>8.0} MB/s ({:>8.1} MiB/s), limited by {lz4_lim}",
            lz4_pred / 1e6,
            lz4_pred / 1048576.0
        );
        if a.device.is_none() {
            println!("  (give --device and --target to measure the disks too)");
        }
        if pages == "4k" {
            println!(
                "  note: transparent huge pages are off here (/sys/kernel/mm/transparent_hugepage/enabled), so\n  \
                 I/O buffers are scattered 4 KiB pages and large reads may be split: expect slower device\n  \
                 stages (up to 2x on virtio); `image` commands can use reserved pages with --hugetlb"
            );
        }
    }
    Ok(out)
}

/// Adds a pipeline stage to the table and the JSON; returns its rate extrapolated to a whole device
/// of `dev_size` bytes (the prediction).
fn record_pipeline(
    rows: &mut Vec<Row>,
    pipe: &mut Map<String, Value>,
    name: &str,
    r: &ops::Report,
    curve: &Curve,
    dev_size: u64,
) -> f64 {
    let full = curve.extrapolate(r.disk_size, r.elapsed.as_secs_f64(), dev_size);
    rows.push(Row {
        name: format!("pipeline {name}"),
        bytes_per_s: r.throughput(),
    });
    pipe.insert(format!("{name}_bytes_per_s"), json!(r.throughput()));
    pipe.insert(format!("{name}_whole_device_bytes_per_s"), json!(full));
    full
}

/// Progress samples `(seconds, bytes)` of one pipeline run.
struct Curve(Vec<(f64, u64)>);

impl Curve {
    /// The rate a run over `whole` bytes would reach, from a run over `bytes` that took `secs`:
    /// the steady rate (from 20 % of the bytes to the last byte) plus the run's fixed cost (start
    /// up, final flush and sync), which a longer run amortises.
    fn extrapolate(&self, bytes: u64, secs: f64, whole: u64) -> f64 {
        let first = self.0.iter().find(|s| s.1 >= bytes / 5);
        let last = self.0.iter().find(|s| s.1 >= bytes);
        let steady = match (first, last) {
            (Some(a), Some(b)) if b.0 > a.0 && b.1 > a.1 => (b.1 - a.1) as f64 / (b.0 - a.0),
            _ => return bytes as f64 / secs.max(1e-9),
        };
        let fixed = (secs - bytes as f64 / steady).max(0.0);
        whole as f64 / (fixed + whole as f64 / steady)
    }
}

/// Runs `f` while sampling `progress` every 5 ms (reset to 0 first).
fn watched<T>(progress: &Progress, f: impl FnOnce() -> T) -> (T, Curve) {
    progress.store(0, Ordering::Relaxed);
    let done = AtomicBool::new(false);
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::new();
            while !done.load(Ordering::Relaxed) {
                v.push((t0.elapsed().as_secs_f64(), progress.load(Ordering::Relaxed)));
                std::thread::sleep(Duration::from_millis(5));
            }
            v.push((t0.elapsed().as_secs_f64(), progress.load(Ordering::Relaxed)));
            Curve(v)
        });
        let r = f();
        done.store(true, Ordering::Relaxed);
        (r, sampler.join().expect("sampler thread"))
    })
}

/// The slowest of the stages that bound an export.
fn slowest<'a>(v: &[(&'a str, f64)]) -> (&'a str, f64) {
    v.iter()
        .copied()
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .expect("at least one stage")
}

fn print_table(rows: &[Row]) {
    let max = rows.iter().map(|r| r.bytes_per_s).fold(0.0, f64::max).max(1.0);
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(10);
    println!(
        "{:width$}  {:>10}  {:>10}  relative to the fastest",
        "stage", "MB/s", "MiB/s"
    );
    for r in rows {
        let bar = "#".repeat(((r.bytes_per_s / max) * 40.0).round() as usize);
        println!(
            "{:width$}  {:>10.0}  {:>10.1}  {bar}",
            r.name,
            r.bytes_per_s / 1e6,
            r.bytes_per_s / 1048576.0
        );
    }
    if std::io::stdout().is_terminal() {
        println!("(MB = 10^6 bytes, MiB = 2^20 bytes)");
    }
}

/// Drops the page cache when root, so each read stage starts cold (as the export would).
fn drop_caches() {
    // Failure (not root) only makes the runs warmer. Written data is synced first and the device
    // gets a moment to settle, as the comparison scripts do before fio.
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    std::thread::sleep(Duration::from_millis(300));
}
