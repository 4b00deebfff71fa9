//! The verify sink: checks each chunk before handing it on. Against a manifest, every chunk's
//! digest must be the recorded one (a raw image is checked this way); with or without one, every
//! chunk must arrive exactly once. Over [`NullSink`] it is `verify`'s check-only sink; over a raw
//! sink it is the check of a raw `restore` before each write.

use std::path::{Path, PathBuf};

use super::null::NullSink;
use super::{Sink, SinkNeeds, SinkStats};
use crate::digest::hex;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::pipeline::Processed;

/// Checks chunks, then hands them to the inner sink.
pub struct VerifySink<'a> {
    inner: Box<dyn Sink + 'a>,
    path: PathBuf,
    expected: Option<&'a Manifest>,
    chunks: u64,
    seen: Vec<u64>,
}

impl<'a> VerifySink<'a> {
    /// Checks the `chunks` chunks of the image at `path` (named in errors), then hands each to
    /// `inner`.
    pub fn new(inner: Box<dyn Sink + 'a>, path: &Path, chunks: u64) -> Self {
        Self {
            inner,
            path: path.to_owned(),
            expected: None,
            chunks,
            seen: vec![0; chunks.div_ceil(64) as usize],
        }
    }

    /// Check-only: nothing is kept.
    pub fn check_only(path: &Path, chunks: u64) -> Self {
        Self::new(Box::new(NullSink::new(false)), path, chunks)
    }

    /// Also compares each chunk's digest with `manifest`'s (whose chunk count is then the one
    /// expected).
    pub fn against(mut self, manifest: &'a Manifest) -> Self {
        self.chunks = manifest.chunks.len() as u64;
        self.seen = vec![0; self.chunks.div_ceil(64) as usize];
        self.expected = Some(manifest);
        self
    }

    fn check(&mut self, p: &Processed) -> Result<()> {
        if p.index >= self.chunks {
            return Err(Error::Invalid(format!(
                "{}: chunk {} delivered, the disk has {}",
                self.path.display(),
                p.index,
                self.chunks
            )));
        }
        let (word, bit) = ((p.index / 64) as usize, 1u64 << (p.index % 64));
        if self.seen[word] & bit != 0 {
            return Err(Error::Invalid(format!(
                "{}: chunk {} delivered twice",
                self.path.display(),
                p.index
            )));
        }
        self.seen[word] |= bit;
        let Some(m) = self.expected else { return Ok(()) };
        let (_, want) = m.chunks[p.index as usize];
        if p.digest != want {
            return Err(Error::ChecksumMismatch {
                path: self.path.clone(),
                chunk: p.index,
                offset: p.offset,
                end: p.offset + u64::from(p.len),
                checksum: m.checksum,
                expected: hex(&want),
                found: hex(&p.digest),
            });
        }
        Ok(())
    }
}

impl Sink for VerifySink<'_> {
    fn needs(&self) -> SinkNeeds {
        self.inner.needs()
    }

    fn put(&mut self, p: Processed) -> Result<()> {
        self.check(&p)?;
        self.inner.put(p)
    }

    fn finish(self: Box<Self>) -> Result<SinkStats> {
        let seen: u64 = self.seen.iter().map(|w| u64::from(w.count_ones())).sum();
        if seen != self.chunks {
            return Err(Error::Invalid(format!(
                "{}: {} of {} chunks were delivered",
                self.path.display(),
                seen,
                self.chunks
            )));
        }
        let digest = self.expected.map(Manifest::image_digest);
        let mut stats = self.inner.finish()?;
        stats.digest = digest.or(stats.digest);
        Ok(stats)
    }
}
