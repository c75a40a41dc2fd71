//! berth-tests: the harness every Berth integration test uses.
//!
//! What it gives a test: a unique temp dir ([`TestDir`]), unique ids ([`unique_id`]), the path of
//! a workspace binary checked to be fresh ([`bin`]), the path of a host tool ([`tool`]), root
//! checks ([`require_root`]), process inspection ([`proc`]), OCI bundles and image layouts
//! ([`bundle`], [`oci_layout`]), tar/gzip writers and hostile layers ([`archive`],
//! [`hostile`]), a loopback registry ([`registry`]), cleanup guards ([`guard`]) and a berthd
//! launcher ([`daemon`]).
//!
//! Tests run as root, in parallel threads, beside other tests on a shared host. This crate must
//! never touch anything it was not told to own: no global cleanup by name, no host-wide
//! unmounts, no killing processes it did not start or was not handed.
//!
//! Conventions: a missing prerequisite skips a test with a message (the helper returns `false` /
//! `None`), except under `CI=true`, where it panics so that CI cannot pass by skipping.
//!
//! A typical test (declare the guard after what it must outlive: locals drop in reverse order,
//! so the guard cleans up before the `TestDir` goes):
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use berth_tests::{bin, bundle::busybox_bundle, require_root, run_timeout, unique_id, Guard, TestDir};
//!
//! if !require_root() {
//!     return;
//! }
//! let dir = TestDir::new("runc-hello");
//! let bundle = busybox_bundle(&dir.join("bundle"), &["sh", "-c", "echo hello"]);
//! let id = unique_id("runc-hello");
//! let root = dir.join("runc-root");
//! let guard = Guard::new();
//! guard.cgroup(bundle.cgroups_path()).dir(root.join(&id));
//! let out = run_timeout(
//!     Command::new(bin("berth-runc")).arg("--root").arg(&root)
//!         .args(["run", "--bundle"]).arg(&bundle.path).arg(&id),
//!     Duration::from_secs(30),
//! );
//! assert_eq!(out.stdout, b"hello\n");
//! guard.assert_clean(); // the runtime cleaned up by itself; the guard's drop checks again
//! ```

pub mod archive;
pub mod bundle;
pub mod cli_fixture;
pub mod containerd;
pub mod cri_fixture;
pub mod ctr_fixture;
pub mod daemon;
pub mod fault;
pub mod grpc;
pub mod guard;
pub mod hostile;
pub mod mounts;
pub mod net_fixture;
pub mod oci_layout;
pub mod proc;
pub mod registry;
pub mod regproxy;
pub mod regtls;
pub mod remote;
pub mod run;
pub mod runc_fixture;
pub mod shim_fixture;
pub mod spdy_client;
pub mod stream_client;
pub mod stream_scripts;
pub mod sysprobe;
pub mod task_fixture;
pub mod transfer;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub use guard::{Daemon, DaemonConfig, Guard};
pub use mounts::{is_mounted, mounts, mounts_below, unmount_below};
pub use run::{run_timeout, run_timeout_with_stdin};

/// Every file below `dir`, recursively (empty when `dir` is missing): for leak checks.
pub fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// Root of all test dirs; each test gets `<TEST_ROOT>/<name>-<pid>-<n>`.
pub const TEST_ROOT: &str = "/tmp/berth-test";

/// True when running under CI (`CI=true`): skips become failures.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Print why a test is skipped; under CI, panic instead (CI must not pass by skipping).
#[track_caller]
pub fn skip(reason: &str) {
    if in_ci() {
        panic!("CI=true and a test would skip: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// True when the test runs as root. Otherwise prints a skip message and returns false
/// (under `CI=true` it panics instead). Use: `if !berth_tests::require_root() { return; }`.
#[track_caller]
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip("this test needs root");
    false
}

/// The environment variable naming the OCI runtime of the berthd tests (default berth-runc); CI runs the
/// `daemon_*` tests once more with `runc`.
pub const DAEMON_RUNTIME_ENV: &str = "BERTH_TEST_RUNTIME";

/// The OCI runtime named by environment variable `var` (or `default` when unset or empty): `runc` is
/// Debian's runc (from PATH), `berth-runc` this workspace's (checked fresh, see [`bin`]), anything else a
/// path taken as is.
#[track_caller]
pub fn runtime_from_env(var: &str, default: &str) -> String {
    let name = std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string());
    match name.as_str() {
        "berth-runc" => bin("berth-runc").to_string_lossy().into_owned(),
        "runc" => find_tool("runc")
            .unwrap_or_else(|| panic!("{var}=runc but no runc in PATH (Debian package runc)"))
            .to_string_lossy()
            .into_owned(),
        path => path.to_string(),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` (relative to the workspace root when
/// relative) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The profile dir the binaries are taken from: `$BERTH_TEST_PROFILE` or `debug`.
pub fn profile_dir() -> PathBuf {
    let profile = std::env::var("BERTH_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    // cargo names the dev profile's dir "debug".
    let profile = if profile == "dev" {
        "debug".into()
    } else {
        profile
    };
    target_dir().join(profile)
}

/// Workspace crate dirs whose sources a binary is built from (its own crate first).
fn source_dirs_of(name: &str) -> Option<Vec<PathBuf>> {
    let root = workspace_root();
    let krate = match name {
        "berth-runc" => "runtime/oci",
        "berth-shim" => "runtime/shim",
        "berthd" => "daemon",
        "berth" => "cli",
        _ => return None,
    };
    let mut dirs = vec![root.join(krate).join("src")];
    // Only the workspace crates it really depends on: a change there rebuilds the binary.
    let manifest = std::fs::read_to_string(root.join(krate).join("Cargo.toml")).unwrap_or_default();
    let depends_on = |dep: &str| {
        manifest.lines().any(|l| {
            l.trim_start()
                .strip_prefix(dep)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
        })
    };
    if depends_on("berth-proto") {
        dirs.push(root.join("proto/src"));
        dirs.push(root.join("proto/protos"));
        dirs.push(root.join("proto/build.rs"));
    }
    if depends_on("berth-oci") && krate != "runtime/oci" {
        dirs.push(root.join("runtime/oci/src"));
    }
    Some(dirs)
}

/// Workspace source files named in a cargo dep-info file (`target: src1 src2 ...`, spaces in
/// paths backslash-escaped), or `None` when there is no such file.
fn dep_info_sources(dep_info: &Path) -> Option<Vec<PathBuf>> {
    let text = std::fs::read_to_string(dep_info).ok()?;
    let root = workspace_root();
    let (_, deps) = text.lines().next()?.split_once(": ")?;
    let mut files = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => files.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    files.push(current);
    let sources: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .filter(|f| f.starts_with(&root))
        .collect();
    (!sources.is_empty()).then_some(sources)
}

/// Newest modification time among the `.rs` and `.proto` files below `path` (or `path` itself).
fn newest_source(path: &Path) -> Option<(SystemTime, PathBuf)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.is_file() {
        let ext = path.extension().and_then(OsStr::to_str);
        if matches!(ext, Some("rs") | Some("proto")) {
            return Some((meta.modified().ok()?, path.to_path_buf()));
        }
        return None;
    }
    if !meta.is_dir() {
        return None;
    }
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        if let Some(found) = newest_source(&entry.path()) {
            if newest.as_ref().is_none_or(|(t, _)| found.0 > *t) {
                newest = Some(found);
            }
        }
    }
    newest
}

/// Path of the workspace binary `name` (`berth-runc`, `berth-shim`, `berthd`, `berth`) in the
/// target dir. Panics loudly when it is missing or older than the newest source file of its
/// crate (and of the workspace crates it depends on): the integration tests would otherwise
/// test stale code. Fix: `cargo build --workspace --bins`.
#[track_caller]
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    let sources = if std::env::var_os("BERTH_TEST_ALLOW_STALE").is_some() {
        Vec::new()
    } else {
        // Cargo's dep-info file lists exactly the sources this binary was built from; walking
        // the crate instead would also count its other binaries (berthd-bench.rs for berthd),
        // which cargo rightly does not relink it for.
        dep_info_sources(&path.with_extension("d"))
            .or_else(|| source_dirs_of(name))
            .unwrap_or_default()
    };
    if let Err(problem) = check_binary(&path, &sources) {
        panic!(
            "\n\n*** berth-tests: {problem}; run `cargo build --workspace --bins` \
             (same profile as the tests) first ***\n\n"
        );
    }
    path
}

/// `Err(why)` when `path` is missing, not executable, or older than the newest `.rs` or
/// `.proto` file below any of `sources`.
pub fn check_binary(path: &Path, sources: &[PathBuf]) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("binary {} is missing ({e})", path.display()))?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", path.display()));
    }
    let built = meta
        .modified()
        .map_err(|e| format!("no mtime for {}: {e}", path.display()))?;
    for dir in sources {
        if let Some((t, src)) = newest_source(dir) {
            if t > built {
                return Err(format!(
                    "binary {} is older than its source {}",
                    path.display(),
                    src.display()
                ));
            }
        }
    }
    Ok(())
}

/// Path of a host tool (searched in `$PATH`, then /usr/sbin, /sbin, /usr/bin, /bin).
/// Missing: prints a skip message and returns `None`; under `CI=true` it panics.
/// Use: `let Some(runc) = berth_tests::tool("runc") else { return };`.
#[track_caller]
pub fn tool(name: &str) -> Option<PathBuf> {
    if let Some(found) = find_tool(name) {
        return Some(found);
    }
    skip(&format!(
        "host tool `{name}` is not installed (see .ci/run for the package list)"
    ));
    None
}

/// Like [`tool`] but silent: `None` when missing, never panics.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/sbin",
        "/usr/bin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.mode() & 0o111 != 0)
        .unwrap_or(false)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `s` reduced to `[a-z0-9-]`, no leading/trailing/double dashes, at most `max` bytes.
fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "t".into()
    } else {
        out
    }
}

/// A container id unique across the parallel tests of this run and other test processes:
/// `<prefix>-<pid>-<n>`, made of `[a-z0-9-]` (valid for runc, containerd and as a cgroup or
/// netns name), at most 48 bytes.
pub fn unique_id(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{n}", sanitize(prefix, 28), std::process::id())
}

/// A unique temp dir `/tmp/berth-test/<name>-<pid>-<n>` (mode 0755).
///
/// On drop it lazily unmounts (`MNT_DETACH`) every mount at or below it, deepest first, then
/// removes it. Set `BERTH_TEST_KEEP=1` to keep it for debugging (mounts are still detached).
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Create a fresh dir for the test `name` (the name is shortened to keep socket paths short).
    #[track_caller]
    pub fn new(name: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(TEST_ROOT).join(format!(
            "{}-{}-{n}",
            sanitize(name, 24),
            std::process::id()
        ));
        if path.exists() {
            // A leftover of an earlier run with the same pid: not ours to keep.
            unmount_below(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("cannot create test dir {}: {e}", path.display());
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(TEST_ROOT, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
        TestDir { path }
    }

    /// The dir.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// `self.path().join(rel)`, created (with parents).
    #[track_caller]
    pub fn subdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        if let Err(e) = std::fs::create_dir_all(&p) {
            panic!("cannot create {}: {e}", p.display());
        }
        p
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        unmount_below(&self.path);
        if std::env::var_os("BERTH_TEST_KEEP").is_some() {
            eprintln!("BERTH_TEST_KEEP: keeping {}", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if self.path.exists() {
                eprintln!(
                    "warning: cannot remove test dir {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// A tonic channel to a gRPC server on the unix socket `path` (panics when it cannot connect).
pub async fn connect_unix(path: &Path) -> tonic::transport::Channel {
    match containerd_client::connect(path).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_valid() {
        let a = unique_id("My_Test::name");
        let b = unique_id("My_Test::name");
        assert_ne!(a, b);
        assert!(a.starts_with("my-test-name-"), "{a}");
        assert!(a.len() <= 48);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{a}"
        );
    }

    #[test]
    fn dep_info_lists_only_workspace_sources() {
        let d = TestDir::new("lib-dep-info");
        let root = workspace_root();
        let a = root.join("daemon/src/lib.rs");
        let spaced = root.join("x y/z.rs");
        let dep = d.join("berthd.d");
        std::fs::write(
            &dep,
            format!(
                "{}/target/debug/berthd: {} {} /root/.cargo/registry/dep.rs\n",
                root.display(),
                a.display(),
                spaced.display().to_string().replace(' ', "\\ ")
            ),
        )
        .expect("write dep-info");
        assert_eq!(dep_info_sources(&dep), Some(vec![a, spaced]));
        assert_eq!(dep_info_sources(&d.join("missing.d")), None);
    }

    #[test]
    fn stale_and_missing_binaries_are_refused() {
        use std::time::{Duration, SystemTime};
        let d = TestDir::new("lib-check-binary");
        let bin = d.join("b");
        let src = d.subdir("src/sub");
        std::fs::write(src.join("a.rs"), "fn main() {}").expect("write src");
        std::fs::write(src.join("notes.txt"), "").expect("write txt");
        let sources = vec![d.join("src")];
        assert!(check_binary(&bin, &sources)
            .expect_err("missing")
            .contains("missing"));
        std::fs::write(&bin, "#!/bin/sh\n").expect("write bin");
        assert!(check_binary(&bin, &sources)
            .expect_err("not exec")
            .contains("executable"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let set = |p: &Path, t: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
        };
        let now = SystemTime::now();
        set(&src.join("a.rs"), now - Duration::from_secs(100));
        set(&src.join("notes.txt"), now); // not a source file: ignored
        set(&bin, now - Duration::from_secs(50));
        assert_eq!(check_binary(&bin, &sources), Ok(()));
        set(&src.join("a.rs"), now);
        let err = check_binary(&bin, &sources).expect_err("stale");
        assert!(
            err.contains("older than its source") && err.contains("a.rs"),
            "{err}"
        );
    }

    #[test]
    fn test_dir_is_created_and_removed() {
        let p;
        {
            let d = TestDir::new("lib::test_dir");
            p = d.path().to_path_buf();
            assert!(p.is_dir());
            std::fs::write(d.join("f"), b"x").expect("write");
        }
        assert!(!p.exists());
    }
}
