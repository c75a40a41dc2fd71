//! berthd task errors through the containerd Tasks API, one scenario per test: each refused request gets
//! containerd's error code, and a refused or undone create leaves no task dir and no task behind. Root only;
//! runs berth-runc through berth-shim.

use berth_tests::task_fixture as support;

use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::v1::Status;
use berth_tests::grpc::code;
use support::{exec_spec, req, TaskFixture};
use tonic::Code;

/// The container command of a task that keeps running until the test kills it.
const LONG_RUNNING: &[&str] = &["sleep", "1000"];

/// A container `name` whose task keeps running: (id, init pid), the pid registered with the guard.
async fn running(fx: &TaskFixture, name: &str) -> (String, u32) {
    let id = berth_tests::unique_id(name);
    let b = fx.bundle(name, LONG_RUNNING);
    let pid = fx.run(&id, &b).await;
    (id, pid)
}

/// Assert that the task of `id` does not exist: Get says NotFound and there is no task dir.
async fn assert_no_task(fx: &TaskFixture, id: &str, what: &str) {
    assert_eq!(
        fx.get(id, "").await.expect_err("no task").code(),
        Code::NotFound,
        "{what}"
    );
    assert!(!fx.task_dir(id).exists(), "{what}: task dir left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_of_an_unknown_or_invalid_container_id_is_refused() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-id", "");
    assert_eq!(code(fx.create_task("nope", "", "").await), Code::NotFound);
    assert_eq!(
        code(fx.create_task("bad/id", "", "").await),
        Code::InvalidArgument
    );
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_with_a_spec_that_is_not_json_is_invalid_and_leaves_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-spec", "");
    let bad = berth_tests::unique_id("dt-bad");
    fx.create_container_raw(&bad, b"{not json".to_vec())
        .await
        .expect("containers store any spec");
    assert_eq!(
        code(fx.create_task(&bad, "", "").await),
        Code::InvalidArgument
    );
    assert_no_task(&fx, &bad, "nothing half-created").await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_with_a_missing_stdout_path_fails_and_leaves_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-stdio", "");
    let c = berth_tests::unique_id("dt-c");
    let bc = fx.bundle("c", LONG_RUNNING);
    fx.create_container(&c, &bc).await;
    let missing = fx.dir.join("no-such-dir/stdout").display().to_string();
    let r = fx.create_task(&c, &missing, "").await;
    assert!(r.is_err(), "missing stdio path must fail: {r:?}");
    assert_no_task(&fx, &c, "nothing half-created after a shim failure").await;
    // Nothing of the failed create is in the way of a good one.
    fx.create_task(&c, "", "").await.expect("create");
    fx.kill_and_delete(&c).await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_task_and_bad_exec_requests_get_containerd_codes() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-exec", "");
    let mut t = fx.tasks().await;
    let ns = fx.ns.clone();
    let c = berth_tests::unique_id("dt-c");
    let bc = fx.bundle("c", LONG_RUNNING);
    fx.create_container(&c, &bc).await;
    fx.create_task(&c, "", "").await.expect("create");
    assert_eq!(code(fx.create_task(&c, "", "").await), Code::AlreadyExists);
    let pid = fx.start(&c, "").await.expect("start");
    fx.guard.pid(pid as i32);
    assert_eq!(
        code(fx.create_task(&c, "", "").await),
        Code::AlreadyExists,
        "a second create of a running task"
    );
    let exec = |id: &str| ExecProcessRequest {
        container_id: c.clone(),
        exec_id: id.into(),
        spec: Some(exec_spec(LONG_RUNNING)),
        ..Default::default()
    };
    assert_eq!(
        code(t.exec(req(&ns, exec("bad id!"))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(t.exec(req(&ns, exec(""))).await),
        Code::InvalidArgument
    );
    t.exec(req(&ns, exec("e1"))).await.expect("exec");
    assert_eq!(
        code(t.exec(req(&ns, exec("e1"))).await),
        Code::AlreadyExists
    );
    let mut no_spec = exec("e2");
    no_spec.spec = None;
    assert_eq!(code(t.exec(req(&ns, no_spec)).await), Code::InvalidArgument);
    assert_eq!(code(fx.start(&c, "nope").await), Code::NotFound);
    assert_eq!(code(fx.wait(&c, "nope").await), Code::NotFound);
    fx.kill_and_delete(&c).await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_missing_namespace_and_checkpoint_get_containerd_codes() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-codes", "");
    let mut t = fx.tasks().await;
    let (c, _) = running(&fx, "dt-c").await;
    assert_eq!(code(fx.kill("nope", "", 9).await), Code::NotFound);
    let checkpoint = t
        .checkpoint(req(
            &fx.ns,
            CheckpointTaskRequest {
                container_id: c.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(checkpoint), Code::Unimplemented);
    // No namespace header, about a task that exists in the fixture's namespace.
    let no_ns = t
        .get(tonic::Request::new(GetRequest {
            container_id: c.clone(),
            exec_id: String::new(),
        }))
        .await;
    assert_eq!(code(no_ns), Code::FailedPrecondition);
    fx.kill_and_delete(&c).await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_delete_is_refused_while_the_task_exists() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-cdel", "");
    let (c, _) = running(&fx, "dt-c").await;
    let mut cc = ContainersClient::new(fx.channel().await);
    let del = cc
        .delete(req(&fx.ns, DeleteContainerRequest { id: c.clone() }))
        .await;
    assert_eq!(code(del), Code::FailedPrecondition);
    assert_eq!(
        fx.get(&c, "").await.expect("the task is untouched").status,
        Status::Running as i32
    );
    fx.kill_and_delete(&c).await;
    assert!(!fx.task_dir(&c).exists());
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_but_never_started_task_can_be_deleted() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-created", "");
    let e = berth_tests::unique_id("dt-cr");
    let be = fx.bundle("e", LONG_RUNNING);
    fx.create_container(&e, &be).await;
    fx.create_task(&e, "", "").await.expect("create");
    assert_eq!(
        fx.get(&e, "").await.expect("get").status,
        Status::Created as i32
    );
    fx.delete_task(&e).await.expect("delete a created task");
    assert_no_task(&fx, &e, "the deleted task is gone").await;
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_of_an_unknown_runtime_is_invalid_and_leaves_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-err-rt", "");
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
    berth_tests::grpc::create(
        &mut ContainersClient::new(fx.channel().await),
        &fx.ns,
        container,
    )
    .await;
    assert_eq!(
        code(fx.create_task(&d, "", "").await),
        Code::InvalidArgument
    );
    assert!(!fx.task_dir(&d).exists());
    fx.guard.assert_clean();
}
