//! Harness self-test: a missing tool skips a test outside CI and fails it under `CI=true`.
//! The probing test runs in a child process (this same test binary) with a chosen environment.

use std::process::Command;
use std::time::Duration;

use berth_tests::run_timeout;

#[test]
#[ignore = "run by skips_become_failures_under_ci in a child process"]
fn child_needs_a_missing_tool() {
    let Some(found) = berth_tests::tool("berth-tests-no-such-tool") else {
        return;
    };
    panic!("found a tool that cannot exist: {}", found.display());
}

fn run_child(ci: Option<&str>) -> std::process::Output {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_needs_a_missing_tool",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env_remove("CI");
    if let Some(v) = ci {
        cmd.env("CI", v);
    }
    run_timeout(&mut cmd, Duration::from_secs(60))
}

#[test]
fn skips_become_failures_under_ci() {
    let out = run_child(None);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "outside CI a missing tool must skip: {text}"
    );
    assert!(
        text.contains("1 passed"),
        "the child test did not run: {text}"
    );
    assert!(text.contains("SKIPPED"), "no skip message: {text}");

    let out = run_child(Some("true"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "under CI=true a missing tool must fail: {text}"
    );
    assert!(text.contains("CI=true and a test would skip"), "{text}");
}
