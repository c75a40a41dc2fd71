//! berthd as a process: Debian's `ctr` against it (version, namespaces, containers, leases), restart keeping
//! metadata and journal seqs, single instance per root, corrupt database refused, stale socket removed, file
//! modes, `berthd config default`, SIGTERM exit status. Root only.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_proto::berth::journal_client::JournalClient;
use berth_proto::berth::JournalSubscribeRequest;
use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::*;
use berth_tests::grpc::req;
use berth_tests::{run_timeout, Daemon, DaemonConfig, TestDir};
use tokio_stream::StreamExt;

fn container(id: &str) -> Container {
    Container {
        id: id.into(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: berth_proto::SPEC_TYPE_URL.into(),
            value: b"{}".to_vec(),
        }),
        ..Default::default()
    }
}

/// Run a ctr command against the daemon; returns (exit code, stdout, stderr).
fn ctr(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut cmd = d.ctr();
    cmd.args(args);
    let out = run_timeout(&mut cmd, Duration::from_secs(30));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run berthd with `args` expecting it to fail at start; returns (status code, stderr).
fn berthd_fails(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut cmd = Command::new(berth_tests::bin("berthd"));
    cmd.args(args);
    let out = run_timeout(&mut cmd, Duration::from_secs(20));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn ctr_version_namespaces_containers_leases() {
    if !berth_tests::require_root() {
        return;
    }
    if berth_tests::find_tool("ctr").is_none() {
        berth_tests::skip("ctr is not installed");
        return;
    }
    let dir = TestDir::new("daemon_core_ctr");
    let d = Daemon::start(dir.path());
    let ns = berth_tests::unique_id("core-ctr-ns");

    let (rc, out, err) = ctr(&d, &["version"]);
    assert_eq!(rc, 0, "ctr version: {out}{err}");
    assert!(
        out.contains("Server:") && out.contains("Version:  0.1.0"),
        "{out}"
    );
    assert!(out.contains("UUID: "), "{out}");

    let (rc, _, err) = ctr(&d, &["ns", "create", &ns, "team=core"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, _) = ctr(&d, &["ns", "create", &ns]);
    assert_eq!(rc, 1, "duplicate namespace must fail");
    let (rc, _, err) = ctr(&d, &["ns", "label", &ns, "tier=1"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = ctr(&d, &["ns", "ls"]);
    assert_eq!(rc, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&ns))
        .unwrap_or_else(|| panic!("{ns} not listed:\n{out}"));
    assert!(
        line.contains("team=core") && line.contains("tier=1"),
        "{line}"
    );
    let (rc, out, _) = ctr(&d, &["ns", "ls", "-q"]);
    assert_eq!(rc, 0);
    assert!(out.lines().any(|l| l == ns), "{out}");

    let (rc, out, err) = ctr(&d, &["-n", &ns, "c", "ls"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("CONTAINER"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");

    let (rc, lease, err) = ctr(&d, &["-n", &ns, "leases", "create"]);
    assert_eq!(rc, 0, "{err}");
    let lease = lease.trim().to_string();
    assert!(!lease.is_empty());
    let (rc, out, err) = ctr(&d, &["-n", &ns, "leases", "ls"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with(&lease)),
        "{lease} not in:\n{out}"
    );
    // The lease keeps the namespace non-empty.
    let (rc, _, err) = ctr(&d, &["ns", "rm", &ns]);
    assert_eq!(rc, 1, "non-empty namespace removed: {err}");
    let (rc, _, err) = ctr(&d, &["-n", &ns, "leases", "rm", &lease]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = ctr(&d, &["ns", "rm", &ns]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.trim(), ns);
    let (rc, out, _) = ctr(&d, &["ns", "ls", "-q"]);
    assert_eq!(rc, 0);
    assert!(!out.lines().any(|l| l == ns), "{out}");
    let (rc, _, err) = ctr(&d, &["snapshots", "ls"]);
    assert_eq!(rc, 0, "{err}");
}

async fn journal_last(d: &Daemon) -> u64 {
    let mut jc = JournalClient::new(d.channel().await);
    let mut s = jc
        .subscribe(JournalSubscribeRequest {
            filters: vec![],
            after_seq: 0,
            from_oldest: true,
        })
        .await
        .expect("journal subscribe")
        .into_inner();
    let mut last = 0;
    // Replay is everything journaled so far; stop when nothing more comes quickly.
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
        let ev = item.expect("journal event");
        assert!(ev.seq > last, "seqs increase");
        last = ev.seq;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_metadata_and_journal_seqs() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_restart");
    let mut d = Daemon::start(dir.path());
    let ns = berth_tests::unique_id("core-restart");
    let mut cc = ContainersClient::new(d.channel().await);
    cc.create(req(
        &ns,
        CreateContainerRequest {
            container: Some(container("kept")),
        },
    ))
    .await
    .expect("create");
    cc.create(req(
        &ns,
        CreateContainerRequest {
            container: Some(container("gone")),
        },
    ))
    .await
    .expect("create");
    cc.delete(req(&ns, DeleteContainerRequest { id: "gone".into() }))
        .await
        .expect("delete");
    let before = journal_last(&d).await;
    assert_eq!(before, 3, "create, create, delete");

    let status = d.stop().expect("was running");
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    assert!(!d.address().exists(), "socket removed on clean exit");
    d.start_again();

    let mut cc = ContainersClient::new(d.channel().await);
    let list = cc
        .list(req(&ns, ListContainersRequest::default()))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = list.containers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["kept"]);
    cc.create(req(
        &ns,
        CreateContainerRequest {
            container: Some(container("after")),
        },
    ))
    .await
    .expect("create after restart");
    assert_eq!(
        journal_last(&d).await,
        before + 1,
        "journal seqs continue after a restart"
    );

    // A crash (SIGKILL) keeps everything committed too.
    let killed = d.kill().expect("was running");
    assert_eq!(killed.signal(), Some(9));
    d.start_again();
    let mut cc = ContainersClient::new(d.channel().await);
    let list = cc
        .list(req(&ns, ListContainersRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.containers.len(), 2);
    assert_eq!(journal_last(&d).await, before + 1);
}

/// Publish one event; returns nothing (its seq is read back from the journal).
async fn publish_one(d: &Daemon, ns: &str, topic: &str) {
    EventsClient::new(d.channel().await)
        .publish(req(
            ns,
            PublishRequest {
                topic: topic.into(),
                event: Some(prost_types::Any {
                    type_url: "x.Y".into(),
                    value: vec![1],
                }),
            },
        ))
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_empties_the_journal_but_seqs_go_on_and_old_cursors_are_out_of_range() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_reboot");
    let mut d = Daemon::start(dir.path());
    let ns = berth_tests::unique_id("core-reboot");
    assert!(
        d.state().join("events").is_dir(),
        "the journal lives in the state dir"
    );
    for _ in 0..3 {
        publish_one(&d, &ns, "/test/before").await;
    }
    let before = journal_last(&d).await;
    assert_eq!(before, 3);

    // Restart with the state dir kept: seqs continue right after the last one, the old cursor replays.
    let status = d.stop().expect("was running");
    assert!(status.success(), "{status:?}");
    d.start_again();
    publish_one(&d, &ns, "/test/restart").await;
    assert_eq!(journal_last(&d).await, before + 1);
    let last_before_reboot = before + 1;

    // "Reboot": berthd stops, the state dir (a tmpfs on a real host) is emptied, the root dir stays.
    let status = d.stop().expect("was running");
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(d.state()).expect("wipe the state dir");
    d.start_again();
    assert!(d.state().join("events").is_dir(), "journal recreated");
    let mut jc = JournalClient::new(d.channel().await);
    for cursor in [0, 2, last_before_reboot] {
        let r = jc
            .subscribe(JournalSubscribeRequest {
                filters: vec![],
                after_seq: cursor,
                from_oldest: false,
            })
            .await;
        let code = match r {
            Err(status) => status.code(),
            Ok(resp) => match resp.into_inner().next().await {
                Some(Err(status)) => status.code(),
                other => panic!("cursor {cursor} from before the reboot was accepted: {other:?}"),
            },
        };
        assert_eq!(code, tonic::Code::OutOfRange, "cursor {cursor}");
    }
    publish_one(&d, &ns, "/test/after").await;
    let after = journal_last(&d).await;
    assert!(
        after > last_before_reboot,
        "seqs never go backwards across a reboot: {after} after {last_before_reboot}"
    );
    // The journal after the reboot holds only the new event, and a crash keeps it.
    let killed = d.kill().expect("was running");
    assert_eq!(killed.signal(), Some(9));
    d.start_again();
    assert_eq!(journal_last(&d).await, after);
    publish_one(&d, &ns, "/test/after-crash").await;
    assert_eq!(journal_last(&d).await, after + 1);
}

#[test]
fn second_instance_on_same_root_is_refused() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_single");
    let d = Daemon::start(dir.path());
    // Same root, same socket: refused, and the first one's socket is left alone.
    let (code, err) = berthd_fails(&[
        "--root".as_ref(),
        d.root().as_os_str(),
        "--state".as_ref(),
        d.state().as_os_str(),
        "--address".as_ref(),
        d.address().as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("already running") && err.contains(&d.root().display().to_string()),
        "{err}"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(d.address()).is_ok(),
        "first berthd's socket still answers"
    );
    let (rc, _, e) = ctr(&d, &["version"]);
    assert_eq!(rc, 0, "{e}");
}

#[test]
fn corrupt_database_is_refused_and_left_untouched() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_corrupt");
    let root = dir.subdir("root");
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("meta.redb"), &garbage).expect("write garbage");
    let (code, err) = berthd_fails(&[
        "--root".as_ref(),
        root.as_os_str(),
        "--state".as_ref(),
        dir.join("state").as_os_str(),
        "--address".as_ref(),
        dir.join("state/berth.sock").as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("meta.redb") && err.contains("refusing to start"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(root.join("meta.redb")).expect("read"),
        garbage,
        "file untouched"
    );
}

#[test]
fn stale_socket_removed_and_modes_set() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_stale");
    let cfg = DaemonConfig::new(dir.path());
    std::fs::create_dir_all(&cfg.state).expect("state dir");
    std::fs::set_permissions(&cfg.state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    {
        let _l = std::os::unix::net::UnixListener::bind(&cfg.address).expect("bind stale");
    }
    assert!(cfg.address.exists(), "stale socket left behind");
    assert!(std::os::unix::net::UnixStream::connect(&cfg.address).is_err());
    let d = cfg.start();
    let (rc, _, e) = ctr(&d, &["version"]);
    assert_eq!(rc, 0, "{e}");
    assert_eq!(mode(d.root()), 0o700);
    assert_eq!(mode(d.state()), 0o711);
    assert_eq!(mode(d.address()), 0o660);
    assert!(d.root().join("meta.redb").is_file());
    // RLIMIT_NOFILE raised to the hard limit.
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", d.pid().expect("pid"))).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], f[4], "soft limit raised to the hard limit: {line}");
}

#[test]
fn config_default_parses_back_and_something_else_in_the_socket_path_is_kept() {
    if !berth_tests::require_root() {
        return;
    }
    let out = run_timeout(
        Command::new(berth_tests::bin("berthd")).args(["config", "default"]),
        Duration::from_secs(10),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let shipped = std::fs::read_to_string(berth_tests::workspace_root().join("deploy/config.toml"))
        .expect("deploy/config.toml");
    assert_eq!(
        text, shipped,
        "berthd config default prints deploy/config.toml"
    );
    for key in [
        "root",
        "state",
        "address",
        "log_level",
        "log_format",
        "oom_score_adj",
        "event_retention",
        "subscriber_queue",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "{key} missing"
        );
    }
    // The printed default, with paths overridden by flags, starts a daemon.
    let dir = TestDir::new("daemon_core_config");
    let path = dir.join("config.toml");
    std::fs::write(&path, &text).expect("write config");
    let d = DaemonConfig::new(dir.path())
        .arg("--config")
        .arg(&path)
        .start();
    let (rc, _, e) = ctr(&d, &["version"]);
    assert_eq!(rc, 0, "{e}");
    drop(d);

    // A regular file where the socket goes is never removed.
    let dir2 = TestDir::new("daemon_core_notsock");
    let file = dir2.join("berth.sock");
    std::fs::write(&file, b"keep me").expect("write");
    let (code, err) = berthd_fails(&[
        "--root".as_ref(),
        dir2.join("root").as_os_str(),
        "--state".as_ref(),
        dir2.join("state").as_os_str(),
        "--address".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
    // A bad config key is refused with the file named.
    std::fs::write(&path, "no_such_key = 1\n").expect("write");
    let (code, err) = berthd_fails(&["--config".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("config.toml"), "{err}");
}

/// Events in the journal after a crash injected just before / just after the commit of the first write.
async fn crash_on_first_commit(failpoint: &str) -> (Vec<String>, tonic::Code) {
    let dir = TestDir::new(&format!("daemon_core_fp_{}", failpoint.replace('.', "_")));
    let mut cfg = DaemonConfig::new(dir.path());
    cfg.env.push((
        "BERTH_FAILPOINTS".into(),
        format!("{failpoint}=exit").into(),
    ));
    let mut d = cfg.start();
    let pid = d.pid().expect("running");
    let ns = berth_tests::unique_id("core-fp");
    let mut ec = EventsClient::new(d.channel().await);
    let r = ec
        .publish(req(
            &ns,
            PublishRequest {
                topic: "/test/crash".into(),
                event: Some(prost_types::Any {
                    type_url: "x.Y".into(),
                    value: vec![1],
                }),
            },
        ))
        .await;
    let code = r.expect_err("berthd died before replying").code();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while berth_tests::proc::alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !berth_tests::proc::alive(pid),
        "failpoint {failpoint} killed berthd"
    );
    let _ = d.stop();
    drop(d);
    // Start again without the failpoint, same root.
    let d = Daemon::start(dir.path());
    let mut jc = JournalClient::new(d.channel().await);
    let mut s = jc
        .subscribe(JournalSubscribeRequest {
            filters: vec![],
            after_seq: 0,
            from_oldest: true,
        })
        .await
        .expect("journal")
        .into_inner();
    let mut topics = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
        topics.push(item.expect("event").topic);
    }
    (topics, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_commit_loses_the_unacked_event_crash_after_keeps_it() {
    if !berth_tests::require_root() {
        return;
    }
    // The event journal's own writer (`<state>/events/`) names its write failpoints `events.*`: SIGKILL before
    // the write, and halfway through it (a torn record), both lose the event; after the write keeps it.
    for failpoint in ["events.before_commit", "events.torn_write"] {
        let (before, code) = crash_on_first_commit(failpoint).await;
        assert!(
            before.is_empty(),
            "{failpoint}: unwritten event survived: {before:?}"
        );
        // The connection drops mid-call: tonic reports Unknown or Unavailable; never OK.
        assert!(
            matches!(code, tonic::Code::Unknown | tonic::Code::Unavailable),
            "{failpoint}: {code:?}"
        );
    }
    let (after, code) = crash_on_first_commit("events.after_commit").await;
    assert_eq!(
        after,
        vec!["/test/crash".to_string()],
        "committed event lost"
    );
    assert!(
        matches!(code, tonic::Code::Unknown | tonic::Code::Unavailable),
        "{code:?}"
    );
}
