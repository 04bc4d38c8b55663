//! Allocation from a range set, as the reference's `allocator.go`: round robin from the address
//! after the set's last reserved one, skipping the gateway (and, beyond the reference, the
//! network address and the IPv4 broadcast address should a range include them).

use std::net::IpAddr;

use cni::{Error, IpConfig, Result};
use ipnet::IpNet;

use crate::config::{from_u128, to_u128, Range, RangeSet};
use crate::store::Store;

/// The candidate addresses of a range set in allocation order: the reference's `RangeIter`.
pub struct Candidates<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<u128>,
    start: Option<u128>,
}

impl<'a> Candidates<'a> {
    /// Starts after `last` when the set holds it, else at the first range's start.
    pub fn new(set: &'a RangeSet, last: Option<IpAddr>) -> Candidates<'a> {
        let mut it = Candidates {
            set,
            idx: 0,
            cur: None,
            start: None,
        };
        if let Some(last) = last {
            if let Some(i) = set.ranges.iter().position(|r| r.contains(last)) {
                it.idx = i;
                it.cur = Some(to_u128(last));
            }
        }
        it
    }
}

impl<'a> Iterator for Candidates<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        let ranges = &self.set.ranges;
        loop {
            match self.cur {
                None => {
                    let s = to_u128(ranges[self.idx].range_start);
                    self.cur = Some(s);
                    self.start = Some(s);
                }
                Some(c) => {
                    let r = &ranges[self.idx];
                    let next = if c == to_u128(r.range_end) {
                        self.idx = (self.idx + 1) % ranges.len();
                        to_u128(ranges[self.idx].range_start)
                    } else {
                        c + 1
                    };
                    self.cur = Some(next);
                    match self.start {
                        None => self.start = Some(next),
                        // Back where we started: every address was offered.
                        Some(s) if s == next => return None,
                        Some(_) => {}
                    }
                }
            }
            let r = &ranges[self.idx];
            let ip = from_u128(self.cur.expect("set above"), r.subnet.addr().is_ipv4());
            if r.is_reserved_address(ip) {
                continue;
            }
            return Some((ip, r));
        }
    }
}

fn ip_config(ip: IpAddr, r: &Range) -> IpConfig {
    IpConfig {
        interface: None,
        address: IpNet::new(ip, r.subnet.prefix_len()).expect("prefix of a valid subnet"),
        gateway: Some(r.gateway),
    }
}

/// What [`allocate`] did for one range set.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub ip: IpConfig,
    /// A new lease was written (`false`: the attachment's lease was handed back).
    pub new: bool,
    /// Leases of the attachment in this set that a static request replaced.
    pub replaced: Vec<IpAddr>,
}

/// Allocates one address of range set `set` (number `idx`) to (`id`, `ifname`): `requested`
/// if given, else the next free one.
///
/// An attachment that already holds a lease in the set (an ADD again without a DEL, as after a
/// crash or a restart of the container) gets that lease back, and the round-robin pointer
/// stays where it is; with a static request, the held address is handed back when it is the
/// requested one, and otherwise replaced by it. An address held by anyone else is refused.
pub fn allocate(
    store: &mut dyn Store,
    set: &RangeSet,
    idx: usize,
    id: &str,
    ifname: &str,
    requested: Option<IpAddr>,
) -> Result<Allocation> {
    let held: Vec<IpAddr> = store
        .get_by_id(id, ifname)?
        .into_iter()
        .filter(|ip| set.contains(*ip))
        .collect();
    if let Some(ip) = requested {
        let Some(r) = set.range_for(ip) else {
            return Err(Error::invalid_config(format!(
                "requested IP address {ip} is not in range set {set}"
            )));
        };
        if ip == r.gateway {
            return Err(Error::invalid_config(format!("requested ip {ip} is subnet's gateway")));
        }
        if r.is_reserved_address(ip) {
            return Err(Error::invalid_config(format!(
                "requested ip {ip} is the network or broadcast address of {}",
                r.subnet
            )));
        }
        if held.contains(&ip) {
            return Ok(Allocation {
                ip: ip_config(ip, r),
                new: false,
                replaced: Vec::new(),
            });
        }
        if !store.reserve(id, ifname, ip, idx)? {
            let holder = match store.owner(ip)? {
                Some(o) => match &o.ifname {
                    Some(ifn) => format!(": held by container {} (interface {ifn})", o.container_id),
                    None => format!(": held by container {}", o.container_id),
                },
                None => String::new(),
            };
            return Err(Error::conflict(format!(
                "requested IP address {ip} is not available in range set {set}{holder}"
            )));
        }
        // The new lease first, then the old one goes: a refused request keeps what was held.
        let mut replaced = Vec::new();
        for old in held {
            if store.release(id, ifname, old)? {
                replaced.push(old);
            }
        }
        return Ok(Allocation {
            ip: ip_config(ip, r),
            new: true,
            replaced,
        });
    }

    if let Some(&ip) = held.first() {
        let r = set.range_for(ip).expect("the set contains it");
        return Ok(Allocation {
            ip: ip_config(ip, r),
            new: false,
            replaced: Vec::new(),
        });
    }
    let last = store.last_reserved(idx)?;
    // After a lost race (etcd), skip a few free candidates so that the losers spread out; a
    // second pass without skipping makes sure a free address is always found.
    let spread = store.spread(idx);
    for skip in [spread, 0] {
        let mut skip = skip;
        for (ip, r) in Candidates::new(set, last) {
            if skip > 0 && !store.is_reserved(ip)? {
                skip -= 1;
                continue;
            }
            if store.reserve(id, ifname, ip, idx)? {
                return Ok(Allocation {
                    ip: ip_config(ip, r),
                    new: true,
                    replaced: Vec::new(),
                });
            }
        }
        if spread == 0 {
            break;
        }
    }
    Err(Error::no_address(format!(
        "no IP addresses available in range set: {set}"
    )))
}

/// Whether range set `set` (number `idx`) has a free address, looking in allocation order.
pub fn has_free_address(store: &mut dyn Store, set: &RangeSet, idx: usize) -> Result<bool> {
    let last = store.last_reserved(idx)?;
    for (ip, _) in Candidates::new(set, last) {
        if !store.is_reserved(ip)? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpamConfig;
    use crate::disk::DiskStore;
    use serde_json::json;

    fn sets(ranges: serde_json::Value) -> Vec<RangeSet> {
        let v = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": ranges}});
        IpamConfig::load(v.to_string().as_bytes(), "").unwrap().range_sets
    }

    fn order(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        Candidates::new(set, last.map(|s| s.parse().unwrap()))
            .map(|(ip, _)| ip.to_string())
            .collect()
    }

    struct Bed {
        _dir: tempfile::TempDir,
        store: DiskStore,
    }

    fn bed() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), "n", true).unwrap().unwrap();
        Bed { _dir: dir, store }
    }

    fn get(b: &mut Bed, set: &RangeSet, id: &str) -> Result<String> {
        allocate(&mut b.store, set, 0, id, "eth0", None).map(|c| c.ip.address.to_string())
    }

    #[test]
    fn candidates_follow_the_reference_order() {
        let s = &sets(json!([[{"subnet": "10.1.0.0/29"}]]))[0];
        // From the start: .1 is the gateway.
        assert_eq!(
            order(s, None),
            [".2", ".3", ".4", ".5", ".6"].map(|x| format!("10.1.0{x}"))
        );
        // After the last reserved one, wrapping around; the last reserved one comes last.
        assert_eq!(
            order(s, Some("10.1.0.4")),
            [".5", ".6", ".2", ".3", ".4"].map(|x| format!("10.1.0{x}"))
        );
        // A last reserved address outside the set is ignored.
        assert_eq!(order(s, Some("10.9.0.4"))[0], "10.1.0.2");
    }

    #[test]
    fn candidates_cross_ranges_of_a_set() {
        let s = &sets(json!([[
            {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.11"},
            {"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10", "rangeEnd": "10.2.0.11"}
        ]]))[0];
        assert_eq!(
            order(s, Some("10.1.0.11")),
            ["10.2.0.10", "10.2.0.11", "10.1.0.10", "10.1.0.11"]
        );
    }

    #[test]
    fn skips_network_broadcast_and_gateway() {
        let s = &sets(
            json!([[{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.7", "gateway": "10.1.0.3"}]]),
        )[0];
        assert_eq!(
            order(s, None),
            ["10.1.0.1", "10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
        );
        // IPv6 has no broadcast: the last address is handed out; the network address is not.
        let s6 = &sets(json!([[{"subnet": "fd00::/126", "rangeStart": "fd00::"}]]))[0];
        assert_eq!(order(s6, None), ["fd00::2", "fd00::3"]);
    }

    #[test]
    fn round_robin_does_not_reuse_a_released_address_at_once() {
        let s = &sets(json!([[{"subnet": "10.1.0.0/29"}]]))[0];
        let mut b = bed();
        assert_eq!(get(&mut b, s, "c1").unwrap(), "10.1.0.2/29");
        assert_eq!(get(&mut b, s, "c2").unwrap(), "10.1.0.3/29");
        b.store.release_by_id("c1", "eth0").unwrap();
        assert_eq!(get(&mut b, s, "c3").unwrap(), "10.1.0.4/29");
        assert_eq!(get(&mut b, s, "c4").unwrap(), "10.1.0.5/29");
        assert_eq!(get(&mut b, s, "c5").unwrap(), "10.1.0.6/29");
        // Wraps to the released .2.
        assert_eq!(get(&mut b, s, "c6").unwrap(), "10.1.0.2/29");
        let e = get(&mut b, s, "c7").unwrap_err();
        assert_eq!(e.code(), 102);
        assert_eq!(
            e.to_string(),
            "no IP addresses available in range set: 10.1.0.1-10.1.0.6"
        );
        assert!(!has_free_address(&mut b.store, s, 0).unwrap());
        b.store.release_by_id("c4", "eth0").unwrap();
        assert!(has_free_address(&mut b.store, s, 0).unwrap());
        assert_eq!(get(&mut b, s, "c7").unwrap(), "10.1.0.5/29");
    }

    #[test]
    fn ipv6_allocation_and_exhaustion() {
        let s = &sets(json!([[{"subnet": "fd00:1::/126"}]]))[0];
        let mut b = bed();
        assert_eq!(get(&mut b, s, "a").unwrap(), "fd00:1::2/126");
        assert_eq!(get(&mut b, s, "b").unwrap(), "fd00:1::3/126");
        let e = get(&mut b, s, "c").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no IP addresses available in range set: fd00:1::1-fd00:1::3"
        );
        let c = allocate(&mut b.store, s, 0, "a", "eth1", None).unwrap_err();
        assert_eq!(c.code(), 102);
    }

    #[test]
    fn an_attachment_that_holds_a_lease_gets_it_back() {
        let s = &sets(json!([[{"subnet": "10.1.0.0/24"}]]))[0];
        let mut b = bed();
        assert_eq!(get(&mut b, s, "c1").unwrap(), "10.1.0.2/24");
        assert_eq!(get(&mut b, s, "c2").unwrap(), "10.1.0.3/24");
        // c1 again (restarted, no DEL): its lease, the pointer left on c2's.
        let a = allocate(&mut b.store, s, 0, "c1", "eth0", None).unwrap();
        assert_eq!((a.ip.address.to_string(), a.new), ("10.1.0.2/24".into(), false));
        assert_eq!(b.store.last_reserved(0).unwrap(), Some(ip4("10.1.0.3")));
        assert_eq!(get(&mut b, s, "c3").unwrap(), "10.1.0.4/24");
        // Another interface of the same container is another attachment.
        let a = allocate(&mut b.store, s, 0, "c1", "eth1", None).unwrap();
        assert_eq!((a.ip.address.to_string(), a.new), ("10.1.0.5/24".into(), true));
    }

    fn ip4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_static_request_of_a_holder_is_handed_back_or_replaces_the_held_lease() {
        let s = &sets(json!([[{"subnet": "10.1.0.0/24"}]]))[0];
        let mut b = bed();
        let req = |x: &str| Some(ip4(x));
        let a = allocate(&mut b.store, s, 0, "c1", "eth0", req("10.1.0.50")).unwrap();
        assert!(a.new);
        get(&mut b, s, "c2").unwrap();
        // The same request again: handed back, nothing written.
        let a = allocate(&mut b.store, s, 0, "c1", "eth0", req("10.1.0.50")).unwrap();
        assert_eq!((a.ip.address.to_string(), a.new), ("10.1.0.50/24".into(), false));
        assert_eq!(b.store.last_reserved(0).unwrap(), Some(ip4("10.1.0.51")));
        // Another request: the held lease is replaced by it.
        let a = allocate(&mut b.store, s, 0, "c1", "eth0", req("10.1.0.60")).unwrap();
        assert_eq!((a.new, a.replaced.clone()), (true, vec![ip4("10.1.0.50")]));
        assert_eq!(b.store.get_by_id("c1", "eth0").unwrap(), [ip4("10.1.0.60")]);
        assert!(!b.store.is_reserved(ip4("10.1.0.50")).unwrap());
        // A dynamic lease is replaced by a request too.
        let a = allocate(&mut b.store, s, 0, "c2", "eth0", req("10.1.0.70")).unwrap();
        assert_eq!(a.replaced, [ip4("10.1.0.51")]);
        // Held by another attachment: refused, naming the holder; c1 keeps its lease.
        let e = allocate(&mut b.store, s, 0, "c1", "eth0", req("10.1.0.70")).unwrap_err();
        assert_eq!(e.code(), 103);
        assert_eq!(
            e.to_string(),
            "requested IP address 10.1.0.70 is not available in range set 10.1.0.1-10.1.0.254: \
             held by container c2 (interface eth0)"
        );
        assert_eq!(b.store.get_by_id("c1", "eth0").unwrap(), [ip4("10.1.0.60")]);
        let e = allocate(&mut b.store, s, 0, "c1", "eth1", req("10.1.0.60")).unwrap_err();
        assert!(e.to_string().ends_with("held by container c1 (interface eth0)"), "{e}");
    }

    #[test]
    fn static_requests() {
        let s = &sets(json!([[{"subnet": "10.1.0.0/24"}]]))[0];
        let mut b = bed();
        let ip = |s: &str| Some(s.parse().unwrap());
        let c = allocate(&mut b.store, s, 0, "c1", "eth0", ip("10.1.0.50")).unwrap();
        assert_eq!(c.ip.address.to_string(), "10.1.0.50/24");
        assert_eq!(c.ip.gateway, Some("10.1.0.1".parse().unwrap()));
        // Held by another container: conflict.
        let e = allocate(&mut b.store, s, 0, "c2", "eth0", ip("10.1.0.50")).unwrap_err();
        assert_eq!(e.code(), 103, "{e}");
        // The gateway and addresses outside the set: invalid.
        let e = allocate(&mut b.store, s, 0, "c2", "eth0", ip("10.1.0.1")).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (7, "requested ip 10.1.0.1 is subnet's gateway".into())
        );
        let e = allocate(&mut b.store, s, 0, "c2", "eth0", ip("10.1.1.1")).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        // The round robin goes on after the static one.
        assert_eq!(get(&mut b, s, "c3").unwrap(), "10.1.0.51/24");
    }
}
