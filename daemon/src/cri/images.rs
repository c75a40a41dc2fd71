//! Images for CRI: finding one by what the kubelet names it (a reference, a repo digest, or the image id,
//! which is the config digest, as containerd's CRI), reading its manifest and config from the content store,
//! and the ImageService (pulls go through the pull subsystem, the same path as containerd's Transfer).
//!
//! This module must never write content or snapshots itself: pulls do, and deletes only drop the records
//! and leave the rest to the garbage collector.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use berth_image::oci::{chain_ids, Descriptor, ImageConfig, Index, Manifest, Platform};
use berth_proto::containerd_client::services::v1::Image as BerthImage;
use berth_proto::cri;
use berth_proto::cri::image_service_server::ImageService as ImageApi;
use berth_registry::{Credentials, Reference};
use tonic::{Request, Response, Status};

use super::{Cri, NAMESPACE};
use crate::pull::{CredentialSource, Plan, PullRequest, Resolver, Unpack};
use crate::store::blocking;

/// containerd's CRI marks the images it manages with this label.
const MANAGED_LABEL: &str = "io.cri-containerd.image";

/// An image resolved for this host's platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The image records naming it.
    pub names: Vec<String>,
    /// Its manifest (or index) digest.
    pub target: String,
    /// The config digest: the image id.
    pub id: String,
    pub config: ImageConfig,
    /// Chain id of the top layer: the snapshot a rootfs sits on.
    pub chain_id: String,
    /// Manifest, config and layers.
    pub size: u64,
}

fn read_blob(cri: &Cri, digest: &str) -> Result<Vec<u8>, Status> {
    let d = berth_image::digest::Digest::parse(digest)
        .map_err(|e| Status::data_loss(format!("digest {digest:?}: {e}")))?;
    let path = cri.ctx().images.content().blob_path(&d);
    std::fs::read(&path).map_err(|e| {
        Status::failed_precondition(format!(
            "blob {digest} of the image is not in the content store ({e}); pull the image again"
        ))
    })
}

/// Read manifest and config of `target` (an index picks the host's platform). Blocking.
fn resolve_target(
    cri: &Cri,
    target: &Descriptor,
) -> Result<(ImageConfig, String, String, u64), Status> {
    let bad = |what: &str, e: serde_json::Error| Status::data_loss(format!("{what}: {e}"));
    let mut desc = target.clone();
    for _ in 0..4 {
        let raw = read_blob(cri, &desc.digest)?;
        let value: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| bad("image manifest", e))?;
        let is_index = value.get("manifests").is_some();
        if is_index {
            let index: Index = serde_json::from_value(value).map_err(|e| bad("image index", e))?;
            desc = index.select(&Platform::host()).cloned().ok_or_else(|| {
                Status::not_found(format!(
                    "image index {} has no manifest for {}",
                    desc.digest,
                    Platform::host()
                ))
            })?;
            continue;
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| bad("image manifest", e))?;
        let config_raw = read_blob(cri, &manifest.config.digest)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_raw).map_err(|e| bad("image config", e))?;
        let chain = chain_ids(&config.rootfs.diff_ids)
            .pop()
            .ok_or_else(|| Status::data_loss("image config has no layers"))?;
        let layers: i64 = manifest.layers.iter().map(|l| l.size).sum();
        let size = (desc.size + manifest.config.size + layers).max(0) as u64;
        return Ok((config, manifest.config.digest.clone(), chain, size));
    }
    Err(Status::data_loss("image index nesting too deep"))
}

fn descriptor(img: &BerthImage) -> Descriptor {
    let t = img.target.clone().unwrap_or_default();
    Descriptor {
        media_type: t.media_type,
        digest: t.digest,
        size: t.size,
        ..Default::default()
    }
}

/// The image the kubelet means by `name`, or None.
pub async fn find(cri: &Cri, name: &str) -> Result<Option<Resolved>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("image must not be empty"));
    }
    let store = cri.ctx().store.clone();
    let all = blocking(move || store.list_images(NAMESPACE)).await?;
    let cri2 = cri.clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || find_blocking(&cri2, &all, &name))
        .await
        .map_err(|e| Status::internal(format!("resolving an image: {e}")))?
}

fn find_blocking(cri: &Cri, all: &[BerthImage], name: &str) -> Result<Option<Resolved>, Status> {
    let normal = crate::transfer::image_name(name);
    // By name first (a tag or a repo digest as stored), then by image id, then by repo digest.
    let mut hit = all.iter().find(|i| i.name == normal || i.name == name);
    let by_id = name.starts_with("sha256:") && name.len() == 71;
    let mut resolved = None;
    if hit.is_none() && by_id {
        for img in all {
            if let Ok(r) = resolve_target(cri, &descriptor(img)) {
                if r.1 == name {
                    hit = Some(img);
                    resolved = Some(r);
                    break;
                }
            }
        }
    }
    if hit.is_none() {
        if let Ok(r) = Reference::parse(name) {
            if let Some(d) = r.digest() {
                hit = all.iter().find(|i| {
                    i.target.as_ref().is_some_and(|t| t.digest == d)
                        && Reference::parse(&i.name).is_ok_and(|x| x.name() == r.name())
                });
            }
        }
    }
    let Some(img) = hit else {
        return Ok(None);
    };
    let (config, id, chain_id, size) = match resolved {
        Some(r) => r,
        None => resolve_target(cri, &descriptor(img))?,
    };
    let target = descriptor(img).digest;
    let names = all
        .iter()
        .filter(|i| i.target.as_ref().is_some_and(|t| t.digest == target))
        .map(|i| i.name.clone())
        .collect();
    Ok(Some(Resolved {
        names,
        target,
        id,
        config,
        chain_id,
        size,
    }))
}

/// The CRI view of a resolved image.
fn to_cri(r: &Resolved) -> cri::Image {
    let mut tags = Vec::new();
    let mut digests = Vec::new();
    for n in &r.names {
        match Reference::parse(n) {
            Ok(parsed) => {
                if parsed.digest().is_none() {
                    tags.push(n.clone());
                }
                let d = format!("{}@{}", parsed.name(), r.target);
                if !digests.contains(&d) {
                    digests.push(d);
                }
            }
            Err(_) => tags.push(n.clone()),
        }
    }
    let user = r.config.config.user.clone();
    let (uid, username) = match user.split(':').next().unwrap_or("") {
        "" => (Some(cri::Int64Value { value: 0 }), String::new()),
        u => match u.parse::<i64>() {
            Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
            Err(_) => (None, u.to_string()),
        },
    };
    cri::Image {
        id: r.id.clone(),
        repo_tags: tags,
        repo_digests: digests,
        size: r.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: r.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// Credentials from the kubelet's AuthConfig, for every host.
struct AuthConfigSource(Option<Credentials>);

#[tonic::async_trait]
impl CredentialSource for AuthConfigSource {
    async fn credentials(&self, _: &str, _: &str) -> Result<Option<Credentials>, Status> {
        Ok(self.0.clone())
    }
}

fn credentials(auth: Option<&cri::AuthConfig>) -> Result<Option<Credentials>, Status> {
    let Some(a) = auth else {
        return Ok(None);
    };
    if !a.registry_token.is_empty() {
        return Ok(Some(Credentials::Token(a.registry_token.clone())));
    }
    if !a.identity_token.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: String::new(),
            password: a.identity_token.clone(),
        }));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        }));
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth.auth is not base64: {e}")))?;
        let text = String::from_utf8(raw)
            .map_err(|_| Status::invalid_argument("auth.auth is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth.auth is not base64 of user:password"))?;
        return Ok(Some(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    Ok(None)
}

/// Pull `image` (a reference) into `k8s.io` and unpack it; returns the resolved image.
pub async fn pull(
    cri: &Cri,
    image: &str,
    auth: Option<&cri::AuthConfig>,
) -> Result<Resolved, Status> {
    let reference = Reference::parse(image)
        .map_err(|e| Status::invalid_argument(format!("image {image:?}: {e}")))?;
    let creds = credentials(auth)?;
    let (snapshotter, _) = cri.ctx().images.snapshotter("")?;
    let name = reference.to_string();
    let plan = Plan {
        reference: name.clone(),
        resolver: Resolver {
            hosts_dir: cri.ctx().config.cri.registry_config_path.clone(),
            // Loopback registries: HTTPS first, then plain HTTP (as containerd treats localhost).
            plain_http: reference.is_loopback(),
        },
        platforms: vec![Platform::host()],
        all_metadata: false,
        manifest_limit: 0,
        unpacks: vec![Unpack {
            platform: Platform::host(),
            snapshotter,
        }],
        image_names: vec![name.clone()],
        labels: BTreeMap::from([(MANAGED_LABEL.to_string(), "managed".to_string())]),
    };
    let req = PullRequest {
        ns: NAMESPACE.to_string(),
        plan,
        progress: None,
        auth: Some(Arc::new(AuthConfigSource(creds))),
        client_lease: None,
    };
    cri.inner.pulls.pull(req).await?;
    find(cri, &name)
        .await?
        .ok_or_else(|| Status::internal(format!("image {name} was pulled but is not recorded")))
}

/// The ImageService.
#[derive(Clone)]
pub struct ImageService {
    cri: Cri,
}

impl ImageService {
    pub fn new(cri: Cri) -> ImageService {
        ImageService { cri }
    }
}

fn image_of(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    spec.map(|s| s.image.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("image.image must not be empty"))
}

#[tonic::async_trait]
impl ImageApi for ImageService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|s| !s.is_empty());
        let store = self.cri.ctx().store.clone();
        let all = blocking(move || store.list_images(NAMESPACE)).await?;
        let cri2 = self.cri.clone();
        let images = tokio::task::spawn_blocking(move || {
            let mut by_id: HashMap<String, Resolved> = HashMap::new();
            for img in &all {
                // An image whose blobs are gone (a pull in progress, or GC) is not listed.
                if let Ok(Some(r)) = find_blocking(&cri2, &all, &img.name) {
                    by_id.entry(r.id.clone()).or_insert(r);
                }
            }
            by_id
        })
        .await
        .map_err(|e| Status::internal(format!("listing images: {e}")))?;
        let mut out: Vec<cri::Image> = images.values().map(to_cri).collect();
        if let Some(f) = filter {
            let want = crate::transfer::image_name(&f);
            out.retain(|i| {
                i.id == f || i.repo_tags.contains(&want) || i.repo_digests.contains(&want)
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(cri::ListImagesResponse { images: out }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let r = req.into_inner();
        let name = image_of(r.image.as_ref())?;
        let found = find(&self.cri, name).await?;
        let mut info = HashMap::new();
        if r.verbose {
            if let Some(f) = &found {
                let v = serde_json::json!({ "chainID": f.chain_id, "config": f.config });
                info.insert("info".to_string(), v.to_string());
            }
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: found.as_ref().map(to_cri),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = req.into_inner();
        let name = image_of(r.image.as_ref())?;
        let span = tracing::info_span!("cri_pull", namespace = NAMESPACE, image = name);
        let resolved =
            tracing::Instrument::instrument(pull(&self.cri, name, r.auth.as_ref()), span).await?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: resolved.id,
        }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let r = req.into_inner();
        let name = image_of(r.image.as_ref())?;
        // Not found is success: the kubelet retries removals.
        let Some(found) = find(&self.cri, name).await? else {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        let svc = crate::services::images::ImagesService::new(self.cri.ctx().clone());
        use berth_proto::containerd::images::images_server::Images as _;
        for n in found.names {
            let del = berth_proto::containerd_client::services::v1::DeleteImageRequest {
                name: n,
                sync: false,
                target: None,
            };
            match svc.delete(super::ns_request(del)).await {
                Ok(_) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let root = self.cri.ctx().config.root.clone();
        let usage = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for sub in ["content", "snapshots"] {
                let dir = root.join(sub);
                let (bytes, inodes) = du(&dir);
                out.push(cri::FilesystemUsage {
                    timestamp: super::now_nanos(),
                    fs_id: Some(cri::FilesystemIdentifier {
                        mountpoint: dir.display().to_string(),
                    }),
                    used_bytes: Some(cri::UInt64Value { value: bytes }),
                    inodes_used: Some(cri::UInt64Value { value: inodes }),
                });
            }
            out
        })
        .await
        .map_err(|e| Status::internal(format!("measuring the image filesystem: {e}")))?;
        let (images, containers): (Vec<_>, Vec<_>) = usage.into_iter().partition(|u| {
            u.fs_id
                .as_ref()
                .is_some_and(|f| f.mountpoint.ends_with("content"))
        });
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: images,
            container_filesystems: containers,
        }))
    }
}

/// Bytes (allocated blocks) and inodes below `dir`, not following symlinks or crossing into mounts.
fn du(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_forms() {
        let basic = |u: &str, p: &str| {
            Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        let with = |a: cri::AuthConfig| credentials(Some(&a)).ok().flatten();
        assert_eq!(
            with(cri::AuthConfig {
                username: "u".into(),
                password: "p".into(),
                ..Default::default()
            }),
            basic("u", "p")
        );
        assert_eq!(
            with(cri::AuthConfig {
                auth: "dTpwOng=".into(),
                ..Default::default()
            }),
            basic("u", "p:x")
        );
        assert_eq!(
            with(cri::AuthConfig {
                registry_token: "t".into(),
                ..Default::default()
            }),
            Some(Credentials::Token("t".into()))
        );
        assert!(credentials(Some(&cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        }))
        .is_err());
        assert_eq!(credentials(None).ok().flatten(), None);
    }
}
