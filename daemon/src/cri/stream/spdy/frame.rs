//! SPDY/3.1 framing for the streaming server, from the SPDY/3 draft: control frames (version 3, type, flags,
//! 24-bit length), data frames (31-bit stream id, flags, length), and header blocks (name/value pairs)
//! zlib-compressed with the draft's dictionary, one zlib context per direction for the whole connection.
//!
//! This module must never hold more than [`MAX_FRAME`] bytes of one frame.

use std::collections::HashMap;
use std::sync::Arc;

use flate2::{
    Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status as ZStatus,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::flow::{Flow, Grant, PROBE_PING};

/// The largest frame accepted.
pub(super) const MAX_FRAME: usize = 1 << 20;

pub(super) const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
pub(super) const PING: u16 = 6;
pub(super) const GOAWAY: u16 = 7;
const WINDOW_UPDATE: u16 = 9;
pub(super) const FLAG_FIN: u8 = 1;

/// SPDY/3's header dictionary (draft 3, section 2.6.10.1): length-prefixed header names and values, then
/// status lines, dates and common values.
pub(super) fn dictionary() -> Vec<u8> {
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
pub(super) struct Inflater {
    z: Decompress,
    dict: Vec<u8>,
}

impl Inflater {
    pub(super) fn new() -> Inflater {
        Inflater {
            z: Decompress::new(true),
            dict: dictionary(),
        }
    }

    /// Inflate one header block and parse its name/value pairs (names lowercased by SPDY's rules).
    pub(super) fn headers(&mut self, block: &[u8]) -> Result<HashMap<String, String>, String> {
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

pub(super) fn parse_block(b: &[u8]) -> Result<HashMap<String, String>, String> {
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
pub(super) struct Deflater {
    z: Compress,
}

impl Deflater {
    pub(super) fn new() -> Result<Deflater, String> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&dictionary())
            .map_err(|e| format!("header dictionary: {e}"))?;
        Ok(Deflater { z })
    }

    pub(super) fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
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

pub(super) enum Frame {
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

pub(super) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
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
pub(super) enum Out {
    Reply(u32),
    /// Data on a stream, FIN if the flag is set; held back while the peer's window is spent.
    Data(u32, Vec<u8>, bool),
    Ping(Vec<u8>),
    /// We consumed this many bytes of a stream's data: a WINDOW_UPDATE for the stream and one for the session.
    Window(u32, u32),
}

pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
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
        Out::Window(id, delta) => {
            for id in [id, 0] {
                let body = [
                    (id & 0x7fff_ffff).to_be_bytes(),
                    (delta & 0x7fff_ffff).to_be_bytes(),
                ];
                control(&mut f, WINDOW_UPDATE, 0, &body.concat());
            }
        }
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

/// The writer task: frames in order from `rx`, until every sender is gone; `ctl` (window updates and pings)
/// goes first and is never held back. Data waits for the peer's window (`flow`), and is cut to fit it.
pub(super) async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    mut ctl: mpsc::UnboundedReceiver<Out>,
    flow: Arc<Flow>,
) {
    let Ok(mut z) = Deflater::new() else { return };
    loop {
        let o = tokio::select! {
            biased;
            Some(c) = ctl.recv() => c,
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        let r = match o {
            Out::Data(id, data, fin) if !data.is_empty() => {
                write_data(&mut w, &mut z, &flow, &mut ctl, id, data, fin).await
            }
            o => write_frame(&mut w, &mut z, o).await,
        };
        if r.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Send `data` on stream `id` in pieces the peer's windows allow, writing control frames while it waits.
async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    z: &mut Deflater,
    flow: &Flow,
    ctl: &mut mpsc::UnboundedReceiver<Out>,
    id: u32,
    mut data: Vec<u8>,
    fin: bool,
) -> std::io::Result<()> {
    while !data.is_empty() {
        let changed = flow.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match flow.grant(id, data.len()) {
            Grant::Send(n) => {
                let rest = data.split_off(n);
                write_frame(w, z, Out::Data(id, data, fin && rest.is_empty())).await?;
                data = rest;
            }
            Grant::Probe => {
                write_frame(w, z, Out::Ping(PROBE_PING.to_be_bytes().to_vec())).await?;
            }
            Grant::Wait => {
                tokio::select! {
                    _ = changed => {}
                    c = ctl.recv() => match c {
                        Some(c) => write_frame(w, z, c).await?,
                        // The session is over: nobody will grant more.
                        None => return Ok(()),
                    },
                }
            }
        }
    }
    Ok(())
}

/// A stream the client opened: its id and headers.
pub(super) struct Opened {
    pub(super) id: u32,
    pub(super) headers: HashMap<String, String>,
}

/// Parse a SYN_STREAM's body.
pub(super) fn syn_stream(z: &mut Inflater, data: &[u8]) -> Result<Opened, String> {
    if data.len() < 10 {
        return Err("short SYN_STREAM".into());
    }
    let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & 0x7fff_ffff;
    Ok(Opened {
        id,
        headers: z.headers(&data[10..])?,
    })
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
