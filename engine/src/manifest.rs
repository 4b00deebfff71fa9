//! The manifest: the digest algorithm, one line per chunk with its kind and digest, and the
//! whole-image digest.
//!
//! Every run writes one (`OUT.manifest`); it is what `verify` checks a raw image against. It is
//! text so an operator can read and diff it, and strict so that damage is never misread:
//! the parser accepts exactly what [`Manifest::encode`] writes. Specified in
//! `docs/image-format.md` ("The manifest").

use std::path::Path;

use crate::digest::{hex, Checksum, Hash, ImageDigest, ZeroDigests};
use crate::error::{Error, Result};
use crate::format::{chunk_size_ok, MAX_CHUNK, MIN_CHUNK};

/// First line of every manifest this version writes.
pub const MANIFEST_MAGIC: &str = "diskstream-manifest v2";
/// First line of a version-1 manifest (diskstream 0.1.0: SHA-256, no `checksum` line).
pub const MANIFEST_MAGIC_V1: &str = "diskstream-manifest v1";

/// What a chunk held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// At least one non-zero byte.
    Data,
    /// All zeroes (stored as a hole or a zero frame).
    Zero,
}

/// The digests of a disk, chunk by chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Format version: 2 (written now) or 1 (read, and re-encoded as it was).
    pub version: u8,
    /// The digest algorithm of the chunk lines and the image digest.
    pub checksum: Checksum,
    /// Size of the disk in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Kind and digest of each chunk, in order.
    pub chunks: Vec<(ChunkKind, Hash)>,
}

impl Manifest {
    /// An empty manifest for a disk; `chunks` is filled by the caller, in any order, through
    /// [`Self::set`].
    pub fn new(checksum: Checksum, disk_size: u64, chunk_size: u32) -> Self {
        let count = disk_size.div_ceil(u64::from(chunk_size)) as usize;
        Self {
            version: 2,
            checksum,
            disk_size,
            chunk_size,
            chunks: vec![(ChunkKind::Zero, [0; 32]); count],
        }
    }

    /// Records chunk `index`.
    pub fn set(&mut self, index: u64, kind: ChunkKind, digest: Hash) {
        self.chunks[index as usize] = (kind, digest);
    }

    /// The whole-image digest.
    pub fn image_digest(&self) -> Hash {
        ImageDigest::of(
            self.checksum,
            self.disk_size,
            self.chunk_size,
            self.chunks.iter().map(|(_, s)| s),
        )
    }

    /// Offset and length of chunk `index` in the disk.
    pub fn chunk_range(&self, index: u64) -> (u64, u32) {
        let off = index * u64::from(self.chunk_size);
        (off, (self.disk_size - off).min(u64::from(self.chunk_size)) as u32)
    }

    /// The text form.
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(100 + self.chunks.len() * 80);
        if self.version == 1 {
            let _ = writeln!(s, "{MANIFEST_MAGIC_V1}");
        } else {
            let _ = writeln!(s, "{MANIFEST_MAGIC}");
            let _ = writeln!(s, "checksum {}", self.checksum);
        }
        let _ = writeln!(s, "disk-size {}", self.disk_size);
        let _ = writeln!(s, "chunk-size {}", self.chunk_size);
        let _ = writeln!(s, "chunk-count {}", self.chunks.len());
        for (i, (kind, digest)) in self.chunks.iter().enumerate() {
            let k = match kind {
                ChunkKind::Data => "data",
                ChunkKind::Zero => "zero",
            };
            let mut h = [0u8; 64];
            ::hex::encode_to_slice(digest, &mut h).expect("64 hex digits for 32 bytes");
            let h = std::str::from_utf8(&h).expect("hex is ASCII");
            let _ = writeln!(s, "{i} {k} {h}");
        }
        let _ = writeln!(s, "image-{} {}", self.checksum, hex(&self.image_digest()));
        s.push_str("end\n");
        s
    }

    /// Parses the text form, checking every line, the zero digests and the image digest.
    /// `path` names the manifest in errors; offsets in errors are byte offsets of the line.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self> {
        let text = std::str::from_utf8(text)
            .map_err(|e| Error::corrupt(path, "manifest", e.valid_up_to() as u64, "not UTF-8"))?;
        let mut p = Lines { text, pos: 0, path };
        let ManifestHeader {
            version,
            checksum,
            disk_size,
            chunk_size,
            chunk_count: count,
        } = ManifestHeader::parse_lines(&mut p)?;
        let zeros = ZeroDigests::new(checksum, disk_size, chunk_size);
        let mut chunks = Vec::new();
        for i in 0..count {
            let (at, line) = p.next("chunk line")?;
            let mut parts = line.split(' ');
            let (Some(idx), Some(kind), Some(digest), None) = (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::corrupt(
                    path,
                    "manifest",
                    at,
                    format!("chunk line {i} is not `INDEX KIND DIGEST`"),
                ));
            };
            if idx != i.to_string() {
                return Err(Error::corrupt(
                    path,
                    "manifest",
                    at,
                    format!("chunk {idx:?} where chunk {i} belongs"),
                ));
            }
            let digest = parse_digest(digest).ok_or_else(|| {
                Error::corrupt(
                    path,
                    "manifest",
                    at,
                    format!("chunk {i}: bad {checksum} digest {digest:?}"),
                )
            })?;
            let kind = match kind {
                "data" => ChunkKind::Data,
                "zero" => {
                    let len = (disk_size - i * u64::from(chunk_size)).min(u64::from(chunk_size)) as u32;
                    if digest != zeros.of(len) {
                        return Err(Error::corrupt(
                            path,
                            "manifest",
                            at,
                            format!("chunk {i} is marked zero but its digest is not that of zeroes"),
                        ));
                    }
                    ChunkKind::Zero
                }
                other => {
                    return Err(Error::corrupt(
                        path,
                        "manifest",
                        at,
                        format!("chunk {i}: unknown kind {other:?}"),
                    ))
                }
            };
            chunks.push((kind, digest));
        }
        let m = Self {
            version,
            checksum,
            disk_size,
            chunk_size,
            chunks,
        };
        let key = format!("image-{checksum} ");
        let (at, line) = p.next("image digest line")?;
        let want = line
            .strip_prefix(key.as_str())
            .and_then(parse_digest)
            .ok_or_else(|| Error::corrupt(path, "manifest", at, format!("expected `{key}<hex>`")))?;
        if want != m.image_digest() {
            return Err(Error::corrupt(
                path,
                "manifest",
                at,
                "image digest does not match the chunk digests",
            ));
        }
        p.expect_exact("end")?;
        if p.pos != text.len() {
            return Err(Error::corrupt(path, "manifest", p.pos as u64, "text after `end`"));
        }
        Ok(m)
    }
}

/// The header lines of a manifest (version, algorithm, sizes): what it describes, and so how
/// long it can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestHeader {
    /// Format version: 1 or 2.
    pub version: u8,
    /// The digest algorithm (version 1: SHA-256).
    pub checksum: Checksum,
    /// Size of the disk in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunk lines that follow (`ceil(disk_size / chunk_size)`).
    pub chunk_count: u64,
}

impl ManifestHeader {
    /// Parses the header from the start of a manifest (`head` may stop anywhere after it),
    /// as strictly as [`Manifest::parse`] does.
    pub fn parse(head: &[u8], path: &Path) -> Result<Self> {
        let text = match std::str::from_utf8(head) {
            Ok(t) => t,
            // A cut inside a multi-byte character at the end of the head is not an error yet.
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).expect("valid prefix"),
            Err(e) => return Err(Error::corrupt(path, "manifest", e.valid_up_to() as u64, "not UTF-8")),
        };
        Self::parse_lines(&mut Lines { text, pos: 0, path })
    }

    fn parse_lines(p: &mut Lines<'_>) -> Result<Self> {
        let path = p.path;
        let (at, first) = p.next("first line")?;
        let (version, checksum) = match first {
            MANIFEST_MAGIC_V1 => (1, Checksum::Sha256),
            MANIFEST_MAGIC => {
                let (at, line) = p.next("checksum line")?;
                let c = line
                    .strip_prefix("checksum ")
                    .and_then(Checksum::from_name)
                    .ok_or_else(|| {
                        Error::corrupt(
                            path,
                            "manifest",
                            at,
                            format!("expected `checksum blake3|sha256`, found `{}`", line.escape_debug()),
                        )
                    })?;
                (2, c)
            }
            other if other.starts_with("diskstream-manifest ") => {
                return Err(Error::corrupt(
                    path,
                    "manifest",
                    at,
                    format!(
                        "unsupported manifest version `{}` (this build reads v1 and v2)",
                        other.escape_debug()
                    ),
                ))
            }
            other => {
                return Err(Error::corrupt(
                    path,
                    "manifest",
                    at,
                    format!("expected `{MANIFEST_MAGIC}`, found `{}`", other.escape_debug()),
                ))
            }
        };
        let disk_size: u64 = p.field("disk-size")?;
        let cs_at = p.pos;
        let chunk_size: u32 = p.field("chunk-size")?;
        if !chunk_size_ok(chunk_size) {
            // Exactly what a writer produces: a larger chunk would make every reader allocate
            // buffers of that size (a `chunk-size 2147483648` once aborted verify on 77 GB).
            return Err(Error::corrupt(
                path,
                "manifest",
                cs_at as u64,
                format!(
                    "line {}: chunk size {chunk_size} is not a power of two from {MIN_CHUNK} to {MAX_CHUNK} \
                     (the largest chunk diskstream writes)",
                    p.line_of(cs_at)
                ),
            ));
        }
        let count: u64 = p.field("chunk-count")?;
        if count != disk_size.div_ceil(u64::from(chunk_size)) {
            return Err(p.err(format!(
                "{count} chunks do not cover {disk_size} bytes in chunks of {chunk_size}"
            )));
        }
        Ok(Self {
            version,
            checksum,
            disk_size,
            chunk_size,
            chunk_count: count,
        })
    }

    /// The most bytes a manifest with this header can hold, as [`Manifest::encode`] writes it:
    /// the header, one line of at most `digits(count) + 71` bytes per chunk, the image digest
    /// line and `end` (version 1's header, one line shorter, is covered by the same bound).
    pub fn max_len(&self) -> u64 {
        let digits = |n: u64| n.checked_ilog10().map_or(1, |d| u64::from(d) + 1);
        let header = MANIFEST_MAGIC.len() as u64
            + 1
            + format!("checksum {}\n", self.checksum).len() as u64
            + format!(
                "disk-size {}\nchunk-size {}\nchunk-count {}\n",
                self.disk_size, self.chunk_size, self.chunk_count
            )
            .len() as u64;
        let line = digits(self.chunk_count) + 1 + 4 + 1 + 64 + 1;
        header
            .saturating_add(self.chunk_count.saturating_mul(line))
            .saturating_add(13 + 64 + 1 + 4)
    }
}

fn parse_digest(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 32];
    ::hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

struct Lines<'a> {
    text: &'a str,
    pos: usize,
    path: &'a Path,
}

impl<'a> Lines<'a> {
    fn next(&mut self, what: &str) -> Result<(u64, &'a str)> {
        let at = self.pos;
        let rest = &self.text[self.pos..];
        let Some(nl) = rest.find('\n') else {
            // Nothing left, or text without a line end (cut mid-line, or no manifest at all:
            // a file of NULs read as one said "ends before the first line").
            let detail = if rest.is_empty() {
                format!("ends before the {what} (truncated?)")
            } else {
                format!(
                    "the {what} has no line end in the {} bytes read (truncated, or not a diskstream manifest)",
                    rest.len()
                )
            };
            return Err(Error::corrupt(self.path, "manifest", at as u64, detail));
        };
        self.pos += nl + 1;
        Ok((at as u64, &rest[..nl]))
    }

    fn expect_exact(&mut self, want: &str) -> Result<()> {
        let (at, line) = self.next(want)?;
        if line != want {
            return Err(Error::corrupt(
                self.path,
                "manifest",
                at,
                format!("expected `{want}`, found `{}`", line.escape_debug()),
            ));
        }
        Ok(())
    }

    fn field<T: std::str::FromStr>(&mut self, key: &str) -> Result<T> {
        let (at, line) = self.next(key)?;
        line.strip_prefix(key)
            .and_then(|r| r.strip_prefix(' '))
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && (v.len() == 1 || !v.starts_with('0')))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::corrupt(
                    self.path,
                    "manifest",
                    at,
                    format!("expected `{key} <number>`, found `{}`", line.escape_debug()),
                )
            })
    }

    /// The line number (from 1) of the line starting at byte `at`.
    fn line_of(&self, at: usize) -> usize {
        self.text[..at].matches('\n').count() + 1
    }

    fn err(&self, detail: String) -> Error {
        Error::corrupt(self.path, "manifest", self.pos as u64, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(c: Checksum) -> Manifest {
        let mut m = Manifest::new(c, 10_000, 4096);
        m.set(0, ChunkKind::Data, c.digest(b"a"));
        m.set(1, ChunkKind::Zero, c.digest(&[0; 4096]));
        m.set(2, ChunkKind::Data, c.digest(b"c"));
        m
    }

    /// The same manifest as version 1 wrote it (SHA-256, no checksum line).
    fn sample_v1() -> Manifest {
        Manifest {
            version: 1,
            ..sample(Checksum::Sha256)
        }
    }

    fn samples() -> Vec<Manifest> {
        vec![sample(Checksum::Blake3), sample(Checksum::Sha256), sample_v1()]
    }

    #[test]
    fn round_trip() {
        for m in samples() {
            assert_eq!(Manifest::parse(m.encode().as_bytes(), Path::new("m")).unwrap(), m);
        }
    }

    #[test]
    fn a_head_without_a_line_end_is_not_called_short() {
        let e = ManifestHeader::parse(&[0u8; 4096], Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the first line has no line end in the 4096 bytes read"),
            "{e}"
        );
        let e = ManifestHeader::parse(b"", Path::new("m")).unwrap_err().to_string();
        assert!(e.contains("ends before the first line (truncated?)"), "{e}");
    }

    #[test]
    fn version_1_text_is_what_0_1_0_wrote() {
        let text = sample_v1().encode();
        assert!(text.starts_with("diskstream-manifest v1\ndisk-size 10000\n"), "{text}");
        assert!(text.contains("\nimage-sha256 "), "{text}");
        assert!(!text.contains("checksum"), "{text}");
        assert_eq!(sample_v1().image_digest(), sample(Checksum::Sha256).image_digest());
        let v2 = sample(Checksum::Blake3).encode();
        assert!(v2.starts_with("diskstream-manifest v2\nchecksum blake3\n"), "{v2}");
        assert!(v2.contains("\nimage-blake3 "), "{v2}");
    }

    #[test]
    fn a_chunk_size_larger_than_any_writer_makes_is_rejected_naming_file_and_line() {
        let mut m = Manifest::new(Checksum::Blake3, 1, crate::format::MAX_CHUNK);
        m.set(0, ChunkKind::Data, Checksum::Blake3.digest(b"x"));
        let good = m.encode();
        // The largest chunk a writer makes is read back.
        assert_eq!(Manifest::parse(good.as_bytes(), Path::new("m")).unwrap(), m);
        for big in [1u64 << 27, 1 << 31] {
            let text = good.replace("chunk-size 67108864\n", &format!("chunk-size {big}\n"));
            assert_ne!(text, good);
            let head = ManifestHeader::parse(text.as_bytes(), Path::new("dir/x.manifest"));
            let e = head.expect_err("a chunk size over 64 MiB was accepted").to_string();
            assert!(e.starts_with("dir/x.manifest: corrupt manifest"), "{e}");
            assert!(e.contains(&format!("line 4: chunk size {big} is not")), "{e}");
            assert!(e.contains("4096 to 67108864"), "{e}");
            let e = Manifest::parse(text.as_bytes(), Path::new("m"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("line 4"), "{e}");
        }
    }

    #[test]
    fn a_checksum_line_naming_the_other_algorithm_is_rejected() {
        let text = sample(Checksum::Blake3)
            .encode()
            .replace("checksum blake3", "checksum sha256");
        assert!(Manifest::parse(text.as_bytes(), Path::new("m")).is_err());
        let text = sample(Checksum::Blake3)
            .encode()
            .replace("checksum blake3", "checksum md5");
        let e = Manifest::parse(text.as_bytes(), Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum blake3|sha256"), "{e}");
        let text = sample(Checksum::Blake3).encode().replace("manifest v2", "manifest v3");
        let e = Manifest::parse(text.as_bytes(), Path::new("m"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported manifest version"), "{e}");
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        for m in samples() {
            let text = m.encode().into_bytes();
            for i in 0..text.len() {
                let mut t = text.clone();
                t[i] ^= 0x01;
                assert!(
                    Manifest::parse(&t, Path::new("m")).is_err(),
                    "flip at byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn max_len_bounds_what_encode_writes() {
        for (size, cs) in [
            (0u64, 4096u32),
            (1, 4096),
            (10_000, 4096),
            (9 << 20, 4096),
            (5 << 20, 1 << 20),
        ] {
            let v1 = Manifest {
                version: 1,
                ..Manifest::new(Checksum::Sha256, size, cs)
            };
            for m in [
                Manifest::new(Checksum::Blake3, size, cs),
                Manifest::new(Checksum::Sha256, size, cs),
                v1,
            ] {
                let text = m.encode();
                let h = ManifestHeader::parse(text.as_bytes(), Path::new("m")).unwrap();
                assert_eq!(
                    (h.chunk_count, h.version, h.checksum),
                    (m.chunks.len() as u64, m.version, m.checksum)
                );
                assert!(
                    h.max_len() >= text.len() as u64,
                    "{size}/{cs}: {} < {}",
                    h.max_len(),
                    text.len()
                );
                assert!(
                    h.max_len() <= text.len() as u64 + 64 + 20 * h.chunk_count,
                    "{size}/{cs}: bound too loose"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for m in samples() {
            let text = m.encode().into_bytes();
            for cut in 0..text.len() {
                assert!(
                    Manifest::parse(&text[..cut], Path::new("m")).is_err(),
                    "cut at {cut} accepted"
                );
            }
        }
    }
}
