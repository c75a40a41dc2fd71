//! Filter fields of an event envelope: `topic`, `namespace`, and `event.<field>` for containerd's event messages
//! (decoded by type URL, as containerd's event filter adaptor does). Unknown event types expose no `event.*`.
//!
//! This module must never fail on an undecodable event: it just exposes fewer fields.

use berth_proto::berth::JournalEvent;
use containerd_client::events as ev;
use containerd_client::services::v1 as svc;
use prost::Message;

use super::filter::Fields;

impl Fields for JournalEvent {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("topic") if path.len() == 1 => Some(self.topic.clone()),
            Some("namespace") if path.len() == 1 => Some(self.namespace.clone()),
            Some("event") if path.len() >= 2 => {
                let any = self.event.as_ref()?;
                event_field(&any.type_url, &any.value, &path[1..])
            }
            _ => None,
        }
    }
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn event_field(type_url: &str, value: &[u8], path: &[String]) -> Option<String> {
    let name = path[0].as_str();
    let labels = |m: &std::collections::HashMap<String, String>| {
        if path.len() == 2 && name == "labels" {
            m.get(&path[1]).cloned()
        } else {
            None
        }
    };
    macro_rules! decode {
        ($t:ty) => {
            <$t>::decode(value).ok()?
        };
    }
    match type_url {
        "containerd.events.TaskCreate" => {
            let e = decode!(ev::TaskCreate);
            match name {
                "container_id" => nonempty(&e.container_id),
                "bundle" => nonempty(&e.bundle),
                "pid" => Some(e.pid.to_string()),
                _ => None,
            }
        }
        "containerd.events.TaskStart" => {
            let e = decode!(ev::TaskStart);
            match name {
                "container_id" => nonempty(&e.container_id),
                "pid" => Some(e.pid.to_string()),
                _ => None,
            }
        }
        "containerd.events.TaskExit" => {
            let e = decode!(ev::TaskExit);
            match name {
                "container_id" => nonempty(&e.container_id),
                "id" => nonempty(&e.id),
                "pid" => Some(e.pid.to_string()),
                "exit_status" => Some(e.exit_status.to_string()),
                _ => None,
            }
        }
        "containerd.events.TaskDelete" => {
            let e = decode!(ev::TaskDelete);
            match name {
                "container_id" => nonempty(&e.container_id),
                "id" => nonempty(&e.id),
                "pid" => Some(e.pid.to_string()),
                "exit_status" => Some(e.exit_status.to_string()),
                _ => None,
            }
        }
        "containerd.events.TaskOOM" => match name {
            "container_id" => nonempty(&decode!(ev::TaskOom).container_id),
            _ => None,
        },
        "containerd.events.TaskPaused" => match name {
            "container_id" => nonempty(&decode!(ev::TaskPaused).container_id),
            _ => None,
        },
        "containerd.events.TaskResumed" => match name {
            "container_id" => nonempty(&decode!(ev::TaskResumed).container_id),
            _ => None,
        },
        "containerd.events.TaskExecAdded" => {
            let e = decode!(ev::TaskExecAdded);
            match name {
                "container_id" => nonempty(&e.container_id),
                "exec_id" => nonempty(&e.exec_id),
                _ => None,
            }
        }
        "containerd.events.TaskExecStarted" => {
            let e = decode!(ev::TaskExecStarted);
            match name {
                "container_id" => nonempty(&e.container_id),
                "exec_id" => nonempty(&e.exec_id),
                "pid" => Some(e.pid.to_string()),
                _ => None,
            }
        }
        "containerd.events.ContainerCreate" => {
            let e = decode!(ev::ContainerCreate);
            match name {
                "id" => nonempty(&e.id),
                "image" => nonempty(&e.image),
                "runtime" if path.len() == 2 && path[1] == "name" => {
                    e.runtime.as_ref().and_then(|r| nonempty(&r.name))
                }
                _ => None,
            }
        }
        "containerd.events.ContainerUpdate" => {
            let e = decode!(ev::ContainerUpdate);
            match name {
                "id" => nonempty(&e.id),
                "image" => nonempty(&e.image),
                "snapshot_key" => nonempty(&e.snapshot_key),
                "labels" => labels(&e.labels),
                _ => None,
            }
        }
        "containerd.events.ContainerDelete" => match name {
            "id" => nonempty(&decode!(ev::ContainerDelete).id),
            _ => None,
        },
        "containerd.events.NamespaceCreate" => {
            let e = decode!(ev::NamespaceCreate);
            match name {
                "name" => nonempty(&e.name),
                "labels" => labels(&e.labels),
                _ => None,
            }
        }
        "containerd.events.NamespaceUpdate" => {
            let e = decode!(ev::NamespaceUpdate);
            match name {
                "name" => nonempty(&e.name),
                "labels" => labels(&e.labels),
                _ => None,
            }
        }
        "containerd.events.NamespaceDelete" => match name {
            "name" => nonempty(&decode!(ev::NamespaceDelete).name),
            _ => None,
        },
        "containerd.services.images.v1.ImageCreate" => {
            let e = decode!(svc::ImageCreate);
            match name {
                "name" => nonempty(&e.name),
                "labels" => labels(&e.labels),
                _ => None,
            }
        }
        "containerd.services.images.v1.ImageDelete" => match name {
            "name" => nonempty(&decode!(svc::ImageDelete).name),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::filter::Filter;

    #[test]
    fn exit_fields() {
        let exit = ev::TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 7,
            exit_status: 3,
            exited_at: None,
        };
        let j = JournalEvent {
            seq: 1,
            timestamp: None,
            namespace: "n".into(),
            topic: "/tasks/exit".into(),
            event: Some(berth_proto::to_any(&exit)),
        };
        let f =
            Filter::parse(&["event.container_id==c1,event.exit_status==3".into()]).expect("filter");
        assert!(f.matches(&j));
        let f = Filter::parse(&["event.container_id==c2".into()]).expect("filter");
        assert!(!f.matches(&j));
    }
}
