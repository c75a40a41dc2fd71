//! DEL robustness and ADD failure: detach after the netns is gone, twice, without a cache
//! entry; an ADD that fails (or hangs) in the middle of a chain leaves nothing attached.

mod common;

use std::time::Duration;

use berth_net::{parse_publish, Cni, Error, NetConfig};
use berth_tests::require_root;
use common::{eventually, links_on, write_plugin, NetEnv};

/// Everything one attachment made is gone: veths (the kernel may take a moment after the
/// netns went), IPAM reservations, cache entries, and rules naming its IP.
fn assert_detached(env: &NetEnv, ip: &str) {
    assert_detached_but_firewall(env, ip);
    let rules = common::iptables_text();
    assert!(!rules.contains(ip), "rules for {ip} left:\n{rules}");
}

/// As [`assert_detached`], except the firewall plugin's per-IP rules in `CNI-FORWARD`: its DEL
/// learns the IP only from `prevResult`, so without a cached result they stay (documented).
fn assert_detached_but_firewall(env: &NetEnv, ip: &str) {
    let bridge = env.bridge.clone();
    assert!(
        eventually(Duration::from_secs(5), || links_on(&bridge).is_empty()),
        "veths on the bridge: {:?}",
        links_on(&bridge)
    );
    assert!(
        env.ipam_reservations().is_empty(),
        "{:?}",
        env.ipam_reservations()
    );
    assert_eq!(env.cached(), 0);
    let rules = common::iptables_text();
    for line in rules.lines().filter(|l| l.contains(ip)) {
        assert!(
            line.starts_with("-A CNI-FORWARD "),
            "rule for {ip} left: {line}\n{rules}"
        );
    }
}

#[test]
fn detach_after_the_netns_was_removed() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-del-gone");
    let net = env.default_network();
    let ns = env.netns("c");
    let mut att = env.attachment("gone", &ns);
    let port = common::free_port();
    att.port_mappings = parse_publish(&format!("127.0.0.1:{port}:80")).expect("parse_publish");
    let ip = env
        .cni
        .attach(&net, &att)
        .expect("test setup")
        .first_ip(true)
        .expect("test setup")
        .to_string();

    berth_net::remove_netns(&ns).expect("remove_netns");
    assert!(!ns.exists());
    env.cni.detach(&net, &att).expect("detach");
    assert_detached(&env, &ip);
}

#[test]
fn detach_twice_and_detach_without_a_cache_entry() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-del-twice");
    let net = env.default_network();
    let ns = env.netns("c");
    let att = env.attachment("twice", &ns);
    let ip = env
        .cni
        .attach(&net, &att)
        .expect("test setup")
        .first_ip(true)
        .expect("test setup")
        .to_string();
    env.cni.detach(&net, &att).expect("detach");
    env.cni.detach(&net, &att).expect("detach");
    assert_detached(&env, &ip);

    // Attach again, lose the cache file, detach: DEL runs without prevResult and still
    // releases the address, removes the veth and portmap's rules (found by container id).
    let mut att = att;
    let port = common::free_port();
    att.port_mappings = parse_publish(&format!("127.0.0.1:{port}:80")).expect("parse_publish");
    let ip = env
        .cni
        .attach(&net, &att)
        .expect("test setup")
        .first_ip(true)
        .expect("test setup")
        .to_string();
    assert!(common::iptables_text().contains(&format!("--dport {port}")));
    let cached = env
        .cni
        .cached(&net.name, &att.container_id, "eth0")
        .expect("test setup")
        .expect("test setup");
    std::fs::remove_file(&cached.path).expect("remove_file");
    assert_eq!(env.cached(), 0);
    env.cni.detach(&net, &att).expect("detach");
    assert_detached_but_firewall(&env, &ip);
    assert!(!common::iptables_text().contains(&format!("--dport {port}")));
    assert_eq!(common::links_in(&ns), ["lo"]);
}

#[test]
fn attaching_twice_is_refused() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-add-twice");
    let net = env.default_network();
    let ns = env.netns("c");
    let att = env.attachment("dup", &ns);
    env.cni.attach(&net, &att).expect("attach");
    match env.cni.attach(&net, &att) {
        Err(e @ Error::AlreadyAttached { pending: false, .. }) => {
            assert!(e.to_string().contains(&att.container_id), "{e}")
        }
        other => panic!("expected AlreadyAttached, got {other:?}"),
    }
    // A second interface of the same sandbox on the same network is a separate attachment.
    let mut second = att.clone();
    second.ifname = "eth1".into();
    let r = env.cni.attach(&net, &second).expect("attach");
    assert_eq!(
        r.interfaces
            .iter()
            .find(|i| i.sandbox.is_some())
            .expect("test setup")
            .name,
        "eth1"
    );
    assert_eq!(common::links_in(&ns).len(), 3);
    env.cni.detach(&net, &second).expect("detach");
    env.cni.detach(&net, &att).expect("detach");
    assert!(env.ipam_reservations().is_empty());
}

/// A plugin that logs each command and fails ADD with a CNI error (and DEL while the file
/// `<log>.faildel` exists).
fn failing_plugin(env: &NetEnv, name: &str) -> std::path::PathBuf {
    let log = env.dir.join(format!("{name}.log"));
    write_plugin(
        &env.plugin_dir,
        name,
        &format!(
            r#"cat >/dev/null
echo "$CNI_COMMAND" >> {log}
case "$CNI_COMMAND" in
ADD) echo "failing on purpose" >&2
     printf '{{"cniVersion":"1.0.0","code":107,"msg":"deliberate failure","details":"test plugin"}}'
     exit 1 ;;
DEL) if [ -e {log}.faildel ]; then printf '{{"code":11,"msg":"DEL refused"}}'; exit 1; fi ;;
VERSION) printf '{{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}}' ;;
esac
"#,
            log = log.display()
        ),
    );
    log
}

#[test]
fn add_failing_mid_chain_leaves_no_veth_no_reservation_no_cache() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-add-fail");
    let log = failing_plugin(&env, "berth-test-fail");
    let net = env.network(serde_json::json!({
        "cniVersion": "1.0.0", "name": format!("t-{}", env.bridge),
        "plugins": [env.bridge_plugin(), {"type": "berth-test-fail"},
                    {"type": "portmap", "capabilities": {"portMappings": true}}]
    }));
    let ns = env.netns("c");
    let mut att = env.attachment("fail", &ns);
    let port = common::free_port();
    att.port_mappings = parse_publish(&format!("127.0.0.1:{port}:80")).expect("parse_publish");

    let err = env.cni.attach(&net, &att).expect_err("attach should fail");
    match &err {
        Error::PluginFailed(f) => {
            assert_eq!(
                (f.plugin.as_str(), f.command, f.code),
                ("berth-test-fail", "ADD", Some(107))
            );
            assert_eq!(
                (f.msg.as_str(), f.details.as_str()),
                ("deliberate failure", "test plugin")
            );
            assert_eq!(f.stderr, "failing on purpose");
        }
        other => panic!("expected PluginFailed, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&net.name) && text.contains("berth-test-fail"),
        "{text}"
    );
    assert!(text.contains("deliberate failure"), "{text}");
    // The chain was DELeted (in reverse) after the failure; portmap's ADD never ran.
    assert_eq!(
        std::fs::read_to_string(&log).expect("read_to_string"),
        "ADD\nDEL\n"
    );
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
    assert_eq!(common::links_in(&ns), ["lo"]);
}

#[test]
fn failed_undo_keeps_the_attachment_cached_until_a_later_detach() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-undo-fail");
    let log = failing_plugin(&env, "berth-test-fail");
    std::fs::write(format!("{}.faildel", log.display()), "").expect("write");
    let net = env.network(serde_json::json!({
        "cniVersion": "1.0.0", "name": format!("t-{}", env.bridge),
        "plugins": [env.bridge_plugin(), {"type": "berth-test-fail"}]
    }));
    let ns = env.netns("c");
    let att = env.attachment("undo", &ns);
    let err = env.cni.attach(&net, &att).expect_err("attach should fail");
    let Error::AddCleanupFailed { cause, cleanup } = &err else {
        panic!("expected AddCleanupFailed, got {err:?}");
    };
    assert!(cause.to_string().contains("deliberate failure"));
    assert!(
        cleanup[0].to_string().contains("DEL refused"),
        "{cleanup:?}"
    );
    assert!(err.to_string().contains("stays cached"), "{err}");

    // berthd finds it (no result: the ADD never finished) and detaches it once DEL works.
    let (found, errors) = env.cni.list_cached();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].attachment, att);
    assert!(found[0].result.is_none());
    assert!(matches!(
        env.cni.attach(&net, &att),
        Err(Error::AlreadyAttached { pending: true, .. })
    ));
    assert!(env
        .cni
        .detach(&found[0].network, &found[0].attachment)
        .is_err());
    assert_eq!(env.cached(), 1, "a failed DEL must keep the cache entry");
    std::fs::remove_file(format!("{}.faildel", log.display())).expect("remove_file");
    env.cni
        .detach(&found[0].network, &found[0].attachment)
        .expect("test setup");
    assert_eq!(env.cached(), 0);
    assert!(env.ipam_reservations().is_empty());
    assert!(links_on(&env.bridge).is_empty());
}

#[test]
fn a_hanging_plugin_is_killed_and_the_chain_undone() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-add-hang");
    write_plugin(
        &env.plugin_dir,
        "berth-test-hang",
        "cat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then echo sleeping >&2; exec sleep 60; fi\n",
    );
    let cni = Cni::new(NetConfig {
        plugin_timeout: Duration::from_millis(1500),
        ..env.cfg.clone()
    });
    let net = env.network(serde_json::json!({
        "cniVersion": "1.0.0", "name": format!("t-{}", env.bridge),
        "plugins": [env.bridge_plugin(), {"type": "berth-test-hang"}]
    }));
    let ns = env.netns("c");
    let att = env.attachment("hang", &ns);
    let t0 = std::time::Instant::now();
    let err = cni.attach(&net, &att).expect_err("attach should fail");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    match &err {
        Error::PluginTimeout {
            plugin,
            command,
            stderr,
            ..
        } => {
            assert_eq!((plugin.as_str(), *command), ("berth-test-hang", "ADD"));
            assert_eq!(stderr.trim(), "sleeping");
        }
        other => panic!("expected PluginTimeout, got {other:?}"),
    }
    assert!(links_on(&env.bridge).is_empty());
    assert!(env.ipam_reservations().is_empty());
    assert_eq!(env.cached(), 0);
    // The killed plugin is gone (no `sleep 60` child of ours is left).
    let me = std::process::id().to_string();
    let ps = common::run(&["ps", "-o", "pid=,args=", "--ppid", &me]);
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains("sleep 60"), "{ps}");
}

#[test]
fn a_missing_plugin_is_named() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-missing");
    let net = env.network(serde_json::json!({
        "cniVersion": "1.0.0", "name": format!("t-{}", env.bridge),
        "plugins": [env.bridge_plugin(), {"type": "no-such-plugin"}]
    }));
    let ns = env.netns("c");
    let att = env.attachment("missing", &ns);
    let err = env.cni.attach(&net, &att).expect_err("attach should fail");
    let text = err.to_string();
    assert!(
        text.contains("plugin \"no-such-plugin\" not found in"),
        "{text}"
    );
    assert!(text.contains("/usr/lib/cni"), "{text}");
    // Its DEL during the undo fails the same way, so the entry stays for a later detach
    // (the bridge's DEL, run after it, still released the address).
    assert!(matches!(err, Error::AddCleanupFailed { .. }), "{err:?}");
    assert!(env.ipam_reservations().is_empty());
    let (found, _) = env.cni.list_cached();
    assert_eq!(found.len(), 1);
    // Detach with the chain fixed (the missing plugin removed from the config).
    let fixed = env.network(serde_json::json!({
        "cniVersion": "1.0.0", "name": net.name, "plugins": [env.bridge_plugin()]
    }));
    env.cni
        .detach(&fixed, &found[0].attachment)
        .expect("detach");
    assert_eq!(env.cached(), 0);
    assert!(links_on(&env.bridge).is_empty());
}
