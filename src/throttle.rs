//! How much of the host a run may take: `--bwlimit`, `--ionice`, `--nice`, and their defaults
//! from a config file, as vzdump reads `/etc/vzdump.conf`.
//!
//! The file is `$DISKSTREAM_CONFIG` if set (it must then exist), else `/etc/diskstream.toml` if
//! present. Keys (all optional; unknown keys are refused, so a typo is not silently ignored):
//!
//! ```toml
//! bwlimit = "200M"          # bytes of disk data per second (the units of --bwlimit; 0: none)
//! ionice = "best-effort:7"  # idle | best-effort | best-effort:0..7
//! nice = 10                 # 0..19
//! ```
//!
//! A flag on the command line wins over the file: `--bwlimit 0` runs unlimited whatever the file
//! says (0 is no limit, as rsync and vzdump read it).

use std::path::{Path, PathBuf};

use clap::Args;
use diskstream_engine::priority::{self, IoPriority};
use serde::Deserialize;

/// The defaults file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    bwlimit: Option<String>,
    ionice: Option<String>,
    nice: Option<i32>,
}

/// `--bwlimit`, `--ionice`, `--nice`.
#[derive(Args, Debug, Clone, Default)]
pub struct Throttle {
    /// Limit disk data to RATE bytes per second, spread evenly (50M = 50·10⁶, 50MiB = 50·2²⁰;
    /// 0 = no limit, as in rsync); for an export, shared by the disks moving at the same time.
    #[arg(long, value_name = "RATE", value_parser = crate::units::parse_rate)]
    pub bwlimit: Option<u64>,
    /// I/O priority: idle, best-effort or best-effort:0..7 (as ionice -c3 / -c2 -nN).
    #[arg(long, value_name = "CLASS[:LEVEL]")]
    pub ionice: Option<IoPriority>,
    /// CPU niceness 0..19 for the whole run (as nice -n).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: Option<i32>,
}

/// Where the defaults file is, if any: `$DISKSTREAM_CONFIG` (must exist) or
/// `/etc/diskstream.toml` (when present). Either must be a regular file (or a link to one): a
/// directory or FIFO by that name is an error, not a file without defaults.
fn defaults_path() -> Result<Option<PathBuf>, String> {
    let (path, named) = match std::env::var_os("DISKSTREAM_CONFIG") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), " (named by DISKSTREAM_CONFIG)"),
        _ => (PathBuf::from("/etc/diskstream.toml"), ""),
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(path)),
        Ok(m) => Err(format!(
            "{}: not a regular file ({}){named}; the defaults file is a TOML file",
            path.display(),
            diskstream_engine::input::kind_name(&m.file_type())
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_empty() => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{}: no such file{named}", path.display())),
        Err(e) => Err(format!("{}: {e}{named}", path.display())),
    }
}

fn load(path: &Path) -> Result<Defaults, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > 64 << 10 {
        return Err(format!(
            "{}: too large for a defaults file ({} bytes)",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))
}

impl Throttle {
    /// The flags, with what the command line left unset taken from the defaults file; a
    /// `bwlimit` of 0 (no limit) comes back as `None`.
    pub fn with_defaults(&self) -> Result<Self, String> {
        let mut t = self.merged()?;
        t.bwlimit = t.bwlimit.filter(|&b| b > 0);
        Ok(t)
    }

    fn merged(&self) -> Result<Self, String> {
        let Some(path) = defaults_path()? else {
            return Ok(self.clone());
        };
        let d = load(&path)?;
        let at = |key: &str, e: String| format!("{}: {key}: {e}", path.display());
        let bwlimit = match (self.bwlimit, d.bwlimit) {
            (Some(b), _) => Some(b),
            (None, Some(s)) => Some(crate::units::parse_rate(&s).map_err(|e| at("bwlimit", e))?),
            (None, None) => None,
        };
        let ionice = match (self.ionice, d.ionice) {
            (Some(p), _) => Some(p),
            (None, Some(s)) => Some(s.parse().map_err(|e| at("ionice", e))?),
            (None, None) => None,
        };
        let nice = match (self.nice, d.nice) {
            (Some(n), _) => Some(n),
            (None, Some(n)) if (0..=19).contains(&n) => Some(n),
            (None, Some(n)) => return Err(at("nice", format!("{n} is not in 0..19"))),
            (None, None) => None,
        };
        Ok(Self { bwlimit, ionice, nice })
    }

    /// Applies `--ionice` and `--nice` to this process (before it starts its threads).
    pub fn apply_priorities(&self) -> Result<(), String> {
        if let Some(p) = self.ionice {
            priority::set_io_priority(p).map_err(|e| format!("--ionice {p}: {e}"))?;
        }
        if let Some(n) = self.nice {
            priority::set_nice(n).map_err(|e| format!("--nice {n}: {e}"))?;
        }
        Ok(())
    }
}
