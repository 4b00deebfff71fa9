//! Argument parsing and dispatch: `diskstream image {create,verify,restore,scan,info}`,
//! `export`, `list`, `remove`, `demo`, `bench`, `completions`, `man`, and the global `-v`/`-q`.
//! Exit codes are the one table of [`crate::exit`]; a command line clap refuses exits 2 (with
//! the JSON failure on stdout when `--json` was given).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use diskstream_engine::buf::Pages;
use diskstream_engine::digest::Checksum;
use diskstream_engine::ops::{
    self, CreateOptions, Format, InfoOptions, Progress, RestoreOptions, ScanOptions, Tuning, VerifyOptions,
};
use diskstream_engine::ring::BackendKind;
use diskstream_engine::sink::ZeroPolicy;

use crate::contract::{Failed, Kind, Op};
use crate::output;
use crate::units::{checksums, choice, parse_size};

#[derive(Parser, Debug)]
#[command(name = "diskstream", version, about = "Export VM disks to verified images, fast")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// More log detail on stderr (-v debug, -vv trace); DISKSTREAM_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors in the log, and no progress lines or bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create, check and restore disk images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Build a three-node sample cluster in a directory and export its instance twice.
    Demo(DemoArgs),
    /// Export an instance's disks to a node (Ganeti's `gnt-backup export`).
    Export(crate::export_cmd::ExportArgs),
    /// List the exports on the cluster's nodes (`gnt-backup list`).
    List(crate::export_cmd::ListArgs),
    /// Remove an instance's exports from every node (`gnt-backup remove`).
    Remove(crate::export_cmd::RemoveArgs),
    /// Manage the cluster PKI (CA and node certificates for the agents' mutual TLS).
    #[command(subcommand)]
    Pki(crate::agent_cmd::PkiCmd),
    /// Run a node's agent: serves the master's node operations and disk streams over mutual TLS.
    Agent(crate::agent_cmd::AgentArgs),
    /// Measure what the disks, the CPUs and the engine can do, stage by stage, and predict the
    /// export throughput and what limits it.
    Bench(crate::bench_cmd::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the JSON Schema of the --json results or the --progress json lines (the files in
    /// docs/schema/ are this output).
    #[command(hide = true)]
    Schema {
        /// Which schema.
        #[arg(value_enum)]
        which: crate::contract::SchemaKind,
    },
    /// Print the man page (roff) to stdout, or write one page per command into --dir.
    Man {
        /// Write diskstream.1 and diskstream-COMMAND.1 pages into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Read SRC (block device or file) and write OUT plus OUT.manifest.
    Create {
        /// Source block device or file.
        src: PathBuf,
        /// Output image (a new file, or a block device for --format raw).
        out: PathBuf,
        /// raw: sparse raw copy; dsimg: native image (see docs/image-format.md).
        #[arg(long, default_value = "raw", value_parser = choice::<Format>(&["raw", "dsimg"]))]
        format: Format,
        /// Compression of dsimg data chunks.
        #[arg(long, default_value = "lz4", value_parser = ["lz4", "none"])]
        compress: String,
        /// Chunk digest recorded in the image and manifest: blake3 (fast on every CPU) or sha256.
        #[arg(long, default_value = "blake3", value_parser = checksums())]
        checksum: Checksum,
        /// Chunk size in bytes (power of two, 4096..=64 MiB; K/M suffixes accepted).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        chunk_size: u64,
        /// Zero chunks on a block device target: write (default), discard, or skip (target known zeroed).
        #[arg(long, default_value = "write", value_parser = choice::<ZeroPolicy>(&["write", "discard", "skip"]))]
        zero_target: ZeroPolicy,
        /// Manifest path (default OUT.manifest; required for a block device OUT).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Writes in flight.
        #[arg(long, default_value_t = ops::DEFAULT_WRITE_DEPTH)]
        write_depth: u32,
        #[command(flatten)]
        tune: Tune,
        /// Replace OUT if it exists (it is replaced only once the new image is complete).
        #[arg(short, long)]
        force: bool,
    },
    /// Re-read an image with O_DIRECT and check every chunk.
    Verify {
        /// The image (dsimg, or raw with IMAGE.manifest beside it).
        image: PathBuf,
        /// Manifest of the image (default IMAGE.manifest; required for a raw image on a block device).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Read IMAGE as raw or dsimg (default: the dsimg magic, unless a manifest describes a raw image of
        /// IMAGE's size).
        #[arg(long, value_parser = choice::<Format>(&["raw", "dsimg"]))]
        format: Option<Format>,
        #[command(flatten)]
        tune: Tune,
    },
    /// Write the disk an image holds to DEST (a new file or a block device), checking as it goes.
    Restore {
        /// The image.
        image: PathBuf,
        /// Destination file (created) or block device.
        dest: PathBuf,
        /// Writes in flight.
        #[arg(long, default_value_t = ops::DEFAULT_WRITE_DEPTH)]
        write_depth: u32,

        /// Zero chunks on a block device target: write (default), discard, or skip (target known zeroed).
        #[arg(long, default_value = "write", value_parser = choice::<ZeroPolicy>(&["write", "discard", "skip"]))]
        zero_target: ZeroPolicy,
        /// Manifest of the image (default IMAGE.manifest; required for a raw image on a block device).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Read IMAGE as raw or dsimg (default: the dsimg magic, unless a manifest describes a raw image of
        /// IMAGE's size).
        #[arg(long, value_parser = choice::<Format>(&["raw", "dsimg"]))]
        format: Option<Format>,
        #[command(flatten)]
        tune: Tune,
        /// Replace DEST if it is an existing file.
        #[arg(short, long)]
        force: bool,
        /// Check every chunk of IMAGE before writing a byte (default for a block device, which is
        /// written in place: a damaged image never leaves it half overwritten). Reads IMAGE twice.
        #[arg(long, overrides_with = "no_verify_first")]
        verify_first: bool,
        /// Check each chunk as it is written, even to a block device (one read of IMAGE; a damaged
        /// chunk then leaves the device partly overwritten, and the error says how much).
        #[arg(long, overrides_with = "verify_first")]
        no_verify_first: bool,
    },
    /// Read SRC through the pipeline (zero check, digest, optional lz4) into a null sink.
    Scan {
        /// Source block device or file.
        src: PathBuf,
        /// Also lz4-compress each chunk (and discard the result).
        #[arg(long, default_value = "none", value_parser = ["lz4", "none"])]
        compress: String,
        /// Chunk digest: blake3 or sha256.
        #[arg(long, default_value = "blake3", value_parser = checksums())]
        checksum: Checksum,
        /// Chunk size in bytes (power of two, 4096..=64 MiB; K/M suffixes accepted).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        chunk_size: u64,
        #[command(flatten)]
        tune: Tune,
    },
    /// Show what an image holds (checks its structure, not every chunk).
    Info {
        /// The image.
        image: PathBuf,
        /// Manifest of a raw image (default IMAGE.manifest), or one a dsimg is checked against.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Read IMAGE as raw or dsimg (default: the dsimg magic, unless a manifest describes a raw image of
        /// IMAGE's size).
        #[arg(long, value_parser = choice::<Format>(&["raw", "dsimg"]))]
        format: Option<Format>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Performance knobs and output flags shared by the image commands (those that apply to some
/// only, `--chunk-size`, `--write-depth`, `--zero-target`, `--manifest`, are the commands' own).
#[derive(Args, Debug, Clone)]
struct Tune {
    /// Reads in flight.
    #[arg(long, default_value_t = ops::DEFAULT_QUEUE_DEPTH)]
    queue_depth: u32,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Read/write backend: uring (falls back to pread if the kernel refuses) or pread.
    #[arg(long, default_value = "uring", value_parser = choice::<BackendKind>([
        clap::builder::PossibleValue::new("uring").alias("io_uring"),
        clap::builder::PossibleValue::new("pread"),
    ]))]
    backend: BackendKind,
    /// Register buffers and files with io_uring (measured slower on virtio; see docs/performance.md).
    #[arg(long)]
    fixed_buffers: bool,
    /// Take the read buffers from the kernel's reserved hugetlb pages (vm.nr_hugepages) when enough
    /// are free, else transparent huge pages as by default (see docs/performance.md).
    #[arg(long)]
    hugetlb: bool,
    /// Run the one-thread reference path (pread, no workers).
    #[arg(long)]
    sequential: bool,
    #[command(flatten)]
    throttle: crate::throttle::Throttle,
    /// Print one JSON object with the result instead of text.
    #[arg(long)]
    json: bool,
    /// Progress as one JSON object per line on stderr (docs/json.md).
    #[arg(long, value_enum)]
    progress: Option<crate::contract::ProgressFormat>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Directory to build the demo in (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the sample disk (K/M/G suffixes): a whole number of MiB.
    #[arg(long, default_value = "256M", value_parser = crate::demo_cmd::parse_size)]
    size: u64,
    /// Print one JSON object with the result on stdout (messages go to stderr).
    #[arg(long)]
    json: bool,
    /// Run one node agent per node (`diskstream agent`): each in its own network namespace as
    /// root, on 127.0.0.1 ports otherwise; the exports go through them, agent to agent.
    #[arg(long)]
    agents: bool,
}

/// The tuning flags that only some commands have: `None` where the command has not.
#[derive(Clone, Copy, Debug, Default)]
struct Own {
    chunk_size: Option<u64>,
    write_depth: Option<u32>,
}

fn own(chunk_size: Option<u64>, write_depth: Option<u32>) -> Own {
    Own {
        chunk_size,
        write_depth,
    }
}

impl Tune {
    /// [`Self::options`], or the usage failure of `op` printed.
    fn tuning(&self, stop: Option<ops::StopFlag>, op: Op, own: Own) -> Result<Tuning, ExitCode> {
        self.options(stop, own)
            .map_err(|e| output::fail_msg(op, Kind::Usage, &e, self.json))
    }

    /// How progress is shown: `--progress json`, else nothing with `-q` or `--json` (unless
    /// stderr is a terminal), else bars or lines.
    fn show(&self, quiet: bool) -> output::Show {
        if self.progress.is_some() {
            output::Show::Json
        } else if quiet || (self.json && !std::io::IsTerminal::is_terminal(&std::io::stderr())) {
            output::Show::Quiet
        } else {
            output::Show::Human
        }
    }

    /// The engine's tuning from these flags and the command's own (`own`; a command that
    /// reads an image takes the image's chunk size, one that writes nothing has no write
    /// depth: the defaults stand in), with the SIGINT/SIGTERM flag as its stop flag.
    fn options(&self, stop: Option<ops::StopFlag>, own: Own) -> Result<Tuning, String> {
        let Own {
            chunk_size,
            write_depth,
        } = own;
        let chunk_size = match chunk_size {
            Some(c) => u32::try_from(c).map_err(|_| format!("--chunk-size {c} is too large"))?,
            None => Tuning::default().chunk_size,
        };
        // --bwlimit/--ionice/--nice, with the defaults file's values for those not given; the
        // priorities are set here, before the operation starts its threads.
        let throttle = self.throttle.with_defaults()?;
        throttle.apply_priorities()?;
        let tuning = Tuning {
            chunk_size,
            queue_depth: self.queue_depth,
            write_depth: write_depth.unwrap_or(ops::DEFAULT_WRITE_DEPTH),
            threads: self.threads.unwrap_or_else(ops::default_threads),
            backend: if self.sequential {
                BackendKind::Pread
            } else {
                self.backend
            },
            fixed_buffers: self.fixed_buffers,
            pages: if self.hugetlb { Pages::Hugetlb } else { Pages::Thp },
            sequential: self.sequential,
            stop,
            bwlimit: throttle.bwlimit,
        };
        // Out-of-range values are usage errors here, as clap's own are (exit 2).
        tuning.check().map_err(|e| e.to_string())?;
        Ok(tuning)
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    if matches!(cli.cmd, Cmd::Agent(_)) {
        // Before any thread: may re-execute the process (diskstream_agent::copies).
        diskstream_agent::copies::tune();
    }
    if matches!(cli.cmd, Cmd::Demo(_)) {
        crate::demo_cmd::before_threads();
    }
    crate::logging::init(cli.verbose, cli.quiet);
    tracing::debug!(args = ?std::env::args_os().collect::<Vec<_>>(), "diskstream {}", env!("CARGO_PKG_VERSION"));
    match cli.cmd {
        Cmd::Image(cmd) => image(cmd, cli.quiet),
        Cmd::Demo(args) => crate::demo_cmd::demo(args.dir, args.size, args.agents, args.json),
        Cmd::Export(args) => crate::export_cmd::export(args, cli.quiet),
        Cmd::List(args) => crate::export_cmd::list(args),
        Cmd::Remove(args) => crate::export_cmd::remove(args),
        Cmd::Pki(cmd) => crate::agent_cmd::pki(cmd),
        Cmd::Agent(args) => crate::agent_cmd::agent(args),
        Cmd::Bench(mut args) => {
            args.verbose = cli.verbose > 0;
            crate::bench_cmd::run(args)
        }
        Cmd::Completions { shell } => crate::install_cmd::completions(Cli::command(), shell),
        Cmd::Schema { which } => {
            use std::io::Write as _;
            let _ = write!(std::io::stdout().lock(), "{}", which.schema());
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => crate::install_cmd::man(Cli::command(), dir.as_deref()),
    }
}

/// A command line clap refused: clap's message on stderr, the JSON failure on stdout when
/// `--json` was among the arguments, and exit code 2 (help and version exit 0 as clap's do).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(crate::exit::EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        };
    }
    let _ = e.print();
    // `args_os`: `args` panics on an argument that is not UTF-8 (lossy is enough to find
    // `--json` and the command's words).
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let op = op_of(&args);
    let msg = e.render().to_string();
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let text = lines.join(" ");
    Failed::new(op, Kind::Usage, text.trim_start_matches("error: ")).emit(json)
}

/// The command named on a command line clap refused (for the JSON failure's `op`).
fn op_of(args: &[String]) -> Op {
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    match words.as_slice() {
        ["image", "create", ..] => Op::ImageCreate,
        ["image", "verify", ..] => Op::ImageVerify,
        ["image", "restore", ..] => Op::ImageRestore,
        ["image", "scan", ..] => Op::ImageScan,
        ["image", "info", ..] => Op::ImageInfo,
        ["export", ..] => Op::Export,
        ["list", ..] => Op::List,
        ["remove", ..] => Op::Remove,
        ["demo", ..] => Op::Demo,
        ["bench", ..] => Op::Bench,
        ["pki", ..] => Op::Pki,
        ["agent", ..] => Op::Agent,
        _ => Op::Diskstream,
    }
}

fn image(cmd: ImageCmd, quiet: bool) -> ExitCode {
    image_op(cmd, quiet).unwrap_or_else(|code| code)
}

/// [`image`], with an early exit code as the error.
fn image_op(cmd: ImageCmd, quiet: bool) -> Result<ExitCode, ExitCode> {
    let progress: Progress = Default::default();
    // Installed before anything is opened: a SIGINT/SIGTERM from here on stops the operation at
    // the next chunk, its partial outputs are removed, and the exit code is 130/143.
    let interrupt = crate::interrupt::Interrupt::install().map_err(|e| {
        let msg = format!("cannot install the SIGINT/SIGTERM handlers: {e}");
        output::fail_msg(Op::Diskstream, Kind::Error, &msg, false)
    })?;
    let stop = Some(interrupt.flag());
    Ok(match cmd {
        ImageCmd::Create {
            src,
            out,
            format,
            compress,
            checksum,
            chunk_size,
            zero_target,
            manifest,
            write_depth,
            tune,
            force,
        } => {
            let tuning = tune.tuning(stop, Op::ImageCreate, own(Some(chunk_size), Some(write_depth)))?;
            let o = CreateOptions {
                tuning,
                format,
                compress: compress == "lz4",
                adaptive: false,
                checksum,
                force,
                zero_policy: zero_target,
                manifest,
                limit: None,
            };
            let total = output::disk_size_hint(&src);
            start(Op::ImageCreate, &src, Some(&out));
            let res = output::with_progress(&progress, total, Op::ImageCreate, tune.show(quiet), || {
                ops::create(&src, &out, &o, &progress)
            });
            output::finish_or_interrupted(res, Op::ImageCreate, tune.json, &interrupt, true)
        }
        ImageCmd::Verify {
            image,
            manifest,
            format,
            tune,
        } => verify_cmd(&image, manifest, format, &tune, stop, quiet, &interrupt)?,
        cmd @ ImageCmd::Restore { .. } => restore_cmd(cmd, stop, quiet, &interrupt)?,
        ImageCmd::Scan {
            src,
            compress,
            checksum,
            chunk_size,
            tune,
        } => {
            let tuning = tune.tuning(stop, Op::ImageScan, own(Some(chunk_size), None))?;
            let o = ScanOptions {
                tuning,
                compress: compress == "lz4",
                checksum,
                limit: None,
            };
            let total = output::disk_size_hint(&src);
            start(Op::ImageScan, &src, None);
            let res = output::with_progress(&progress, total, Op::ImageScan, tune.show(quiet), || {
                ops::scan(&src, &o, &progress)
            });
            output::finish_or_interrupted(res, Op::ImageScan, tune.json, &interrupt, false)
        }
        ImageCmd::Info {
            image,
            manifest,
            format,
            json,
        } => output::info(ops::info(&image, &InfoOptions { manifest, format }), json),
    })
}

/// `image verify`.
fn verify_cmd(
    image: &std::path::Path,
    manifest: Option<PathBuf>,
    format: Option<Format>,
    tune: &Tune,
    stop: Option<ops::StopFlag>,
    quiet: bool,
    interrupt: &crate::interrupt::Interrupt,
) -> Result<ExitCode, ExitCode> {
    let progress: Progress = Default::default();
    let tuning = tune.tuning(stop, Op::ImageVerify, own(None, None))?;
    let o = VerifyOptions {
        tuning,
        manifest,
        format,
    };
    let total = image_size_hint(image, &o.manifest, format);
    start(Op::ImageVerify, image, None);
    let res = output::with_progress(&progress, total, Op::ImageVerify, tune.show(quiet), || {
        ops::verify(image, &o, &progress)
    });
    Ok(output::finish_or_interrupted(
        res,
        Op::ImageVerify,
        tune.json,
        interrupt,
        false,
    ))
}

/// `image restore`.
fn restore_cmd(
    cmd: ImageCmd,
    stop: Option<ops::StopFlag>,
    quiet: bool,
    interrupt: &crate::interrupt::Interrupt,
) -> Result<ExitCode, ExitCode> {
    let ImageCmd::Restore {
        image,
        dest,
        write_depth,
        zero_target,
        manifest,
        format,
        tune,
        force,
        verify_first,
        no_verify_first,
    } = cmd
    else {
        unreachable!("restore_cmd is called for `image restore` only")
    };
    let progress: Progress = Default::default();
    let tuning = tune.tuning(stop, Op::ImageRestore, own(None, Some(write_depth)))?;
    let o = RestoreOptions {
        tuning,
        force,
        zero_policy: zero_target,
        manifest,
        format,
        verify_first: (verify_first || no_verify_first).then_some(verify_first),
    };
    // A check pass first reads the image once more.
    let passes = if o.verifies_first(&dest) { 2 } else { 1 };
    let total = passes * image_size_hint(&image, &o.manifest, format);
    start(Op::ImageRestore, &image, Some(&dest));
    let res = output::with_progress(&progress, total, Op::ImageRestore, tune.show(quiet), || {
        ops::restore(&image, &dest, &o, &progress)
    });
    Ok(output::finish_or_interrupted(
        res,
        Op::ImageRestore,
        tune.json,
        interrupt,
        true,
    ))
}

/// Logs the start of an image operation.
fn start(op: Op, input: &std::path::Path, output: Option<&std::path::Path>) {
    let output = output.map_or_else(|| "-".into(), |p| p.display().to_string());
    tracing::info!(input = %input.display(), %output, "{} started", op.name());
}

/// The disk size an image holds, for the progress bar (0 if unknown).
fn image_size_hint(image: &std::path::Path, manifest: &Option<PathBuf>, format: Option<Format>) -> u64 {
    let o = InfoOptions {
        manifest: manifest.clone(),
        format,
    };
    ops::info(image, &o).map(|i| i.disk_size).unwrap_or(0)
}
