//! Ganeti-style locking across processes: ordered levels, shared/exclusive locks, timeouts.
//!
//! A [`LockManager`] names a lock directory; each operation takes a [`LockOwner`] from it and
//! acquires level by level, in [`LockLevel`] order (`cluster < instance < nodegroup < node <
//! node-res < network`), the BGL (`cluster/BGL`) first, as Ganeti's `mcpu` does. Asking for a
//! level at or below one already held is refused with [`LockError::Order`]: with every owner
//! climbing the same ladder and names sorted within a level, no wait cycle (deadlock) can form.
//!
//! ```
//! use std::time::Duration;
//! use diskstream_orchestrator::locking::{LockLevel, LockManager, LockMode, BGL};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let manager = LockManager::new(dir.path()).unwrap();
//! let mut op = manager.owner("diskstream export inst1.example.com");
//! let t = Duration::from_secs(1);
//! op.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, t).unwrap();
//! op.acquire(LockLevel::Instance, &["inst1.example.com"], LockMode::Exclusive, t).unwrap();
//! // Going back down a level is refused.
//! assert!(op.acquire(LockLevel::Cluster, &[BGL], LockMode::Shared, t).is_err());
//! ```

mod holders;
mod level;
mod manager;
mod proc;

pub use level::{LockLevel, LockMode};
pub use manager::{civil_from_days, format_utc, Holder, LockError, LockManager, LockOwner, BGL};
