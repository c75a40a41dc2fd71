//! TLS with a test CA, docker-registry's htpasswd Basic auth, and bearer tokens from a test token server in
//! front of the real registry.

mod common;

use berth_registry::{Credentials, RegistryError, RequestOptions};
use berth_tests::oci_layout::busybox_layout;
use berth_tests::registry::Registry;
use berth_tests::{Guard, TestDir};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_needs_its_ca_or_skip_verify() {
    let dir = TestDir::new("reg-tls");
    let Some(certs) = make_certs(&dir.subdir("certs")) else {
        return;
    };
    let Some(reg) = RegistryProc::start(&dir.subdir("reg"), Some((&certs.cert, &certs.key)), None)
    else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    let r = reference(&format!("{}/tls/busybox:latest", reg.addr));
    let hosts = dir.subdir("hosts");

    // Without the CA: a TLS error naming the host and what would help.
    let e = client(Some(&hosts))
        .resolve(&r, &RequestOptions::default())
        .await
        .expect_err("untrusted certificate");
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    assert!(
        msg.contains(&reg.addr) && msg.contains("ca") && msg.contains("skip_verify"),
        "{msg}"
    );
    assert!(!e.is_retryable());

    // With `ca` (relative to the hosts.toml's dir) it works: push and resolve.
    std::fs::create_dir_all(hosts.join(&reg.addr)).expect("mkdir");
    std::fs::copy(&certs.ca, hosts.join(&reg.addr).join("ca.pem")).expect("copy ca");
    write_hosts(&hosts, &reg.addr, "ca = \"ca.pem\"\n");
    let c = client(Some(&hosts));
    let repo = c.repository(&r, &RequestOptions::default()).expect("repo");
    push_image(&repo, &layout, "latest").await;
    let d = c
        .resolve(&r, &RequestOptions::default())
        .await
        .expect("with ca");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);

    // skip_verify in hosts.toml, and per call.
    write_hosts(&hosts, &reg.addr, "skip_verify = true\n");
    let d = client(Some(&hosts))
        .resolve(&r, &RequestOptions::default())
        .await
        .expect("skip_verify in hosts.toml");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    let opts = RequestOptions {
        skip_verify: Some(true),
        ..Default::default()
    };
    let d = client(None)
        .resolve(&r, &opts)
        .await
        .expect("skip_verify per call");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    // plain_http on a loopback TLS registry: HTTPS first, unverified, as containerd does for loopback.
    let d = client(None)
        .resolve(&r, &plain())
        .await
        .expect("loopback plain_http over TLS");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    // A per-call Some(false) overrides the file.
    let opts = RequestOptions {
        skip_verify: Some(false),
        ..Default::default()
    };
    let e = client(Some(&hosts))
        .resolve(&r, &opts)
        .await
        .expect_err("forced verify");
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth() {
    let dir = TestDir::new("reg-basic");
    let Some(htpasswd) = berth_tests::tool("htpasswd") else {
        return;
    };
    let out = berth_tests::run_timeout(
        std::process::Command::new(htpasswd).args(["-Bbn", "alice", "s3cret"]),
        std::time::Duration::from_secs(30),
    );
    assert!(out.status.success());
    let file = dir.join("htpasswd");
    std::fs::write(&file, &out.stdout).expect("write htpasswd");
    let Some(reg) = RegistryProc::start(&dir.subdir("reg"), None, Some(&file)) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    let r = reference(&format!("{}/basic/busybox", reg.addr));
    let hosts = dir.subdir("hosts");
    let server = format!("server = \"http://{}\"\n", reg.addr);

    // No credentials: Unauthorized naming the registry and the scope, saying none is configured.
    write_hosts(&hosts, &reg.addr, &server);
    let e = client(Some(&hosts))
        .resolve(&r, &RequestOptions::default())
        .await
        .expect_err("no credentials");
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
    assert!(
        msg.contains(&reg.addr) && msg.contains("repository:basic/busybox:pull"),
        "{msg}"
    );
    assert!(msg.contains("none is configured"), "{msg}");

    // Wrong password: refused.
    write_hosts(
        &hosts,
        &reg.addr,
        &format!("{server}[auth]\nusername = \"alice\"\npassword = \"nope\"\n"),
    );
    let e = client(Some(&hosts))
        .resolve(&r, &RequestOptions::default())
        .await
        .expect_err("bad password");
    assert!(e.to_string().contains("refused"), "{e}");

    // Credentials from hosts.toml: push and pull work.
    write_hosts(
        &hosts,
        &reg.addr,
        &format!("{server}[auth]\nusername = \"alice\"\npassword = \"s3cret\"\n"),
    );
    let c = client(Some(&hosts));
    let repo = c.repository(&r, &RequestOptions::default()).expect("repo");
    push_image(&repo, &layout, "latest").await;
    let d = repo.resolve(&r).await.expect("resolve with credentials");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    let m = repo.fetch_manifest(&d.descriptor).await.expect("manifest");
    assert_eq!(&m[..], &layout.blob(&layout.manifest.digest)[..]);

    // Explicit credentials override the file.
    let opts = RequestOptions {
        credentials: Some(Credentials::Basic {
            username: "alice".into(),
            password: "wrong".into(),
        }),
        ..Default::default()
    };
    let e = client(Some(&hosts))
        .resolve(&r, &opts)
        .await
        .expect_err("override");
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_once_and_reused() {
    let dir = TestDir::new("reg-bearer");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    reg.push_oci_layout(&layout.path, "x:latest");
    let proxy = Proxy::start_with(
        &reg.addr,
        ProxyOptions {
            bearer: Some(Bearer {
                service: "s".into(),
                basic: Some(("bob".into(), "pw".into())),
                post_only: false,
            }),
            ..Default::default()
        },
    )
    .await;
    let hosts = dir.subdir("hosts");
    let server = format!("server = \"http://{}\"\n", proxy.addr);
    let r = reference(&format!("{}/x", proxy.addr));

    // No credentials: the token server refuses, the error names the registry and scope.
    write_hosts(&hosts, &proxy.addr, &server);
    let e = client(Some(&hosts))
        .resolve(&r, &RequestOptions::default())
        .await
        .expect_err("anonymous");
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
    assert!(
        msg.contains(&proxy.addr) && msg.contains("repository:x:pull"),
        "{msg}"
    );

    write_hosts(
        &hosts,
        &proxy.addr,
        &format!("{server}[auth]\nusername = \"bob\"\npassword = \"pw\"\n"),
    );
    let c = client(Some(&hosts));
    let repo = c.repository(&r, &RequestOptions::default()).expect("repo");
    let issued_before = proxy.tokens_issued();
    let conns_before = proxy.connections();
    let d = repo.resolve(&r).await.expect("resolve");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    repo.fetch_manifest(&d.descriptor).await.expect("manifest");
    for b in layout.blobs() {
        let desc = berth_image::oci::Descriptor {
            media_type: b.media_type.clone(),
            digest: b.digest.clone(),
            size: b.size as i64,
            ..Default::default()
        };
        let (got, err) = drain(repo.fetch_blob(&desc, 0).await.expect("blob")).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got.len() as u64, b.size);
    }
    // One token for everything; each blob fetched exactly once (the token is sent up front).
    assert_eq!(
        proxy.tokens_issued() - issued_before,
        1,
        "{:?}",
        proxy.counts()
    );
    for b in layout.blobs() {
        assert_eq!(
            proxy.count("GET", &format!("/v2/x/blobs/{}", b.digest)),
            1,
            "{:?}",
            proxy.counts()
        );
    }

    // Sequential requests (challenge, token, HEAD, manifest, blobs: 6) reuse keep-alive connections.
    // Not exactly one: hyper's pool may open a second connection while the first is still being
    // returned to it.
    let conns = proxy.connections() - conns_before;
    assert!(
        conns <= 3,
        "{conns} connections for 6 requests: {:?}",
        proxy.counts()
    );

    // Revoked tokens: a 401 after using a token fetches a new one, once, and goes on.
    proxy.revoke_tokens();
    let issued = proxy.tokens_issued();
    repo.resolve(&r).await.expect("resolve after revocation");
    assert_eq!(proxy.tokens_issued(), issued + 1);

    // Tokens refused for good: one refetch, then Unauthorized naming registry and scope.
    proxy.reject_tokens(true);
    let issued = proxy.tokens_issued();
    let e = repo.resolve(&r).await.expect_err("tokens refused");
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&proxy.addr) && e.to_string().contains("repository:x:pull"),
        "{e}"
    );
    assert_eq!(proxy.tokens_issued(), issued + 1, "exactly one refetch");
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_oauth2_post_tokens() {
    let dir = TestDir::new("reg-oauth");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    reg.push_oci_layout(&layout.path, "x:latest");

    // Anonymous tokens when no credentials are configured and the realm gives them out.
    let anon = Proxy::start_with(
        &reg.addr,
        ProxyOptions {
            bearer: Some(Bearer {
                service: "s".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let r = reference(&format!("{}/x", anon.addr));
    let d = client(None)
        .resolve(&r, &plain())
        .await
        .expect("anonymous token");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    assert_eq!(anon.tokens_issued(), 1);
    // A configured token is sent as is (the proxy's first token is `tok-1`), never exchanged.
    let with_token = |t: &str| RequestOptions {
        plain_http: true,
        credentials: Some(Credentials::Token(t.into())),
        ..Default::default()
    };
    let d = client(None)
        .resolve(&r, &with_token("tok-1"))
        .await
        .expect("static token");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    let e = client(None)
        .resolve(&r, &with_token("bogus"))
        .await
        .expect_err("bad static token");
    assert!(
        e.to_string().contains("configured token was refused"),
        "{e}"
    );
    assert_eq!(anon.tokens_issued(), 1);

    // A realm that only takes the OAuth2 POST form: GET fails (405), POST with the password works.
    let post = Proxy::start_with(
        &reg.addr,
        ProxyOptions {
            bearer: Some(Bearer {
                service: "s".into(),
                basic: Some(("carol".into(), "p w&=".into())),
                post_only: true,
            }),
            ..Default::default()
        },
    )
    .await;
    let r = reference(&format!("{}/x", post.addr));
    let opts = RequestOptions {
        plain_http: true,
        credentials: Some(Credentials::Basic {
            username: "carol".into(),
            password: "p w&=".into(),
        }),
        ..Default::default()
    };
    let d = client(None).resolve(&r, &opts).await.expect("oauth2 post");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    assert_eq!(post.count("POST", "/token"), 1);
    assert_eq!(post.count("GET", "/token"), 1);
    drop(guard);
}
