//! Helpers for the end-to-end tests: run the binary, make test disks, and real loop devices
//! that are detached again when the guard drops (also when a test fails).
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diskstream_engine::sample::{fill_content, Rng};

pub mod ganeti;
pub mod netns;

/// The SHA-256 of a file's bytes.
pub fn sha(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).expect("read")).to_vec()
}

/// The partial files (`.partial-`) a run left under `dir`.
pub fn partials(dir: &Path) -> Vec<PathBuf> {
    find_named(dir, ".partial-")
}

/// A command's stderr as text.
pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `diskstream ARGS` under `/usr/bin/time` and returns its output and peak RSS in bytes.
pub fn ds_rss(args: &[&str]) -> (Output, u64) {
    let dir = scratch();
    let rss_file = dir.path().join("rss");
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("/usr/bin/time is needed (apt-get install time; the test script installs it)");
    let text = std::fs::read_to_string(&rss_file).expect("rss file");
    let kib: u64 = text
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {text:?}"));
    (out, kib * 1024)
}

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

/// Runs `diskstream ARGS` with extra environment variables.
pub fn ds_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskstream"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run diskstream")
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
                !matches!(data, Data::Sparse) || (off >> 20).is_multiple_of(3)
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
        Self::attach_with(file, &[if direct_io { "--direct-io=on" } else { "--direct-io=off" }])
    }

    /// `losetup -r --show -f FILE`: a read-only loop device.
    pub fn attach_read_only(file: &Path) -> Self {
        Self::attach_with(file, &["-r"])
    }

    fn attach_with(file: &Path, flags: &[&str]) -> Self {
        assert!(
            is_root(),
            "loop device tests need root: run the README test command as root"
        );
        let out = Command::new("losetup")
            .args(["--show", "-f"])
            .args(flags)
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

/// A read-only bind mount of a directory (removing a file in it fails with EROFS), unmounted on
/// drop, so a failing test leaves nothing behind (scripts/test also sweeps mounts under
/// target/tmp).
pub struct ReadOnlyBind {
    dir: PathBuf,
}

impl ReadOnlyBind {
    /// Shows `src` read-only at `dir` (created if missing).
    pub fn new(src: &Path, dir: &Path) -> Self {
        assert!(is_root(), "bind mounts need root: run scripts/test as root");
        std::fs::create_dir_all(dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("mount").args(args).output().expect("run mount");
            assert!(
                out.status.success(),
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["--bind", s(src), s(dir)]);
        let guard = Self { dir: dir.to_path_buf() };
        run(&["-o", "remount,ro,bind", s(dir)]);
        guard
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A directory shown at another path through bindfs (FUSE): the same files and inode numbers on
/// another device number, as one NFS export looks from two machines. Unmounted on drop.
pub struct Bindfs {
    at: PathBuf,
}

impl Bindfs {
    /// Shows `src` at `at` (an empty directory, created if missing).
    pub fn mount(src: &Path, at: &Path) -> Self {
        assert!(
            is_root(),
            "bindfs mounts need root: run the README test command as root"
        );
        std::fs::create_dir_all(at).expect("bindfs mount point");
        let out = match Command::new("bindfs").arg(src).arg(at).output() {
            Ok(o) => o,
            Err(e) => panic!(
                "bindfs is needed by this test but could not run ({e}): install bindfs \
                 (apt-get install bindfs); the project's test script does this in CI"
            ),
        };
        assert!(
            out.status.success(),
            "bindfs {} {} failed: {}",
            src.display(),
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { at: at.to_path_buf() }
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers of the export tests (tests/export_*.rs): real file systems, a cluster builder and
// instance guards.

/// A file system of its own (an image file, loop-mounted), unmounted and deleted on drop.
pub struct FsMount {
    /// The mount point.
    pub dir: tempfile::TempDir,
    image_dir: tempfile::TempDir,
}

impl FsMount {
    /// XFS with reflinks (`mkfs.xfs -m reflink=1`): files can be snapshotted by cloning.
    pub fn xfs_reflink() -> Self {
        Self::make("mkfs.xfs", &["-q", "-m", "reflink=1"], 320, "xfsprogs")
    }

    /// ext4: files cannot be cloned, so they cannot be snapshotted.
    pub fn ext4() -> Self {
        Self::make("mkfs.ext4", &["-q", "-F"], 96, "e2fsprogs")
    }

    fn make(mkfs: &str, args: &[&str], mib: u64, package: &str) -> Self {
        assert!(
            is_root(),
            "export tests mount real file systems (loop devices) and need root: run the README test command as root"
        );
        let image_dir = scratch();
        let image = image_dir.path().join("fs.img");
        File::create(&image)
            .expect("image")
            .set_len(mib << 20)
            .expect("size image");
        let out = match Command::new(mkfs).args(args).arg(&image).output() {
            Ok(o) => o,
            Err(e) => panic!(
                "{mkfs} is needed by the export tests but could not run ({e}): install {package} \
                 (apt-get install {package}); the project's test script does this in CI"
            ),
        };
        assert!(
            out.status.success(),
            "{mkfs} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = scratch();
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o loop {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, image_dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        // Lazy unmount: an instance process killed a moment ago may still hold a file open.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        let _ = &self.image_dir;
    }
}

/// A small ext4 file system (an image file on a loop device) mounted on a given directory, to
/// fill up: unmounted and its loop device detached on drop, also when the test fails.
pub struct LoopFs {
    /// The mount point.
    pub at: PathBuf,
    dev: Loop,
    image_dir: tempfile::TempDir,
}

impl LoopFs {
    /// `mkfs.ext4` on a `mib` MiB image, attached with `losetup` and mounted on `at` (made if
    /// missing).
    pub fn ext4_at(at: &Path, mib: u64) -> Self {
        let image_dir = scratch();
        let image = image_dir.path().join("small-fs.img");
        File::create(&image)
            .expect("image")
            .set_len(mib << 20)
            .expect("size image");
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .output()
            .expect("mkfs.ext4 (install e2fsprogs)");
        assert!(
            out.status.success(),
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = Loop::attach(&image, false);
        std::fs::create_dir_all(at).expect("mount point");
        // From here on, Drop unmounts (if mounted) and detaches.
        let fs = Self {
            at: at.to_path_buf(),
            dev,
            image_dir,
        };
        let out = Command::new("mount").arg(&fs.dev.dev).arg(at).output().expect("mount");
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        fs
    }

    /// Bytes free for an unprivileged writer (`df --output=avail`).
    pub fn avail(&self) -> u64 {
        self.df("avail")
    }

    /// The file system's size in bytes (`df --output=size`).
    pub fn size(&self) -> u64 {
        self.df("size")
    }

    fn df(&self, field: &str) -> u64 {
        let out = Command::new("df")
            .args(["-B1", &format!("--output={field}")])
            .arg(&self.at)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df {field}"))
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.at).status().is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process killed a moment ago): detach lazily.
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
        let _ = &self.image_dir;
        // `dev` (declared before image_dir) detaches next.
    }
}

/// A disk of a test instance.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// `file`, `plain` or `blockdev`.
    pub template: &'static str,
    /// Backing path.
    pub path: PathBuf,
    /// Size in MiB.
    pub mib: u64,
}

/// An instance of a test cluster.
#[derive(Clone, Debug)]
pub struct InstSpec {
    /// Name.
    pub name: String,
    /// Primary node name.
    pub primary: String,
    /// `up`, `down` or `offline`.
    pub admin_state: &'static str,
    /// Disks.
    pub disks: Vec<DiskSpec>,
    /// The `process` driver's command (argv), if any.
    pub process: Option<Vec<String>>,
}

/// Writes `cluster.toml` in `dir`: nodes `node1.example.com`..`nodeN` (`node_roots[i]` is
/// node i+1's root), the given instances, `tools` as compression tools. Returns its path.
pub fn write_cluster(dir: &Path, node_roots: &[PathBuf], instances: &[InstSpec], tools: &[&str]) -> PathBuf {
    use std::fmt::Write as _;
    let mut t = String::new();
    let tools: Vec<String> = tools.iter().map(|t| format!("{t:?}")).collect();
    let _ = writeln!(
        t,
        "[cluster]\nname = \"test.example.com\"\nmaster = \"node1.example.com\"\ncompression_tools = [{}]",
        tools.join(", ")
    );
    for (i, root) in node_roots.iter().enumerate() {
        let _ = writeln!(
            t,
            "\n[[nodes]]\nname = \"node{}.example.com\"\nuuid = \"00000000-0000-4000-8000-00000000000{}\"\nroot = {:?}",
            i + 1,
            i + 1,
            root.display().to_string()
        );
    }
    for (k, inst) in instances.iter().enumerate() {
        let _ = writeln!(
            t,
            "\n[[instances]]\nname = {:?}\nuuid = \"11111111-0000-4000-8000-0000000000{k:02}\"\nprimary_node = {:?}\n\
             os = \"debootstrap+default\"\nhypervisor = \"kvm\"\nadmin_state = {:?}\ntags = [\"test\"]\n\n\
             [instances.beparams]\nmaxmem = 512\nminmem = 256\nvcpus = 1\n\n\
             [instances.hvparams]\nboot_order = \"disk\"\n\n\
             [[instances.nics]]\nmac = \"aa:00:00:00:00:{k:02x}\"\nlink = \"br0\"",
            inst.name, inst.primary, inst.admin_state
        );
        for (j, d) in inst.disks.iter().enumerate() {
            let _ = writeln!(
                t,
                "\n[[instances.disks]]\nuuid = \"22222222-0000-4000-8000-0000000{k:02}{j:03}\"\nname = \"disk{j}\"\n\
                 size = {}\ntemplate = {:?}\npath = {:?}",
                d.mib,
                d.template,
                d.path.display().to_string()
            );
        }
        if let Some(argv) = &inst.process {
            let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
            let _ = writeln!(
                t,
                "\n[instances.driver]\nkind = \"process\"\nstart = [{}]",
                argv.join(", ")
            );
        }
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, t).expect("write cluster.toml");
    path
}

/// A long-running instance process command.
pub fn sleeper() -> Vec<String> {
    vec!["/bin/sleep".into(), "100000".into()]
}

/// Starts an instance's process (as its driver does) and kills it on drop, so a failing test
/// leaves no process behind.
pub struct InstanceGuard {
    /// The instance's process driver.
    pub driver: diskstream_orchestrator::driver::ProcessDriver,
}

impl InstanceGuard {
    /// The guard of `name` in the cluster at `cfg`; starts it if `start`.
    pub fn new(cfg: &Path, name: &str, start: bool) -> Self {
        use diskstream_orchestrator::cluster::{Cluster, Driver};
        use diskstream_orchestrator::driver::{process_paths, InstanceDriver, ProcessDriver};
        let c = Cluster::load(cfg).expect("load cluster");
        let inst = c.instance(name).expect("instance");
        let (pid_file, log_file) = process_paths(&c, inst).expect("paths");
        let argv = match &inst.driver {
            Some(Driver::Process { start }) => start.argv(),
            _ => panic!("{name} has no process driver"),
        };
        let driver = ProcessDriver {
            argv,
            pid_file,
            log_file,
            env: vec![("DISKSTREAM_INSTANCE".into(), name.into())],
        };
        if start {
            driver.start().expect("start instance");
        }
        Self { driver }
    }

    /// The running pid, if any.
    pub fn pid(&self) -> Option<u32> {
        self.driver.running_pid().expect("the instance's pid file")
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        use diskstream_orchestrator::driver::InstanceDriver;
        let _ = self.driver.stop(std::time::Duration::ZERO);
    }
}

/// `diskstream ARGS` as (success, stdout, stderr).
pub fn ds_text(args: &[&str]) -> (bool, String, String) {
    let out = ds(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Files under `dir` (recursively) whose name contains `needle`.
pub fn find_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(needle) {
            out.push(p.clone());
        }
        if p.is_dir() && !p.is_symlink() {
            out.extend(find_named(&p, needle));
        }
    }
    out
}

/// Flips the bits `mask` of the byte at `at` of `path` in place.
pub fn flip_byte(path: &Path, at: u64, mask: u8) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
}

/// Checks that an export directory is complete: config.ini parses and every dump it names
/// exists with its manifest and the disk's size. Returns the error otherwise.
pub fn check_export_complete(dir: &Path, disk_bytes: u64) -> Result<(), String> {
    use diskstream_orchestrator::export::config_ini::IniDocument;
    let text = std::fs::read_to_string(dir.join("config.ini")).map_err(|e| format!("config.ini: {e}"))?;
    let ini = IniDocument::parse(&text).map_err(|e| e.to_string())?;
    let n: usize = ini
        .get("instance", "disk_count")
        .and_then(|v| v.parse().ok())
        .ok_or("no disk_count")?;
    for i in 0..n {
        let dump = ini.get("instance", &format!("disk{i}_dump")).ok_or("no dump")?;
        let len = std::fs::metadata(dir.join(dump))
            .map_err(|e| format!("{dump}: {e}"))?
            .len();
        if len != disk_bytes {
            return Err(format!("{dump}: {len} bytes, expected {disk_bytes}"));
        }
        if !dir.join(format!("{dump}.manifest")).exists() {
            return Err(format!("{dump}.manifest missing"));
        }
    }
    Ok(())
}

/// A node root's export directory (Ganeti's layout).
pub fn export_dir(root: &Path) -> PathBuf {
    root.join("var/lib/ganeti/export")
}

/// The roots of nodes 1..=n under `dir` (`node1`, `node2`, ...).
pub fn node_roots(dir: &Path, n: usize) -> Vec<PathBuf> {
    (1..=n).map(|i| dir.join(format!("node{i}"))).collect()
}

/// True once the process has its SIGINT and SIGTERM handlers (bits 2 and 15 of SigCgt), or is
/// gone.
pub fn handlers_installed(pid: u32) -> bool {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    if st.lines().any(|l| l.starts_with("State:") && l.contains('Z')) {
        return true; // Exited, not yet reaped.
    }
    st.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|m| m & (1 << 1) != 0 && m & (1 << 14) != 0)
}

/// Writes an executable hook script `<root>/etc/ganeti/hooks/<phase dir>/<name>`.
pub fn hook(root: &Path, phase_dir: &str, name: &str, body: &str) {
    let d = root.join("etc/ganeti/hooks").join(phase_dir);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Adds `lines` to the `[cluster]` table of a config written by `write_cluster`.
pub fn add_cluster_keys(cfg: &Path, lines: &str) {
    let t = std::fs::read_to_string(cfg).unwrap();
    let t = t.replacen("\n\n[[nodes]]", &format!("\n{lines}\n\n[[nodes]]"), 1);
    std::fs::write(cfg, t).unwrap();
}

/// A process holding a file's lock, for the tests of the sweep (used by some test crates only).
#[allow(unused_imports)]
pub use diskstream_engine::flock_holder::FlockHolder;

/// Runs `diskstream ARGS` with a deadline: a command that hangs is killed and the test fails.
pub fn ds_within(args: &[&str], limit: std::time::Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn diskstream");
    let t0 = std::time::Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("diskstream {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Sends `sig` (e.g. "INT") to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
    assert!(st.is_ok_and(|s| s.success()), "SIG{sig} to {pid}");
}

/// Waits up to `limit` for `child`; kills it and panics if it does not exit.
pub fn wait_exit(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, std::time::Duration) {
    let t = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("diskstream did not exit within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The phase an export was in, from the last job message it printed.
pub fn phase_of(out: &str) -> &'static str {
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let has = |k: &str| last.contains(k);
    if last.is_empty() {
        "locks/pre hooks"
    } else if has("Shutting down") {
        "shutdown"
    } else if has("Creating a snapshot") || has("cannot be snapshotted") {
        "snapshot"
    } else if has("Starting instance") {
        "restart"
    } else if [
        "Exporting",
        "sending",
        "receiving",
        "sent",
        "Finished",
        "Removing snapshot",
    ]
    .iter()
    .any(|k| has(k))
    {
        "transfer"
    } else if has("Finalizing") {
        "finalize/post hooks"
    } else if has("old exports") {
        "cleanup"
    } else {
        "other"
    }
}
