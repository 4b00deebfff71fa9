//! The `dsimg` image format: fixed-size header, frame header, index entry and trailer, and their
//! byte-exact encoding. `docs/image-format.md` is the normative description; this file and that
//! document change together, and any change that old readers would misread bumps [`VERSION`].
//!
//! Layout: `Header | Frame* | Index | Trailer`, all little-endian, written strictly in that
//! order so an image can be produced as a stream ([`writer`]) and checked as one ([`reader`]).

pub mod reader;
pub mod writer;

use crate::digest::{Checksum, Hash};

/// First 8 bytes of every image.
pub const MAGIC: [u8; 8] = *b"DSIMG\0\r\n";
/// Format version this code writes. It reads this one and [`VERSION_1`].
pub const VERSION: u16 = 2;
/// The first version (diskstream 0.1.0): SHA-256 only, header byte 28 reserved.
pub const VERSION_1: u16 = 1;
/// Size of the header.
pub const HEADER_LEN: usize = 64;
/// Size of a frame header (the payload follows it).
pub const FRAME_HEADER_LEN: usize = 64;
/// Size of one index entry.
pub const INDEX_ENTRY_LEN: usize = 16;
/// Size of the index preamble (magic, reserved, count).
pub const INDEX_HEAD_LEN: usize = 16;
/// Size of the trailer, the last bytes of every image.
pub const TRAILER_LEN: usize = 64;
/// Smallest and largest chunk sizes an image may use (powers of two).
pub const MIN_CHUNK: u32 = 4096;
/// Largest chunk size (64 MiB).
pub const MAX_CHUNK: u32 = 64 << 20;

/// Whether the engine takes chunks of `chunk_size` bytes: a power of two from [`MIN_CHUNK`] to
/// [`MAX_CHUNK`] (what every writer produces, and all a reader ever allocates for).
pub fn chunk_size_ok(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two() && (MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size)
}

const FRAME_MAGIC: [u8; 4] = *b"DSFR";
const INDEX_MAGIC: [u8; 4] = *b"DSIX";
const TRAILER_MAGIC: [u8; 4] = *b"DSTR";

/// How a chunk is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// All zeroes; no payload.
    Zero = 0,
    /// Payload is the chunk's bytes as they are.
    Raw = 1,
    /// Payload is an lz4 block (no size prefix) that decompresses to `raw_len` bytes.
    Lz4 = 2,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Zero),
            1 => Some(Self::Raw),
            2 => Some(Self::Lz4),
            _ => None,
        }
    }

    /// Lower-case name, as `info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zero => "zero",
            Self::Raw => "raw",
            Self::Lz4 => "lz4",
        }
    }
}

/// The image header: what disk the image holds, how it is cut, and how chunks are digested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Size of the disk in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes (a power of two in `MIN_CHUNK..=MAX_CHUNK`).
    pub chunk_size: u32,
    /// The digest algorithm of the frames, the index and the trailer (version 1: SHA-256).
    pub checksum: Checksum,
}

impl Header {
    /// Number of chunks (and so frames) of the disk.
    pub fn chunk_count(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.chunk_size))
    }

    /// Length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u64) -> u32 {
        let start = index * u64::from(self.chunk_size);
        (self.disk_size - start).min(u64::from(self.chunk_size)) as u32
    }

    /// Encodes the 64-byte header (always the current [`VERSION`]).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.disk_size.to_le_bytes());
        b[24..28].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[28] = self.checksum.id();
        b[32..40].copy_from_slice(&self.chunk_count().to_le_bytes());
        seal(&mut b);
        b
    }

    /// Decodes and checks a header; the error says what is wrong.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, String> {
        if b[0..8] != MAGIC {
            return Err("not a dsimg image (bad magic)".into());
        }
        let version = u16_at(b, 8);
        if version != VERSION && version != VERSION_1 {
            return Err(format!(
                "unsupported format version {version} (this build reads {VERSION_1} and {VERSION})"
            ));
        }
        check_seal(b)?;
        if u16_at(b, 10) != 0 || b[29..32].iter().any(|&x| x != 0) || b[40..60].iter().any(|&x| x != 0) {
            return Err("reserved bytes are not zero".into());
        }
        let checksum = match (version, b[28]) {
            (VERSION_1, 0) => Checksum::Sha256,
            (VERSION_1, _) => return Err("reserved bytes are not zero".into()),
            (_, id) => Checksum::from_id(id).ok_or_else(|| format!("unknown checksum algorithm {id}"))?,
        };
        if u32_at(b, 12) as usize != HEADER_LEN {
            return Err(format!("header length {} (expected {HEADER_LEN})", u32_at(b, 12)));
        }
        let h = Self {
            disk_size: u64_at(b, 16),
            chunk_size: u32_at(b, 24),
            checksum,
        };
        if !chunk_size_ok(h.chunk_size) {
            return Err(format!(
                "chunk size {} is not a power of two in {MIN_CHUNK}..={MAX_CHUNK}",
                h.chunk_size
            ));
        }
        if u64_at(b, 32) != h.chunk_count() {
            return Err(format!(
                "chunk count {} does not match disk size {} / chunk size {}",
                u64_at(b, 32),
                h.disk_size,
                h.chunk_size
            ));
        }
        Ok(h)
    }
}

/// The header in front of each chunk's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// How the payload is stored.
    pub kind: FrameKind,
    /// Chunk index; frames appear in index order, one per chunk.
    pub index: u64,
    /// Uncompressed length of the chunk.
    pub raw_len: u32,
    /// Payload length in the image.
    pub stored_len: u32,
    /// Digest of the uncompressed bytes, with the image's algorithm.
    pub digest: Hash,
    /// CRC-32C of the stored payload (0 for an empty one): catches damage to the stored bytes
    /// even where it would not change what they decode to, before the decoder sees them.
    pub payload_crc: u32,
}

impl FrameHeader {
    /// Encodes the 64-byte frame header.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4] = self.kind as u8;
        b[8..16].copy_from_slice(&self.index.to_le_bytes());
        b[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.stored_len.to_le_bytes());
        b[24..56].copy_from_slice(&self.digest);
        b[56..60].copy_from_slice(&self.payload_crc.to_le_bytes());
        seal(&mut b);
        b
    }

    /// Decodes a frame header and checks it on its own (the reader checks it against the header).
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> Result<Self, String> {
        if b[0..4] != FRAME_MAGIC {
            return Err("bad frame magic".into());
        }
        check_seal(b)?;
        if b[5..8].iter().any(|&x| x != 0) {
            return Err("reserved bytes are not zero".into());
        }
        let kind = FrameKind::from_u8(b[4]).ok_or_else(|| format!("unknown frame kind {}", b[4]))?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[24..56]);
        let f = Self {
            kind,
            index: u64_at(b, 8),
            raw_len: u32_at(b, 16),
            stored_len: u32_at(b, 20),
            digest,
            payload_crc: u32_at(b, 56),
        };
        let ok = match kind {
            FrameKind::Zero => f.stored_len == 0 && f.payload_crc == 0,
            FrameKind::Raw => f.stored_len == f.raw_len,
            FrameKind::Lz4 => f.stored_len > 0 && f.stored_len < f.raw_len,
        };
        if !ok {
            return Err(format!(
                "stored length {} impossible for a {} frame of {} bytes",
                f.stored_len,
                kind.name(),
                f.raw_len
            ));
        }
        Ok(f)
    }
}

/// One entry of the index: where chunk `i`'s frame starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Byte offset of the frame header in the image.
    pub frame_offset: u64,
    /// Payload length.
    pub stored_len: u32,
    /// How the chunk is stored.
    pub kind: FrameKind,
}

impl IndexEntry {
    /// Encodes the 16-byte entry.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.frame_offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.stored_len.to_le_bytes());
        b[12] = self.kind as u8;
        b
    }

    /// Decodes an entry.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b[13..16].iter().any(|&x| x != 0) {
            return Err("reserved bytes are not zero".into());
        }
        let kind = FrameKind::from_u8(b[12]).ok_or_else(|| format!("unknown frame kind {}", b[12]))?;
        Ok(Self {
            frame_offset: u64_at(b, 0),
            stored_len: u32_at(b, 8),
            kind,
        })
    }
}

/// Encodes the index preamble for `count` entries.
pub fn encode_index_head(count: u64) -> [u8; INDEX_HEAD_LEN] {
    let mut b = [0u8; INDEX_HEAD_LEN];
    b[0..4].copy_from_slice(&INDEX_MAGIC);
    b[8..16].copy_from_slice(&count.to_le_bytes());
    b
}

/// Decodes the index preamble; returns the entry count.
pub fn decode_index_head(b: &[u8; INDEX_HEAD_LEN]) -> Result<u64, String> {
    if b[0..4] != INDEX_MAGIC {
        return Err("bad index magic".into());
    }
    if b[4..8].iter().any(|&x| x != 0) {
        return Err("reserved bytes are not zero".into());
    }
    Ok(u64_at(b, 8))
}

/// The trailer: where the index is, how long the image is, and the whole-image digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the index preamble.
    pub index_offset: u64,
    /// Length of the whole image, trailer included.
    pub total_len: u64,
    /// Whole-image digest (see [`crate::digest`]).
    pub image_digest: Hash,
}

impl Trailer {
    /// Encodes the 64-byte trailer.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..4].copy_from_slice(&TRAILER_MAGIC);
        b[8..16].copy_from_slice(&self.index_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.total_len.to_le_bytes());
        b[24..56].copy_from_slice(&self.image_digest);
        seal(&mut b);
        b
    }

    /// Decodes and checks a trailer.
    pub fn decode(b: &[u8; TRAILER_LEN]) -> Result<Self, String> {
        if b[0..4] != TRAILER_MAGIC {
            return Err("bad trailer magic (is the image truncated?)".into());
        }
        check_seal(b)?;
        if b[4..8].iter().chain(&b[56..60]).any(|&x| x != 0) {
            return Err("reserved bytes are not zero".into());
        }
        let mut image_digest = [0u8; 32];
        image_digest.copy_from_slice(&b[24..56]);
        Ok(Self {
            index_offset: u64_at(b, 8),
            total_len: u64_at(b, 16),
            image_digest,
        })
    }
}

/// Length of the index (preamble, entries, digest) for `count` chunks.
pub fn index_len(count: u64) -> u64 {
    count
        .saturating_mul(INDEX_ENTRY_LEN as u64)
        .saturating_add(INDEX_HEAD_LEN as u64 + 32)
}

/// CRC-32C of a frame's stored payload.
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// Writes the CRC-32C of bytes `0..60` into `60..64`.
fn seal(b: &mut [u8; 64]) {
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn check_seal(b: &[u8; 64]) -> Result<(), String> {
    let want = u32_at(b, 60);
    let have = crc32c::crc32c(&b[..60]);
    if want != have {
        return Err(format!("CRC-32C mismatch (stored {want:08x}, computed {have:08x})"));
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An image format: what `create` writes, what `verify`, `restore` and `info` find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A sparse raw copy plus `OUT.manifest`.
    Raw,
    /// The native `dsimg` image.
    Dsimg,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Self::Raw),
            "dsimg" => Ok(Self::Dsimg),
            _ => Err(format!("unknown format {s:?} (expected raw or dsimg)")),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Raw => "raw",
            Self::Dsimg => "dsimg",
        })
    }
}
