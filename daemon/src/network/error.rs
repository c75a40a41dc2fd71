//! Errors of the network layer and their gRPC codes.
//!
//! The mapping, and why:
//! - `InvalidArgument`: a label value is malformed (the request is wrong whatever the host has).
//! - `FailedPrecondition`: the host's network setup refuses it and an administrator can fix it: an unknown
//!   network, an unreadable conflist, a missing or incompatible plugin, and every error a plugin reported (the
//!   message carries its CNI code and text, naming network and plugin: an exhausted subnet, an invalid
//!   plugin config, a conflicting bridge). Retrying the same request fails the same way until the host
//!   changes. Exception: CNI code 11 ("try again later") is `Unavailable`.
//! - `Internal`: berthd's own machinery or a plugin breaking the protocol: netns or cache I/O, a plugin that
//!   timed out, could not be executed or printed garbage, a failed actor, the store. Those are bugs or a broken
//!   host to report, not something the request or the config can fix.
//!
//! Every message names the network (and plugin) involved; this module must never drop the plugin's code or
//! message on the way to the client.

use tonic::{Code, Status};

/// What can go wrong in the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A label value is malformed.
    #[error("label {label}={value:?}: {why}")]
    InvalidLabel {
        /// The label.
        label: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// No loadable config defines the network.
    #[error(
        "network {network:?} is not configured in {dir}{}",
        problems_note(problems)
    )]
    UnknownNetwork {
        /// The network asked for.
        network: String,
        /// The conf dir searched.
        dir: String,
        /// Config files that could not be loaded (one may have been meant to define it).
        problems: Vec<String>,
    },
    /// berth-net failed (config, netns, plugin, cache).
    #[error(transparent)]
    Cni(#[from] berth_net::Error),
    /// The netns could not be created or removed.
    #[error(transparent)]
    Netns(#[from] berth_net::NetnsError),
    /// File work of the network layer (hosts files, the bundle spec) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error("network records: {0}")]
    Store(#[from] crate::store::StoreError),
    /// An attachment actor or the supervisor failed (a caught panic, a restart); retrying may work.
    #[error("network actor failed: {0}")]
    ActorFailed(String),
}

fn problems_note(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(
            " (config files that could not be loaded: {})",
            problems.join("; ")
        )
    }
}

impl NetError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> NetError {
        NetError::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC code (see the module doc).
    pub fn code(&self) -> Code {
        match self {
            NetError::InvalidLabel { .. } => Code::InvalidArgument,
            NetError::UnknownNetwork { .. } => Code::FailedPrecondition,
            NetError::Cni(e) => cni_code(e),
            NetError::Netns(_) | NetError::Io { .. } | NetError::ActorFailed(_) => Code::Internal,
            // berthd shutting down; anything else in the store is berthd's problem.
            NetError::Store(crate::store::StoreError::Closed) => Code::Unavailable,
            NetError::Store(_) => Code::Internal,
        }
    }

    /// The status a client sees.
    pub fn status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }
}

/// CNI's "try again later".
const CNI_TRY_AGAIN_LATER: u64 = 11;

fn cni_code(e: &berth_net::Error) -> Code {
    use berth_net::Error as E;
    match e {
        E::Config(_)
        | E::PluginNotFound { .. }
        | E::IncompatiblePlugin { .. }
        | E::Unsupported { .. }
        | E::NotAttached { .. } => Code::FailedPrecondition,
        E::PluginFailed(f) if f.code == Some(CNI_TRY_AGAIN_LATER) => Code::Unavailable,
        E::PluginFailed(_) => Code::FailedPrecondition,
        E::AddCleanupFailed { cause, .. } => cni_code(cause),
        E::Ports(_) => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_failed(code: Option<u64>) -> NetError {
        NetError::Cni(berth_net::Error::PluginFailed(Box::new(
            berth_net::PluginFailure {
                network: "n1".into(),
                plugin: "bridge".into(),
                command: "ADD",
                code,
                msg: "no IP addresses available in range set".into(),
                details: String::new(),
                stderr: String::new(),
            },
        )))
    }

    #[test]
    fn plugin_errors_keep_code_and_message() {
        let e = plugin_failed(Some(999));
        assert_eq!(e.code(), Code::FailedPrecondition);
        let s = e.status();
        assert!(s.message().contains("network n1"), "{}", s.message());
        assert!(s.message().contains("plugin bridge"), "{}", s.message());
        assert!(s.message().contains("CNI error 999"), "{}", s.message());
        assert!(s.message().contains("no IP addresses"), "{}", s.message());
        assert_eq!(plugin_failed(Some(11)).code(), Code::Unavailable);
        let e = NetError::Cni(berth_net::Error::AddCleanupFailed {
            cause: Box::new(berth_net::Error::PluginNotFound {
                network: "n".into(),
                plugin: "nope".into(),
                dirs: "/usr/lib/cni".into(),
            }),
            cleanup: vec![],
        });
        assert_eq!(e.code(), Code::FailedPrecondition);
        let e = NetError::Cni(berth_net::Error::PluginTimeout {
            network: "n".into(),
            plugin: "slow".into(),
            command: "ADD",
            timeout: std::time::Duration::from_secs(1),
            stderr: String::new(),
        });
        assert_eq!(e.code(), Code::Internal);
    }

    #[test]
    fn unknown_network_lists_broken_files() {
        let e = NetError::UnknownNetwork {
            network: "web".into(),
            dir: "/etc/berth/net.d".into(),
            problems: vec!["network config /etc/berth/net.d/20-web.conflist: invalid JSON".into()],
        };
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.to_string().contains("20-web.conflist"), "{e}");
    }
}
