//! Shared setup of berth-net's integration tests: one [`NetEnv`] per test with its own conf,
//! cache and IPAM dirs, a unique bridge name and /24 subnet, netns paths under its TestDir,
//! and a cleanup that undoes everything the test caused (attachments, namespaces, listener
//! processes, the bridge, iptables rules and chains, the ip_forward sysctl) and then fails the
//! test if anything is left.
//!
//! Tests that drive real plugins change host-wide state that cannot be scoped to one test:
//! the portmap and firewall plugins' shared iptables chains, and `net.ipv4.ip_forward` (the
//! bridge plugin turns it on for `isGateway`). So each [`NetEnv`] holds a process-wide lock:
//! the snapshot taken at its start is then exactly what its cleanup must restore.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_net::{Attachment, Cni, NetConfig, Network};
use berth_tests::{run_timeout, TestDir};

static HOST_LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// iptables tables the plugins touch, with the tool that lists them.
const TABLES: &[(&str, &str)] = &[
    ("iptables", "filter"),
    ("iptables", "nat"),
    ("ip6tables", "filter"),
    ("ip6tables", "nat"),
];

/// Run a host command with a time limit; panics if it cannot be run.
pub fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    run_timeout(&mut cmd, Duration::from_secs(30))
}

/// `run`, asserting success; stdout as text.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command run inside the netns at `ns` (nsenter --net).
pub fn in_netns(ns: &Path, args: &[&str]) -> Output {
    let net = format!("--net={}", ns.display());
    let mut all = vec!["nsenter", net.as_str()];
    all.extend_from_slice(args);
    run(&all)
}

/// `GET /f` from inside `ns` to `ip:port` (busybox nc: busybox-static's wget crashes in
/// its resolver); the response body, or `None` when nothing answered.
pub fn http_get_in(ns: &Path, ip: &str, port: u16) -> Option<String> {
    let script = format!("printf 'GET /f HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {ip} {port}");
    let out = in_netns(ns, &["busybox", "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// `GET /f` from the host to `addr` over TCP; the body, or `None`.
pub fn http_get(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /f HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// `iptables -S` of every table the plugins touch, one string per (tool, table).
pub fn iptables_snapshot() -> Vec<(String, String, String)> {
    TABLES
        .iter()
        .map(|(tool, table)| {
            let out = run(&[tool, "-w", "-t", table, "-S"]);
            (
                tool.to_string(),
                table.to_string(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
        .collect()
}

/// All rules of the nat and filter tables (IPv4) as text.
pub fn iptables_text() -> String {
    iptables_snapshot()
        .into_iter()
        .filter(|(tool, _, _)| tool == "iptables")
        .map(|(_, _, s)| s)
        .collect()
}

/// Names of the links enslaved to `bridge`.
pub fn links_on(bridge: &str) -> Vec<String> {
    let out = run(&["ip", "-o", "link", "show", "master", bridge]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// True when a link of that name exists on the host.
pub fn link_exists(name: &str) -> bool {
    run(&["ip", "link", "show", "dev", name]).status.success()
}

/// Interface names inside a netns.
pub fn links_in(ns: &Path) -> Vec<String> {
    let out = in_netns(ns, &["ip", "-o", "link"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Poll `f` until it is true or `limit` passes; its last value.
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

/// A base port such that `base..base+n` are free for TCP and UDP on every host address right
/// now: a published port DNATs every connection to it, so it must not belong to anybody.
pub fn free_ports(n: u16) -> u16 {
    use std::net::{TcpListener, UdpSocket};
    let seed = std::process::id() as u64 * 7919
        + u64::from(COUNTER.fetch_add(1, Ordering::Relaxed)) * 104_729;
    for k in 0..2000u64 {
        let base = 20000 + ((seed + k * 977) % 40000) as u16;
        let free = (base..base + n).all(|p| {
            TcpListener::bind(("0.0.0.0", p)).is_ok() && UdpSocket::bind(("0.0.0.0", p)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no {n} free consecutive ports");
}

/// One free port (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// An executable shell script plugin in `dir`.
pub fn write_plugin(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).expect("create_dir_all");
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}")).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("set_permissions");
    p
}

/// One test's network environment; see the module docs.
pub struct NetEnv {
    pub dir: TestDir,
    pub bridge: String,
    pub subnet: String,
    pub cfg: NetConfig,
    pub cni: Cni,
    pub plugin_dir: PathBuf,
    netns: Mutex<Vec<PathBuf>>,
    children: Mutex<Vec<Child>>,
    iptables_before: Vec<(String, String, String)>,
    ip_forward_before: String,
    _host: MutexGuard<'static, ()>,
}

impl NetEnv {
    pub fn new(name: &str) -> NetEnv {
        let host = HOST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = TestDir::new(name);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let bridge = format!("bn{:x}x{n}", pid & 0xffffff);
        assert!(bridge.len() <= 15, "{bridge}");
        let subnet = free_subnet(pid, n);
        let plugin_dir = dir.subdir("plugins");
        let cfg = NetConfig {
            conf_dir: dir.join("net.d"),
            plugin_dirs: vec![plugin_dir.clone(), PathBuf::from("/usr/lib/cni")],
            cache_dir: dir.join("cache"),
            ipam_data_dir: dir.join("ipam"),
            default_network: format!("t-{bridge}"),
            default_bridge: bridge.clone(),
            default_subnet: subnet.parse().expect("parse"),
            plugin_timeout: Duration::from_secs(30),
        };
        NetEnv {
            cni: Cni::new(cfg.clone()),
            dir,
            bridge,
            subnet,
            cfg,
            plugin_dir,
            netns: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            iptables_before: iptables_snapshot(),
            ip_forward_before: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap_or_default(),
            _host: host,
        }
    }

    /// The default network (bridge + portmap + firewall) on this test's bridge and subnet.
    pub fn default_network(&self) -> Network {
        let text = berth_net::default_conflist(&self.cfg).expect("default_conflist");
        Network::from_conflist_bytes(text.as_bytes(), "test default").expect("from_conflist_bytes")
    }

    /// A network from a conflist JSON value.
    pub fn network(&self, v: serde_json::Value) -> Network {
        Network::from_conflist_value(v, "test").expect("from_conflist_value")
    }

    /// The bridge plugin's config for this test (host-local IPAM on the test subnet).
    pub fn bridge_plugin(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                     "dataDir": self.cfg.ipam_data_dir}
        })
    }

    /// A new netns at `<testdir>/netns/<name>`, removed at cleanup.
    pub fn netns(&self, name: &str) -> PathBuf {
        let p = self.dir.join("netns").join(name);
        self.netns.lock().expect("lock").push(p.clone());
        berth_net::create_netns(&p).expect("create_netns");
        p
    }

    pub fn attachment(&self, id: &str, ns: &Path) -> Attachment {
        Attachment::new(berth_tests::unique_id(id), ns, "eth0")
    }

    /// Start `busybox httpd` inside `ns` on `port`, serving `body` as `/f`.
    pub fn httpd(&self, ns: &Path, port: u16, body: &str) {
        let root = self.dir.subdir(format!(
            "www-{port}-{}",
            self.children.lock().expect("lock").len()
        ));
        std::fs::write(root.join("f"), body).expect("write");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["busybox", "httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("test setup");
        self.children.lock().expect("lock").push(child);
    }

    /// host-local's reservations (files named by an IP) in this test's IPAM dir.
    pub fn ipam_reservations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for net_dir in std::fs::read_dir(&self.cfg.ipam_data_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(net_dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Attachments still in the cache.
    pub fn cached(&self) -> usize {
        let (found, errors) = self.cni.list_cached();
        assert!(errors.is_empty(), "{errors:?}");
        found.len()
    }

    /// Undo everything; what is still there afterwards (empty = clean).
    fn cleanup(&self) -> Vec<String> {
        let mut left = Vec::new();
        let (cached, errors) = self.cni.list_cached();
        for e in errors {
            left.push(format!("unreadable cache entry: {e}"));
        }
        for c in cached {
            left.push(format!(
                "attachment {}/{} was still cached at cleanup",
                c.attachment.container_id, c.attachment.ifname
            ));
            if let Err(e) = self.cni.detach(&c.network, &c.attachment) {
                left.push(format!("cleanup detach failed: {e}"));
            }
        }
        for mut c in self.children.lock().expect("lock").drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let enslaved = links_on(&self.bridge);
        for ns in self.netns.lock().expect("lock").iter() {
            if let Err(e) = berth_net::remove_netns(ns) {
                left.push(format!("remove netns {}: {e}", ns.display()));
            }
        }
        // The kernel tears a netns (and the veth peers in it) down asynchronously.
        if !eventually(Duration::from_secs(10), || {
            enslaved.iter().all(|l| !link_exists(l))
        }) {
            left.push(format!("veths still present: {enslaved:?}"));
        }
        if link_exists(&self.bridge) {
            let _ = run(&["ip", "link", "del", &self.bridge]);
        }
        if link_exists(&self.bridge) {
            left.push(format!("bridge {} still exists", self.bridge));
        }
        restore_iptables(&self.iptables_before);
        let now = iptables_snapshot();
        for ((tool, table, before), (_, _, after)) in self.iptables_before.iter().zip(&now) {
            if before != after {
                left.push(format!(
                    "{tool} -t {table} differs from before the test:\nbefore:\n{before}after:\n{after}"
                ));
            }
        }
        if !self.ip_forward_before.is_empty() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward_before);
        }
        let mounted = berth_tests::mounts_below(self.dir.path());
        if !mounted.is_empty() {
            left.push(format!("mounts left: {mounted:?}"));
        }
        let res = self.ipam_reservations();
        if !res.is_empty() {
            left.push(format!("IPAM reservations left: {res:?}"));
        }
        left
    }
}

impl Drop for NetEnv {
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

/// A /24 in 10.214.0.0/16 that no host address or route uses yet.
fn free_subnet(pid: u32, n: u32) -> String {
    let routes = run_ok(&["ip", "-o", "-4", "route", "show", "table", "all"]);
    let addrs = run_ok(&["ip", "-o", "-4", "addr"]);
    for k in 0..250u32 {
        let third = ((pid.wrapping_mul(7) + n * 13 + k) % 250) + 1;
        let net = Ipv4Addr::new(10, 214, third as u8, 0);
        let prefix = format!("10.214.{third}.");
        if !routes.contains(&prefix) && !addrs.contains(&prefix) {
            return format!("{net}/24");
        }
    }
    panic!("no free /24 in 10.214.0.0/16");
}

/// Delete the rules and chains added since `before` (rules of chains that existed first, then
/// the new chains), through `iptables-restore --noflush`, which parses `-S`'s quoting itself.
fn restore_iptables(before: &[(String, String, String)]) {
    for (tool, table, was) in before {
        let now = run(&[tool, "-w", "-t", table, "-S"]);
        let now = String::from_utf8_lossy(&now.stdout).into_owned();
        let old: Vec<&str> = was.lines().collect();
        let new_chains: Vec<&str> = now
            .lines()
            .filter(|l| l.starts_with("-N ") && !old.contains(l))
            .map(|l| &l[3..])
            .collect();
        let mut script = format!("*{table}\n");
        for l in now
            .lines()
            .filter(|l| l.starts_with("-A ") && !old.contains(l))
        {
            let chain = l[3..].split(' ').next().unwrap_or("");
            if !new_chains.contains(&chain) {
                script.push_str(&format!("-D {}\n", &l[3..]));
            }
        }
        for c in &new_chains {
            script.push_str(&format!("-F {c}\n"));
        }
        for c in &new_chains {
            script.push_str(&format!("-X {c}\n"));
        }
        script.push_str("COMMIT\n");
        if script.lines().count() <= 2 {
            continue;
        }
        let restore = format!("{tool}-restore");
        let mut child = Command::new(&restore)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("test setup");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("test setup")
            .write_all(script.as_bytes())
            .expect("test setup");
        let out = child.wait_with_output().expect("wait_with_output");
        if !out.status.success() {
            eprintln!(
                "{restore} failed: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
