//! `create`: a disk ([`DiskSource`]) into a raw copy ([`RawSink`]) or a `dsimg` ([`ImageSink`]),
//! with its manifest, committed as a pair.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::image::{check_outputs, manifest_path, output_head, say_overwritten};
use super::{CreateOptions, Format, Progress, Report};
use crate::error::Result;
use crate::format::Header;
use crate::sink::image::ImageSink;
use crate::sink::manifest::ManifestOut;
use crate::sink::raw::{Overwritten, RawSink};
use crate::sink::target::Target;
use crate::sink::Sink;
use crate::source::{Disk, DiskSource};
use crate::transfer::Transfer;

/// Reads `src` (a block device or file) and writes `out` in `o.format`, plus its manifest.
pub fn create(src: &Path, out: &Path, o: &CreateOptions, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    let t = &o.tuning;
    t.check()?;
    let disk = Disk::open(src)?;
    let mut source = DiskSource::new(disk, t.chunk_size, o.checksum)
        .limit(o.limit)
        .checked()?;
    let info = crate::source::Source::info(&source);
    let manifest_path = manifest_path(out, o.manifest.as_deref())?;
    check_outputs(src, out, Some(&manifest_path), o.force, o.format)?;
    // The manifest's temporary file first: every refusal comes before the first byte is written.
    let manifest_target = Target::create_file(&manifest_path, o.force, &[src])?;
    // A device's manifest from an earlier run goes just before its first byte is overwritten
    // (`RawSink::with_manifest`): a refusal or a stop before that leaves both as they were.
    let target = Target::create(out, o.force, true, &[src])?;
    let temps = [
        (target.write_path().to_owned(), out.to_owned()),
        (manifest_target.write_path().to_owned(), manifest_path.clone()),
    ];
    let mut head = output_head("create", out, manifest_path, o.format, &target);
    head.warnings
        .extend(target.warnings().iter().chain(manifest_target.warnings()).cloned());
    let manifest = ManifestOut::new(manifest_target, o.checksum, info.disk_size, info.chunk_size);
    let device = target.is_device();
    let written = Arc::new(Overwritten::default());
    let sink: Box<dyn Sink> = match o.format {
        Format::Raw => Box::new(
            RawSink::tuned(target, info.disk_size, info.chunk_size, t, o.zero_policy)?
                .with_manifest(manifest)
                .with_overwritten(Arc::clone(&written)),
        ),
        Format::Dsimg => {
            let header = Header {
                disk_size: info.disk_size,
                chunk_size: info.chunk_size,
                checksum: o.checksum,
            };
            Box::new(
                ImageSink::new(target, header, t.write_backend(), o.compress)?
                    .with_manifest(manifest)
                    .with_stop(t.stop.clone()),
            )
        }
    };
    // A device output is written in place: a failure says what became of it.
    let mut report = Transfer::new(head, t, progress, t0)
        .run(&mut source, sink)
        .map_err(|e| e.naming_all(&temps))
        .map_err(|e| say_overwritten(e, out, device, &written))?;
    report.warnings.extend(grew(src, info.disk_size, o.limit));
    Ok(report)
}

/// A warning if the regular file `src` is now longer than the `read` bytes the image holds
/// (it grew while it was read; a shrink fails the read): the image is of its start.
fn grew(src: &Path, read: u64, limit: Option<u64>) -> Option<String> {
    let now = std::fs::metadata(src).ok().filter(|m| m.is_file())?.len();
    (limit.is_none() && now > read).then(|| {
        format!(
            "{} grew from {read} to {now} bytes while it was read: the image holds its first {read} bytes \
             (image a snapshot or a disk not in use for a consistent copy)",
            src.display()
        )
    })
}
