//! The cluster commands: `export`, `list`, `remove` (Ganeti's `gnt-backup`) and the cluster
//! `demo`, and how their job messages, progress and results are printed.
//!
//! Job messages are printed as the Ganeti CLI prints them (`Thu May  5 12:28:52 2011 Shutting
//! down instance X`, warnings with ` - WARNING: `; times in UTC) on stdout, or on stderr when
//! `--json` keeps stdout for the result. `--progress json` prints one JSON object per event
//! instead. When stderr is a terminal (and `--progress json` is not given), disk progress is
//! shown as one indicatif bar per disk on stderr (bytes, rate, ETA) instead of the periodic
//! "disk/0 sent ..." lines; the other messages still print as lines, above the bars. Errors
//! print Ganeti's report (`Failure: prerequisites not met ...`) on stderr.
//!
//! `export` and `remove` install the SIGINT/SIGTERM handler ([`crate::interrupt`]): the flag
//! it sets reaches lock waits, hooks (their process groups are killed), the shutdown wait and
//! the engine; the operation undoes what it started (staging directory, snapshots, a stopped
//! instance is started again) and the command exits 130 (SIGINT) or 143 (SIGTERM) with a
//! message saying where it stopped (`"interrupted": true` in the `--json` result). `list` only
//! reads and keeps the default signal behaviour.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use diskstream_engine::buf::Pages;
use diskstream_engine::error::ErrorKind as EngineKind;
use diskstream_orchestrator::backup::{self, ExportLu, ExportMode, ExportOp, ExportResult, RemoveLu, RunOptions};
use diskstream_orchestrator::cluster::Cluster;
use diskstream_orchestrator::feedback::{format_seconds, log_line, DiskProgress, Event, Feedback, Level};
use diskstream_orchestrator::{Ecode, ErrorKind, OpError};
use serde::Serialize;

use crate::exit::EXIT_INTEGRITY;
use crate::interrupt::Interrupt;

/// The default cluster config: `$DISKSTREAM_CLUSTER`, else `./cluster.toml`.
fn cluster_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("DISKSTREAM_CLUSTER").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cluster.toml"))
}

/// `diskstream export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Target node (required; short names are expanded).
    #[arg(short = 'n', long = "node")]
    node: Option<String>,
    /// Do not shut the instance down (snapshot it live; needs snapshot-capable disks).
    #[arg(long)]
    noshutdown: bool,
    /// Seconds to wait for the instance to stop before it is killed.
    #[arg(long, default_value_t = backup::DEFAULT_SHUTDOWN_TIMEOUT)]
    shutdown_timeout: u64,
    /// Remove the instance (disks and config entry) after a successful export.
    #[arg(long)]
    remove_instance: bool,
    /// With --remove-instance: only warn if the disks cannot be removed.
    #[arg(long)]
    ignore_remove_failures: bool,
    /// Allow the instance to stay down for the whole transfer if its disks cannot be snapshotted.
    #[arg(long)]
    long_sleep: bool,
    /// Transport compression tool: none, or one of the cluster's compression_tools.
    #[arg(long, default_value = "none")]
    transport_compression: String,
    /// Disks transferred at the same time.
    #[arg(long, default_value_t = 1)]
    max_parallel_disks: usize,
    /// Take the engine's buffers from reserved hugetlb pages (vm.nr_hugepages) when enough are
    /// free, else transparent huge pages as by default.
    #[arg(long)]
    hugetlb: bool,
    /// Chunk digest recorded in each dump's manifest: blake3 (fast on every CPU) or sha256.
    #[arg(long, default_value = "blake3")]
    checksum: diskstream_engine::digest::Checksum,
    /// Check everything and run the pre hooks, but export nothing.
    #[arg(long)]
    dry_run: bool,
    /// Cluster config (default: $DISKSTREAM_CLUSTER, else ./cluster.toml).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Print one JSON object per event instead of text lines.
    #[arg(long, value_parser = ["json"])]
    progress: Option<String>,
    /// Print the result as one JSON object on stdout (messages go to stderr).
    #[arg(long)]
    json: bool,
    /// Not supported (refused with an explanation).
    #[arg(long)]
    zero_free_space: bool,
    /// Not supported (only valid with --zero-free-space).
    #[arg(long)]
    zeroing_timeout_fixed: Option<u64>,
    /// Not supported (only valid with --zero-free-space).
    #[arg(long)]
    zeroing_timeout_per_mib: Option<f64>,
    /// Export mode; only local is supported.
    #[arg(long, default_value = "local", value_parser = ["local", "remote"])]
    mode: String,
    /// Longest wait for a lock, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    lock_timeout: f64,
    /// Per-script hook timeout in seconds: a script running longer is killed (its process
    /// group) and counts as failed (default: the cluster's hooks_timeout, else 900).
    #[arg(long, value_parser = parse_hooks_timeout)]
    hooks_timeout: Option<f64>,
    /// Seconds between progress lines of a disk transfer (default 5; 0.2 for the progress bars
    /// shown when stderr is a terminal).
    #[arg(long)]
    progress_interval: Option<f64>,
    /// The instance.
    instance: String,
}

/// `diskstream list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only these nodes (repeatable).
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Do not print the header line.
    #[arg(long)]
    no_headers: bool,
    /// Separate fields with this string instead of padding.
    #[arg(long)]
    separator: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Cluster config (default: $DISKSTREAM_CLUSTER, else ./cluster.toml).
    #[arg(long)]
    cluster: Option<PathBuf>,
}

/// `diskstream remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The instance (or the FQDN of a deleted instance).
    instance: String,
    /// Cluster config (default: $DISKSTREAM_CLUSTER, else ./cluster.toml).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Longest wait for a lock, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    lock_timeout: f64,
}

/// One progress bar per disk, on stderr, for a terminal.
struct Bars {
    multi: indicatif::MultiProgress,
    /// The bars by disk index, created when a disk's first progress sample arrives.
    bars: Mutex<Vec<Option<indicatif::ProgressBar>>>,
}

impl Bars {
    /// Bars if stderr is a terminal, else `None` (plain lines).
    fn for_stderr() -> Option<Self> {
        std::io::stderr().is_terminal().then(|| Self {
            multi: indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()),
            bars: Mutex::new(Vec::new()),
        })
    }

    fn update(&self, p: &DiskProgress) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if bars.len() <= p.index {
            bars.resize(p.index + 1, None);
        }
        let bar = bars[p.index].get_or_insert_with(|| {
            let bar = self.multi.add(indicatif::ProgressBar::new(p.total_bytes.max(1)));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(p.label.clone());
            bar
        });
        // Rate and ETA of the whole disk so far, as in Ganeti's "disk/0 sent ..." lines
        // (indicatif's own estimate starts from the first sample and overshoots).
        let rate = format!("{:.1} MiB/s", p.progress.throughput);
        bar.set_position(p.done_bytes);
        if p.total_bytes > 0 && p.done_bytes >= p.total_bytes {
            bar.set_message(format!("{rate}, done"));
            bar.finish();
        } else {
            let eta = p.progress.eta.map(format_seconds).unwrap_or_else(|| "?".into());
            bar.set_message(format!("{rate}, ETA {eta}"));
        }
    }

    /// Leaves every bar drawn where it stopped (a failed disk's bar stops short).
    fn finish(&self) {
        for bar in self.bars.lock().unwrap_or_else(|e| e.into_inner()).iter().flatten() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

/// Prints job messages.
struct Printer {
    json_events: bool,
    to_stderr: bool,
    lock: Mutex<()>,
    /// Progress bars (a terminal, without `--progress json`).
    bars: Option<Bars>,
}

impl Printer {
    fn new(json_events: bool, to_stderr: bool, bars: Option<Bars>) -> Self {
        Self {
            json_events,
            to_stderr,
            lock: Mutex::new(()),
            bars,
        }
    }

    fn line(&self, s: &str) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let write = || {
            if self.to_stderr {
                let _ = writeln!(std::io::stderr(), "{s}");
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{s}");
                let _ = out.flush();
            }
        };
        match &self.bars {
            // The bars are cleared while the line prints, and drawn again below it.
            Some(b) => b.multi.suspend(write),
            None => write(),
        }
    }

    fn finish_bars(&self) {
        if let Some(b) = &self.bars {
            b.finish();
        }
    }
}

impl Feedback for Printer {
    fn emit(&self, event: Event) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if self.json_events {
            let line = match &event {
                Event::Message { level, text } => serde_json::to_string(&MessageJson {
                    event: "message",
                    time: now,
                    level: match level {
                        Level::Info => "info",
                        Level::Warning => "warning",
                    },
                    text,
                }),
                Event::Progress(p) => serde_json::to_string(&ProgressJson {
                    event: "progress",
                    time: now,
                    disk: p.index,
                    label: &p.label,
                    done_bytes: p.done_bytes,
                    total_bytes: p.total_bytes,
                    mbytes: p.progress.mbytes,
                    throughput_mib_s: p.progress.throughput,
                    percent: p.progress.percent,
                    eta_s: p.progress.eta,
                    line: p.line(),
                }),
            };
            self.line(&line.unwrap_or_else(|e| format!("{{\"event\":\"error\",\"text\":\"{e}\"}}")));
            return;
        }
        if let (Some(bars), Event::Progress(p)) = (&self.bars, &event) {
            bars.update(p);
            return;
        }
        let text = match &event {
            Event::Message { level, text } => log_line(*level, text),
            Event::Progress(p) => p.line(),
        };
        self.line(&format!("{} {text}", ctime(now as u64)));
    }
}

/// A job message on `--progress json`.
#[derive(Serialize)]
struct MessageJson<'a> {
    event: &'static str,
    time: f64,
    level: &'static str,
    text: &'a str,
}

/// A disk's progress on `--progress json`.
#[derive(Serialize)]
struct ProgressJson<'a> {
    event: &'static str,
    time: f64,
    disk: usize,
    label: &'a str,
    done_bytes: u64,
    total_bytes: u64,
    mbytes: f64,
    throughput_mib_s: f64,
    percent: Option<f64>,
    eta_s: Option<f64>,
    line: String,
}

/// A failed command's `--json` result.
#[derive(Serialize)]
struct FailureJson<'a> {
    ok: bool,
    error: &'a str,
    kind: &'static str,
    ecode: &'static str,
}

/// The `--json` result of a command stopped by SIGINT/SIGTERM.
#[derive(Serialize)]
struct InterruptedJson<'a> {
    ok: bool,
    interrupted: bool,
    signal: &'static str,
    error: &'a str,
    kind: &'static str,
    completed: bool,
    result: Option<serde_json::Value>,
}

/// The `--json` result of `export --dry-run`.
#[derive(Serialize)]
struct DryRunJson {
    ok: bool,
    dry_run: bool,
    result: Option<()>,
}

/// Prints one `--json` result line.
fn print_json(v: &impl Serialize) {
    match serde_json::to_string(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("diskstream: error: cannot print the JSON result: {e}"),
    }
}

/// Python's `time.ctime` in UTC: `Thu May  5 12:28:52 2011`.
pub fn ctime(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = diskstream_orchestrator::locking::civil_from_days(days as i64);
    format!(
        "{} {} {d:>2} {:02}:{:02}:{:02} {y}",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `--hooks-timeout`: a positive number of seconds, at most a week.
fn parse_hooks_timeout(v: &str) -> Result<f64, String> {
    let s: f64 = v.parse().map_err(|_| format!("'{v}' is not a number of seconds"))?;
    if s > 0.0 && s <= 7.0 * 24.0 * 3600.0 {
        Ok(s)
    } else {
        Err(format!("{v}: must be above 0 and at most 604800 (one week)"))
    }
}

fn error_kind(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::Interrupted => "interrupted",
        ErrorKind::Prereq => "prereq",
        ErrorKind::Exec => "exec",
        ErrorKind::HooksAbort => "hooks_abort",
        ErrorKind::HooksFailure => "hooks_failure",
        ErrorKind::Lock => "lock",
        ErrorKind::Config => "config",
        _ => "error",
    }
}

/// The JSON `kind` and the exit code of a failed operation. When the engine's error is the
/// cause (a disk's transfer met corrupt data, was cancelled, ...), its kind is what the image
/// commands would report for it, and damaged data exits with the integrity code, as `image`
/// does; otherwise the kind is the orchestrator's (Ganeti's error class).
fn kind_and_code(e: &OpError) -> (&'static str, ExitCode) {
    if let Some(engine) = e.engine_error() {
        let kind = engine.kind();
        if kind == EngineKind::Integrity {
            return (kind.as_str(), ExitCode::from(EXIT_INTEGRITY));
        }
        if kind != EngineKind::Io && kind != EngineKind::Invalid {
            return (kind.as_str(), ExitCode::FAILURE);
        }
    }
    (error_kind(e.kind), ExitCode::FAILURE)
}

fn fail(e: &OpError, json_out: bool) -> ExitCode {
    let (kind, code) = kind_and_code(e);
    if json_out {
        print_json(&FailureJson {
            ok: false,
            error: &e.msg,
            kind,
            ecode: e.ecode.as_str(),
        });
    }
    eprintln!("{}", e.ganeti_report());
    code
}

/// The end of a command stopped by SIGINT/SIGTERM: a message naming the signal and where the
/// operation stopped, the `--json` result, and exit code 130/143. `completed` is the JSON of
/// an operation that had finished before the signal was noticed.
fn interrupted(cmd: &str, i: &Interrupt, msg: &str, completed: Option<serde_json::Value>, json_out: bool) -> ExitCode {
    let sig = i.signal_name();
    if json_out {
        print_json(&InterruptedJson {
            ok: false,
            interrupted: true,
            signal: sig,
            error: msg,
            kind: "interrupted",
            completed: completed.is_some(),
            result: completed,
        });
    }
    eprintln!("diskstream {cmd}: interrupted by {sig}: {msg}");
    i.exit_code()
}

fn install_interrupt(cmd: &str, json_out: bool) -> Result<Interrupt, ExitCode> {
    Interrupt::install().map_err(|e| {
        fail(
            &OpError::exec(format!(
                "diskstream {cmd}: cannot install the SIGINT/SIGTERM handler: {e}"
            )),
            json_out,
        )
    })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// The JSON result of an export: Ganeti's `(fin_resu, dresults)` plus sizes and digests (the
/// orchestrator's `ExportResult` serializes itself in this shape).
pub fn export_json(r: &ExportResult) -> Option<serde_json::Value> {
    serde_json::to_value(r).ok()
}

/// Runs `diskstream export`.
pub fn export(a: ExportArgs) -> ExitCode {
    let Some(node) = a.node.clone() else {
        return fail(&OpError::prereq(Ecode::Inval, "Target node must be specified"), a.json);
    };
    let json_events = a.progress.is_some();
    let bars = if json_events { None } else { Bars::for_stderr() };
    // Bars move smoothly; plain lines come every 5 s (unless asked otherwise).
    let interval = a.progress_interval.unwrap_or(if bars.is_some() { 0.2 } else { 5.0 });
    let printer = Printer::new(json_events, a.json && !json_events, bars);
    let mut op = ExportOp::new(a.instance.clone(), node);
    op.shutdown = !a.noshutdown;
    op.shutdown_timeout = a.shutdown_timeout;
    op.remove_instance = a.remove_instance;
    op.ignore_remove_failures = a.ignore_remove_failures;
    op.long_sleep = a.long_sleep;
    op.compress = a.transport_compression.clone();
    op.mode = if a.mode == "remote" {
        ExportMode::Remote
    } else {
        ExportMode::Local
    };
    op.zero_free_space = a.zero_free_space;
    op.zeroing_timeout_fixed = a.zeroing_timeout_fixed;
    op.zeroing_timeout_per_mib = a.zeroing_timeout_per_mib;
    op.max_parallel_disks = a.max_parallel_disks;
    op.pages = if a.hugetlb { Pages::Hugetlb } else { Pages::Thp };
    op.checksum = a.checksum;
    op.progress_interval = secs(interval);
    let interrupt = match install_interrupt("export", a.json) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let mut lu = ExportLu::new(op);
    let opts = RunOptions {
        dry_run: a.dry_run,
        lock_timeout: secs(a.lock_timeout),
        command: format!(
            "diskstream export -n {} {}",
            a.node.as_deref().unwrap_or(""),
            a.instance
        ),
        stop: interrupt.flag(),
        hooks_timeout: a.hooks_timeout.map(secs),
    };
    let res = crate::agent_cmd::run_on_cluster(&cluster_path(a.cluster), &mut lu, &printer, &opts);
    printer.finish_bars();
    // Cancellation is decided by our own flag, whatever error the operation returned.
    if interrupt.flag().load(Ordering::SeqCst) {
        return match res {
            Err(e) => interrupted("export", &interrupt, &e.msg, None, a.json),
            Ok(Some(r)) => interrupted(
                "export",
                &interrupt,
                "stopped after the export completed (remaining post hooks were stopped)",
                export_json(&r),
                a.json,
            ),
            Ok(None) => interrupted(
                "export",
                &interrupt,
                "stopped after the dry run's checks; nothing was changed",
                None,
                a.json,
            ),
        };
    }
    match res {
        Ok(Some(r)) => {
            if a.json {
                print_json(&r);
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            if a.json {
                print_json(&DryRunJson {
                    ok: true,
                    dry_run: true,
                    result: None,
                });
            } else {
                printer.line("Dry run: all checks and pre hooks passed; nothing was exported");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, a.json),
    }
}

/// Runs `diskstream list`.
pub fn list(a: ListArgs) -> ExitCode {
    let cluster = match Cluster::load(cluster_path(a.cluster)) {
        Ok(c) => c,
        Err(e) => return fail(&e.into(), a.json),
    };
    let rows = match crate::agent_cmd::list(&cluster, &a.nodes) {
        Ok(r) => r,
        Err(e) => return fail(&e, a.json),
    };
    if a.json {
        print_json(&rows);
    } else {
        print!("{}", backup::format_table(&rows, !a.no_headers, a.separator.as_deref()));
    }
    ExitCode::SUCCESS
}

/// Runs `diskstream remove`.
pub fn remove(a: RemoveArgs) -> ExitCode {
    let printer = Printer::new(false, false, None);
    let interrupt = match install_interrupt("remove", false) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let mut lu = RemoveLu::new(a.instance.clone());
    let opts = RunOptions {
        lock_timeout: secs(a.lock_timeout),
        stop: interrupt.flag(),
        ..RunOptions::new(format!("diskstream remove {}", a.instance))
    };
    let res = crate::agent_cmd::run_on_cluster(&cluster_path(a.cluster), &mut lu, &printer, &opts);
    if interrupt.flag().load(Ordering::SeqCst) {
        let msg = match &res {
            Err(e) => e.msg.clone(),
            Ok(_) => "stopped after the removal completed".to_string(),
        };
        return interrupted("remove", &interrupt, &msg, None, false);
    }
    match res {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(&e, false),
    }
}

/// Runs the cluster demo.
pub fn demo(dir: Option<PathBuf>, size: u64) -> ExitCode {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("diskstream-demo-{}", std::process::id())));
    let printer = Printer::new(false, false, None);
    let say = |s: &str| printer.line(s);
    match diskstream_orchestrator::demo::run(&dir, size, &printer, &say) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diskstream demo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctime_matches_python() {
        // time.ctime(1304598532) in UTC.
        assert_eq!(ctime(1_304_598_532), "Thu May  5 12:28:52 2011");
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(ctime(1_795_659_271), "Thu Nov 26 02:14:31 2026");
    }

    /// An export that failed because a disk's data was damaged exits 3 with the engine's kind,
    /// whatever else failed beside it; a cancelled transfer says "interrupted"; an I/O failure
    /// keeps Ganeti's class; an error without an engine cause keeps its own kind and exits 1.
    #[test]
    fn engine_kinds_reach_the_exit_code_and_json_kind() {
        use diskstream_engine::Error as E;
        use diskstream_orchestrator::backup::DiskFailures;
        use diskstream_orchestrator::node::TransferError as T;
        let failed = |errs: Vec<(usize, T)>| {
            OpError::exec("Export failed, errors in disk export: disk(s) 0, 1").with_source(DiskFailures(errs))
        };
        let io = || T::Engine(E::io("read", "/dev/loop0", 4096, std::io::Error::from_raw_os_error(5)));
        let corrupt = T::Engine(E::corrupt("/dev/loop1", "frame header", 0, "bad magic"));
        let e = failed(vec![(0, io()), (1, corrupt)]);
        let (kind, code) = kind_and_code(&e);
        assert_eq!((kind, code), ("integrity", ExitCode::from(EXIT_INTEGRITY)));

        let (kind, code) = kind_and_code(&failed(vec![(0, T::Engine(E::Cancelled))]));
        assert_eq!((kind, code), ("interrupted", ExitCode::FAILURE));

        let (kind, code) = kind_and_code(&failed(vec![(0, io())]));
        assert_eq!((kind, code), ("exec", ExitCode::FAILURE));

        let e = OpError::prereq(Ecode::State, "Instance is running");
        assert_eq!(kind_and_code(&e), ("prereq", ExitCode::FAILURE));
    }
}
