//! The keys of a network in etcd, and the lease as stored (see the crate's module doc for the
//! layout as a whole).
//!
//! Lease keys sort by address: the address in fixed-width hex (8 digits for IPv4, 32 for
//! IPv6) under one prefix per family, so that a range of addresses is a range of keys and
//! etcd can read "the leases after this address" with a limited range read. The readable
//! address is in the value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use host_local::store::Owner;

/// The value of the layout marker of a migrated (or new) network.
pub const LAYOUT_V2: &str = "2";
/// The value of the layout marker while `host-local migrate` moves the leases.
pub const LAYOUT_MIGRATING: &str = "migrating";

/// An address family's key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn of(ip: IpAddr) -> Fam {
        if ip.is_ipv4() {
            Fam::V4
        } else {
            Fam::V6
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Fam::V4 => "ip4",
            Fam::V6 => "ip6",
        }
    }

    fn width(self) -> usize {
        match self {
            Fam::V4 => 8,
            Fam::V6 => 32,
        }
    }

    /// The largest address of the family, as a number.
    pub fn max(self) -> u128 {
        match self {
            Fam::V4 => u32::MAX as u128,
            Fam::V6 => u128::MAX,
        }
    }

    pub fn ip(self, v: u128) -> IpAddr {
        match self {
            Fam::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
            Fam::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }
}

/// An address as a number.
pub fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// `<family dir>/<hex>`: the part of every key of a lease that names its address.
fn addr_part(ip: IpAddr) -> String {
    let f = Fam::of(ip);
    format!("{}/{:0w$x}", f.dir(), num(ip), w = f.width())
}

/// Parses [`addr_part`] at the end of `s`.
fn parse_addr_part(s: &str) -> Option<IpAddr> {
    let (rest, hex) = s.rsplit_once('/')?;
    let fam = match rest.rsplit('/').next()? {
        "ip4" => Fam::V4,
        "ip6" => Fam::V6,
        _ => return None,
    };
    if hex.len() != fam.width() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u128::from_str_radix(hex, 16).ok()?;
    Some(fam.ip(v))
}

/// The keys of one network: `<prefix>/<network>/...`.
#[derive(Debug, Clone)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(prefix: &str, network: &str) -> Keys {
        Keys {
            base: format!("{prefix}/{network}/"),
        }
    }

    /// The network's own prefix, ending in `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `layout`: which layout the network's keys follow ([`LAYOUT_V2`]; absent: today's, or
    /// a network nobody used yet).
    pub fn marker(&self) -> String {
        format!("{}layout", self.base)
    }

    /// The lease of `ip`.
    pub fn lease(&self, ip: IpAddr) -> String {
        format!("{}{}", self.base, addr_part(ip))
    }

    /// The lease keys of a family start here.
    pub fn fam_start(&self, f: Fam) -> String {
        format!("{}{}/", self.base, f.dir())
    }

    /// ... and end before this key.
    pub fn fam_end(&self, f: Fam) -> String {
        format!("{}{}0", self.base, f.dir())
    }

    /// The address of a lease key.
    pub fn parse_lease(&self, key: &str) -> Option<IpAddr> {
        let rest = key.strip_prefix(&self.base)?;
        if rest.matches('/').count() != 1 {
            return None;
        }
        parse_addr_part(rest)
    }

    /// Every attachment-index entry of container `id` starts with this.
    pub fn att_prefix(&self, id: &str) -> String {
        format!("{}att/{id}/", self.base)
    }

    /// The attachment-index entry of a lease of `(id, ifname)` at `ip` (an old-format lease,
    /// without an ifname: an empty segment).
    pub fn att(&self, id: &str, ifname: Option<&str>, ip: IpAddr) -> String {
        format!("{}{}/{}", self.att_prefix(id), ifname.unwrap_or(""), addr_part(ip))
    }

    /// Every host-index entry of `host` starts with this.
    pub fn host_prefix(&self, host: &str) -> String {
        format!("{}host/{host}/", self.base)
    }

    /// The host-index entry of a lease of `host` at `ip`.
    pub fn host(&self, host: &str, ip: IpAddr) -> String {
        format!("{}{}", self.host_prefix(host), addr_part(ip))
    }

    /// The address of an index entry (either index).
    pub fn parse_index(key: &str) -> Option<IpAddr> {
        parse_addr_part(key)
    }

    /// The round-robin pointer of range set `n` (today's key: unchanged).
    pub fn last(&self, n: usize) -> String {
        format!("{}last/{n}", self.base)
    }

    pub fn last_prefix(&self) -> String {
        format!("{}last/", self.base)
    }

    /// The boot record of `host` (today's key: unchanged).
    pub fn boot(&self, host: &str) -> String {
        format!("{}boot/{host}", self.base)
    }

    /// Today's lease keys, `ips/<address as text>` (the layout before [`LAYOUT_V2`]).
    pub fn old_prefix(&self) -> String {
        format!("{}ips/", self.base)
    }

    pub fn old_lease(&self, ip: IpAddr) -> String {
        format!("{}{ip}", self.old_prefix())
    }

    pub fn parse_old_lease(&self, key: &str) -> Option<IpAddr> {
        key.strip_prefix(&self.old_prefix())?.parse().ok()
    }
}

/// The key after every key that starts with `prefix` (etcd's `WithPrefix` range end).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return b;
        }
    }
    vec![0]
}

/// A lease as stored in etcd: the same value under the lease key and its two index entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The address, readable (the key has it in hex). Absent in today's layout (its key has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// `None` for leases imported from the reference's old format (container id only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    pub host: String,
    /// The call that wrote it.
    #[serde(default)]
    pub token: String,
    /// The latest call that claimed the lease (an ADD again of the attachment): an undo of an
    /// earlier call releases nothing of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Unix time (seconds) it was written.
    #[serde(default)]
    pub time: u64,
}

impl Lease {
    pub fn owner(&self) -> Owner {
        Owner {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// Whether it is the lease of (`id`, `ifname`).
    pub fn is_of(&self, id: &str, ifname: Option<&str>) -> bool {
        self.container_id == id && self.ifname.as_deref() == ifname
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease serializes")
    }
}

/// A lease read from etcd with the revision of its last change.
#[derive(Debug, Clone)]
pub struct Held {
    pub lease: Lease,
    pub mod_revision: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_sort_by_address() {
        let k = Keys::new("/p", "net");
        let ips: Vec<IpAddr> = ["10.0.0.2", "10.0.0.10", "10.0.1.1", "9.255.255.255"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut keys: Vec<String> = ips.iter().map(|ip| k.lease(*ip)).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "/p/net/ip4/09ffffff",
                "/p/net/ip4/0a000002",
                "/p/net/ip4/0a00000a",
                "/p/net/ip4/0a000101"
            ]
        );
        for ip in &ips {
            assert_eq!(k.parse_lease(&k.lease(*ip)), Some(*ip));
        }
        let v6: IpAddr = "fd00::a".parse().unwrap();
        assert_eq!(k.lease(v6), "/p/net/ip6/fd00000000000000000000000000000a");
        assert_eq!(k.parse_lease(&k.lease(v6)), Some(v6));
        assert!(k.fam_start(Fam::V4) < k.lease(ips[0]) && k.lease(ips[0]).as_str() < k.fam_end(Fam::V4).as_str());
        assert_eq!(k.parse_lease("/p/net/ip4/0a00"), None);
        assert_eq!(k.parse_lease("/p/net/att/c/eth0/ip4/0a000002"), None);
    }

    #[test]
    fn index_keys_name_the_attachment_and_the_host() {
        let k = Keys::new("/p", "net");
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(k.att("c1", Some("eth0"), ip), "/p/net/att/c1/eth0/ip4/0a000002");
        assert_eq!(k.att("c1", None, ip), "/p/net/att/c1//ip4/0a000002");
        assert_eq!(k.host("node-a", ip), "/p/net/host/node-a/ip4/0a000002");
        assert_eq!(Keys::parse_index(&k.att("c1", Some("eth0"), ip)), Some(ip));
        assert_eq!(Keys::parse_index(&k.host("node-a", ip)), Some(ip));
        assert_eq!(prefix_end("/p/a/"), b"/p/a0");
    }

    #[test]
    fn a_lease_reads_as_today_and_with_the_new_fields() {
        let old: Lease =
            serde_json::from_str(r#"{"containerId":"c","ifname":"eth0","host":"h","token":"t","time":5}"#).unwrap();
        assert_eq!((old.ip, old.claim.as_deref()), (None, None));
        let new = Lease {
            ip: Some("10.0.0.2".parse().unwrap()),
            claim: Some("u".into()),
            ..old
        };
        let text = String::from_utf8(new.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"ip":"10.0.0.2","containerId":"c","ifname":"eth0","host":"h","token":"t","claim":"u","time":5}"#
        );
    }
}
