//! Sinks: where processed chunks land.
//!
//! - [`target`]: opens an output (a new file under a temporary name, renamed into place only
//!   when complete, or a block device written in place) with O_DIRECT.
//! - [`raw`]: a sparse raw copy of the disk, chunk buffers written through io_uring exactly as
//!   they were read (no copy in user space), zero chunks left as holes.
//! - [`image`]: an O_DIRECT staging writer under the streaming `dsimg` encoder.

pub mod image;
pub mod raw;
pub mod target;

/// What to do with zero chunks on a block device target (a file target always gets holes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroPolicy {
    /// Make the range read as zeroes (`FALLOC_FL_ZERO_RANGE`, which the device may offload;
    /// plain zero writes where unsupported). The default: the device's old content never
    /// survives where the disk has zeroes.
    #[default]
    Write,
    /// Discard the range with a zeroes-on-read guarantee (`FALLOC_FL_PUNCH_HOLE`); fails where
    /// the device cannot guarantee it.
    Discard,
    /// Leave the range untouched: only correct if the target is known to be zeroed already.
    Skip,
}

impl std::str::FromStr for ZeroPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "write" => Ok(Self::Write),
            "discard" => Ok(Self::Discard),
            "skip" => Ok(Self::Skip),
            _ => Err(format!("unknown zero policy {s:?} (expected write, discard or skip)")),
        }
    }
}
