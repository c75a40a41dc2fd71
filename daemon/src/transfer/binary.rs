//! containerd's binary stream protocol over a Streaming stream, for archive import and export: the sender
//! sends `containerd.types.transfer.Data` messages of at most 32 KiB and never more bytes than the receiver
//! allowed with `containerd.types.transfer.WindowUpdate` messages; the receiver tops the window up to 64 KiB
//! before each receive. The sender ends the data by closing the stream.
//!
//! Both ends are bridged to blocking readers/writers through bounded channels, so an archive is streamed,
//! never held in memory. This module must never send past the window the client gave.

use std::io::{Read, Write};

use containerd_client::types::transfer::{Data, WindowUpdate};
use tokio::sync::mpsc;
use tonic::Status;

use super::streams::{decode_any, is_type, StreamHandle};

/// Largest Data message.
pub const MAX_CHUNK: usize = 32 * 1024;
/// The window a receiver keeps open.
pub const WINDOW: i32 = 2 * MAX_CHUNK as i32;

/// Chunks queued between the stream and the blocking side.
const QUEUE: usize = 64;

/// A blocking reader of the bytes a client sends on `stream`; the pump runs on the current runtime.
pub fn receive(mut stream: StreamHandle) -> ChannelReader {
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, String>>(QUEUE);
    tokio::spawn(async move {
        let mut window: i32 = 0;
        let mut total: u64 = 0;
        loop {
            if window < WINDOW {
                let upd = WindowUpdate { update: WINDOW };
                if stream.send(berth_proto::to_any(&upd)).await.is_ok() {
                    window += WINDOW;
                }
            }
            let msg = match stream.recv().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx
                        .send(Err(format!("receiving the archive: {}", e.message())))
                        .await;
                    return;
                }
            };
            if !is_type(&msg, "containerd.types.transfer.Data") {
                continue;
            }
            let data: Data = match decode_any(&msg) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(e.message().to_string())).await;
                    return;
                }
            };
            window -= data.data.len() as i32;
            total += data.data.len() as u64;
            if tx.send(Ok(data.data)).await.is_err() {
                return; // the reader gave up
            }
        }
        tracing::debug!(stream = %stream.id(), bytes = total, "received a binary stream");
        stream.close();
    });
    ChannelReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    }
}

/// The blocking end of [`receive`].
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = (self.buf.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A blocking writer whose bytes go to the client on `stream` within its window; [`SendHandle::finish`]
/// waits for the last byte to be sent and closes the stream.
pub fn send(stream: StreamHandle) -> (ChannelWriter, SendHandle) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let task = tokio::spawn(async move {
        let mut stream = stream;
        let mut remaining: i64 = 0;
        while let Some(chunk) = rx.recv().await {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                while remaining <= 0 {
                    let msg = stream.recv().await?.ok_or_else(|| {
                        Status::aborted("the client closed the export stream early")
                    })?;
                    if let Ok(w) = decode_any::<WindowUpdate>(&msg) {
                        remaining += i64::from(w.update);
                    }
                }
                let n = rest
                    .len()
                    .min(MAX_CHUNK)
                    .min(usize::try_from(remaining).unwrap_or(MAX_CHUNK));
                let data = Data {
                    data: rest[..n].to_vec(),
                };
                stream.send(berth_proto::to_any(&data)).await?;
                remaining -= n as i64;
                rest = &rest[n..];
            }
        }
        stream.close();
        Ok::<(), Status>(())
    });
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(MAX_CHUNK),
        },
        SendHandle { task },
    )
}

/// The blocking end of [`send`].
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= MAX_CHUNK * 4 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK * 4));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the export stream ended"))
    }
}

/// Waits for [`send`]'s pump.
#[derive(Debug)]
pub struct SendHandle {
    task: tokio::task::JoinHandle<Result<(), Status>>,
}

impl SendHandle {
    /// Wait until everything written was sent and the stream closed.
    pub async fn finish(self) -> Result<(), Status> {
        self.task
            .await
            .map_err(|e| Status::internal(format!("export stream task: {e}")))?
    }
}
