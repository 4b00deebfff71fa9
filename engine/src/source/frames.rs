//! [`FrameSource`]: a `dsimg` frame stream read in order on one thread and checked on the workers
//! ([`crate::check::run_frames`]), or read and checked on one thread with
//! [`crate::ops::Tuning::sequential`] ([`ImageReader::next_frame`], the reference). The stream is
//! any [`FrameStream`]: a file read with O_DIRECT today, a pipe or socket from another node next.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::{RunSpec, Source, SourceInfo, SourceStats};
use crate::buf::BufPool;
use crate::check::{run_frames, FramePools, ZeroMaps};
use crate::direct_read::DirectReader;
use crate::error::{Error, Result};
use crate::format::reader::ImageReader;
use crate::format::{FrameKind, Header};
use crate::pipeline::{self, Payload, Processed};

/// A byte stream that carries a dsimg image front to back.
pub trait FrameStream: Read + Send {
    /// Read requests issued so far (0 where the stream does not count them).
    fn requests(&self) -> u64 {
        0
    }

    /// Whether the transport authenticates every byte of the stream (mutual TLS between
    /// agents): then frame payloads skip their CRC-32C check, the chunk digest still checked
    /// ([`ImageReader::without_payload_crc`]). No by default.
    fn authenticated(&self) -> bool {
        false
    }
}

impl FrameStream for DirectReader {
    fn requests(&self) -> u64 {
        self.requests
    }
}

impl FrameStream for std::fs::File {}
impl FrameStream for std::io::Cursor<Vec<u8>> {}
impl FrameStream for std::net::TcpStream {}
impl FrameStream for std::os::unix::net::UnixStream {}
impl FrameStream for std::process::ChildStdout {}

/// The chunks of a dsimg stream, each checked (CRC-32C, lz4, digest) before it is delivered; the
/// index, trailer and whole-image digest are checked when the stream ends.
pub struct FrameSource<R: FrameStream> {
    reader: ImageReader<R>,
    direct: bool,
    warnings: Vec<String>,
}

impl<R: FrameStream> FrameSource<R> {
    /// Reads and checks the header of the stream; `path` names it in errors and the report.
    pub fn new(stream: R, path: &Path) -> Result<Self> {
        let authenticated = stream.authenticated();
        let reader = ImageReader::new(stream, path)?;
        Ok(Self {
            reader: if authenticated {
                reader.without_payload_crc()
            } else {
                reader
            },
            direct: false,
            warnings: Vec::new(),
        })
    }

    /// The stream's header (read and checked by [`Self::new`]).
    pub fn header(&self) -> Header {
        self.reader.header()
    }

    /// Records how the stream is read: with O_DIRECT or not, and the warning if not as asked.
    pub fn opened(mut self, direct: bool, warning: Option<&str>) -> Self {
        self.direct = direct;
        self.warnings.extend(warning.map(str::to_owned));
        self
    }

    fn run_sequential(&mut self, spec: RunSpec<'_>, deliver: &mut dyn FnMut(Processed) -> Result<()>) -> Result<()> {
        let h = self.reader.header();
        let cs = h.chunk_size;
        let (size, count) = pipeline::pool_shape(cs, h.disk_size, spec.needs.in_flight as usize + 1);
        let pool = BufPool::with_pages(size, count, spec.tuning.pages);
        let block = pipeline::zero_block_size(cs);
        let mut offset = 0u64;
        loop {
            let mut buf = pool.get();
            let Some(f) = self.reader.next_frame(buf.as_mut_slice())? else {
                return Ok(());
            };
            let (payload, zero_map) = match f.kind {
                FrameKind::Zero => (Payload::Zero, pipeline::all_zero_map(f.raw_len, block)),
                FrameKind::Raw | FrameKind::Lz4 => {
                    let map = if spec.needs.zero_maps {
                        pipeline::zero_map(&buf.as_slice()[..f.raw_len as usize], block)
                    } else {
                        0
                    };
                    (Payload::Raw(buf), map)
                }
            };
            deliver(Processed {
                index: f.index,
                offset,
                len: f.raw_len,
                digest: f.digest,
                zero_map,
                payload,
                payload_crc: None,
            })?;
            offset += u64::from(f.raw_len);
            spec.progress.fetch_add(u64::from(f.raw_len), Ordering::Relaxed);
        }
    }
}

impl<R: FrameStream> Source for FrameSource<R> {
    fn info(&self) -> SourceInfo {
        let h = self.reader.header();
        SourceInfo {
            input: self.reader.path().to_owned(),
            disk_size: h.disk_size,
            chunk_size: h.chunk_size,
            checksum: h.checksum,
            input_direct: self.direct,
        }
    }

    fn run(&mut self, spec: RunSpec<'_>, deliver: &mut dyn FnMut(Processed) -> Result<()>) -> Result<SourceStats> {
        let t = spec.tuning;
        // --bwlimit: each data chunk waits for the pacer before it is handed on; the reader,
        // bounded by the pools, follows at the same rate. Zero frames cost no I/O.
        let mut paced = |p: Processed| {
            if let (Some(pace), false) = (spec.pace, matches!(p.payload, Payload::Zero)) {
                if !pace.wait(u64::from(p.len)) {
                    return Err(Error::Cancelled);
                }
            }
            deliver(p)
        };
        let deliver: &mut dyn FnMut(Processed) -> Result<()> = &mut paced;
        if t.sequential {
            self.run_sequential(spec, deliver)?;
        } else {
            let maps = if spec.needs.zero_maps {
                ZeroMaps::Want
            } else {
                ZeroMaps::Skip
            };
            let h = self.reader.header();
            let pools = FramePools::new(h.chunk_size, h.disk_size, t.threads, spec.needs.in_flight, t.pages);
            run_frames(&mut self.reader, &pools, t.threads, maps, spec.progress, deliver)?;
        }
        Ok(SourceStats {
            backend: None,
            buffer_pages: None,
            bytes_read: self.reader.position(),
            read_requests: self.reader.get_ref().requests(),
            stored: Some(self.reader.stored_bytes()),
            digest: self.reader.trailer().map(|t| t.image_digest),
            warnings: std::mem::take(&mut self.warnings),
        })
    }
}
