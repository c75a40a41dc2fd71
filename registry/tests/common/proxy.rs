//! A counting HTTP/1.1 proxy in front of a registry that can play a bearer-token registry (with its
//! own `/token` realm), fail with 503s, serve the API under another path, or redirect blob GETs to
//! another host. A task of the test's runtime, on a loopback port; aborted when dropped.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the proxy plays.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Require bearer tokens from its own `/token` endpoint.
    pub bearer: Option<Bearer>,
    /// Answer this many requests (other than /token) with 503 before proxying.
    pub fail_first: usize,
    /// Serve the API under this path instead of `/v2` (for `override_path`).
    pub prefix: Option<String>,
    /// Answer blob GETs with a 307 to this `host:port` (blob storage elsewhere), same path.
    pub redirect_blobs_to: Option<String>,
}

/// A bearer-token realm's behaviour.
#[derive(Debug, Clone, Default)]
pub struct Bearer {
    /// `service` of the challenge.
    pub service: String,
    /// Basic credentials the token endpoint requires (else anonymous tokens).
    pub basic: Option<(String, String)>,
    /// Refuse GET on /token (405): only the OAuth2 POST form works.
    pub post_only: bool,
}

struct ProxyState {
    upstream: String,
    addr: String,
    opts: ProxyOptions,
    counts: Mutex<HashMap<String, usize>>,
    with_auth: Mutex<HashMap<String, usize>>,
    tokens: Mutex<HashSet<String>>,
    next_token: AtomicU64,
    fail_left: AtomicUsize,
    reject_tokens: AtomicBool,
    connections: AtomicUsize,
    client: Client<HttpConnector, Incoming>,
}

/// A counting HTTP/1.1 proxy in front of a registry (see [`ProxyOptions`]).
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r
}

impl Proxy {
    /// Listen on a free loopback port and proxy to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: &str, opts: ProxyOptions) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let state = Arc::new(ProxyState {
            upstream: upstream.to_string(),
            addr: addr.clone(),
            fail_left: AtomicUsize::new(opts.fail_first),
            opts,
            counts: Mutex::new(HashMap::new()),
            with_auth: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashSet::new()),
            next_token: AtomicU64::new(1),
            reject_tokens: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Proxy { addr, state, task }
    }

    /// Requests seen for `METHOD path` (path without query).
    pub fn count(&self, method: &str, path: &str) -> usize {
        let counts = self.state.counts.lock().expect("counts");
        counts
            .get(&format!("{method} {path}"))
            .copied()
            .unwrap_or(0)
    }

    /// Requests for `METHOD path` that carried an Authorization header.
    pub fn count_with_auth(&self, method: &str, path: &str) -> usize {
        let counts = self.state.with_auth.lock().expect("counts");
        counts
            .get(&format!("{method} {path}"))
            .copied()
            .unwrap_or(0)
    }

    /// Every `METHOD path` seen, with counts (for messages).
    pub fn counts(&self) -> Vec<(String, usize)> {
        let counts = self.state.counts.lock().expect("counts");
        let mut v: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }

    /// Tokens issued so far (GET or POST on /token that succeeded).
    pub fn tokens_issued(&self) -> u64 {
        self.state.next_token.load(Ordering::SeqCst) - 1
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Forget every issued token (the client must fetch a new one).
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().expect("tokens").clear();
    }

    /// Refuse every token, old and new.
    pub fn reject_tokens(&self, on: bool) {
        self.state.reject_tokens.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `repository:<name>:<actions>` for an API path.
fn scope_of(path: &str, method: &http::Method) -> String {
    let rest = path.strip_prefix("/v2/").unwrap_or_default();
    let name = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .find_map(|k| rest.find(k).map(|i| &rest[..i]))
        .unwrap_or("");
    let actions = if matches!(*method, http::Method::GET | http::Method::HEAD) {
        "pull"
    } else {
        "pull,push"
    };
    format!("repository:{name}:{actions}")
}

async fn handle(st: Arc<ProxyState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    *st.counts
        .lock()
        .expect("counts")
        .entry(format!("{} {path}", req.method()))
        .or_default() += 1;
    if req.headers().contains_key(http::header::AUTHORIZATION) {
        *st.with_auth
            .lock()
            .expect("counts")
            .entry(format!("{} {path}", req.method()))
            .or_default() += 1;
    }
    if path == "/token" {
        return token(&st, req).await;
    }
    if st
        .fail_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return full(StatusCode::SERVICE_UNAVAILABLE, "try again");
    }
    let mut api_path = path.clone();
    if let Some(prefix) = &st.opts.prefix {
        match path.strip_prefix(prefix.as_str()) {
            Some(rest) => api_path = format!("/v2{rest}"),
            None => return full(StatusCode::NOT_FOUND, "not under the prefix"),
        }
    }
    if let Some(b) = &st.opts.bearer {
        let ok = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| {
                !st.reject_tokens.load(Ordering::SeqCst)
                    && st.tokens.lock().expect("tokens").contains(t)
            });
        if !ok {
            let mut r = full(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            );
            let challenge = format!(
                r#"Bearer realm="http://{}/token",service="{}",scope="{}""#,
                st.addr,
                b.service,
                scope_of(&api_path, req.method())
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                challenge.parse().expect("header"),
            );
            return r;
        }
    }
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Some(to) = &st.opts.redirect_blobs_to {
        if req.method() == http::Method::GET && api_path.contains("/blobs/sha256:") {
            let mut r = full(StatusCode::TEMPORARY_REDIRECT, "");
            let location = format!("http://{to}{api_path}{query}");
            r.headers_mut()
                .insert(http::header::LOCATION, location.parse().expect("location"));
            return r;
        }
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{}{api_path}{query}", st.upstream)
        .parse()
        .expect("upstream uri");
    parts.headers.remove(http::header::AUTHORIZATION);
    match st.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => full(StatusCode::BAD_GATEWAY, format!("upstream: {e}")),
    }
}

async fn token(st: &ProxyState, req: Request<Incoming>) -> Response<Body> {
    let Some(b) = &st.opts.bearer else {
        return full(StatusCode::NOT_FOUND, "no token service");
    };
    let want_basic = b.basic.as_ref().map(|(u, p)| format!("{u}:{p}"));
    let post = req.method() == http::Method::POST;
    if !post && b.post_only {
        return full(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let query = req.uri().query().unwrap_or_default().to_string();
    let header_creds = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let form = if post {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&body).into_owned()
    } else {
        String::new()
    };
    let params = if post { &form } else { &query };
    let get = |k: &str| {
        params
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(n, _)| *n == k)
            .map(|(_, v)| percent_decode(v))
    };
    if get("service").as_deref() != Some(b.service.as_str()) {
        return full(StatusCode::BAD_REQUEST, "wrong service");
    }
    if let Some(want) = want_basic {
        let given = if post {
            match (get("username"), get("password")) {
                (Some(u), Some(p)) if get("grant_type").as_deref() == Some("password") => {
                    Some(format!("{u}:{p}"))
                }
                _ => None,
            }
        } else {
            header_creds
        };
        if given.as_deref() != Some(want.as_str()) {
            return full(StatusCode::UNAUTHORIZED, "bad credentials");
        }
    }
    let n = st.next_token.fetch_add(1, Ordering::SeqCst);
    let t = format!("tok-{n}");
    st.tokens.lock().expect("tokens").insert(t.clone());
    let key = if post { "access_token" } else { "token" };
    full(
        StatusCode::OK,
        format!(r#"{{"{key}":"{t}","expires_in":300}}"#),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
