//! What the CLI prints: progress (an indicatif bar on a TTY, plain lines otherwise), results as
//! text or one JSON object, and errors with their exit code.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diskstream_engine::ops::{Info, Progress, Report};
use diskstream_engine::{Error, ErrorKind, Result};
use serde_json::json;

use crate::contract::{self, Event, Failed, Kind, Op, ProgressEvent};
use crate::logging::escape_controls;

/// Size of the disk behind `path`, for the progress bar (0 if unknown).
pub fn disk_size_hint(path: &Path) -> u64 {
    diskstream_engine::source::Disk::open(path)
        .map(|s| s.size())
        .unwrap_or(0)
}

/// How an image command shows its progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// A bar on a terminal, else a line every 2 s.
    Human,
    /// Nothing (`-q`, or `--json` without a terminal).
    Quiet,
    /// One JSON object per line (`--progress json`), every second and once at the end.
    Json,
}

/// Runs `f` while showing progress on stderr (without, and saying so, if the thread that shows
/// it cannot be started: a pids cgroup's limit).
pub fn with_progress<T>(progress: &Progress, total: u64, op: Op, show: Show, f: impl FnOnce() -> T) -> T {
    let done = AtomicBool::new(false);
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let r = std::thread::scope(|s| {
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn_scoped(s, || match show {
                Show::Quiet => {}
                Show::Json => tick(&done, Duration::from_secs(1), || {
                    json_progress(op, progress, total, start)
                }),
                Show::Human if tty => bar(progress, total, op, &done),
                Show::Human => tick(&done, Duration::from_secs(2), || {
                    let d = progress.load(Ordering::Relaxed);
                    let rate = d as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64;
                    let pct = (d * 100).checked_div(total).unwrap_or(0);
                    let what = op.name();
                    errln!("{what}: {} of {} MiB ({pct}%), {rate:.1} MiB/s", d >> 20, total >> 20);
                }),
            });
        if let Err(e) = &ticker {
            tracing::warn!("no progress display: cannot start its thread: {e}");
        }
        let r = f();
        done.store(true, Ordering::Relaxed);
        if let Ok(t) = ticker {
            let _ = t.join();
        }
        r
    });
    if show == Show::Json {
        json_progress(op, progress, total, start);
    }
    r
}

/// Calls `every` each `period` until `done`.
fn tick(done: &AtomicBool, period: Duration, mut every: impl FnMut()) {
    let mut last = Instant::now();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= period {
            last = Instant::now();
            every();
        }
    }
}

/// An indicatif bar until `done`.
fn bar(progress: &Progress, total: u64, op: Op, done: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(total.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(op.name());
    while !done.load(Ordering::Relaxed) {
        bar.set_position(progress.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// One `--progress json` line.
fn json_progress(op: Op, progress: &Progress, total: u64, start: Instant) {
    let d = progress.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let rate = d as f64 / secs;
    let known = total > 0;
    contract::emit_event(&Event::Progress(ProgressEvent {
        op,
        time: contract::now(),
        disk: None,
        label: None,
        done_bytes: d,
        total_bytes: total,
        bytes_per_s: rate,
        percent: known.then(|| (d as f64 * 100.0 / total as f64).min(100.0)),
        eta_s: (known && rate > 0.0).then(|| total.saturating_sub(d) as f64 / rate),
        line: None,
    }));
}

/// The JSON kind of an engine error (a cancellation is named "interrupted" only where a signal
/// caused it: [`finish_or_interrupted`]).
pub fn kind_of(e: &Error) -> Kind {
    match e.kind() {
        ErrorKind::Integrity => Kind::Integrity,
        ErrorKind::Mismatch => Kind::Mismatch,
        _ => Kind::Error,
    }
}

/// Prints an error found before the operation started (`kind`: usage for a bad flag value).
pub fn fail_msg(op: Op, kind: Kind, msg: &str, json: bool) -> ExitCode {
    errln!("diskstream: error: {}", escape_controls(msg));
    Failed::new(op, kind, msg).emit(json)
}

/// Like [`finish`], but an operation stopped by SIGINT/SIGTERM says so ("interrupted by SIGINT;
/// partial output removed" where it writes a file; what became of a block device it was
/// writing in place) and exits 130/143.
pub fn finish_or_interrupted(
    res: Result<Report>,
    op: Op,
    json_out: bool,
    interrupt: &crate::interrupt::Interrupt,
    writes: bool,
) -> ExitCode {
    match res {
        Err(e) if e.is_cancelled() && interrupt.signal().is_some() => {
            let what = match e.device_written() {
                Some(device) => format!("; {device}"),
                None if writes => "; partial output removed".into(),
                None => String::new(),
            };
            let msg = format!("interrupted by {}{what}", interrupt.signal_name());
            errln!("diskstream: {}", escape_controls(&msg));
            Failed::new(op, Kind::Interrupted, msg)
                .signal(interrupt.signal_name(), interrupt.code())
                .emit(json_out)
        }
        res => finish(res, op, json_out),
    }
}

fn fail(e: &Error, op: Op, json_out: bool) -> ExitCode {
    errln!("diskstream: error: {}", escape_controls(&e.to_string()));
    Failed::new(op, kind_of(e), e.to_string()).emit(json_out)
}

fn opt_str<T: std::fmt::Display>(v: &Option<T>) -> serde_json::Value {
    v.as_ref().map_or(serde_json::Value::Null, |x| json!(x.to_string()))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Prints the result of an operation and returns the exit code.
pub fn finish(res: Result<Report>, op: Op, json_out: bool) -> ExitCode {
    let r = match res {
        Ok(r) => r,
        Err(e) => return fail(&e, op, json_out),
    };
    for w in &r.warnings {
        tracing::warn!("{}: {w}", op.name());
    }
    tracing::info!(
        input = %r.input.display(),
        output = %r.output.as_deref().unwrap_or(Path::new("-")).display(),
        disk_bytes = r.disk_size,
        stored_bytes = r.bytes_stored,
        zero_bytes = r.zero_bytes,
        elapsed_s = r.elapsed.as_secs_f64(),
        bytes_per_s = r.throughput_bytes_per_s,
        "{} ended: ok",
        op.name()
    );
    if json_out {
        return contract::done(op, &r, true);
    }
    let fmt = r.format.map_or("-".into(), |f| f.to_string());
    match r.op {
        "create" => outln!(
            "created {} ({fmt}) from {}: {} disk, {} stored, {} zero skipped",
            shown(r.output.as_deref().unwrap_or(Path::new("-"))),
            shown(&r.input),
            mib(r.disk_size),
            mib(r.bytes_stored),
            mib(r.zero_bytes)
        ),
        "scan" => outln!(
            "scanned {}: {} disk, {} would be stored, {} zero",
            shown(&r.input),
            mib(r.disk_size),
            mib(r.bytes_stored),
            mib(r.zero_bytes)
        ),
        "verify" => outln!("verified {} ({fmt}): all {} chunks match", shown(&r.input), r.chunks),
        _ => outln!(
            "restored {} to {}: {} disk, every chunk checked",
            shown(&r.input),
            shown(r.output.as_deref().unwrap_or(Path::new("-"))),
            mib(r.disk_size)
        ),
    }
    outln!(
        "  {:.1} MiB/s in {:.2} s, backend {} (read) / {} (write), O_DIRECT in={} out={}, buffers {}",
        r.throughput() / (1u64 << 20) as f64,
        r.elapsed.as_secs_f64(),
        opt_str(&r.backend).as_str().unwrap_or("-"),
        opt_str(&r.write_backend).as_str().unwrap_or("-"),
        r.input_direct,
        r.output_direct,
        r.buffer_pages.unwrap_or("-")
    );
    outln!("  {} {}", r.checksum, r.digest);
    ExitCode::SUCCESS
}

/// Prints `info`.
pub fn info(res: Result<Info>, json_out: bool) -> ExitCode {
    let i = match res {
        Ok(i) => i,
        Err(e) => return fail(&e, Op::ImageInfo, json_out),
    };
    if json_out {
        return contract::done(Op::ImageInfo, &i, true);
    }
    outln!("format:      {}", i.format);
    outln!("disk size:   {} bytes ({})", i.disk_size, mib(i.disk_size));
    outln!("chunk size:  {} bytes", i.chunk_size);
    outln!(
        "chunks:      {} ({} stored raw, {} lz4, {} zero)",
        i.chunks,
        i.data_chunks,
        i.lz4_chunks,
        i.zero_chunks
    );
    outln!(
        "stored:      {} bytes of payload, file {} bytes",
        i.stored_bytes,
        i.file_len
    );
    outln!("checksum:    {}", i.checksum);
    let from = match i.format {
        diskstream_engine::ops::Format::Dsimg => "the image's trailer",
        diskstream_engine::ops::Format::Raw => "the manifest",
    };
    outln!(
        "digest:      {} (recorded in {from}, not verified: `image verify` checks it)",
        i.digest
    );
    if let Some(m) = i.manifest {
        outln!("manifest:    {}", shown(&m));
    }
    ExitCode::SUCCESS
}

/// A path for a human line: control characters escaped, bytes that are not UTF-8 as U+FFFD.
fn shown(p: &Path) -> Cow<'_, str> {
    match p.to_string_lossy() {
        Cow::Borrowed(s) => escape_controls(s),
        Cow::Owned(s) => Cow::Owned(escape_controls(&s).into_owned()),
    }
}
