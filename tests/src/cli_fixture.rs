//! The harness of the `berth` CLI tests (`cli_*.rs`): a berthd of the test's own (through
//! [`TaskFixture`], whose guard kills every shim and container left), the `berth` binary run as
//! a user runs it (a process; its stdout, stderr and exit code), a FIFO dir inside the test dir,
//! and images seeded straight into berthd's content and image stores over gRPC, so the run tests
//! do not depend on the Transfer service.
//!
//! This module must never touch anything outside the test's dir, namespace and cgroup.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use berth_proto::containerd_client::services::v1::content_client::ContentClient;
use berth_proto::containerd_client::services::v1::images_client::ImagesClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::{
    CreateImageRequest, CreateRequest, DeleteRequest, Image, WriteContentRequest,
};
use berth_proto::containerd_client::types::Descriptor;

use crate::oci_layout::{busybox_layout, OciLayout};
use crate::task_fixture::TaskFixture;

/// Name the busybox test image is stored under.
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// How long one `berth` invocation may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(90);

/// One CLI test's berthd, namespace, dirs and cleanup.
pub struct CliFixture {
    /// berthd, guard, namespace and test dir.
    pub fx: TaskFixture,
    /// Where `berth` makes stdio FIFOs (`--fifo-dir` / `BERTH_FIFO_DIR`).
    pub fifo_dir: PathBuf,
}

impl CliFixture {
    /// A berthd for test `name`; the namespace's cgroup is registered with the guard.
    pub fn new(name: &str) -> CliFixture {
        let fx = TaskFixture::new(name, "");
        fx.guard.cgroup(format!("/{}", fx.ns));
        let fifo_dir = fx.dir.join("fifo");
        CliFixture { fx, fifo_dir }
    }

    /// berthd's socket.
    pub fn address(&self) -> PathBuf {
        self.fx.daemon.address().to_path_buf()
    }

    /// The test's namespace.
    pub fn ns(&self) -> &str {
        &self.fx.ns
    }

    /// `berth -a SOCK -n NS` with the FIFO dir set; add the subcommand.
    pub fn berth(&self) -> Command {
        let mut c = Command::new(crate::bin("berth"));
        c.arg("-a")
            .arg(self.address())
            .arg("-n")
            .arg(&self.fx.ns)
            .env("BERTH_FIFO_DIR", &self.fifo_dir)
            .env_remove("BERTH_ADDRESS")
            .env_remove("BERTH_NAMESPACE")
            .env_remove("RUST_BACKTRACE");
        c
    }

    /// Run `berth ARGS` (stdin /dev/null) to completion.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        crate::run_timeout(self.berth().args(args), CLI_TIMEOUT)
    }

    /// Run `berth ARGS`; it must succeed; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Whether berthd serves the Transfer service (pull, push, import, export, tag): its plugin
    /// is listed without an init error.
    pub fn transfer_available(&self) -> bool {
        let out = self.ok(&["plugins", "ls", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array().into_iter().flatten().any(|p| {
            p["type"] == "io.containerd.transfer.v1" && p["status"] == "ok"
                || p["type"] == "io.containerd.grpc.v1"
                    && p["id"] == "transfer"
                    && p["status"] == "ok"
        })
    }

    /// Write the busybox image into berthd (content + image record, not unpacked) as
    /// [`BUSYBOX`]; returns its layout.
    pub fn seed_busybox(&self) -> OciLayout {
        let layout = busybox_layout(&self.fx.dir.join("busybox-layout"));
        self.seed(&layout, BUSYBOX);
        layout
    }

    /// Write `layout`'s manifest, config and layers into berthd under a lease, with the gc
    /// labels a pull sets, and create image `name` pointing at the manifest.
    pub fn seed(&self, layout: &OciLayout, name: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let ch = self.fx.daemon.channel().await;
            let ns = &self.fx.ns;
            let lease_id = crate::unique_id("seed");
            LeasesClient::new(ch.clone())
                .create(crate::grpc::req(
                    ns,
                    CreateRequest {
                        id: lease_id.clone(),
                        labels: HashMap::new(),
                    },
                ))
                .await
                .expect("create lease");
            let mut blobs = Vec::new();
            for d in layout.blobs() {
                blobs.push((d.digest.clone(), layout.blob(&d.digest), HashMap::new()));
            }
            let mut manifest_labels = HashMap::new();
            manifest_labels.insert(
                "containerd.io/gc.ref.content.config".to_string(),
                layout.config.digest.clone(),
            );
            for (i, l) in layout.layers.iter().enumerate() {
                manifest_labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    l.digest.clone(),
                );
            }
            blobs.push((
                layout.manifest.digest.clone(),
                layout.blob(&layout.manifest.digest),
                manifest_labels,
            ));
            for (digest, data, labels) in blobs {
                write_blob(ch.clone(), ns, &lease_id, &digest, data, labels).await;
            }
            let mut req = crate::grpc::req(
                ns,
                CreateImageRequest {
                    image: Some(Image {
                        name: name.to_string(),
                        target: Some(Descriptor {
                            media_type: layout.manifest.media_type.clone(),
                            digest: layout.manifest.digest.clone(),
                            size: layout.manifest.size as i64,
                            annotations: HashMap::new(),
                        }),
                        ..Default::default()
                    }),
                    source_date_epoch: None,
                },
            );
            req.metadata_mut()
                .insert("containerd-lease", lease_id.parse().expect("ascii"));
            ImagesClient::new(ch.clone())
                .create(req)
                .await
                .expect("create image");
            LeasesClient::new(ch)
                .delete(crate::grpc::req(
                    ns,
                    DeleteRequest {
                        id: lease_id,
                        sync: false,
                    },
                ))
                .await
                .expect("delete lease");
        });
    }
}

/// Content.Write of one blob (STAT, WRITE, COMMIT) under `lease`.
async fn write_blob(
    ch: tonic::transport::Channel,
    ns: &str,
    lease: &str,
    digest: &str,
    data: Vec<u8>,
    labels: HashMap<String, String>,
) {
    let base = WriteContentRequest {
        r#ref: format!("seed-{digest}"),
        total: data.len() as i64,
        expected: digest.to_string(),
        ..Default::default()
    };
    let msgs = vec![
        WriteContentRequest {
            action: 0,
            ..base.clone()
        },
        WriteContentRequest {
            action: 1,
            data: data.clone(),
            ..base.clone()
        },
        WriteContentRequest {
            action: 2,
            offset: data.len() as i64,
            labels,
            ..base
        },
    ];
    let mut req = crate::grpc::req(ns, tokio_stream::iter(msgs));
    req.metadata_mut()
        .insert("containerd-lease", lease.parse().expect("ascii"));
    match ContentClient::new(ch).write(req).await {
        Ok(r) => {
            let mut s = r.into_inner();
            loop {
                match s.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) if e.code() == tonic::Code::AlreadyExists => break,
                    Err(e) => panic!("writing blob {digest}: {e}"),
                }
            }
        }
        Err(e) if e.code() == tonic::Code::AlreadyExists => {}
        Err(e) => panic!("writing blob {digest}: {e}"),
    }
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Assert `out` is one of berth's error exits: non-zero, nothing on stdout, exactly one
/// `berth: ...` line on stderr, no panic or backtrace; returns that line.
#[track_caller]
pub fn one_line_error(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure, got {:?}; stdout: {}",
        out.status,
        text(&out.stdout)
    );
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("backtrace")
            && !stderr.contains("RUST_BACKTRACE"),
        "a panic instead of an error: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr:?}");
    assert!(lines[0].starts_with("berth: "), "{stderr:?}");
    lines[0].to_string()
}
