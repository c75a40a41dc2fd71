//! Layer compression: from media types, by magic bytes, and streaming decoders (gzip through
//! flate2/zlib-rs, zstd through ruzstd, including multi-frame streams).
//!
//! Decoders must never buffer a whole layer: they read and yield in bounded chunks.

use std::io::{self, BufRead, BufReader, Read};

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// From a layer media type (OCI, docker, non-distributable/foreign variants); `None` (the
    /// Option) when the media type does not say.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        let mt = mt.trim();
        if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") || mt.ends_with(".tar.gz") {
            Some(Compression::Gzip)
        } else if mt.ends_with("+zstd") || mt.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") || mt.ends_with("/x-tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// From the first bytes of a blob.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Peek at `reader` and say how it is compressed; the returned reader still yields every
    /// byte.
    pub fn detect<R: Read>(reader: R) -> io::Result<(Compression, BufReader<R>)> {
        let mut r = BufReader::with_capacity(256 * 1024, reader);
        let head = r.fill_buf()?;
        Ok((Compression::sniff(head), r))
    }

    /// The media type suffix containerd uses (`""`, `+gzip`, `+zstd`).
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => crate::oci::media::OCI_LAYER,
            Compression::Gzip => crate::oci::media::OCI_LAYER_GZIP,
            Compression::Zstd => crate::oci::media::OCI_LAYER_ZSTD,
        }
    }
}

/// A reader of the decompressed stream of `reader`.
pub fn decoder<'a, R: Read + 'a>(
    reader: R,
    compression: Compression,
    buffer: usize,
) -> io::Result<Box<dyn Read + 'a>> {
    let buffered = BufReader::with_capacity(buffer.max(64 * 1024), reader);
    Ok(match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(ZstdFrames {
            state: Frames::Between(buffered),
        }),
    })
}

enum Frames<R: BufRead> {
    Frame(Box<StreamingDecoder<R, FrameDecoder>>),
    Between(R),
    Done,
}

/// A zstd stream of one or more frames.
struct ZstdFrames<R: BufRead> {
    state: Frames<R>,
}

fn zstd_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.state, Frames::Done) {
                Frames::Frame(mut d) => {
                    let n = d.read(buf).map_err(zstd_err)?;
                    if n > 0 {
                        self.state = Frames::Frame(d);
                        return Ok(n);
                    }
                    self.state = Frames::Between(d.into_inner());
                }
                Frames::Between(mut r) => {
                    if r.fill_buf()?.is_empty() {
                        return Ok(0);
                    }
                    let d = StreamingDecoder::new(r).map_err(zstd_err)?;
                    self.state = Frames::Frame(Box::new(d));
                }
                Frames::Done => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    #[test]
    fn media_types_map_to_compression() {
        for (mt, want) in [
            (media::OCI_LAYER, Some(Compression::None)),
            (media::OCI_LAYER_GZIP, Some(Compression::Gzip)),
            (media::OCI_LAYER_ZSTD, Some(Compression::Zstd)),
            (media::OCI_LAYER_NONDIST_GZIP, Some(Compression::Gzip)),
            (media::OCI_LAYER_NONDIST_ZSTD, Some(Compression::Zstd)),
            (media::DOCKER_LAYER_GZIP, Some(Compression::Gzip)),
            (media::DOCKER_LAYER_FOREIGN_GZIP, Some(Compression::Gzip)),
            (media::DOCKER_LAYER, Some(Compression::None)),
            ("application/octet-stream", None),
        ] {
            assert_eq!(Compression::from_media_type(mt), want, "{mt}");
        }
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(&ZSTD_MAGIC), Compression::Zstd);
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }

    #[test]
    fn zstd_multi_frame_stream_decodes_whole() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let a = vec![1u8; 100_000];
        let b = b"second frame".to_vec();
        let mut z = compress_to_vec(&a[..], CompressionLevel::Fastest);
        z.extend(compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut out = Vec::new();
        decoder(&z[..], Compression::Zstd, 1 << 16)
            .expect("decoder")
            .read_to_end(&mut out)
            .expect("decode");
        let mut want = a;
        want.extend(b);
        assert_eq!(out, want);
    }
}
