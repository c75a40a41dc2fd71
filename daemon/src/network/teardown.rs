//! Taking an owner's network down ([`Networks::teardown`]) and removing what recovery found of gone owners
//! ([`Networks::remove_leftovers`]): names first (peers stop resolving it before its address is released),
//! then DEL of every attachment found in berth-net's cache or the store, the netns, the records. Idempotent;
//! an attachment whose DEL fails keeps its records for the next berthd start, which must never be lost here.

use std::collections::HashSet;

use berth_net::{Attachment, Network};

use super::attachment::Detach;
use super::error::NetError;
use super::handle::{blocking, Networks};
use super::owner::Owner;
use super::recovery::Leftovers;

impl Networks {
    /// Remove everything of `owner`, after its processes are gone: its names from its peers' hosts files, DEL
    /// of every attachment (found in the store and in berth-net's cache), its netns, its records. Idempotent.
    /// An attachment whose DEL fails keeps its records (the error says so; the next berthd start retries).
    pub async fn teardown(&self, owner: &Owner) -> Result<(), NetError> {
        let shared = self.shared.clone();
        let o = owner.clone();
        let leftovers = blocking(move || {
            shared.leave_names(&o);
            let records = shared.ctx.store.net_attachments_of(&o.key())?;
            let cached = shared.cached_of(&o);
            Ok(Leftovers {
                key: o.key(),
                netns: Some(o.netns_path(&shared.state)),
                owner: Some(o),
                records,
                cached,
            })
        })
        .await?;
        self.remove_leftovers(leftovers).await
    }

    /// DEL, unmount and forget what `l` lists (teardown, and recovery of owners that are gone).
    pub(crate) async fn remove_leftovers(&self, l: Leftovers) -> Result<(), NetError> {
        let mut errors: Vec<NetError> = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut tried: HashSet<String> = HashSet::new();
        let mut cached = l.cached;
        cached.sort_by_key(|c| {
            std::cmp::Reverse((c.attachment.ifname.len(), c.attachment.ifname.clone()))
        });
        for c in cached {
            let network = c.network.name.clone();
            tried.insert(network.clone());
            let msg = Detach {
                key: (l.key.clone(), network.clone()),
                network: c.network,
                attachment: c.attachment,
            };
            match self.route(msg).await {
                Ok(()) => {
                    done.insert(network);
                }
                Err(e) => errors.push(e),
            }
        }
        // A record without a cache entry: its DEL already succeeded and berthd died before forgetting the
        // record, or the cache is gone (a reboot). DEL again from the record, which is harmless either way.
        let mut forget: Vec<String> = Vec::new();
        for r in &l.records {
            if done.contains(&r.network) {
                forget.push(r.network.clone());
                continue;
            }
            if tried.contains(&r.network) {
                continue;
            }
            let this_boot = r.boot_id == self.shared.boot_id;
            let del = match Network::from_conflist_value(
                r.conflist.clone(),
                &format!("record of {}", l.key),
            ) {
                Ok(network) => {
                    let attachment = Attachment {
                        container_id: r.cni_id.clone(),
                        netns: r.netns.clone(),
                        ifname: r.ifname.clone(),
                        port_mappings: r
                            .ports
                            .iter()
                            .filter_map(berth_net::PortMapping::from_cni_json)
                            .collect(),
                        ..Attachment::default()
                    };
                    self.route(Detach {
                        key: (l.key.clone(), r.network.clone()),
                        network,
                        attachment,
                    })
                    .await
                }
                Err(e) => Err(NetError::Cni(e.into())),
            };
            match del {
                Ok(()) => forget.push(r.network.clone()),
                // After a reboot nothing of it is left to DEL: forget it whatever the plugins said.
                Err(e) if !this_boot => {
                    tracing::info!(owner = %l.key, network = %r.network, error = %e,
                        "forgetting an attachment of an earlier boot");
                    forget.push(r.network.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(ns) = l.netns.clone() {
            if let Err(e) = blocking(move || Ok(berth_net::remove_netns(&ns)?)).await {
                errors.push(e);
            }
        }
        if !forget.is_empty() {
            let all = forget.len() == l.records.len();
            let which = (!all).then_some(forget);
            if let Err(e) = self
                .shared
                .ctx
                .store
                .forget_net_attachments(&l.key, which)
                .await
            {
                errors.push(e.into());
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        for e in &errors[1..] {
            tracing::error!(owner = %l.key, error = %e, "network teardown failed");
        }
        Err(errors.swap_remove(0))
    }
}
