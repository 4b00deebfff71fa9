//! Argument parsing and dispatch: `diskstream image {create,verify,restore,info}` and `demo`.
//! Exit codes (documented in the README): 0 success, 1 failure, 2 usage, 3 integrity (the data
//! is damaged: corrupt or truncated image, checksum mismatch), 130/143 interrupted by
//! SIGINT/SIGTERM (partial outputs removed).

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

use crate::output;
use crate::units::parse_size;

#[derive(Parser, Debug)]
#[command(name = "diskstream", version, about = "Export VM disks to verified images, fast")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
        #[arg(long, default_value = "raw")]
        format: Format,
        /// Compression of dsimg data chunks.
        #[arg(long, default_value = "lz4", value_parser = ["lz4", "none"])]
        compress: String,
        /// Chunk digest recorded in the image and manifest: blake3 (fast on every CPU) or sha256.
        #[arg(long, default_value = "blake3")]
        checksum: Checksum,
        #[command(flatten)]
        tune: Tune,
        /// Replace OUT if it exists (it is replaced only once the new image is complete).
        #[arg(long)]
        force: bool,
    },
    /// Re-read an image with O_DIRECT and check every chunk.
    Verify {
        /// The image (dsimg, or raw with IMAGE.manifest beside it).
        image: PathBuf,
        #[command(flatten)]
        tune: Tune,
    },
    /// Write the disk an image holds to DEST (a new file or a block device), checking as it goes.
    Restore {
        /// The image.
        image: PathBuf,
        /// Destination file (created) or block device.
        dest: PathBuf,
        #[command(flatten)]
        tune: Tune,
        /// Replace DEST if it is an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Read SRC through the pipeline (zero check, digest, optional lz4) into a null sink.
    Scan {
        /// Source block device or file.
        src: PathBuf,
        /// Also lz4-compress each chunk (and discard the result).
        #[arg(long, default_value = "none", value_parser = ["lz4", "none"])]
        compress: String,
        /// Chunk digest: blake3 or sha256.
        #[arg(long, default_value = "blake3")]
        checksum: Checksum,
        #[command(flatten)]
        tune: Tune,
    },
    /// Show what an image holds (checks its structure, not every chunk).
    Info {
        /// The image.
        image: PathBuf,
        /// Manifest of a raw image (default IMAGE.manifest).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Performance and target knobs shared by the image commands.
#[derive(Args, Debug, Clone)]
struct Tune {
    /// Chunk size in bytes (power of two, 4096..=64 MiB; K/M suffixes accepted).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    chunk_size: u64,
    /// Reads in flight.
    #[arg(long, default_value_t = ops::DEFAULT_QUEUE_DEPTH)]
    queue_depth: u32,
    /// Writes in flight (raw output and restore).
    #[arg(long, default_value_t = ops::DEFAULT_WRITE_DEPTH)]
    write_depth: u32,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Read/write backend: uring (falls back to pread if the kernel refuses) or pread.
    #[arg(long, default_value = "uring")]
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
    /// Zero chunks on a block device target: write (default), discard, or skip (target known zeroed).
    #[arg(long, default_value = "write")]
    zero_target: ZeroPolicy,
    /// Manifest path (default OUT.manifest; required for a block device OUT).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Print one JSON object with the result instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Directory to build the demo in (default: a new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the sample disk (K/M/G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    size: u64,
}

impl Tune {
    /// The engine's tuning from these flags, with the SIGINT/SIGTERM flag as its stop flag.
    fn options(&self, stop: Option<ops::StopFlag>) -> Result<Tuning, String> {
        let chunk_size =
            u32::try_from(self.chunk_size).map_err(|_| format!("--chunk-size {} is too large", self.chunk_size))?;
        Ok(Tuning {
            chunk_size,
            queue_depth: self.queue_depth,
            write_depth: self.write_depth,
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
        })
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Image(cmd) => image(cmd),
        Cmd::Demo(args) => crate::export_cmd::demo(args.dir, args.size),
        Cmd::Export(args) => crate::export_cmd::export(args),
        Cmd::List(args) => crate::export_cmd::list(args),
        Cmd::Remove(args) => crate::export_cmd::remove(args),
        Cmd::Pki(cmd) => crate::agent_cmd::pki(cmd),
        Cmd::Agent(args) => crate::agent_cmd::agent(args),
        Cmd::Bench(args) => crate::bench_cmd::run(args),
        Cmd::Completions { shell } => crate::install_cmd::completions(Cli::command(), shell),
        Cmd::Man { dir } => crate::install_cmd::man(Cli::command(), dir.as_deref()),
    }
}

fn image(cmd: ImageCmd) -> ExitCode {
    let progress: Progress = Default::default();
    // Installed before anything is opened: a SIGINT/SIGTERM from here on stops the operation at
    // the next chunk, its partial outputs are removed, and the exit code is 130/143.
    let interrupt = match crate::interrupt::Interrupt::install() {
        Ok(i) => i,
        Err(e) => return output::fail_msg(&format!("cannot install the SIGINT/SIGTERM handlers: {e}")),
    };
    let stop = Some(interrupt.flag());
    match cmd {
        ImageCmd::Create {
            src,
            out,
            format,
            compress,
            checksum,
            tune,
            force,
        } => {
            let tuning = match tune.options(stop) {
                Ok(t) => t,
                Err(e) => return output::fail_msg(&e),
            };
            let o = CreateOptions {
                tuning,
                format,
                compress: compress == "lz4",
                checksum,
                force,
                zero_policy: tune.zero_target,
                manifest: tune.manifest.clone(),
                limit: None,
            };
            let total = output::disk_size_hint(&src);
            let res = output::with_progress(&progress, total, "create", tune.json, || {
                ops::create(&src, &out, &o, &progress)
            });
            output::finish_or_interrupted(res, tune.json, &interrupt, true)
        }
        ImageCmd::Verify { image, tune } => {
            let tuning = match tune.options(stop) {
                Ok(t) => t,
                Err(e) => return output::fail_msg(&e),
            };
            let o = VerifyOptions {
                tuning,
                manifest: tune.manifest.clone(),
            };
            let total = image_size_hint(&image, &o.manifest);
            let res = output::with_progress(&progress, total, "verify", tune.json, || {
                ops::verify(&image, &o, &progress)
            });
            output::finish_or_interrupted(res, tune.json, &interrupt, false)
        }
        ImageCmd::Restore {
            image,
            dest,
            tune,
            force,
        } => {
            let tuning = match tune.options(stop) {
                Ok(t) => t,
                Err(e) => return output::fail_msg(&e),
            };
            let o = RestoreOptions {
                tuning,
                force,
                zero_policy: tune.zero_target,
                manifest: tune.manifest.clone(),
            };
            let total = image_size_hint(&image, &o.manifest);
            let res = output::with_progress(&progress, total, "restore", tune.json, || {
                ops::restore(&image, &dest, &o, &progress)
            });
            output::finish_or_interrupted(res, tune.json, &interrupt, true)
        }
        ImageCmd::Scan {
            src,
            compress,
            checksum,
            tune,
        } => {
            let tuning = match tune.options(stop) {
                Ok(t) => t,
                Err(e) => return output::fail_msg(&e),
            };
            let o = ScanOptions {
                tuning,
                compress: compress == "lz4",
                checksum,
                limit: None,
            };
            let total = output::disk_size_hint(&src);
            let res = output::with_progress(&progress, total, "scan", tune.json, || ops::scan(&src, &o, &progress));
            output::finish_or_interrupted(res, tune.json, &interrupt, false)
        }
        ImageCmd::Info { image, manifest, json } => output::info(ops::info(&image, &InfoOptions { manifest }), json),
    }
}

/// The disk size an image holds, for the progress bar (0 if unknown).
fn image_size_hint(image: &std::path::Path, manifest: &Option<PathBuf>) -> u64 {
    let o = InfoOptions {
        manifest: manifest.clone(),
    };
    ops::info(image, &o).map(|i| i.disk_size).unwrap_or(0)
}
