//! The bench image (incompressible layers, gzip as stored deflate blocks, which is what gzip makes of random
//! data), its push, a Transfer pull as containerd 2.x's ctr sends it, and the unpacker's own throughput.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use berth_image::oci::media;
use berth_image::tarw::{TarHeader, TarWriter};
use berth_image::Digest;
use berth_registry::{ClientConfig, Reference, RegistryClient, RequestOptions};
use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use containerd_client::types::transfer::{
    ImageStore, OciRegistry, RegistryResolver, UnpackConfiguration,
};
use containerd_client::types::Platform;
use prost::Message;
use prost_types::Any;
use tonic::transport::Channel;

/// What was pushed.
pub struct Pushed {
    /// Compressed bytes of all layers.
    pub bytes: u64,
    /// The layer blobs on disk (gzip).
    pub layers: Vec<PathBuf>,
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for b in data {
        crc = table[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// gzip with stored deflate blocks.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut chunks = data.chunks(65_535).peekable();
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// Build and push `layers` layers of `mib` MiB each as `bench/img:latest`.
pub async fn push(addr: &str, layers: usize, mib: usize, dir: &Path) -> anyhow::Result<Pushed> {
    std::fs::create_dir_all(dir)?;
    let client = RegistryClient::new(ClientConfig::default());
    let reference = Reference::parse(&format!("{addr}/bench/img:latest"))?;
    let repo = client.repository(
        &reference,
        &RequestOptions {
            plain_http: true,
            ..Default::default()
        },
    )?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut files = Vec::new();
    let mut total = 0u64;
    for i in 0..layers {
        let data = random_bytes(mib << 20, 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
        let mut tw = TarWriter::new(Vec::with_capacity(data.len() + 4096));
        let h = TarHeader {
            path: format!("layer{i}.bin").into_bytes(),
            kind: b'0',
            mode: 0o644,
            size: data.len() as u64,
            ..Default::default()
        };
        tw.append(&h, Some(&mut &data[..]))?;
        let tar = tw.finish()?;
        diff_ids.push(Digest::of(&tar).to_string());
        let gz = gzip_stored(&tar);
        total += gz.len() as u64;
        let path = dir.join(format!("layer{i}.tar.gz"));
        std::fs::File::create(&path)?.write_all(&gz)?;
        files.push(path);
        descs.push(repo.push_blob(media::OCI_LAYER_GZIP, gz.into()).await?);
    }
    let arch = berth_image::oci::Platform::host().architecture;
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = repo
        .push_blob(media::OCI_CONFIG, serde_json::to_vec(&config)?.into())
        .await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": config, "layers": descs,
    });
    repo.push_manifest(
        "latest",
        media::OCI_MANIFEST,
        serde_json::to_vec(&manifest)?.into(),
    )
    .await?;
    Ok(Pushed {
        bytes: total,
        layers: files,
    })
}

fn any<T: Message + prost::Name>(m: &T) -> Any {
    Any {
        type_url: T::full_name(),
        value: m.encode_to_vec(),
    }
}

fn req<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static("bench"),
    );
    r
}

/// Open a stream as containerd's client does; returns (id, sender, receiver).
async fn stream(
    channel: &Channel,
    prefix: &str,
) -> anyhow::Result<(
    String,
    tokio::sync::mpsc::Sender<Any>,
    tonic::Streaming<Any>,
)> {
    let id = format!("{prefix}-{}", std::process::id());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(any(&StreamInit { id: id.clone() })).await?;
    let mut inbound = StreamingClient::new(channel.clone())
        .stream(req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await?
        .into_inner();
    inbound.message().await?.context("no stream ack")?;
    Ok((id, tx, inbound))
}

/// A Transfer pull of `reference` with what ctr 2.x sends (host platform, all metadata, unpack).
pub async fn transfer_pull(channel: &Channel, reference: &str) -> anyhow::Result<()> {
    let (pid, _ptx, mut prx) = stream(channel, "progress").await?;
    let (cid, _ctx, _crx) = stream(channel, "creds").await?;
    let progress = tokio::spawn(async move { while let Ok(Some(_)) = prx.message().await {} });
    let host = Platform {
        os: "linux".into(),
        architecture: berth_image::oci::Platform::host().architecture,
        ..Default::default()
    };
    let src = OciRegistry {
        reference: reference.into(),
        resolver: Some(RegistryResolver {
            auth_stream: cid,
            default_scheme: "http".into(),
            ..Default::default()
        }),
    };
    let dst = ImageStore {
        name: reference.into(),
        platforms: vec![host.clone()],
        all_metadata: true,
        unpacks: vec![UnpackConfiguration {
            platform: Some(host),
            snapshotter: String::new(),
        }],
        ..Default::default()
    };
    TransferClient::new(channel.clone())
        .transfer(req(TransferRequest {
            source: Some(any(&src)),
            destination: Some(any(&dst)),
            options: Some(TransferOptions {
                progress_stream: pid,
            }),
        }))
        .await
        .context("transfer pull")?;
    let _ = progress.await;
    Ok(())
}

/// Apply every layer with berth-image's unpacker into fresh dirs: (seconds, uncompressed bytes).
pub fn unpack_throughput(img: &Pushed, dir: &Path) -> anyhow::Result<(f64, u64)> {
    super::procs::drop_caches();
    let mut bytes = 0;
    let t0 = Instant::now();
    for (i, l) in img.layers.iter().enumerate() {
        let target = dir.join(format!("l{i}"));
        std::fs::create_dir_all(&target)?;
        let f = std::fs::File::open(l)?;
        let applied = berth_image::unpack::apply(
            &target,
            f,
            berth_image::unpack::Compression::Gzip,
            &Default::default(),
        )
        .with_context(|| format!("unpacking {}", l.display()))?;
        bytes += applied.size;
    }
    let secs = t0.elapsed().as_secs_f64();
    if bytes == 0 {
        bail!("nothing unpacked");
    }
    std::fs::remove_dir_all(dir)?;
    Ok((secs, bytes))
}
