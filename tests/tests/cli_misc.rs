//! The rest of `berth` as a user meets it: help with an example for every command, shell
//! completions, `version`, `info`, `plugins ls`, `namespaces`, `leases`, `content`,
//! `snapshots`, `networks` (from a CNI conf dir). Every listing's `--format json` parses.

use berth_tests::cli_fixture::{text, CliFixture};
use berth_tests::{run_timeout, TestDir};

fn berth(args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(berth_tests::bin("berth"));
    c.args(args);
    run_timeout(&mut c, std::time::Duration::from_secs(30))
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn completions_generate_and_help_has_examples() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
    ] {
        let out = berth(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains(needle),
            "{shell}: {}",
            &script[..script.len().min(300)]
        );
        assert!(
            script.contains("images") && script.contains("snapshots"),
            "{shell} completes the nouns"
        );
    }
    let out = berth(&["--help"]);
    assert!(text(&out.stdout).contains("Examples:"));
    for cmd in [
        &["run", "--help"][..],
        &["images", "pull", "--help"],
        &["tasks", "exec", "--help"],
        &["events", "--help"],
    ] {
        let out = berth(cmd);
        assert!(out.status.success());
        assert!(
            text(&out.stdout).contains("Examples:\n  berth "),
            "{cmd:?}: {}",
            text(&out.stdout)
        );
    }
    let out = berth(&["--version"]);
    assert!(
        text(&out.stdout).starts_with("berth "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn networks_are_read_from_the_conf_dir() {
    let dir = TestDir::new("cli-networks");
    let conf = dir.subdir("net.d");
    std::fs::copy(
        berth_tests::workspace_root().join("deploy/net.d/10-berth.conflist"),
        conf.join("10-berth.conflist"),
    )
    .expect("copy conflist");
    let conf_s = conf.display().to_string();
    let out = berth(&["networks", "ls", "--conf-dir", &conf_s, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = json(&text(&out.stdout));
    assert_eq!(v[0]["name"], "berth");
    assert_eq!(v[0]["bridge"], "berth0");
    assert_eq!(v[0]["subnets"][0], "10.213.0.0/16");
    let out = berth(&["networks", "inspect", "--conf-dir", &conf_s, "berth"]);
    assert!(text(&out.stdout).contains("\"portmap\""));
    let out = berth(&["networks", "inspect", "--conf-dir", &conf_s, "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("berth: network \"nope\" not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn version_info_plugins_namespaces_leases_content_snapshots() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-misc");
    let v = f.ok(&["version"]);
    assert!(
        v.contains("Client:") && v.contains("Server:") && v.contains("UUID:"),
        "{v}"
    );
    let plugins = json(&f.ok(&["plugins", "ls", "--format", "json"]));
    assert!(
        plugins
            .as_array()
            .expect("array")
            .iter()
            .any(|p| p["id"] == "overlayfs" && p["status"] == "ok"),
        "{plugins}"
    );

    // Namespaces: create, label, ls, rm.
    let ns = berth_tests::unique_id("cli-misc-extra");
    assert_eq!(
        f.ok(&["namespaces", "create", &ns, "team=infra"]).trim(),
        ns
    );
    f.ok(&["ns", "label", &ns, "tier=1"]);
    let all = json(&f.ok(&["namespaces", "ls", "--format", "json"]));
    let mine = all
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["name"] == ns.as_str())
        .expect("listed")
        .clone();
    assert_eq!(mine["labels"]["team"], "infra");
    assert_eq!(mine["labels"]["tier"], "1");
    let out = f.run(&["namespaces", "create", &ns]);
    assert!(
        text(&out.stderr).contains("(AlreadyExists)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(f.ok(&["ns", "rm", &ns]).trim(), ns);
    assert!(!f.ok(&["ns", "ls", "-q"]).contains(&ns));

    // Leases.
    let id = f.ok(&[
        "leases",
        "create",
        "--id",
        "l1",
        "--expires-in",
        "1h",
        "k=v",
    ]);
    assert_eq!(id.trim(), "l1");
    let leases = json(&f.ok(&["leases", "ls", "--format", "json"]));
    let l1 = leases
        .as_array()
        .expect("array")
        .iter()
        .find(|l| l["id"] == "l1")
        .expect("l1")
        .clone();
    assert_eq!(l1["labels"]["k"], "v");
    assert!(l1["labels"]["containerd.io/gc.expire"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    f.ok(&["leases", "rm", "l1"]);
    assert!(!f.ok(&["leases", "ls", "-q"]).contains("l1"));

    // Content: ingest a blob (pinned by a gc.root label), list, get, remove.
    let data = b"hello blob\n";
    let digest = berth_tests::oci_layout::sha256_digest(data);
    let mut c = f.berth();
    c.args([
        "content",
        "ingest",
        "--expected-digest",
        &digest,
        "--label",
        "containerd.io/gc.root=test",
        "blob1",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(data)
            .expect("write");
    }
    let out = child.wait_with_output().expect("ingest");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), digest);
    let blobs = json(&f.ok(&["content", "ls", "--format", "json"]));
    assert_eq!(blobs[0]["digest"], digest.as_str());
    assert_eq!(blobs[0]["size"], data.len());
    assert_eq!(f.ok(&["content", "get", &digest]).as_bytes(), data);
    f.ok(&["content", "rm", &digest]);
    assert!(f.ok(&["content", "ls", "-q"]).trim().is_empty());

    // Snapshots: prepare (pinned), info, mounts, usage, commit, tree, rm.
    let out = f.ok(&["snapshots", "prepare", "--target", "/mnt/x", "s1"]);
    assert!(out.starts_with("mount -t "), "{out}");
    let info = json(&f.ok(&["snapshots", "info", "s1"]));
    assert_eq!(info["Kind"], "Active");
    assert!(info["Labels"]["containerd.io/gc.root"].is_string());
    assert!(f
        .ok(&["snapshots", "mounts", "/mnt/x", "s1"])
        .contains("/mnt/x"));
    let usage = json(&f.ok(&["snapshots", "usage", "--format", "json", "s1"]));
    assert_eq!(usage[0]["key"], "s1");
    f.ok(&["snapshots", "commit", "c1", "s1"]);
    f.ok(&["snapshots", "prepare", "s2", "c1"]);
    assert_eq!(f.ok(&["snapshots", "tree"]), "c1\n  s2\n");
    let ls = json(&f.ok(&["snapshots", "ls", "--format", "json"]));
    assert_eq!(ls.as_array().map(Vec::len), Some(2));
    f.ok(&["snapshots", "rm", "s2", "c1"]);
    assert!(f.ok(&["snapshots", "ls", "-q"]).trim().is_empty());

    let info = json(&f.ok(&["info", "--format", "json"]));
    assert_eq!(info["namespace"], f.ns());
    assert_eq!(info["containers"], 0);
    assert!(f.ok(&["info"]).contains("Server version:"));
    f.fx.guard.assert_clean();
}
