//! `restore`: writes the disk an image holds to a file or device through a [`RawSink`], every
//! chunk checked before it is written: a `dsimg` as a [`FrameSource`](crate::source::FrameSource) (its structure checked
//! before the first byte lands), a raw image as a [`DiskSource`] through a [`VerifySink`] holding
//! its manifest.
//!
//! [`DiskSource`]: crate::source::DiskSource

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::image::{
    check_dsimg_manifest, check_outputs, dsimg_source, load_manifest, raw_image_source, say_overwritten,
    truncated_while_read,
};
use super::image_file::ImageFile;
use super::{Format, Progress, Report, RestoreOptions, Tuning};
use crate::error::{Error, Result};
use crate::format::reader::read_layout;
use crate::manifest::Manifest;
use crate::report::ReportHead;
use crate::sink::raw::{Overwritten, RawSink};
use crate::sink::target::{same_file, Target};
use crate::sink::verify::VerifySink;
use crate::source::Source;
use crate::transfer::Transfer;

/// The raw sink writing a disk of `size` bytes in `chunk_size` chunks to `dest`; the sweep of
/// `dest`'s leftovers spares the run's `inputs`. The output's warnings go to `head`.
fn raw_sink(
    dest: &Path,
    (size, chunk_size): (u64, u32),
    o: &RestoreOptions,
    inputs: &[&Path],
    head: &mut ReportHead,
) -> Result<RawSink> {
    let t = &o.tuning;
    let target = Target::create(dest, o.force, true, inputs)?;
    head.warnings.extend(target.warnings().iter().cloned());
    RawSink::tuned(target, size, chunk_size, t, o.zero_policy)
}

/// The check pass of `--verify-first`: every chunk of the image read from `source` and checked
/// (against `manifest` for a raw image), nothing written. Its time.
fn check_first(
    source: &mut dyn Source,
    image: &Path,
    manifest: Option<&Manifest>,
    t: &Tuning,
    progress: &Progress,
) -> Result<Duration> {
    let t0 = Instant::now();
    let sink = VerifySink::check_only(image, source.info().chunks());
    let sink = match manifest {
        Some(m) => sink.against(m),
        None => sink,
    };
    Transfer::new(ReportHead::new("verify"), t, progress, t0).run(source, Box::new(sink))?;
    Ok(t0.elapsed())
}

/// Writes the disk held by `image` to `dest` (a file, created, or a block device), checking
/// every chunk before it is written. A `dsimg` is checked structurally first, so a truncated
/// or damaged image is refused before the first byte lands on `dest`. A block device, written
/// in place, gets the whole image checked before the first byte is written (unless
/// [`RestoreOptions::verify_first`] says otherwise), so a damaged chunk never leaves it half
/// overwritten; a file is written under a temporary name, so a damaged chunk found mid-way
/// leaves `dest` untouched. Where a device was written mid-way after all (`--no-verify-first`,
/// an interrupt, an image changed between the passes), the error says how much
/// ([`Error::PartlyWritten`]).
pub fn restore(image: &Path, dest: &Path, o: &RestoreOptions, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    let t = &o.tuning;
    t.check()?;
    // One descriptor for every read: the format, the structure, the frames.
    let img = ImageFile::open(image)?;
    let mut head = ReportHead {
        output: Some(dest.to_owned()),
        format: Some(img.format(o.format, o.manifest.as_deref())?),
        ..ReportHead::new("restore")
    };
    let written = Arc::new(Overwritten::default());
    let mut device = false;
    // The output's temporary file, named in errors by the output's own name.
    let mut temp = None;
    // A closure, so that every failure after the sink exists says what became of a device.
    let mut run = || match head.format {
        Some(Format::Dsimg) => {
            let layout = read_layout(img.file(), image)?;
            // Its manifest, if one is beside it or named, must be its own before a byte is written.
            head.manifest = check_dsimg_manifest(&img, o.manifest.as_deref(), &layout)?;
            check_outputs(image, dest, None, o.force, Format::Raw)?;
            let mpath = head.manifest.clone();
            not_the_manifest(dest, mpath.as_deref())?;
            let inputs: Vec<&Path> = std::iter::once(image).chain(mpath.as_deref()).collect();
            let geometry = (layout.header.disk_size, layout.header.chunk_size);
            let sink = raw_sink(dest, geometry, o, &inputs, &mut head)?.with_overwritten(Arc::clone(&written));
            device = sink.target().is_device();
            temp = Some(sink.target().write_path().to_owned());
            if o.verify_first.unwrap_or(device) {
                let mut check = dsimg_source(img.try_clone()?, &layout)?;
                head.verified_first = Some(check_first(&mut check, image, None, t, progress)?);
            }
            let mut source = dsimg_source(img.try_clone()?, &layout)?;
            Transfer::new(head.clone(), t, progress, t0).run(&mut source, Box::new(sink))
        }
        _ => {
            let (mpath, manifest) = load_manifest(&img, o.manifest.as_deref())?;
            check_outputs(image, dest, None, o.force, Format::Raw)?;
            not_the_manifest(dest, Some(&mpath))?;
            let geometry = (manifest.disk_size, manifest.chunk_size);
            let sink = raw_sink(dest, geometry, o, &[image, &mpath], &mut head)?.with_overwritten(Arc::clone(&written));
            device = sink.target().is_device();
            temp = Some(sink.target().write_path().to_owned());
            head.manifest = Some(mpath);
            if o.verify_first.unwrap_or(device) {
                let mut check = raw_image_source(&img, &manifest)?;
                head.verified_first = Some(check_first(&mut check, image, Some(&manifest), t, progress)?);
            }
            let mut source = raw_image_source(&img, &manifest)?;
            let chunks = source.info().chunks();
            let sink = VerifySink::new(Box::new(sink), image, chunks).against(&manifest);
            Transfer::new(head.clone(), t, progress, t0).run(&mut source, Box::new(sink))
        }
    };
    let res = run().map_err(|e| truncated_while_read(e, image));
    let res = res.map_err(|e| match &temp {
        Some(t) => e.naming(t, dest),
        None => e,
    });
    res.map_err(|e| say_overwritten(e, dest, device, &written))
}

/// Refuses a destination that is the image's manifest.
fn not_the_manifest(dest: &Path, manifest: Option<&Path>) -> Result<()> {
    match manifest {
        Some(m) if same_file(dest, m) => Err(Error::Invalid(format!(
            "{}: is the image's manifest; refusing to write over it",
            dest.display()
        ))),
        _ => Ok(()),
    }
}
