//! Stopping and watching an operation from outside: the [`StopFlag`] a signal handler or an
//! orchestrator raises, and the [`Progress`] counter a frontend polls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A flag set from elsewhere (a signal handler, an orchestrator's cancel) to stop an operation at
/// the next chunk; it then fails with [`Error::Cancelled`] and cleans up like any failure.
pub type StopFlag = Arc<AtomicBool>;

/// Bytes of disk processed so far; the CLI polls it to draw progress. It only grows, and an
/// operation adds to it without resetting it (a counter reused across runs goes on from where
/// it was). An operation that reads its input twice counts both passes: a `restore` that
/// checks the whole image first (`RestoreOptions::verify_first`, the default onto a block
/// device) reaches twice the disk size.
pub type Progress = Arc<AtomicU64>;

/// [`Error::Cancelled`] if `stop` is set.
pub(crate) fn check_stop(stop: Option<&StopFlag>) -> Result<()> {
    if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        return Err(Error::Cancelled);
    }
    Ok(())
}
