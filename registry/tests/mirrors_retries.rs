//! Mirrors from hosts.toml (file order, capabilities, override_path) and bounded retries.

mod common;

use berth_registry::{RegistryError, RequestOptions};
use berth_tests::oci_layout::busybox_layout;
use berth_tests::registry::Registry;
use berth_tests::{Guard, TestDir};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_is_used_when_the_registry_is_down() {
    let dir = TestDir::new("reg-mirror");
    let Some(mut primary) = Registry::start(&dir.subdir("primary")) else {
        return;
    };
    let Some(mirror) = Registry::start(&dir.subdir("mirror")) else {
        return;
    };
    let guard = Guard::new();
    guard
        .pid(primary.pid().expect("pid"))
        .pid(mirror.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    mirror.push_oci_layout(&layout.path, "lib/img:latest");
    let primary_addr = primary.addr.clone();
    primary.stop();

    let hosts = dir.subdir("hosts");
    let r = reference(&format!("{primary_addr}/lib/img"));
    // Without the mirror: a connect error naming the primary.
    let e = client(Some(&hosts))
        .resolve(&r, &plain())
        .await
        .expect_err("primary is down");
    assert!(e.to_string().contains(&primary_addr), "{e}");

    write_hosts(
        &hosts,
        &primary_addr,
        &format!("server = \"http://{primary_addr}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n", mirror.addr),
    );
    let c = client(Some(&hosts));
    let repo = c.repository(&r, &RequestOptions::default()).expect("repo");
    assert_eq!(repo.endpoints().len(), 2);
    let d = repo.resolve(&r).await.expect("resolved through the mirror");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    // The name stays the primary's.
    assert_eq!(d.name, format!("{primary_addr}/lib/img:latest"));
    let m = repo
        .fetch_manifest(&d.descriptor)
        .await
        .expect("manifest from mirror");
    assert_eq!(&m[..], &layout.blob(&layout.manifest.digest)[..]);
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_only_mirror_serves_blobs_and_override_path() {
    let dir = TestDir::new("reg-mirror-caps");
    let Some(primary) = Registry::start(&dir.subdir("primary")) else {
        return;
    };
    let Some(mirror) = Registry::start(&dir.subdir("mirror")) else {
        return;
    };
    let guard = Guard::new();
    guard
        .pid(primary.pid().expect("pid"))
        .pid(mirror.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    primary.push_oci_layout(&layout.path, "lib/img:latest");
    mirror.push_oci_layout(&layout.path, "lib/img:latest");
    // Both behind counting proxies; the mirror's serves the API under /mirror/api (override_path).
    let p = Proxy::start_with(&primary.addr, ProxyOptions::default()).await;
    let m = Proxy::start_with(
        &mirror.addr,
        ProxyOptions {
            prefix: Some("/mirror/api".into()),
            ..Default::default()
        },
    )
    .await;
    let hosts = dir.subdir("hosts");
    write_hosts(
        &hosts,
        &p.addr,
        &format!(
            "server = \"http://{}\"\n[host.\"http://{}/mirror/api\"]\ncapabilities = [\"pull\"]\noverride_path = true\n",
            p.addr, m.addr
        ),
    );
    let r = reference(&format!("{}/lib/img", p.addr));
    let c = client(Some(&hosts));
    let repo = c.repository(&r, &RequestOptions::default()).expect("repo");
    // Tags resolve only on hosts with "resolve": the primary.
    let d = repo.resolve(&r).await.expect("resolve");
    assert_eq!(
        p.count("HEAD", "/v2/lib/img/manifests/latest"),
        1,
        "{:?}",
        p.counts()
    );
    assert_eq!(m.counts().len(), 0, "{:?}", m.counts());
    // Content by digest comes from the mirror, under its own path.
    repo.fetch_manifest(&d.descriptor).await.expect("manifest");
    let layer = &layout.layers[0];
    let desc = berth_image::oci::Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size as i64,
        ..Default::default()
    };
    let (got, err) = drain(repo.fetch_blob(&desc, 0).await.expect("blob")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, layout.blob(&layer.digest));
    let md = &layout.manifest.digest;
    assert_eq!(
        m.count("GET", &format!("/mirror/api/lib/img/manifests/{md}")),
        1,
        "{:?}",
        m.counts()
    );
    assert_eq!(
        m.count(
            "GET",
            &format!("/mirror/api/lib/img/blobs/{}", layer.digest)
        ),
        1,
        "{:?}",
        m.counts()
    );
    assert_eq!(
        p.count("GET", &format!("/v2/lib/img/blobs/{}", layer.digest)),
        0,
        "{:?}",
        p.counts()
    );

    // A blob the mirror lacks falls through to the primary.
    let extra = primary.push_blob("lib/img", b"only on the primary");
    let desc = berth_image::oci::Descriptor {
        media_type: "application/octet-stream".into(),
        digest: extra.clone(),
        size: 19,
        ..Default::default()
    };
    let (got, err) = drain(repo.fetch_blob(&desc, 0).await.expect("blob from primary")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, b"only on the primary");
    assert_eq!(
        m.count("GET", &format!("/mirror/api/lib/img/blobs/{extra}")),
        1
    );
    assert_eq!(p.count("GET", &format!("/v2/lib/img/blobs/{extra}")), 1);
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_but_never_4xx() {
    let dir = TestDir::new("reg-retry");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    reg.push_oci_layout(&layout.path, "r/img:latest");
    let proxy = Proxy::start_with(
        &reg.addr,
        ProxyOptions {
            fail_first: 2,
            ..Default::default()
        },
    )
    .await;
    let hosts = dir.subdir("hosts");
    write_hosts(
        &hosts,
        &proxy.addr,
        &format!("server = \"http://{}\"\n", proxy.addr),
    );
    let c = client(Some(&hosts));
    let r = reference(&format!("{}/r/img", proxy.addr));
    let d = c
        .resolve(&r, &RequestOptions::default())
        .await
        .expect("succeeds after two 503s");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    assert_eq!(
        proxy.count("HEAD", "/v2/r/img/manifests/latest"),
        3,
        "{:?}",
        proxy.counts()
    );

    // 404: asked once, not retried.
    let missing = reference(&format!("{}/r/img:missing", proxy.addr));
    let e = c
        .resolve(&missing, &RequestOptions::default())
        .await
        .expect_err("missing");
    assert!(e.is_not_found() && !e.is_retryable(), "{e:?}");
    assert_eq!(
        proxy.count("HEAD", "/v2/r/img/manifests/missing"),
        1,
        "{:?}",
        proxy.counts()
    );
    assert_eq!(
        proxy.count("GET", "/v2/r/img/manifests/missing"),
        0,
        "{:?}",
        proxy.counts()
    );

    // Bounded: a registry that keeps failing gives an Http 503 error after max_tries.
    let always = Proxy::start_with(
        &reg.addr,
        ProxyOptions {
            fail_first: usize::MAX,
            ..Default::default()
        },
    )
    .await;
    write_hosts(
        &hosts,
        &always.addr,
        &format!("server = \"http://{}\"\n", always.addr),
    );
    let r = reference(&format!("{}/r/img", always.addr));
    let e = c
        .resolve(&r, &RequestOptions::default())
        .await
        .expect_err("always 503");
    assert!(
        matches!(e, RegistryError::Http { status: 503, .. }) && e.is_retryable(),
        "{e:?}"
    );
    let tries = c.config().max_tries as usize;
    // HEAD tried max_tries times, no GET fallback after a 5xx.
    assert_eq!(
        always.count("HEAD", "/v2/r/img/manifests/latest"),
        tries,
        "{:?}",
        always.counts()
    );
    assert_eq!(
        always.count("GET", "/v2/r/img/manifests/latest"),
        0,
        "{:?}",
        always.counts()
    );
    drop(guard);
}
