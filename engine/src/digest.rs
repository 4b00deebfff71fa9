//! Checksums: the chunk digest algorithm (BLAKE3 by default, SHA-256 on request), zero detection,
//! and the whole-image digest built from chunk digests.
//!
//! The algorithm is a recorded property of every image, manifest and stream ([`Checksum`]); both
//! give 32-byte digests. The whole-image digest is defined once here and used by the manifest and
//! the image trailer:
//! `H(tag || le64(disk_size) || le32(chunk_size) || d_0 || d_1 ...)` where `H` is the image's
//! algorithm, `d_i` its digest of chunk `i`'s bytes (zero chunks included, so a disk's digest does
//! not depend on whether its zeroes were found as holes, detected, or read), and `tag` names the
//! algorithm: `"diskstream-image-digest-blake3\0"`, or `"diskstream-image-digest-v1\0"` for SHA-256
//! (the tag of version 1, which knew only SHA-256: SHA-256 digests stay comparable across versions).

use sha2::{Digest, Sha256};

/// A chunk or image digest (BLAKE3 and SHA-256 are both 32 bytes).
pub type Hash = [u8; 32];

/// The chunk digest algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// BLAKE3 (the `blake3` crate: SIMD on every x86-64 and Arm CPU, ~10x SHA-256 without SHA
    /// extensions). The default.
    #[default]
    Blake3,
    /// SHA-256 (the `sha2` crate, using SHA-NI / Armv8 SHA where the CPU has them).
    Sha256,
}

impl Checksum {
    /// Both algorithms, the default first.
    pub const ALL: [Checksum; 2] = [Checksum::Blake3, Checksum::Sha256];

    /// The name used in manifests, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }

    /// The on-disk identifier (dsimg header byte 28).
    pub fn id(self) -> u8 {
        match self {
            Self::Sha256 => 1,
            Self::Blake3 => 2,
        }
    }

    /// The algorithm with on-disk identifier `id`.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Sha256),
            2 => Some(Self::Blake3),
            _ => None,
        }
    }

    /// The algorithm called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Hash {
        match self {
            Self::Blake3 => *blake3::hash(data).as_bytes(),
            Self::Sha256 => Sha256::digest(data).into(),
        }
    }
}

impl std::str::FromStr for Checksum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_name(s).ok_or_else(|| format!("unknown checksum {s:?} (expected blake3 or sha256)"))
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Checksum::Sha256.digest(data)
}

/// True if and only if every byte of `data` is zero. Runs at memory speed (`diskstream bench`:
/// ~49 GB/s per core on the development VM, `docs/performance.md`).
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(256);
    for block in &mut blocks {
        // OR 256 bytes together in u64 lanes; the compiler vectorises this loop.
        let acc = block
            .chunks_exact(8)
            .fold(0u64, |acc, w| acc | u64::from_ne_bytes(w.try_into().expect("8 bytes")));
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Digests of all-zero chunks of the two lengths a disk has (full chunks and the short last one).
#[derive(Clone, Debug)]
pub struct ZeroDigests {
    checksum: Checksum,
    full_len: u32,
    full: Hash,
    tail_len: u32,
    tail: Hash,
}

impl ZeroDigests {
    /// Precomputes the zero digests for a disk of `size` bytes cut into `chunk_size` chunks.
    pub fn new(checksum: Checksum, size: u64, chunk_size: u32) -> Self {
        let tail_len = (size % u64::from(chunk_size)) as u32;
        let zeros = vec![0u8; chunk_size as usize];
        Self {
            checksum,
            full_len: chunk_size,
            full: checksum.digest(&zeros),
            tail_len,
            tail: checksum.digest(&zeros[..tail_len as usize]),
        }
    }

    /// The algorithm.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// Digest of `len` zero bytes (`len` is a chunk length of this disk).
    pub fn of(&self, len: u32) -> Hash {
        if len == self.full_len {
            self.full
        } else if len == self.tail_len {
            self.tail
        } else {
            self.checksum.digest(&vec![0u8; len as usize])
        }
    }
}

#[derive(Clone)]
enum Hasher {
    Sha256(Box<Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    fn new(checksum: Checksum) -> Self {
        match checksum {
            Checksum::Sha256 => Self::Sha256(Box::default()),
            Checksum::Blake3 => Self::Blake3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    fn finish(self) -> Hash {
        match self {
            Self::Sha256(h) => (*h).finalize().into(),
            Self::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// An incremental digest over structural bytes (the dsimg index) with the image's algorithm.
#[derive(Clone)]
pub struct Incremental(Hasher);

impl Incremental {
    /// Starts a digest with `checksum`.
    pub fn new(checksum: Checksum) -> Self {
        Self(Hasher::new(checksum))
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> Hash {
        self.0.finish()
    }
}

/// Builds the whole-image digest chunk by chunk, in order.
#[derive(Clone)]
pub struct ImageDigest {
    hasher: Hasher,
}

impl ImageDigest {
    /// The domain tag of `checksum`'s image digest.
    pub fn tag(checksum: Checksum) -> &'static [u8] {
        match checksum {
            Checksum::Sha256 => b"diskstream-image-digest-v1\0",
            Checksum::Blake3 => b"diskstream-image-digest-blake3\0",
        }
    }

    /// Starts the digest of a disk of `size` bytes in chunks of `chunk_size`.
    pub fn new(checksum: Checksum, size: u64, chunk_size: u32) -> Self {
        let mut hasher = Hasher::new(checksum);
        hasher.update(Self::tag(checksum));
        hasher.update(&size.to_le_bytes());
        hasher.update(&chunk_size.to_le_bytes());
        Self { hasher }
    }

    /// Adds the next chunk's digest.
    pub fn push(&mut self, chunk: &Hash) {
        self.hasher.update(chunk);
    }

    /// The digest.
    pub fn finish(self) -> Hash {
        self.hasher.finish()
    }

    /// The digest of a whole list of chunk digests.
    pub fn of<'a>(checksum: Checksum, size: u64, chunk_size: u32, chunks: impl IntoIterator<Item = &'a Hash>) -> Hash {
        let mut d = Self::new(checksum, size, chunk_size);
        for c in chunks {
            d.push(c);
        }
        d.finish()
    }
}

/// Lower-case hex of a digest.
pub fn hex(d: &Hash) -> String {
    ::hex::encode(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_byte_anywhere() {
        let mut v = vec![0u8; 70_001];
        assert!(is_zero(&v));
        for pos in [0, 1, 15, 16, 4095, 35_000, 70_000] {
            v[pos] = 1;
            assert!(!is_zero(&v), "byte {pos}");
            v[pos] = 0;
        }
        assert!(is_zero(&v[3..]));
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn blake3_matches_known_vector() {
        // The BLAKE3 paper's test vector for the empty input.
        assert_eq!(
            hex(&Checksum::Blake3.digest(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn names_and_ids_round_trip() {
        for c in Checksum::ALL {
            assert_eq!(Checksum::from_name(c.name()), Some(c));
            assert_eq!(Checksum::from_id(c.id()), Some(c));
        }
        assert_eq!(Checksum::from_id(0), None);
        assert_eq!(Checksum::from_id(3), None);
        assert!("md5".parse::<Checksum>().is_err());
    }

    #[test]
    fn zero_digest_of_tail() {
        for c in Checksum::ALL {
            let z = ZeroDigests::new(c, 10_000, 4096);
            assert_eq!(z.of(4096), c.digest(&[0u8; 4096]));
            assert_eq!(z.of(10_000 - 8192), c.digest(&vec![0u8; 10_000 - 8192]));
        }
    }

    #[test]
    fn image_digests_differ_by_algorithm() {
        let d = [7u8; 32];
        let a = ImageDigest::of(Checksum::Sha256, 4096, 4096, [&d]);
        let b = ImageDigest::of(Checksum::Blake3, 4096, 4096, [&d]);
        assert_ne!(a, b);
    }
}
