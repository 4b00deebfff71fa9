//! Cleanup of old exports (`_CleanupExports`): a pure plan from node listings, then its
//! application.
//!
//! After a successful export to node T, Ganeti removes the instance's export from every other
//! node: nodes whose listing fails are skipped, removal failures are warnings. Ganeti bug
//! #1186: when nodes share one export directory (NFS), "the export on another node" is the
//! export just written, and Ganeti deletes it. [`plan`] never removes a directory that is the
//! new export: it compares export directories and export paths by identity (device and inode,
//! following symlinks), not by node name; [`apply`] checks the identity again right before
//! removing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Plans the removal of `instance`'s exports on the nodes listed (every node but the target),
/// given the identity of the new export (`new_export_id`) and of the target's export
/// directory (`target_dir_id`).
pub fn plan(
    instance: &str,
    listings: &[NodeListing],
    target_dir_id: Option<(u64, u64)>,
    new_export_id: Option<(u64, u64)>,
) -> Plan {
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
        let same_export = l.export_id.is_some() && l.export_id == new_export_id;
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
        exports: if offline {
            Err("node is offline".into())
        } else {
            store::list_exports(export_dir).map_err(|e| e.to_string())
        },
        leftovers: !offline && store::has_leftovers(export_dir, instance),
    }
}

/// Applies one removal: re-checks that the export is still there and is not the new export,
/// then removes it. `Ok(false)` if there was nothing (left) to remove.
pub fn apply_one(r: &Removal, instance: &str, new_export_id: Option<(u64, u64)>) -> Result<bool, CleanupError> {
    remove_unless(&r.export_dir, instance, new_export_id)
}

/// Removes `<export_dir>/<instance>` unless it is missing or is `keep` (by identity).
/// `Ok(false)` if there was nothing (left) to remove.
pub fn remove_unless(export_dir: &Path, instance: &str, keep: Option<(u64, u64)>) -> Result<bool, CleanupError> {
    let path = export_dir.join(instance);
    let id = store::identity(&path);
    if id.is_none() {
        return Ok(false);
    }
    if id == keep {
        return Ok(false);
    }
    store::remove_export(export_dir, instance).map_err(|e| CleanupError::Remove(e.into()))?;
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
        let p = plan("i1", &listings, Some((1, 20)), Some((1, 200)));
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
        assert_eq!(plan("i9", &listings, Some((1, 20)), Some((1, 200))).removals, []);
    }
}
