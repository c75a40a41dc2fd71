//! berthd's Events service through gRPC: Subscribe with containerd filters (`==`, `~=`, `,` AND, several
//! strings OR, `event.<field>`), Publish validation, Forward. Root only.

use std::time::Duration;

use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::Envelope;
use berth_tests::grpc::{code, container, create, req};
use berth_tests::{Daemon, TestDir};
use tokio_stream::StreamExt;
use tonic::Code;

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
