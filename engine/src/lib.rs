//! diskstream's engine: reads a disk with O_DIRECT through io_uring, checksums and compresses it
//! in parallel, and writes a sparse raw copy or a native `dsimg` image.
//!
//! # A tour, in the order the bytes flow
//!
//! - [`disk`]: a [`disk::Disk`] (block device or file, `O_DIRECT`, size, logical block size,
//!   holes) and [`plan`]: the pure planner that cuts it into a [`plan::ReadPlan`].
//! - [`source`]: where chunks come from, behind the [`source::Source`] trait: a disk read as a
//!   [`source::DiskSource`], or a `dsimg` frame stream read as a [`source::FrameSource`] (a file,
//!   or any byte stream: pipe, socket).
//! - [`buf`]: the aligned buffers every stage hands on, from a bounded pool ([`buf::BufPool`]) that
//!   caps memory and makes steady state allocation-free.
//! - [`ring`]: the read ring: io_uring with many reads in flight ([`ring::uring`]) or the pread
//!   reference ([`ring::pread`]), chosen by [`ring::probe`].
//! - [`pipeline`]: worker threads that detect zero chunks, hash (BLAKE3 or SHA-256) and compress
//!   (lz4), and [`pipeline::Reorder`] to put chunks back in disk order; [`check`]: the workers that
//!   check `dsimg` frames.
//! - [`sink`]: where chunks land, behind the [`sink::Sink`] trait (its protocol is documented
//!   there): a sparse raw file or device written through io_uring with O_DIRECT, out of order
//!   ([`sink::raw`]); a `dsimg` stream, in order ([`sink::image`]); a check against a manifest
//!   ([`sink::verify`]); nothing ([`sink::null`]).
//! - [`transfer`]: [`transfer::Transfer`] runs any source into any sink and assembles the
//!   [`report::Report`].
//! - [`tuning`]: [`tuning::Tuning`], the knobs every operation shares; [`stop`]: the stop flag
//!   and progress counter a frontend holds; [`pace`]: the `--bwlimit` pacer; [`priority`]:
//!   `--ionice`/`--nice`.
//! - [`format`](mod@format): the `dsimg` byte format (encoder and decoder; the compatibility boundary,
//!   specified in `docs/image-format.md`) and [`manifest`]: the per-chunk digest list.
//! - [`input`]: inputs refused unless they are regular files (or block devices) before any open
//!   that could block, and manifests read no further than the disk they describe.
//! - [`ops`]: the operations the CLI exposes, one file each: create, verify, restore, scan, info,
//!   with their options (one type per operation).
//! - [`bench`](mod@bench): stage measurements for `diskstream bench`.
//!
//! Modules depend on each other in one direction only (no cycle): disk, plan, stop, tuning, pace
//! below ring and pipeline; those below source and sink; then report, transfer, and ops on top.
//!
//! `unsafe` lives only in [`buf`], [`ring::uring`] and the private `sys` module (where rustix has
//! no safe wrapper); every block says why it is sound. The `testing` feature adds `sample`
//! (deterministic sample disks and data), `fuzzing` (the fuzz targets' entry points) and
//! `flock_holder` (a process holding a file's lock): test support, not API.
//!
//! # Embedding
//!
//! - The operations in [`ops`] check their options ([`tuning::Tuning::check`], the chunk count
//!   and the buffers' memory against the machine's) and refuse with [`ErrorKind::Invalid`]
//!   before anything is allocated or written. A frontend that runs a [`source::Source`] through
//!   [`transfer::Transfer`] itself should call `Tuning::check` and
//!   [`source::DiskSource::checked`] first (the source checks again when it runs).
//! - Options and reports are plain structs with public fields: build them with
//!   `..Default::default()`, and do not destructure them exhaustively (fields are added).
//!   Error texts name the CLI's flags (`--chunk-size`, `--force`), the one frontend they were
//!   written for; branch on [`Error::kind`], not on the text.
//! - Several operations may run at once in one process. Outputs of one name get temporary files
//!   of their own; two `force` creates of one name take turns at the commit, the last one's
//!   pair wins ([`sink::target`]).
//! - The engine installs no signal handler and no logging subscriber and spawns no thread that
//!   outlives an operation. [`stop::StopFlag`] stops one, [`stop::Progress`] counts its bytes.
//!   In builds with debug assertions, the environment variables `DISKSTREAM_TEST_ONLY_FAIL_AT`
//!   and `DISKSTREAM_TEST_ONLY_CRASH_AT` inject faults at the commit for the project's tests
//!   (`docs/image-format.md`); release builds never read them.

#![deny(missing_docs)]

pub mod bench;
pub mod buf;
pub mod check;
pub mod digest;
pub mod direct_read;
pub mod disk;
pub mod error;
#[cfg(feature = "testing")]
pub mod flock_holder;
pub mod format;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod input;
pub mod manifest;
pub mod ops;
pub mod pace;
pub mod pipeline;
pub mod plan;
pub mod priority;
pub mod report;
pub mod ring;
#[cfg(feature = "testing")]
pub mod sample;
#[cfg(not(feature = "testing"))]
mod sample;
pub mod sink;
pub mod source;
pub mod stop;
pub(crate) mod sys;
pub mod transfer;
pub mod tuning;

pub use error::{Error, ErrorKind, Result};
pub use sample::write_sample_disk;
