//! Small builders for tests that talk to berthd with containerd-client's clients.
//! What every such test repeated: the namespace header, a deadline, the code of an
//! expected error, a minimal valid container record and its creation.

use std::time::Duration;

use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::{Container, CreateContainerRequest};

/// Deadline of [`req`]: long enough for a loaded 2-core machine, short enough that a hung
/// daemon fails the test instead of hanging the suite.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// `msg` in containerd namespace `ns` (the `containerd-namespace` header), with [`DEADLINE`].
pub fn req<T>(ns: &str, msg: T) -> tonic::Request<T> {
    req_with(ns, msg, Some(DEADLINE))
}

/// `msg` in namespace `ns` with the given deadline; `None` for streams meant to stay open.
pub fn req_with<T>(ns: &str, msg: T, deadline: Option<Duration>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().expect("ascii namespace"));
    if let Some(d) = deadline {
        r.set_timeout(d);
    }
    r
}

/// The status code of a call that must fail; panics when it succeeded.
#[track_caller]
pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// A container record berthd accepts: runtime `io.containerd.runc.v2` and a JSON spec.
pub fn container(id: &str, image: &str, labels: &[(&str, &str)]) -> Container {
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

/// Containers.Create of `ctr` in `ns`; returns the echoed record.
pub async fn create(
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
