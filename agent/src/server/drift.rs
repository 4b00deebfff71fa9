//! The master's cluster config against this agent's: a call from a master whose config says
//! something else (an instance's disks, commands, nodes) is refused before it runs, since the
//! agent acts on its own copy (a disk path changed on the master only exported the old disk,
//! and `--remove-instance` deleted another instance's disk).

use hyper::header::HeaderValue;

use super::Agent;
use crate::proto::READ_ONLY_CALLS;

impl Agent {
    /// Why a call of `method` that carries the master's config digest `theirs` is refused, or
    /// `None` to run it: the digests are the same, the call only reads the node's export
    /// directory ([`READ_ONLY_CALLS`]), or the master sent none (an older master).
    pub(super) fn config_differs(&self, method: &str, theirs: Option<&HeaderValue>) -> Option<String> {
        let theirs = theirs?;
        if theirs.as_bytes() == self.config.as_bytes() || READ_ONLY_CALLS.contains(&method) {
            return None;
        }
        Some(format!(
            "the agent of node {} runs with a cluster config that says something else than the \
             master's ({} here, loaded from {} when the agent started; {} on the master): copy \
             the master's config to every node and restart their agents",
            self.node,
            self.config,
            self.cluster.path().display(),
            String::from_utf8_lossy(theirs.as_bytes()),
        ))
    }
}
