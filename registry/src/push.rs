//! Pushing to a registry: blobs (monolithic upload, skipped when the registry has them) and manifests.
//! For `images push` and tests; the pull path never uses this module, and it must never push to a host
//! without the `push` capability.

use berth_image::oci::Descriptor;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{Method, StatusCode, Uri};

use crate::blob::sha256_digest;
use crate::client::{make_uri, Req};
use crate::error::{RegistryError, Result};
use crate::hosts::Endpoint;
use crate::repo::{header_str, http_error, join_location, Repository};
use crate::transport::TlsKey;

impl Repository {
    /// Upload `data` as a blob (monolithic: POST to open an upload, PUT with `?digest=`), unless the
    /// registry already has it (HEAD). Uses the first endpoint with the `push` capability.
    pub async fn push_blob(&self, media_type: &str, data: Bytes) -> Result<Descriptor> {
        let desc = Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            size: data.len() as i64,
            ..Default::default()
        };
        let ep = self.push_endpoint()?;
        let scope = self.scope(true);
        let head = Req::new(Method::HEAD, self.url_path(ep, "blobs", &desc.digest));
        let resp = self.client.send_authed(ep, &scope, &head).await?;
        if resp.status().is_success() {
            return Ok(desc);
        }
        drop(resp);
        let post = Req::new(
            Method::POST,
            format!("{}/{}/blobs/uploads/", ep.path, self.repository),
        );
        let resp = self.client.send_authed(ep, &scope, &post).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(http_error(ep, &post, resp).await);
        }
        let location =
            header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| RegistryError::Http {
                method: "POST".into(),
                url: post.path.clone(),
                status: 202,
                body: "upload started without a Location".into(),
            })?;
        drop(resp);
        let base = make_uri(ep.scheme, &ep.host, &post.path)?;
        let upload = join_location(&base, &location)?;
        let pq = upload.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let sep = if pq.contains('?') { '&' } else { '?' };
        let put = Req::new(
            Method::PUT,
            format!("{pq}{sep}digest={}", crate::auth::urlencode(&desc.digest)),
        )
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(data);
        let resp = if upload.authority().map(|a| a.as_str()) == Some(ep.host.as_str()) {
            self.client.send_authed(ep, &scope, &put).await?
        } else {
            let key = TlsKey {
                ca: ep.ca.clone(),
                skip_verify: ep.skip_verify,
            };
            let uri: Uri = format!(
                "{}://{}{}",
                upload.scheme_str().unwrap_or("https"),
                upload.authority().map(|a| a.as_str()).unwrap_or_default(),
                put.path
            )
            .parse()
            .map_err(|e| RegistryError::Config {
                path: location.clone(),
                reason: format!("bad upload URL: {e}"),
            })?;
            self.client.send_retrying(&key, &uri, &put, &[]).await?
        };
        if resp.status() != StatusCode::CREATED {
            return Err(http_error(ep, &put, resp).await);
        }
        Ok(desc)
    }

    /// Upload a manifest or index under `tag_or_digest` with its media type; returns its descriptor.
    /// The registry's Docker-Content-Digest, when sent, must match what we computed.
    pub async fn push_manifest(
        &self,
        tag_or_digest: &str,
        media_type: &str,
        data: Bytes,
    ) -> Result<Descriptor> {
        let desc = Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            size: data.len() as i64,
            ..Default::default()
        };
        let ep = self.push_endpoint()?;
        let put = Req::new(Method::PUT, self.url_path(ep, "manifests", tag_or_digest))
            .header(CONTENT_TYPE, media_type)
            .body(data);
        let resp = self.client.send_authed(ep, &self.scope(true), &put).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(http_error(ep, &put, resp).await);
        }
        if let Some(d) = header_str(resp.headers(), "docker-content-digest") {
            if d != desc.digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("manifest {tag_or_digest} pushed to {}", self.name()),
                    expected: desc.digest,
                    actual: d,
                });
            }
        }
        Ok(desc)
    }

    fn push_endpoint(&self) -> Result<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.capabilities.push)
            .ok_or_else(|| RegistryError::Config {
                path: self.registry.clone(),
                reason: "no host of this registry has the push capability".into(),
            })
    }
}
