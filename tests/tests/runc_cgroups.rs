//! berth-runc cgroups through the binary: an enforced pids limit, memory and cpu limits seen from inside the
//! container, `update` of a running container, `pause`/`resume`, `events --stats` and `ps`. Real busybox
//! containers, as root; every test checks that the container's cgroups are gone afterwards (the Guard).

use berth_tests::runc_fixture as util;

use std::path::PathBuf;

use serde_json::json;
use util::{wait_for, Rt};

/// The container's directory in a v1 controller (host side), when this host mounts that controller.
fn v1_dir(controller: &str, cgroups_path: &str) -> Option<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup").join(controller);
    root.join("tasks")
        .exists()
        .then(|| root.join(cgroups_path.trim_start_matches('/')))
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Skips (returns false) on hosts without the v1 controllers these tests read.
fn v1_host() -> bool {
    let ok = ["memory", "cpu", "pids", "freezer"].iter().all(|c| {
        PathBuf::from("/sys/fs/cgroup")
            .join(c)
            .join("tasks")
            .exists()
    });
    if !ok {
        berth_tests::skip("these checks read cgroup v1 files (hybrid/v1 host)");
    }
    ok
}

#[test]
fn pids_limit_is_enforced() {
    // ash exits when a fork fails: the last number printed is how many background forks succeeded.
    let Some(rt) = Rt::new(
        "cg-pids",
        &[
            "sh",
            "-c",
            "i=0; while true; do sleep 60 & i=$((i+1)); echo $i; done",
        ],
    ) else {
        return;
    };
    rt.edit(|s| s["linux"]["resources"]["pids"] = json!({"limit": 6}));
    let (code, out, err) = rt.run_container();
    let last: u32 = out
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count printed: stdout {out:?} stderr {err:?}"));
    // The shell itself is one of the 6 pids.
    assert_eq!(last, 5, "stdout {out:?} stderr {err:?}");
    assert_ne!(code, 0, "the fork failure should end the shell");
    assert!(err.to_lowercase().contains("fork"), "stderr {err:?}");
    rt.finish();
}

#[test]
fn memory_and_cpu_limits_are_visible_inside() {
    if !berth_tests::require_root() || !v1_host() {
        return;
    }
    let Some(rt) = Rt::new(
        "cg-limits",
        &[
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
            "/sys/fs/cgroup/cpu/cpu.shares",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
            "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
            "/sys/fs/cgroup/pids/pids.max",
        ],
    ) else {
        return;
    };
    rt.edit(|s| {
        let r = &mut s["linux"]["resources"];
        r["memory"] = json!({"limit": 67108864, "reservation": 33554432});
        r["cpu"] = json!({"shares": 512, "quota": 20000, "period": 100000});
        r["pids"] = json!({"limit": 50});
    });
    let out = rt.output();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["67108864", "33554432", "512", "20000", "100000", "50"],
        "{out}"
    );
    rt.finish();
}

#[test]
fn update_changes_a_running_containers_limits() {
    if !berth_tests::require_root() || !v1_host() {
        return;
    }
    let Some(rt) = Rt::new("cg-update", &["sleep", "1000"]) else {
        return;
    };
    rt.edit(|s| {
        s["linux"]["resources"]["pids"] = json!({"limit": 50});
        s["linux"]["resources"]["memory"] = json!({"limit": 67108864});
    });
    rt.create();
    rt.ok(&["start", &rt.id]);
    let cg = rt.bundle.cgroups_path();
    let pids = v1_dir("pids", &cg).expect("pids controller");
    let mem = v1_dir("memory", &cg).expect("memory controller");
    assert_eq!(read(pids.join("pids.max")), "50");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");

    rt.ok(&["update", "--pids-limit", "7", "--memory", "100m", &rt.id]);
    assert_eq!(read(pids.join("pids.max")), "7");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "104857600");

    // --resources FILE (runc's LinuxResources JSON).
    let file = rt.dir.join("resources.json");
    std::fs::write(
        &file,
        json!({"pids": {"limit": 9}, "cpu": {"shares": 256}}).to_string(),
    )
    .expect("write resources");
    rt.ok(&["update", "--resources", &file.to_string_lossy(), &rt.id]);
    assert_eq!(read(pids.join("pids.max")), "9");
    let cpu = v1_dir("cpu", &cg).expect("cpu controller");
    assert_eq!(read(cpu.join("cpu.shares")), "256");
    rt.finish();
}

#[test]
fn pause_and_resume_freeze_the_container() {
    if !berth_tests::require_root() || !v1_host() {
        return;
    }
    let Some(rt) = Rt::new("cg-pause", &["sleep", "1000"]) else {
        return;
    };
    let pid = rt.create();
    rt.ok(&["start", &rt.id]);
    let freezer = v1_dir("freezer", &rt.bundle.cgroups_path()).expect("freezer controller");
    rt.ok(&["pause", &rt.id]);
    assert_eq!(rt.status(), "paused");
    assert_eq!(read(freezer.join("freezer.state")), "FROZEN");
    // A frozen task sleeps in the refrigerator (state D or S), it is not running.
    assert!(berth_tests::proc::alive(pid));
    let err = rt.fails(&["pause", &rt.id]);
    assert!(err.contains("paused"), "{err}");
    rt.ok(&["resume", &rt.id]);
    assert_eq!(rt.status(), "running");
    assert_eq!(read(freezer.join("freezer.state")), "THAWED");
    rt.finish();
}

#[test]
fn events_stats_and_ps_read_the_cgroup() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(rt) = Rt::new("cg-stats", &["sh", "-c", "sleep 1000 & exec sleep 1000"]) else {
        return;
    };
    rt.edit(|s| {
        s["linux"]["resources"]["pids"] = json!({"limit": 20});
        s["linux"]["resources"]["memory"] = json!({"limit": 67108864});
    });
    let pid = rt.create();
    rt.ok(&["start", &rt.id]);
    // Wait for the background sleep to exist.
    let ps = || -> Vec<i64> {
        let out = rt.ok(&["ps", "--format", "json", &rt.id]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ps json {out:?}: {e}"))
    };
    wait_for(10, "two processes", || ps().len() == 2);
    assert!(ps().contains(&i64::from(pid)), "{:?} lacks {pid}", ps());

    let out = rt.ok(&["events", "--stats", &rt.id]);
    let ev: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("events json {out:?}: {e}"));
    assert_eq!(ev["type"], "stats", "{ev}");
    assert_eq!(ev["id"], rt.id.as_str(), "{ev}");
    let d = &ev["data"];
    assert_eq!(d["pids"]["current"], 2, "{ev}");
    assert_eq!(d["pids"]["limit"], 20, "{ev}");
    assert_eq!(d["memory"]["usage"]["limit"], 67108864, "{ev}");
    assert!(
        d["memory"]["usage"]["usage"]
            .as_u64()
            .is_some_and(|u| u > 0),
        "{ev}"
    );
    assert!(
        d["cpu"]["usage"]["total"].as_u64().is_some_and(|u| u > 0),
        "{ev}"
    );
    assert!(d["memory"]["raw"].is_object(), "{ev}");
    rt.finish();
}

#[test]
fn cgroups_are_removed_after_run() {
    let Some(rt) = Rt::new("cg-cleanup", &["true"]) else {
        return;
    };
    let (code, out, err) = rt.run_container();
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    let cg = rt.bundle.cgroups_path();
    let left = berth_tests::guard::cgroup_dirs(&cg);
    assert!(left.is_empty(), "cgroups left after run: {left:?}");
    rt.finish();
}

/// /dev/fuse (c 10:229, which any process may open) is not in the default device set: a spec device node for it
/// is created but cannot be opened unless a resources.devices rule allows it, also when the spec has no
/// resources at all.
#[test]
fn device_rules_restrict_spec_devices() {
    if !std::path::Path::new("/dev/fuse").exists() {
        berth_tests::skip("no /dev/fuse on this host");
        return;
    }
    for (name, rules, want) in [
        ("cg-dev-none", None, "denied"),
        (
            "cg-dev-allow",
            Some(json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}
            ])),
            "open-ok",
        ),
    ] {
        let Some(rt) = Rt::new(
            name,
            &[
                "sh",
                "-c",
                "(exec 3<>/dev/fuse) 2>/dev/null && echo open-ok || echo denied",
            ],
        ) else {
            return;
        };
        rt.edit(|s| {
            s["linux"]["devices"] = json!([
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}
            ]);
            match &rules {
                None => {
                    if let Some(l) = s["linux"].as_object_mut() {
                        l.remove("resources");
                    }
                }
                Some(r) => s["linux"]["resources"]["devices"] = r.clone(),
            }
        });
        let (code, out, err) = rt.run_container();
        assert_eq!(code, 0, "{name}: stdout {out:?} stderr {err:?}");
        assert_eq!(out.trim(), want, "{name}: stderr {err:?}");
        rt.finish();
    }
}

/// major:minor of a real block device (not loop/zram/ram), from /sys/block.
fn block_device() -> Option<(u64, u64)> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("zram") && !n.starts_with("ram"))
        .collect();
    names.sort();
    let dev = std::fs::read_to_string(format!("/sys/block/{}/dev", names.first()?)).ok()?;
    let (maj, min) = dev.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

#[test]
fn cpuset_blkio_and_hugetlb_limits_are_written() {
    if !berth_tests::require_root() || !v1_host() {
        return;
    }
    let Some(rt) = Rt::new("cg-more", &["sleep", "1000"]) else {
        return;
    };
    let dev = block_device();
    let hugetlb = std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists();
    rt.edit(|s| {
        let r = &mut s["linux"]["resources"];
        r["cpu"] = json!({"cpus": "0", "mems": "0"});
        if let Some((major, minor)) = dev {
            r["blockIO"] = json!({
                "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]
            });
        }
        if hugetlb {
            r["hugepageLimits"] = json!([{"pageSize": "2MB", "limit": 4194304}]);
        }
    });
    rt.create();
    rt.ok(&["start", &rt.id]);
    let cg = rt.bundle.cgroups_path();
    let cpuset = v1_dir("cpuset", &cg).expect("cpuset controller");
    assert_eq!(read(cpuset.join("cpuset.cpus")), "0");
    assert_eq!(read(cpuset.join("cpuset.mems")), "0");
    if let (Some((major, minor)), Some(blkio)) = (dev, v1_dir("blkio", &cg)) {
        assert_eq!(
            read(blkio.join("blkio.throttle.read_bps_device")),
            format!("{major}:{minor} 1048576")
        );
        assert_eq!(
            read(blkio.join("blkio.throttle.write_iops_device")),
            format!("{major}:{minor} 100")
        );
    }
    if hugetlb {
        // v1 hugetlb when mounted, else the unified hierarchy (this hybrid host).
        let file = match v1_dir("hugetlb", &cg) {
            Some(d) => d.join("hugetlb.2MB.limit_in_bytes"),
            None => PathBuf::from("/sys/fs/cgroup/unified")
                .join(cg.trim_start_matches('/'))
                .join("hugetlb.2MB.max"),
        };
        assert_eq!(read(file), "4194304");
    }
    rt.finish();
}
