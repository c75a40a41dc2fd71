//! berthd tasks through the containerd Tasks API: FIFO stdio, Wait, exec, kill, pause/resume, pids, metrics,
//! delete, the events a subscriber sees, error codes, and a pending Wait surviving a ContainerActor panic.
//! Root only; runs Debian's runc through berth-shim.

use berth_tests::task_fixture as support;

use std::time::Duration;

use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::v1::Status;
use support::{exec_spec, fifo_reader, read_until, req, TaskFixture};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lifecycle_with_fifos_exec_kill_pause_and_events() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-life", "");
    let events = fx.subscribe().await;
    let mut t = fx.tasks().await;
    let ns = fx.ns.clone();

    // 1. sh -c 'echo; exit 3' with FIFO stdio; Wait sent before Start.
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
        .create_task(
            &a,
            &out_path.display().to_string(),
            &err_path.display().to_string(),
        )
        .await
        .expect("create task");
    assert!(pid > 0);
    let p = fx.get(&a, "").await.expect("get");
    assert_eq!(p.status, Status::Created as i32);
    assert_eq!(p.id, a);
    assert_eq!(
        p.stdout,
        out_path.display().to_string(),
        "Get echoes the stdio paths"
    );
    let waiter = {
        let (ns, a) = (ns.clone(), a.clone());
        let mut t = fx.tasks().await;
        tokio::spawn(async move {
            t.wait(req(
                &ns,
                WaitRequest {
                    container_id: a,
                    exec_id: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner().exit_status)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    t.start(req(
        &ns,
        StartRequest {
            container_id: a.clone(),
            exec_id: String::new(),
        },
    ))
    .await
    .expect("start");
    assert_eq!(waiter.await.expect("join").expect("wait"), 3);
    assert!(read_until(&mut out, "hello-out", Duration::from_secs(5)).contains("hello-out"));
    assert!(read_until(&mut err, "hello-err", Duration::from_secs(5)).contains("hello-err"));
    // A late Wait returns at once with the kept status.
    assert_eq!(fx.wait(&a, "").await.expect("late wait"), 3);
    let p = fx.get(&a, "").await.expect("get stopped");
    assert_eq!((p.status, p.exit_status), (Status::Stopped as i32, 3));
    let d = t
        .delete(req(
            &ns,
            DeleteTaskRequest {
                container_id: a.clone(),
            },
        ))
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(d.exit_status, 3);
    assert_eq!(
        fx.get(&a, "").await.expect_err("gone").code(),
        Code::NotFound
    );
    assert!(
        !fx.daemon.state().join("tasks").join(&ns).join(&a).exists(),
        "task dir removed"
    );

    // 2. A long-running task: exec, pids, metrics, pause/resume, kill.
    let b = berth_tests::unique_id("dt-b");
    let bb = fx.bundle("b", &["sleep", "1000"]);
    let init = fx.run(&b, &bb).await;
    let exec_out = fx.dir.join("x1-stdout");
    let mut xo = fifo_reader(&exec_out);
    t.exec(req(
        &ns,
        ExecProcessRequest {
            container_id: b.clone(),
            exec_id: "x1".into(),
            stdout: exec_out.display().to_string(),
            spec: Some(exec_spec(&["sh", "-c", "echo exec-out; exit 7"])),
            ..Default::default()
        },
    ))
    .await
    .expect("exec");
    t.start(req(
        &ns,
        StartRequest {
            container_id: b.clone(),
            exec_id: "x1".into(),
        },
    ))
    .await
    .expect("start exec");
    assert_eq!(fx.wait(&b, "x1").await.expect("wait exec"), 7);
    read_until(&mut xo, "exec-out", Duration::from_secs(5));
    let px = fx.get(&b, "x1").await.expect("get exec");
    assert_eq!((px.id.as_str(), px.exit_status), ("x1", 7));
    let dp = t
        .delete_process(req(
            &ns,
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

    t.pause(req(
        &ns,
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
        &ns,
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

    let running_delete = t
        .delete(req(
            &ns,
            DeleteTaskRequest {
                container_id: b.clone(),
            },
        ))
        .await
        .expect_err("cannot delete a running task");
    assert_eq!(running_delete.code(), Code::FailedPrecondition);

    let list = t
        .list(req(&ns, ListTasksRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.tasks.len(), 1);
    assert_eq!(list.tasks[0].id, b);

    t.kill(req(
        &ns,
        KillRequest {
            container_id: b.clone(),
            signal: 9,
            ..Default::default()
        },
    ))
    .await
    .expect("kill");
    assert_eq!(fx.wait(&b, "").await.expect("wait"), 137);
    t.delete(req(
        &ns,
        DeleteTaskRequest {
            container_id: b.clone(),
        },
    ))
    .await
    .expect("delete b");

    // 3. Events in order.
    let exit_a = format!("{a}/{a} status=3");
    events
        .wait_for(Duration::from_secs(5), |ev| {
            ev.iter()
                .any(|(t, d)| t == "/tasks/delete" && d.starts_with(&b))
        })
        .await;
    let ev = events.task_events();
    let of = |id: &str| -> Vec<String> {
        ev.iter()
            .filter(|(t, d)| t.starts_with("/tasks/") && d.starts_with(id))
            .map(|(t, d)| format!("{t} {d}"))
            .collect()
    };
    assert_eq!(
        of(&a),
        vec![
            format!("/tasks/create {a}"),
            format!("/tasks/start {a}"),
            format!("/tasks/exit {exit_a}"),
            format!("/tasks/delete {a} status=3"),
        ]
    );
    assert_eq!(
        of(&b),
        vec![
            format!("/tasks/create {b}"),
            format!("/tasks/start {b}"),
            format!("/tasks/exec-added {b}/x1"),
            format!("/tasks/exec-started {b}/x1"),
            format!("/tasks/exit {b}/x1 status=7"),
            format!("/tasks/paused {b}"),
            format!("/tasks/resumed {b}"),
            format!("/tasks/exit {b}/{b} status=137"),
            format!("/tasks/delete {b} status=137"),
        ]
    );
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_errors_have_containerd_codes_and_leave_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err", "");
    let mut t = fx.tasks().await;
    let ns = fx.ns.clone();
    let tasks_dir = fx.daemon.state().join("tasks").join(&ns);
    let code = |r: Result<u32, tonic::Status>| r.expect_err("must fail").code();

    // Unknown container.
    assert_eq!(code(fx.create_task("nope", "", "").await), Code::NotFound);
    // Invalid container id.
    assert_eq!(
        code(fx.create_task("bad/id", "", "").await),
        Code::InvalidArgument
    );
    // A container whose spec is not JSON: InvalidArgument, nothing on disk.
    let bad = berth_tests::unique_id("dt-bad");
    fx.create_container_raw(&bad, b"{not json".to_vec())
        .await
        .expect("containers store any spec");
    assert_eq!(
        code(fx.create_task(&bad, "", "").await),
        Code::InvalidArgument
    );
    assert!(!tasks_dir.join(&bad).exists(), "nothing half-created");
    assert_eq!(
        fx.get(&bad, "").await.expect_err("no task").code(),
        Code::NotFound
    );
    // A stdout path that does not exist: the shim refuses; nothing left behind.
    let c = berth_tests::unique_id("dt-c");
    let bc = fx.bundle("c", &["sleep", "1000"]);
    fx.create_container(&c, &bc).await;
    let missing = fx.dir.join("no-such-dir/stdout").display().to_string();
    let r = fx.create_task(&c, &missing, "").await;
    assert!(r.is_err(), "missing stdio path must fail: {r:?}");
    assert!(
        !tasks_dir.join(&c).exists(),
        "nothing half-created after a shim failure"
    );
    assert_eq!(
        fx.get(&c, "").await.expect_err("no task").code(),
        Code::NotFound
    );

    // Now a good task; then duplicates and bad exec ids.
    fx.create_task(&c, "", "").await.expect("create");
    assert_eq!(code(fx.create_task(&c, "", "").await), Code::AlreadyExists);
    let pid = t
        .start(req(
            &ns,
            StartRequest {
                container_id: c.clone(),
                exec_id: String::new(),
            },
        ))
        .await
        .expect("start")
        .into_inner()
        .pid;
    fx.guard.pid(pid as i32);
    let exec = |id: &str| ExecProcessRequest {
        container_id: c.clone(),
        exec_id: id.into(),
        spec: Some(exec_spec(&["sleep", "1000"])),
        ..Default::default()
    };
    assert_eq!(
        t.exec(req(&ns, exec("bad id!")))
            .await
            .expect_err("invalid")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        t.exec(req(&ns, exec(""))).await.expect_err("empty").code(),
        Code::InvalidArgument
    );
    t.exec(req(&ns, exec("e1"))).await.expect("exec");
    assert_eq!(
        t.exec(req(&ns, exec("e1"))).await.expect_err("dup").code(),
        Code::AlreadyExists
    );
    let mut no_spec = exec("e2");
    no_spec.spec = None;
    assert_eq!(
        t.exec(req(&ns, no_spec)).await.expect_err("no spec").code(),
        Code::InvalidArgument
    );
    assert_eq!(
        t.start(req(
            &ns,
            StartRequest {
                container_id: c.clone(),
                exec_id: "nope".into()
            }
        ))
        .await
        .expect_err("unknown exec")
        .code(),
        Code::NotFound
    );
    assert_eq!(
        fx.wait(&c, "nope").await.expect_err("unknown exec").code(),
        Code::NotFound
    );
    assert_eq!(
        t.kill(req(
            &ns,
            KillRequest {
                container_id: "nope".into(),
                signal: 9,
                ..Default::default()
            }
        ))
        .await
        .expect_err("unknown task")
        .code(),
        Code::NotFound
    );
    assert_eq!(
        t.checkpoint(req(
            &ns,
            CheckpointTaskRequest {
                container_id: c.clone(),
                ..Default::default()
            }
        ))
        .await
        .expect_err("unimplemented")
        .code(),
        Code::Unimplemented
    );
    // No namespace header.
    let no_ns = t
        .get(tonic::Request::new(GetRequest {
            container_id: c.clone(),
            exec_id: String::new(),
        }))
        .await;
    assert_eq!(
        no_ns.expect_err("no namespace").code(),
        Code::FailedPrecondition
    );
    // Containers.Delete refuses while the task exists.
    let mut cc =
        berth_proto::containerd_client::services::v1::containers_client::ContainersClient::new(
            fx.channel().await,
        );
    let del = cc
        .delete(req(&ns, DeleteContainerRequest { id: c.clone() }))
        .await;
    assert_eq!(
        del.expect_err("has a task").code(),
        Code::FailedPrecondition
    );
    fx.kill_and_delete(&c).await;
    assert!(!tasks_dir.join(&c).exists());

    // A task created but never started can be deleted.
    let e = berth_tests::unique_id("dt-cr");
    let be = fx.bundle("e", &["sleep", "1000"]);
    fx.create_container(&e, &be).await;
    fx.create_task(&e, "", "").await.expect("create");
    assert_eq!(
        fx.get(&e, "").await.expect("get").status,
        Status::Created as i32
    );
    t.delete(req(
        &ns,
        DeleteTaskRequest {
            container_id: e.clone(),
        },
    ))
    .await
    .expect("delete a created task");
    assert_eq!(
        fx.get(&e, "").await.expect_err("gone").code(),
        Code::NotFound
    );
    assert!(!tasks_dir.join(&e).exists());

    // Unknown runtime name.
    let d = berth_tests::unique_id("dt-rt");
    let bd = fx.bundle("d", &["true"]);
    let mut spec = bd.spec();
    spec["root"]["path"] = serde_json::Value::String(bd.rootfs.display().to_string());
    let container = Container {
        id: d.clone(),
        runtime: Some(container::Runtime {
            name: "io.containerd.kata.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: berth_proto::SPEC_TYPE_URL.into(),
            value: serde_json::to_vec(&spec).expect("json"),
        }),
        ..Default::default()
    };
    cc.create(req(
        &ns,
        CreateContainerRequest {
            container: Some(container),
        },
    ))
    .await
    .expect("create");
    assert_eq!(
        code(fx.create_task(&d, "", "").await),
        Code::InvalidArgument
    );
    assert!(!tasks_dir.join(&d).exists());
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
    let b = fx.bundle("p", &["sleep", "1000"]);
    let pid = fx.run(&id, &b).await;
    let waiter = {
        let (ns, id) = (ns.clone(), id.clone());
        let mut t = fx.tasks().await;
        tokio::spawn(async move {
            t.wait(req(
                &ns,
                WaitRequest {
                    container_id: id,
                    exec_id: String::new(),
                },
            ))
            .await
            .map(|r| r.into_inner().exit_status)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    t.kill(req(
        &ns,
        KillRequest {
            container_id: id.clone(),
            signal: 9,
            ..Default::default()
        },
    ))
    .await
    .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait returns")
        .expect("join")
        .expect("wait ok");
    assert_eq!(status, 137);
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
    let b = fx.bundle("t", &["sh", "-c", "sleep 1; stty size; exit 0"]);
    b.edit_spec(|s| s["process"]["terminal"] = serde_json::Value::Bool(true));
    fx.create_container(&id, &b).await;
    let out_path = fx.dir.join("tty-out");
    let mut out = fifo_reader(&out_path);
    let mut t = fx.tasks().await;
    t.create(req(
        &ns,
        CreateTaskRequest {
            container_id: id.clone(),
            stdout: out_path.display().to_string(),
            terminal: true,
            ..Default::default()
        },
    ))
    .await
    .expect("create with a terminal");
    let p = fx.get(&id, "").await.expect("get");
    assert!(p.terminal, "Get echoes terminal: {p:?}");
    let pid = t
        .start(req(
            &ns,
            StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            },
        ))
        .await
        .expect("start")
        .into_inner()
        .pid;
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
    let task_dir = fx.daemon.state().join("tasks").join(&ns).join(&id);
    fx.guard.mount(task_dir.join("rootfs"));
    let mut t = fx.tasks().await;
    t.create(req(
        &ns,
        CreateTaskRequest {
            container_id: id.clone(),
            rootfs: vec![berth_proto::containerd_client::types::Mount {
                r#type: "bind".into(),
                source: b.rootfs.display().to_string(),
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
    let pid = t
        .start(req(
            &ns,
            StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            },
        ))
        .await
        .expect("start")
        .into_inner()
        .pid;
    fx.guard.pid(pid as i32);
    assert_eq!(
        fx.wait(&id, "").await.expect("wait"),
        6,
        "ran from the mounted rootfs"
    );
    t.delete(req(
        &ns,
        DeleteTaskRequest {
            container_id: id.clone(),
        },
    ))
    .await
    .expect("delete");
    assert!(!task_dir.exists(), "task dir removed");
    assert!(
        b.rootfs.join("bin/busybox").exists(),
        "the mount's source is untouched"
    );
    fx.kill_and_delete(&id).await;
    fx.guard.assert_clean();
}
