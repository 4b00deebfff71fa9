//! A panic inside the consumer of the read ring must not hand buffers back to the pool while the
//! kernel still has reads in flight into them: the ring drains on every exit path, unwinding
//! included. The test makes the deliver closure panic with a full queue of O_DIRECT reads in
//! flight, then at once takes every buffer back from the pool, paints it, and checks that no late
//! read lands in the paint. So that the reads really are still in flight, the test thread runs in
//! a blkio cgroup (cgroup v1) that throttles reads of the disk under the file to 16 MiB/s: each
//! 1 MiB read then takes ~60 ms, and the queue ~2 s to drain. The cgroup is removed again, also
//! when the test fails. The writer side is tested the same way: a panic with throttled O_DIRECT
//! writes queued, then every buffer painted; the file must hold only what was written.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use diskstream_engine::buf::BufPool;
use diskstream_engine::ring::uring::{UringReader, UringWriter};
use diskstream_engine::ring::{ReadBackend, RingOptions};
use diskstream_engine::source::{plan_chunks, Disk};

const CHUNK: u32 = 1 << 20;
const PAINT: u8 = 0xAA;

const BLKIO: &str = "/sys/fs/cgroup/blkio";

/// The calling thread in a blkio cgroup that throttles reads of one disk; moved back to the root
/// group and the group removed on drop.
struct Throttle {
    dir: PathBuf,
    tid: String,
}

impl Throttle {
    fn reads_of(disk: &str, bytes_per_s: u64) -> Self {
        Self::new(disk, "read", bytes_per_s)
    }

    fn writes_of(disk: &str, bytes_per_s: u64) -> Self {
        Self::new(disk, "write", bytes_per_s)
    }

    /// `rw` is "read" or "write": which of the disk's directions is throttled.
    fn new(disk: &str, rw: &str, bytes_per_s: u64) -> Self {
        assert!(
            Path::new(BLKIO).join("tasks").exists(),
            "this test needs the cgroup v1 blkio controller at {BLKIO} (and root)"
        );
        let dir = Path::new(BLKIO).join(format!("dstest-panic-{}-{rw}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let tid = std::fs::read_link("/proc/thread-self")
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let t = Self { dir, tid };
        std::fs::write(
            t.dir.join(format!("blkio.throttle.{rw}_bps_device")),
            format!("{disk} {bytes_per_s}"),
        )
        .unwrap();
        std::fs::write(t.dir.join("tasks"), &t.tid).unwrap();
        t
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(BLKIO).join("tasks"), &self.tid);
        // Kernel threads the ring started (io-wq) may still be in the group for a moment: wait
        // for them to leave (up to 5 s), moving any that linger out ourselves.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            for t in std::fs::read_to_string(self.dir.join("tasks"))
                .unwrap_or_default()
                .lines()
            {
                let _ = std::fs::write(Path::new(BLKIO).join("tasks"), t);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// "MAJ:MIN" of the whole disk under `path`'s file system (a partition's parent).
fn disk_of(path: &Path) -> String {
    let dev = std::fs::metadata(path).unwrap().dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        let parent = std::fs::canonicalize(&sys).unwrap().parent().unwrap().join("dev");
        return std::fs::read_to_string(parent).unwrap().trim().to_owned();
    }
    format!("{major}:{minor}")
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

#[test]
fn a_panicking_consumer_never_gets_buffers_reused_under_in_flight_reads() {
    let dir = tempfile::Builder::new()
        .prefix("dstest-panic-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("src");
    // 64 MiB of 0x55: any byte a late read writes is visible against the paint.
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x55u8; CHUNK as usize];
    for _ in 0..64 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let throttle = Throttle::reads_of(&disk_of(&path), 16 << 20);
    let mut hits = 0;
    for round in 0..2 {
        let src = Disk::open(&path).unwrap();
        let plans = plan_chunks(src.size(), CHUNK, src.logical_block(), &src.data_extents().unwrap());
        let depth = 32;
        let pool = BufPool::new(CHUNK as usize, depth as usize + 4);
        let mut ring = UringReader::new(RingOptions {
            queue_depth: depth,
            fixed_buffers: false,
        })
        .expect("io_uring");
        let res = catch_unwind(AssertUnwindSafe(|| {
            ring.read_all(&src, &plans, &pool, &mut |_chunk| panic!("consumer panics (test)"))
        }));
        assert!(res.is_err(), "round {round}: the consumer's panic did not propagate");
        // Every buffer back from the pool now, painted: a read still in flight would overwrite it.
        let mut bufs: Vec<_> = (0..pool.capacity()).map(|_| pool.get()).collect();
        for b in &mut bufs {
            b.as_mut_slice().fill(PAINT);
        }
        // Long enough for every read that could still be queued to complete (32 MiB at 16 MiB/s).
        std::thread::sleep(Duration::from_millis(2500));
        for (i, b) in bufs.iter().enumerate() {
            let bad = b.as_slice().iter().filter(|&&x| x != PAINT).count();
            if bad > 0 {
                hits += 1;
                eprintln!("round {round}: buffer {i} was written after it went back to the pool ({bad} bytes)");
            }
        }
    }
    drop(throttle);
    assert_eq!(hits, 0, "buffers were reused while the kernel still read into them");
}

#[test]
fn a_panic_with_writes_in_flight_never_gets_their_buffers_reused() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::Builder::new()
        .prefix("dstest-panic-w-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("out");
    let n = 16u64;
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("O_DIRECT output (the test's file system must support it)");
    file.set_len(n * u64::from(CHUNK)).unwrap();
    let pool = BufPool::new(CHUNK as usize, n as usize);
    let throttle = Throttle::writes_of(&disk_of(&path), 16 << 20);
    let res = catch_unwind(AssertUnwindSafe(|| {
        let mut w = UringWriter::new(&file, &path, n as u32).expect("io_uring");
        for i in 0..n {
            let mut b = pool.get();
            b.as_mut_slice().fill(0x55);
            w.write(b, i * u64::from(CHUNK), CHUNK, &mut drop).unwrap();
        }
        panic!("the sink panics with {n} writes queued (test)");
    }));
    assert!(res.is_err());
    // Every buffer back, painted: a write the kernel had not yet done would now write the paint.
    let mut bufs: Vec<_> = (0..pool.capacity()).map(|_| pool.get()).collect();
    for b in &mut bufs {
        b.as_mut_slice().fill(PAINT);
    }
    drop(throttle);
    file.sync_all().unwrap();
    drop(file);
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let back = std::fs::read(&path).unwrap();
    let painted = back.iter().filter(|&&x| x == PAINT).count();
    assert_eq!(
        painted, 0,
        "{painted} bytes of the file came from buffers reused before their write finished"
    );
    assert!(
        back.iter().all(|&x| x == 0x55),
        "the file does not hold what was written"
    );
}
