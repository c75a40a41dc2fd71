//! Container networks in berthd: the NetworkSupervisor (the supervision tree's "networks" slot) with one
//! AttachmentActor per attachment, over berth-net's CNI driver and Debian's plugins.
//!
//! Read in this order:
//! - `labels.rs`: what a container asks for ([`Plan`]): `berth.io/networks` (names, `none`, `host`) and
//!   `berth.io/ports`; checked before anything is created.
//! - `handle.rs`: [`Networks`], the handle the task layer holds (cheap to clone). An [`Owner`] (a task today,
//!   a CRI pod sandbox later: the API takes an owner, whose netns path follows from it, never a container)
//!   is prepared with [`Networks::prepare`] (config, every plugin present, netns), attached with
//!   [`Networks::attach`] (ADD of each network in order as eth0, eth1, ..., ports on the first; Tasks.Create
//!   runs it beside the shim start), given its files with [`Networks::publish`] (`setup.rs`) and taken down
//!   with [`Networks::teardown`] (names, DEL of every attachment, netns, records: `teardown.rs`).
//!   [`Networks::check`] runs CHECK on demand.
//! - `supervisor.rs`: NetworkSupervisor, the only writer of the attachment registry: routes every operation
//!   on (owner, network) to that attachment's actor, starting it on demand and stopping it once it is
//!   detached and idle, so two operations on one attachment never overlap and an attachment never has two
//!   actors.
//! - `attachment.rs`: AttachmentActor: ADD/DEL/CHECK of one attachment, one at a time, on blocking threads
//!   (never the actor thread), through the one shared `berth_net::Cni` (it serialises per CNI container id
//!   and waits for plugins by pid; berthd never reaps with `waitpid(-1)`).
//! - `names.rs`: how containers on a network find each other by name (below).
//! - `spec.rs`: the bundle's config.json edits (netns path, bind mounts, hostname); never the stored spec.
//! - `recovery.rs`: at start, what a crash left: attachments (in the store, in berth-net's cache, or a netns
//!   file) whose task no longer exists are DEL'd; live ones are adopted.
//! - `error.rs`: [`NetError`] and its gRPC codes.
//!
//! Names: berthd keeps every member of a network in each member's /etc/hosts (the container id and its
//! hostname), rewriting the bind-mounted file in place (truncate and write, never rename: the bind mount pins
//! the inode) when members join and leave. Not a DNS responder on the bridge: no listener to run on an address
//! that only exists while the bridge does, nothing to forward (Berth's networks have no upstream nameserver on
//! purpose), no port 53 to share with a host resolver, and it works for every libc, including
//! busybox-static's glibc that cannot load NSS modules. The cost is a rewrite of each member's file per join or
//! leave (a few hundred bytes each), and programs that cache lookups across such a change see the old answer.
//!
//! This module must never block an actor or a tonic worker on a plugin, never write the stored container
//! spec, and never leave an attachment it made without a record (berth-net's cache or the store) that lets a
//! later DEL find it.

mod attachment;
mod error;
mod handle;
mod labels;
mod names;
mod owner;
mod recovery;
mod setup;
mod spec;
mod supervisor;
mod teardown;

pub use error::NetError;
pub use handle::Networks;
pub use labels::{Mode, Plan, NETWORKS_LABEL, PORTS_LABEL};
pub use owner::Owner;
pub use setup::{Attached, Files, Setup, Timings};
pub use supervisor::NetworkSupervisor;

use crate::context::Context as DaemonContext;

/// Build the network subsystem: the handle, and the factory the supervision tree uses to start (and restart)
/// the NetworkSupervisor. Call [`Networks::recover`] before serving requests.
pub fn new(ctx: DaemonContext) -> (Networks, crate::supervision::StartChild) {
    let shared = std::sync::Arc::new(handle::Shared::new(ctx));
    let factory = supervisor::factory(shared.clone());
    (Networks::new(shared), factory)
}
