//! One client interface over both remotecommand transports (WebSocket and SPDY/3.1), so a streaming test
//! is written once and run over each. Channels are remotecommand's numbers on both: exec and attach 0 stdin,
//! 1 stdout, 2 stderr, 3 error (the JSON status), 4 resize; port-forward 0 data, 1 error.

use std::collections::HashMap;

use crate::spdy_client::{Event, SpdyClient};
use crate::stream_client::{Collected, WsClient};

/// The streams an exec or attach asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A remotecommand client.
#[allow(async_fn_in_trait)]
pub trait Remote: Sized {
    /// The transport, for messages.
    const NAME: &'static str;

    /// Upgrade an exec or attach URL and open `s`.
    async fn channels(url: &str, s: Streams) -> Self;

    /// Upgrade a port-forward URL for one connection to `port`.
    async fn forward(url: &str, port: u16) -> Self;

    /// Send `data` on `channel`.
    async fn send(&mut self, channel: u8, data: &[u8]);

    /// Close our side of `channel` (stdin, or a forward's data).
    async fn close(&mut self, channel: u8);

    /// The next (channel, bytes); None once the server closed.
    async fn recv(&mut self) -> Option<(u8, Vec<u8>)>;

    /// A terminal size, as kubectl sends it.
    async fn resize(&mut self, width: u16, height: u16) {
        let msg = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        self.send(4, msg.as_bytes()).await;
    }

    /// Read until the server closes: what came on each channel, joined.
    async fn drain(&mut self) -> Collected {
        let mut c = Collected::default();
        while let Some((ch, data)) = self.recv().await {
            c.channels.entry(ch).or_default().extend_from_slice(&data);
        }
        c
    }

    /// Read until `channel` has carried `needle` (keeping everything read); panics if the stream closes.
    async fn read_until(&mut self, c: &mut Collected, channel: u8, needle: &str) {
        while !c.text(channel).contains(needle) {
            let (ch, data) = self.recv().await.unwrap_or_else(|| {
                panic!(
                    "{}: closed before {needle:?} on channel {channel}: {c:?}",
                    Self::NAME
                )
            });
            c.channels.entry(ch).or_default().extend_from_slice(&data);
        }
    }

    /// Read until `channel` has carried `n` bytes in all.
    async fn read_bytes(&mut self, c: &mut Collected, channel: u8, n: usize) {
        while c.channels.get(&channel).map_or(0, Vec::len) < n {
            let (ch, data) = self.recv().await.unwrap_or_else(|| {
                panic!(
                    "{}: closed before {n} bytes on channel {channel}",
                    Self::NAME
                )
            });
            c.channels.entry(ch).or_default().extend_from_slice(&data);
        }
    }
}

/// WebSocket, `v5.channel.k8s.io` (its close message closes stdin) or `portforward.k8s.io`.
pub struct Ws(pub WsClient);

impl Remote for Ws {
    const NAME: &'static str = "websocket";

    async fn channels(url: &str, _s: Streams) -> Self {
        Ws(WsClient::connect(url, "", &["v5.channel.k8s.io"])
            .await
            .expect("websocket upgrade"))
    }

    async fn forward(url: &str, port: u16) -> Self {
        let mut ws = WsClient::connect(url, &format!("?port={port}"), &["portforward.k8s.io"])
            .await
            .expect("websocket upgrade");
        // Each channel of the pair opens with the port, little-endian.
        for _ in 0..2 {
            let (ch, data) = ws.recv().await.expect("port prefix");
            assert_eq!(data, port.to_le_bytes(), "channel {ch}");
        }
        Ws(ws)
    }

    async fn send(&mut self, channel: u8, data: &[u8]) {
        // The server takes messages up to 1 MiB.
        for chunk in data.chunks(256 << 10) {
            self.0.send(channel, chunk).await;
        }
    }

    async fn close(&mut self, channel: u8) {
        self.0.send(255, &[channel]).await;
    }

    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        self.0.recv().await
    }
}

/// SPDY/3.1 (`v4.channel.k8s.io`, `portforward.k8s.io`): one stream per channel; keeping SPDY/3.1's windows
/// when `FLOW`, else none at all (as Kubernetes' spdystream, kubectl's and the kubelet's library).
pub struct SpdyWith<const FLOW: bool> {
    pub client: SpdyClient,
    /// channel -> stream id
    streams: HashMap<u8, u32>,
}

/// A SPDY client that keeps windows strictly.
pub type Spdy = SpdyWith<true>;
/// A SPDY client without flow control, as kubectl's.
pub type SpdyLegacy = SpdyWith<false>;

impl<const FLOW: bool> SpdyWith<FLOW> {
    fn channel_of(&self, stream: u32) -> Option<u8> {
        self.streams
            .iter()
            .find(|(_, s)| **s == stream)
            .map(|(c, _)| *c)
    }
}

impl<const FLOW: bool> Remote for SpdyWith<FLOW> {
    const NAME: &'static str = if FLOW {
        "spdy"
    } else {
        "spdy-without-flow-control"
    };

    async fn channels(url: &str, s: Streams) -> Self {
        let mut client = SpdyClient::connect_with(url, "", &["v4.channel.k8s.io"], FLOW)
            .await
            .expect("spdy upgrade");
        let mut streams = HashMap::new();
        for (ch, ty, on) in [
            (3u8, "error", true),
            (0, "stdin", s.stdin),
            (1, "stdout", s.stdout),
            (2, "stderr", s.stderr && !s.tty),
            (4, "resize", s.tty),
        ] {
            if on {
                streams.insert(ch, client.open(&[("streamType", ty)]).await);
            }
        }
        SpdyWith { client, streams }
    }

    async fn forward(url: &str, port: u16) -> Self {
        let mut client = SpdyClient::connect_with(url, "", &["portforward.k8s.io"], FLOW)
            .await
            .expect("spdy upgrade");
        let p = port.to_string();
        let err = client
            .open(&[("streamType", "error"), ("port", &p), ("requestID", "0")])
            .await;
        let data = client
            .open(&[("streamType", "data"), ("port", &p), ("requestID", "0")])
            .await;
        SpdyWith {
            client,
            streams: HashMap::from([(0, data), (1, err)]),
        }
    }

    async fn send(&mut self, channel: u8, data: &[u8]) {
        let s = *self
            .streams
            .get(&channel)
            .unwrap_or_else(|| panic!("no stream for channel {channel}"));
        for chunk in data.chunks(32 << 10) {
            self.client.send(s, chunk, false).await;
        }
    }

    async fn close(&mut self, channel: u8) {
        let s = *self
            .streams
            .get(&channel)
            .unwrap_or_else(|| panic!("no stream for channel {channel}"));
        self.client.send(s, &[], true).await;
    }

    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            match self.client.recv().await? {
                Event::Reply(_) => {}
                Event::Data { stream, data, .. } => {
                    if data.is_empty() {
                        continue;
                    }
                    let ch = self
                        .channel_of(stream)
                        .unwrap_or_else(|| panic!("data on unknown stream {stream}"));
                    return Some((ch, data));
                }
            }
        }
    }
}
