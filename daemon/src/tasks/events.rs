//! Mapping of the shim's events (`berth.shim.v1.Event`) to containerd's task events and topics.
//!
//! Pure functions only: journaling and acking happen in the ShimActor. Never invent fields the shim did not send,
//! except the container id, which the shim's events leave implicit.

use berth_proto::containerd_client::events::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIo, TaskOom, TaskPaused,
    TaskResumed, TaskStart,
};
use berth_proto::containerd_client::types::Mount;
use berth_proto::shim::event::Kind;
use berth_proto::to_any;
use prost_types::Any;

use super::state::ExitInfo;
use crate::events::Once;

/// A shim event as containerd's topic and payload.
pub struct Mapped {
    /// containerd's topic.
    pub topic: &'static str,
    /// containerd's event message.
    pub event: Any,
    /// Set for the events a task has at most one of (the init's exit, the delete).
    pub once: Option<Once>,
}

/// The containerd event for a shim event.
pub fn to_containerd(container_id: &str, kind: &Kind) -> Mapped {
    let cid = container_id.to_string();
    let once = match kind {
        Kind::Exited(e) if e.exec_id.is_empty() => Some(Once::InitExit),
        Kind::Deleted(_) => Some(Once::Delete),
        _ => None,
    };
    let (topic, event) = match kind {
        Kind::Created(c) => {
            let io = c.stdio.as_ref().map(|s| TaskIo {
                stdin: s.stdin.clone(),
                stdout: s.stdout.clone(),
                stderr: s.stderr.clone(),
                terminal: s.terminal,
            });
            let rootfs = c
                .rootfs
                .iter()
                .map(|m| Mount {
                    r#type: m.r#type.clone(),
                    source: m.source.clone(),
                    target: m.target.clone(),
                    options: m.options.clone(),
                })
                .collect();
            (
                "/tasks/create",
                to_any(&TaskCreate {
                    container_id: cid,
                    bundle: c.bundle.clone(),
                    rootfs,
                    io,
                    checkpoint: String::new(),
                    pid: c.pid,
                }),
            )
        }
        Kind::Started(s) => (
            "/tasks/start",
            to_any(&TaskStart {
                container_id: cid,
                pid: s.pid,
            }),
        ),
        Kind::Exited(e) => {
            let exit = ExitInfo::new(e.pid, e.exit_status, e.exited_at.as_ref());
            let id = if e.exec_id.is_empty() {
                cid.clone()
            } else {
                e.exec_id.clone()
            };
            ("/tasks/exit", exit_event(&cid, &id, &exit))
        }
        Kind::Oom(_) => ("/tasks/oom", to_any(&TaskOom { container_id: cid })),
        Kind::ExecAdded(e) => (
            "/tasks/exec-added",
            to_any(&TaskExecAdded {
                container_id: cid,
                exec_id: e.exec_id.clone(),
            }),
        ),
        Kind::ExecStarted(e) => (
            "/tasks/exec-started",
            to_any(&TaskExecStarted {
                container_id: cid,
                exec_id: e.exec_id.clone(),
                pid: e.pid,
            }),
        ),
        Kind::Paused(_) => ("/tasks/paused", to_any(&TaskPaused { container_id: cid })),
        Kind::Resumed(_) => ("/tasks/resumed", to_any(&TaskResumed { container_id: cid })),
        Kind::Deleted(d) => {
            let exit = ExitInfo::new(d.pid, d.exit_status, d.exited_at.as_ref());
            ("/tasks/delete", delete_event(&cid, &exit))
        }
    };
    Mapped { topic, event, once }
}

/// `/tasks/exit` payload; `id` is the container id for init or the exec id.
pub fn exit_event(container_id: &str, id: &str, exit: &ExitInfo) -> Any {
    to_any(&TaskExit {
        container_id: container_id.to_string(),
        id: id.to_string(),
        pid: exit.pid,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()),
    })
}

/// `/tasks/delete` payload for the init process. `id` stays empty, as containerd's runc shim leaves it (the
/// field names an exec, and execs get no delete event).
pub fn delete_event(container_id: &str, exit: &ExitInfo) -> Any {
    to_any(&TaskDelete {
        container_id: container_id.to_string(),
        pid: exit.pid,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()),
        id: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn exit_maps_to_task_exit() {
        let kind = Kind::Exited(berth_proto::shim::TaskExited {
            exec_id: "e1".into(),
            pid: 42,
            exit_status: 7,
            exited_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 5,
            }),
        });
        let m = to_containerd("c1", &kind);
        assert_eq!(m.topic, "/tasks/exit");
        assert_eq!(m.once, None, "an exec's exit is not once-per-task");
        assert_eq!(m.event.type_url, "containerd.events.TaskExit");
        let ev = TaskExit::decode(m.event.value.as_slice()).expect("decodes");
        assert_eq!(ev.container_id, "c1");
        assert_eq!(ev.id, "e1");
        assert_eq!(ev.exit_status, 7);
        assert_eq!(ev.exited_at.map(|t| t.seconds), Some(100));
    }

    #[test]
    fn init_exit_uses_container_id() {
        let kind = Kind::Exited(berth_proto::shim::TaskExited {
            exec_id: String::new(),
            pid: 1,
            exit_status: 3,
            exited_at: None,
        });
        let m = to_containerd("c1", &kind);
        assert_eq!(m.once, Some(Once::InitExit));
        let ev = TaskExit::decode(m.event.value.as_slice()).expect("decodes");
        assert_eq!(ev.id, "c1");
        assert!(ev.exited_at.map(|t| t.seconds > 0).unwrap_or(false));
    }

    #[test]
    fn topics() {
        let t = |k: Kind| {
            let m = to_containerd("c", &k);
            (m.topic, m.event.type_url, m.once)
        };
        assert_eq!(
            t(Kind::Paused(Default::default())),
            (
                "/tasks/paused",
                "containerd.events.TaskPaused".to_string(),
                None
            )
        );
        assert_eq!(
            t(Kind::ExecStarted(Default::default())).0,
            "/tasks/exec-started"
        );
        assert_eq!(
            t(Kind::Deleted(Default::default())),
            (
                "/tasks/delete",
                "containerd.events.TaskDelete".to_string(),
                Some(Once::Delete)
            )
        );
    }
}
