//! A minimal client of the CRI streaming server, for the tests (written apart from berthd's server code, from
//! RFC 6455 and Kubernetes' remotecommand conventions): WebSocket handshake with a subprotocol, masked frames
//! out, channel-tagged messages in.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a test waits for one message before calling the server stuck.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP answer to an upgrade that was refused.
#[derive(Debug)]
pub struct Refused {
    /// Its status code.
    pub status: u16,
    /// Its body (as far as it came).
    pub body: String,
}

/// Send an upgrade request for `url` + `query` with `headers` (CRLF-terminated lines); on 101, the
/// connection and the value of the response header `protocol_header`.
pub async fn handshake(
    url: &str,
    query: &str,
    headers: &str,
    protocol_header: &str,
) -> Result<(BufReader<TcpStream>, String), Refused> {
    let (host, path) = split_url(url);
    let sock = TcpStream::connect(&host)
        .await
        .expect("connect to the streaming server");
    let mut io = BufReader::new(sock);
    let req = format!("GET {path}{query} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
    io.get_mut()
        .write_all(req.as_bytes())
        .await
        .expect("send the upgrade");
    let mut status_line = String::new();
    io.read_line(&mut status_line)
        .await
        .expect("read the status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut protocol = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        io.read_line(&mut line).await.expect("read a header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == protocol_header {
                protocol = v.trim().to_string();
            } else if k == "content-length" {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    if status != 101 {
        let mut body = vec![0u8; length];
        let _ = io.read_exact(&mut body).await;
        return Err(Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok((io, protocol))
}

/// An open WebSocket stream.
pub struct WsClient {
    io: BufReader<TcpStream>,
    /// The subprotocol the server chose.
    pub protocol: String,
    mask_seed: u32,
}

/// `http://host:port/path` → (host:port, /path).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (host.to_string(), path.to_string())
}

impl WsClient {
    /// Upgrade `url` (plus `query`, e.g. `?port=80`) offering `protocols`.
    pub async fn connect(url: &str, query: &str, protocols: &[&str]) -> Result<WsClient, Refused> {
        let mut nonce = [b'-'; 16];
        for (n, b) in nonce.iter_mut().zip(crate::unique_id("k").bytes()) {
            *n = b;
        }
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let headers = format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {}\r\n",
            protocols.join(", ")
        );
        let (io, protocol) = handshake(url, query, &headers, "sec-websocket-protocol").await?;
        Ok(WsClient {
            io,
            protocol,
            mask_seed: 0x9e37_79b9,
        })
    }

    /// Send `data` on `channel` (one masked binary frame, as a client must).
    pub async fn send(&mut self, channel: u8, data: &[u8]) {
        let mut payload = vec![channel];
        payload.extend_from_slice(data);
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = self.mask_seed.to_be_bytes();
        let mut frame = vec![0x82];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.io
            .get_mut()
            .write_all(&frame)
            .await
            .expect("send a frame");
    }

    /// The next data message as (channel, bytes); None once the server closed.
    pub async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(READ_TIMEOUT, self.recv_frame())
            .await
            .expect("no message from the streaming server in 30 s")
    }

    async fn recv_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let mut head = [0u8; 2];
            self.io.read_exact(&mut head).await.ok()?;
            assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
            let len = match head[1] & 0x7f {
                126 => u64::from(self.io.read_u16().await.ok()?),
                127 => self.io.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.io.read_exact(&mut payload).await.ok()?;
            match head[0] & 0x0f {
                8 => return None,
                9 | 10 => continue,
                _ => {
                    let (c, d) = payload.split_first().expect("a message has a channel byte");
                    return Some((*c, d.to_vec()));
                }
            }
        }
    }

    /// Read until the server closes: what came on each channel, joined.
    pub async fn drain(&mut self) -> Collected {
        let mut c = Collected::default();
        while let Some((ch, data)) = self.recv().await {
            c.channels.entry(ch).or_default().extend_from_slice(&data);
        }
        c
    }

    /// Read until `channel` has carried `needle` (keeping everything read); panics if the stream closes.
    pub async fn read_until(&mut self, c: &mut Collected, channel: u8, needle: &str) {
        while !c.text(channel).contains(needle) {
            let (ch, data) = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed before {needle:?} on channel {channel}: {c:?}"));
            c.channels.entry(ch).or_default().extend_from_slice(&data);
        }
    }
}

/// Messages received, per channel.
#[derive(Debug, Default)]
pub struct Collected {
    /// Bytes per channel.
    pub channels: std::collections::BTreeMap<u8, Vec<u8>>,
}

impl Collected {
    /// A channel's bytes as text.
    pub fn text(&self, channel: u8) -> String {
        String::from_utf8_lossy(
            self.channels
                .get(&channel)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )
        .into_owned()
    }

    /// The error channel's status, parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(self.channels.get(&3).map(Vec::as_slice).unwrap_or_default())
            .unwrap_or_else(|e| panic!("error channel is not a JSON status ({e}): {self:?}"))
    }
}

/// The exit code a v4 status reports (0 for Success).
pub fn exit_code(status: &serde_json::Value) -> i64 {
    if status["status"] == "Success" {
        return 0;
    }
    status["details"]["causes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["reason"] == "ExitCode"))
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no ExitCode cause in {status}"))
}
