//! Debian's `ctr` (1.6) against berthd, with no image (`--rootfs`): run --rm with output and exit code, run -d then
//! tasks ls / exec / kill / rm and containers rm, and `ctr events` showing the run's events. Root only.
//! (`sleep 1000` is the detached container's workload, not a wait.)

use berth_tests::task_fixture as support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_proto::containerd_client::events::TaskOom;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::PublishRequest;
use prost::Message;
use support::TaskFixture;

/// The topic of the events that tell when `ctr events` is subscribed.
const PROBE_TOPIC: &str = "/berth-test/ctr-events-probe";

/// Run a command with a deadline (killed by its pid when it overruns).
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("ctr output");
        }
        if Instant::now() >= deadline {
            berth_tests::proc::kill(child.id() as i32, nix::sys::signal::Signal::SIGKILL);
            let out = child.wait_with_output().expect("ctr output");
            panic!(
                "{cmd:?} timed out; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctr(fx: &TaskFixture, args: &[&str]) -> Output {
    let Some(_) = berth_tests::tool("ctr") else {
        panic!("ctr is required");
    };
    let mut c = fx.daemon.ctr();
    c.arg("-n").arg(&fx.ns).args(args);
    run_with_timeout(c, Duration::from_secs(60))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ctr events` running in the background, writing to a file; killed by pid on drop.
struct CtrEvents {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl CtrEvents {
    fn start(fx: &TaskFixture) -> CtrEvents {
        let path = fx.dir.join("ctr-events.txt");
        let out = std::fs::File::create(&path).expect("events file");
        let mut c = fx.daemon.ctr();
        c.arg("-n").arg(&fx.ns).arg("events");
        let child = c
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let events = CtrEvents { child, path };
        events.wait_subscribed(fx);
        events
    }

    /// ctr prints nothing until the first event, so publish probe events until one shows up in its output:
    /// then it is subscribed and sees everything the test does next.
    fn wait_subscribed(&self, fx: &TaskFixture) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let mut ec = EventsClient::new(fx.channel().await);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                ec.publish(support::req(
                    &fx.ns,
                    PublishRequest {
                        topic: PROBE_TOPIC.into(),
                        // A type ctr knows (it skips events it cannot decode).
                        event: Some(prost_types::Any {
                            type_url: "containerd.events.TaskOOM".into(),
                            value: TaskOom {
                                container_id: "ctr-events-probe".into(),
                            }
                            .encode_to_vec(),
                        }),
                    },
                ))
                .await
                .expect("publish the probe event");
                let out = std::fs::read_to_string(&self.path).unwrap_or_default();
                if out.contains(PROBE_TOPIC) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "ctr events never printed a probe event (not subscribed?):\n{out}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = std::fs::read_to_string(&self.path).unwrap_or_default();
            if needles.iter().all(|n| s.contains(n)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "ctr events never showed {needles:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        berth_tests::proc::kill(self.child.id() as i32, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn ctr_run_rm_prints_output_and_exit_code() {
    if !berth_tests::require_root() || berth_tests::tool("ctr").is_none() {
        return;
    }
    let fx = TaskFixture::new("dt-ctr-rm", "");
    let events = CtrEvents::start(&fx);
    let b = fx.bundle("b", &["true"]);
    let id = berth_tests::unique_id("dt-ctr");
    fx.guard.cgroup(format!("/{}/{id}", fx.ns));
    let rootfs = b.rootfs.display().to_string();
    let o = ctr(
        &fx,
        &[
            "run",
            "--rm",
            "--rootfs",
            &rootfs,
            &id,
            "sh",
            "-c",
            "echo hi; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{}", text(&o));
    let log = events.wait_for(&[
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ]);
    let pos = |t: &str| log.find(t).unwrap_or(usize::MAX);
    assert!(pos("/containers/create") < pos("/tasks/create"), "{log}");
    assert!(pos("/tasks/create") < pos("/tasks/start"), "{log}");
    assert!(pos("/tasks/start") < pos("/tasks/exit"), "{log}");
    assert!(pos("/tasks/exit") < pos("/tasks/delete"), "{log}");
    assert!(log.contains("\"exit_status\":3"), "{log}");
    let ls = ctr(&fx, &["c", "ls", "-q"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains(&id),
        "{}",
        text(&ls)
    );
    fx.guard.assert_clean();
}

#[test]
fn ctr_detached_run_exec_kill_rm() {
    if !berth_tests::require_root() || berth_tests::tool("ctr").is_none() {
        return;
    }
    let fx = TaskFixture::new("dt-ctr-d", "");
    let events = CtrEvents::start(&fx);
    let b = fx.bundle("b", &["true"]);
    let id = berth_tests::unique_id("dt-ctrd");
    fx.guard.cgroup(format!("/{}/{id}", fx.ns));
    let rootfs = b.rootfs.display().to_string();
    let o = ctr(
        &fx,
        &["run", "-d", "--rootfs", &rootfs, &id, "sleep", "1000"],
    );
    assert!(o.status.success(), "{}", text(&o));

    let ls = ctr(&fx, &["t", "ls"]);
    let line = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .find(|l| l.starts_with(&id))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{id} not listed: {}", text(&ls)));
    assert!(line.contains("RUNNING"), "{line}");
    let pid: i32 = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("pid column");
    fx.guard.pid(pid);

    let ex = ctr(&fx, &["t", "exec", "--exec-id", "x1", &id, "echo", "ok"]);
    assert!(ex.status.success(), "{}", text(&ex));
    assert_eq!(String::from_utf8_lossy(&ex.stdout), "ok\n", "{}", text(&ex));
    let ps = ctr(&fx, &["t", "ps", &id]);
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains(&pid.to_string()),
        "{}",
        text(&ps)
    );

    let k = ctr(&fx, &["t", "kill", "-s", "KILL", &id]);
    assert!(k.status.success(), "{}", text(&k));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ls = ctr(&fx, &["t", "ls"]);
        if String::from_utf8_lossy(&ls.stdout)
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never STOPPED: {}", text(&ls));
        std::thread::sleep(Duration::from_millis(50));
    }
    let rm = ctr(&fx, &["t", "rm", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    let crm = ctr(&fx, &["c", "rm", &id]);
    assert!(crm.status.success(), "{}", text(&crm));
    let ls = ctr(&fx, &["t", "ls", "-q"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains(&id),
        "{}",
        text(&ls)
    );

    let log = events.wait_for(&[
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ]);
    assert!(log.contains("\"exit_status\":137"), "{log}");
    assert!(log.contains("\"id\":\"x1\""), "exec exit: {log}");
    fx.guard.assert_clean();
}
