//! What CRI keeps on Berth's container records: a pod sandbox is its pause container, an app container a
//! container labelled with its pod. The CRI config of each is an extension of the record (prost bytes), the
//! facts CRI learns later (pod IP, image ref, start time, log path) are labels. A berthd restart rebuilds
//! everything from these records and from the task layer's own recovery.
//!
//! This module must never keep state in memory that the records do not have.

use std::collections::HashMap;

use berth_proto::containerd_client::services::v1::Container;
use berth_proto::cri;
use prost::Message;
use tonic::Status;

use super::NAMESPACE;
use crate::store::{blocking, Store};

/// `sandbox` or `container`.
pub const KIND: &str = "io.berth.cri.kind";
/// An app container's pod.
pub const SANDBOX_ID: &str = "io.berth.cri.sandbox-id";
/// A pod's IP on its network (set once attached).
pub const POD_IP: &str = "io.berth.cri.ip";
/// The image's config digest, as PullImage answers it.
pub const IMAGE_REF: &str = "io.berth.cri.image-ref";
/// When StartContainer started it, nanoseconds since the epoch.
pub const STARTED_AT: &str = "io.berth.cri.started-at";
/// The container's log file, absolute.
pub const LOG_PATH: &str = "io.berth.cri.log-path";
/// The pod's metadata name/namespace/uid/attempt, joined by `/`, unique among live pods.
pub const POD_NAME: &str = "io.berth.cri.pod-name";
/// The container's name/attempt within its pod, unique among its pod's live containers.
pub const CONTAINER_NAME: &str = "io.berth.cri.container-name";

/// The extension holding a pod's PodSandboxConfig.
pub const SANDBOX_CONFIG: &str = "io.berth.cri.sandbox-config";
/// The extension holding a container's ContainerConfig.
pub const CONTAINER_CONFIG: &str = "io.berth.cri.container-config";

/// A pod sandbox as its record says.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub labels: HashMap<String, String>,
    pub created_at: i64,
}

impl Sandbox {
    pub fn ip(&self) -> &str {
        self.labels.get(POD_IP).map(String::as_str).unwrap_or("")
    }
}

/// An app container as its record says.
#[derive(Debug, Clone)]
pub struct CriContainer {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    pub labels: HashMap<String, String>,
    pub created_at: i64,
}

impl CriContainer {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
}

/// The record's extension as a prost message.
pub fn encode_ext<M: Message>(msg: &M, name: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("runtime.v1.{name}"),
        value: msg.encode_to_vec(),
    }
}

fn decode_ext<M: Message + Default>(c: &Container, key: &str) -> Option<M> {
    c.extensions
        .get(key)
        .and_then(|a| M::decode(a.value.as_slice()).ok())
}

/// A record as a sandbox (None when it is not one).
pub fn sandbox_of(c: &Container) -> Option<Sandbox> {
    if c.labels.get(KIND).map(String::as_str) != Some("sandbox") {
        return None;
    }
    Some(Sandbox {
        id: c.id.clone(),
        config: decode_ext(c, SANDBOX_CONFIG)?,
        labels: c.labels.clone(),
        created_at: super::ts_nanos(c.created_at.as_ref()),
    })
}

/// A record as an app container (None when it is not one).
pub fn container_of(c: &Container) -> Option<CriContainer> {
    if c.labels.get(KIND).map(String::as_str) != Some("container") {
        return None;
    }
    Some(CriContainer {
        id: c.id.clone(),
        sandbox_id: c.labels.get(SANDBOX_ID).cloned().unwrap_or_default(),
        config: decode_ext(c, CONTAINER_CONFIG)?,
        labels: c.labels.clone(),
        created_at: super::ts_nanos(c.created_at.as_ref()),
    })
}

/// Every record of the CRI namespace.
pub async fn all(store: &Store) -> Result<Vec<Container>, Status> {
    let store = store.clone();
    Ok(blocking(move || store.list_containers(NAMESPACE)).await?)
}

/// One record, or None.
pub async fn get(store: &Store, id: &str) -> Result<Option<Container>, Status> {
    let (store, id) = (store.clone(), id.to_string());
    Ok(blocking(move || store.get_container(NAMESPACE, &id)).await?)
}

/// The sandbox `id`, or NotFound naming it.
pub async fn sandbox(store: &Store, id: &str) -> Result<Sandbox, Status> {
    get(store, id)
        .await?
        .as_ref()
        .and_then(sandbox_of)
        .ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))
}

/// The app container `id`, or NotFound naming it.
pub async fn container(store: &Store, id: &str) -> Result<CriContainer, Status> {
    get(store, id)
        .await?
        .as_ref()
        .and_then(container_of)
        .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))
}

/// Set labels on a record (merged with its others).
pub async fn set_labels(store: &Store, id: &str, labels: &[(&str, String)]) -> Result<(), Status> {
    let mut update = Container {
        id: id.to_string(),
        ..Default::default()
    };
    let mut mask = Vec::new();
    for (k, v) in labels {
        update.labels.insert(k.to_string(), v.clone());
        mask.push(format!("labels.{k}"));
    }
    store.update_container(NAMESPACE, update, mask).await?;
    Ok(())
}

/// Whether every `selector` pair is among `labels` (CRI's label selector: AND of equalities).
pub fn selects(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A pod's unique name among live pods, as containerd's CRI reserves it.
pub fn pod_name(m: &cri::PodSandboxMetadata) -> String {
    format!("{}/{}/{}/{}", m.name, m.namespace, m.uid, m.attempt)
}
