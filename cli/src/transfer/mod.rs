//! Pull, push, import, export and tag through berthd's Transfer service, with the messages
//! containerd 2.x's client sends: a source and a destination as `Any`
//! (`containerd.types.transfer.OCIRegistry`, `ImageStore`, `ImageImportStream`,
//! `ImageExportStream`), and side streams opened on the Streaming service (first message
//! `StreamInit{id}`, answered by one ack): progress from berthd, archive bytes in either
//! direction as `Data` under `WindowUpdate` flow control, registry credentials on request.
//!
//! This module must never fetch from a registry itself: berthd does the transfer.

use std::collections::HashMap;

use containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use containerd_client::types::transfer::{
    AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, Progress, RegistryResolver,
    UnpackConfiguration,
};
use containerd_client::types::Platform;
use prost::{Message, Name};
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::progress::Display;

mod archive;

pub use archive::{export, import, ImportOptions};

/// Largest `Data` message berth sends (containerd's 32 KiB).
const MAX_CHUNK: usize = 32 * 1024;
/// Window berth grants when it receives (containerd's 64 KiB).
const WINDOW: i32 = 64 * 1024;

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Talk HTTP to the registry.
    pub plain_http: bool,
    /// `os/arch[/variant]` to pull (default: the host's).
    pub platforms: Vec<String>,
    /// Every platform.
    pub all_platforms: bool,
    /// `user[:password]` for the registry.
    pub user: Option<String>,
    /// Snapshotter to unpack into; unpacking is skipped when `unpack` is false.
    pub snapshotter: String,
    /// Unpack after fetching.
    pub unpack: bool,
    /// Image labels.
    pub labels: HashMap<String, String>,
    /// Hosts directory (registry mirrors and certificates) berthd should read.
    pub hosts_dir: String,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            plain_http: false,
            platforms: Vec::new(),
            all_platforms: false,
            user: None,
            snapshotter: "overlayfs".into(),
            unpack: true,
            labels: HashMap::new(),
            hosts_dir: String::new(),
        }
    }
}

/// `os/arch[/variant]` as a Platform.
pub fn parse_platform(s: &str) -> Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(Error::Usage(format!(
            "invalid platform {s:?} (use os/arch[/variant], e.g. linux/amd64)"
        )));
    }
    Ok(Platform {
        os: parts[0].into(),
        architecture: parts[1].into(),
        variant: parts.get(2).map(|v| v.to_string()).unwrap_or_default(),
        os_version: String::new(),
    })
}

/// The host's platform.
pub fn host_platform() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: crate::image::host_arch().into(),
        variant: String::new(),
        os_version: String::new(),
    }
}

/// A message as `Any` with containerd's bare type URL.
fn any<T: Message + Name>(m: &T) -> Any {
    berth_proto::to_any(m)
}

/// Decode `a` as `T` when its type URL names `T` (bare or prefixed).
fn decode<T: Message + Name + Default>(a: &Any) -> Option<T> {
    let name = T::full_name();
    let url = a.type_url.trim_start_matches('/');
    if url == name || url.ends_with(&format!("/{name}")) {
        T::decode(a.value.as_slice()).ok()
    } else {
        None
    }
}

/// A stream id as containerd makes them (`<prefix>-<nanos>-<random>`).
fn stream_id(prefix: &str) -> String {
    format!("{prefix}-{}", crate::image::unique_suffix())
}

/// An error of a step of `what`, reworded as `what` failing; a berthd without the Streaming
/// service says so plainly.
fn as_part_of(what: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Rpc { status, .. } if status.code() == tonic::Code::Unimplemented => Error::Rpc {
            what: what.to_string(),
            status: tonic::Status::unimplemented(
                "this berthd does not serve containerd's Transfer and Streaming services \
                 (pull, push, import, export and tag need them)",
            ),
        },
        Error::Rpc { status, .. } => Error::Rpc {
            what: what.to_string(),
            status,
        },
        other => other,
    }
}

/// Open a Streaming stream: send `StreamInit{id}`, wait for berthd's ack.
async fn open_stream(client: &Client, id: &str) -> Result<(mpsc::Sender<Any>, Streaming<Any>)> {
    let (tx, rx) = mpsc::channel::<Any>(16);
    let init = any(&StreamInit { id: id.to_string() });
    tx.send(init)
        .await
        .map_err(|_| Error::Unsupported("stream closed before it opened".into()))?;
    let mut resp = client
        .streaming()
        .stream(client.stream_req(ReceiverStream::new(rx)))
        .await
        .map_err(Error::rpc(format!("open stream {id}")))?
        .into_inner();
    resp.message()
        .await
        .map_err(Error::rpc(format!("open stream {id}")))?;
    Ok((tx, resp))
}

/// Side work of one transfer (a data or credentials stream).
struct Side {
    task: tokio::task::JoinHandle<Result<()>>,
    /// The transfer is only complete once this task is (an export's writer); otherwise the
    /// task is dropped when the transfer returns.
    must_finish: bool,
}

/// Run one Transfer with a progress stream; waits for `sides` afterwards.
async fn transfer(
    client: &Client,
    what: &str,
    source: Any,
    destination: Any,
    sides: Vec<Side>,
    display: Display,
) -> Result<Display> {
    let sid = stream_id("progress");
    let (ptx, mut presp) = open_stream(client, &sid).await.map_err(as_part_of(what))?;
    let progress = tokio::spawn(async move {
        let mut display = display;
        while let Ok(Some(a)) = presp.message().await {
            if let Some(p) = decode::<Progress>(&a) {
                display.update(&p);
            }
        }
        drop(ptx);
        display
    });
    let req = TransferRequest {
        source: Some(source),
        destination: Some(destination),
        options: Some(TransferOptions {
            progress_stream: sid,
        }),
    };
    let result = client.transfer().transfer(client.stream_req(req)).await;
    let display = match tokio::time::timeout(std::time::Duration::from_secs(10), progress).await {
        Ok(Ok(d)) => d,
        _ => Display::new(false),
    };
    display.finish();
    result.map_err(Error::rpc(what.to_string()))?;
    for side in sides {
        if !side.must_finish {
            side.task.abort();
            continue;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(60), side.task).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => {
                return Err(Error::Unsupported(format!(
                    "{what}: stream task failed: {e}"
                )))
            }
            Err(_) => {
                return Err(Error::Unsupported(format!(
                    "{what}: berthd did not finish the data stream"
                )))
            }
        }
    }
    Ok(display)
}

/// The registry source/destination, with a credentials stream when a user is given.
async fn registry(client: &Client, reference: &str, o: &PullOptions) -> Result<(Any, Vec<Side>)> {
    let mut resolver = RegistryResolver {
        host_dir: o.hosts_dir.clone(),
        default_scheme: if o.plain_http {
            "http".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let mut sides = Vec::new();
    if let Some(user) = &o.user {
        let (name, secret) = match user.split_once(':') {
            Some((u, p)) => (u.to_string(), p.to_string()),
            None => (
                user.clone(),
                std::env::var("BERTH_REGISTRY_PASSWORD").unwrap_or_default(),
            ),
        };
        let sid = stream_id("creds");
        let (tx, mut resp) = open_stream(client, &sid)
            .await
            .map_err(as_part_of(&format!("registry credentials for {reference}")))?;
        resolver.auth_stream = sid;
        let task = tokio::spawn(async move {
            while let Ok(Some(a)) = resp.message().await {
                if decode::<AuthRequest>(&a).is_some() {
                    let answer = AuthResponse {
                        auth_type: AuthType::Credentials as i32,
                        username: name.clone(),
                        secret: secret.clone(),
                        expire_at: None,
                    };
                    if tx.send(any(&answer)).await.is_err() {
                        break;
                    }
                }
            }
            Ok(())
        });
        sides.push(Side {
            task,
            must_finish: false,
        });
    }
    let reg = OciRegistry {
        reference: reference.to_string(),
        resolver: Some(resolver),
    };
    Ok((any(&reg), sides))
}

/// Platforms from the flags (the host's by default, none for all).
fn platforms(o: &PullOptions) -> Result<Vec<Platform>> {
    if o.all_platforms {
        if !o.platforms.is_empty() {
            return Err(Error::Usage(
                "--platform and --all-platforms cannot be used together".into(),
            ));
        }
        return Ok(Vec::new());
    }
    if o.platforms.is_empty() {
        return Ok(vec![host_platform()]);
    }
    o.platforms.iter().map(|p| parse_platform(p)).collect()
}

/// Pull `reference` into the image store (and unpack it).
pub async fn pull(client: &Client, reference: &str, o: &PullOptions) -> Result<()> {
    let plats = platforms(o)?;
    let (source, sides) = registry(client, reference, o).await?;
    let unpacks = if o.unpack {
        let for_unpack = if plats.is_empty() {
            vec![host_platform()]
        } else {
            plats.clone()
        };
        for_unpack
            .into_iter()
            .map(|p| UnpackConfiguration {
                platform: Some(p),
                snapshotter: o.snapshotter.clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let store = ImageStore {
        name: reference.to_string(),
        labels: o.labels.clone(),
        platforms: plats,
        all_metadata: true,
        unpacks,
        ..Default::default()
    };
    let display = Display::new(crate::tty::stdout_is_tty());
    transfer(
        client,
        &format!("pull {reference}"),
        source,
        any(&store),
        sides,
        display,
    )
    .await?;
    Ok(())
}

/// Push the local image `local` to `remote`.
pub async fn push(client: &Client, local: &str, remote: &str, o: &PullOptions) -> Result<()> {
    let store = ImageStore {
        name: local.to_string(),
        platforms: platforms(o)?,
        ..Default::default()
    };
    let (dest, sides) = registry(client, remote, o).await?;
    let display = Display::new(crate::tty::stdout_is_tty());
    transfer(
        client,
        &format!("push {local} to {remote}"),
        any(&store),
        dest,
        sides,
        display,
    )
    .await?;
    Ok(())
}

/// Tag `source` as `target` (berthd copies the image record).
pub async fn tag(client: &Client, source: &str, target: &str) -> Result<()> {
    let src = ImageStore {
        name: source.to_string(),
        ..Default::default()
    };
    let dst = ImageStore {
        name: target.to_string(),
        ..Default::default()
    };
    transfer(
        client,
        &format!("tag {source} as {target}"),
        any(&src),
        any(&dst),
        Vec::new(),
        Display::new(false),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::types::transfer::{Data, WindowUpdate};

    #[test]
    fn type_urls_are_bare_and_decode_both_ways() {
        let a = any(&StreamInit { id: "x".into() });
        assert_eq!(a.type_url, "containerd.services.streaming.v1.StreamInit");
        let w = any(&WindowUpdate { update: 5 });
        assert_eq!(w.type_url, "containerd.types.transfer.WindowUpdate");
        assert_eq!(decode::<WindowUpdate>(&w).map(|w| w.update), Some(5));
        let prefixed = Any {
            type_url: "type.googleapis.com/containerd.types.transfer.WindowUpdate".into(),
            value: w.value.clone(),
        };
        assert!(decode::<WindowUpdate>(&prefixed).is_some());
        assert!(decode::<Data>(&w).is_none());
        assert_eq!(
            any(&OciRegistry::default()).type_url,
            "containerd.types.transfer.OCIRegistry"
        );
    }

    #[test]
    fn platforms_parse() {
        assert_eq!(
            parse_platform("linux/arm64/v8").map(|p| p.variant).ok(),
            Some("v8".into())
        );
        assert!(parse_platform("linux").is_err());
        assert!(parse_platform("linux//x").is_err());
    }
}
