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

/// Topic and payload of the containerd event for a shim event; None for an event without a kind.
pub fn to_containerd(container_id: &str, kind: &Kind) -> Option<(&'static str, Any)> {
    let cid = container_id.to_string();
    Some(match kind {
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
    })
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

/// `/tasks/delete` payload for the init process.
pub fn delete_event(container_id: &str, exit: &ExitInfo) -> Any {
    to_any(&TaskDelete {
        container_id: container_id.to_string(),
        pid: exit.pid,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()),
        id: container_id.to_string(),
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
        let (topic, any) = to_containerd("c1", &kind).expect("mapped");
        assert_eq!(topic, "/tasks/exit");
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let ev = TaskExit::decode(any.value.as_slice()).expect("decodes");
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
        let (_, any) = to_containerd("c1", &kind).expect("mapped");
        let ev = TaskExit::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(ev.id, "c1");
        assert!(ev.exited_at.map(|t| t.seconds > 0).unwrap_or(false));
    }

    #[test]
    fn topics() {
        let t = |k: Kind| to_containerd("c", &k).map(|(t, a)| (t, a.type_url));
        assert_eq!(
            t(Kind::Paused(Default::default())),
            Some(("/tasks/paused", "containerd.events.TaskPaused".to_string()))
        );
        assert_eq!(
            t(Kind::ExecStarted(Default::default())).map(|x| x.0),
            Some("/tasks/exec-started")
        );
        assert_eq!(
            t(Kind::Deleted(Default::default())).map(|x| x.1),
            Some("containerd.events.TaskDelete".to_string())
        );
    }
}
