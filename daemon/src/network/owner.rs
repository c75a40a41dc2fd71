//! Who an attachment belongs to: an [`Owner`], with its keys for the store and for CNI, and where its netns
//! lives. Only tasks own attachments today; a CRI pod sandbox will be another variant (its containers share
//! its netns), which is why nothing here is a container.
//!
//! The keys must never change meaning: they are in the store and in berth-net's cache across restarts.

use std::path::{Path, PathBuf};

/// The owner of a netns and of its attachments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A container's task: its own netns.
    Task {
        /// containerd namespace.
        namespace: String,
        /// Container id.
        id: String,
    },
}

/// Separates namespace and id in a CNI container id. containerd identifiers never hold two separators in a
/// row, so `__` cannot occur inside either: the id is unambiguous and unique on the host.
const CNI_SEP: &str = "__";

impl Owner {
    /// A task's owner.
    pub fn task(namespace: impl Into<String>, id: impl Into<String>) -> Owner {
        Owner::Task {
            namespace: namespace.into(),
            id: id.into(),
        }
    }

    /// The store's key: `task/<ns>/<id>`.
    pub fn key(&self) -> String {
        match self {
            Owner::Task { namespace, id } => format!("task/{namespace}/{id}"),
        }
    }

    /// Inverse of [`Owner::key`].
    pub fn from_key(key: &str) -> Option<Owner> {
        let rest = key.strip_prefix("task/")?;
        let (ns, id) = rest.split_once('/')?;
        Owner::checked(ns, id)
    }

    /// `CNI_CONTAINERID`: `<ns>__<id>`. IPAM keys reservations by it and berth-net's cache files are named
    /// after it, so it must be unique on the host: a container id alone is not (two namespaces).
    pub fn cni_id(&self) -> String {
        match self {
            Owner::Task { namespace, id } => format!("{namespace}{CNI_SEP}{id}"),
        }
    }

    /// Inverse of [`Owner::cni_id`] (recovery reads berth-net's cache).
    pub fn from_cni_id(cni_id: &str) -> Option<Owner> {
        let (ns, id) = cni_id.split_once(CNI_SEP)?;
        Owner::checked(ns, id)
    }

    fn checked(ns: &str, id: &str) -> Option<Owner> {
        (crate::namespace::is_valid_id(ns) && crate::namespace::is_valid_id(id))
            .then(|| Owner::task(ns, id))
    }

    /// Its netns: `<state>/netns/<ns>/<id>`.
    pub fn netns_path(&self, state: &Path) -> PathBuf {
        match self {
            Owner::Task { namespace, id } => state.join("netns").join(namespace).join(id),
        }
    }

    /// The container id (its default name on its networks).
    pub fn id(&self) -> &str {
        match self {
            Owner::Task { id, .. } => id,
        }
    }

    /// Whether the owner still exists: a task with berthd's record in its task directory (a create that
    /// never wrote one, or a finished delete, has none).
    pub fn exists(&self, config: &crate::config::Config) -> bool {
        match self {
            Owner::Task { namespace, id } => crate::tasks::task_recorded(config, namespace, id),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Task { namespace, id } => write!(f, "task {namespace}/{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_unambiguous() {
        let o = Owner::task("ns-1", "web.2");
        assert_eq!(o.key(), "task/ns-1/web.2");
        assert_eq!(o.cni_id(), "ns-1__web.2");
        assert_eq!(Owner::from_key(&o.key()), Some(o.clone()));
        assert_eq!(Owner::from_cni_id(&o.cni_id()), Some(o.clone()));
        assert_eq!(Owner::from_cni_id("a_b__c"), Some(Owner::task("a_b", "c")));
        for bad in ["nosep", "__x", "x__", "a__b__c", "a/b__c"] {
            assert_eq!(Owner::from_cni_id(bad), None, "{bad}");
        }
        assert_eq!(Owner::from_key("pod/x/y"), None);
        assert_eq!(
            o.netns_path(Path::new("/run/berth")),
            PathBuf::from("/run/berth/netns/ns-1/web.2")
        );
    }
}
