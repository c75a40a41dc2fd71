//! berthd core services through gRPC with containerd-client's clients: namespaces (CRUD, lazy creation),
//! containers (CRUD, masks, filters, error codes), leases, introspection, and events (Subscribe filters, Publish,
//! Forward). Each test starts its own berthd on a temp root and socket; root only.

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::introspection_client::IntrospectionClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::namespaces_client::NamespacesClient;
use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::Envelope;
use berth_tests::{Daemon, TestDir};
use tokio_stream::StreamExt;
use tonic::Code;

fn req<T>(ns: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().expect("ascii namespace"));
    r.set_timeout(Duration::from_secs(30));
    r
}

fn container(id: &str, image: &str, labels: &[(&str, &str)]) -> Container {
    Container {
        id: id.into(),
        image: image.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: berth_proto::SPEC_TYPE_URL.into(),
            value: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
        }),
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

async fn create(
    c: &mut ContainersClient<tonic::transport::Channel>,
    ns: &str,
    ctr: Container,
) -> Container {
    c.create(req(
        ns,
        CreateContainerRequest {
            container: Some(ctr),
        },
    ))
    .await
    .expect("create container")
    .into_inner()
    .container
    .expect("container echoed")
}

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

async fn next_event(s: &mut tonic::Streaming<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("event ok")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_subscribe_filters_publish_forward() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_events_filters");
    let daemon = Daemon::start(dir.path());
    let ch = daemon.channel().await;
    let mut ec = EventsClient::new(ch.clone());
    let mut cc = ContainersClient::new(ch);
    let ns = berth_tests::unique_id("core-ev");
    let other = berth_tests::unique_id("core-ev-other");

    let sub = |filters: Vec<String>| {
        let mut ec = ec.clone();
        async move {
            let mut r = tonic::Request::new(SubscribeRequest { filters });
            r.metadata_mut()
                .insert("containerd-namespace", "default".parse().expect("ascii"));
            ec.subscribe(r).await.expect("subscribe").into_inner()
        }
    };
    let mut all_ns = sub(vec![format!("namespace=={ns}")]).await;
    let mut creates = sub(vec![format!(
        "topic==\"/containers/create\",namespace=={ns}"
    )])
    .await;
    let mut or = sub(vec![
        format!("topic==/containers/delete,namespace=={ns}"),
        format!("namespace=={other}"),
    ])
    .await;
    let mut re = sub(vec![format!(
        "topic~=\"^/containers/(create|delete)$\",namespace~=^{ns}$"
    )])
    .await;
    let mut by_field = sub(vec![format!("namespace=={ns},event.id==c2")]).await;

    create(&mut cc, &ns, container("c1", "img", &[])).await;
    create(&mut cc, &ns, container("c2", "img", &[])).await;
    cc.update(req(
        &ns,
        UpdateContainerRequest {
            container: Some(container("c1", "img2", &[])),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["image".into()],
            }),
        },
    ))
    .await
    .expect("update");
    cc.delete(req(&ns, DeleteContainerRequest { id: "c1".into() }))
        .await
        .expect("delete");
    ec.publish(req(
        &other,
        PublishRequest {
            topic: "/test/ping".into(),
            event: Some(berth_proto::to_any(
                &berth_proto::containerd_client::events::ContainerDelete { id: "p".into() },
            )),
        },
    ))
    .await
    .expect("publish");

    let mut got = Vec::new();
    for _ in 0..4 {
        let e = next_event(&mut all_ns).await;
        assert!(e.timestamp.is_some());
        assert_eq!(e.namespace, ns);
        got.push(e.topic);
    }
    assert_eq!(
        got,
        [
            "/containers/create",
            "/containers/create",
            "/containers/update",
            "/containers/delete"
        ]
    );
    let e = next_event(&mut creates).await;
    assert_eq!(e.topic, "/containers/create");
    assert_eq!(
        e.event.as_ref().map(|a| a.type_url.as_str()),
        Some("containerd.events.ContainerCreate")
    );
    assert_eq!(next_event(&mut creates).await.topic, "/containers/create");
    let e = next_event(&mut or).await;
    assert_eq!(
        (e.namespace.as_str(), e.topic.as_str()),
        (ns.as_str(), "/containers/delete")
    );
    let e = next_event(&mut or).await;
    assert_eq!(
        (e.namespace.as_str(), e.topic.as_str()),
        (other.as_str(), "/test/ping")
    );
    let mut re_topics = Vec::new();
    for _ in 0..3 {
        re_topics.push(next_event(&mut re).await.topic);
    }
    assert_eq!(
        re_topics,
        [
            "/containers/create",
            "/containers/create",
            "/containers/delete"
        ]
    );
    let e = next_event(&mut by_field).await;
    assert_eq!(e.topic, "/containers/create");

    // Nothing more arrives for the narrow filters.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), creates.next())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), by_field.next())
            .await
            .is_err()
    );

    // Publish validation and Forward.
    let bad = ec
        .publish(req(
            &ns,
            PublishRequest {
                topic: "no-slash".into(),
                event: Some(prost_types::Any::default()),
            },
        ))
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);
    let no_ns = ec
        .publish(tonic::Request::new(PublishRequest {
            topic: "/a/b".into(),
            event: Some(prost_types::Any::default()),
        }))
        .await;
    assert_eq!(code(no_ns), Code::FailedPrecondition);
    ec.forward(req(
        &ns,
        ForwardRequest {
            envelope: Some(Envelope {
                timestamp: None,
                namespace: ns.clone(),
                topic: "/test/forwarded".into(),
                event: Some(prost_types::Any {
                    type_url: "x.Y".into(),
                    value: vec![],
                }),
            }),
        },
    ))
    .await
    .expect("forward");
    let e = next_event(&mut all_ns).await;
    assert_eq!(e.topic, "/test/forwarded");
    assert!(e.timestamp.is_some());
}
