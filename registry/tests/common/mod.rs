//! Shared pieces of the registry client's tests: a client with short timeouts, pushing harness OCI layouts
//! with our own push API, docker-registry with TLS or htpasswd (the harness's launcher has neither), a
//! throwaway CA made with the `openssl` CLI, and a counting HTTP proxy that can play a bearer-token
//! registry, fail with 503s, or serve the API under another path.
//!
//! Loopback only. Every process started here is killed by PID when its owner drops; the proxy is a task of
//! the test's own runtime.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_image::oci::{media, Descriptor};
use berth_registry::{ClientConfig, Reference, RegistryClient, Repository, RequestOptions};
use berth_tests::oci_layout::{MultiPlatformLayout, OciLayout};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

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

/// docker-registry with our own config (TLS, htpasswd), on a free loopback port.
pub struct RegistryProc {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Storage root.
    pub storage: PathBuf,
    log: PathBuf,
}

impl RegistryProc {
    /// Start it below `dir`. `tls`: (certificate, key); `htpasswd`: a bcrypt htpasswd file.
    /// `None` when docker-registry is missing (skip).
    pub fn start(
        dir: &Path,
        tls: Option<(&Path, &Path)>,
        htpasswd: Option<&Path>,
    ) -> Option<RegistryProc> {
        let bin = berth_tests::tool("docker-registry")?;
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).expect("mkdir storage");
        let log = dir.join("registry.log");
        for _ in 0..5 {
            let port = berth_tests::registry::free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut yml = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                storage.display()
            );
            if let Some((cert, key)) = tls {
                yml.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ));
            }
            if let Some(h) = htpasswd {
                yml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    h.display()
                ));
            }
            let config = dir.join("registry.yml");
            std::fs::write(&config, yml).expect("write registry config");
            let child = berth_tests::proc::spawn_logged(
                Command::new(&bin).arg("serve").arg(&config),
                &log,
                "docker-registry",
            );
            let mut reg = RegistryProc {
                child: Some(child),
                addr,
                storage: storage.clone(),
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(&reg.addr).is_ok() {
                    return Some(reg);
                }
                if let Some(Ok(Some(_))) = reg.child.as_mut().map(Child::try_wait) {
                    break; // port taken or bad config: try another port
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            reg.stop();
        }
        panic!(
            "docker-registry did not start; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill (by pid) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- docker-registry log -----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        self.stop();
    }
}

/// A CA and a server certificate for 127.0.0.1/localhost signed by it, made with the openssl CLI.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Make [`Certs`] in `dir`; `None` (skip) without openssl.
pub fn make_certs(dir: &Path) -> Option<Certs> {
    let openssl = berth_tests::tool("openssl")?;
    let run = |args: &[&str]| {
        let out = berth_tests::run_timeout(
            Command::new(&openssl).args(args).current_dir(dir),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(ec);
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=berth test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca_args);
    let mut csr_args = vec!["req"];
    csr_args.extend(ec);
    csr_args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&csr_args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Some(Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
}

/// Write `<hosts_dir>/<host>/hosts.toml`.
pub fn write_hosts(hosts_dir: &Path, host: &str, text: &str) {
    let d = hosts_dir.join(host);
    std::fs::create_dir_all(&d).expect("mkdir hosts dir");
    std::fs::write(d.join("hosts.toml"), text).expect("write hosts.toml");
}

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
