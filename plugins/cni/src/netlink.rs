//! The one module that speaks rtnetlink. It returns our own types ([`Link`], [`IpNet`],
//! [`RouteEntry`]) so that plugins never see netlink messages. One socket per namespace: a
//! [`Nl`] is opened in the current namespace or, through [`Netns::run`], in another one, and all
//! its requests run on one current-thread tokio runtime of this module.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    BridgeVlanInfoFlags, InfoBridgePort, InfoData, InfoKind, InfoMacVlan, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMacAddressMode, MacVlanMode, State,
};
use netlink_packet_route::neighbour::NeighbourFlags;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::{Handle, LinkBridge, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::error::{code, Error, Source};
use crate::netns::Netns;

/// A failed netlink request: what was asked, and the kernel's errno if it gave one.
#[derive(Debug)]
pub struct NlError {
    pub op: String,
    pub errno: Option<i32>,
    pub msg: String,
}

impl NlError {
    pub fn is(&self, errno: i32) -> bool {
        self.errno == Some(errno)
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.msg)
    }
}

impl From<NlError> for Error {
    fn from(e: NlError) -> Error {
        let code = match e.errno {
            Some(libc::EEXIST) | Some(libc::EBUSY) => code::CONFLICT,
            Some(libc::EOPNOTSUPP) => code::NOT_SUPPORTED,
            _ => code::NETLINK,
        };
        let err = Error::new(code, e.to_string());
        match e.errno {
            Some(n) => err.with_source(Source::Errno(n)),
            None => err,
        }
    }
}

pub type NlResult<T> = std::result::Result<T, NlError>;

fn nl_err(op: impl Into<String>, e: rtnetlink::Error) -> NlError {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = m.code.map(|c| -c.get());
            let msg = match errno {
                Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
                None => m.to_string(),
            };
            NlError {
                op: op.into(),
                errno,
                msg,
            }
        }
        other => NlError {
            op: op.into(),
            errno: None,
            msg: other.to_string(),
        },
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Private,
    Vepa,
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

/// A netlink socket in one namespace.
pub struct Nl {
    rt: &'static tokio::runtime::Runtime,
    h: Handle,
}

type Opened = std::io::Result<(
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    Handle,
    futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
)>;

/// A socket being opened in another namespace ([`Nl::open_in_background`]). Dropped
/// unfinished, its thread is joined.
pub struct NlOpening {
    rt: &'static tokio::runtime::Runtime,
    thread: Option<std::thread::JoinHandle<Result<Opened, Error>>>,
    path: String,
}

impl NlOpening {
    /// The socket, once its thread has opened it.
    pub fn finish(mut self) -> Result<Nl, Error> {
        let thread = self.thread.take().expect("finished once");
        let (conn, h, _) = thread
            .join()
            .map_err(|_| Error::internal("thread in network namespace panicked"))??
            .map_err(|e| Error::io(format!("opening a netlink socket in {}", self.path), e))?;
        self.rt.spawn(conn);
        Ok(Nl { rt: self.rt, h })
    }
}

impl Drop for NlOpening {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The process's one current-thread runtime, shared by the sockets of every namespace (built
/// once; never dropped: the process exits after one call).
fn runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::io("starting the netlink runtime", e))?;
    Ok(RT.get_or_init(|| rt))
}

impl Nl {
    /// A socket in this process's namespace.
    pub fn current() -> Result<Nl, Error> {
        let rt = runtime()?;
        let (conn, h, _) = {
            let _g = rt.enter();
            rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?
        };
        rt.spawn(conn);
        Ok(Nl { rt, h })
    }

    /// A socket inside `ns`: opened on a short-lived thread that entered `ns` (and the
    /// runtime's context, to register the socket); the requests run on this thread.
    pub fn open_in(ns: &Netns) -> Result<Nl, Error> {
        let rt = runtime()?;
        let handle = rt.handle().clone();
        let (conn, h, _) = ns
            .run(move || {
                let _g = handle.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| Error::io(format!("opening a netlink socket in {}", ns.path()), e))?;
        rt.spawn(conn);
        Ok(Nl { rt, h })
    }

    /// Starts opening a socket inside `ns` ([`Nl::open_in`]) on its own thread and returns at
    /// once: the thread start and the kernel's work overlap with the caller's until
    /// [`NlOpening::finish`].
    pub fn open_in_background(ns: &Netns) -> Result<NlOpening, Error> {
        let rt = runtime()?;
        let handle = rt.handle().clone();
        let thread = ns.spawn(move || {
            let _g = handle.enter();
            rtnetlink::new_connection()
        })?;
        Ok(NlOpening {
            rt,
            thread: Some(thread),
            path: ns.path().to_string(),
        })
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    // ---- links

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

    /// Creates macvlan `name` on `master` (a link of this namespace); inside `ns` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn add_macvlan(
        &self,
        name: &str,
        master: u32,
        mode: MacvlanMode,
        ns: Option<&Netns>,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
        bcqueuelen: Option<u32>,
        source_macs: &[[u8; 6]],
    ) -> NlResult<()> {
        let mut info = vec![InfoMacVlan::Mode(mode.to_nl())];
        if let Some(q) = bcqueuelen {
            info.push(InfoMacVlan::BcQueueLen(q));
        }
        if mode == MacvlanMode::Source && !source_macs.is_empty() {
            info.push(InfoMacVlan::MacAddrMode(MacVlanMacAddressMode::Set));
            info.push(InfoMacVlan::MacAddrData(
                source_macs.iter().map(|m| InfoMacVlan::MacAddr(*m)).collect(),
            ));
        }
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::MacVlan)
            .name(name.to_string())
            .link(master)
            .set_info_data(InfoData::MacVlan(info));
        if let Some(ns) = ns {
            b = b.setns_by_fd(ns.fd());
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = mac {
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

    // ---- addresses

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
            let msgs: Vec<AddressMessage> = self
                .h
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await?;
            Ok(msgs
                .iter()
                .filter(|m| m.header.index == index)
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
            let msgs: Vec<AddressMessage> =
                self.h.address().get().set_link_index_filter(index).execute().try_collect().await?;
            Ok(msgs.iter().any(|m| {
                m.header.index == index
                    && (m.header.flags.contains(AddressHeaderFlags::Tentative)
                        || m.attributes.iter().any(|a| {
                            matches!(a, AddressAttribute::Flags(f) if f.contains(netlink_packet_route::address::AddressFlags::Tentative))
                        }))
            }))
        })
        .map_err(|e| nl_err(format!("listing addresses of link {index}"), e))
    }

    pub fn del_addr(&self, index: u32, addr: IpNet) -> NlResult<()> {
        self.block(async {
            let msgs: Vec<AddressMessage> = self
                .h
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await?;
            for m in msgs {
                let hit = m.header.index == index
                    && m.header.prefix_len == addr.prefix_len()
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

    /// Runs `f` on a thread of its own, fresh network namespace (gone with the thread).
    fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: affects only this thread, which ends with the test.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare needs root");
            f()
        })
        .join()
        .expect("test thread")
    }

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
