//! Where to send a registry's requests: containerd's per-registry `hosts.toml` directory, plus Berth's
//! credential keys and the per-call overrides (`plain_http`, credentials, `skip_verify`).
//!
//! Layout: `<hosts_dir>/<host>/hosts.toml` where `<host>` is the registry as written in the reference
//! (`docker.io`, `localhost:5000` with the colon), else `<hosts_dir>/_default/hosts.toml`. Without a
//! hosts.toml, `*.crt` files in the host's directory are extra CAs (docker's certs.d convention, which
//! containerd also honours).
//!
//! ```toml
//! server = "https://registry.example:5000"   # default https://<host> (docker.io: registry-1.docker.io)
//! ca = "ca.pem"                               # path or list; relative to this file's directory
//! skip_verify = false
//! [header]
//! x-extra = "v"                               # string or list of strings
//! [auth]                                      # Berth's own: credentials for `server`
//! username = "u"
//! password = "p"                              # or: token = "..." (sent as a bearer token as is)
//!
//! [host."https://mirror.example"]             # mirrors, tried in file order before `server`
//! capabilities = ["pull", "resolve"]          # default all three; without "resolve": blobs only
//! ca = ["a.pem", "b.pem"]
//! skip_verify = true
//! override_path = true                        # the URL's path is the API root (no /v2 appended)
//! [host."https://mirror.example".header]
//! [host."https://mirror.example".auth]
//! ```
//!
//! Plain HTTP: `plain_http` switches the default server (and any host written without a scheme) to HTTP.
//! For a loopback registry (`localhost`, `127.0.0.0/8`, `::1`) it instead means "HTTPS first, without
//! verifying the certificate, and HTTP when the server does not speak TLS", as containerd's resolver does
//! for loopback hosts; without `plain_http` a loopback registry is HTTPS only, like any other.
//!
//! This module reads configuration only; it must never open connections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::Credentials;
use crate::error::{RegistryError, Result};
use crate::reference::{is_loopback_host, DOCKER_API_HOST, DOCKER_DOMAIN};

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch content by digest (manifests and blobs).
    pub pull: bool,
    /// Resolve tags to digests (only trusted hosts should).
    pub resolve: bool,
    /// Push content.
    pub push: bool,
}

impl Capabilities {
    /// pull, resolve and push.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// HTTP or HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` / `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One place requests for a registry can go to (a mirror or the registry itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// `host[:port]` to connect to.
    pub host: String,
    /// The API root (`/v2`, or the URL's path with `override_path`), without a trailing slash.
    pub path: String,
    /// What it may be used for.
    pub capabilities: Capabilities,
    /// Extra CA files (PEM) trusted for it, besides the system roots.
    pub ca: Vec<PathBuf>,
    /// Accept any certificate.
    pub skip_verify: bool,
    /// Headers sent with every request to it.
    pub headers: Vec<(String, String)>,
    /// Credentials for it.
    pub credentials: Option<Credentials>,
    /// HTTPS first, then plain HTTP if the server does not speak TLS (loopback + `plain_http`).
    pub http_fallback: bool,
    /// Whether it is a mirror (a `[host."…"]` table) rather than the registry's server.
    pub mirror: bool,
}

impl Endpoint {
    /// `scheme://host`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.host)
    }
}

/// Per-call options that override the hosts config.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Use HTTP for the registry host (see the module docs for loopback hosts).
    pub plain_http: bool,
    /// Credentials for every endpoint of the registry, overriding hosts.toml's.
    pub credentials: Option<Credentials>,
    /// Force certificate verification off (`Some(true)`) or on (`Some(false)`) for every endpoint.
    pub skip_verify: Option<bool>,
}

/// The options of [`crate::RegistryClient::resolve`] (the same as for every request).
pub type ResolveOptions = RequestOptions;

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct HostTable {
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    ca: OneOrMany,
    skip_verify: Option<bool>,
    #[serde(default)]
    override_path: bool,
    #[serde(default)]
    header: BTreeMap<String, OneOrMany>,
    /// Unknown keys (containerd's `client`, `dial_timeout`, ...) are ignored, as containerd does.
    auth: Option<AuthFile>,
}

#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    top: HostTable,
    /// Kept in file order (toml's `preserve_order`): mirrors are tried in that order.
    #[serde(default)]
    host: toml::map::Map<String, toml::Value>,
}

/// The endpoints to try for `registry` (as written in a reference), mirrors first, in order.
pub fn endpoints(
    hosts_dir: Option<&Path>,
    registry: &str,
    opts: &RequestOptions,
) -> Result<Vec<Endpoint>> {
    let found = hosts_dir.and_then(|d| find_hosts_file(d, registry));
    let (file, base) = match found.clone() {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| RegistryError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let parsed: HostsFile = toml::from_str(&text).map_err(|e| RegistryError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            (Some((parsed, path)), base)
        }
        None => (None, PathBuf::new()),
    };
    let mut out = Vec::new();
    let mut top = HostTable::default();
    let mut server = None;
    if let Some((parsed, path)) = file {
        for (url, value) in parsed.host {
            let table: HostTable = value.try_into().map_err(|e| RegistryError::Config {
                path: path.display().to_string(),
                reason: format!("[host.{url:?}]: {e}"),
            })?;
            let ep = endpoint_from(&url, table, &base, true, opts, &path)?;
            out.push(ep);
        }
        top = parsed.top;
        server = parsed.server;
    } else if let Some(dir) = hosts_dir {
        top.ca = OneOrMany::Many(certs_d_cas(&dir.join(registry)));
    }
    let url = server.unwrap_or_else(|| {
        let host = if registry == DOCKER_DOMAIN {
            DOCKER_API_HOST
        } else {
            registry
        };
        host.to_string()
    });
    let path = found.unwrap_or_default();
    let ep = endpoint_from(&url, top, &base, false, opts, &path)?;
    out.push(ep);
    Ok(out)
}

/// `<dir>/<registry>/hosts.toml`, else `<dir>/_default/hosts.toml`.
fn find_hosts_file(dir: &Path, registry: &str) -> Option<PathBuf> {
    [registry, "_default"]
        .iter()
        .map(|h| dir.join(h).join("hosts.toml"))
        .find(|p| p.is_file())
}

/// `*.crt` files of a docker-style certs.d directory, sorted.
fn certs_d_cas(dir: &Path) -> Vec<String> {
    let mut cas: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .map(|p| p.display().to_string())
        .collect();
    cas.sort();
    cas
}

fn endpoint_from(
    url: &str,
    table: HostTable,
    base: &Path,
    mirror: bool,
    opts: &RequestOptions,
    file: &Path,
) -> Result<Endpoint> {
    let config_err = |reason: String| RegistryError::Config {
        path: file.display().to_string(),
        reason,
    };
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if url.contains("://") {
        return Err(config_err(format!(
            "host {url:?}: only http and https are supported"
        )));
    } else {
        (Scheme::Https, url)
    };
    let scheme_given = rest.len() != url.len();
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(config_err(format!("host {url:?} has no host name")));
    }
    let mut path = clean_path(path);
    if !table.override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    let capabilities = match table.capabilities {
        None => Capabilities::ALL,
        Some(list) => {
            let mut c = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for cap in list {
                match cap.as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => c.push = true,
                    other => {
                        return Err(config_err(format!(
                            "host {url:?}: unknown capability {other:?} (pull, resolve, push)"
                        )))
                    }
                }
            }
            c
        }
    };
    let ca = table
        .ca
        .into_vec()
        .into_iter()
        .map(|p| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        })
        .collect();
    let mut headers = Vec::new();
    for (name, values) in table.header {
        for v in values.into_vec() {
            headers.push((name.clone(), v));
        }
    }
    let credentials = match table.auth {
        None => None,
        Some(AuthFile {
            token: Some(t),
            username: None,
            password: None,
        }) => Some(Credentials::Token(t)),
        Some(AuthFile {
            username: Some(u),
            password,
            token: None,
        }) => Some(Credentials::Basic {
            username: u,
            password: password.unwrap_or_default(),
        }),
        Some(_) => {
            return Err(config_err(format!(
                "host {url:?}: [auth] needs either username (+ password) or token"
            )))
        }
    };
    let skip_verify = opts
        .skip_verify
        .unwrap_or(table.skip_verify.unwrap_or(false));
    let mut ep = Endpoint {
        scheme,
        host: host.to_string(),
        path,
        capabilities,
        ca,
        skip_verify,
        headers,
        credentials: opts.credentials.clone().or(credentials),
        http_fallback: false,
        mirror,
    };
    // `plain_http` applies where no scheme was written; docker.io is HTTPS only.
    if opts.plain_http && !scheme_given && ep.host != DOCKER_API_HOST {
        if is_loopback_host(&ep.host) {
            ep.http_fallback = true;
            ep.skip_verify = opts.skip_verify.unwrap_or(true);
        } else {
            ep.scheme = Scheme::Http;
        }
    }
    Ok(ep)
}

/// `path` without duplicate or trailing slashes; empty for the root.
fn clean_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("/{}", parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, host: &str, text: &str) {
        let d = dir.join(host);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("hosts.toml"), text).expect("write");
    }

    #[test]
    fn defaults_without_config() {
        let eps = endpoints(None, "docker.io", &RequestOptions::default()).expect("ok");
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].origin(), "https://registry-1.docker.io");
        assert_eq!(eps[0].path, "/v2");
        let plain = RequestOptions {
            plain_http: true,
            ..Default::default()
        };
        let eps = endpoints(None, "reg.example:5000", &plain).expect("ok");
        assert_eq!(eps[0].origin(), "http://reg.example:5000");
        let eps = endpoints(None, "127.0.0.1:5000", &plain).expect("ok");
        assert_eq!(eps[0].origin(), "https://127.0.0.1:5000");
        assert!(eps[0].http_fallback && eps[0].skip_verify);
        let eps = endpoints(None, "localhost:5000", &RequestOptions::default()).expect("ok");
        assert!(!eps[0].http_fallback && eps[0].scheme == Scheme::Https);
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let d = berth_tests::TestDir::new("hosts-order");
        write(
            d.path(),
            "r.example:5000",
            r#"
server = "https://r.example:5000"
ca = "ca.pem"
[auth]
username = "u"
password = "p"
[header]
x-a = ["1", "2"]
[host."http://z-mirror:1/prefix"]
capabilities = ["pull"]
override_path = true
[host."https://a-mirror:2"]
skip_verify = true
[host."https://a-mirror:2".auth]
token = "t"
"#,
        );
        let eps =
            endpoints(Some(d.path()), "r.example:5000", &RequestOptions::default()).expect("ok");
        let names: Vec<_> = eps.iter().map(|e| e.origin() + &e.path).collect();
        assert_eq!(
            names,
            [
                "http://z-mirror:1/prefix",
                "https://a-mirror:2/v2",
                "https://r.example:5000/v2"
            ]
        );
        assert!(!eps[0].capabilities.resolve && eps[0].capabilities.pull);
        assert!(eps[1].skip_verify);
        assert_eq!(eps[1].credentials, Some(Credentials::Token("t".into())));
        assert_eq!(eps[2].ca, vec![d.join("r.example:5000/ca.pem")]);
        assert_eq!(
            eps[2].headers,
            vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())]
        );
        assert!(matches!(
            eps[2].credentials,
            Some(Credentials::Basic { .. })
        ));
        // Per-call overrides win.
        let o = RequestOptions {
            skip_verify: Some(false),
            credentials: Some(Credentials::Token("x".into())),
            ..Default::default()
        };
        let eps = endpoints(Some(d.path()), "r.example:5000", &o).expect("ok");
        assert!(eps
            .iter()
            .all(|e| !e.skip_verify && e.credentials == Some(Credentials::Token("x".into()))));
    }

    #[test]
    fn default_dir_and_errors() {
        let d = berth_tests::TestDir::new("hosts-default");
        write(
            d.path(),
            "_default",
            "[host.\"https://m\"]\ncapabilities = [\"pull\", \"bogus\"]\n",
        );
        let err = endpoints(Some(d.path()), "x.example", &RequestOptions::default())
            .expect_err("bogus capability");
        assert!(err.to_string().contains("bogus"), "{err}");
        write(d.path(), "y.example", "server = 3\n");
        let err = endpoints(Some(d.path()), "y.example", &RequestOptions::default())
            .expect_err("bad type");
        assert!(err.to_string().contains("y.example/hosts.toml"), "{err}");
    }
}
