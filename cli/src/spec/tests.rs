//! Unit tests of the spec builder.
use super::*;
use serde_json::json;

fn flags() -> SpecFlags {
    SpecFlags {
        id: "web".into(),
        namespace: "default".into(),
        pids_limit: DEFAULT_PIDS_LIMIT,
        ..Default::default()
    }
}

#[test]
fn the_default_is_locked_down() {
    let cfg = json!({"Cmd": ["sh"], "Env": ["PATH=/bin", "A=1"]});
    let s = build(&cfg, &flags()).expect("spec");
    assert_eq!(s["process"]["args"], json!(["sh"]));
    assert_eq!(s["process"]["env"], json!(["PATH=/bin", "A=1"]));
    assert_eq!(s["process"]["noNewPrivileges"], json!(true));
    assert_eq!(s["process"]["terminal"], json!(false));
    let caps = s["process"]["capabilities"]["bounding"]
        .as_array()
        .expect("caps");
    assert_eq!(caps.len(), 14);
    assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
    assert_eq!(s["linux"]["cgroupsPath"], json!("/default/web"));
    assert_eq!(s["linux"]["resources"]["pids"]["limit"], json!(4096));
    assert!(s["linux"]["seccomp"]["syscalls"].is_array());
    assert!(s["linux"]["maskedPaths"]
        .as_array()
        .expect("masked")
        .contains(&json!("/proc/kcore")));
    assert!(s["linux"]["readonlyPaths"]
        .as_array()
        .expect("ro")
        .contains(&json!("/proc/sys")));
    assert_eq!(s["root"]["readonly"], json!(false));
    assert_eq!(s["hostname"], json!("web"));
    let ns: Vec<_> = s["linux"]["namespaces"]
        .as_array()
        .expect("ns")
        .iter()
        .map(|n| n["type"].clone())
        .collect();
    assert!(ns.contains(&json!("network")));
}

#[test]
fn flags_relax_it() {
    let cfg = json!({"Entrypoint": ["/bin/app"], "Cmd": ["--default"], "WorkingDir": "/srv"});
    let mut f = flags();
    f.args = vec!["--x".into()];
    f.privileged = true;
    f.read_only = true;
    f.host_network = true;
    f.tty = true;
    f.cap_drop = vec!["net_raw".into()];
    f.memory_limit = Some(1 << 20);
    f.cpus = Some(0.5);
    f.env = vec!["A=2".into()];
    let s = build(&cfg, &f).expect("spec");
    assert_eq!(s["process"]["args"], json!(["/bin/app", "--x"]));
    assert_eq!(s["process"]["cwd"], json!("/srv"));
    assert_eq!(s["process"]["noNewPrivileges"], json!(false));
    assert!(s["linux"]["seccomp"].is_null());
    assert_eq!(s["linux"]["maskedPaths"], json!([]));
    let caps = s["process"]["capabilities"]["bounding"]
        .as_array()
        .expect("caps");
    assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
    assert!(!caps.contains(&json!("CAP_NET_RAW")));
    assert_eq!(s["root"]["readonly"], json!(true));
    assert_eq!(s["linux"]["resources"]["memory"]["limit"], json!(1 << 20));
    assert_eq!(s["linux"]["resources"]["cpu"]["quota"], json!(50000));
    assert!(s["process"]["env"]
        .as_array()
        .expect("env")
        .contains(&json!("TERM=xterm")));
    let ns: Vec<_> = s["linux"]["namespaces"]
        .as_array()
        .expect("ns")
        .iter()
        .map(|n| n["type"].clone())
        .collect();
    assert!(!ns.contains(&json!("network")));
}

#[test]
fn no_command_is_an_error() {
    assert!(build(&json!({}), &flags()).is_err());
}

#[test]
fn mount_flags() {
    let m: MountFlag = "type=bind,src=/a,dst=/b,options=ro".parse().expect("mount");
    assert_eq!(m.options, vec!["ro", "rbind"]);
    let m: MountFlag = "src=/a,dst=/b".parse().expect("mount");
    assert_eq!(m.options, vec!["rbind", "rw"]);
    assert!("src=/a".parse::<MountFlag>().is_err());
    assert!("src=a,dst=/b".parse::<MountFlag>().is_err());
    assert!("src=/a,dst=b".parse::<MountFlag>().is_err());
    assert!("bogus".parse::<MountFlag>().is_err());
    assert!("src=/a,dst=/b,color=red".parse::<MountFlag>().is_err());
}

/// The resolver itself is tested in berth-oci; here only that its errors are usage errors.
#[test]
fn unknown_users_are_usage_errors() {
    let e = resolve_user("nobody", "root:x:0:0::/root:/bin/sh\n", "").expect_err("nobody");
    assert!(
        matches!(e, Error::Usage(ref m) if m.contains("nobody")),
        "{e}"
    );
}

#[test]
fn env_merging() {
    let a = vec!["PATH=/bin".to_string(), "A=1".into()];
    let b = vec!["A=2".to_string(), "B=3".into()];
    assert_eq!(merge_env(&[&a, &b]), vec!["PATH=/bin", "A=2", "B=3"]);
}
