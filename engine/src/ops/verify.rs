//! `verify`: re-reads an image with O_DIRECT and checks every chunk: a `dsimg` as a
//! [`FrameSource`] (each frame against its own digest; the structure first, and against its
//! manifest if one is beside it), a raw image as a [`DiskSource`] into a [`VerifySink`] holding
//! its manifest. The sink keeps nothing.
//!
//! [`DiskSource`]: crate::source::DiskSource

use std::path::Path;
use std::time::Instant;

use super::image::{check_dsimg_manifest, detect, image_size, load_manifest, open_plain, raw_image_source};
use super::{Format, Progress, Report, VerifyOptions};
use crate::direct_read::DirectReader;
use crate::error::Result;
use crate::format::reader::read_layout;
use crate::report::ReportHead;
use crate::sink::verify::VerifySink;
use crate::source::{Disk, FrameSource, Source};
use crate::transfer::Transfer;

/// Re-reads an image with O_DIRECT and checks every chunk: a `dsimg` against its own digests,
/// a raw image against its manifest. The first bad chunk is the error (with its offsets).
pub fn verify(image: &Path, o: &VerifyOptions, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    let t = &o.tuning;
    t.check()?;
    let mut head = ReportHead {
        format: Some(detect(image)?),
        ..ReportHead::new("verify")
    };
    match head.format {
        Some(Format::Dsimg) => {
            let disk = Disk::open(image)?;
            let layout = read_layout(&open_plain(image)?, image)?;
            head.manifest = check_dsimg_manifest(image, o.manifest.as_deref(), &layout)?;
            let (direct, warning) = (disk.is_direct(), disk.warning().map(str::to_owned));
            let stream = DirectReader::new(disk.into_file());
            let mut source = FrameSource::new(stream, image)?.opened(direct, warning.as_deref());
            let sink = VerifySink::check_only(image, layout.header.chunk_count());
            Transfer::new(head, t, progress, t0).run(&mut source, Box::new(sink))
        }
        _ => {
            let (mpath, manifest) = load_manifest(image, o.manifest.as_deref(), image_size(image)?)?;
            head.manifest = Some(mpath);
            let mut source = raw_image_source(image, &manifest)?;
            let sink = VerifySink::check_only(image, source.info().chunks()).against(&manifest);
            Transfer::new(head, t, progress, t0).run(&mut source, Box::new(sink))
        }
    }
}
