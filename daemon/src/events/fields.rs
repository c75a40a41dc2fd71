//! Filter fields of everything berthd filters: event envelopes (`topic`, `namespace`, `event.<field>` of
//! containerd's event messages, decoded by type URL as containerd's event adaptor does), containers, leases,
//! plugins, tasks, images, content and snapshots.
//!
//! No matcher is written by hand per type: [`fields!`](crate::fields) generates a [`Fields`] impl from a list
//! of field names, each field answering through [`FieldValue`] (strings and numbers by value, label maps by
//! key, nested messages by recursion, `Option`s when set). As in containerd, an empty string is an absent
//! field. This module must never fail on an undecodable event: it just exposes fewer fields.

use std::collections::{BTreeMap, HashMap};

use berth_proto::berth::JournalEvent;
use containerd_client::events as ev;
use containerd_client::services::v1 as svc;
use prost::{Message, Name};

use super::filter::Fields;

/// A value a filter can look into: the rest of the field path selects inside it.
pub trait FieldValue {
    /// The value at `rest` (empty: this value itself).
    fn value_at(&self, rest: &[String]) -> Option<String>;
}

impl FieldValue for String {
    fn value_at(&self, rest: &[String]) -> Option<String> {
        (rest.is_empty() && !self.is_empty()).then(|| self.clone())
    }
}

macro_rules! scalar_field_value {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            fn value_at(&self, rest: &[String]) -> Option<String> {
                rest.is_empty().then(|| self.to_string())
            }
        }
    )*};
}
scalar_field_value!(u32, i32, u64, i64, bool);

/// Labels: `labels.a.b` is the label `a.b` (containerd joins the rest of the path).
impl FieldValue for HashMap<String, String> {
    fn value_at(&self, rest: &[String]) -> Option<String> {
        (!rest.is_empty())
            .then(|| self.get(&rest.join(".")).cloned())
            .flatten()
    }
}

impl FieldValue for BTreeMap<String, String> {
    fn value_at(&self, rest: &[String]) -> Option<String> {
        (!rest.is_empty())
            .then(|| self.get(&rest.join(".")).cloned())
            .flatten()
    }
}

impl<T: FieldValue> FieldValue for Option<T> {
    fn value_at(&self, rest: &[String]) -> Option<String> {
        self.as_ref()?.value_at(rest)
    }
}

/// Implement [`Fields`] (and [`FieldValue`], so the type nests) for a type from the names of its filterable
/// fields: `fields!(Container { id, image, labels, runtime });`, with other names containerd's filters use
/// for a field after `aliases`: `fields!(Descriptor { media_type } aliases { "mediatype" => media_type });`.
#[macro_export]
macro_rules! fields {
    ($ty:ty { $($name:ident),* $(,)? } $(aliases { $($alias:literal => $target:ident),* $(,)? })?) => {
        impl $crate::events::Fields for $ty {
            fn field(&self, path: &[String]) -> Option<String> {
                let (first, rest) = path.split_first()?;
                // `r#type` is the field `type`.
                $(if first == stringify!($name).trim_start_matches("r#") {
                    return $crate::events::FieldValue::value_at(&self.$name, rest);
                })*
                $($(if first == $alias {
                    return $crate::events::FieldValue::value_at(&self.$target, rest);
                })*)?
                None
            }
        }
        impl $crate::events::FieldValue for $ty {
            fn value_at(&self, rest: &[String]) -> Option<String> {
                $crate::events::Fields::field(self, rest)
            }
        }
    };
}

/// For each event type: its [`Fields`] impl, and one dispatch by type URL for all of them.
macro_rules! event_types {
    ($($t:ty { $($field:ident),* $(,)? }),* $(,)?) => {
        $(fields!($t { $($field),* });)*

        /// `event.<path>` of a payload, decoded by its type URL.
        fn event_field(any: &prost_types::Any, path: &[String]) -> Option<String> {
            $(if any.type_url == <$t>::full_name() {
                return <$t>::decode(any.value.as_slice()).ok()?.field(path);
            })*
            None
        }
    };
}

fields!(ev::container_create::Runtime { name });

event_types!(
    ev::TaskCreate {
        container_id,
        bundle,
        pid,
        checkpoint
    },
    ev::TaskStart { container_id, pid },
    ev::TaskExit {
        container_id,
        id,
        pid,
        exit_status
    },
    ev::TaskDelete {
        container_id,
        id,
        pid,
        exit_status
    },
    ev::TaskOom { container_id },
    ev::TaskPaused { container_id },
    ev::TaskResumed { container_id },
    ev::TaskExecAdded {
        container_id,
        exec_id
    },
    ev::TaskExecStarted {
        container_id,
        exec_id,
        pid
    },
    ev::TaskCheckpointed {
        container_id,
        checkpoint
    },
    ev::ContainerCreate { id, image, runtime },
    ev::ContainerUpdate {
        id,
        image,
        labels,
        snapshot_key
    },
    ev::ContainerDelete { id },
    ev::NamespaceCreate { name, labels },
    ev::NamespaceUpdate { name, labels },
    ev::NamespaceDelete { name },
    ev::SnapshotPrepare {
        key,
        parent,
        snapshotter
    },
    ev::SnapshotCommit {
        key,
        name,
        snapshotter
    },
    ev::SnapshotRemove { key, snapshotter },
    ev::ContentDelete { digest },
    svc::ImageCreate { name, labels },
    svc::ImageUpdate { name, labels },
    svc::ImageDelete { name },
);

impl Fields for JournalEvent {
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "topic" => self.topic.value_at(rest),
            "namespace" => self.namespace.value_at(rest),
            "event" if !rest.is_empty() => event_field(self.event.as_ref()?, rest),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::filter::Filter;

    fn journal(topic: &str, event: prost_types::Any) -> JournalEvent {
        JournalEvent {
            seq: 1,
            timestamp: None,
            namespace: "n".into(),
            topic: topic.into(),
            event: Some(event),
        }
    }

    fn matches(filter: &str, j: &JournalEvent) -> bool {
        Filter::parse(&[filter.to_string()])
            .expect("filter")
            .matches(j)
    }

    #[test]
    fn exit_fields() {
        let exit = ev::TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 7,
            exit_status: 3,
            exited_at: None,
        };
        let j = journal("/tasks/exit", berth_proto::to_any(&exit));
        assert!(matches("event.container_id==c1,event.exit_status==3", &j));
        assert!(!matches("event.container_id==c2", &j));
        assert!(matches("namespace==n,topic~=^/tasks/", &j));
        assert!(!matches("event.nope", &j));
    }

    #[test]
    fn nested_labels_and_empty_strings() {
        let c = ev::ContainerCreate {
            id: "x".into(),
            image: String::new(),
            runtime: Some(ev::container_create::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
        };
        let j = journal("/containers/create", berth_proto::to_any(&c));
        assert!(matches("event.runtime.name==io.containerd.runc.v2", &j));
        assert!(!matches("event.image", &j), "an empty string is absent");
        let u = ev::ContainerUpdate {
            id: "x".into(),
            labels: [("a.b".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let j = journal("/containers/update", berth_proto::to_any(&u));
        assert!(matches("event.labels.\"a.b\"==v", &j));
        assert!(matches("event.labels.a.b==v", &j));
    }
}
