//! The gRPC codes a kubelet relies on: NotFound for unknown pods, containers and images, AlreadyExists for a
//! second pod or container of the same name and attempt, InvalidArgument for bad requests, FailedPrecondition
//! for a second start, Unimplemented for checkpoints, and success for stops and removals of what is gone.
//! Root only.

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;
use tonic::Code;

/// The call's gRPC code (Ok for a success).
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_the_codes_a_kubelet_expects() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-errors") else {
        return;
    };
    let mut rt = fx.runtime().await;
    let nope = "0123456789abcdef".repeat(4);

    // Unknown things.
    assert_eq!(
        code(
            rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: nope.clone(),
                verbose: false
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            rt.container_status(cri::ContainerStatusRequest {
                container_id: nope.clone(),
                verbose: false
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            rt.start_container(cri::StartContainerRequest {
                container_id: nope.clone()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            rt.exec_sync(cri::ExecSyncRequest {
                container_id: nope.clone(),
                cmd: vec!["true".into()],
                timeout: 1
            })
            .await
        ),
        Code::NotFound
    );
    let cfg = fx.pod_config("errs");
    assert_eq!(
        code(
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: nope.clone(),
                config: Some(fx.container_config("c", "true")),
                sandbox_config: Some(cfg.clone()),
            })
            .await
        ),
        Code::NotFound
    );
    // Gone is fine for stops and removals.
    assert_eq!(
        code(
            rt.stop_container(cri::StopContainerRequest {
                container_id: nope.clone(),
                timeout: 1
            })
            .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: nope.clone()
            })
            .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: nope.clone()
            })
            .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: nope.clone()
            })
            .await
        ),
        Code::Ok
    );

    // Bad requests.
    assert_eq!(
        code(
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig::default()),
                runtime_handler: String::new()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: "kata".into()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            rt.checkpoint_container(cri::CheckpointContainerRequest {
                container_id: nope.clone(),
                ..Default::default()
            })
            .await
        ),
        Code::Unimplemented
    );

    // Duplicates.
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let dup = fx
        .pod(cfg.clone())
        .await
        .expect_err("second pod of the same name");
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    // The image is not pulled yet.
    let no_image = fx
        .container(&pod, &cfg, fx.container_config("c", "sleep 100"))
        .await
        .expect_err("image missing");
    assert_eq!(no_image.code(), Code::NotFound, "{no_image:?}");
    fx.pull_busybox().await;
    let c = fx
        .container(&pod, &cfg, fx.container_config("c", "exec sleep 100"))
        .await
        .expect("container");
    let again = fx
        .container(&pod, &cfg, fx.container_config("c", "sleep 100"))
        .await
        .expect_err("same name");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert_eq!(
        code(
            rt.start_container(cri::StartContainerRequest {
                container_id: c.clone()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    let bad_mount = {
        let mut cc = fx.container_config("m", "true");
        cc.mounts.push(cri::Mount {
            container_path: "/data".into(),
            host_path: "/no/such/dir".into(),
            ..Default::default()
        });
        fx.container(&pod, &cfg, cc)
            .await
            .expect_err("missing host path")
    };
    assert_eq!(bad_mount.code(), Code::InvalidArgument, "{bad_mount:?}");
    assert!(
        bad_mount.message().contains("/no/such/dir"),
        "{bad_mount:?}"
    );

    // Nothing half-made: one pod, one container.
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    let cs = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(cs.len(), 1);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove");
    fx.nf.fx.guard.assert_clean();
}
