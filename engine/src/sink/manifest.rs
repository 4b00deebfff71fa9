//! The manifest an image sink writes beside its image, and the commit of an output: alone, or as
//! an image + manifest pair ([`Target::commit_with_manifest`]: manifest renamed first, the image
//! recording its whole-image digest).

use crate::digest::{Checksum, Hash};
use crate::error::{Error, Result};
use crate::manifest::{ChunkKind, Manifest};
use crate::pipeline::{Payload, Processed};
use crate::sink::target::Target;
use crate::stop::{check_stop, StopFlag};

/// The extended attribute in which a raw image records its whole-image digest (one byte naming
/// the algorithm, [`Checksum::id`], then the 32 digest bytes), so that a manifest of another image
/// is named as such, not as damage (docs/image-format.md). Name and value are short enough to live
/// inside an ext4 inode (256-byte inodes): an all-hole image stays without a single allocated block.
pub const IMAGE_DIGEST_XATTR: &str = "user.diskstream.digest";

/// The value of [`IMAGE_DIGEST_XATTR`] for `digest` computed with `checksum`.
pub(crate) fn digest_xattr(checksum: Checksum, digest: &Hash) -> [u8; 33] {
    let mut v = [0u8; 33];
    v[0] = checksum.id();
    v[1..].copy_from_slice(digest);
    v
}

/// A manifest being recorded, and the output (under its temporary name) it will be written to.
pub struct ManifestOut {
    target: Target,
    manifest: Manifest,
}

impl ManifestOut {
    /// Records the chunks of a disk of `size` bytes in `chunk_size` chunks into `target`.
    pub fn new(target: Target, checksum: Checksum, size: u64, chunk_size: u32) -> Self {
        Self {
            target,
            manifest: Manifest::new(checksum, size, chunk_size),
        }
    }

    /// The path the manifest is committed to.
    pub fn final_path(&self) -> &std::path::Path {
        self.target.final_path()
    }

    /// Records one chunk's kind and digest.
    pub fn record(&mut self, p: &Processed) {
        self.manifest.set(p.index, Self::kind_of(p), p.digest);
    }

    /// How a manifest lists `p`: zero or data.
    pub fn kind_of(p: &Processed) -> ChunkKind {
        if matches!(p.payload, Payload::Zero) {
            ChunkKind::Zero
        } else {
            ChunkKind::Data
        }
    }
}

/// Commits `image`: with its manifest as a pair, the image's digest first recorded in its xattr
/// when `xattr` (a raw file), or alone. A stop request is honoured up to the commit, not after.
/// Returns the whole-image digest of the manifest, if there is one.
pub(crate) fn commit(
    image: Target,
    manifest: Option<ManifestOut>,
    xattr: bool,
    stop: Option<&StopFlag>,
) -> Result<Option<Hash>> {
    let Some(m) = manifest else {
        check_stop(stop)?;
        image.commit()?;
        return Ok(None);
    };
    let digest = m.manifest.image_digest();
    std::io::Write::write_all(&mut m.target.file(), m.manifest.encode().as_bytes())
        .map_err(|e| Error::io("write", m.target.write_path(), 0, e))?;
    if xattr && !image.is_device() {
        // Best effort: a file system without user xattrs keeps no binding (then `verify` can only
        // compare chunks).
        let value = digest_xattr(m.manifest.checksum, &digest);
        let _ = crate::sys::set_xattr(image.file(), IMAGE_DIGEST_XATTR, &value);
    }
    // Past this point the pair is committed whole: a stop request is honoured up to here.
    check_stop(stop)?;
    image.commit_with_manifest(m.target)?;
    Ok(Some(digest))
}
