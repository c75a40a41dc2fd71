//! Many containers through gRPC: 50 created, started and deleted one after the other, then 50 more ten at a
//! time, on the default network, leave no netns, veth, iptables rule, IPAM reservation or cache entry. Root
//! only.

use std::sync::Arc;
use std::time::Instant;

use berth_tests::net_fixture::{NetFixture, NETWORKS, PORTS};

async fn cycle(nf: &NetFixture, id: &str, ports: Option<&str>) {
    let mut labels = vec![(NETWORKS, "berth")];
    if let Some(p) = ports {
        labels.push((PORTS, p));
    }
    nf.run(id, &labels, &["sleep", "1000"])
        .await
        .unwrap_or_else(|e| panic!("run {id}: {e}"));
    nf.remove(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sequential_then_fifty_ten_way_parallel_leave_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = Arc::new(NetFixture::new("net-churn", ""));
    let port = berth_tests::net_fixture::free_port();
    let t0 = Instant::now();
    for i in 0..50 {
        // Every fifth one publishes a port, so portmap's rules come and go too.
        let publish = format!("127.0.0.1:{port}:80");
        let ports = (i % 5 == 0).then_some(publish.as_str());
        cycle(&nf, &format!("s{i}"), ports).await;
    }
    eprintln!(
        "50 sequential create+start+delete: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    nf.assert_no_leaks();

    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..10 {
        let nf = nf.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..5 {
                cycle(&nf, &format!("p{w}-{i}"), None).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    eprintln!(
        "50 create+start+delete, 10 at a time: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    nf.assert_no_leaks();
    assert!(nf.netns_files().is_empty());
}
