//! Start-up recovery of networks: [`scan`] collects, per owner, every trace an attachment can leave — a store
//! record, a berth-net cache entry (written before the first plugin runs, so an ADD cut short by a crash has
//! one), a netns file under `<state>/netns/` — and splits owners into live ones (their task still exists: its
//! names are restored and the task layer tears it down when the task goes, including a rebuild that finds a
//! create or delete cut short) and gone ones, whose [`Leftovers`] the NetworkSupervisor then removes (DEL,
//! unmount, forget), before any new attachment of the same owner may start.
//!
//! Blocking (run on a blocking thread, before berthd serves). This module must never DEL anything itself and
//! never touch an owner whose task exists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use berth_net::CachedAttachment;

use super::handle::Shared;
use super::names::{self, Member};
use super::owner::Owner;
use crate::store::NetAttachmentRecord;

/// Everything found of one owner.
#[derive(Debug, Default)]
pub(crate) struct Leftovers {
    /// The owner's store key (`task/<ns>/<id>`; `cni/<id>` for a cache entry whose id is not berthd's).
    pub key: String,
    /// The owner, when its key parses.
    pub owner: Option<Owner>,
    /// Its store records.
    pub records: Vec<NetAttachmentRecord>,
    /// Its berth-net cache entries.
    pub cached: Vec<CachedAttachment>,
    /// Its netns file, if one is there.
    pub netns: Option<PathBuf>,
}

/// Scan the store, berth-net's cache and the netns dir; restore the names of live owners (and rewrite their
/// hosts files once, in case a member went while berthd was down); return the leftovers of gone owners.
pub(crate) fn scan(shared: &Shared) -> Vec<Leftovers> {
    let mut by_owner: BTreeMap<String, Leftovers> = BTreeMap::new();
    let entry = |map: &mut BTreeMap<String, Leftovers>, key: String, owner: Option<Owner>| {
        let e = map.entry(key.clone()).or_default();
        e.key = key;
        if e.owner.is_none() {
            e.owner = owner;
        }
        e.key.clone()
    };
    match shared.ctx.store.list_net_attachments() {
        Ok(records) => {
            for r in records {
                let k = entry(&mut by_owner, r.owner.clone(), Owner::from_key(&r.owner));
                if let Some(e) = by_owner.get_mut(&k) {
                    e.records.push(r);
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the network records"),
    }
    let (cached, errors) = shared.cni.list_cached();
    for e in errors {
        tracing::warn!(error = %e, "unreadable attachment cache entry (it cannot be DEL'd from here)");
    }
    for c in cached {
        let owner = Owner::from_cni_id(&c.attachment.container_id);
        let key = owner
            .as_ref()
            .map(Owner::key)
            .unwrap_or_else(|| format!("cni/{}", c.attachment.container_id));
        let k = entry(&mut by_owner, key, owner);
        if let Some(e) = by_owner.get_mut(&k) {
            e.cached.push(c);
        }
    }
    let netns_root = shared.state.join("netns");
    for ns in std::fs::read_dir(&netns_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        for id in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let id_name = id.file_name().to_string_lossy().into_owned();
            let owner = Owner::task(&ns_name, &id_name);
            let k = entry(&mut by_owner, owner.key(), Some(owner));
            if let Some(e) = by_owner.get_mut(&k) {
                e.netns = Some(id.path());
            }
        }
    }

    let config = &shared.ctx.config;
    let mut stale = Vec::new();
    let mut live: Vec<(String, Member)> = Vec::new();
    for (key, l) in by_owner {
        let exists = l.owner.as_ref().is_some_and(|o| o.exists(config));
        if !exists {
            tracing::info!(owner = %key, records = l.records.len(), cached = l.cached.len(),
                netns = l.netns.is_some(), "network leftovers of a task that is gone");
            stale.push(l);
            continue;
        }
        if let Some(m) = member_of(&l.records, &shared.boot_id) {
            live.push((key, m));
        }
    }
    let mut registry = shared.names.lock().unwrap_or_else(|e| e.into_inner());
    for (key, m) in live {
        registry.adopt(&key, m);
    }
    let keys: Vec<String> = registry.keys();
    for key in keys {
        if let Some((path, text)) = registry.file_of(&key) {
            if let Err(e) = names::rewrite_in_place(&path, &text) {
                tracing::debug!(file = %path.display(), error = %e, "cannot rewrite a hosts file");
            }
        }
    }
    stale
}

/// The names member a live owner's records describe (records of an earlier boot describe nothing live).
fn member_of(records: &[NetAttachmentRecord], boot_id: &str) -> Option<Member> {
    let mut recs: Vec<&NetAttachmentRecord> =
        records.iter().filter(|r| r.boot_id == boot_id).collect();
    recs.sort_by_key(|r| (r.ifname.len(), r.ifname.clone()));
    let first = recs.first()?;
    Some(Member {
        names: first.names.clone(),
        hosts_file: first.hosts_file.clone(),
        addrs: recs
            .iter()
            .filter_map(|r| {
                let ip = r.ips.first()?.split('/').next()?.parse::<IpAddr>().ok()?;
                Some((r.network.clone(), ip))
            })
            .collect(),
    })
}
