//! berthd and shims that go away: a shim killed while berthd is down (recovery reaps it with `berth-shim delete`
//! and reports the recorded exit), a shim killed while berthd runs, SIGTERM leaving containers running, and
//! Tasks.Update reaching the container's cgroup. Root only.
//!
//! The `sleep` in container commands is their workload (running until killed, or polling for `/go`, the
//! test's signal to exit), never a wait of the test.

use berth_tests::task_fixture as support;

use std::time::Duration;

use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::v1::Status;
use nix::sys::signal::Signal;
use support::{
    assert_wait_pending, describe, eventually, exec_spec, req, wait_answer, TaskFixture,
};
use tonic::Code;

/// How long the journal is watched for a duplicate after everything journaled so far is in.
const QUIET: Duration = Duration::from_millis(700);

/// (topic, description) of the namespace's journal events.
async fn journal(fx: &TaskFixture) -> Vec<(String, String)> {
    fx.journal(0, QUIET)
        .await
        .into_iter()
        .map(|ev| (ev.topic.clone(), describe(ev.event.as_ref())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_gone_while_berthd_down_is_reaped_with_its_exit() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = TaskFixture::new("dt-deadshim", "");
    let ns = fx.ns.clone();
    let id = berth_tests::unique_id("dt-ds");
    let b = fx.bundle(
        "a",
        &["sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done; exit 9"],
    );
    let pid = fx.run(&id, &b).await;
    let shim = fx.shim_pid(&id);
    fx.guard.pid(shim);
    fx.daemon.kill();
    // The container exits and the shim records it (exit file and on-disk journal), then the shim dies too.
    std::fs::write(b.rootfs.join("go"), b"").expect("touch go");
    assert!(berth_tests::proc::wait_dead(
        pid as i32,
        Duration::from_secs(10)
    ));
    let exit_file = fx.task_dir(&id).join("init.exit");
    eventually(
        "the shim recording the exit (status 9) in init.exit and its journal",
        Duration::from_secs(10),
        || {
            fx.shim_journaled_exit(&id, "") == Some(9)
                && std::fs::read_to_string(&exit_file)
                    .is_ok_and(|r| r.contains("\"exit_status\":9"))
        },
    )
    .await;
    berth_tests::proc::kill(shim, Signal::SIGKILL);
    assert!(berth_tests::proc::wait_dead(shim, Duration::from_secs(10)));

    fx.daemon.start_again();
    fx.wait_status(&id, Status::Stopped, Duration::from_secs(20))
        .await;
    let p = fx.get(&id, "").await.expect("get");
    assert_eq!(p.exit_status, 9, "the exit the shim recorded: {p:?}");
    assert_eq!(fx.wait(&id, "").await.expect("wait"), 9);
    // Journal: exactly one exit and one delete for the task.
    let ev = journal(&fx).await;
    let exits: Vec<_> = ev
        .iter()
        .filter(|(t, d)| t == "/tasks/exit" && d.starts_with(&id))
        .collect();
    let deletes: Vec<_> = ev
        .iter()
        .filter(|(t, d)| t == "/tasks/delete" && d.starts_with(&id))
        .collect();
    assert_eq!(exits.len(), 1, "{ev:#?}");
    assert_eq!(deletes.len(), 1, "{ev:#?}");
    assert!(exits[0].1.ends_with("status=9"), "{ev:#?}");
    // A second restart publishes nothing new for it.
    fx.daemon.kill();
    fx.daemon.start_again();
    fx.wait_status(&id, Status::Stopped, Duration::from_secs(20))
        .await;
    let ev2 = journal(&fx).await;
    assert_eq!(
        ev2.len(),
        ev.len(),
        "no duplicates after another restart: {ev2:#?}"
    );
    // Tasks.Delete clears it.
    let mut t = fx.tasks().await;
    let d = t
        .delete(req(
            &ns,
            DeleteTaskRequest {
                container_id: id.clone(),
            },
        ))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(d.exit_status, 9);
    assert_eq!(
        fx.get(&id, "").await.expect_err("gone").code(),
        Code::NotFound
    );
    assert!(!fx.task_dir(&id).exists());
    fx.kill_and_delete(&id).await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_while_berthd_runs_stops_the_task() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-shimkill", "");
    let id = berth_tests::unique_id("dt-sk");
    let b = fx.bundle("a", &["sleep", "1000"]);
    fx.run(&id, &b).await;
    let shim = fx.shim_pid(&id);
    fx.guard.pid(shim);
    // The shim inherited none of berthd's descriptors (its database, lock, socket or log).
    let root = fx.daemon.root().display().to_string();
    for fd in std::fs::read_dir(format!("/proc/{shim}/fd"))
        .expect("shim fds")
        .flatten()
    {
        let target = std::fs::read_link(fd.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        assert!(
            !target.starts_with(&root)
                && !target.ends_with("berthd.log")
                && !target.ends_with("berth.sock"),
            "shim fd {:?} -> {target}",
            fd.file_name()
        );
    }
    // A Wait pending on the running task is answered once the shim is gone.
    let waiter = fx.spawn_wait(&id, "").await;
    assert_wait_pending(&waiter, "the Wait on the running task is pending").await;
    berth_tests::proc::kill(shim, Signal::SIGKILL);
    assert!(berth_tests::proc::wait_dead(shim, Duration::from_secs(10)));
    fx.wait_status(&id, Status::Stopped, Duration::from_secs(20))
        .await;
    let status = wait_answer(waiter, "the Wait pending when the shim died").await;
    assert_ne!(status, 0, "a reaped task reports a failure status");
    fx.kill_and_delete(&id).await;
    assert!(!fx.task_dir(&id).exists());
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_containers_running_and_update_reaches_cgroup() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = TaskFixture::new("dt-sigterm", "");
    let ns = fx.ns.clone();
    let id = berth_tests::unique_id("dt-st");
    let b = fx.bundle("a", &["sleep", "1000"]);
    let pid = fx.run(&id, &b).await;
    // An exec that keeps running across the restart.
    let mut t = fx.tasks().await;
    t.exec(req(
        &ns,
        ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "long".into(),
            spec: Some(exec_spec(&["sleep", "1000"])),
            ..Default::default()
        },
    ))
    .await
    .expect("exec");
    let long_pid = t
        .start(req(
            &ns,
            StartRequest {
                container_id: id.clone(),
                exec_id: "long".into(),
            },
        ))
        .await
        .expect("start exec")
        .into_inner()
        .pid;
    fx.guard.pid(long_pid as i32);
    // ListPids marks the exec's pid with containerd.runc.v1.ProcessDetails{exec_id}.
    let pids = t
        .list_pids(req(
            &ns,
            ListPidsRequest {
                container_id: id.clone(),
            },
        ))
        .await
        .expect("pids")
        .into_inner()
        .processes;
    let info = pids
        .iter()
        .find(|p| p.pid == long_pid)
        .and_then(|p| p.info.clone())
        .unwrap_or_else(|| panic!("exec pid {long_pid} with info in {pids:?}"));
    assert_eq!(info.type_url, "containerd.runc.v1.ProcessDetails");
    let details =
        <berth_proto::runc::ProcessDetails as prost::Message>::decode(info.value.as_slice())
            .expect("ProcessDetails");
    assert_eq!(details.exec_id, "long");
    assert!(
        pids.iter().any(|p| p.pid == pid && p.info.is_none()),
        "init without info: {pids:?}"
    );
    drop(t);
    let status = fx.daemon.stop().expect("was running");
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(
        berth_tests::proc::alive(pid as i32),
        "the container survives berthd's stop"
    );
    assert!(
        berth_tests::proc::alive(fx.shim_pid(&id)),
        "the shim survives berthd's stop"
    );
    fx.daemon.start_again();
    fx.wait_status(&id, Status::Running, Duration::from_secs(10))
        .await;
    let mut t = fx.tasks().await;
    // The exec is known again after the restart (record + shim State), and can be waited for and killed.
    let long = fx.get(&id, "long").await.expect("exec rebuilt");
    assert_eq!((long.pid, long.status), (long_pid, Status::Running as i32));
    t.kill(req(
        &ns,
        KillRequest {
            container_id: id.clone(),
            exec_id: "long".into(),
            signal: 9,
            all: false,
        },
    ))
    .await
    .expect("kill exec");
    assert_eq!(fx.wait(&id, "long").await.expect("wait exec"), 137);
    t.exec(req(
        &ns,
        ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "e".into(),
            spec: Some(exec_spec(&["true"])),
            ..Default::default()
        },
    ))
    .await
    .expect("exec after restart");
    t.start(req(
        &ns,
        StartRequest {
            container_id: id.clone(),
            exec_id: "e".into(),
        },
    ))
    .await
    .expect("start exec");
    assert_eq!(fx.wait(&id, "e").await.expect("wait exec"), 0);

    // Tasks.Update: a memory limit lands in the container's v1 memory cgroup.
    let limit: u64 = 64 << 20;
    let resources = serde_json::json!({"memory": {"limit": limit}});
    t.update(req(
        &ns,
        UpdateTaskRequest {
            container_id: id.clone(),
            resources: Some(prost_types::Any {
                type_url: berth_proto::RESOURCES_TYPE_URL.into(),
                value: serde_json::to_vec(&resources).expect("json"),
            }),
            ..Default::default()
        },
    ))
    .await
    .expect("update");
    let cg = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(b.cgroups_path().trim_start_matches('/'))
        .join("memory.limit_in_bytes");
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        let v: u64 = std::fs::read_to_string(&cg)
            .expect("read")
            .trim()
            .parse()
            .expect("number");
        assert_eq!(v, limit, "{}", cg.display());
    }
    let bad = t
        .update(req(
            &ns,
            UpdateTaskRequest {
                container_id: id.clone(),
                resources: Some(prost_types::Any {
                    type_url: berth_proto::RESOURCES_TYPE_URL.into(),
                    value: b"{nope".to_vec(),
                }),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(bad.expect_err("bad json").code(), Code::InvalidArgument);
    fx.kill_and_delete(&id).await;
    fx.guard.assert_clean();
}
