//! berthd's Leases (create with generated ids, filters, resources, codes) and Introspection (plugins, a server
//! uuid that persists across restarts) through gRPC. Root only.

use std::collections::HashMap;

use berth_proto::containerd_client::services::v1::introspection_client::IntrospectionClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::*;
use berth_tests::grpc::{code, req};
use berth_tests::{Daemon, TestDir};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_resources() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_leases");
    let daemon = Daemon::start(dir.path());
    let mut lc = LeasesClient::new(daemon.channel().await);
    let ns = berth_tests::unique_id("core-lease");

    let gen = lc
        .create(req(
            &ns,
            CreateRequest {
                id: String::new(),
                labels: HashMap::new(),
            },
        ))
        .await
        .expect("create generated")
        .into_inner()
        .lease
        .expect("lease");
    assert!(!gen.id.is_empty());
    assert!(gen.created_at.is_some_and(|t| t.seconds > 1_700_000_000));
    let labels: HashMap<String, String> = [(
        "containerd.io/gc.expire".to_string(),
        "2030-01-01T00:00:00Z".to_string(),
    )]
    .into();
    // Lease ids are free-form (containerd's generated ones contain '_').
    let id = "123456-_ab".to_string();
    let l = lc
        .create(req(
            &ns,
            CreateRequest {
                id: id.clone(),
                labels: labels.clone(),
            },
        ))
        .await
        .expect("create named")
        .into_inner()
        .lease
        .expect("lease");
    assert_eq!(l.id, id);
    assert_eq!(l.labels, labels);
    assert_eq!(
        code(
            lc.create(req(
                &ns,
                CreateRequest {
                    id: id.clone(),
                    labels: HashMap::new()
                }
            ))
            .await
        ),
        Code::AlreadyExists
    );

    let all = lc
        .list(req(&ns, ListRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .leases;
    assert_eq!(all.len(), 2);
    let one = lc
        .list(req(
            &ns,
            ListRequest {
                filters: vec![format!("id=={id}")],
            },
        ))
        .await
        .expect("list filtered")
        .into_inner()
        .leases;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, id);
    let by_label = lc
        .list(req(
            &ns,
            ListRequest {
                filters: vec!["labels.\"containerd.io/gc.expire\"".into()],
            },
        ))
        .await
        .expect("list by label")
        .into_inner()
        .leases;
    assert_eq!(by_label.len(), 1);

    let res = Resource {
        id: "sha256:0123".into(),
        r#type: "content".into(),
    };
    lc.add_resource(req(
        &ns,
        AddResourceRequest {
            id: id.clone(),
            resource: Some(res.clone()),
        },
    ))
    .await
    .expect("add resource");
    let listed = lc
        .list_resources(req(&ns, ListResourcesRequest { id: id.clone() }))
        .await
        .expect("list resources")
        .into_inner()
        .resources;
    assert_eq!(listed, vec![res.clone()]);
    lc.delete_resource(req(
        &ns,
        DeleteResourceRequest {
            id: id.clone(),
            resource: Some(res),
        },
    ))
    .await
    .expect("delete resource");
    let listed = lc
        .list_resources(req(&ns, ListResourcesRequest { id: id.clone() }))
        .await
        .expect("list resources")
        .into_inner()
        .resources;
    assert!(listed.is_empty());
    assert_eq!(
        code(
            lc.add_resource(req(
                &ns,
                AddResourceRequest {
                    id: "nope".into(),
                    resource: Some(Resource {
                        id: "x".into(),
                        r#type: "content".into()
                    })
                }
            ))
            .await
        ),
        Code::NotFound
    );

    lc.delete(req(
        &ns,
        DeleteRequest {
            id: id.clone(),
            sync: false,
        },
    ))
    .await
    .expect("delete");
    assert_eq!(
        code(lc.delete(req(&ns, DeleteRequest { id, sync: false })).await),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_server_uuid_persists() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_introspection");
    let mut daemon = Daemon::start(dir.path());
    let mut ic = IntrospectionClient::new(daemon.channel().await);
    let s = ic
        .server(req("default", ()))
        .await
        .expect("server")
        .into_inner();
    assert_eq!(s.uuid.len(), 36);
    assert_eq!(Some(s.pid as i32), daemon.pid());
    let plugins = ic
        .plugins(req(
            "default",
            PluginsRequest {
                filters: vec!["type==io.containerd.grpc.v1".into()],
            },
        ))
        .await
        .expect("plugins")
        .into_inner()
        .plugins;
    assert!(plugins.iter().any(|p| p.id == "tasks"), "{plugins:?}");
    assert!(plugins.iter().all(|p| p.r#type == "io.containerd.grpc.v1"));
    daemon.restart();
    let mut ic = IntrospectionClient::new(daemon.channel().await);
    let again = ic
        .server(req("default", ()))
        .await
        .expect("server")
        .into_inner();
    assert_eq!(again.uuid, s.uuid);
}
