//! `send` and `receive`: a disk crossing a byte stream between two nodes as a `dsimg` frame
//! stream. `send` reads a disk ([`DiskSource`]) into a [`StreamSink`] on any `Write`;
//! `receive` reads the stream ([`FrameSource`]: every frame's CRC and digest, the index and the
//! trailer checked) into a sparse raw file ([`RawSink`], synced every [`RECEIVE_FLUSH_EVERY`] as
//! it grows) with its manifest, committed as a pair (fsynced, renamed) only when the whole
//! stream checked out.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::image::{manifest_path, output_head};
use super::{CreateOptions, Format, Progress, Report};
use crate::error::{Error, Result};
use crate::format::Header;
use crate::report::ReportHead;
use crate::sink::manifest::ManifestOut;
use crate::sink::raw::RawSink;
use crate::sink::stream::StreamSink;
use crate::sink::target::Target;
use crate::source::{Disk, DiskSource, FrameSource, FrameStream, Source};
use crate::transfer::Transfer;

/// Reads `src` (a block device or file) and writes it to `out` as a `dsimg` stream named `name`
/// (in errors); `o.compress` makes data chunks lz4 frames, `o.checksum` is the chunk digest.
pub fn send<W: Write + Send>(
    src: &Path,
    out: W,
    name: &Path,
    o: &CreateOptions,
    progress: &Progress,
) -> Result<Report> {
    let t0 = Instant::now();
    let t = &o.tuning;
    t.check()?;
    let disk = Disk::open(src)?;
    let mut source = DiskSource::new(disk, t.chunk_size, o.checksum)
        .limit(o.limit)
        .checked()?;
    let info = source.info();
    let header = Header {
        disk_size: info.disk_size,
        chunk_size: info.chunk_size,
        checksum: o.checksum,
    };
    let head = ReportHead {
        output: Some(name.to_owned()),
        format: Some(Format::Dsimg),
        ..ReportHead::new("send")
    };
    let mut sink = StreamSink::new(out, header, name.to_owned(), o.compress)?;
    if o.adaptive {
        // Chunks worked on ahead of the sink: the read ring's depth, the workers and the pools'
        // spare buffers (`Pools::new`).
        sink = sink.adaptive(info.chunk_size, t.queue_depth + t.threads as u32 + 2);
    }
    Transfer::new(head, t, progress, t0).run(&mut source, Box::new(sink))
}

/// How often a received dump is synced while it is written: the stream, not the disk, sets the
/// pace, so the device has time for the flushes the commit's fsync would otherwise pay at the
/// end. Measured over agents (1 GiB, three runs each, `docs/performance.md`): 1 Gbit/s link with
/// lz4 175–181 MB/s without, 213–224 every 16 MiB, 209–214 every 32, 207–210 every 64; the open
/// link 287–344 → 378–382 (no compression), random data 247–307 → 325–348.
pub const RECEIVE_FLUSH_EVERY: u64 = 16 << 20;

/// What the receiving end knows of a stream from its own configuration, before reading it: a
/// header that says otherwise is refused before any file is created or any memory sized by it
/// is taken (a header may claim any disk size or the smallest chunks).
#[derive(Clone, Copy, Debug)]
pub struct Expected {
    /// The chunk digest the stream must use.
    pub checksum: crate::digest::Checksum,
    /// The disk's size in bytes.
    pub disk_size: u64,
}

/// Reads the `dsimg` stream `stream` (named `name` in errors) into the sparse raw file `out`
/// with its manifest `OUT.manifest`, both replaced if they exist (`out` is in a staging
/// directory its caller owns). The stream's header must match `expect` and have chunks of
/// `o.tuning.chunk_size`. Nothing appears under `out` unless every frame and the trailer
/// checked out.
pub fn receive<R: FrameStream>(
    stream: R,
    name: &Path,
    out: &Path,
    expect: Expected,
    o: &CreateOptions,
    progress: &Progress,
) -> Result<Report> {
    let t0 = Instant::now();
    let t = &o.tuning;
    t.check()?;
    let mut source = FrameSource::new(stream, name)?;
    let info = source.info();
    let refuse = |what: String| Err(Error::Invalid(format!("{}: {what}", name.display())));
    if info.checksum != expect.checksum {
        return refuse(format!(
            "the stream's chunk digest is {}, {} was asked for",
            info.checksum.name(),
            expect.checksum.name()
        ));
    }
    if info.disk_size != expect.disk_size {
        return refuse(format!(
            "the stream is of a disk of {} bytes, this disk has {} bytes",
            info.disk_size, expect.disk_size
        ));
    }
    if info.chunk_size != t.chunk_size {
        return refuse(format!(
            "the stream's chunks are of {} bytes, {} were asked for",
            info.chunk_size, t.chunk_size
        ));
    }
    let manifest_path = manifest_path(out, None)?;
    let manifest_target = Target::create_file(&manifest_path, true, &[])?;
    let target = Target::create(out, true, true, &[])?;
    let temps = [
        (target.write_path().to_owned(), out.to_owned()),
        (manifest_target.write_path().to_owned(), manifest_path.clone()),
    ];
    let head = output_head("receive", out, manifest_path, Format::Raw, &target);
    let manifest = ManifestOut::new(manifest_target, info.checksum, info.disk_size, info.chunk_size);
    let flush_every = t
        .flush_every()
        .map_or(RECEIVE_FLUSH_EVERY, |e| e.min(RECEIVE_FLUSH_EVERY));
    let sink = RawSink::tuned(target, info.disk_size, info.chunk_size, t, o.zero_policy)?
        .with_flush_every(Some(flush_every))
        .with_manifest(manifest);
    Transfer::new(head, t, progress, t0)
        .run(&mut source, Box::new(sink))
        .map_err(|e| e.naming_all(&temps))
}
