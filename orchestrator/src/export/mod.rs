//! Exports on a target node: the `config.ini` format, the store (staging, atomic finalize,
//! listing, removal) and the cleanup of old exports.

pub mod cleanup;
pub mod config_ini;
pub mod store;
