//! Network failures through gRPC: a broken conflist, a missing plugin, an exhausted subnet and a plugin's own
//! CNI error each give one clear error naming the network and the plugin (with the plugin's code and
//! message), the task is not created, and nothing is left behind. Root only.

use berth_tests::grpc::code;
use berth_tests::net_fixture::{NetFixture, NETWORKS};
use serde_json::json;
use tonic::Code;

/// Run `id` on `network`, expecting Tasks.Create to fail; checks the task does not exist and nothing of it
/// is left; returns the error.
async fn refused(nf: &NetFixture, id: &str, network: &str) -> tonic::Status {
    let err = nf
        .run(id, &[(NETWORKS, network)], &["sleep", "1000"])
        .await
        .expect_err("create must fail");
    assert_eq!(code(nf.fx.get(id, "").await), Code::NotFound, "{err:?}");
    let left = nf.container_leftovers(id);
    assert!(left.is_empty(), "after {err:?}: {left:?}");
    nf.delete_container(id).await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_configs_missing_plugins_and_plugin_errors_are_clear_and_leave_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-errors", "");

    // A conflist that is not JSON: the network cannot be found, and the error names the broken file.
    std::fs::create_dir_all(&nf.conf_dir).expect("conf dir");
    std::fs::write(
        nf.conf_dir.join("20-broken.conflist"),
        "{ \"name\": \"broken\", ",
    )
    .expect("write");
    let e = refused(&nf, "c-broken", "broken").await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("network \"broken\"") && e.message().contains("20-broken.conflist"),
        "{}",
        e.message()
    );

    // A valid conflist whose plugin config is wrong: the bridge plugin's own error.
    nf.write_conflist(
        "30-badconf.conflist",
        &json!({"cniVersion": "1.0.0", "name": "badconf", "plugins": [
            {"type": "bridge", "bridge": nf.bridge, "ipam": {"type": "host-local",
             "ranges": [[{"subnet": "not-a-subnet"}]], "dataDir": nf.ipam_dir}}]}),
    );
    let e = refused(&nf, "c-badconf", "badconf").await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("network badconf") && e.message().contains("plugin bridge"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("CNI error"), "{}", e.message());
    // The bridge plugin cleaned up after its failed ADD, but its DEL cannot parse that config either: berth-net
    // keeps the attachment's cache entry as a DEL still owed (berthd retries it at every start) and the error
    // says so. Nothing is left on the host.
    assert!(e.message().contains("stays cached"), "{}", e.message());
    let owed = nf.cache_entries();
    assert_eq!(owed.len(), 1, "{owed:?}");
    std::fs::remove_file(&owed[0]).expect("remove the owed entry");
    nf.assert_no_leaks();

    // A chain naming a plugin that is not installed: bridge is undone, the error names the missing one.
    let mut chain = nf.bridge_plugin(None);
    chain["ipam"]["dataDir"] = json!(nf.ipam_dir);
    nf.write_conflist(
        "40-missing.conflist",
        &json!({"cniVersion": "1.0.0", "name": "missing",
                "plugins": [chain, {"type": "no-such-plugin"}]}),
    );
    let e = refused(&nf, "c-missing", "missing").await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("network missing") && e.message().contains("no-such-plugin"),
        "{}",
        e.message()
    );
    nf.assert_no_leaks();

    // A plugin that reports a CNI error: its code and message reach the client.
    nf.write_plugin(
        "fails",
        r#"cat >/dev/null
case "$CNI_COMMAND" in
  ADD) echo '{"cniVersion":"1.0.0","code":142,"msg":"the fabric is down","details":"link 7"}'; exit 1;;
  *) exit 0;;
esac
"#,
    );
    nf.write_conflist(
        "50-fails.conflist",
        &json!({"cniVersion": "1.0.0", "name": "fails", "plugins": [{"type": "fails"}]}),
    );
    let e = refused(&nf, "c-fails", "fails").await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for needle in [
        "network fails",
        "plugin fails",
        "CNI error 142",
        "the fabric is down",
        "link 7",
    ] {
        assert!(
            e.message().contains(needle),
            "{needle:?} not in {}",
            e.message()
        );
    }
    // CNI's "try again later" is Unavailable.
    nf.write_plugin(
        "busy",
        r#"cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && { echo '{"cniVersion":"1.0.0","code":11,"msg":"busy, retry"}'; exit 1; }
exit 0
"#,
    );
    nf.write_conflist(
        "60-busy.conflist",
        &json!({"cniVersion": "1.0.0", "name": "busy", "plugins": [{"type": "busy"}]}),
    );
    assert_eq!(
        refused(&nf, "c-busy", "busy").await.code(),
        Code::Unavailable
    );
    nf.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_subnet_refuses_the_next_container_and_leaves_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-full", "");
    // A /30: the gateway takes .1, one container gets .2, there is nothing for a second one.
    let tiny = format!("{}0/30", nf.prefix);
    nf.write_conflist(
        "10-tiny.conflist",
        &json!({"cniVersion": "1.0.0", "name": "tiny", "plugins": [nf.bridge_plugin(Some(&tiny))]}),
    );
    nf.run("first", &[(NETWORKS, "tiny")], &["sleep", "1000"])
        .await
        .expect("the first fits");
    assert_eq!(nf.ipam_reservations().len(), 1);
    let e = refused(&nf, "second", "tiny").await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("network tiny") && e.message().contains("plugin bridge"),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("no IP addresses available"),
        "{}",
        e.message()
    );
    assert_eq!(nf.veths().len(), 1, "only the first container's veth");
    assert_eq!(nf.ipam_reservations().len(), 1);
    assert_eq!(nf.cache_entries().len(), 1);
    nf.remove("first").await;
    nf.assert_no_leaks();
}
