//! Port-forward's connections: a TCP connection to `localhost:port` inside the pod's network namespace,
//! made on a thread of its own that enters the namespace and ends (a socket stays in the namespace it was
//! made in), then spliced to one channel of the client's stream.
//!
//! This module must never enter a namespace on a thread that outlives the connect (tokio's blocking pool
//! reuses its threads; that is why the thread is a plain one).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::cri::{meta, pods, Cri, NAMESPACE};
use crate::network::Owner;

/// How long a connect into the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to `port` on the pod's localhost.
pub async fn connect(cri: &Cri, pod: &str, port: u16) -> Result<TcpStream, String> {
    let s = meta::sandbox(&cri.ctx().store, pod)
        .await
        .map_err(|e| e.message().to_string())?;
    let netns = (!pods::host_network(&s.config))
        .then(|| Owner::task(NAMESPACE, &s.id).netns_path(&cri.ctx().config.state));
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("berth-portfwd".into())
        .spawn(move || {
            let _ = tx.send(connect_in(netns, port));
        })
        .map_err(|e| format!("starting a port-forward thread: {e}"))?;
    let stream = rx
        .await
        .map_err(|_| "the port-forward thread died".to_string())??;
    stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream))
        .map_err(|e| format!("port-forward socket: {e}"))
}

fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<std::net::TcpStream, String> {
    if let Some(path) = netns {
        let f = std::fs::File::open(&path)
            .map_err(|e| format!("opening the pod's netns {}: {e}", path.display()))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the pod's netns {}: {e}", path.display()))?;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connecting to port {port} in the pod: {e}"))
}

/// Copy the client's bytes (`input`) to the connection and the connection's to `out` on `channel`, until the
/// connection's read side ends.
pub async fn splice(
    stream: TcpStream,
    mut input: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<(u8, Vec<u8>)>,
    channel: u8,
) {
    let (mut rd, mut wr) = stream.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(data) = input.recv().await {
            if wr.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send((channel, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
    to_pod.abort();
}
