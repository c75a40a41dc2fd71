//! Names on a network: each member of a network finds the others by container id and hostname through its own
//! /etc/hosts, which berthd keeps (see the module doc of `network` for why not DNS). [`Names`] knows every
//! member of every network (rebuilt from the store after a restart) and says which files to write when one
//! joins or leaves; [`write_new`] and [`rewrite_in_place`] write them.
//!
//! A member's hosts file is bind-mounted into its container, so it is rewritten in place (write from offset 0,
//! then truncate), never replaced by a rename: a new inode would not be what the container sees. The other two
//! files (resolv.conf, hostname) are written once. This module must never create a peer's file: a peer whose
//! file is gone (its task dir removed) is skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One member: the names it answers to and where each network reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// Hostname first, then the container id (deduplicated).
    pub names: Vec<String>,
    /// Its bind-mounted /etc/hosts.
    pub hosts_file: PathBuf,
    /// (network, first address on it), in the member's network order.
    pub addrs: Vec<(String, IpAddr)>,
}

impl Member {
    fn networks(&self) -> impl Iterator<Item = &str> {
        self.addrs.iter().map(|(n, _)| n.as_str())
    }
}

/// Every member of every network, by owner key.
#[derive(Debug, Default)]
pub(crate) struct Names {
    members: BTreeMap<String, Member>,
}

/// A file to (re)write with its content.
pub(crate) type HostsWrite = (PathBuf, String);

impl Names {
    /// Add a member without writing anything (recovery: the files are already right).
    pub fn adopt(&mut self, owner: &str, member: Member) {
        self.members.insert(owner.to_string(), member);
    }

    /// Add (or replace) a member. Returns its own hosts file and every peer's to rewrite.
    pub fn join(&mut self, owner: &str, member: Member) -> (HostsWrite, Vec<HostsWrite>) {
        self.members.insert(owner.to_string(), member);
        let own = match self.members.get(owner) {
            Some(m) => (m.hosts_file.clone(), self.render(owner)),
            None => (PathBuf::new(), String::new()),
        };
        (own, self.peer_files(owner))
    }

    /// Remove a member. Returns every former peer's hosts file to rewrite.
    pub fn leave(&mut self, owner: &str) -> Vec<HostsWrite> {
        let peers: Vec<String> = self.peers_of(owner);
        self.members.remove(owner);
        peers
            .into_iter()
            .filter_map(|p| {
                let m = self.members.get(&p)?;
                Some((m.hosts_file.clone(), self.render(&p)))
            })
            .collect()
    }

    /// Every member's owner key.
    pub fn keys(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// A member's hosts file and its content.
    pub fn file_of(&self, owner: &str) -> Option<HostsWrite> {
        let m = self.members.get(owner)?;
        Some((m.hosts_file.clone(), self.render(owner)))
    }

    /// Whether `owner` is a member.
    #[cfg(test)]
    pub fn contains(&self, owner: &str) -> bool {
        self.members.contains_key(owner)
    }

    /// Owners sharing at least one network with `owner`.
    fn peers_of(&self, owner: &str) -> Vec<String> {
        let Some(me) = self.members.get(owner) else {
            return Vec::new();
        };
        self.members
            .iter()
            .filter(|(k, m)| *k != owner && m.networks().any(|n| me.networks().any(|x| x == n)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn peer_files(&self, owner: &str) -> Vec<HostsWrite> {
        self.peers_of(owner)
            .into_iter()
            .filter_map(|p| {
                let m = self.members.get(&p)?;
                Some((m.hosts_file.clone(), self.render(&p)))
            })
            .collect()
    }

    /// The hosts file of `owner`: loopback, itself, then each peer at its address on the first network (in
    /// `owner`'s order) they share.
    pub fn render(&self, owner: &str) -> String {
        let mut out = String::from(HOSTS_HEADER);
        let Some(me) = self.members.get(owner) else {
            return out;
        };
        if let Some((_, ip)) = me.addrs.first() {
            out.push_str(&format!("{ip}\t{}\n", me.names.join(" ")));
        }
        for (key, peer) in &self.members {
            if key == owner {
                continue;
            }
            let shared = me
                .networks()
                .find_map(|n| peer.addrs.iter().find(|(pn, _)| pn == n));
            if let Some((_, ip)) = shared {
                out.push_str(&format!("{ip}\t{}\n", peer.names.join(" ")));
            }
        }
        out
    }
}

/// The start of every hosts file berthd writes.
pub(crate) const HOSTS_HEADER: &str = "\
# Written by berthd: this container and the containers on its networks, rewritten as they come and go.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
";

/// resolv.conf from a network's DNS settings (the CNI result's `dns`); a comment when it names no server.
pub(crate) fn resolv_conf(dns: &berth_net::Dns) -> String {
    let mut out = String::from("# Written by berthd from the container's first network.\n");
    if dns.nameservers.is_empty() {
        out.push_str("# The network names no DNS server: names resolve through /etc/hosts only.\n");
    }
    for ns in &dns.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    } else if let Some(d) = &dns.domain {
        out.push_str(&format!("domain {d}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// Create (or replace) a file of the task dir with `content`, 0644.
pub(crate) fn write_new(path: &Path, content: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(content.as_bytes())
}

/// Rewrite an existing file in place: the new content from offset 0, then cut to its length, so a reader sees
/// the old or the new lines, never an empty file. A missing file is an error (never created here).
pub(crate) fn rewrite_in_place(path: &Path, content: &str) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(content.as_bytes(), 0)?;
    f.set_len(content.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, addrs: &[(&str, &str)]) -> Member {
        Member {
            names: vec![format!("{name}-host"), name.to_string()],
            hosts_file: PathBuf::from(format!("/x/{name}/hosts")),
            addrs: addrs
                .iter()
                .map(|(n, ip)| (n.to_string(), ip.parse().expect("ip")))
                .collect(),
        }
    }

    #[test]
    fn members_see_peers_on_shared_networks_only() {
        let mut n = Names::default();
        let (own, peers) = n.join("a", member("a", &[("n1", "10.0.0.2")]));
        assert!(own.1.contains("10.0.0.2\ta-host a\n"), "{}", own.1);
        assert!(peers.is_empty());
        n.join("b", member("b", &[("n2", "10.1.0.2")]));
        let (own, peers) = n.join("c", member("c", &[("n2", "10.1.0.3"), ("n1", "10.0.0.3")]));
        // c sees a on n1 and b on n2; a and b are rewritten.
        assert!(own.1.contains("10.0.0.2\ta-host a\n"), "{}", own.1);
        assert!(own.1.contains("10.1.0.2\tb-host b\n"), "{}", own.1);
        assert_eq!(peers.len(), 2);
        let a = n.render("a");
        assert!(a.contains("10.0.0.3\tc-host c\n"), "{a}");
        assert!(!a.contains("b-host"), "{a}");
        assert!(a.starts_with(HOSTS_HEADER));
        let rewritten = n.leave("c");
        assert_eq!(rewritten.len(), 2);
        assert!(!n.render("a").contains("c-host"));
        assert!(!n.contains("c"));
        assert!(n.leave("nobody").is_empty());
    }

    #[test]
    fn in_place_rewrite_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("berthd-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("hosts");
        write_new(&p, "a long first version of the file\n").expect("write");
        let ino = std::fs::metadata(&p).expect("meta").ino();
        rewrite_in_place(&p, "short\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "short\n");
        assert_eq!(std::fs::metadata(&p).expect("meta").ino(), ino);
        assert!(rewrite_in_place(&dir.join("missing"), "x").is_err());
        assert!(!dir.join("missing").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn resolv_conf_from_dns() {
        let empty = resolv_conf(&berth_net::Dns::default());
        assert!(!empty.contains("nameserver"), "{empty}");
        let dns = berth_net::Dns {
            nameservers: vec!["10.0.0.1".into()],
            domain: Some("d".into()),
            search: vec!["a.b".into()],
            options: vec!["ndots:2".into()],
        };
        let text = resolv_conf(&dns);
        assert!(
            text.contains("nameserver 10.0.0.1\nsearch a.b\noptions ndots:2\n"),
            "{text}"
        );
    }
}
