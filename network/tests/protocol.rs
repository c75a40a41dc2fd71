//! The CNI protocol as plugins see it, through recording script plugins: chain order for ADD,
//! CHECK and DEL, `prevResult` threading, `runtimeConfig` from declared capabilities, the
//! `CNI_*` environment, version rules, and the 1.1 verbs STATUS and GC; VERSION-based
//! validation against both script and Debian's real plugins.

mod common;

use std::path::{Path, PathBuf};

use berth_net::{parse_publish, Error, Network};
use berth_tests::require_root;
use common::{write_plugin, NetEnv};
use serde_json::{json, Value};

/// Install the recording plugins `berth-log-a` (answers with 192.0.2.1) and `berth-log-b`
/// (192.0.2.2); every invocation appends one JSON line to the returned log.
fn recording_plugins(env: &NetEnv) -> PathBuf {
    let log = env.dir.join("calls.jsonl");
    for (name, n) in [("berth-log-a", 1), ("berth-log-b", 2)] {
        let body = format!(
            r#"input=$(cat)
ver=$(printf '%s' "$input" | sed -n 's/.*"cniVersion":"\([0-9.]*\)".*/\1/p')
printf '{{"plugin":"%s","command":"%s","containerId":"%s","netns":"%s","ifname":"%s","args":"%s","path":"%s","stdin":%s}}\n' \
  "{name}" "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" "${{input:-null}}" >> {log}
case "$CNI_COMMAND" in
ADD) printf '{{"cniVersion":"%s","interfaces":[{{"name":"{name}-if","sandbox":"%s"}}],"ips":[{{"address":"192.0.2.{n}/24","interface":0}}],"dns":{{}}}}' "$ver" "$CNI_NETNS" ;;
VERSION) printf '{{"cniVersion":"%s","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}}' "$ver" ;;
STATUS) if [ -e {log}.unavailable ]; then printf '{{"code":50,"msg":"plugin not available","details":"{name}"}}'; exit 1; fi ;;
esac
"#,
            log = log.display()
        );
        write_plugin(&env.plugin_dir, name, &body);
    }
    log
}

/// The log's entries since the last call (the log is truncated).
fn take_calls(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::write(log, "");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn who(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["command"].as_str().expect("as_str"),
                c["plugin"].as_str().expect("as_str")
            )
        })
        .collect()
}

fn chain(env: &NetEnv, version: &str, extra: Value) -> Network {
    let mut list = json!({
        "cniVersion": version, "name": format!("proto-{}", env.bridge),
        "plugins": [
            {"type": "berth-log-a", "capabilities": {"portMappings": true}, "custom": {"k": 1}},
            {"type": "berth-log-b", "capabilities": {"mac": true, "portMappings": false}}
        ]
    });
    for (k, v) in extra.as_object().expect("as_object") {
        list[k] = v.clone();
    }
    env.network(list)
}

#[test]
fn add_check_del_follow_the_spec() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-proto");
    let log = recording_plugins(&env);
    let net = chain(&env, "1.0.0", json!({}));
    let ns = env.netns("c");
    let mut att = env.attachment("proto", &ns);
    att.args = vec![("K8S_POD_NAME".into(), "web-0".into())];
    att.port_mappings = parse_publish("127.0.0.1:8080:80").expect("parse_publish");
    att.capabilities
        .insert("mac".into(), json!("02:00:00:00:00:01"));

    let result = env.cni.attach(&net, &att).expect("attach");
    let calls = take_calls(&log);
    assert_eq!(who(&calls), ["ADD berth-log-a", "ADD berth-log-b"]);
    let (a, b) = (&calls[0]["stdin"], &calls[1]["stdin"]);
    let ns_s = ns.display().to_string();
    let out_a = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "berth-log-a-if", "sandbox": ns_s}],
                       "ips": [{"address": "192.0.2.1/24", "interface": 0}], "dns": {}});
    // First plugin: its own config, name and cniVersion inserted, runtimeConfig with only
    // what it declared, no capabilities key, no prevResult.
    assert_eq!(
        *a,
        json!({"type": "berth-log-a", "custom": {"k": 1}, "name": net.name, "cniVersion": "1.0.0",
               "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                    "protocol": "tcp", "hostIP": "127.0.0.1"}]}})
    );
    // Second plugin: the first one's result as prevResult; its own capability only.
    assert_eq!(b["prevResult"], out_a);
    assert_eq!(b["runtimeConfig"], json!({"mac": "02:00:00:00:00:01"}));
    assert!(b.get("capabilities").is_none());
    // The final result is the last plugin's output.
    assert_eq!(result.interfaces[0].name, "berth-log-b-if");
    assert_eq!(
        result.first_ip(true),
        Some("192.0.2.2".parse().expect("parse"))
    );
    for c in &calls {
        assert_eq!(c["containerId"], att.container_id.as_str());
        assert_eq!(c["netns"], ns_s.as_str());
        assert_eq!(c["ifname"], "eth0");
        assert_eq!(c["args"], "IgnoreUnknown=1;K8S_POD_NAME=web-0");
        assert_eq!(
            c["path"],
            format!("{}:/usr/lib/cni", env.plugin_dir.display())
        );
    }

    env.cni.check(&net, &att).expect("check");
    let calls = take_calls(&log);
    assert_eq!(who(&calls), ["CHECK berth-log-a", "CHECK berth-log-b"]);
    for c in &calls {
        assert_eq!(
            c["stdin"]["prevResult"], result.raw,
            "CHECK gets the final result"
        );
    }

    env.cni.detach(&net, &att).expect("detach");
    let calls = take_calls(&log);
    assert_eq!(who(&calls), ["DEL berth-log-b", "DEL berth-log-a"]);
    for c in &calls {
        assert_eq!(
            c["stdin"]["prevResult"], result.raw,
            "DEL gets the final result"
        );
    }
    assert_eq!(
        calls[1]["stdin"]["runtimeConfig"], a["runtimeConfig"],
        "DEL gets the same runtimeConfig"
    );

    // Neither CHECK nor a prevResult on DEL once nothing is cached.
    assert!(matches!(
        env.cni.check(&net, &att),
        Err(Error::NotAttached { .. })
    ));
    env.cni.detach(&net, &att).expect("detach");
    let calls = take_calls(&log);
    assert_eq!(who(&calls), ["DEL berth-log-b", "DEL berth-log-a"]);
    assert!(calls.iter().all(|c| c["stdin"].get("prevResult").is_none()));
}

#[test]
fn version_rules_disable_check_and_old_networks() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-proto-ver");
    let log = recording_plugins(&env);
    let ns = env.netns("c");

    let no_check = chain(&env, "1.0.0", json!({"disableCheck": true}));
    let att = env.attachment("nocheck", &ns);
    env.cni.attach(&no_check, &att).expect("attach");
    take_calls(&log);
    env.cni.check(&no_check, &att).expect("check");
    assert!(
        take_calls(&log).is_empty(),
        "disableCheck: no plugin may be run"
    );
    env.cni.detach(&no_check, &att).expect("detach");
    take_calls(&log);

    // 0.3.1: no CHECK, and DEL carries no prevResult (both came with 0.4.0).
    let old = chain(&env, "0.3.1", json!({}));
    let att = env.attachment("old", &ns);
    env.cni.attach(&old, &att).expect("attach");
    take_calls(&log);
    match env.cni.check(&old, &att) {
        Err(e @ Error::Unsupported { .. }) => assert!(e.to_string().contains("0.4.0"), "{e}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    env.cni.detach(&old, &att).expect("detach");
    let calls = take_calls(&log);
    assert_eq!(who(&calls), ["DEL berth-log-b", "DEL berth-log-a"]);
    assert!(calls.iter().all(|c| c["stdin"].get("prevResult").is_none()));
    assert!(calls.iter().all(|c| c["stdin"]["cniVersion"] == "0.3.1"));

    // cniVersions (1.1): the highest version Berth supports is used.
    let multi = chain(
        &env,
        "1.0.0",
        json!({"cniVersions": ["1.0.0", "1.1.0", "2.0.0"]}),
    );
    assert_eq!(multi.cni_version.to_string(), "1.1.0");
}

#[test]
fn status_and_gc_on_1_1_networks() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-proto-gc");
    let log = recording_plugins(&env);
    let ns = env.netns("c");

    // 1.0.0: there is no STATUS or GC verb; status is "ready", GC only DELs stale entries.
    let v10 = chain(&env, "1.0.0", json!({}));
    env.cni.status(&v10).expect("status");
    env.cni.gc(&v10, &[]).expect("gc");
    assert!(take_calls(&log).is_empty());

    let v11 = chain(&env, "1.1.0", json!({}));
    env.cni.status(&v11).expect("status");
    let calls = take_calls(&log);
    assert_eq!(who(&calls), ["STATUS berth-log-a", "STATUS berth-log-b"]);
    assert!(calls
        .iter()
        .all(|c| c["containerId"] == "" && c["stdin"]["cniVersion"] == "1.1.0"));
    std::fs::write(format!("{}.unavailable", log.display()), "").expect("write");
    let e = env.cni.status(&v11).expect_err("status should fail");
    match &e {
        Error::PluginFailed(f) if f.code == Some(50) => assert_eq!(f.plugin, "berth-log-a"),
        other => panic!("expected error 50, got {other:?}"),
    }
    assert!(e.to_string().contains("plugin not available"), "{e}");
    std::fs::remove_file(format!("{}.unavailable", log.display())).expect("remove_file");
    take_calls(&log);

    let keep = env.attachment("keep", &ns);
    let mut stale = env.attachment("stale", &ns);
    stale.ifname = "eth1".into();
    env.cni.attach(&v11, &keep).expect("attach");
    env.cni.attach(&v11, &stale).expect("attach");
    take_calls(&log);
    let valid = vec![(keep.container_id.clone(), "eth0".to_string())];
    env.cni.gc(&v11, &valid).expect("gc");
    let calls = take_calls(&log);
    assert_eq!(
        who(&calls),
        [
            "DEL berth-log-b",
            "DEL berth-log-a",
            "GC berth-log-a",
            "GC berth-log-b"
        ]
    );
    assert_eq!(calls[0]["containerId"], stale.container_id.as_str());
    let want = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    for gc in &calls[2..] {
        assert_eq!(gc["stdin"]["cni.dev/valid-attachments"], want);
        assert!(gc["stdin"].get("prevResult").is_none());
    }
    let (cached, _) = env.cni.list_cached();
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].attachment.container_id, keep.container_id);

    // disableGC: nothing at all, not even the DEL of a stale entry.
    let off = chain(&env, "1.1.0", json!({"disableGC": true}));
    env.cni.gc(&off, &[]).expect("gc");
    assert!(take_calls(&log).is_empty());
    assert_eq!(env.cni.list_cached().0.len(), 1);
    env.cni.detach(&v11, &keep).expect("detach");
}

#[test]
fn validate_asks_every_plugin_for_its_versions() {
    if !require_root() {
        return;
    }
    let env = NetEnv::new("net-proto-version");
    recording_plugins(&env);
    write_plugin(
        &env.plugin_dir,
        "berth-old",
        r#"cat >/dev/null
printf '{"cniVersion":"0.4.0","supportedVersions":["0.3.1","0.4.0"]}'
"#,
    );
    env.cni
        .validate(&chain(&env, "1.1.0", json!({})))
        .expect("validate");
    // Debian's plugins, and the IPAM plugin the bridge delegates to.
    let def = env.default_network();
    let versions = env.cni.plugin_versions(&def).expect("plugin_versions");
    let names: Vec<_> = versions.iter().map(|v| v.plugin.as_str()).collect();
    assert_eq!(names, ["bridge", "host-local", "portmap", "firewall"]);
    env.cni.validate(&def).expect("validate");

    let old = env.network(json!({
        "cniVersion": "1.0.0", "name": "old", "plugins": [{"type": "berth-log-a"}, {"type": "berth-old"}]
    }));
    match env.cni.validate(&old) {
        Err(e @ Error::IncompatiblePlugin { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("berth-old") && m.contains("1.0.0") && m.contains("0.3.1, 0.4.0"),
                "{m}"
            );
        }
        other => panic!("expected IncompatiblePlugin, got {other:?}"),
    }
    let missing = env.network(json!({
        "cniVersion": "1.0.0", "name": "m", "plugins": [{"type": "bridge", "ipam": {"type": "nope-ipam"}}]
    }));
    let e = env
        .cni
        .validate(&missing)
        .expect_err("validate should fail")
        .to_string();
    assert!(e.contains("\"nope-ipam\" not found"), "{e}");
}
