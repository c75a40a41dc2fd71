//! The one error type of this crate: every failure names what it was about (reference, registry, digest,
//! scope, host) so that berthd can hand it to a user as it is.
//!
//! It must never carry secrets: no credentials, no tokens, no Authorization headers in any message.

use std::time::Duration;

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference string does not follow docker's grammar.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The string as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry says the manifest or blob does not exist.
    #[error("{what} not found on {registry}")]
    NotFound {
        /// The registry host (or every host tried).
        registry: String,
        /// "manifest docker.io/library/x:tag", "blob sha256:... in library/x".
        what: String,
    },
    /// The registry refused our credentials (or wants some).
    #[error("unauthorized: {registry} refused access to {scope:?}: {detail}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The scope asked for (`repository:library/x:pull`).
        scope: String,
        /// Why (no credentials, token refused, ...).
        detail: String,
    },
    /// Content did not hash to its descriptor's digest.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was fetched (manifest or blob, with its repository).
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Content did not have its descriptor's size.
    #[error("size mismatch for {what} {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was fetched.
        what: String,
        /// Its digest.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// What arrived (or at least arrived, when there was more).
        actual: u64,
    },
    /// A status the protocol does not expect here.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Http {
        /// Request method.
        method: String,
        /// Request URL (never with credentials).
        url: String,
        /// Response status.
        status: u16,
        /// The start of the response body (errors JSON usually).
        body: String,
    },
    /// TLS handshake or certificate failure.
    #[error("TLS connection to {host} failed: {reason}{hint}")]
    Tls {
        /// host:port.
        host: String,
        /// rustls' reason.
        reason: String,
        /// What could help (a `ca` in hosts.toml, `skip_verify`, plain HTTP).
        hint: String,
        /// The server answered something that is not TLS (probably plain HTTP).
        not_tls: bool,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to {host}: {reason}")]
    Connect {
        /// host:port.
        host: String,
        /// Why.
        reason: String,
    },
    /// Transport or local file failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No answer (or no data) in time.
    #[error("{what}: no data for {after:?}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// A manifest or index that cannot be used.
    #[error("invalid manifest {what}: {reason}")]
    InvalidManifest {
        /// Which manifest (reference or digest).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An index without a manifest for the wanted platform.
    #[error("no manifest for platform {wanted} in index {index}; it has: {}", available.join(", "))]
    PlatformNotFound {
        /// The platform asked for.
        wanted: String,
        /// The index's digest.
        index: String,
        /// Platforms the index lists.
        available: Vec<String>,
    },
    /// A blob fetch from an offset > 0 got the whole blob (no 206): restart from offset 0.
    #[error(
        "{registry} ignored the Range request for blob {digest} at offset {offset}: restart from 0"
    )]
    RangeNotSupported {
        /// The registry host.
        registry: String,
        /// The blob.
        digest: String,
        /// The offset asked for.
        offset: u64,
    },
    /// A hosts.toml (or other configuration) that cannot be used.
    #[error("registry config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl RegistryError {
    /// Whether trying the same thing again later may succeed: transport failures, timeouts, 429 and 5xx.
    /// Never a 4xx, a digest mismatch or a bad reference.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Http { status, .. } => *status == 429 || *status >= 500,
            RegistryError::Connect { .. }
            | RegistryError::Io { .. }
            | RegistryError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Whether the registry said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            context: context.into(),
            source,
        }
    }
}

/// This crate's result.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
