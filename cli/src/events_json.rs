//! containerd's event messages decoded by type URL into JSON, as ctr prints them (field names
//! in snake_case, timestamps in RFC 3339).
//!
//! An unknown type is reported as such, never guessed at; this module must never fail on an
//! event it cannot decode.

use containerd_client::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, ContentCreate, ContentDelete,
    NamespaceCreate, NamespaceDelete, NamespaceUpdate, SnapshotCommit, SnapshotPrepare,
    SnapshotRemove, TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted,
    TaskExit, TaskIo, TaskOom, TaskPaused, TaskResumed, TaskStart,
};
use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate};
use containerd_client::types::Mount;
use prost::{Message, Name};
use prost_types::{Any, Timestamp};
use serde_json::{json, Value};

use crate::output::rfc3339;

/// A field value as JSON.
trait J {
    fn j(&self) -> Value;
}
impl J for String {
    fn j(&self) -> Value {
        json!(self)
    }
}
impl J for u32 {
    fn j(&self) -> Value {
        json!(self)
    }
}
impl J for i64 {
    fn j(&self) -> Value {
        json!(self)
    }
}
impl J for bool {
    fn j(&self) -> Value {
        json!(self)
    }
}
impl J for std::collections::HashMap<String, String> {
    fn j(&self) -> Value {
        json!(self)
    }
}
impl J for Option<Timestamp> {
    fn j(&self) -> Value {
        json!(rfc3339(self.as_ref()))
    }
}
impl J for Vec<Mount> {
    fn j(&self) -> Value {
        Value::Array(
            self.iter()
                .map(|m| json!({ "type": m.r#type, "source": m.source, "target": m.target, "options": m.options }))
                .collect(),
        )
    }
}
impl J for Option<TaskIo> {
    fn j(&self) -> Value {
        match self {
            Some(io) => {
                json!({ "stdin": io.stdin, "stdout": io.stdout, "stderr": io.stderr, "terminal": io.terminal })
            }
            None => Value::Null,
        }
    }
}
impl J for Option<containerd_client::events::container_create::Runtime> {
    fn j(&self) -> Value {
        match self {
            Some(r) => json!({ "name": r.name }),
            None => Value::Null,
        }
    }
}

/// Decode `$ty` from `$any` and list its fields.
macro_rules! decode {
    ($any:expr, $( $ty:ty => [$($f:ident),*] ),* $(,)?) => {{
        let url = $any.type_url.trim_start_matches('/');
        let url = url.rsplit('/').next().unwrap_or(url);
        $(
            if url == <$ty>::full_name() {
                return match <$ty>::decode($any.value.as_slice()) {
                    Ok(m) => {
                        let mut o = serde_json::Map::new();
                        $( o.insert(stringify!($f).to_string(), m.$f.j()); )*
                        Some(Value::Object(o))
                    }
                    Err(_) => None,
                };
            }
        )*
        None
    }};
}

/// The event as JSON, or `None` for a type berth does not know.
pub fn decode(any: &Any) -> Option<Value> {
    decode!(any,
        TaskCreate => [container_id, bundle, rootfs, io, checkpoint, pid],
        TaskStart => [container_id, pid],
        TaskExit => [container_id, id, pid, exit_status, exited_at],
        TaskDelete => [container_id, id, pid, exit_status, exited_at],
        TaskOom => [container_id],
        TaskExecAdded => [container_id, exec_id],
        TaskExecStarted => [container_id, exec_id, pid],
        TaskPaused => [container_id],
        TaskResumed => [container_id],
        TaskCheckpointed => [container_id, checkpoint],
        ContainerCreate => [id, image, runtime],
        ContainerUpdate => [id, image, labels, snapshot_key],
        ContainerDelete => [id],
        ImageCreate => [name, labels],
        ImageUpdate => [name, labels],
        ImageDelete => [name],
        NamespaceCreate => [name, labels],
        NamespaceUpdate => [name, labels],
        NamespaceDelete => [name],
        SnapshotPrepare => [key, parent, snapshotter],
        SnapshotCommit => [key, name, snapshotter],
        SnapshotRemove => [key, snapshotter],
        ContentCreate => [digest, size],
        ContentDelete => [digest],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_by_bare_type_url() {
        let exit = TaskExit {
            container_id: "c".into(),
            id: "c".into(),
            pid: 7,
            exit_status: 3,
            exited_at: Some(Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
        };
        let any = berth_proto::to_any(&exit);
        let v = decode(&any).expect("decoded");
        assert_eq!(v["exit_status"], json!(3));
        assert_eq!(v["exited_at"], json!("2026-01-01T00:00:00.000000000Z"));
        let unknown = Any {
            type_url: "x.Y".into(),
            value: vec![],
        };
        assert!(decode(&unknown).is_none());
    }
}
