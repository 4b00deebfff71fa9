//! Writes a `dsimg` image as a stream: header, one frame per chunk in order, index, trailer.
//! It needs only `Write`, so the same code feeds a file, a pipe or (later) a socket.

use std::io::{self, Write};

use super::{encode_index_head, FrameHeader, FrameKind, Header, IndexEntry, Trailer, FRAME_HEADER_LEN, HEADER_LEN};
use crate::digest::{Hash, ImageDigest};

/// Streaming `dsimg` encoder.
pub struct ImageWriter<W: Write> {
    out: W,
    header: Header,
    pos: u64,
    index: Vec<IndexEntry>,
    digest: ImageDigest,
}

impl<W: Write> ImageWriter<W> {
    /// Starts an image of `header`'s disk, writing the header at once.
    pub fn new(mut out: W, header: Header) -> io::Result<Self> {
        out.write_all(&header.encode())?;
        Ok(Self {
            out,
            header,
            pos: HEADER_LEN as u64,
            index: Vec::new(),
            digest: ImageDigest::new(header.checksum, header.disk_size, header.chunk_size),
        })
    }

    /// The writer underneath.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Appends the frame of the next chunk. `payload` is empty for [`FrameKind::Zero`], the raw
    /// bytes for [`FrameKind::Raw`], and an lz4 block for [`FrameKind::Lz4`].
    pub fn push(&mut self, index: u64, kind: FrameKind, digest: &Hash, payload: &[u8]) -> io::Result<()> {
        self.push_with_crc(index, kind, digest, payload, None)
    }

    /// [`ImageWriter::push`], with `crc` the payload's CRC-32C when the caller worked it out
    /// already (a pipeline worker did); `None`: it is worked out here.
    pub fn push_with_crc(
        &mut self,
        index: u64,
        kind: FrameKind,
        digest: &Hash,
        payload: &[u8],
        crc: Option<u32>,
    ) -> io::Result<()> {
        let expected = self.index.len() as u64;
        if index != expected || index >= self.header.chunk_count() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame {index} out of order (expected {expected})"),
            ));
        }
        let raw_len = self.header.chunk_len(index);
        let frame = FrameHeader {
            kind,
            index,
            raw_len,
            stored_len: payload.len() as u32,
            digest: *digest,
            payload_crc: match crc {
                Some(crc) => {
                    debug_assert_eq!(
                        crc,
                        super::payload_crc(payload),
                        "frame {index}: a worker's payload CRC"
                    );
                    crc
                }
                None => super::payload_crc(payload),
            },
        };
        self.out.write_all(&frame.encode())?;
        self.out.write_all(payload)?;
        self.index.push(IndexEntry {
            frame_offset: self.pos,
            stored_len: frame.stored_len,
            kind,
        });
        self.digest.push(digest);
        self.pos += (FRAME_HEADER_LEN + payload.len()) as u64;
        Ok(())
    }

    /// Writes the index and trailer after the last frame; returns the output and the trailer.
    pub fn finish(mut self) -> io::Result<(W, Trailer)> {
        if self.index.len() as u64 != self.header.chunk_count() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("image has {} of {} frames", self.index.len(), self.header.chunk_count()),
            ));
        }
        let index_offset = self.pos;
        let mut bytes = Vec::with_capacity(super::index_len(self.index.len() as u64) as usize);
        bytes.extend_from_slice(&encode_index_head(self.index.len() as u64));
        for e in &self.index {
            bytes.extend_from_slice(&e.encode());
        }
        let digest = self.header.checksum.digest(&bytes);
        bytes.extend_from_slice(&digest);
        self.out.write_all(&bytes)?;
        self.pos += bytes.len() as u64;
        let trailer = Trailer {
            index_offset,
            total_len: self.pos + super::TRAILER_LEN as u64,
            image_digest: self.digest.finish(),
        };
        self.out.write_all(&trailer.encode())?;
        self.out.flush()?;
        Ok((self.out, trailer))
    }
}
