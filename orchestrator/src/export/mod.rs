//! Exports on a target node: the `config.ini` format, the store (staging, atomic finalize,
//! listing, removal), the export id and the cleanup of old exports.

pub mod cleanup;
pub mod config_ini;
pub mod export_id;
pub mod store;
