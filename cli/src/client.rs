//! The connection to berthd: one HTTP/2 channel over the unix socket, the namespace header on
//! every call (as ctr sends it) and the per-call timeout.
//!
//! Connecting says exactly why it failed (no socket, nobody listening, no permission) and
//! where; this module must never retry a call or hide an error code.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient,
    introspection_client::IntrospectionClient, leases_client::LeasesClient,
    namespaces_client::NamespacesClient, snapshots::snapshots_client::SnapshotsClient,
    streaming_client::StreamingClient, tasks_client::TasksClient, transfer_client::TransferClient,
    version_client::VersionClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// How long the dial may take before berth gives up (ctr's `--connect-timeout` default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message berth accepts (containerd's limit).
const MAX_MESSAGE: usize = 16 << 20;

/// A connected client for one namespace.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    namespace: String,
    timeout: Option<Duration>,
    lease: Option<String>,
    address: PathBuf,
    debug: bool,
    started: std::time::Instant,
}

impl Client {
    /// Dial berthd at `address`.
    pub async fn connect(
        address: &Path,
        namespace: &str,
        timeout: Option<Duration>,
    ) -> Result<Client> {
        precheck(address)?;
        let path = address.to_path_buf();
        let endpoint = Endpoint::from_static("http://berthd")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(Duration::from_secs(24 * 3600));
        let dial = endpoint.connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_error(address, &e)),
            Err(_) => {
                return Err(Error::Connect {
                    path: address.to_path_buf(),
                    reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                })
            }
        };
        Ok(Client {
            channel,
            namespace: namespace.to_string(),
            timeout,
            lease: None,
            address: address.to_path_buf(),
            debug: false,
            started: std::time::Instant::now(),
        })
    }

    /// The socket path.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Print every request to stderr (`--debug`).
    pub fn set_debug(&mut self, on: bool) {
        self.debug = on;
    }

    /// A copy of this client whose calls carry `containerd-lease: <lease>`.
    pub fn with_lease(&self, lease: &str) -> Client {
        let mut c = self.clone();
        c.lease = Some(lease.to_string());
        c
    }

    /// A request with the namespace (and lease) headers and the unary timeout.
    pub fn req<T: std::fmt::Debug>(&self, msg: T) -> tonic::Request<T> {
        let mut r = self.stream_req(msg);
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        r
    }

    /// A request for a long-lived call (streams, Wait, Transfer): headers but no timeout.
    pub fn stream_req<T: std::fmt::Debug>(&self, msg: T) -> tonic::Request<T> {
        if self.debug {
            let name = std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("?");
            let mut text = format!("{msg:?}");
            if text.len() > 2000 {
                text.truncate(2000);
                text.push_str("...");
            }
            eprintln!(
                "berth: {:8.2} ms -> {name} (namespace {}{}) {text}",
                self.started.elapsed().as_secs_f64() * 1000.0,
                self.namespace,
                self.lease
                    .as_deref()
                    .map(|l| format!(", lease {l}"))
                    .unwrap_or_default()
            );
        }
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(lease) = &self.lease {
            if let Ok(v) = MetadataValue::try_from(lease.as_str()) {
                r.metadata_mut().insert("containerd-lease", v);
            }
        }
        r
    }

    /// Version service.
    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }
    /// Introspection service.
    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel.clone())
    }
    /// Namespaces service.
    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel.clone())
    }
    /// Containers service.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
    /// Tasks service.
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
    /// Images service.
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    /// Content service.
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
    /// Snapshots service.
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    /// Diff service.
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    /// berth.v1 Networks service.
    pub fn networks(&self) -> berth_proto::berth::networks_client::NetworksClient<Channel> {
        berth_proto::berth::networks_client::NetworksClient::new(self.channel.clone())
    }
    /// Leases service.
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    /// Events service.
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    /// Transfer service.
    pub fn transfer(&self) -> TransferClient<Channel> {
        TransferClient::new(self.channel.clone())
    }
    /// Streaming service (progress and data streams of a Transfer).
    pub fn streaming(&self) -> StreamingClient<Channel> {
        StreamingClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
    /// berth.v1 Journal service.
    pub fn journal(&self) -> berth_proto::berth::journal_client::JournalClient<Channel> {
        berth_proto::berth::journal_client::JournalClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }
}

/// Fail early, in words, when the socket is not there or is not a socket.
fn precheck(address: &Path) -> Result<()> {
    match std::fs::metadata(address) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(Error::Connect {
            path: address.to_path_buf(),
            reason: "it exists but is not a socket".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Connect {
            path: address.to_path_buf(),
            reason: "no such socket: berthd is not running there (start it with `berthd`, \
                     or `systemctl start berthd`; or point --address / BERTH_ADDRESS elsewhere)"
                .into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::Connect {
            path: address.to_path_buf(),
            reason: "permission denied (run berth as root)".into(),
        }),
        Err(e) => Err(Error::Connect {
            path: address.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// The io::Error below a transport error, worded.
fn connect_error(address: &Path, e: &tonic::transport::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io_kind = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
            break;
        }
        source = s.source();
    }
    let reason = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            "connection refused: berthd is not running (the socket is left from an earlier run)"
                .to_string()
        }
        Some(std::io::ErrorKind::PermissionDenied) => {
            "permission denied (run berth as root)".to_string()
        }
        _ => {
            let mut text = e.to_string();
            let mut s = std::error::Error::source(e);
            while let Some(inner) = s {
                text = format!("{text}: {inner}");
                s = inner.source();
            }
            text
        }
    };
    Error::Connect {
        path: address.to_path_buf(),
        reason,
    }
}
