//! Debian's `ctr` (1.6) snapshot and lease commands against berthd, checked by what the user sees, as
//! measured against Debian's containerd 1.6 with the same image: `snapshots ls`/`info`/`usage`/`tree` of an
//! image's committed layer and a running container's active snapshot, `snapshots mounts` printing a mount
//! command that really mounts the container's filesystem, `leases create` (id, expiry, labels), `ls` with
//! filters, `rm` (also `--sync`, and an unknown id: exit 1). Root only.

use std::time::Duration;

use berth_tests::ctr_fixture::{ok, text, CtrFixture};
use serde_json::Value;

#[test]
fn snapshots_ls_info_usage_tree_mounts() {
    let Some(mut c) = CtrFixture::new("cc-snap") else {
        return;
    };
    let Some(image) = c.pull_busybox() else {
        return;
    };
    let chain = c.image.as_ref().expect("pulled").diff_ids[0].clone();
    let id = c.container("s");
    c.run_detached(&image, &id, &["sleep", "1000"]);
    let fifo = c.fifo_dir.display().to_string();
    ok(
        &c.ctr(&[
            "tasks",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "w",
            &id,
            "sh",
            "-c",
            "echo made-inside > /inside",
        ]),
        "ctr tasks exec",
    );

    let ls = ok(&c.ctr(&["snapshots", "ls"]), "ctr snapshots ls");
    let row = |key: &str| -> Vec<String> {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("{key} not in snapshots ls: {ls}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row(&id), [id.as_str(), chain.as_str(), "Active"]);
    assert_eq!(row(&chain), [chain.as_str(), "Committed"]);

    let info = ok(&c.ctr(&["snapshots", "info", &id]), "ctr snapshots info");
    let info: Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    assert_eq!(info["Kind"], "Active", "{info}");
    assert_eq!(info["Name"], id.as_str(), "{info}");
    assert_eq!(info["Parent"], chain.as_str(), "{info}");
    assert!(
        info["Created"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{info}"
    );
    let o = c.ctr(&["snapshots", "info", "no-such-snapshot"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // usage: the committed layer holds busybox (MiBs, many inodes); the active one what the container wrote.
    let usage = ok(&c.ctr(&["snapshots", "usage"]), "ctr snapshots usage");
    let urow = |key: &str| -> (String, u64) {
        let l = usage
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("{key} not in snapshots usage: {usage}"));
        let f: Vec<&str> = l.split_whitespace().collect();
        // KEY SIZE(value unit) INODES
        let inodes = f.last().and_then(|n| n.parse().ok()).unwrap_or(0);
        (f[1..f.len() - 1].join(" "), inodes)
    };
    let (size, inodes) = urow(&chain);
    assert!(size.ends_with("MiB"), "busybox is MiBs: {usage}");
    assert!(inodes >= 10, "{usage}");
    let (_, inodes) = urow(&id);
    assert!(inodes >= 1, "the file the container wrote: {usage}");
    let one = ok(
        &c.ctr(&["snapshots", "usage", &id]),
        "ctr snapshots usage ID",
    );
    assert_eq!(one.lines().count(), 2, "header and the one key: {one}");

    // tree: the container's snapshot under its image's layer.
    let tree = ok(&c.ctr(&["snapshots", "tree"]), "ctr snapshots tree");
    let lines: Vec<&str> = tree.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == chain)
        .unwrap_or_else(|| panic!("{chain} not in tree: {tree}"));
    assert_eq!(
        lines.get(at + 1).map(|l| l.trim()),
        Some(format!("\\_ {id}").as_str()),
        "{tree}"
    );

    // mounts: the printed command mounts the container's filesystem, as the container sees it.
    let target = c.fx.dir.subdir("mnt");
    let t = target.display().to_string();
    let cmd = ok(
        &c.ctr(&["snapshots", "mounts", &t, &id]),
        "ctr snapshots mounts",
    );
    assert!(
        cmd.starts_with(&format!("mount -t overlay overlay {t} -o ")),
        "{cmd}"
    );
    c.fx.guard.mount(&target);
    let o = berth_tests::run_timeout(
        std::process::Command::new("sh").arg("-c").arg(cmd.trim()),
        Duration::from_secs(10),
    );
    ok(&o, "the mount command ctr printed");
    assert_eq!(
        std::fs::read_to_string(target.join("inside")).expect("the container's file"),
        "made-inside\n"
    );
    assert!(
        target.join("bin/busybox").exists(),
        "the image's layer below"
    );
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).expect("umount");

    c.kill_and_remove(&id);
    let ls = ok(&c.ctr(&["snapshots", "ls"]), "ctr snapshots ls");
    assert!(!ls.contains(&id), "the container's snapshot is gone: {ls}");
    c.fx.guard.assert_clean();
}

#[test]
fn leases_create_ls_filter_rm() {
    let Some(c) = CtrFixture::new("cc-lease") else {
        return;
    };
    let out = ok(
        &c.ctr(&[
            "leases",
            "create",
            "--id",
            "l1",
            "--expires",
            "1h",
            "team=a",
        ]),
        "ctr leases create",
    );
    assert_eq!(out, "l1\n");
    let out = ok(
        &c.ctr(&["leases", "create", "--id", "l2", "--expires", "0"]),
        "ctr leases create --expires 0",
    );
    assert_eq!(out, "l2\n");
    let generated = ok(&c.ctr(&["leases", "create"]), "ctr leases create")
        .trim()
        .to_string();
    assert!(!generated.is_empty(), "a generated id");

    let ls = ok(&c.ctr(&["leases", "ls"]), "ctr leases ls");
    let row = |id: &str| -> String {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("{id} not in leases ls: {ls}"))
            .to_string()
    };
    let l1 = row("l1");
    assert!(l1.contains("team=a"), "{l1}");
    assert!(
        l1.contains("containerd.io/gc.expire=20"),
        "expiry label: {l1}"
    );
    let l2 = row("l2");
    assert!(!l2.contains("gc.expire"), "--expires 0 never expires: {l2}");
    assert!(
        row(&generated).contains("containerd.io/gc.expire="),
        "24 h by default: {ls}"
    );
    let q = ok(
        &c.ctr(&["leases", "ls", "-q", "labels.\"team\"==a"]),
        "ctr leases ls filter",
    );
    assert_eq!(q, "l1\n");
    let q = ok(
        &c.ctr(&["leases", "ls", "-q", "id==l2"]),
        "ctr leases ls filter",
    );
    assert_eq!(q, "l2\n");

    let out = ok(&c.ctr(&["leases", "rm", "l1"]), "ctr leases rm");
    assert_eq!(out, "l1\n");
    let out = ok(
        &c.ctr(&["leases", "rm", "--sync", "l2", &generated]),
        "ctr leases rm --sync",
    );
    assert_eq!(out, format!("l2\n{generated}\n"));
    let o = c.ctr(&["leases", "rm", "no-such-lease"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        text(&o)
    );
    let q = ok(&c.ctr(&["leases", "ls", "-q"]), "ctr leases ls");
    assert_eq!(q, "");
    c.fx.guard.assert_clean();
}

#[test]
fn plugins_ls_lists_what_ctr_relies_on() {
    let Some(c) = CtrFixture::new("cc-plugins") else {
        return;
    };
    let ls = ok(&c.ctr(&["plugins", "ls"]), "ctr plugins ls");
    let mut lines = ls.lines();
    let header: Vec<&str> = lines
        .next()
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(header, ["TYPE", "ID", "PLATFORMS", "STATUS"], "{ls}");
    let status = |ty: &str, id: &str| -> Option<String> {
        ls.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&ty) && f.get(1) == Some(&id))
                .then(|| f.last().map(|s| s.to_string()))?
        })
    };
    for (ty, id) in [
        ("io.containerd.snapshotter.v1", "overlayfs"),
        ("io.containerd.grpc.v1", "tasks"),
        ("io.containerd.grpc.v1", "containers"),
        ("io.containerd.grpc.v1", "content"),
        ("io.containerd.grpc.v1", "images"),
        ("io.containerd.grpc.v1", "snapshots"),
        ("io.containerd.grpc.v1", "leases"),
        ("io.containerd.grpc.v1", "events"),
    ] {
        assert_eq!(
            status(ty, id).as_deref(),
            Some("ok"),
            "{ty} {id} listed ok: {ls}"
        );
    }
    // A filter and the detailed form.
    let d = ok(
        &c.ctr(&["plugins", "ls", "-d", "id==overlayfs"]),
        "ctr plugins ls -d",
    );
    assert!(
        d.contains("Type:") && d.contains("io.containerd.snapshotter.v1"),
        "{d}"
    );
    assert!(d.contains("ID:") && d.contains("overlayfs"), "{d}");
    assert!(!d.contains("tasks"), "only the filtered plugin: {d}");
    c.fx.guard.assert_clean();
}
