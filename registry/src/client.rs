//! The registry client: configuration, connection pools, and the request path every operation shares
//! (per-host headers, HTTPS→HTTP fallback for loopback hosts, bounded retries with backoff, and the
//! 401 → token → retry dance).
//!
//! Operations on one repository live in [`crate::repo`]. This module must never buffer a response body it
//! does not own: bodies go back to the caller as hyper's `Incoming`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, USER_AGENT, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;

use crate::auth::{parse_www_authenticate, urlencode, AuthCache, Credentials, HostAuth};
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
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    pools: Mutex<HashMap<TlsKey, HttpClient>>,
    auth: AuthCache,
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
    async fn send_endpoint(
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

    /// The Authorization to send up front to `ep` for `scope`, and whether it is a token we fetched.
    async fn auth_header(&self, ep: &Endpoint, scope: &str) -> Result<(Option<String>, bool)> {
        if let Some(Credentials::Token(t)) = &ep.credentials {
            return Ok((Some(format!("Bearer {t}")), false));
        }
        match self.inner.auth.host(&ep.host) {
            Some(HostAuth::Basic) => Ok((
                ep.credentials.as_ref().and_then(Credentials::basic_header),
                false,
            )),
            Some(HostAuth::Bearer { realm, service }) => {
                if let Some(t) = self.inner.auth.token(&ep.host, scope) {
                    return Ok((Some(format!("Bearer {t}")), true));
                }
                let (t, ttl) = self.fetch_token(ep, &realm, &service, scope, &[]).await?;
                self.inner.auth.put_token(&ep.host, scope, t.clone(), ttl);
                Ok((Some(format!("Bearer {t}")), true))
            }
            None => Ok((None, false)),
        }
    }

    /// Send `req` to `ep` with authentication for `scope`: credentials up front when the host's scheme
    /// is known; on a 401 learn the challenge and retry; a refused token is fetched again once.
    pub(crate) async fn send_authed(
        &self,
        ep: &Endpoint,
        scope: &str,
        req: &Req,
    ) -> Result<Response<Incoming>> {
        let mut token_refusals = 0;
        let mut challenged = false;
        loop {
            let (auth, fetched_token) = self.auth_header(ep, scope).await?;
            let extra: Vec<(HeaderName, HeaderValue)> = auth
                .as_deref()
                .and_then(|a| HeaderValue::from_str(a).ok())
                .map(|v| vec![(AUTHORIZATION, v)])
                .unwrap_or_default();
            let resp = self.send_endpoint(ep, req, &extra).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenges: Vec<_> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_www_authenticate)
                .collect();
            drain_small(resp).await;
            let unauthorized = |detail: String| RegistryError::Unauthorized {
                registry: ep.host.clone(),
                scope: scope.to_string(),
                detail,
            };
            let bearer = challenges.iter().find(|c| c.scheme == "bearer");
            let basic = challenges.iter().any(|c| c.scheme == "basic");
            if let Some(b) = bearer {
                let realm = b.param("realm").unwrap_or_default().to_string();
                if realm.is_empty() {
                    return Err(unauthorized("bearer challenge without a realm".into()));
                }
                self.inner.auth.set_host(
                    &ep.host,
                    HostAuth::Bearer {
                        realm: realm.clone(),
                        service: b.param("service").unwrap_or_default().to_string(),
                    },
                );
                if fetched_token {
                    token_refusals += 1;
                    self.inner.auth.forget_token(&ep.host, scope);
                    if token_refusals >= 2 {
                        return Err(unauthorized(
                            "the registry refused a freshly fetched token".into(),
                        ));
                    }
                } else if auth.is_some() || challenged {
                    return Err(unauthorized(match &ep.credentials {
                        Some(Credentials::Token(_)) => "the configured token was refused".into(),
                        _ => "access refused".into(),
                    }));
                } else {
                    // Fetch the first token with the challenge's own scope too.
                    let extra_scope: Vec<String> = b
                        .param("scope")
                        .map(|s| s.split(' ').map(str::to_string).collect())
                        .unwrap_or_default();
                    let service = b.param("service").unwrap_or_default().to_string();
                    let (t, ttl) = self
                        .fetch_token(ep, &realm, &service, scope, &extra_scope)
                        .await?;
                    self.inner.auth.put_token(&ep.host, scope, t, ttl);
                }
            } else if basic {
                self.inner.auth.set_host(&ep.host, HostAuth::Basic);
                match &ep.credentials {
                    Some(Credentials::Basic { .. }) if auth.is_none() && !challenged => {}
                    Some(Credentials::Basic { .. }) => {
                        return Err(unauthorized("username or password refused".into()))
                    }
                    _ => {
                        return Err(unauthorized(
                            "the registry wants a username and password and none is configured \
                             (hosts.toml [auth] or explicit credentials)"
                                .into(),
                        ))
                    }
                }
            } else {
                return Err(unauthorized(
                    "401 without a usable WWW-Authenticate challenge".into(),
                ));
            }
            challenged = true;
        }
    }

    /// A token for `scope` from `realm`: GET with `service`/`scope` (Basic credentials when configured),
    /// and when that fails with credentials, the OAuth2 password-grant POST.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: &str,
        scope: &str,
        extra_scopes: &[String],
    ) -> Result<(String, Duration)> {
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            registry: ep.host.clone(),
            scope: scope.to_string(),
            detail,
        };
        let realm_uri: Uri = realm
            .parse()
            .map_err(|e| unauthorized(format!("bad token realm {realm:?}: {e}")))?;
        let (Some(rs), Some(ra)) = (realm_uri.scheme_str(), realm_uri.authority()) else {
            return Err(unauthorized(format!(
                "token realm {realm:?} is not an absolute URL"
            )));
        };
        let mut scopes: Vec<&str> = vec![scope];
        for s in extra_scopes {
            if !scopes.contains(&s.as_str()) {
                scopes.push(s);
            }
        }
        let key = TlsKey {
            ca: ep.ca.clone(),
            skip_verify: ep.skip_verify,
        };
        let mut query = Vec::new();
        if !service.is_empty() {
            query.push(format!("service={}", urlencode(service)));
        }
        for s in &scopes {
            query.push(format!("scope={}", urlencode(s)));
        }
        let base = realm_uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let sep = if base.contains('?') { '&' } else { '?' };
        let path = if query.is_empty() {
            base.to_string()
        } else {
            format!("{base}{sep}{}", query.join("&"))
        };
        let uri: Uri = format!("{rs}://{ra}{path}")
            .parse()
            .map_err(|e| unauthorized(format!("bad token URL: {e}")))?;
        let mut req = Req::new(Method::GET, path);
        if let Some(b) = ep.credentials.as_ref().and_then(Credentials::basic_header) {
            req = req.header(AUTHORIZATION, &b);
        }
        let resp = self.send_retrying(&key, &uri, &req, &[]).await?;
        let get_status = resp.status();
        if get_status.is_success() {
            return parse_token(resp).await.map_err(unauthorized);
        }
        drop(resp);
        if let Some(Credentials::Basic { username, password }) = &ep.credentials {
            let form = format!(
                "grant_type=password&client_id=berth&username={}&password={}&service={}&scope={}",
                urlencode(username),
                urlencode(password),
                urlencode(service),
                urlencode(&scopes.join(" "))
            );
            let post_uri: Uri = format!("{rs}://{ra}{base}")
                .parse()
                .map_err(|e| unauthorized(format!("bad token URL: {e}")))?;
            let req = Req::new(Method::POST, base)
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(Bytes::from(form));
            let resp = self.send_retrying(&key, &post_uri, &req, &[]).await?;
            let post_status = resp.status();
            if post_status.is_success() {
                return parse_token(resp).await.map_err(unauthorized);
            }
            return Err(unauthorized(format!(
                "token server {rs}://{ra}{} refused: GET {get_status}, POST {post_status}",
                realm_uri.path()
            )));
        }
        Err(unauthorized(format!(
            "token server {rs}://{ra}{} refused an anonymous token: {get_status}",
            realm_uri.path()
        )))
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

async fn parse_token(resp: Response<Incoming>) -> std::result::Result<(String, Duration), String> {
    let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await
        .map_err(|_| "token response timed out".to_string())?
        .map_err(|e| format!("reading the token response: {e}"))?
        .to_bytes();
    let parsed: crate::auth::TokenResponse =
        serde_json::from_slice(&body).map_err(|e| format!("token response is not JSON: {e}"))?;
    parsed
        .into_token()
        .ok_or_else(|| "token response has neither token nor access_token".to_string())
}

/// Read a small error body to its end so that the keep-alive connection can be reused (an unread body
/// makes hyper close it); bodies past 64 KiB or slower than 5 s are dropped with their connection.
async fn drain_small(resp: Response<Incoming>) {
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
