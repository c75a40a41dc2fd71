//! Two network namespaces on the default network's chain (bridge + portmap + firewall) with a
//! test bridge: addresses from the subnet, traffic between them, `lo` up, no default route,
//! CHECK, and detach removing every veth, reservation and cache entry.

mod common;

use std::net::IpAddr;

use berth_net::IpNet;
use berth_tests::require_root;
use common::{in_netns, links_on, NetEnv};

#[test]
fn two_netns_on_one_bridge_reach_each_other_and_nothing_else() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-two");
    let net = env.default_network();
    let ns_a = env.netns("a");
    let ns_b = env.netns("b");
    let a = env.attachment("two-a", &ns_a);
    let b = env.attachment("two-b", &ns_b);

    let t0 = std::time::Instant::now();
    let ra = env.cni.attach(&net, &a).expect("attach");
    let first_attach = t0.elapsed();
    let rb = env.cni.attach(&net, &b).expect("attach");

    let subnet: IpNet = env.subnet.parse().expect("parse");
    let gateway = subnet.nth(1).expect("nth");
    let ip_a = ra.first_ip(true).expect("no IPv4 for a");
    let ip_b = rb.first_ip(true).expect("no IPv4 for b");
    assert!(
        subnet.contains(ip_a) && subnet.contains(ip_b),
        "{ip_a} {ip_b} not in {subnet}"
    );
    assert_ne!(ip_a, ip_b);
    assert_eq!(ra.ips[0].gateway, Some(gateway));
    assert!(
        ra.routes.is_empty(),
        "routes in the result: {:?}",
        ra.routes
    );
    assert!(
        ra.dns.nameservers.is_empty(),
        "DNS in the result: {:?}",
        ra.dns
    );
    // The sandbox interface is ours, named as asked, in our netns.
    let eth0 = ra
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_some())
        .expect("find");
    assert_eq!(eth0.name, "eth0");
    assert_eq!(
        eth0.sandbox.as_deref(),
        Some(ns_a.to_str().expect("to_str"))
    );
    assert_eq!(ra.raw["cniVersion"], "1.0.0");
    // The bridge carries the gateway address; both veths hang off it.
    let addr = common::run_ok(&["ip", "-o", "-4", "addr", "show", "dev", &env.bridge]);
    assert!(addr.contains(&format!("{gateway}/24")), "{addr}");
    assert_eq!(links_on(&env.bridge).len(), 2);
    assert_eq!(env.ipam_reservations().len(), 2);

    // lo is up in both.
    for ns in [&ns_a, &ns_b] {
        let lo = in_netns(ns, &["ip", "-o", "link", "show", "lo"]);
        assert!(
            String::from_utf8_lossy(&lo.stdout).contains("UP,LOWER_UP"),
            "{lo:?}"
        );
    }

    // Routes inside a: only the subnet (on eth0) and, with isGateway, routes via the bridge
    // address; no default route, so nothing leaves but through the test bridge.
    let routes = in_netns(&ns_a, &["ip", "-4", "route", "show", "table", "main"]);
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(!routes.is_empty());
    for line in routes.lines() {
        let on_subnet = line.starts_with(&format!("{} dev eth0", subnet.network()));
        let via_gw = line.contains(&format!("via {gateway} dev eth0"));
        assert!(
            on_subnet || via_gw,
            "unexpected route in the netns: {line:?}\n{routes}"
        );
        assert!(!line.starts_with("default"), "default route: {line}");
    }
    let routes6 = in_netns(&ns_a, &["ip", "-6", "route", "show"]);
    assert!(!String::from_utf8_lossy(&routes6.stdout).contains("default"));

    // a reaches b: ICMP and TCP (busybox httpd in b, an HTTP GET from a).
    let ping = in_netns(&ns_a, &["busybox", "ping", "-c1", "-W2", &ip_b.to_string()]);
    assert!(ping.status.success(), "ping a -> b: {ping:?}");
    let token = format!("hello-from-b-{}", std::process::id());
    env.httpd(&ns_b, 8080, &token);
    let got = common::eventually(std::time::Duration::from_secs(5), || {
        common::http_get_in(&ns_a, &ip_b.to_string(), 8080).as_deref() == Some(token.as_str())
    });
    assert!(got, "a could not fetch http://{ip_b}:8080/f from b");
    // ...but not an address outside the subnet: there is no route for it.
    let out = in_netns(&ns_a, &["busybox", "ping", "-c1", "-W1", "10.255.255.1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "expected 'Network unreachable': {out:?}"
    );

    env.cni.check(&net, &a).expect("check");
    env.cni.check(&net, &b).expect("check");

    let t0 = std::time::Instant::now();
    env.cni.detach(&net, &a).expect("detach");
    eprintln!(
        "attach (bridge+portmap+firewall): {first_attach:?}, detach: {:?}",
        t0.elapsed()
    );
    env.cni.detach(&net, &b).expect("detach");
    assert!(
        links_on(&env.bridge).is_empty(),
        "{:?}",
        links_on(&env.bridge)
    );
    assert!(
        env.ipam_reservations().is_empty(),
        "{:?}",
        env.ipam_reservations()
    );
    assert_eq!(env.cached(), 0);
    assert_eq!(common::links_in(&ns_a), ["lo"]);
    // Rules the firewall plugin added for the two IPs are gone too.
    let rules = common::iptables_text();
    for ip in [ip_a, ip_b] {
        assert!(
            !rules.contains(&ip.to_string()),
            "rule for {ip} left:\n{rules}"
        );
    }
}

#[test]
fn parallel_attachments_get_distinct_addresses_and_all_detach() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-parallel");
    let net = env.default_network();
    const N: usize = 8;
    let atts: Vec<_> = (0..N)
        .map(|i| {
            let ns = env.netns(&format!("p{i}"));
            env.attachment(&format!("par{i}"), &ns)
        })
        .collect();
    let t0 = std::time::Instant::now();
    let ips: Vec<IpAddr> = std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .map(|a| s.spawn(|| env.cni.attach(&net, a).expect("attach")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("attach thread").first_ip(true).expect("ip"))
            .collect()
    });
    let attach_time = t0.elapsed();
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), N, "{ips:?}");
    assert_eq!(links_on(&env.bridge).len(), N);
    assert_eq!(env.cached(), N);

    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for a in &atts {
            s.spawn(|| env.cni.detach(&net, a).expect("detach"));
        }
    });
    eprintln!(
        "{N} parallel attaches (bridge+portmap+firewall): {attach_time:?}, detaches: {:?}",
        t0.elapsed()
    );
    assert!(links_on(&env.bridge).is_empty());
    assert!(env.ipam_reservations().is_empty());
    assert_eq!(env.cached(), 0);
}
