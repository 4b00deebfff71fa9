//! `LockManager` and `LockOwner`: cross-process locks on files, acquired strictly level by level.
//!
//! Every lock is `flock(2)` on `<lockdir>/<level>/<name>.lock`. The kernel keeps the lock for
//! as long as the open file description lives, so a process that dies (even by SIGKILL) frees
//! its locks, and two processes (or two owners in one process, which open the file separately)
//! exclude each other. Lock files are never deleted: deleting a file someone may be about to
//! lock would let two holders lock two different inodes of the same name.
//!
//! While a lock is held, the owner writes a small side file
//! (`<lockdir>/<level>/<name>.holders/<pid>-<owner id>`: pid, mode, command, time). When a wait
//! times out, the error names the holders. The *truth* about who holds the lock is
//! `/proc/locks` (matched by device and inode); side files only add the command and the time,
//! and are used only for pids that `/proc/locks` lists, so a holder that died is never named.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{flock, FlockOperation};

pub use super::holders::Holder;
use super::holders::{describe_holders, read_side_files, remove_stale_side_files};
use super::level::{LockLevel, LockMode};
pub use super::proc::{civil_from_days, format_utc};
use super::proc::{proc_cmdline, proc_locks_holders, proc_start_time};
use crate::cluster::is_safe_name;
use crate::error::{Ecode, OpError};

/// The name of the big Ganeti lock at the `cluster` level.
pub const BGL: &str = "BGL";

/// Owner ids, unique within this process; with the pid they identify an owner's side files.
static NEXT_OWNER_ID: AtomicU64 = AtomicU64::new(1);

/// The longest sleep between two attempts while waiting for a lock.
const MAX_POLL: Duration = Duration::from_millis(50);

/// Why a lock request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The request breaks the level order (or the BGL rule); nothing was acquired.
    #[error("{0}")]
    Order(String),
    /// A lock name that cannot be a lock file name.
    #[error("Invalid lock name '{0}'")]
    InvalidName(String),
    /// The lock was not free before the timeout; nothing of this request is held.
    #[error(
        "Could not acquire lock {level}/{name} ({mode}) within {:.1}s: {}",
        waited.as_secs_f64(),
        describe_holders(holders)
    )]
    Timeout {
        /// The level of the lock.
        level: LockLevel,
        /// The lock that was busy.
        name: String,
        /// The mode requested.
        mode: LockMode,
        /// How long we waited.
        waited: Duration,
        /// Who held it when we gave up.
        holders: Vec<Holder>,
    },
    /// The wait was given up because the stop flag was set (SIGINT/SIGTERM).
    #[error("interrupted while waiting for lock {level}/{name}")]
    Interrupted {
        /// The level.
        level: LockLevel,
        /// The lock's name.
        name: String,
    },
    /// The lock directory is not private to this user: others could plant links in it (a
    /// holder file written through one would overwrite any file) or create its files.
    #[error("lock directory {path}: {detail}; refusing to use it")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Who owns it or who may write it.
        detail: String,
    },
    /// The lock directory or a lock file could not be used.
    #[error("lock file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl From<LockError> for OpError {
    fn from(e: LockError) -> Self {
        let ecode = match &e {
            LockError::Timeout { .. } => Ecode::TempNoRes,
            LockError::InvalidName(_) => Ecode::Inval,
            LockError::Order(_) => Ecode::Fault,
            LockError::Io { .. } | LockError::NotPrivate { .. } => Ecode::Environ,
            LockError::Interrupted { .. } => return OpError::interrupted(e.to_string()),
        };
        OpError::lock(ecode, e.to_string())
    }
}

/// Where locks live. Cheap to clone; every [`LockOwner`] made from it shares the directory.
#[derive(Debug, Clone)]
pub struct LockManager {
    dir: PathBuf,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl LockManager {
    /// Uses (and creates if needed, mode 0700) `dir` and one subdirectory per level. Each must
    /// belong to this user (or root) and be writable by no one else
    /// ([`LockError::NotPrivate`]); lock files are made 0600, so no other user can take a lock
    /// and hold every operation up.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LockError> {
        let dir = dir.into();
        let io_err = |d: &Path| {
            let path = d.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        let levels = LockLevel::ALL.iter().map(|level| dir.join(level.as_str()));
        for d in std::iter::once(dir.clone()).chain(levels) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io_err(&d))?;
            check_private(&d)?;
        }
        Ok(Self { dir, stop: None })
    }

    /// Gives up any wait for a lock ([`LockError::Interrupted`]) once `stop` is set.
    pub fn with_stop(mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new owner (one operation; Ganeti's job) that describes itself as `command` to
    /// anyone waiting for its locks.
    pub fn owner(&self, command: impl Into<String>) -> LockOwner {
        LockOwner {
            manager: self.clone(),
            id: NEXT_OWNER_ID.fetch_add(1, Ordering::Relaxed),
            command: command.into(),
            levels: Vec::new(),
        }
    }

    /// Who holds `level/name` right now.
    pub fn holders(&self, level: LockLevel, name: &str) -> Result<Vec<Holder>, LockError> {
        let path = self.lock_path(level, name);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(LockError::Io { path, source }),
        };
        let kernel = proc_locks_holders(meta.dev(), meta.ino());
        let infos = read_side_files(&self.holders_dir(level, name));
        let mut out = Vec::new();
        for (pid, mode) in kernel {
            let start = proc_start_time(pid);
            let mut matched = false;
            for info in infos.iter().filter(|i| i.pid == pid && i.mode == mode) {
                if info.start_time.is_some() && info.start_time != start {
                    continue; // A side file of an earlier process with the same pid.
                }
                matched = true;
                out.push(Holder {
                    pid,
                    mode,
                    command: Some(info.command.clone()),
                    since: Some(info.since),
                });
            }
            if !matched {
                out.push(Holder {
                    pid,
                    mode,
                    command: proc_cmdline(pid),
                    since: None,
                });
            }
        }
        Ok(out)
    }

    fn lock_path(&self, level: LockLevel, name: &str) -> PathBuf {
        self.dir.join(level.as_str()).join(format!("{name}.lock"))
    }

    fn holders_dir(&self, level: LockLevel, name: &str) -> PathBuf {
        self.dir.join(level.as_str()).join(format!("{name}.holders"))
    }
}

/// The locks of one operation. Locks are released in reverse order of acquisition when the
/// owner is dropped (or per level with [`LockOwner::release`]).
#[derive(Debug)]
pub struct LockOwner {
    manager: LockManager,
    id: u64,
    command: String,
    levels: Vec<HeldLevel>,
}

#[derive(Debug)]
struct HeldLevel {
    level: LockLevel,
    locks: Vec<HeldLock>,
}

#[derive(Debug)]
struct HeldLock {
    name: String,
    side_file: PathBuf,
    // Dropped (closed, hence unlocked) after the side file is removed in `Drop`.
    _file: File,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.side_file);
    }
}

impl HeldLevel {
    fn release(mut self) {
        while let Some(lock) = self.locks.pop() {
            drop(lock);
        }
    }
}

impl LockOwner {
    /// The command this owner reports to waiters.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Acquires `names` at `level` in `mode`, waiting at most `timeout` in total.
    ///
    /// Refused with [`LockError::Order`] if this owner already holds locks at `level` or a
    /// higher level, or if `level` is not `cluster` and the BGL is not held (Ganeti's rules).
    /// Names are deduplicated and locked in sorted order. On a timeout, every lock taken by
    /// this call is released again and the error names the holders of the busy lock.
    pub fn acquire<S: AsRef<str>>(
        &mut self,
        level: LockLevel,
        names: &[S],
        mode: LockMode,
        timeout: Duration,
    ) -> Result<(), LockError> {
        if let Some(top) = self.levels.last() {
            if top.level >= level {
                return Err(LockError::Order(format!(
                    "Cannot acquire locks at level '{level}' while owning locks at level '{}' \
                     (levels must be acquired in increasing order: cluster < instance < \
                     nodegroup < node < node-res < network)",
                    top.level
                )));
            }
        }
        if level != LockLevel::Cluster && !self.is_owned(LockLevel::Cluster) {
            return Err(LockError::Order(
                "You must own the Big Ganeti Lock before acquiring any other".into(),
            ));
        }
        let mut sorted: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        sorted.sort_unstable();
        sorted.dedup();
        if let Some(bad) = sorted.iter().find(|n| !is_safe_name(n)) {
            return Err(LockError::InvalidName((*bad).to_string()));
        }
        if level == LockLevel::Cluster && sorted.iter().any(|n| *n != BGL) {
            return Err(LockError::InvalidName(format!(
                "cluster/{} (the cluster level has only '{BGL}')",
                sorted.join(",")
            )));
        }
        if sorted.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let deadline = start + timeout;
        let mut held = HeldLevel {
            level,
            locks: Vec::with_capacity(sorted.len()),
        };
        for name in sorted {
            match self.lock_one(level, name, mode, deadline) {
                Ok(lock) => held.locks.push(lock),
                Err(e) => {
                    held.release();
                    return Err(match e {
                        LockError::Timeout { holders, .. } => LockError::Timeout {
                            level,
                            name: name.to_string(),
                            mode,
                            waited: start.elapsed(),
                            holders,
                        },
                        other => other,
                    });
                }
            }
        }
        self.levels.push(held);
        Ok(())
    }

    /// Releases every lock held at `level` (in reverse order). Releasing a level not held is a
    /// no-op.
    pub fn release(&mut self, level: LockLevel) {
        if let Some(pos) = self.levels.iter().position(|l| l.level == level) {
            self.levels.remove(pos).release();
        }
    }

    /// Releases everything, highest level first.
    pub fn release_all(&mut self) {
        while let Some(level) = self.levels.pop() {
            level.release();
        }
    }

    /// Whether any lock is held at `level`.
    pub fn is_owned(&self, level: LockLevel) -> bool {
        self.levels.iter().any(|l| l.level == level)
    }

    /// The names held at `level`, sorted.
    pub fn owned(&self, level: LockLevel) -> Vec<&str> {
        self.levels
            .iter()
            .filter(|l| l.level == level)
            .flat_map(|l| l.locks.iter().map(|h| h.name.as_str()))
            .collect()
    }

    fn lock_one(&self, level: LockLevel, name: &str, mode: LockMode, deadline: Instant) -> Result<HeldLock, LockError> {
        let path = self.manager.lock_path(level, name);
        let io_err = |path: &Path, source: io::Error| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        // std opens with O_CLOEXEC, so hook scripts and other children never inherit a lock;
        // a link in the lock's place is never followed.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // A lock file made readable by others (by an older version) is made private.
        if file.metadata().is_ok_and(|m| m.mode() & 0o077 != 0) {
            let _ = rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o600));
        }
        let op = match mode {
            LockMode::Shared => FlockOperation::NonBlockingLockShared,
            LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        let mut pause = Duration::from_millis(1);
        loop {
            match flock(&file, op) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                    if self
                        .manager
                        .stop
                        .as_ref()
                        .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
                    {
                        return Err(LockError::Interrupted {
                            level,
                            name: name.to_string(),
                        });
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        let holders = self.manager.holders(level, name).unwrap_or_default();
                        return Err(LockError::Timeout {
                            level,
                            name: name.to_string(),
                            mode,
                            waited: Duration::ZERO,
                            holders,
                        });
                    }
                    thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(MAX_POLL);
                }
                Err(e) => return Err(io_err(&path, e.into())),
            }
        }
        let side_file = self.write_side_file(level, name, mode)?;
        Ok(HeldLock {
            name: name.to_string(),
            side_file,
            _file: file,
        })
    }

    fn write_side_file(&self, level: LockLevel, name: &str, mode: LockMode) -> Result<PathBuf, LockError> {
        let dir = self.manager.holders_dir(level, name);
        let io_err = |path: &Path, source: io::Error| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir, e)),
        }
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            let e = io::Error::other("not a directory (a link in its place is never followed)");
            return Err(io_err(&dir, e));
        }
        let pid = std::process::id();
        remove_stale_side_files(&self.manager.lock_path(level, name), &dir);
        let path = dir.join(format!("{pid}-{}", self.id));
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let start = proc_start_time(pid).map(|s| s.to_string()).unwrap_or_default();
        let command = self.command.replace('\n', " ");
        let body = format!("pid={pid}\nstart_time={start}\nmode={mode}\nsince={since}\ncommand={command}\n");
        // A new file of ours: whatever was left under this name (a link included) goes first,
        // and the create never follows one.
        let _ = fs::remove_file(&path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        f.write_all(body.as_bytes()).map_err(|e| io_err(&path, e))?;
        Ok(path)
    }
}

impl Drop for LockOwner {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Refuses a lock directory that another user (not root) owns or that others may write.
fn check_private(dir: &Path) -> Result<(), LockError> {
    let m = fs::metadata(dir).map_err(|source| LockError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    match crate::fsutil::untrusted(&m) {
        None => Ok(()),
        Some(detail) => Err(LockError::NotPrivate {
            path: dir.to_path_buf(),
            detail,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_utc_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_659_271), "2026-11-26 02:14:31 UTC");
    }

    #[test]
    fn proc_start_time_of_self_is_stable() {
        let a = proc_start_time(std::process::id());
        assert!(a.is_some());
        assert_eq!(a, proc_start_time(std::process::id()));
    }
}
