//! berth-net: container networks through real CNI plugins, as the CNI spec (1.0/1.1) says.
//!
//! What berthd's attachment actors call, on blocking threads (everything here is synchronous):
//! - [`config`]: berthd's network settings ([`NetConfig`]), CNI network configs loaded from
//!   the conf dir as libcni does, and the default `berth` network written when there is none.
//! - [`netns`]: named network namespaces (`<state>/netns/<ns>/<id>`) with `lo` up.
//! - [`Cni`]: ADD/DEL/CHECK of an [`Attachment`] (netns, container id, network, ifname) through
//!   a network's plugin chain, the attachment cache that survives berthd restarts,
//!   [`Cni::list_cached`] to find what a crash left, STATUS/GC/VERSION.
//! - [`ports`]: `-p [hostIP:]hostPort:containerPort[/proto]` into CNI `portMappings`.
//!
//! An attachment's unit is a network namespace, not a container: a pod sandbox's netns is
//! attached once per network and shared by its containers. This crate must never touch host
//! networking itself beyond creating namespaces: every interface, address, route and firewall
//! rule is made and removed by the plugins.

#![forbid(unsafe_code)]

mod cache;
mod cni;
pub mod config;
mod error;
mod exec;
mod fsutil;
pub mod ipnet;
mod netlink;
pub mod netns;
pub mod ports;
mod result;
pub mod version;

pub use cache::CachedAttachment;
pub use cni::{Attachment, Cni, PluginVersions};
pub use config::{
    default_conflist, ensure_default_network, find_network, load_networks, load_networks_lenient,
    ConfigError, NetConfig, Network, PluginConf,
};
pub use error::{Error, PluginFailure};
pub use ipnet::IpNet;
pub use netns::{create_netns, is_netns, netns_path, remove_netns, NetnsError};
pub use ports::{parse_publish, parse_publish_all, PortError, PortMapping, Protocol};
pub use result::{AttachResult, Dns, Interface, IpConfig, Route};
pub use version::CniVersion;
