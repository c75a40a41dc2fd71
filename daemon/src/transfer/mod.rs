//! containerd 2.x's `Transfer` service (`containerd.services.transfer.v1`) and its `Streaming` companion.
//!
//! A Transfer names a source and a destination (Anys of `containerd.types.transfer.*`) and, optionally, a
//! progress stream. Supported pairs, as containerd's local transfer service:
//! - `OCIRegistry` → `ImageStore`: a pull (`crate::pull`, one PullActor per reference);
//! - `ImageImportStream` → `ImageStore`: an archive import; `ImageStore` → `ImageExportStream`: an export
//!   (`archive.rs`, OCI layout and docker-save tars through berth-image's archive module);
//! - `ImageStore` → `ImageStore`: a tag; `ImageStore` → `OCIRegistry`: a push (`push.rs`).
//!
//! Progress messages go to the client's progress stream, which is closed before the RPC returns (containerd's
//! client waits for that end). This service is thin: it must never hold transfer logic beyond converting
//! the request and dispatching it.

pub mod archive;
pub mod auth;
pub mod binary;
pub mod push;
pub mod streams;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_image::oci::Platform;
use berth_proto::containerd::transfer::transfer_server::Transfer;
use berth_registry::Reference;
use containerd_client::services::v1::TransferRequest;
use containerd_client::types::transfer::{ImageStore, OciRegistry, Progress};
use prost_types::Any;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::namespace::{lease_from, namespace_from, validate_labels};
use crate::pull::progress::ProgressSink;
use crate::pull::{CredentialSource, Plan, PullRequest, Pulls, Resolver, Unpack};
use streams::{decode_any, is_type, Streams};

/// Type URLs of the transfer objects.
pub mod types {
    /// A registry (source of a pull, destination of a push).
    pub const OCI_REGISTRY: &str = "containerd.types.transfer.OCIRegistry";
    /// The image store.
    pub const IMAGE_STORE: &str = "containerd.types.transfer.ImageStore";
    /// An archive the client streams in.
    pub const IMPORT_STREAM: &str = "containerd.types.transfer.ImageImportStream";
    /// An archive streamed out to the client.
    pub const EXPORT_STREAM: &str = "containerd.types.transfer.ImageExportStream";
}

/// The Transfer service.
#[derive(Debug, Clone)]
pub struct TransferService {
    pulls: Pulls,
    streams: Streams,
}

impl TransferService {
    /// Over the pull supervisor's handle and the stream registry.
    pub fn new(pulls: Pulls, streams: Streams) -> Self {
        TransferService { pulls, streams }
    }
}

/// A client's progress stream: events are queued to a task that writes them to the stream.
struct ProgressOut {
    tx: ProgressSink,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressOut {
    fn open(stream: streams::StreamHandle) -> ProgressOut {
        let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
        let task = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if stream.send(berth_proto::to_any(&p)).await.is_err() {
                    break;
                }
            }
            stream.close();
        });
        ProgressOut { tx, task }
    }

    /// Send everything queued, then end the stream.
    async fn finish(self) {
        drop(self.tx);
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            tracing::warn!("a progress stream did not drain within 10 s");
        }
    }
}

/// A platform from the wire.
pub fn platform_of(p: &containerd_client::types::Platform) -> Platform {
    Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
        os_version: p.os_version.clone(),
        ..Default::default()
    }
}

/// An image name as Berth stores it: the normalised reference when it parses as one, else as given.
pub fn image_name(name: &str) -> String {
    Reference::parse(name)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| name.to_string())
}

/// The unpacks an ImageStore asks for (snapshotter names resolved; an unknown one is InvalidArgument).
pub fn unpacks_of(pulls: &Pulls, store: &ImageStore) -> Result<Vec<Unpack>, Status> {
    store
        .unpacks
        .iter()
        .map(|u| {
            let (snapshotter, _) = pulls.ctx().images.snapshotter(&u.snapshotter)?;
            Ok(Unpack {
                platform: u
                    .platform
                    .as_ref()
                    .map(platform_of)
                    .filter(|p| !p.os.is_empty())
                    .unwrap_or_else(Platform::host),
                snapshotter,
            })
        })
        .collect()
}

impl TransferService {
    async fn pull(
        &self,
        ns: &str,
        client_lease: Option<String>,
        src: &Any,
        dst: &Any,
        progress: Option<ProgressSink>,
    ) -> Result<(), Status> {
        let reg: OciRegistry = decode_any(src)?;
        let store: ImageStore = decode_any(dst)?;
        let reference = Reference::parse(&reg.reference)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let resolver = reg.resolver.unwrap_or_default();
        let plain_http = match resolver.default_scheme.as_str() {
            "" | "https" => false,
            "http" => true,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unsupported default scheme {other:?} for {reference} (http or https)"
                )))
            }
        };
        if !resolver.headers.is_empty() {
            tracing::debug!(reference = %reference, "RegistryResolver headers are not supported; ignored");
        }
        let auth: Option<Arc<dyn CredentialSource>> = if resolver.auth_stream.is_empty() {
            None
        } else {
            let s = self.streams.take(ns, &resolver.auth_stream)?;
            Some(Arc::new(auth::AuthStream::new(s)))
        };
        validate_labels(&store.labels)?;
        let mut image_names = Vec::new();
        if !store.name.is_empty() {
            image_names.push(image_name(&store.name));
        }
        for r in &store.extra_references {
            if !r.is_prefix && !r.name.is_empty() {
                image_names.push(image_name(&r.name));
            }
        }
        let plan = Plan {
            reference: reference.to_string(),
            resolver: Resolver {
                hosts_dir: (!resolver.host_dir.is_empty())
                    .then(|| PathBuf::from(&resolver.host_dir)),
                plain_http,
            },
            platforms: store.platforms.iter().map(platform_of).collect(),
            all_metadata: store.all_metadata,
            manifest_limit: store.manifest_limit,
            unpacks: unpacks_of(&self.pulls, &store)?,
            image_names,
            labels: store.labels.into_iter().collect::<BTreeMap<_, _>>(),
        };
        self.pulls
            .pull(PullRequest {
                ns: ns.to_string(),
                plan,
                progress,
                auth,
                client_lease,
            })
            .await
            .map(|_| ())
    }
}

#[tonic::async_trait]
impl Transfer for TransferService {
    async fn transfer(&self, req: Request<TransferRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        let lease = lease_from(req.metadata());
        let r = req.into_inner();
        let src = r
            .source
            .ok_or_else(|| Status::invalid_argument("transfer source is required"))?;
        let dst = r
            .destination
            .ok_or_else(|| Status::invalid_argument("transfer destination is required"))?;
        let progress = match r.options.map(|o| o.progress_stream) {
            Some(id) if !id.is_empty() => Some(ProgressOut::open(self.streams.take(&ns, &id)?)),
            _ => None,
        };
        let sink = progress.as_ref().map(|p| p.tx.clone());
        use types::*;
        let res = if is_type(&src, OCI_REGISTRY) && is_type(&dst, IMAGE_STORE) {
            self.pull(&ns, lease, &src, &dst, sink).await
        } else if is_type(&src, IMPORT_STREAM) && is_type(&dst, IMAGE_STORE) {
            archive::import(&self.pulls, &self.streams, &ns, &src, &dst, sink).await
        } else if is_type(&src, IMAGE_STORE) && is_type(&dst, EXPORT_STREAM) {
            archive::export(&self.pulls, &self.streams, &ns, &src, &dst, sink).await
        } else if is_type(&src, IMAGE_STORE) && is_type(&dst, IMAGE_STORE) {
            archive::tag(&self.pulls, &ns, &src, &dst, sink).await
        } else if is_type(&src, IMAGE_STORE) && is_type(&dst, OCI_REGISTRY) {
            push::push(&self.pulls, &self.streams, &ns, &src, &dst, sink).await
        } else {
            Err(Status::unimplemented(format!(
                "method Transfer not implemented for {} to {}",
                src.type_url, dst.type_url
            )))
        };
        if let Some(p) = progress {
            p.finish().await;
        }
        res.map(Response::new)
    }
}
