//! `OpError`: the typed error of an orchestrated operation, with Ganeti's error kinds and codes.
//!
//! Ganeti raises `OpPrereqError(msg, ecode)` before anything is changed and `OpExecError(msg)`
//! once Exec has started; hooks have their own two classes. We keep the same split so callers
//! (and operators reading messages) can tell "nothing happened" from "something went wrong
//! half-way". The `Display` of an [`OpError`] is Ganeti's message text alone; the block the
//! Ganeti CLI prints (`Failure: prerequisites not met ...`) is [`OpError::ganeti_report`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// Which of Ganeti's error classes an [`OpError`] corresponds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `OpPrereqError`: a prerequisite was not met; nothing was changed.
    Prereq,
    /// `OpExecError`: the operation failed while executing.
    Exec,
    /// `HooksAbort`: a pre-phase hook script failed, so Exec did not run.
    HooksAbort,
    /// `HooksFailure`: the hooks could not be run at all.
    HooksFailure,
    /// `LockError`: a lock could not be acquired (timeout or ordering violation).
    Lock,
    /// `ConfigurationError`: the cluster configuration is unreadable or inconsistent.
    Config,
    /// The operation was stopped by SIGINT/SIGTERM (diskstream's own; Ganeti cancels jobs
    /// through the job queue instead). What it had started was undone; the message says how
    /// far it got.
    Interrupted,
}

/// Ganeti's `ECODE_*` error codes; [`Ecode::as_str`] gives Ganeti's string value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ecode {
    /// `ECODE_RESOLVER`: a name could not be resolved.
    Resolver,
    /// `ECODE_NORES`: not enough resources (e.g. disk space).
    NoRes,
    /// `ECODE_TEMP_NORES`: resources temporarily unavailable.
    TempNoRes,
    /// `ECODE_INVAL`: wrong arguments.
    Inval,
    /// `ECODE_STATE`: the object is in the wrong state (offline node, running instance).
    State,
    /// `ECODE_NOENT`: the entity does not exist.
    NoEnt,
    /// `ECODE_EXISTS`: the entity already exists.
    Exists,
    /// `ECODE_NOTUNIQUE`: the name or UUID does not identify one entity.
    NotUnique,
    /// `ECODE_FAULT`: an internal error.
    Fault,
    /// `ECODE_ENVIRON`: the environment (a node, the OS) is not as required.
    Environ,
}

impl Ecode {
    /// Ganeti's string value of the code, e.g. `wrong_state` for `ECODE_STATE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolver => "resolver_error",
            Self::NoRes => "insufficient_resources",
            Self::TempNoRes => "temp_insufficient_resources",
            Self::Inval => "wrong_input",
            Self::State => "wrong_state",
            Self::NoEnt => "unknown_entity",
            Self::Exists => "already_exists",
            Self::NotUnique => "resource_not_unique",
            Self::Fault => "internal_error",
            Self::Environ => "environment_error",
        }
    }

    /// Ganeti's constant name, e.g. `ECODE_STATE`.
    pub fn ganeti_name(self) -> &'static str {
        match self {
            Self::Resolver => "ECODE_RESOLVER",
            Self::NoRes => "ECODE_NORES",
            Self::TempNoRes => "ECODE_TEMP_NORES",
            Self::Inval => "ECODE_INVAL",
            Self::State => "ECODE_STATE",
            Self::NoEnt => "ECODE_NOENT",
            Self::Exists => "ECODE_EXISTS",
            Self::NotUnique => "ECODE_NOTUNIQUE",
            Self::Fault => "ECODE_FAULT",
            Self::Environ => "ECODE_ENVIRON",
        }
    }
}

impl fmt::Display for Ecode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed error below an [`OpError`] (a driver, snapshot, store, cleanup or transfer error),
/// shared so that an `OpError` stays cheap to clone.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// The error of one operation: Ganeti's class, Ganeti's code and Ganeti's message text, and the
/// typed error that caused it, if any ([`std::error::Error::source`]).
///
/// Ganeti attaches no code to a few prerequisite errors (and none to `OpExecError`); we always
/// attach one, choosing `ECODE_INVAL` for argument errors and `ECODE_FAULT` for execution
/// errors, so a script can always branch on it. The message already says what the source says
/// (in Ganeti's wording); the source is there for callers that branch on it, e.g. the CLI's
/// integrity exit code ([`OpError::engine_error`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}")]
pub struct OpError {
    /// Ganeti's error class.
    pub kind: ErrorKind,
    /// Ganeti's error code.
    pub ecode: Ecode,
    /// The message, in Ganeti's wording where Ganeti has one.
    pub msg: String,
    /// The typed error that caused this one.
    #[source]
    pub source: Option<Source>,
}

/// Two errors are equal if kind, code and message are (the message includes the source's text).
impl PartialEq for OpError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.ecode == other.ecode && self.msg == other.msg
    }
}

impl Eq for OpError {}

impl OpError {
    /// Builds an error of any kind.
    pub fn new(kind: ErrorKind, ecode: Ecode, msg: impl Into<String>) -> Self {
        Self {
            kind,
            ecode,
            msg: msg.into(),
            source: None,
        }
    }

    /// This error, caused by `source`.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The engine error somewhere in this error's source chain (a failed disk transfer), if any.
    pub fn engine_error(&self) -> Option<&diskstream_engine::Error> {
        let mut cur: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|s| s as _);
        while let Some(e) = cur {
            if let Some(engine) = e.downcast_ref::<diskstream_engine::Error>() {
                return Some(engine);
            }
            cur = e.source();
        }
        None
    }

    /// True if and only if the engine found damaged data on the way (the CLI's integrity exit
    /// code).
    pub fn is_integrity(&self) -> bool {
        self.engine_error().is_some_and(diskstream_engine::Error::is_integrity)
    }

    /// An `OpPrereqError(msg, ecode)`.
    pub fn prereq(ecode: Ecode, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Prereq, ecode, msg)
    }

    /// An `OpExecError(msg)` (code `ECODE_FAULT`).
    pub fn exec(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Exec, Ecode::Fault, msg)
    }

    /// A `ConfigurationError(msg)` (code `ECODE_ENVIRON`).
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, Ecode::Environ, msg)
    }

    /// A `LockError(msg)` with the given code (`ECODE_TEMP_NORES` for a timeout,
    /// `ECODE_FAULT` for a programming error such as out-of-order acquisition).
    pub fn lock(ecode: Ecode, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Lock, ecode, msg)
    }

    /// The operation was stopped by a signal (code `ECODE_FAULT`); `msg` says where.
    pub fn interrupted(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Interrupted, Ecode::Fault, msg)
    }

    /// Ganeti's `ExpandNames` error for an unknown object, e.g. `Instance 'x' not known`.
    pub fn not_known(what: &str, name: &str) -> Self {
        Self::prereq(Ecode::NoEnt, format!("{what} '{name}' not known"))
    }

    /// Whether this config error was caused by an I/O error: a cluster config that could not be
    /// read or was refused before its text was (missing, not readable, writable by others), not
    /// one whose text is wrong.
    fn config_unusable(&self) -> bool {
        self.kind == ErrorKind::Config && self.source.as_deref().is_some_and(|s| s.is::<std::io::Error>())
    }

    /// The text the Ganeti CLI prints for this error (`cli.FormatError`).
    pub fn ganeti_report(&self) -> String {
        match self.kind {
            ErrorKind::Prereq => format!(
                "Failure: prerequisites not met for this operation:\n\
                 error type: {}, error details:\n{}",
                self.ecode, self.msg
            ),
            ErrorKind::Exec => format!("Failure: command execution error:\n{}", self.msg),
            ErrorKind::HooksAbort => format!("Failure: hooks execution failed:\n{}", self.msg),
            ErrorKind::HooksFailure => format!("Failure: hooks general failure: {}", self.msg),
            ErrorKind::Lock => format!("Failure: lock error: {}", self.msg),
            // Ganeti's label says the file's text is at fault; a config that is missing or
            // refused unread (a typo in --cluster, a directory others can write) is not corrupt.
            ErrorKind::Config if self.config_unusable() => {
                format!("Cannot use configuration file: {}\nAborting.", self.msg)
            }
            ErrorKind::Config => {
                format!("Corrupt configuration file: {}\nAborting.", self.msg)
            }
            ErrorKind::Interrupted => format!("Interrupted: {}", self.msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecode_strings_match_ganeti() {
        let table = [
            (Ecode::Resolver, "resolver_error", "ECODE_RESOLVER"),
            (Ecode::NoRes, "insufficient_resources", "ECODE_NORES"),
            (Ecode::TempNoRes, "temp_insufficient_resources", "ECODE_TEMP_NORES"),
            (Ecode::Inval, "wrong_input", "ECODE_INVAL"),
            (Ecode::State, "wrong_state", "ECODE_STATE"),
            (Ecode::NoEnt, "unknown_entity", "ECODE_NOENT"),
            (Ecode::Exists, "already_exists", "ECODE_EXISTS"),
            (Ecode::NotUnique, "resource_not_unique", "ECODE_NOTUNIQUE"),
            (Ecode::Fault, "internal_error", "ECODE_FAULT"),
            (Ecode::Environ, "environment_error", "ECODE_ENVIRON"),
        ];
        for (code, value, name) in table {
            assert_eq!(code.as_str(), value);
            assert_eq!(code.to_string(), value);
            assert_eq!(code.ganeti_name(), name);
        }
    }

    #[test]
    fn display_is_the_message_and_report_is_ganetis() {
        let e = OpError::prereq(Ecode::State, "Can't use offline node: node2");
        assert_eq!(e.to_string(), "Can't use offline node: node2");
        assert_eq!(
            e.ganeti_report(),
            "Failure: prerequisites not met for this operation:\n\
             error type: wrong_state, error details:\n\
             Can't use offline node: node2"
        );
        let e = OpError::exec("Could not shutdown instance i1 on node n1");
        assert_eq!(e.kind, ErrorKind::Exec);
        assert_eq!(
            e.ganeti_report(),
            "Failure: command execution error:\nCould not shutdown instance i1 on node n1"
        );
        let e = OpError::not_known("Instance", "inst9");
        assert_eq!(e.to_string(), "Instance 'inst9' not known");
        assert_eq!(e.ecode, Ecode::NoEnt);
    }
}
