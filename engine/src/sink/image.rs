//! The `dsimg` sink: chunks in disk order become frames of the streaming encoder
//! ([`ImageWriter`]) over an O_DIRECT staging writer ([`DirectWriter`]); lz4 payloads are stored
//! as they came from the workers. On [`Sink::finish`] the index and trailer are written and the
//! image is committed with its manifest.

use std::path::PathBuf;

use super::direct_write::DirectWriter;
use super::manifest::{commit, ManifestOut};
use super::target::Target;
use super::{Order, Sink, SinkNeeds, SinkStats};
use crate::error::{Error, Result};
use crate::format::writer::ImageWriter;
use crate::format::Header;
use crate::pipeline::Processed;
use crate::ring::BackendKind;
use crate::stop::StopFlag;

/// A `dsimg` image being written.
pub struct ImageSink {
    writer: ImageWriter<DirectWriter>,
    path: PathBuf,
    lz4: bool,
    stored: u64,
    manifest: Option<ManifestOut>,
    stop: Option<StopFlag>,
}

impl ImageSink {
    /// Starts the image described by `header` in `target` (writes the header); `backend` chooses
    /// io_uring or pwrite for the writes, `lz4` whether data chunks are compressed.
    pub fn new(target: Target, header: Header, backend: BackendKind, lz4: bool) -> Result<Self> {
        let path = target.final_path().to_owned();
        let w = DirectWriter::new(target, backend);
        let writer = ImageWriter::new(w, header).map_err(|e| Error::io_or_inner("write", &path, 0, e))?;
        Ok(Self {
            writer,
            path,
            lz4,
            stored: 0,
            manifest: None,
            stop: None,
        })
    }

    /// Records every chunk in `manifest`, committed with the image as a pair.
    pub fn with_manifest(mut self, manifest: ManifestOut) -> Self {
        self.manifest = Some(manifest);
        self
    }

    /// Honours `stop` up to the commit.
    pub fn with_stop(mut self, stop: Option<StopFlag>) -> Self {
        self.stop = stop;
        self
    }

    /// Which backend writes.
    pub fn backend(&self) -> BackendKind {
        self.writer.get_ref().backend()
    }
}

impl Sink for ImageSink {
    fn needs(&self) -> SinkNeeds {
        SinkNeeds {
            order: Order::Disk,
            in_flight: 0,
            zero_maps: false,
            lz4: self.lz4,
            payload_crc: true,
        }
    }

    fn put(&mut self, p: Processed) -> Result<()> {
        if let Some(m) = &mut self.manifest {
            m.record(&p);
        }
        self.stored += super::push_frame(&mut self.writer, &p)
            .map_err(|(at, e)| Error::io_or_inner("write", &self.path, at, e))?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<SinkStats> {
        let Self {
            writer,
            path,
            stored,
            manifest,
            stop,
            ..
        } = *self;
        let backend = writer.get_ref().backend();
        let (w, _trailer) = writer.finish().map_err(|e| Error::io_or_inner("write", &path, 0, e))?;
        let write_requests = w.requests();
        let (target, written) = w.finish()?;
        let output_direct = target.is_direct();
        let digest = commit(target, manifest, false, stop.as_ref())?;
        Ok(SinkStats {
            write_backend: Some(backend),
            output_direct,
            bytes_written: written,
            write_requests,
            bytes_stored: stored,
            digest,
            wire: None,
        })
    }
}
