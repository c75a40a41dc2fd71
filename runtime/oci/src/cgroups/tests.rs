//! Unit tests of the cgroup manager on the real host (root only; they skip with a message otherwise).
//!
//! Every test works under its own parent `/berth-test-<pid>-<name>` and removes it on drop, even on panic, then
//! checks that it is gone. Processes the tests start are killed and reaped by the guard.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use oci_spec::runtime::LinuxResources;

use super::*;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: cgroup tests need root");
    false
}

/// Owns a test cgroup and the children put in it; destroys and checks on drop.
struct Fixture {
    mgr: CgroupManager,
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let parent = format!("/berth-test-{}-{name}", std::process::id());
        let mgr = CgroupManager::new(Some(&format!("{parent}/c")), "c").expect("manager");
        let mut dirs: Vec<PathBuf> = mgr.leaf_dirs().iter().map(|p| p.to_path_buf()).collect();
        dirs.extend(mgr.created_parents.iter().cloned());
        Self {
            mgr,
            children: Vec::new(),
            dirs,
        }
    }

    /// A shell that waits to be moved into the cgroup, does some work there (so cpu and memory get charged to
    /// it), then sleeps.
    fn spawn_sleeper(&mut self) -> i32 {
        let child = Command::new("/bin/sh")
            .args([
                "-c",
                "sleep 0.3; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; exec sleep 60",
            ])
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        self.children.push(child);
        // Return only once the shell has forked its `sleep 0.3`: that child stays where it
        // was born, so a cgroup the shell is moved into afterwards holds exactly one task
        // (moved earlier, the fork would land in the cgroup too and pids.current reads 2).
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::fs::read_to_string(&children)
            .map(|c| c.trim().is_empty())
            .unwrap_or(false)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        pid
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.mgr.thaw();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let res = self.mgr.destroy();
        let left: Vec<&PathBuf> = self.dirs.iter().filter(|d| d.exists()).collect();
        if !std::thread::panicking() {
            assert!(res.is_ok(), "destroy failed: {res:?}");
            assert!(left.is_empty(), "cgroup dirs left behind: {left:?}");
        }
    }
}

/// The state letter of /proc/PID/stat.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn resources(json: serde_json::Value) -> LinuxResources {
    serde_json::from_value(json).expect("resources json")
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

#[test]
fn normalises_paths() {
    assert_eq!(normalise_path(None, "x").ok(), Some("/berth/x".to_string()));
    assert_eq!(
        normalise_path(Some("a/b"), "x").ok(),
        Some("/a/b".to_string())
    );
    assert_eq!(
        normalise_path(Some("/a//b/"), "x").ok(),
        Some("/a/b".to_string())
    );
    assert!(normalise_path(Some("/"), "x").is_err());
    assert!(normalise_path(Some("/a/../../etc"), "x").is_err());
    assert!(normalise_path(Some("system.slice:berth:x"), "x").is_err());
}

#[test]
fn maps_paths_into_mounts() {
    let m = Path::new("/sys/fs/cgroup/memory");
    assert_eq!(dir_in_mount(m, "/", "/a/b"), m.join("a/b"));
    assert_eq!(dir_in_mount(m, "/a", "/a/b"), m.join("b"));
}

#[test]
fn v2_conversions() -> Result<(), CgroupError> {
    assert_eq!(v2::shares_to_weight(2), 1);
    assert_eq!(v2::shares_to_weight(1024), 39);
    assert_eq!(v2::shares_to_weight(262_144), 10_000);
    assert_eq!(v2::blkio_weight_to_io(10), 1);
    assert_eq!(v2::blkio_weight_to_io(1000), 10_000);
    assert_eq!(v2::swap_max(Some(100), Some(300))?, Some("200".to_string()));
    assert_eq!(v2::swap_max(Some(100), Some(-1))?, Some("max".to_string()));
    assert_eq!(v2::swap_max(Some(100), None)?, None);
    assert!(v2::swap_max(Some(100), Some(50)).is_err());
    assert!(v2::swap_max(None, Some(50)).is_err());
    Ok(())
}

#[test]
fn detects_this_hosts_mode() -> Result<(), CgroupError> {
    let mode = detect_mode()?;
    let root_is_tmpfs = nix::sys::statfs::statfs(CGROUP_ROOT)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    let unified_is_v2 = nix::sys::statfs::statfs("/sys/fs/cgroup/unified")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if root_is_tmpfs && unified_is_v2 {
        assert_eq!(mode, Mode::Hybrid);
    }
    Ok(())
}

#[test]
fn lifecycle_create_apply_pids_freeze_stats_destroy() -> Result<(), CgroupError> {
    if !is_root() {
        return Ok(());
    }
    let mut fx = Fixture::new("lifecycle");
    let m = fx.mgr.clone();
    m.create()?;
    for d in m.leaf_dirs() {
        assert!(d.is_dir(), "{} not created", d.display());
    }
    if let Some(dev) = m.v1_dir("devices") {
        let list = read(dev, "devices.list");
        assert!(
            !list.contains("a *:* rwm"),
            "create left devices open: {list}"
        );
        assert!(
            list.contains("c 1:3 rwm"),
            "default devices missing: {list}"
        );
    }
    if let Some(cs) = m.v1_dir("cpuset") {
        assert!(
            !read(cs, "cpuset.cpus").is_empty(),
            "cpuset.cpus not copied"
        );
        assert!(
            !read(cs, "cpuset.mems").is_empty(),
            "cpuset.mems not copied"
        );
    }
    let r = resources(serde_json::json!({
        "memory": {"limit": 67108864, "reservation": 33554432},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 10}
    }));
    m.apply(&r)?;
    if m.mode() != Mode::V2 {
        let mem = m.v1_dir("memory").expect("memory controller");
        assert_eq!(read(mem, "memory.limit_in_bytes"), "67108864");
        assert_eq!(read(mem, "memory.soft_limit_in_bytes"), "33554432");
        let cpu = m.v1_dir("cpu").expect("cpu controller");
        assert_eq!(read(cpu, "cpu.shares"), "512");
        assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(
            read(m.v1_dir("cpuset").expect("cpuset"), "cpuset.cpus"),
            "0"
        );
        assert_eq!(read(m.v1_dir("pids").expect("pids"), "pids.max"), "10");
        let dev = read(m.v1_dir("devices").expect("devices"), "devices.list");
        assert!(!dev.contains("a *:* rwm"), "devices not restricted: {dev}");
        assert!(dev.contains("c 1:3 rwm"), "default devices missing: {dev}");
    } else {
        let d = m.unified_dir().expect("v2 dir");
        assert_eq!(read(d, "memory.max"), "67108864");
        assert_eq!(read(d, "cpu.max"), "50000 100000");
        assert_eq!(read(d, "pids.max"), "10");
    }

    let pid = fx.spawn_sleeper();
    m.add_pid(pid)?;
    assert_eq!(m.pids()?[0], pid);
    // Wait until the shell has worked inside the cgroup and exec'd its sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.stats()?.cpu.usage.total == 0
        || m.stats()?.memory.usage.usage == 0
        || std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| !p.ends_with("sleep"))
            .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no usage charged: {:?}",
            m.stats()?
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(m.pids()?, vec![pid]);

    m.freeze()?;
    assert!(m.is_frozen()?);
    m.thaw()?;
    assert!(!m.is_frozen()?);

    // On hybrid hosts the same process is in the unified hierarchy too: exercise the v2 freezer and the v2
    // statistics reader there (cgroup.freeze and cpu.stat exist in every non-root v2 cgroup).
    if m.mode() == Mode::Hybrid {
        let mut v2m = m.clone();
        v2m.v1.clear();
        assert!(v2m.pids()?.contains(&pid));
        v2m.freeze()?;
        assert!(v2m.is_frozen()?);
        assert_eq!(
            proc_state(pid),
            Some('S'),
            "a frozen task sleeps in the freezer"
        );
        v2m.thaw()?;
        assert!(!v2m.is_frozen()?);
        let st = stats::read_v2(&v2m)?;
        assert!(st.cpu.usage.total > 0, "v2 cpu.stat not read: {st:?}");
    }

    let st = m.stats()?;
    assert_eq!(st.pids.current, 1);
    assert_eq!(st.pids.limit, 10);
    assert_eq!(st.memory.usage.limit, 67_108_864);
    assert!(st.memory.usage.usage > 0, "memory usage is zero: {st:?}");
    let json = serde_json::to_value(&st).map_err(|e| CgroupError::InvalidValue {
        what: "stats".into(),
        reason: e.to_string(),
    })?;
    assert!(json["memory"]["raw"].is_object());

    // A running container's limits can be updated; devices stay as they are when the update has none.
    let before = m.v1_dir("devices").map(|d| read(d, "devices.list"));
    m.apply(&resources(serde_json::json!({
        "memory": {"limit": 134217728, "swap": 268435456},
        "pids": {"limit": 20}
    })))?;
    assert_eq!(m.stats()?.pids.limit, 20);
    assert_eq!(m.stats()?.memory.usage.limit, 134_217_728);
    assert_eq!(m.v1_dir("devices").map(|d| read(d, "devices.list")), before);
    // Lowering memory below the current memsw limit exercises the write order.
    m.apply(&resources(
        serde_json::json!({"memory": {"limit": 100663296, "swap": 100663296}}),
    ))?;
    assert_eq!(m.stats()?.memory.usage.limit, 100_663_296);
    // -1 means unlimited.
    m.apply(&resources(serde_json::json!({"memory": {"limit": -1}})))?;
    assert!(m.stats()?.memory.usage.limit > 1 << 40);
    Ok(())
}

#[test]
fn missing_controller_and_bad_values_are_named() -> Result<(), CgroupError> {
    if !is_root() {
        return Ok(());
    }
    let fx = Fixture::new("errors");
    let m = &fx.mgr;
    m.create()?;
    let err = m
        .apply(&resources(serde_json::json!({
            "hugepageLimits": [{"pageSize": "3MB", "limit": 1}]
        })))
        .expect_err("bogus page size accepted");
    assert!(err.to_string().contains("3MB"), "{err}");
    if m.v1_dir("net_cls").is_none() {
        let err = m
            .apply(&resources(serde_json::json!({"network": {"classID": 1}})))
            .expect_err("net_cls limit accepted without the controller");
        assert!(err.to_string().contains("net_cls"), "{err}");
    }
    if m.mode() == Mode::Hybrid {
        m.apply(&resources(
            serde_json::json!({"unified": {"cgroup.max.depth": "3"}}),
        ))?;
        assert_eq!(
            read(m.unified_dir().expect("unified"), "cgroup.max.depth"),
            "3"
        );
    }
    let err = m
        .apply(&resources(serde_json::json!({"unified": {"../x": "1"}})))
        .expect_err("bad unified key accepted");
    assert!(err.to_string().contains("../x"), "{err}");
    Ok(())
}

#[test]
fn hugetlb_limit_uses_the_unified_hierarchy_on_hybrid() -> Result<(), CgroupError> {
    if !is_root() {
        return Ok(());
    }
    let fx = Fixture::new("hugetlb");
    let m = &fx.mgr;
    if m.mode() != Mode::Hybrid
        || m.v1_dir("hugetlb").is_some()
        || !v2::root_has_controller(m, "hugetlb")
    {
        eprintln!("skipping: needs a hybrid host with hugetlb only in the unified hierarchy");
        return Ok(());
    }
    m.create()?;
    m.apply(&resources(serde_json::json!({
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]
    })))?;
    let d = m.unified_dir().expect("unified dir");
    assert_eq!(read(d, "hugetlb.2MB.max"), "4194304");
    assert!(m.stats()?.hugetlb.contains_key("2MB"));
    Ok(())
}

#[test]
fn destroy_of_a_missing_cgroup_is_ok_and_serde_round_trips() -> Result<(), CgroupError> {
    if !is_root() {
        return Ok(());
    }
    let fx = Fixture::new("serde");
    let json = serde_json::to_string(&fx.mgr).map_err(|e| CgroupError::InvalidValue {
        what: "serde".into(),
        reason: e.to_string(),
    })?;
    let back: CgroupManager =
        serde_json::from_str(&json).map_err(|e| CgroupError::InvalidValue {
            what: "serde".into(),
            reason: e.to_string(),
        })?;
    assert_eq!(back, fx.mgr);
    back.destroy()?;
    Ok(())
}

#[test]
fn ebpf_device_program_enforces_rules_in_the_unified_hierarchy() -> Result<(), CgroupError> {
    if !is_root() {
        return Ok(());
    }
    let mut fx = Fixture::new("bpfdev");
    let Some(dir) = fx.mgr.unified_dir().map(Path::to_path_buf) else {
        eprintln!("skipping: no unified hierarchy");
        return Ok(());
    };
    fx.mgr.create()?;
    let only_null = resources(serde_json::json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    ]}));
    // The defaults would allow /dev/zero again: load the spec's two rules alone.
    bpf_devices::apply(&dir, only_null.devices().as_deref().unwrap_or_default())?;
    assert_eq!(bpf_devices::attached(&dir)?.len(), 1);
    // Replacing the program keeps exactly one attached.
    bpf_devices::apply(&dir, only_null.devices().as_deref().unwrap_or_default())?;
    assert_eq!(bpf_devices::attached(&dir)?.len(), 1);
    let script = format!(
        "echo $$ > {}/cgroup.procs || exit 9; \
         (exec 3</dev/null) 2>/dev/null && echo null-ok; \
         (exec 3</dev/zero) 2>/dev/null && echo zero-ok; echo end",
        dir.display()
    );
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "null-ok\nend\n",
        "stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.children.clear();
    Ok(())
}

/// Runs `v2_mode_inner` in a private mount namespace where /sys/fs/cgroup is a cgroup2 mount (the host's
/// unified hierarchy, mounted again), so the V2 code paths run on this hybrid host. The host's mounts are not
/// touched: the namespace is private and dies with the process.
#[test]
fn v2_mode_in_a_private_mount_namespace() {
    if !is_root() {
        return;
    }
    if detect_mode().ok() != Some(Mode::Hybrid) || !Path::new("/usr/bin/unshare").exists() {
        eprintln!("skipping: needs a hybrid host and unshare(1)");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("/usr/bin/unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" --exact cgroups::tests::v2_mode_inner --nocapture --test-threads 1")
        .arg(&exe)
        .env("BERTH_CGROUP_V2_INNER", "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner V2 test failed: {stdout}\n{stderr}"
    );
}

/// The V2 checks; only does something inside `v2_mode_in_a_private_mount_namespace`.
#[test]
fn v2_mode_inner() -> Result<(), CgroupError> {
    if std::env::var_os("BERTH_CGROUP_V2_INNER").is_none() {
        return Ok(());
    }
    assert_eq!(detect_mode()?, Mode::V2);
    let mut fx = Fixture::new("v2");
    let m = fx.mgr.clone();
    assert_eq!(m.mode(), Mode::V2);
    assert!(m.v1.is_empty());
    let dir = m.unified_dir().expect("v2 dir").to_path_buf();
    assert!(dir.starts_with(CGROUP_ROOT) && !dir.starts_with("/sys/fs/cgroup/unified"));
    m.create()?;
    assert!(dir.is_dir());
    // Only hugetlb is a v2 controller here: asking for pids names the controller.
    let err = m
        .apply(&resources(serde_json::json!({"pids": {"limit": 5}})))
        .expect_err("pids limit without a pids controller");
    assert!(err.to_string().contains("pids"), "{err}");
    // create enabled the available controllers above the container.
    m.apply(&resources(serde_json::json!({
        "hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}]
    })))?;
    assert_eq!(read(&dir, "hugetlb.2MB.max"), "2097152");
    // A new cgroup gets deny-all + the default set as an eBPF program; an update without devices keeps it.
    assert_eq!(bpf_devices::attached(&dir)?.len(), 1);
    m.apply(&resources(serde_json::json!({})))?;
    assert_eq!(bpf_devices::attached(&dir)?.len(), 1);
    let pid = fx.spawn_sleeper();
    m.add_pid(pid)?;
    assert_eq!(m.pids()?, vec![pid]);
    m.freeze()?;
    assert!(m.is_frozen()?);
    m.thaw()?;
    let script = format!(
        "echo $$ > {}/cgroup.procs || exit 9; \
         (exec 3</dev/null) 2>/dev/null && echo null-ok; \
         (exec 3</dev/kmsg) 2>/dev/null && echo kmsg-ok; echo end",
        dir.display()
    );
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .output()
        .expect("run sh");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "null-ok\nend\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.stats()?.cpu.usage.total == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no cpu usage in v2 stats"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Runs `v1_mode_inner` in a private mount namespace without the unified mount, so the pure V1 paths run here.
#[test]
fn v1_mode_in_a_private_mount_namespace() {
    if !is_root() {
        return;
    }
    if detect_mode().ok() != Some(Mode::Hybrid)
        || !Path::new("/usr/bin/unshare").exists()
        || !Path::new("/sys/fs/cgroup/unified").is_dir()
    {
        eprintln!("skipping: needs a hybrid host with /sys/fs/cgroup/unified and unshare(1)");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("/usr/bin/unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/fs/cgroup/unified && exec \"$0\" --exact cgroups::tests::v1_mode_inner --nocapture --test-threads 1")
        .arg(&exe)
        .env("BERTH_CGROUP_V1_INNER", "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner V1 test failed: {stdout}\n{stderr}"
    );
}

/// The V1 checks; only does something inside `v1_mode_in_a_private_mount_namespace`.
#[test]
fn v1_mode_inner() -> Result<(), CgroupError> {
    if std::env::var_os("BERTH_CGROUP_V1_INNER").is_none() {
        return Ok(());
    }
    assert_eq!(detect_mode()?, Mode::V1);
    let mut fx = Fixture::new("v1");
    let m = fx.mgr.clone();
    assert_eq!(m.mode(), Mode::V1);
    assert!(m.unified_dir().is_none());
    m.create()?;
    m.apply(&resources(
        serde_json::json!({"memory": {"limit": 33554432}, "pids": {"limit": 4}}),
    ))?;
    let err = m
        .apply(&resources(serde_json::json!({
            "hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}]
        })))
        .expect_err("hugetlb limit without any hugetlb controller");
    assert!(err.to_string().contains("hugetlb"), "{err}");
    let pid = fx.spawn_sleeper();
    m.add_pid(pid)?;
    assert_eq!(m.pids()?, vec![pid]);
    m.freeze()?;
    assert!(m.is_frozen()?);
    m.thaw()?;
    let st = m.stats()?;
    assert_eq!((st.pids.current, st.pids.limit), (1, 4));
    assert_eq!(st.memory.usage.limit, 33_554_432);
    Ok(())
}
