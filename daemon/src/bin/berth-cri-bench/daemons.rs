//! The two CRI runtimes under test, each on private dirs, its own socket, its own bridge and /24 (the same
//! plugin chain: bridge + host-local + portmap from Debian's containernetworking-plugins) and its own pod
//! cgroup parent: berthd (the release binary next to this one, `[cri] enabled`) and Debian's containerd 1.6
//! with its CRI plugin. Also the images both pull: a pause image and busybox, pushed to the loopback registry.
//!
//! Everything here is stopped by pid and removed by path; nothing outside the work dir, the two bridges and the
//! two cgroup parents is touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::Context as _;
use berth_image::oci::media;
use berth_image::tarw::{TarHeader, TarWriter};
use berth_image::Digest;
use berth_registry::{ClientConfig, Reference, RegistryClient, RequestOptions};

use crate::procs::{berthd_command, spawn, stop, wait_for};

/// One runtime's private setup.
pub struct Runtime {
    /// "berthd" or "containerd".
    pub name: &'static str,
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Pods' cgroup parent (`/berth-cri-bench-<name>-<pid>`).
    pub cgroup_parent: String,
    /// The pods' log root.
    pub logs: PathBuf,
    bridge: String,
}

/// The CNI network both runtimes use, on `bridge` and `10.218.<k>.0/24`.
fn conflist(bridge: &str, k: u8, ipam: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cribench",
        "plugins": [
            {
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.218.{k}.0/24")}]],
                         "dataDir": ipam.display().to_string()}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// hosts.toml saying the loopback registry is plain HTTP.
fn hosts_dir(dir: &Path, registry: &str) -> anyhow::Result<PathBuf> {
    let hosts = dir.join("certs.d");
    std::fs::create_dir_all(hosts.join(registry))?;
    std::fs::write(
        hosts.join(registry).join("hosts.toml"),
        format!("server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )?;
    Ok(hosts)
}

impl Runtime {
    /// berthd with CRI on, its default runtime (berth-shim + berth-runc next to it).
    /// `log_level` is berthd's filter (`warn`; `warn,berth_daemon::cri=debug` logs each CRI verb's time).
    pub fn berthd(
        base: &Path,
        registry: &str,
        pause: &str,
        log_level: &str,
    ) -> anyhow::Result<Runtime> {
        let dir = base.join("berthd");
        let conf = dir.join("cni");
        std::fs::create_dir_all(&conf)?;
        let bridge = format!("bcb{}", std::process::id() % 100_000);
        std::fs::write(
            conf.join("10-cribench.conflist"),
            conflist(&bridge, 1, &dir.join("ipam")),
        )?;
        let hosts = hosts_dir(&dir, registry)?;
        let exe = std::env::current_exe()?;
        let bins = exe.parent().context("no exe dir")?;
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "log_level = {log_level:?}\nruntime_binary = {}\nshim_binary = {}\n\
                 [network]\nconf_dir = {}\nplugin_dirs = [\"/usr/lib/cni\"]\n\
                 [cri]\nenabled = true\nsandbox_image = {pause:?}\nnetwork = \"cribench\"\nregistry_config_path = {}\n",
                q(&bins.join("berth-runc")),
                q(&bins.join("berth-shim")),
                q(&conf),
                q(&hosts),
            ),
        )?;
        let socket = dir.join("b.sock");
        let child = spawn(
            &mut berthd_command(&bins.join("berthd"), &dir),
            &dir.join("berthd.log"),
        )?;
        let s = socket.clone();
        wait_for("berthd", || {
            std::os::unix::net::UnixStream::connect(&s).is_ok()
        })?;
        Ok(Runtime {
            name: "berthd",
            child: Some(child),
            socket,
            cgroup_parent: format!("/berth-cri-bench-b-{}", std::process::id()),
            logs: dir.join("pod-logs"),
            bridge,
        })
    }

    /// Debian's containerd 1.6 with its CRI plugin (runc v2 shim, overlayfs, cgroupfs).
    pub fn containerd(base: &Path, registry: &str, pause: &str) -> anyhow::Result<Runtime> {
        let dir = base.join("containerd");
        let conf = dir.join("cni");
        for d in ["root", "state", "opt"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::create_dir_all(&conf)?;
        let bridge = format!("bcc{}", std::process::id() % 100_000);
        std::fs::write(
            conf.join("10-cribench.conflist"),
            conflist(&bridge, 2, &dir.join("ipam")),
        )?;
        let hosts = hosts_dir(&dir, registry)?;
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let socket = dir.join("c.sock");
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let config = format!(
            "version = 2\nroot = {}\nstate = {}\n\
             disabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = {}\n[ttrpc]\n  address = {}\n[debug]\n  address = \"\"\n  level = \"warn\"\n\
             [metrics]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n\
             [{cri}]\n  sandbox_image = {pause:?}\n  restrict_oom_score_adj = true\n  disable_apparmor = true\n\
             stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
             [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\
             [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = {}\n\
             [{cri}.registry]\n  config_path = {}\n",
            q(dir.join("root")),
            q(dir.join("state")),
            q(socket.clone()),
            q(dir.join("c.sock.ttrpc")),
            q(dir.join("opt")),
            q(conf),
            q(hosts),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let child = spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("config.toml")),
            &dir.join("containerd.log"),
        )?;
        let s = socket.clone();
        wait_for("containerd", || {
            std::os::unix::net::UnixStream::connect(&s).is_ok()
        })?;
        Ok(Runtime {
            name: "containerd",
            child: Some(child),
            socket,
            cgroup_parent: format!("/berth-cri-bench-c-{}", std::process::id()),
            logs: dir.join("pod-logs"),
            bridge,
        })
    }

    /// Stop the daemon (its pods are removed already), delete its bridge and its pods' cgroup parent.
    pub fn stop(&mut self) {
        stop(&mut self.child);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        remove_cgroup(&self.cgroup_parent);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Remove a cgroup dir (and its empty children) from every hierarchy of this host.
fn remove_cgroup(rel: &str) {
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for root in roots.flatten() {
        let dir = root.path().join(rel.trim_start_matches('/'));
        if dir.is_dir() {
            remove_tree(&dir);
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&c.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("warning: cannot remove cgroup {}: {e}", dir.display());
    }
}

/// A one-layer busybox image (`bin/busybox`, `sh`, `sleep`) with `config`, pushed as `<addr>/<name>`.
pub async fn push_busybox(
    addr: &str,
    name: &str,
    config: serde_json::Value,
) -> anyhow::Result<String> {
    let busybox =
        std::fs::read("/bin/busybox").context("reading /bin/busybox (install busybox-static)")?;
    let mut tw = TarWriter::new(Vec::new());
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        tw.append(
            &TarHeader {
                path: format!("{d}/").into_bytes(),
                kind: b'5',
                mode: 0o755,
                ..Default::default()
            },
            None,
        )?;
    }
    tw.append(
        &TarHeader {
            path: b"bin/busybox".to_vec(),
            kind: b'0',
            mode: 0o755,
            size: busybox.len() as u64,
            ..Default::default()
        },
        Some(&mut &busybox[..]),
    )?;
    for applet in ["sh", "sleep"] {
        tw.append(
            &TarHeader {
                path: format!("bin/{applet}").into_bytes(),
                kind: b'2',
                mode: 0o777,
                link: b"busybox".to_vec(),
                ..Default::default()
            },
            None,
        )?;
    }
    let tar = tw.finish()?;
    let reference = format!("{addr}/{name}");
    let parsed = Reference::parse(&reference)?;
    let tag = reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let client = RegistryClient::new(ClientConfig::default());
    let repo = client.repository(
        &parsed,
        &RequestOptions {
            plain_http: true,
            ..Default::default()
        },
    )?;
    let diff_id = Digest::of(&tar).to_string();
    let layer = repo.push_blob(media::OCI_LAYER, tar.into()).await?;
    let arch = berth_image::oci::Platform::host().architecture;
    let mut config = config;
    config["Env"] =
        serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = repo
        .push_blob(media::OCI_CONFIG, serde_json::to_vec(&config)?.into())
        .await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": config, "layers": [layer],
    });
    repo.push_manifest(
        tag,
        media::OCI_MANIFEST,
        serde_json::to_vec(&manifest)?.into(),
    )
    .await?;
    Ok(reference)
}
