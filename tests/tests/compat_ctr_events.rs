//! `ctr events` (Debian's ctr 1.6) against berthd: the topics, envelope namespaces, payload fields and
//! order a user sees for a pull, an image tag/label/rm, a `run --rm` from the image, a detached run with an
//! exec, pause, resume, kill and removal, namespace create/label/rm and a content delete: the same as
//! Debian's containerd 1.6 printed for the same commands (zero fields omitted, so each payload's key set is
//! compared exactly). Root only.

use berth_tests::ctr_fixture::{ok, text, CtrEvent, CtrEvents, CtrFixture};
use serde_json::Value;

/// The keys of a payload, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Assert the payload has exactly these keys.
#[track_caller]
fn assert_keys(e: &CtrEvent, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(keys(&e.event), want, "{} {}", e.topic, e.event);
}

/// Events of the test's namespace whose payload mentions `id` (as container id, id, key or name).
fn about<'a>(events: &'a [CtrEvent], ns: &str, id: &str) -> Vec<&'a CtrEvent> {
    events
        .iter()
        .filter(|e| e.namespace == ns)
        .filter(|e| {
            ["container_id", "id", "key"]
                .iter()
                .any(|k| e.event[*k] == id)
        })
        .collect()
}

#[test]
fn events_of_pull_run_exec_and_namespaces() {
    let Some(mut c) = CtrFixture::new("cc-events") else {
        return;
    };
    let events = CtrEvents::start(&c.fx);
    let ns = c.fx.ns.clone();
    let Some(image) = c.pull_busybox() else {
        return;
    };
    let layout = c.image.clone().expect("pulled");
    let chain = layout.diff_ids[0].clone();

    // The pull: image created, the layer extracted into a snapshot then committed as its chain id.
    let created = events.wait_event("/images/create", |e| e.topic == "/images/create");
    assert_eq!(created.namespace, ns);
    assert_eq!(created.event, serde_json::json!({ "name": image }));
    let commit = events.wait_event("/snapshot/commit", |e| e.topic == "/snapshot/commit");
    assert_keys(&commit, &["key", "name"]);
    assert_eq!(commit.event["name"], chain.as_str());
    let key = commit.event["key"].as_str().unwrap_or_default().to_string();
    assert!(
        key.starts_with("extract-") && key.ends_with(&chain),
        "{key}"
    );
    let prepare = events.wait_event("/snapshot/prepare of the extract key", |e| {
        e.topic == "/snapshot/prepare" && e.event["key"] == key.as_str()
    });
    assert_keys(&prepare, &["key"]); // no parent for the first layer

    // run --rm: containerd's order and payloads.
    let id = c.container("rm");
    let o = c.run(&["--rm"], &image, &id, &["sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    events.wait_event("/containers/delete", |e| {
        e.topic == "/containers/delete" && e.event["id"] == id.as_str()
    });
    let all = events.events();
    let mine = about(&all, &ns, &id);
    let topics: Vec<&str> = mine.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "/snapshot/prepare",
            "/containers/create",
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
            "/snapshot/remove",
            "/containers/delete",
        ],
        "{mine:#?}"
    );
    assert_eq!(
        mine[0].event,
        serde_json::json!({ "key": id, "parent": chain })
    );
    assert_eq!(
        mine[1].event,
        serde_json::json!({
            "id": id,
            "image": image,
            "runtime": { "name": "io.containerd.runc.v2", "options": { "type_url": "containerd.runc.v1.Options" } }
        })
    );
    let tc = mine[2];
    assert_keys(tc, &["bundle", "container_id", "io", "pid", "rootfs"]);
    let pid = tc.event["pid"].as_u64().unwrap_or(0);
    assert!(pid > 0, "{}", tc.event);
    assert_eq!(tc.event["rootfs"][0]["type"], "overlay", "{}", tc.event);
    let fifo = c.fifo_dir.display().to_string();
    for stream in ["stdin", "stdout", "stderr"] {
        let p = tc.event["io"][stream].as_str().unwrap_or_default();
        assert!(
            p.starts_with(&fifo) && p.ends_with(&format!("{id}-{stream}")),
            "ctr's FIFO paths echoed: {}",
            tc.event
        );
    }
    assert_eq!(
        mine[3].event,
        serde_json::json!({ "container_id": id, "pid": pid })
    );
    assert_keys(
        mine[4],
        &["container_id", "exit_status", "exited_at", "id", "pid"],
    );
    assert_eq!(mine[4].event["exit_status"], 7);
    assert_eq!(mine[4].event["id"], id.as_str());
    assert_eq!(mine[4].event["pid"], pid);
    // containerd 1.6 leaves TaskDelete's `id` empty (so ctr prints no such key), and so does berthd.
    assert_keys(
        mine[5],
        &["container_id", "exit_status", "exited_at", "pid"],
    );
    assert_eq!(mine[5].event["exit_status"], 7);
    assert_eq!(mine[5].event["exited_at"], mine[4].event["exited_at"]);
    assert_eq!(mine[6].event, serde_json::json!({ "key": id }));
    assert_eq!(mine[7].event, serde_json::json!({ "id": id }));

    // A detached run with an exec, pause, resume, kill, rm.
    let id = c.container("d");
    let pid = c.run_detached(&image, &id, &["sleep", "1000"]);
    let o = c.ctr(&[
        "tasks",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "exit 2",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    events.wait_event("the exec's /tasks/exit", |e| {
        e.topic == "/tasks/exit" && e.event["id"] == "e1"
    });
    ok(&c.ctr(&["tasks", "pause", &id]), "ctr tasks pause");
    ok(&c.ctr(&["tasks", "resume", &id]), "ctr tasks resume");
    c.kill_and_remove(&id);
    events.wait_event("/containers/delete", |e| {
        e.topic == "/containers/delete" && e.event["id"] == id.as_str()
    });
    let all = events.events();
    let mine: Vec<&CtrEvent> = all
        .iter()
        .filter(|e| e.namespace == ns && (e.event["container_id"] == id.as_str()))
        .collect();
    let topics: Vec<&str> = mine.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ],
        "{mine:#?}"
    );
    assert_eq!(
        mine[2].event,
        serde_json::json!({ "container_id": id, "exec_id": "e1" })
    );
    assert_keys(mine[3], &["container_id", "exec_id", "pid"]);
    let exec_pid = mine[3].event["pid"].as_u64().unwrap_or(0);
    assert!(exec_pid > 0 && exec_pid != pid as u64, "{}", mine[3].event);
    assert_eq!(mine[4].event["id"], "e1", "{}", mine[4].event);
    assert_eq!(mine[4].event["pid"], exec_pid, "{}", mine[4].event);
    assert_eq!(mine[4].event["exit_status"], 2, "{}", mine[4].event);
    assert_eq!(mine[5].event, serde_json::json!({ "container_id": id }));
    assert_eq!(mine[6].event, serde_json::json!({ "container_id": id }));
    assert_eq!(mine[7].event["id"], id.as_str(), "{}", mine[7].event);
    assert_eq!(mine[7].event["exit_status"], 137, "{}", mine[7].event);
    assert_eq!(mine[8].event["exit_status"], 137, "{}", mine[8].event);
    assert_eq!(mine[8].event["pid"], pid, "{}", mine[8].event);

    // Images: tag, label, rm.
    let second = format!("{image}-x");
    ok(
        &c.ctr(&["images", "tag", &image, &second]),
        "ctr images tag",
    );
    ok(
        &c.ctr(&["images", "label", &image, "a=b"]),
        "ctr images label",
    );
    ok(&c.ctr(&["images", "rm", &second]), "ctr images rm");
    let e = events.wait_event("/images/update", |e| e.topic == "/images/update");
    assert_eq!(
        e.event,
        serde_json::json!({ "name": image, "labels": { "a": "b" } })
    );
    let e = events.wait_event("/images/delete", |e| e.topic == "/images/delete");
    assert_eq!(e.event, serde_json::json!({ "name": second }));
    let e = events.wait_event("/images/create of the tag", |e| {
        e.topic == "/images/create" && e.event["name"] == second.as_str()
    });
    assert_eq!(e.namespace, ns);

    // Namespaces: create and update carry the caller's namespace, delete the deleted one.
    let other = berth_tests::unique_id("cc-evns");
    ok(
        &c.ctr(&["namespaces", "create", &other, "k=v"]),
        "ctr namespaces create",
    );
    ok(
        &c.ctr(&["namespaces", "label", &other, "k2=v2"]),
        "ctr namespaces label",
    );
    ok(&c.ctr(&["namespaces", "rm", &other]), "ctr namespaces rm");
    let e = events.wait_event("/namespaces/create", |e| {
        e.topic == "/namespaces/create" && e.event["name"] == other.as_str()
    });
    assert_eq!(e.namespace, ns);
    assert_eq!(e.event["labels"], serde_json::json!({ "k": "v" }));
    let e = events.wait_event("/namespaces/update", |e| {
        e.topic == "/namespaces/update" && e.event["name"] == other.as_str()
    });
    assert_eq!(e.namespace, ns);
    assert_eq!(e.event["labels"]["k2"], "v2", "{}", e.event);
    let e = events.wait_event("/namespaces/delete", |e| {
        e.topic == "/namespaces/delete" && e.event["name"] == other.as_str()
    });
    assert_eq!(e.namespace, other);
    assert_eq!(e.event, serde_json::json!({ "name": other }));

    // content rm: /content/delete with the digest.
    let layer = layout.layers[0].digest.clone();
    ok(&c.ctr(&["content", "rm", &layer]), "ctr content rm");
    let e = events.wait_event("/content/delete", |e| e.topic == "/content/delete");
    assert_eq!(e.event, serde_json::json!({ "digest": layer }));
    assert_eq!(e.namespace, ns);

    ok(&c.ctr(&["images", "rm", "--sync", &image]), "ctr images rm");
    c.fx.guard.assert_clean();
}
