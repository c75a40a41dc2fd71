//! OCI bundles for tests: a busybox rootfs and a `runc spec`-like `config.json`.
//!
//! The rootfs holds a copy (never a link: containers must not reach the host's file) of
//! Debian's busybox-static at /bin/busybox, one symlink per applet, /etc/passwd, /etc/group and
//! the empty mount-point dirs. The spec is built as a `serde_json::Value` so tests can edit
//! any field, including ones a typed spec would reject. This module never mounts anything.

use std::borrow::Borrow;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

/// Where Debian's busybox-static installs the binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// An OCI bundle dir: `config.json` and `rootfs/`.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle dir (holds `config.json`).
    pub path: PathBuf,
    /// `<path>/rootfs`.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Path of `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// The current `config.json`.
    #[track_caller]
    pub fn spec(&self) -> Value {
        let p = self.config_path();
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", p.display()))
    }

    /// Replace `config.json` (accepts `Value` or `&Value`).
    #[track_caller]
    pub fn set_spec(&self, spec: impl Borrow<Value>) {
        let p = self.config_path();
        let text = serde_json::to_string_pretty(spec.borrow()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    }

    /// Read, modify and write back `config.json`.
    #[track_caller]
    pub fn edit_spec(&self, f: impl FnOnce(&mut Value)) {
        let mut spec = self.spec();
        f(&mut spec);
        self.set_spec(&spec);
    }

    /// `linux.cgroupsPath` of the spec (`/berth-test/<unique>` by default).
    pub fn cgroups_path(&self) -> String {
        self.spec()["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Build a busybox bundle in `dir` (created if missing) whose process runs `args`.
///
/// `dir/rootfs` gets the busybox tree (see [`busybox_rootfs`]); `dir/config.json` gets
/// [`default_spec`] with `args` and a unique cgroups path. Panics when busybox-static is
/// missing (skip first with `berth_tests::tool("busybox")` if that should skip).
#[track_caller]
pub fn busybox_bundle(dir: &Path, args: &[&str]) -> Bundle {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs);
    let id = crate::unique_id("bundle");
    let bundle = Bundle {
        path: dir.to_path_buf(),
        rootfs,
    };
    bundle.set_spec(default_spec(args, &format!("/berth-test/{id}")));
    bundle
}

/// The applet names `busybox --list` prints (computed once).
#[track_caller]
pub fn busybox_applets() -> &'static [String] {
    static APPLETS: OnceLock<Vec<String>> = OnceLock::new();
    APPLETS.get_or_init(|| {
        let out = std::process::Command::new(HOST_BUSYBOX)
            .arg("--list")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {HOST_BUSYBOX} --list ({e}); install busybox-static")
            });
        assert!(out.status.success(), "{HOST_BUSYBOX} --list failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
            .map(str::to_string)
            .collect()
    })
}

/// Contents of the rootfs's /etc/passwd.
pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// Contents of the rootfs's /etc/group.
pub const GROUP: &str = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n";

/// Make `rootfs` a busybox tree: /bin/busybox (a copy of the host's busybox-static), a
/// relative symlink `/bin/<applet> -> busybox` per applet, /etc/{passwd,group,hostname},
/// and the dirs /tmp (1777), /root, /proc, /sys, /dev, /etc, /run.
#[track_caller]
pub fn busybox_rootfs(rootfs: &Path) {
    let fail = |what: &str, p: &Path, e: std::io::Error| -> ! {
        panic!("busybox_rootfs: cannot {what} {}: {e}", p.display())
    };
    for d in [
        "bin", "etc", "tmp", "root", "proc", "sys", "dev", "run", "var",
    ] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| fail("create", &p, e));
    }
    let tmp = rootfs.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .unwrap_or_else(|e| fail("chmod", &tmp, e));
    let bb = rootfs.join("bin/busybox");
    std::fs::copy(HOST_BUSYBOX, &bb).unwrap_or_else(|e| {
        panic!("cannot copy {HOST_BUSYBOX} ({e}); install Debian's busybox-static")
    });
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| fail("chmod", &bb, e));
    for applet in busybox_applets() {
        let link = rootfs.join("bin").join(applet);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("busybox", &link).unwrap_or_else(|e| fail("link", &link, e));
        }
    }
    for (name, text) in [
        ("passwd", PASSWD),
        ("group", GROUP),
        ("hostname", "berth\n"),
    ] {
        let p = rootfs.join("etc").join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| fail("write", &p, e));
    }
}

/// The capabilities `runc spec` grants.
pub const DEFAULT_CAPS: [&str; 3] = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// A default spec like the one `runc spec` writes (runc 1.1), with `args`, `terminal: false`,
/// a writable root and `linux.cgroupsPath = cgroups_path`.
pub fn default_spec(args: &[&str], cgroups_path: &str) -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS,
                "ambient": DEFAULT_CAPS
            },
            "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 } ],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": "berth",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": { "devices": [ { "allow": false, "access": "rwm" } ] },
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_has_busybox_and_spec() {
        if crate::find_tool("busybox").is_none() {
            crate::skip("busybox-static is not installed");
            return;
        }
        let dir = crate::TestDir::new("bundle-unit");
        let b = busybox_bundle(dir.path(), &["sh", "-c", "echo hi"]);
        let bb = b.rootfs.join("bin/busybox");
        let meta = std::fs::symlink_metadata(&bb).expect("busybox");
        assert!(meta.file_type().is_file(), "busybox must be a copy");
        assert_eq!(
            std::fs::read_link(b.rootfs.join("bin/sh")).expect("sh link"),
            PathBuf::from("busybox")
        );
        for applet in ["echo", "cat", "sleep", "ls", "id", "ps", "mount"] {
            assert!(
                b.rootfs.join("bin").join(applet).symlink_metadata().is_ok(),
                "{applet}"
            );
        }
        let spec = b.spec();
        assert_eq!(spec["process"]["args"][2], "echo hi");
        assert_eq!(spec["process"]["terminal"], false);
        assert!(b.cgroups_path().starts_with("/berth-test/bundle-"));
        b.edit_spec(|s| s["hostname"] = json!("other"));
        assert_eq!(b.spec()["hostname"], "other");
    }
}
