//! The crate's error: each module's error folded in, plus what running a chain can go wrong
//! with. Every message names the network, and the plugin when one is involved.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;
use crate::netns::NetnsError;
use crate::ports::PortError;

/// Everything `berth-net` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Ports(#[from] PortError),
    /// The attachment's parameters break a CNI rule (container id, ifname, args, netns).
    #[error("network {network}: invalid attachment: {why}")]
    InvalidAttachment { network: String, why: String },
    #[error("network {network}: plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        network: String,
        plugin: String,
        dirs: String,
    },
    #[error("network {network}: cannot run plugin {plugin} ({command}): {source}")]
    PluginSpawn {
        network: String,
        plugin: String,
        command: &'static str,
        source: std::io::Error,
    },
    #[error(
        "network {network}: plugin {plugin} ({command}) did not finish within {timeout:?} and was killed{}",
        stderr_note(stderr)
    )]
    PluginTimeout {
        network: String,
        plugin: String,
        command: &'static str,
        timeout: Duration,
        stderr: String,
    },
    /// The plugin exited non-zero (boxed: the details are large and errors travel often).
    #[error(transparent)]
    PluginFailed(Box<PluginFailure>),
    /// The plugin succeeded but printed something that is not what the spec requires.
    #[error("network {network}: plugin {plugin} {command} printed an invalid result: {why}")]
    PluginOutput {
        network: String,
        plugin: String,
        command: &'static str,
        why: String,
    },
    /// The plugin does not support the network's spec version (from its VERSION answer).
    #[error(
        "network {network}: plugin {plugin} does not support CNI {version} (it supports {})",
        supported.join(", ")
    )]
    IncompatiblePlugin {
        network: String,
        plugin: String,
        version: String,
        supported: Vec<String>,
    },
    #[error(
        "network {network}: {container_id}/{ifname} is already attached{}; detach it first",
        if *pending { " (an ADD that never finished, e.g. before a crash)" } else { "" }
    )]
    AlreadyAttached {
        network: String,
        container_id: String,
        ifname: String,
        pending: bool,
    },
    #[error("network {network}: {container_id}/{ifname} has no cached ADD result")]
    NotAttached {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error("network {network}: {what} needs CNI {needs} or later; the network uses {version}")]
    Unsupported {
        network: String,
        what: &'static str,
        needs: &'static str,
        version: String,
    },
    #[error("attachment cache {path}: {why}")]
    Cache { path: PathBuf, why: String },
    /// ADD failed and the DEL that should have undone it failed too: the attachment stays in
    /// the cache (see `list_cached`) and must be detached again.
    #[error(
        "{cause}; undoing the partial attachment also failed ({}); it stays cached for a later detach",
        list(cleanup)
    )]
    AddCleanupFailed {
        cause: Box<Error>,
        cleanup: Vec<Error>,
    },
    #[error("GC of network {network} failed: {}", list(errors))]
    Gc { network: String, errors: Vec<Error> },
}

/// What a failed plugin reported: `code`, `msg` and `details` come from its CNI error JSON
/// when it printed one; `stderr` is what it logged.
#[derive(Debug, thiserror::Error)]
#[error(
    "network {network}: plugin {plugin} {command} failed{}: {msg}{}{}",
    code.map(|c| format!(" (CNI error {c})")).unwrap_or_default(),
    if details.is_empty() { String::new() } else { format!(": {details}") },
    stderr_note(stderr)
)]
pub struct PluginFailure {
    pub network: String,
    pub plugin: String,
    pub command: &'static str,
    pub code: Option<u64>,
    pub msg: String,
    pub details: String,
    pub stderr: String,
}

fn stderr_note(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(" [stderr: {s}]")
    }
}

fn list(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
