//! Cleanup of old exports (`_CleanupExports`): a pure plan from node listings, then its
//! application.
//!
//! After a successful export to node T, Ganeti removes the instance's export from every other
//! node: nodes whose listing fails are skipped, removal failures are warnings. Ganeti bug
//! #1186: when nodes share one export directory (NFS), "the export on another node" is the
//! export just written, and Ganeti deletes it. [`plan`] never removes a directory that is the
//! new export: it compares export directories and export paths by identity (device and inode,
//! following symlinks: the same machine) and by the new export's id in its id file (every
//! machine: one NFS directory has another device number on each machine that mounts it), not
//! by node name; [`remove_unless`] checks both again right before removing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::export_id::{self, ExportId};
use super::store::{self, StoreError};

/// Why an old export could not be removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CleanupError {
    /// The store refused the removal.
    #[error("{0}")]
    Remove(#[source] StoreError),
}

/// What one node's export directory looked like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeListing {
    /// Node name.
    pub node: String,
    /// The node's export directory.
    pub export_dir: PathBuf,
    /// Identity of the export directory, if it exists.
    pub dir_id: Option<(u64, u64)>,
    /// Identity of `<export_dir>/<instance>`, if it exists.
    pub export_id: Option<(u64, u64)>,
    /// The id in `<export_dir>/<instance>`'s id file, if it has one ([`export_id::read`]).
    #[serde(default)]
    pub mark: Option<ExportId>,
    /// The node's exports, or why they could not be listed (offline node, missing directory).
    pub exports: Result<Vec<String>, String>,
    /// Whether interrupted runs left a staging or half-removed directory of the instance there.
    pub leftovers: bool,
}

/// A planned removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Node name.
    pub node: String,
    /// The node's export directory.
    pub export_dir: PathBuf,
}

/// The cleanup plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Old exports to remove.
    pub removals: Vec<Removal>,
    /// Nodes whose listing failed, with the reason (silently skipped, as in Ganeti).
    pub skipped: Vec<(String, String)>,
    /// Nodes whose "old export" is the new export itself (a shared export directory).
    pub shared: Vec<String>,
    /// Nodes where only leftovers of interrupted runs are to be swept.
    pub sweeps: Vec<Removal>,
}

impl Plan {
    /// The nodes that must be locked to apply the plan, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .removals
            .iter()
            .chain(&self.sweeps)
            .map(|r| r.node.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The export just written, which the cleanup keeps wherever it is seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    /// Its identity (device and inode) on the target, as the target listed it: the same
    /// export seen on the target's machine through another path.
    pub id: Option<(u64, u64)>,
    /// Its id (in its id file): the same export seen from any machine.
    pub mark: Option<ExportId>,
}

impl Keep {
    /// Whether an export with identity `id` (on the target's machine) and id file `mark` is
    /// the one to keep.
    pub fn is(&self, id: Option<(u64, u64)>, mark: Option<&ExportId>) -> bool {
        (id.is_some() && id == self.id) || (mark.is_some() && mark == self.mark.as_ref())
    }
}

/// Plans the removal of `instance`'s exports on the nodes listed (every node but the target),
/// given the new export (`keep`) and the identity of the target's export directory
/// (`target_dir_id`).
pub fn plan(instance: &str, listings: &[NodeListing], target_dir_id: Option<(u64, u64)>, keep: &Keep) -> Plan {
    let mut p = Plan::default();
    for l in listings {
        let names = match &l.exports {
            Ok(n) => n,
            Err(e) => {
                p.skipped.push((l.node.clone(), e.clone()));
                continue;
            }
        };
        if !names.iter().any(|n| n == instance) {
            let same_dir = l.dir_id.is_some() && l.dir_id == target_dir_id;
            if l.leftovers && !same_dir {
                p.sweeps.push(Removal {
                    node: l.node.clone(),
                    export_dir: l.export_dir.clone(),
                });
            }
            continue;
        }
        let same_dir = l.dir_id.is_some() && l.dir_id == target_dir_id;
        let same_export = keep.is(l.export_id, l.mark.as_ref());
        if same_dir || same_export {
            p.shared.push(l.node.clone());
        } else {
            p.removals.push(Removal {
                node: l.node.clone(),
                export_dir: l.export_dir.clone(),
            });
        }
    }
    p
}

/// Lists a node's export directory for [`plan`].
pub fn listing(node: &str, export_dir: &Path, instance: &str, offline: bool) -> NodeListing {
    NodeListing {
        node: node.to_string(),
        export_dir: export_dir.to_path_buf(),
        dir_id: store::identity(export_dir),
        export_id: store::identity(&export_dir.join(instance)),
        mark: export_id::read(&export_dir.join(instance)).ok().flatten(),
        exports: if offline {
            Err("node is offline".into())
        } else {
            store::list_exports(export_dir).map_err(|e| e.to_string())
        },
        leftovers: !offline && store::has_leftovers(export_dir, instance),
    }
}

/// Removes `<export_dir>/<instance>` unless it is missing or is `keep` (by identity or by
/// its id file). `Ok(false)` if there was nothing (left) to remove. An id file that is there
/// but cannot be read is an error: whether the export is the new one cannot be told.
pub fn remove_unless(export_dir: &Path, instance: &str, keep: &Keep) -> Result<bool, CleanupError> {
    let path = export_dir.join(instance);
    let id = store::identity(&path);
    if id.is_none() {
        return Ok(false);
    }
    let mark = export_id::read(&path).map_err(|e| CleanupError::Remove(e.into()))?;
    if keep.is(id, mark.as_ref()) {
        return Ok(false);
    }
    store::remove_export(export_dir, instance)
        .map_err(|e| CleanupError::Remove(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())).into()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(node: &str, dir: u64, exports: Result<Vec<&str>, &str>, export_ino: Option<u64>) -> NodeListing {
        NodeListing {
            node: node.into(),
            export_dir: PathBuf::from(format!("/{node}/export")),
            dir_id: Some((1, dir)),
            export_id: export_ino.map(|i| (1, i)),
            mark: None,
            exports: exports
                .map(|v| v.into_iter().map(String::from).collect())
                .map_err(String::from),
            leftovers: node == "n4",
        }
    }

    #[test]
    fn removes_elsewhere_skips_failures_and_keeps_a_shared_new_export() {
        let listings = [
            l("n1", 10, Ok(vec!["i1", "i2"]), Some(100)),
            l("n3", 30, Err("No exports directory"), None),
            l("n4", 40, Ok(vec!["i2"]), None),
            // n5 shares the target's export directory (#1186).
            l("n5", 20, Ok(vec!["i1"]), Some(200)),
            // n6's directory is another mount of the same export (same inode of i1).
            l("n6", 60, Ok(vec!["i1"]), Some(200)),
        ];
        let keep = Keep {
            id: Some((1, 200)),
            mark: None,
        };
        let p = plan("i1", &listings, Some((1, 20)), &keep);
        assert_eq!(
            p.removals,
            [Removal {
                node: "n1".into(),
                export_dir: "/n1/export".into()
            }]
        );
        assert_eq!(p.skipped, [("n3".to_string(), "No exports directory".to_string())]);
        assert_eq!(p.shared, ["n5", "n6"]);
        // n4 has no export of i1, only leftovers of an interrupted run: swept, not removed.
        assert_eq!(p.sweeps.len(), 1);
        assert_eq!(p.nodes(), ["n1", "n4"]);
        assert_eq!(plan("i9", &listings, Some((1, 20)), &keep).removals, []);
    }

    #[test]
    fn the_new_exports_id_keeps_it_where_device_and_inode_differ() {
        let new = ExportId::new().unwrap();
        let old = ExportId::new().unwrap();
        let with = |node: &str, dir: u64, ino: u64, mark: &ExportId| NodeListing {
            mark: Some(mark.clone()),
            ..l(node, dir, Ok(vec!["i1"]), Some(ino))
        };
        // n2 sees the target's directory from another machine (NFS: another device number);
        // n3 has an old export; n5 an export without an id file (Ganeti's, or an older one).
        let listings = [
            with("n2", 21, 201, &new),
            with("n3", 30, 300, &old),
            l("n5", 50, Ok(vec!["i1"]), Some(500)),
        ];
        let keep = Keep {
            id: Some((1, 200)),
            mark: Some(new.clone()),
        };
        let p = plan("i1", &listings, Some((1, 20)), &keep);
        assert_eq!(p.shared, ["n2"]);
        let removed: Vec<&str> = p.removals.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(removed, ["n3", "n5"]);
        // Without the id (an older master), device and inode decide as before.
        let p = plan("i1", &listings, Some((1, 20)), &Keep { mark: None, ..keep });
        assert_eq!(p.shared, Vec::<String>::new());
    }

    #[test]
    fn remove_unless_reads_the_id_file_right_before_removing() {
        let d = tempfile::tempdir().unwrap();
        let new = ExportId::new().unwrap();
        let keep = Keep {
            id: None,
            mark: Some(new.clone()),
        };
        let export = d.path().join("i1");
        std::fs::create_dir(&export).unwrap();
        export_id::write(&export, &new).unwrap();
        assert!(!remove_unless(d.path(), "i1", &keep).unwrap(), "the new export is kept");
        assert!(export.join(export_id::EXPORT_ID_FILE).exists());
        export_id::write(&export, &ExportId::new().unwrap()).unwrap();
        assert!(
            remove_unless(d.path(), "i1", &keep).unwrap(),
            "another export is removed"
        );
        assert!(!export.exists());
        assert!(!remove_unless(d.path(), "i1", &keep).unwrap(), "nothing left to remove");
    }
}
