//! docker-registry with TLS or htpasswd (the harness's [`crate::registry::Registry`] has neither), a throwaway
//! CA and server certificate made with the `openssl` CLI, htpasswd files, and containerd-style hosts.toml
//! files: what the pull tests need for registries behind TLS and basic auth. Modelled on berth-registry's own
//! test helpers.
//!
//! Loopback only. Every process started here is killed by PID when its owner drops.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

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
        let bin = crate::tool("docker-registry")?;
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).expect("mkdir storage");
        let log = dir.join("registry.log");
        for _ in 0..5 {
            let port = crate::registry::free_port();
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
            let child = crate::proc::spawn_logged(
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
    let openssl = crate::tool("openssl")?;
    let run = |args: &[&str]| {
        let out = crate::run_timeout(
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

/// A bcrypt htpasswd file for one user (Debian's `htpasswd -B`); `None` (skip) without apache2-utils.
pub fn htpasswd(dir: &Path, user: &str, password: &str) -> Option<PathBuf> {
    let bin = crate::tool("htpasswd")?;
    let out = crate::run_timeout(
        Command::new(bin).args(["-Bbn", user, password]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = dir.join("htpasswd");
    std::fs::write(&p, &out.stdout).expect("write htpasswd");
    Some(p)
}
