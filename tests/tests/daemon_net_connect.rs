//! berthd networks through gRPC: containers on the default network reach each other by address and by name
//! and reach the bridge; `none` has only loopback; `host` shares the host's namespace; no label means no
//! attachment; malformed labels are refused before anything is created. Root only; each test has its own
//! berthd, conf dir, bridge and /24 (see `berth_tests::net_fixture`), and checks nothing is left.

use berth_tests::grpc::code;
use berth_tests::net_fixture::{NetFixture, NETWORKS};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_reach_each_other_by_address_and_name_and_the_bridge() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-pair", "");
    let sleep = ["sleep", "1000"];
    assert!(
        nf.conf_dir
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "the conf dir starts empty"
    );
    nf.run("c1", &[(NETWORKS, "berth")], &sleep)
        .await
        .expect("run c1");
    // The default network was written at first use, with the configured bridge and subnet.
    let conflist =
        std::fs::read_to_string(nf.conf_dir.join("10-berth.conflist")).expect("default network");
    assert!(
        conflist.contains(&nf.bridge) && conflist.contains(&nf.subnet),
        "{conflist}"
    );
    nf.run("c2", &[(NETWORKS, "berth")], &sleep)
        .await
        .expect("run c2");

    let ip1 = nf.ip_of("c1").await;
    let ip2 = nf.ip_of("c2").await;
    assert!(
        ip1.starts_with(&nf.prefix) && ip2.starts_with(&nf.prefix),
        "{ip1} {ip2}"
    );
    assert_ne!(ip1, ip2);
    // The netns is berthd's named one.
    assert!(nf.netns_path("c1").exists());

    for (from, target) in [
        ("c1", ip2.as_str()),
        ("c2", ip1.as_str()),
        ("c1", "c2"),
        ("c1", "c2-h"),
        ("c2", "c1"),
        ("c2", "c1-h"),
        ("c1", nf.gateway().as_str()),
    ] {
        let (rc, out) = nf.exec(from, &format!("ping -c 1 -W 3 {target}")).await;
        assert_eq!(rc, 0, "{from} cannot ping {target}: {out}");
    }
    // c1 joined first: its bind-mounted /etc/hosts was rewritten in place when c2 came.
    let (_, hosts1) = nf.exec("c1", "cat /etc/hosts").await;
    assert!(hosts1.contains(&format!("{ip2}\tc2-h c2")), "{hosts1}");
    assert!(hosts1.contains(&format!("{ip1}\tc1-h c1")), "{hosts1}");
    let (_, own) = nf
        .exec("c2", "cat /etc/hostname; hostname; cat /etc/resolv.conf")
        .await;
    assert!(own.starts_with("c2-h\nc2-h\n"), "{own}");
    assert!(
        !own.contains("nameserver"),
        "no nameserver on Berth's default network: {own}"
    );
    // Nothing was written into the image's rootfs (the runtime made an empty mount point there).
    let in_rootfs = nf.fx.dir.join("c1/rootfs/etc/hosts");
    assert_eq!(std::fs::read_to_string(&in_rootfs).unwrap_or_default(), "");

    nf.remove("c2").await;
    let (_, hosts1) = nf.exec("c1", "cat /etc/hosts").await;
    assert!(
        !hosts1.contains("c2"),
        "c2 left, c1's hosts file must say so: {hosts1}"
    );
    let (rc, _) = nf.exec("c1", "ping -c 1 -W 1 c2").await;
    assert_ne!(rc, 0, "c2 is gone");
    nf.remove("c1").await;
    nf.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_has_only_loopback_and_no_label_gets_no_attachment() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-none", "");
    let sleep = ["sleep", "1000"];
    nf.run("lonely", &[(NETWORKS, "none")], &sleep)
        .await
        .expect("run");
    let (rc, out) = nf.exec("lonely", "ip -o link; ip -o -4 addr").await;
    assert_eq!(rc, 0, "{out}");
    let links: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("mtu"))
        .filter_map(|l| l.split(": ").nth(1))
        .collect();
    assert_eq!(links, ["lo"], "{out}");
    assert!(out.contains("inet 127.0.0.1/8"), "loopback is up: {out}");
    assert!(nf.netns_path("lonely").exists(), "berthd's own netns");
    let (_, hosts) = nf.exec("lonely", "cat /etc/hosts").await;
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");

    // No label: the runtime's own netns, nothing of berthd's (as containerd).
    nf.run("plain", &[], &sleep).await.expect("run");
    assert!(!nf.netns_path("plain").exists());
    assert!(!nf.task_dir("plain").join("hosts").exists());
    let (rc, out) = nf.exec("plain", "ip -o link; cat /etc/hosts").await;
    assert_eq!(rc, 1, "no /etc/hosts in the busybox rootfs: {out}");
    assert!(out.contains("1: lo"), "{out}");
    assert!(nf.veths().is_empty());

    nf.remove("lonely").await;
    nf.remove("plain").await;
    assert!(!nf.netns_path("lonely").exists());
    nf.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_shares_the_host_namespace() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-host", "");
    nf.run("h", &[(NETWORKS, "host")], &["sleep", "1000"])
        .await
        .expect("run");
    let ours = std::fs::read_link("/proc/self/ns/net").expect("our netns");
    let (rc, out) = nf.exec("h", "readlink /proc/self/ns/net; ip -o link").await;
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.starts_with(&format!("{}\n", ours.display())),
        "the container must be in the host's netns ({}): {out}",
        ours.display()
    );
    // It sees a host interface that only the host has: a veth pair made for the test.
    let dummy = format!("{}d", nf.bridge);
    let peer = format!("{}p", nf.bridge);
    let made = berth_tests::net_fixture::sh(&[
        "ip", "link", "add", &dummy, "type", "veth", "peer", "name", &peer,
    ]);
    assert!(made.0, "{}", made.1);
    let (_, out) = nf.exec("h", "ip -o link").await;
    let _ = berth_tests::net_fixture::sh(&["ip", "link", "del", &dummy]);
    assert!(out.contains(&format!(": {dummy}@{peer}:")), "{out}");
    assert!(
        !nf.netns_path("h").exists(),
        "no netns of berthd's for host"
    );
    let (_, hosts) = nf.exec("h", "cat /etc/hosts").await;
    assert_eq!(
        hosts,
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    );
    nf.remove("h").await;
    nf.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_labels_and_unknown_networks_are_refused_before_anything_is_made() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-labels", "");
    let sleep = ["sleep", "1000"];
    for (i, (labels, want, needle)) in [
        (
            vec![(NETWORKS, "a,,b")],
            Code::InvalidArgument,
            "berth.io/networks=\"a,,b\"",
        ),
        (
            vec![(NETWORKS, "host,berth")],
            Code::InvalidArgument,
            "berth.io/networks=\"host,berth\"",
        ),
        (
            vec![(NETWORKS, "berth"), ("berth.io/ports", "80")],
            Code::InvalidArgument,
            "berth.io/ports=\"80\"",
        ),
        (
            vec![(NETWORKS, "nosuchnet")],
            Code::FailedPrecondition,
            "network \"nosuchnet\" is not configured",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad{i}");
        let err = nf.run(&id, &labels, &sleep).await.expect_err("refused");
        assert_eq!(err.code(), want, "{err:?}");
        assert!(
            err.message().contains(needle),
            "{:?} lacks {needle:?}",
            err.message()
        );
        assert_eq!(code(nf.fx.get(&id, "").await), Code::NotFound);
        assert_eq!(nf.container_leftovers(&id), Vec::<String>::new());
        nf.delete_container(&id).await;
    }
    // Nothing was created: no netns, no bridge, no default network written (no label asked for it).
    assert!(nf.netns_files().is_empty());
    assert!(!berth_tests::net_fixture::sh(&["ip", "link", "show", &nf.bridge]).0);
    assert!(!nf.conf_dir.join("10-berth.conflist").exists());
    nf.assert_no_leaks();
}
