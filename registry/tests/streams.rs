//! Blob streams: redirects to blob storage on another host (without the registry's Authorization), a
//! stalled body (idle timeout), and a body cut short (an error saying where to resume).

mod common;

use std::time::Duration;

use berth_image::oci::Descriptor;
use berth_registry::{ClientConfig, RegistryClient, RegistryError, RequestOptions};
use berth_tests::oci_layout::busybox_layout;
use berth_tests::registry::Registry;
use berth_tests::{Guard, TestDir};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_host_redirect_drops_authorization() {
    let dir = TestDir::new("reg-redirect");
    let Some(reg) = Registry::start(dir.path()) else {
        return;
    };
    let guard = Guard::new();
    guard.pid(reg.pid().expect("pid"));
    let layout = busybox_layout(&dir.join("layout"));
    reg.push_oci_layout(&layout.path, "x:latest");
    // "Blob storage": a plain proxy on another port.
    let storage = Proxy::start_with(&reg.addr, ProxyOptions::default()).await;
    let front = Proxy::start_with(
        &reg.addr,
        ProxyOptions {
            bearer: Some(Bearer {
                service: "s".into(),
                ..Default::default()
            }),
            redirect_blobs_to: Some(storage.addr.clone()),
            ..Default::default()
        },
    )
    .await;
    let hosts = dir.subdir("hosts");
    write_hosts(
        &hosts,
        &front.addr,
        &format!("server = \"http://{}\"\n", front.addr),
    );
    let r = reference(&format!("{}/x", front.addr));
    let repo = client(Some(&hosts))
        .repository(&r, &RequestOptions::default())
        .expect("repo");
    let layer = &layout.layers[0];
    let desc = Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size as i64,
        ..Default::default()
    };
    let s = repo
        .fetch_blob(&desc, 0)
        .await
        .expect("fetch")
        .verified()
        .expect("verify");
    let mut got = Vec::new();
    let mut s = s;
    while let Some(c) = s.next_chunk().await {
        got.extend_from_slice(&c.expect("chunk"));
    }
    assert_eq!(got, layout.blob(&layer.digest));
    let path = format!("/v2/x/blobs/{}", layer.digest);
    assert!(
        front.count_with_auth("GET", &path) >= 1,
        "{:?}",
        front.counts()
    );
    assert_eq!(storage.count("GET", &path), 1, "{:?}", storage.counts());
    assert_eq!(
        storage.count_with_auth("GET", &path),
        0,
        "Authorization leaked to blob storage"
    );
    // Ranged fetches follow the redirect too.
    let s = repo
        .fetch_blob(&desc, 10)
        .await
        .expect("ranged via redirect");
    let (tail, err) = drain(s).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(tail, &layout.blob(&layer.digest)[10..]);
    drop(guard);
}

/// An HTTP server that answers any request with `head` + `body` and then waits or closes.
async fn fake_server(
    head: String,
    body: Vec<u8>,
    then_wait: bool,
) -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (head, body) = (head.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                if then_wait {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (addr, task)
}

fn desc_of(size: i64) -> Descriptor {
    Descriptor {
        media_type: "application/octet-stream".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        size,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_truncated_bodies() {
    let client = RegistryClient::new(ClientConfig {
        read_timeout: Duration::from_millis(500),
        max_tries: 1,
        ..Default::default()
    });
    let opts = RequestOptions {
        plain_http: true,
        ..Default::default()
    };
    // Stalls after 5 of 100 bytes: a Timeout naming the blob and where it stopped.
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_string();
    let (addr, task) = fake_server(head, b"hello".to_vec(), true).await;
    let repo = client
        .repository(&reference(&format!("{addr}/a")), &opts)
        .expect("repo");
    let started = std::time::Instant::now();
    let (got, err) = drain(repo.fetch_blob(&desc_of(100), 0).await.expect("headers")).await;
    assert_eq!(got, b"hello");
    let err = err.expect("stall must fail");
    assert!(
        matches!(err, RegistryError::Timeout { .. }) && err.is_retryable(),
        "{err:?}"
    );
    assert!(err.to_string().contains("at byte 5"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    task.abort();

    // The connection closes after 5 of 100 bytes: a retryable error saying where to resume.
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_string();
    let (addr, task) = fake_server(head, b"hello".to_vec(), false).await;
    let repo = client
        .repository(&reference(&format!("{addr}/a")), &opts)
        .expect("repo");
    let (got, err) = drain(repo.fetch_blob(&desc_of(100), 0).await.expect("headers")).await;
    assert_eq!(got, b"hello");
    let err = err.expect("short body must fail");
    assert!(
        err.is_retryable() && err.to_string().contains("resume from 5"),
        "{err}"
    );
    task.abort();

    // More bytes than the descriptor says: SizeMismatch.
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_string();
    let (addr, task) = fake_server(head, b"0123456789".to_vec(), false).await;
    let repo = client
        .repository(&reference(&format!("{addr}/a")), &opts)
        .expect("repo");
    let (_, err) = drain(repo.fetch_blob(&desc_of(4), 0).await.expect("headers")).await;
    assert!(
        matches!(err, Some(RegistryError::SizeMismatch { .. })),
        "{err:?}"
    );
    task.abort();
}
