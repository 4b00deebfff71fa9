//! What names the same data: a file by its path, its device and inode (hard links, symbolic
//! links) or its device number (block devices), and a loop device (or a partition of one) as the
//! file behind it, known by the device and inode the loop driver holds (`LOOP_GET_STATUS64`),
//! not only by the name sysfs gives it (a name that may have been removed or renamed).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// The sysfs directory of the block device `m` (a partition's own).
pub(super) fn sysfs_block(m: &std::fs::Metadata) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if !m.file_type().is_block_device() {
        return None;
    }
    let (major, minor) = (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()));
    std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
}

/// A file's identity: its device number (`major`, `minor`) and inode number.
type FileId = ((u32, u32), u64);

fn file_id(m: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    ((rustix::fs::major(m.dev()), rustix::fs::minor(m.dev())), m.ino())
}

/// One layer of what a path holds: the path itself, or the file behind a loop device, known by
/// its identity as the loop driver holds it (`id`) and by the name the driver gives it, kept
/// only while that name still leads to that file (a file whose name was removed while another
/// hard link remains, or renamed, is known by `id` alone).
#[derive(Debug)]
struct Layer {
    path: Option<PathBuf>,
    id: Option<FileId>,
}

impl Layer {
    /// The identity of this layer's file: the loop driver's, else the path's.
    fn file_id(&self) -> Option<FileId> {
        self.id
            .or_else(|| std::fs::metadata(self.path.as_ref()?).ok().map(|m| file_id(&m)))
    }

    /// Whether two layers are the same file: the same identity, or paths naming one file.
    fn is(&self, other: &Layer) -> bool {
        if let (Some(x), Some(y)) = (self.file_id(), other.file_id()) {
            if x == y {
                return true;
            }
        }
        matches!((&self.path, &other.path), (Some(x), Some(y)) if one_file(x, y))
    }
}

/// The file behind the loop device (or partition of one) at `p`, `m` its `stat`: its device and
/// inode from `LOOP_GET_STATUS64` (which names the file the driver holds, whatever its names
/// are now) and the name sysfs gives it; the name alone where the ioctl cannot be asked (no
/// permission to open the device).
fn loop_backing(p: &Path, m: &std::fs::Metadata) -> Option<Layer> {
    let dir = sysfs_block(m)?;
    let loop_dir = [dir.join("loop"), dir.parent()?.join("loop")]
        .into_iter()
        .find(|d| d.is_dir())?;
    let named = std::fs::read_to_string(loop_dir.join("backing_file")).ok().map(|text| {
        let path = text.trim_end_matches('\n');
        PathBuf::from(path.strip_suffix(" (deleted)").unwrap_or(path))
    });
    let id = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(p)
        .ok()
        .and_then(|f| sys::loop_backing_id(&f).ok().flatten());
    match (named, id) {
        (None, None) => None,
        (named, Some(id)) => Some(Layer {
            path: named.filter(|n| std::fs::metadata(n).is_ok_and(|m| file_id(&m) == id)),
            id: Some(id),
        }),
        (named, None) => Some(Layer { path: named, id: None }),
    }
}

/// `p` and, where it is a loop device, the file behind it (and behind that, for a loop device
/// on a loop device; at most 8 deep).
fn layers(p: &Path) -> Vec<Layer> {
    let mut v = vec![Layer {
        path: Some(p.to_owned()),
        id: None,
    }];
    while v.len() < 8 {
        let Some(path) = v[v.len() - 1].path.clone() else { break };
        let Some(next) = std::fs::metadata(&path).ok().and_then(|m| loop_backing(&path, &m)) else {
            break;
        };
        v.push(next);
    }
    v
}

/// True if and only if `a` and `b` name the same data: the same file (`one_file`), or one
/// of them is a loop device (or a partition of one) whose backing file is the other (by device
/// and inode, so also through another hard link of a backing file whose name was removed), or
/// both are backed by the same file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (la, lb) = (layers(a), layers(b));
    la.iter().any(|x| lb.iter().any(|y| x.is(y)))
}

/// True if and only if `a` and `b` name the same file: the same canonical path, or the same
/// device and inode (hard links, symbolic links), or block devices with the same device number.
fn one_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        if x.dev() == y.dev() && x.ino() == y.ino() {
            return true;
        }
        if x.file_type().is_block_device() && y.file_type().is_block_device() && x.rdev() == y.rdev() {
            return true;
        }
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The canonical path of `p`, or of its parent joined with its name where `p` does not exist.
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
}

/// The loop device whose backing file is the file `m` (by device and inode; by the name sysfs
/// gives it where the device cannot be opened), if one is: replacing that file under its name
/// would leave the loop device on the old one.
pub(super) fn loop_over(m: &std::fs::Metadata) -> Option<PathBuf> {
    let want = file_id(m);
    std::fs::read_dir("/sys/block").ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        if !name.as_encoded_bytes().starts_with(b"loop") {
            return None;
        }
        let named = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
        let dev = Path::new("/dev").join(&name);
        let held = match std::fs::metadata(&dev).ok().and_then(|dm| loop_backing(&dev, &dm)) {
            Some(Layer { id: Some(id), .. }) => id == want,
            _ => {
                let named = named.trim_end_matches('\n');
                std::fs::metadata(named).is_ok_and(|n| file_id(&n) == want)
            }
        };
        held.then_some(dev)
    })
}
