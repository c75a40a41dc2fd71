//! The SPDY/3.1 side of the streaming server (kubectl's and the kubelet's default), written from the
//! SPDY/3 draft: frames (control: version 3, type, flags, 24-bit length; data: 31-bit stream id, flags,
//! length), header blocks zlib-compressed with the draft's dictionary in one context per direction, and
//! Kubernetes' use of it: the client opens one stream per channel, named by its `streamtype` header (error,
//! stdin, stdout, stderr, resize; port-forward: error and data, with `port` and `requestid`), the server
//! replies to each and writes on it; the status goes on the error stream, FIN closes a stream.
//!
//! Flow control (SPDY/3.1's windows, `flow.rs`): berthd sends no more than the client's windows allow, and
//! returns a WINDOW_UPDATE for every data frame it handed on, so a large transfer neither stalls nor overruns
//! either side.
//! This module must never start a session before the client opened the streams it needs, nor hold more than
//! [`MAX_FRAME`](frame::MAX_FRAME) bytes of one frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::http::{reply, switching_protocols};
use super::session::{self, Input, STDERR, STDOUT};
use super::{portforward, Pending};
use frame::{
    read_frame, syn_stream, writer, Frame, Inflater, Out, FLAG_FIN, GOAWAY, PING, SYN_STREAM,
};

mod flow;
mod frame;
use crate::cri::{Cri, NAMESPACE};

/// Exec and attach protocol versions (all carry a JSON status on the error stream).
const CHANNEL_PROTOCOLS: [&str; 1] = ["v4.channel.k8s.io"];
/// Port-forward's protocol.
const PORTFORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];
/// The protocol header of Kubernetes' SPDY upgrade.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// How long a client may take to close after berthd's last frame (its reads are drained meanwhile).
const LINGER: Duration = Duration::from_secs(5);
/// How long a client may take to open its streams.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

fn negotiate(headers: &HeaderMap, ours: &[&'static str]) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    ours.iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
}

/// Answer a SPDY/3.1 upgrade for `pending` and run its session on the upgraded connection.
pub fn upgrade(
    cri: Cri,
    mut req: http::Request<hyper::body::Incoming>,
    pending: Pending,
) -> Response<Full<Bytes>> {
    let ours: &[&'static str] = match pending {
        Pending::PortForward(_) => &PORTFORWARD_PROTOCOLS,
        _ => &CHANNEL_PROTOCOLS,
    };
    let Some(protocol) = negotiate(req.headers(), ours) else {
        return reply(
            StatusCode::FORBIDDEN,
            format!(
                "unable to negotiate a protocol: {PROTOCOL_HEADER} offers none of {}",
                ours.join(", ")
            ),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => run(cri, TokioIo::new(up), pending).await,
            Err(e) => tracing::debug!(namespace = NAMESPACE, error = %e, "SPDY upgrade failed"),
        }
    });
    let mut r = switching_protocols("SPDY/3.1");
    let h = r.headers_mut();
    h.insert(PROTOCOL_HEADER, http::HeaderValue::from_static(protocol));
    r
}

async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(cri: Cri, io: S, pending: Pending) {
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(32);
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let flow = Arc::new(flow::Flow::new());
    let writer = tokio::spawn(writer(wr, rx, ctl_rx, flow.clone()));
    let (frames_tx, frames) = mpsc::channel(FRAMES_QUEUE);
    let reader = tokio::spawn(read_frames(rd, ctl.clone(), flow.clone(), frames_tx));
    let peer = Peer { tx, ctl };
    match pending {
        Pending::PortForward(req) => {
            let span = tracing::info_span!("cri_port_forward", namespace = NAMESPACE, container_id = %req.pod_sandbox_id);
            tracing::Instrument::instrument(
                port_forward(cri, req.pod_sandbox_id, frames, peer),
                span,
            )
            .await
        }
        p => channels(cri, p, frames, peer).await,
    }
    // The reader goes on until the writer is done: what is still queued needs the client's window updates.
    let _ = writer.await;
    // Then it reads what the client still sends (window updates for the last frames) until it closes: a
    // socket closed with unread bytes resets the connection, and the client could lose the end of its output.
    let mut reader = reader;
    if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
        reader.abort();
    }
}

/// Frames read ahead of the session (a client that keeps our windows cannot fill it: the windows hold
/// less; one that does not meets TCP's back-pressure beyond it).
const FRAMES_QUEUE: usize = 1024;

/// The way back to the client: the writer's queue and its control queue.
#[derive(Clone)]
struct Peer {
    tx: mpsc::Sender<Out>,
    /// Window updates and ping replies: never behind data the client's window holds back. Unbounded, but
    /// each entry answers a frame the client sent.
    ctl: mpsc::UnboundedSender<Out>,
}

impl Peer {
    /// `n` bytes of `stream` were handed on: the client may send as many more.
    fn consumed(&self, stream: u32, n: usize) {
        if n > 0 {
            let _ = self.ctl.send(Out::Window(stream, n as u32));
        }
    }
}

/// Read the client's frames. Flow control and PINGs are handled here, at once, so a session blocked on a
/// slow process can never hold back the window update that would let the writer go on (which would
/// deadlock `cat` with large input and output); SYN_STREAM, data and GOAWAY go to the session.
/// The reader holds no sender of data frames: the writer ends when the session's senders are gone.
async fn read_frames<R: AsyncRead + Unpin + Send + 'static>(
    mut rd: R,
    ctl: mpsc::UnboundedSender<Out>,
    flow: Arc<flow::Flow>,
    frames: mpsc::Sender<Frame>,
) {
    while let Ok(Some(f)) = read_frame(&mut rd).await {
        let f = match f {
            Frame::Control { ty, data } if ty != SYN_STREAM && ty != GOAWAY => {
                if !flow.control(ty, &data) && ty == PING {
                    let _ = ctl.send(Out::Ping(data));
                }
                continue;
            }
            f => f,
        };
        // Once the session is over nobody takes frames: keep reading (see `LINGER`).
        let _ = frames.send(f).await;
    }
}

/// Exec or attach: wait for the client's streams, then run the session over them.
async fn channels(cri: Cri, pending: Pending, mut frames: mpsc::Receiver<Frame>, peer: Peer) {
    let tx = peer.tx.clone();
    let (stdin, stdout, stderr, tty, id) = match &pending {
        Pending::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty, r.container_id.clone()),
        Pending::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty, r.container_id.clone()),
        Pending::PortForward(_) => return,
    };
    let mut wanted = vec!["error"];
    wanted.extend(stdin.then_some("stdin"));
    wanted.extend(stdout.then_some("stdout"));
    wanted.extend((stderr && !tty).then_some("stderr"));
    wanted.extend(tty.then_some("resize"));
    let mut z = Inflater::new();
    let mut streams: HashMap<String, u32> = HashMap::new();
    let opening = async {
        while !wanted.iter().all(|w| streams.contains_key(*w)) {
            match frames.recv().await {
                Some(Frame::Control {
                    ty: SYN_STREAM,
                    data,
                }) => {
                    let o = syn_stream(&mut z, &data)?;
                    let _ = tx.send(Out::Reply(o.id)).await;
                    let ty = o.headers.get("streamtype").cloned().unwrap_or_default();
                    streams.insert(ty, o.id);
                }
                Some(Frame::Control { .. }) => {}
                Some(Frame::Data { stream, data, .. }) => peer.consumed(stream, data.len()),
                None => return Err("the client left before opening its streams".to_string()),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(STREAMS_TIMEOUT, opening).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::info!(namespace = NAMESPACE, container_id = %id, error = %e, "SPDY stream");
            return;
        }
        Err(_) => {
            tracing::info!(namespace = NAMESPACE, container_id = %id, "SPDY client did not open its streams in time");
            return;
        }
    }
    let sid = |t: &str| streams.get(t).copied();
    let (stdin_id, resize_id, error_id) = (sid("stdin"), sid("resize"), sid("error"));
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let (in_tx, in_rx) = mpsc::channel(16);
    // Output to stream ids.
    let outs: HashMap<u8, u32> = [(STDOUT, sid("stdout")), (STDERR, sid("stderr"))]
        .into_iter()
        .filter_map(|(c, s)| s.map(|s| (c, s)))
        .collect();
    let fwd_tx = tx.clone();
    let forward = tokio::spawn(async move {
        while let Some((c, data)) = out_rx.recv().await {
            if let Some(s) = outs.get(&c) {
                if fwd_tx.send(Out::Data(*s, data, false)).await.is_err() {
                    return;
                }
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut resize = Vec::new();
        while let Some(f) = frames.recv().await {
            let mut inputs = Vec::new();
            let mut used = None;
            if let Frame::Data { stream, data, .. } = &f {
                used = Some((*stream, data.len()));
            }
            match f {
                Frame::Data {
                    stream,
                    flags,
                    data,
                } if Some(stream) == stdin_id => {
                    if !data.is_empty() {
                        inputs.push(Input::Stdin(data));
                    }
                    if flags & FLAG_FIN != 0 {
                        inputs.push(Input::CloseStdin);
                    }
                }
                Frame::Data { stream, data, .. } if Some(stream) == resize_id => {
                    // A stream of JSON objects (Go's json.Encoder: one per line).
                    resize.extend_from_slice(&data);
                    let mut it = serde_json::Deserializer::from_slice(&resize)
                        .into_iter::<serde_json::Value>();
                    let mut used = 0;
                    while let Some(Ok(v)) = it.next() {
                        used = it.byte_offset();
                        if let Some(i) = session::parse_resize(v.to_string().as_bytes()) {
                            inputs.push(i);
                        }
                    }
                    resize.drain(..used);
                }
                Frame::Control { ty: GOAWAY, .. } => break,
                _ => {}
            }
            for i in inputs {
                if in_tx.send(i).await.is_err() {
                    return;
                }
            }
            if let Some((stream, n)) = used {
                peer.consumed(stream, n);
            }
        }
    });
    let outcome = match pending {
        Pending::Exec(req) => {
            let span = tracing::info_span!("cri_exec", namespace = NAMESPACE, container_id = %req.container_id, protocol = "spdy");
            tracing::Instrument::instrument(session::exec(&cri, req, in_rx, out_tx), span).await
        }
        Pending::Attach(req) => {
            let span = tracing::info_span!("cri_attach", namespace = NAMESPACE, container_id = %req.container_id, protocol = "spdy");
            tracing::Instrument::instrument(super::attach::attach(&cri, req, in_rx, out_tx), span)
                .await
        }
        Pending::PortForward(_) => return,
    };
    reader.abort();
    let _ = forward.await;
    if let Some(e) = error_id {
        let _ = tx
            .send(Out::Data(e, session::status_json(&outcome), false))
            .await;
    }
    for s in streams.values() {
        let _ = tx.send(Out::Data(*s, Vec::new(), true)).await;
    }
}

/// Port-forward: each (error, data) pair of streams with one `requestid` is one connection to its `port`.
async fn port_forward(cri: Cri, pod: String, mut frames: mpsc::Receiver<Frame>, peer: Peer) {
    let tx = peer.tx.clone();
    let mut z = Inflater::new();
    // requestid -> (error stream, data stream)
    let mut pairs: HashMap<String, (Option<u32>, Option<u32>, u16)> = HashMap::new();
    // data stream id -> input of its connection
    let mut conns: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    while let Some(f) = frames.recv().await {
        match f {
            Frame::Control {
                ty: SYN_STREAM,
                data,
            } => {
                let o = match syn_stream(&mut z, &data) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::info!(namespace = NAMESPACE, container_id = %pod, error = %e, "SPDY stream");
                        return;
                    }
                };
                let _ = tx.send(Out::Reply(o.id)).await;
                let h = |k: &str| o.headers.get(k).cloned().unwrap_or_default();
                let port: u16 = h("port").parse().unwrap_or(0);
                let entry = pairs.entry(h("requestid")).or_insert((None, None, port));
                match h("streamtype").as_str() {
                    "error" => entry.0 = Some(o.id),
                    "data" => entry.1 = Some(o.id),
                    _ => continue,
                }
                if let (Some(err), Some(data), port) = *entry {
                    pairs.remove(&h("requestid"));
                    let (in_tx, in_rx) = mpsc::channel(16);
                    conns.insert(data, in_tx);
                    tokio::spawn(forward_one(
                        cri.clone(),
                        pod.clone(),
                        port,
                        err,
                        data,
                        in_rx,
                        tx.clone(),
                    ));
                }
            }
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                let n = data.len();
                if let Some(c) = conns.get(&stream) {
                    if !data.is_empty() {
                        let _ = c.send(data).await;
                    }
                }
                peer.consumed(stream, n);
                if flags & FLAG_FIN != 0 {
                    conns.remove(&stream);
                }
            }
            Frame::Control { ty: GOAWAY, .. } => break,
            Frame::Control { .. } => {}
        }
    }
}

/// One forwarded connection: splice it to its data stream, report a failure on its error stream.
async fn forward_one(
    cri: Cri,
    pod: String,
    port: u16,
    err: u32,
    data: u32,
    input: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Out>,
) {
    if port == 0 {
        let _ = tx
            .send(Out::Data(
                err,
                b"a port-forward stream needs a port header".to_vec(),
                true,
            ))
            .await;
        return;
    }
    match portforward::connect(&cri, &pod, port).await {
        Ok(stream) => {
            let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
            let fwd = tx.clone();
            let copy = tokio::spawn(async move {
                while let Some((_, d)) = out_rx.recv().await {
                    if fwd.send(Out::Data(data, d, false)).await.is_err() {
                        return;
                    }
                }
            });
            portforward::splice(stream, input, out_tx, 0).await;
            let _ = copy.await;
        }
        Err(e) => {
            let _ = tx.send(Out::Data(err, e.into_bytes(), false)).await;
        }
    }
    let _ = tx.send(Out::Data(data, Vec::new(), true)).await;
    let _ = tx.send(Out::Data(err, Vec::new(), true)).await;
}
