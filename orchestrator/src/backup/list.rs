//! The export query (`gnt-backup list`) and Ganeti's `Node Export` table.

use serde::{Serialize, Serializer};

use crate::cluster::{Cluster, Node};
use crate::error::OpError;
use crate::hooks::HooksRunner;
use crate::node::local::LocalNodeOps;
use crate::node::NodeOps;

/// One node's exports for `list`, or why they could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct NodeExports {
    /// Node name.
    pub node: String,
    /// Its exports (sorted), or the error (`"exports": null, "error": ...` in JSON).
    #[serde(flatten, serialize_with = "exports_json")]
    #[schemars(with = "ExportsJson")]
    pub exports: Result<Vec<String>, String>,
}

/// The schema of [`exports_json`]'s output.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ExportsJson {
    /// The node's exports, sorted.
    Listed { exports: Vec<String> },
    /// Why they could not be listed.
    Failed { exports: Option<()>, error: String },
}

/// `"exports": [...]`, or `"exports": null, "error": "..."`, as the CLI's JSON shows them.
fn exports_json<S: Serializer>(r: &Result<Vec<String>, String>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Json<'a> {
        Listed { exports: &'a [String] },
        Failed { exports: Option<()>, error: &'a str },
    }
    match r {
        Ok(l) => Json::Listed { exports: l },
        Err(e) => Json::Failed {
            exports: None,
            error: e,
        },
    }
    .serialize(s)
}

/// The export query on this machine's view of the nodes ([`LocalNodeOps`]); see [`list_on`].
pub fn list(cluster: &Cluster, nodes: &[String]) -> Result<Vec<NodeExports>, OpError> {
    let local = LocalNodeOps::new(cluster, HooksRunner::default(), Default::default());
    list_on(cluster, &local, nodes)
}

/// The export query (`gnt-backup list`): every node (or those in `nodes`), sorted by name;
/// lockless and live, as in Ganeti. An offline node reports an error.
pub fn list_on(cluster: &Cluster, ops: &dyn NodeOps, nodes: &[String]) -> Result<Vec<NodeExports>, OpError> {
    let mut selected: Vec<&Node> = Vec::new();
    if nodes.is_empty() {
        selected.extend(cluster.nodes());
    } else {
        for n in nodes {
            let node = cluster.expand_node(n, None)?;
            if !selected.iter().any(|s| s.name == node.name) {
                selected.push(node);
            }
        }
    }
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(selected
        .into_iter()
        .map(|n| NodeExports {
            node: n.name.clone(),
            exports: if n.offline {
                Err("node is offline".into())
            } else {
                ops.list_exports(&n.name).map_err(|e| e.to_string())
            },
        })
        .collect())
}

/// Ganeti's `Node Export` table (`gnt-backup list`): columns padded and separated by a space,
/// or joined by `separator` without padding; a node that could not be listed shows `?`.
pub fn format_table(rows: &[NodeExports], headers: bool, separator: Option<&str>) -> String {
    let mut table: Vec<[String; 2]> = Vec::new();
    if headers {
        table.push(["Node".into(), "Export".into()]);
    }
    // Control characters in a name (a directory anyone who can write the export directory
    // names) are escaped: a name cannot forge a row or send the terminal an escape sequence.
    let esc = |s: &str| diskstream_engine::report::escape_controls(s).into_owned();
    for r in rows {
        match &r.exports {
            Ok(list) => table.extend(list.iter().map(|e| [esc(&r.node), esc(e)])),
            Err(_) => table.push([esc(&r.node), "?".into()]),
        }
    }
    let width = table.iter().map(|row| row[0].len()).max().unwrap_or(0);
    let mut out = String::new();
    for [node, export] in table {
        match separator {
            Some(sep) => out.push_str(&format!("{node}{sep}{export}\n")),
            None => out.push_str(&format!("{node:<width$} {export}\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<NodeExports> {
        vec![
            NodeExports {
                node: "node1.example.com".into(),
                exports: Ok(vec!["inst1.example.com".into()]),
            },
            NodeExports {
                node: "node2.example.com".into(),
                exports: Ok(vec!["inst2.example.com".into()]),
            },
            NodeExports {
                node: "node3.example.com".into(),
                exports: Err("No exports directory".into()),
            },
            NodeExports {
                node: "node4.example.com".into(),
                exports: Ok(vec![]),
            },
        ]
    }

    #[test]
    fn table_is_ganetis() {
        let rows = rows();
        assert_eq!(
            format_table(&rows, true, None),
            "Node              Export\n\
             node1.example.com inst1.example.com\n\
             node2.example.com inst2.example.com\n\
             node3.example.com ?\n"
        );
        assert_eq!(
            format_table(&rows[..1], false, Some("|")),
            "node1.example.com|inst1.example.com\n"
        );
    }

    #[test]
    fn control_characters_in_names_neither_forge_rows_nor_reach_the_terminal() {
        let rows = vec![NodeExports {
            node: "node2.example.com".into(),
            exports: Ok(vec![
                "x\nnode9.example.com inst9".into(),
                "\u{1b}]0;pwned\u{7}clr".into(),
            ]),
        }];
        let t = format_table(&rows, false, Some(","));
        assert_eq!(
            t,
            "node2.example.com,x\\nnode9.example.com inst9\nnode2.example.com,\\u{1b}]0;pwned\\u{7}clr\n"
        );
    }

    #[test]
    fn json_has_the_clis_fields() {
        let v = serde_json::to_value(rows()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                { "node": "node1.example.com", "exports": ["inst1.example.com"] },
                { "node": "node2.example.com", "exports": ["inst2.example.com"] },
                { "node": "node3.example.com", "exports": null, "error": "No exports directory" },
                { "node": "node4.example.com", "exports": [] },
            ])
        );
    }
}
