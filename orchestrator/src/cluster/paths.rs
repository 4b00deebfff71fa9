//! Paths across the whole config: no two disks (of one instance or of two) may name the same
//! backing file or device, since removing one instance (`--remove-instance`) deletes its disks
//! and the stale-snapshot sweep of one instance must never reach another's disk; and nothing
//! that must last may lie inside a node's export directory, where replacing, cleaning up or
//! removing an export deletes whole directories: no disk, no other node's root, not the config,
//! the lock directory or the PKI. A disk may not be one of the cluster's own files either.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::validate::Invalid;
use super::{Cluster, Node};

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

    /// `p` made absolute and resolved as far as it exists (symbolic links and `..` followed),
    /// the rest as it will be once made: a directory not made yet compares as the one it will
    /// be. A `..` after a part that does not exist yet cancels that part (it will be made a
    /// real directory), and the path may exist again after it (`new/../node2` is `node2`,
    /// itself resolved).
    fn anchored(&self, p: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for c in lexical(&self.base_dir, p).components() {
            if c == Component::ParentDir && !out.exists() {
                out.pop();
            } else {
                out.push(c);
            }
            if let Ok(real) = std::fs::canonicalize(&out) {
                out = real;
            }
        }
        out
    }

    /// Where `p` of node `node` is: on the node's agent's machine (lexical), or on this one.
    fn place<'a>(&'a self, node: Option<&'a Node>, p: &Path) -> (Machine<'a>, PathBuf) {
        match node.filter(|n| n.address.is_some()) {
            Some(n) => (Some(n.name.as_str()), lexical(&self.base_dir, p)),
            None => (None, self.anchored(p)),
        }
    }

    /// Refuses what would be deleted with an export: a disk, another node's root, the config,
    /// the lock directory or the PKI inside a node's export directory (on the same machine);
    /// and a disk that is the config or lies in the lock directory or the PKI.
    pub(super) fn check_export_dirs(&self) -> Result<(), Invalid> {
        let exports: Vec<(&str, (Machine<'_>, PathBuf))> = self
            .nodes()
            .iter()
            .map(|n| (n.name.as_str(), self.place(Some(n), &self.export_dir(n))))
            .collect();
        let inside = |what: &(Machine<'_>, PathBuf), not_of: Option<&str>| {
            exports
                .iter()
                .find(|(name, (m, e))| Some(*name) != not_of && *m == what.0 && what.1.starts_with(e))
        };
        let deleted = |e: &Path, name: &str| {
            format!(
                "lies inside node {name}'s export directory {}, where replacing, cleaning up or removing \
                 an export deletes whole directories",
                e.display()
            )
        };
        for (k, n) in self.nodes().iter().enumerate() {
            let root = self.place(Some(n), &self.node_root(n));
            if let Some((name, (_, e))) = inside(&root, Some(&n.name)) {
                let msg = format!("node {}'s root {} {}", n.name, root.1.display(), deleted(e, name));
                return Err(Invalid {
                    key: format!("nodes[{k}].root"),
                    msg,
                });
            }
        }
        let own = [
            ("cluster", "the cluster config", self.path.clone()),
            ("cluster.lock_dir", "the lock directory", self.lock_dir()),
            ("cluster.pki", "the PKI directory", self.pki_dir()),
        ];
        for (key, what, p) in &own {
            let p = (None, self.anchored(p));
            if let Some((name, (_, e))) = inside(&p, None) {
                let msg = format!("{what} {} {}", p.1.display(), deleted(e, name));
                return Err(Invalid {
                    key: key.to_string(),
                    msg,
                });
            }
        }
        for (i, inst) in self.instances().iter().enumerate() {
            for (j, d) in inst.disks.iter().enumerate() {
                let key = format!("instances[{i}].disks[{j}].path");
                let disk = self.place(self.node(&inst.primary_node), &d.path);
                let of = format!("disk/{j} of instance '{}' ({})", inst.name, disk.1.display());
                if let Some((name, (_, e))) = inside(&disk, None) {
                    return Err(Invalid {
                        key,
                        msg: format!("{of} {}", deleted(e, name)),
                    });
                }
                let own_file = own
                    .iter()
                    .find(|(_, _, p)| disk.0.is_none() && disk.1.starts_with(self.anchored(p)));
                if let Some((_, what, p)) = own_file {
                    let msg = format!(
                        "{of} is or lies in {what} {}: an export must never write or remove it",
                        p.display()
                    );
                    return Err(Invalid { key, msg });
                }
            }
        }
        Ok(())
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
