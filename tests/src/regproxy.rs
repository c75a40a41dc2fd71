//! A counting HTTP/1.1 proxy in front of a loopback registry, for the pull tests of berthd and of
//! berth-registry: it logs every request (method, path, Range, whether it carried credentials), can play a
//! bearer-token registry with its own `/token` realm (GET, or the OAuth2 POST form only), fail the first
//! requests with 503, serve the API under another path, redirect blob GETs to another host, cut a blob's
//! response after some bytes (a broken connection) a number of times, slow blob bodies down to a byte rate
//! (to keep a pull in flight), and refuse every request (a registry that is down).
//!
//! A task of the test's tokio runtime on a loopback port; it stops when dropped. Loopback only.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// What the proxy plays besides proxying.
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

/// A bearer-token realm: tokens from `/token`, with Basic credentials when `basic` is set.
#[derive(Debug, Clone, Default)]
pub struct Bearer {
    /// `service` of the challenge.
    pub service: String,
    /// Credentials the token endpoint requires (else anonymous tokens).
    pub basic: Option<(String, String)>,
    /// Refuse GET on /token (405): only the OAuth2 POST form works.
    pub post_only: bool,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// The Range header, if any.
    pub range: Option<String>,
    /// It carried an Authorization header.
    pub auth: bool,
}

struct State {
    upstream: String,
    addr: String,
    opts: ProxyOptions,
    log: Mutex<Vec<Seen>>,
    fail_left: AtomicUsize,
    reject_tokens: AtomicBool,
    connections: AtomicUsize,
    tokens: Mutex<HashSet<String>>,
    next_token: AtomicU64,
    /// digest → (cut after this many bytes, for this many more responses).
    cuts: Mutex<HashMap<String, (usize, usize)>>,
    /// Blob bodies are sent at most this fast (bytes per second).
    rate: Mutex<Option<u64>>,
    /// digest → pause before answering its GETs.
    waits: Mutex<HashMap<String, Duration>>,
    /// digest → status answered to its GETs (after a cut, until healed).
    broken: Mutex<HashMap<String, u16>>,
    down: AtomicBool,
    client: Client<HttpConnector, Incoming>,
}

/// The proxy.
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

impl Proxy {
    /// Listen on a free loopback port and proxy to `upstream` (`127.0.0.1:PORT`), with a bearer realm or none.
    pub async fn start(upstream: &str, bearer: Option<Bearer>) -> Proxy {
        Self::start_with(
            upstream,
            ProxyOptions {
                bearer,
                ..ProxyOptions::default()
            },
        )
        .await
    }

    /// [`Proxy::start`] with every option.
    pub async fn start_with(upstream: &str, opts: ProxyOptions) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            addr: addr.clone(),
            fail_left: AtomicUsize::new(opts.fail_first),
            opts,
            log: Mutex::new(Vec::new()),
            reject_tokens: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            tokens: Mutex::new(HashSet::new()),
            next_token: AtomicU64::new(1),
            cuts: Mutex::new(HashMap::new()),
            rate: Mutex::new(None),
            waits: Mutex::new(HashMap::new()),
            broken: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
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

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.log.lock().expect("log").clone()
    }

    /// GETs of blob `digest` so far.
    pub fn blob_gets(&self, digest: &str) -> Vec<Seen> {
        let suffix = format!("/blobs/{digest}");
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path.ends_with(&suffix))
            .collect()
    }

    /// Forget the log.
    pub fn clear(&self) {
        self.state.log.lock().expect("log").clear();
    }

    /// Cut the next `times` responses for blob `digest` after `after` bytes of body.
    pub fn cut_blob(&self, digest: &str, after: usize, times: usize) {
        self.state
            .cuts
            .lock()
            .expect("cuts")
            .insert(digest.to_string(), (after, times));
    }

    /// Answer blob `digest`'s next GET with `after` bytes and a broken connection, and every GET after that
    /// with HTTP `then` until [`Proxy::heal`].
    pub fn break_blob(&self, digest: &str, after: usize, then: u16) {
        self.cut_blob(digest, after, 1);
        self.state
            .broken
            .lock()
            .expect("broken")
            .insert(digest.to_string(), then);
    }

    /// Serve blob `digest` normally again.
    pub fn heal(&self, digest: &str) {
        self.state.broken.lock().expect("broken").remove(digest);
        self.state.cuts.lock().expect("cuts").remove(digest);
    }

    /// Wait `d` before answering each GET of blob `digest`.
    pub fn delay_blob(&self, digest: &str, d: Duration) {
        self.state
            .waits
            .lock()
            .expect("waits")
            .insert(digest.to_string(), d);
    }

    /// Send blob bodies at most `bytes_per_sec` (None: full speed).
    pub fn slow_blobs(&self, bytes_per_sec: Option<u64>) {
        *self.state.rate.lock().expect("rate") = bytes_per_sec;
    }

    /// Refuse every request (503) while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Tokens issued so far (GET or POST on /token that succeeded).
    pub fn tokens_issued(&self) -> u64 {
        self.state.next_token.load(Ordering::SeqCst) - 1
    }

    /// Requests seen for `METHOD path` (path without query).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.count_where(method, path, |_| true)
    }

    /// Requests for `METHOD path` that carried an Authorization header.
    pub fn count_with_auth(&self, method: &str, path: &str) -> usize {
        self.count_where(method, path, |s| s.auth)
    }

    fn count_where(&self, method: &str, path: &str, f: impl Fn(&Seen) -> bool) -> usize {
        let log = self.state.log.lock().expect("log");
        log.iter()
            .filter(|s| s.method == method && s.path == path && f(s))
            .count()
    }

    /// Every `METHOD path` seen, with counts, sorted (for messages).
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for s in self.seen() {
            *counts
                .entry(format!("{} {}", s.method, s.path))
                .or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort();
        v
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Forget every issued token (the client must fetch a new one).
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().expect("tokens").clear();
    }

    /// Refuse every token, old and new, while `on`.
    pub fn reject_tokens(&self, on: bool) {
        self.state.reject_tokens.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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

/// The upstream body, possibly slowed down to `rate` bytes per second and cut after `cut` bytes (then an
/// error: the connection breaks).
fn shaped(body: Incoming, cut: Option<usize>, rate: Option<u64>) -> Body {
    enum S {
        Go(Incoming, usize),
        Break,
        Done,
    }
    let stream = futures::stream::unfold(S::Go(body, 0), move |s| async move {
        match s {
            S::Done => None,
            S::Break => Some((
                Err::<Frame<Bytes>, BoxError>("cut by the test proxy".into()),
                S::Done,
            )),
            S::Go(mut body, sent) => match body.frame().await {
                None => None,
                Some(Err(e)) => Some((Err(e.into()), S::Done)),
                Some(Ok(frame)) => {
                    if let (Some(r), Some(d)) = (rate, frame.data_ref()) {
                        let secs = d.len() as f64 / r.max(1) as f64;
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                    match frame.into_data() {
                        Ok(data) => match cut {
                            Some(c) if sent + data.len() >= c => {
                                let part = data.slice(..c.saturating_sub(sent));
                                Some((Ok(Frame::data(part)), S::Break))
                            }
                            _ => {
                                let n = data.len();
                                Some((Ok(Frame::data(data)), S::Go(body, sent + n)))
                            }
                        },
                        Err(f) => Some((Ok(f), S::Go(body, sent))),
                    }
                }
            },
        }
    });
    StreamBody::new(stream).boxed()
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let range = req
        .headers()
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.log.lock().expect("log").push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        range,
        auth: req.headers().contains_key(http::header::AUTHORIZATION),
    });
    if st.down.load(Ordering::SeqCst) {
        return full(StatusCode::SERVICE_UNAVAILABLE, "down for the test");
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
    let path = match &st.opts.prefix {
        None => path,
        Some(prefix) => match path.strip_prefix(prefix.as_str()) {
            Some(rest) => format!("/v2{rest}"),
            None => return full(StatusCode::NOT_FOUND, "not under the prefix"),
        },
    };
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
                scope_of(&path, req.method())
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                challenge.parse().expect("header"),
            );
            return r;
        }
    }
    let blob = (req.method() == http::Method::GET)
        .then(|| path.rsplit_once("/blobs/").map(|(_, d)| d.to_string()))
        .flatten();
    if let Some(d) = &blob {
        let wait = st.waits.lock().expect("waits").get(d).copied();
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
    let cut = blob.as_ref().and_then(|d| {
        let mut cuts = st.cuts.lock().expect("cuts");
        match cuts.get_mut(d) {
            Some((after, times)) if *times > 0 => {
                *times -= 1;
                Some(*after)
            }
            _ => None,
        }
    });
    if cut.is_none() {
        if let Some(status) = blob
            .as_ref()
            .and_then(|d| st.broken.lock().expect("broken").get(d).copied())
        {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
            return full(code, r#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#);
        }
    }
    let rate = if blob.is_some() {
        *st.rate.lock().expect("rate")
    } else {
        None
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let (Some(to), Some(_)) = (&st.opts.redirect_blobs_to, &blob) {
        let mut r = full(StatusCode::TEMPORARY_REDIRECT, "");
        let location = format!("http://{to}{path}{query}");
        r.headers_mut()
            .insert(http::header::LOCATION, location.parse().expect("location"));
        return r;
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{}{path}{query}", st.upstream)
        .parse()
        .expect("upstream uri");
    parts.headers.remove(http::header::AUTHORIZATION);
    match st.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = if cut.is_some() || rate.is_some() {
                shaped(body, cut, rate)
            } else {
                body.map_err(|e| -> BoxError { e.into() }).boxed()
            };
            Response::from_parts(parts, body)
        }
        Err(e) => full(StatusCode::BAD_GATEWAY, format!("upstream: {e}")),
    }
}

async fn token(st: &State, req: Request<Incoming>) -> Response<Body> {
    let Some(b) = &st.opts.bearer else {
        return full(StatusCode::NOT_FOUND, "no token service");
    };
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
    let params = if post {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&body).into_owned()
    } else {
        query
    };
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
    if let Some((u, p)) = &b.basic {
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
        if given.as_deref() != Some(format!("{u}:{p}").as_str()) {
            return full(StatusCode::UNAUTHORIZED, "bad credentials");
        }
    }
    let n = st.next_token.fetch_add(1, Ordering::SeqCst);
    let t = format!("tok-{n}");
    st.tokens.lock().expect("tokens").insert(t.clone());
    // The OAuth2 POST answers `access_token`; the GET form `token`.
    let key = if post { "access_token" } else { "token" };
    full(
        StatusCode::OK,
        format!(r#"{{"{key}":"{t}","expires_in":300}}"#),
    )
}

/// `application/x-www-form-urlencoded` value decoding (`%XX`, `+`).
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
