//! berthd's Containers service through gRPC with containerd-client's clients, one scenario per test:
//! validation, create and get, list filters, the list stream, updates with and without field masks, delete.
//! Each test starts its own berthd on a temp root and socket; root only.

use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::*;
use berth_tests::grpc::{code, container, create, req};
use berth_tests::{Daemon, TestDir};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

/// One test's berthd, a Containers client to it and a namespace of its own.
/// Field order matters: the client goes first, then berthd stops, then its dir goes.
struct Fx {
    cc: ContainersClient<Channel>,
    ns: String,
    _daemon: Daemon,
    _dir: TestDir,
}

impl Fx {
    async fn new(name: &str) -> Fx {
        let dir = TestDir::new(name);
        let daemon = Daemon::start(dir.path());
        Fx {
            cc: ContainersClient::new(daemon.channel().await),
            ns: berth_tests::unique_id("core-ctr"),
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// The sorted ids Containers.List returns for `filters`.
    async fn ids(&mut self, filters: &[&str]) -> Vec<String> {
        let ns = self.ns.clone();
        ids_in(&mut self.cc, &ns, filters).await
    }

    /// Containers.Create of `ctr`, expected to fail: its code.
    async fn create_code(&mut self, ctr: Container) -> Code {
        code(
            self.cc
                .create(req(
                    &self.ns,
                    CreateContainerRequest {
                        container: Some(ctr),
                    },
                ))
                .await,
        )
    }

    /// The records the list and update scenarios work on: c1 (img-a, x=1), c2 (img-b, x=2), c3 (img-b).
    /// Returns c1 as echoed by Create.
    async fn seed(&mut self) -> Container {
        let ns = self.ns.clone();
        let c1 = create(&mut self.cc, &ns, container("c1", "img-a", &[("x", "1")])).await;
        create(&mut self.cc, &ns, container("c2", "img-b", &[("x", "2")])).await;
        create(&mut self.cc, &ns, container("c3", "img-b", &[])).await;
        c1
    }

    /// Containers.Update of `ctr` with `mask` (None: replace the mutable fields).
    async fn update(
        &mut self,
        ctr: Container,
        mask: Option<&str>,
    ) -> Result<Container, tonic::Status> {
        self.cc
            .update(req(
                &self.ns,
                UpdateContainerRequest {
                    container: Some(ctr),
                    update_mask: mask.map(|m| prost_types::FieldMask {
                        paths: vec![m.into()],
                    }),
                },
            ))
            .await
            .map(|r| r.into_inner().container.expect("container echoed"))
    }
}

async fn ids_in(c: &mut ContainersClient<Channel>, ns: &str, filters: &[&str]) -> Vec<String> {
    let resp = c
        .list(req(
            ns,
            ListContainersRequest {
                filters: filters.iter().map(|s| s.to_string()).collect(),
            },
        ))
        .await
        .expect("list")
        .into_inner();
    let mut ids: Vec<String> = resp.containers.into_iter().map(|c| c.id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_requests_without_namespace_or_with_invalid_fields_are_refused() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = Fx::new("daemon_core_ctr_invalid").await;
    let no_ns = fx
        .cc
        .get(tonic::Request::new(GetContainerRequest { id: "x".into() }))
        .await;
    assert_eq!(code(no_ns), Code::FailedPrecondition);
    for bad in ["bad id", "-x", "a..b", &"x".repeat(77)] {
        assert_eq!(
            fx.create_code(container(bad, "", &[])).await,
            Code::InvalidArgument,
            "{bad}"
        );
    }
    let mut no_rt = container("nort", "", &[]);
    no_rt.runtime = None;
    assert_eq!(fx.create_code(no_rt).await, Code::InvalidArgument);
    let mut no_spec = container("nospec", "", &[]);
    no_spec.spec = None;
    assert_eq!(fx.create_code(no_spec).await, Code::InvalidArgument);
    assert!(fx.ids(&[]).await.is_empty(), "nothing half-created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_create_echoes_timestamps_refuses_duplicates_and_get_returns_the_spec() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = Fx::new("daemon_core_ctr_create").await;
    let c1 = fx.seed().await;
    assert!(c1.created_at.is_some_and(|t| t.seconds > 1_700_000_000));
    assert_eq!(c1.created_at, c1.updated_at);
    assert_eq!(
        fx.create_code(container("c1", "", &[])).await,
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            fx.cc
                .get(req(&fx.ns, GetContainerRequest { id: "nope".into() }))
                .await
        ),
        Code::NotFound
    );
    let got = fx
        .cc
        .get(req(&fx.ns, GetContainerRequest { id: "c1".into() }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        got.container.expect("c").spec.expect("spec").value,
        br#"{"ociVersion":"1.0.2"}"#.to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_list_filters_select_by_label_image_id_and_runtime() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = Fx::new("daemon_core_ctr_filters").await;
    fx.seed().await;
    assert_eq!(fx.ids(&["labels.x==1"]).await, vec!["c1"]);
    assert_eq!(fx.ids(&["image==img-b"]).await, vec!["c2", "c3"]);
    assert_eq!(fx.ids(&["labels.x"]).await, vec!["c1", "c2"]);
    assert_eq!(fx.ids(&["image==img-b,labels.x==2"]).await, vec!["c2"]);
    assert_eq!(fx.ids(&["id==c1", "id==c3"]).await, vec!["c1", "c3"]);
    assert_eq!(fx.ids(&["id~=^c[23]$"]).await, vec!["c2", "c3"]);
    assert_eq!(
        fx.ids(&["runtime.name==io.containerd.runc.v2"]).await,
        vec!["c1", "c2", "c3"]
    );
    assert_eq!(fx.ids(&["id!=c1"]).await, vec!["c2", "c3"]);
    let other = berth_tests::unique_id("other");
    assert!(ids_in(&mut fx.cc, &other, &[]).await.is_empty());
    let bad_filter = fx
        .cc
        .list(req(
            &fx.ns,
            ListContainersRequest {
                filters: vec!["id~=(".into()],
            },
        ))
        .await;
    assert_eq!(code(bad_filter), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_list_stream_applies_the_filters() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = Fx::new("daemon_core_ctr_stream").await;
    fx.seed().await;
    let stream = fx
        .cc
        .list_stream(req(
            &fx.ns,
            ListContainersRequest {
                filters: vec!["image==img-b".into()],
            },
        ))
        .await
        .expect("list stream")
        .into_inner();
    let streamed: Vec<String> = stream
        .map(|m| m.expect("item").container.expect("c").id)
        .collect()
        .await;
    assert_eq!(streamed, vec!["c2", "c3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_update_applies_masks_and_refuses_id_and_runtime_changes() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = Fx::new("daemon_core_ctr_update").await;
    fx.seed().await;
    let mut u = container("c1", "img-new", &[("y", "9")]);
    let r = fx
        .update(u.clone(), Some("labels.y"))
        .await
        .expect("update labels.y");
    assert_eq!(r.labels.get("x").map(String::as_str), Some("1"));
    assert_eq!(r.labels.get("y").map(String::as_str), Some("9"));
    assert_eq!(r.image, "img-a");
    let (ut, ct) = (r.updated_at.expect("t"), r.created_at.expect("t"));
    assert!(
        (ut.seconds, ut.nanos) > (ct.seconds, ct.nanos),
        "updated_at moves on"
    );
    let r = fx
        .update(u.clone(), Some("image"))
        .await
        .expect("update image");
    assert_eq!(r.image, "img-new");
    // No mask: mutable fields replaced.
    u.labels = [("z".to_string(), "3".to_string())].into();
    let r = fx.update(u.clone(), None).await.expect("replace");
    assert_eq!(r.labels.len(), 1);
    assert_eq!(r.labels.get("z").map(String::as_str), Some("3"));
    assert_eq!(
        code(fx.update(u.clone(), Some("id")).await),
        Code::InvalidArgument
    );
    let mut other_rt = u.clone();
    other_rt.runtime = Some(Runtime {
        name: "other".into(),
        options: None,
    });
    assert_eq!(code(fx.update(other_rt, None).await), Code::InvalidArgument);
    assert_eq!(
        code(fx.update(container("nope", "", &[]), None).await),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_delete_removes_it_and_a_second_delete_is_not_found() {
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = Fx::new("daemon_core_ctr_delete").await;
    fx.seed().await;
    for id in ["c1", "c2", "c3"] {
        fx.cc
            .delete(req(&fx.ns, DeleteContainerRequest { id: id.into() }))
            .await
            .expect("delete");
    }
    assert_eq!(
        code(
            fx.cc
                .delete(req(&fx.ns, DeleteContainerRequest { id: "c1".into() }))
                .await
        ),
        Code::NotFound
    );
    assert!(fx.ids(&[]).await.is_empty());
}
