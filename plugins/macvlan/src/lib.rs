//! The `macvlan` CNI plugin: parse and dispatch; the steps live in `plugin.rs`. Its binary is
//! the multicall binary of `plugins/multicall`.

pub mod config;
mod plugin;
mod shim;

pub use plugin::Macvlan;
