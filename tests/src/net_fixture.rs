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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::*;
use tonic::Status;

use crate::task_fixture::{fifo_reader, read_until, req, write_config, TaskFixture};
use crate::{run_timeout, DaemonConfig, Guard, TestDir};

/// Held by one fixture at a time (a guard that can move between threads, unlike a `MutexGuard`).
static HOST_BUSY: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

struct HostLock;

impl HostLock {
    fn take() -> HostLock {
        let (busy, freed) = &HOST_BUSY;
        let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
        while *b {
            b = freed.wait(b).unwrap_or_else(|e| e.into_inner());
        }
        *b = true;
        HostLock
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let (busy, freed) = &HOST_BUSY;
        *busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        freed.notify_one();
    }
}
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

/// Run a host command with a time limit; its stdout (stderr appended when it failed).
pub fn sh(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = run_timeout(&mut cmd, Duration::from_secs(30));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text)
}

/// Poll `f` until it holds or `limit` passes; its last answer.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP port free on every host address right now (a published port DNATs all its connections).
pub fn free_port() -> u16 {
    use std::net::TcpListener;
    let seed = std::process::id() * 7919 + COUNTER.fetch_add(1, Ordering::Relaxed) * 104_729;
    for k in 0..2000u32 {
        let p = 20000 + ((seed + k * 977) % 40000) as u16;
        if TcpListener::bind(("0.0.0.0", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port");
}

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
        let host = HostLock::take();
        IP_FORWARD.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
        });
        let dir = TestDir::new(name);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let bridge = format!("bt{:x}x{n}", std::process::id() & 0xfffff);
        assert!(bridge.len() <= 15, "{bridge}");
        let third = free_third_octet(n);
        let ns = crate::unique_id(&format!("{name}-ns"));
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
                guard: Guard::new(),
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
        self.fx.guard.on_cleanup("kill shims and delete containers", move || {
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
        self.fx.daemon.state().join("tasks").join(&self.fx.ns).join(id)
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
    pub async fn run(&self, id: &str, labels: &[(&str, &str)], args: &[&str]) -> Result<u32, Status> {
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
        let text = tokio::task::block_in_place(|| read_until(&mut out, "__rc=", Duration::from_secs(30)));
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

    /// host-local reservations (files named by an IP) in the fixture's IPAM dir.
    pub fn ipam_reservations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for net in std::fs::read_dir(&self.ipam_dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(net.path()).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    out.push(format!("{}/{name}", net.file_name().to_string_lossy()));
                }
            }
        }
        out
    }

    /// Links enslaved to the fixture's bridge (the host ends of veths).
    pub fn veths(&self) -> Vec<String> {
        let (ok, out) = sh(&["ip", "-o", "link", "show", "master", &self.bridge]);
        if !ok {
            return Vec::new(); // no bridge, no veths on it
        }
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// iptables rules (nat and filter) carrying one of the fixture's markers.
    pub fn marked_rules(&self) -> Vec<String> {
        let markers = self.markers();
        let mut out = Vec::new();
        for table in ["nat", "filter"] {
            let (_, text) = sh(&["iptables", "-w", "-t", table, "-S"]);
            out.extend(
                text.lines()
                    .filter(|l| markers.iter().any(|m| l.contains(m.as_str())))
                    .map(|l| format!("{table}: {l}")),
            );
        }
        out
    }

    fn markers(&self) -> Vec<String> {
        vec![
            self.prefix.clone(),
            format!("\"{}\"", self.bridge),
            format!(" {} ", self.bridge),
            format!("{}__", self.fx.ns),
        ]
    }

    /// Netns files berthd has under `<state>/netns` (any namespace).
    pub fn netns_files(&self) -> Vec<PathBuf> {
        let root = self.fx.daemon.state().join("netns");
        let mut out = Vec::new();
        for ns in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                out.push(f.path());
            }
        }
        out
    }

    /// berth-net cache entries left.
    pub fn cache_entries(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for net in std::fs::read_dir(&self.cache_dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(net.path()).into_iter().flatten().flatten() {
                if f.file_name().to_string_lossy().ends_with(".json") {
                    out.push(f.path());
                }
            }
        }
        out
    }

    /// Everything of the fixture's networks still on the host (empty = clean).
    pub fn leaks(&self) -> Vec<String> {
        let mut left = Vec::new();
        // The host end of a veth goes with the DEL; give the kernel a moment anyway.
        eventually(Duration::from_secs(5), || self.veths().is_empty());
        for v in self.veths() {
            left.push(format!("veth {v} on bridge {}", self.bridge));
        }
        for f in self.netns_files() {
            left.push(format!("netns file {}", f.display()));
        }
        for m in crate::mounts_below(&self.fx.daemon.state().join("netns")) {
            left.push(format!("mount {}", m.display()));
        }
        left.extend(self.marked_rules().into_iter().map(|r| format!("iptables {r}")));
        for r in self.ipam_reservations() {
            left.push(format!("IPAM reservation {r}"));
        }
        for c in self.cache_entries() {
            left.push(format!("cache entry {}", c.display()));
        }
        left
    }

    /// Panic with [`NetFixture::leaks`] when not empty.
    #[track_caller]
    pub fn assert_no_leaks(&self) {
        let left = self.leaks();
        assert!(left.is_empty(), "network leftovers:\n  {}", left.join("\n  "));
    }

    /// Remove whatever is left (see the module doc); what had to be removed.
    fn cleanup(&mut self) -> Vec<String> {
        self.fx.daemon.stop();
        let mut left = self.fx.guard.cleanup();
        left.extend(self.leaks());
        for v in self.veths() {
            let _ = sh(&["ip", "link", "del", &v]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
        for f in self.netns_files() {
            let _ = nix::mount::umount2(&f, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&f);
        }
        remove_marked_rules(&self.markers());
        if let Some(v) = IP_FORWARD.get().filter(|v| !v.is_empty()) {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", v);
        }
        left
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

/// A third octet K such that 10.215.K.0/24 is used by no host address or route.
fn free_third_octet(n: u32) -> u32 {
    let (_, routes) = sh(&["ip", "-o", "-4", "route", "show", "table", "all"]);
    let (_, addrs) = sh(&["ip", "-o", "-4", "addr"]);
    for k in 0..250u32 {
        let third = ((std::process::id().wrapping_mul(7) + n * 13 + k) % 250) + 1;
        let prefix = format!("10.215.{third}.");
        if !routes.contains(&prefix) && !addrs.contains(&prefix) {
            return third;
        }
    }
    panic!("no free /24 in 10.215.0.0/16");
}

/// Delete iptables rules (nat, filter) carrying a marker, and the chains that only those rules filled.
fn remove_marked_rules(markers: &[String]) {
    for table in ["nat", "filter"] {
        let (_, text) = sh(&["iptables", "-w", "-t", table, "-S"]);
        let marked = |l: &str| markers.iter().any(|m| l.contains(m.as_str()));
        let mut script = format!("*{table}\n");
        let mut emptied: HashMap<String, bool> = HashMap::new();
        for l in text.lines() {
            let Some(rule) = l.strip_prefix("-A ") else {
                continue;
            };
            let chain = rule.split(' ').next().unwrap_or("").to_string();
            let is_marked = marked(l);
            let e = emptied.entry(chain).or_insert(true);
            *e &= is_marked;
            if is_marked {
                script.push_str(&format!("-D {rule}\n"));
            }
        }
        for (chain, empty) in &emptied {
            if *empty && chain.starts_with("CNI-DN-") {
                script.push_str(&format!("-X {chain}\n"));
            }
        }
        script.push_str("COMMIT\n");
        if script.lines().count() <= 2 {
            continue;
        }
        let mut child = Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let _ = child.wait();
    }
}
