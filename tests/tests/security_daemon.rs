//! berthd's own attack surface, seen as a user sees it: the socket is 0660 and the root and state
//! dirs 0700 and 0711, nothing below them is writable by others, and a client without access to a
//! socket (an unprivileged uid, set in a forked child) is refused by berthd's socket and by every
//! shim socket; one containerd namespace's containers, tasks, images, snapshots, leases, content
//! and events are invisible to (and untouchable by) API calls in another. Root only.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use berth_proto::containerd_client::types::Envelope;
use berth_tests::cli_fixture::{one_line_error, text, CliFixture, BUSYBOX};

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// Connect to the unix socket `path` as `uid`/`gid` (no supplementary groups) from a forked
/// child; returns 0 when the connection was accepted, else the errno of connect(2).
fn connect_as(uid: u32, path: &Path) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let bytes = c.as_bytes_with_nul();
    // SAFETY: a zeroed sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    assert!(bytes.len() <= addr.sun_path.len(), "socket path too long");
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child only makes raw syscalls (no allocation, no locks) and then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: async-signal-safe syscalls on memory prepared before the fork.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(201);
            }
            let r = libc::connect(
                fd,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "probe child died: {status}");
    libc::WEXITSTATUS(status)
}

/// Every path below `dir` (dir included), with its metadata; symlinks are not followed, and
/// image contents (a snapshot's `fs` and `work`, a bundle's `rootfs`) are listed but not entered:
/// their modes are the image's (`/tmp` is 1777).
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue; // gone meanwhile (a temp file)
        };
        let image_tree = p
            .file_name()
            .is_some_and(|n| n == "fs" || n == "work" || n == "rootfs");
        if m.is_dir() && !image_tree {
            if let Ok(rd) = std::fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
        out.push((p, m));
    }
    out
}

#[test]
fn socket_and_dirs_are_closed_to_other_users() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-modes");
    f.seed_busybox();
    // A running container: shim socket, task dir, runtime state and netns dirs exist now.
    f.ok(&[
        "run", "-d", "--net", "none", BUSYBOX, "modes", "sleep", "1000",
    ]);
    let root = f.fx.daemon.root().to_path_buf();
    let state = f.fx.daemon.state().to_path_buf();
    let sock = f.address();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o7777;
    assert_eq!(mode(&root), 0o700, "{}", root.display());
    assert_eq!(mode(&state), 0o711, "{}", state.display());
    let sm = std::fs::symlink_metadata(&sock).expect("socket");
    assert!(sm.file_type().is_socket());
    assert_eq!(sm.mode() & 0o7777, 0o660, "{}", sock.display());
    assert_eq!((sm.uid(), sm.gid()), (0, 0), "the socket is root's");

    // Nothing below root or state is writable by others.
    let mut sockets = Vec::new();
    let mut report = Vec::new();
    for (p, m) in walk(&root).into_iter().chain(walk(&state)) {
        let bits = m.mode() & 0o7777;
        if m.file_type().is_symlink() {
            continue;
        }
        report.push(format!("{:o} {}", bits, p.display()));
        assert_eq!(
            bits & 0o002,
            0,
            "{} is writable by others ({bits:o})",
            p.display()
        );
        if m.file_type().is_socket() {
            sockets.push(p);
        }
    }
    eprintln!("modes:\n{}", report.join("\n"));
    // What others must not read: every namespace's events, the task dirs' listings, the spec
    // (its environment may hold secrets) and berthd's task record.
    let task = state.join("tasks").join(f.ns()).join("modes");
    assert_eq!(mode(&state.join("events")), 0o700, "berthd's event journal");
    for d in [
        state.join("tasks"),
        state.join("tasks").join(f.ns()),
        task.clone(),
    ] {
        assert_eq!(
            mode(&d),
            0o711,
            "{}: traversable, not listable",
            d.display()
        );
    }
    for file in ["config.json", "berthd.json"] {
        let m = mode(&task.join(file));
        assert_eq!(m & 0o077, 0, "{file} is readable by others ({m:o})");
    }
    assert!(
        sockets.len() >= 2,
        "berthd's socket and the shim's: {sockets:?}"
    );

    // Root may connect; nobody is refused with EACCES on every socket (berthd's and the shim's).
    assert_eq!(connect_as(0, &sock), 0, "root connects to berthd");
    for s in &sockets {
        assert_eq!(
            connect_as(NOBODY, s),
            libc::EACCES,
            "nobody must be refused at {}",
            s.display()
        );
    }
    // The probe itself can connect where the mode allows it: a 0666 socket of our own.
    let open = f.fx.dir.join("open.sock");
    let _l = std::os::unix::net::UnixListener::bind(&open).expect("bind");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    assert_eq!(connect_as(NOBODY, &open), 0, "the probe works");

    // The CLI run as nobody says why in one line.
    let mut cmd = Command::new(berth_tests::bin("berth"));
    std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
    cmd.arg("-a").arg(&sock).args(["-n", f.ns(), "tasks", "ls"]);
    let out = berth_tests::run_timeout(&mut cmd, Duration::from_secs(30));
    let line = one_line_error(&out);
    assert!(
        line.to_lowercase().contains("permission denied"),
        "names the cause: {line}"
    );
    f.ok(&["rm", "-f", "modes"]);
    f.fx.guard.assert_clean();
}

/// `berth -a SOCK -n NS ARGS`, as another namespace's client.
fn in_ns(f: &CliFixture, ns: &str, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(berth_tests::bin("berth"));
    c.arg("-a")
        .arg(f.address())
        .args(["-n", ns])
        .env("BERTH_FIFO_DIR", &f.fifo_dir)
        .args(args);
    berth_tests::run_timeout(&mut c, Duration::from_secs(60))
}

/// Lines of a successful `berth ... -q` listing in namespace `ns`.
fn listed(f: &CliFixture, ns: &str, args: &[&str]) -> Vec<String> {
    let out = in_ns(f, ns, args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout).lines().map(String::from).collect()
}

/// Events received on `sub` until one with topic `fence` (inclusive) or 30 s.
async fn until_fence(sub: &mut tonic::Streaming<Envelope>, fence: &str) -> Vec<Envelope> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline, sub.message())
            .await
            .expect("the fence event within 30 s")
            .expect("stream");
        let Some(e) = next else { break };
        let done = e.topic == fence;
        got.push(e);
        if done {
            break;
        }
    }
    got
}

#[test]
fn another_namespace_sees_and_touches_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-ns");
    let a = f.ns().to_string();
    let b = berth_tests::unique_id("sec-ns-other");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Subscribers before anything happens: one for everything, one filtered to namespace b.
    let (mut all, mut only_b) = rt.block_on(async {
        let ch = f.fx.daemon.channel().await;
        let mut ev = EventsClient::new(ch);
        let all = ev
            .subscribe(berth_tests::grpc::req(
                &b,
                SubscribeRequest { filters: vec![] },
            ))
            .await
            .expect("subscribe")
            .into_inner();
        let only_b = ev
            .subscribe(berth_tests::grpc::req(
                &b,
                SubscribeRequest {
                    filters: vec![format!("namespace=={b}")],
                },
            ))
            .await
            .expect("subscribe")
            .into_inner();
        (all, only_b)
    });

    // Namespace a: an image, a running task (container, snapshot), a lease.
    f.seed_busybox();
    f.ok(&[
        "run", "-d", "--net", "none", BUSYBOX, "secret", "sleep", "1000",
    ]);
    let lease = f.ok(&["leases", "create", "--id", "a-lease"]);
    assert_eq!(lease.trim(), "a-lease");
    assert!(!f.ok(&["content", "ls", "-q"]).trim().is_empty());
    assert!(!f.ok(&["snapshots", "ls", "-q"]).trim().is_empty());
    // b is not empty either (so an empty listing is not just "nothing exists"): a lease.
    assert!(in_ns(&f, &b, &["leases", "create", "--id", "b-lease"])
        .status
        .success());

    // Lists in b show none of a's.
    for args in [
        &["containers", "ls", "-q"][..],
        &["tasks", "ls", "-q"],
        &["images", "ls", "-q"],
        &["snapshots", "ls", "-q"],
        &["content", "ls", "-q"],
    ] {
        assert_eq!(listed(&f, &b, args), Vec::<String>::new(), "{args:?} in b");
    }
    assert_eq!(listed(&f, &b, &["leases", "ls", "-q"]), ["b-lease"]);
    // Gets and changes by name fail with "not found", and a's objects are untouched.
    for args in [
        &["containers", "info", "secret"][..],
        &["tasks", "kill", "-s", "SIGKILL", "secret"],
        &["tasks", "exec", "--exec-id", "x", "secret", "true"],
        &["rm", "-f", "secret"],
        &["images", "rm", BUSYBOX],
        &["leases", "rm", "a-lease"],
    ] {
        let out = in_ns(&f, &b, args);
        let line = one_line_error(&out);
        assert!(line.contains("not found"), "{args:?} in b: {line}");
    }
    assert!(
        f.ok(&["tasks", "ls"]).contains("RUNNING"),
        "still running in a"
    );
    assert_eq!(f.ok(&["images", "ls", "-q"]).trim(), BUSYBOX);
    assert!(f.ok(&["leases", "ls", "-q"]).contains("a-lease"));

    // Events: a fence published in b; the filtered subscriber saw only b's, the other a's too.
    let (seen_all, seen_b) = rt.block_on(async {
        let ch = f.fx.daemon.channel().await;
        let fence = "/berth-test/fence";
        EventsClient::new(ch)
            .publish(berth_tests::grpc::req(
                &b,
                PublishRequest {
                    topic: fence.into(),
                    event: Some(prost_types::Any {
                        type_url: "berth.test.Fence".into(),
                        value: vec![],
                    }),
                },
            ))
            .await
            .expect("publish");
        (
            until_fence(&mut all, fence).await,
            until_fence(&mut only_b, fence).await,
        )
    });
    assert!(
        seen_all
            .iter()
            .any(|e| e.namespace == a && e.topic == "/tasks/start"),
        "the unfiltered subscriber saw a's task start"
    );
    let foreign: Vec<_> = seen_b
        .iter()
        .filter(|e| e.namespace != b)
        .map(|e| format!("{} {}", e.namespace, e.topic))
        .collect();
    assert!(foreign.is_empty(), "b's subscriber saw {foreign:?}");

    f.ok(&["rm", "-f", "secret"]);
    f.ok(&["leases", "rm", "a-lease"]);
    assert!(in_ns(&f, &b, &["leases", "rm", "b-lease"]).status.success());
    f.fx.guard.assert_clean();
}
