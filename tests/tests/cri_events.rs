//! GetContainerEvents: a subscriber sees a container's created, started, stopped (with its exit code in the
//! status) and deleted events in that order, and its pod's events carry the pod's status. Root only.

use std::time::Duration;

use berth_proto::cri;
use berth_proto::cri::ContainerEventType as T;
use berth_tests::cri_fixture::CriFixture;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_follow_the_lifecycle() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-events") else {
        return;
    };
    fx.pull_busybox().await;
    let mut rt = fx.runtime().await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let cfg = fx.pod_config("evented");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let c = fx
        .container(&pod, &cfg, fx.container_config("short", "exit 9"))
        .await
        .expect("container");
    fx.wait_exited(&c).await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("remove");

    let mut mine = Vec::new();
    let mut pod_kinds = Vec::new();
    while mine.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .unwrap_or_else(|_| panic!("no more events after {mine:?}"))
            .expect("stream open")
            .expect("event");
        let kind = T::try_from(ev.container_event_type).expect("kind");
        if ev.container_id == pod {
            pod_kinds.push(kind);
            if kind != T::ContainerDeletedEvent {
                let ps = ev.pod_sandbox_status.as_ref().expect("pod status");
                assert_eq!(ps.metadata, cfg.metadata);
            }
        }
        if ev.container_id != c {
            continue;
        }
        match kind {
            T::ContainerStoppedEvent => {
                let st = &ev.containers_statuses[0];
                assert_eq!(
                    (st.exit_code, st.state),
                    (9, cri::ContainerState::ContainerExited as i32)
                );
                assert_eq!(
                    ev.pod_sandbox_status.as_ref().map(|p| p.id.as_str()),
                    Some(pod.as_str())
                );
            }
            T::ContainerDeletedEvent => assert!(ev.containers_statuses.is_empty()),
            _ => assert_eq!(ev.containers_statuses.len(), 1),
        }
        assert!(ev.created_at > 0);
        mine.push(kind);
    }
    assert_eq!(
        mine,
        vec![
            T::ContainerCreatedEvent,
            T::ContainerStartedEvent,
            T::ContainerStoppedEvent,
            T::ContainerDeletedEvent
        ]
    );
    assert_eq!(
        &pod_kinds[..2],
        &[T::ContainerCreatedEvent, T::ContainerStartedEvent]
    );
    fx.nf.fx.guard.assert_clean();
}
