//! Cleanup guards: whatever a test registers is killed, unmounted or removed when the guard
//! drops (also while the test panics), and the guard then fails the test if any of it is
//! still there.
//!
//! A test registers only what it created itself (its pids, its mounts, its cgroup paths, its
//! netns, its dirs); the guard must never clean up by name patterns or touch anything else.
//! The cleanup order is: hooks (e.g. `runc delete --force`), pids (SIGKILL and wait),
//! mounts, netns, cgroups (deepest first, with retries), dirs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use crate::daemon::{Daemon, DaemonConfig};
use crate::proc::{self, AsPid};

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Inner {
    hooks: Vec<(String, Hook)>,
    pids: Vec<i32>,
    mounts: Vec<PathBuf>,
    cgroups: Vec<String>,
    parent_cgroups: Vec<String>,
    netns: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    done: bool,
    /// How long to retry removing a busy cgroup dir (default 5 s).
    cgroup_timeout: Option<Duration>,
}

/// Collects what a test created; cleans it up and checks it on drop. Methods take `&self`
/// (the guard can be shared, e.g. in an `Arc`) and return `&Self` for chaining.
#[derive(Default)]
pub struct Guard {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.lock();
        f.debug_struct("Guard")
            .field("hooks", &i.hooks.iter().map(|h| &h.0).collect::<Vec<_>>())
            .field("pids", &i.pids)
            .field("mounts", &i.mounts)
            .field("cgroups", &i.cgroups)
            .field("parent_cgroups", &i.parent_cgroups)
            .field("netns", &i.netns)
            .field("dirs", &i.dirs)
            .finish()
    }
}

/// The mount points of every cgroup hierarchy below /sys/fs/cgroup (each v1 controller
/// mount, the named systemd hierarchy, and the unified cgroup2 mount), or /sys/fs/cgroup on a
/// pure cgroup2 host.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = crate::mounts()
        .into_iter()
        .filter(|(m, fs)| (fs == "cgroup" || fs == "cgroup2") && m.starts_with("/sys/fs/cgroup"))
        .map(|(m, _)| m)
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

/// Existing dirs `<root>/<rel>` for every cgroup root.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// `dir` and every cgroup dir below it, deepest first.
fn subtree_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(subtree_deepest_first(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// Kill every task in `dir` (thawing a v1 freezer first) and remove it; retried for up to
/// `timeout` while the kernel is still tearing the tasks down.
fn remove_cgroup_dir(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let freezer = dir.join("freezer.state");
        if freezer.exists() {
            let _ = std::fs::write(&freezer, "THAWED");
        }
        let frozen = dir.join("cgroup.freeze");
        if frozen.exists() {
            let _ = std::fs::write(&frozen, "0");
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                proc::kill(pid, Signal::SIGKILL);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("guard: cannot remove cgroup {}: {e}", dir.display());
                return;
            }
        }
    }
}

/// Remove the cgroup `rel` (and everything below it) from every hierarchy, retrying each busy
/// dir for up to 5 s.
pub fn remove_cgroup(rel: &str) {
    remove_cgroup_within(rel, Duration::from_secs(5));
}

/// [`remove_cgroup`] with a chosen retry time per dir.
pub fn remove_cgroup_within(rel: &str, timeout: Duration) {
    for dir in cgroup_dirs(rel) {
        for d in subtree_deepest_first(&dir) {
            remove_cgroup_dir(&d, timeout);
        }
    }
}

impl Guard {
    /// An empty guard.
    pub fn new() -> Guard {
        Guard::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` first at cleanup (e.g. `runc delete --force ID`); `what` names it in messages.
    pub fn on_cleanup(&self, what: &str, f: impl FnOnce() + Send + 'static) -> &Self {
        self.lock().hooks.push((what.to_string(), Box::new(f)));
        self
    }

    /// How long cleanup retries removing a busy cgroup dir (default 5 s).
    pub fn cgroup_timeout(&self, timeout: Duration) -> &Self {
        self.lock().cgroup_timeout = Some(timeout);
        self
    }

    /// A process the test started (or that its container runs): SIGKILLed and waited for.
    pub fn pid(&self, pid: impl AsPid) -> &Self {
        self.lock().pids.push(pid.as_pid());
        self
    }

    /// A mount point: lazily unmounted (every layer stacked on it).
    pub fn mount(&self, path: impl Into<PathBuf>) -> &Self {
        self.lock().mounts.push(path.into());
        self
    }

    /// A cgroup path relative to the hierarchy roots (`/berth-test/x`, as `linux.cgroupsPath`):
    /// its tasks are killed and its dirs removed from every v1 controller and the unified tree.
    pub fn cgroup(&self, rel: impl Into<String>) -> &Self {
        self.lock().cgroups.push(rel.into());
        self
    }

    /// A parent cgroup the test owns that the code under test may rightly leave behind while
    /// the test runs: a namespace's `/<ns>` above its containers (runc never removes it; berth-runc
    /// removes the levels it made once empty). Removed at cleanup and checked only after it, never
    /// by [`Guard::leftovers`].
    pub fn cgroup_parent(&self, rel: impl Into<String>) -> &Self {
        self.lock().parent_cgroups.push(rel.into());
        self
    }

    /// A network namespace: a name (`ip netns` name, under /run/netns) or a bind-mounted
    /// netns file path. Unmounted and removed.
    pub fn netns(&self, name_or_path: impl AsRef<Path>) -> &Self {
        let p = name_or_path.as_ref();
        let path = if p.components().count() == 1 && !p.is_absolute() {
            Path::new(NETNS_RUN_DIR).join(p)
        } else {
            p.to_path_buf()
        };
        self.lock().netns.push(path);
        self
    }

    /// A dir or file: mounts below it are detached, then it is removed.
    pub fn dir(&self, path: impl Into<PathBuf>) -> &Self {
        self.lock().dirs.push(path.into());
        self
    }

    /// What of the registered things is present right now (no cleanup): live pids, mounted
    /// mount points, existing cgroup dirs, netns files and dirs. Use it to assert that the
    /// code under test cleaned up after itself.
    pub fn leftovers(&self) -> Vec<String> {
        let i = self.lock();
        Self::check(&i, false)
    }

    /// Panic with the list from [`Guard::leftovers`] when it is not empty.
    #[track_caller]
    pub fn assert_clean(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "left behind:\n  {}", left.join("\n  "));
    }

    fn check(i: &Inner, after_cleanup: bool) -> Vec<String> {
        let mut left = Vec::new();
        for &pid in &i.pids {
            if proc::alive(pid) {
                let cmd = proc::cmdline(pid).join(" ");
                left.push(format!("process {pid} is alive ({cmd})"));
            }
        }
        let mounted = crate::mounts();
        for m in &i.mounts {
            if mounted.iter().any(|(p, _)| p == m) {
                left.push(format!("mount {} is still mounted", m.display()));
            }
        }
        for ns in &i.netns {
            if ns.symlink_metadata().is_ok() {
                left.push(format!("netns {} still exists", ns.display()));
            }
        }
        let parents = after_cleanup
            .then_some(&i.parent_cgroups)
            .into_iter()
            .flatten();
        for cg in i.cgroups.iter().chain(parents) {
            for d in cgroup_dirs(cg) {
                left.push(format!("cgroup dir {} still exists", d.display()));
            }
        }
        for d in &i.dirs {
            if d.symlink_metadata().is_ok() {
                left.push(format!("{} still exists", d.display()));
            }
        }
        left
    }

    /// Clean everything up now and return what is still there afterwards (empty = clean).
    /// Drop does this too (once) and panics on a non-empty result.
    pub fn cleanup(&self) -> Vec<String> {
        let hooks = std::mem::take(&mut self.lock().hooks);
        for (what, hook) in hooks {
            // A failing hook must not stop the rest of the cleanup.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
                eprintln!("guard: cleanup hook `{what}` panicked");
            }
        }
        let mut i = self.lock();
        i.done = true;
        for &pid in &i.pids {
            if proc::alive(pid) {
                proc::kill(pid, Signal::SIGKILL);
            }
        }
        for &pid in &i.pids {
            if !proc::wait_dead(pid, Duration::from_secs(10)) {
                eprintln!("guard: pid {pid} survived SIGKILL for 10s");
            }
        }
        for m in i.mounts.iter().rev() {
            for _ in 0..8 {
                if !crate::is_mounted(m) {
                    break;
                }
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        for ns in &i.netns {
            let _ = nix::mount::umount2(ns, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(ns);
        }
        for cg in i.parent_cgroups.iter().chain(&i.cgroups).rev() {
            remove_cgroup_within(cg, i.cgroup_timeout.unwrap_or(Duration::from_secs(5)));
        }
        for d in &i.dirs {
            crate::unmount_below(d);
            if d.is_dir() {
                let _ = std::fs::remove_dir_all(d);
            } else {
                let _ = std::fs::remove_file(d);
            }
        }
        Self::check(&i, true)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let already_cleaned = {
            let i = self.lock();
            i.done && i.hooks.is_empty()
        };
        if already_cleaned {
            // cleanup() already ran; check again in case something reappeared.
            let left = self.leftovers();
            if !left.is_empty() {
                report(left);
            }
            return;
        }
        let left = self.cleanup();
        if !left.is_empty() {
            report(left);
        }
    }
}

fn report(left: Vec<String>) {
    let msg = format!(
        "guard: still present after cleanup:\n  {}",
        left.join("\n  ")
    );
    if std::thread::panicking() {
        eprintln!("{msg}");
    } else {
        panic!("{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_registered_process_and_removes_dir() {
        let dir = crate::TestDir::new("guard-unit");
        let sub = dir.subdir("x/y");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        {
            let g = Guard::new();
            g.pid(pid).dir(dir.join("x"));
            assert_eq!(g.leftovers().len(), 2);
        }
        assert!(!proc::alive(pid));
        let _ = child.wait();
        assert!(!sub.exists());
    }
}
