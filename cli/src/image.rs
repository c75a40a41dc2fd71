//! Images as `run` needs them, done client-side the way ctr does: find the image (with or
//! without Docker-style normalisation), read its manifest and config from the content store
//! (choosing the host's platform from an index), compute the layer chain ids, and unpack it
//! through Snapshots + Diff when its top snapshot is missing.
//!
//! Every write here happens under a lease, so berthd's garbage collector never takes a half
//! unpacked chain; this module must never remove a committed snapshot.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, GetImageRequest, Image, Info, ReadContentRequest, UpdateRequest,
};
use containerd_client::types::{Descriptor, Mount};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::error::{Error, Result};

/// Media types of image indexes (OCI and Docker).
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An image resolved for the host's platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The image record.
    pub image: Image,
    /// The platform manifest's descriptor.
    pub manifest: Descriptor,
    /// The config's descriptor.
    pub config_desc: Descriptor,
    /// The parsed config blob.
    pub config: Value,
    /// Layer descriptors, base first.
    pub layers: Vec<Descriptor>,
    /// `rootfs.diff_ids`, base first.
    pub diff_ids: Vec<String>,
}

impl Resolved {
    /// Chain id of the top layer (the snapshot a container's rootfs sits on).
    pub fn chain_id(&self) -> String {
        chain_ids(&self.diff_ids).pop().unwrap_or_default()
    }

    /// The config's `config` object (Entrypoint, Cmd, Env, ...).
    pub fn runtime_config(&self) -> &Value {
        &self.config["config"]
    }

    /// Total size of manifest, config and layers.
    pub fn size(&self) -> u64 {
        let layers: i64 = self.layers.iter().map(|l| l.size).sum();
        (self.manifest.size + self.config_desc.size + layers).max(0) as u64
    }
}

/// The OCI architecture name of this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// `chain_0 = diff_0`, `chain_i = sha256(chain_{i-1} + " " + diff_i)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// A short random-looking suffix for keys and ids (`<nanos>-<pid-ish>`).
pub fn unique_suffix() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:x}",
        now.as_nanos(),
        (std::process::id() as u128 ^ now.as_nanos()) & 0xffff
    )
}

/// The image named `name`; when it is missing, also tries the Docker-normalised name
/// (`busybox` → `docker.io/library/busybox:latest`). `Ok(None)` when neither exists.
pub async fn find_image(client: &Client, name: &str) -> Result<Option<Image>> {
    let mut names = vec![name.to_string()];
    let norm = crate::refs::normalize(name);
    if norm != name {
        names.push(norm);
    }
    for n in names {
        match client
            .images()
            .get(client.req(GetImageRequest { name: n.clone() }))
            .await
        {
            Ok(r) => return Ok(r.into_inner().image),
            Err(s) if s.code() == tonic::Code::NotFound => continue,
            Err(s) => return Err(Error::rpc(format!("get image {n}"))(s)),
        }
    }
    Ok(None)
}

/// The bytes of the blob `digest`.
pub async fn read_blob(client: &Client, digest: &str) -> Result<Vec<u8>> {
    let mut stream = client
        .content()
        .read(client.stream_req(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(Error::rpc(format!("read blob {digest}")))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(Error::rpc(format!("read blob {digest}")))?
    {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Parse a JSON blob.
async fn read_json(client: &Client, digest: &str) -> Result<Value> {
    let data = read_blob(client, digest).await?;
    serde_json::from_slice(&data).map_err(|e| Error::invalid(format!("blob {digest}"), e))
}

/// A descriptor from OCI JSON.
fn desc_of(v: &Value) -> Descriptor {
    Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: v["digest"].as_str().unwrap_or_default().to_string(),
        size: v["size"].as_i64().unwrap_or_default(),
        annotations: HashMap::new(),
    }
}

/// Resolve `image` for the host platform: index → manifest → config and layers.
pub async fn resolve(client: &Client, image: Image) -> Result<Resolved> {
    let target = image
        .target
        .clone()
        .ok_or_else(|| Error::invalid(format!("image {}", image.name), "it has no target"))?;
    let mut desc = target;
    let mut doc = read_json(client, &desc.digest).await?;
    let is_index = |d: &Descriptor, doc: &Value| {
        INDEX_TYPES.contains(&d.media_type.as_str())
            || doc["manifests"].is_array() && !doc["layers"].is_array()
    };
    if is_index(&desc, &doc) {
        let manifests = doc["manifests"].as_array().cloned().unwrap_or_default();
        let arch = host_arch();
        let pick = manifests
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
            .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
            .ok_or_else(|| {
                Error::invalid(
                    format!("image {}", image.name),
                    format!("it has no manifest for linux/{arch}"),
                )
            })?;
        desc = desc_of(pick);
        doc = read_json(client, &desc.digest).await?;
    }
    let config_desc = desc_of(&doc["config"]);
    let layers: Vec<Descriptor> = doc["layers"]
        .as_array()
        .map(|a| a.iter().map(desc_of).collect())
        .unwrap_or_default();
    let config = read_json(client, &config_desc.digest).await?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(Error::invalid(
            format!("image {}", image.name),
            format!(
                "its config lists {} diff ids for {} layers",
                diff_ids.len(),
                layers.len()
            ),
        ));
    }
    Ok(Resolved {
        image,
        manifest: desc,
        config_desc,
        config,
        layers,
        diff_ids,
    })
}

/// Whether the snapshot `key` exists.
pub async fn snapshot_exists(client: &Client, snapshotter: &str, key: &str) -> Result<bool> {
    match client
        .snapshots()
        .stat(client.req(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(Error::rpc(format!("stat snapshot {key}"))(s)),
    }
}

/// Make sure every layer of `img` is unpacked in `snapshotter`; returns the top chain id.
/// `client` should carry a lease: what this creates stays until the config's gc label
/// references it.
pub async fn unpack(client: &Client, img: &Resolved, snapshotter: &str) -> Result<String> {
    let chains = chain_ids(&img.diff_ids);
    let Some(top) = chains.last().cloned() else {
        return Err(Error::invalid(
            format!("image {}", img.image.name),
            "it has no layers",
        ));
    };
    if snapshot_exists(client, snapshotter, &top).await? {
        return Ok(top);
    }
    for (i, chain) in chains.iter().enumerate() {
        if snapshot_exists(client, snapshotter, chain).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let key = format!("extract-{} {chain}", unique_suffix());
        let mounts = client
            .snapshots()
            .prepare(client.req(PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            }))
            .await
            .map_err(Error::rpc(format!(
                "prepare snapshot for layer {}",
                img.layers[i].digest
            )))?
            .into_inner()
            .mounts;
        let applied = apply_and_commit(client, img, i, snapshotter, &key, chain, mounts).await;
        if let Err(e) = applied {
            let _ = client
                .snapshots()
                .remove(client.req(RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key,
                }))
                .await;
            return Err(e);
        }
    }
    // The config references the top snapshot, so the image keeps it from the collector.
    label_blob(
        client,
        &img.config_desc.digest,
        &format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
        &top,
    )
    .await?;
    Ok(top)
}

async fn apply_and_commit(
    client: &Client,
    img: &Resolved,
    i: usize,
    snapshotter: &str,
    key: &str,
    chain: &str,
    mounts: Vec<Mount>,
) -> Result<()> {
    let layer = &img.layers[i];
    let applied = client
        .diff()
        .apply(client.stream_req(ApplyRequest {
            diff: Some(layer.clone()),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        }))
        .await
        .map_err(Error::rpc(format!("apply layer {}", layer.digest)))?
        .into_inner()
        .applied
        .unwrap_or_default();
    if applied.digest != img.diff_ids[i] {
        return Err(Error::invalid(
            format!("layer {}", layer.digest),
            format!(
                "it unpacked to {}, but the image config says {}",
                applied.digest, img.diff_ids[i]
            ),
        ));
    }
    match client
        .snapshots()
        .commit(client.req(CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: chain.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        }))
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            let _ = client
                .snapshots()
                .remove(client.req(RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.to_string(),
                }))
                .await;
        }
        Err(s) => return Err(Error::rpc(format!("commit snapshot {chain}"))(s)),
    }
    label_blob(
        client,
        &layer.digest,
        "containerd.io/uncompressed",
        &img.diff_ids[i],
    )
    .await
}

/// Set one label on a blob.
pub async fn label_blob(client: &Client, digest: &str, key: &str, value: &str) -> Result<()> {
    client
        .content()
        .update(client.req(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels: HashMap::from([(key.to_string(), value.to_string())]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{key}")],
            }),
        }))
        .await
        .map_err(Error::rpc(format!("label blob {digest}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let expect = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb"))
        );
        assert_eq!(c[1], expect);
        assert!(chain_ids(&[]).is_empty());
    }
}
