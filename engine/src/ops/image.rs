//! What several operations share about images: [`detect`], the manifest path of an image or
//! output, loading a raw image's manifest (checked against the image and its recorded digest),
//! checking a dsimg's manifest, and the checks on outputs made before anything is opened.

use std::path::{Path, PathBuf};

use super::image_file::ImageFile;
use super::Format;
use crate::digest::{hex, Checksum, Hash};
use crate::direct_read::DirectReader;
use crate::error::{Error, Result};
use crate::format::reader::Layout;
use crate::manifest::Manifest;
use crate::report::ReportHead;
use crate::sink::manifest::{digest_xattr, IMAGE_DIGEST_XATTR};
use crate::sink::raw::Overwritten;
use crate::sink::target::{check_output, same_file, Target};
use crate::source::{Disk, DiskSource, FrameSource};

fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
}

/// `OUT.manifest`, or the explicit path; a device output needs an explicit path.
pub(super) fn manifest_path(out: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(m) = explicit {
        return Ok(m.to_owned());
    }
    if is_block_device(out) {
        return Err(Error::Invalid(format!(
            "{}: a block device has no manifest beside it: name one with --manifest PATH",
            out.display()
        )));
    }
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest");
    Ok(PathBuf::from(s))
}

/// The manifest of the image `image` that is read: [`manifest_path`], refusing one that is
/// the image itself (a usage mistake, not a damaged manifest, which it read as: "not UTF-8").
pub(super) fn image_manifest_path(image: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(m) if same_file(image, m) => Err(Error::Invalid(format!(
            "--manifest {}: is {} itself, not its manifest",
            m.display(),
            image.display()
        ))),
        _ => manifest_path(image, explicit),
    }
}

/// Refuses, before anything is opened for writing, an output or manifest path that names the
/// input (the same path, a hard link or a symbolic link to it, the same device), a manifest that
/// is the output, a manifest that is not a new or (with `force`) regular file, and a format that
/// cannot go to a block device.
pub(super) fn check_outputs(
    input: &Path,
    out: &Path,
    manifest: Option<&Path>,
    force: bool,
    format: Format,
) -> Result<()> {
    if same_file(input, out) {
        return Err(Error::Invalid(format!(
            "{}: is the input {}; refusing to write over it",
            out.display(),
            input.display()
        )));
    }
    if let Some(m) = manifest {
        for (other, role) in [(input, "the input"), (out, "the output")] {
            if same_file(m, other) {
                return Err(Error::Invalid(format!(
                    "{}: the manifest path is {role} {}; refusing to write over it",
                    m.display(),
                    other.display()
                )));
            }
        }
    }
    if is_block_device(out) && format == Format::Dsimg {
        return Err(Error::Invalid(format!(
            "{}: is a block device; a dsimg image is a file and cannot be written to a device (use --format raw, \
             or write the image to a file)",
            out.display()
        )));
    }
    check_output(out, force, true)?;
    if let Some(m) = manifest {
        check_output(m, force, false)?;
    }
    Ok(())
}

/// The report head of an operation `op` writing image `out` (with its manifest) in `format`,
/// warning when the file system refused O_DIRECT for it.
pub(super) fn output_head(
    op: &'static str,
    out: &Path,
    manifest: PathBuf,
    format: Format,
    target: &Target,
) -> ReportHead {
    let mut head = ReportHead {
        output: Some(out.to_owned()),
        manifest: Some(manifest),
        format: Some(format),
        ..ReportHead::new(op)
    };
    if !target.is_direct() {
        head.warnings.push(format!(
            "{}: the file system refuses O_DIRECT; writing through the page cache",
            out.display()
        ));
    }
    head
}

/// Which format the image at `path` is read as (see `ImageFile::format`): the dsimg magic,
/// unless a manifest (`manifest`, or `IMAGE.manifest` if it exists) describes a raw image of
/// this image's size. Anything but a regular file or block device (a FIFO, `/dev/stdin`, a
/// directory) is refused before it is opened.
pub fn detect(path: &Path, manifest: Option<&Path>) -> Result<Format> {
    ImageFile::open(path)?.format(None, manifest)
}

/// Loads the manifest of the raw image `img`: its header is read and
/// checked against the image first, so the manifest is read only as far as the image's chunk
/// count allows; then the image's own record of its digest, if it has one, must match.
pub(super) fn load_manifest(img: &ImageFile, explicit: Option<&Path>) -> Result<(PathBuf, Manifest)> {
    let image = img.path();
    let mpath = image_manifest_path(image, explicit)?;
    let mf = crate::input::ManifestFile::open(&mpath).map_err(|e| match e {
        Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => Error::Invalid(format!(
            "{}: read as a raw image, and its manifest {} does not exist (a raw image needs one)",
            image.display(),
            mpath.display()
        )),
        e => e,
    })?;
    size_fits(image, img.is_device(), img.size(), mf.header().disk_size)?;
    let manifest = mf.read()?;
    check_recorded_digest(img, &mpath, manifest.checksum, &manifest.image_digest())?;
    Ok((mpath, manifest))
}

/// The chunks of the raw image `img` that `manifest` describes, opened for reading: its first
/// `disk_size` bytes, once [`size_fits`] has checked the image's size (again, on the descriptor
/// that will be read), which must be the file `img` checked, not one put in its place since.
pub(super) fn raw_image_source(img: &ImageFile, manifest: &Manifest) -> Result<DiskSource> {
    let image = img.path();
    let disk = Disk::open(image)?;
    if !img.same_as(disk.file())? {
        return Err(replaced(image));
    }
    size_fits(image, img.is_device(), disk.size(), manifest.disk_size)?;
    DiskSource::new(disk, manifest.chunk_size, manifest.checksum)
        .limit(Some(manifest.disk_size))
        .checked()
}

/// An image that ended before its reader did (cut short while it was being read: a short
/// read, an I/O error of kind `UnexpectedEof` on the image itself) is damaged data, as one
/// found short before the run is: an integrity error naming the image, not an I/O error.
pub(super) fn truncated_while_read(e: Error, image: &Path) -> Error {
    match e {
        Error::Io {
            path, offset, source, ..
        } if path == image && source.kind() == std::io::ErrorKind::UnexpectedEof => Error::corrupt(
            path,
            "image",
            offset,
            format!("the image ends at byte {offset}, before the end its manifest or header gives (truncated while it was read?)"),
        ),
        e => e,
    }
}

/// The error of an image replaced while it was being read.
fn replaced(image: &Path) -> Error {
    Error::Invalid(format!(
        "{}: the image was replaced while it was being read (another run wrote it?); nothing of the new file was used",
        image.display()
    ))
}

/// The frames of the dsimg `img` whose structure `layout` checked, read through the same
/// descriptor (O_DIRECT set on it), so that the frames are those of the file whose layout and
/// manifest were checked even if another file took its name meanwhile; the stream's header
/// must be the layout's.
pub(super) fn dsimg_source(img: ImageFile, layout: &Layout) -> Result<FrameSource<DirectReader>> {
    let image = img.path().to_owned();
    let (stream, direct, warning) = img.into_stream();
    let source = FrameSource::new(stream, &image)?.opened(direct, warning.as_deref());
    if source.header() != layout.header {
        return Err(Error::corrupt(
            &image,
            "header",
            0,
            "the header read with the frames is not the one the structure was checked with (the image changed while it was read)",
        ));
    }
    Ok(source)
}

/// Checks a raw image of `image_size` bytes against the disk size its manifest gives: a file
/// must be exactly that long; a block `device` at least that large (a device is as large as it
/// was made, often larger than the disk written to it: its first `manifest_size` bytes are the
/// image).
fn size_fits(image: &Path, device: bool, image_size: u64, manifest_size: u64) -> Result<()> {
    if image_size == manifest_size || (device && image_size > manifest_size) {
        return Ok(());
    }
    let detail = if device {
        format!("the device holds {image_size} bytes, less than the disk of {manifest_size} its manifest describes")
    } else {
        format!("the image is {image_size} bytes but its manifest says {manifest_size} (truncated or extended)")
    };
    Err(Error::corrupt(image, "raw image", image_size, detail))
}

/// Compares the digest a raw image recorded when it was committed (its xattr; absent on file
/// systems without user xattrs, on copies that dropped them, and on devices) with the manifest's.
fn check_recorded_digest(img: &ImageFile, mpath: &Path, checksum: Checksum, want: &Hash) -> Result<()> {
    let image = img.path();
    let Ok(Some(rec)) = crate::sys::get_xattr(img.file(), IMAGE_DIGEST_XATTR, 128) else {
        return Ok(());
    };
    if rec[..] != digest_xattr(checksum, want)[..] {
        let recorded = match rec.split_first() {
            Some((&id, d)) => format!(
                "{} {}",
                Checksum::from_id(id).map_or("an unknown algorithm", Checksum::name),
                ::hex::encode(d)
            ),
            None => "an empty record".into(),
        };
        return Err(Error::ManifestMismatch {
            manifest: mpath.to_owned(),
            image: image.to_owned(),
            detail: format!(
                "the image was committed with whole-image digest {recorded}, the manifest describes {checksum} {}",
                hex(want)
            ),
        });
    }
    Ok(())
}

/// For a dsimg with a manifest beside it (or named by `--manifest`): the manifest must describe
/// this image (same disk size, chunk size and whole-image digest). No manifest is no error: a
/// dsimg carries its own digests. A manifest found beside it (not named) that describes a raw
/// image of the file's size, not the dsimg's disk, is the file's manifest as a raw image (read
/// as a dsimg only with `--format dsimg`), not this disk's: it is not checked.
pub(super) fn check_dsimg_manifest(
    img: &ImageFile,
    explicit: Option<&Path>,
    layout: &Layout,
) -> Result<Option<PathBuf>> {
    let image = img.path();
    let mpath = image_manifest_path(image, explicit)?;
    if explicit.is_none() && std::fs::symlink_metadata(&mpath).is_err() {
        return Ok(None);
    }
    let mf = crate::input::ManifestFile::open(&mpath)?;
    let h = *mf.header();
    let own_disk = h.disk_size == layout.header.disk_size && h.chunk_size == layout.header.chunk_size;
    if explicit.is_none() && !own_disk && h.disk_size == img.size() {
        return Ok(None);
    }
    let mismatch = |detail: String| Error::ManifestMismatch {
        manifest: mpath.clone(),
        image: image.to_owned(),
        detail,
    };
    if h.disk_size != layout.header.disk_size || h.chunk_size != layout.header.chunk_size {
        return Err(mismatch(format!(
            "the image holds a disk of {} bytes in chunks of {}, the manifest {} bytes in chunks of {}",
            layout.header.disk_size, layout.header.chunk_size, h.disk_size, h.chunk_size
        )));
    }
    let m = mf.read()?;
    if m.image_digest() != layout.trailer.image_digest {
        return Err(mismatch(format!(
            "the image's whole-image digest is {}, the manifest describes {}",
            hex(&layout.trailer.image_digest),
            hex(&m.image_digest())
        )));
    }
    Ok(Some(mpath))
}

/// A failure of a run writing a device `dest` in place says what became of it: untouched, or
/// how much was overwritten ([`Error::PartlyWritten`]). A file is written under a temporary
/// name, removed on failure: `dest` is untouched and the error is `e`.
pub(super) fn say_overwritten(e: Error, dest: &Path, device: bool, written: &Overwritten) -> Error {
    if !device {
        return e;
    }
    Error::PartlyWritten {
        dest: dest.to_owned(),
        chunks: written.chunks(),
        reach: written.reach(),
        source: Box::new(e),
    }
}
