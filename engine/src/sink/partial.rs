//! Temporary output files, `.NAME.partial-<pid>-<n>`: how one is made and held while it is
//! written, and how the leftovers of killed runs are told from files someone is writing.
//!
//! Every output gets a file of its own: `n` counts the temporary files of the process and the
//! file is created `O_EXCL`, so two outputs of one name written at once (by two processes, or
//! by one: an agent's receives, a frontend embedding the engine) never share one. The writer
//! holds an exclusive `flock` on its file for as long as it writes; the sweep removes a
//! temporary file only when it can take that lock itself. Liveness is the lock, not the pid or
//! the process name (a renamed binary, a reused pid and this process's own other outputs are
//! all told apart by it); where the pid in the name runs no process, the sweep waits a moment
//! for the lock (a writer killed with I/O in flight releases it only once the kernel has torn
//! down its ring). 0.1.0's `.NAME.partial-<pid>` files, which no lock guards, are judged
//! by their pid as 0.1.0 did. A NAME too long for the suffix is shortened to its first bytes
//! and a hash of the whole (`stem`), the same for writer and sweep.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The `n` of the next temporary name this process makes.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The longest file name Linux file systems take.
const NAME_MAX: usize = 255;

/// The longest suffix after the stem: `.partial-` and a u32 pid, `-` and a u64 `n`.
const SUFFIX_MAX: usize = ".partial-".len() + 10 + 1 + 20;

/// The part of a temporary name that stands for the output's `name`: the name itself where
/// `.NAME` and the longest suffix fit in [`NAME_MAX`] bytes, else its first bytes, `~` and 16
/// hex digits of the BLAKE3 hash of the whole name.
fn stem(name: &OsStr) -> OsString {
    let b = name.as_bytes();
    if 1 + b.len() + SUFFIX_MAX <= NAME_MAX {
        return name.to_owned();
    }
    let keep = NAME_MAX - 1 - SUFFIX_MAX - 17;
    let mut s = b[..keep].to_vec();
    s.push(b'~');
    s.extend_from_slice(&blake3::hash(b).to_hex().as_bytes()[..16]);
    OsString::from_vec(s)
}

/// `.STEM.partial-`: what every temporary name of the output `name` starts with.
fn prefix(name: &OsStr) -> Vec<u8> {
    let mut p = vec![b'.'];
    p.extend_from_slice(stem(name).as_bytes());
    p.extend_from_slice(b".partial-");
    p
}

/// A temporary file of this name's pattern, as its tail after the prefix tells.
#[derive(Debug, PartialEq)]
enum Tail {
    /// `<pid>-<n>`: guarded by its writer's lock.
    Locked(u32),
    /// `<pid>` (diskstream 0.1.0): guarded by nothing but its pid.
    Pid(u32),
}

fn tail(t: &[u8]) -> Option<Tail> {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    match t.iter().position(|&b| b == b'-') {
        Some(i) if digits(&t[..i]) && digits(&t[i + 1..]) => {
            std::str::from_utf8(&t[..i]).ok()?.parse().ok().map(Tail::Locked)
        }
        Some(_) => None,
        None if digits(t) => std::str::from_utf8(t).ok()?.parse().ok().map(Tail::Pid),
        None => None,
    }
}

/// Creates `dir/.STEM.partial-<pid>-<n>` for the output `name` (mode 0600, `O_EXCL`; with
/// `O_DIRECT` where asked and the file system takes it) and takes its lock. A name that exists
/// already, or a file swept away before its lock was taken, is passed over for the next `n`.
pub(super) fn create(dir: &Path, name: &OsStr, want_direct: bool) -> Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut file_name = prefix(name);
        file_name.extend_from_slice(format!("{}-{n}", std::process::id()).as_bytes());
        let temp = dir.join(OsStr::from_bytes(&file_name));
        let opened = match open_new(&temp, want_direct) {
            Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(&temp);
                open_new(&temp, false)
            }
            r => r,
        };
        let again = match opened {
            Ok(f) => match hold(&f, &temp) {
                Ok(true) => return Ok((temp, f)),
                Ok(false) => io::Error::from(io::ErrorKind::AlreadyExists),
                Err(e) => return Err(Error::io("lock", &temp, 0, e)),
            },
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => e,
            // Named by the output it was for: the temporary name never existed.
            Err(e) => return Err(Error::io("create", dir.join(name), 0, e)),
        };
        tries += 1;
        if tries == 16 {
            return Err(Error::io("create", &temp, 0, again));
        }
    }
}

/// Takes the writer's lock on the new file `f` at `temp`; false if a sweep removed the file
/// before the lock was taken (the name no longer leads to `f`). A file system without locks
/// leaves the file unlocked: the sweep cannot lock it either, and so leaves it alone.
fn hold(f: &File, temp: &Path) -> io::Result<bool> {
    match try_lock(f) {
        Ok(true) => {}
        // A sweep holds it for a moment, about to remove it.
        Ok(false) => return Ok(false),
        Err(e) if lock_unsupported(&e) => {}
        Err(e) => return Err(e),
    }
    let (ours, now) = (f.metadata()?, std::fs::symlink_metadata(temp));
    Ok(now.is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino()))
}

/// `flock(LOCK_EX | LOCK_NB)`: true if taken, false if another handle holds it.
fn try_lock(f: &File) -> io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn lock_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS))
}

fn open_new(path: &Path, direct: bool) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 })
        .open(path)
}

/// Removes the leftovers of the output `path` beside it: files named `.STEM.partial-<pid>-<n>`
/// whose lock no writer holds, and 0.1.0's `.NAME.partial-<pid>` whose process is gone, is not a
/// diskstream (the pid was reused) or is this process (an earlier process had its pid). Only
/// regular files of those patterns, and never one of `spare` (the run's inputs, compared by
/// device and inode: an input may carry such a name). Returns the paths removed.
pub fn sweep(path: &Path, spare: &[&Path]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let (Some(name), dir) = (
        path.file_name(),
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    ) else {
        return removed;
    };
    let prefix = prefix(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    let spared: Vec<(u64, u64)> = spare
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    for e in entries.flatten() {
        let fname = e.file_name();
        let Some(kind) = fname.as_bytes().strip_prefix(prefix.as_slice()).and_then(tail) else {
            continue;
        };
        let p = e.path();
        // Removed while the leftover's lock is held: a writer that made a file of this name a
        // moment ago and has not locked it yet cannot lock it now, and makes another.
        if let Some(_held) = leftover(&p, kind, &spared) {
            if std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}

/// The temporary file at `p` if it is a leftover to remove, opened on a handle of its own
/// whose lock the caller holds until it has removed the file (released when the handle
/// closes). Dropped before the removal, the lock let a writer that had just made the file
/// lock it and go on writing a file that was then removed under it (its commit failed).
fn leftover(p: &Path, kind: Tail, spared: &[(u64, u64)]) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || spared.contains(&(m.dev(), m.ino())) {
        return None;
    }
    let gone = match kind {
        Tail::Locked(pid) => lock_soon(&f, pid),
        Tail::Pid(pid) => pid == std::process::id() || !live_diskstream(pid),
    };
    gone.then_some(f)
}

/// Takes the lock of a temporary file whose name carries `pid`. A writer holds it while it
/// lives; a writer killed with I/O in flight (io_uring) holds it a moment longer, until the
/// kernel's teardown of its ring drops the last reference to the file. So where no process of
/// that pid runs here, the lock is tried again for up to [`RELEASE_WAIT`]; a writer in another
/// pid namespace (its pid unknown here) still holds it after that and keeps its file.
fn lock_soon(f: &File, pid: u32) -> bool {
    let t0 = std::time::Instant::now();
    loop {
        match try_lock(f) {
            Ok(true) => return true,
            Ok(false) if !running(pid) && t0.elapsed() < RELEASE_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => return false,
        }
    }
}

/// How long the sweep waits for the lock of a writer whose process is gone.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a process `pid` runs here (not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: the state follows the last ')'.
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X' | 'x') | None)
    })
}

/// True if and only if `pid` is a running (not zombie) process whose command name starts with
/// `diskstream` (0.1.0's test of a live writer, kept for its files only).
fn live_diskstream(pid: u32) -> bool {
    running(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end().starts_with("diskstream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_of_our_patterns_only() {
        assert_eq!(tail(b"123-0"), Some(Tail::Locked(123)));
        assert_eq!(tail(b"123"), Some(Tail::Pid(123)));
        for t in [
            &b""[..],
            b"-",
            b"12-",
            b"-3",
            b"1-2-3",
            b"12x",
            b"1-x",
            b"99999999999",
            b"99999999999-1",
        ] {
            assert_eq!(tail(t), None, "{}", String::from_utf8_lossy(t));
        }
    }

    #[test]
    fn a_long_name_gets_a_stem_that_fits_and_tells_names_apart() {
        let short = OsStr::new("disk0.raw");
        assert_eq!(stem(short), short);
        let a = OsString::from("a".repeat(250));
        let mut b = a.clone();
        b.push("b");
        for n in [&a, &b] {
            let len = prefix(n).len() + SUFFIX_MAX - ".partial-".len();
            assert!(len <= NAME_MAX, "{len}");
        }
        assert_ne!(stem(&a), stem(&b));
        // The longest name that keeps itself: `.NAME` and the longest suffix make 255.
        let edge = OsString::from("c".repeat(NAME_MAX - 1 - SUFFIX_MAX));
        assert_eq!(stem(&edge), edge);
    }
}
