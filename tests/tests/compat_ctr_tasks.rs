//! Debian's `ctr` (1.6) task and container commands against berthd, from an image pulled with ctr, each
//! checked by what the user sees (as measured against Debian's containerd 1.6 on the same image): `tasks
//! pause`/`resume` (PAUSED in `tasks ls`, `/tasks/paused` and `/tasks/resumed` with the container id),
//! `tasks metrics` (the table and `--format json` of cgroups metrics), `tasks attach` (stdin reaches the
//! container, its output and exit code come back), `containers ls`/`info`/`label` (the record and the spec
//! decoded, labels added and removed, `/containers/update`). Root only.

use berth_tests::ctr_fixture::{ok, text, CtrEvents, CtrFixture};
use serde_json::Value;

#[test]
fn pause_resume_metrics_and_attach() {
    let Some(mut c) = CtrFixture::new("cc-tasks") else {
        return;
    };
    let Some(image) = c.pull_busybox() else {
        return;
    };
    let events = CtrEvents::start(&c.fx);
    let id = c.container("t");
    let pid = c.run_detached(
        &image,
        &id,
        &["sh", "-c", "read line; echo \"got $line\"; exit 3"],
    );

    ok(&c.ctr(&["tasks", "pause", &id]), "ctr tasks pause");
    assert_eq!(c.task(&id), Some((pid, "PAUSED".into())));
    ok(&c.ctr(&["tasks", "resume", &id]), "ctr tasks resume");
    assert_eq!(c.task(&id), Some((pid, "RUNNING".into())));
    for topic in ["/tasks/paused", "/tasks/resumed"] {
        let e = c_event(&events, topic, &id);
        assert_eq!(e, serde_json::json!({ "container_id": id }), "{topic}");
    }

    // metrics: containerd's v1 table, read from the task's cgroups.
    let m = ok(&c.ctr(&["tasks", "metrics", &id]), "ctr tasks metrics");
    let mut lines = m.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("ID")),
        "header: {m}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with(&id)),
        "the task's line: {m}"
    );
    let value = |metric: &str| -> Option<u64> {
        m.lines().find_map(|l| {
            l.strip_prefix(metric)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    assert!(value("pids.current ").is_some_and(|n| n >= 1), "{m}");
    assert!(
        value("memory.usage_in_bytes ").is_some_and(|n| n > 0),
        "{m}"
    );
    assert!(value("cpuacct.usage ").is_some_and(|n| n > 0), "{m}");
    let j = ok(
        &c.ctr(&["tasks", "metrics", "--format", "json", &id]),
        "ctr tasks metrics --format json",
    );
    let j: Value = serde_json::from_str(&j).unwrap_or_else(|e| panic!("{e}: {j}"));
    assert!(j["pids"]["current"].as_u64().is_some_and(|n| n >= 1), "{j}");
    assert!(
        j["cpu"]["usage"]["total"].as_u64().is_some_and(|n| n > 0),
        "{j}"
    );

    // attach: what ctr reads on stdin reaches the container; its output and exit code come back.
    let o = c.ctr_with_input(&["tasks", "attach", &id], b"hello\n");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "got hello\n",
        "{}",
        text(&o)
    );
    let exit = c_event(&events, "/tasks/exit", &id);
    assert_eq!(exit["exit_status"], 3, "{exit}");
    assert_eq!(exit["pid"], pid, "{exit}");
    assert_eq!(exit["id"], id.as_str(), "{exit}");
    assert!(exit["exited_at"].is_string(), "{exit}");

    // ctr's attach deletes the task once it exited (as with containerd); the container stays.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.task(&id).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} never deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let del = c_event(&events, "/tasks/delete", &id);
    assert_eq!(del["exit_status"], 3, "{del}");
    ok(&c.ctr(&["containers", "rm", &id]), "ctr containers rm");
    c.fx.guard.assert_clean();
}

/// The payload of the first `topic` event of container `id` (field `container_id`).
#[track_caller]
fn c_event(events: &CtrEvents, topic: &str, id: &str) -> Value {
    events
        .wait_event(&format!("{topic} of {id}"), |e| {
            e.topic == topic && e.event["container_id"] == id
        })
        .event
}

#[test]
fn containers_ls_info_and_label() {
    let Some(mut c) = CtrFixture::new("cc-cont") else {
        return;
    };
    let Some(image) = c.pull_busybox() else {
        return;
    };
    let events = CtrEvents::start(&c.fx);
    let id = c.container("c");
    ok(
        &c.ctr(&[
            "containers",
            "create",
            "--label",
            "tier=web",
            &image,
            &id,
            "echo",
            "hi",
        ]),
        "ctr containers create",
    );

    let ls = ok(&c.ctr(&["containers", "ls"]), "ctr containers ls");
    let line = ls
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {ls}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols, [id.as_str(), image.as_str(), "io.containerd.runc.v2"]);

    let info = ok(&c.ctr(&["containers", "info", &id]), "ctr containers info");
    let info: Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    assert_eq!(info["ID"], id.as_str(), "{info}");
    assert_eq!(info["Image"], image.as_str(), "{info}");
    assert_eq!(info["Runtime"]["Name"], "io.containerd.runc.v2", "{info}");
    assert_eq!(info["Snapshotter"], "overlayfs", "{info}");
    assert_eq!(info["SnapshotKey"], id.as_str(), "{info}");
    assert_eq!(info["Labels"]["tier"], "web", "{info}");
    assert_eq!(
        info["Labels"]["io.containerd.image.config.stop-signal"], "SIGTERM",
        "{info}"
    );
    // The spec is decoded (ctr knows its type URL): the process is the one asked for.
    assert_eq!(
        info["Spec"]["process"]["args"],
        serde_json::json!(["echo", "hi"]),
        "{info}"
    );
    assert_eq!(info["Spec"]["root"]["path"], "rootfs", "{info}");
    let created = info["CreatedAt"].as_str().unwrap_or_default().to_string();
    assert!(created.starts_with("20"), "a real timestamp: {info}");

    // label: added, printed, kept; an empty value removes it.
    let out = ok(
        &c.ctr(&["containers", "label", &id, "team=compat"]),
        "ctr containers label",
    );
    assert!(out.contains("team=compat"), "{out}");
    let info: Value = serde_json::from_str(&ok(
        &c.ctr(&["containers", "info", &id]),
        "ctr containers info",
    ))
    .expect("info JSON");
    assert_eq!(info["Labels"]["team"], "compat", "{info}");
    assert_eq!(info["Labels"]["tier"], "web", "other labels kept: {info}");
    let updated = info["UpdatedAt"].as_str().unwrap_or_default().to_string();
    assert!(updated >= created, "{info}");
    let u = events
        .wait_event("/containers/update", |e| {
            e.topic == "/containers/update" && e.event["id"] == id.as_str()
        })
        .event;
    assert_eq!(u["image"], image.as_str(), "{u}");
    assert_eq!(u["labels"]["team"], "compat", "{u}");
    assert_eq!(u["snapshot_key"], id.as_str(), "{u}");
    ok(
        &c.ctr(&["containers", "label", &id, "team="]),
        "ctr containers label team=",
    );
    let info: Value = serde_json::from_str(&ok(
        &c.ctr(&["containers", "info", &id]),
        "ctr containers info",
    ))
    .expect("info JSON");
    assert!(info["Labels"].get("team").is_none(), "removed: {info}");

    // An unknown container: an error naming it, exit 1.
    let o = c.ctr(&["containers", "info", "no-such-container"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-container"),
        "{}",
        text(&o)
    );

    ok(&c.ctr(&["containers", "rm", &id]), "ctr containers rm");
    let ls = ok(&c.ctr(&["containers", "ls", "-q"]), "ctr containers ls");
    assert!(!ls.lines().any(|l| l == id), "{ls}");
    c.fx.guard.assert_clean();
}
