//! Shared helpers of the berth-runc integration tests (`runc_*.rs`): a per-test runtime root, a busybox bundle, a Guard that deletes the container
//! and checks that no state dir, mount, cgroup or process is left.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::bundle::{busybox_bundle, Bundle};
use crate::{bin, require_root, run_timeout, tool, unique_id, Guard, TestDir};
use serde_json::Value;

/// One container under test.
pub struct Rt {
    pub dir: TestDir,
    pub root: PathBuf,
    pub bundle: Bundle,
    pub id: String,
    pub guard: Guard,
    pub bin: PathBuf,
    /// Extra environment for every berth-runc invocation.
    pub env: Vec<(String, String)>,
}

impl Rt {
    /// None (skip) when not root or busybox is missing.
    pub fn new(name: &str, args: &[&str]) -> Option<Rt> {
        if !require_root() {
            return None;
        }
        Self::with_runtime(name, args, bin("berth-runc"))
    }

    /// The same for another runtime with runc's command line (Debian's runc: pass
    /// `tool("runc")?`); None (skip) when not root or busybox is missing.
    pub fn with_runtime(name: &str, args: &[&str], bin: PathBuf) -> Option<Rt> {
        if !require_root() {
            return None;
        }
        tool("busybox")?;
        let dir = TestDir::new(name);
        let bundle = busybox_bundle(&dir.join("bundle"), args);
        let root = dir.join("root");
        let id = unique_id(name);
        let guard = Guard::new();
        {
            let (b, r, i) = (bin.clone(), root.clone(), id.clone());
            guard.on_cleanup("runtime delete --force", move || {
                // runc creates --root whatever the verb: once the test dir is gone (dropped
                // before the guard), a delete would leave an empty root dir behind.
                if !r.exists() {
                    return;
                }
                let _ = Command::new(&b)
                    .arg("--root")
                    .arg(&r)
                    .args(["delete", "--force", &i])
                    .output();
            });
        }
        guard
            .cgroup(bundle.cgroups_path())
            .dir(root.join(&id))
            .mount(bundle.rootfs.clone());
        Some(Rt {
            dir,
            root,
            bundle,
            id,
            guard,
            bin,
            env: Vec::new(),
        })
    }

    /// `berth-runc --root <root>`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Run berth-runc with args (60 s limit).
    pub fn run(&self, args: &[&str]) -> Output {
        run_timeout(self.cmd().args(args), Duration::from_secs(60))
    }

    /// Run and require success; stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "berth-runc {args:?} failed: {}",
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// Run and require failure; stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "berth-runc {args:?} should fail: {}",
            text(&o.stdout)
        );
        text(&o.stderr)
    }

    /// `run --bundle B ID`: (exit code, stdout, stderr).
    pub fn run_container(&self) -> (i32, String, String) {
        let b = self.bundle.path.to_string_lossy().into_owned();
        let o = self.run(&["run", "--bundle", &b, &self.id]);
        (
            o.status.code().unwrap_or(-1),
            text(&o.stdout),
            text(&o.stderr),
        )
    }

    /// `run` and require exit 0; stdout.
    #[track_caller]
    pub fn output(&self) -> String {
        let (code, out, err) = self.run_container();
        assert_eq!(code, 0, "container failed: stdout {out:?} stderr {err:?}");
        out
    }

    /// `create --bundle B --pid-file F ID`; returns the pid from the pid file.
    #[track_caller]
    pub fn create(&self) -> i32 {
        let b = self.bundle.path.to_string_lossy().into_owned();
        let pf = self.dir.join("init.pid").to_string_lossy().into_owned();
        self.ok(&["create", "--bundle", &b, "--pid-file", &pf, &self.id]);
        let pid: i32 = std::fs::read_to_string(&pf)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        self.guard.pid(pid);
        pid
    }

    /// `state ID` as JSON.
    #[track_caller]
    pub fn state(&self) -> Value {
        serde_json::from_str(&self.ok(&["state", &self.id])).expect("state JSON")
    }

    /// Status string from `state`.
    pub fn status(&self) -> String {
        self.state()["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Edit the bundle's config.json.
    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        self.bundle.edit_spec(f);
    }

    /// Delete (forced) and assert nothing registered is left.
    #[track_caller]
    pub fn finish(self) {
        let _ = self.run(&["delete", "--force", &self.id]);
        self.guard.assert_clean();
        assert!(
            crate::mounts_below(self.dir.path()).is_empty(),
            "mounts left below {}",
            self.dir.path().display()
        );
    }
}

/// Lossy UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Wait until `f` holds (or panic after `secs`).
#[track_caller]
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
