//! Network configs in a conf dir: the default network written only into an empty dir,
//! loading order, single-plugin files, and errors that name the file.

use std::path::Path;

use berth_net::{
    config::config_files, default_conflist, ensure_default_network, find_network, load_networks,
    load_networks_lenient, NetConfig,
};
use berth_tests::TestDir;

fn cfg_in(dir: &Path) -> NetConfig {
    NetConfig {
        conf_dir: dir.join("net.d"),
        ipam_data_dir: dir.join("ipam"),
        ..NetConfig::default()
    }
}

#[test]
fn default_network_is_written_into_an_empty_dir_only() {
    let dir = TestDir::new("netcfg-default");
    let cfg = cfg_in(dir.path());
    // The conf dir does not even exist yet.
    let written = ensure_default_network(&cfg)
        .expect("test setup")
        .expect("nothing written");
    assert_eq!(written, cfg.conf_dir.join("10-berth.conflist"));
    let text = std::fs::read_to_string(&written).expect("read_to_string");
    assert_eq!(text, default_conflist(&cfg).expect("default_conflist"));
    let nets = load_networks(&cfg.conf_dir).expect("load_networks");
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].name, "berth");
    assert_eq!(nets[0].origin, written.display().to_string());
    assert_eq!(
        nets[0].plugins[0].conf["ipam"]["dataDir"],
        dir.join("ipam").display().to_string()
    );
    // Second call: a config exists, nothing is rewritten.
    std::fs::write(&written, text.replace("berth0", "edited0")).expect("write");
    assert_eq!(
        ensure_default_network(&cfg).expect("ensure_default_network"),
        None
    );
    assert!(std::fs::read_to_string(&written)
        .expect("test setup")
        .contains("edited0"));
}

#[test]
fn any_existing_config_suppresses_the_default() {
    for name in ["50-mine.conflist", "50-mine.conf", "50-mine.json"] {
        let dir = TestDir::new("netcfg-existing");
        let cfg = cfg_in(dir.path());
        std::fs::create_dir_all(&cfg.conf_dir).expect("create_dir_all");
        // Even an invalid one: the administrator's file is never replaced or shadowed.
        std::fs::write(cfg.conf_dir.join(name), b"{").expect("write");
        assert_eq!(
            ensure_default_network(&cfg).expect("ensure_default_network"),
            None,
            "{name}"
        );
        assert_eq!(config_files(&cfg.conf_dir).expect("config_files").len(), 1);
    }
    // Files that are not network configs do not count.
    let dir = TestDir::new("netcfg-other");
    let cfg = cfg_in(dir.path());
    std::fs::create_dir_all(cfg.conf_dir.join("sub.conflist")).expect("create_dir_all");
    std::fs::write(cfg.conf_dir.join("README"), b"x").expect("write");
    std::fs::write(cfg.conf_dir.join(".hidden.conflist"), b"x").expect("write");
    std::fs::write(cfg.conf_dir.join("x.conflist.bak"), b"x").expect("write");
    assert!(ensure_default_network(&cfg)
        .expect("ensure_default_network")
        .is_some());
}

#[test]
fn the_deploy_file_is_the_default_network() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/net.d/10-berth.conflist");
    let text = std::fs::read_to_string(&deploy).expect("read_to_string");
    assert_eq!(
        text,
        default_conflist(&NetConfig::default()).expect("default_conflist")
    );
}

#[test]
fn networks_load_in_file_name_order_and_single_confs_are_wrapped() {
    let dir = TestDir::new("netcfg-order");
    let d = dir.subdir("net.d");
    std::fs::write(
        d.join("20-b.conflist"),
        br#"{"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}"#,
    )
    .expect("test setup");
    std::fs::write(
        d.join("10-a.conf"),
        br#"{"cniVersion": "0.4.0", "name": "a", "type": "bridge", "bridge": "x0"}"#,
    )
    .expect("test setup");
    std::fs::write(
        d.join("30-c.json"),
        br#"{"cniVersion": "0.3.1", "name": "c", "type": "macvlan"}"#,
    )
    .expect("test setup");
    let nets = load_networks(&d).expect("load_networks");
    let names: Vec<_> = nets.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(nets[0].cni_version.to_string(), "0.4.0");
    assert_eq!(nets[0].plugins.len(), 1);
    assert_eq!(nets[0].conflist()["plugins"][0]["bridge"], "x0");
    assert_eq!(nets[1].plugins.len(), 2);
    assert_eq!(
        find_network(&d, "c")
            .expect("find_network")
            .expect("present")
            .plugins[0]
            .plugin_type,
        "macvlan"
    );
    assert!(find_network(&d, "zzz").expect("find_network").is_none());
    assert!(load_networks(&dir.join("missing"))
        .expect("load_networks")
        .is_empty());
}

#[test]
fn malformed_configs_are_errors_naming_the_file() {
    let cases: &[(&str, &str, &str)] = &[
        ("10-x.conflist", "{ nope", "invalid JSON"),
        (
            "10-x.conflist",
            r#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}"#,
            "\"name\" is missing",
        ),
        (
            "10-x.conflist",
            r#"{"cniVersion": "1.0.0", "name": "x"}"#,
            "\"plugins\" is missing",
        ),
        (
            "10-x.conflist",
            r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"bridge": "b"}]}"#,
            "plugins[0] has no \"type\"",
        ),
        (
            "10-x.conflist",
            r#"{"cniVersion": "7.0.0", "name": "x", "plugins": [{"type": "b"}]}"#,
            "not supported",
        ),
        (
            "10-x.conflist",
            r#"{"name": "x", "plugins": [{"type": "b"}]}"#,
            "\"cniVersion\" is missing",
        ),
        (
            "10-x.conf",
            r#"{"cniVersion": "1.0.0", "name": "x"}"#,
            "plugins[0] has no \"type\"",
        ),
        (
            "10-x.json",
            r#"{"cniVersion": "1.0.0", "name": "x", "plugins": []}"#,
            "*.conflist",
        ),
    ];
    for (file, text, want) in cases {
        let dir = TestDir::new("netcfg-bad");
        let d = dir.subdir("net.d");
        std::fs::write(
            d.join("05-good.conflist"),
            br#"{"cniVersion": "1.0.0", "name": "good", "plugins": [{"type": "bridge"}]}"#,
        )
        .expect("test setup");
        let path = d.join(file);
        std::fs::write(&path, text).expect("write");
        let e = load_networks(&d)
            .expect_err("load_networks should fail")
            .to_string();
        assert!(e.contains(path.to_str().expect("to_str")), "{file}: {e}");
        assert!(e.contains(want), "{file}: {e}");
        // Lenient loading keeps the good network and reports the bad file.
        let (nets, errors) = load_networks_lenient(&d);
        assert_eq!(nets.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0]
            .to_string()
            .contains(path.to_str().expect("to_str")));
    }
}

#[test]
fn a_network_name_defined_twice_names_both_files() {
    let dir = TestDir::new("netcfg-dup");
    let d = dir.subdir("net.d");
    let text = br#"{"cniVersion": "1.0.0", "name": "same", "plugins": [{"type": "bridge"}]}"#;
    std::fs::write(d.join("10-one.conflist"), text).expect("write");
    std::fs::write(d.join("20-two.conflist"), text).expect("write");
    let e = load_networks(&d)
        .expect_err("load_networks should fail")
        .to_string();
    assert!(
        e.contains("10-one.conflist") && e.contains("20-two.conflist"),
        "{e}"
    );
    let (nets, errors) = load_networks_lenient(&d);
    assert_eq!(nets.len(), 1);
    assert!(nets[0].origin.ends_with("10-one.conflist"));
    assert_eq!(errors.len(), 1);
}
