//! berthd recovery: SIGKILL berthd with 20 containers running, let 5 exit while it is down, restart it: the 15 are
//! RUNNING and accept execs, the 5 are STOPPED with their real exit codes, and a berth.v1 Journal subscriber from
//! the last cursor gets each exit exactly once. Also: berthd killed by a failpoint between journaling an exit and
//! acking it to the shim delivers that exit once after restart. Root only.
//!
//! The `sleep` in container commands is their workload (running until killed, or polling for `/go`, the
//! test's signal to exit), never a wait of the test.

use berth_tests::task_fixture as support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::berth::JournalEvent;
use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::v1::Status;
use support::{describe, eventually, exec_spec, req, write_config, TaskFixture};

/// How long the journal is watched for a duplicate after everything expected is in.
const QUIET: Duration = Duration::from_millis(1500);

/// True once `events` hold a `/tasks/start` of every one of `ids`.
fn started(events: &[JournalEvent], ids: &[String]) -> bool {
    ids.iter().all(|id| {
        events
            .iter()
            .any(|e| e.topic == "/tasks/start" && describe(e.event.as_ref()) == *id)
    })
}

fn exits_by_container(events: &[JournalEvent]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for e in events.iter().filter(|e| e.topic == "/tasks/exit") {
        let d = describe(e.event.as_ref());
        let cid = d.split('/').next().unwrap_or("").to_string();
        m.entry(cid).or_default().push(d);
    }
    m
}

/// A container that exits with `code` once /go exists in its rootfs: its own loop is how the test tells it
/// when to exit (a workload, not a wait of the test).
const WAIT_FOR_GO: &str = "while [ ! -e /go ]; do sleep 0.1; done; exit $CODE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_sigkill_with_20_containers() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = TaskFixture::new("dt-recover", "");
    let ns = fx.ns.clone();
    let mut ids = Vec::new();
    let mut pids = Vec::new();
    let mut rootfs = Vec::new();
    for i in 0..20 {
        let id = berth_tests::unique_id(&format!("dt-r{i}"));
        let b = fx.bundle(&format!("r{i}"), &["sh", "-c", WAIT_FOR_GO]);
        b.edit_spec(|s| {
            s["process"]["env"]
                .as_array_mut()
                .expect("env")
                .push(serde_json::Value::String(format!("CODE={}", 20 + i)));
        });
        pids.push(fx.run(&id, &b).await);
        rootfs.push(b.rootfs.clone());
        ids.push(id);
    }
    // The start events reach the journal (from the shims, asynchronously) and are acked to the shims, as
    // in a berthd that has been running a while; the cursor is after them.
    fx.journal_until(0, "a /tasks/start of each of the 20", |ev| {
        started(ev, &ids)
    })
    .await;
    eventually(
        "berthd acking every event the 20 shims journaled",
        Duration::from_secs(10),
        || ids.iter().all(|id| fx.shim_journal(id).is_empty()),
    )
    .await;
    let cursor = fx.journal_barrier().await;
    assert!(cursor > 0);

    fx.daemon.kill();
    // While berthd is down: 2 are killed by pid (137), 3 exit on their own (codes 22, 23, 24).
    assert!(berth_tests::proc::kill(
        pids[0] as i32,
        nix::sys::signal::Signal::SIGKILL
    ));
    assert!(berth_tests::proc::kill(
        pids[1] as i32,
        nix::sys::signal::Signal::SIGKILL
    ));
    for r in &rootfs[2..5] {
        std::fs::write(r.join("go"), b"").expect("touch go");
    }
    for &p in &pids[..5] {
        assert!(
            berth_tests::proc::wait_dead(p as i32, Duration::from_secs(10)),
            "init {p} exited"
        );
    }
    let expected: HashMap<&str, u32> = ids[..5]
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), if i < 2 { 137 } else { 20 + i as u32 }))
        .collect();

    let t0 = Instant::now();
    fx.daemon.start_again();
    let mut t = fx.tasks().await;
    // Recovery runs in the background: poll until the 5 are STOPPED.
    for id in &ids[..5] {
        fx.wait_status(id, Status::Stopped, Duration::from_secs(20))
            .await;
    }
    eprintln!(
        "recovered 20 tasks in {:?} (from restart to all exits seen)",
        t0.elapsed()
    );
    let list = t
        .list(req(&ns, ListTasksRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.tasks.len(), 20);
    for p in &list.tasks {
        match expected.get(p.id.as_str()) {
            Some(&code) => {
                assert_eq!(p.status, Status::Stopped as i32, "{p:?}");
                assert_eq!(p.exit_status, code, "real exit code of {}", p.id);
            }
            None => assert_eq!(p.status, Status::Running as i32, "{p:?}"),
        }
    }
    for id in &ids[..5] {
        assert_eq!(fx.wait(id, "").await.expect("wait"), expected[id.as_str()]);
    }
    // Exec into each of the 15.
    for id in &ids[5..] {
        t.exec(req(
            &ns,
            ExecProcessRequest {
                container_id: id.clone(),
                exec_id: "after".into(),
                spec: Some(exec_spec(&["sh", "-c", "exit 4"])),
                ..Default::default()
            },
        ))
        .await
        .expect("exec after recovery");
        t.start(req(
            &ns,
            StartRequest {
                container_id: id.clone(),
                exec_id: "after".into(),
            },
        ))
        .await
        .expect("start exec");
        assert_eq!(fx.wait(id, "after").await.expect("wait exec"), 4);
    }
    // The journal from the cursor: each of the 5 init exits exactly once, no init exit of the others.
    let events = fx.journal(cursor, QUIET).await;
    let exits = exits_by_container(&events);
    for id in &ids[..5] {
        let code = expected[id.as_str()];
        assert_eq!(
            exits.get(id.as_str()).cloned().unwrap_or_default(),
            vec![format!("{id}/{id} status={code}")],
            "exactly one exit for {id}"
        );
    }
    for id in &ids[5..] {
        let e = exits.get(id.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            e,
            vec![format!("{id}/after status=4")],
            "only the exec's exit for {id}"
        );
    }
    for id in &ids {
        fx.kill_and_delete(id).await;
    }
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_journaled_but_not_acked_is_delivered_once() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = TaskFixture::new("dt-ackfp", "");
    let id = berth_tests::unique_id("dt-ack");
    let b = fx.bundle(
        "a",
        &["sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done; exit 5"],
    );
    let pid = fx.run(&id, &b).await;
    // The start event is journaled and acked, so that the exit is the only event the shim holds unacked
    // below; the cursor is after it.
    let ids = [id.clone()];
    fx.journal_until(0, "the /tasks/start", |ev| started(ev, &ids))
        .await;
    eventually(
        "berthd acking every event the shim journaled",
        Duration::from_secs(10),
        || fx.shim_journal(&id).is_empty(),
    )
    .await;
    let cursor = fx.journal_barrier().await;

    // Restart berthd with the failpoint: it dies (SIGKILL) right after journaling the next shim event.
    fx.daemon.kill();
    write_config(&fx.config_path, "shim_actor.after_journal_before_ack=exit");
    fx.daemon.start_again();
    fx.wait_status(&id, Status::Running, Duration::from_secs(10))
        .await;
    let berthd = fx.daemon.pid().expect("running");
    std::fs::write(b.rootfs.join("go"), b"").expect("touch go");
    assert!(berth_tests::proc::wait_dead(
        pid as i32,
        Duration::from_secs(10)
    ));
    assert!(
        berth_tests::proc::wait_dead(berthd, Duration::from_secs(10)),
        "berthd died at the failpoint"
    );
    fx.daemon.kill(); // reap it

    // Without the failpoint: the shim replays the unacked exit, berthd drops the duplicate.
    write_config(&fx.config_path, "");
    fx.daemon.start_again();
    assert_eq!(fx.wait(&id, "").await.expect("wait"), 5);
    let events = fx.journal(cursor, QUIET).await;
    let exits = exits_by_container(&events);
    assert_eq!(
        exits.get(id.as_str()).cloned().unwrap_or_default(),
        vec![format!("{id}/{id} status=5")],
        "the exit is journaled once, not twice: {events:?}"
    );
    fx.delete_stopped_and_finish(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exit_journaled_by_a_shim_that_then_died_is_not_lost() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = TaskFixture::new("dt-deadjournal", "");
    let ns = fx.ns.clone();
    let id = berth_tests::unique_id("dt-dj");
    let b = fx.bundle("a", &["sleep", "1000"]);
    let init = fx.run(&id, &b).await;
    let mut t = fx.tasks().await;
    t.exec(req(
        &ns,
        ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "e1".into(),
            spec: Some(exec_spec(&[
                "sh",
                "-c",
                "while [ ! -e /go ]; do sleep 0.1; done; exit 5",
            ])),
            ..Default::default()
        },
    ))
    .await
    .expect("exec");
    let exec_pid = t
        .start(req(
            &ns,
            StartRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
            },
        ))
        .await
        .expect("start exec")
        .into_inner()
        .pid;
    fx.guard.pid(exec_pid as i32);
    let cursor = fx.journal_barrier().await;
    let shim = fx.shim_pid(&id);

    // berthd is down while the exec exits: the shim journals the exit on disk, nobody acks it,
    // and then the shim dies too.
    fx.daemon.kill();
    std::fs::write(b.rootfs.join("go"), b"").expect("touch go");
    assert!(berth_tests::proc::wait_dead(
        exec_pid as i32,
        Duration::from_secs(10)
    ));
    eventually(
        "the shim journaling the exec's exit (status 5) on disk",
        Duration::from_secs(10),
        || fx.shim_journaled_exit(&id, "e1") == Some(5),
    )
    .await;
    berth_tests::proc::kill(shim, nix::sys::signal::Signal::SIGKILL);
    assert!(berth_tests::proc::wait_dead(shim, Duration::from_secs(10)));

    // Recovery finds the shim dead, replays its journal, then reaps the container.
    fx.daemon.start_again();
    assert_eq!(fx.wait(&id, "e1").await.expect("wait exec"), 5);
    fx.wait(&id, "").await.expect("wait init");
    assert!(berth_tests::proc::wait_dead(
        init as i32,
        Duration::from_secs(10)
    ));
    let events = fx.journal(cursor, QUIET).await;
    let exits = exits_by_container(&events)
        .remove(id.as_str())
        .unwrap_or_default();
    assert_eq!(
        exits
            .iter()
            .filter(|e| e.contains("/e1 "))
            .collect::<Vec<_>>(),
        vec![&format!("{id}/e1 status=5")],
        "the exec's exit, once, with its status: {events:?}"
    );
    assert_eq!(
        exits
            .iter()
            .filter(|e| e.starts_with(&format!("{id}/{id} ")))
            .count(),
        1,
        "one init exit: {exits:?}"
    );
    fx.delete_stopped_and_finish(&id).await;
}
