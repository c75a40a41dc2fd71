//! The PullSupervisor restarts a PullActor whose job panicked (a failpoint in the job): once, and the pull
//! still succeeds for its client; always, and after the restart limit the client gets an error naming the
//! reference and the failure, and berthd keeps serving pulls of other references. Root only (unpack).

use berth_tests::oci_layout::busybox_layout;
use berth_tests::registry::Registry;
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_pull_is_restarted_within_its_limit() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dp-sup-once", "pull.job=1*panic");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    registry.push_oci_layout(&layout.path, "busybox:latest");
    let reference = registry.reference("busybox:latest");
    let out = Transfer::new(fx.channel().await, &fx.ns)
        .pull(&reference, &PullOptions::default())
        .await
        .expect("the restarted pull succeeds");
    assert_eq!(out.saved(), vec![reference]);
    assert!(
        fx.daemon.log().contains("restarting a failed pull"),
        "the job panicked once and was restarted"
    );
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_keeps_failing_gets_a_clear_error() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dp-sup-always", "pull.job=4*panic");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    registry.push_oci_layout(&layout.path, "busybox:latest");
    let reference = registry.reference("busybox:latest");
    let t = Transfer::new(fx.channel().await, &fx.ns);
    let err = t
        .pull(&reference, &PullOptions::default())
        .await
        .expect_err("past the restart limit");
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(
        err.message().contains(&reference) && err.message().contains("failpoint pull.job"),
        "names the reference and the failure: {err:?}"
    );
    // The failpoint is used up: berthd pulls again.
    t.pull(&reference, &PullOptions::default())
        .await
        .expect("a later pull works");
    fx.guard.assert_clean();
}
