//! What the CLI prints: progress (an indicatif bar on a TTY, plain lines otherwise), results as
//! text or one JSON object, and errors with their exit code.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diskstream_engine::ops::{Info, Progress, Report};
use diskstream_engine::{Error, ErrorKind, Result};
use serde_json::json;

use crate::exit::EXIT_INTEGRITY;

/// Size of the disk behind `path`, for the progress bar (0 if unknown).
pub fn disk_size_hint(path: &Path) -> u64 {
    diskstream_engine::source::Disk::open(path)
        .map(|s| s.size())
        .unwrap_or(0)
}

/// Runs `f` while showing progress on stderr.
pub fn with_progress<T>(progress: &Progress, total: u64, what: &str, quiet: bool, f: impl FnOnce() -> T) -> T {
    let done = AtomicBool::new(false);
    let tty = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        let ticker = s.spawn(|| {
            if quiet && !tty {
                return;
            }
            let start = Instant::now();
            if tty {
                let bar = indicatif::ProgressBar::new(total.max(1));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(what.to_string());
                while !done.load(Ordering::Relaxed) {
                    bar.set_position(progress.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            } else {
                let mut last = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() >= Duration::from_secs(2) {
                        last = Instant::now();
                        let d = progress.load(Ordering::Relaxed);
                        let rate = d as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64;
                        let pct = (d * 100).checked_div(total).unwrap_or(0);
                        eprintln!("{what}: {} of {} MiB ({pct}%), {rate:.1} MiB/s", d >> 20, total >> 20);
                    }
                }
            }
        });
        let r = f();
        done.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        r
    })
}

/// Exit code for an error.
pub fn code_for(e: &Error) -> ExitCode {
    if e.is_integrity() {
        ExitCode::from(EXIT_INTEGRITY)
    } else {
        ExitCode::FAILURE
    }
}

/// Prints a plain error and fails.
pub fn fail_msg(msg: &str) -> ExitCode {
    eprintln!("diskstream: error: {msg}");
    ExitCode::FAILURE
}

/// Like [`finish`], but an operation stopped by SIGINT/SIGTERM says so ("interrupted by SIGINT;
/// partial output removed" where it writes) and exits 130/143.
pub fn finish_or_interrupted(
    res: Result<Report>,
    json_out: bool,
    interrupt: &crate::interrupt::Interrupt,
    writes: bool,
) -> ExitCode {
    match res {
        Err(e) if e.is_cancelled() && interrupt.signal().is_some() => {
            let msg = format!(
                "interrupted by {}{}",
                interrupt.signal_name(),
                if writes { "; partial output removed" } else { "" }
            );
            if json_out {
                println!("{}", json!({ "ok": false, "error": msg, "kind": "interrupted" }));
            }
            eprintln!("diskstream: {msg}");
            interrupt.exit_code()
        }
        res => finish(res, json_out),
    }
}

fn fail(e: &Error, json_out: bool) -> ExitCode {
    if json_out {
        // An interruption is named as such only when a signal caused it (finish_or_interrupted).
        let kind = match e.kind() {
            ErrorKind::Cancelled => "error",
            k => k.as_str(),
        };
        println!("{}", json!({ "ok": false, "error": e.to_string(), "kind": kind }));
    }
    eprintln!("diskstream: error: {e}");
    code_for(e)
}

fn opt_str<T: std::fmt::Display>(v: &Option<T>) -> serde_json::Value {
    v.as_ref().map_or(serde_json::Value::Null, |x| json!(x.to_string()))
}

/// `value` (a serialized [`Report`] or [`Info`]) with `"ok": true` added.
fn ok_json(value: impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(value).expect("a report serializes");
    if let Some(m) = v.as_object_mut() {
        m.insert("ok".into(), json!(true));
    }
    v
}

/// The JSON form of a report.
pub fn report_json(r: &Report) -> serde_json::Value {
    ok_json(r)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Prints the result of an operation and returns the exit code.
pub fn finish(res: Result<Report>, json_out: bool) -> ExitCode {
    let r = match res {
        Ok(r) => r,
        Err(e) => return fail(&e, json_out),
    };
    for w in &r.warnings {
        eprintln!("diskstream: warning: {w}");
    }
    if json_out {
        println!("{}", report_json(&r));
        return ExitCode::SUCCESS;
    }
    let fmt = r.format.map_or("-".into(), |f| f.to_string());
    match r.op {
        "create" => println!(
            "created {} ({fmt}) from {}: {} disk, {} stored, {} zero skipped",
            r.output.as_deref().unwrap_or(Path::new("-")).display(),
            r.input.display(),
            mib(r.disk_size),
            mib(r.bytes_stored),
            mib(r.zero_bytes)
        ),
        "scan" => println!(
            "scanned {}: {} disk, {} would be stored, {} zero",
            r.input.display(),
            mib(r.disk_size),
            mib(r.bytes_stored),
            mib(r.zero_bytes)
        ),
        "verify" => println!("verified {} ({fmt}): all {} chunks match", r.input.display(), r.chunks),
        _ => println!(
            "restored {} to {}: {} disk, every chunk checked",
            r.input.display(),
            r.output.as_deref().unwrap_or(Path::new("-")).display(),
            mib(r.disk_size)
        ),
    }
    println!(
        "  {:.1} MiB/s in {:.2} s, backend {} (read) / {} (write), O_DIRECT in={} out={}, buffers {}",
        r.throughput() / (1u64 << 20) as f64,
        r.elapsed.as_secs_f64(),
        opt_str(&r.backend).as_str().unwrap_or("-"),
        opt_str(&r.write_backend).as_str().unwrap_or("-"),
        r.input_direct,
        r.output_direct,
        r.buffer_pages.unwrap_or("-")
    );
    println!("  {} {}", r.checksum, r.digest);
    ExitCode::SUCCESS
}

/// Prints `info`.
pub fn info(res: Result<Info>, json_out: bool) -> ExitCode {
    let i = match res {
        Ok(i) => i,
        Err(e) => return fail(&e, json_out),
    };
    if json_out {
        println!("{}", ok_json(&i));
        return ExitCode::SUCCESS;
    }
    println!("format:      {}", i.format);
    println!("disk size:   {} bytes ({})", i.disk_size, mib(i.disk_size));
    println!("chunk size:  {} bytes", i.chunk_size);
    println!(
        "chunks:      {} ({} stored raw, {} lz4, {} zero)",
        i.chunks, i.data_chunks, i.lz4_chunks, i.zero_chunks
    );
    println!(
        "stored:      {} bytes of payload, file {} bytes",
        i.stored_bytes, i.file_len
    );
    println!("checksum:    {}", i.checksum);
    println!("digest:      {}", i.digest);
    if let Some(m) = i.manifest {
        println!("manifest:    {}", m.display());
    }
    ExitCode::SUCCESS
}
