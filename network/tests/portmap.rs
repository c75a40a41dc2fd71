//! Published ports through the portmap plugin: `-p 127.0.0.1:<port>:80` reaches a listener in
//! the container's netns from the host, and detach removes the rules.
//!
//! What portmap does for a 127.0.0.1 host IP (plugins 1.1.1, checked here): a DNAT rule in the
//! nat table's OUTPUT path (`CNI-HOSTPORT-DNAT` -> `CNI-DN-<hash>`), a mark on connections from
//! localhost that `CNI-HOSTPORT-MASQ` masquerades in POSTROUTING (`snat: true`), and
//! `net.ipv4.conf.<bridge>.route_localnet=1` on the bridge so that 127.0.0.1-sourced packets
//! may be routed out of it. That sysctl lives and dies with the bridge; nothing host-wide
//! needs setting. The shared chains (`CNI-HOSTPORT-*`, and the firewall plugin's
//! `CNI-FORWARD`/`CNI-ADMIN`) stay after the last DEL, as with every CNI runtime.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use berth_net::parse_publish;
use berth_tests::require_root;
use common::{eventually, free_port, free_ports, http_get, NetEnv};

#[test]
fn published_localhost_port_reaches_the_container_and_detach_removes_the_rules() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-portmap");
    let net = env.default_network();
    let ns = env.netns("c");
    let port = free_port();
    let mut att = env.attachment("pm", &ns);
    att.port_mappings = parse_publish(&format!("127.0.0.1:{port}:80")).expect("parse_publish");

    let token = format!("published-{port}");
    env.httpd(&ns, 80, &token);
    let res = env.cni.attach(&net, &att).expect("attach");
    let ip = res.first_ip(true).expect("first_ip");

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let reached = eventually(Duration::from_secs(5), || {
        http_get(addr).as_deref() == Some(token.as_str())
    });
    assert!(reached, "GET http://{addr}/f did not reach the container");

    let rules = common::iptables_text();
    let dnat = format!("--to-destination {ip}:80");
    assert!(rules.contains(&dnat), "no DNAT to {ip}:80:\n{rules}");
    assert!(rules.contains(&format!("--dport {port}")));
    let localnet = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", env.bridge);
    assert_eq!(
        std::fs::read_to_string(&localnet)
            .expect("read_to_string")
            .trim(),
        "1"
    );

    // CHECK through the chain. Debian's portmap 1.1.1 checks its DNAT chain in ip6tables
    // even for an IPv4-only mapping and fails; accept only that known failure.
    match env.cni.check(&net, &att) {
        Ok(()) => {}
        Err(e) => {
            let msg = e.to_string();
            eprintln!("CHECK failed as known for portmap 1.1.1: {msg}");
            assert!(
                msg.contains("plugin portmap CHECK failed") && msg.contains("ipv6"),
                "CHECK failed otherwise: {msg}"
            );
            assert!(msg.contains(&net.name), "{msg}");
        }
    }

    env.cni.detach(&net, &att).expect("detach");
    let rules = common::iptables_text();
    for gone in [
        ip.to_string(),
        format!("--dport {port}"),
        "CNI-DN-".to_string(),
    ] {
        assert!(
            !rules.contains(&gone),
            "{gone:?} still in the rules after detach:\n{rules}"
        );
    }
    // Nothing listens on the host port any more: the connection is refused, not answered.
    assert_eq!(http_get(addr), None);
    assert!(common::links_on(&env.bridge).is_empty());
    assert!(env.ipam_reservations().is_empty());
    assert_eq!(env.cached(), 0);
}

#[test]
fn udp_and_range_mappings_become_rules_per_port() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-portrange");
    let net = env.default_network();
    let ns = env.netns("c");
    let base = free_ports(11);
    let mut att = env.attachment("range", &ns);
    att.port_mappings = berth_net::parse_publish_all(&[
        format!("127.0.0.1:{base}-{}:7000-7002/udp", base + 2),
        format!("{}:80", base + 10),
    ])
    .expect("test setup");
    let res = env.cni.attach(&net, &att).expect("attach");
    let ip = res.first_ip(true).expect("first_ip");
    let rules = common::iptables_text();
    for (h, c, proto) in [
        (base, 7000, "udp"),
        (base + 2, 7002, "udp"),
        (base + 10, 80, "tcp"),
    ] {
        let want = format!("-p {proto} -m {proto} --dport {h} -j DNAT --to-destination {ip}:{c}");
        assert!(rules.contains(&want), "missing {want:?}:\n{rules}");
    }
    env.cni.detach(&net, &att).expect("detach");
    let rules = common::iptables_text();
    assert!(!rules.contains(&ip.to_string()), "{rules}");
}
