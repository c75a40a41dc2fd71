//! Start and stop Debian's containerd (1.6) for one test, the reference peer that black-box
//! compatibility tests put in front of berth-runc (through containerd-shim-runc-v2) or compare
//! berthd with.
//!
//! Everything containerd itself writes goes below the test's dir: its root, state, `opt` dir,
//! config, log and both sockets. What the runc shim writes outside it, whatever containerd is
//! told, is tracked here and removed on drop:
//! - `/run/containerd/runc/<namespace>/<id>`: the runtime's `--root` (the shim's default);
//! - `/run/containerd/s/<sha256(address/namespace/id)>`: each shim's ttrpc socket;
//! - the shims themselves: they are daemons that outlive containerd (parent PID 1), found by
//!   the `-address <our socket>` in their command line;
//! - the containers' cgroups `/<namespace>/<id>` (ctr's default `cgroupsPath`) and the
//!   `/<namespace>` parent that runc-like runtimes leave behind.
//!
//! Use a namespace from [`Containerd::namespace`] for every ctr call: it is unique to the test
//! and registered for that cleanup. This module signals only containerd (its child, by PID),
//! the shims started for its socket and runtime commands run for its namespaces (by PID); it
//! never cleans up by name pattern outside those.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use crate::proc;

/// Where the runc shim keeps each namespace's runtime root (`--root` of the runtime) unless a
/// container's options say otherwise.
pub const RUNC_SHIM_ROOT: &str = "/run/containerd/runc";

/// Where the v2 shims of containerd 1.6 put their sockets, whatever containerd's state dir is.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// Unix socket paths longer than this do not fit in `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 107;

/// A running containerd owned by a test. Dropping it stops containerd, kills the shims and
/// runtime commands it left, removes the runc state and cgroups of its namespaces, then fails
/// the test if any of that is still there. When the test is panicking, containerd's log
/// (which carries the shims' logs too: they run with `-debug`) is printed first.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    address: PathBuf,
    log: PathBuf,
    ctr: PathBuf,
    child: Option<Child>,
    namespaces: Mutex<Vec<String>>,
}

impl Containerd {
    /// Start `/usr/bin/containerd` (or the one in PATH) with a generated config below
    /// `<dir>/containerd` and wait until `ctr version` answers. `None` (after a skip message;
    /// under `CI=true` a panic) when containerd, ctr or containerd-shim-runc-v2 is missing.
    #[track_caller]
    pub fn start(dir: &Path) -> Option<Containerd> {
        let bin = crate::tool("containerd")?;
        let ctr = crate::tool("ctr")?;
        crate::tool("containerd-shim-runc-v2")?;
        let base = dir.join("containerd");
        let address = base.join("c.sock");
        let ttrpc = base.join("c.sock.ttrpc");
        for sock in [&address, &ttrpc] {
            let len = sock.as_os_str().len();
            assert!(
                len <= MAX_SOCKET_PATH,
                "socket path {} is {len} bytes, more than a unix socket takes",
                sock.display()
            );
        }
        for d in ["root", "state", "opt"] {
            let p = base.join(d);
            std::fs::create_dir_all(&p)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        }
        let config = base.join("config.toml");
        std::fs::write(&config, config_text(&base, &address, &ttrpc))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let log = base.join("containerd.log");
        let child = proc::spawn_logged(
            Command::new(&bin).arg("--config").arg(&config),
            &log,
            &bin.display().to_string(),
        );
        let mut cd = Containerd {
            dir: base,
            address,
            log,
            ctr,
            child: Some(child),
            namespaces: Mutex::new(Vec::new()),
        };
        cd.wait_ready(Duration::from_secs(20));
        Some(cd)
    }

    #[track_caller]
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "containerd exited ({status}) before {} answered; log:\n{}",
                        self.address.display(),
                        self.log()
                    );
                }
            }
            if UnixStream::connect(&self.address).is_ok() {
                let mut c = Command::new(&self.ctr);
                c.arg("--address").arg(&self.address).args([
                    "--connect-timeout",
                    "2s",
                    "--timeout",
                    "5s",
                    "version",
                ]);
                let o = crate::run_timeout(&mut c, Duration::from_secs(10));
                if o.status.success() {
                    return;
                }
                last = String::from_utf8_lossy(&o.stderr).into_owned();
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "containerd on {} did not answer `ctr version` within {timeout:?} \
                     (last error: {last}); log:\n{}",
                    self.address.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// containerd's `state` dir (bundles live below `io.containerd.runtime.v2.task/<ns>/<id>`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The bundle containerd makes for container `id` of namespace `ns`.
    pub fn bundle_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id)
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Everything containerd (and the shims, through it) logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A containerd namespace unique to this test (`<prefix>-<pid>-<n>`), registered so that
    /// its runc state dir and cgroups are removed on drop.
    pub fn namespace(&self, prefix: &str) -> String {
        let ns = crate::unique_id(prefix);
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ns.clone());
        ns
    }

    /// Debian's `ctr` preset with `--address <socket> -n <ns>`; add the subcommand.
    pub fn ctr(&self, ns: &str) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("--address").arg(&self.address).arg("-n").arg(ns);
        c
    }

    /// The runtime `--root` the runc shim uses for namespace `ns` (unless `--runc-root`).
    pub fn runc_root(ns: &str) -> PathBuf {
        Path::new(RUNC_SHIM_ROOT).join(ns)
    }

    /// Pids of live shims serving this containerd (`-address <our socket>` in their argv).
    pub fn shims(&self) -> Vec<i32> {
        let address = self.address.to_string_lossy().into_owned();
        scan_procs(|argv| {
            argv.first().is_some_and(|a| a.contains("containerd-shim"))
                && argv
                    .windows(2)
                    .any(|w| w[0] == "-address" && w[1] == address)
        })
    }

    /// Pids of live shims of container `id` in namespace `ns`.
    pub fn shims_of(&self, ns: &str, id: &str) -> Vec<i32> {
        self.shims()
            .into_iter()
            .filter(|&p| {
                let argv = proc::cmdline(p);
                flag(&argv, "-namespace") == Some(ns) && flag(&argv, "-id") == Some(id)
            })
            .collect()
    }

    /// The socket path a 1.6 shim of container `id` in `ns` listens on.
    pub fn shim_socket(&self, ns: &str, id: &str) -> PathBuf {
        let key = format!("{}/{ns}/{id}", self.address.display());
        let hex: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Path::new(SHIM_SOCKET_DIR).join(hex)
    }

    /// Stop containerd: SIGTERM, up to 10 s, then SIGKILL. Shims are left alone (they outlive
    /// containerd by design); drop kills those. `None` if it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        proc::stop_child(
            &mut child,
            Signal::SIGTERM,
            Duration::from_secs(10),
            "containerd",
        )
    }

    /// Stop containerd, kill its shims and the runtime commands of its namespaces (SIGKILL, by
    /// pid), kill and remove the cgroups `/<ns>` of its namespaces, remove their runc state
    /// dirs and the shims' sockets. Returns what is still there afterwards (empty = clean).
    pub fn cleanup(&mut self) -> Vec<String> {
        self.stop();
        let namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let shims = self.shims();
        let sockets: Vec<PathBuf> = shims
            .iter()
            .filter_map(|&p| {
                let argv = proc::cmdline(p);
                Some(self.shim_socket(flag(&argv, "-namespace")?, flag(&argv, "-id")?))
            })
            .collect();
        let roots: Vec<String> = namespaces
            .iter()
            .map(|ns| Self::runc_root(ns).to_string_lossy().into_owned())
            .collect();
        // A runtime command (create, exec, delete ...) still running for one of our
        // namespaces: `--root /run/containerd/runc/<ns>` in its argv.
        let runtimes = scan_procs(|argv| argv.iter().any(|a| roots.contains(a)));
        let victims: Vec<i32> = shims.iter().chain(&runtimes).copied().collect();
        for &p in &victims {
            proc::kill(p, Signal::SIGKILL);
        }
        for &p in &victims {
            if !proc::wait_dead(p, Duration::from_secs(10)) {
                eprintln!("containerd cleanup: pid {p} survived SIGKILL for 10 s");
            }
        }
        for s in &sockets {
            let _ = std::fs::remove_file(s);
        }
        for ns in &namespaces {
            crate::guard::remove_cgroup(&format!("/{ns}"));
            let root = Self::runc_root(ns);
            crate::unmount_below(&root);
            let _ = std::fs::remove_dir_all(&root);
        }
        let mut left = Vec::new();
        for p in self.shims() {
            left.push(format!(
                "shim {p} is alive ({})",
                proc::cmdline(p).join(" ")
            ));
        }
        for p in scan_procs(|argv| argv.iter().any(|a| roots.contains(a))) {
            left.push(format!(
                "runtime command {p} is alive ({})",
                proc::cmdline(p).join(" ")
            ));
        }
        for s in sockets.iter().filter(|s| s.exists()) {
            left.push(format!("shim socket {} still exists", s.display()));
        }
        for ns in &namespaces {
            for d in crate::guard::cgroup_dirs(&format!("/{ns}")) {
                left.push(format!("cgroup dir {} still exists", d.display()));
            }
            let root = Self::runc_root(ns);
            if root.symlink_metadata().is_ok() {
                left.push(format!("{} still exists", root.display()));
            }
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "----- containerd log ({}) -----\n{}\n----- end of containerd log -----",
                self.log.display(),
                self.log()
            );
        }
        let left = self.cleanup();
        if !left.is_empty() {
            let msg = format!(
                "containerd cleanup: still present afterwards:\n  {}",
                left.join("\n  ")
            );
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// containerd's config (version 2): everything below `base`, no CRI, no snapshotter that
/// cannot work here, no metrics or debug listener.
fn config_text(base: &Path, address: &Path, ttrpc: &Path) -> String {
    let q = |p: &Path| {
        let s = p.to_string_lossy();
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    };
    format!(
        "# berth-tests: a private containerd for one test\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\n  \
           \"io.containerd.grpc.v1.cri\",\n  \
           \"io.containerd.snapshotter.v1.btrfs\",\n  \
           \"io.containerd.snapshotter.v1.zfs\",\n  \
           \"io.containerd.snapshotter.v1.devmapper\",\n  \
           \"io.containerd.snapshotter.v1.aufs\",\n\
         ]\n\
         \n\
         [grpc]\n  address = {grpc}\n\
         \n\
         [ttrpc]\n  address = {ttrpc}\n\
         \n\
         [debug]\n  address = \"\"\n  level = \"debug\"\n\
         \n\
         [metrics]\n  address = \"\"\n\
         \n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = q(&base.join("root")),
        state = q(&base.join("state")),
        grpc = q(address),
        ttrpc = q(ttrpc),
        opt = q(&base.join("opt")),
    )
}

/// The value after `name` in `argv` (Go's `-flag value` form).
fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

/// Live pids (not ourselves) whose argv matches.
fn scan_procs(matches: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| p != me && proc::alive(p))
                .filter(|&p| matches(&proc::cmdline(p)))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_in_the_dir() {
        let base = Path::new("/tmp/berth-test/x-1-2/containerd");
        let text = config_text(base, &base.join("c.sock"), &base.join("c.sock.ttrpc"));
        assert!(text.contains("version = 2\n"), "{text}");
        assert!(
            text.contains("root = \"/tmp/berth-test/x-1-2/containerd/root\""),
            "{text}"
        );
        assert!(
            text.contains("[grpc]\n  address = \"/tmp/berth-test/x-1-2/containerd/c.sock\""),
            "{text}"
        );
        assert!(text.contains("\"io.containerd.grpc.v1.cri\""), "{text}");
        assert!(
            text.contains("path = \"/tmp/berth-test/x-1-2/containerd/opt\""),
            "{text}"
        );
        // No path outside the dir, apart from the plugin names.
        for line in text.lines().filter(|l| l.contains('/')) {
            assert!(line.contains(base.to_str().expect("utf-8")), "{line}");
        }
    }

    #[test]
    fn go_flags_are_read_from_argv() {
        let argv: Vec<String> = ["shim", "-namespace", "ns1", "-id", "c1", "-address", "/a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag(&argv, "-namespace"), Some("ns1"));
        assert_eq!(flag(&argv, "-id"), Some("c1"));
        assert_eq!(flag(&argv, "-debug"), None);
    }
}
