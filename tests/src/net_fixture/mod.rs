//! Helpers of the berthd network tests (`daemon_net_*.rs`): a [`NetFixture`] is a [`TaskFixture`] whose
//! berthd has its own network settings (CNI conf dir, a plugin dir for fake plugins searched before
//! /usr/lib/cni, cache and IPAM dirs, a bridge name of at most 15 bytes and a free /24 in 10.215.0.0/16), plus
//! container helpers that go through gRPC only (labels on the container record, Tasks.Exec to look inside)
//! and a leak check of everything a network leaves on the host: veths on the test's bridge, netns files and
//! mounts, iptables rules naming the test's subnet, bridge or CNI ids, IPAM reservations, cache entries.
//!
//! The plugins change host-wide state (shared iptables chains, `net.ipv4.ip_forward`), so fixtures of one test
//! binary run one at a time (a process-wide lock), and each one's leak check only looks for what carries its
//! own markers. On drop it stops berthd, kills what is left, removes the bridge, the netns files, the marked
//! iptables rules and restores `ip_forward`, then fails the test if it had to clean anything up.

mod host;
mod leaks;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub use host::{eventually, free_port, sh};
use host::{free_third_octet, HostLock};

use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::*;
use tonic::Status;

use crate::task_fixture::{fifo_reader, read_until, req, write_config, TaskFixture};
use crate::{DaemonConfig, Guard, TestDir};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static IP_FORWARD: OnceLock<String> = OnceLock::new();

/// The label naming a container's networks (`none`, `host`, or names).
pub const NETWORKS: &str = "berth.io/networks";
/// The label publishing a container's ports.
pub const PORTS: &str = "berth.io/ports";

/// Capabilities of the fixture's containers and execs: the `runc spec` set plus NET_RAW (busybox ping
/// needs a raw socket; Docker grants it too).
pub const CAPS: [&str; 4] = [
    "CAP_AUDIT_WRITE",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
];

/// A fixture's network settings, as written into berthd's config.
struct NetPaths {
    conf_dir: PathBuf,
    plugin_dir: PathBuf,
    ipam_dir: PathBuf,
    cache_dir: PathBuf,
    bridge: String,
    subnet: String,
}

impl NetPaths {
    /// berthd's config: runtime, shim, failpoints (see `task_fixture::write_config`) and `[network]`.
    fn write_config(&self, path: &Path, failpoints: &str) {
        write_config(path, failpoints);
        let net = format!(
            "\n[network]\nconf_dir = {:?}\nplugin_dirs = [{:?}, \"/usr/lib/cni\"]\ncache_dir = {:?}\n\
             ipam_data_dir = {:?}\ndefault_bridge = {:?}\ndefault_subnet = {:?}\nplugin_timeout = 30\n",
            self.conf_dir.display().to_string(),
            self.plugin_dir.display().to_string(),
            self.cache_dir.display().to_string(),
            self.ipam_dir.display().to_string(),
            self.bridge,
            self.subnet,
        );
        let mut text = std::fs::read_to_string(path).expect("read config");
        text.push_str(&net);
        std::fs::write(path, text).expect("write config");
    }
}

/// One network test's berthd and host state; see the module doc.
pub struct NetFixture {
    /// berthd, its cleanup guard, namespace and test dir.
    pub fx: TaskFixture,
    /// The default network's bridge (at most 15 bytes).
    pub bridge: String,
    /// The default network's subnet, `10.215.K.0/24`.
    pub subnet: String,
    /// `10.215.K.`: every address of the test starts with it.
    pub prefix: String,
    /// berthd's CNI conf dir (empty at start: the default network is written at first use).
    pub conf_dir: PathBuf,
    /// Searched before /usr/lib/cni: fake plugins go here.
    pub plugin_dir: PathBuf,
    /// host-local's data dir of the default network.
    pub ipam_dir: PathBuf,
    /// berth-net's attachment cache.
    pub cache_dir: PathBuf,
    _host: HostLock,
}

impl NetFixture {
    /// A berthd for test `name` with its own network settings and `failpoints` (`""` for none).
    pub fn new(name: &str, failpoints: &str) -> NetFixture {
        NetFixture::with_config(name, failpoints, "", None)
    }

    /// As [`NetFixture::new`], with `extra` appended to berthd's config (e.g. a `[cri]` table) and, when
    /// given, `ns` as the fixture's namespace (e.g. CRI's fixed `k8s.io`; each berthd has its own state).
    pub fn with_config(name: &str, failpoints: &str, extra: &str, ns: Option<&str>) -> NetFixture {
        NetFixture::with_setup(name, failpoints, extra, ns, |_| {})
    }

    /// As [`NetFixture::with_config`], with `setup(dir)` run before berthd first starts (the fault suite
    /// mounts a small tmpfs as its root there; register such mounts with the guard afterwards).
    pub fn with_setup(
        name: &str,
        failpoints: &str,
        extra: &str,
        ns: Option<&str>,
        setup: impl FnOnce(&TestDir),
    ) -> NetFixture {
        let host = HostLock::take();
        IP_FORWARD.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
        });
        let dir = TestDir::new(name);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let bridge = format!("bt{:x}x{n}", std::process::id() & 0xfffff);
        assert!(bridge.len() <= 15, "{bridge}");
        let third = free_third_octet(n);
        let guard = Guard::new();
        let ns = match ns {
            Some(ns) => ns.to_string(),
            None => {
                // The namespace is this fixture's own: so is the cgroup dir containers get below it.
                let ns = crate::unique_id(&format!("{name}-ns"));
                guard.cgroup_parent(format!("/{ns}"));
                ns
            }
        };
        let config_path = dir.join("config.toml");
        let paths = NetPaths {
            conf_dir: dir.join("net.d"),
            plugin_dir: dir.subdir("plugins"),
            ipam_dir: dir.join("ipam"),
            cache_dir: dir.join("cni-cache"),
            bridge,
            subnet: format!("10.215.{third}.0/24"),
        };
        paths.write_config(&config_path, failpoints);
        setup(&dir);
        if !extra.is_empty() {
            let mut text = std::fs::read_to_string(&config_path).expect("read config");
            text.push_str(extra);
            std::fs::write(&config_path, text).expect("write config");
        }
        let daemon = DaemonConfig::new(dir.path())
            .arg("--config")
            .arg(&config_path)
            .start();
        let fx = NetFixture {
            prefix: format!("10.215.{third}."),
            subnet: paths.subnet,
            conf_dir: paths.conf_dir,
            plugin_dir: paths.plugin_dir,
            ipam_dir: paths.ipam_dir,
            cache_dir: paths.cache_dir,
            bridge: paths.bridge,
            fx: TaskFixture {
                daemon,
                guard,
                ns,
                config_path,
                dir,
            },
            _host: host,
        };
        fx.kill_on_cleanup();
        fx
    }

    /// Rewrite berthd's config file with other failpoints (takes effect at its next start).
    pub fn write_config(&self, failpoints: &str) {
        NetPaths {
            conf_dir: self.conf_dir.clone(),
            plugin_dir: self.plugin_dir.clone(),
            ipam_dir: self.ipam_dir.clone(),
            cache_dir: self.cache_dir.clone(),
            bridge: self.bridge.clone(),
            subnet: self.subnet.clone(),
        }
        .write_config(&self.fx.config_path, failpoints);
    }

    /// Kill every shim berthd started and force-delete its containers at cleanup, whatever the test left.
    fn kill_on_cleanup(&self) {
        let (st, ns2, rt) = (
            self.fx.daemon.state().to_path_buf(),
            self.fx.ns.clone(),
            crate::task_fixture::runtime(),
        );
        self.fx
            .guard
            .on_cleanup("kill shims and delete containers", move || {
                let tasks = st.join("tasks").join(&ns2);
                let runc_root = st.join("runc").join(&ns2);
                for e in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let _ = Command::new(&rt)
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force", &id])
                        .output();
                    if let Ok(pid) = std::fs::read_to_string(e.path().join("shim.pid")) {
                        if let Ok(pid) = pid.trim().parse::<i32>() {
                            crate::proc::kill(pid, nix::sys::signal::Signal::SIGKILL);
                            crate::proc::wait_dead(pid, Duration::from_secs(5));
                        }
                    }
                }
            });
    }

    /// berthd's `<state>/netns/<ns>/<id>`.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.fx
            .daemon
            .state()
            .join("netns")
            .join(&self.fx.ns)
            .join(id)
    }

    /// The task dir `<state>/tasks/<ns>/<id>` (its hosts, resolv.conf, hostname files).
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.fx
            .daemon
            .state()
            .join("tasks")
            .join(&self.fx.ns)
            .join(id)
    }

    /// The bridge's address (host-local gives the gateway the subnet's first address).
    pub fn gateway(&self) -> String {
        format!("{}1", self.prefix)
    }

    /// Write a network config into berthd's conf dir.
    pub fn write_conflist(&self, file: &str, conflist: &serde_json::Value) {
        std::fs::create_dir_all(&self.conf_dir).expect("conf dir");
        std::fs::write(
            self.conf_dir.join(file),
            serde_json::to_vec_pretty(conflist).expect("json"),
        )
        .expect("write conflist");
    }

    /// The bridge plugin on this test's bridge and subnet (`subnet` overrides it), IPAM in its dir.
    pub fn bridge_plugin(&self, subnet: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet.unwrap_or(&self.subnet)}]],
                     "dataDir": self.ipam_dir}
        })
    }

    /// An executable shell-script plugin in the fixture's plugin dir.
    pub fn write_plugin(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.plugin_dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).expect("write plugin");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// Containers.Create of `id` running `args` in a busybox rootfs, hostname `<id>-h`, with `labels`.
    pub async fn create_container(&self, id: &str, labels: &[(&str, &str)], args: &[&str]) {
        let b = self.fx.bundle(id, args);
        let mut spec = b.spec();
        spec["root"]["path"] = b.rootfs.display().to_string().into();
        spec["hostname"] = format!("{id}-h").into();
        for set in ["bounding", "effective", "permitted", "ambient"] {
            spec["process"]["capabilities"][set] = serde_json::json!(CAPS);
        }
        std::fs::create_dir_all(b.rootfs.join("www")).expect("www");
        std::fs::write(b.rootfs.join("www/f"), format!("hello from {id}\n")).expect("www/f");
        let mut c = ContainersClient::new(self.fx.channel().await);
        let container = crate::grpc::container(id, "", labels);
        let container = Container {
            spec: Some(prost_types::Any {
                type_url: berth_proto::SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(&spec).expect("json"),
            }),
            ..container
        };
        c.create(req(
            &self.fx.ns,
            CreateContainerRequest {
                container: Some(container),
            },
        ))
        .await
        .expect("create container");
    }

    /// Container, task and Start; the init's pid. A failed Tasks.Create is returned (the container stays).
    pub async fn run(
        &self,
        id: &str,
        labels: &[(&str, &str)],
        args: &[&str],
    ) -> Result<u32, Status> {
        self.create_container(id, labels, args).await;
        self.fx.create_task(id, "", "").await?;
        let mut t = self.fx.tasks().await;
        let pid = t
            .start(req(
                &self.fx.ns,
                StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
            ))
            .await?
            .into_inner()
            .pid;
        self.fx.guard.pid(pid as i32);
        Ok(pid)
    }

    /// Run `script` with `sh -c` inside the container (Tasks.Exec, NET_RAW granted); its exit code and
    /// output (stdout and stderr together).
    pub async fn exec(&self, id: &str, script: &str) -> (i32, String) {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let exec_id = format!("x{n}");
        let fifo = self.fx.dir.join(format!("exec-{n}.out"));
        let mut out = fifo_reader(&fifo);
        let process = serde_json::json!({
            "args": ["sh", "-c", format!("{script} 2>&1; echo __rc=$?")],
            "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}, "terminal": false,
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
        });
        let mut t = self.fx.tasks().await;
        t.exec(req(
            &self.fx.ns,
            ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
                stdout: fifo.display().to_string(),
                spec: Some(prost_types::Any {
                    type_url: berth_proto::PROCESS_TYPE_URL.into(),
                    value: serde_json::to_vec(&process).expect("json"),
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("exec");
        t.start(req(
            &self.fx.ns,
            StartRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            },
        ))
        .await
        .expect("start exec");
        let text =
            tokio::task::block_in_place(|| read_until(&mut out, "__rc=", Duration::from_secs(30)));
        let _ = tokio::time::timeout(Duration::from_secs(10), self.fx.wait(id, &exec_id)).await;
        let _ = t
            .delete_process(req(
                &self.fx.ns,
                DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id,
                },
            ))
            .await;
        let (body, rc) = text.rsplit_once("__rc=").unwrap_or((&text, ""));
        let rc = rc.trim().lines().next().unwrap_or("").parse().unwrap_or(-1);
        (rc, body.to_string())
    }

    /// The first IPv4 address of `eth0` inside the container.
    pub async fn ip_of(&self, id: &str) -> String {
        let (rc, out) = self.exec(id, "ip -o -4 addr show dev eth0").await;
        assert_eq!(rc, 0, "{out}");
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_else(|| panic!("no address in {out:?}"))
            .to_string()
    }

    /// SIGKILL the task, wait, Tasks.Delete (which must succeed), Containers.Delete.
    pub async fn remove(&self, id: &str) {
        let mut t = self.fx.tasks().await;
        let _ = t
            .kill(req(
                &self.fx.ns,
                KillRequest {
                    container_id: id.into(),
                    signal: 9,
                    all: true,
                    ..Default::default()
                },
            ))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.fx.wait(id, "")).await;
        t.delete(req(
            &self.fx.ns,
            DeleteTaskRequest {
                container_id: id.into(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("delete task {id}: {e}"));
        self.delete_container(id).await;
    }

    /// Containers.Delete (best effort).
    pub async fn delete_container(&self, id: &str) {
        let mut c = ContainersClient::new(self.fx.channel().await);
        let _ = c
            .delete(req(&self.fx.ns, DeleteContainerRequest { id: id.into() }))
            .await;
    }
}

impl Drop for NetFixture {
    fn drop(&mut self) {
        let left = self.cleanup();
        if !left.is_empty() {
            let msg = format!("network test left things behind:\n  {}", left.join("\n  "));
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}
