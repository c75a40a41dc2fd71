//! berthd's Namespaces service through gRPC with containerd-client's clients: CRUD with labels, lazy creation by
//! the first write, deletion only when empty. The Containers service is in `daemon_core_containers.rs`. Each
//! test starts its own berthd on a temp root and socket; root only.

use std::collections::HashMap;

use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd_client::services::v1::*;
use berth_tests::grpc::{code, container, create, req};
use berth_tests::{Daemon, TestDir};
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
