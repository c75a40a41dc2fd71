//! The CRI ImageService: PullImage by tag and by digest (through berthd's own pull path, from a loopback
//! registry), with credentials from AuthConfig (the base64 `auth` form; user/password in the unit tests) against a
//! token-protected registry, ImageStatus by tag, id and repo digest (a missing image is no error),
//! ListImages with a filter, RemoveImage (twice: not found is success), ImageFsInfo. Root only.

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;
use berth_tests::regproxy::{Bearer, Proxy};

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_status_list_remove_and_fs_info() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-images") else {
        return;
    };
    let mut img = fx.images().await;
    let missing = img
        .image_status(cri::ImageStatusRequest {
            image: spec(&fx.busybox),
            verbose: false,
        })
        .await
        .expect("status of a missing image")
        .into_inner();
    assert!(missing.image.is_none(), "{missing:?}");

    let id = fx.pull_busybox().await;
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let manifest = fx
        .registry
        .get("/v2/busybox/manifests/1")
        .header("Docker-Content-Digest")
        .expect("manifest digest")
        .to_string();
    let repo = fx
        .busybox
        .rsplit_once(':')
        .map(|(r, _)| r.to_string())
        .expect("repo");
    let repo_digest = format!("{repo}@{manifest}");

    for name in [fx.busybox.as_str(), id.as_str(), repo_digest.as_str()] {
        let s = img
            .image_status(cri::ImageStatusRequest {
                image: spec(name),
                verbose: true,
            })
            .await
            .expect("status")
            .into_inner();
        let i = s.image.unwrap_or_else(|| panic!("no image for {name}"));
        assert_eq!(i.id, id, "by {name}");
        assert!(i.repo_tags.contains(&fx.busybox), "{i:?}");
        assert!(i.repo_digests.contains(&repo_digest), "{i:?}");
        assert!(i.size > 1_000_000, "{i:?}");
        assert_eq!(i.uid, Some(cri::Int64Value { value: 0 }));
        assert!(
            s.info.get("info").is_some_and(|v| v.contains("chainID")),
            "{:?}",
            s.info
        );
    }

    // By digest: the same image.
    let by_digest = img
        .pull_image(cri::PullImageRequest {
            image: spec(&repo_digest),
            ..Default::default()
        })
        .await
        .expect("pull by digest")
        .into_inner()
        .image_ref;
    assert_eq!(by_digest, id);

    let list = img
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(list.iter().filter(|i| i.id == id).count(), 1, "{list:?}");
    let filtered = img
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&fx.busybox),
            }),
        })
        .await
        .expect("list filtered")
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let none = img
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("127.0.0.1:1/nothing:here"),
            }),
        })
        .await
        .expect("list filtered")
        .into_inner()
        .images;
    assert!(none.is_empty(), "{none:?}");

    let fs = img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("fs info")
        .into_inner();
    let used = fs.image_filesystems[0]
        .used_bytes
        .as_ref()
        .map(|u| u.value)
        .unwrap_or(0);
    assert!(used > 1_000_000, "{fs:?}");
    assert!(fs.image_filesystems[0].timestamp > 0);

    for _ in 0..2 {
        img.remove_image(cri::RemoveImageRequest {
            image: spec(&fx.busybox),
        })
        .await
        .expect("remove");
    }
    for name in [fx.busybox.as_str(), id.as_str()] {
        let s = img
            .image_status(cri::ImageStatusRequest {
                image: spec(name),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner();
        assert!(s.image.is_none(), "{name} still there: {s:?}");
    }
    let empty = img
        .pull_image(cri::PullImageRequest {
            image: spec(""),
            ..Default::default()
        })
        .await;
    assert_eq!(
        empty.expect_err("empty image").code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_credentials_from_auth_config() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-auth") else {
        return;
    };
    let proxy = Proxy::start(
        &fx.registry.addr,
        Some(Bearer {
            service: "berth-test".into(),
            basic: Some(("kube".into(), "s3cret".into())),
            ..Bearer::default()
        }),
    )
    .await;
    let image = format!("{}/busybox:1", proxy.addr);
    let mut img = fx.images().await;
    let denied = img
        .pull_image(cri::PullImageRequest {
            image: spec(&image),
            ..Default::default()
        })
        .await
        .expect_err("no credentials");
    assert!(
        matches!(
            denied.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ),
        "{denied:?}"
    );
    let wrong = img
        .pull_image(cri::PullImageRequest {
            image: spec(&image),
            auth: Some(cri::AuthConfig {
                username: "kube".into(),
                password: "nope".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("wrong password");
    assert!(
        matches!(
            wrong.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ),
        "{wrong:?}"
    );
    // The base64 `auth` form (the token realm checks it; berthd's registry client then caches the token).
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("kube:s3cret");
    let id = img
        .pull_image(cri::PullImageRequest {
            image: spec(&image),
            auth: Some(cri::AuthConfig {
                auth,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull with auth")
        .into_inner()
        .image_ref;
    assert!(proxy.tokens_issued() >= 1);
    let again = img
        .pull_image(cri::PullImageRequest {
            image: spec(&image),
            auth: Some(cri::AuthConfig {
                username: "kube".into(),
                password: "s3cret".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull with user and password")
        .into_inner()
        .image_ref;
    assert_eq!(id, again);
    img.remove_image(cri::RemoveImageRequest {
        image: spec(&image),
    })
    .await
    .expect("remove");
}
