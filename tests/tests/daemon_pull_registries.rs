//! Transfer pulls from registries that are not just plain HTTP: Basic auth (docker-registry's htpasswd, the
//! credentials answered on the client's auth stream as ctr 2.x does), TLS with a CA the test makes (named in
//! hosts.toml `ca`), a bearer-token registry (a proxy with its own token realm), a multi-platform index
//! pushed with `skopeo copy --all` resolving to this host's platform, a pull by digest, and a mirror from
//! hosts.toml in front of a registry that does not exist (named by the request, then by berthd's
//! `registry_hosts_dir`). Root only (the pulls unpack).

use std::process::Command;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::content_client::ContentClient;
use berth_proto::containerd_client::services::v1::InfoRequest;
use berth_tests::oci_layout::{busybox_layout, busybox_multi_platform_layout, media};
use berth_tests::registry::Registry;
use berth_tests::regproxy::{Bearer, Proxy};
use berth_tests::regtls::{htpasswd, make_certs, write_hosts, RegistryProc};
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};
use berth_tests::{run_timeout, tool};

/// `skopeo copy [--all] oci:LAYOUT:latest docker://DEST` (no TLS verification; `creds` for the destination).
fn skopeo_push(layout: &std::path::Path, dest: &str, all: bool, creds: Option<&str>) -> bool {
    let Some(skopeo) = tool("skopeo") else {
        return false;
    };
    let mut c = Command::new(skopeo);
    c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if all {
        c.arg("--all");
    }
    if let Some(cr) = creds {
        c.args(["--dest-creds", cr]);
    }
    c.arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{dest}"));
    let out = run_timeout(&mut c, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// `ctr run --rm IMAGE ID sh -c SCRIPT`'s stdout.
fn run_in(fx: &TaskFixture, image: &str, script: &str) -> String {
    let id = berth_tests::unique_id("dpr-run");
    let mut c = fx.daemon.ctr();
    c.arg("-n")
        .arg(&fx.ns)
        .args(["run", "--rm", image, &id, "sh", "-c", script]);
    let out = run_timeout(&mut c, Duration::from_secs(120));
    assert!(out.status.success(), "ctr run {image}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_credentials_come_from_the_auth_stream() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dpr-basic", "");
    let Some(file) = htpasswd(fx.dir.path(), "alice", "s3cret") else {
        return;
    };
    let Some(reg) = RegistryProc::start(&fx.dir.subdir("reg"), None, Some(&file)) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    let reference = format!("{}/busybox:latest", reg.addr);
    if !skopeo_push(&layout.path, &reference, false, Some("alice:s3cret")) {
        return;
    }
    let t = Transfer::new(fx.channel().await, &fx.ns);
    // No credentials: the registry refuses, and the client was asked for some.
    let err = t
        .pull(&reference, &PullOptions::default())
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&reg.addr), "{err:?}");
    // Wrong ones.
    let wrong = PullOptions {
        credentials: Some(("alice".into(), "nope".into())),
        ..Default::default()
    };
    let err = t
        .pull(&reference, &wrong)
        .await
        .expect_err("wrong credentials");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let good = PullOptions {
        credentials: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    };
    let out = t
        .pull(&reference, &good)
        .await
        .expect("pull with credentials");
    assert_eq!(
        out.auth_requests.len(),
        1,
        "asked once: {:?}",
        out.auth_requests
    );
    assert_eq!(out.auth_requests[0].host, reg.addr);
    assert_eq!(out.auth_requests[0].reference, reference);
    assert_eq!(run_in(&fx, &reference, "echo ok"), "ok\n");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_from_hosts_toml() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dpr-tls", "");
    let Some(certs) = make_certs(&fx.dir.subdir("certs")) else {
        return;
    };
    let Some(reg) =
        RegistryProc::start(&fx.dir.subdir("reg"), Some((&certs.cert, &certs.key)), None)
    else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    let reference = format!("{}/busybox:latest", reg.addr);
    if !skopeo_push(&layout.path, &reference, false, None) {
        return;
    }
    let t = Transfer::new(fx.channel().await, &fx.ns);
    let tls = PullOptions {
        plain_http: false,
        ..Default::default()
    };
    // Without the CA the certificate is refused, and the error says how to fix it.
    let err = t.pull(&reference, &tls).await.expect_err("unknown CA");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("TLS"), "{err:?}");
    let hosts = fx.dir.subdir("certs.d");
    write_hosts(
        &hosts,
        &reg.addr,
        &format!(
            "server = \"https://{}\"\nca = {:?}\n",
            reg.addr,
            certs.ca.display().to_string()
        ),
    );
    let with_ca = PullOptions {
        plain_http: false,
        hosts_dir: Some(hosts.display().to_string()),
        ..Default::default()
    };
    t.pull(&reference, &with_ca).await.expect("pull over TLS");
    assert_eq!(run_in(&fx, &reference, "echo tls"), "tls\n");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_a_token_realm() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dpr-bearer", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    registry.push_oci_layout(&layout.path, "busybox:latest");
    let proxy = Proxy::start(
        &registry.addr,
        Some(Bearer {
            service: "berth-test".into(),
            basic: Some(("bob".into(), "pw".into())),
            ..Bearer::default()
        }),
    )
    .await;
    let reference = format!("{}/busybox:latest", proxy.addr);
    let t = Transfer::new(fx.channel().await, &fx.ns);
    let err = t
        .pull(&reference, &PullOptions::default())
        .await
        .expect_err("the token realm wants credentials");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let creds = PullOptions {
        credentials: Some(("bob".into(), "pw".into())),
        ..Default::default()
    };
    let out = t.pull(&reference, &creds).await.expect("pull with a token");
    assert!(!out.auth_requests.is_empty());
    assert!(proxy.tokens_issued() >= 1, "a token was issued");
    assert_eq!(run_in(&fx, &reference, "echo bearer"), "bearer\n");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index_resolves_to_this_host_and_by_digest() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dpr-multi", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_multi_platform_layout(&fx.dir.join("layout"));
    let reference = registry.reference("multi:latest");
    if !skopeo_push(&layout.path, &reference, true, None) {
        return;
    }
    // The registry really serves an index (skopeo without --all would have flattened it).
    let served = registry.get("/v2/multi/manifests/latest");
    assert_eq!(served.status, 200);
    assert_eq!(
        served.header("content-type"),
        Some(media::INDEX),
        "{served:?}"
    );
    assert_eq!(served.json()["manifests"].as_array().map(Vec::len), Some(2));

    let t = Transfer::new(fx.channel().await, &fx.ns);
    t.pull(&reference, &PullOptions::default())
        .await
        .expect("pull of the index");
    // The host's image was unpacked (the other one has /etc/arch).
    assert_eq!(
        run_in(&fx, &reference, "test ! -e /etc/arch && echo host"),
        "host\n"
    );
    let (host, other) = (&layout.images[0].1, &layout.images[1].1);
    let content = ContentClient::new(fx.channel().await);
    let info = |d: String| {
        let (mut c, ns) = (content.clone(), fx.ns.clone());
        async move {
            c.info(berth_tests::grpc::req(&ns, InfoRequest { digest: d }))
                .await
        }
    };
    let index = info(layout.index.digest.clone())
        .await
        .expect("index stored")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(
        index.labels.get("containerd.io/gc.ref.content.m.0"),
        Some(&host.manifest.digest)
    );
    assert_eq!(
        index.labels.get("containerd.io/gc.ref.content.m.1"),
        Some(&other.manifest.digest)
    );
    // all_metadata (ctr's default): the other platform's manifest and config, not its layer.
    info(other.manifest.digest.clone())
        .await
        .expect("other manifest");
    info(other.config.digest.clone())
        .await
        .expect("other config");
    let missing = info(other.layers[0].digest.clone())
        .await
        .expect_err("other layer");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // By digest: the same index, named by its digest.
    let by_digest = format!("{}/multi@{}", registry.addr, layout.index.digest);
    let out = t
        .pull(&by_digest, &PullOptions::default())
        .await
        .expect("pull by digest");
    assert_eq!(out.saved(), vec![by_digest.clone()]);
    assert_eq!(run_in(&fx, &by_digest, "echo digest"), "digest\n");

    // A platform the index does not have: NotFound naming it.
    let arm = PullOptions {
        platforms: vec![berth_proto::containerd_client::types::Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            ..Default::default()
        }],
        unpack: false,
        ..Default::default()
    };
    let err = t.pull(&reference, &arm).await.expect_err("no s390x");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("linux/s390x"), "{err:?}");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_from_hosts_toml() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dpr-mirror", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    registry.push_oci_layout(&layout.path, "busybox:latest");
    let proxy = Proxy::start(&registry.addr, None).await;
    // A registry nobody listens on, mirrored by the proxy.
    let dead = format!("127.0.0.1:{}", berth_tests::registry::free_port());
    let hosts = fx.dir.subdir("certs.d");
    write_hosts(
        &hosts,
        &dead,
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            proxy.addr
        ),
    );
    let reference = format!("{dead}/busybox:latest");
    let t = Transfer::new(fx.channel().await, &fx.ns);
    let o = PullOptions {
        hosts_dir: Some(hosts.display().to_string()),
        ..Default::default()
    };
    t.pull(&reference, &o)
        .await
        .expect("pull through the mirror");
    let gets = proxy.blob_gets(&layout.layers[0].digest);
    assert_eq!(
        gets.len(),
        1,
        "the layer came from the mirror: {:?}",
        proxy.seen()
    );
    assert_eq!(run_in(&fx, &reference, "echo mirrored"), "mirrored\n");

    // The same through berthd's own `registry_hosts_dir` (the request names no hosts dir).
    let mut fx = fx;
    let mut config = std::fs::read_to_string(&fx.config_path).expect("config");
    config.push_str(&format!(
        "registry_hosts_dir = {:?}\n",
        hosts.display().to_string()
    ));
    std::fs::write(&fx.config_path, config).expect("write config");
    fx.daemon.restart();
    registry.push_oci_layout(&layout.path, "busybox:other");
    let other = format!("{dead}/busybox:other");
    Transfer::new(fx.channel().await, &fx.ns)
        .pull(&other, &PullOptions::default())
        .await
        .expect("pull through the mirror named by berthd's config");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|s| s.path == "/v2/busybox/manifests/other"),
        "resolved at the mirror: {:?}",
        proxy.seen()
    );
    fx.guard.assert_clean();
}
