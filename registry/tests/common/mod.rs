//! Shared pieces of the registry client's tests: a client with short timeouts, pushing harness OCI layouts
//! with our own push API, docker-registry with TLS or htpasswd (the harness's launcher has neither), a
//! throwaway CA made with the `openssl` CLI, and a counting HTTP proxy that can play a bearer-token
//! registry, fail with 503s, or serve the API under another path.
//!
//! Loopback only. Every process started here is killed by PID when its owner drops; the proxy is a task of
//! the test's own runtime.

#![allow(dead_code)]

mod proxy;
#[allow(unused_imports)] // not every test binary uses the proxy
pub use proxy::{Bearer, Proxy, ProxyOptions};

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use berth_image::oci::{media, Descriptor};
use berth_registry::{ClientConfig, Reference, RegistryClient, Repository, RequestOptions};
use berth_tests::oci_layout::{MultiPlatformLayout, OciLayout};
use bytes::Bytes;

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
