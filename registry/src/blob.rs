//! Response bodies as streams of hyper's `Bytes`: the blob path of a pull. Each chunk is handed on as
//! hyper produced it (no copy, no extra allocation), with an idle timeout between chunks and a check that
//! the body is as long as the descriptor says.
//!
//! [`VerifiedBlob`] hashes as it goes for callers that start from offset 0. This module must never
//! buffer a whole blob; only [`read_all`] does, for manifests, with a hard size limit.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use http_body::Body as _;
use hyper::body::Incoming;
use sha2::Digest as _;
use tokio::time::{Instant, Sleep};

use crate::error::{RegistryError, Result};

/// A blob's bytes from [`BlobStream::start`] on, as they arrive.
///
/// Ends with an error if the connection stalls for longer than the client's read timeout, if it ends
/// before the descriptor's size (the caller may resume from what it has), or if more bytes arrive than
/// the descriptor's size.
pub struct BlobStream {
    body: Incoming,
    what: String,
    digest: String,
    start: u64,
    received: u64,
    /// The descriptor's size, when known (> 0).
    total: Option<u64>,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
    done: bool,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("what", &self.what)
            .field("start", &self.start)
            .field("received", &self.received)
            .field("total", &self.total)
            .finish()
    }
}

impl BlobStream {
    pub(crate) fn new(
        body: Incoming,
        what: String,
        digest: String,
        start: u64,
        total: Option<u64>,
        idle: Duration,
    ) -> BlobStream {
        BlobStream {
            body,
            what,
            digest,
            start,
            received: 0,
            total,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            armed: false,
            done: false,
        }
    }

    /// The offset of the first byte this stream yields (the offset asked for).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Bytes yielded so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The digest being fetched.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The next chunk; `None` at the (complete) end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        futures::StreamExt::next(self).await
    }

    /// Hash while streaming and check digest and size at the end. Only a stream that starts at offset 0
    /// can be verified (a resumed fetch has to be verified by whoever holds the first part).
    pub fn verified(self) -> Result<VerifiedBlob> {
        if self.start != 0 {
            return Err(RegistryError::InvalidManifest {
                what: self.what.clone(),
                reason: format!(
                    "cannot verify a stream that starts at offset {}",
                    self.start
                ),
            });
        }
        let hasher =
            Hasher::for_digest(&self.digest).ok_or_else(|| RegistryError::InvalidManifest {
                what: self.what.clone(),
                reason: format!("unsupported digest algorithm in {}", self.digest),
            })?;
        Ok(VerifiedBlob {
            inner: self,
            hasher: Some(hasher),
        })
    }

    fn fail(&mut self, e: RegistryError) -> Poll<Option<Result<Bytes>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    if data.is_empty() {
                        continue;
                    }
                    this.received += data.len() as u64;
                    this.armed = false;
                    if let Some(total) = this.total {
                        if this.start + this.received > total {
                            let (what, digest) = (this.what.clone(), this.digest.clone());
                            let actual = this.start + this.received;
                            return this.fail(RegistryError::SizeMismatch {
                                what,
                                digest,
                                expected: total,
                                actual,
                            });
                        }
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let what = format!(
                        "reading {} at byte {}",
                        this.what,
                        this.start + this.received
                    );
                    return this.fail(RegistryError::io(what, std::io::Error::other(e)));
                }
                Poll::Ready(None) => {
                    if let Some(total) = this.total {
                        let have = this.start + this.received;
                        if have < total {
                            let what = format!("{} ended early", this.what);
                            return this.fail(RegistryError::io(
                                what,
                                std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    format!("got {have} of {total} bytes; resume from {have}"),
                                ),
                            ));
                        }
                    }
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if !this.armed {
                        // Re-arm only when we are about to wait: no timer work per chunk.
                        this.sleep.as_mut().reset(Instant::now() + this.idle);
                        this.armed = true;
                    }
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        let (what, after) = (
                            format!(
                                "reading {} at byte {}",
                                this.what,
                                this.start + this.received
                            ),
                            this.idle,
                        );
                        return this.fail(RegistryError::Timeout { what, after });
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// sha256 or sha512, chosen by a digest's algorithm.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn for_digest(digest: &str) -> Option<Hasher> {
        match digest.split_once(':')?.0 {
            "sha256" => Some(Hasher::Sha256(sha2::Sha256::new())),
            "sha512" => Some(Hasher::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A [`BlobStream`] from offset 0 that yields an error instead of its end when the content does not
/// hash to the descriptor's digest.
pub struct VerifiedBlob {
    inner: BlobStream,
    hasher: Option<Hasher>,
}

impl VerifiedBlob {
    /// The next chunk; `None` at the verified end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for VerifiedBlob {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&b);
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(None) => match this.hasher.take() {
                None => Poll::Ready(None),
                Some(h) => {
                    let actual = h.finish();
                    if actual == this.inner.digest {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Err(RegistryError::DigestMismatch {
                            what: this.inner.what.clone(),
                            expected: this.inner.digest.clone(),
                            actual,
                        })))
                    }
                }
            },
            other => other,
        }
    }
}

/// Read a whole (small) body, refusing more than `limit` bytes.
pub(crate) async fn read_all(mut s: BlobStream, limit: usize) -> Result<Bytes> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = s.next_chunk().await {
        let chunk = chunk?;
        let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if have + chunk.len() > limit {
            return Err(RegistryError::SizeMismatch {
                what: s.what.clone(),
                digest: s.digest.clone(),
                expected: limit as u64,
                actual: (have + chunk.len()) as u64,
            });
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
