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

/// Allocates one address of range set `set` (number `idx`) to (`id`, `ifname`): `requested`
/// if given, else the next free one.
pub fn allocate(
    store: &mut dyn Store,
    set: &RangeSet,
    idx: usize,
    id: &str,
    ifname: &str,
    requested: Option<IpAddr>,
) -> Result<IpConfig> {
    if let Some(ip) = requested {
        let Some(r) = set.range_for(ip) else {
            return Err(Error::InvalidConfig(format!(
                "requested IP address {ip} is not in range set {set}"
            )));
        };
        if ip == r.gateway {
            return Err(Error::InvalidConfig(format!(
                "requested ip {ip} is subnet's gateway"
            )));
        }
        if r.is_reserved_address(ip) {
            return Err(Error::InvalidConfig(format!(
                "requested ip {ip} is the network or broadcast address of {}",
                r.subnet
            )));
        }
        if !store.reserve(id, ifname, ip, idx)? {
            return Err(Error::Conflict(format!(
                "requested IP address {ip} is not available in range set {set}"
            )));
        }
        return Ok(ip_config(ip, r));
    }

    // The spec forbids a second allocation for the same attachment.
    for held in store.get_by_id(id, ifname)? {
        if set.contains(held) {
            return Err(Error::Conflict(format!(
                "{held} has been allocated to {id}, duplicate allocation is not allowed"
            )));
        }
    }
    let last = store.last_reserved(idx)?;
    for (ip, r) in Candidates::new(set, last) {
        if store.reserve(id, ifname, ip, idx)? {
            return Ok(ip_config(ip, r));
        }
    }
    Err(Error::NoAddress(format!(
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
