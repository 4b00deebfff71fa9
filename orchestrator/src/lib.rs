//! The orchestrator: Ganeti's `LUBackupExport` (`gnt-backup export`) rebuilt around the
//! diskstream engine.
//!
//! # A tour
//!
//! An export is a cluster operation that runs in Ganeti's fixed order: take the big cluster
//! lock shared, check the arguments, expand names, lock level by level, check prerequisites,
//! run the pre hooks, stop here on `--dry-run`, execute, run the post hooks. This crate holds
//! the pieces that order is made of; the engine moves the bytes.
//!
//! * [`cluster`] loads the cluster description (a TOML file, the cluster's source of truth)
//!   and answers Ganeti's name lookups: `inst1` expands to `inst1.example.com`, unknown names
//!   fail with `Instance 'X' not known`. Operations that change the cluster rewrite the file
//!   atomically under a lock.
//! * [`error`] is [`OpError`]: Ganeti's error class (prerequisite, execution, hooks, lock,
//!   config), Ganeti's `ECODE_*` code and Ganeti's message text.
//! * [`locking`] is the lock manager. Levels are ordered (`cluster < instance < nodegroup <
//!   node < node-res < network`) and acquired strictly in that order, names sorted within a
//!   level. Locks are `flock(2)` on one file per lock, so they work across processes, vanish
//!   when a process dies, and a timed-out wait names the holder.
//! * [`hooks`] runs Ganeti-compatible hook scripts (`instance-export-pre.d` /
//!   `instance-export-post.d`, run-parts rules, a reset environment, a per-script timeout) and
//!   builds their `GANETI_` / `GANETI_POST_` environment.
//! * [`export::config_ini`] writes an export's `config.ini` byte for byte as Ganeti does, so
//!   Ganeti's own import reads it.
//! * [`feedback`] holds Ganeti's job messages ("Shutting down instance X") and its progress
//!   format ("1.5G, 120.2 MiB/s, 37%, ETA 1m 5s"), and the [`feedback::Feedback`] sink that
//!   operations report through.
//! * [`lu`] runs a logical unit in Ganeti's order; the phases are types, so `exec` needs the
//!   value `check_prereq` returned.
//! * [`backup`] is `LUBackupExport` (and `LUBackupRemove`, and the export listing): Ganeti's
//!   checks, messages and Exec matrix on top of the pieces below.
//! * [`driver`] starts and stops instances (`process` and `command` drivers); [`snapshot`]
//!   snapshots disks (reflink clones, LVM) and sweeps leftovers of killed runs.
//! * [`export::store`] stages an export and swaps it in atomically; [`export::cleanup`] plans
//!   and applies the removal of old exports without ever removing the new one.
//! * [`demo`] builds a self-contained three-node cluster for `diskstream demo`.
//!
//! Where we differ from Ganeti on purpose (fewer locks, atomic finalize, ...) is listed with
//! the reason in `docs/ganeti-compat.md`.
//!
//! # Example
//!
//! ```
//! use diskstream_orchestrator::feedback::{format_progress, Progress};
//!
//! let p = Progress { mbytes: 1536.0, throughput: 120.25, percent: Some(37.0), eta: Some(65.0) };
//! assert_eq!(format_progress(&p), "1.5G, 120.2 MiB/s, 37%, ETA 1m 5s");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backup;
pub mod cluster;
pub mod demo;
pub mod driver;
pub mod error;
pub mod export;
pub mod feedback;
pub mod fsutil;
pub mod hooks;
pub mod locking;
pub mod lu;
pub mod names;
pub mod node;
pub mod snapshot;

pub use error::{Ecode, ErrorKind, OpError};
