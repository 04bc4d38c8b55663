//! Links: what we know of one, making bridges, veth pairs and macvlans, changing them, bridge
//! ports and their VLANs, waiting for carrier; MACs.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    BridgeVlanInfoFlags, InfoBridgePort, InfoData, InfoKind, InfoMacVlan, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMacAddressMode, MacVlanMode, State,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::{LinkBridge, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec};

use super::{nl_err, Nl, NlError, NlResult};
use crate::netns::Netns;

/// What we know of a link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `macvlan`, … (None for physical devices).
    pub kind: Option<String>,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    /// Operationally up (IF_OPER_UP, or UNKNOWN with carrier): the link can carry traffic.
    pub oper_up: bool,
    pub promisc: bool,
    /// Index of the bridge (controller) this link is a port of.
    pub master: Option<u32>,
    /// IFLA_LINK: the parent (macvlan master, veth peer) index, in `link_netnsid`'s namespace.
    pub parent: Option<u32>,
    pub link_netnsid: Option<i32>,
    pub macvlan_mode: Option<MacvlanMode>,
    /// Bridge port flags, when the link is a bridge port.
    pub hairpin: Option<bool>,
    pub isolated: Option<bool>,
    pub vlan_filtering: Option<bool>,
    /// IFLA_IFALIAS: the link's free-text description (`ip link set dev X alias ...`).
    pub alias: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacvlanMode {
    Private,
    Vepa,
    /// The reference's default (`mode` empty).
    #[default]
    Bridge,
    Passthru,
    Source,
}

impl MacvlanMode {
    pub fn parse(s: &str) -> Option<MacvlanMode> {
        Some(match s {
            "" | "bridge" => MacvlanMode::Bridge,
            "private" => MacvlanMode::Private,
            "vepa" => MacvlanMode::Vepa,
            "passthru" => MacvlanMode::Passthru,
            "source" => MacvlanMode::Source,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Passthru => "passthru",
            MacvlanMode::Source => "source",
        }
    }
    fn to_nl(self) -> MacVlanMode {
        match self {
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
            MacvlanMode::Source => MacVlanMode::Source,
        }
    }
    fn from_nl(m: &MacVlanMode) -> Option<MacvlanMode> {
        Some(match m {
            MacVlanMode::Private => MacvlanMode::Private,
            MacVlanMode::Vepa => MacvlanMode::Vepa,
            MacVlanMode::Bridge => MacvlanMode::Bridge,
            MacVlanMode::Passthrough => MacvlanMode::Passthru,
            MacVlanMode::Source => MacvlanMode::Source,
            _ => return None,
        })
    }
}

/// How [`Nl::add_macvlan`] makes a macvlan; `None` (and no source MACs) leaves the kernel's
/// default.
#[derive(Debug, Clone, Default)]
pub struct MacvlanOptions<'a> {
    pub mode: MacvlanMode,
    /// Made directly inside this namespace, else in the socket's own.
    pub netns: Option<&'a Netns>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// IFLA_MACVLAN_BC_QUEUE_LEN.
    pub bcqueuelen: Option<u32>,
    /// The allowed source MACs of a `source`-mode macvlan.
    pub source_macs: &'a [[u8; 6]],
}

/// Changes to make to a link in one request; `None` leaves a property as it is.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
    pub promisc: Option<bool>,
    pub master: Option<u32>,
    pub txqueuelen: Option<u32>,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), refusing multicast and all-zero addresses.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    // One kind of separator, as Go's net.ParseMAC.
    let sep = if s.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = s.split(sep).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        // Exactly two hex digits: from_str_radix alone would take a sign ("+2").
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    if out[0] & 1 == 1 || out == [0; 6] {
        return None;
    }
    Some(out)
}

impl Nl {
    /// The link named `name`, if any.
    pub fn link(&self, name: &str) -> NlResult<Option<Link>> {
        let r = self.block(async {
            self.h
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match r {
            Ok(m) => Ok(m.map(|m| parse_link(&m))),
            Err(e) => {
                let e = nl_err(format!("looking up link {name}"), e);
                if e.is(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub fn link_by_index(&self, index: u32) -> NlResult<Option<Link>> {
        let r = self.block(async { self.h.link().get().match_index(index).execute().try_next().await });
        match r {
            Ok(m) => Ok(m.map(|m| parse_link(&m))),
            Err(e) => {
                let e = nl_err(format!("looking up link {index}"), e);
                if e.is(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub fn links(&self) -> NlResult<Vec<Link>> {
        self.block(async {
            let msgs: Vec<LinkMessage> = self.h.link().get().execute().try_collect().await?;
            Ok(msgs.iter().map(parse_link).collect())
        })
        .map_err(|e| nl_err("listing links", e))
    }

    /// Waits until every link of `indexes` is operationally up (has carrier: the kernel passes
    /// its traffic), for at most `max`, and returns the links that are still not up. The links
    /// must be in this process's namespace, whose link notifications are subscribed before the
    /// links' state is read, so that no change is missed and no time is spent sleeping.
    pub fn wait_oper_up(&self, indexes: &[u32], max: std::time::Duration) -> NlResult<Vec<u32>> {
        let not_up = |nl: &Nl, list: &[u32]| -> NlResult<Vec<u32>> {
            let mut out = Vec::new();
            for &i in list {
                if let Some(l) = nl.link_by_index(i)? {
                    if !l.oper_up {
                        out.push(i);
                    }
                }
            }
            Ok(out)
        };
        // Mostly they are up already: no subscription then.
        let pending = not_up(self, indexes)?;
        if pending.is_empty() {
            return Ok(pending);
        }
        let sub = |e: std::io::Error| NlError {
            op: "subscribing to link notifications".into(),
            errno: e.raw_os_error(),
            msg: e.to_string(),
        };
        use rtnetlink::sys::AsyncSocket;
        let (mut conn, _h, mut events) = {
            let _g = self.rt.enter();
            rtnetlink::new_connection().map_err(sub)?
        };
        conn.socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
            .map_err(sub)?;
        let task = self.rt.spawn(conn);
        // Read again now that no change can be missed.
        let mut pending = not_up(self, &pending)?;
        let deadline = tokio::time::Instant::now() + max;
        let pending = self.block(async {
            use futures::StreamExt;
            while !pending.is_empty() {
                let ev = match tokio::time::timeout_at(deadline, events.next()).await {
                    Ok(Some((ev, _))) => ev,
                    _ => break,
                };
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) = ev.payload {
                    if oper_up(&m) {
                        pending.retain(|&i| i != m.header.index);
                    }
                }
            }
            pending
        });
        task.abort();
        Ok(pending)
    }

    async fn add_msg(&self, msg: LinkMessage) -> Result<(), rtnetlink::Error> {
        self.h.link().add(msg).execute().await
    }

    /// Creates bridge `name` (fails with EEXIST if a link of that name exists).
    pub fn add_bridge(&self, name: &str, mtu: Option<u32>, vlan_filtering: bool) -> NlResult<()> {
        let mut b = LinkBridge::new(name);
        if vlan_filtering {
            b = b.vlan_filtering(true);
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.block(self.add_msg(b.build()))
            .map_err(|e| nl_err(format!("creating bridge {name}"), e))
    }

    /// Creates a veth pair: `host` here, `peer` directly inside `peer_ns`.
    pub fn add_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: &Netns,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> NlResult<()> {
        let mut pb = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_ns.fd());
        if let Some(m) = mtu {
            pb = pb.mtu(m);
        }
        if let Some(mac) = peer_mac {
            pb = pb.address(mac.to_vec());
        }
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(pb.build())));
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.block(self.add_msg(b.build()))
            .map_err(|e| nl_err(format!("creating veth pair {host}/{peer}"), e))
    }

    /// Creates macvlan `name` on `master` (a link of this namespace), as `o` says.
    pub fn add_macvlan(&self, name: &str, master: u32, o: &MacvlanOptions) -> NlResult<()> {
        let mut info = vec![InfoMacVlan::Mode(o.mode.to_nl())];
        if let Some(q) = o.bcqueuelen {
            info.push(InfoMacVlan::BcQueueLen(q));
        }
        if o.mode == MacvlanMode::Source && !o.source_macs.is_empty() {
            info.push(InfoMacVlan::MacAddrMode(MacVlanMacAddressMode::Set));
            info.push(InfoMacVlan::MacAddrData(
                o.source_macs.iter().map(|m| InfoMacVlan::MacAddr(*m)).collect(),
            ));
        }
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::MacVlan)
            .name(name.to_string())
            .link(master)
            .set_info_data(InfoData::MacVlan(info));
        if let Some(ns) = o.netns {
            b = b.setns_by_fd(ns.fd());
        }
        if let Some(m) = o.mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = o.mac {
            b = b.address(mac.to_vec());
        }
        self.block(self.add_msg(b.build()))
            .map_err(|e| nl_err(format!("creating macvlan {name}"), e))
    }

    /// Applies `c` to link `index` in one request (renames need the link down; the kernel
    /// renames before it changes flags).
    pub fn set_link(&self, index: u32, c: &LinkChange) -> NlResult<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(n) = &c.name {
            b = b.name(n.clone());
        }
        if let Some(mac) = c.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(m) = c.mtu {
            b = b.mtu(m);
        }
        if let Some(m) = c.master {
            b = b.controller(m);
        }
        if let Some(q) = c.txqueuelen {
            b = b.txqueuelen(q);
        }
        if let Some(p) = c.promisc {
            b = b.promiscuous(p);
        }
        match c.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        self.block(async { self.h.link().set(b.build()).execute().await })
            .map_err(|e| nl_err(format!("changing link {index} ({c:?})"), e))
    }

    /// Sets link `index` up (the one change of [`Nl::set_link`]).
    pub fn set_up(&self, index: u32) -> NlResult<()> {
        self.set_link(
            index,
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
    }

    /// Sets the alias (IFLA_IFALIAS, a free-text description) of link `index`.
    pub fn set_alias(&self, index: u32, alias: &str) -> NlResult<()> {
        let b = LinkUnspec::new_with_index(index).alias(alias);
        self.block(async { self.h.link().set(b.build()).execute().await })
            .map_err(|e| nl_err(format!("setting the alias of link {index}"), e))
    }

    /// Moves link `index` into `ns`.
    pub fn move_link(&self, index: u32, ns: &Netns) -> NlResult<()> {
        let b = LinkUnspec::new_with_index(index).setns_by_fd(ns.fd());
        self.block(async { self.h.link().set(b.build()).execute().await })
            .map_err(|e| nl_err(format!("moving link {index} to {}", ns.path()), e))
    }

    /// Sets bridge port flags of `index` (hairpin, isolated, learning).
    pub fn set_bridge_port(&self, index: u32, hairpin: Option<bool>, isolated: Option<bool>) -> NlResult<()> {
        let mut data = Vec::new();
        if let Some(h) = hairpin {
            data.push(InfoBridgePort::HairpinMode(h));
        }
        if let Some(i) = isolated {
            data.push(InfoBridgePort::Isolated(i));
        }
        if data.is_empty() {
            return Ok(());
        }
        let b = LinkUnspec::new_with_index(index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(data));
        self.block(async { self.h.link().set_port(b.build()).execute().await })
            .map_err(|e| nl_err(format!("setting bridge port flags of link {index}"), e))
    }

    /// Adds VLAN `vid` to bridge port `index` (`pvid`: ingress untagged frames get it;
    /// `untagged`: egress frames leave untagged). Needs a bridge with VLAN filtering.
    pub fn bridge_vlan_add(&self, index: u32, vid: u16, pvid: bool, untagged: bool) -> NlResult<()> {
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let msg = LinkBridgeVlan::new(index).vlan(vid, flags).build();
        self.block(async { self.h.link().set(msg).execute().await })
            .map_err(|e| nl_err(format!("adding VLAN {vid} to bridge port {index}"), e))
    }

    /// Removes VLAN `vid` from bridge port `index`; a VLAN that is not there is fine.
    pub fn bridge_vlan_del(&self, index: u32, vid: u16) -> NlResult<()> {
        let msg = LinkBridgeVlan::new(index)
            .vlan(vid, BridgeVlanInfoFlags::empty())
            .build();
        match self.block(async { self.h.link().del_with_message(msg).execute().await }) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl_err(format!("removing VLAN {vid} from bridge port {index}"), e);
                if e.is(libc::ENOENT) || e.is(libc::EINVAL) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    pub fn del_link(&self, index: u32) -> NlResult<()> {
        self.block(async { self.h.link().del(index).execute().await })
            .map_err(|e| nl_err(format!("deleting link {index}"), e))
    }

    /// Deletes link `name`; Ok(false) when it did not exist.
    pub fn del_link_by_name(&self, name: &str) -> NlResult<bool> {
        match self.link(name)? {
            None => Ok(false),
            Some(l) => match self.del_link(l.index) {
                Ok(()) => Ok(true),
                Err(e) if e.is(libc::ENODEV) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }
}

fn oper_up(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::OperState(State::Up) => true,
        LinkAttribute::OperState(State::Unknown) => m.header.flags.contains(LinkFlags::LowerUp),
        _ => false,
    })
}

fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        oper_up: oper_up(m),
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = format_mac(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(v) => l.master = Some(*v),
            LinkAttribute::Link(v) => l.parent = Some(*v),
            LinkAttribute::LinkNetNsId(v) => l.link_netnsid = Some(*v),
            LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::MacVlan(d)) => {
                            for x in d {
                                if let InfoMacVlan::Mode(mode) = x {
                                    l.macvlan_mode = MacvlanMode::from_nl(mode);
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::Bridge(d)) => {
                            for x in d {
                                if let netlink_packet_route::link::InfoBridge::VlanFiltering(v) = x {
                                    l.vlan_filtering = Some(*v);
                                }
                            }
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(d)) => {
                            for x in d {
                                match x {
                                    InfoBridgePort::HairpinMode(v) => l.hairpin = Some(*v),
                                    InfoBridgePort::Isolated(v) => l.isolated = Some(*v),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::socket::in_fresh_netns;

    fn ip(args: &[&str]) {
        // A child of this thread starts in its namespace.
        let st = std::process::Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    }

    #[test]
    fn wait_oper_up_follows_the_carrier() {
        in_fresh_netns(|| {
            ip(&["link", "add", "wa", "type", "veth", "peer", "name", "wb"]);
            ip(&["link", "set", "wa", "up"]);
            let nl = Nl::current().unwrap();
            let a = nl.link("wa").unwrap().unwrap().index;
            // The peer is down: no carrier, the wait ends at its bound.
            assert_eq!(
                nl.wait_oper_up(&[a], std::time::Duration::from_millis(100)).unwrap(),
                [a]
            );
            assert!(!nl.link_by_index(a).unwrap().unwrap().oper_up);
            // The peer comes up while we wait: the notification ends the wait.
            let child = std::process::Command::new("ip")
                .args(["link", "set", "wb", "up"])
                .spawn()
                .unwrap();
            let left = nl.wait_oper_up(&[a], std::time::Duration::from_secs(20)).unwrap();
            assert!(left.is_empty(), "{left:?}");
            assert!(nl.link_by_index(a).unwrap().unwrap().oper_up);
            let _ = child.wait_with_output();
        });
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("0a:58:0a:01:00:02"), Some([0x0a, 0x58, 0x0a, 1, 0, 2]));
        assert_eq!(parse_mac("01:00:5e:00:00:01"), None, "multicast");
        assert_eq!(parse_mac("00:00:00:00:00:00"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:01"), None);
        assert_eq!(parse_mac("0a:58:0a:01:00"), None);
        assert_eq!(parse_mac("0a-58-0a-01-00-02"), Some([0x0a, 0x58, 0x0a, 1, 0, 2]));
        assert_eq!(parse_mac("+2:00:00:00:00:01"), None, "a sign is no hex digit");
        assert_eq!(parse_mac("02:00:00:00:00:+1"), None);
        assert_eq!(parse_mac("0a:58-0a:01:00:02"), None, "mixed separators");
        assert_eq!(format_mac(&[0x0a, 0x58, 0x0a, 1, 0, 2]), "0a:58:0a:01:00:02");
    }
}
