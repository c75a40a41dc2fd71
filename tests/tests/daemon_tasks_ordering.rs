//! berthd's task layer under concurrency and failure: verbs of one task never interleave (concurrent Kill and
//! Delete, two Starts), a ContainerActor that keeps panicking is given up on with a clear error, a
//! TaskSupervisor panic is recovered from, exactly one `/tasks/delete` per task when the shim is slow, killed,
//! or berthd dies in the middle of a delete, and a dead redb writer thread is restarted. Root only.

use std::time::{Duration, Instant};

use berth_proto::berth::journal_client::JournalClient;
use berth_proto::berth::{JournalEvent, JournalSubscribeRequest};
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::v1::Status;
use berth_tests::grpc::code;
use berth_tests::task_fixture::{describe, req, write_config, TaskFixture};
use tonic::Code;

/// The task events of `id` journaled so far, as `topic describe(event)`, read from the oldest event until none
/// has come for `quiet` (long enough for a duplicate to show up).
async fn task_journal(fx: &TaskFixture, id: &str, quiet: Duration) -> Vec<String> {
    let mut j = JournalClient::new(fx.channel().await);
    let mut stream = j
        .subscribe(req(
            &fx.ns,
            JournalSubscribeRequest {
                filters: vec![format!(
                    "namespace=={},topic~=^/tasks/,event.container_id=={id}",
                    fx.ns
                )],
                after_seq: 0,
                from_oldest: true,
            },
        ))
        .await
        .expect("journal subscribe")
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Ok(Some(ev))) = tokio::time::timeout(quiet, stream.message()).await {
        let ev: JournalEvent = ev;
        out.push(format!("{} {}", ev.topic, describe(ev.event.as_ref())));
    }
    out
}

fn count(events: &[String], topic: &str) -> usize {
    events
        .iter()
        .filter(|e| e.split(' ').next() == Some(topic))
        .count()
}

/// Exactly one exit then exactly one delete, in that order.
fn assert_one_exit_then_one_delete(events: &[String]) {
    assert_eq!(count(events, "/tasks/exit"), 1, "one exit: {events:#?}");
    assert_eq!(count(events, "/tasks/delete"), 1, "one delete: {events:#?}");
    let exit = events.iter().position(|e| e.starts_with("/tasks/exit "));
    let delete = events.iter().position(|e| e.starts_with("/tasks/delete "));
    assert!(exit < delete, "exit before delete: {events:#?}");
}

async fn delete_task(fx: &TaskFixture, id: &str) -> Result<DeleteResponse, tonic::Status> {
    let mut t = fx.tasks().await;
    t.delete(req(
        &fx.ns,
        DeleteTaskRequest {
            container_id: id.into(),
        },
    ))
    .await
    .map(|r| r.into_inner())
}

async fn kill(fx: &TaskFixture, id: &str, signal: u32) -> Result<(), tonic::Status> {
    let mut t = fx.tasks().await;
    t.kill(req(
        &fx.ns,
        KillRequest {
            container_id: id.into(),
            signal,
            ..Default::default()
        },
    ))
    .await
    .map(|_| ())
}

async fn start(fx: &TaskFixture, id: &str) -> Result<u32, tonic::Status> {
    let mut t = fx.tasks().await;
    t.start(req(
        &fx.ns,
        StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        },
    ))
    .await
    .map(|r| r.into_inner().pid)
}

async fn list_pids(fx: &TaskFixture, id: &str) -> Result<usize, tonic::Status> {
    let mut t = fx.tasks().await;
    t.list_pids(req(
        &fx.ns,
        ListPidsRequest {
            container_id: id.into(),
        },
    ))
    .await
    .map(|r| r.into_inner().processes.len())
}

async fn delete_container(fx: &TaskFixture, id: &str) -> Result<(), tonic::Status> {
    let mut c = ContainersClient::new(fx.channel().await);
    c.delete(req(&fx.ns, DeleteContainerRequest { id: id.into() }))
        .await
        .map(|_| ())
}

/// Poll `f` until it returns true, or fail naming `what`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_kill_and_delete_never_leave_a_half_state() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-killdel", "");
    for round in 0..4 {
        let id = berth_tests::unique_id(&format!("dt-kd{round}"));
        let b = fx.bundle(&format!("kd{round}"), &["sleep", "1000"]);
        fx.run(&id, &b).await;
        let (killed, deleted) = tokio::join!(kill(&fx, &id, 9), delete_task(&fx, &id));
        killed.expect("kill of a running task succeeds");
        match deleted {
            // Delete ran first and saw a running task: a clean refusal, the task is untouched.
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                assert_eq!(fx.wait(&id, "").await.expect("wait"), 137);
                let p = fx.get(&id, "").await.expect("still there");
                assert_eq!((p.status, p.exit_status), (Status::Stopped as i32, 137));
                delete_task(&fx, &id).await.expect("delete after the exit");
            }
            // Delete ran after the exit was seen: the task is gone with its real status.
            Ok(d) => assert_eq!(d.exit_status, 137),
        }
        assert_eq!(code(fx.get(&id, "").await), Code::NotFound);
        let events = task_journal(&fx, &id, Duration::from_millis(300)).await;
        assert_one_exit_then_one_delete(&events);
        delete_container(&fx, &id).await.expect("container delete");
    }
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_starts_one_wins_the_other_gets_a_clean_error() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dt-startstart", "");
    let id = berth_tests::unique_id("dt-ss");
    let b = fx.bundle("ss", &["sleep", "1000"]);
    fx.create_container(&id, &b).await;
    fx.create_task(&id, "", "").await.expect("create");
    let (a, c) = tokio::join!(start(&fx, &id), start(&fx, &id));
    let (winner, loser) = match (a, c) {
        (Ok(pid), Err(s)) | (Err(s), Ok(pid)) => (pid, s),
        other => panic!("exactly one Start must win: {other:?}"),
    };
    fx.guard.pid(winner as i32);
    assert_eq!(loser.code(), Code::FailedPrecondition, "{loser:?}");
    assert!(
        loser.message().contains("RUNNING"),
        "the loser is told why: {loser:?}"
    );
    let p = fx.get(&id, "").await.expect("get");
    assert_eq!((p.pid, p.status), (winner, Status::Running as i32));
    fx.kill_and_delete(&id).await;
    let events = task_journal(&fx, &id, Duration::from_millis(300)).await;
    assert_eq!(count(&events, "/tasks/start"), 1, "{events:#?}");
    assert_one_exit_then_one_delete(&events);
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_actor_is_given_up_on_after_its_restart_limit() {
    if !berth_tests::require_root() {
        return;
    }
    // Every ListPids makes the ContainerActor panic; the supervisor restarts it 5 times a minute at most.
    let fx = TaskFixture::new("dt-giveup", "container_actor.list_pids=panic");
    let id = berth_tests::unique_id("dt-gu");
    let b = fx.bundle("gu", &["sleep", "1000"]);
    let pid = fx.run(&id, &b).await;
    for i in 0..6 {
        let r = list_pids(&fx, &id).await;
        assert_eq!(
            code(r),
            Code::Unavailable,
            "panic {i} is reported as Unavailable"
        );
        if i < 5 {
            // The restarted actor rebuilt the task from its shim.
            until("the restarted actor", Duration::from_secs(10), || async {
                fx.get(&id, "").await.map(|p| p.pid).ok() == Some(pid)
            })
            .await;
        }
    }
    // Past the limit: a clear error naming the task, not "retry" forever, and no dead actor behind it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match fx.get(&id, "").await {
            Err(s) if s.code() == Code::Internal => break s,
            other => assert!(
                Instant::now() < deadline,
                "the task was never given up on: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        err.message().contains(&id) && err.message().contains("gave up"),
        "{err:?}"
    );
    assert_eq!(code(kill(&fx, &id, 9).await), Code::Internal);
    let mut t = fx.tasks().await;
    let listed = t
        .list(req(&fx.ns, ListTasksRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .tasks;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, Status::Unknown as i32, "{listed:?}");
    assert_eq!(
        code(delete_container(&fx, &id).await),
        Code::FailedPrecondition,
        "the container still has a task"
    );
    assert!(fx
        .daemon
        .log()
        .contains("task abandoned until berthd restarts"));
    // The fixture's guard kills the shim and the container.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_supervisor_panic_is_recovered() {
    if !berth_tests::require_root() {
        return;
    }
    // The supervisor panics once, on the first actor stop it hears about (A's delete).
    let fx = TaskFixture::new("dt-suppanic", "task_supervisor.child_stopped=1*panic");
    let a = berth_tests::unique_id("dt-spa");
    let b = berth_tests::unique_id("dt-spb");
    let c = berth_tests::unique_id("dt-spc");
    let ba = fx.bundle("a", &["sleep", "1000"]);
    let bb = fx.bundle("b", &["sleep", "1000"]);
    let bc = fx.bundle("c", &["sh", "-c", "exit 4"]);
    fx.run(&a, &ba).await;
    fx.run(&b, &bb).await;
    fx.kill_and_delete(&a).await;
    until(
        "the supervisor's panic",
        Duration::from_secs(10),
        || async { fx.daemon.log().contains("task supervisor panicked") },
    )
    .await;
    // A new supervisor serves: a new task runs, the old one still answers and can be deleted, and the
    // deleted one left no entry behind.
    fx.run(&c, &bc).await;
    assert_eq!(fx.wait(&c, "").await.expect("wait c"), 4);
    let p = fx.get(&b, "").await.expect("b survives");
    assert_eq!(p.status, Status::Running as i32);
    assert_eq!(code(fx.get(&a, "").await), Code::NotFound);
    for id in [&b, &c] {
        fx.kill_and_delete(id).await;
        assert_eq!(code(fx.get(id, "").await), Code::NotFound);
    }
    assert!(
        fx.daemon.log().contains("restarting child"),
        "the root restarted the task supervisor"
    );
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delete_event_when_the_shims_delete_event_is_late() {
    if !berth_tests::require_root() {
        return;
    }
    // The pump holds the shim's TaskDeleted back for 4 s; Delete waits 2 s, then finishes on its own.
    let fx = TaskFixture::new("dt-slowdel", "shim_actor.before_journal_delete=sleep(4000)");
    let id = berth_tests::unique_id("dt-sd");
    let b = fx.bundle("sd", &["sh", "-c", "exit 3"]);
    fx.run(&id, &b).await;
    assert_eq!(fx.wait(&id, "").await.expect("wait"), 3);
    let d = delete_task(&fx, &id).await.expect("delete");
    assert_eq!(d.exit_status, 3);
    assert_eq!(code(fx.get(&id, "").await), Code::NotFound);
    // Long enough for the held-back event to have been journaled too, had anything let it through.
    let events = task_journal(&fx, &id, Duration::from_secs(5)).await;
    assert_one_exit_then_one_delete(&events);
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("/tasks/delete ") && e.contains("status=3")),
        "the delete carries the real status: {events:#?}"
    );
    delete_container(&fx, &id).await.expect("container delete");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delete_event_when_the_shim_is_killed_during_delete() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new(
        "dt-killdelshim",
        "shim_actor.before_journal_delete=sleep(4000)",
    );
    let id = berth_tests::unique_id("dt-ks");
    let b = fx.bundle("ks", &["sh", "-c", "exit 6"]);
    fx.run(&id, &b).await;
    assert_eq!(fx.wait(&id, "").await.expect("wait"), 6);
    let dir = fx.daemon.state().join("tasks").join(&fx.ns).join(&id);
    let shim_pid: i32 = std::fs::read_to_string(dir.join("shim.pid"))
        .expect("shim pid")
        .trim()
        .parse()
        .expect("pid");
    let deleting = {
        let (ns, id) = (fx.ns.clone(), id.clone());
        let mut t = fx.tasks().await;
        tokio::spawn(async move {
            t.delete(req(&ns, DeleteTaskRequest { container_id: id }))
                .await
                .map(|r| r.into_inner().exit_status)
        })
    };
    // The shim has deleted the container (and journaled TaskDeleted on its disk): kill it before berthd
    // has its event.
    until("the shim's delete", Duration::from_secs(10), || async {
        dir.join("init.deleted").exists()
    })
    .await;
    berth_tests::proc::kill(shim_pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(deleting.await.expect("join").expect("delete succeeds"), 6);
    let events = task_journal(&fx, &id, Duration::from_secs(1)).await;
    assert_one_exit_then_one_delete(&events);
    assert!(!dir.exists(), "task dir removed");
    delete_container(&fx, &id).await.expect("container delete");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_killed_mid_delete_finishes_it_with_one_delete_event() {
    if !berth_tests::require_root() {
        return;
    }
    // berthd dies (SIGKILL) right after the shim deleted the container.
    let mut fx = TaskFixture::new("dt-middel", "container_actor.delete.after_shim_delete=exit");
    let id = berth_tests::unique_id("dt-md");
    let b = fx.bundle("md", &["sh", "-c", "exit 2"]);
    fx.run(&id, &b).await;
    assert_eq!(fx.wait(&id, "").await.expect("wait"), 2);
    assert!(
        delete_task(&fx, &id).await.is_err(),
        "berthd died mid-delete"
    );
    fx.daemon.kill();
    write_config(&fx.config_path, "");
    fx.daemon.start_again();
    // The restarted berthd finished the delete: no task, no task dir, one exit and one delete.
    let dir = fx.daemon.state().join("tasks").join(&fx.ns).join(&id);
    until(
        "the interrupted delete to finish",
        Duration::from_secs(10),
        || async { !dir.exists() },
    )
    .await;
    assert_eq!(code(fx.get(&id, "").await), Code::NotFound);
    let events = task_journal(&fx, &id, Duration::from_secs(1)).await;
    assert_one_exit_then_one_delete(&events);
    delete_container(&fx, &id).await.expect("container delete");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redb_writer_thread_is_restarted() {
    if !berth_tests::require_root() {
        return;
    }
    // The first commit of each database panics on its writer thread, which dies.
    let fx = TaskFixture::new(
        "dt-writer",
        "store.before_commit=1*panic;events.before_commit=1*panic",
    );
    let mut n = NamespacesClient::new(fx.channel().await);
    let create = |name: String| Namespace {
        name,
        labels: Default::default(),
    };
    // The first metadata write fails with the thread; after the watcher restarts it, writes work again.
    let first = berth_tests::unique_id("dt-wa");
    let r = n
        .create(req(
            &fx.ns,
            CreateNamespaceRequest {
                namespace: Some(create(first.clone())),
            },
        ))
        .await;
    assert_eq!(code(r), Code::Unavailable);
    until(
        "the store writer's restart",
        Duration::from_secs(10),
        || async {
            fx.daemon
                .log()
                .matches("redb writer thread restarted")
                .count()
                >= 1
        },
    )
    .await;
    // The retry writes the record; its event is the journal writer's first commit, which kills that thread.
    let mut retried = Err(tonic::Status::unknown("not tried"));
    for _ in 0..50 {
        retried = n
            .create(req(
                &fx.ns,
                CreateNamespaceRequest {
                    namespace: Some(create(first.clone())),
                },
            ))
            .await;
        if retried.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    retried.expect("metadata writes work again");
    until(
        "the journal writer's restart",
        Duration::from_secs(10),
        || async {
            fx.daemon
                .log()
                .matches("event journal writer thread restarted")
                .count()
                >= 1
        },
    )
    .await;
    // Later events are journaled and reach subscribers.
    let second = berth_tests::unique_id("dt-wb");
    n.create(req(
        &fx.ns,
        CreateNamespaceRequest {
            namespace: Some(create(second.clone())),
        },
    ))
    .await
    .expect("create after both restarts");
    let mut j = JournalClient::new(fx.channel().await);
    let mut stream = j
        .subscribe(req(
            &fx.ns,
            JournalSubscribeRequest {
                filters: vec![format!("topic==/namespaces/create,event.name=={second}")],
                after_seq: 0,
                from_oldest: true,
            },
        ))
        .await
        .expect("journal")
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the event arrives")
        .expect("stream")
        .expect("an event");
    assert_eq!(ev.topic, "/namespaces/create");
    for name in [first, second] {
        n.delete(req(&fx.ns, DeleteNamespaceRequest { name }))
            .await
            .expect("delete namespace");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_known_as_soon_as_a_restarted_berthd_answers() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = TaskFixture::new("dt-known", "");
    let ids: Vec<String> = (0..10)
        .map(|i| berth_tests::unique_id(&format!("dt-kn{i}")))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let b = fx.bundle(&format!("kn{i}"), &["sleep", "1000"]);
        fx.run(id, &b).await;
    }
    fx.daemon.kill();
    // A slow scan of the task directories must not make tasks look absent meanwhile.
    write_config(&fx.config_path, "task_supervisor.scan=sleep(700)");
    fx.daemon.start_again();
    // The very first calls after the socket answers: every task exists (its actor may still be rebuilding).
    for id in &ids {
        let p = fx.get(id, "").await.expect("known right after the restart");
        assert_eq!(p.status, Status::Running as i32, "{id}");
    }
    for id in &ids {
        fx.kill_and_delete(id).await;
    }
    fx.guard.assert_clean();
}
