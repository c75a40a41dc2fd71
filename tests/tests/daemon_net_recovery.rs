//! Networks across berthd crashes, through gRPC: berthd SIGKILLed with attached containers keeps them
//! attached and named after its restart, and deleting them then runs DEL for each (nothing left); berthd
//! killed between the ADDs and the bundle (a create cut short) or in the middle of a delete finds and removes
//! what was left when it starts again. Root only.

use std::time::Duration;

use berth_tests::grpc::code;
use berth_tests::net_fixture::{eventually, NetFixture, NETWORKS};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_berthd_restarted_then_deletes_run_del_for_each() {
    if !berth_tests::require_root() {
        return;
    }
    let mut nf = NetFixture::new("net-crash", "");
    let sleep = ["sleep", "1000"];
    nf.run("a", &[(NETWORKS, "berth")], &sleep)
        .await
        .expect("run a");
    nf.run("b", &[(NETWORKS, "berth")], &sleep)
        .await
        .expect("run b");
    let ip_b = nf.ip_of("b").await;
    assert_eq!(nf.veths().len(), 2);

    nf.fx.daemon.kill();
    nf.fx.daemon.start_again();
    // Still attached, still named: the restart DELs nothing of live tasks.
    assert_eq!(
        nf.veths().len(),
        2,
        "a restart must not detach live containers"
    );
    let (rc, out) = nf.exec("a", "ping -c 1 -W 3 b").await;
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains(&ip_b), "{out}");
    // Names are maintained by the restarted berthd: a newcomer shows up in a's hosts file.
    nf.run("c", &[(NETWORKS, "berth")], &sleep)
        .await
        .expect("run c");
    let (rc, out) = nf.exec("a", "ping -c 1 -W 3 c").await;
    assert_eq!(rc, 0, "{out}");

    for id in ["a", "b", "c"] {
        nf.remove(id).await;
    }
    nf.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_short_after_attaching_is_cleaned_up_at_restart() {
    if !berth_tests::require_root() {
        return;
    }
    // berthd SIGKILLs itself right after the ADDs, while the bundle is held back: only berth-net's cache,
    // the netns (and maybe the store) know about the attachment; there is no task dir.
    let mut nf = NetFixture::new(
        "net-cut-create",
        "network.after_attach=exit;container_actor.create.before_bundle=sleep(3000)",
    );
    let err = nf
        .run("x", &[(NETWORKS, "berth")], &["sleep", "1000"])
        .await
        .expect_err("berthd died");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{err:?}"
    );
    assert_eq!(nf.veths().len(), 1, "the ADD had happened");
    assert_eq!(nf.cache_entries().len(), 1);
    assert!(!nf.task_dir("x").exists());
    let _ = nf.fx.daemon.kill();
    nf.write_config("");
    nf.fx.daemon.start_again();
    // Recovery DELs in the background; the task never existed.
    assert!(
        eventually(Duration::from_secs(20), || nf.leaks().is_empty()),
        "{:#?}",
        nf.leaks()
    );
    assert_eq!(code(nf.fx.get("x", "").await), Code::NotFound);
    // The id works again.
    nf.fx.create_task("x", "", "").await.expect("create again");
    nf.remove("x").await;
    assert_eq!(nf.container_leftovers("x"), Vec::<String>::new());
    nf.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_killed_while_the_shim_creates_beside_the_adds() {
    if !berth_tests::require_root() {
        return;
    }
    // The ADDs and the shim's create run side by side; berthd dies when the ADDs are done, wherever the
    // shim is. After the restart the task either exists (the runtime had created it) or not; either way it
    // can be deleted, its id used again, and nothing is left.
    let mut nf = NetFixture::new("net-cut-mid", "network.after_attach=exit");
    let _ = nf
        .run("m", &[(NETWORKS, "berth")], &["sleep", "1000"])
        .await
        .expect_err("berthd died");
    let _ = nf.fx.daemon.kill();
    nf.write_config("");
    nf.fx.daemon.start_again();
    if nf.fx.get("m", "").await.is_ok() {
        nf.remove("m").await;
    } else {
        nf.delete_container("m").await;
    }
    assert!(
        eventually(Duration::from_secs(20), || nf.leaks().is_empty()),
        "{:#?}",
        nf.leaks()
    );
    assert_eq!(nf.container_leftovers("m"), Vec::<String>::new());
    nf.run("m", &[(NETWORKS, "berth")], &["sleep", "1000"])
        .await
        .expect("the id works again");
    nf.remove("m").await;
    assert_eq!(nf.container_leftovers("m"), Vec::<String>::new());
    nf.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_cut_short_is_finished_at_restart() {
    if !berth_tests::require_root() {
        return;
    }
    let mut nf = NetFixture::new(
        "net-cut-delete",
        "container_actor.delete.after_shim_delete=exit",
    );
    nf.run("d", &[(NETWORKS, "berth")], &["sleep", "1000"])
        .await
        .expect("run");
    nf.run("e", &[(NETWORKS, "berth")], &["sleep", "1000"])
        .await
        .expect("run");
    let mut t = nf.fx.tasks().await;
    use berth_proto::containerd_client::services::v1::{DeleteTaskRequest, KillRequest};
    t.kill(berth_tests::task_fixture::req(
        &nf.fx.ns,
        KillRequest {
            container_id: "d".into(),
            signal: 9,
            ..Default::default()
        },
    ))
    .await
    .expect("kill");
    nf.fx.wait("d", "").await.expect("wait");
    let _ = t
        .delete(berth_tests::task_fixture::req(
            &nf.fx.ns,
            DeleteTaskRequest {
                container_id: "d".into(),
            },
        ))
        .await
        .expect_err("berthd died in the delete");
    let _ = nf.fx.daemon.kill();
    nf.write_config("");
    nf.fx.daemon.start_again();
    assert!(
        eventually(Duration::from_secs(20), || {
            !nf.netns_path("d").exists() && nf.veths().len() == 1
        }),
        "the restarted berthd must finish d's delete: {:#?}",
        nf.leaks()
    );
    assert_eq!(code(nf.fx.get("d", "").await), Code::NotFound);
    let (_, hosts) = nf.exec("e", "cat /etc/hosts").await;
    assert!(
        !hosts.contains("d-h"),
        "d is gone from e's hosts file: {hosts}"
    );
    nf.delete_container("d").await;
    nf.remove("e").await;
    nf.assert_no_leaks();
}
