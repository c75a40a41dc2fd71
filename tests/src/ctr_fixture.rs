//! Debian's `ctr` (1.6) against one test's berthd, as a user runs it: the command runner (with a time
//! limit, stdin from a file or a pseudo-terminal), a busybox image pulled from a loopback docker-registry,
//! a busybox rootfs for `--rootfs`, and `ctr events` running in the background with its lines parsed.
//!
//! Used by the `compat_ctr_*` and `daemon_ctr_*` tests. Every container id comes from
//! [`CtrFixture::container`], which registers its cgroup (`/<ns>/<id>`, ctr's default cgroupsPath) with the
//! guard. This module signals only the ctr processes it started (by pid), never anything by name.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_proto::containerd_client::events::TaskOom;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::PublishRequest;
use prost::Message;
use serde_json::Value;

use crate::oci_layout::{busybox_layout, OciLayout};
use crate::registry::Registry;
use crate::task_fixture::{req, TaskFixture};

/// How long one ctr command may take.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);

/// One test's berthd with ctr pointed at it. Fields drop in order: the registry, then berthd, the guard
/// and the dir (the [`TaskFixture`]).
pub struct CtrFixture {
    /// The loopback registry, once [`CtrFixture::pull_busybox`] started it.
    pub registry: Option<Registry>,
    /// The busybox image pushed there, once pulled.
    pub image: Option<OciLayout>,
    /// berthd, the guard, the namespace and the test dir.
    pub fx: TaskFixture,
    /// `--fifo-dir` of every run and exec, so that nothing lands in /run/containerd/fifo.
    pub fifo_dir: PathBuf,
}

impl CtrFixture {
    /// berthd for test `name`; `None` (skipped, a failure under CI) when not root or ctr is missing.
    #[track_caller]
    pub fn new(name: &str) -> Option<CtrFixture> {
        if !crate::require_root() {
            return None;
        }
        crate::tool("ctr")?;
        let fx = TaskFixture::new(name, "");
        let fifo_dir = fx.dir.subdir("fifo");
        Some(CtrFixture {
            registry: None,
            image: None,
            fx,
            fifo_dir,
        })
    }

    /// `ctr --address SOCK -n NS` with `args` appended, not run.
    pub fn command(&self, args: &[&str]) -> Command {
        self.fx.ctr_command(args)
    }

    /// Run `ctr ARGS` (stdin /dev/null) with a time limit.
    #[track_caller]
    pub fn ctr(&self, args: &[&str]) -> Output {
        crate::run_timeout(&mut self.command(args), CTR_TIMEOUT)
    }

    /// Run `ctr ARGS` with `input` on its stdin (from a file: ctr sees EOF after it).
    #[track_caller]
    pub fn ctr_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let path = self
            .fx
            .dir
            .join(format!("stdin-{}", crate::unique_id("in")));
        std::fs::write(&path, input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        crate::run::run_timeout_with_stdin(&mut self.command(args), Stdio::from(file), CTR_TIMEOUT)
    }

    /// Run `ctr ARGS` on a pseudo-terminal (util-linux's `script`: `ctr run -t` wants a real terminal on
    /// its stdin); `None` (skipped) without `script`.
    #[track_caller]
    pub fn ctr_on_tty(&self, args: &[&str]) -> Option<Output> {
        let script = crate::tool("script")?;
        let ctr = crate::tool("ctr")?;
        let address = self.fx.daemon.address().to_string_lossy().into_owned();
        let ctr = ctr.to_string_lossy().into_owned();
        let mut argv = vec![ctr.as_str(), "--address", &address, "-n", &self.fx.ns];
        argv.extend_from_slice(args);
        // `script -c` hands the line to a shell: quote every word.
        let line = argv
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        Some(crate::run_timeout(
            Command::new(script)
                .args(["-q", "-e", "-c"])
                .arg(&line)
                .arg("/dev/null"),
            CTR_TIMEOUT,
        ))
    }

    /// A fresh container id whose cgroup `/<ns>/<id>` the guard removes and checks.
    pub fn container(&self, prefix: &str) -> String {
        let id = crate::unique_id(prefix);
        self.fx.guard.cgroup(format!("/{}/{id}", self.fx.ns));
        id
    }

    /// A busybox rootfs for `ctr run --rootfs` (made once per test).
    pub fn rootfs(&self) -> String {
        let path = self.fx.dir.join("rootfs");
        if !path.join("bin/busybox").exists() {
            crate::bundle::busybox_rootfs(&path);
        }
        path.display().to_string()
    }

    /// `ctr run --fifo-dir F FLAGS... IMAGE|ROOTFS ID CMD...`.
    #[track_caller]
    pub fn run(&self, flags: &[&str], image: &str, id: &str, cmd: &[&str]) -> Output {
        let fifo = self.fifo_dir.display().to_string();
        let mut args = vec!["run", "--fifo-dir", &fifo];
        args.extend_from_slice(flags);
        args.push(image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// Start the loopback registry, push the busybox image and `ctr images pull --plain-http` it; returns
    /// its reference. `None` (skipped) without docker-registry.
    #[track_caller]
    pub fn pull_busybox(&mut self) -> Option<String> {
        let registry = Registry::start(self.fx.dir.path())?;
        let layout = busybox_layout(&self.fx.dir.join("busybox-layout"));
        registry.push_oci_layout(&layout.path, "busybox:latest");
        let reference = registry.reference("busybox:latest");
        self.registry = Some(registry);
        self.image = Some(layout);
        ok(
            &self.ctr(&["images", "pull", "--plain-http", &reference]),
            "ctr images pull",
        );
        Some(reference)
    }

    /// `(pid, STATUS)` of task `id` in `ctr tasks ls`, `None` when it is not listed.
    #[track_caller]
    pub fn task(&self, id: &str) -> Option<(i32, String)> {
        let o = self.ctr(&["tasks", "ls"]);
        let out = ok(&o, "ctr tasks ls");
        out.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [tid, pid, status] if *tid == id => Some((pid.parse().ok()?, status.to_string())),
                _ => None,
            }
        })
    }

    /// Wait (10 s) until task `id` shows `status` in `ctr tasks ls`; returns its pid.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.task(id);
            if let Some((pid, s)) = &t {
                if s == status {
                    return *pid;
                }
            }
            assert!(Instant::now() < deadline, "task {id} never {status}: {t:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ctr run -d` of `cmd` in `image`; returns the init pid (registered with the guard).
    #[track_caller]
    pub fn run_detached(&self, image: &str, id: &str, cmd: &[&str]) -> i32 {
        let o = self.run(&["-d"], image, id, cmd);
        ok(&o, "ctr run -d");
        let pid = self.wait_status(id, "RUNNING");
        self.fx.guard.pid(pid);
        pid
    }

    /// `tasks kill -s SIGKILL`, wait for STOPPED, `tasks rm`, `containers rm`: all must succeed.
    #[track_caller]
    pub fn kill_and_remove(&self, id: &str) {
        ok(
            &self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]),
            "ctr tasks kill",
        );
        self.wait_status(id, "STOPPED");
        ok(&self.ctr(&["tasks", "rm", id]), "ctr tasks rm");
        ok(&self.ctr(&["containers", "rm", id]), "ctr containers rm");
    }
}

/// Exit code and both outputs, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stdout of a command that must have succeeded.
#[track_caller]
pub fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The topic of the events that tell when `ctr events` is subscribed.
const PROBE_TOPIC: &str = "/berth-test/ctr-events-probe";

/// One line of `ctr events`: `<timestamp: 4 words> <namespace> <topic> <json>`.
#[derive(Debug, Clone)]
pub struct CtrEvent {
    /// The envelope's namespace.
    pub namespace: String,
    /// The topic.
    pub topic: String,
    /// The payload as ctr printed it (JSON of the decoded event; zero fields omitted).
    pub event: Value,
}

/// Parse one `ctr events` line.
pub fn parse_event_line(line: &str) -> Option<CtrEvent> {
    let mut words = line.splitn(7, ' ');
    // "2026-11-27 19:49:59.453364279 +0000 UTC"
    for _ in 0..4 {
        words.next()?;
    }
    let namespace = words.next()?.to_string();
    let topic = words.next()?.to_string();
    let event = serde_json::from_str(words.next().unwrap_or("{}")).ok()?;
    Some(CtrEvent {
        namespace,
        topic,
        event,
    })
}

/// `ctr events` running in the background, writing to a file; killed by pid on drop.
pub struct CtrEvents {
    child: std::process::Child,
    path: PathBuf,
}

impl CtrEvents {
    /// Start `ctr -n NS events` and return once it is subscribed.
    #[track_caller]
    pub fn start(fx: &TaskFixture) -> CtrEvents {
        let path = fx
            .dir
            .join(format!("ctr-events-{}.txt", crate::unique_id("ev")));
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
    #[track_caller]
    fn wait_subscribed(&self, fx: &TaskFixture) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let mut ec = EventsClient::new(fx.channel().await);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                ec.publish(req(
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
                if self.raw().contains(PROBE_TOPIC) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "ctr events never printed a probe event (not subscribed?):\n{}",
                    self.raw()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// Everything ctr printed so far.
    pub fn raw(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Every event printed so far, probes left out.
    pub fn events(&self) -> Vec<CtrEvent> {
        self.raw()
            .lines()
            .filter_map(parse_event_line)
            .filter(|e| e.topic != PROBE_TOPIC)
            .collect()
    }

    /// Wait (10 s) until ctr printed every one of `needles` (substrings); returns its output.
    #[track_caller]
    pub fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.raw();
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

    /// Wait (10 s) until an event matching `pred` was printed; returns it.
    #[track_caller]
    pub fn wait_event(&self, what: &str, pred: impl Fn(&CtrEvent) -> bool) -> CtrEvent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "ctr events never showed {what}:\n{}",
                self.raw()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        crate::proc::kill(self.child.id() as i32, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_is_split_as_ctr_prints_it() {
        let e = parse_event_line(
            "2026-11-27 19:49:59.453364279 +0000 UTC default /tasks/exit {\"container_id\":\"r1\",\"exit_status\":3}",
        )
        .expect("parsed");
        assert_eq!(e.namespace, "default");
        assert_eq!(e.topic, "/tasks/exit");
        assert_eq!(e.event["exit_status"], 3);
        assert!(parse_event_line("garbage").is_none());
    }
}
