//! PodSandboxStats and ListPodSandboxStats: a pod's CPU, memory and process count cover its containers, its
//! network usage is its namespace's eth0 (counting the bytes a ping sent), each running container's stats are
//! included, the second sample has a CPU rate as the kubelet reads it; filters by id and labels; NotFound for
//! an unknown pod. Root only.

use std::collections::HashMap;

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;
use tonic::Code;

fn v(x: &Option<cri::UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).expect("a value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_stats_cover_the_pod_and_its_network() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-podstats") else {
        return;
    };
    fx.pull_busybox().await;
    let cfg = fx.pod_config("measured");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let c = fx
        .container(&pod, &cfg, fx.container_config("busy", "exec sleep 1000"))
        .await
        .expect("container");
    // Traffic out of the pod's eth0: 3 pings of 1000 bytes to the bridge.
    let r = fx
        .exec(&c, &format!("ping -c 3 -s 1000 {}", fx.nf.gateway()), 20)
        .await
        .expect("ping");
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stdout));

    let mut rt = fx.runtime().await;
    let first = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("pod stats")
        .into_inner()
        .stats
        .expect("stats");
    let attrs = first.attributes.as_ref().expect("attributes");
    assert_eq!(attrs.id, pod);
    assert_eq!(attrs.metadata, cfg.metadata);
    assert_eq!(attrs.labels, cfg.labels);
    let linux = first.linux.as_ref().expect("linux stats");
    let eth0 = linux
        .network
        .as_ref()
        .and_then(|n| n.default_interface.as_ref())
        .expect("eth0");
    assert_eq!(eth0.name, "eth0");
    assert!(v(&eth0.tx_bytes) >= 3 * 1000, "{eth0:?}");
    assert!(v(&eth0.rx_bytes) >= 3 * 1000, "{eth0:?}");
    // pause + sleep.
    assert!(
        v(&linux.process.as_ref().expect("process").process_count) >= 2,
        "{linux:?}"
    );
    assert_eq!(linux.containers.len(), 1);
    let cs = &linux.containers[0];
    assert_eq!(
        cs.attributes.as_ref().map(|a| a.id.as_str()),
        Some(c.as_str())
    );
    let mem = linux.memory.as_ref().expect("memory");
    let c_mem = cs.memory.as_ref().expect("container memory");
    assert!(v(&mem.working_set_bytes) >= v(&c_mem.working_set_bytes));
    assert!(v(&mem.usage_bytes) > 0);
    let cpu = linux.cpu.as_ref().expect("cpu");
    let c_cpu = cs.cpu.as_ref().expect("container cpu");
    assert!(v(&cpu.usage_core_nano_seconds) >= v(&c_cpu.usage_core_nano_seconds));
    assert!(v(&c_cpu.usage_core_nano_seconds) > 0);

    // The second sample has a rate.
    let listed = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod[..12].to_string(),
                label_selector: cfg.labels.clone(),
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let l2 = listed[0].linux.as_ref().expect("linux");
    assert!(l2
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores.as_ref())
        .is_some());
    assert!(l2.containers[0]
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores.as_ref())
        .is_some());
    let none = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: String::new(),
                label_selector: HashMap::from([("app".to_string(), "other".to_string())]),
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert!(none.is_empty());
    let err = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "no-such-pod".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove");
    fx.nf.fx.guard.assert_clean();
}
