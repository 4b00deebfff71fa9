//! diskstream's engine: reads a disk with O_DIRECT through io_uring, checksums and compresses it
//! in parallel, and writes a sparse raw copy or a native `dsimg` image.
//!
//! # A tour, in the order the bytes flow
//!
//! - [`source`]: opens the block device or file (`O_DIRECT`), learns its size and logical block
//!   size, maps a file's holes, and cuts the disk into a [`source::ChunkPlan`] per chunk.
//! - [`buf`]: the aligned buffers every stage hands on, from a bounded pool ([`buf::BufPool`]) that
//!   caps memory and makes steady state allocation-free.
//! - [`ring`]: the read ring: io_uring with many reads in flight ([`ring::uring`]) or the pread
//!   reference ([`ring::pread`]), chosen by [`ring::probe`].
//! - [`pipeline`]: worker threads that detect zero chunks, hash (SHA-256) and compress (lz4), and
//!   [`pipeline::Reorder`] to put chunks back in disk order.
//! - [`sink`]: where chunks land: a sparse raw file or device written through io_uring with
//!   O_DIRECT ([`sink::raw`]), or a `dsimg` stream ([`sink::image`]).
//! - [`format`]: the `dsimg` byte format (encoder and decoder; the compatibility boundary,
//!   specified in `docs/image-format.md`) and [`manifest`]: the per-chunk digest list.
//! - [`input`]: inputs refused unless they are regular files (or block devices) before any open
//!   that could block, and manifests read no further than the disk they describe.
//! - [`ops`]: the operations the CLI exposes: create, verify, restore, info.
//!
//! `unsafe` lives only in [`sys`], [`buf`] and [`ring::uring`]; every block says why it is sound.

pub mod bench;
pub mod buf;
pub mod check;
pub mod digest;
pub mod direct_read;
pub mod error;
pub mod format;
pub mod fuzzing;
pub mod input;
pub mod manifest;
pub mod ops;
pub mod pipeline;
pub mod ring;
pub mod sample;
pub mod sink;
pub mod source;
pub(crate) mod sys;

pub use error::{Error, Result};
