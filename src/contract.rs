//! The JSON contract (`docs/json.md`): every command's `--json` result is one envelope
//! (`schema_version`, `ok`, `op`, then the command's own fields, or `error`, `kind` and
//! `exit_code` on failure), and every `--progress json` line on stderr is one [`Event`].
//! The JSON Schema in `docs/schema/` is generated from these types ([`result_schema`],
//! [`event_schema`]); a unit test fails when the checked-in files are stale.

use std::process::ExitCode;

use diskstream_engine::bench::BenchReport;
use diskstream_engine::ops::{Info, Report};
use diskstream_orchestrator::backup::{ExportResult, NodeExports, RemoveResult};
use schemars::JsonSchema;
use serde::Serialize;

use crate::exit;

/// The version of the contract; raised when a field is removed or changes meaning (added fields
/// do not raise it).
pub const SCHEMA_VERSION: u32 = 1;

/// The command a result or event belongs to, as typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub enum Op {
    #[serde(rename = "image create")]
    ImageCreate,
    #[serde(rename = "image verify")]
    ImageVerify,
    #[serde(rename = "image restore")]
    ImageRestore,
    #[serde(rename = "image scan")]
    ImageScan,
    #[serde(rename = "image info")]
    ImageInfo,
    #[serde(rename = "export")]
    Export,
    #[serde(rename = "list")]
    List,
    #[serde(rename = "remove")]
    Remove,
    #[serde(rename = "demo")]
    Demo,
    #[serde(rename = "bench")]
    Bench,
    #[serde(rename = "pki")]
    Pki,
    #[serde(rename = "agent")]
    Agent,
    /// A usage error before the command was known.
    #[serde(rename = "diskstream")]
    Diskstream,
}

impl Op {
    /// The command as typed ("image create").
    pub fn name(self) -> &'static str {
        match self {
            Self::ImageCreate => "image create",
            Self::ImageVerify => "image verify",
            Self::ImageRestore => "image restore",
            Self::ImageScan => "image scan",
            Self::ImageInfo => "image info",
            Self::Export => "export",
            Self::List => "list",
            Self::Remove => "remove",
            Self::Demo => "demo",
            Self::Bench => "bench",
            Self::Pki => "pki",
            Self::Agent => "agent",
            Self::Diskstream => "diskstream",
        }
    }
}

/// A successful command's result: the envelope and, flattened beside it, the command's fields.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Done_{T}")]
pub struct Done<T> {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always true here.
    #[schemars(extend("const" = true))]
    pub ok: bool,
    /// The command.
    pub op: Op,
    /// The command's own fields.
    #[serde(flatten)]
    pub body: T,
}

/// The class of a failure: its JSON `kind`, which decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Exit 1: anything not named below (an I/O error, an impossible request).
    Error,
    /// Exit 2: a bad or missing argument.
    Usage,
    /// Exit 3: the data is damaged.
    Integrity,
    /// Exit 1: a manifest and an image that are not a pair.
    Mismatch,
    /// Exit 4: a prerequisite was not met (Ganeti's OpPrereqError); nothing was changed.
    Prereq,
    /// Exit 4: a pre hook vetoed (Ganeti's HooksAbort); nothing was changed.
    HooksAbort,
    /// Exit 5: a lock could not be taken in time (Ganeti's LockError).
    Lock,
    /// Exit 1: the operation failed while executing (Ganeti's OpExecError).
    Exec,
    /// Exit 1: the hooks could not be run (Ganeti's HooksFailure).
    HooksFailure,
    /// Exit 1: the cluster configuration is unreadable or inconsistent.
    Config,
    /// Exit 130/143/129: stopped by SIGINT/SIGTERM/SIGHUP.
    Interrupted,
}

impl Kind {
    /// The exit code of this kind (`signal_code` for an interruption: 130 or 143).
    pub fn exit_code(self, signal_code: u8) -> u8 {
        match self {
            Self::Usage => exit::EXIT_USAGE,
            Self::Integrity => exit::EXIT_INTEGRITY,
            Self::Prereq | Self::HooksAbort => exit::EXIT_REFUSED,
            Self::Lock => exit::EXIT_BUSY,
            Self::Interrupted => signal_code,
            Self::Error | Self::Mismatch | Self::Exec | Self::HooksFailure | Self::Config => exit::EXIT_FAILURE,
        }
    }
}

/// A failed command's result.
#[derive(Serialize, JsonSchema)]
pub struct Failed {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always false here.
    #[schemars(extend("const" = false))]
    pub ok: bool,
    /// The command.
    pub op: Op,
    /// What went wrong, for people.
    pub error: String,
    /// The class of the failure.
    pub kind: Kind,
    /// The process's exit code (the table in docs/json.md).
    pub exit_code: u8,
    /// Ganeti's `ECODE_*` string (cluster commands, where Ganeti has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecode: Option<&'static str>,
    /// True when a signal stopped the command.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub interrupted: bool,
    /// The signal ("SIGINT", "SIGTERM", "SIGHUP") that stopped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<&'static str>,
    /// Whether an interrupted export had completed before the signal was noticed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// The completed export's fields when `completed` is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<ExportResult>>,
    /// What caused the error, where `error` (Ganeti's wording) does not say it: e.g. each
    /// failed disk's own error (`disk/0: write ...: No space left on device ...`) under Ganeti's
    /// `Export failed, errors in export finalization, disk export: disk(s) 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl Failed {
    /// A failure of `op` of class `kind` (exit code from the table; 130 for an interruption
    /// unless [`Self::signal`] says otherwise).
    pub fn new(op: Op, kind: Kind, error: impl Into<String>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            ok: false,
            op,
            error: error.into(),
            kind,
            exit_code: kind.exit_code(exit::EXIT_SIGINT),
            ecode: None,
            interrupted: kind == Kind::Interrupted,
            signal: None,
            completed: None,
            result: None,
            cause: None,
        }
    }

    /// Interrupted by `signal` (its name), exiting with `code`.
    pub fn signal(mut self, signal: &'static str, code: u8) -> Self {
        self.signal = Some(signal);
        self.exit_code = code;
        self
    }

    /// Prints the result if `json` and returns the exit code (the caller prints the message).
    pub fn emit(&self, json: bool) -> ExitCode {
        tracing::info!(
            kind = ?self.kind,
            exit_code = self.exit_code,
            "{} ended: failed: {}",
            self.op.name(),
            self.error
        );
        if json {
            // A failure exits non-zero whether or not its object could be printed.
            let _ = print_json(self);
        }
        exit::code(self.exit_code)
    }
}

/// The result of `export --dry-run`.
#[derive(Serialize, JsonSchema)]
pub struct DryRun {
    /// Always true.
    pub dry_run: bool,
    /// Always null: nothing was exported.
    pub result: Option<()>,
}

/// The result of `list`.
#[derive(Serialize, JsonSchema)]
pub struct Listing {
    /// One entry per node, sorted by name.
    pub nodes: Vec<NodeExports>,
}

/// The result of `demo`.
#[derive(Serialize, JsonSchema)]
pub struct DemoResult {
    /// The directory the demo cluster was built in (kept for a look).
    #[serde(serialize_with = "diskstream_engine::report::lossy_path")]
    pub dir: std::path::PathBuf,
    /// With `--agents`: where the node agents ran (absent without `--agents`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: Option<DemoAgents>,
}

/// The node agents of `demo --agents` (all stopped when the demo ends).
#[derive(Serialize, JsonSchema)]
pub struct DemoAgents {
    /// `netns`: one network namespace per node (as root); `loopback`: 127.0.0.1 ports.
    pub mode: AgentsMode,
    /// One entry per node, node1 first.
    pub nodes: Vec<DemoAgent>,
}

/// Where `demo --agents` ran its agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentsMode {
    /// Each agent in its own network namespace, on a bridge (as root with iproute2).
    Netns,
    /// Every agent on 127.0.0.1, each on a port that was free at the start.
    Loopback,
}

/// One node's agent in `demo --agents`.
#[derive(Serialize, JsonSchema)]
pub struct DemoAgent {
    /// The node.
    pub node: String,
    /// Where its agent listened (`host:port`).
    pub address: String,
    /// Its network namespace (netns mode), removed when the demo ended.
    pub namespace: Option<String>,
}

/// The result of `pki init` and `pki issue`.
#[derive(Serialize, JsonSchema)]
pub struct PkiResult {
    /// The cluster's name (the CA's subject).
    pub cluster: String,
    /// The PKI directory.
    #[serde(serialize_with = "diskstream_engine::report::lossy_path")]
    pub pki_dir: std::path::PathBuf,
    /// The CA certificate.
    #[serde(serialize_with = "diskstream_engine::report::lossy_path")]
    pub ca_cert: std::path::PathBuf,
    /// What happened to the CA: `created` (init), `replaced` (init --force over an existing
    /// CA) or `kept` (issue).
    pub ca: PkiStatus,
    /// The node certificates written, in the config's order (issue: the one node).
    pub nodes: Vec<PkiNode>,
}

/// What a `pki` command did to a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PkiStatus {
    /// It did not exist and was written.
    Created,
    /// It existed and was replaced by a new one (new key).
    Replaced,
    /// It existed and was left as it was.
    Kept,
}

/// One node certificate written by `pki`.
#[derive(Serialize, JsonSchema)]
pub struct PkiNode {
    /// The node.
    pub node: String,
    /// Its certificate (PEM).
    #[serde(serialize_with = "diskstream_engine::report::lossy_path")]
    pub cert: std::path::PathBuf,
    /// Its private key (PEM, mode 0600).
    #[serde(serialize_with = "diskstream_engine::report::lossy_path")]
    pub key: std::path::PathBuf,
    /// `created`, or `replaced` when a certificate of that node existed (renewed).
    pub status: PkiStatus,
}

/// Every `--json` result: the schema's top level (one of these).
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum AnyResult {
    /// `image create`, `verify`, `restore`, `scan`.
    #[schemars(extend("properties" = { "op": { "enum": ["image create", "image verify", "image restore", "image scan"] } }))]
    Transfer(Done<Report>),
    /// `image info`.
    #[schemars(extend("properties" = { "op": { "const": "image info" } }))]
    Info(Done<Info>),
    /// `export`.
    #[schemars(extend("properties" = { "op": { "const": "export" } }))]
    Export(Done<ExportResult>),
    /// `export --dry-run`.
    #[schemars(extend("properties" = { "op": { "const": "export" } }))]
    DryRun(Done<DryRun>),
    /// `list`.
    #[schemars(extend("properties" = { "op": { "const": "list" } }))]
    List(Done<Listing>),
    /// `remove`.
    #[schemars(extend("properties" = { "op": { "const": "remove" } }))]
    Remove(Done<RemoveResult>),
    /// `demo`.
    #[schemars(extend("properties" = { "op": { "const": "demo" } }))]
    Demo(Done<DemoResult>),
    /// `pki init`, `pki issue`.
    #[schemars(extend("properties" = { "op": { "const": "pki" } }))]
    Pki(Done<PkiResult>),
    /// `bench`.
    #[schemars(extend("properties" = { "op": { "const": "bench" } }))]
    Bench(Done<BenchReport>),
    /// Any command that failed.
    Failed(Failed),
}

/// `--progress FORMAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressFormat {
    /// One JSON object per line on stderr (docs/json.md).
    Json,
}

/// One `--progress json` line on stderr.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A job message (Ganeti's job log; `export`, `remove`).
    Message {
        /// The command.
        op: Op,
        /// Seconds since the Unix epoch.
        time: f64,
        /// "info" or "warning".
        level: &'static str,
        /// The message.
        text: &'a str,
    },
    /// Bytes done so far.
    Progress(ProgressEvent<'a>),
}

/// How far a transfer is.
#[derive(Serialize, JsonSchema)]
pub struct ProgressEvent<'a> {
    /// The command.
    pub op: Op,
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The disk's index (export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<usize>,
    /// The disk's label, `disk/0` or `snapshot/0` (export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a str>,
    /// Disk bytes done.
    pub done_bytes: u64,
    /// Disk bytes in all (0 if unknown).
    pub total_bytes: u64,
    /// Disk bytes per second so far.
    pub bytes_per_s: f64,
    /// Percent done, if the total is known.
    pub percent: Option<f64>,
    /// Seconds left, if known.
    pub eta_s: Option<f64>,
    /// Ganeti's progress line (export).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
}

/// Prints one JSON line on stdout; false (and a message on stderr) if it could not: the caller
/// must not then exit 0, since a frontend reading stdout got no result.
pub fn print_json(v: &impl Serialize) -> bool {
    use std::io::Write;
    let printed = serde_json::to_string(v)
        .map_err(|e| e.to_string())
        .and_then(|s| writeln!(std::io::stdout().lock(), "{s}").map_err(|e| e.to_string()));
    match printed {
        Ok(()) => true,
        Err(e) => {
            errln!("diskstream: error: cannot print the JSON result: {e}");
            false
        }
    }
}

/// Prints a successful result if `json`; returns exit code 0.
pub fn done(op: Op, body: impl Serialize, json: bool) -> ExitCode {
    let done = Done {
        schema_version: SCHEMA_VERSION,
        ok: true,
        op,
        body,
    };
    if json && !print_json(&done) {
        return exit::code(exit::EXIT_FAILURE);
    }
    ExitCode::SUCCESS
}

/// One `--progress json` line on stderr.
pub fn emit_event(e: &Event<'_>) {
    use std::io::Write;
    if let Ok(s) = serde_json::to_string(e) {
        let _ = writeln!(std::io::stderr().lock(), "{s}");
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `diskstream schema WHICH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    /// Every `--json` result (docs/schema/result.schema.json).
    Result,
    /// Every `--progress json` line (docs/schema/progress.schema.json).
    Progress,
}

impl SchemaKind {
    /// The schema's text.
    pub fn schema(self) -> String {
        match self {
            Self::Result => result_schema(),
            Self::Progress => event_schema(),
        }
    }
}

/// The JSON Schema of every `--json` result (`docs/schema/result.schema.json`).
pub fn result_schema() -> String {
    pretty(schemars::schema_for!(AnyResult))
}

/// The JSON Schema of every `--progress json` line (`docs/schema/progress.schema.json`).
pub fn event_schema() -> String {
    pretty(schemars::schema_for!(Event<'static>))
}

fn pretty(s: schemars::Schema) -> String {
    let mut out = serde_json::to_string_pretty(&s).expect("a schema serializes");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in schema files are what the types generate. `DISKSTREAM_BLESS=1 cargo test
    /// --bin diskstream schema` rewrites them.
    #[test]
    fn schema_files_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema");
        for (name, text) in [
            ("result.schema.json", result_schema()),
            ("progress.schema.json", event_schema()),
        ] {
            let path = dir.join(name);
            if std::env::var_os("DISKSTREAM_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} is stale: run DISKSTREAM_BLESS=1 cargo test --bin diskstream schema",
                path.display()
            );
        }
    }

    #[test]
    fn every_kind_has_its_exit_code() {
        use Kind::*;
        let codes: Vec<u8> = [Error, Usage, Integrity, Prereq, HooksAbort, Lock, Interrupted]
            .iter()
            .map(|k| k.exit_code(143))
            .collect();
        assert_eq!(codes, [1, 2, 3, 4, 4, 5, 143]);
    }
}
