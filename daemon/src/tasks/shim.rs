//! Talking to one berth-shim: starting it (`berth-shim start`), cleaning up after a dead one (`berth-shim delete`),
//! the tonic client over its unix socket, and the ShimActor that pumps its acked event stream into the journal.
//!
//! The ShimActor journals every event (`publish_from_shim`, which records the shim seq in the same transaction)
//! BEFORE acking it to the shim; it must never ack first, or an exit could be lost in a crash.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use actix::prelude::*;
use berth_proto::shim::shim_client::ShimClient as GenClient;
use berth_proto::shim::{AckRequest, Event, EventsRequest};
use tonic::transport::{Channel, Endpoint};

use super::bundle;
use super::container::{ContainerActor, PumpFailed, ShimEventMsg, ShimGone};
use super::error::TaskError;
use super::state::ExitInfo;
use crate::events::EventBus;

/// A client of one shim.
pub type ShimClient = GenClient<Channel>;

/// Connect to a shim's unix socket (eagerly, so a dead shim is noticed at once).
pub async fn connect(address: &Path, timeout: Duration) -> Result<ShimClient, TaskError> {
    let path = address.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::]")
        .map_err(|e| TaskError::ShimUnavailable(e.to_string()))?
        .connect_timeout(timeout);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            TaskError::ShimUnavailable(format!("connecting to {}: {e}", address.display()))
        })?;
    Ok(GenClient::new(channel))
}

/// Everything `berth-shim start` needs.
#[derive(Clone, Debug)]
pub struct StartArgs {
    /// The berth-shim binary.
    pub shim_binary: PathBuf,
    /// Namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// Bundle (= task directory).
    pub bundle: PathBuf,
    /// berthd's socket, recorded by the shim for diagnostics.
    pub daemon_address: PathBuf,
    /// berthd's state dir.
    pub state: PathBuf,
    /// OCI runtime binary.
    pub runtime: PathBuf,
    /// Runtime state root, if any.
    pub runtime_root: Option<PathBuf>,
}

/// Run `berth-shim start` and return the shim's socket address (blocking: call from a blocking thread).
///
/// All of berthd's descriptors are close-on-exec (Rust and tokio open them so), so the shim inherits none; its
/// stdout is a pipe we read one line from, its stderr goes to `<bundle>/shim-start.err`.
pub fn start_shim(args: &StartArgs) -> Result<PathBuf, TaskError> {
    close_inherited_fds();
    let err_path = args.bundle.join("shim-start.err");
    let err_file = std::fs::File::create(&err_path)
        .map_err(|e| TaskError::io(format!("creating {}", err_path.display()), e))?;
    let mut cmd = Command::new(&args.shim_binary);
    cmd.arg("start")
        .arg("--namespace")
        .arg(&args.namespace)
        .arg("--id")
        .arg(&args.id)
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--address")
        .arg(&args.daemon_address)
        .arg("--state")
        .arg(&args.state)
        .arg("--runtime")
        .arg(&args.runtime);
    if let Some(root) = &args.runtime_root {
        cmd.arg("--runtime-root").arg(root);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err_file));
    let mut child = cmd.spawn().map_err(|e| {
        TaskError::ShimUnavailable(format!("running {}: {e}", args.shim_binary.display()))
    })?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let status = child
        .wait()
        .map_err(|e| TaskError::ShimUnavailable(format!("waiting for berth-shim start: {e}")))?;
    if !status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(TaskError::ShimUnavailable(format!(
            "berth-shim start failed ({status}): {}",
            err.trim()
        )));
    }
    let _ = std::fs::remove_file(&err_path);
    bundle::parse_address(&line)
        .or_else(|| bundle::read_address(&args.bundle))
        .ok_or_else(|| TaskError::ShimUnavailable("berth-shim start printed no address".into()))
}

/// Close descriptors berthd inherited without close-on-exec (from whoever started it), so shims never inherit
/// them. Everything berthd opens itself is close-on-exec; `/proc/self/fdinfo` tells the two apart without unsafe.
fn close_inherited_fds() {
    const O_CLOEXEC_OCTAL: u64 = 0o2000000;
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if fd <= 2 {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 8).ok());
        if let Some(flags) = flags {
            if flags & O_CLOEXEC_OCTAL == 0 {
                tracing::debug!(fd, "closing a descriptor berthd inherited, so shims do not");
                let _ = nix::unistd::close(fd);
            }
        }
    }
}

/// Run `berth-shim delete` for a task whose shim is gone; returns the recorded exit (blocking).
pub fn delete_shim(args: &StartArgs) -> Result<ExitInfo, TaskError> {
    let mut cmd = Command::new(&args.shim_binary);
    cmd.arg("delete")
        .arg("--namespace")
        .arg(&args.namespace)
        .arg("--id")
        .arg(&args.id)
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--state")
        .arg(&args.state)
        .arg("--runtime")
        .arg(&args.runtime);
    if let Some(root) = &args.runtime_root {
        cmd.arg("--runtime-root").arg(root);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TaskError::ShimUnavailable(format!("running berth-shim delete: {e}")))?;
    if !out.status.success() {
        return Err(TaskError::ShimUnavailable(format!(
            "berth-shim delete failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_delete_output(&String::from_utf8_lossy(&out.stdout))
}

/// Parse `{"exit_status":N,"exited_at":"RFC3339","pid":P}`.
pub fn parse_delete_output(s: &str) -> Result<ExitInfo, TaskError> {
    let line = s
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| TaskError::ShimUnavailable(format!("berth-shim delete printed {s:?}: {e}")))?;
    let status = v.get("exit_status").and_then(|x| x.as_u64()).unwrap_or(137) as u32;
    let pid = v.get("pid").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
    let at = v
        .get("exited_at")
        .and_then(|x| x.as_str())
        .and_then(parse_rfc3339);
    Ok(ExitInfo::new(pid, status, at.as_ref()))
}

/// Parse an RFC 3339 timestamp (`2026-11-27T19:49:59.453278694Z`, offsets allowed).
pub fn parse_rfc3339(s: &str) -> Option<prost_types::Timestamp> {
    let s = s.trim();
    if s.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &s[19..];
    let (frac, tz) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += (c as i64 - '0' as i64) * 10i64.pow(8 - i as u32);
    }
    let offset = match tz {
        "Z" | "z" => 0,
        t if t.len() == 6 => {
            let sign = if t.starts_with('-') { -1 } else { 1 };
            let oh: i64 = t.get(1..3)?.parse().ok()?;
            let om: i64 = t.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(prost_types::Timestamp {
        seconds: days * 86400 + h * 3600 + mi * 60 + sec - offset,
        nanos: nanos as i32,
    })
}

/// Set a process's oom_score_adj (best effort; logged on failure).
pub fn set_oom_score_adj(pid: u32, value: i32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string()) {
        tracing::warn!(pid, error = %e, "setting the shim's oom_score_adj");
    }
}

/// Pumps one shim's event stream: journal (exactly once) → failpoint → ack → tell the ContainerActor.
///
/// Owned by the ContainerActor that started it; stopped with it. A restarted ContainerActor starts a new one,
/// which resumes from the seq recorded in the journal.
pub struct ShimActor {
    client: ShimClient,
    events: EventBus,
    namespace: String,
    id: String,
    bundle: PathBuf,
    container: Addr<ContainerActor>,
}

impl ShimActor {
    /// A pump for the shim of `namespace/id`.
    pub fn new(
        client: ShimClient,
        events: EventBus,
        namespace: String,
        id: String,
        bundle: PathBuf,
        container: Addr<ContainerActor>,
    ) -> Self {
        ShimActor {
            client,
            events,
            namespace,
            id,
            bundle,
            container,
        }
    }
}

/// Stop the pump (the ContainerActor is going away or shutting down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPump;

impl Actor for ShimActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let pump = pump(
            self.client.clone(),
            self.events.clone(),
            self.namespace.clone(),
            self.id.clone(),
            self.bundle.clone(),
            self.container.clone(),
        );
        // A panic in the pump must not unwind through the arbiter: report it, and the ContainerActor restarts.
        let pump = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(pump));
        ctx.spawn(pump.into_actor(self).map(|res, act, ctx| {
            if let Err(p) = res {
                let msg = crate::supervision::panic_message(&*p);
                tracing::error!(namespace = %act.namespace, container_id = %act.id, panic = %msg,
                    "shim event pump panicked");
                act.container.do_send(PumpFailed(msg));
            }
            ctx.stop()
        }));
    }
}

impl Handler<StopPump> for ShimActor {
    type Result = ();
    fn handle(&mut self, _: StopPump, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The shim key used for exactly-once journaling.
pub fn shim_key(namespace: &str, id: &str) -> String {
    format!("{namespace}/{id}")
}

async fn pump(
    client: ShimClient,
    events: EventBus,
    namespace: String,
    id: String,
    bundle: PathBuf,
    container: Addr<ContainerActor>,
) {
    let key = shim_key(&namespace, &id);
    let mut backoff = Duration::from_millis(20);
    loop {
        let after = match events.last_shim_seq(&key).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%key, error = %e, "reading the last shim seq");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match client
            .clone()
            .events(EventsRequest { after_seq: after })
            .await
        {
            Ok(resp) => {
                backoff = Duration::from_millis(20);
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            handle_event(&client, &events, &key, &namespace, &id, &container, ev)
                                .await
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%key, %status, "shim event stream ended");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(%key, %status, "opening the shim event stream");
            }
        }
        // The stream ended: the shim exited (after Delete) or the connection broke.
        let alive = bundle::read_shim_pid(&bundle).is_some_and(bundle::pid_alive);
        if !alive {
            container.do_send(ShimGone);
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn handle_event(
    client: &ShimClient,
    events: &EventBus,
    key: &str,
    namespace: &str,
    id: &str,
    container: &Addr<ContainerActor>,
    ev: Event,
) {
    let seq = ev.seq;
    if let Some((topic, any)) = ev
        .kind
        .as_ref()
        .and_then(|k| super::events::to_containerd(id, k))
    {
        let mut delay = Duration::from_millis(10);
        loop {
            match events
                .publish_from_shim(key, seq, namespace, topic, any.clone())
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(%key, seq, error = %e, "journaling a shim event; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
    crate::failpoint::hit("shim_actor.after_journal_before_ack");
    if let Err(status) = client.clone().ack(AckRequest { seq }).await {
        tracing::debug!(%key, seq, %status, "acking a shim event");
    }
    container.do_send(ShimEventMsg(ev));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("1970-01-02T00:00:01.5Z").expect("parses");
        assert_eq!((t.seconds, t.nanos), (86401, 500_000_000));
        let t = parse_rfc3339("2026-11-27T19:49:59.453278694Z").expect("parses");
        assert_eq!(t.seconds, 1_795_808_999);
        assert_eq!(t.nanos, 453_278_694);
        let t = parse_rfc3339("1970-01-01T01:00:00+01:00").expect("parses");
        assert_eq!(t.seconds, 0);
        assert!(parse_rfc3339("garbage").is_none());
    }

    #[test]
    fn delete_output() {
        let e = parse_delete_output(
            "{\"exit_status\":3,\"exited_at\":\"1970-01-01T00:00:10Z\",\"pid\":12}\n",
        )
        .expect("parses");
        assert_eq!((e.status, e.pid, e.secs), (3, 12, 10));
        assert!(parse_delete_output("nonsense").is_err());
    }
}
