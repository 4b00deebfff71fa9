//! The dsimg format and the manifest as a compatibility boundary: property tests of the encoder
//! against the decoder, every single-byte flip and every truncation rejected, and a replay of the
//! fuzz corpus (`fuzz/corpus/*`) through the same entry points the fuzz targets call. Every test
//! runs for both chunk digest algorithms.

use std::path::Path;

use diskstream_engine::digest::{is_zero, Checksum, ImageDigest, Incremental};
use diskstream_engine::format::reader::{check_bytes, ImageReader};
use diskstream_engine::format::writer::ImageWriter;
use diskstream_engine::format::{FrameKind, Header, IndexEntry, Trailer, INDEX_ENTRY_LEN, INDEX_HEAD_LEN, TRAILER_LEN};
use diskstream_engine::fuzzing;
use diskstream_engine::manifest::{ChunkKind, Manifest};
use proptest::prelude::*;

/// Encodes `disk` as an image the way the engine does (zero, lz4 if smaller, else raw).
fn encode(disk: &[u8], chunk_size: u32, checksum: Checksum) -> Vec<u8> {
    let header = Header {
        disk_size: disk.len() as u64,
        chunk_size,
        checksum,
    };
    let mut w = ImageWriter::new(Vec::new(), header).unwrap();
    for (i, c) in disk.chunks(chunk_size as usize).enumerate() {
        let sha = checksum.digest(c);
        if is_zero(c) {
            w.push(i as u64, FrameKind::Zero, &sha, &[]).unwrap();
            continue;
        }
        let z = lz4_flex::block::compress(c);
        if z.len() < c.len() {
            w.push(i as u64, FrameKind::Lz4, &sha, &z).unwrap();
        } else {
            w.push(i as u64, FrameKind::Raw, &sha, c).unwrap();
        }
    }
    w.finish().unwrap().0
}

fn decode(img: &[u8]) -> Vec<u8> {
    let mut r = ImageReader::new(img, Path::new("mem")).unwrap();
    let cs = r.header().chunk_size as usize;
    let mut out = Vec::new();
    let mut buf = vec![0u8; cs];
    while let Some(f) = r.next_frame(&mut buf).unwrap() {
        match f.kind {
            FrameKind::Zero => out.extend(std::iter::repeat_n(0u8, f.raw_len as usize)),
            _ => out.extend_from_slice(&buf[..f.raw_len as usize]),
        }
    }
    out
}

fn disk_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Runs of random bytes, repeated bytes and zeroes: every frame kind occurs.
    prop::collection::vec((0u8..3, 1usize..6000, any::<u8>()), 0..24).prop_map(|runs| {
        let mut v = Vec::new();
        let mut seed = 7u64;
        for (kind, len, byte) in runs {
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(match kind {
                    0 => 0,
                    1 => byte,
                    _ => seed as u8,
                });
            }
        }
        v
    })
}

fn checksum_strategy() -> impl Strategy<Value = Checksum> {
    prop_oneof![Just(Checksum::Blake3), Just(Checksum::Sha256)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_gives_the_disk_back(disk in disk_strategy(), shift in 12u32..15, c in checksum_strategy()) {
        let cs = 1u32 << shift;
        let img = encode(&disk, cs, c);
        let trailer = check_bytes(&img).unwrap();
        let chunks: Vec<_> = disk.chunks(cs as usize).map(|x| c.digest(x)).collect();
        prop_assert_eq!(trailer.image_digest, ImageDigest::of(c, disk.len() as u64, cs, chunks.iter()));
        prop_assert_eq!(decode(&img), disk);
    }

    #[test]
    fn manifest_round_trips(disk in disk_strategy(), c in checksum_strategy()) {
        let cs = 4096u32;
        let mut m = Manifest::new(c, disk.len() as u64, cs);
        for (i, x) in disk.chunks(cs as usize).enumerate() {
            let kind = if is_zero(x) { ChunkKind::Zero } else { ChunkKind::Data };
            m.set(i as u64, kind, c.digest(x));
        }
        let text = m.encode();
        prop_assert_eq!(Manifest::parse(text.as_bytes(), Path::new("m")).unwrap(), m);
    }
}

fn small_image(c: Checksum) -> Vec<u8> {
    let mut disk = vec![0u8; 3 * 4096 + 100];
    disk[..4096].copy_from_slice(&[7u8; 4096]); // lz4
    for (i, b) in disk[8192..12288].iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8; // raw-ish
    }
    disk[12288..].fill(3);
    encode(&disk, 4096, c)
}

#[test]
fn every_single_byte_flip_of_an_image_is_rejected() {
    for c in Checksum::ALL {
        let img = small_image(c);
        assert!(check_bytes(&img).is_ok());
        for i in 0..img.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = img.clone();
                bad[i] ^= bit;
                assert!(
                    check_bytes(&bad).is_err(),
                    "{c}: flip of bit {bit:#x} at byte {i} accepted"
                );
            }
        }
    }
}

#[test]
fn the_header_records_the_algorithm_and_a_swapped_one_is_rejected() {
    let img = small_image(Checksum::Blake3);
    assert_eq!(u16::from_le_bytes([img[8], img[9]]), 2, "version");
    assert_eq!(img[28], Checksum::Blake3.id());
    // Claim SHA-256 with a valid header CRC: the frames' digests then do not match.
    let mut bad = img.clone();
    bad[28] = Checksum::Sha256.id();
    let crc = crc32c::crc32c(&bad[..60]);
    bad[60..64].copy_from_slice(&crc.to_le_bytes());
    let e = check_bytes(&bad).unwrap_err();
    assert!(e.is_integrity(), "{e}");
    // An unknown algorithm is named.
    bad[28] = 9;
    let crc = crc32c::crc32c(&bad[..60]);
    bad[60..64].copy_from_slice(&crc.to_le_bytes());
    let e = check_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("unknown checksum algorithm 9"), "{e}");
}

/// `img` with index entry `i` replaced by `entry` and the index digest worked out again, so
/// that only the comparison of the index with the frames can catch it.
fn resigned(img: &[u8], i: usize, entry: IndexEntry) -> Vec<u8> {
    let mut bad = img.to_vec();
    let t = Trailer::decode(&bad[bad.len() - TRAILER_LEN..].try_into().unwrap()).unwrap();
    let at = t.index_offset as usize;
    let e = at + INDEX_HEAD_LEN + i * INDEX_ENTRY_LEN;
    bad[e..e + INDEX_ENTRY_LEN].copy_from_slice(&entry.encode());
    let dat = bad.len() - TRAILER_LEN - 32;
    let checksum = Header::decode(&bad[..64].try_into().unwrap()).unwrap().checksum;
    let mut h = Incremental::new(checksum);
    h.update(&bad[at..dat]);
    bad[dat..dat + 32].copy_from_slice(&h.finish());
    bad
}

#[test]
fn an_index_signed_again_but_not_matching_its_frames_is_rejected() {
    for c in Checksum::ALL {
        let img = small_image(c);
        // Chunk 0 is an lz4 frame at byte 64: the same place, another kind.
        let t = Trailer::decode(&img[img.len() - TRAILER_LEN..].try_into().unwrap()).unwrap();
        let e0 = t.index_offset as usize + INDEX_HEAD_LEN;
        let first = IndexEntry::decode(&img[e0..e0 + INDEX_ENTRY_LEN]).unwrap();
        assert_eq!((first.frame_offset, first.kind), (64, FrameKind::Lz4));
        let kind = resigned(
            &img,
            0,
            IndexEntry {
                kind: FrameKind::Raw,
                ..first
            },
        );
        let e = check_bytes(&kind).unwrap_err().to_string();
        assert!(e.contains("its entries do not match the frames"), "{c}: {e}");
        // Another place: the entry is named.
        let moved = resigned(
            &img,
            0,
            IndexEntry {
                frame_offset: 128,
                ..first
            },
        );
        let e = check_bytes(&moved).unwrap_err().to_string();
        assert!(e.contains("entry 0 does not match its frame"), "{c}: {e}");
        assert!(
            check_bytes(&resigned(&img, 0, first)).is_ok(),
            "{c}: the unchanged index"
        );
    }
}

#[test]
fn every_truncation_and_any_appended_byte_is_rejected() {
    let img = small_image(Checksum::Blake3);
    for cut in 0..img.len() {
        assert!(check_bytes(&img[..cut]).is_err(), "image cut at {cut} accepted");
    }
    let mut longer = img.clone();
    longer.push(0);
    assert!(check_bytes(&longer).is_err(), "trailing byte accepted");
}

#[test]
fn fuzz_corpus_replays_through_the_fuzz_entry_points() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut seen = 0;
    type Entry = fn(&[u8]) -> bool;
    let targets: [(&str, Entry); 2] = [
        ("image_decode", fuzzing::image_decode),
        ("manifest_parse", fuzzing::manifest_parse),
    ];
    for (target, f) in targets {
        let dir = root.join(target);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let accepted = f(&data);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("ok-") {
                assert!(accepted, "{} should decode", path.display());
            } else if name.starts_with("bad-") {
                assert!(!accepted, "{} should be rejected", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 10, "fuzz corpus is missing ({seen} files)");
}
