//! A container as berth-runc sees it between invocations: its state directory
//! `<root>/<id>/` (state.json, exec.fifo), its status computed from the init
//! process, and the guards each verb checks before acting. It must never trust a
//! saved status over what /proc says about the init process.

mod state;

pub use state::{Container, Saved, Status};

/// Name of the exec fifo inside a container's state directory.
pub const EXEC_FIFO: &str = "exec.fifo";
/// Name of the state file inside a container's state directory.
pub const STATE_FILE: &str = "state.json";
