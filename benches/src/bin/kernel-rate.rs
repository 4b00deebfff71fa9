//! `kernel-rate SRC [--mib N] [--slices N] [--threads N] [--secs S] [--checksum blake3|sha256]`:
//! the worker kernel's rate on `SRC`'s data with no I/O, the number `scripts/bench-compare` judges
//! the compressed export against. Reads `--mib` MiB of SRC (default 256) as `--slices` slices
//! spread over the whole source (default 16), then runs the engine's `pipeline::kernel` (zero
//! check + digest + lz4 block compress) per chunk of the engine's default size on `--threads`
//! threads (default: all cores) over disjoint chunks for `--secs` seconds (default 3). Prints one
//! JSON object on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use diskstream_benches::{cores, read_spread_sample, worker_rate, MIB};
use diskstream_engine::digest::Checksum;

fn main() -> ExitCode {
    let mut src: Option<PathBuf> = None;
    let (mut mib, mut slices, mut threads, mut secs) = (256usize, 16usize, cores(), 3.0f64);
    let mut checksum = Checksum::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Option<f64> {
            let v = args.next().and_then(|v| v.parse::<f64>().ok());
            if v.is_none() {
                eprintln!("kernel-rate: {name} needs a number");
            }
            v
        };
        match a.as_str() {
            "--mib" => match num("--mib") {
                Some(v) => mib = v as usize,
                None => return ExitCode::from(2),
            },
            "--slices" => match num("--slices") {
                Some(v) => slices = v as usize,
                None => return ExitCode::from(2),
            },
            "--threads" => match num("--threads") {
                Some(v) => threads = v as usize,
                None => return ExitCode::from(2),
            },
            "--secs" => match num("--secs") {
                Some(v) => secs = v,
                None => return ExitCode::from(2),
            },
            "--checksum" => match args.next().map(|v| v.parse::<Checksum>()) {
                Some(Ok(c)) => checksum = c,
                _ => {
                    eprintln!("kernel-rate: --checksum needs blake3 or sha256");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                eprintln!(
                    "usage: kernel-rate SRC [--mib N] [--slices N] [--threads N] [--secs S] [--checksum blake3|sha256]"
                );
                return ExitCode::SUCCESS;
            }
            _ if src.is_none() => src = Some(PathBuf::from(a)),
            _ => {
                eprintln!("kernel-rate: unexpected argument {a:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(src) = src else {
        eprintln!("usage: kernel-rate SRC [--mib N] [--slices N] [--threads N] [--secs S] [--checksum blake3|sha256]");
        return ExitCode::from(2);
    };
    let data = match read_spread_sample(&src, mib * MIB, slices) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kernel-rate: read {}: {e}", src.display());
            return ExitCode::FAILURE;
        }
    };
    let r = worker_rate(&data, checksum, threads, Duration::from_secs_f64(secs));
    println!(
        "{{\"kernel\":\"lz4+{checksum}\",\"checksum\":\"{checksum}\",\"threads\":{},\"sample_bytes\":{},\"bytes_processed\":{},\
         \"bytes_per_s\":{:.0},\"lz4_ratio\":{:.3}}}",
        r.threads,
        data.len(),
        r.bytes,
        r.bytes_per_s,
        r.ratio
    );
    ExitCode::SUCCESS
}
