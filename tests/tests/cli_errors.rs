//! Every error path a new user meets gives one clear `berth: ...` line on stderr, nothing on
//! stdout, a non-zero exit and never a panic: wrong socket, berthd not running, unknown image,
//! unknown id, bad flag values, a bad mount spec, an unreachable registry.

use std::os::unix::net::UnixListener;

use berth_tests::cli_fixture::{one_line_error, text, CliFixture, BUSYBOX};
use berth_tests::{run_timeout, TestDir};

fn berth_at(sock: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(berth_tests::bin("berth"));
    c.arg("-a")
        .arg(sock)
        .args(args)
        .env_remove("RUST_BACKTRACE");
    run_timeout(&mut c, std::time::Duration::from_secs(30))
}

#[test]
fn no_socket_and_no_daemon_say_so_and_where() {
    let dir = TestDir::new("cli-err-sock");
    let missing = dir.join("nope.sock");
    let line = one_line_error(&berth_at(&missing, &["version"]));
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert!(line.contains("berthd is not running"), "{line}");

    // A socket file nobody listens on (berthd died): connection refused.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    let line = one_line_error(&berth_at(&stale, &["containers", "ls"]));
    assert!(
        line.contains("connection refused") && line.contains("not running"),
        "{line}"
    );

    // Something that is not a socket.
    let file = dir.join("file");
    std::fs::write(&file, "").expect("write");
    let line = one_line_error(&berth_at(&file, &["tasks", "ls"]));
    assert!(line.contains("not a socket"), "{line}");

    // Environment variables work like the flags.
    let mut c = std::process::Command::new(berth_tests::bin("berth"));
    c.env("BERTH_ADDRESS", &missing).arg("images").arg("ls");
    let line = one_line_error(&run_timeout(&mut c, std::time::Duration::from_secs(30)));
    assert!(line.contains(&missing.display().to_string()), "{line}");
}

#[test]
fn bad_flags_and_arguments_are_refused_before_anything_happens() {
    let dir = TestDir::new("cli-err-flags");
    // No daemon is needed to refuse these: the socket does not even exist.
    let sock = dir.join("none.sock");
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--memory-limit", "lots", BUSYBOX, "x"],
            "--memory-limit",
        ),
        (&["run", "--cpus", "-1", BUSYBOX, "x"], "--cpus"),
        (&["run", "-p", "80", BUSYBOX, "x"], "-p"),
        (&["run", "-p", "8080:80/icmp", BUSYBOX, "x"], "protocol"),
        (&["run", "--mount", "src=/tmp", BUSYBOX, "x"], "dst="),
        (
            &["run", "--mount", "type=bind,src=rel,dst=/x", BUSYBOX, "x"],
            "absolute",
        ),
        (&["run", "--mount", "bogus", BUSYBOX, "x"], "key=value"),
        (&["run", "--cap-add", "FLY", BUSYBOX, "x"], "capability"),
        (
            &["run", "--net", "none", "--net", "berth", BUSYBOX, "x"],
            "--net none",
        ),
        (&["run", "--rm", "-d", BUSYBOX, "x"], "--rm and -d"),
        (&["run", BUSYBOX, "bad id!"], "invalid container id"),
        (
            &["run", "--log-uri", "binary:///x", BUSYBOX, "x"],
            "--log-uri",
        ),
        (&["tasks", "kill", "-s", "SIGNOPE", "x"], "unknown signal"),
        (&["--timeout", "soon", "version"], "invalid duration"),
    ];
    for (args, needle) in cases {
        let out = berth_at(&sock, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr:?}"
        );
        assert!(
            text(&out.stdout).is_empty(),
            "{args:?}: stdout {}",
            text(&out.stdout)
        );
        // clap's own usage errors print a usage block; berth's are one line.
        if stderr.starts_with("berth: ") {
            one_line_error(&out);
        } else {
            assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
            assert_eq!(out.status.code(), Some(2));
        }
    }
}

#[test]
fn unknown_image_and_unknown_ids_name_what_is_missing() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-err-ids");
    let line =
        one_line_error(&f.run(&["run", "--pull", "never", "--net", "none", "nosuch:1", "x"]));
    assert!(
        line.contains("nosuch:1") && line.contains("NotFound"),
        "{line}"
    );
    assert!(
        line.contains("berth images pull"),
        "says what to do: {line}"
    );
    for args in [
        &["tasks", "kill", "ghost"][..],
        &["containers", "info", "ghost"],
        &["tasks", "ps", "ghost"],
        &["tasks", "exec", "--exec-id", "e", "ghost", "true"],
        &["tasks", "start", "ghost"],
        &["tasks", "attach", "ghost"],
    ] {
        let line = one_line_error(&f.run(args));
        assert!(
            line.contains("ghost") && line.contains("(NotFound)"),
            "{args:?}: {line}"
        );
    }
    // `rm` of several ids: the missing one is reported, the exit code says so.
    let out = f.run(&["rm", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ghost"), "{}", text(&out.stderr));
    // A container id that is taken.
    f.seed_busybox();
    f.ok(&[
        "containers",
        "create",
        "--net",
        "none",
        BUSYBOX,
        "taken",
        "true",
    ]);
    let line = one_line_error(&f.run(&["run", "--net", "none", BUSYBOX, "taken", "true"]));
    assert!(
        line.contains("taken") && line.contains("already exists"),
        "{line}"
    );
    // A command that does not exist in the image.
    let out = f.run(&[
        "run",
        "--rm",
        "--net",
        "none",
        BUSYBOX,
        "nobin",
        "/no/such/binary",
    ]);
    assert!(!out.status.success());
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    // The runtime's own message comes through the container's stderr; berth's line ends it.
    let last = text(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.starts_with("berth: ") && last.contains("/no/such/binary"),
        "{}",
        text(&out.stderr)
    );
    f.ok(&["rm", "taken"]);
    assert!(
        f.ok(&["containers", "ls", "-q"]).trim().is_empty(),
        "--rm removed the failed run too"
    );
    f.fx.guard.assert_clean();
}

#[test]
fn an_unreachable_registry_is_one_line() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-err-registry");
    // A loopback port nobody listens on.
    let port = berth_tests::registry::free_port();
    let reference = format!("127.0.0.1:{port}/nothing:here");
    let line = one_line_error(&f.run(&["images", "pull", "--plain-http", &reference]));
    assert!(line.contains(&reference), "{line}");
    if !f.transfer_available() {
        // Until berthd serves Transfer (branch `pull`), the pull stops at Unimplemented.
        eprintln!("NOTE: berthd has no Transfer service yet: {line}");
        assert!(line.contains("(Unimplemented)"), "{line}");
        return;
    }
    assert!(!line.contains("(Unimplemented)"), "{line}");
    let line = one_line_error(&f.run(&[
        "run",
        "--rm",
        "--plain-http",
        "--net",
        "none",
        &reference,
        "x",
    ]));
    assert!(line.contains(&reference), "{line}");
    f.fx.guard.assert_clean();
}
