//! `verify`: re-reads an image with O_DIRECT and checks every chunk: a `dsimg` as a
//! [`FrameSource`](crate::source::FrameSource) (each frame against its own digest; the structure first, and against its
//! manifest if one is beside it), a raw image as a [`DiskSource`] into a [`VerifySink`] holding
//! its manifest. The sink keeps nothing.
//!
//! [`DiskSource`]: crate::source::DiskSource

use std::path::Path;
use std::time::Instant;

use super::image::{check_dsimg_manifest, dsimg_source, load_manifest, raw_image_source, truncated_while_read};
use super::image_file::ImageFile;
use super::{Format, Progress, Report, VerifyOptions};
use crate::error::Result;
use crate::format::reader::read_layout;
use crate::report::ReportHead;
use crate::sink::verify::VerifySink;
use crate::source::Source;
use crate::transfer::Transfer;

/// Re-reads an image with O_DIRECT and checks every chunk: a `dsimg` against its own digests,
/// a raw image against its manifest. The first bad chunk is the error (with its offsets).
pub fn verify(image: &Path, o: &VerifyOptions, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    let t = &o.tuning;
    t.check()?;
    // One descriptor for every read: the format, the structure, the frames.
    let img = ImageFile::open(image)?;
    let mut head = ReportHead {
        format: Some(img.format(o.format, o.manifest.as_deref())?),
        ..ReportHead::new("verify")
    };
    let checked = match head.format {
        Some(Format::Dsimg) => {
            let layout = read_layout(img.file(), image)?;
            head.manifest = check_dsimg_manifest(&img, o.manifest.as_deref(), &layout)?;
            let mut source = dsimg_source(img, &layout)?;
            let sink = VerifySink::check_only(image, layout.header.chunk_count());
            Transfer::new(head, t, progress, t0).run(&mut source, Box::new(sink))
        }
        _ => {
            let (mpath, manifest) = load_manifest(&img, o.manifest.as_deref())?;
            head.manifest = Some(mpath);
            let mut source = raw_image_source(&img, &manifest)?;
            let sink = VerifySink::check_only(image, source.info().chunks()).against(&manifest);
            Transfer::new(head, t, progress, t0).run(&mut source, Box::new(sink))
        }
    };
    checked.map_err(|e| truncated_while_read(e, image))
}
