//! The orchestrator: runs Ganeti's LUBackupExport phases on top of the engine (filled by issue 3).
#![forbid(unsafe_code)]
