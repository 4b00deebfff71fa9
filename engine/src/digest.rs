//! Checksums: SHA-256 per chunk, zero detection, and the whole-image digest built from them.
//!
//! The whole-image digest is defined once here and used by the manifest and the image trailer:
//! `SHA-256("diskstream-image-digest-v1\0" || le64(disk_size) || le32(chunk_size) || d_0 || d_1 ...)`
//! where `d_i` is the SHA-256 of chunk `i`'s bytes, zero chunks included (so a disk's digest does
//! not depend on whether its zeroes were found as holes, detected, or read).

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Sha = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Sha {
    Sha256::digest(data).into()
}

/// True if and only if every byte of `data` is zero. Runs at memory speed (perf.md: ~40 GB/s).
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
    full_len: u32,
    full: Sha,
    tail_len: u32,
    tail: Sha,
}

impl ZeroDigests {
    /// Precomputes the zero digests for a disk of `size` bytes cut into `chunk_size` chunks.
    pub fn new(size: u64, chunk_size: u32) -> Self {
        let tail_len = (size % u64::from(chunk_size)) as u32;
        let zeros = vec![0u8; chunk_size as usize];
        Self {
            full_len: chunk_size,
            full: sha256(&zeros),
            tail_len,
            tail: sha256(&zeros[..tail_len as usize]),
        }
    }

    /// SHA-256 of `len` zero bytes (`len` is a chunk length of this disk).
    pub fn of(&self, len: u32) -> Sha {
        if len == self.full_len {
            self.full
        } else if len == self.tail_len {
            self.tail
        } else {
            sha256(&vec![0u8; len as usize])
        }
    }
}

/// Builds the whole-image digest chunk by chunk, in order.
#[derive(Clone)]
pub struct ImageDigest {
    hasher: Sha256,
}

impl ImageDigest {
    /// Starts the digest of a disk of `size` bytes in chunks of `chunk_size`.
    pub fn new(size: u64, chunk_size: u32) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"diskstream-image-digest-v1\0");
        hasher.update(size.to_le_bytes());
        hasher.update(chunk_size.to_le_bytes());
        Self { hasher }
    }

    /// Adds the next chunk's digest.
    pub fn push(&mut self, chunk: &Sha) {
        self.hasher.update(chunk);
    }

    /// The digest.
    pub fn finish(self) -> Sha {
        self.hasher.finalize().into()
    }

    /// The digest of a whole list of chunk digests.
    pub fn of<'a>(size: u64, chunk_size: u32, chunks: impl IntoIterator<Item = &'a Sha>) -> Sha {
        let mut d = Self::new(size, chunk_size);
        for c in chunks {
            d.push(c);
        }
        d.finish()
    }
}

/// Lower-case hex of a digest.
pub fn hex(d: &Sha) -> String {
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
    fn zero_digest_of_tail() {
        let z = ZeroDigests::new(10_000, 4096);
        assert_eq!(z.of(4096), sha256(&[0u8; 4096]));
        assert_eq!(z.of(10_000 - 8192), sha256(&vec![0u8; 10_000 - 8192]));
    }
}
