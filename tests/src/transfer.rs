//! A client of containerd 2.x's Transfer service that sends exactly what containerd 2.x's `ctr` sends (its
//! `images pull`, `import`, `export`, `tag`, `push` without `--local`), over containerd-client's messages:
//! a Streaming stream per progress/auth/data channel (`StreamInit{id}` first, then the server's ack), Anys
//! with bare type URLs, containerd's binary stream protocol (32 KiB Data messages within 64 KiB windows).
//!
//! Used by the `daemon_pull_*` tests and nothing else; it talks only to the socket it is given.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::streaming_client::StreamingClient;
use berth_proto::containerd_client::services::v1::transfer_client::TransferClient;
use berth_proto::containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use berth_proto::containerd_client::types::transfer::{
    AuthRequest, AuthResponse, AuthType, Data, ImageExportStream, ImageImportStream,
    ImageReference, ImageStore, OciRegistry, Progress, RegistryResolver, UnpackConfiguration,
    WindowUpdate,
};
use berth_proto::containerd_client::types::Platform;
use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Status;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A stream id like containerd's `GenerateID(prefix)`.
pub fn stream_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{nanos}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// `msg` as an Any with its bare proto name, as containerd's typeurl does.
pub fn any<T: Message + prost::Name>(msg: &T) -> Any {
    Any {
        type_url: T::full_name(),
        value: msg.encode_to_vec(),
    }
}

/// This host's platform as ctr sends it (`platforms.DefaultSpec()`).
pub fn host_platform() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: crate::oci_layout::host_arch().into(),
        ..Default::default()
    }
}

/// An open Streaming stream: what the server sent (after the ack), and a sender.
pub struct ClientStream {
    /// The id the server knows it by.
    pub id: String,
    /// Messages to the server (drop to close our side).
    pub tx: mpsc::Sender<Any>,
    /// Messages from the server; ends when the server closes the stream.
    pub rx: tonic::Streaming<Any>,
}

/// Open a stream: send `StreamInit{id}`, wait for the server's ack (as containerd's stream creator does).
pub async fn open_stream(
    channel: &Channel,
    ns: &str,
    prefix: &str,
) -> Result<ClientStream, Status> {
    let id = stream_id(prefix);
    let (tx, rx) = mpsc::channel::<Any>(64);
    tx.send(any(&StreamInit { id: id.clone() }))
        .await
        .map_err(|_| Status::internal("stream sender closed"))?;
    let req = crate::grpc::req_with(ns, tokio_stream::wrappers::ReceiverStream::new(rx), None);
    let mut rx = StreamingClient::new(channel.clone())
        .stream(req)
        .await?
        .into_inner();
    rx.message()
        .await?
        .ok_or_else(|| Status::internal("stream closed before its ack"))?;
    Ok(ClientStream { id, tx, rx })
}

/// What `ctr images pull` (2.x, no `--local`) would ask.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// `--plain-http`: `default_scheme = "http"`.
    pub plain_http: bool,
    /// `--hosts-dir`.
    pub hosts_dir: Option<String>,
    /// `--user u:p`: answered on the auth stream.
    pub credentials: Option<(String, String)>,
    /// `--platform` (empty: all platforms, as `--all-platforms`).
    pub platforms: Vec<Platform>,
    /// Not `--skip-metadata`.
    pub all_metadata: bool,
    /// Unpack for each platform (ctr always does, with `--snapshotter`).
    pub unpack: bool,
    /// `--snapshotter` ("" = default).
    pub snapshotter: String,
    /// The image name (ctr: the reference as typed).
    pub name: Option<String>,
    /// `--label`.
    pub labels: HashMap<String, String>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            plain_http: true,
            hosts_dir: None,
            credentials: None,
            platforms: vec![host_platform()],
            all_metadata: true,
            unpack: true,
            snapshotter: String::new(),
            name: None,
            labels: HashMap::new(),
        }
    }
}

/// What a transfer reported.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Progress messages, in order.
    pub progress: Vec<Progress>,
    /// AuthRequests the server sent on the auth stream.
    pub auth_requests: Vec<AuthRequest>,
}

impl Outcome {
    /// The events of node `name`, in order.
    pub fn events_of(&self, name: &str) -> Vec<String> {
        self.progress
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.event.clone())
            .collect()
    }

    /// Names of the images saved.
    pub fn saved(&self) -> Vec<String> {
        self.progress
            .iter()
            .filter(|p| p.event == "saved")
            .map(|p| p.name.clone())
            .collect()
    }
}

/// The Transfer client of one namespace.
#[derive(Clone)]
pub struct Transfer {
    channel: Channel,
    ns: String,
}

/// Collect progress messages until the server closes the stream.
fn collect_progress(mut s: ClientStream) -> tokio::task::JoinHandle<Vec<Progress>> {
    tokio::spawn(async move {
        let _keep_open = s.tx;
        let mut out = Vec::new();
        while let Ok(Some(a)) = s.rx.message().await {
            if let Ok(p) = Progress::decode(a.value.as_slice()) {
                out.push(p);
            }
        }
        out
    })
}

impl Transfer {
    /// A client over `channel` for namespace `ns`.
    pub fn new(channel: Channel, ns: &str) -> Transfer {
        Transfer {
            channel,
            ns: ns.to_string(),
        }
    }

    async fn run(
        &self,
        source: Any,
        destination: Any,
        progress: Option<ClientStream>,
    ) -> Result<Vec<Progress>, Status> {
        let options = progress.as_ref().map(|p| TransferOptions {
            progress_stream: p.id.clone(),
        });
        let collector = progress.map(collect_progress);
        let req = crate::grpc::req_with(
            &self.ns,
            TransferRequest {
                source: Some(source),
                destination: Some(destination),
                options,
            },
            Some(Duration::from_secs(600)),
        );
        let res = TransferClient::new(self.channel.clone())
            .transfer(req)
            .await
            .map(|_| ());
        let progress = match collector {
            Some(c) => tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .map_err(|_| {
                    Status::internal("the progress stream did not end after the transfer")
                })?
                .map_err(|e| Status::internal(e.to_string()))?,
            None => Vec::new(),
        };
        res.map(|()| progress)
    }

    /// Pull `reference` into the image store as ctr 2.x does.
    pub async fn pull(&self, reference: &str, o: &PullOptions) -> Result<Outcome, Status> {
        let progress = open_stream(&self.channel, &self.ns, "progress").await?;
        let mut creds = open_stream(&self.channel, &self.ns, "creds").await?;
        let creds_id = creds.id.clone();
        let asked: Arc<std::sync::Mutex<Vec<AuthRequest>>> = Arc::default();
        let (asked2, answer) = (asked.clone(), o.credentials.clone());
        let responder = tokio::spawn(async move {
            while let Ok(Some(a)) = creds.rx.message().await {
                let Ok(r) = AuthRequest::decode(a.value.as_slice()) else {
                    continue;
                };
                asked2.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                // ctr's credential helper: the --user pair, else an empty refresh token.
                let resp = match &answer {
                    Some((u, p)) => AuthResponse {
                        auth_type: AuthType::Credentials as i32,
                        username: u.clone(),
                        secret: p.clone(),
                        expire_at: None,
                    },
                    None => AuthResponse {
                        auth_type: AuthType::Refresh as i32,
                        ..Default::default()
                    },
                };
                if creds.tx.send(any(&resp)).await.is_err() {
                    break;
                }
            }
        });
        let reg = OciRegistry {
            reference: reference.to_string(),
            resolver: Some(RegistryResolver {
                auth_stream: creds_id,
                host_dir: o.hosts_dir.clone().unwrap_or_default(),
                default_scheme: if o.plain_http {
                    "http".into()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
        };
        let unpacks = if o.unpack {
            let ps = if o.platforms.is_empty() {
                vec![host_platform()]
            } else {
                o.platforms.clone()
            };
            ps.into_iter()
                .map(|p| UnpackConfiguration {
                    platform: Some(p),
                    snapshotter: o.snapshotter.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let store = ImageStore {
            name: o.name.clone().unwrap_or_else(|| reference.to_string()),
            labels: o.labels.clone(),
            platforms: o.platforms.clone(),
            all_metadata: o.all_metadata,
            unpacks,
            ..Default::default()
        };
        let res = self.run(any(&reg), any(&store), Some(progress)).await;
        responder.abort();
        let auth_requests = asked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        res.map(|progress| Outcome {
            progress,
            auth_requests,
        })
    }

    /// Import an archive (`ctr images import` 2.x: prefix references name the images).
    pub async fn import(&self, archive: Vec<u8>, store: ImageStore) -> Result<Outcome, Status> {
        let progress = open_stream(&self.channel, &self.ns, "progress").await?;
        let mut data = open_stream(&self.channel, &self.ns, "import").await?;
        let src = ImageImportStream {
            stream: data.id.clone(),
            ..Default::default()
        };
        // The client is the sender: Data messages within the windows the server grants.
        let sender = tokio::spawn(async move {
            let mut rest = &archive[..];
            let mut window: i64 = 0;
            while !rest.is_empty() {
                while window <= 0 {
                    match data.rx.message().await {
                        Ok(Some(a)) => {
                            if let Ok(w) = WindowUpdate::decode(a.value.as_slice()) {
                                window += i64::from(w.update);
                            }
                        }
                        _ => return,
                    }
                }
                let n = rest.len().min(32 * 1024).min(window as usize);
                let d = Data {
                    data: rest[..n].to_vec(),
                };
                if data.tx.send(any(&d)).await.is_err() {
                    return;
                }
                window -= n as i64;
                rest = &rest[n..];
            }
            // Closing our side (only: the server still reads) ends the archive, as containerd's CloseSend;
            // then wait for the server to close the stream.
            let ClientStream { tx, mut rx, .. } = data;
            drop(tx);
            while let Ok(Some(_)) = rx.message().await {}
        });
        let res = self.run(any(&src), any(&store), Some(progress)).await;
        sender.abort();
        res.map(|progress| Outcome {
            progress,
            ..Default::default()
        })
    }

    /// Export images to an archive (`ctr images export` 2.x); returns the archive's bytes.
    pub async fn export(&self, names: &[&str], dst: ImageExportStream) -> Result<Vec<u8>, Status> {
        let mut data = open_stream(&self.channel, &self.ns, "export").await?;
        let dst = ImageExportStream {
            stream: data.id.clone(),
            ..dst
        };
        let src = ImageStore {
            name: names.first().map(|n| n.to_string()).unwrap_or_default(),
            extra_references: names
                .iter()
                .skip(1)
                .map(|n| ImageReference {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // The client receives: it keeps a 64 KiB window open.
        let receiver = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut window: i64 = 0;
            loop {
                if window < 64 * 1024 {
                    let u = WindowUpdate { update: 64 * 1024 };
                    if data.tx.send(any(&u)).await.is_ok() {
                        window += 64 * 1024;
                    }
                }
                match data.rx.message().await {
                    Ok(Some(a)) => {
                        if let Ok(d) = Data::decode(a.value.as_slice()) {
                            window -= d.data.len() as i64;
                            out.extend_from_slice(&d.data);
                        }
                    }
                    Ok(None) => return Ok(out),
                    Err(e) => return Err(e),
                }
            }
        });
        self.run(any(&src), any(&dst), None).await?;
        tokio::time::timeout(Duration::from_secs(60), receiver)
            .await
            .map_err(|_| Status::internal("the export stream did not end"))?
            .map_err(|e| Status::internal(e.to_string()))?
    }

    /// Tag an image (`ImageStore` → `ImageStore`).
    pub async fn tag(&self, from: &str, to: &str) -> Result<Outcome, Status> {
        let src = ImageStore {
            name: from.into(),
            ..Default::default()
        };
        let dst = ImageStore {
            name: to.into(),
            ..Default::default()
        };
        let progress = open_stream(&self.channel, &self.ns, "progress").await?;
        self.run(any(&src), any(&dst), Some(progress))
            .await
            .map(|progress| Outcome {
                progress,
                ..Default::default()
            })
    }

    /// Push an image to a registry reference (`ctr images push` 2.x).
    pub async fn push(
        &self,
        image: &str,
        reference: &str,
        plain_http: bool,
    ) -> Result<Outcome, Status> {
        let src = ImageStore {
            name: image.into(),
            ..Default::default()
        };
        let dst = OciRegistry {
            reference: reference.into(),
            resolver: Some(RegistryResolver {
                default_scheme: if plain_http {
                    "http".into()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
        };
        let progress = open_stream(&self.channel, &self.ns, "progress").await?;
        self.run(any(&src), any(&dst), Some(progress))
            .await
            .map(|progress| Outcome {
                progress,
                ..Default::default()
            })
    }
}
