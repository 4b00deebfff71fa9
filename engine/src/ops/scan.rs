//! `scan`: a disk ([`DiskSource`]) through the whole pipeline (zero check, digest and, if asked,
//! lz4) into a [`NullSink`]: what the engine can do before any output is written (benchmarks).

use std::path::Path;
use std::time::Instant;

use super::{Progress, Report, ScanOptions};
use crate::error::Result;
use crate::report::ReportHead;
use crate::sink::null::NullSink;
use crate::source::{Disk, DiskSource, Source};
use crate::transfer::Transfer;

/// Reads `src` through the pipeline into a null sink; the report's digest is the whole-image
/// digest the manifest would record.
pub fn scan(src: &Path, o: &ScanOptions, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    let t = &o.tuning;
    t.check()?;
    let mut source = DiskSource::new(Disk::open(src)?, t.chunk_size, o.checksum)
        .limit(o.limit)
        .checked()?;
    let info = source.info();
    let sink = NullSink::new(o.compress).with_digest(o.checksum, info.disk_size, info.chunk_size);
    Transfer::new(ReportHead::new("scan"), t, progress, t0).run(&mut source, Box::new(sink))
}
