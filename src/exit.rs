//! The process exit codes shared by every command (documented in the README).

/// Exit code for damaged data: a corrupt or truncated image, a checksum mismatch.
pub const EXIT_INTEGRITY: u8 = 3;
