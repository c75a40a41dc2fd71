//! A minimal SPDY/3.1 client for the streaming tests (apart from berthd's server code, from the SPDY/3 draft
//! and Kubernetes' remotecommand conventions): the `Upgrade: SPDY/3.1` handshake with
//! `X-Stream-Protocol-Version`, SYN_STREAM with zlib-compressed headers (the draft's dictionary), data frames
//! with FIN, and what the server sends back as events.
//!
//! Flow control as a strict SPDY/3.1 peer keeps it: the client announces its initial window in SETTINGS,
//! panics when the server sends more than the window it granted, grants more only when half of it is spent,
//! and never sends more than the server's windows (64 KiB at first, grown by its WINDOW_UPDATEs). So a server
//! that ignores windows, or that never returns any, fails the tests instead of passing them by luck.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::stream_client::{handshake, Refused};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// SPDY/3.1's default window, per stream and for the session.
const DEFAULT_WINDOW: i64 = 64 << 10;
/// The streams' receive window this client announces (smaller than the default, so SETTINGS must be honoured).
pub const CLIENT_WINDOW: i64 = 24 << 10;

/// The SPDY/3 header dictionary (draft 3, 2.6.10.1).
fn dictionary() -> Vec<u8> {
    let names = "options head post put delete trace accept accept-charset accept-encoding \
        accept-language accept-ranges age allow authorization cache-control connection content-base \
        content-encoding content-language content-length content-location content-md5 content-range \
        content-type date etag expect expires from host if-match if-modified-since if-none-match \
        if-range if-unmodified-since last-modified location max-forwards pragma proxy-authenticate \
        proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade \
        user-agent vary via warning www-authenticate method get status 200_OK version HTTP/1.1 url \
        public set-cookie keep-alive origin";
    let mut d = Vec::new();
    for n in names.split_whitespace() {
        let n = n.replace('_', " ");
        d.extend_from_slice(&(n.len() as u32).to_be_bytes());
        d.extend_from_slice(n.as_bytes());
    }
    let codes = "100 101 201 202 205 206 300 302 303 304 305 306 307 402 405 406 407 408 409 410 \
        411 412 413 414 415 416 417 502 504 505";
    d.extend(codes.split_whitespace().flat_map(|c| c.bytes()));
    for s in [
        "203 Non-Authoritative Information",
        "204 No Content",
        "301 Moved Permanently",
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "500 Internal Server Error",
        "501 Not Implemented",
        "503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
        "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
        "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    ] {
        d.extend_from_slice(s.as_bytes());
    }
    d
}

/// What the server sent.
#[derive(Debug)]
pub enum Event {
    /// SYN_REPLY for a stream of ours.
    Reply(u32),
    /// Data on a stream (`fin`: the server closed it).
    Data {
        stream: u32,
        data: Vec<u8>,
        fin: bool,
    },
}

/// An open SPDY connection.
pub struct SpdyClient {
    io: BufReader<TcpStream>,
    /// The protocol version the server chose.
    pub protocol: String,
    deflate: Compress,
    inflate: Decompress,
    dict: Vec<u8>,
    next_id: u32,
    /// Events read while a send waited for window.
    pending: VecDeque<Event>,
    /// What the server may still send: per stream, and the session's.
    recv_windows: HashMap<u32, i64>,
    recv_session: i64,
    /// What we may still send.
    send_windows: HashMap<u32, i64>,
    send_session: i64,
    /// False: behave as Kubernetes' spdystream does (SPDY/3 framing, no windows at all, PINGs answered).
    flow: bool,
}

impl SpdyClient {
    /// Upgrade `url` + `query` offering `protocols` (one `X-Stream-Protocol-Version` header each).
    pub async fn connect(
        url: &str,
        query: &str,
        protocols: &[&str],
    ) -> Result<SpdyClient, Refused> {
        Self::connect_with(url, query, protocols, true).await
    }

    /// As [`SpdyClient::connect`], keeping windows when `flow`, else none (as kubectl's spdystream).
    pub async fn connect_with(
        url: &str,
        query: &str,
        protocols: &[&str],
        flow: bool,
    ) -> Result<SpdyClient, Refused> {
        let mut headers = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n".to_string();
        for p in protocols {
            headers.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        let (io, protocol) = handshake(url, query, &headers, "x-stream-protocol-version").await?;
        let dict = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dict).expect("deflate dictionary");
        let mut c = SpdyClient {
            io,
            protocol,
            deflate,
            inflate: Decompress::new(true),
            dict,
            next_id: 1,
            pending: VecDeque::new(),
            recv_windows: HashMap::new(),
            recv_session: DEFAULT_WINDOW,
            send_windows: HashMap::new(),
            send_session: DEFAULT_WINDOW,
            flow,
        };
        if flow {
            // SETTINGS: one entry, SETTINGS_INITIAL_WINDOW_SIZE (7).
            let body = [1u32, 7, CLIENT_WINDOW as u32]
                .map(u32::to_be_bytes)
                .concat();
            c.control(4, &body).await;
        }
        Ok(c)
    }

    /// Send a control frame. A failure is ignored: the server may have closed the connection after its last
    /// frame, while we still answer (a WINDOW_UPDATE for that frame); what the test sees is the data it got.
    async fn control(&mut self, ty: u32, body: &[u8]) {
        let mut f = (0x8003_0000u32 | ty).to_be_bytes().to_vec();
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
        let _ = self.io.get_mut().write_all(&f).await;
    }

    /// Open a stream with `headers` (SYN_STREAM); its id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut block = Vec::with_capacity(raw.len() + 1024);
        self.deflate
            .compress_vec(&raw, &mut block, FlushCompress::Sync)
            .expect("deflate");
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&block);
        let mut f = 0x8003_0001u32.to_be_bytes().to_vec();
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        self.io
            .get_mut()
            .write_all(&f)
            .await
            .expect("send SYN_STREAM");
        id
    }

    /// Send `data` on `stream`, closing our side if `fin`; waits (reading what comes meanwhile) for the
    /// server's window.
    pub async fn send(&mut self, stream: u32, mut data: &[u8], fin: bool) {
        loop {
            let window = *self.send_windows.get(&stream).unwrap_or(&DEFAULT_WINDOW);
            let room = if self.flow {
                window.min(self.send_session).max(0) as usize
            } else {
                data.len()
            };
            if room == 0 && !data.is_empty() {
                let e = tokio::time::timeout(READ_TIMEOUT, self.recv_frame())
                    .await
                    .expect("the server granted no window for 30 s (no WINDOW_UPDATE)")
                    .expect("the server closed while we waited for window");
                self.pending.push_back(e);
                continue;
            }
            let n = room.min(data.len());
            let (now, rest) = data.split_at(n);
            self.send_windows.insert(stream, window - n as i64);
            self.send_session -= n as i64;
            let last = rest.is_empty();
            let mut f = stream.to_be_bytes().to_vec();
            let flags: u32 = if fin && last { 1 } else { 0 };
            f.extend_from_slice(&(flags << 24 | now.len() as u32).to_be_bytes());
            f.extend_from_slice(now);
            self.io.get_mut().write_all(&f).await.expect("send data");
            data = rest;
            if last {
                return;
            }
        }
    }

    /// The next reply or data frame; None once the server closed the connection.
    pub async fn recv(&mut self) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        tokio::time::timeout(READ_TIMEOUT, self.recv_frame())
            .await
            .expect("no frame from the streaming server in 30 s")
    }

    /// Account for `n` bytes the server sent on `stream` (panics past the window), granting more once half
    /// of a window is spent.
    async fn received(&mut self, stream: u32, n: usize) {
        if !self.flow {
            return;
        }
        let n = n as i64;
        let w = self.recv_windows.entry(stream).or_insert(CLIENT_WINDOW);
        *w -= n;
        self.recv_session -= n;
        assert!(
            *w >= 0 && self.recv_session >= 0,
            "the server overran the window of stream {stream} (window left {w}, session {})",
            self.recv_session
        );
        if *w < CLIENT_WINDOW / 2 {
            let delta = CLIENT_WINDOW - *w;
            *w = CLIENT_WINDOW;
            self.control(9, &[stream, delta as u32].map(u32::to_be_bytes).concat())
                .await;
        }
        if self.recv_session < DEFAULT_WINDOW / 2 {
            let delta = DEFAULT_WINDOW - self.recv_session;
            self.recv_session = DEFAULT_WINDOW;
            self.control(9, &[0, delta as u32].map(u32::to_be_bytes).concat())
                .await;
        }
    }

    async fn recv_frame(&mut self) -> Option<Event> {
        loop {
            let mut head = [0u8; 8];
            self.io.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut body = vec![0u8; len];
            self.io.read_exact(&mut body).await.ok()?;
            let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if word & 0x8000_0000 == 0 {
                self.received(word, body.len()).await;
                return Some(Event::Data {
                    stream: word,
                    data: body,
                    fin: head[4] & 1 != 0,
                });
            }
            if word & 0xffff == 2 {
                let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                // Inflate the (empty) header block to keep our context in step with the server's.
                let mut out = Vec::with_capacity(4096);
                if let Err(e) =
                    self.inflate
                        .decompress_vec(&body[4..], &mut out, FlushDecompress::Sync)
                {
                    assert!(e.needs_dictionary().is_some(), "inflating a reply: {e}");
                    self.inflate
                        .set_dictionary(&self.dict)
                        .expect("inflate dictionary");
                    let done = self.inflate.total_in() as usize;
                    self.inflate
                        .decompress_vec(&body[4 + done..], &mut out, FlushDecompress::Sync)
                        .expect("inflate a reply");
                }
                return Some(Event::Reply(id));
            }
            let word_at =
                |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
            match word & 0xffff {
                // WINDOW_UPDATE: stream (0: the session) and delta.
                9 => {
                    let (id, delta) = (
                        word_at(0) & 0x7fff_ffff,
                        i64::from(word_at(4) & 0x7fff_ffff),
                    );
                    if id == 0 {
                        self.send_session += delta;
                    } else {
                        *self.send_windows.entry(id).or_insert(DEFAULT_WINDOW) += delta;
                    }
                }
                // PING from the server: answer it.
                6 => self.control(6, &body).await,
                _ => {}
            }
        }
    }

    /// Read until the server closed the connection: the data of every stream, joined.
    pub async fn drain(&mut self) -> HashMap<u32, Vec<u8>> {
        let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
        while let Some(e) = self.recv().await {
            if let Event::Data { stream, data, .. } = e {
                got.entry(stream).or_default().extend_from_slice(&data);
            }
        }
        got
    }
}
