//! [`StreamSink`]: the `dsimg` frame stream written to any [`Write`] (a socket to another node):
//! chunks in disk order through the streaming encoder ([`ImageWriter`]), lz4 payloads as the
//! workers made them; [`Sink::finish`] writes the index and trailer and flushes. Nothing is
//! committed here: the reader at the other end checks the stream and commits what it writes.
//! With [`StreamSink::adaptive`] lz4 is used only while it makes the stream faster ([`Adapt`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::adapt::Adapt;
use super::{Order, Sink, SinkNeeds, SinkStats, WireStats};
use crate::error::{Error, Result};
use crate::format::writer::ImageWriter;
use crate::format::Header;
use crate::pipeline::{Payload, Processed};

/// A `dsimg` stream being written to `W`.
pub struct StreamSink<W: Write + Send> {
    writer: ImageWriter<W>,
    name: PathBuf,
    lz4: bool,
    stored: u64,
    adapt: Option<Adapt>,
    /// Disk bytes delivered so far.
    done: u64,
    /// What went on the wire, counted as it went.
    wire: WireStats,
}

impl<W: Write + Send> StreamSink<W> {
    /// Starts the stream described by `header` on `out` (writes the header); `name` names the
    /// stream in errors (e.g. `node3:inst1/disk0`); `lz4` whether data chunks are compressed.
    pub fn new(out: W, header: Header, name: PathBuf, lz4: bool) -> Result<Self> {
        let writer = ImageWriter::new(out, header).map_err(|e| Error::io("send", &name, 0, e))?;
        Ok(Self {
            writer,
            name,
            lz4,
            stored: 0,
            adapt: None,
            done: 0,
            wire: WireStats::default(),
        })
    }

    /// Compresses only while that makes the stream faster (`--transport-compression auto`):
    /// chunks of `chunk_size`, up to `in_flight` of them worked on ahead of this sink. No effect
    /// without lz4.
    pub fn adaptive(mut self, chunk_size: u32, in_flight: u32) -> Self {
        self.adapt = self.lz4.then(|| Adapt::for_chunks(chunk_size, in_flight));
        self
    }
}

impl<W: Write + Send> Sink for StreamSink<W> {
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
        // Timed only for `auto`, which weighs the time spent writing against the link.
        let t0 = self.adapt.is_some().then(Instant::now);
        let wire = super::push_frame(&mut self.writer, &p).map_err(|(at, e)| Error::io("send", &self.name, at, e))?;
        self.stored += wire;
        self.done += u64::from(p.len);
        match p.payload {
            Payload::Zero => {}
            Payload::Raw(_) => self.wire.data_chunks += 1,
            Payload::Lz4 { .. } => {
                self.wire.data_chunks += 1;
                self.wire.lz4_chunks += 1;
            }
        }
        if let (Some(a), Some(t0)) = (&mut self.adapt, t0) {
            let now = Instant::now();
            a.delivered(self.done, now, now - t0, wire);
        }
        Ok(())
    }

    fn lz4_gate(&self) -> Option<Arc<AtomicBool>> {
        self.adapt.as_ref().map(Adapt::gate)
    }

    fn finish(self: Box<Self>) -> Result<SinkStats> {
        let Self {
            writer,
            name,
            stored,
            adapt,
            mut wire,
            ..
        } = *self;
        if let Some(a) = adapt {
            wire.auto_rounds = a.rounds;
            wire.auto_link_bound_keeps = a.link_bound;
        }
        let at = writer.position();
        let (mut w, trailer) = writer.finish().map_err(|e| Error::io("send", &name, at, e))?;
        w.flush().map_err(|e| Error::io("send", &name, at, e))?;
        Ok(SinkStats {
            write_backend: None,
            output_direct: false,
            bytes_written: trailer.total_len,
            write_requests: 0,
            bytes_stored: stored,
            digest: Some(trailer.image_digest),
            wire: Some(wire),
        })
    }
}
