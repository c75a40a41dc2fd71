//! Import and export: an archive streamed to berthd (`ImageImportStream`, berth sends `Data`
//! within the windows berthd grants) or from it (`ImageExportStream`, berth grants windows of
//! 64 KiB and writes what arrives).
//!
//! This module must never parse the archive itself: berthd does.

use std::path::{Path, PathBuf};

use containerd_client::types::transfer::{
    Data, ImageExportStream, ImageImportStream, ImageReference, ImageStore, UnpackConfiguration,
    WindowUpdate,
};
use prost_types::Any;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::codec::Streaming;

use super::{
    any, as_part_of, decode, host_platform, open_stream, parse_platform, stream_id, transfer, Side,
    MAX_CHUNK, WINDOW,
};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::progress::Display;

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name prefix for images named only by a tag in the archive.
    pub base_name: Option<String>,
    /// Keep the archive's index as an image of this name.
    pub index_name: String,
    /// Also create `name@digest` images.
    pub digests: bool,
    /// Platform to import (default: the host's).
    pub platform: Option<String>,
    /// Every platform.
    pub all_platforms: bool,
    /// Skip unpacking.
    pub no_unpack: bool,
    /// Snapshotter to unpack into.
    pub snapshotter: String,
}

/// Import an OCI or docker-save archive from `input` (a path, or `-` for stdin); returns the
/// names of the images created.
pub async fn import(client: &Client, input: &Path, o: &ImportOptions) -> Result<Vec<String>> {
    let reader: Box<dyn AsyncRead + Unpin + Send> = if input == Path::new("-") {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(input)
                .await
                .map_err(Error::io("open archive", input))?,
        )
    };
    let sid = stream_id("import");
    let (tx, resp) = open_stream(client, &sid)
        .await
        .map_err(as_part_of(&format!("import {}", input.display())))?;
    let sender = Side {
        task: tokio::spawn(send_stream(tx, resp, reader, input.to_path_buf())),
        must_finish: false,
    };
    let source = ImageImportStream {
        stream: sid,
        media_type: String::new(),
        force_compress: false,
    };
    let (prefix, overwrite) = match &o.base_name {
        Some(b) => (b.clone(), false),
        None => (format!("import-{}", today()), true),
    };
    let plats = if o.all_platforms {
        Vec::new()
    } else {
        match &o.platform {
            Some(p) => vec![parse_platform(p)?],
            None => vec![host_platform()],
        }
    };
    let unpacks = if o.no_unpack {
        Vec::new()
    } else {
        let ps = if plats.is_empty() {
            vec![host_platform()]
        } else {
            plats.clone()
        };
        ps.into_iter()
            .map(|p| UnpackConfiguration {
                platform: Some(p),
                snapshotter: o.snapshotter.clone(),
            })
            .collect()
    };
    let store = ImageStore {
        name: o.index_name.clone(),
        platforms: plats,
        extra_references: vec![ImageReference {
            name: prefix,
            is_prefix: true,
            allow_overwrite: overwrite,
            add_digest: o.digests,
            skip_named_digest: false,
        }],
        unpacks,
        ..Default::default()
    };
    let display = Display::new(crate::tty::stdout_is_tty());
    let display = transfer(
        client,
        &format!("import {}", input.display()),
        any(&source),
        any(&store),
        vec![sender],
        display,
    )
    .await?;
    Ok(display.saved())
}

/// Export `images` to `output` (a path, or `-` for stdout).
pub async fn export(
    client: &Client,
    output: &Path,
    images: &[String],
    platforms_flag: &[String],
    all_platforms: bool,
    skip_manifest_json: bool,
) -> Result<()> {
    let to_stdout = output == Path::new("-");
    let writer: Box<dyn AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(output)
                .await
                .map_err(Error::io("create archive", output))?,
        )
    };
    let plats = platforms_flag
        .iter()
        .map(|p| parse_platform(p))
        .collect::<Result<Vec<_>>>()?;
    let sid = stream_id("export");
    let (tx, resp) = open_stream(client, &sid)
        .await
        .map_err(as_part_of(&format!("export {}", images.join(" "))))?;
    let receiver = Side {
        task: tokio::spawn(receive_stream(tx, resp, writer, output.to_path_buf())),
        must_finish: true,
    };
    let store = ImageStore {
        extra_references: images
            .iter()
            .map(|n| ImageReference {
                name: n.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dest = ImageExportStream {
        stream: sid,
        media_type: String::new(),
        platforms: plats,
        all_platforms,
        skip_compatibility_manifest: skip_manifest_json,
        skip_non_distributable: false,
    };
    // Progress bars would mix with the archive on stdout.
    let display = Display::new(!to_stdout && crate::tty::stdout_is_tty());
    transfer(
        client,
        &format!("export {}", images.join(" ")),
        any(&store),
        any(&dest),
        vec![receiver],
        display,
    )
    .await?;
    Ok(())
}

/// Send `reader` as `Data` messages, never more than the window berthd granted.
async fn send_stream(
    tx: mpsc::Sender<Any>,
    mut resp: Streaming<Any>,
    mut reader: Box<dyn AsyncRead + Unpin + Send>,
    path: PathBuf,
) -> Result<()> {
    let mut remaining: i64 = 0;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        while remaining <= 0 {
            match resp.message().await {
                Ok(Some(a)) => {
                    if let Some(w) = decode::<WindowUpdate>(&a) {
                        remaining += i64::from(w.update);
                    }
                }
                // berthd ended the stream: it has what it wants (or gave up).
                Ok(None) | Err(_) => return Ok(()),
            }
        }
        let max = (remaining as usize).min(MAX_CHUNK);
        let n = reader
            .read(&mut buf[..max])
            .await
            .map_err(Error::io("read archive", &path))?;
        if n == 0 {
            break;
        }
        remaining -= n as i64;
        if tx
            .send(any(&Data {
                data: buf[..n].to_vec(),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    drop(tx);
    // Keep the stream open (reading window updates) until berthd closes it.
    while let Ok(Some(_)) = resp.message().await {}
    Ok(())
}

/// Write `Data` messages to `writer`, granting windows as containerd's receiver does.
async fn receive_stream(
    tx: mpsc::Sender<Any>,
    mut resp: Streaming<Any>,
    mut writer: Box<dyn AsyncWrite + Unpin + Send>,
    path: PathBuf,
) -> Result<()> {
    let mut window: i32 = 0;
    loop {
        if window < WINDOW && tx.send(any(&WindowUpdate { update: WINDOW })).await.is_ok() {
            window += WINDOW;
        }
        match resp.message().await {
            Ok(Some(a)) => {
                if let Some(d) = decode::<Data>(&a) {
                    writer
                        .write_all(&d.data)
                        .await
                        .map_err(Error::io("write archive", &path))?;
                    window -= d.data.len() as i32;
                }
            }
            Ok(None) => break,
            Err(s) => return Err(Error::rpc("receive archive")(s)),
        }
    }
    writer
        .flush()
        .await
        .map_err(Error::io("write archive", &path))?;
    Ok(())
}

/// `YYYY-MM-DD` today (UTC), for import name prefixes as ctr makes them.
fn today() -> String {
    crate::output::rfc3339(Some(&crate::output::now_ts()))
        .chars()
        .take(10)
        .collect()
}
