//! Exports on a target node: the `config.ini` format (the store itself comes with Exec).

pub mod config_ini;
