//! Disk paths across the whole config: no two disks (of one instance or of two) may name the
//! same backing file or device, since removing one instance (`--remove-instance`) deletes its
//! disks and the stale-snapshot sweep of one instance must never reach another's disk.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::validate::Invalid;
use super::Cluster;

/// Where a disk lives, as far as this machine can tell: the node whose agent holds it (its
/// paths are on that machine, and only compared with each other), or this machine (`None`).
type Machine<'a> = Option<&'a str>;

/// `p` made absolute against `base` with `.` components and repeated or trailing `/` dropped.
/// `..` is kept: whether it cancels the component before it depends on symbolic links.
fn lexical(base: &Path, p: &Path) -> PathBuf {
    let abs = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    abs.components().filter(|c| *c != Component::CurDir).collect()
}

impl Cluster {
    /// The identity of a disk's backing file or device: its canonical path where it exists on
    /// this machine (symbolic links such as `/dev/<vg>/<lv>` resolved, `..` followed), else its
    /// lexical absolute path; and the machine it is on.
    fn disk_identity(&self, primary: &str, p: &Path) -> (Machine<'_>, PathBuf) {
        match self.node(primary).filter(|n| n.address.is_some()) {
            Some(n) => (Some(n.name.as_str()), lexical(&self.base_dir, p)),
            None => (None, self.resolved(p)),
        }
    }

    /// `p` canonical where it exists on this machine, else lexically absolute ([`lexical`]).
    fn resolved(&self, p: &Path) -> PathBuf {
        let p = lexical(&self.base_dir, p);
        std::fs::canonicalize(&p).unwrap_or(p)
    }

    /// Refuses two disks with the same backing file or device ([`Cluster::disk_identity`]),
    /// naming both.
    pub(super) fn check_disk_paths(&self) -> Result<(), Invalid> {
        let mut seen: HashMap<(Machine<'_>, PathBuf), (String, &str, usize)> = HashMap::new();
        for (i, inst) in self.instances().iter().enumerate() {
            for (j, d) in inst.disks.iter().enumerate() {
                let key = format!("instances[{i}].disks[{j}].path");
                let id = self.disk_identity(&inst.primary_node, &d.path);
                let resolved = id.1.display().to_string();
                if let Some((other_key, other, k)) = seen.get(&id) {
                    return Err(Invalid {
                        key,
                        msg: format!(
                            "disk/{j} of instance '{}' has the backing file or device {resolved} \
                             ('{}'), which is already that of disk/{k} of instance '{other}' \
                             ({other_key}); two disks cannot share one (removing one instance \
                             would delete the other's disk)",
                            inst.name,
                            d.path.display(),
                        ),
                    });
                }
                seen.insert(id, (key, inst.name.as_str(), j));
            }
        }
        Ok(())
    }

    /// Whether `path` is the backing file or device of a disk of any instance in the config, on
    /// whatever node: `(instance, disk index)` if so. Paths are compared canonical where they
    /// exist on this machine (a symbolic link to the file is the file), else lexically.
    pub fn disk_owner(&self, path: &Path) -> Option<(&str, usize)> {
        let want = self.resolved(path);
        self.instances().iter().find_map(|inst| {
            inst.disks
                .iter()
                .position(|d| self.resolved(&d.path) == want)
                .map(|j| (inst.name.as_str(), j))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths_drop_dots_and_slashes_but_keep_dotdot() {
        let b = Path::new("/etc/c");
        assert_eq!(lexical(b, Path::new("d/./x.img")), Path::new("/etc/c/d/x.img"));
        assert_eq!(lexical(b, Path::new("/srv//d/x.img/")), Path::new("/srv/d/x.img"));
        assert_eq!(lexical(b, Path::new("../x")), Path::new("/etc/c/../x"));
    }
}
