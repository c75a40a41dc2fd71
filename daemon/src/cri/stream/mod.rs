//! The CRI streaming server: Exec, Attach and PortForward answer a URL on it (`/exec/{token}`,
//! `/attach/{token}`, `/portforward/{token}`), and the kubelet's client (or critest's, or kubectl's through
//! the API server) upgrades that URL to one of the remotecommand protocols: WebSocket (`ws.rs`) or
//! SPDY/3.1 (`spdy/`). What a session does with its channels is protocol-free (`session.rs` for exec,
//! `attach.rs`, `portforward.rs`).
//!
//! A token is random, good for one upgrade and for [`TOKEN_TTL`]; the request it stands for was validated
//! when the RPC made it. This module must never run a process or open a connection for a request that did not
//! come through the RuntimeService, nor serve anything but loopback unless `[cri] stream_address` says so.

mod attach;
mod http;
mod portforward;
mod session;
mod spdy;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use berth_proto::cri;
use tonic::Status;

use super::{Cri, NAMESPACE};

pub use attach::{make_stdin, remove_stdin};

/// How long a URL stays usable (the kubelet connects at once; kubelet's own cache keeps tokens one minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Most tokens outstanding at once: beyond, the oldest go (a client that asks and never connects must not
/// grow berthd's memory).
const MAX_TOKENS: usize = 1000;

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// The streaming server's state: its address once bound, and the outstanding tokens.
#[derive(Default)]
pub struct Streams {
    addr: OnceLock<SocketAddr>,
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl Streams {
    /// Take the request behind `token` (once: a second use finds nothing); None when unknown or expired.
    fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (p, at) = tokens.remove(token)?;
        (p.path() == kind && at.elapsed() < TOKEN_TTL).then_some(p)
    }

    /// Register `p` and answer its URL.
    fn insert(&self, p: Pending) -> Result<String, Status> {
        let addr = self
            .addr
            .get()
            .ok_or_else(|| Status::unavailable("the CRI streaming server is not running"))?;
        let token = super::new_id()?[..32].to_string();
        let url = format!("http://{addr}/{}/{token}", p.path());
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, (_, at)| at.elapsed() < TOKEN_TTL);
        if tokens.len() >= MAX_TOKENS {
            if let Some(oldest) = tokens
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                tokens.remove(&oldest);
            }
        }
        tokens.insert(token, (p, Instant::now()));
        Ok(url)
    }
}

/// Bind `[cri] stream_address:stream_port` and serve in the background.
pub async fn serve(cri: &Cri) -> std::io::Result<SocketAddr> {
    let c = &cri.ctx().config.cri;
    let ip: std::net::IpAddr = c.stream_address.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("[cri] stream_address {:?}: {e}", c.stream_address),
        )
    })?;
    let listener = tokio::net::TcpListener::bind((ip, c.stream_port)).await?;
    let addr = listener.local_addr()?;
    let _ = cri.inner.streams.addr.set(addr);
    tokio::spawn(http::accept(cri.clone(), listener));
    tracing::info!(namespace = NAMESPACE, %addr, "CRI streaming server listening");
    Ok(addr)
}

/// Exec: check the container runs and the request makes sense, answer a URL.
pub async fn exec(cri: &Cri, req: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd must not be empty"));
    }
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    running(cri, &req.container_id).await?;
    let url = cri.inner.streams.insert(Pending::Exec(req))?;
    Ok(cri::ExecResponse { url })
}

/// Attach: as Exec, for the container's own process.
pub async fn attach(cri: &Cri, req: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    // Stdin asked of a container created without it is ignored, as containerd does (`attach.rs`).
    running(cri, &req.container_id).await?;
    let url = cri.inner.streams.insert(Pending::Attach(req))?;
    Ok(cri::AttachResponse { url })
}

/// PortForward: the pod must exist and have a network namespace of its own or the host's.
pub async fn port_forward(
    cri: &Cri,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    super::meta::sandbox(&cri.ctx().store, &req.pod_sandbox_id).await?;
    if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Status::invalid_argument(format!(
            "port {p} is not in 1..65535"
        )));
    }
    let url = cri.inner.streams.insert(Pending::PortForward(req))?;
    Ok(cri::PortForwardResponse { url })
}

/// CRI's rules on which streams a request may ask for.
fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), Status> {
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout and stderr must be true",
        ));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true (a tty has one output stream)",
        ));
    }
    Ok(())
}

/// The container exists in CRI and its task runs.
async fn running(cri: &Cri, id: &str) -> Result<super::meta::CriContainer, Status> {
    let c = super::meta::container(&cri.ctx().store, id).await?;
    let p = cri
        .tasks()
        .get(NAMESPACE, &c.id, String::new())
        .await
        .map_err(|e| match e {
            crate::tasks::TaskError::TaskNotFound(_) => {
                Status::failed_precondition(format!("container {id:?} is not running"))
            }
            e => super::task_status(e),
        })?;
    if p.status != berth_proto::containerd_client::types::v1::Status::Running as i32 {
        return Err(Status::failed_precondition(format!(
            "container {id:?} is not running"
        )));
    }
    Ok(c)
}
