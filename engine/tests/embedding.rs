//! The engine as a library a frontend embeds (from a report-only review of it): settings its
//! `check` took once aborted the embedding process by failing an allocation, and the lower-level
//! API panicked on values the operations would have refused. Each is now an error naming what
//! is wrong, returned before anything is allocated or written.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use diskstream_engine::ops::{self, CreateOptions, ScanOptions};
use diskstream_engine::source::DiskSource;
use diskstream_engine::ErrorKind;

/// A sparse file of `size` bytes (no block allocated).
fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// A new directory holding a sparse 1 MiB `small.img`, and that file's path.
fn small_disk() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("small.img");
    sparse(&src, 1 << 20);
    (d, src)
}

/// The names in `dir`.
fn names(dir: &Path) -> Vec<OsString> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

#[test]
fn a_disk_of_too_many_chunks_is_refused_before_its_lists_are_allocated() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("huge.img");
    // 8 TiB in 4 KiB chunks: 2^31 chunks, whose manifest alone wanted 70 GB at once.
    sparse(&src, 8 << 40);
    let mut o = ScanOptions::default();
    o.tuning.chunk_size = 4096;
    let e = ops::scan(&src, &o, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(
        e.to_string().contains("is 2147483648 chunks, more than 67108864"),
        "{e}"
    );
    assert!(e.to_string().contains("use chunks of at least 131072 bytes"), "{e}");
    // create refuses it before any output exists.
    let out = d.path().join("out.raw");
    let mut c = CreateOptions::default();
    c.tuning.chunk_size = 4096;
    assert!(ops::create(&src, &out, &c, &Default::default()).is_err());
    assert_eq!(names(d.path()), ["huge.img"], "create left files behind");
}

#[test]
fn buffers_over_half_of_the_memory_are_refused_not_an_abort() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("sparse.img");
    sparse(&src, 40 << 30);
    let mut o = ScanOptions::default();
    o.tuning.chunk_size = 64 << 20;
    o.tuning.queue_depth = 256;
    o.tuning.threads = 256;
    // 514 buffers of 64 MiB: 32 GiB, more than half of any machine this runs on in CI; the
    // refusal says so (a machine with more than 64 GiB would run it).
    let mem: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        << 10;
    if mem >= 64 << 30 {
        eprintln!("skipped: {} GiB of memory holds these buffers", mem >> 30);
        return;
    }
    let e = ops::scan(&src, &o, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(
        e.to_string()
            .contains("MiB of buffers, more than half of this machine's memory"),
        "{e}"
    );
}

#[test]
fn a_source_run_with_a_chunk_size_no_operation_takes_is_an_error_not_a_panic() {
    let (_d, src) = small_disk();
    for cs in [0, 1000, 3 << 20] {
        let disk = diskstream_engine::disk::Disk::open(&src).unwrap();
        let e = DiskSource::new(disk, cs, Default::default()).checked().err();
        let e = e.unwrap_or_else(|| panic!("chunk size {cs} taken"));
        assert!(
            e.to_string()
                .contains(&format!("chunk size {cs}: must be a power of two")),
            "{e}"
        );
    }
}

#[test]
fn an_empty_path_is_refused_as_such() {
    let (d, src) = small_disk();
    let o = CreateOptions::default();
    let p = Default::default();
    let e = ops::create(Path::new(""), &d.path().join("o.raw"), &o, &p).unwrap_err();
    assert!(e.to_string().contains("the source: an empty path names no file"), "{e}");
    let e = ops::create(&src, Path::new(""), &o, &p).unwrap_err();
    assert!(e.to_string().contains("an empty path names no file"), "{e}");
    let with_manifest = CreateOptions {
        manifest: Some("".into()),
        ..CreateOptions::default()
    };
    let e = ops::create(&src, &d.path().join("o.raw"), &with_manifest, &p).unwrap_err();
    assert!(e.to_string().contains("an empty path names no file"), "{e}");
    assert_eq!(names(d.path()), ["small.img"], "a refused create left files");
}
