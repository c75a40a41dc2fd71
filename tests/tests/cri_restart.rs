//! berthd SIGKILLed while a pod runs, and a container of it exits while berthd is down: after the restart
//! ListPodSandbox and ListContainers show the truth (pod ready, one container running, two exited with the
//! right codes), the running container's log kept going and it still answers ExecSync, and the pod is then
//! removed leaving nothing. Root only.

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_survives_a_killed_berthd_and_exits_are_not_lost() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(mut fx) = CriFixture::new("cri-restart") else {
        return;
    };
    fx.pull_busybox().await;
    let cfg = fx.pod_config("survivor");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let keeps = fx
        .container(
            &pod,
            &cfg,
            fx.container_config("keeps", "echo before; exec sleep 1000"),
        )
        .await
        .expect("keeps");
    let done = fx
        .container(&pod, &cfg, fx.container_config("done", "exit 4"))
        .await
        .expect("done");
    let dies = fx
        .container(&pod, &cfg, fx.container_config("dies", "exec sleep 1000"))
        .await
        .expect("dies");
    assert_eq!(fx.wait_exited(&done).await.exit_code, 4);
    let pid = fx.pid_of(&dies).await;
    assert!(pid > 0);

    fx.nf.fx.daemon.kill();
    // While berthd is down: one container dies (SIGKILL: 137).
    berth_tests::proc::kill(pid, Signal::SIGKILL);
    berth_tests::proc::wait_dead(pid, std::time::Duration::from_secs(10));
    fx.nf.fx.daemon.start_again();

    let mut rt = fx.runtime().await;
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("list pods")
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(
        (pods[0].id.as_str(), pods[0].state),
        (pod.as_str(), cri::PodSandboxState::SandboxReady as i32)
    );
    let mut seen: Vec<(String, i32)> = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect();
    seen.sort();
    let mut want = vec![
        (keeps.clone(), cri::ContainerState::ContainerRunning as i32),
        (done.clone(), cri::ContainerState::ContainerExited as i32),
        (dies.clone(), cri::ContainerState::ContainerExited as i32),
    ];
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(fx.status(&done).await.exit_code, 4);
    let d = fx.status(&dies).await;
    assert_eq!((d.exit_code, d.reason.as_str()), (137, "Error"));
    assert!(d.finished_at > 0);

    let r = fx
        .exec(&keeps, "echo still-here", 10)
        .await
        .expect("exec after restart");
    assert_eq!(r.stdout, b"still-here\n");
    let log = std::fs::read_to_string(fx.status(&keeps).await.log_path).expect("log");
    assert!(log.contains(" stdout F before\n"), "{log}");

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove");
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(left.containers.is_empty());
    fx.nf.fx.guard.assert_clean();
}
