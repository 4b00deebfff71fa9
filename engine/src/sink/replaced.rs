//! The regular file an output replaces (`--force`): checked before a byte is written (never a
//! loop device's backing file), and what the new file takes from it (owner, group, permission
//! bits, ACL, security label, user attributes) so that whoever used it still can.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// The regular file an output replaces (`force`): its owner, group, permission bits, access
/// control list, security label and user attributes, which the new file takes, so that whoever
/// used it (a VM running as another user, confined by SELinux or given access by an ACL) still
/// can. One that a loop device is over is refused: the loop device would go on with the old
/// file while its name led to the new one. One with other hard links is replaced under this
/// name only.
pub(super) struct Replaced {
    uid: u32,
    gid: u32,
    /// Its permission bits, given to the new file at the commit.
    pub(super) mode: u32,
    /// The extended attributes the new file takes ([`carried`]).
    attrs: Vec<(String, Vec<u8>)>,
    /// What the run should tell (other hard links, attributes not carried).
    pub(super) warnings: Vec<String>,
}

/// Whether the new file takes the replaced file's extended attribute `name`, and whether it
/// grants or denies access (then a copy that fails refuses the replacement, as an owner that
/// cannot be given does). Not carried: those that describe or vouch for the old content (IMA
/// and EVM signatures, file capabilities, diskstream's own recorded digest) and `trusted.*`.
fn carried(name: &str) -> Option<bool> {
    match name {
        "system.posix_acl_access" | "security.selinux" | "security.SMACK64" => Some(true),
        _ if name.starts_with("user.") && !name.starts_with("user.diskstream.") => Some(false),
        _ => None,
    }
}

impl Replaced {
    /// The file at `path`, which an output is about to replace.
    pub(super) fn check(path: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| Error::io("stat", path, 0, e))?;
        if let Some(dev) = super::identity::loop_over(&m) {
            return Err(loop_refusal(path, &dev));
        }
        let mut warnings: Vec<String> = (m.nlink() > 1)
            .then(|| {
                format!(
                    "{}: has {} other hard link(s); --force replaces the file under this name only: the \
                     other names keep the old content",
                    path.display(),
                    m.nlink() - 1
                )
            })
            .into_iter()
            .collect();
        let (attrs, dropped): (Vec<_>, Vec<_>) = sys::xattrs(path)
            .map_err(|e| Error::io("listxattr", path, 0, e))?
            .into_iter()
            // Ours are written again for the new content where they apply.
            .filter(|(name, _)| !name.starts_with("user.diskstream."))
            .partition(|(name, _)| carried(name).is_some());
        if !dropped.is_empty() {
            let names: Vec<&str> = dropped.iter().map(|(n, _)| n.as_str()).collect();
            warnings.push(format!(
                "{}: the new file does not take the extended attribute(s) {} of the file it replaces \
                 (they describe or vouch for the old content)",
                path.display(),
                names.join(", ")
            ));
        }
        Ok(Self {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o777,
            attrs,
            warnings,
        })
    }

    /// Gives the new file `file` the replaced file's carried extended attributes; one that
    /// grants or denies access and cannot be given refuses the replacement before a byte is
    /// written, a user attribute that cannot is a warning.
    pub(super) fn give_attrs(&mut self, file: &File, path: &Path) -> Result<()> {
        for (name, value) in &self.attrs {
            let Err(e) = sys::set_xattr(file, name, value) else {
                continue;
            };
            if carried(name) == Some(true) {
                return Err(Error::Invalid(format!(
                    "{}: cannot give the new file the {name} of the file it replaces: {e}; refusing to \
                     replace it (whoever the old one let in would be shut out)",
                    path.display()
                )));
            }
            self.warnings.push(format!(
                "{}: the new file could not take the extended attribute {name} of the file it replaces: {e}",
                path.display()
            ));
        }
        Ok(())
    }

    /// Gives the new file `file` the replaced file's owner and group; refuses where it cannot
    /// (not root, another user's file), before a byte is written.
    pub(super) fn give_owner(&self, file: &File, path: &Path) -> Result<()> {
        use rustix::fs::{Gid, Uid};
        use std::os::unix::fs::MetadataExt;
        let now = file.metadata().map_err(|e| Error::io("stat", path, 0, e))?;
        if (now.uid(), now.gid()) == (self.uid, self.gid) {
            return Ok(());
        }
        rustix::fs::fchown(file, Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid))).map_err(|e| {
            Error::Invalid(format!(
                "{}: cannot give the new file the owner and group of the file it replaces ({}:{}): {}; \
                 refusing to replace it (replace it as its owner or as root)",
                path.display(),
                self.uid,
                self.gid,
                std::io::Error::from(e)
            ))
        })
    }
}

/// The refusal to replace `path`, the backing file of loop device `dev`.
pub(super) fn loop_refusal(path: &Path, dev: &Path) -> Error {
    Error::Invalid(format!(
        "{}: is the backing file of the loop device {}; replacing it would leave {} on the old file \
         while this name led to the new one: detach it first (losetup -d {}) or write to {} itself",
        path.display(),
        dev.display(),
        dev.display(),
        dev.display(),
        dev.display()
    ))
}
