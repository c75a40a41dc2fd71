//! berthd's Content, Leases, Snapshots and Diff services through containerd's API: writes that verify,
//! resume and lock; blobs visible per namespace; leases keeping content until they go and GC taking it
//! after; hostile layers through Diff.Apply changing nothing outside the snapshot. Root only.

use berth_proto::containerd_client::services::v1::content_client::ContentClient;
use berth_proto::containerd_client::services::v1::diff_client::DiffClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use berth_proto::containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::Descriptor;
use berth_tests::grpc::{code, req};
use berth_tests::oci_layout::sha256_digest;
use berth_tests::{Daemon, TestDir};
use tonic::transport::Channel;
use tonic::Code;

fn with_lease<T>(ns: &str, lease: &str, msg: T) -> tonic::Request<T> {
    let mut r = req(ns, msg);
    r.metadata_mut()
        .insert("containerd-lease", lease.parse().expect("ascii lease"));
    r
}

fn stat(r#ref: &str, total: i64, expected: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r#ref.into(),
        total,
        expected: expected.into(),
        ..Default::default()
    }
}

fn write(offset: i64, data: &[u8]) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Write as i32,
        offset,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn commit(total: i64, expected: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Commit as i32,
        total,
        expected: expected.into(),
        ..Default::default()
    }
}

/// Send `msgs` on one Write stream; the replies, or the first error.
async fn write_stream(
    c: &mut ContentClient<Channel>,
    request: impl FnOnce(
        tokio_stream::Iter<std::vec::IntoIter<WriteContentRequest>>,
    )
        -> tonic::Request<tokio_stream::Iter<std::vec::IntoIter<WriteContentRequest>>>,
    msgs: Vec<WriteContentRequest>,
) -> Result<Vec<WriteContentResponse>, tonic::Status> {
    let mut stream = c
        .write(request(tokio_stream::iter(msgs)))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        out.push(r);
    }
    Ok(out)
}

async fn info(c: &mut ContentClient<Channel>, ns: &str, d: &str) -> Result<Info, tonic::Status> {
    c.info(req(ns, InfoRequest { digest: d.into() }))
        .await
        .map(|r| r.into_inner().info.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_writes_verify_resume_lock_and_stay_per_namespace() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("di-content");
    let d = Daemon::start(dir.path());
    let mut c = ContentClient::new(d.channel().await);
    let ns = berth_tests::unique_id("dic");
    // Work under leases, as clients do: unreferenced content is garbage.
    let new_lease = |ns: String| {
        let ch = d.channel();
        async move {
            LeasesClient::new(ch.await)
                .create(req(&ns, CreateRequest::default()))
                .await
                .expect("lease")
                .into_inner()
                .lease
                .expect("lease")
                .id
        }
    };
    let lease = new_lease(ns.clone()).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256_digest(&data);
    let n = data.len() as i64;

    // A first write stops halfway: the ingest keeps what it got.
    let half = n / 2;
    let r = write_stream(
        &mut c,
        |s| with_lease(&ns, &lease, s),
        vec![stat("blob-1", n, &digest), write(0, &data[..half as usize])],
    )
    .await
    .expect("first half");
    assert_eq!(r.last().map(|w| w.offset), Some(half));
    let st = c
        .status(req(
            &ns,
            StatusRequest {
                r#ref: "blob-1".into(),
            },
        ))
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(
        (st.offset, st.total, st.expected.as_str()),
        (half, n, digest.as_str())
    );
    let all = c
        .list_statuses(req(
            &ns,
            ListStatusesRequest {
                filters: vec![String::new()],
            },
        ))
        .await
        .expect("statuses")
        .into_inner()
        .statuses;
    assert_eq!(all.len(), 1);

    // While one writer holds the ref, another is told to retry.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(stat("blob-1", n, &digest)).await.expect("send");
    let mut held = c
        .write(with_lease(
            &ns,
            &lease,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .expect("open")
        .into_inner();
    let first = held.message().await.expect("stat").expect("reply");
    assert_eq!(first.offset, half, "resumes where the first write stopped");
    let mut c2 = ContentClient::new(d.channel().await);
    let locked = write_stream(
        &mut c2,
        |s| with_lease(&ns, &lease, s),
        vec![stat("blob-1", n, &digest)],
    )
    .await;
    assert_eq!(code(locked), Code::Unavailable);
    tx.send(write(half, &data[half as usize..]))
        .await
        .expect("send");
    assert_eq!(
        held.message().await.expect("write").expect("reply").offset,
        n
    );
    tx.send(commit(n, &digest)).await.expect("send");
    let done = held.message().await.expect("commit").expect("reply");
    assert_eq!((done.offset, done.digest.as_str()), (n, digest.as_str()));
    drop(tx);

    let i = info(&mut c, &ns, &digest).await.expect("info");
    assert_eq!(i.size, n);
    let mut rs = c
        .read(req(
            &ns,
            ReadContentRequest {
                digest: digest.clone(),
                offset: 7,
                size: 5,
            },
        ))
        .await
        .expect("read")
        .into_inner();
    let chunk = rs.message().await.expect("chunk").expect("data");
    assert_eq!(chunk.data, data[7..12].to_vec());
    // Stored: a writer of the same digest is told so at once.
    let again = write_stream(
        &mut c,
        |s| with_lease(&ns, &lease, s),
        vec![stat("blob-2", n, &digest)],
    )
    .await;
    assert_eq!(code(again), Code::AlreadyExists);

    // A wrong digest stores nothing and names both digests.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let bad = write_stream(
        &mut c,
        |s| with_lease(&ns, &lease, s),
        vec![stat("blob-3", 3, ""), write(0, b"abc"), commit(3, &wrong)],
    )
    .await;
    let err = bad.expect_err("digest mismatch");
    assert!(
        err.message().contains(&wrong) && err.message().contains(&sha256_digest(b"abc")),
        "{err:?}"
    );
    assert_eq!(code(info(&mut c, &ns, &wrong).await), Code::NotFound);
    assert_eq!(
        code(info(&mut c, &ns, &sha256_digest(b"abc")).await),
        Code::NotFound
    );
    let gone = c
        .status(req(
            &ns,
            StatusRequest {
                r#ref: "blob-3".into(),
            },
        ))
        .await;
    assert_eq!(code(gone), Code::NotFound, "the bad ingest is discarded");

    // Labels, with a field mask, and a filtered list.
    let upd = c
        .update(req(
            &ns,
            UpdateRequest {
                info: Some(Info {
                    digest: digest.clone(),
                    labels: [("a.b".to_string(), "v".to_string())].into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.a.b".into()],
                }),
            },
        ))
        .await
        .expect("update")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(upd.labels.get("a.b").map(String::as_str), Some("v"));
    assert_eq!(upd.size, n);
    let mut listed = c
        .list(req(
            &ns,
            ListContentRequest {
                filters: vec!["labels.\"a.b\"==v".into()],
            },
        ))
        .await
        .expect("list")
        .into_inner();
    let page = listed.message().await.expect("page").expect("some");
    assert_eq!(page.info.len(), 1);

    // Another namespace does not see it; writing it there costs no bytes (the blob is shared).
    let other = berth_tests::unique_id("dic2");
    let other_lease = new_lease(other.clone()).await;
    assert_eq!(code(info(&mut c, &other, &digest).await), Code::NotFound);
    let r = write_stream(
        &mut c,
        |s| with_lease(&other, &other_lease, s),
        vec![stat("shared", n, &digest), commit(n, &digest)],
    )
    .await
    .expect("shared write");
    assert_eq!(r[0].offset, n, "reported complete at once");
    assert_eq!(info(&mut c, &other, &digest).await.expect("info").size, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_content_until_they_go_then_gc_takes_it() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("di-lease");
    let d = Daemon::start(dir.path());
    let ch = d.channel().await;
    let mut c = ContentClient::new(ch.clone());
    let mut l = LeasesClient::new(ch);
    let ns = berth_tests::unique_id("dil");
    let lease = l
        .create(req(&ns, CreateRequest::default()))
        .await
        .expect("lease")
        .into_inner()
        .lease
        .expect("lease")
        .id;
    let data = b"held by a lease".to_vec();
    let digest = sha256_digest(&data);
    write_stream(
        &mut c,
        |s| with_lease(&ns, &lease, s),
        vec![
            stat("leased", data.len() as i64, &digest),
            write(0, &data),
            commit(data.len() as i64, &digest),
        ],
    )
    .await
    .expect("write under the lease");
    let res = l
        .list_resources(req(&ns, ListResourcesRequest { id: lease.clone() }))
        .await
        .expect("resources")
        .into_inner()
        .resources;
    assert!(
        res.iter().any(|r| r.id == digest && r.r#type == "content"),
        "{res:?}"
    );
    // A collection while the lease lives keeps it.
    let other = l
        .create(req(&ns, CreateRequest::default()))
        .await
        .expect("lease")
        .into_inner()
        .lease
        .expect("lease")
        .id;
    l.delete(req(
        &ns,
        DeleteRequest {
            id: other,
            sync: true,
        },
    ))
    .await
    .expect("sync gc");
    assert!(
        info(&mut c, &ns, &digest).await.is_ok(),
        "kept by its lease"
    );
    let blob = d.root().join("content/blobs/sha256").join(&digest[7..]);
    assert!(blob.exists());
    l.delete(req(
        &ns,
        DeleteRequest {
            id: lease,
            sync: true,
        },
    ))
    .await
    .expect("delete lease");
    assert_eq!(code(info(&mut c, &ns, &digest).await), Code::NotFound);
    assert!(!blob.exists(), "GC removed the bytes");

    // A lease that has expired holds nothing.
    let expired = l
        .create(req(
            &ns,
            CreateRequest {
                id: String::new(),
                labels: [(
                    "containerd.io/gc.expire".to_string(),
                    "2001-01-01T00:00:00Z".to_string(),
                )]
                .into(),
            },
        ))
        .await
        .expect("lease")
        .into_inner()
        .lease
        .expect("lease")
        .id;
    let data = b"held by an expired lease".to_vec();
    let digest = sha256_digest(&data);
    write_stream(
        &mut c,
        |s| with_lease(&ns, &expired, s),
        vec![
            stat("expired", data.len() as i64, &digest),
            write(0, &data),
            commit(data.len() as i64, &digest),
        ],
    )
    .await
    .expect("write");
    let trigger = l
        .create(req(&ns, CreateRequest::default()))
        .await
        .expect("lease")
        .into_inner()
        .lease
        .expect("lease")
        .id;
    l.delete(req(
        &ns,
        DeleteRequest {
            id: trigger,
            sync: true,
        },
    ))
    .await
    .expect("sync gc");
    assert_eq!(code(info(&mut c, &ns, &digest).await), Code::NotFound);
    let left = l
        .list(req(&ns, ListRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .leases;
    assert!(left.is_empty(), "the expired lease is gone: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_through_diff_apply_change_nothing_outside_the_snapshot() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("di-hostile");
    let d = Daemon::start(dir.path());
    let ch = d.channel().await;
    let (mut c, mut s, mut df) = (
        ContentClient::new(ch.clone()),
        SnapshotsClient::new(ch.clone()),
        DiffClient::new(ch),
    );
    let ns = berth_tests::unique_id("dih");
    // As every client does: work under a lease, or GC takes the unreferenced snapshots.
    let lease = LeasesClient::new(d.channel().await)
        .create(req(&ns, CreateRequest::default()))
        .await
        .expect("lease")
        .into_inner()
        .lease
        .expect("lease")
        .id;
    for snapshotter in ["overlayfs", "native"] {
        // Learn where this snapshotter's next snapshot lives, to aim the attacks at it.
        let probe = s
            .prepare(with_lease(
                &ns,
                &lease,
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: format!("probe-{snapshotter}"),
                    ..Default::default()
                },
            ))
            .await
            .expect("probe")
            .into_inner()
            .mounts;
        let probe_dir = std::path::PathBuf::from(&probe[0].source);
        let base = probe_dir
            .parent()
            .and_then(|p| p.parent())
            .expect("snapshot root")
            .to_path_buf();
        let marker = berth_tests::unique_id("m");
        let first_id: u64 = probe_dir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
            .expect("numeric snapshot dir")
            + 1;
        let listing = |p: &std::path::Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let names: Vec<&str> =
            berth_tests::hostile::hostile_layers(&base.join("x").join("fs"), &marker)
                .iter()
                .map(|l| l.name)
                .collect();
        // Each Prepare gets the next snapshot number: aim each attack at the snapshot it will hit.
        for (id, name) in (first_id..).zip(names) {
            let target = base.join(id.to_string()).join("fs");
            let victim = berth_tests::hostile::hardlink_victim(&target, &marker);
            let layer = berth_tests::hostile::hostile_layers(&target, &marker)
                .into_iter()
                .find(|l| l.name == name)
                .expect("same layer");
            let gz = berth_tests::archive::gzip(&layer.tar);
            let digest = sha256_digest(&gz);
            let n = gz.len() as i64;
            write_stream(
                &mut c,
                |st| with_lease(&ns, &lease, st),
                vec![
                    stat(&format!("l-{digest}"), n, &digest),
                    write(0, &gz),
                    commit(n, &digest),
                ],
            )
            .await
            .or_else(|e| {
                if e.code() == Code::AlreadyExists {
                    Ok(Vec::new())
                } else {
                    Err(e)
                }
            })
            .expect("layer blob");
            let key = format!("{snapshotter}-{}", layer.name);
            let mounts = s
                .prepare(with_lease(
                    &ns,
                    &lease,
                    PrepareSnapshotRequest {
                        snapshotter: snapshotter.into(),
                        key: key.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("prepare")
                .into_inner()
                .mounts;
            assert_eq!(
                std::path::PathBuf::from(&mounts[0].source),
                target,
                "the attack aims at this snapshot"
            );
            if layer.name == "hardlink-escape" {
                std::fs::write(&victim, b"victim").expect("victim");
            }
            let around = listing(target.parent().and_then(|p| p.parent()).expect("base"));
            let _ = df
                .apply(req(
                    &ns,
                    ApplyRequest {
                        diff: Some(Descriptor {
                            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                            digest: digest.clone(),
                            size: n,
                            annotations: Default::default(),
                        }),
                        mounts,
                        ..Default::default()
                    },
                ))
                .await;
            for p in &layer.must_not_exist {
                assert!(!p.exists(), "{}: {} was created", layer.name, p.display());
            }
            assert_eq!(
                listing(target.parent().and_then(|p| p.parent()).expect("base")),
                around,
                "{}: nothing new next to the snapshots",
                layer.name
            );
            if layer.name == "hardlink-escape" {
                assert_eq!(std::fs::read(&victim).expect("victim"), b"victim");
                assert_eq!(
                    std::os::unix::fs::MetadataExt::nlink(
                        &std::fs::metadata(&victim).expect("meta")
                    ),
                    1,
                    "the victim is not linked into the snapshot"
                );
                std::fs::remove_file(&victim).expect("remove victim");
            }
            s.remove(req(
                &ns,
                RemoveSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key,
                },
            ))
            .await
            .expect("remove");
        }
        // berthd still serves.
        assert!(info(&mut c, &ns, &sha256_digest(b"none")).await.is_err());
    }
}
