//! The streaming server's HTTP/1.1 side (hyper): route `/{exec,attach,portforward}/{token}`, take the token
//! and hand the request to the protocol the client asked to upgrade to.
//!
//! This module must never answer a stream without a valid token: unknown, used or expired tokens get 404.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{spdy, ws};
use crate::cri::{Cri, NAMESPACE};

/// Accept connections until berthd stops.
pub async fn accept(cri: Cri, listener: TcpListener) {
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: back off a little rather than spin.
                tracing::warn!(namespace = NAMESPACE, error = %e, "streaming server accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let cri = cri.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let cri = cri.clone();
                async move { Ok::<_, Infallible>(route(cri, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(namespace = NAMESPACE, error = %e, "streaming connection");
            }
        });
    }
}

/// A plain response with `body`.
pub(super) fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    reply(status, format!("{msg}\n"))
}

/// 101 Switching Protocols to `protocol` (the caller adds the protocol's own headers).
pub(super) fn switching_protocols(protocol: &'static str) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let h = r.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static(protocol),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    r
}

fn route(cri: Cri, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_start_matches('/');
    let Some((kind, token)) = path.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let Some(pending) = cri.inner.streams.take(kind, token) else {
        return text(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming token",
        );
    };
    let upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match upgrade.as_str() {
        "websocket" => ws::upgrade(cri, req, pending),
        "spdy/3.1" => spdy::upgrade(cri, req, pending),
        _ => text(
            StatusCode::BAD_REQUEST,
            "a stream needs an upgrade to websocket or SPDY/3.1",
        ),
    }
}
