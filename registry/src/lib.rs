//! berth-registry: the OCI distribution client berthd's server-side pull (and `images push`) drives.
//!
//! It parses references like docker ([`Reference`]), finds where to send requests from containerd-style
//! `hosts.toml` files ([`hosts`]), authenticates (Basic, bearer tokens; [`auth`]), and fetches manifests
//! (verified) and blobs (streamed) over pooled HTTP/1.1 keep-alive connections with rustls ([`RegistryClient`],
//! [`Repository`]). It is an async library on tokio + hyper; it keeps no state on disk and must never
//! write anywhere: storing content is the caller's business.
//!
//! ```no_run
//! # async fn pull() -> berth_registry::Result<()> {
//! use berth_registry::{select_manifest, ClientConfig, Reference, RegistryClient, RequestOptions};
//! let client = RegistryClient::new(ClientConfig::default());
//! let reference = Reference::parse("localhost:5000/busybox")?;
//! let repo = client.repository(&reference, &RequestOptions { plain_http: true, ..Default::default() })?;
//! let resolved = repo.resolve(&reference).await?;
//! let index = repo.fetch_manifest(&resolved.descriptor).await?;
//! let manifest = select_manifest(&index, &berth_image::oci::Platform::host())?;
//! let mut blob = repo.fetch_blob(&manifest, 0).await?.verified()?;
//! while let Some(chunk) = blob.next_chunk().await {
//!     let _bytes = chunk?;
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod auth;
mod authflow;
mod blob;
mod client;
pub mod error;
pub mod hosts;
mod push;
pub mod reference;
mod repo;
mod transport;

pub use auth::Credentials;
pub use blob::{sha256_digest, BlobStream, VerifiedBlob};
pub use client::{ClientConfig, RegistryClient};
pub use error::{RegistryError, Result};
pub use hosts::{Endpoint, RequestOptions, ResolveOptions};
pub use reference::Reference;
pub use repo::{select_manifest, Repository, Resolved, MANIFEST_ACCEPT, MANIFEST_LIMIT};
