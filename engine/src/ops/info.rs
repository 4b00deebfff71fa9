//! `info`: describes an image from its header, index and trailer (dsimg) or its manifest (raw);
//! checks structure and length, not every chunk (that is `verify`).

use std::path::Path;

use super::image::{check_dsimg_manifest, load_manifest};
use super::image_file::ImageFile;
use super::{Format, Info, InfoOptions};
use crate::digest::hex;
use crate::error::Result;
use crate::format::reader::read_layout;
use crate::format::FrameKind;
use crate::manifest::ChunkKind;

/// Describes an image from its header, index and trailer (dsimg) or manifest (raw); checks
/// structure and length, not every chunk (that is `verify`).
pub fn info(image: &Path, o: &InfoOptions) -> Result<Info> {
    let img = ImageFile::open(image)?;
    match img.format(o.format, o.manifest.as_deref())? {
        Format::Dsimg => {
            let l = read_layout(img.file(), image)?;
            let manifest = check_dsimg_manifest(&img, o.manifest.as_deref(), &l)?;
            Ok(Info {
                format: Format::Dsimg,
                file_len: img.size(),
                disk_size: l.header.disk_size,
                chunk_size: l.header.chunk_size,
                chunks: l.header.chunk_count(),
                data_chunks: l.count(FrameKind::Raw),
                lz4_chunks: l.count(FrameKind::Lz4),
                zero_chunks: l.count(FrameKind::Zero),
                stored_bytes: l.stored(FrameKind::Raw) + l.stored(FrameKind::Lz4),
                checksum: l.header.checksum,
                digest: hex(&l.trailer.image_digest),
                manifest,
            })
        }
        Format::Raw => {
            let (mpath, m) = load_manifest(&img, o.manifest.as_deref())?;
            let zero = m.chunks.iter().filter(|c| c.0 == ChunkKind::Zero).count() as u64;
            let zero_bytes: u64 = (0..m.chunks.len() as u64)
                .filter(|&i| m.chunks[i as usize].0 == ChunkKind::Zero)
                .map(|i| u64::from(m.chunk_range(i).1))
                .sum();
            Ok(Info {
                format: Format::Raw,
                file_len: img.size(),
                disk_size: m.disk_size,
                chunk_size: m.chunk_size,
                chunks: m.chunks.len() as u64,
                data_chunks: m.chunks.len() as u64 - zero,
                lz4_chunks: 0,
                zero_chunks: zero,
                stored_bytes: m.disk_size - zero_bytes,
                checksum: m.checksum,
                digest: hex(&m.image_digest()),
                manifest: Some(mpath),
            })
        }
    }
}
