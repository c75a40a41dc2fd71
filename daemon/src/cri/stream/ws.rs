//! The WebSocket side of the streaming server (RFC 6455, written here: the framing is small): the
//! handshake, frames, and Kubernetes' channel protocols over them. Every binary message starts with its
//! channel byte. Exec and attach: 0 stdin, 1 stdout, 2 stderr, 3 error (a JSON metav1.Status), 4 resize
//! (`{"Width","Height"}`); `v5.channel.k8s.io` adds 255, the client's "I closed channel N". Port-forward: a
//! pair of channels per port (2i data, 2i+1 error), each opened by the server with the port, 2 bytes
//! little-endian.
//!
//! This module must never act on a frame of a connection it did not upgrade, nor hold more than
//! [`MAX_MESSAGE`] bytes of one message.

use std::collections::HashMap;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::http::{reply, switching_protocols};
use super::session::{self, Input};
use super::{portforward, Pending};
use crate::cri::{Cri, NAMESPACE};

/// Exec and attach subprotocols, best first.
const CHANNEL_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Port-forward subprotocols.
const PORTFORWARD_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];
/// The largest message a client may send (stdin chunks and resizes are small).
const MAX_MESSAGE: usize = 1 << 20;
/// RFC 6455's key suffix.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// The channel of remotecommand's error stream.
const ERROR_CHANNEL: u8 = 3;
const RESIZE_CHANNEL: u8 = 4;
const CLOSE_CHANNEL: u8 = 255;

/// `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// The first of `ours` the client offered in `Sec-WebSocket-Protocol`.
fn negotiate(headers: &HeaderMap, ours: &[&'static str]) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    ours.iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
}

/// Answer a WebSocket upgrade for `pending` and run its session on the upgraded connection.
pub fn upgrade(
    cri: Cri,
    mut req: http::Request<hyper::body::Incoming>,
    pending: Pending,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let Some(key) = headers
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
    else {
        return reply(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key is missing".into(),
        );
    };
    let ours: &[&'static str] = match pending {
        Pending::PortForward(_) => &PORTFORWARD_PROTOCOLS,
        _ => &CHANNEL_PROTOCOLS,
    };
    let Some(protocol) = negotiate(headers, ours) else {
        return reply(
            StatusCode::BAD_REQUEST,
            format!(
                "no supported subprotocol in Sec-WebSocket-Protocol (berthd speaks {})",
                ours.join(", ")
            ),
        );
    };
    let query_ports: Vec<u16> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("port="))
        .filter_map(|p| p.parse().ok())
        .collect();
    let accept = accept_key(key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => run(cri, TokioIo::new(up), protocol, pending, query_ports).await,
            Err(e) => {
                tracing::debug!(namespace = NAMESPACE, error = %e, "websocket upgrade failed")
            }
        }
    });
    let mut r = switching_protocols("websocket");
    let h = r.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(protocol),
    );
    r
}

/// A message from the client.
enum Message {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

/// Read one message (joining fragments; answering nothing itself); None at EOF.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Message>> {
    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 2];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let fin = head[0] & 0x80 != 0;
        let op = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(r.read_u16().await?),
            127 => r.read_u64().await?,
            n => u64::from(n),
        };
        if len as usize > MAX_MESSAGE || data.len() + len as usize > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("websocket message over {MAX_MESSAGE} bytes"),
            ));
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match op {
            OP_CLOSE => return Ok(Some(Message::Close)),
            OP_PING => return Ok(Some(Message::Ping(payload))),
            OP_PONG => continue,
            OP_TEXT | OP_BINARY | OP_CONT => {
                data.extend_from_slice(&payload);
                if fin {
                    return Ok(Some(Message::Data(data)));
                }
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown websocket opcode {op}"),
                ))
            }
        }
    }
}

/// Write one unfragmented, unmasked frame (a server never masks).
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    op: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(10);
    head.push(0x80 | op);
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xffff => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// A frame to write: (opcode, payload).
type Frame = (u8, Vec<u8>);

/// Write what the session and the reader hand over until the session's output is closed; then give the
/// write half back for the final frames.
async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut out: mpsc::Receiver<(u8, Vec<u8>)>,
    mut control: mpsc::Receiver<Frame>,
) -> Option<W> {
    loop {
        tokio::select! {
            o = out.recv() => match o {
                Some((channel, data)) => {
                    let mut msg = Vec::with_capacity(data.len() + 1);
                    msg.push(channel);
                    msg.extend_from_slice(&data);
                    write_frame(&mut w, OP_BINARY, &msg).await.ok()?;
                }
                None => return Some(w),
            },
            Some((op, data)) = control.recv() => write_frame(&mut w, op, &data).await.ok()?,
        }
    }
}

async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(
    cri: Cri,
    io: S,
    protocol: &'static str,
    pending: Pending,
    query_ports: Vec<u16>,
) {
    let (rd, wr) = tokio::io::split(io);
    match pending {
        Pending::PortForward(req) => {
            let ports = if query_ports.is_empty() {
                req.port
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect()
            } else {
                query_ports
            };
            let span = tracing::info_span!("cri_port_forward", namespace = NAMESPACE, container_id = %req.pod_sandbox_id);
            tracing::Instrument::instrument(
                port_forward(cri, req.pod_sandbox_id, ports, rd, wr),
                span,
            )
            .await
        }
        p => channels(cri, protocol, p, rd, wr).await,
    }
}

/// Exec or attach over the channel protocol.
async fn channels<R, W>(cri: Cri, protocol: &'static str, pending: Pending, mut rd: R, wr: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(16);
    let (ctl_tx, ctl_rx) = mpsc::channel(4);
    let (in_tx, in_rx) = mpsc::channel(16);
    let writer = tokio::spawn(writer(wr, out_rx, ctl_rx));
    let v5 = protocol.starts_with("v5.");
    let reader = tokio::spawn(async move {
        while let Ok(Some(m)) = read_message(&mut rd).await {
            let input = match m {
                Message::Close => break,
                Message::Ping(p) => {
                    let _ = ctl_tx.send((OP_PONG, p)).await;
                    continue;
                }
                Message::Data(d) => match d.split_first() {
                    Some((0, data)) => Some(Input::Stdin(data.to_vec())),
                    Some((&RESIZE_CHANNEL, data)) => session::parse_resize(data),
                    Some((&CLOSE_CHANNEL, [0, ..])) if v5 => Some(Input::CloseStdin),
                    _ => None,
                },
            };
            if let Some(i) = input {
                if in_tx.send(i).await.is_err() {
                    break;
                }
            }
        }
    });
    let outcome = match pending {
        Pending::Exec(req) => {
            let span = tracing::info_span!("cri_exec", namespace = NAMESPACE, container_id = %req.container_id, protocol);
            tracing::Instrument::instrument(session::exec(&cri, req, in_rx, out_tx), span).await
        }
        Pending::Attach(req) => {
            let span = tracing::info_span!("cri_attach", namespace = NAMESPACE, container_id = %req.container_id, protocol);
            tracing::Instrument::instrument(super::attach::attach(&cri, req, in_rx, out_tx), span)
                .await
        }
        Pending::PortForward(_) => return,
    };
    reader.abort();
    if let Ok(Some(mut w)) = writer.await {
        let mut status = vec![ERROR_CHANNEL];
        status.extend_from_slice(&session::status_json(&outcome));
        let _ = write_frame(&mut w, OP_BINARY, &status).await;
        let _ = write_frame(&mut w, OP_CLOSE, &1000u16.to_be_bytes()).await;
        let _ = w.shutdown().await;
    }
}

/// Port-forward: one connection into the pod per port, each on its channel pair.
async fn port_forward<R, W>(cri: Cri, pod: String, ports: Vec<u16>, mut rd: R, wr: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(16);
    let (ctl_tx, ctl_rx) = mpsc::channel(4);
    let writer = tokio::spawn(writer(wr, out_rx, ctl_rx));
    // Each channel opens with its port.
    let mut conns: HashMap<u8, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, err) = ((2 * i) as u8, (2 * i + 1) as u8);
        for c in [data, err] {
            let _ = out_tx.send((c, port.to_le_bytes().to_vec())).await;
        }
        let (tx, rx) = mpsc::channel(16);
        conns.insert(data, tx);
        let out = out_tx.clone();
        let (cri, pod, port) = (cri.clone(), pod.clone(), *port);
        tasks.push(tokio::spawn(async move {
            match portforward::connect(&cri, &pod, port).await {
                Ok(stream) => portforward::splice(stream, rx, out, data).await,
                Err(e) => {
                    let _ = out.send((err, e.into_bytes())).await;
                }
            }
        }));
    }
    drop(out_tx);
    let reader = tokio::spawn(async move {
        while let Ok(Some(m)) = read_message(&mut rd).await {
            match m {
                Message::Close => break,
                Message::Ping(p) => {
                    let _ = ctl_tx.send((OP_PONG, p)).await;
                }
                Message::Data(d) => {
                    if let Some((c, data)) = d.split_first() {
                        if let Some(tx) = conns.get(c) {
                            if !data.is_empty() {
                                let _ = tx.send(data.to_vec()).await;
                            }
                        }
                    }
                }
            }
        }
    });
    // The session ends when every connection ended (its output closed) or the client left.
    let mut reader = reader;
    let writer_done = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::select! {
        _ = writer_done => {}
        _ = &mut reader => {}
    }
    reader.abort();
    if let Ok(Ok(Some(mut w))) =
        tokio::time::timeout(std::time::Duration::from_secs(1), writer).await
    {
        let _ = write_frame(&mut w, OP_CLOSE, &1000u16.to_be_bytes()).await;
        let _ = w.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn fragments_join_and_masks_undo() {
        // RFC 6455 section 5.7: "Hel" + "lo" unmasked in two fragments, then "Hello" masked.
        let wire: &[u8] = &[
            0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f, 0x81, 0x85, 0x37, 0xfa, 0x21,
            0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut r = wire;
        for _ in 0..2 {
            match read_message(&mut r).await.expect("read") {
                Some(Message::Data(d)) => assert_eq!(d, b"Hello"),
                _ => panic!("not a data message"),
            }
        }
        assert!(read_message(&mut r).await.expect("read").is_none());
    }
}
