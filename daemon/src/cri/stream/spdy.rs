//! The SPDY/3.1 side of the streaming server (kubectl's and the kubelet's default), written from the
//! SPDY/3 draft: frames (control: version 3, type, flags, 24-bit length; data: 31-bit stream id, flags,
//! length), header blocks zlib-compressed with the draft's dictionary in one context per direction, and
//! Kubernetes' use of it: the client opens one stream per channel, named by its `streamtype` header (error,
//! stdin, stdout, stderr, resize; port-forward: error and data, with `port` and `requestid`), the server
//! replies to each and writes on it; the status goes on the error stream, FIN closes a stream.
//!
//! Flow control is not enforced in either direction (Kubernetes' Go peer does not either).
//! This module must never start a session before the client opened the streams it needs, nor hold more than
//! [`MAX_FRAME`] bytes of one frame.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use flate2::{
    Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status as ZStatus,
};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::session::{self, Input, STDERR, STDOUT};
use super::{portforward, Pending};
use crate::cri::{Cri, NAMESPACE};

/// Exec and attach protocol versions (all carry a JSON status on the error stream).
const CHANNEL_PROTOCOLS: [&str; 1] = ["v4.channel.k8s.io"];
/// Port-forward's protocol.
const PORTFORWARD_PROTOCOLS: [&str; 1] = ["portforward.k8s.io"];
/// The protocol header of Kubernetes' SPDY upgrade.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The largest frame accepted.
const MAX_FRAME: usize = 1 << 20;
/// How long a client may take to open its streams.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;

/// SPDY/3's header dictionary (draft 3, section 2.6.10.1): length-prefixed header names and values, then
/// status lines, dates and common values.
fn dictionary() -> Vec<u8> {
    const WORDS: [&str; 66] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
        "",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417\
        502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request\
        401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented\
        503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, \
        Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,\
        application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch\
        charset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut d = Vec::with_capacity(1423);
    for w in WORDS.iter().filter(|w| !w.is_empty()) {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// The inflating side of a connection's header compression.
struct Inflater {
    z: Decompress,
    dict: Vec<u8>,
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            z: Decompress::new(true),
            dict: dictionary(),
        }
    }

    /// Inflate one header block and parse its name/value pairs (names lowercased by SPDY's rules).
    fn headers(&mut self, block: &[u8]) -> Result<HashMap<String, String>, String> {
        let mut out = Vec::with_capacity(block.len() * 4 + 256);
        let mut input = block;
        loop {
            let before = self.z.total_in();
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity());
            }
            let r = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.z.total_in() - before) as usize..];
            match r {
                Ok(ZStatus::Ok | ZStatus::BufError) if input.is_empty() => break,
                Ok(ZStatus::StreamEnd) => break,
                Ok(_) => {
                    if out.len() > MAX_FRAME {
                        return Err("header block too large".into());
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&self.dict)
                        .map_err(|e| format!("header dictionary: {e}"))?;
                }
                Err(e) => return Err(format!("inflating a header block: {e}")),
            }
        }
        parse_block(&out)
    }
}

fn parse_block(b: &[u8]) -> Result<HashMap<String, String>, String> {
    let bad = || "malformed header block".to_string();
    let u32_at = |b: &[u8], at: usize| -> Result<usize, String> {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or_else(bad)
    };
    let n = u32_at(b, 0)?;
    let mut at = 4;
    let mut h = HashMap::new();
    for _ in 0..n {
        let kl = u32_at(b, at)?;
        let k = b.get(at + 4..at + 4 + kl).ok_or_else(bad)?;
        at += 4 + kl;
        let vl = u32_at(b, at)?;
        let v = b.get(at + 4..at + 4 + vl).ok_or_else(bad)?;
        at += 4 + vl;
        h.insert(
            String::from_utf8_lossy(k).to_ascii_lowercase(),
            String::from_utf8_lossy(v).into_owned(),
        );
    }
    Ok(h)
}

/// The deflating side.
struct Deflater {
    z: Compress,
}

impl Deflater {
    fn new() -> Result<Deflater, String> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&dictionary())
            .map_err(|e| format!("header dictionary: {e}"))?;
        Ok(Deflater { z })
    }

    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            let before = self.z.total_in();
            let _ = self.z.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.z.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(64);
        }
    }
}

enum Frame {
    Control {
        ty: u16,
        data: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("SPDY frame of {len} bytes"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    Ok(Some(if word & 0x8000_0000 != 0 {
        Frame::Control {
            ty: (word & 0xffff) as u16,
            data,
        }
    } else {
        Frame::Data {
            stream: word,
            flags,
            data,
        }
    }))
}

/// What the writer task sends.
enum Out {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Ping(Vec<u8>),
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    z: &mut Deflater,
    o: Out,
) -> std::io::Result<()> {
    let mut f = Vec::new();
    let control = |f: &mut Vec<u8>, ty: u16, flags: u8, body: &[u8]| {
        f.extend_from_slice(&(0x8003_0000u32 | u32::from(ty)).to_be_bytes());
        f.extend_from_slice(&(u32::from(flags) << 24 | body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
    };
    match o {
        Out::Reply(id) => {
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&z.block(&[]));
            control(&mut f, SYN_REPLY, 0, &body);
        }
        Out::Ping(p) => control(&mut f, PING, 0, &p),
        Out::Data(id, data, fin) => {
            f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            let flags = if fin { FLAG_FIN } else { 0 };
            f.extend_from_slice(&(u32::from(flags) << 24 | data.len() as u32).to_be_bytes());
            f.extend_from_slice(&data);
        }
    }
    w.write_all(&f).await?;
    w.flush().await
}

/// The writer task: frames in order from `rx`, until every sender is gone.
async fn writer<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    let Ok(mut z) = Deflater::new() else { return };
    while let Some(o) = rx.recv().await {
        if write_frame(&mut w, &mut z, o).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}

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
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let h = r.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("SPDY/3.1"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    h.insert(PROTOCOL_HEADER, http::HeaderValue::from_static(protocol));
    r
}

/// A stream the client opened: its id and headers.
struct Opened {
    id: u32,
    headers: HashMap<String, String>,
}

/// Parse a SYN_STREAM's body.
fn syn_stream(z: &mut Inflater, data: &[u8]) -> Result<Opened, String> {
    if data.len() < 10 {
        return Err("short SYN_STREAM".into());
    }
    let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & 0x7fff_ffff;
    Ok(Opened {
        id,
        headers: z.headers(&data[10..])?,
    })
}

async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(cri: Cri, io: S, pending: Pending) {
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(32);
    let writer = tokio::spawn(writer(wr, rx));
    match pending {
        Pending::PortForward(req) => {
            let span = tracing::info_span!("cri_port_forward", namespace = NAMESPACE, container_id = %req.pod_sandbox_id);
            tracing::Instrument::instrument(port_forward(cri, req.pod_sandbox_id, rd, tx), span)
                .await
        }
        p => channels(cri, p, rd, tx).await,
    }
    let _ = writer.await;
}

/// Exec or attach: wait for the client's streams, then run the session over them.
async fn channels<R>(cri: Cri, pending: Pending, mut rd: R, tx: mpsc::Sender<Out>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
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
            match read_frame(&mut rd).await {
                Ok(Some(Frame::Control {
                    ty: SYN_STREAM,
                    data,
                    ..
                })) => {
                    let o = syn_stream(&mut z, &data)?;
                    let _ = tx.send(Out::Reply(o.id)).await;
                    let ty = o.headers.get("streamtype").cloned().unwrap_or_default();
                    streams.insert(ty, o.id);
                }
                Ok(Some(Frame::Control { ty: PING, data, .. })) => {
                    let _ = tx.send(Out::Ping(data)).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err("the client left before opening its streams".to_string())
                }
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
    let ping_tx = tx.clone();
    let reader = tokio::spawn(async move {
        let mut resize = Vec::new();
        while let Ok(Some(f)) = read_frame(&mut rd).await {
            let mut inputs = Vec::new();
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
                Frame::Control { ty: PING, data, .. } => {
                    let _ = ping_tx.send(Out::Ping(data)).await;
                }
                Frame::Control { ty: GOAWAY, .. } => break,
                _ => {}
            }
            for i in inputs {
                if in_tx.send(i).await.is_err() {
                    return;
                }
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
            tracing::Instrument::instrument(session::attach(&cri, req, in_rx, out_tx), span).await
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
async fn port_forward<R>(cri: Cri, pod: String, mut rd: R, tx: mpsc::Sender<Out>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut z = Inflater::new();
    // requestid -> (error stream, data stream)
    let mut pairs: HashMap<String, (Option<u32>, Option<u32>, u16)> = HashMap::new();
    // data stream id -> input of its connection
    let mut conns: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    while let Ok(Some(f)) = read_frame(&mut rd).await {
        match f {
            Frame::Control {
                ty: SYN_STREAM,
                data,
                ..
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
                if let Some(c) = conns.get(&stream) {
                    if !data.is_empty() {
                        let _ = c.send(data).await;
                    }
                }
                if flags & FLAG_FIN != 0 {
                    conns.remove(&stream);
                }
            }
            Frame::Control { ty: PING, data, .. } => {
                let _ = tx.send(Out::Ping(data)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy_3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_across_blocks() {
        let mut tx = Deflater::new().expect("deflater");
        let mut rx = Inflater::new();
        for i in 0..3 {
            let port = format!("80{i}");
            let block = tx.block(&[("streamtype", "data"), ("port", &port)]);
            let h = rx.headers(&block).expect("headers");
            assert_eq!(h["streamtype"], "data");
            assert_eq!(h["port"], port);
        }
    }
}
