//! Disk snapshots: reflink clones of `file` disks, `lvcreate -s` of `plain` disks, their removal
//! on every exit path, and the sweep of snapshots a killed run left behind.
//!
//! Ganeti's `DTS_SNAPSHOT_CAPABLE` is a fixed list of templates; here capability depends on
//! where the disk lives:
//!
//! * `file`: snapshot-capable if the file system clones files (`FICLONE`: XFS with
//!   `reflink=1`, btrfs). [`capability`] finds out by cloning a one-byte probe file next to the
//!   disk; `EOPNOTSUPP`, `EXDEV`, `EINVAL`, `ENOTTY` mean "not capable" (ext4, tmpfs, NFS).
//!   The clone is atomic with respect to writes, so a snapshot of a running instance is
//!   crash-consistent.
//! * `plain` (LVM): capable, as in Ganeti; `lvcreate -L<size>m -s -n <name> <dev>` makes a
//!   full-size snapshot, `lvremove -f` removes it.
//! * `blockdev`: not capable.
//!
//! Snapshot names are `<disk name>.ds-snap-<instance>-<pid>` next to the disk (or in the same
//! volume group), so a snapshot of a killed run is recognisable: [`sweep_stale`], run while
//! the instance lock is held exclusively (no other export of the instance can be running),
//! removes every snapshot of the instance. A [`Snapshot`] removes itself when dropped unless
//! it was removed explicitly before.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::io::Errno;

use crate::cluster::{Cluster, Disk, DiskTemplate, Instance};

use crate::names::sanitize;
pub use crate::names::{snapshot_name, SNAP_MARKER};

/// Why a snapshot could not be made or removed. The texts are the ones operators have always
/// seen after "Could not snapshot disk/I on node N: ".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Block devices are never snapshotted.
    #[error("blockdev disks cannot be snapshotted")]
    Blockdev,
    /// A file disk's path has no file name.
    #[error("{}: not a file path", path.display())]
    NotAFilePath {
        /// The disk's path.
        path: PathBuf,
    },
    /// A plain disk's path is not `/dev/<vg>/<lv>`.
    #[error("{path}: a plain disk path must be /dev/<vg>/<lv>")]
    NotAnLvPath {
        /// The disk's path.
        path: String,
    },
    /// A file could not be opened, created or removed.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `FICLONE` failed.
    #[error("reflink clone of {}: {source}", path.display())]
    Clone {
        /// The disk's file.
        path: PathBuf,
        /// The kernel's error.
        #[source]
        source: Errno,
    },
    /// An LVM tool exited non-zero.
    #[error("{command}: {stderr}")]
    Tool {
        /// The program and its arguments.
        command: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// An LVM tool could not be run.
    #[error("cannot run {program}: {source}")]
    ToolNotRun {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Whether a disk can be snapshotted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Capability {
    /// It can.
    Capable,
    /// It cannot, and why.
    NotCapable(String),
}

fn not_capable_errno(e: Errno) -> bool {
    e == Errno::OPNOTSUPP || e == Errno::XDEV || e == Errno::INVAL || e == Errno::NOTTY || e == Errno::NOSYS
}

/// Whether `disk` (backing path `path`) can be snapshotted.
pub fn capability(disk: &Disk, path: &Path) -> Capability {
    match disk.template {
        DiskTemplate::Blockdev => Capability::NotCapable("blockdev disks cannot be snapshotted".into()),
        DiskTemplate::Plain => Capability::Capable,
        DiskTemplate::File => match reflink_probe(crate::fsutil::parent_dir(path)) {
            Ok(true) => Capability::Capable,
            Ok(false) => Capability::NotCapable(format!(
                "the file system of {} cannot clone files (no reflink support)",
                path.display()
            )),
            Err(e) => Capability::NotCapable(format!("cannot probe reflink support next to {}: {e}", path.display())),
        },
    }
}

/// Clones a one-byte file in `dir`: `Ok(true)` if the file system supports reflinks. The two
/// probe files are new files of random names (`O_EXCL`, removed on return): whatever stands in
/// `dir` under any name, a disk included, is never opened, truncated or removed.
pub fn reflink_probe(dir: &Path) -> io::Result<bool> {
    let probe = || tempfile::Builder::new().prefix(".ds-reflink-probe-").tempfile_in(dir);
    let mut src = probe()?;
    src.write_all(b"x")?;
    src.as_file().sync_all()?;
    let dst = probe()?;
    match rustix::fs::ioctl_ficlone(dst.as_file(), src.as_file()) {
        Ok(()) => Ok(true),
        Err(e) if not_capable_errno(e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What a snapshot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotKind {
    /// A reflink clone of a file.
    File {
        /// The clone.
        path: PathBuf,
    },
    /// An LVM snapshot.
    Lvm {
        /// Volume group.
        vg: String,
        /// Snapshot LV name.
        lv: String,
    },
}

/// A snapshot of disk `index`; removed when dropped unless [`Snapshot::remove`] ran.
#[derive(Debug)]
pub struct Snapshot {
    /// The disk index.
    pub index: usize,
    /// What and where it is.
    pub kind: SnapshotKind,
    removed: bool,
}

impl Snapshot {
    /// The path to read the snapshot from.
    pub fn path(&self) -> PathBuf {
        match &self.kind {
            SnapshotKind::File { path } => path.clone(),
            SnapshotKind::Lvm { vg, lv } => PathBuf::from(format!("/dev/{vg}/{lv}")),
        }
    }

    /// Removes the snapshot (at most once; later calls do nothing).
    pub fn remove(&mut self) -> Result<(), SnapshotError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        match &self.kind {
            SnapshotKind::File { path } => match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(SnapshotError::File {
                    path: path.clone(),
                    source,
                }),
            },
            SnapshotKind::Lvm { vg, lv } => run_tool("lvremove", &["-f", &format!("{vg}/{lv}")]),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Snapshots disk `index` (template and backing `path`) for `instance`.
pub fn create(index: usize, disk: &Disk, path: &Path, instance: &str) -> Result<Snapshot, SnapshotError> {
    let pid = std::process::id();
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::File { path, source }
    };
    match disk.template {
        DiskTemplate::Blockdev => Err(SnapshotError::Blockdev),
        DiskTemplate::File => {
            let base = path
                .file_name()
                .ok_or_else(|| SnapshotError::NotAFilePath {
                    path: path.to_path_buf(),
                })?
                .to_string_lossy()
                .into_owned();
            let snap = crate::fsutil::parent_dir(path).join(snapshot_name(&base, instance, pid));
            // Never blocks on a FIFO, even one swapped in after the size check.
            let src = diskstream_engine::input::open_checked(path, "the disk", false, 0).map_err(file_err(path))?;
            let dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&snap)
                .map_err(file_err(&snap))?;
            // From here on the guard removes the clone if anything fails.
            let guard = Snapshot {
                index,
                kind: SnapshotKind::File { path: snap.clone() },
                removed: false,
            };
            rustix::fs::ioctl_ficlone(&dst, &src).map_err(|source| SnapshotError::Clone {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(guard)
        }
        DiskTemplate::Plain => {
            let (vg, lv) = lvm_names(path)?;
            let snap = snapshot_name(&lv, instance, pid);
            run_tool(
                "lvcreate",
                &[
                    &format!("-L{}m", disk.size),
                    "-s",
                    &format!("-n{snap}"),
                    &path.display().to_string(),
                ],
            )?;
            Ok(Snapshot {
                index,
                kind: SnapshotKind::Lvm { vg, lv: snap },
                removed: false,
            })
        }
    }
}

/// `(vg, lv)` of an LV device path `/dev/<vg>/<lv>`.
pub fn lvm_names(path: &Path) -> Result<(String, String), SnapshotError> {
    let s = path.display().to_string();
    let parts: Vec<&str> = s.trim_start_matches("/dev/").split('/').collect();
    if s.starts_with("/dev/") && parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) {
        Ok((parts[0].to_string(), parts[1].to_string()))
    } else {
        Err(SnapshotError::NotAnLvPath { path: s })
    }
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), SnapshotError> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(SnapshotError::Tool {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Err(source) => Err(SnapshotError::ToolNotRun {
            program: program.to_string(),
            source,
        }),
    }
}

/// A pid as snapshot names end with it: digits only, so that `<disk>.ds-snap-a-<pid>` never
/// matches a snapshot of an instance named `a-1` (`<disk>.ds-snap-a-1-<pid>`).
fn is_pid(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A leftover snapshot found by [`sweep_stale`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stale {
    /// The disk index.
    pub index: usize,
    /// The snapshot (a path, or `vg/lv`).
    pub name: String,
    /// The pid of the run that made it.
    pub pid: Option<u32>,
    /// Why it could not be removed, if it could not.
    pub error: Option<String>,
}

/// Why a leftover that looks like a snapshot is kept: it is (or a disk's path leads to it) the
/// backing file or device of a disk in the cluster config. The config refuses disk paths named
/// like snapshots; this guards against what that cannot see (a disk path that is a symbolic
/// link to such a name, a config changed since).
fn kept_as_disk(cluster: &Cluster, p: &Path) -> Option<String> {
    cluster.disk_owner(p).map(|(inst, j)| {
        format!("not removed: it is the backing file or device of disk/{j} of instance {inst} in the cluster config")
    })
}

/// Removes every snapshot of `inst`'s disks left by earlier runs, except any that is a disk of
/// an instance in the config ([`kept_as_disk`]). Call only while holding the
/// instance lock exclusively.
pub fn sweep_stale(cluster: &Cluster, inst: &Instance) -> Vec<Stale> {
    let mut out = Vec::new();
    for (index, disk) in inst.disks.iter().enumerate() {
        let path = cluster.disk_path(disk);
        match disk.template {
            DiskTemplate::File => {
                let Some(base) = path.file_name().map(|b| b.to_string_lossy().into_owned()) else {
                    continue;
                };
                let prefix = format!("{base}{SNAP_MARKER}{}-", sanitize(&inst.name));
                let dir = crate::fsutil::parent_dir(&path);
                let Ok(entries) = fs::read_dir(dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(pid) = name.strip_prefix(&prefix).filter(|p| is_pid(p)) {
                        let p = e.path();
                        let error = match kept_as_disk(cluster, &p) {
                            Some(why) => Some(why),
                            None => fs::remove_file(&p).err().map(|e| e.to_string()),
                        };
                        out.push(Stale {
                            index,
                            name: p.display().to_string(),
                            pid: pid.parse().ok(),
                            error,
                        });
                    }
                }
            }
            DiskTemplate::Plain => {
                let Ok((vg, lv)) = lvm_names(&path) else {
                    continue;
                };
                let Ok(o) = Command::new("lvs")
                    .args(["--noheadings", "-o", "lv_name", &vg])
                    .output()
                else {
                    continue; // No LVM tools: no LVM snapshots either.
                };
                let prefix = format!("{lv}{SNAP_MARKER}{}-", sanitize(&inst.name));
                for name in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Some(pid) = name.strip_prefix(&prefix).filter(|p| is_pid(p)) {
                        let error = match kept_as_disk(cluster, Path::new(&format!("/dev/{vg}/{name}"))) {
                            Some(why) => Some(why),
                            None => run_tool("lvremove", &["-f", &format!("{vg}/{name}")])
                                .err()
                                .map(|e| e.to_string()),
                        };
                        out.push(Stale {
                            index,
                            name: format!("{vg}/{name}"),
                            pid: pid.parse().ok(),
                            error,
                        });
                    }
                }
            }
            DiskTemplate::Blockdev => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_identify_instance_and_pid() {
        assert_eq!(
            snapshot_name("root.img", "inst1.example.com", 42),
            "root.img.ds-snap-inst1.example.com-42"
        );
        assert_eq!(snapshot_name("lv", "a:b", 1), "lv.ds-snap-a_b-1");
        assert_eq!(
            lvm_names(Path::new("/dev/xenvg/data")).unwrap(),
            ("xenvg".into(), "data".into())
        );
        assert!(lvm_names(Path::new("/srv/x")).is_err());
    }

    /// A disk that happens to be named like the probe's files of this pid is neither truncated
    /// nor removed (the probe once opened `.ds-reflink-probe-<pid>-src` with O_TRUNC).
    #[test]
    fn the_reflink_probe_never_touches_a_file_named_like_its_probes() {
        let d = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let names = [
            format!(".ds-reflink-probe-{pid}-src"),
            format!(".ds-reflink-probe-{pid}-dst"),
        ];
        for n in &names {
            fs::write(d.path().join(n), b"a disk's bytes").unwrap();
        }
        reflink_probe(d.path()).unwrap();
        for n in &names {
            assert_eq!(fs::read(d.path().join(n)).unwrap(), b"a disk's bytes", "{n}");
        }
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            2,
            "the probe's own files are removed"
        );
    }
}
