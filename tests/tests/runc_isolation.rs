//! berth-runc isolation as seen from inside the container: namespaces, hostname and
//! domainname, capabilities and NoNewPrivs, rlimits, user/groups/umask/cwd/env, mounts
//! (options, propagation, read-only root, tmpfs size), masked and read-only paths, sysctl,
//! oom_score_adj, user namespace mappings, loopback up, devices.

use berth_tests::runc_fixture as util;

use serde_json::json;
use util::Rt;

fn host_ns(name: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{name}"))
        .expect("ns link")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn namespaces_differ_from_host() {
    let Some(rt) = Rt::new(
        "runc-ns",
        &[
            "sh",
            "-c",
            "for n in pid net ipc uts mnt cgroup; do readlink /proc/self/ns/$n; done",
        ],
    ) else {
        return;
    };
    rt.edit(|s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .expect("ns")
            .push(json!({"type": "cgroup"}))
    });
    let out = rt.output();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for (l, n) in lines
        .iter()
        .zip(["pid", "net", "ipc", "uts", "mnt", "cgroup"])
    {
        assert!(l.starts_with(&format!("{n}:[")), "{l}");
        assert_ne!(*l, host_ns(n), "{n} namespace is the host's");
    }
    rt.finish();
}

#[test]
fn joins_namespace_by_path() {
    let Some(rt) = Rt::new("runc-nsjoin", &["readlink", "/proc/self/ns/net"]) else {
        return;
    };
    rt.edit(|s| {
        for ns in s["linux"]["namespaces"].as_array_mut().expect("ns") {
            if ns["type"] == "network" {
                ns["path"] = "/proc/self/ns/net".into();
            }
        }
        // sysfs needs a netns of its own: drop it.
        s["mounts"]
            .as_array_mut()
            .expect("m")
            .retain(|m| m["type"] != "sysfs" && m["type"] != "cgroup");
    });
    assert_eq!(rt.output().trim(), host_ns("net"));
    rt.finish();
}

#[test]
fn hostname_domainname_caps_nnp() {
    let Some(rt) = Rt::new("runc-caps", &["sh", "-c", "hostname; cat /proc/sys/kernel/domainname; grep -E '^(Cap|NoNewPrivs)' /proc/self/status"]) else { return };
    rt.edit(|s| {
        s["hostname"] = "berth-host".into();
        s["domainname"] = "berth.example".into();
        s["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NET_RAW"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"]
        });
        s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    });
    let out = rt.output();
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert!(out.starts_with("berth-host\nberth.example\n"), "{out}");
    // uid 1000 after exec: only the ambient set survives into permitted/effective.
    assert_eq!(
        field("CapBnd"),
        format!("{:016x}", (1u64 << 5) | 1 | (1 << 13))
    );
    assert_eq!(field("CapInh"), format!("{:016x}", 1u64 << 5));
    assert_eq!(field("CapAmb"), format!("{:016x}", 1u64 << 5));
    assert_eq!(field("CapEff"), format!("{:016x}", 1u64 << 5));
    assert_eq!(field("CapPrm"), format!("{:016x}", 1u64 << 5));
    assert_eq!(field("NoNewPrivs"), "1");
    rt.finish();
}

#[test]
fn nnp_off_and_root_caps() {
    let Some(rt) = Rt::new(
        "runc-nnp",
        &[
            "grep",
            "-E",
            "^(CapBnd|CapEff|NoNewPrivs|SigIgn|SigBlk)",
            "/proc/self/status",
        ],
    ) else {
        return;
    };
    rt.edit(|s| s["process"]["noNewPrivileges"] = false.into());
    let out = rt.output();
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    // CAP_AUDIT_WRITE(29) CAP_KILL(5) CAP_NET_BIND_SERVICE(10)
    assert!(out.contains("CapBnd:\t0000000020000420"), "{out}");
    assert!(out.contains("CapEff:\t0000000020000420"), "{out}");
    // Rust ignores SIGPIPE (and a caller may ignore more): init starts with defaults.
    assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
    assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
    rt.finish();
}

#[test]
fn rlimits_user_groups_umask_cwd_env() {
    let Some(rt) = Rt::new(
        "runc-user",
        &[
            "sh",
            "-c",
            "ulimit -n; ulimit -c; id; umask; pwd; echo $FOO; cat /proc/self/oom_score_adj",
        ],
    ) else {
        return;
    };
    rt.edit(|s| {
        s["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256},
            {"type": "RLIMIT_CORE", "hard": 4096, "soft": 2048}
        ]);
        s["process"]["user"] =
            json!({"uid": 1234, "gid": 100, "additionalGids": [5, 7], "umask": 63});
        s["process"]["cwd"] = "/tmp".into();
        s["process"]["env"]
            .as_array_mut()
            .expect("env")
            .push("FOO=bar baz".into());
        s["process"]["oomScoreAdj"] = 123.into();
    });
    let out = rt.output();
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "256", "{out}");
    assert_eq!(l[1], "4", "ulimit -c is in KiB blocks: {out}"); // 2048 bytes / 512
    assert!(
        l[2].starts_with("uid=1234 gid=100") && l[2].contains("groups=5") && l[2].contains("7"),
        "{out}"
    );
    assert_eq!(l[3], "0077");
    assert_eq!(l[4], "/tmp");
    assert_eq!(l[5], "bar baz");
    assert_eq!(l[6], "123");
    rt.finish();
}

#[test]
fn mounts_options_propagation_readonly_root() {
    let Some(rt) = Rt::new("runc-mounts", &["sh", "-c", "cat /proc/self/mountinfo; touch /rootfile 2>/dev/null && echo root-writable; touch /data/x 2>/dev/null && echo data-writable; touch /scratch/x && echo scratch-writable"]) else { return };
    let data = rt.dir.subdir("data");
    rt.edit(|s| {
        s["root"]["readonly"] = true.into();
        let m = s["mounts"].as_array_mut().expect("mounts");
        m.push(json!({"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro", "nosuid", "nodev", "rshared"]}));
        m.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=700", "noexec"]}));
        m.push(json!({"destination": "/data2", "type": "bind", "source": data, "options": ["rbind", "rro"]}));
    });
    let out = rt.output();
    let line = |dest: &str| {
        out.lines()
            .find(|l| l.split(' ').nth(4) == Some(dest))
            .unwrap_or_else(|| panic!("no {dest} in {out}"))
            .to_string()
    };
    let root = line("/");
    assert!(
        root.split(' ').nth(5).is_some_and(|o| o.starts_with("ro")),
        "{root}"
    );
    let d = line("/data");
    let opts = d.split(' ').nth(5).expect("opts");
    assert!(
        opts.contains("ro") && opts.contains("nosuid") && opts.contains("nodev"),
        "{d}"
    );
    assert!(d.contains(" shared:"), "rshared shows as shared:N: {d}");
    let d2 = line("/data2");
    assert!(
        d2.split(' ').nth(5).is_some_and(|o| o.starts_with("ro")),
        "rro: {d2}"
    );
    let s = line("/scratch");
    assert!(
        s.contains("size=1024k") && s.contains("mode=700") && s.contains("noexec"),
        "{s}"
    );
    assert!(
        !out.contains("root-writable") && !out.contains("data-writable"),
        "{out}"
    );
    assert!(out.contains("scratch-writable"));
    rt.finish();
}

#[test]
fn masked_and_readonly_paths() {
    let Some(rt) = Rt::new("runc-masked", &["sh", "-c", "cat /proc/kcore | wc -c; ls /sys/firmware | wc -l; echo 1 > /proc/sys/kernel/ns_last_pid && echo sys-writable; cat /proc/sys/kernel/ostype"]) else { return };
    let out = rt.output();
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0].trim(), "0", "/proc/kcore masked: {out}");
    assert_eq!(l[1].trim(), "0", "/sys/firmware masked: {out}");
    assert!(!out.contains("sys-writable"), "{out}");
    assert!(out.contains("Linux"));
    rt.finish();
}

#[test]
fn sysctl_and_loopback() {
    let Some(rt) = Rt::new("runc-sysctl", &["sh", "-c", "cat /proc/sys/kernel/msgmax; cat /sys/class/net/lo/operstate; cat /sys/class/net/lo/flags"]) else { return };
    rt.edit(|s| {
        s["linux"]["sysctl"] = json!({"kernel.msgmax": "4242"});
        s["linux"]["readonlyPaths"] = json!([]);
    });
    let out = rt.output();
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "4242", "{out}");
    assert_eq!(l[2], "0x9", "lo is UP|LOOPBACK: {out}");
    rt.finish();
}

#[test]
fn user_namespace_mappings() {
    let Some(rt) = Rt::new(
        "runc-userns",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; id -u; readlink /proc/self/ns/user",
        ],
    ) else {
        return;
    };
    // The rootfs belongs to host root: map container 0 to host 0 (plus a range) so it stays usable.
    rt.edit(|s| {
        s["linux"]["namespaces"].as_array_mut().expect("ns").push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 200000, "size": 1000}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 200000, "size": 1000}]);
        // sysfs and cgroupfs are not mountable from a non-initial user namespace here.
        s["mounts"].as_array_mut().expect("m").retain(|m| m["type"] != "sysfs" && m["type"] != "cgroup");
    });
    let out = rt.output();
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines[0], "0 0 1", "{out}");
    assert_eq!(lines[1], "1 200000 1000", "{out}");
    assert_eq!(lines[4], "0");
    assert_ne!(out.lines().nth(5).unwrap_or_default(), host_ns("user"));
    rt.finish();
}

#[test]
fn devices_default_and_spec() {
    let Some(rt) = Rt::new("runc-devices", &["sh", "-c", "ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/berthnull; readlink /dev/ptmx; readlink /dev/fd; echo ok > /dev/berthnull && echo written"]) else { return };
    rt.edit(|s| {
        s["linux"]["devices"] = json!([{"path": "/dev/berthnull", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0}]);
        s["linux"]["resources"]["devices"].as_array_mut().expect("dev").push(json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}));
    });
    let out = rt.output();
    assert!(
        out.lines().filter(|l| l.starts_with("crw-rw-rw-")).count() == 7,
        "{out}"
    );
    assert!(
        out.contains("pts/ptmx") && out.contains("/proc/self/fd") && out.contains("written"),
        "{out}"
    );
    rt.finish();
}

#[test]
fn time_namespace_offsets() {
    let Some(rt) = Rt::new(
        "runc-timens",
        &[
            "sh",
            "-c",
            "cut -d. -f1 /proc/uptime; readlink /proc/self/ns/time",
        ],
    ) else {
        return;
    };
    rt.edit(|s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .expect("ns")
            .push(json!({"type": "time"}));
        s["linux"]["timeOffsets"] = json!({"boottime": {"secs": 31_536_000, "nanosecs": 0}});
    });
    let out = rt.output();
    let up: u64 = out
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("uptime");
    assert!(up >= 31_536_000, "boottime offset applied: {out}");
    assert_ne!(out.lines().nth(1).unwrap_or_default(), host_ns("time"));
    rt.finish();
}

#[test]
fn no_pivot_and_private_root() {
    let Some(rt) = Rt::new(
        "runc-nopivot",
        &[
            "sh",
            "-c",
            "hostname; awk '$5 == \"/\"' /proc/self/mountinfo",
        ],
    ) else {
        return;
    };
    let b = rt.bundle.path.to_string_lossy().into_owned();
    let o = rt.run(&["run", "--no-pivot", "--bundle", &b, &rt.id]);
    let out = util::text(&o.stdout);
    assert!(o.status.success(), "{}", util::text(&o.stderr));
    assert!(out.starts_with("berth\n"), "{out}");
    assert!(
        !out.contains("shared:"),
        "rootfs propagation defaults to private: {out}"
    );
    rt.finish();
}

#[test]
fn exec_joins_user_namespace() {
    let Some(rt) = Rt::new("runc-userns-exec", &["sleep", "1000"]) else {
        return;
    };
    rt.edit(|s| {
        s["linux"]["namespaces"].as_array_mut().expect("ns").push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 300000, "size": 100}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 300000, "size": 100}]);
        s["mounts"].as_array_mut().expect("m").retain(|m| m["type"] != "sysfs" && m["type"] != "cgroup");
    });
    let pid = rt.create();
    rt.ok(&["start", &rt.id]);
    let init_ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).expect("init user ns");
    let out = rt.ok(&[
        "exec",
        "--user",
        "5:5",
        &rt.id,
        "sh",
        "-c",
        "readlink /proc/self/ns/user; id -u; cat /proc/self/uid_map",
    ]);
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], init_ns.to_string_lossy(), "{out}");
    assert_eq!(l[1], "5");
    assert!(out.contains("300000"), "{out}");
    rt.finish();
}
