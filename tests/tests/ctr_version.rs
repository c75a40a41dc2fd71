//! The generated containerd API traits serve Debian's `ctr version` and containerd-client:
//! a tonic server implementing only Version and Introspection.Server on a temp unix socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_proto::containerd::introspection::introspection_server::{
    Introspection, IntrospectionServer,
};
use berth_proto::containerd::version::version_server::{Version, VersionServer};
use berth_tests::{run_timeout, tool, unique_id, TestDir};
use containerd_client::services::v1::{
    PluginInfoRequest, PluginInfoResponse, PluginsRequest, PluginsResponse, ServerResponse,
    VersionResponse,
};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

struct VersionSvc {
    version: String,
}

#[tonic::async_trait]
impl Version for VersionSvc {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: self.version.clone(),
            revision: "berth-test-revision".into(),
        }))
    }
}

struct IntrospectionSvc {
    uuid: String,
}

#[tonic::async_trait]
impl Introspection for IntrospectionSvc {
    async fn plugins(
        &self,
        _: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        Err(Status::unimplemented("Plugins"))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        Ok(Response::new(ServerResponse {
            uuid: self.uuid.clone(),
            ..Default::default()
        }))
    }

    async fn plugin_info(
        &self,
        _: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        Err(Status::unimplemented("PluginInfo"))
    }
}

/// A running test server: stop it with [`TestServer::stop`].
struct TestServer {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    /// Serve Version (always) and Introspection (if `with_introspection`) on `socket`.
    fn start(socket: &Path, version: &str, uuid: &str, with_introspection: bool) -> TestServer {
        let listener = UnixListener::bind(socket).expect("bind unix socket");
        let (tx, rx) = oneshot::channel::<()>();
        let version = VersionServer::new(VersionSvc {
            version: version.into(),
        });
        let introspection = with_introspection
            .then(|| IntrospectionServer::new(IntrospectionSvc { uuid: uuid.into() }));
        let router = tonic::transport::Server::builder()
            .add_service(version)
            .add_optional_service(introspection);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            socket: socket.to_path_buf(),
            stop: Some(tx),
            task,
        }
    }

    /// Stop serving and check that the socket no longer accepts connections.
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let joined = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops within 10s");
        joined.expect("server task").expect("server result");
        // Another test thread may be between fork and exec with a copy of the listening socket (it is
        // close-on-exec, so the copy goes away at the exec): allow that window to close.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "socket still accepts connections 2 s after stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn ctr_version(ctr: PathBuf, socket: PathBuf) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        run_timeout(
            Command::new(ctr)
                .arg("--address")
                .arg(&socket)
                .arg("--connect-timeout")
                .arg("5s")
                .arg("version"),
            Duration::from_secs(30),
        )
    })
    .await
    .expect("ctr task")
}

#[test]
fn service_names_are_containerds() {
    use berth_proto::containerd::{introspection, version};
    assert_eq!(
        version::version_server::SERVICE_NAME,
        "containerd.services.version.v1.Version"
    );
    assert_eq!(
        introspection::introspection_server::SERVICE_NAME,
        "containerd.services.introspection.v1.Introspection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_ctr_version_talks_to_generated_server() {
    let Some(ctr) = tool("ctr") else {
        return;
    };
    let dir = TestDir::new("ctr-version");
    let socket = dir.join("v.sock");
    let version = format!("berth-{}", unique_id("ver"));
    let uuid = unique_id("uuid");
    let server = TestServer::start(&socket, &version, &uuid, true);

    let out = ctr_version(ctr, socket.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ctr version failed: {stderr}\n{stdout}"
    );
    let server_part = stdout
        .split("Server:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Server section in: {stdout}"));
    let printed: Vec<&str> = server_part
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Version:"))
        .map(str::trim)
        .collect();
    assert_eq!(printed, vec![version.as_str()], "{stdout}");
    assert!(server_part.contains("berth-test-revision"), "{stdout}");
    assert!(server_part.contains(&uuid), "{stdout}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_version_fails_without_introspection() {
    // The positive test above can fail: ctr needs Introspection.Server too.
    let Some(ctr) = tool("ctr") else {
        return;
    };
    let dir = TestDir::new("ctr-version-neg");
    let socket = dir.join("v.sock");
    let server = TestServer::start(&socket, "berth-neg", "uuid-neg", false);
    let out = ctr_version(ctr, socket.clone()).await;
    assert!(
        !out.status.success(),
        "ctr version succeeded without Introspection: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_client_talks_to_generated_server() {
    use containerd_client::services::v1::introspection_client::IntrospectionClient;
    use containerd_client::services::v1::version_client::VersionClient;

    let dir = TestDir::new("ctr-version-client");
    let socket = dir.join("v.sock");
    let version = format!("berth-{}", unique_id("ver"));
    let server = TestServer::start(&socket, &version, "uuid-client", true);

    let channel = berth_tests::connect_unix(&socket).await;
    let v = VersionClient::new(channel.clone())
        .version(())
        .await
        .expect("Version.Version")
        .into_inner();
    assert_eq!(v.version, version);
    assert_eq!(v.revision, "berth-test-revision");
    let s = IntrospectionClient::new(channel.clone())
        .server(())
        .await
        .expect("Introspection.Server")
        .into_inner();
    assert_eq!(s.uuid, "uuid-client");
    let err = IntrospectionClient::new(channel)
        .plugins(PluginsRequest::default())
        .await
        .expect_err("Plugins is not implemented");
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    server.stop().await;
}
