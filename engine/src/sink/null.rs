//! The null sink: keeps nothing. It counts the payload bytes a sink would store and, when asked,
//! records the chunk digests for the whole-image digest (`scan`: what the engine can do before any
//! output is written). It takes chunks in any order.

use crate::digest::Checksum;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::pipeline::Processed;
use crate::sink::manifest::ManifestOut;
use crate::sink::{Sink, SinkNeeds, SinkStats};

/// Discards every chunk.
#[derive(Debug, Default)]
pub struct NullSink {
    lz4: bool,
    digests: Option<Manifest>,
    stored: u64,
}

impl NullSink {
    /// Counts stored bytes only; `lz4`: ask the workers to compress (and count lz4 sizes).
    pub fn new(lz4: bool) -> Self {
        Self {
            lz4,
            digests: None,
            stored: 0,
        }
    }

    /// Also computes the whole-image digest of a disk of `size` bytes in `chunk_size` chunks.
    pub fn with_digest(mut self, checksum: Checksum, size: u64, chunk_size: u32) -> Self {
        self.digests = Some(Manifest::new(checksum, size, chunk_size));
        self
    }
}

impl Sink for NullSink {
    fn needs(&self) -> SinkNeeds {
        SinkNeeds {
            lz4: self.lz4,
            ..SinkNeeds::ANY
        }
    }

    fn put(&mut self, p: Processed) -> Result<()> {
        if let Some(m) = &mut self.digests {
            m.set(p.index, ManifestOut::kind_of(&p), p.digest);
        }
        self.stored += p.stored_bytes().len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<SinkStats> {
        Ok(SinkStats {
            bytes_stored: self.stored,
            digest: self.digests.map(|m| m.image_digest()),
            wire: None,
            ..SinkStats::default()
        })
    }
}
