//! A published port through gRPC: a busybox httpd in a container on the default network answers on the
//! host's loopback at the published port (portmap's DNAT), and stops answering once the container is deleted,
//! its rules gone. Root only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use berth_tests::net_fixture::{eventually, free_port, NetFixture, NETWORKS, PORTS};

/// `GET /f` on `addr`; the body, or `None` when nothing answered.
fn get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /f HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_port_answers_on_loopback_until_the_container_is_deleted() {
    if !berth_tests::require_root() {
        return;
    }
    let nf = NetFixture::new("net-port", "");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    nf.run(
        "web",
        &[(NETWORKS, "berth"), (PORTS, &publish)],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )
    .await
    .expect("run web");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut body = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            body = get(addr);
            body.is_some()
        }),
        "nothing answered on {addr}; rules: {:#?}",
        nf.marked_rules()
    );
    assert_eq!(body.as_deref(), Some("hello from web\n"));
    // The rules name the container's address and the port.
    assert!(
        nf.marked_rules()
            .iter()
            .any(|r| r.contains(&format!("--dport {port}"))),
        "{:#?}",
        nf.marked_rules()
    );
    nf.remove("web").await;
    assert_eq!(get(addr), None, "the port still answers after delete");
    nf.assert_no_leaks();
}
