//! Connections: a hyper-util pooled HTTP/1.1 client per TLS configuration, over an HTTP(S) connector built
//! on tokio-rustls (ring), with system roots from rustls-native-certs plus per-host CA files, or no
//! verification at all for `skip_verify` hosts.
//!
//! Pools are keyed by TLS configuration (CA files + skip_verify), and inside each pool hyper keys idle
//! connections by scheme and host, so keep-alive connections are reused per host. This module must never
//! retry, authenticate or interpret statuses: that is the client's job.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{RegistryError, Result};

/// The pooled client type every request goes through.
pub(crate) type HttpClient = Client<Connector, Full<Bytes>>;

/// What makes two hosts' TLS settings different.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TlsKey {
    pub ca: Vec<PathBuf>,
    pub skip_verify: bool,
}

/// Why a connection could not be made; found again in hyper's error chain to build a precise
/// [`RegistryError`].
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub host: String,
    pub tls: bool,
    pub source: io::Error,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.tls { "TLS handshake" } else { "connect" };
        write!(f, "{what} to {}: {}", self.host, self.source)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl ConnectError {
    /// The rustls error behind a TLS failure, if any.
    pub fn rustls(&self) -> Option<&rustls::Error> {
        self.source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
    }

    /// Whether the peer answered something that is not TLS (a plain-HTTP server).
    pub fn not_tls(&self) -> bool {
        matches!(self.rustls(), Some(rustls::Error::InvalidMessage(_)))
            || (self.tls
                && self.source.kind() == io::ErrorKind::InvalidData
                && self.rustls().is_none())
    }

    pub fn into_registry_error(self) -> RegistryError {
        if !self.tls {
            return RegistryError::Connect {
                host: self.host,
                reason: self.source.to_string(),
            };
        }
        let hint = match self.rustls() {
            Some(rustls::Error::InvalidCertificate(_)) => format!(
                " (the certificate is not trusted: add its CA as `ca` in <hosts_dir>/{}/hosts.toml, \
                 or set skip_verify)",
                self.host
            ),
            _ if self.not_tls() => {
                " (the server does not seem to speak TLS: use plain HTTP for it)".to_string()
            }
            _ => String::new(),
        };
        let not_tls = self.not_tls();
        RegistryError::Tls {
            host: self.host,
            reason: self.source.to_string(),
            hint,
            not_tls,
        }
    }
}

/// A TCP or TLS connection.
pub(crate) enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Connects `http://` URIs over TCP and `https://` ones over TLS.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    tls: TlsConnector,
}

impl tower::Service<Uri> for Connector {
    type Response = Stream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let https = uri.scheme_str() == Some("https");
            let tcp = tower::Service::call(&mut http, uri.clone())
                .await
                .map_err(|e| ConnectError {
                    host: host.clone(),
                    tls: false,
                    source: io::Error::other(error_chain(&e)),
                })?;
            if !https {
                return Ok(Stream::Plain(tcp));
            }
            let name = uri.host().unwrap_or_default();
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let server_name = ServerName::try_from(name.to_string()).map_err(|e| ConnectError {
                host: host.clone(),
                tls: true,
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
            let stream = tls
                .connect(server_name, tcp.into_inner())
                .await
                .map_err(|source| ConnectError {
                    host,
                    tls: true,
                    source,
                })?;
            Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// `e` and its sources, joined with ": ".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The ring provider (the only one compiled in: the workspace chose ring to avoid aws-lc-rs' C/cmake
/// build). rustls 0.23.48 deprecates it for lacking post-quantum key exchange, which registries do not
/// need.
fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    #[allow(deprecated)]
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trust roots, read once per process.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("loading system CA certificates: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!("system roots: {added} added, {ignored} ignored");
        roots
    })
}

/// Accepts any certificate (still checking the handshake's signatures, so the peer holds the key of the
/// certificate it showed). Only for hosts configured with `skip_verify`.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls client config for `key`.
fn tls_config(key: &TlsKey) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Config {
            path: "<tls>".into(),
            reason: e.to_string(),
        })?;
    let mut config = if key.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = system_roots().clone();
        for path in &key.ca {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| RegistryError::Config {
                path: path.display().to_string(),
                reason: format!("cannot read CA certificates: {e}"),
            })?;
            let mut n = 0;
            for cert in certs {
                let cert = cert.map_err(|e| RegistryError::Config {
                    path: path.display().to_string(),
                    reason: format!("bad PEM certificate: {e}"),
                })?;
                roots.add(cert).map_err(|e| RegistryError::Config {
                    path: path.display().to_string(),
                    reason: format!("unusable CA certificate: {e}"),
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(RegistryError::Config {
                    path: path.display().to_string(),
                    reason: "no PEM certificate in the CA file".into(),
                });
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A pooled HTTP/1.1 client for hosts with TLS settings `key`.
pub(crate) fn build_client(key: &TlsKey, connect_timeout: Duration) -> Result<HttpClient> {
    if key.skip_verify {
        tracing::warn!(
            "TLS certificate verification is disabled for a registry host (skip_verify)"
        );
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = Connector {
        http,
        tls: TlsConnector::from(Arc::new(tls_config(key)?)),
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(16)
        .build(connector))
}
