//! Network attachments in the store: (owner, network) → JSON [`NetAttachmentRecord`], one per CNI attachment
//! berthd made and has not yet removed, so that a restarted berthd knows which containers are on which network
//! with which addresses (the peers' /etc/hosts entries), and can DEL what a crash left even when berth-net's
//! cache is gone.
//!
//! The owner is an opaque key chosen by the network layer (`task/<ns>/<id>` today, a pod sandbox later). This
//! module must never interpret records beyond their key; the network layer owns their meaning.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::NET_ATTACHMENTS;
use super::{Store, StoreError};

/// One attachment as berthd made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetAttachmentRecord {
    /// The network layer's owner key (`task/<ns>/<id>`).
    pub owner: String,
    /// Network name (the conflist's `name`).
    pub network: String,
    /// `CNI_IFNAME` in the netns (`eth0`, `eth1`, ... in label order).
    pub ifname: String,
    /// `CNI_CONTAINERID`: unique on the host (IPAM keys its reservations by it).
    pub cni_id: String,
    /// The netns it was made in.
    pub netns: std::path::PathBuf,
    /// Names the owner answers to on the network (hostname, container id), for its peers' /etc/hosts.
    pub names: Vec<String>,
    /// The owner's bind-mounted /etc/hosts file, rewritten in place when peers come and go.
    pub hosts_file: std::path::PathBuf,
    /// The owner's addresses on this network (CIDR), in result order.
    pub ips: Vec<String>,
    /// The published ports passed to the chain (CNI `portMappings` entries).
    #[serde(default)]
    pub ports: Vec<serde_json::Value>,
    /// The network config as it was ADDed: DEL runs this chain even after the file changed or went away.
    pub conflist: serde_json::Value,
    /// The chain's final ADD result.
    pub result: serde_json::Value,
    /// The kernel boot the attachment was made in: after a reboot its namespace, veth and rules are gone.
    pub boot_id: String,
}

fn decode(owner: &str, network: &str, bytes: &[u8]) -> Result<NetAttachmentRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("network attachment {owner}/{network}: {e}")))
}

fn encode(rec: &NetAttachmentRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec)
        .map_err(|e| StoreError::Corrupt(format!("encoding network attachment {}: {e}", rec.owner)))
}

impl Store {
    /// Every recorded attachment (blocking).
    pub fn list_net_attachments(&self) -> Result<Vec<NetAttachmentRecord>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(NET_ATTACHMENTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let (owner, network) = k.value();
            out.push(decode(owner, network, v.value())?);
        }
        Ok(out)
    }

    /// The attachments of one owner, by network name (blocking).
    pub fn net_attachments_of(&self, owner: &str) -> Result<Vec<NetAttachmentRecord>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(NET_ATTACHMENTS)?;
        let mut out = Vec::new();
        for item in t.range((owner, "")..)? {
            let (k, v) = item?;
            let (kowner, network) = k.value();
            if kowner != owner {
                break;
            }
            out.push(decode(owner, network, v.value())?);
        }
        Ok(out)
    }

    /// Record attachments (replacing records of the same owner and network), in one transaction.
    pub async fn put_net_attachments(
        &self,
        records: Vec<NetAttachmentRecord>,
    ) -> Result<(), StoreError> {
        let encoded = records
            .iter()
            .map(|r| Ok((r.owner.clone(), r.network.clone(), encode(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(NET_ATTACHMENTS)?;
                for (owner, network, bytes) in &encoded {
                    t.insert((owner.as_str(), network.as_str()), bytes.as_slice())?;
                }
                Ok(())
            })
            .await
    }

    /// Forget attachments of `owner`: the given networks, or all of them with `None`. Missing ones are fine.
    pub async fn forget_net_attachments(
        &self,
        owner: &str,
        networks: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(NET_ATTACHMENTS)?;
                let names = match networks {
                    Some(n) => n,
                    None => {
                        let mut all = Vec::new();
                        for item in t.range((owner.as_str(), "")..)? {
                            let (k, _) = item?;
                            let (kowner, network) = k.value();
                            if kowner != owner {
                                break;
                            }
                            all.push(network.to_string());
                        }
                        all
                    }
                };
                for n in names {
                    t.remove((owner.as_str(), n.as_str()))?;
                }
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::TempStore;

    fn rec(owner: &str, network: &str) -> NetAttachmentRecord {
        NetAttachmentRecord {
            owner: owner.into(),
            network: network.into(),
            ifname: "eth0".into(),
            cni_id: "ns__c".into(),
            netns: "/run/berth/netns/ns/c".into(),
            names: vec!["c".into()],
            hosts_file: "/run/berth/tasks/ns/c/hosts".into(),
            ips: vec!["10.213.0.2/16".into()],
            ports: vec![],
            conflist: serde_json::json!({"name": network}),
            result: serde_json::json!({"cniVersion": "1.0.0"}),
            boot_id: "b".into(),
        }
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_are_forgotten_per_owner() {
        let mut t = TempStore::new("netatt");
        let s = t.store().clone();
        s.put_net_attachments(vec![rec("task/ns/a", "n1"), rec("task/ns/a", "n2")])
            .await
            .expect("put");
        s.put_net_attachments(vec![rec("task/ns/ab", "n1")])
            .await
            .expect("put");
        drop(s);
        t.reopen();
        let s = t.store().clone();
        let of_a = s.net_attachments_of("task/ns/a").expect("of");
        assert_eq!(
            of_a.iter().map(|r| r.network.as_str()).collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert_eq!(s.list_net_attachments().expect("list").len(), 3);
        s.forget_net_attachments("task/ns/a", Some(vec!["n2".into(), "zz".into()]))
            .await
            .expect("forget one");
        assert_eq!(s.net_attachments_of("task/ns/a").expect("of").len(), 1);
        s.forget_net_attachments("task/ns/a", None)
            .await
            .expect("forget all");
        assert!(s.net_attachments_of("task/ns/a").expect("of").is_empty());
        assert_eq!(s.net_attachments_of("task/ns/ab").expect("of").len(), 1);
    }
}
