//! The operations the CLI exposes (and embedders call), one file each: [`create()`],
//! [`verify()`], [`restore()`], [`scan()`], [`info()`] and [`detect`]. Each checks what it was
//! asked, opens a [`crate::source::Source`] and a [`crate::sink::Sink`], and runs them as one
//! [`crate::transfer::Transfer`], which returns the [`Report`] of what really ran.
//!
//! - [`options`]: [`Tuning`] (shared) and one options type per operation.
//! - [`crate::report`]: [`Report`] and [`Info`], serializable as the CLI prints them.
//! - `image`: what several operations share about images: detection, manifest paths and
//!   loading, the output checks.

pub mod create;
mod image;
mod image_file;
pub mod info;
pub mod options;
pub mod restore;
pub mod scan;
pub mod stream;
pub mod verify;

pub use crate::format::Format;
pub use crate::report::{Info, Report};
pub use crate::stop::Progress;
pub use create::create;
pub use image::detect;
pub use info::info;
pub use options::{
    default_threads, CreateOptions, InfoOptions, RestoreOptions, ScanOptions, StopFlag, Tuning, VerifyOptions,
    DEFAULT_CHUNK, DEFAULT_QUEUE_DEPTH, DEFAULT_WRITE_DEPTH, MAX_THREADS,
};
pub use restore::restore;
pub use scan::scan;
pub use stream::{receive, send, Expected};
pub use verify::verify;

pub use crate::sink::manifest::IMAGE_DIGEST_XATTR;
