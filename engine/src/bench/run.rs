//! One `diskstream bench` run as a library call: [`BenchPlan`] in, [`BenchReport`] out (every
//! stage measured, the table rows, the [`Verdict`]); a frontend only renders it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::verdict::{Curve, Limits, Verdict};
use super::{device_read, kernel_rate, lz4_ratio, realistic_buffer, target_write, CpuInfo, Kernel, ScratchFile};
use crate::digest::Checksum;
use crate::format::Format;
use crate::ops::{self, CreateOptions, Report, ScanOptions};
use crate::stop::{Progress, StopFlag};
use crate::tuning::{Tuning, DEFAULT_CHUNK, DEFAULT_WRITE_DEPTH};

/// Queue depths and chunk sizes the device read sweep tries.
const SWEEP_QD: [u32; 4] = [1, 4, 16, 32];
const SWEEP_CHUNK: [u32; 2] = [1 << 20, 4 << 20];

/// Where the write stages go.
#[derive(Debug)]
pub enum BenchTarget {
    /// A scratch file (in a directory, or at a new path), removed afterwards.
    Scratch(ScratchFile),
    /// A block device written in place (the caller's `--force`).
    Device(PathBuf),
}

/// What to measure.
#[derive(Debug)]
pub struct BenchPlan {
    /// Block device or file to read (device and pipeline stages).
    pub device: Option<PathBuf>,
    /// Where to write (target and pipeline-to-target stages).
    pub target: Option<BenchTarget>,
    /// Bytes per device measurement.
    pub size: u64,
    /// Time per CPU kernel measurement.
    pub duration: Duration,
    /// Threads for "all cores".
    pub threads: usize,
    /// The chunk digest of the pipeline stages and the verdict.
    pub checksum: Checksum,
    /// Keep every point of the device sweep in the table.
    pub verbose: bool,
    /// Drop the page cache before each read stage (needs root; otherwise runs are warmer).
    pub drop_caches: bool,
}

impl BenchPlan {
    /// Refuses, before any stage, a device target that is the device this bench reads (or
    /// shares its data): the target stage writes it in place, long before the pipeline stage's
    /// own output checks would refuse it.
    fn check_target(&self) -> Result<(), String> {
        if let (Some(dev), Some(BenchTarget::Device(t))) = (&self.device, &self.target) {
            if crate::sink::target::same_file(dev, t) {
                return Err(format!(
                    "{}: is the device this bench reads (--device {}), or shares its data; refusing to write over it",
                    t.display(),
                    dev.display()
                ));
            }
        }
        Ok(())
    }
}

/// One measured stage, for a table.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Its rate.
    pub bytes_per_s: f64,
}

/// A kernel's rate on one core and on all.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct KernelRates {
    /// One core.
    pub per_core_bytes_per_s: f64,
    /// All cores (`threads`).
    pub all_cores_bytes_per_s: f64,
}

/// The CPU as the verdict sees it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct CpuJson {
    /// Model name.
    pub model: String,
    /// SHA extensions.
    pub sha_ni: bool,
    /// AVX2.
    pub avx2: bool,
    /// AVX-512 F.
    pub avx512f: bool,
}

/// The data the CPU kernels ran on.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Sample {
    /// Its size.
    pub bytes: usize,
    /// Disk bytes per lz4 output byte.
    pub lz4_ratio: f64,
}

/// One point of the device sweep.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SweepPoint {
    /// Reads in flight.
    pub queue_depth: u32,
    /// Bytes per read.
    pub chunk_size: u32,
    /// The rate.
    pub read_bytes_per_s: f64,
}

/// The device stage.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeviceJson {
    /// The device or file read.
    #[serde(serialize_with = "crate::report::lossy_path")]
    pub path: PathBuf,
    /// The best rate of the sweep.
    pub read_bytes_per_s: f64,
    /// Its queue depth.
    pub best_queue_depth: u32,
    /// Its chunk size.
    pub best_chunk_size: u32,
    /// Every point.
    pub sweep: Vec<SweepPoint>,
}

/// The target stage.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TargetJson {
    /// O_DIRECT write rate.
    pub write_bytes_per_s: f64,
}

/// Everything a bench run measured.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BenchReport {
    /// Per kernel name.
    pub kernels: BTreeMap<String, KernelRates>,
    /// The CPU.
    pub cpu: CpuJson,
    /// The chunk digest of the pipeline and the verdict.
    pub checksum: &'static str,
    /// The kernels' data.
    pub sample: Sample,
    /// The device stage, if a device was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceJson>,
    /// The target stage, if a target was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetJson>,
    /// The pipeline stages: `NAME_bytes_per_s` and `NAME_whole_device_bytes_per_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<BTreeMap<String, f64>>,
    /// What limits an export.
    pub verdict: Verdict,
    /// Threads of the "all cores" stages.
    pub threads: usize,
    /// What the I/O buffers are made of (hugetlb, thp, 4k).
    pub buffer_pages: &'static str,
    /// How to read the numbers.
    pub units: &'static str,
    /// The stages in the order measured, for a table.
    #[serde(skip)]
    pub rows: Vec<Row>,
}

/// The target stage: O_DIRECT writes of `plan.size` bytes to `t`.
fn target_stage(plan: &BenchPlan, t: &BenchTarget, stop: &StopFlag, rows: &mut Vec<Row>) -> Result<TargetJson, String> {
    // Only a device the user named (with --force) is written in place.
    let (path, force) = match t {
        BenchTarget::Scratch(s) => (s.path(), false),
        BenchTarget::Device(d) => (d.as_path(), true),
    };
    let r =
        target_write(path, force, plan.size, DEFAULT_WRITE_DEPTH, DEFAULT_CHUNK, stop).map_err(|e| e.to_string())?;
    rows.push(Row {
        name: format!("target write (qd {DEFAULT_WRITE_DEPTH}, {} MiB)", DEFAULT_CHUNK >> 20),
        bytes_per_s: r.bytes_per_s(),
    });
    Ok(TargetJson {
        write_bytes_per_s: r.bytes_per_s(),
    })
}

/// Measures what `plan` asks for. `say` gets a line as each stage starts; `stop` ends the run at
/// the next stage (an error "interrupted").
pub fn run(plan: &BenchPlan, stop: &StopFlag, say: &mut dyn FnMut(&str)) -> Result<BenchReport, String> {
    plan.check_target()?;
    let check = || {
        if stop.load(Ordering::Relaxed) {
            Err("interrupted".to_string())
        } else {
            Ok(())
        }
    };
    let mut rows = Vec::new();
    say("CPU kernels on 64 MiB of realistic data (machine code, text, compressed data, zero runs)");
    let data = realistic_buffer(64 << 20, 1);
    let ratio = lz4_ratio(&data);
    let cpu = CpuInfo::detect();
    say(&format!("CPU: {} ({})", cpu.model, cpu.features()));
    let mut kernels = BTreeMap::new();
    let mut limits = Limits {
        lz4_ratio: ratio,
        ..Limits::default()
    };
    for k in Kernel::ALL {
        check()?;
        let rate = |threads| kernel_rate(&data, k, threads, plan.duration).map_err(|e| e.to_string());
        let (one, all) = (rate(1)?.bytes_per_s(), rate(plan.threads)?.bytes_per_s());
        rows.push(Row {
            name: format!("cpu {} (1 core)", k.name()),
            bytes_per_s: one,
        });
        rows.push(Row {
            name: format!("cpu {} ({} threads)", k.name(), plan.threads),
            bytes_per_s: all,
        });
        kernels.insert(
            k.name().to_string(),
            KernelRates {
                per_core_bytes_per_s: one,
                all_cores_bytes_per_s: all,
            },
        );
        match k {
            Kernel::Worker(c) if c == plan.checksum => limits.worker_all = all,
            Kernel::Digest(c) if c == plan.checksum => limits.digest_all = all,
            _ => {}
        }
    }
    let sample = Sample {
        bytes: data.len(),
        lz4_ratio: ratio,
    };
    drop(data);
    let device = match &plan.device {
        Some(dev) => Some(sweep_device(plan, dev, stop, &mut rows, say)?),
        None => None,
    };
    limits.device_read = device.as_ref().map(|d| d.read_bytes_per_s);
    let target = match &plan.target {
        Some(t) => {
            check()?;
            say("O_DIRECT writes to the target");
            Some(target_stage(plan, t, stop, &mut rows)?)
        }
        None => None,
    };
    limits.target_write = target.as_ref().map(|t| t.write_bytes_per_s);
    let pipeline = match &plan.device {
        Some(dev) => Some(run_pipeline(plan, dev, stop, &mut rows, &mut limits)?),
        None => None,
    };
    Ok(BenchReport {
        kernels,
        cpu: CpuJson {
            model: cpu.model.clone(),
            sha_ni: cpu.sha_ni,
            avx2: cpu.avx2,
            avx512f: cpu.avx512f,
        },
        checksum: plan.checksum.name(),
        sample,
        device,
        target,
        pipeline,
        verdict: Verdict::decide(plan.checksum, &limits),
        threads: plan.threads,
        buffer_pages: crate::buf::pages_name(false),
        units: "bytes per second; MB = 10^6 bytes, MiB = 2^20 bytes",
        rows,
    })
}

fn sweep_device(
    plan: &BenchPlan,
    dev: &std::path::Path,
    stop: &StopFlag,
    rows: &mut Vec<Row>,
    say: &mut dyn FnMut(&str),
) -> Result<DeviceJson, String> {
    say(&format!(
        "O_DIRECT reads of {} through the io_uring ring",
        dev.display()
    ));
    let mut sweep = Vec::new();
    let mut best = (0.0, 0, 0);
    for chunk in SWEEP_CHUNK {
        for qd in SWEEP_QD {
            if stop.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            drop_caches(plan);
            let bps = device_read(dev, plan.size, qd, chunk, stop)
                .map_err(|e| e.to_string())?
                .bytes_per_s();
            if plan.verbose {
                rows.push(Row {
                    name: format!("device read qd {qd} chunk {} MiB", chunk >> 20),
                    bytes_per_s: bps,
                });
            }
            sweep.push(SweepPoint {
                queue_depth: qd,
                chunk_size: chunk,
                read_bytes_per_s: bps,
            });
            if bps > best.0 {
                best = (bps, qd, chunk);
            }
        }
    }
    rows.push(Row {
        name: format!("device read (best: qd {} chunk {} MiB)", best.1, best.2 >> 20),
        bytes_per_s: best.0,
    });
    Ok(DeviceJson {
        path: dev.to_path_buf(),
        read_bytes_per_s: best.0,
        best_queue_depth: best.1,
        best_chunk_size: best.2,
        sweep,
    })
}

/// The pipeline end to end: into a null sink (raw and lz4), then into the target; each run's
/// rate extrapolated to the whole device becomes the prediction.
fn run_pipeline(
    plan: &BenchPlan,
    dev: &std::path::Path,
    stop: &StopFlag,
    rows: &mut Vec<Row>,
    limits: &mut Limits,
) -> Result<BTreeMap<String, f64>, String> {
    let mut pipe = BTreeMap::new();
    let tuning = Tuning {
        threads: plan.threads,
        stop: Some(Arc::clone(stop)),
        ..Tuning::default()
    };
    let create = CreateOptions {
        tuning: tuning.clone(),
        limit: Some(plan.size),
        checksum: plan.checksum,
        // The target stages set it: only a device the user named is written with force.
        force: false,
        ..CreateOptions::default()
    };
    let scan = ScanOptions {
        tuning,
        limit: create.limit,
        checksum: create.checksum,
        ..ScanOptions::default()
    };
    let progress: Progress = Default::default();
    let dev_size = crate::disk::Disk::open(dev).map_err(|e| e.to_string())?.size();
    let mut record = |name: &str, r: &Report, curve: &Curve| {
        let full = curve.extrapolate(r.disk_size, r.elapsed.as_secs_f64(), dev_size);
        rows.push(Row {
            name: format!("pipeline {name}"),
            bytes_per_s: r.throughput(),
        });
        pipe.insert(format!("{name}_bytes_per_s"), r.throughput());
        pipe.insert(format!("{name}_whole_device_bytes_per_s"), full);
        full
    };
    for (name, compress) in [("raw_null", false), ("lz4_null", true)] {
        drop_caches(plan);
        let o = ScanOptions {
            compress,
            ..scan.clone()
        };
        let (r, curve) = watched(&progress, || ops::scan(dev, &o, &progress))?;
        let full = record(name, &r.map_err(|e| e.to_string())?, &curve);
        *if compress {
            &mut limits.lz4_measured
        } else {
            &mut limits.raw_measured
        } = Some(full);
    }
    let Some(t) = &plan.target else {
        return Ok(pipe);
    };
    // The manifest goes into a private directory of its own (a fresh name in $TMPDIR, made
    // exclusively, as the scratch file's), never to a predictable name in a shared directory.
    let side = ScratchFile::new(&std::env::temp_dir()).map_err(|e| {
        format!(
            "{}: cannot make a scratch directory: {e}",
            std::env::temp_dir().display()
        )
    })?;
    let manifest = side.file("manifest");
    for (name, format) in [("raw_target", Format::Raw), ("lz4_target", Format::Dsimg)] {
        let (out_path, scratch) = match t {
            BenchTarget::Scratch(s) => (s.path().to_path_buf(), Some(s)),
            BenchTarget::Device(d) => (d.clone(), None),
        };
        if format == Format::Dsimg && scratch.is_none() {
            continue; // A dsimg is a file; a device target only measures raw.
        }
        drop_caches(plan);
        let o = CreateOptions {
            format,
            manifest: Some(manifest.clone()),
            force: scratch.is_none(),
            ..create.clone()
        };
        let (res, curve) = watched(&progress, || ops::create(dev, &out_path, &o, &progress))?;
        if let Some(s) = scratch {
            s.remove();
        }
        let _ = std::fs::remove_file(&manifest);
        let full = record(name, &res.map_err(|e| e.to_string())?, &curve);
        *if format == Format::Raw {
            &mut limits.raw_measured
        } else {
            &mut limits.lz4_measured
        } = Some(full);
    }
    Ok(pipe)
}

/// Runs `f` while sampling `progress` every 5 ms (reset to 0 first); an error if the sampling
/// thread cannot be started (`f` then does not run).
fn watched<T>(progress: &Progress, f: impl FnOnce() -> T) -> Result<(T, Curve), String> {
    progress.store(0, Ordering::Relaxed);
    let done = AtomicBool::new(false);
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        let sampler = crate::pipeline::spawn(s, "bench-sampler", || {
            let mut v = Vec::new();
            while !done.load(Ordering::Relaxed) {
                v.push((t0.elapsed().as_secs_f64(), progress.load(Ordering::Relaxed)));
                std::thread::sleep(Duration::from_millis(5));
            }
            v.push((t0.elapsed().as_secs_f64(), progress.load(Ordering::Relaxed)));
            Curve(v)
        });
        let sampler = sampler.map_err(|e| crate::pipeline::spawn_error(0, 1, &e).to_string())?;
        let r = f();
        done.store(true, Ordering::Relaxed);
        Ok((r, sampler.join().expect("sampler thread")))
    })
}

/// Drops the page cache (when asked and allowed), so each read stage starts cold, as an export
/// would: written data is synced first and the device gets a moment to settle.
fn drop_caches(plan: &BenchPlan) {
    if plan.drop_caches {
        let _ = std::process::Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        std::thread::sleep(Duration::from_millis(300));
    }
}
