//! berthd: actors, services, stores and configuration.
//!
//! - [`config`]: the TOML configuration and derived paths.
//! - [`context`]: what services and the task subsystem share.
//! - [`store`]: metadata in redb (one writer thread, group commit).
//! - [`events`]: the EventBus (durable journal, fan-out, filters).
//! - [`images`]: blobs, snapshot directories, garbage collection (metadata is in the store).
//! - [`services`]: the gRPC services (thin: validate, convert, call the store/bus/actors, map errors).
//! - [`tree`]: the supervision tree, in one function.
//! - [`tasks`]: tasks, shims and recovery (TaskSupervisor, ContainerActor, ShimActor).
//! - [`pull`]: server-side pulls (PullSupervisor, a PullActor per reference); [`transfer`]: containerd's
//!   Transfer and Streaming services (pull, import, export, tag, push).
//! - [`cri`]: Kubernetes' CRI (runtime.v1) over the above, in namespace `k8s.io`.
//! - [`network`]: container networks (NetworkSupervisor, AttachmentActor per attachment, over berth-net).
//! - [`supervision`], [`failpoint`], [`namespace`], [`util`]: supervision vocabulary, fault injection,
//!   request helpers, time formats.
//! - [`server`]: startup (dirs, single-instance lock, socket), the runtimes, serving and shutdown.
#![forbid(unsafe_code)]

pub mod config;
pub mod context;
pub mod cri;
pub mod events;
pub mod failpoint;
pub mod images;
pub mod namespace;
pub mod network;
pub mod pull;
pub mod server;
pub mod services;
pub mod store;
pub mod supervision;
pub mod tasks;
pub mod transfer;
pub mod tree;
pub mod util;
