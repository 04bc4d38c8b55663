//! Addresses, routes and proxy neighbours.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::neighbour::NeighbourFlags;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::{nl_err, Nl, NlResult};

/// A route as read from the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub priority: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub scope: u8,
    /// Who made the route (RTPROT_*: 2 kernel, 3 boot, 4 static, ...).
    pub protocol: u8,
    /// RTA_PREFSRC: the source address the route prefers.
    pub prefsrc: Option<IpAddr>,
}

/// A host route that its maker marks as its own: a `protocol` of its own and a `metric` that
/// names what it was made for, so that it can be told apart from every other route.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkedRoute {
    /// The destination (a /32 or /128 for a host route).
    pub dst: IpNet,
    pub oif: u32,
    /// The preferred source address (RTA_PREFSRC), if any.
    pub src: Option<IpAddr>,
    pub protocol: u8,
    pub metric: u32,
}

/// A route to add.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

impl Nl {
    // ---- addresses

    /// The address messages of link `index` (a dump may hold other links' addresses: the
    /// kernel filters it only with strict checking on, so the index is checked here too).
    async fn addr_msgs(&self, index: u32) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
        let msgs: Vec<AddressMessage> = self
            .h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(msgs.into_iter().filter(|m| m.header.index == index).collect())
    }

    /// Adds `addr` to link `index`; `nodad` skips IPv6 duplicate address detection.
    pub fn add_addr(&self, index: u32, addr: IpNet, nodad: bool) -> NlResult<()> {
        self.block(async {
            let mut req = self.h.address().add(index, addr.addr(), addr.prefix_len());
            if nodad && addr.addr().is_ipv6() {
                let m = req.message_mut();
                m.header.flags |= AddressHeaderFlags::Nodad;
            }
            req.execute().await
        })
        .map_err(|e| nl_err(format!("adding address {addr} to link {index}"), e))
    }

    /// The addresses of link `index` (global and link scope).
    pub fn addrs(&self, index: u32) -> NlResult<Vec<IpNet>> {
        self.block(async {
            let msgs = self.addr_msgs(index).await?;
            Ok(msgs
                .iter()
                .filter_map(|m| {
                    let ip = m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        m.attributes.iter().find_map(|a| match a {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    IpNet::new(ip, m.header.prefix_len).ok()
                })
                .collect())
        })
        .map_err(|e| nl_err(format!("listing addresses of link {index}"), e))
    }

    /// Whether an IPv6 address of link `index` is still tentative (DAD running).
    pub fn has_tentative(&self, index: u32) -> NlResult<bool> {
        self.block(async {
            let msgs = self.addr_msgs(index).await?;
            Ok(msgs.iter().any(|m| {
                m.header.flags.contains(AddressHeaderFlags::Tentative)
                    || m.attributes.iter().any(|a| {
                        matches!(a, AddressAttribute::Flags(f) if f.contains(netlink_packet_route::address::AddressFlags::Tentative))
                    })
            }))
        })
        .map_err(|e| nl_err(format!("listing addresses of link {index}"), e))
    }

    pub fn del_addr(&self, index: u32, addr: IpNet) -> NlResult<()> {
        self.block(async {
            let msgs = self.addr_msgs(index).await?;
            for m in msgs {
                let hit = m.header.prefix_len == addr.prefix_len()
                    && m.attributes
                        .iter()
                        .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == addr.addr()));
                if hit {
                    self.h.address().del(m).execute().await?;
                }
            }
            Ok(())
        })
        .map_err(|e| nl_err(format!("deleting address {addr} of link {index}"), e))
    }

    // ---- routes

    pub fn add_route(&self, r: &NewRoute) -> NlResult<()> {
        let mut msg = route_msg(r.dst);
        // The protocol of the reference's routes (netlink's default), not the builder's `static`.
        msg.header.protocol = RouteProtocol::Boot;
        msg.attributes.push(RouteAttribute::Oif(r.oif));
        if let Some(gw) = r.gw {
            msg.attributes.push(RouteAttribute::Gateway(match gw {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
        } else if r.scope.is_none() && r.dst.addr().is_ipv4() {
            msg.header.scope = RouteScope::Link;
        }
        if let Some(s) = r.scope {
            msg.header.scope = RouteScope::from(s);
        }
        if let Some(p) = r.priority {
            msg.attributes.push(RouteAttribute::Priority(p));
        }
        if let Some(t) = r.table {
            if t < 256 {
                msg.header.table = t as u8;
            } else {
                msg.header.table = 252; // RT_TABLE_COMPAT: the real id is in RTA_TABLE
            }
            msg.attributes.push(RouteAttribute::Table(t));
        }
        let mut metrics = Vec::new();
        if let Some(m) = r.mtu {
            metrics.push(RouteMetric::Mtu(m));
        }
        if let Some(m) = r.advmss {
            metrics.push(RouteMetric::Advmss(m));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        self.block(async { self.h.route().add(msg).execute().await })
            .map_err(|e| nl_err(format!("adding route to {} via {:?} dev {}", r.dst, r.gw, r.oif), e))
    }

    /// The routes of the main table (and others) of both families.
    pub fn routes(&self) -> NlResult<Vec<RouteEntry>> {
        self.block(async {
            let mut out = Vec::new();
            for v6 in [false, true] {
                let q = if v6 {
                    RouteMessageBuilder::<Ipv6Addr>::new().build()
                } else {
                    RouteMessageBuilder::<Ipv4Addr>::new().build()
                };
                let msgs: Vec<RouteMessage> = self.h.route().get(q).execute().try_collect().await?;
                out.extend(msgs.iter().filter_map(parse_route));
            }
            Ok(out)
        })
        .map_err(|e| nl_err("listing routes", e))
    }

    /// Adds `r` to the main table: a link-scope route (IPv4) or a route without gateway
    /// (IPv6) through `r.oif`, with its protocol, metric and preferred source.
    pub fn add_marked_route(&self, r: &MarkedRoute) -> NlResult<()> {
        let mut msg = route_msg(r.dst);
        msg.header.protocol = RouteProtocol::from(r.protocol);
        msg.header.kind = RouteType::Unicast;
        if r.dst.addr().is_ipv4() {
            msg.header.scope = RouteScope::Link;
        }
        msg.attributes.push(RouteAttribute::Oif(r.oif));
        msg.attributes.push(RouteAttribute::Priority(r.metric));
        if let Some(src) = r.src {
            msg.attributes.push(RouteAttribute::PrefSource(match src {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
        }
        self.block(async { self.h.route().add(msg).execute().await })
            .map_err(|e| {
                nl_err(
                    format!(
                        "adding route to {} dev {} proto {} metric {}",
                        r.dst, r.oif, r.protocol, r.metric
                    ),
                    e,
                )
            })
    }

    /// Deletes the route `r` (as listed by [`Nl::routes`]): the kernel matches its
    /// destination, table, protocol, metric and interface, so that only that route goes. A
    /// route that is already gone is fine.
    pub fn del_route(&self, r: &RouteEntry) -> NlResult<()> {
        let mut msg = route_msg(r.dst);
        msg.header.protocol = RouteProtocol::from(r.protocol);
        msg.header.scope = RouteScope::from(r.scope);
        if r.table < 256 {
            msg.header.table = r.table as u8;
        } else {
            msg.header.table = 252;
        }
        msg.attributes.push(RouteAttribute::Table(r.table));
        if let Some(oif) = r.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(p) = r.priority {
            msg.attributes.push(RouteAttribute::Priority(p));
        }
        match self.block(async { self.h.route().del(msg).execute().await }) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl_err(
                    format!("deleting route to {} dev {:?} proto {}", r.dst, r.oif, r.protocol),
                    e,
                );
                if e.is(libc::ESRCH) || e.is(libc::ENOENT) || e.is(libc::ENODEV) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    // ---- neighbours

    /// Adds a proxy neighbour entry (`ip -6 neigh add proxy IP dev X`): with `proxy_ndp` on
    /// link `index`, the kernel answers neighbour solicitations for `ip` arriving there.
    /// An existing entry is fine.
    pub fn add_proxy_neigh(&self, index: u32, ip: IpAddr) -> NlResult<()> {
        match self.block(async {
            self.h
                .neighbours()
                .add(index, ip)
                .flags(NeighbourFlags::Proxy)
                .execute()
                .await
        }) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl_err(format!("adding proxy neighbour {ip} on link {index}"), e);
                if e.is(libc::EEXIST) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }
}

fn route_msg(dst: IpNet) -> RouteMessage {
    match dst {
        IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .build(),
        IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.addr(), n.prefix_len())
            .build(),
    }
}

fn parse_route(m: &RouteMessage) -> Option<RouteEntry> {
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let mut dst_ip: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let mut e = RouteEntry {
        dst: IpNet::new(dst_ip, 0).ok()?,
        gw: None,
        oif: None,
        table: m.header.table as u32,
        priority: None,
        mtu: None,
        advmss: None,
        scope: u8::from(m.header.scope),
        protocol: u8::from(m.header.protocol),
        prefsrc: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst_ip = (*a).into(),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst_ip = (*a).into(),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => e.gw = Some((*a).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => e.gw = Some((*a).into()),
            RouteAttribute::Oif(i) => e.oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => e.prefsrc = Some((*a).into()),
            RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => e.prefsrc = Some((*a).into()),
            RouteAttribute::Table(t) => e.table = *t,
            RouteAttribute::Priority(p) => e.priority = Some(*p),
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    match x {
                        RouteMetric::Mtu(v) => e.mtu = Some(*v),
                        RouteMetric::Advmss(v) => e.advmss = Some(*v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    e.dst = IpNet::new(dst_ip, m.header.destination_prefix_length).ok()?;
    Some(e)
}
