//! berth-oci: the OCI runtime library behind `berth-runc`.
//!
//! Synchronous and single-threaded on purpose: the create path forks, and a
//! forked child of a multi-threaded process may only do async-signal-safe work.
//! Nothing in this crate may start a thread or an async runtime.

pub mod caps;
pub mod cgroups;
pub mod cli;
pub mod commands;
pub mod console;
pub mod container;
pub mod defaults;
pub mod error;
pub mod hooks;
pub mod logging;
pub mod lsm;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod ttyproxy;
pub mod user;
pub mod utils;

pub use error::{Error, Result};
