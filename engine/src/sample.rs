//! Sample disks with realistic content (text, machine-code-like bytes, zero runs, holes) for the
//! demo, the tests and the benches. Deterministic: the same seed gives the same bytes.
//! Public only with the `testing` feature; the demo's disks come from [`write_sample_disk`],
//! re-exported at the crate root.
#![cfg_attr(not(feature = "testing"), allow(dead_code))]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A small, fast, deterministic generator (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "instance",
    "disk",
    "export",
    "node",
    "cluster",
    "snapshot",
    "config",
    "kernel",
    "block",
    "device",
    "data",
    "#include",
    "<stdio.h>",
    "return",
    "static",
    "void",
    "int",
    "error:",
    "warning:",
    "usr/lib",
    "x86_64",
    "GLIBC_2.34",
    "libc.so.6",
    "{",
    "}",
    "if",
    "else",
    "for",
    "=",
    "==",
    "0x00",
    "\n",
    "\n\t",
    "def",
    "import",
    "self",
    "None",
];

/// Fills `buf` with one kind of content chosen by `kind` (0 text, 1 code-like, 2 random, 3 zero).
pub fn fill_content(rng: &mut Rng, kind: u8, buf: &mut [u8]) {
    match kind {
        0 => {
            let mut i = 0;
            while i < buf.len() {
                let w = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
                let n = w.len().min(buf.len() - i);
                buf[i..i + n].copy_from_slice(&w[..n]);
                i += n;
                if i < buf.len() {
                    buf[i] = b' ';
                    i += 1;
                }
            }
        }
        1 => {
            // Machine-code-like: short repeated opcode patterns with random immediates.
            let patterns: [&[u8]; 6] = [
                &[0x48, 0x89, 0xe5],
                &[0x48, 0x83, 0xec, 0x10],
                &[0xe8, 0, 0, 0, 0],
                &[0x0f, 0x1f, 0x44, 0, 0],
                &[0xc3],
                &[0x55],
            ];
            let mut i = 0;
            while i < buf.len() {
                let p = patterns[rng.below(6) as usize];
                let n = p.len().min(buf.len() - i);
                buf[i..i + n].copy_from_slice(&p[..n]);
                i += n;
                if rng.below(4) == 0 && i + 4 <= buf.len() {
                    buf[i..i + 4].copy_from_slice(&(rng.next_u64() as u32 & 0xffff).to_le_bytes());
                    i += 4;
                }
            }
        }
        2 => rng.fill(buf),
        _ => buf.fill(0),
    }
}

/// Writes a sample disk of `size` bytes to `path` (created or truncated). Roughly
/// `data_percent`% of it is written in 1 MiB extents of mixed content (text, code, random, zero
/// runs); the rest stays a hole.
pub fn write_sample_disk(path: &Path, size: u64, data_percent: u8, seed: u64) -> io::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut rng = Rng::new(seed);
    let ext = 1u64 << 20;
    let mut buf = vec![0u8; ext as usize];
    let mut off = 0;
    while off < size {
        let len = ext.min(size - off);
        if rng.below(100) < u64::from(data_percent) {
            let b = &mut buf[..len as usize];
            let mut i = 0;
            while i < b.len() {
                let run = (4096 * (1 + rng.below(32)) as usize).min(b.len() - i);
                let kind = match rng.below(10) {
                    0..=3 => 0,
                    4..=6 => 1,
                    7 => 2,
                    _ => 3,
                };
                fill_content(&mut rng, kind, &mut b[i..i + run]);
                i += run;
            }
            f.write_all_at(b, off)?;
        }
        off += len;
    }
    f.sync_all()
}
