//! Helpers for the end-to-end tests: run the binary, make test disks, and real loop devices
//! that are detached again when the guard drops (also when a test fails).
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diskstream_engine::sample::{fill_content, Rng};

/// A scratch directory on the build's file system (which supports O_DIRECT, unlike tmpfs),
/// removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dstest-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch dir")
}

/// Runs `diskstream ARGS`.
pub fn ds(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .output()
        .expect("run diskstream")
}

/// Runs `diskstream ARGS --json` and expects success; returns the JSON object.
pub fn ds_json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ds(&a);
    assert!(
        out.status.success(),
        "diskstream {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Content of a test disk.
#[derive(Clone, Copy, Debug)]
pub enum Data {
    /// Incompressible.
    Random,
    /// All zero bytes, written (allocated), not holes.
    Zeros,
    /// Text, code-like bytes, random runs and zero runs.
    Mixed,
    /// Mixed data in 1 MiB islands with holes between them.
    Sparse,
}

/// Writes a test disk of `size` bytes.
pub fn make_disk(path: &Path, size: u64, data: Data, seed: u64) {
    let f = File::create(path).expect("create disk");
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        let b = &mut buf[..n];
        let write = match data {
            Data::Random => {
                rng.fill(b);
                true
            }
            Data::Zeros => {
                b.fill(0);
                true
            }
            Data::Mixed | Data::Sparse => {
                let mut i = 0;
                while i < n {
                    let run = (4096 * (1 + rng.below(16)) as usize).min(n - i);
                    let kind = rng.below(4) as u8;
                    fill_content(&mut rng, kind, &mut b[i..i + run]);
                    i += run;
                }
                !matches!(data, Data::Sparse) || (off >> 20) % 3 == 0
            }
        };
        if write {
            f.write_all_at(b, off).expect("write disk");
        }
        off += n as u64;
    }
    f.set_len(size).expect("size disk");
}

/// Allocated bytes of a file (st_blocks × 512).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// True if and only if this process runs as root (loop devices need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A loop device over a file, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// `losetup --direct-io=on|off --show -f FILE`.
    pub fn attach(file: &Path, direct_io: bool) -> Self {
        assert!(
            is_root(),
            "loop device tests need root: run the README test command as root"
        );
        let out = Command::new("losetup")
            .args([
                "--show",
                "-f",
                if direct_io { "--direct-io=on" } else { "--direct-io=off" },
            ])
            .arg(file)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim());
        Self { dev }
    }

    /// The device path as &str.
    pub fn path(&self) -> &str {
        s(&self.dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Asserts that two files hold the same bytes, naming the first difference.
pub fn assert_same_bytes(a: &Path, b: &Path) {
    let x = std::fs::read(a).expect("read a");
    let y = std::fs::read(b).expect("read b");
    assert_eq!(x.len(), y.len(), "{} and {} differ in length", a.display(), b.display());
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

/// Reads the first `len` bytes of a device or file.
pub fn read_prefix(path: &Path, len: u64) -> Vec<u8> {
    let f = File::open(path).expect("open");
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, 0).expect("read");
    v
}

/// A file system mounted on a scratch directory, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a ramfs (a file system without direct I/O).
    pub fn ramfs() -> Self {
        assert!(is_root(), "mount tests need root: run the README test command as root");
        let dir = scratch();
        let st = Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t ramfs failed");
        Self { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
