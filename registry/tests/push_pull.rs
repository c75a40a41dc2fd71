//! Push harness OCI layouts with our own push API to a plain-HTTP docker-registry, then resolve and fetch
//! everything back: digests equal; multi-platform indexes; resumed and corrupted blob fetches.

mod common;

use berth_image::oci::{media, Platform};
use berth_registry::{select_manifest, RegistryError, RequestOptions};
use berth_tests::oci_layout::{busybox_layout, busybox_multi_platform_layout, host_arch};
use berth_tests::registry::Registry;
use berth_tests::{Guard, TestDir};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_resolve_and_fetch_everything_back() {
    let dir = TestDir::new("reg-push-pull");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    let client = client(None);
    let r = reference(&format!("{}/berth/busybox:v1", reg.addr));
    let repo = client.repository(&r, &plain()).expect("repo");
    push_image(&repo, &layout, "v1").await;
    // Pushing again skips blobs the registry has (HEAD) and still succeeds.
    push_image(&repo, &layout, "v1").await;

    // The registry really holds what we pushed (read with the harness's own client).
    let served = reg.get("/v2/berth/busybox/manifests/v1");
    assert_eq!(served.status, 200);
    assert_eq!(
        served.header("docker-content-digest"),
        Some(layout.manifest.digest.as_str())
    );

    let resolved = client.resolve(&r, &plain()).await.expect("resolve");
    assert_eq!(resolved.name, format!("{}/berth/busybox:v1", reg.addr));
    assert_eq!(resolved.descriptor.digest, layout.manifest.digest);
    assert_eq!(resolved.descriptor.size as u64, layout.manifest.size);
    assert_eq!(resolved.descriptor.media_type, media::OCI_MANIFEST);

    let bytes = repo
        .fetch_manifest(&resolved.descriptor)
        .await
        .expect("manifest");
    assert_eq!(&bytes[..], &layout.blob(&layout.manifest.digest)[..]);
    let manifest: berth_image::oci::Manifest = serde_json::from_slice(&bytes).expect("json");
    let mut descs = vec![manifest.config.clone()];
    descs.extend(manifest.layers.iter().cloned());
    assert_eq!(descs.len(), layout.blobs().len());
    for d in &descs {
        let mut s = repo
            .fetch_blob(d, 0)
            .await
            .expect("fetch")
            .verified()
            .expect("verify");
        let mut got = Vec::new();
        while let Some(c) = s.next_chunk().await {
            got.extend_from_slice(&c.expect("chunk"));
        }
        assert_eq!(berth_registry::sha256_digest(&got), d.digest);
        assert_eq!(got, layout.blob(&d.digest));
    }

    // By digest: the reference's digest is checked; a tag plus digest fetches the digest.
    let by_digest = reference(&format!(
        "{}/berth/busybox:nosuchtag@{}",
        reg.addr, layout.manifest.digest
    ));
    let d = client
        .resolve(&by_digest, &plain())
        .await
        .expect("resolve by digest");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    assert_eq!(d.name, by_digest.to_string());

    // Unknown tag and unknown blob: NotFound naming what.
    let missing = reference(&format!("{}/berth/busybox:nope", reg.addr));
    let e = client
        .resolve(&missing, &plain())
        .await
        .expect_err("missing tag");
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e:?}");
    assert!(
        e.to_string().contains(":nope") && e.to_string().contains(&reg.addr),
        "{e}"
    );
    let mut ghost = descs[0].clone();
    ghost.digest = format!("sha256:{}", "0".repeat(64));
    let e = repo.fetch_blob(&ghost, 0).await.expect_err("missing blob");
    assert!(
        e.is_not_found() && e.to_string().contains(&ghost.digest),
        "{e}"
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_needs_plain_http_or_an_http_server_entry() {
    let dir = TestDir::new("reg-plain");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    reg.push_oci_layout(&layout.path, "plain/img:latest");
    let r = reference(&format!("{}/plain/img", reg.addr));
    // HTTPS only by default, even for loopback: the error says the server does not speak TLS.
    let e = client(None)
        .resolve(&r, &RequestOptions::default())
        .await
        .expect_err("https to an http server");
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&reg.addr) && e.to_string().contains("plain HTTP"),
        "{e}"
    );
    // plain_http on a loopback host: HTTPS first, then HTTP.
    let d = client(None)
        .resolve(&r, &plain())
        .await
        .expect("plain_http");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    // Or a hosts.toml whose server is http://.
    let hosts = dir.subdir("hosts");
    write_hosts(
        &hosts,
        &reg.addr,
        &format!("server = \"http://{}\"\n", reg.addr),
    );
    let d = client(Some(&hosts))
        .resolve(&r, &RequestOptions::default())
        .await
        .expect("server = http://");
    assert_eq!(d.descriptor.digest, layout.manifest.digest);
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index_resolves_to_the_host_platform() {
    let dir = TestDir::new("reg-multi");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_multi_platform_layout(&dir.join("layout"));
    let client = client(None);
    let r = reference(&format!("{}/multi/busybox", reg.addr));
    let repo = client.repository(&r, &plain()).expect("repo");
    push_multi(&repo, &layout, "latest").await;
    // The registry serves an index for the tag.
    let served = reg.get("/v2/multi/busybox/manifests/latest");
    assert_eq!(served.header("content-type"), Some(media::OCI_INDEX));

    let resolved = repo.resolve(&r).await.expect("resolve");
    assert_eq!(resolved.descriptor.media_type, media::OCI_INDEX);
    assert_eq!(resolved.descriptor.digest, layout.index.digest);
    let index = repo
        .fetch_manifest(&resolved.descriptor)
        .await
        .expect("index");
    let chosen = select_manifest(&index, &Platform::host()).expect("host platform");
    let (_, host_image) = layout
        .images
        .iter()
        .find(|(a, _)| a == host_arch())
        .expect("host image in layout");
    assert_eq!(chosen.digest, host_image.manifest.digest);
    let m = repo.fetch_manifest(&chosen).await.expect("manifest");
    assert_eq!(&m[..], &host_image.blob(&host_image.manifest.digest)[..]);

    let e = select_manifest(&index, &Platform::parse("linux/s390x").expect("platform"))
        .expect_err("no s390x");
    let msg = e.to_string();
    assert!(matches!(e, RegistryError::PlatformNotFound { .. }), "{e:?}");
    for (arch, _) in &layout.images {
        assert!(msg.contains(&format!("linux/{arch}")), "{msg}");
    }
    assert!(
        msg.contains("linux/s390x") && msg.contains(&layout.index.digest),
        "{msg}"
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_fetch_and_corrupted_blob() {
    let dir = TestDir::new("reg-range");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    let client = client(None);
    let r = reference(&format!("{}/range/busybox", reg.addr));
    let repo = client.repository(&r, &plain()).expect("repo");
    push_image(&repo, &layout, "latest").await;
    let layer = layout.layers[0].clone();
    let want = layout.blob(&layer.digest);
    let desc = berth_image::oci::Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size as i64,
        ..Default::default()
    };
    // Resume from the middle: the registry honours Range, the stream starts there.
    let offset = want.len() as u64 / 3;
    let s = repo.fetch_blob(&desc, offset).await.expect("ranged fetch");
    assert_eq!(s.start(), offset);
    let (tail, err) = drain(s).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(tail, &want[offset as usize..]);
    // A resumed stream cannot be verified on its own.
    let s = repo.fetch_blob(&desc, offset).await.expect("ranged fetch");
    assert!(s.verified().is_err());

    // Corrupt the blob in the registry's storage (same size, other bytes).
    let hex = layer.digest.trim_start_matches("sha256:");
    let data = reg
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bad = std::fs::read(&data).expect("blob data file");
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    bad[0] ^= 0xff;
    std::fs::write(&data, &bad).expect("corrupt");
    let mut s = repo
        .fetch_blob(&desc, 0)
        .await
        .expect("fetch")
        .verified()
        .expect("verify");
    let mut err = None;
    while let Some(c) = s.next_chunk().await {
        if let Err(e) = c {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a corrupted blob must fail");
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&layer.digest), "{err}");

    // A manifest corrupted in storage (a digit of a size changed: still valid JSON): DigestMismatch
    // naming both digests, and no bytes returned.
    let desc = resolved_manifest(&repo, &r).await;
    let hex = desc.digest.trim_start_matches("sha256:");
    let data = reg
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let text = std::fs::read_to_string(&data).expect("manifest data file");
    let at = text.find("\"size\":").expect("a size") + 7;
    let digit = text.as_bytes()[at];
    let changed = if digit == b'9' {
        '1'
    } else {
        (digit + 1) as char
    };
    let mut bad = text.clone();
    bad.replace_range(at..at + 1, &changed.to_string());
    std::fs::write(&data, bad).expect("corrupt manifest");
    let e = repo
        .fetch_manifest(&desc)
        .await
        .expect_err("corrupted manifest");
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(&desc.digest), "{e}");
    drop(guard);
}

async fn resolved_manifest(
    repo: &berth_registry::Repository,
    r: &berth_registry::Reference,
) -> berth_image::oci::Descriptor {
    repo.resolve(r).await.expect("resolve").descriptor
}
