//! A loopback registry for tests: Debian's `docker-registry` on a free 127.0.0.1 port with its
//! storage in the test's dir, plus a minimal HTTP/1.1 client to push OCI layouts to it
//! (the distribution spec's monolithic blob upload and manifest PUT) and read things back.
//!
//! Loopback only: this module never talks to any other host. The registry is stopped by its
//! PID when the [`Registry`] drops; its log is printed if the test is panicking.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::oci_layout::{blob_path, media, sha256_digest};

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (names lower-cased), in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics when it is not).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request to `addr` (`127.0.0.1:PORT`) over a fresh connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if head {
        body.clear();
    } else if chunked {
        body = dechunk(&body)?;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(bad("short chunk"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Debian's docker-registry serving `127.0.0.1:<port>` from a storage dir in the test's dir.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The registry's storage root.
    pub storage: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

impl Registry {
    /// Start a registry below `dir`; wait until `GET /v2/` answers. Returns `None` (after a
    /// skip message) when docker-registry is not installed; panics under `CI=true`.
    #[track_caller]
    pub fn start(dir: &Path) -> Option<Registry> {
        let bin = crate::tool("docker-registry")?;
        let storage = dir.join("registry-storage");
        std::fs::create_dir_all(&storage)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", storage.display()));
        let log = dir.join("registry.log");
        let mut last_err = String::new();
        // Another process may take the port between our probe and the registry's bind: retry.
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.join("registry-config.yml");
            let yml = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            );
            std::fs::write(&config, yml).unwrap_or_else(|e| panic!("write config: {e}"));
            let child = crate::proc::spawn_logged(
                Command::new(&bin).arg("serve").arg(&config),
                &log,
                &bin.display().to_string(),
            );
            let mut reg = Registry {
                child: Some(child),
                addr,
                storage: storage.clone(),
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(r) = http(&reg.addr, "GET", "/v2/", &[], &[]) {
                    if r.status == 200 {
                        return Some(reg);
                    }
                }
                if let Some(c) = reg.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        last_err = format!("docker-registry exited with {status}");
                        reg.child = None;
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if reg.child.is_some() {
                last_err = "GET /v2/ did not answer 200 within 20s".into();
            }
            reg.stop();
        }
        panic!(
            "cannot start docker-registry: {last_err}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Its pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:<port>/<name_and_tag>`, e.g. for `ctr images pull --plain-http`.
    pub fn reference(&self, name_and_tag: &str) -> String {
        format!("{}/{name_and_tag}", self.addr)
    }

    /// `GET path` (e.g. `/v2/busybox/manifests/latest`), accepting OCI and Docker manifests.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        let accept = format!(
            "{}, {}, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
            media::MANIFEST,
            media::INDEX
        );
        http(&self.addr, "GET", path, &[("Accept", &accept)], &[])
            .unwrap_or_else(|e| panic!("GET {path} from {}: {e}", self.addr))
    }

    /// Push the image tagged in the OCI layout at `layout` to `reference` (`name:tag`, or
    /// `name` for `latest`): every blob (skipping those already present), then the manifest.
    /// If index.json lists several manifests, the one whose ref name equals the tag is pushed,
    /// else the first. An entry that is itself an index is pushed with all its manifests.
    /// Returns the digest of what was tagged.
    #[track_caller]
    pub fn push_oci_layout(&self, layout: &Path, reference: &str) -> String {
        let (name, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
        let index: Value = read_json(&layout.join("index.json"));
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let entry = manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .or_else(|| manifests.first())
            .unwrap_or_else(|| panic!("{}: index.json lists no manifest", layout.display()));
        let digest = entry["digest"].as_str().unwrap_or_default().to_string();
        let media_type = entry["mediaType"]
            .as_str()
            .unwrap_or(media::MANIFEST)
            .to_string();
        self.push_manifest_tree(layout, name, &digest, &media_type, tag);
        digest
    }

    #[track_caller]
    fn push_manifest_tree(
        &self,
        layout: &Path,
        name: &str,
        digest: &str,
        media_type: &str,
        tag: &str,
    ) {
        let bytes = std::fs::read(blob_path(layout, digest))
            .unwrap_or_else(|e| panic!("manifest {digest} missing from layout: {e}"));
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{digest}: {e}"));
        if let Some(children) = doc["manifests"].as_array() {
            for m in children {
                let d = m["digest"].as_str().unwrap_or_default();
                let t = m["mediaType"].as_str().unwrap_or(media::MANIFEST);
                self.push_manifest_tree(layout, name, d, t, d);
            }
        } else {
            let blobs = std::iter::once(&doc["config"])
                .chain(doc["layers"].as_array().into_iter().flatten());
            for b in blobs {
                let d = b["digest"].as_str().unwrap_or_default();
                let data = std::fs::read(blob_path(layout, d))
                    .unwrap_or_else(|e| panic!("blob {d} missing from layout: {e}"));
                self.push_blob(name, &data);
            }
        }
        let path = format!("/v2/{name}/manifests/{tag}");
        let r = http(
            &self.addr,
            "PUT",
            &path,
            &[("Content-Type", media_type)],
            &bytes,
        )
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        assert_eq!(
            r.status,
            201,
            "PUT {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if let Some(d) = r.header("docker-content-digest") {
            assert_eq!(d, digest, "registry computed another manifest digest");
        }
    }

    /// Upload one blob (monolithic: POST to open an upload, PUT with `?digest=`); returns its
    /// digest. Skipped when the registry already has it.
    #[track_caller]
    pub fn push_blob(&self, name: &str, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        let head = format!("/v2/{name}/blobs/{digest}");
        if let Ok(r) = http(&self.addr, "HEAD", &head, &[], &[]) {
            if r.status == 200 {
                return digest;
            }
        }
        let start = format!("/v2/{name}/blobs/uploads/");
        let r = http(&self.addr, "POST", &start, &[], &[])
            .unwrap_or_else(|e| panic!("POST {start}: {e}"));
        assert_eq!(
            r.status,
            202,
            "POST {start}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let location = r
            .header("location")
            .unwrap_or_else(|| panic!("POST {start}: no Location"))
            .to_string();
        // Location may be absolute (http://127.0.0.1:PORT/v2/...) or a path.
        let path = match location.find("/v2/") {
            Some(i) => location[i..].to_string(),
            None => location.clone(),
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = format!("{path}{sep}digest={digest}");
        let r = http(
            &self.addr,
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            data,
        )
        .unwrap_or_else(|e| panic!("PUT {put}: {e}"));
        assert_eq!(
            r.status,
            201,
            "PUT blob {digest}: {}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop it (SIGKILL by pid) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- docker-registry log -----\n{}\n-----", self.log());
        }
        self.stop();
    }
}

#[track_caller]
fn read_json(p: &Path) -> Value {
    let text = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_plain_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw, false).expect("parse");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abcde");
        assert_eq!(r.header("x-a"), Some("b"));
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nnoEXTRA";
        let r = parse_response(raw, false).expect("parse");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"no"[..]));
    }
}
