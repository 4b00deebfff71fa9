//! The operations the CLI exposes (and embedders call), one file each: [`create()`],
//! [`verify()`], [`restore()`], [`scan()`], [`info()`] and [`detect`]. Each checks what it was
//! asked, opens a [`crate::source::Source`] and a [`crate::sink::Sink`], and runs them as one
//! [`crate::transfer::Transfer`], which returns the [`Report`] of what really ran.
//!
//! - [`options`]: [`Tuning`] (shared) and one options type per operation.
//! - [`report`]: [`Report`] and [`Info`], serializable as the CLI prints them.
//! - [`image`]: what several operations share about images: detection, manifest paths and
//!   loading, the output checks.

pub mod create;
mod image;
pub mod info;
pub mod options;
pub mod report;
pub mod restore;
pub mod scan;
pub mod stream;
pub mod verify;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use create::create;
pub use image::detect;
pub use info::info;
pub use options::{
    default_threads, CreateOptions, InfoOptions, RestoreOptions, ScanOptions, StopFlag, Tuning, VerifyOptions,
    DEFAULT_CHUNK, DEFAULT_QUEUE_DEPTH, DEFAULT_WRITE_DEPTH,
};
pub use report::{Info, Report};
pub use restore::restore;
pub use scan::scan;
pub use stream::{receive, send};
pub use verify::verify;

pub use crate::sink::manifest::IMAGE_DIGEST_XATTR;

/// Bytes of disk processed so far; the CLI polls it to draw progress.
pub type Progress = Arc<AtomicU64>;

/// An image format: what `create` writes, what `verify`, `restore` and `info` find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A sparse raw copy plus `OUT.manifest`.
    Raw,
    /// The native `dsimg` image.
    Dsimg,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Self::Raw),
            "dsimg" => Ok(Self::Dsimg),
            _ => Err(format!("unknown format {s:?} (expected raw or dsimg)")),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Raw => "raw",
            Self::Dsimg => "dsimg",
        })
    }
}
