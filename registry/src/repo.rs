//! Operations on one repository of one registry: resolve a tag or digest, fetch manifests and blobs
//! (pushing is in `push`). Each operation tries the registry's endpoints in order (mirrors first; only
//! those with the capability the operation needs) and returns the first success.
//!
//! Manifests are verified here (digest and size) before anything is returned. Blobs are streamed to the
//! caller, who hashes them; this module must never hold a whole blob in memory.

use std::sync::Arc;

use berth_image::oci::{self, media, Descriptor, Platform};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use http::{Method, StatusCode, Uri};
use hyper::body::Incoming;

use crate::blob::{read_all, sha256_digest, BlobStream, Hasher};
use crate::client::{make_uri, RegistryClient, Req};
use crate::error::{RegistryError, Result};
use crate::hosts::{Capabilities, Endpoint};
use crate::reference::{check_digest, Reference};
use crate::transport::TlsKey;

/// Manifests and indexes larger than this are refused (containerd's limit is similar).
pub const MANIFEST_LIMIT: usize = 8 << 20;

/// What `Accept` lists for manifests: every manifest and index type we understand.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, */*";

/// A resolved reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The normalised name (what containerd stores as the image name).
    pub name: String,
    /// The manifest's or index's descriptor (media type, digest, size).
    pub descriptor: Descriptor,
}

/// One repository on one registry, with its endpoints resolved. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Repository {
    pub(crate) client: RegistryClient,
    pub(crate) registry: String,
    pub(crate) repository: String,
    pub(crate) endpoints: Arc<[Endpoint]>,
}

impl Repository {
    pub(crate) fn new(
        client: RegistryClient,
        registry: String,
        repository: String,
        endpoints: Vec<Endpoint>,
    ) -> Repository {
        Repository {
            client,
            registry,
            repository,
            endpoints: endpoints.into(),
        }
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The endpoints tried, in order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub(crate) fn scope(&self, push: bool) -> String {
        let actions = if push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", self.repository)
    }

    pub(crate) fn url_path(&self, ep: &Endpoint, kind: &str, object: &str) -> String {
        format!("{}/{}/{kind}/{object}", ep.path, self.repository)
    }

    fn with(&self, cap: fn(&Capabilities) -> bool) -> Vec<&Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| cap(&e.capabilities))
            .collect()
    }

    /// Try `op` on each endpoint with `cap` in order; the first success wins. When all fail: NotFound
    /// only if every endpoint said so, else the last other error.
    async fn each_endpoint<'a, T, F, Fut>(
        &'a self,
        cap: fn(&Capabilities) -> bool,
        what: &str,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut(&'a Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let eps = self.with(cap);
        let mut last: Option<RegistryError> = None;
        let mut not_found: Vec<String> = Vec::new();
        for ep in eps {
            match op(ep).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::debug!("{what} from {}: {e}", ep.origin());
                    if e.is_not_found() {
                        not_found.push(ep.host.clone());
                    } else {
                        last = Some(e);
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::NotFound {
            registry: if not_found.is_empty() {
                format!("{} (no endpoint may be used for this)", self.registry)
            } else {
                not_found.join(", ")
            },
            what: what.to_string(),
        }))
    }

    /// Resolve `reference` (tag or digest) to its manifest's descriptor: HEAD with the manifest Accept
    /// list, GET when HEAD lacks the digest or size. A digest in the reference is checked against what
    /// the registry serves. Only endpoints with the `resolve` capability are asked.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let what = format!("manifest {reference}");
        let descriptor = self
            .each_endpoint(|c| c.resolve, &what, |ep| self.resolve_at(ep, reference))
            .await?;
        Ok(Resolved {
            name: reference.to_string(),
            descriptor,
        })
    }

    async fn resolve_at(&self, ep: &Endpoint, reference: &Reference) -> Result<Descriptor> {
        let what = format!("manifest {reference}");
        let path = self.url_path(ep, "manifests", reference.object());
        let scope = self.scope(false);
        let head = Req::new(Method::HEAD, path.clone()).header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.client.send_authed(ep, &scope, &head).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: ep.host.clone(),
                what,
            });
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(http_error(ep, &head, resp).await);
        }
        if status.is_success() {
            let h = resp.headers();
            let digest = header_str(h, "docker-content-digest");
            let size = header_str(h, CONTENT_LENGTH.as_str()).and_then(|s| s.parse::<i64>().ok());
            let mt = header_str(h, CONTENT_TYPE.as_str()).map(base_media_type);
            if let (Some(digest), Some(size), Some(mt)) = (digest, size, mt) {
                if size > 0 && (media::is_manifest(&mt) || media::is_index(&mt)) {
                    if let Some(want) = reference.digest() {
                        if want != digest {
                            return Err(RegistryError::DigestMismatch {
                                what,
                                expected: want.to_string(),
                                actual: digest,
                            });
                        }
                    }
                    check_digest(&digest).map_err(|reason| RegistryError::InvalidManifest {
                        what: what.clone(),
                        reason: format!("registry sent a bad Docker-Content-Digest: {reason}"),
                    })?;
                    return Ok(Descriptor {
                        media_type: mt,
                        digest,
                        size,
                        ..Default::default()
                    });
                }
            }
        }
        // Some registries answer HEAD without the digest, or not at all: GET and hash.
        let get = Req::new(Method::GET, path).header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.client.send_authed(ep, &scope, &get).await?;
        let resp = self.expect_ok(ep, resp, &get, &what).await?;
        let header_mt = header_str(resp.headers(), CONTENT_TYPE.as_str()).map(base_media_type);
        let want_digest = reference.digest().unwrap_or("sha256:").to_string();
        let stream = self.stream(resp, what.clone(), want_digest.clone(), 0, None);
        let body = read_all(stream, MANIFEST_LIMIT).await?;
        let mut hasher =
            Hasher::for_digest(&want_digest).ok_or_else(|| RegistryError::InvalidManifest {
                what: what.clone(),
                reason: format!("unsupported digest algorithm in {want_digest}"),
            })?;
        hasher.update(&body);
        let digest = hasher.finish();
        if let Some(want) = reference.digest() {
            if want != digest {
                return Err(RegistryError::DigestMismatch {
                    what,
                    expected: want.to_string(),
                    actual: digest,
                });
            }
        }
        let media_type = match header_mt {
            Some(mt) if media::is_manifest(&mt) || media::is_index(&mt) => mt,
            _ => sniff_media_type(&body).ok_or_else(|| RegistryError::InvalidManifest {
                what: what.clone(),
                reason: "neither an image manifest nor an index".into(),
            })?,
        };
        Ok(Descriptor {
            media_type,
            digest,
            size: body.len() as i64,
            ..Default::default()
        })
    }

    /// The manifest or index `desc` names, with its digest and size verified (a mismatch is an error
    /// naming both digests, and nothing is returned).
    pub async fn fetch_manifest(&self, desc: &Descriptor) -> Result<Bytes> {
        check_digest(&desc.digest).map_err(|reason| RegistryError::InvalidManifest {
            what: desc.digest.clone(),
            reason,
        })?;
        let size = usize::try_from(desc.size).unwrap_or(0);
        if size > MANIFEST_LIMIT {
            return Err(RegistryError::InvalidManifest {
                what: desc.digest.clone(),
                reason: format!("{size} bytes is more than the {MANIFEST_LIMIT}-byte limit"),
            });
        }
        let what = format!("manifest {} in {}", desc.digest, self.name());
        let what = what.as_str();
        self.each_endpoint(
            |c| c.pull,
            what,
            |ep| async move {
                let accept = if desc.media_type.is_empty() {
                    MANIFEST_ACCEPT.to_string()
                } else {
                    format!("{}, {MANIFEST_ACCEPT}", desc.media_type)
                };
                let req = Req::new(Method::GET, self.url_path(ep, "manifests", &desc.digest))
                    .header(ACCEPT, &accept);
                let resp = self
                    .client
                    .send_authed(ep, &self.scope(false), &req)
                    .await?;
                let resp = self.expect_ok(ep, resp, &req, what).await?;
                let stream = self.stream(
                    resp,
                    what.to_string(),
                    desc.digest.clone(),
                    0,
                    Some(size as u64),
                );
                let body = read_all(stream, size.max(1)).await?;
                verify(what, desc, &body)?;
                Ok(body)
            },
        )
        .await
    }

    /// A stream of blob `desc`'s bytes from `offset` (a `Range: bytes=offset-` request), following
    /// redirects to blob storage (Authorization is dropped when the redirect leaves the registry's host).
    ///
    /// With `offset > 0` the registry must answer 206; if it sends the whole blob instead, this returns
    /// [`RegistryError::RangeNotSupported`] and the caller restarts from 0. The caller hashes the bytes
    /// (or uses [`BlobStream::verified`] when starting from 0).
    pub async fn fetch_blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobStream> {
        check_digest(&desc.digest).map_err(|reason| RegistryError::InvalidManifest {
            what: desc.digest.clone(),
            reason,
        })?;
        let total = u64::try_from(desc.size).ok().filter(|s| *s > 0);
        if let Some(t) = total {
            if offset > t {
                return Err(RegistryError::SizeMismatch {
                    what: format!("blob in {}", self.name()),
                    digest: desc.digest.clone(),
                    expected: t,
                    actual: offset,
                });
            }
        }
        let what = format!("blob {} in {}", desc.digest, self.name());
        let what = what.as_str();
        self.each_endpoint(
            |c| c.pull,
            what,
            |ep| async move {
                let mut req = Req::new(Method::GET, self.url_path(ep, "blobs", &desc.digest));
                if offset > 0 {
                    req = req.header(RANGE, &format!("bytes={offset}-"));
                }
                let resp = self.get_following(ep, &req, what).await?;
                let status = resp.status();
                if offset > 0 && status != StatusCode::PARTIAL_CONTENT {
                    return Err(RegistryError::RangeNotSupported {
                        registry: ep.host.clone(),
                        digest: desc.digest.clone(),
                        offset,
                    });
                }
                let start = if status == StatusCode::PARTIAL_CONTENT {
                    offset
                } else {
                    0
                };
                Ok(self.stream(resp, what.to_string(), desc.digest.clone(), start, total))
            },
        )
        .await
    }

    /// GET `req` on `ep` with auth, then follow up to 5 redirects; a 2xx response or an error.
    async fn get_following(
        &self,
        ep: &Endpoint,
        req: &Req,
        what: &str,
    ) -> Result<http::Response<Incoming>> {
        let scope = self.scope(false);
        let mut resp = self.client.send_authed(ep, &scope, req).await?;
        let mut current: Uri = make_uri(ep.scheme, &ep.host, &req.path)?;
        for _ in 0..5 {
            if !resp.status().is_redirection() {
                return self.expect_ok(ep, resp, req, what).await;
            }
            let location = header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| {
                RegistryError::Http {
                    method: "GET".into(),
                    url: current.to_string(),
                    status: resp.status().as_u16(),
                    body: "redirect without Location".into(),
                }
            })?;
            let next = join_location(&current, &location)?;
            let same_host = next.authority().map(|a| a.as_str()) == Some(ep.host.as_str());
            let path = next
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let mut hop = req.clone();
            hop.path = path;
            resp = if same_host {
                self.client.send_authed(ep, &scope, &hop).await?
            } else {
                // Blob storage elsewhere: never send it the registry's Authorization.
                let key = TlsKey {
                    ca: ep.ca.clone(),
                    skip_verify: ep.skip_verify,
                };
                self.client.send_retrying(&key, &next, &hop, &[]).await?
            };
            current = next;
        }
        Err(RegistryError::Http {
            method: "GET".into(),
            url: current.to_string(),
            status: resp.status().as_u16(),
            body: "too many redirects".into(),
        })
    }

    fn stream(
        &self,
        resp: http::Response<Incoming>,
        what: String,
        digest: String,
        start: u64,
        total: Option<u64>,
    ) -> BlobStream {
        BlobStream::new(
            resp.into_body(),
            what,
            digest,
            start,
            total,
            self.client.config().read_timeout,
        )
    }

    /// `resp` when it is a 2xx; NotFound for 404; an Http error with a body excerpt otherwise.
    async fn expect_ok(
        &self,
        ep: &Endpoint,
        resp: http::Response<Incoming>,
        req: &Req,
        what: &str,
    ) -> Result<http::Response<Incoming>> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: ep.host.clone(),
                what: what.to_string(),
            });
        }
        Err(http_error(ep, req, resp).await)
    }
}

/// The child manifest of index `index` (an OCI index or Docker manifest list) for `platform`; the
/// error lists the platforms the index has.
pub fn select_manifest(index: &[u8], platform: &Platform) -> Result<Descriptor> {
    let digest = sha256_digest(index);
    let parsed: oci::Index =
        serde_json::from_slice(index).map_err(|e| RegistryError::InvalidManifest {
            what: digest.clone(),
            reason: format!("not an image index: {e}"),
        })?;
    if let Some(d) = parsed.select(platform) {
        return Ok(d.clone());
    }
    Err(RegistryError::PlatformNotFound {
        wanted: platform.to_string(),
        index: digest,
        available: parsed
            .manifests
            .iter()
            .map(|d| {
                d.platform
                    .as_ref()
                    .map_or_else(|| "unknown".to_string(), Platform::to_string)
            })
            .collect(),
    })
}

/// Check `body` against `desc` (size, then digest).
fn verify(what: &str, desc: &Descriptor, body: &[u8]) -> Result<()> {
    if desc.size >= 0 && body.len() as u64 != desc.size as u64 {
        return Err(RegistryError::SizeMismatch {
            what: what.to_string(),
            digest: desc.digest.clone(),
            expected: desc.size as u64,
            actual: body.len() as u64,
        });
    }
    let mut h = Hasher::for_digest(&desc.digest).ok_or_else(|| RegistryError::InvalidManifest {
        what: what.to_string(),
        reason: format!("unsupported digest algorithm in {}", desc.digest),
    })?;
    h.update(body);
    let actual = h.finish();
    if actual != desc.digest {
        return Err(RegistryError::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// The media type a manifest's JSON declares, or guessed from its shape.
fn sniff_media_type(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str()) {
        if media::is_manifest(mt) || media::is_index(mt) {
            return Some(mt.to_string());
        }
    }
    if v.get("manifests").is_some() {
        Some(media::OCI_INDEX.to_string())
    } else if v.get("config").is_some() {
        Some(media::OCI_MANIFEST.to_string())
    } else {
        None
    }
}

pub(crate) fn header_str(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// `application/json; charset=utf-8` → `application/json`.
fn base_media_type(s: String) -> String {
    s.split(';').next().unwrap_or_default().trim().to_string()
}

/// `location` (absolute URL or absolute path) relative to `base`.
pub(crate) fn join_location(base: &Uri, location: &str) -> Result<Uri> {
    let bad = |e: String| RegistryError::Http {
        method: "GET".into(),
        url: base.to_string(),
        status: 0,
        body: format!("bad Location {location:?}: {e}"),
    };
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().map_err(|e| bad(format!("{e}")));
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    format!(
        "{}://{}{path}",
        base.scheme_str().unwrap_or("https"),
        base.authority().map(|a| a.as_str()).unwrap_or_default()
    )
    .parse()
    .map_err(|e| bad(format!("{e}")))
}

/// An Http error for `resp`, with the start of its body.
pub(crate) async fn http_error(
    ep: &Endpoint,
    req: &Req,
    resp: http::Response<Incoming>,
) -> RegistryError {
    use http_body_util::BodyExt as _;
    let status = resp.status().as_u16();
    let body = match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http_body_util::Limited::new(resp.into_body(), 64 << 10).collect(),
    )
    .await
    {
        Ok(Ok(b)) => {
            let b = b.to_bytes();
            let text = String::from_utf8_lossy(&b[..b.len().min(512)])
                .trim()
                .to_string();
            text
        }
        _ => String::new(),
    };
    RegistryError::Http {
        method: req.method.to_string(),
        url: format!("{}{}", ep.host, req.path),
        status,
        body,
    }
}
