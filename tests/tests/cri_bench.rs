//! Benchmark (ignored by default): CRI pod start (RunPodSandbox → CreateContainer → StartContainer of a
//! `sleep`: the container is running) and pod teardown (StopPodSandbox → RemovePodSandbox) on berthd, with a
//! real CNI attachment per pod; one pod at a time for `BERTH_BENCH_ROUNDS` rounds (default 10), then 30 pods
//! at once. Prints medians (and for the 30, the wall time of the whole batch). Root only. The comparison
//! with containerd's CRI is not written yet. Run it with the binaries of the profile to measure:
//!
//!   cargo build --release --bins -p berth-daemon -p berth-shim -p berth-oci -p berth-cli
//!   BERTH_TEST_PROFILE=release cargo test --release -p berth-tests --test cri_bench -- --ignored --nocapture

use std::time::{Duration, Instant};

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Start pod `name` with one running container; returns (pod id, time taken).
async fn start(fx: &CriFixture, name: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let cfg = fx.pod_config(name);
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    fx.container(&pod, &cfg, fx.container_config("app", "exec sleep 1000"))
        .await
        .expect("container");
    (pod, t0.elapsed())
}

async fn teardown(fx: &CriFixture, pod: &str) -> Duration {
    let mut rt = fx.runtime().await;
    let t0 = Instant::now();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .expect("stop");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .expect("remove");
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn pod_start_and_teardown() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-bench") else {
        return;
    };
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    fx.pull_busybox().await;
    // Warm-up: the sandbox image pull and the default network's first use.
    let (pod, _) = start(&fx, "warm").await;
    teardown(&fx, &pod).await;

    let (mut starts, mut downs) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let (pod, s) = start(&fx, &format!("one-{i}")).await;
        starts.push(s);
        downs.push(teardown(&fx, &pod).await);
    }
    println!(
        "1 pod x {rounds}: start median {:.1} ms, teardown median {:.1} ms",
        median(starts).as_secs_f64() * 1e3,
        median(downs).as_secs_f64() * 1e3
    );

    let t0 = Instant::now();
    let started = futures::future::join_all((0..30).map(|i| {
        let fx = &fx;
        async move { start(fx, &format!("many-{i}")).await }
    }))
    .await;
    let batch = t0.elapsed();
    let starts: Vec<Duration> = started.iter().map(|(_, d)| *d).collect();
    let t1 = Instant::now();
    let downs = futures::future::join_all(started.iter().map(|(pod, _)| teardown(&fx, pod))).await;
    let batch_down = t1.elapsed();
    println!(
        "30 pods at once: start median {:.1} ms (batch {:.0} ms), teardown median {:.1} ms (batch {:.0} ms)",
        median(starts).as_secs_f64() * 1e3,
        batch.as_secs_f64() * 1e3,
        median(downs).as_secs_f64() * 1e3,
        batch_down.as_secs_f64() * 1e3
    );
    fx.nf.fx.guard.assert_clean();
}
