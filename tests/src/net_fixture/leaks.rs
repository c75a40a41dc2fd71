//! What a network test leaves on the host, and its removal: veths on the fixture's bridge, netns files and
//! mounts, iptables rules carrying its markers, IPAM reservations, berth-net cache entries.

use std::path::PathBuf;
use std::time::Duration;

use super::host::{eventually, remove_marked_rules, sh};
use super::{NetFixture, IP_FORWARD};

impl NetFixture {
    /// host-local reservations (files named by an IP) in the fixture's IPAM dir.
    pub fn ipam_reservations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for net in std::fs::read_dir(&self.ipam_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
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
        for net in std::fs::read_dir(&self.cache_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.file_name().to_string_lossy().ends_with(".json") {
                    out.push(f.path());
                }
            }
        }
        out
    }

    /// What is left of container `id` after its task is gone (or its create failed): the runtime's state for
    /// it, its cgroup, its task dir, its netns.
    pub fn container_leftovers(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let runc = self
            .fx
            .daemon
            .state()
            .join("runc")
            .join(&self.fx.ns)
            .join(id);
        if runc.exists() {
            left.push(format!("runtime state {}", runc.display()));
        }
        let bundle = crate::bundle::Bundle {
            path: self.fx.dir.join(id),
            rootfs: self.fx.dir.join(id).join("rootfs"),
        };
        if bundle.config_path().exists() {
            for d in crate::guard::cgroup_dirs(&bundle.cgroups_path()) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        for p in [self.task_dir(id), self.netns_path(id)] {
            if p.exists() {
                left.push(format!("{}", p.display()));
            }
        }
        left
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
        left.extend(
            self.marked_rules()
                .into_iter()
                .map(|r| format!("iptables {r}")),
        );
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
        assert!(
            left.is_empty(),
            "network leftovers:\n  {}",
            left.join("\n  ")
        );
    }

    /// Remove whatever is left (see the module doc); what had to be removed.
    pub(super) fn cleanup(&mut self) -> Vec<String> {
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
