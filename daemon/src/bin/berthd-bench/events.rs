//! Exit-to-subscriber latency, measured as tools/exit-latency.py does (a `ctr events` process read line by line,
//! SIGKILL of a container's init from the host), and fan-out: time until the last of N gRPC subscribers (each on
//! its own connection) has the `/tasks/exit`.

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_proto::containerd_client::events::TaskExit;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::SubscribeRequest;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::api::{self, Clients};
use crate::daemon::Daemon;

/// A `ctr events` process whose lines a thread stamps with the time they were read.
pub struct CtrEvents {
    child: Child,
    lines: std_mpsc::Receiver<(Instant, String)>,
}

impl CtrEvents {
    pub fn start(d: &Daemon) -> anyhow::Result<CtrEvents> {
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(d.address())
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting `ctr events`")?;
        let out = child.stdout.take().context("ctr events has no stdout")?;
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        Ok(CtrEvents { child, lines })
    }

    /// Wait (blocking) for the `/tasks/exit` line of `id`; when it was read.
    fn exit_of(&self, id: &str) -> anyhow::Result<Instant> {
        let needle = format!("\"{id}\"");
        loop {
            let (at, line) = self
                .lines
                .recv_timeout(Duration::from_secs(15))
                .context("no /tasks/exit line from `ctr events` within 15 s")?;
            // The topic is a field of its own (a path in the payload may contain "/tasks/exit").
            if line.contains(" /tasks/exit ") && line.contains(&needle) {
                return Ok(at);
            }
        }
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL a pid from the host.
fn sigkill(pid: u32) -> anyhow::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("kill -9 {pid}"))
}

/// One exit-latency sample through `ctr events`, in ms: start a container, SIGKILL its init, wait for the line.
pub async fn ctr_sample(c: &mut Clients, sub: &CtrEvents, id: &str) -> anyhow::Result<f64> {
    let pid = c.run(id).await?;
    let t = Instant::now();
    sigkill(pid)?;
    let at = tokio::task::block_in_place(|| sub.exit_of(id))?;
    c.delete(id).await;
    Ok(at.duration_since(t).as_secs_f64() * 1000.0)
}

/// N gRPC subscribers to `/tasks/exit`, each on its own connection, reporting (container id, time received).
pub struct FanOut {
    rx: mpsc::UnboundedReceiver<(usize, String, Instant)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    n: usize,
}

impl FanOut {
    /// Subscribe `n` times, then kill warm-up containers until every subscriber has seen an exit: containerd
    /// sends a stream's response headers only with its first event, so a subscription cannot be awaited.
    pub async fn start(d: &Daemon, c: &mut Clients, n: usize) -> anyhow::Result<FanOut> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(n);
        for idx in 0..n {
            let mut client = EventsClient::new(api::connect(&d.address()).await?);
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(stream) = client
                    .subscribe(api::req(SubscribeRequest {
                        filters: vec!["topic==\"/tasks/exit\"".into()],
                    }))
                    .await
                else {
                    return;
                };
                let mut stream = stream.into_inner();
                while let Ok(Some(env)) = stream.message().await {
                    let at = Instant::now();
                    let Some(any) = env.event else { continue };
                    if let Ok(exit) = TaskExit::decode(any.value.as_slice()) {
                        if tx.send((idx, exit.container_id, at)).is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        let mut f = FanOut { rx, tasks, n };
        let mut ready = vec![false; n];
        for j in 0..50 {
            let id = format!("warm{j}");
            let pid = c.run(&id).await?;
            sigkill(pid)?;
            let until = Instant::now() + Duration::from_millis(500);
            while let Ok(Some((idx, _, _))) =
                tokio::time::timeout_at(until.into(), f.rx.recv()).await
            {
                ready[idx] = true;
            }
            c.delete(&id).await;
            if ready.iter().all(|r| *r) {
                return Ok(f);
            }
        }
        bail!(
            "only {} of {n} subscribers see exits",
            ready.iter().filter(|r| **r).count()
        )
    }

    /// One sample, in ms: (time until the first subscriber, time until the last) had the exit of `id`.
    pub async fn sample(&mut self, c: &mut Clients, id: &str) -> anyhow::Result<(f64, f64)> {
        let pid = c.run(id).await?;
        let t = Instant::now();
        sigkill(pid)?;
        let (mut first, mut last, mut seen) = (None, t, 0);
        while seen < self.n {
            let (_, cid, at) = tokio::time::timeout(Duration::from_secs(15), self.rx.recv())
                .await
                .with_context(|| {
                    format!(
                        "only {seen} of {} subscribers saw the exit within 15 s",
                        self.n
                    )
                })?
                .context("the subscribers ended")?;
            if cid != id {
                continue;
            }
            seen += 1;
            first.get_or_insert(at);
            last = last.max(at);
        }
        c.delete(id).await;
        let ms = |i: Instant| i.duration_since(t).as_secs_f64() * 1000.0;
        match first {
            Some(f) => Ok((ms(f), ms(last))),
            None => bail!("no subscriber saw the exit"),
        }
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
