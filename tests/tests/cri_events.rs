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
        .get_container_events(cri::GetEventsRequest::default())
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

/// Read events until `until` holds for one; returns them all (seqs checked to increase).
async fn read_until(
    events: &mut tonic::Streaming<cri::ContainerEventResponse>,
    mut last: u64,
    until: impl Fn(&cri::ContainerEventResponse) -> bool,
) -> Vec<cri::ContainerEventResponse> {
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .unwrap_or_else(|_| panic!("no more events after {out:?}"))
            .expect("stream open")
            .expect("event");
        assert!(ev.berth_seq > last, "seq {} after {last}", ev.berth_seq);
        last = ev.berth_seq;
        let done = until(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn stopped(id: &str) -> impl Fn(&cri::ContainerEventResponse) -> bool + '_ {
    move |ev| ev.container_id == id && ev.container_event_type == T::ContainerStoppedEvent as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_across_a_killed_berthd_without_a_gap() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(mut fx) = CriFixture::new("cri-evresume") else {
        return;
    };
    fx.pull_busybox().await;
    let mut events = fx
        .runtime()
        .await
        .get_container_events(cri::GetEventsRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let cfg = fx.pod_config("resumed");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let killed = fx
        .container(&pod, &cfg, fx.container_config("killed", "exec sleep 1000"))
        .await
        .expect("killed");
    let stays = fx
        .container(&pod, &cfg, fx.container_config("stays", "exec sleep 1000"))
        .await
        .expect("stays");
    let seen = read_until(&mut events, 0, |ev| {
        ev.container_id == stays && ev.container_event_type == T::ContainerStartedEvent as i32
    })
    .await;
    let last = seen.last().map(|e| e.berth_seq).expect("a seq");
    let pid = fx.pid_of(&killed).await;

    // berthd dies; the container exits while it is down; berthd comes back; another container stops.
    fx.nf.fx.daemon.kill();
    assert!(
        events.next().await.is_none_or(|r| r.is_err()),
        "the stream outlived berthd"
    );
    berth_tests::proc::kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert!(berth_tests::proc::wait_dead(pid, Duration::from_secs(10)));
    fx.nf.fx.daemon.start_again();
    let mut rt = fx.runtime().await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: stays.clone(),
        timeout: 0,
    })
    .await
    .expect("stop");

    // Resumed after the last seq seen: the exit that happened while berthd was down, then the stop.
    let mut resumed = rt
        .get_container_events(cri::GetEventsRequest {
            berth_after_seq: last,
        })
        .await
        .expect("resume")
        .into_inner();
    let got = read_until(&mut resumed, last, stopped(&stays)).await;
    let mine: Vec<(String, i32, i32)> = got
        .iter()
        .filter(|e| e.container_id == killed || e.container_id == stays)
        .map(|e| {
            (
                e.container_id.clone(),
                e.container_event_type,
                e.containers_statuses
                    .first()
                    .map(|s| s.exit_code)
                    .unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        mine,
        vec![
            (killed.clone(), T::ContainerStoppedEvent as i32, 137),
            (stays.clone(), T::ContainerStoppedEvent as i32, 137),
        ]
    );
    // A subscriber from now on does not see the past (what the cursor is for).
    let mut fresh = rt
        .get_container_events(cri::GetEventsRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("remove");
    let after = read_until(&mut fresh, last, |ev| {
        ev.container_id == pod && ev.container_event_type == T::ContainerDeletedEvent as i32
    })
    .await;
    assert!(after.iter().all(
        |e| e.container_event_type != T::ContainerStoppedEvent as i32 || e.container_id == pod
    ));
    fx.nf.fx.guard.assert_clean();
}
