//! The export id: a random UUID the master gives each new export, written into it as
//! [`EXPORT_ID_FILE`] before the export is finalized. It is what tells the export just written
//! apart from an old one on every machine that sees it: a device and inode number cannot, since
//! one NFS export directory has a different device number on each machine that mounts it (and
//! on one machine, a FUSE view of a directory has its own). The cleanup of old exports never
//! removes an export whose id file holds the new export's id.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::names::EXPORT_ID_FILE;

/// Longest id file read: a UUID and a newline, with room to spare; longer is not ours.
const MAX_LEN: u64 = 64;

/// An export's id: a UUID in its usual text form (36 characters, lower-case hex and dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExportId(String);

impl ExportId {
    /// A new random id (from the kernel's random source).
    pub fn new() -> io::Result<Self> {
        crate::fsutil::new_uuid().map(Self)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` is a UUID in its usual text form, lower-case: what [`ExportId::new`] makes.
    fn is_uuid(s: &str) -> bool {
        s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            })
    }
}

impl TryFrom<String> for ExportId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if Self::is_uuid(&s) {
            Ok(Self(s))
        } else {
            Err(format!("not an export id (a lower-case UUID): {s:?}"))
        }
    }
}

impl From<ExportId> for String {
    fn from(id: ExportId) -> String {
        id.0
    }
}

impl fmt::Display for ExportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id in `<export>/diskstream-export-id`: `Ok(None)` where there is no such file (an export
/// Ganeti or an older diskstream wrote) or it is not one of ours (not a regular file, too long,
/// not an id). Opened without following a link or waiting on a FIFO, and checked by its
/// handle. An error only where the file is there but cannot be read: whether the export is the
/// new one cannot then be told.
pub fn read(export: &Path) -> io::Result<Option<ExportId>> {
    use rustix::fs::{Mode, OFlags};
    let path = export.join(EXPORT_ID_FILE);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::open(&path, flags, Mode::empty()) {
        Ok(fd) => fs::File::from(fd),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => return Ok(None),
        Err(e) => return Err(at(&path, e.into())),
    };
    let meta = file.metadata().map_err(|e| at(&path, e))?;
    if !meta.is_file() || meta.len() > MAX_LEN {
        return Ok(None);
    }
    let mut text = String::new();
    match file.take(MAX_LEN).read_to_string(&mut text) {
        Ok(_) => Ok(ExportId::try_from(text.trim_end_matches('\n').to_string()).ok()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(None),
        Err(e) => Err(at(&path, e)),
    }
}

/// Writes `id` into the export (staging) directory `dir`, durable and `0600`.
pub fn write(dir: &Path, id: &ExportId) -> io::Result<()> {
    let path = dir.join(EXPORT_ID_FILE);
    crate::fsutil::atomic_write(&path, format!("{id}\n").as_bytes(), 0o600).map_err(|e| at(&path, e))
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_uuids_and_differ() {
        let (a, b) = (ExportId::new().unwrap(), ExportId::new().unwrap());
        assert_ne!(a, b);
        assert_eq!(ExportId::try_from(a.to_string()).unwrap(), a);
        for bad in [
            "",
            "x",
            &a.as_str().to_uppercase(),
            &format!("{a}\n"),
            &format!("{a}0"),
            "../../etc/passwd",
        ] {
            assert!(ExportId::try_from(bad.to_string()).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<ExportId>("\"not-an-id\"").is_err());
    }

    #[test]
    fn read_takes_only_our_own_file() {
        let d = tempfile::tempdir().unwrap();
        let id = ExportId::new().unwrap();
        assert_eq!(read(d.path()).unwrap(), None, "no file: no id");
        assert_eq!(read(&d.path().join("missing")).unwrap(), None, "no export: no id");
        write(d.path(), &id).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(id.clone()));
        let f = d.path().join(EXPORT_ID_FILE);
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&f).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        // Not ours: garbage, too long, a link to an id file, a FIFO (must not block).
        fs::write(&f, b"\xff\xfe not text").unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        fs::write(&f, format!("{id}\n").repeat(10)).unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        let other = tempfile::tempdir().unwrap();
        write(other.path(), &id).unwrap();
        fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(other.path().join(EXPORT_ID_FILE), &f).unwrap();
        assert_eq!(read(d.path()).unwrap(), None, "a symbolic link is not followed");
        fs::remove_file(&f).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &f,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(read(d.path()).unwrap(), None, "a FIFO is not read");
    }
}
