//! Kubernetes' CRI (`runtime.v1`) on berthd's socket: pods and containers mapped onto Berth's own
//! containers, tasks, snapshots, images and network attachments, all in the containerd namespace `k8s.io`.
//!
//! Read in this order:
//! - `meta.rs`: what CRI adds to a Berth container record (labels and one extension): a pod sandbox is its
//!   pause container, an app container is a container labelled with its pod. Everything that must survive a
//!   berthd restart is there; task state (running, exit code, times) comes from the task layer's own
//!   recovery, so there is no second store.
//! - `images.rs`: resolving an image in the content store (manifest, config, chain id) and the ImageService.
//! - `spec.rs`: the OCI spec of a pause or app container, built as containerd's CRI builds it.
//! - `records.rs`: the container record, snapshot and task behind each pod and container.
//! - `user.rs`: a new container's user and groups from its image's /etc/passwd and /etc/group.
//! - `pods.rs`, `containers.rs`, `exec.rs`: the RuntimeService verbs, through the [`Tasks`] handle (never a
//!   second copy of the task machinery) and the in-process containerd services.
//! - `stats.rs`: container stats from the shim's cgroup metrics, resource updates; `pod_stats.rs`: a pod's.
//! - `events.rs`: GetContainerEvents from berthd's durable event journal.
//! - `actor.rs`: CriSupervisor and a PodActor per sandbox: every verb on one pod (its sandbox and its
//!   containers) runs in its PodActor, one at a time, so a stop never interleaves with a create.
//! - `stream/`: the streaming server behind Exec, Attach and PortForward (WebSocket and SPDY).
//! - `runtime.rs`: the gRPC RuntimeService, thin: validate, call, map errors.
//!
//! This module must never write task state of its own, never touch a namespace other than `k8s.io`, and never
//! leave a half-made pod or container behind an error (what a failed verb made is undone before it returns).

mod actor;
mod containers;
mod events;
mod exec;
mod images;
mod meta;
mod pod_stats;
mod pods;
mod records;
mod runtime;
mod spec;
mod stats;
mod stream;
mod user;

use std::sync::Arc;

use tonic::{Request, Status};

pub use actor::CriSupervisor;
pub use images::ImageService;
pub use runtime::RuntimeService;

use crate::context::Context as DaemonContext;
use crate::tasks::Tasks;

/// The containerd namespace of everything CRI makes.
pub const NAMESPACE: &str = "k8s.io";

/// The CRI API version Berth speaks.
pub const API_VERSION: &str = "v1";

/// What the CRI layer shares; cheap to clone.
#[derive(Clone)]
pub struct Cri {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: DaemonContext,
    tasks: Tasks,
    pulls: crate::pull::Pulls,
    networks: crate::network::Networks,
    pods: actor::Pods,
    /// The last CPU sample of each container and pod (time, cumulative usage), for usage_nano_cores.
    cpu_samples: std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>,
    /// The streaming server's tokens and address.
    streams: stream::Streams,
}

impl Cri {
    /// The CRI layer over the task and pull handles; `pods` is the CriSupervisor's handle.
    pub fn new(
        ctx: DaemonContext,
        tasks: Tasks,
        pulls: crate::pull::Pulls,
        networks: crate::network::Networks,
        pods: actor::Pods,
    ) -> Cri {
        Cri {
            inner: Arc::new(Inner {
                ctx,
                tasks,
                pulls,
                networks,
                pods,
                cpu_samples: Default::default(),
                streams: stream::Streams::default(),
            }),
        }
    }

    fn ctx(&self) -> &DaemonContext {
        &self.inner.ctx
    }

    fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// A removed container's or pod's CPU sample is dropped.
    fn forget_sample(&self, id: &str) {
        self.inner
            .cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The gRPC services to register.
    pub fn services(
        &self,
    ) -> (
        berth_proto::cri::runtime_service_server::RuntimeServiceServer<RuntimeService>,
        berth_proto::cri::image_service_server::ImageServiceServer<ImageService>,
    ) {
        use berth_proto::cri::image_service_server::ImageServiceServer;
        use berth_proto::cri::runtime_service_server::RuntimeServiceServer;
        let max = crate::server::MAX_MESSAGE;
        (
            RuntimeServiceServer::new(RuntimeService::new(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            ImageServiceServer::new(ImageService::new(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    }
}

impl Cri {
    /// Start-up housekeeping, before serving.
    pub async fn recover(&self) {
        exec::remove_leftovers(self).await;
        if self.ctx().config.cri.enabled {
            if let Err(e) = stream::serve(self).await {
                tracing::error!(namespace = NAMESPACE, error = %e, "cannot start the CRI streaming server: Exec, Attach and PortForward will fail");
            }
        }
    }
}

/// The CRI layer's actors: the factory of the CriSupervisor and the handle reaching it.
pub fn new_supervisor() -> (actor::Pods, crate::supervision::StartChild) {
    actor::new()
}

pub use actor::Pods;

/// An in-process request to one of berthd's containerd services, in `k8s.io`.
fn ns_request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        crate::namespace::NAMESPACE_HEADER,
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    r
}

/// A new sandbox or container id: 64 random hex digits, as containerd's CRI makes them.
fn new_id() -> Result<String, Status> {
    let mut buf = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom")
        .map_err(|e| Status::internal(format!("opening /dev/urandom: {e}")))?;
    std::io::Read::read_exact(&mut f, &mut buf)
        .map_err(|e| Status::internal(format!("reading /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Nanoseconds since the epoch, as CRI's timestamps are.
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A protobuf timestamp in nanoseconds since the epoch (0 for none).
fn ts_nanos(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
        .unwrap_or(0)
}

/// A task-layer error as the kubelet expects its code.
fn task_status(e: crate::tasks::TaskError) -> Status {
    Status::from(e)
}
