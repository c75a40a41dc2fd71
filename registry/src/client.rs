//! The registry client: configuration, connection pools, and the request path every operation shares
//! (per-host headers, HTTPS→HTTP fallback for loopback hosts, bounded retries with backoff; the
//! 401 → token → retry dance is in `authflow`).
//!
//! Operations on one repository live in [`crate::repo`]. This module must never buffer a response body it
//! does not own: bodies go back to the caller as hyper's `Incoming`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;

use crate::auth::AuthCache;
use crate::error::{RegistryError, Result};
use crate::hosts::{Endpoint, RequestOptions, Scheme};
use crate::reference::Reference;
use crate::repo::Repository;
use crate::transport::{build_client, error_chain, ConnectError, HttpClient, TlsKey};

/// How the client behaves; `Default` gives containerd-like values.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// containerd-style hosts directory (`<dir>/<host>/hosts.toml`); `None`: defaults only.
    pub hosts_dir: Option<PathBuf>,
    /// `User-Agent` of every request.
    pub user_agent: String,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for response headers, and for each next chunk of a body.
    pub read_timeout: Duration,
    /// Tries per request on connect errors, 429 and 5xx (1 = no retry).
    pub max_tries: u32,
    /// First backoff; doubled per retry, capped at 10 s.
    pub retry_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            hosts_dir: None,
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_tries: 5,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// An OCI distribution client. Cheap to clone: clones share pools, tokens and learnt host facts.
#[derive(Clone)]
pub struct RegistryClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: ClientConfig,
    pools: Mutex<HashMap<TlsKey, HttpClient>>,
    pub(crate) auth: AuthCache,
    /// Loopback hosts that answered HTTPS with something that is not TLS: HTTP from now on.
    plain_hosts: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// One request, kept so that it can be sent again (retries, auth, fallback).
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: Method,
    /// Absolute path and query on the endpoint's host.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Req {
    pub fn new(method: Method, path: impl Into<String>) -> Req {
        Req {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Req {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Req {
        self.body = body;
        self
    }
}

impl RegistryClient {
    /// A client with `config`. Nothing is read or connected until the first request.
    pub fn new(config: ClientConfig) -> RegistryClient {
        RegistryClient {
            inner: Arc::new(Inner {
                config,
                pools: Mutex::new(HashMap::new()),
                auth: AuthCache::default(),
                plain_hosts: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A handle on `reference`'s repository, with the hosts config read now (so edits to hosts.toml apply
    /// to the next call without a restart) and `opts` applied.
    pub fn repository(&self, reference: &Reference, opts: &RequestOptions) -> Result<Repository> {
        let endpoints = crate::hosts::endpoints(
            self.inner.config.hosts_dir.as_deref(),
            reference.registry(),
            opts,
        )?;
        Ok(Repository::new(
            self.clone(),
            reference.registry().to_string(),
            reference.repository().to_string(),
            endpoints,
        ))
    }

    /// Resolve `reference` to the descriptor of its manifest or index
    /// (see [`Repository::resolve`]).
    pub async fn resolve(
        &self,
        reference: &Reference,
        opts: &RequestOptions,
    ) -> Result<crate::repo::Resolved> {
        self.repository(reference, opts)?.resolve(reference).await
    }

    fn pool(&self, key: &TlsKey) -> Result<HttpClient> {
        let mut pools = self.inner.pools.lock().map_err(|_| RegistryError::Config {
            path: "<client>".into(),
            reason: "connection pool lock poisoned".into(),
        })?;
        if let Some(c) = pools.get(key) {
            return Ok(c.clone());
        }
        let c = build_client(key, self.inner.config.connect_timeout)?;
        pools.insert(key.clone(), c.clone());
        Ok(c)
    }

    /// One attempt: send, wait for the headers (bounded by the read timeout), map transport errors.
    async fn send_once(
        &self,
        key: &TlsKey,
        uri: &Uri,
        req: &Req,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Incoming>> {
        let pool = self.pool(key)?;
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(uri.clone())
            .header(USER_AGENT, &self.inner.config.user_agent);
        for (k, v) in req.headers.iter().chain(extra) {
            builder = builder.header(k, v);
        }
        let request =
            builder
                .body(Full::new(req.body.clone()))
                .map_err(|e| RegistryError::Http {
                    method: req.method.to_string(),
                    url: uri.to_string(),
                    status: 0,
                    body: format!("cannot build request: {e}"),
                })?;
        let timeout = self.inner.config.read_timeout;
        match tokio::time::timeout(timeout, pool.request(request)).await {
            Err(_) => Err(RegistryError::Timeout {
                what: format!("{} {uri}", req.method),
                after: timeout,
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(err) = cur {
                    if let Some(c) = err.downcast_ref::<ConnectError>() {
                        return Err(ConnectError {
                            host: c.host.clone(),
                            tls: c.tls,
                            source: std::io::Error::new(c.source.kind(), c.source.to_string()),
                        }
                        .with_rustls(c.rustls().cloned())
                        .into_registry_error());
                    }
                    cur = err.source();
                }
                Err(RegistryError::io(
                    format!("{} {uri}", req.method),
                    std::io::Error::other(error_chain(&e)),
                ))
            }
        }
    }

    /// Send with bounded retries on connect errors, timeouts, 429 and 5xx (never a 4xx).
    pub(crate) async fn send_retrying(
        &self,
        key: &TlsKey,
        uri: &Uri,
        req: &Req,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Incoming>> {
        let cfg = &self.inner.config;
        let tries = cfg.max_tries.max(1);
        let mut backoff = cfg.retry_backoff;
        for attempt in 1..=tries {
            let last = attempt == tries;
            match self.send_once(key, uri, req, extra).await {
                Ok(resp) => {
                    let s = resp.status();
                    if last || !(s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()) {
                        return Ok(resp);
                    }
                    let wait = retry_after(&resp).unwrap_or(backoff);
                    tracing::debug!(
                        "{} {uri}: {s}, retry {attempt}/{tries} in {wait:?}",
                        req.method
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    if last || !e.is_retryable() {
                        return Err(e);
                    }
                    tracing::debug!(
                        "{} {uri}: {e}, retry {attempt}/{tries} in {backoff:?}",
                        req.method
                    );
                    tokio::time::sleep(backoff).await;
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        Err(RegistryError::Connect {
            host: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            reason: "no attempt made".into(),
        })
    }

    /// Send to `ep` (its headers added), falling back from HTTPS to HTTP for loopback `plain_http` hosts.
    pub(crate) async fn send_endpoint(
        &self,
        ep: &Endpoint,
        req: &Req,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Incoming>> {
        let key = TlsKey {
            ca: ep.ca.clone(),
            skip_verify: ep.skip_verify,
        };
        let mut headers: Vec<(HeaderName, HeaderValue)> = extra.to_vec();
        for (k, v) in &ep.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.push((k, v));
            }
        }
        let known_plain = ep.http_fallback
            && self
                .inner
                .plain_hosts
                .lock()
                .map(|p| p.contains(&ep.host))
                .unwrap_or(false);
        let scheme = if known_plain { Scheme::Http } else { ep.scheme };
        let uri = make_uri(scheme, &ep.host, &req.path)?;
        match self.send_retrying(&key, &uri, req, &headers).await {
            Err(RegistryError::Tls { not_tls: true, .. })
                if ep.http_fallback && scheme == Scheme::Https =>
            {
                tracing::debug!("{}: no TLS, falling back to plain HTTP", ep.host);
                if let Ok(mut p) = self.inner.plain_hosts.lock() {
                    p.insert(ep.host.clone());
                }
                let uri = make_uri(Scheme::Http, &ep.host, &req.path)?;
                self.send_retrying(&key, &uri, req, &headers).await
            }
            other => other,
        }
    }
}

impl ConnectError {
    /// Keep the rustls error (for hints) when copying an error out of hyper's chain.
    fn with_rustls(mut self, tls: Option<rustls::Error>) -> ConnectError {
        if let Some(t) = tls {
            self.source = std::io::Error::new(self.source.kind(), t);
        }
        self
    }
}

/// Read a small error body to its end so that the keep-alive connection can be reused (an unread body
/// makes hyper close it); bodies past 64 KiB or slower than 5 s are dropped with their connection.
pub(crate) async fn drain_small(resp: Response<Incoming>) {
    let body = http_body_util::Limited::new(resp.into_body(), 64 << 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
}

fn retry_after(resp: &Response<Incoming>) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(10)))
}

pub(crate) fn make_uri(scheme: Scheme, host: &str, path: &str) -> Result<Uri> {
    format!("{}://{host}{path}", scheme.as_str())
        .parse()
        .map_err(|e| RegistryError::Config {
            path: host.to_string(),
            reason: format!("cannot build a URL for {path:?}: {e}"),
        })
}
