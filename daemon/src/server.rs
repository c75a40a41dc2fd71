//! berthd startup, serving and shutdown.
//!
//! [`prepare`] runs before any runtime exists: it creates the root (0700) and state (0711) dirs, takes the
//! single-instance lock (`<root>/lock`, flock) BEFORE touching the socket, opens the store (`<root>/meta.redb`)
//! and the event journal (`<state>/events/`; a damaged tail is cut off with a warning), removes a stale
//! socket, binds the new one (0660), raises RLIMIT_NOFILE and sets
//! oom_score_adj. [`run`] then starts the actix System on its own thread, a 2-worker tokio runtime for tonic,
//! the supervision tree (`tree.rs`), and serves until SIGTERM/SIGINT (exit 0) or until a
//! supervised child exceeds its restart limit (escalation: berthd stops with an error, systemd restarts it); on a signal it stops serving, ends event subscriptions, calls
//! `tasks.shutdown()` (containers keep running) and returns.
//!
//! This module must never remove a socket before it holds the lock, and never kill containers on shutdown.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tonic::transport::Server;

use crate::config::Config;
use crate::context::Context;
use crate::events::{EventBus, EventError, JournalDb};
use crate::services;
use crate::store::{Store, StoreError};

/// Largest gRPC message accepted or sent (as containerd).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Startup and serving errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A filesystem or socket operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another berthd holds the root.
    #[error("another berthd is already running with root {root} (lock {lock} held{holder}); refusing to start")]
    AlreadyRunning {
        /// The root dir.
        root: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// ", by pid N" when known.
        holder: String,
    },
    /// Something other than a socket is where the socket goes.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// The store refused to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event bus failed to start.
    #[error(transparent)]
    Events(#[from] EventError),
    /// The runtimes failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A supervised child exceeded its restart limit.
    #[error("{0} kept failing (restart limit exceeded); berthd stopped")]
    Escalated(String),
    /// Serving failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Everything set up before serving.
pub struct Prepared {
    config: Arc<Config>,
    _lock: Flock<File>,
    store: Store,
    journal: JournalDb,
    listener: std::os::unix::net::UnixListener,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), ServerError> {
    std::fs::create_dir_all(path).map_err(io_err("creating", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

fn take_lock(config: &Config) -> Result<Flock<File>, ServerError> {
    let path = config.lock_path();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = writeln!(&mut *lock, "{}", std::process::id());
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|p| format!(", by pid {p}"))
                .unwrap_or_default();
            Err(ServerError::AlreadyRunning {
                root: config.root.clone(),
                lock: path,
                holder,
            })
        }
        Err((_, e)) => Err(ServerError::Io {
            what: "locking",
            path,
            source: e.into(),
        }),
    }
}

fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, ServerError> {
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            make_dir(parent, 0o711)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            tracing::info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io_err("removing stale socket", path))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err("chmod", path))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("setting non-blocking", path))?;
    Ok(listener)
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit (1,000 shims need far more than 1024 fds).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised RLIMIT_NOFILE"),
            Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE"),
    }
}

/// Set our own oom_score_adj.
fn set_oom_score_adj(value: i32) {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", value.to_string()) {
        tracing::warn!(error = %e, value, "cannot set oom_score_adj");
    }
}

/// Set up dirs, lock, store and socket (see the module doc). Call before [`run`].
pub fn prepare(config: Config) -> Result<Prepared, ServerError> {
    make_dir(&config.root, 0o700)?;
    make_dir(&config.state, 0o711)?;
    let lock = take_lock(&config)?;
    let store = Store::open(&config.meta_db_path(), config.max_batch)?;
    let journal = JournalDb::open(&config.journal_db_path(), store.clone(), config.max_batch)?;
    let listener = bind_socket(&config.address)?;
    raise_nofile();
    set_oom_score_adj(config.oom_score_adj);
    Ok(Prepared {
        config: Arc::new(config),
        _lock: lock,
        store,
        journal,
        listener,
    })
}

/// Start the actix System on its own thread; returns its System handle, an arbiter handle and the thread.
fn start_actix() -> Result<
    (
        actix::System,
        actix::ArbiterHandle,
        std::thread::JoinHandle<()>,
    ),
    ServerError,
> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("berthd-actix".into())
        .spawn(move || {
            let runner = actix::System::new();
            let _ = tx.send((actix::System::current(), actix::Arbiter::current()));
            if let Err(e) = runner.run() {
                tracing::error!(error = %e, "actix system failed");
            }
        })
        .map_err(|e| ServerError::Runtime(format!("starting the actix thread: {e}")))?;
    let (system, arbiter) = rx
        .recv()
        .map_err(|_| ServerError::Runtime("the actix thread died at start".into()))?;
    Ok((system, arbiter, thread))
}

/// SIGTERM and SIGINT handlers, installed before the slow parts of startup so that a stop request during
/// recovery is not fatal.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, ServerError> {
        use tokio::signal::unix::{signal, SignalKind};
        let err =
            |e: std::io::Error| ServerError::Runtime(format!("installing signal handlers: {e}"));
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
        })
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Serve until SIGTERM/SIGINT, then shut down gracefully (containers keep running).
pub fn run(prepared: Prepared) -> Result<(), ServerError> {
    let Prepared {
        config,
        _lock,
        store,
        journal,
        listener,
    } = prepared;
    let (system, arbiter, actix_thread) = start_actix()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("berthd-rt")
        .enable_all()
        .build()
        .map_err(|e| ServerError::Runtime(format!("building the tokio runtime: {e}")))?;
    let result = rt.block_on(serve(
        config.clone(),
        store.clone(),
        journal.clone(),
        listener,
        arbiter,
    ));
    system.stop();
    let _ = actix_thread.join();
    rt.shutdown_timeout(Duration::from_secs(1));
    // The journal first: its writer may still reserve seqs through the store's.
    journal.close();
    store.close();
    let _ = std::fs::remove_file(&config.address);
    tracing::info!("berthd stopped");
    result
}

macro_rules! limits {
    ($svc:expr) => {
        $svc.max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    };
}

async fn serve(
    config: Arc<Config>,
    store: Store,
    journal: JournalDb,
    listener: std::os::unix::net::UnixListener,
    actors: actix::ArbiterHandle,
) -> Result<(), ServerError> {
    use berth_proto::berth::journal_server::JournalServer;
    use berth_proto::berth::networks_server::NetworksServer;
    use berth_proto::containerd::containers::containers_server::ContainersServer;
    use berth_proto::containerd::content::content_server::ContentServer;
    use berth_proto::containerd::diff::diff_server::DiffServer;
    use berth_proto::containerd::events::events_server::EventsServer;
    use berth_proto::containerd::images::images_server::ImagesServer;
    use berth_proto::containerd::introspection::introspection_server::IntrospectionServer;
    use berth_proto::containerd::leases::leases_server::LeasesServer;
    use berth_proto::containerd::namespaces::namespaces_server::NamespacesServer;
    use berth_proto::containerd::snapshots::snapshots_server::SnapshotsServer;
    use berth_proto::containerd::streaming::streaming_server::StreamingServer;
    use berth_proto::containerd::transfer::transfer_server::TransferServer;
    use berth_proto::containerd::version::version_server::VersionServer;

    let mut signals = StopSignals::install()?;
    let events = EventBus::new(journal, config.event_retention, config.subscriber_queue)?;
    let (esc_tx, mut esc_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let images = crate::images::Images::open(&config.root, config.ingest_expiry())
        .map_err(|e| ServerError::Runtime(e.to_string()))?;
    let ctx = Context {
        config: config.clone(),
        store,
        events: events.clone(),
        images,
        actors,
    };
    let tree = crate::tree::start(
        &ctx,
        Box::new(move |child: &str| {
            let _ = esc_tx.send(child.to_string());
        }),
    )
    .await;
    let tasks = tree.tasks.clone();
    let streams = crate::transfer::streams::Streams::default();
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(io_err("listening on", &config.address))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();

    // containerd's Go client (nerdctl, BuildKit, k3s) waits for SERVING here before anything else.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let router = Server::builder()
        .add_service(health_service)
        .add_service(limits!(VersionServer::new(
            services::version::VersionService
        )))
        .add_service(limits!(IntrospectionServer::new(
            services::introspection::IntrospectionService::new(ctx.clone())
        )))
        .add_service(limits!(NamespacesServer::new(
            services::namespaces::NamespacesService::new(ctx.clone())
        )))
        .add_service(limits!(ContainersServer::new(
            services::containers::ContainersService::new(ctx.clone(), tasks.clone())
        )))
        .add_service(limits!(LeasesServer::new(
            services::leases::LeasesService::new(ctx.clone())
        )))
        .add_service(limits!(EventsServer::new(
            services::events::EventsService::new(ctx.clone())
        )))
        .add_service(limits!(JournalServer::new(
            services::events::JournalService::new(ctx.clone())
        )))
        .add_service(tasks.service())
        .add_service(limits!(NetworksServer::new(
            services::networks::NetworksService::new(ctx.clone(), tree.networks.clone())
        )))
        .add_service(limits!(ContentServer::new(
            services::content::ContentService::new(ctx.clone())
        )))
        .add_service(limits!(ImagesServer::new(
            services::images::ImagesService::new(ctx.clone())
        )))
        .add_service(limits!(SnapshotsServer::new(
            services::snapshots::SnapshotsService::new(ctx.clone())
        )))
        .add_service(limits!(DiffServer::new(services::diff::DiffService::new(
            ctx.clone()
        ))))
        .add_service(limits!(TransferServer::new(
            crate::transfer::TransferService::new(tree.pulls.clone(), streams.clone())
        )))
        .add_service(limits!(StreamingServer::new(
            crate::transfer::streams::StreamingService::new(streams)
        )));
    let (cri_runtime, cri_images) = match config.cri.enabled {
        true => {
            let (r, i) = tree.cri.services();
            (Some(r), Some(i))
        }
        false => (None, None),
    };
    let router = router
        .add_optional_service(cri_runtime)
        .add_optional_service(cri_images);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    }));
    tracing::info!(
        address = %config.address.display(),
        root = %config.root.display(),
        state = %config.state.display(),
        version = services::version::VERSION,
        "berthd serving"
    );

    let mut outcome = Ok(());
    tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "stopping: no new requests; containers keep running");
        }
        Some(child) = esc_rx.recv() => {
            tracing::error!(child = %child, "a supervised actor exceeded its restart limit; stopping berthd");
            outcome = Err(ServerError::Escalated(child));
        }
    }
    events.close();
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(3), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!("requests still running after 3 s; closing them"),
    }
    tasks.shutdown().await;
    outcome
}
