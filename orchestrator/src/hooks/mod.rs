//! Hook scripts: Ganeti's run-parts runner and the per-node pre/post hook phases.
//!
//! For an operation with hooks path `instance-export`, each node runs the scripts in
//! `<hooks dir>/instance-export-pre.d` (before Exec) or `instance-export-post.d` (after it),
//! following Ganeti's `utils.RunParts`: entries sorted by name, hidden entries ignored, names
//! not matching `^[a-zA-Z0-9_-]+$` or not executable regular files (symlinks are followed)
//! reported as skipped, each script run with no arguments, stdin `/dev/null`, cwd `/`, and an
//! environment reset to exactly the hook environment. Unlike Ganeti, every script also has a
//! timeout: on expiry its whole process group is killed and it counts as failed.
//!
//! A failed pre hook aborts the operation with Ganeti's `HooksAbort` (naming node, script and
//! output); post hook failures are only warnings. The environment is built by [`env`].

pub mod env;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::Access;
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, Signal};

use crate::cluster::{Cluster, Node};
use crate::error::{Ecode, ErrorKind, OpError};

/// Ganeti's `HOOKS_PATH`: the only `PATH` hook scripts get.
pub const HOOKS_PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";

/// The default per-script timeout: Ganeti's `RPC_TMO_NORMAL` (15 minutes), which in Ganeti
/// bounds the whole hooks RPC of a node.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The hook phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStatus {
    /// Not run: bad name, not executable, not a regular file (`HKR_SKIP` = 0).
    Skip,
    /// Ran and failed, could not be executed, or timed out (`HKR_FAIL` = 1).
    Fail,
    /// Ran and exited 0 (`HKR_SUCCESS` = 2).
    Success,
}

impl HookStatus {
    /// Ganeti's numeric value.
    pub fn ganeti_value(self) -> u8 {
        match self {
            Self::Skip => 0,
            Self::Fail => 1,
            Self::Success => 2,
        }
    }
}

/// One script's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookResult {
    /// `<subdir>/<name>`, e.g. `instance-export-pre.d/10-check`.
    pub script: String,
    /// What happened.
    pub status: HookStatus,
    /// Standard output and error combined, stripped (empty for skipped scripts).
    pub output: String,
}

/// The results of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl Default for HooksRunner {
    fn default() -> Self {
        Self::new(DEFAULT_SCRIPT_TIMEOUT)
    }
}

impl HooksRunner {
    /// A runner that kills any script running longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
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
        let subdir = format!("{hpath}-{}.d", phase.as_str());
        self.run_parts(&hooks_dir.join(&subdir), env)
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
        nodes
            .iter()
            .filter(|n| !n.offline)
            .map(|n| NodeHookResults {
                node: n.name.clone(),
                results: self.run_phase(&cluster.hooks_dir(n), hpath, phase, env),
            })
            .collect()
    }

    /// Ganeti's `utils.RunParts(dir, env, reset_env=True)`: `(name, status, output)` per entry.
    pub fn run_parts(&self, dir: &Path, env: &BTreeMap<String, String>) -> Vec<(String, HookStatus, String)> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let path = dir.join(&name);
                if !is_valid_hook_name(&name) || !is_executable_file(&path) {
                    return (name, HookStatus::Skip, String::new());
                }
                let (status, output) = match run_script(&path, env, self.timeout) {
                    Ok(Ran { success: true, output }) => (HookStatus::Success, output),
                    Ok(Ran { success: false, output }) => (HookStatus::Fail, output),
                    Err(e) => (HookStatus::Fail, format!("Hook script execution error: {e}")),
                };
                (name, status, output)
            })
            .collect()
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

struct Ran {
    success: bool,
    output: String,
}

fn run_script(path: &Path, env: &BTreeMap<String, String>, timeout: Duration) -> io::Result<Ran> {
    let (read_end, write_end) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let stderr_end = write_end.try_clone()?;
    let mut child = {
        let mut cmd = Command::new(path);
        cmd.env_clear()
            .envs(env)
            .env("PATH", HOOKS_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::from(stderr_end))
            .process_group(0);
        spawn_retrying_busy(&mut cmd)?
        // `cmd` drops here, closing our copies of the pipe's write end.
    };
    let started = Instant::now();
    let pgid = Pid::from_child(&child);

    let output = Arc::new(Mutex::new(Vec::new()));
    let (eof_tx, eof_rx) = mpsc::channel();
    {
        let output = Arc::clone(&output);
        let mut reader = fs::File::from(read_end);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => output.lock().expect("reader").extend_from_slice(&buf[..n]),
                }
            }
            let _ = eof_tx.send(());
        });
    }
    let (exit_tx, exit_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });

    let kill_group = || {
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    };
    let mut timed_out = false;
    let status = match exit_rx.recv_timeout(timeout) {
        Ok(status) => status?,
        Err(_) => {
            timed_out = true;
            kill_group();
            exit_rx
                .recv()
                .map_err(|_| io::Error::other("waiter thread vanished"))??
        }
    };
    // Output ends when every process of the script closed the pipe; background processes left
    // behind may keep it open, so they get the rest of the timeout and are then killed.
    let left = timeout.saturating_sub(started.elapsed());
    if eof_rx.recv_timeout(left).is_err() {
        kill_group();
        let _ = eof_rx.recv_timeout(Duration::from_secs(1));
    }
    let bytes = output.lock().expect("reader").clone();
    let mut text = String::from_utf8_lossy(&bytes).trim().to_string();
    if timed_out {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!(
            "Hook script killed after the {:.1}s timeout",
            timeout.as_secs_f64()
        ));
    }
    Ok(Ran {
        success: status.success() && !timed_out,
        output: text,
    })
}

/// Spawns `cmd`, retrying briefly on `ETXTBSY`: a script that was just written may still be
/// open for writing in a child forked meanwhile by another thread, until that child execs.
fn spawn_retrying_busy(cmd: &mut Command) -> io::Result<std::process::Child> {
    let busy = rustix::io::Errno::TXTBSY.raw_os_error();
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(busy) && attempts < 50 => {
                attempts += 1;
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
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
