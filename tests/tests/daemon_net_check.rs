//! `berth.v1.Networks.Check`: CNI CHECK of a running container's attachments on demand. A healthy
//! attachment checks clean; one whose interface lost its address fails with the plugin's own CNI error;
//! unknown containers are NotFound and a container without networks checks nothing. Root only.

use berth_proto::berth::networks_client::NetworksClient;
use berth_proto::berth::NetworkCheckRequest;
use berth_tests::grpc::code;
use berth_tests::net_fixture::{sh, NetFixture, NETWORKS};
use berth_tests::task_fixture::req;
use tonic::Code;

async fn check(nf: &NetFixture, id: &str) -> Result<Vec<String>, tonic::Status> {
    let mut c = NetworksClient::new(nf.fx.channel().await);
    c.check(req(
        &nf.fx.ns,
        NetworkCheckRequest {
            container_id: id.into(),
        },
    ))
    .await
    .map(|r| r.into_inner().networks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_healthy_attachment_and_reports_the_plugins_error_on_a_broken_one() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-check", "");
    let sleep = ["sleep", "1000"];
    nf.run("c1", &[(NETWORKS, "berth")], &sleep)
        .await
        .expect("run c1");
    assert_eq!(check(&nf, "c1").await.expect("check"), vec!["berth"]);

    // No networks (the label says none): nothing to check, and no error.
    nf.run("c2", &[(NETWORKS, "none")], &sleep)
        .await
        .expect("run c2");
    assert_eq!(check(&nf, "c2").await.expect("check"), Vec::<String>::new());
    assert_eq!(code(check(&nf, "no-such").await), Code::NotFound);

    // Take the container's address away behind the plugins' back: the bridge plugin's CHECK notices.
    let netns = nf.netns_path("c1").display().to_string();
    let (ok, out) = sh(&[
        "nsenter",
        &format!("--net={netns}"),
        "ip",
        "addr",
        "flush",
        "dev",
        "eth0",
    ]);
    assert!(ok, "{out}");
    let e = check(&nf, "c1")
        .await
        .expect_err("a broken attachment fails CHECK");
    assert!(
        e.message().contains("berth") && e.message().contains("bridge"),
        "the error names the network and the plugin: {e:?}"
    );

    // DEL still cleans the broken attachment up.
    nf.remove("c1").await;
    nf.remove("c2").await;
    nf.assert_no_leaks();
}
