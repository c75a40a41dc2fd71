//! berthd tasks through the containerd Tasks API, one scenario per test: a task run to its exit with FIFO stdio
//! and a Wait pending across Start, exec, pids and metrics, pause/resume, kill and delete, the events a
//! subscriber sees for each, a pending Wait surviving a ContainerActor panic, a terminal, and rootfs mounts
//! from the request. Error codes are in `daemon_tasks_errors.rs`. Root only; runs berth-runc through berth-shim.

use berth_tests::task_fixture as support;

use std::time::Duration;

use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::v1::Status;
use support::{
    assert_wait_pending, fifo_reader, read_until, req, wait_answer, EventLog, TaskFixture,
};
use tonic::Code;

/// The container command of the tests that need a task that keeps running until they kill it.
const LONG_RUNNING: &[&str] = &["sleep", "1000"];

/// `path` as the string Tasks.Create and Exec take.
fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Wait until `id`'s task is deleted, then its task events in order, as `topic description`.
async fn events_until_deleted(events: &EventLog, id: &str) -> Vec<String> {
    events
        .wait_for(Duration::from_secs(5), |ev| {
            ev.iter()
                .any(|(t, d)| t == "/tasks/delete" && d.starts_with(id))
        })
        .await;
    events
        .task_events()
        .iter()
        .filter(|(t, d)| t.starts_with("/tasks/") && d.starts_with(id))
        .map(|(t, d)| format!("{t} {d}"))
        .collect()
}

/// Kill init with SIGKILL, check its Wait says 137, delete the task.
async fn kill_wait_delete(fx: &TaskFixture, id: &str) {
    fx.kill(id, "", 9).await.expect("kill");
    assert_eq!(fx.wait(id, "").await.expect("wait"), 137);
    fx.delete_task(id).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_runs_to_its_exit_with_fifo_stdio_and_a_wait_pending_across_start() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-exit", "");
    let events = fx.subscribe().await;
    let a = berth_tests::unique_id("dt-a");
    let ba = fx.bundle(
        "a",
        &["sh", "-c", "echo hello-out; echo hello-err >&2; exit 3"],
    );
    fx.create_container(&a, &ba).await;
    let out_path = fx.dir.join("a-stdout");
    let err_path = fx.dir.join("a-stderr");
    let mut out = fifo_reader(&out_path);
    let mut err = fifo_reader(&err_path);
    let pid = fx
        .create_task(&a, &path(&out_path), &path(&err_path))
        .await
        .expect("create task");
    assert!(pid > 0);
    let p = fx.get(&a, "").await.expect("get");
    assert_eq!(p.status, Status::Created as i32);
    assert_eq!(p.id, a);
    assert_eq!(p.stdout, path(&out_path), "Get echoes the stdio paths");

    // A Wait sent before Start is not answered while the task is CREATED ...
    let waiter = fx.spawn_wait(&a, "").await;
    assert_wait_pending(&waiter, "the Wait sent before Start is pending").await;
    let p = fx.get(&a, "").await.expect("get before start");
    assert_eq!(p.status, Status::Created as i32, "CREATED until Start");
    assert!(!waiter.is_finished(), "the Wait returned before Start");
    // ... and returns the real exit status once the started task exits.
    fx.start(&a, "").await.expect("start");
    assert_eq!(wait_answer(waiter, "the Wait sent before Start").await, 3);
    assert!(read_until(&mut out, "hello-out", Duration::from_secs(5)).contains("hello-out"));
    assert!(read_until(&mut err, "hello-err", Duration::from_secs(5)).contains("hello-err"));
    // A late Wait returns at once with the kept status.
    assert_eq!(fx.wait(&a, "").await.expect("late wait"), 3);
    let p = fx.get(&a, "").await.expect("get stopped");
    assert_eq!((p.status, p.exit_status), (Status::Stopped as i32, 3));
    let d = fx.delete_task(&a).await.expect("delete");
    assert_eq!(d.exit_status, 3);
    assert_eq!(
        fx.get(&a, "").await.expect_err("gone").code(),
        Code::NotFound
    );
    assert!(!fx.task_dir(&a).exists(), "task dir removed");

    assert_eq!(
        events_until_deleted(&events, &a).await,
        vec![
            format!("/tasks/create {a}"),
            format!("/tasks/start {a}"),
            format!("/tasks/exit {a}/{a} status=3"),
            format!("/tasks/delete {a} status=3"),
        ]
    );
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_has_its_own_output_exit_status_delete_and_events() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-exec", "");
    let events = fx.subscribe().await;
    let mut t = fx.tasks().await;
    let b = berth_tests::unique_id("dt-b");
    let bb = fx.bundle("b", LONG_RUNNING);
    fx.run(&b, &bb).await;
    let exec_out = fx.dir.join("x1-stdout");
    let mut xo = fifo_reader(&exec_out);
    let script = ["sh", "-c", "echo exec-out; exit 7"];
    fx.exec(&b, "x1", &script, &path(&exec_out))
        .await
        .expect("exec");
    fx.start(&b, "x1").await.expect("start exec");
    assert_eq!(fx.wait(&b, "x1").await.expect("wait exec"), 7);
    read_until(&mut xo, "exec-out", Duration::from_secs(5));
    let px = fx.get(&b, "x1").await.expect("get exec");
    assert_eq!((px.id.as_str(), px.exit_status), ("x1", 7));
    let dp = t
        .delete_process(req(
            &fx.ns,
            DeleteProcessRequest {
                container_id: b.clone(),
                exec_id: "x1".into(),
            },
        ))
        .await
        .expect("delete process")
        .into_inner();
    assert_eq!((dp.id.as_str(), dp.exit_status), ("x1", 7));
    assert_eq!(
        fx.get(&b, "x1").await.expect_err("exec gone").code(),
        Code::NotFound
    );
    kill_wait_delete(&fx, &b).await;

    assert_eq!(
        events_until_deleted(&events, &b).await,
        vec![
            format!("/tasks/create {b}"),
            format!("/tasks/start {b}"),
            format!("/tasks/exec-added {b}/x1"),
            format!("/tasks/exec-started {b}/x1"),
            format!("/tasks/exit {b}/x1 status=7"),
            format!("/tasks/exit {b}/{b} status=137"),
            format!("/tasks/delete {b} status=137"),
        ]
    );
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_task_is_listed_with_its_pids_and_metrics() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-pids", "");
    let mut t = fx.tasks().await;
    let ns = fx.ns.clone();
    let b = berth_tests::unique_id("dt-b");
    let bb = fx.bundle("b", LONG_RUNNING);
    let init = fx.run(&b, &bb).await;

    let pids = t
        .list_pids(req(
            &ns,
            ListPidsRequest {
                container_id: b.clone(),
            },
        ))
        .await
        .expect("pids")
        .into_inner();
    assert!(
        pids.processes.iter().any(|p| p.pid == init),
        "init {init} in {pids:?}"
    );

    let m = t
        .metrics(req(
            &ns,
            MetricsRequest {
                filters: vec![format!("id=={b}")],
            },
        ))
        .await
        .expect("metrics")
        .into_inner();
    assert_eq!(m.metrics.len(), 1, "{m:?}");
    assert_eq!(m.metrics[0].id, b);
    assert_eq!(
        m.metrics[0].data.as_ref().map(|d| d.type_url.as_str()),
        Some("io.containerd.cgroups.v1.Metrics")
    );

    let list = t
        .list(req(&ns, ListTasksRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.tasks.len(), 1);
    assert_eq!(list.tasks[0].id, b);
    kill_wait_delete(&fx, &b).await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_change_the_status_and_publish_events() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-pause", "");
    let events = fx.subscribe().await;
    let mut t = fx.tasks().await;
    let b = berth_tests::unique_id("dt-b");
    let bb = fx.bundle("b", LONG_RUNNING);
    fx.run(&b, &bb).await;
    t.pause(req(
        &fx.ns,
        PauseTaskRequest {
            container_id: b.clone(),
        },
    ))
    .await
    .expect("pause");
    assert_eq!(
        fx.get(&b, "").await.expect("get").status,
        Status::Paused as i32
    );
    t.resume(req(
        &fx.ns,
        ResumeTaskRequest {
            container_id: b.clone(),
        },
    ))
    .await
    .expect("resume");
    assert_eq!(
        fx.get(&b, "").await.expect("get").status,
        Status::Running as i32
    );
    kill_wait_delete(&fx, &b).await;

    assert_eq!(
        events_until_deleted(&events, &b).await,
        vec![
            format!("/tasks/create {b}"),
            format!("/tasks/start {b}"),
            format!("/tasks/paused {b}"),
            format!("/tasks/resumed {b}"),
            format!("/tasks/exit {b}/{b} status=137"),
            format!("/tasks/delete {b} status=137"),
        ]
    );
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_task_cannot_be_deleted_until_killed() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-kill", "");
    let b = berth_tests::unique_id("dt-b");
    let bb = fx.bundle("b", LONG_RUNNING);
    fx.run(&b, &bb).await;
    let running_delete = fx
        .delete_task(&b)
        .await
        .expect_err("cannot delete a running task");
    assert_eq!(running_delete.code(), Code::FailedPrecondition);
    assert_eq!(
        fx.get(&b, "").await.expect("still there").status,
        Status::Running as i32
    );
    fx.kill(&b, "", 9).await.expect("kill");
    assert_eq!(fx.wait(&b, "").await.expect("wait"), 137);
    let d = fx.delete_task(&b).await.expect("delete b");
    assert_eq!(d.exit_status, 137);
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_wait_survives_container_actor_panic() {
    if !berth_tests::require_root() {
        return;
    }
    // Every ListPids makes the ContainerActor panic; the supervisor restarts it from the shim's state.
    let fx = TaskFixture::new("dt-panic", "container_actor.list_pids=panic");
    let ns = fx.ns.clone();
    let id = berth_tests::unique_id("dt-p");
    let b = fx.bundle("p", LONG_RUNNING);
    let pid = fx.run(&id, &b).await;
    let waiter = fx.spawn_wait(&id, "").await;
    assert_wait_pending(&waiter, "the Wait on the running task is pending").await;
    let mut t = fx.tasks().await;
    let r = t
        .list_pids(req(
            &ns,
            ListPidsRequest {
                container_id: id.clone(),
            },
        ))
        .await;
    assert_eq!(r.expect_err("the actor panicked").code(), Code::Unavailable);
    // The restarted actor knows the task again (rebuilt from the shim), and the Wait is still pending.
    fx.wait_status(&id, Status::Running, Duration::from_secs(10))
        .await;
    assert_eq!(fx.get(&id, "").await.expect("get").pid, pid);
    assert!(
        !waiter.is_finished(),
        "the pending Wait must survive the restart"
    );
    assert!(
        fx.daemon.log().contains("restarting the container actor"),
        "supervisor restarted the actor"
    );
    fx.kill(&id, "", 9).await.expect("kill");
    assert_eq!(
        wait_answer(waiter, "the Wait pending across the restart").await,
        137
    );
    fx.kill_and_delete(&id).await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_task_resize_pty() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-tty", "");
    let ns = fx.ns.clone();
    let id = berth_tests::unique_id("dt-tty");
    // The container polls its own terminal size until the resize lands (bounded: ~1000 checks), then
    // prints it: the test never guesses how long the resize takes.
    let script = "i=0; while [ \"$(stty size)\" != '30 100' ] && [ $i -lt 1000 ]; do \
                  sleep 0.01; i=$((i+1)); done; stty size; exit 0";
    let b = fx.bundle("t", &["sh", "-c", script]);
    b.edit_spec(|s| s["process"]["terminal"] = serde_json::Value::Bool(true));
    fx.create_container(&id, &b).await;
    let out_path = fx.dir.join("tty-out");
    let mut out = fifo_reader(&out_path);
    let mut t = fx.tasks().await;
    t.create(req(
        &ns,
        CreateTaskRequest {
            container_id: id.clone(),
            stdout: path(&out_path),
            terminal: true,
            ..Default::default()
        },
    ))
    .await
    .expect("create with a terminal");
    let p = fx.get(&id, "").await.expect("get");
    assert!(p.terminal, "Get echoes terminal: {p:?}");
    let pid = fx.start(&id, "").await.expect("start");
    fx.guard.pid(pid as i32);
    t.resize_pty(req(
        &ns,
        ResizePtyRequest {
            container_id: id.clone(),
            exec_id: String::new(),
            width: 100,
            height: 30,
        },
    ))
    .await
    .expect("resize");
    assert_eq!(fx.wait(&id, "").await.expect("wait"), 0);
    read_until(&mut out, "30 100", Duration::from_secs(5));
    fx.kill_and_delete(&id).await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_mounts_from_the_request_are_mounted_and_released() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-rootfs", "");
    let ns = fx.ns.clone();
    let id = berth_tests::unique_id("dt-mnt");
    let b = fx.bundle("m", &["sh", "-c", "test -x /bin/busybox && exit 6"]);
    // Like an image-based `ctr run`: root.path is relative and the rootfs comes as mounts in Tasks.Create.
    let spec = serde_json::to_vec(&b.spec()).expect("json");
    fx.create_container_raw(&id, spec).await.expect("container");
    let task_dir = fx.task_dir(&id);
    fx.guard.mount(task_dir.join("rootfs"));
    let mut t = fx.tasks().await;
    t.create(req(
        &ns,
        CreateTaskRequest {
            container_id: id.clone(),
            rootfs: vec![berth_proto::containerd_client::types::Mount {
                r#type: "bind".into(),
                source: path(&b.rootfs),
                target: String::new(),
                options: vec!["rbind".into(), "rw".into()],
            }],
            ..Default::default()
        },
    ))
    .await
    .expect("create with rootfs mounts");
    assert!(
        berth_tests::is_mounted(&task_dir.join("rootfs")),
        "the shim mounted the rootfs"
    );
    let pid = fx.start(&id, "").await.expect("start");
    fx.guard.pid(pid as i32);
    assert_eq!(
        fx.wait(&id, "").await.expect("wait"),
        6,
        "ran from the mounted rootfs"
    );
    fx.delete_task(&id).await.expect("delete");
    assert!(!task_dir.exists(), "task dir removed");
    assert!(
        b.rootfs.join("bin/busybox").exists(),
        "the mount's source is untouched"
    );
    fx.kill_and_delete(&id).await;
    fx.guard.assert_clean();
}
