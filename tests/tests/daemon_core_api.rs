//! berthd core services through gRPC with containerd-client's clients: namespaces (CRUD, lazy creation) and
//! containers (CRUD, masks, filters, error codes). Each test starts its own berthd on a temp root and socket;
//! root only.

use std::collections::HashMap;

use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd_client::services::v1::*;
use berth_tests::grpc::{code, container, create, req};
use berth_tests::{Daemon, TestDir};
use tokio_stream::StreamExt;
use tonic::Code;

async fn ids(
    c: &mut ContainersClient<tonic::transport::Channel>,
    ns: &str,
    filters: &[&str],
) -> Vec<String> {
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
async fn namespaces_crud_and_lazy_creation() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_namespaces");
    let daemon = Daemon::start(dir.path());
    let ch = daemon.channel().await;
    let mut nsc = NamespacesClient::new(ch.clone());
    let mut cc = ContainersClient::new(ch);
    let ns = berth_tests::unique_id("core-ns");
    let lazy = berth_tests::unique_id("core-lazy");

    // Unknown namespaces read as empty, but Get says NotFound.
    let list = nsc
        .list(req(&ns, ListNamespacesRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(list.namespaces.is_empty(), "{list:?}");
    assert_eq!(
        code(
            nsc.get(req(&ns, GetNamespaceRequest { name: lazy.clone() }))
                .await
        ),
        Code::NotFound
    );
    assert!(ids(&mut cc, &lazy, &[]).await.is_empty());

    // The first write creates it.
    create(&mut cc, &lazy, container("c1", "", &[])).await;
    let got = nsc
        .get(req(&ns, GetNamespaceRequest { name: lazy.clone() }))
        .await
        .expect("get lazy");
    assert_eq!(got.into_inner().namespace.expect("ns").name, lazy);

    // Explicit CRUD with labels.
    let labels: HashMap<String, String> = [("a".to_string(), "1".to_string())].into();
    nsc.create(req(
        &ns,
        CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: ns.clone(),
                labels: labels.clone(),
            }),
        },
    ))
    .await
    .expect("create ns");
    let dup = nsc
        .create(req(
            &ns,
            CreateNamespaceRequest {
                namespace: Some(Namespace {
                    name: ns.clone(),
                    labels,
                }),
            },
        ))
        .await;
    assert_eq!(code(dup), Code::AlreadyExists);
    let bad = nsc
        .create(req(
            &ns,
            CreateNamespaceRequest {
                namespace: Some(Namespace {
                    name: "bad name".into(),
                    labels: HashMap::new(),
                }),
            },
        ))
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);

    let upd = Namespace {
        name: ns.clone(),
        labels: [("b".to_string(), "2".to_string())].into(),
    };
    nsc.update(req(
        &ns,
        UpdateNamespaceRequest {
            namespace: Some(upd),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.b".into()],
            }),
        },
    ))
    .await
    .expect("update ns");
    let got = nsc
        .get(req(&ns, GetNamespaceRequest { name: ns.clone() }))
        .await
        .expect("get")
        .into_inner();
    let got_labels = got.namespace.expect("ns").labels;
    assert_eq!(got_labels.get("a").map(String::as_str), Some("1"));
    assert_eq!(got_labels.get("b").map(String::as_str), Some("2"));
    // labels.a with no value removes it.
    nsc.update(req(
        &ns,
        UpdateNamespaceRequest {
            namespace: Some(Namespace {
                name: ns.clone(),
                labels: HashMap::new(),
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.a".into()],
            }),
        },
    ))
    .await
    .expect("remove label");
    let got = nsc
        .get(req(&ns, GetNamespaceRequest { name: ns.clone() }))
        .await
        .expect("get")
        .into_inner();
    assert!(!got.namespace.expect("ns").labels.contains_key("a"));

    let mut names: Vec<String> = nsc
        .list(req(&ns, ListNamespacesRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    let mut want = vec![ns.clone(), lazy.clone()];
    want.sort();
    assert_eq!(names, want);

    // A non-empty namespace cannot be deleted; an empty one can, once.
    assert_eq!(
        code(
            nsc.delete(req(&ns, DeleteNamespaceRequest { name: lazy.clone() }))
                .await
        ),
        Code::FailedPrecondition
    );
    cc.delete(req(&lazy, DeleteContainerRequest { id: "c1".into() }))
        .await
        .expect("delete container");
    nsc.delete(req(&ns, DeleteNamespaceRequest { name: lazy.clone() }))
        .await
        .expect("delete empty ns");
    assert_eq!(
        code(
            nsc.delete(req(&ns, DeleteNamespaceRequest { name: lazy.clone() }))
                .await
        ),
        Code::NotFound
    );
    nsc.delete(req(&ns, DeleteNamespaceRequest { name: ns.clone() }))
        .await
        .expect("delete ns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_crud_masks_filters_and_codes() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_containers");
    let daemon = Daemon::start(dir.path());
    let mut cc = ContainersClient::new(daemon.channel().await);
    let ns = berth_tests::unique_id("core-ctr");

    // Validation.
    let no_ns = cc
        .get(tonic::Request::new(GetContainerRequest { id: "x".into() }))
        .await;
    assert_eq!(code(no_ns), Code::FailedPrecondition);
    for bad in ["bad id", "-x", "a..b", &"x".repeat(77)] {
        let r = cc
            .create(req(
                &ns,
                CreateContainerRequest {
                    container: Some(container(bad, "", &[])),
                },
            ))
            .await;
        assert_eq!(code(r), Code::InvalidArgument, "{bad}");
    }
    let mut no_rt = container("nort", "", &[]);
    no_rt.runtime = None;
    assert_eq!(
        code(
            cc.create(req(
                &ns,
                CreateContainerRequest {
                    container: Some(no_rt)
                }
            ))
            .await
        ),
        Code::InvalidArgument
    );
    let mut no_spec = container("nospec", "", &[]);
    no_spec.spec = None;
    assert_eq!(
        code(
            cc.create(req(
                &ns,
                CreateContainerRequest {
                    container: Some(no_spec)
                }
            ))
            .await
        ),
        Code::InvalidArgument
    );
    assert!(
        ids(&mut cc, &ns, &[]).await.is_empty(),
        "nothing half-created"
    );

    // Create, echo with timestamps, duplicates.
    let c1 = create(&mut cc, &ns, container("c1", "img-a", &[("x", "1")])).await;
    assert!(c1.created_at.is_some_and(|t| t.seconds > 1_700_000_000));
    assert_eq!(c1.created_at, c1.updated_at);
    assert_eq!(
        code(
            cc.create(req(
                &ns,
                CreateContainerRequest {
                    container: Some(container("c1", "", &[]))
                }
            ))
            .await
        ),
        Code::AlreadyExists
    );
    create(&mut cc, &ns, container("c2", "img-b", &[("x", "2")])).await;
    create(&mut cc, &ns, container("c3", "img-b", &[])).await;
    assert_eq!(
        code(
            cc.get(req(&ns, GetContainerRequest { id: "nope".into() }))
                .await
        ),
        Code::NotFound
    );
    let got = cc
        .get(req(&ns, GetContainerRequest { id: "c1".into() }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        got.container.expect("c").spec.expect("spec").value,
        br#"{"ociVersion":"1.0.2"}"#.to_vec()
    );

    // Filters.
    assert_eq!(ids(&mut cc, &ns, &["labels.x==1"]).await, vec!["c1"]);
    assert_eq!(ids(&mut cc, &ns, &["image==img-b"]).await, vec!["c2", "c3"]);
    assert_eq!(ids(&mut cc, &ns, &["labels.x"]).await, vec!["c1", "c2"]);
    assert_eq!(
        ids(&mut cc, &ns, &["image==img-b,labels.x==2"]).await,
        vec!["c2"]
    );
    assert_eq!(
        ids(&mut cc, &ns, &["id==c1", "id==c3"]).await,
        vec!["c1", "c3"]
    );
    assert_eq!(ids(&mut cc, &ns, &["id~=^c[23]$"]).await, vec!["c2", "c3"]);
    assert_eq!(
        ids(&mut cc, &ns, &["runtime.name==io.containerd.runc.v2"]).await,
        vec!["c1", "c2", "c3"]
    );
    assert_eq!(ids(&mut cc, &ns, &["id!=c1"]).await, vec!["c2", "c3"]);
    assert!(ids(&mut cc, &berth_tests::unique_id("other"), &[])
        .await
        .is_empty());
    let bad_filter = cc
        .list(req(
            &ns,
            ListContainersRequest {
                filters: vec!["id~=(".into()],
            },
        ))
        .await;
    assert_eq!(code(bad_filter), Code::InvalidArgument);
    let stream = cc
        .list_stream(req(
            &ns,
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

    // Update with masks.
    let mut u = container("c1", "img-new", &[("y", "9")]);
    let r = cc
        .update(req(
            &ns,
            UpdateContainerRequest {
                container: Some(u.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.y".into()],
                }),
            },
        ))
        .await
        .expect("update labels.y")
        .into_inner()
        .container
        .expect("c");
    assert_eq!(r.labels.get("x").map(String::as_str), Some("1"));
    assert_eq!(r.labels.get("y").map(String::as_str), Some("9"));
    assert_eq!(r.image, "img-a");
    let (ut, ct) = (r.updated_at.expect("t"), r.created_at.expect("t"));
    assert!(
        (ut.seconds, ut.nanos) > (ct.seconds, ct.nanos),
        "updated_at moves on"
    );
    let r = cc
        .update(req(
            &ns,
            UpdateContainerRequest {
                container: Some(u.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["image".into()],
                }),
            },
        ))
        .await
        .expect("update image")
        .into_inner()
        .container
        .expect("c");
    assert_eq!(r.image, "img-new");
    // No mask: mutable fields replaced.
    u.labels = [("z".to_string(), "3".to_string())].into();
    let r = cc
        .update(req(
            &ns,
            UpdateContainerRequest {
                container: Some(u.clone()),
                update_mask: None,
            },
        ))
        .await
        .expect("replace")
        .into_inner()
        .container
        .expect("c");
    assert_eq!(r.labels.len(), 1);
    assert_eq!(r.labels.get("z").map(String::as_str), Some("3"));
    let bad_mask = cc
        .update(req(
            &ns,
            UpdateContainerRequest {
                container: Some(u.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["id".into()],
                }),
            },
        ))
        .await;
    assert_eq!(code(bad_mask), Code::InvalidArgument);
    let mut other_rt = u.clone();
    other_rt.runtime = Some(Runtime {
        name: "other".into(),
        options: None,
    });
    let immut = cc
        .update(req(
            &ns,
            UpdateContainerRequest {
                container: Some(other_rt),
                update_mask: None,
            },
        ))
        .await;
    assert_eq!(code(immut), Code::InvalidArgument);
    let missing = cc
        .update(req(
            &ns,
            UpdateContainerRequest {
                container: Some(container("nope", "", &[])),
                update_mask: None,
            },
        ))
        .await;
    assert_eq!(code(missing), Code::NotFound);

    // Delete.
    for id in ["c1", "c2", "c3"] {
        cc.delete(req(&ns, DeleteContainerRequest { id: id.into() }))
            .await
            .expect("delete");
    }
    assert_eq!(
        code(
            cc.delete(req(&ns, DeleteContainerRequest { id: "c1".into() }))
                .await
        ),
        Code::NotFound
    );
    assert!(ids(&mut cc, &ns, &[]).await.is_empty());
}
