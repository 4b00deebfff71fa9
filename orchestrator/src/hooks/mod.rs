//! Hook scripts: Ganeti's run-parts runner and the per-node pre/post hook phases.
//!
//! For an operation with hooks path `instance-export`, each node runs the scripts in
//! `<hooks dir>/instance-export-pre.d` (before Exec) or `instance-export-post.d` (after it),
//! following Ganeti's `utils.RunParts`: entries sorted by name, hidden entries ignored, names
//! not matching `^[a-zA-Z0-9_-]+$` or not executable regular files (symlinks are followed)
//! reported as skipped, each script run with no arguments, stdin `/dev/null`, cwd `/`, and an
//! environment reset to exactly the hook environment. Unlike Ganeti, every script also has a
//! timeout: on expiry its whole process group is killed and it counts as failed. A script
//! that runs long is reported every `report_interval` ("... still running after 60 s"); when
//! the stop flag is set (SIGINT/SIGTERM) the script's process group is killed at once and no
//! further script runs. Each script is watched by a guard process (`/bin/sh`, its own process
//! group) that holds the read end of a pipe from us: if diskstream dies without disarming it
//! (SIGKILL), the pipe closes and the guard kills the script's process group, so a hook never
//! outlives a killed diskstream. (`PR_SET_PDEATHSIG` would need code between fork and exec,
//! which std only offers as `unsafe` `pre_exec`, and it reaches only the script itself, not
//! the processes it started.)
//!
//! A script's output ends when every process holding its stdout/stderr has closed them. A
//! script that exits but leaves a background process holding them (`sleep 600 &`) would stall
//! the operation until that process ends; once the script has exited, leftovers get
//! [`OUTPUT_GRACE`], then the script's process group is killed, the output ends there with a
//! note saying so, and `report` is told. The script's own exit status still decides its result.
//!
//! Output is bounded: only the last [`OUTPUT_TAIL`] bytes of a script's output are kept (as
//! Ganeti keeps a script's "recent output"), the rest is read and discarded, and the result
//! says how many bytes were left out.
//!
//! A failed pre hook aborts the operation with Ganeti's `HooksAbort` (naming node, script and
//! output); post hook failures are only warnings. The environment is built by [`env`].

pub mod env;
mod script;

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::Access;

use crate::cluster::{Cluster, Node};
use crate::error::{Ecode, ErrorKind, OpError};

/// Ganeti's `HOOKS_PATH`: the only `PATH` hook scripts get.
pub const HOOKS_PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";

pub use crate::cluster::{DEFAULT_REPORT_INTERVAL, DEFAULT_SCRIPT_TIMEOUT};
pub use script::OUTPUT_GRACE;

/// How much of a script's output is kept: the last 64 KiB.
pub const OUTPUT_TAIL: usize = 64 * 1024;

/// How often a running script is checked for its timeout, the stop flag and reports.
const POLL: Duration = Duration::from_millis(50);

/// The hook phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// Before Exec; a failure aborts the operation.
    Pre,
    /// After Exec; failures are warnings.
    Post,
}

impl Phase {
    /// `pre` or `post` (`GANETI_HOOKS_PHASE`, and the directory suffix).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pre => "pre",
            Self::Post => "post",
        }
    }
}

/// The outcome of one script (Ganeti's `HKR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HookStatus {
    /// Not run: bad name, not executable, not a regular file (`HKR_SKIP` = 0).
    Skip,
    /// Ran and failed, could not be executed, or timed out (`HKR_FAIL` = 1).
    Fail,
    /// Ran and exited 0 (`HKR_SUCCESS` = 2).
    Success,
}

impl HookStatus {}

/// One script's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookResult {
    /// `<subdir>/<name>`, e.g. `instance-export-pre.d/10-check`.
    pub script: String,
    /// What happened.
    pub status: HookStatus,
    /// Standard output and error combined, stripped (empty for skipped scripts).
    pub output: String,
}

/// The results of one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeHookResults {
    /// The node name.
    pub node: String,
    /// Its scripts' results, in execution order.
    pub results: Vec<HookResult>,
}

/// Runs hook directories with a per-script timeout.
#[derive(Debug, Clone)]
pub struct HooksRunner {
    timeout: Duration,
    report_interval: Duration,
    stop: Option<Arc<AtomicBool>>,
}

impl Default for HooksRunner {
    fn default() -> Self {
        Self::new(DEFAULT_SCRIPT_TIMEOUT)
    }
}

/// A note for the operator about a running script: that it still runs (information), or that
/// processes it left behind were killed (a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// What happened, naming the script (and, above the runner, its node).
    pub text: String,
    /// Whether it is a warning rather than information.
    pub warning: bool,
}

impl Note {
    /// Information: `text`.
    pub fn info(text: String) -> Self {
        Self { text, warning: false }
    }

    /// A warning: `text`.
    pub fn warning(text: String) -> Self {
        Self { text, warning: true }
    }

    /// The same note with its text changed by `f` (a name put in front, a node added).
    pub fn map(self, f: impl FnOnce(String) -> String) -> Self {
        Self {
            text: f(self.text),
            warning: self.warning,
        }
    }
}

/// Where notes about running scripts go.
pub type Report<'a> = &'a dyn Fn(Note);

impl HooksRunner {
    /// A runner that kills any script running longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            report_interval: DEFAULT_REPORT_INTERVAL,
            stop: None,
        }
    }

    /// Reports a running script every `interval` (default [`DEFAULT_REPORT_INTERVAL`]).
    pub fn with_report_interval(mut self, interval: Duration) -> Self {
        self.report_interval = interval.max(POLL);
        self
    }

    /// Kills the running script's process group, and runs no further script, once `stop` is set.
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The per-script timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the stop flag is set.
    pub fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// Runs `<hooks_dir>/<hpath>-<phase>.d` (Ganeti's `HooksRunner.RunLocalHooks`). A missing
    /// directory gives no results.
    pub fn run_phase(
        &self,
        hooks_dir: &Path,
        hpath: &str,
        phase: Phase,
        env: &BTreeMap<String, String>,
    ) -> Vec<HookResult> {
        self.run_phase_reporting(hooks_dir, hpath, phase, env, &|_| {})
    }

    /// [`HooksRunner::run_phase`], telling `report` about scripts that run long.
    pub fn run_phase_reporting(
        &self,
        hooks_dir: &Path,
        hpath: &str,
        phase: Phase,
        env: &BTreeMap<String, String>,
        report: Report<'_>,
    ) -> Vec<HookResult> {
        let subdir = format!("{hpath}-{}.d", phase.as_str());
        let named = |n: Note| report(n.map(|msg| format!("Hook {subdir}/{msg}")));
        self.run_parts_reporting(&hooks_dir.join(&subdir), env, &named)
            .into_iter()
            .map(|(name, status, output)| HookResult {
                script: format!("{subdir}/{name}"),
                status,
                output,
            })
            .collect()
    }

    /// Runs a phase on each node (in the given order), from each node's hooks directory.
    /// Offline nodes are skipped, as Ganeti ignores them.
    pub fn run_on_nodes(
        &self,
        cluster: &Cluster,
        nodes: &[&Node],
        hpath: &str,
        phase: Phase,
        env: &BTreeMap<String, String>,
    ) -> Vec<NodeHookResults> {
        self.run_on_nodes_reporting(cluster, nodes, hpath, phase, env, &|_| {})
    }

    /// [`HooksRunner::run_on_nodes`], telling `report` about scripts that run long
    /// (`Hook instance-export-pre.d/10-x on node1 still running after 60 s`). Once the stop
    /// flag is set, the remaining nodes are not run.
    pub fn run_on_nodes_reporting(
        &self,
        cluster: &Cluster,
        nodes: &[&Node],
        hpath: &str,
        phase: Phase,
        env: &BTreeMap<String, String>,
        report: Report<'_>,
    ) -> Vec<NodeHookResults> {
        let mut out = Vec::new();
        for n in nodes.iter().filter(|n| !n.offline) {
            if self.stopped() {
                break;
            }
            let named = |note: Note| report(note.map(|msg| on_node(&msg, &n.name)));
            out.push(NodeHookResults {
                node: n.name.clone(),
                results: self.run_phase_reporting(&cluster.hooks_dir(n), hpath, phase, env, &named),
            });
        }
        out
    }

    /// Ganeti's `utils.RunParts(dir, env, reset_env=True)`: `(name, status, output)` per entry.
    pub fn run_parts(&self, dir: &Path, env: &BTreeMap<String, String>) -> Vec<(String, HookStatus, String)> {
        self.run_parts_reporting(dir, env, &|_| {})
    }

    /// [`HooksRunner::run_parts`], telling `report` (`<name> still running after N s`) about
    /// scripts that run long. Once the stop flag is set, no further script runs.
    pub fn run_parts_reporting(
        &self,
        dir: &Path,
        env: &BTreeMap<String, String>,
        report: Report<'_>,
    ) -> Vec<(String, HookStatus, String)> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if self.stopped() {
                break;
            }
            let path = dir.join(&name);
            if !is_valid_hook_name(&name) || !is_executable_file(&path) {
                out.push((name, HookStatus::Skip, String::new()));
                continue;
            }
            let named = |n: Note| report(n.map(|msg| format!("{name} {msg}")));
            let (status, output) = match self.run_script(&path, env, &named) {
                Ok(Ran { success: true, output }) => (HookStatus::Success, output),
                Ok(Ran { success: false, output }) => (HookStatus::Fail, output),
                Err(e) => (HookStatus::Fail, format!("Hook script execution error: {e}")),
            };
            out.push((name, status, output));
        }
        out
    }
}

/// `Hook DIR/SCRIPT REST` said of `node`: `Hook DIR/SCRIPT on NODE REST` (hook paths hold no
/// spaces: directory names are ours, script names pass [`is_valid_hook_name`]).
pub fn on_node(msg: &str, node: &str) -> String {
    let head = msg.strip_prefix("Hook ").and_then(|rest| rest.find(' ').map(|i| 5 + i));
    match head {
        Some(i) => format!("{} on {node}{}", &msg[..i], &msg[i..]),
        None => format!("{msg} (on {node})"),
    }
}

/// Ganeti's `EXT_PLUGIN_MASK`: `^[a-zA-Z0-9_-]+$`.
pub fn is_valid_hook_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Ganeti's `IsExecutable`: a regular file (after following symlinks) we may execute.
fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file()) && rustix::fs::access(path, Access::EXEC_OK).is_ok()
}

pub(crate) struct Ran {
    success: bool,
    output: String,
}

/// The last `cap` bytes of a stream, and how many bytes before them were dropped.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    /// An empty tail keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            cap,
            dropped: 0,
        }
    }

    /// Appends `data`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.dropped += (self.buf.len() + data.len() - self.cap) as u64;
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.cap..]);
            return;
        }
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..over);
        self.dropped += over as u64;
        self.buf.extend(data);
    }

    /// The kept bytes as text (stripped), preceded by a note of how much was left out.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if self.dropped == 0 {
            text
        } else {
            format!(
                "[{} bytes of earlier output not kept; the last {} bytes follow]\n{text}",
                self.dropped,
                self.buf.len()
            )
        }
    }
}

/// A pre phase's verdict: Ganeti's `HooksAbort` if any script failed on any node. The message
/// lists `node: N, script: S, output: O` per failure, as Ganeti's CLI prints it.
pub fn check_pre_results(results: &[NodeHookResults]) -> Result<(), OpError> {
    let mut lines = Vec::new();
    for node in results {
        for r in node.results.iter().filter(|r| r.status == HookStatus::Fail) {
            if r.output.is_empty() {
                lines.push(format!("  node: {}, script: {} (no output)", node.node, r.script));
            } else {
                lines.push(format!(
                    "  node: {}, script: {}, output: {}",
                    node.node, r.script, r.output
                ));
            }
        }
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(OpError::new(ErrorKind::HooksAbort, Ecode::Environ, lines.join("\n")))
    }
}

/// A post phase's warnings: `On N script S failed, output: O` per failure (Ganeti logs these
/// and the operation still succeeds).
pub fn post_warnings(results: &[NodeHookResults]) -> Vec<String> {
    results
        .iter()
        .flat_map(|node| {
            node.results
                .iter()
                .filter(|r| r.status == HookStatus::Fail)
                .map(move |r| format!("On {} script {} failed, output: {}", node.node, r.script, r.output))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_and_counts_the_rest() {
        let mut t = Tail::new(8);
        t.push(b"abc");
        assert_eq!(t.text(), "abc");
        t.push(b"defgh");
        assert_eq!(t.text(), "abcdefgh");
        t.push(b"ij");
        assert_eq!(
            t.text(),
            "[2 bytes of earlier output not kept; the last 8 bytes follow]\ncdefghij"
        );
        t.push(b"0123456789");
        assert_eq!(
            t.text(),
            "[12 bytes of earlier output not kept; the last 8 bytes follow]\n23456789"
        );
    }

    #[test]
    fn hook_names_follow_ext_plugin_mask() {
        for ok in ["10-check", "a_b", "Z9"] {
            assert!(is_valid_hook_name(ok), "{ok}");
        }
        for bad in ["", "a.sh", "a b", "a~", ".hidden", "é"] {
            assert!(!is_valid_hook_name(bad), "{bad}");
        }
    }

    #[test]
    fn pre_failures_abort_with_node_script_and_output() {
        let results = vec![NodeHookResults {
            node: "node1".into(),
            results: vec![
                HookResult {
                    script: "instance-export-pre.d/a".into(),
                    status: HookStatus::Success,
                    output: String::new(),
                },
                HookResult {
                    script: "instance-export-pre.d/b".into(),
                    status: HookStatus::Fail,
                    output: "no space".into(),
                },
                HookResult {
                    script: "instance-export-pre.d/c".into(),
                    status: HookStatus::Fail,
                    output: String::new(),
                },
            ],
        }];
        let e = check_pre_results(&results).unwrap_err();
        assert_eq!(e.kind, ErrorKind::HooksAbort);
        assert_eq!(
            e.ganeti_report(),
            "Failure: hooks execution failed:\n\
             \x20 node: node1, script: instance-export-pre.d/b, output: no space\n\
             \x20 node: node1, script: instance-export-pre.d/c (no output)"
        );
        assert_eq!(
            post_warnings(&results),
            [
                "On node1 script instance-export-pre.d/b failed, output: no space",
                "On node1 script instance-export-pre.d/c failed, output: "
            ]
        );
        assert!(check_pre_results(&results[..0]).is_ok());
    }
}
