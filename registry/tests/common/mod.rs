//! Shared pieces of the registry client's tests: a client with short timeouts, pushing harness OCI layouts
//! with our own push API, docker-registry with TLS or htpasswd (the harness's launcher has neither), a
//! throwaway CA made with the `openssl` CLI, and the harness's counting HTTP proxy (`berth_tests::regproxy`)
//! that can play a bearer-token registry, fail with 503s, or serve the API under another path.
//!
//! Loopback only. Every process started here is killed by PID when its owner drops; the proxy is a task of
//! the test's own runtime.

#![allow(dead_code)]

#[allow(unused_imports)] // not every test binary uses the proxy
pub use berth_tests::regproxy::{Bearer, Proxy, ProxyOptions};

use std::path::Path;
use std::time::Duration;

use berth_image::oci::{media, Descriptor};
use berth_registry::{ClientConfig, Reference, RegistryClient, Repository, RequestOptions};
use berth_tests::oci_layout::{MultiPlatformLayout, OciLayout};
use bytes::Bytes;

/// A client with short timeouts and backoff, reading hosts config from `hosts_dir`.
pub fn client(hosts_dir: Option<&Path>) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        hosts_dir: hosts_dir.map(Path::to_path_buf),
        read_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(20),
        ..Default::default()
    })
}

/// Options for a plain-HTTP loopback registry.
pub fn plain() -> RequestOptions {
    RequestOptions {
        plain_http: true,
        ..Default::default()
    }
}

/// `reference` parsed (panics on error).
#[track_caller]
pub fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Push one image of a harness layout (blobs, then the manifest under `tag`) with our push API.
pub async fn push_image(repo: &Repository, image: &OciLayout, tag: &str) -> Descriptor {
    for b in image.blobs() {
        let d = repo
            .push_blob(&b.media_type, Bytes::from(image.blob(&b.digest)))
            .await
            .unwrap_or_else(|e| panic!("push blob {}: {e}", b.digest));
        assert_eq!(d.digest, b.digest);
    }
    let m = repo
        .push_manifest(
            tag,
            media::OCI_MANIFEST,
            Bytes::from(image.blob(&image.manifest.digest)),
        )
        .await
        .unwrap_or_else(|e| panic!("push manifest: {e}"));
    assert_eq!(m.digest, image.manifest.digest);
    m
}

/// Push a multi-platform layout: every image by digest, then the index under `tag`.
pub async fn push_multi(repo: &Repository, layout: &MultiPlatformLayout, tag: &str) -> Descriptor {
    for (_, image) in &layout.images {
        push_image(repo, image, &image.manifest.digest).await;
    }
    let bytes = std::fs::read(berth_tests::oci_layout::blob_path(
        &layout.path,
        &layout.index.digest,
    ))
    .unwrap_or_else(|e| panic!("read index: {e}"));
    let d = repo
        .push_manifest(tag, media::OCI_INDEX, Bytes::from(bytes))
        .await
        .unwrap_or_else(|e| panic!("push index: {e}"));
    assert_eq!(d.digest, layout.index.digest);
    d
}

/// Read a blob stream to the end; `(bytes, first error)`.
pub async fn drain(
    mut s: berth_registry::BlobStream,
) -> (Vec<u8>, Option<berth_registry::RegistryError>) {
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().await {
        match c {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// The TLS/auth registry helpers are the harness's own (berth_tests::regtls); these tests used a copy.
// Each test binary uses a different part of this module.
#[allow(unused_imports)]
pub use berth_tests::regtls::{make_certs, write_hosts, Certs, RegistryProc};
