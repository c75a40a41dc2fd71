//! A berthd restart: attach, drop every in-memory object, find the attachment again through
//! the cache with a new driver, and detach it completely (veth, IPAM, portmap rules, cache).

mod common;

use std::time::Duration;

use berth_net::{parse_publish, Cni};
use berth_tests::require_root;
use common::{eventually, links_on, NetEnv};

#[test]
fn list_cached_after_a_restart_finds_and_detaches_everything() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-restart");
    let ns = env.netns("pod");
    let (attached, result) = {
        // "berthd before the crash": its own driver and network objects, all dropped after.
        let cni = Cni::new(env.cfg.clone());
        let net = env.default_network();
        let mut att = env.attachment("restart", &ns);
        let port = common::free_port();
        att.port_mappings = parse_publish(&format!("127.0.0.1:{port}:80")).expect("parse_publish");
        att.args = vec![("K8S_POD_NAME".into(), "web".into())];
        let r = cni.attach(&net, &att).expect("attach");
        (att, r)
    };
    let ip = result.first_ip(true).expect("first_ip").to_string();
    assert!(common::iptables_text().contains(&ip));

    // Even with the conf dir gone, the cache holds the network as it was ADDed.
    let _ = std::fs::remove_dir_all(&env.cfg.conf_dir);
    let cni = Cni::new(env.cfg.clone());
    let (found, errors) = cni.list_cached();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(found.len(), 1, "{found:?}");
    let c = &found[0];
    assert_eq!(c.attachment, attached);
    assert_eq!(c.result.as_ref(), Some(&result));
    assert_eq!(c.network.name, format!("t-{}", env.bridge));
    assert_eq!(c.network.plugins.len(), 3);

    cni.detach(&c.network, &c.attachment).expect("detach");
    let bridge = env.bridge.clone();
    assert!(eventually(Duration::from_secs(5), || links_on(&bridge).is_empty()));
    assert!(env.ipam_reservations().is_empty());
    assert!(!common::iptables_text().contains(&ip));
    assert!(cni.list_cached().0.is_empty());

    // And the same sandbox can be attached again afterwards.
    let net = env.default_network();
    let again = cni.attach(&net, &attached).expect("attach");
    assert!(again.first_ip(true).is_some());
    cni.detach(&net, &attached).expect("detach");
}

#[test]
fn a_damaged_cache_entry_is_reported_and_does_not_block_detach() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-badcache");
    let net = env.default_network();
    let ns = env.netns("c");
    let att = env.attachment("bad", &ns);
    env.cni.attach(&net, &att).expect("attach");
    let path = env
        .cni
        .cached(&net.name, &att.container_id, "eth0")
        .expect("test setup")
        .expect("test setup")
        .path;
    std::fs::write(&path, b"{ not json").expect("write");

    let (found, errors) = env.cni.list_cached();
    assert!(found.is_empty());
    assert_eq!(errors.len(), 1);
    let msg = errors[0].to_string();
    assert!(
        msg.contains(path.to_str().expect("to_str")) && msg.contains("invalid JSON"),
        "{msg}"
    );
    // ADD refuses to overwrite it; DEL goes ahead without prevResult and removes it.
    assert!(env.cni.attach(&net, &att).is_err());
    env.cni.detach(&net, &att).expect("detach");
    assert!(!path.exists());
    assert!(env.ipam_reservations().is_empty());
    // Without the cached result the firewall plugin's rules for the IP stay (see README);
    // the environment's cleanup removes them and checks the rest.
}
