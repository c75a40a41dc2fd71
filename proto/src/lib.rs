//! Berth's wire definitions.
//!
//! - [`containerd`]: tonic server traits for containerd's client API v1, with the
//!   gRPC paths containerd uses, over the `containerd-client` crate's messages.
//! - [`berth`]: Berth's own extensions (`berth.v1`).
//! - [`shim`]: the berthd ⇄ berth-shim contract (`berth.shim.v1`).
//! - [`runc`], [`cgroups`]: wire-compatible containerd messages the crate lacks.
//!
//! Type URLs: containerd clients expect bare full names (`containerd.events.TaskExit`),
//! never `type.googleapis.com/...`; use [`to_any`] rather than `Any::from_msg`.
#![forbid(unsafe_code)]
#![allow(clippy::all)]

pub mod frame;

#[cfg(feature = "api")]
pub use containerd_client;

/// containerd API v1 server traits; message types are in [`containerd_client`].
#[cfg(feature = "api")]
pub mod containerd {
    macro_rules! service {
        ($name:ident, $file:literal) => {
            pub mod $name {
                include!(concat!(env!("OUT_DIR"), "/", $file));
            }
        };
    }
    service!(version, "containerd.services.version.v1.Version.rs");
    service!(
        namespaces,
        "containerd.services.namespaces.v1.Namespaces.rs"
    );
    service!(
        containers,
        "containerd.services.containers.v1.Containers.rs"
    );
    service!(content, "containerd.services.content.v1.Content.rs");
    service!(images, "containerd.services.images.v1.Images.rs");
    service!(leases, "containerd.services.leases.v1.Leases.rs");
    service!(snapshots, "containerd.services.snapshots.v1.Snapshots.rs");
    service!(diff, "containerd.services.diff.v1.Diff.rs");
    service!(tasks, "containerd.services.tasks.v1.Tasks.rs");
    service!(events, "containerd.services.events.v1.Events.rs");
    service!(
        introspection,
        "containerd.services.introspection.v1.Introspection.rs"
    );
    service!(transfer, "containerd.services.transfer.v1.Transfer.rs");
    service!(streaming, "containerd.services.streaming.v1.Streaming.rs");
}

/// `berth.v1`: journal replay from a cursor, server-side pull.
#[cfg(feature = "api")]
pub mod berth {
    include!(concat!(env!("OUT_DIR"), "/berth.v1.rs"));
}

/// `containerd.runc.v1`: runtime options (BinaryName for `ctr run --runc-binary`).
#[cfg(feature = "api")]
pub mod runc {
    include!(concat!(env!("OUT_DIR"), "/containerd.runc.v1.rs"));
}

/// `runtime.v1`: Kubernetes' CRI (RuntimeService, ImageService), the subset berthd serves.
#[cfg(feature = "api")]
pub mod cri {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

/// `berth.shim.v1`: the shim API.
#[cfg(feature = "shim")]
pub mod shim {
    include!(concat!(env!("OUT_DIR"), "/berth.shim.v1.rs"));

    pub use crate::shim_journal as journal;
}

/// The shim's on-disk event journal, `<bundle>/events.log`; also [`shim::journal`].
#[cfg(feature = "shim")]
pub mod shim_journal;

/// `io.containerd.cgroups.v1`: what `ctr tasks metrics` decodes.
#[cfg(feature = "shim")]
pub mod cgroups {
    include!(concat!(env!("OUT_DIR"), "/io.containerd.cgroups.v1.rs"));
}

/// `google.protobuf.Empty` as prost maps it, named so generated code can refer to it.
pub type Empty = ();

/// Wrap a message in an `Any` with containerd's bare type URL (its full proto name).
pub fn to_any<T: prost::Name>(msg: &T) -> prost_types::Any {
    prost_types::Any {
        type_url: T::full_name(),
        value: msg.encode_to_vec(),
    }
}

/// Type URL containerd uses for OCI runtime-spec types carried as JSON.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Type URL of an exec's OCI `Process` (JSON).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Type URL of `LinuxResources` in `Tasks.Update` (JSON).
pub const RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "api")]
    #[test]
    fn any_uses_bare_type_urls() {
        let opts = runc::Options {
            binary_name: "berth-runc".into(),
            ..Default::default()
        };
        assert_eq!(to_any(&opts).type_url, "containerd.runc.v1.Options");
        let exit = containerd_client::events::TaskExit::default();
        assert_eq!(to_any(&exit).type_url, "containerd.events.TaskExit");
    }

    #[cfg(feature = "shim")]
    #[test]
    fn metrics_type_url_is_containerds() {
        assert_eq!(
            to_any(&cgroups::Metrics::default()).type_url,
            "io.containerd.cgroups.v1.Metrics"
        );
    }

    #[cfg(feature = "api")]
    #[test]
    fn runc_options_field_numbers_match_containerd() {
        use prost::Message;
        // binary_name is field 6 (tag 0x32), root field 7 (0x3a), systemd_cgroup field 9 (0x48).
        let opts = runc::Options {
            binary_name: "x".into(),
            root: "y".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        assert_eq!(
            opts.encode_to_vec(),
            vec![0x32, 1, b'x', 0x3a, 1, b'y', 0x48, 1]
        );
    }
}
