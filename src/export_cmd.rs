//! The cluster commands: `export`, `list`, `remove` (Ganeti's `gnt-backup`), and how their job
//! messages, progress and results are printed (`demo` is [`crate::demo_cmd`]).
//!
//! Job messages and progress are printed by [`crate::jobs`]; results with `--json` are the
//! envelopes of [`crate::contract`]. Errors print Ganeti's report (`Failure: prerequisites not
//! met ...`) on stderr.
//!
//! `export` and `remove` install the SIGINT/SIGTERM handler ([`crate::interrupt`]): the flag
//! it sets reaches lock waits, hooks (their process groups are killed), the shutdown wait and
//! the engine; the operation undoes what it started (staging directory, snapshots, a stopped
//! instance is started again) and the command exits 130 (SIGINT) or 143 (SIGTERM) with a
//! message saying where it stopped (`"interrupted": true` in the `--json` result). `list` only
//! reads and keeps the default signal behaviour.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use diskstream_engine::buf::Pages;
use diskstream_engine::error::ErrorKind as EngineKind;
use diskstream_orchestrator::backup::{self, ExportLu, ExportMode, ExportOp, ExportResult, RemoveLu, RunOptions};
use diskstream_orchestrator::cluster::Cluster;
use diskstream_orchestrator::{Ecode, ErrorKind, OpError};

use crate::contract::{self, DryRun, Failed, Kind, Listing, Op};
use crate::interrupt::Interrupt;
use crate::jobs::{Bars, Printer};

/// The cluster config: `--cluster` (or `$DISKSTREAM_CLUSTER`, through clap), else
/// `./cluster.toml`.
fn cluster_path(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| PathBuf::from("cluster.toml"))
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
    /// Seconds to wait for the instance to stop before it is killed (at most a week).
    #[arg(long, default_value_t = backup::DEFAULT_SHUTDOWN_TIMEOUT, value_parser = clap::value_parser!(u64).range(..=WEEK as u64))]
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
    /// Transport compression: none; auto (lz4 on the wire only while it makes the transfer
    /// faster, measured as it goes); or one of the cluster's compression_tools (lz4 on the wire
    /// for every chunk lz4 makes smaller).
    #[arg(long, default_value = "none")]
    transport_compression: String,
    /// Disks transferred at the same time (1 to 1024).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_parallel_disks: u16,
    #[command(flatten)]
    throttle: crate::throttle::Throttle,
    /// Take the engine's buffers from reserved hugetlb pages (vm.nr_hugepages) when enough are
    /// free, else transparent huge pages as by default.
    #[arg(long)]
    hugetlb: bool,
    /// Chunk digest recorded in each dump's manifest: blake3 (fast on every CPU) or sha256.
    #[arg(long, default_value = "blake3", value_parser = crate::units::checksums())]
    checksum: diskstream_engine::digest::Checksum,
    /// Check everything and run the pre hooks, but export nothing.
    #[arg(long)]
    dry_run: bool,
    /// Cluster config (default ./cluster.toml).
    #[arg(long, env = "DISKSTREAM_CLUSTER")]
    cluster: Option<PathBuf>,
    /// Print one JSON object per event on stderr instead of text lines (docs/json.md).
    #[arg(long, value_enum)]
    progress: Option<contract::ProgressFormat>,
    /// Print the result as one JSON object on stdout (messages go to stderr).
    #[arg(long)]
    json: bool,
    /// Not supported (hidden; refused with Ganeti's explanation).
    #[arg(long, hide = true)]
    zero_free_space: bool,
    /// Not supported (hidden; only valid with --zero-free-space).
    #[arg(long, hide = true)]
    zeroing_timeout_fixed: Option<u64>,
    /// Not supported (hidden; only valid with --zero-free-space).
    #[arg(long, hide = true)]
    zeroing_timeout_per_mib: Option<f64>,
    /// Export mode; only local is supported (remote is refused with Ganeti's message).
    #[arg(long, value_enum, default_value_t = ModeArg::Local)]
    mode: ModeArg,
    /// Longest wait for a lock, in seconds (at most a week).
    #[arg(long, default_value_t = 3600.0, value_parser = parse_wait)]
    lock_timeout: f64,
    /// Per-script hook timeout in seconds: a script running longer is killed (its process
    /// group) and counts as failed (default: the cluster's hooks_timeout, else 900).
    #[arg(long, value_parser = parse_hooks_timeout)]
    hooks_timeout: Option<f64>,
    /// Seconds between progress lines of a disk transfer (default 5; 0.2 for the progress bars
    /// shown when stderr is a terminal).
    #[arg(long, value_parser = parse_wait)]
    progress_interval: Option<f64>,
    /// The instance.
    instance: String,
}

/// `--mode`: Ganeti's export modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// To a node of this cluster.
    Local,
    /// To another cluster (not supported).
    Remote,
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
    /// Cluster config (default ./cluster.toml).
    #[arg(long, env = "DISKSTREAM_CLUSTER")]
    cluster: Option<PathBuf>,
}

/// `diskstream remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The instance (or the FQDN of a deleted instance).
    instance: String,
    /// Cluster config (default ./cluster.toml).
    #[arg(long, env = "DISKSTREAM_CLUSTER")]
    cluster: Option<PathBuf>,
    /// Longest wait for a lock, in seconds (at most a week).
    #[arg(long, default_value_t = 3600.0, value_parser = parse_wait)]
    lock_timeout: f64,
    /// Print the result as one JSON object on stdout (messages go to stderr).
    #[arg(long)]
    json: bool,
}

/// The longest wait any flag may ask for: a week, in seconds.
const WEEK: f64 = 7.0 * 24.0 * 3600.0;

/// `--hooks-timeout`: a positive number of seconds, at most a week.
fn parse_hooks_timeout(v: &str) -> Result<f64, String> {
    let range = || format!("{v}: must be above 0 and at most 604800 (one week)");
    match parse_wait(v) {
        Ok(s) if s > 0.0 => Ok(s),
        Err(e) if v.parse::<f64>().is_err() => Err(e),
        _ => Err(range()),
    }
}

/// `--lock-timeout`, `--progress-interval`: a number of seconds from 0 to a week (`inf`,
/// `NaN` and the like are refused: a deadline that far cannot be computed).
fn parse_wait(v: &str) -> Result<f64, String> {
    let s: f64 = v.parse().map_err(|_| format!("'{v}' is not a number of seconds"))?;
    if (0.0..=WEEK).contains(&s) {
        Ok(s)
    } else {
        Err(format!("{v}: must be from 0 to 604800 (one week)"))
    }
}

/// The JSON `kind` of a failed operation. When the engine's error is the cause (a disk's
/// transfer met corrupt data, was cancelled, ...), its kind is what the image commands would
/// report for it, and damaged data exits with the integrity code, as `image` does; otherwise
/// the kind is the orchestrator's (Ganeti's error class). The exit code follows the kind
/// ([`Kind::exit_code`]).
fn kind_of(e: &OpError) -> Kind {
    if let Some(engine) = e.engine_error() {
        match engine.kind() {
            EngineKind::Integrity => return Kind::Integrity,
            EngineKind::Mismatch => return Kind::Mismatch,
            EngineKind::Cancelled => return Kind::Interrupted,
            _ => {}
        }
    }
    match e.kind {
        ErrorKind::Interrupted => Kind::Interrupted,
        ErrorKind::Prereq => Kind::Prereq,
        ErrorKind::Exec => Kind::Exec,
        ErrorKind::HooksAbort => Kind::HooksAbort,
        ErrorKind::HooksFailure => Kind::HooksFailure,
        ErrorKind::Lock => Kind::Lock,
        ErrorKind::Config => Kind::Config,
        _ => Kind::Error,
    }
}

/// The `--json` failure of `e`.
fn failure(op: Op, e: &OpError, kind: Kind) -> Failed {
    let mut f = Failed::new(op, kind, e.msg.clone());
    f.ecode = Some(e.ecode.as_str());
    // The typed cause, where the message (Ganeti's) does not already say it.
    f.cause = std::error::Error::source(e)
        .map(ToString::to_string)
        .filter(|c| !c.is_empty() && !e.msg.contains(c.as_str()));
    f
}

fn fail(op: Op, e: &OpError, json_out: bool) -> ExitCode {
    errln!("{}", crate::logging::escape_keeping_lines(&e.ganeti_report()));
    failure(op, e, kind_of(e)).emit(json_out)
}

/// The end of a command stopped by SIGINT/SIGTERM: a message naming the signal and where the
/// operation stopped, the `--json` result, and exit code 130/143. `completed` is an export
/// that had finished before the signal was noticed.
fn interrupted(op: Op, i: &Interrupt, msg: &str, completed: Option<ExportResult>, json_out: bool) -> ExitCode {
    let sig = i.signal_name();
    errln!("diskstream {}: interrupted by {sig}: {msg}", op.name());
    let mut f = Failed::new(op, Kind::Interrupted, msg).signal(sig, i.code());
    // Whether the export had completed: a field of export's alone (docs/json.md).
    f.completed = (op == Op::Export).then_some(completed.is_some());
    f.result = completed.map(Box::new);
    f.emit(json_out)
}

fn install_interrupt(op: Op, json_out: bool) -> Result<Interrupt, ExitCode> {
    Interrupt::install().map_err(|e| {
        let msg = format!(
            "diskstream {}: cannot install the SIGINT/SIGTERM handler: {e}",
            op.name()
        );
        fail(op, &OpError::exec(msg), json_out)
    })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// The orchestrator's operation for `diskstream export -n NODE ...`.
/// A bad `--ionice`/`--nice` or defaults file is a usage failure, as for the image commands.
fn export_op(a: &ExportArgs, node: String, interval: f64) -> Result<ExportOp, ExitCode> {
    let mut op = ExportOp::new(a.instance.clone(), node);
    op.shutdown = !a.noshutdown;
    op.shutdown_timeout = a.shutdown_timeout;
    op.remove_instance = a.remove_instance;
    op.ignore_remove_failures = a.ignore_remove_failures;
    op.long_sleep = a.long_sleep;
    op.compress = a.transport_compression.clone();
    op.mode = match a.mode {
        ModeArg::Remote => ExportMode::Remote,
        ModeArg::Local => ExportMode::Local,
    };
    op.zero_free_space = a.zero_free_space;
    op.zeroing_timeout_fixed = a.zeroing_timeout_fixed;
    op.zeroing_timeout_per_mib = a.zeroing_timeout_per_mib;
    op.max_parallel_disks = usize::from(a.max_parallel_disks);
    let throttle = match a
        .throttle
        .with_defaults()
        .and_then(|t| t.apply_priorities().map(|()| t))
    {
        Ok(t) => t,
        Err(e) => {
            let e = OpError::prereq(Ecode::Inval, e);
            errln!("{}", crate::logging::escape_keeping_lines(&e.ganeti_report()));
            return Err(failure(Op::Export, &e, Kind::Usage).emit(a.json));
        }
    };
    op.bwlimit = throttle.bwlimit;
    op.pages = if a.hugetlb { Pages::Hugetlb } else { Pages::Thp };
    op.checksum = a.checksum;
    op.progress_interval = secs(interval);
    Ok(op)
}

/// Logs what an export wrote.
fn log_export(r: &ExportResult) {
    for d in &r.disks {
        match &d.report {
            Ok(rep) => tracing::info!(
                disk = d.index,
                dump = %d.path.display(),
                disk_bytes = rep.disk_size,
                stored_bytes = rep.bytes_stored,
                wire_lz4_chunks = rep.wire.map(|w| w.lz4_chunks),
                wire_data_chunks = rep.wire.map(|w| w.data_chunks),
                auto_rounds = rep.wire.map(|w| w.auto_rounds),
                elapsed_s = rep.elapsed.as_secs_f64(),
                bytes_per_s = rep.throughput(),
                "export: {} sent",
                d.label
            ),
            Err(e) => tracing::warn!(disk = d.index, "export: {} failed: {e}", d.label),
        }
    }
    tracing::info!(
        instance = %r.instance,
        node = %r.target_node,
        dir = %r.export_dir.display(),
        "export ended: {}",
        if r.fin_resu && r.dresults.iter().all(|&b| b) { "ok" } else { "with failed disks" }
    );
}

/// Runs `diskstream export`.
pub fn export(a: ExportArgs, quiet: bool) -> ExitCode {
    let Some(node) = a.node.clone() else {
        let e = OpError::prereq(Ecode::Inval, "Target node must be specified");
        errln!("{}", crate::logging::escape_keeping_lines(&e.ganeti_report()));
        return failure(Op::Export, &e, Kind::Usage).emit(a.json);
    };
    let json_events = a.progress.is_some();
    let bars = if json_events || quiet { None } else { Bars::for_stderr() };
    // Bars move smoothly; plain lines come every 5 s (unless asked otherwise).
    let interval = a.progress_interval.unwrap_or(if bars.is_some() { 0.2 } else { 5.0 });
    let printer = Printer::new(Op::Export, json_events, a.json, bars);
    let op = match export_op(&a, node, interval) {
        Ok(op) => op,
        Err(code) => return code,
    };
    let interrupt = match install_interrupt(Op::Export, a.json) {
        Ok(i) => i,
        Err(code) => return code,
    };
    // Names as typed: the cluster expands them later ("export ended" has the full names).
    tracing::info!(instance = %a.instance, node = %op.target_node, "export started (names as given)");
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
        let (msg, completed) = match res {
            Err(e) => (e.msg, None),
            Ok(Some(r)) => (
                "stopped after the export completed (remaining post hooks were stopped)".to_string(),
                Some(r),
            ),
            Ok(None) => (
                "stopped after the dry run's checks; nothing was changed".to_string(),
                None,
            ),
        };
        return interrupted(Op::Export, &interrupt, &msg, completed, a.json);
    }
    match res {
        Ok(Some(r)) => {
            log_export(&r);
            contract::done(Op::Export, &r, a.json)
        }
        Ok(None) => {
            tracing::info!("export ended: dry run, nothing exported");
            if !a.json {
                printer.line("Dry run: all checks and pre hooks passed; nothing was exported");
            }
            let body = DryRun {
                dry_run: true,
                result: None,
            };
            contract::done(Op::Export, body, a.json)
        }
        Err(e) => fail(Op::Export, &e, a.json),
    }
}

/// Runs `diskstream list`.
pub fn list(a: ListArgs) -> ExitCode {
    let cluster = match Cluster::load(cluster_path(a.cluster)) {
        Ok(c) => c,
        Err(e) => return fail(Op::List, &e.into(), a.json),
    };
    let rows = match crate::agent_cmd::list(&cluster, &a.nodes) {
        Ok(r) => r,
        Err(e) => return fail(Op::List, &e, a.json),
    };
    if !a.json {
        use std::io::Write as _;
        let table = backup::format_table(&rows, !a.no_headers, a.separator.as_deref());
        let mut out = std::io::stdout().lock();
        // A listing that could not be printed (a full disk) is not a success; a reader that
        // stopped reading (`| head`) took what it wanted.
        match out.write_all(table.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                errln!("diskstream list: error: cannot print the listing: {e}");
                return ExitCode::FAILURE;
            }
            _ => {}
        }
    }
    contract::done(Op::List, Listing { nodes: rows }, a.json)
}

/// Runs `diskstream remove`.
pub fn remove(a: RemoveArgs) -> ExitCode {
    let printer = Printer::new(Op::Remove, false, a.json, None);
    let interrupt = match install_interrupt(Op::Remove, a.json) {
        Ok(i) => i,
        Err(code) => return code,
    };
    tracing::info!(instance = %a.instance, "remove started");
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
        return interrupted(Op::Remove, &interrupt, &msg, None, a.json);
    }
    match res {
        Ok(r) => {
            let r = r.unwrap_or_default();
            tracing::info!(nodes = ?r.removed, "remove ended: ok");
            contract::done(Op::Remove, r, a.json)
        }
        Err(e) => fail(Op::Remove, &e, a.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::ctime;

    #[test]
    fn ctime_matches_python() {
        // time.ctime(1304598532) in UTC.
        assert_eq!(ctime(1_304_598_532), "Thu May  5 12:28:52 2011");
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(ctime(1_795_659_271), "Thu Nov 26 02:14:31 2026");
    }

    /// An export that failed because a disk's data was damaged exits 3 with the engine's kind,
    /// whatever else failed beside it; a cancelled transfer says "interrupted" (and exits as
    /// interrupted: the one exit code table); an I/O failure keeps Ganeti's class; an error
    /// without an engine cause keeps its own kind (a prerequisite: refused, exit 4).
    #[test]
    fn engine_kinds_reach_the_exit_code_and_json_kind() {
        use diskstream_engine::Error as E;
        use diskstream_orchestrator::backup::DiskFailures;
        use diskstream_orchestrator::node::TransferError as T;
        let code = |k: Kind| k.exit_code(crate::exit::EXIT_SIGINT);
        let failed = |errs: Vec<(usize, T)>| {
            OpError::exec("Export failed, errors in disk export: disk(s) 0, 1").with_source(DiskFailures(errs))
        };
        let io = || T::Engine(E::io("read", "/dev/loop0", 4096, std::io::Error::from_raw_os_error(5)));
        let corrupt = T::Engine(E::corrupt("/dev/loop1", "frame header", 0, "bad magic"));
        let k = kind_of(&failed(vec![(0, io()), (1, corrupt)]));
        assert_eq!((k, code(k)), (Kind::Integrity, crate::exit::EXIT_INTEGRITY));

        let k = kind_of(&failed(vec![(0, T::Engine(E::Cancelled))]));
        assert_eq!((k, code(k)), (Kind::Interrupted, crate::exit::EXIT_SIGINT));

        let k = kind_of(&failed(vec![(0, io())]));
        assert_eq!((k, code(k)), (Kind::Exec, crate::exit::EXIT_FAILURE));

        let k = kind_of(&OpError::prereq(Ecode::State, "Instance is running"));
        assert_eq!((k, code(k)), (Kind::Prereq, crate::exit::EXIT_REFUSED));
    }
}
