//! The operations the CLI exposes (and embedders call): create, verify, restore and info.
//! Each wires the stages together for one job and returns a [`Report`] of what really ran.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buf::{BufPool, Pages};
use crate::check::{run_frames, FramePools, ZeroMaps};
use crate::digest::{hex, Checksum, ZeroDigests};
use crate::direct_read::DirectReader;
use crate::error::{Error, Result};
use crate::format::reader::{read_layout, ImageReader, Layout};
use crate::format::writer::ImageWriter;
use crate::format::{FrameKind, Header, MAGIC, MAX_CHUNK, MIN_CHUNK};
use crate::manifest::{ChunkKind, Manifest};
use crate::pipeline::{self, Job, Payload, PipelineStats, Pools, Processed, Reorder};
use crate::ring::{self, BackendKind, RingOptions};
use crate::sink::image::DirectWriter;
use crate::sink::raw::RawSink;
use crate::sink::target::{check_output, remove_stale_manifest, same_file, Target};
use crate::sink::ZeroPolicy;
use crate::source::{plan_chunks, Source};

/// Default chunk size: 1 MiB. The CPU cost per byte is the same from 1 to 4 MiB chunks
/// (docs/performance.md, "Chunk size"), and 1 MiB chunks keep sparse disks cheap (zero padding in
/// partly filled chunks is hashed too) and memory small.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Default reads in flight: 32 MiB at the default chunk size. Measured against 16 (docs/performance.md,
/// "Queue depth"): faster in 10 of 11 alternated runs (scan +26 %, raw +30 %, dsimg +12 %).
pub const DEFAULT_QUEUE_DEPTH: u32 = 32;

/// Default writes in flight.
pub const DEFAULT_WRITE_DEPTH: u32 = 16;

/// Bytes of disk processed so far; the CLI polls it to draw progress.
pub type Progress = Arc<AtomicU64>;

/// Output format of `create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Knobs shared by the operations.
#[derive(Clone, Debug)]
pub struct Options {
    /// Output format (create only).
    pub format: Format,
    /// lz4-compress data chunks (dsimg only).
    pub compress: bool,
    /// Chunk digest algorithm of what is written (create, scan). Readers take it from the image.
    pub checksum: Checksum,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Reads in flight.
    pub queue_depth: u32,
    /// Writes in flight (raw output and restore).
    pub write_depth: u32,
    /// Worker threads.
    pub threads: usize,
    /// Read backend wanted.
    pub backend: BackendKind,
    /// Register buffers and the file with the ring.
    pub fixed_buffers: bool,
    /// What the buffer pools' memory is made of.
    pub pages: Pages,
    /// Run the one-thread reference path instead of the pipeline.
    pub sequential: bool,
    /// Replace an existing output file.
    pub force: bool,
    /// Zero chunks on a device target.
    pub zero_policy: ZeroPolicy,
    /// Where the manifest goes (default: `OUT.manifest`).
    pub manifest: Option<PathBuf>,
    /// Read only the first `limit` bytes of the source (create and scan; benchmarks).
    pub limit: Option<u64>,
    /// Set from elsewhere (a signal handler) to stop at the next chunk; the operation then fails
    /// with "interrupted" and cleans up like any failure.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            format: Format::Raw,
            compress: true,
            checksum: Checksum::default(),
            chunk_size: DEFAULT_CHUNK,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            write_depth: DEFAULT_WRITE_DEPTH,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            backend: BackendKind::Uring,
            fixed_buffers: false,
            pages: Pages::Thp,
            sequential: false,
            force: false,
            zero_policy: ZeroPolicy::Write,
            manifest: None,
            limit: None,
            stop: None,
        }
    }
}

/// What an operation did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The operation ("create", "verify", "restore").
    pub op: &'static str,
    /// Input path.
    pub input: PathBuf,
    /// Output path, if any.
    pub output: Option<PathBuf>,
    /// Manifest written or read, if any.
    pub manifest: Option<PathBuf>,
    /// Image format involved.
    pub format: Option<Format>,
    /// Read backend that ran.
    pub backend: Option<BackendKind>,
    /// Write backend that ran.
    pub write_backend: Option<BackendKind>,
    /// What the read buffers are made of: "hugetlb", "thp" (transparent huge pages) or "4k".
    pub buffer_pages: Option<&'static str>,
    /// True if and only if the input was read with O_DIRECT (as the kernel reports it).
    pub input_direct: bool,
    /// True if and only if the output was written with O_DIRECT.
    pub output_direct: bool,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u64,
    /// Chunks that were all zeroes.
    pub zero_chunks: u64,
    /// Bytes in zero chunks (skipped).
    pub zero_bytes: u64,
    /// Bytes read from the input device or file.
    pub bytes_read: u64,
    /// Bytes written to the output.
    pub bytes_written: u64,
    /// Payload bytes stored (compressed size for dsimg, data bytes for raw).
    pub bytes_stored: u64,
    /// Read requests issued.
    pub read_requests: u64,
    /// Write requests issued.
    pub write_requests: u64,
    /// The chunk digest algorithm of the image, manifest or run.
    pub checksum: Checksum,
    /// Whole-image digest (hex), with [`Self::checksum`].
    pub digest: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Things the operator should know (fallbacks).
    pub warnings: Vec<String>,
}

impl Report {
    /// Disk bytes per second.
    pub fn throughput(&self) -> f64 {
        self.disk_size as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn check_options(o: &Options) -> Result<()> {
    if !o.chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&o.chunk_size) {
        return Err(Error::Invalid(format!(
            "--chunk-size {}: must be a power of two from {MIN_CHUNK} to {MAX_CHUNK}",
            o.chunk_size
        )));
    }
    if o.queue_depth == 0 || o.queue_depth > 256 {
        return Err(Error::Invalid(format!(
            "--queue-depth {}: must be 1 to 256",
            o.queue_depth
        )));
    }
    if o.write_depth == 0 || o.write_depth > 256 {
        return Err(Error::Invalid(format!(
            "--write-depth {}: must be 1 to 256",
            o.write_depth
        )));
    }
    if o.threads == 0 || o.threads > 256 {
        return Err(Error::Invalid(format!("--threads {}: must be 1 to 256", o.threads)));
    }
    Ok(())
}

/// `OUT.manifest`, or the explicit path; a device output needs an explicit path.
fn manifest_path(out: &Path, o: &Options) -> Result<PathBuf> {
    if let Some(m) = &o.manifest {
        return Ok(m.clone());
    }
    if std::fs::metadata(out).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type())) {
        return Err(Error::Invalid(format!(
            "{}: a block device output needs --manifest PATH for its manifest",
            out.display()
        )));
    }
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest");
    Ok(PathBuf::from(s))
}

/// The extended attribute in which a raw image records its whole-image digest (one byte naming
/// the algorithm, [`Checksum::id`], then the 32 digest bytes), so that a manifest of another image
/// is named as such, not as damage (docs/image-format.md). Name and value are short enough to live
/// inside an ext4 inode (256-byte inodes): an all-hole image stays without a single allocated block.
pub const IMAGE_DIGEST_XATTR: &str = "user.diskstream.digest";

/// The value of [`IMAGE_DIGEST_XATTR`] for `digest` computed with `checksum`.
fn digest_xattr(checksum: Checksum, digest: &crate::digest::Hash) -> [u8; 33] {
    let mut v = [0u8; 33];
    v[0] = checksum.id();
    v[1..].copy_from_slice(digest);
    v
}

/// Refuses, before anything is opened for writing, an output or manifest path that names the
/// input (the same path, a hard link or a symbolic link to it, the same device), a manifest that
/// is the output, a manifest that is not a new or (with `force`) regular file, and a format that
/// cannot go to a block device.
fn check_outputs(input: &Path, out: &Path, manifest: Option<&Path>, o: &Options, format: Format) -> Result<()> {
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
    let is_device =
        std::fs::metadata(out).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if is_device && format == Format::Dsimg {
        return Err(Error::Invalid(format!(
            "{}: is a block device; a dsimg image is a file and cannot be written to a device (use --format raw, \
             or write the image to a file)",
            out.display()
        )));
    }
    check_output(out, o.force, true)?;
    if let Some(m) = manifest {
        check_output(m, o.force, false)?;
    }
    Ok(())
}

/// `Error::Cancelled` if the operation was asked to stop.
fn check_stop(o: &Options) -> Result<()> {
    if o.stop
        .as_ref()
        .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    {
        return Err(Error::Cancelled);
    }
    Ok(())
}

fn run(job: Job<'_>, o: &Options, sink: &mut dyn FnMut(Processed) -> Result<()>) -> Result<PipelineStats> {
    let mut sink = |p: Processed| {
        check_stop(o)?;
        sink(p)
    };
    if o.sequential {
        pipeline::run_sequential(job, &mut sink)
    } else {
        pipeline::run_parallel(job, o.threads, &mut sink)
    }
}

/// The stages of one pipeline run: plan, read backend, buffer pools, zero digests.
struct Plumbing {
    plans: crate::source::ReadPlan,
    backend: Box<dyn ring::ReadBackend + Send>,
    pools: Pools,
    zeros: ZeroDigests,
    /// What the read buffers are made of (see [`Report::buffer_pages`]).
    pages: &'static str,
    /// Why the asked-for backend or pages are not the ones running, if they are not.
    notes: Vec<String>,
}

impl Plumbing {
    /// Plans `size` bytes of `source` in `o.chunk_size`-or-`cs` chunks; `extra_bufs` read buffers
    /// beyond the read depth are for a sink that keeps them in flight (raw writes).
    fn new(
        source: &Source,
        size: u64,
        cs: u32,
        checksum: Checksum,
        o: &Options,
        extra_bufs: u32,
        compress: bool,
    ) -> Result<Self> {
        let plans = plan_chunks(size, cs, source.logical_block(), &source.data_extents()?);
        let (backend, note) = ring::probe(
            o.backend,
            RingOptions {
                queue_depth: o.queue_depth,
                fixed_buffers: o.fixed_buffers,
            },
        );
        let pools = Pools::new(cs, o.queue_depth + extra_bufs, o.threads, compress, o.pages);
        let mut notes: Vec<String> = note.into_iter().collect();
        let pages = pools.input.pages_name();
        if o.pages == Pages::Hugetlb && !pools.input.hugetlb() {
            notes.push(format!(
                "no free hugetlb pages for the buffers (vm.nr_hugepages); using {pages} pages instead"
            ));
        }
        Ok(Self {
            plans,
            backend,
            pools,
            zeros: ZeroDigests::new(checksum, size, cs),
            pages,
            notes,
        })
    }

    fn job<'a>(&'a mut self, src: &'a Source, progress: &Progress) -> Job<'a> {
        Job {
            src,
            plans: &self.plans,
            backend: self.backend.as_mut(),
            pools: &self.pools,
            zeros: &self.zeros,
            progress: Arc::clone(progress),
        }
    }
}

/// Reads `src` (a block device or file) and writes `out` in `o.format`, plus its manifest.
pub fn create(src: &Path, out: &Path, o: &Options, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    check_options(o)?;
    let source = Source::open(src)?;
    let mut warnings: Vec<String> = source.warning().map(str::to_owned).into_iter().collect();
    let size = o.limit.map_or(source.size(), |l| l.min(source.size()));
    let cs = o.chunk_size;
    let compress = o.compress && o.format == Format::Dsimg;
    // Raw output keeps read buffers in flight on the write side too.
    let writes = if o.format == Format::Raw { o.write_depth } else { 0 };
    let manifest_path = manifest_path(out, o)?;
    check_outputs(src, out, Some(&manifest_path), o, o.format)?;
    let mut plumbing = Plumbing::new(&source, size, cs, o.checksum, o, writes, compress)?;
    warnings.append(&mut plumbing.notes);
    // The manifest's temporary file first: every refusal comes before the first byte is written.
    let manifest_target = Target::create_file(&manifest_path, o.force)?;
    let target = Target::create(out, o.force, true)?;
    if target.is_device() {
        remove_stale_manifest(&manifest_path)?;
    }
    if !target.is_direct() {
        warnings.push(format!(
            "{}: the file system refuses O_DIRECT; writing through the page cache",
            out.display()
        ));
    }
    let mut manifest = Manifest::new(o.checksum, size, cs);
    let mut report = Report {
        op: "create",
        checksum: o.checksum,
        input: src.to_owned(),
        output: Some(out.to_owned()),
        manifest: Some(manifest_path.clone()),
        format: Some(o.format),
        backend: Some(plumbing.backend.kind()),
        buffer_pages: Some(plumbing.pages),
        input_direct: source.is_direct(),
        output_direct: target.is_direct(),
        disk_size: size,
        chunk_size: cs,
        chunks: plumbing.plans.len() as u64,
        ..Report::default()
    };
    let job = plumbing.job(&source, progress);
    let record = |m: &mut Manifest, p: &Processed| {
        let kind = if matches!(p.payload, Payload::Zero) {
            ChunkKind::Zero
        } else {
            ChunkKind::Data
        };
        m.set(p.index, kind, p.digest);
    };
    let (target, stats) = match o.format {
        Format::Raw => {
            let mut sink = raw_sink(target, size, cs, o)?;
            report.write_backend = Some(sink.backend());
            let mut stored = 0u64;
            let stats = run(job, o, &mut |p| {
                record(&mut manifest, &p);
                match p.payload {
                    Payload::Zero => sink.zero(p.offset, p.len),
                    Payload::Raw(buf) => {
                        stored += u64::from(p.len);
                        sink.write(p.offset, p.len, p.zero_map, buf)
                    }
                    Payload::Lz4 { .. } => Err(Error::Invalid("raw output received a compressed chunk".into())),
                }
            })?;
            let (target, raw) = sink.finish()?;
            report.bytes_written = raw.bytes_written;
            report.write_requests = raw.requests;
            report.bytes_stored = stored;
            (target, stats)
        }
        Format::Dsimg => {
            let w = DirectWriter::new(target, backend_kind_for_writes(o));
            report.write_backend = Some(w.backend());
            let path = out.to_owned();
            let mut writer = ImageWriter::new(
                w,
                Header {
                    disk_size: size,
                    chunk_size: cs,
                    checksum: o.checksum,
                },
            )
            .map_err(|e| Error::io("write", &path, 0, e))?;
            let mut reorder = Reorder::new(0);
            let mut stored = 0u64;
            let stats = run(job, o, &mut |p| {
                record(&mut manifest, &p);
                reorder.push(p.index, p, |p| {
                    let kind = match p.payload {
                        Payload::Zero => FrameKind::Zero,
                        Payload::Raw(_) => FrameKind::Raw,
                        Payload::Lz4 { .. } => FrameKind::Lz4,
                    };
                    let bytes = p.stored_bytes();
                    stored += bytes.len() as u64;
                    let at = writer.position();
                    writer
                        .push(p.index, kind, &p.digest, bytes)
                        .map_err(|e| Error::io("write", &path, at, e))
                })
            })?;
            let (w, _trailer) = writer.finish().map_err(|e| Error::io("write", &path, 0, e))?;
            report.write_requests = w.requests();
            let (target, written) = w.finish()?;
            report.bytes_written = written;
            report.bytes_stored = stored;
            (target, stats)
        }
    };
    let digest = manifest.image_digest();
    std::io::Write::write_all(&mut manifest_target.file(), manifest.encode().as_bytes())
        .map_err(|e| Error::io("write", manifest_target.write_path(), 0, e))?;
    if o.format == Format::Raw && !target.is_device() {
        // Best effort: a file system without user xattrs keeps no binding (then `verify` can only
        // compare chunks).
        let _ = crate::sys::set_xattr(target.file(), IMAGE_DIGEST_XATTR, &digest_xattr(o.checksum, &digest));
    }
    // Past this point the pair is committed whole: a stop request is honoured up to here.
    check_stop(o)?;
    target.commit_with_manifest(manifest_target)?;
    report.bytes_read = stats.read.bytes_read;
    report.read_requests = stats.read.requests;
    report.zero_chunks = stats.zero_chunks;
    report.zero_bytes = stats.zero_bytes;
    report.digest = hex(&manifest.image_digest());
    report.warnings = warnings;
    report.elapsed = t0.elapsed();
    Ok(report)
}

/// The raw sink `o` asks for: its write backend, write depth and zero policy.
fn raw_sink(target: Target, size: u64, cs: u32, o: &Options) -> Result<RawSink> {
    RawSink::new(
        target,
        size,
        cs,
        backend_kind_for_writes(o),
        o.write_depth,
        o.zero_policy,
    )
}

fn backend_kind_for_writes(o: &Options) -> BackendKind {
    if o.sequential {
        BackendKind::Pread
    } else {
        o.backend
    }
}

/// A buffered descriptor for small structural reads (O_DIRECT would need aligned buffers).
fn open_plain(path: &Path) -> Result<File> {
    crate::input::open_input(path, "the image", true)
}

/// What kind of image a path holds. Anything but a regular file or block device (a FIFO,
/// `/dev/stdin`, a directory) is refused before it is opened.
pub fn detect(path: &Path) -> Result<Format> {
    let mut f = open_plain(path)?;
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, got as u64, e)),
        }
    }
    Ok(if got == 8 && magic == MAGIC {
        Format::Dsimg
    } else {
        Format::Raw
    })
}

/// Loads the manifest of the raw image `image` (`image_size` bytes): its header is read and
/// checked against the image first, so the manifest is read only as far as the image's chunk
/// count allows; then the image's own record of its digest, if it has one, must match.
fn load_manifest(image: &Path, o: &Options, image_size: u64) -> Result<(PathBuf, Manifest)> {
    let mpath = manifest_path(image, o)?;
    let mf = crate::input::ManifestFile::open(&mpath).map_err(|e| match e {
        Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => Error::Invalid(format!(
            "{}: not a dsimg image, and its manifest {} does not exist (a raw image needs one)",
            image.display(),
            mpath.display()
        )),
        e => e,
    })?;
    if mf.header().disk_size != image_size {
        return Err(Error::corrupt(
            image,
            "raw image",
            image_size,
            format!(
                "the image is {image_size} bytes but its manifest says {} (truncated or extended)",
                mf.header().disk_size
            ),
        ));
    }
    let manifest = mf.read()?;
    check_recorded_digest(image, &mpath, manifest.checksum, &manifest.image_digest())?;
    Ok((mpath, manifest))
}

/// Compares the digest a raw image recorded when it was committed (its xattr; absent on file
/// systems without user xattrs, on copies that dropped them, and on devices) with the manifest's.
fn check_recorded_digest(image: &Path, mpath: &Path, checksum: Checksum, want: &crate::digest::Hash) -> Result<()> {
    let Ok(f) = crate::input::open_input(image, "the image", true) else {
        return Ok(()); // Opening it again below names the problem.
    };
    let Ok(Some(rec)) = crate::sys::get_xattr(&f, IMAGE_DIGEST_XATTR, 128) else {
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

/// The size of a raw image: a regular file's length or a block device's size.
fn image_size(image: &Path) -> Result<u64> {
    let f = crate::input::open_input(image, "the image", true)?;
    let m = f.metadata().map_err(|e| Error::io("stat", image, 0, e))?;
    if std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) {
        crate::sys::block_device_size(&f).map_err(|e| Error::io("BLKGETSIZE64", image, 0, e))
    } else {
        Ok(m.len())
    }
}

/// For a dsimg with a manifest beside it (or named by `--manifest`): the manifest must describe
/// this image (same disk size, chunk size and whole-image digest). No manifest is no error: a
/// dsimg carries its own digests.
fn check_dsimg_manifest(image: &Path, o: &Options, layout: &Layout) -> Result<Option<PathBuf>> {
    let mpath = manifest_path(image, o)?;
    if o.manifest.is_none() && std::fs::symlink_metadata(&mpath).is_err() {
        return Ok(None);
    }
    let mf = crate::input::ManifestFile::open(&mpath)?;
    let h = *mf.header();
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
            "the image's whole-image sha256 is {}, the manifest describes {}",
            hex(&layout.trailer.image_digest),
            hex(&m.image_digest())
        )));
    }
    Ok(Some(mpath))
}

/// Re-reads an image with O_DIRECT and checks every chunk: a `dsimg` against its own digests,
/// a raw image against its manifest. The first bad chunk is the error (with its offsets).
pub fn verify(image: &Path, o: &Options, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    check_options(o)?;
    match detect(image)? {
        Format::Dsimg => {
            let source = Source::open(image)?;
            let layout = read_layout(&open_plain(image)?, image)?;
            let mut rep = base_report("verify", image, &layout);
            rep.manifest = check_dsimg_manifest(image, o, &layout)?;
            rep.input_direct = source.is_direct();
            rep.warnings.extend(source.warning().map(str::to_owned));
            let mut dr = DirectReader::new(source.file());
            let mut r = ImageReader::new(&mut dr, image)?;
            check_frames(&mut r, &layout, o, 0, ZeroMaps::Skip, progress, &mut |_| Ok(()))?;
            rep.bytes_read = r.position();
            drop(r);
            rep.read_requests = dr.requests;
            rep.elapsed = t0.elapsed();
            Ok(rep)
        }
        Format::Raw => {
            let (mpath, manifest) = load_manifest(image, o, image_size(image)?)?;
            let mut rep = Report {
                op: "verify",
                manifest: Some(mpath),
                ..Report::default()
            };
            let (source, stats) = run_raw(image, &manifest, o, &mut rep, progress, 0, &mut |_| Ok(()))?;
            drop(source);
            rep.bytes_read = stats.read.bytes_read;
            rep.read_requests = stats.read.requests;
            rep.elapsed = t0.elapsed();
            Ok(rep)
        }
    }
}

/// Checks every frame of a dsimg, handing each checked chunk to `sink`: on `o.threads` workers,
/// or on this thread with `o.sequential` (the reference path). `sink_depth` chunks may stay in
/// the sink (raw writes in flight).
fn check_frames<R: Read + Send>(
    r: &mut ImageReader<R>,
    layout: &Layout,
    o: &Options,
    sink_depth: u32,
    maps: ZeroMaps,
    progress: &Progress,
    sink: &mut dyn FnMut(Processed) -> Result<()>,
) -> Result<()> {
    let mut sink = |p: Processed| {
        check_stop(o)?;
        sink(p)
    };
    let cs = layout.header.chunk_size;
    if !o.sequential {
        let pools = FramePools::new(cs, o.threads, sink_depth, o.pages);
        return run_frames(r, &pools, o.threads, maps, progress, &mut sink);
    }
    let pool = BufPool::with_pages(cs as usize, sink_depth as usize + 1, o.pages);
    let block = pipeline::zero_block_size(cs);
    let mut offset = 0u64;
    loop {
        let mut buf = pool.get();
        let Some(f) = r.next_frame(buf.as_mut_slice())? else {
            return Ok(());
        };
        let (payload, zero_map) = match f.kind {
            FrameKind::Zero => (Payload::Zero, pipeline::all_zero_map(f.raw_len, block)),
            FrameKind::Raw | FrameKind::Lz4 => {
                let map = match maps {
                    ZeroMaps::Want => pipeline::zero_map(&buf.as_slice()[..f.raw_len as usize], block),
                    ZeroMaps::Skip => 0,
                };
                (Payload::Raw(buf), map)
            }
        };
        sink(Processed {
            index: f.index,
            offset,
            len: f.raw_len,
            digest: f.digest,
            zero_map,
            payload,
        })?;
        offset += u64::from(f.raw_len);
        progress.fetch_add(u64::from(f.raw_len), std::sync::atomic::Ordering::Relaxed);
    }
}

fn base_report(op: &'static str, image: &Path, layout: &Layout) -> Report {
    Report {
        op,
        checksum: layout.header.checksum,
        input: image.to_owned(),
        format: Some(Format::Dsimg),
        disk_size: layout.header.disk_size,
        chunk_size: layout.header.chunk_size,
        chunks: layout.header.chunk_count(),
        zero_chunks: layout.count(FrameKind::Zero),
        zero_bytes: layout
            .index
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == FrameKind::Zero)
            .map(|(i, _)| u64::from(layout.header.chunk_len(i as u64)))
            .sum(),
        bytes_stored: layout.stored(FrameKind::Raw) + layout.stored(FrameKind::Lz4),
        digest: hex(&layout.trailer.image_digest),
        ..Report::default()
    }
}

/// Runs the hash-only pipeline over a raw image, checking each chunk against the manifest
/// before `then` sees it.
fn run_raw(
    image: &Path,
    manifest: &Manifest,
    o: &Options,
    rep: &mut Report,
    progress: &Progress,
    extra_bufs: u32,
    then: &mut dyn FnMut(Processed) -> Result<()>,
) -> Result<(Source, PipelineStats)> {
    let source = Source::open(image)?;
    if source.size() != manifest.disk_size {
        return Err(Error::corrupt(
            image,
            "raw image",
            source.size(),
            format!(
                "the image is {} bytes but its manifest says {} (truncated or extended)",
                source.size(),
                manifest.disk_size
            ),
        ));
    }
    let cs = manifest.chunk_size;
    let mut plumbing = Plumbing::new(&source, source.size(), cs, manifest.checksum, o, extra_bufs, false)?;
    rep.warnings.extend(source.warning().map(str::to_owned));
    rep.warnings.append(&mut plumbing.notes);
    rep.buffer_pages = Some(plumbing.pages);
    rep.input = image.to_owned();
    rep.format = Some(Format::Raw);
    rep.backend = Some(plumbing.backend.kind());
    rep.input_direct = source.is_direct();
    rep.disk_size = manifest.disk_size;
    rep.chunk_size = cs;
    rep.chunks = plumbing.plans.len() as u64;
    rep.checksum = manifest.checksum;
    rep.digest = hex(&manifest.image_digest());
    let job = plumbing.job(&source, progress);
    let stats = run(job, o, &mut |p| {
        let (_, want) = manifest.chunks[p.index as usize];
        if p.digest != want {
            return Err(Error::ChecksumMismatch {
                path: image.to_owned(),
                chunk: p.index,
                offset: p.offset,
                end: p.offset + u64::from(p.len),
                checksum: manifest.checksum,
                expected: hex(&want),
                found: hex(&p.digest),
            });
        }
        then(p)
    })?;
    rep.zero_chunks = stats.zero_chunks;
    rep.zero_bytes = stats.zero_bytes;
    rep.bytes_stored = manifest.disk_size - stats.zero_bytes;
    Ok((source, stats))
}

/// Writes the disk held by `image` to `dest` (a file, created, or a block device), checking
/// every chunk before it is written. A `dsimg` is checked structurally first, so a truncated
/// or damaged image is refused before the first byte lands on `dest`.
pub fn restore(image: &Path, dest: &Path, o: &Options, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    check_options(o)?;
    match detect(image)? {
        Format::Dsimg => {
            let source = Source::open(image)?;
            let layout = read_layout(&open_plain(image)?, image)?;
            let mut rep = base_report("restore", image, &layout);
            rep.output = Some(dest.to_owned());
            rep.input_direct = source.is_direct();
            let size = layout.header.disk_size;
            check_outputs(image, dest, None, o, Format::Raw)?;
            let target = Target::create(dest, o.force, true)?;
            rep.output_direct = target.is_direct();
            let cs = layout.header.chunk_size;
            let mut sink = raw_sink(target, size, cs, o)?;
            rep.write_backend = Some(sink.backend());
            let mut dr = DirectReader::new(source.file());
            let mut r = ImageReader::new(&mut dr, image)?;
            check_frames(
                &mut r,
                &layout,
                o,
                o.write_depth,
                ZeroMaps::Want,
                progress,
                &mut |p| match p.payload {
                    Payload::Zero => sink.zero(p.offset, p.len),
                    Payload::Raw(buf) => sink.write(p.offset, p.len, p.zero_map, buf),
                    Payload::Lz4 { .. } => Err(Error::Invalid("restore received a compressed chunk".into())),
                },
            )?;
            rep.bytes_read = r.position();
            drop(r);
            rep.read_requests = dr.requests;
            let (target, raw) = sink.finish()?;
            rep.bytes_written = raw.bytes_written;
            rep.write_requests = raw.requests;
            check_stop(o)?;
            target.commit()?;
            rep.elapsed = t0.elapsed();
            Ok(rep)
        }
        Format::Raw => {
            let (mpath, manifest) = load_manifest(image, o, image_size(image)?)?;
            check_outputs(image, dest, None, o, Format::Raw)?;
            if same_file(dest, &mpath) {
                return Err(Error::Invalid(format!(
                    "{}: is the image's manifest; refusing to write over it",
                    dest.display()
                )));
            }
            let mut rep = Report {
                op: "restore",
                manifest: Some(mpath),
                output: Some(dest.to_owned()),
                ..Report::default()
            };
            let target = Target::create(dest, o.force, true)?;
            rep.output_direct = target.is_direct();
            let mut sink = RawSink::new(
                target,
                manifest.disk_size,
                manifest.chunk_size,
                backend_kind_for_writes(o),
                o.write_depth,
                o.zero_policy,
            )?;
            rep.write_backend = Some(sink.backend());
            let (_source, stats) = run_raw(image, &manifest, o, &mut rep, progress, o.write_depth, &mut |p| match p
                .payload
            {
                Payload::Zero => sink.zero(p.offset, p.len),
                Payload::Raw(buf) => sink.write(p.offset, p.len, p.zero_map, buf),
                Payload::Lz4 { .. } => Err(Error::Invalid("raw restore received a compressed chunk".into())),
            })?;
            let (target, raw) = sink.finish()?;
            rep.bytes_read = stats.read.bytes_read;
            rep.read_requests = stats.read.requests;
            rep.bytes_written = raw.bytes_written;
            rep.write_requests = raw.requests;
            check_stop(o)?;
            target.commit()?;
            rep.elapsed = t0.elapsed();
            Ok(rep)
        }
    }
}

/// What `info` tells about an image.
#[derive(Clone, Debug)]
pub struct Info {
    /// Format of the image.
    pub format: Format,
    /// Size of the image file(s) on disk (apparent length).
    pub file_len: u64,
    /// Disk size.
    pub disk_size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Chunks in all.
    pub chunks: u64,
    /// Chunks stored raw / lz4 / zero (raw images: data and zero).
    pub data_chunks: u64,
    /// Chunks stored as lz4.
    pub lz4_chunks: u64,
    /// Zero chunks.
    pub zero_chunks: u64,
    /// Payload bytes stored.
    pub stored_bytes: u64,
    /// The chunk digest algorithm.
    pub checksum: Checksum,
    /// Whole-image digest.
    pub digest: String,
    /// The manifest consulted, for raw images.
    pub manifest: Option<PathBuf>,
}

/// Describes an image from its header, index and trailer (dsimg) or manifest (raw); checks
/// structure and length, not every chunk (that is `verify`).
pub fn info(image: &Path, o: &Options) -> Result<Info> {
    let file_len = crate::input::check_kind(image, "the image", true)?.len();
    match detect(image)? {
        Format::Dsimg => {
            let l = read_layout(&open_plain(image)?, image)?;
            Ok(Info {
                format: Format::Dsimg,
                file_len,
                disk_size: l.header.disk_size,
                chunk_size: l.header.chunk_size,
                chunks: l.header.chunk_count(),
                data_chunks: l.count(FrameKind::Raw),
                lz4_chunks: l.count(FrameKind::Lz4),
                zero_chunks: l.count(FrameKind::Zero),
                stored_bytes: l.stored(FrameKind::Raw) + l.stored(FrameKind::Lz4),
                checksum: l.header.checksum,
                digest: hex(&l.trailer.image_digest),
                manifest: None,
            })
        }
        Format::Raw => {
            let (mpath, m) = load_manifest(image, o, image_size(image)?)?;
            if file_len != m.disk_size {
                return Err(Error::corrupt(
                    image,
                    "raw image",
                    file_len,
                    format!("the image is {file_len} bytes but its manifest says {}", m.disk_size),
                ));
            }
            let zero = m.chunks.iter().filter(|c| c.0 == ChunkKind::Zero).count() as u64;
            let zero_bytes: u64 = (0..m.chunks.len() as u64)
                .filter(|&i| m.chunks[i as usize].0 == ChunkKind::Zero)
                .map(|i| u64::from(m.chunk_range(i).1))
                .sum();
            Ok(Info {
                format: Format::Raw,
                file_len,
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

/// Reads `src` through the whole pipeline (zero check, digest and, if `o.compress`, lz4) into
/// a null sink: what the engine can do before any output is written. Used by benchmarks.
pub fn scan(src: &Path, o: &Options, progress: &Progress) -> Result<Report> {
    let t0 = Instant::now();
    check_options(o)?;
    let source = Source::open(src)?;
    let size = o.limit.map_or(source.size(), |l| l.min(source.size()));
    let cs = o.chunk_size;
    let mut plumbing = Plumbing::new(&source, size, cs, o.checksum, o, 0, o.compress)?;
    let mut manifest = Manifest::new(o.checksum, size, cs);
    let mut rep = Report {
        op: "scan",
        checksum: o.checksum,
        input: src.to_owned(),
        backend: Some(plumbing.backend.kind()),
        input_direct: source.is_direct(),
        disk_size: size,
        chunk_size: cs,
        chunks: plumbing.plans.len() as u64,
        warnings: source
            .warning()
            .map(str::to_owned)
            .into_iter()
            .chain(std::mem::take(&mut plumbing.notes))
            .collect(),
        buffer_pages: Some(plumbing.pages),
        ..Report::default()
    };
    let job = plumbing.job(&source, progress);
    let mut stored = 0u64;
    let stats = run(job, o, &mut |p| {
        let kind = if matches!(p.payload, Payload::Zero) {
            ChunkKind::Zero
        } else {
            ChunkKind::Data
        };
        manifest.set(p.index, kind, p.digest);
        stored += p.stored_bytes().len() as u64;
        Ok(())
    })?;
    rep.bytes_read = stats.read.bytes_read;
    rep.read_requests = stats.read.requests;
    rep.zero_chunks = stats.zero_chunks;
    rep.zero_bytes = stats.zero_bytes;
    rep.bytes_stored = stored;
    rep.digest = hex(&manifest.image_digest());
    rep.elapsed = t0.elapsed();
    Ok(rep)
}
