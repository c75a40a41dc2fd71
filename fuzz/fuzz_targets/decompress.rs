//! Layer decompression (`berth_image::unpack::compression::decoder`, the gzip and zstd streams a
//! pull and Diff.Apply unpack through) of hostile compressed bytes. Oracle: no panic and no
//! unbounded allocation; the stream is read in 64 KiB chunks and only its first 16 MiB (a bomb
//! stops there: bounding layer size is the caller's business, not the decoder's).
//! First input byte: even = gzip, odd = zstd.
#![no_main]

use std::io::Read;

use berth_image::unpack::compression::decoder;
use berth_image::Compression;
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let c = if mode & 1 == 0 {
        Compression::Gzip
    } else {
        Compression::Zstd
    };
    let _ = Compression::sniff(body);
    let Ok(mut r) = decoder(body, c, 64 * 1024) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while total < LIMIT {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                assert!(n <= buf.len());
                total += n as u64;
            }
        }
    }
});
