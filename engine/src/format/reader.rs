//! Reads and checks `dsimg` images: [`ImageReader`] decodes a stream frame by frame and checks
//! every byte (frame CRCs, chunk digests, index, trailer, image digest, nothing after the end);
//! [`read_layout`] checks the structure of an image file from its trailer and index without
//! reading the frames, so truncation is caught before anything is written.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    decode_index_head, index_len, FrameHeader, FrameKind, Header, IndexEntry, Trailer, FRAME_HEADER_LEN, HEADER_LEN,
    INDEX_ENTRY_LEN, INDEX_HEAD_LEN, TRAILER_LEN,
};
use crate::digest::{Checksum, Hash, ImageDigest, Incremental, ZeroDigests};
use crate::error::{Error, Result};

/// Streaming decoder and checker.
pub struct ImageReader<R: Read> {
    r: R,
    path: PathBuf,
    header: Header,
    pos: u64,
    /// Frames read so far.
    frames: u64,
    /// Payload bytes of the raw and lz4 frames read so far.
    stored: u64,
    /// Where the last frame read began and how it was stored, to check the index's entries
    /// against in order without keeping them (an image of 2^28 chunks must not cost 4 GiB).
    frame_hash: Incremental,
    digest: ImageDigest,
    zeros: ZeroDigests,
    scratch: Vec<u8>,
    trailer: Option<Trailer>,
    payload_crc: bool,
}

impl<R: Read> ImageReader<R> {
    /// Reads and checks the header. `path` names the image in errors.
    pub fn new(mut r: R, path: &Path) -> Result<Self> {
        let mut b = [0u8; HEADER_LEN];
        read_exact(&mut r, &mut b, path, 0, "header")?;
        let header = Header::decode(&b).map_err(|d| Error::corrupt(path, "header", 0, d))?;
        Ok(Self {
            r,
            path: path.to_owned(),
            header,
            pos: HEADER_LEN as u64,
            frames: 0,
            stored: 0,
            frame_hash: Incremental::new(Checksum::Blake3),
            digest: ImageDigest::new(header.checksum, header.disk_size, header.chunk_size),
            zeros: ZeroDigests::new(header.checksum, header.disk_size, header.chunk_size),
            scratch: Vec::new(),
            trailer: None,
            payload_crc: true,
        })
    }

    /// Skips the payload CRC-32C of every frame, for a stream whose transport authenticates
    /// every byte (mutual TLS between agents: the AEAD rejects any changed byte on the link). The
    /// chunk digest, checked on the decoded bytes, still catches what the CRC would (a frame
    /// damaged before it was encrypted: `docs/image-format.md`, "Reading rules"); frame
    /// headers, index and trailer keep their CRCs.
    pub fn without_payload_crc(mut self) -> Self {
        self.payload_crc = false;
        self
    }

    /// How the frames of this image are checked (for [`check_frame`] on any thread).
    pub fn check(&self) -> FrameCheck<'_> {
        FrameCheck {
            zeros: &self.zeros,
            chunk_size: self.header.chunk_size,
            path: &self.path,
            payload_crc: self.payload_crc,
        }
    }

    /// The image header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The trailer, once [`Self::next_frame`] has returned `None`.
    pub fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }

    /// Decodes the next frame into `dst` (which must hold a chunk) and checks its digest.
    /// For [`FrameKind::Zero`] frames `dst` is left untouched. Returns `None` after the last
    /// frame, once the index, the trailer and the image digest have been checked too.
    /// The one-thread reference path: [`Self::next_stored`] then [`check_frame`] on one thread.
    pub fn next_frame(&mut self, dst: &mut [u8]) -> Result<Option<FrameHeader>> {
        let mut stored = std::mem::take(&mut self.scratch);
        // A payload is never longer than its chunk, nor a chunk than the disk.
        stored.resize(self.header.chunk_len(0) as usize, 0);
        let next = self.next_stored(&mut stored);
        let res = match next {
            Ok(Some(at)) => {
                let (f, payload) = (at.frame, &stored[..at.frame.stored_len as usize]);
                check_frame(&self.check(), &f, payload, at.payload_at, dst).map(|()| {
                    if f.kind == FrameKind::Raw {
                        dst[..payload.len()].copy_from_slice(payload);
                    }
                    Some(f)
                })
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        self.scratch = stored;
        res
    }

    /// Reads the next frame's header and its stored payload into `stored[..stored_len]`
    /// (`stored` must hold a chunk), checking the frame's place in the image (index, length,
    /// header CRC) but not its payload: that is [`check_frame`]'s job, which may run on another
    /// thread. Returns `None` after the last frame, once the index, the trailer and the image
    /// digest (over the frames' recorded digests) have been checked.
    pub fn next_stored(&mut self, stored: &mut [u8]) -> Result<Option<StoredFrame>> {
        let n = self.frames;
        if n == self.header.chunk_count() {
            if self.trailer.is_none() {
                self.finish()?;
            }
            return Ok(None);
        }
        let at = self.pos;
        let mut b = [0u8; FRAME_HEADER_LEN];
        read_exact(&mut self.r, &mut b, &self.path, at, "frame header")?;
        let f = FrameHeader::decode(&b).map_err(|d| Error::corrupt(&self.path, "frame header", at, d))?;
        let want_len = self.header.chunk_len(n);
        if f.index != n || f.raw_len != want_len {
            return Err(Error::corrupt(
                &self.path,
                "frame header",
                at,
                format!(
                    "frame for chunk {} of {} bytes where chunk {n} of {want_len} bytes belongs",
                    f.index, f.raw_len
                ),
            ));
        }
        let payload_at = at + FRAME_HEADER_LEN as u64;
        read_exact(
            &mut self.r,
            &mut stored[..f.stored_len as usize],
            &self.path,
            payload_at,
            "frame payload",
        )?;
        let entry = IndexEntry {
            frame_offset: at,
            stored_len: f.stored_len,
            kind: f.kind,
        };
        self.frame_hash.update(&entry.encode());
        self.frames += 1;
        if f.kind != FrameKind::Zero {
            self.stored += u64::from(f.stored_len);
        }
        self.digest.push(&f.digest);
        self.pos = payload_at + u64::from(f.stored_len);
        Ok(Some(StoredFrame { frame: f, payload_at }))
    }

    /// The stream it reads.
    pub fn get_ref(&self) -> &R {
        &self.r
    }

    /// Payload bytes of the frames read so far that store data (raw and lz4 frames).
    pub fn stored_bytes(&self) -> u64 {
        self.stored
    }

    /// The path that names the image in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn finish(&mut self) -> Result<()> {
        let at = self.pos;
        let mut head = [0u8; INDEX_HEAD_LEN];
        read_exact(&mut self.r, &mut head, &self.path, at, "index")?;
        let count = decode_index_head(&head).map_err(|d| Error::corrupt(&self.path, "index", at, d))?;
        if count != self.frames {
            return Err(Error::corrupt(
                &self.path,
                "index",
                at,
                format!("{count} entries for {} frames", self.frames),
            ));
        }
        let mut hasher = Incremental::new(self.header.checksum);
        hasher.update(&head);
        // Each entry must be its frame: in order, each begins where the one before ended (which
        // names the first entry that does not), and all of them hash as the frames did.
        let mut listed = Incremental::new(Checksum::Blake3);
        let mut e = [0u8; INDEX_ENTRY_LEN];
        let mut next = HEADER_LEN as u64;
        for i in 0..count {
            let eat = at + INDEX_HEAD_LEN as u64 + i * INDEX_ENTRY_LEN as u64;
            read_exact(&mut self.r, &mut e, &self.path, eat, "index")?;
            hasher.update(&e);
            let entry = IndexEntry::decode(&e).map_err(|d| Error::corrupt(&self.path, "index entry", eat, d))?;
            if entry.frame_offset != next {
                return Err(Error::corrupt(
                    &self.path,
                    "index entry",
                    eat,
                    format!("entry {i} does not match its frame"),
                ));
            }
            next = entry.frame_offset + FRAME_HEADER_LEN as u64 + u64::from(entry.stored_len);
            listed.update(&entry.encode());
        }
        if next != at || listed.finish() != self.frame_hash.clone().finish() {
            return Err(Error::corrupt(
                &self.path,
                "index",
                at,
                "its entries do not match the frames",
            ));
        }
        let dat = at + index_len(count) - 32;
        let mut d = [0u8; 32];
        read_exact(&mut self.r, &mut d, &self.path, dat, "index digest")?;
        if d != hasher.finish() {
            return Err(Error::corrupt(
                &self.path,
                "index digest",
                dat,
                format!("{} of the index does not match", self.header.checksum),
            ));
        }
        let tat = at + index_len(count);
        let mut t = [0u8; TRAILER_LEN];
        read_exact(&mut self.r, &mut t, &self.path, tat, "trailer")?;
        let trailer = Trailer::decode(&t).map_err(|d| Error::corrupt(&self.path, "trailer", tat, d))?;
        let total = tat + TRAILER_LEN as u64;
        if trailer.index_offset != at || trailer.total_len != total {
            return Err(Error::corrupt(
                &self.path,
                "trailer",
                tat,
                "index offset or total length does not match the image",
            ));
        }
        let digest = self.digest.clone().finish();
        if trailer.image_digest != digest {
            return Err(Error::corrupt(
                &self.path,
                "trailer",
                tat,
                "whole-image digest does not match the frames",
            ));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.r.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(Error::corrupt(&self.path, "image", total, "data after the trailer")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", &self.path, total, e)),
            }
        }
        self.pos = total;
        self.trailer = Some(trailer);
        Ok(())
    }
}

/// A frame whose header and stored payload [`ImageReader::next_stored`] has read.
#[derive(Clone, Copy, Debug)]
pub struct StoredFrame {
    /// The frame header (its place in the image is checked; its payload is not yet).
    pub frame: FrameHeader,
    /// Offset of the payload in the image (for errors).
    pub payload_at: u64,
}

/// What [`check_frame`] checks a frame against: the image's zero-chunk digests, chunk size and
/// name, and whether payload CRCs are checked ([`ImageReader::without_payload_crc`]).
#[derive(Clone, Copy, Debug)]
pub struct FrameCheck<'a> {
    /// The image's zero-chunk digests.
    pub zeros: &'a ZeroDigests,
    /// The image's chunk size.
    pub chunk_size: u32,
    /// The image's name in errors.
    pub path: &'a Path,
    /// Check each payload's CRC-32C (false only for an authenticated stream).
    pub payload_crc: bool,
}

/// Checks a frame's stored payload and recovers the chunk: the payload's CRC-32C (unless `c`
/// says the transport authenticated it), lz4 decoding to exactly `raw_len` bytes into `dst` (lz4
/// frames only: a raw frame's bytes are `stored` itself, a zero frame's are zeroes), and the
/// chunk's digest against the frame's. Only then may the bytes be used. Pure: runs on any
/// thread.
pub fn check_frame(c: &FrameCheck<'_>, f: &FrameHeader, stored: &[u8], payload_at: u64, dst: &mut [u8]) -> Result<()> {
    let (zeros, chunk_size, path) = (c.zeros, c.chunk_size, c.path);
    if c.payload_crc {
        let have = super::payload_crc(stored);
        if have != f.payload_crc {
            return Err(Error::corrupt(
                path,
                "frame payload",
                payload_at,
                format!(
                    "CRC-32C mismatch in chunk {} (stored {:08x}, computed {have:08x})",
                    f.index, f.payload_crc
                ),
            ));
        }
    }
    let found: Hash = match f.kind {
        FrameKind::Zero => zeros.of(f.raw_len),
        FrameKind::Raw => zeros.checksum().digest(stored),
        FrameKind::Lz4 => {
            let raw = &mut dst[..f.raw_len as usize];
            match lz4_flex::block::decompress_into(stored, raw) {
                Ok(k) if k == raw.len() => zeros.checksum().digest(raw),
                Ok(k) => {
                    return Err(Error::corrupt(
                        path,
                        "lz4 payload",
                        payload_at,
                        format!("decompressed to {k} bytes, expected {}", raw.len()),
                    ))
                }
                Err(e) => return Err(Error::corrupt(path, "lz4 payload", payload_at, e.to_string())),
            }
        }
    };
    if found != f.digest {
        let chunk_off = f.index * u64::from(chunk_size);
        return Err(Error::ChecksumMismatch {
            path: path.to_owned(),
            chunk: f.index,
            offset: chunk_off,
            end: chunk_off + u64::from(f.raw_len),
            checksum: zeros.checksum(),
            expected: hex::encode(f.digest),
            found: hex::encode(found),
        });
    }
    Ok(())
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path, at: u64, what: &'static str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::corrupt(path, what, at, "the image ends here: truncated")
        } else {
            Error::io("read", path, at, e)
        }
    })
}

/// An image's structure as its header, index and trailer describe it: the index summed up per
/// frame kind, not kept (its size follows from a header the file chose).
#[derive(Clone, Debug)]
pub struct Layout {
    /// The header.
    pub header: Header,
    /// The trailer.
    pub trailer: Trailer,
    /// Per frame kind (zero, raw, lz4): how many chunks, and their payload bytes.
    kinds: [(u64, u64); 3],
}

impl Layout {
    /// Number of chunks stored as `kind`.
    pub fn count(&self, kind: FrameKind) -> u64 {
        self.kinds[kind as usize].0
    }

    /// Payload bytes stored as `kind`.
    pub fn stored(&self, kind: FrameKind) -> u64 {
        self.kinds[kind as usize].1
    }
}

/// Index bytes read (and hashed, and checked) at a time by [`read_layout`]: 64 Ki entries.
const INDEX_PIECE: usize = 64 * 1024 * INDEX_ENTRY_LEN;

/// Checks the structure of an image file (header, trailer, index and how they fit the file's
/// length) without reading the frames. Catches truncation and most structural damage at once.
/// Memory is bounded whatever the header claims: the index must fit between the frames' least
/// possible end and the trailer, and is read, hashed and checked in pieces of `INDEX_PIECE`.
pub fn read_layout(file: &File, path: &Path) -> Result<Layout> {
    let meta = file.metadata().map_err(|e| Error::io("stat", path, 0, e))?;
    if !meta.is_file() {
        // A block device's length is not the image's (and reads as 0 here): it holds raw
        // images only, and a dsimg copied onto one is not read from there.
        return Err(Error::Invalid(format!(
            "{}: is not a regular file; a dsimg image is read only from a regular file (block devices hold raw images)",
            path.display()
        )));
    }
    let len = meta.len();
    let min = (HEADER_LEN + INDEX_HEAD_LEN + 32 + TRAILER_LEN) as u64;
    if len < min {
        return Err(Error::corrupt(
            path,
            "image",
            len,
            format!("{len} bytes is too short for a dsimg image (truncated?)"),
        ));
    }
    let mut h = [0u8; HEADER_LEN];
    pread_exact(file, &mut h, 0, path)?;
    let header = Header::decode(&h).map_err(|d| Error::corrupt(path, "header", 0, d))?;
    let tat = len - TRAILER_LEN as u64;
    let mut t = [0u8; TRAILER_LEN];
    pread_exact(file, &mut t, tat, path)?;
    let trailer = match Trailer::decode(&t) {
        Ok(t) => t,
        Err(d) => {
            // Not a trailer at the end: if there is one a little earlier, whose total length is
            // its own end, the image is whole and bytes were appended after it.
            if let Some(end) = trailer_before(file, path, len)? {
                return Err(Error::corrupt(
                    path,
                    "image",
                    end,
                    format!(
                        "{} bytes appended after the trailer (the image ends at byte {end}, the file at {len})",
                        len - end
                    ),
                ));
            }
            return Err(Error::corrupt(path, "trailer", tat, d));
        }
    };
    if trailer.total_len != len {
        return Err(Error::corrupt(
            path,
            "trailer",
            tat,
            format!(
                "image should be {} bytes but the file has {len} (truncated or extended)",
                trailer.total_len
            ),
        ));
    }
    let count = header.chunk_count();
    // Every frame is at least its header: the index can start no earlier than this.
    let frames_end = count
        .saturating_mul(FRAME_HEADER_LEN as u64)
        .saturating_add(HEADER_LEN as u64);
    if trailer.index_offset.checked_add(index_len(count)) != Some(tat) || trailer.index_offset < frames_end {
        return Err(Error::corrupt(
            path,
            "trailer",
            tat,
            format!(
                "index offset {} does not fit the header's {count} chunks and the image length {len}",
                trailer.index_offset
            ),
        ));
    }
    let kinds = read_index(file, path, &header, trailer.index_offset)?;
    Ok(Layout { header, trailer, kinds })
}

/// Reads the index at `at` of an image with `header` in pieces: hashes it, checks each entry's
/// place (the frames follow each other from the header to the index) and sums it up per kind.
fn read_index(file: &File, path: &Path, header: &Header, at: u64) -> Result<[(u64, u64); 3]> {
    let count = header.chunk_count();
    let mut head = [0u8; INDEX_HEAD_LEN];
    pread_exact(file, &mut head, at, path)?;
    let n = decode_index_head(&head).map_err(|d| Error::corrupt(path, "index", at, d))?;
    if n != count {
        return Err(Error::corrupt(
            path,
            "index",
            at,
            format!("{n} entries for {count} chunks"),
        ));
    }
    let mut hasher = Incremental::new(header.checksum);
    hasher.update(&head);
    let mut kinds = [(0u64, 0u64); 3];
    let mut expect = HEADER_LEN as u64;
    let body = count * INDEX_ENTRY_LEN as u64;
    let mut piece = vec![0u8; body.min(INDEX_PIECE as u64) as usize];
    let mut done = 0u64;
    while done < body {
        let buf = &mut piece[..(body - done).min(INDEX_PIECE as u64) as usize];
        let pat = at + INDEX_HEAD_LEN as u64 + done;
        pread_exact(file, buf, pat, path)?;
        hasher.update(buf);
        for (k, e) in buf.chunks_exact(INDEX_ENTRY_LEN).enumerate() {
            let i = done / INDEX_ENTRY_LEN as u64 + k as u64;
            let eat = pat + (k * INDEX_ENTRY_LEN) as u64;
            let entry = IndexEntry::decode(e).map_err(|d| Error::corrupt(path, "index entry", eat, d))?;
            if entry.frame_offset != expect {
                return Err(Error::corrupt(
                    path,
                    "index entry",
                    eat,
                    format!("chunk {i} at {} where {expect} was expected", entry.frame_offset),
                ));
            }
            expect += FRAME_HEADER_LEN as u64 + u64::from(entry.stored_len);
            if expect > at {
                break; // Named below: the frames overrun the index.
            }
            let kind = &mut kinds[entry.kind as usize];
            kind.0 += 1;
            kind.1 += u64::from(entry.stored_len);
        }
        if expect > at {
            break;
        }
        done += buf.len() as u64;
    }
    if expect != at {
        return Err(Error::corrupt(
            path,
            "index",
            at,
            "frames do not end where the index starts",
        ));
    }
    let dat = at + INDEX_HEAD_LEN as u64 + body;
    let mut d = [0u8; 32];
    pread_exact(file, &mut d, dat, path)?;
    if hasher.finish() != d {
        return Err(Error::corrupt(
            path,
            "index digest",
            dat,
            format!("{} of the index does not match", header.checksum),
        ));
    }
    Ok(kinds)
}

/// How far back from the end of a file [`trailer_before`] looks for a trailer.
const APPENDED_SCAN: u64 = 1 << 20;

/// The end of the last valid trailer (magic, CRC, reserved bytes) in the last
/// [`APPENDED_SCAN`] bytes of a file of `len` bytes whose total length is its own end, if any:
/// where an image ends that had bytes appended after it.
fn trailer_before(file: &File, path: &Path, len: u64) -> Result<Option<u64>> {
    let start = len - len.min(APPENDED_SCAN);
    let mut buf = vec![0u8; (len - start) as usize];
    pread_exact(file, &mut buf, start, path)?;
    for p in (0..buf.len().saturating_sub(TRAILER_LEN - 1)).rev() {
        let Ok(t) = <&[u8; TRAILER_LEN]>::try_from(&buf[p..p + TRAILER_LEN]) else {
            continue;
        };
        let end = start + (p + TRAILER_LEN) as u64;
        if end < len && t[..4] == *b"DSTR" && Trailer::decode(t).is_ok_and(|t| t.total_len == end) {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

fn pread_exact(file: &File, buf: &mut [u8], at: u64, path: &Path) -> Result<()> {
    file.read_exact_at(buf, at).map_err(|e| Error::io("read", path, at, e))
}

/// Decodes a whole image held in memory, checking everything; the fuzz targets' entry point.
pub fn check_bytes(bytes: &[u8]) -> Result<Trailer> {
    let path = Path::new("<memory>");
    let mut r = ImageReader::new(bytes, path)?;
    let cs = r.header().chunk_size as usize;
    let mut dst = vec![0u8; cs];
    while r.next_frame(&mut dst)?.is_some() {}
    r.trailer().ok_or_else(|| Error::Invalid("no trailer".into()))
}
