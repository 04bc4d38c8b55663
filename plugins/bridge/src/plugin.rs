//! The bridge plugin's verbs, step by step as the reference does them, with every change of
//! an ADD undone when a later step fails.

use cni::teardown::Teardown;
use std::net::IpAddr;

use ipnet::IpNet;

use cni::delegate;
use cni::env::Command;
use cni::firewall;
use cni::iface;
use cni::netlink::{Link, LinkChange, Nl, NlOpening};
use cni::netns::{read_sysctl, write_sysctl, Netns};
use cni::trace::step;
use cni::txn::Txn;
use cni::{fault, Call, CniResult, Error, Interface, Plugin, Result, Route};

use crate::config::{BridgeConf, BridgeTeardown};

pub struct Bridge;

impl Plugin for Bridge {
    fn add(&self, call: &Call) -> Result<CniResult> {
        // The container's socket opens on its thread while the config is loaded and the host
        // socket made (finished in `add`).
        let (netns, opening, conf) = iface::load_while_opening(call, BridgeConf::load)?;
        let host = Nl::current()?;
        step("host socket");
        // Under the attachment lock; every change registers its undo (see `iface::transaction`).
        iface::transaction(call, "bridge", |txn| add(call, &conf, netns, &host, opening, txn))
    }

    /// Reads only what the teardown needs ([`BridgeTeardown`], the common keys as
    /// [`cni::teardown`] reads them): a config that went bad since the ADD is still torn down.
    fn del(&self, call: &Call) -> Result<()> {
        let conf = BridgeTeardown::decode(&call.stdin)?;
        let (net, id, ifname) = (&call.conf.name, &call.env.container_id, &call.env.ifname);
        // After the lease and the container interface (`iface::del`): the rules, found by
        // network and container, so this works with the netns gone.
        iface::del(call, |errs| {
            if conf.ip_masq.teardown_switch() {
                errs.note(firewall::teardown_masq(net, id, ifname, &[]));
                step("masquerade teardown");
            }
            if conf.mac_spoof_chk.teardown_switch() {
                errs.note(cni::spoofchk::teardown_spoofchk(id, ifname));
            }
        })
    }

    fn check(&self, call: &Call) -> Result<()> {
        let conf = BridgeConf::load(call)?;
        let (netns, prev) = iface::check_preamble(call)?;
        let host = Nl::current()?;
        let ifname = &call.env.ifname;

        // The bridge.
        let br = host
            .link(&conf.bridge)?
            .ok_or_else(|| Error::check_failed(format!("bridge {} does not exist", conf.bridge)))?;
        if br.kind.as_deref() != Some("bridge") {
            return Err(Error::check_failed(format!("{} is not a bridge", conf.bridge)));
        }
        if br.promisc != conf.promisc {
            return Err(Error::check_failed(format!(
                "bridge {} promiscuous mode is {}, config says {}",
                conf.bridge, br.promisc, conf.promisc
            )));
        }

        // The container interface of the previous result, and the link in the netns.
        let (cidx, cif) = prev
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| &i.name == ifname && i.sandbox.is_some())
            .ok_or_else(|| Error::check_failed(format!("previous result has no interface {ifname} in a sandbox")))?;
        let cont = Nl::open_in(netns)?;
        let link = cont
            .link(ifname)?
            .ok_or_else(|| Error::check_failed(format!("interface {ifname} not found in {}", netns.path())))?;
        if link.kind.as_deref() != Some("veth") {
            return Err(Error::check_failed(format!(
                "container interface {ifname} is not a veth"
            )));
        }
        iface::check_mac(cif, &link)?;

        // Its peer: a host veth of the previous result, on the bridge.
        let peer = link.parent.unwrap_or(0);
        let on_bridge = prev
            .interfaces
            .iter()
            .filter(|i| i.sandbox.is_none() && i.name != conf.bridge)
            .filter_map(|i| host.link(&i.name).ok().flatten())
            .any(|h| h.index == peer && h.master == Some(br.index));
        if !on_bridge {
            return Err(Error::check_failed(format!(
                "the host end of {ifname} is not a port of bridge {}",
                conf.bridge
            )));
        }
        iface::check_addrs(&cont, &link, &prev, cidx)?;
        iface::check_routes(&cont, &prev)?;
        Ok(())
    }

    /// Reads only the common keys ([`cni::teardown`]): the IPAM type, the network and the
    /// keep-list.
    fn gc(&self, call: &Call) -> Result<()> {
        iface::gc(call, |net| {
            let keep: Vec<(String, String)> = net.gc_keep().into_iter().map(|a| (a.container_id, a.ifname)).collect();
            firewall::gc_masq(&net.name, &keep)
        })
    }

    fn status(&self, call: &Call) -> Result<()> {
        let conf = BridgeConf::load(call)?;
        if let Some(t) = conf.net.ipam_type() {
            delegate::exec(t, Command::Status, call)?;
        }
        Ok(())
    }
}

/// How long ADD waits for the new port's carrier (the reference: about 2.5 s).
const CARRIER_WAIT: std::time::Duration = std::time::Duration::from_millis(2500);

fn add<'a>(
    call: &'a Call,
    conf: &'a BridgeConf,
    netns: &Netns,
    host: &'a Nl,
    opening: NlOpening,
    txn: &mut Txn<'a>,
) -> Result<CniResult> {
    let ifname = &call.env.ifname;
    let cont = opening.finish()?;
    step("open netns socket");
    iface::ensure_ifname_free(&cont, ifname, netns)?;

    // 1. The bridge, created or reused, up (a name taken by another kind of link fails here,
    //    before anything else is touched).
    let br = ensure_bridge(host, conf, txn)?;
    step("bridge");

    // 2. The veth pair, made while the IPAM plugin runs (its process start and work overlap
    //    with the kernel's; see `iface::with_ipam`).
    let ((host_veth, cont, cont_link), ipam) =
        iface::with_ipam(call, txn, |txn| setup_links(call, conf, netns, host, cont, &br, txn))?;

    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: br.name.clone(),
                mac: br.mac.clone(),
                ..Default::default()
            },
            Interface {
                name: host_veth.name.clone(),
                mac: host_veth.mac.clone(),
                ..Default::default()
            },
            iface::container_interface(ifname, &cont_link, netns),
        ],
        ..Default::default()
    };

    // 3. Addresses from IPAM, put on the container interface; the gateway on the bridge.
    if let Some(ipam) = ipam {
        iface::take_ipam(&mut result, ipam, 2);
        let gateways = calc_gateways(&mut result, conf);

        iface::container_sysctls(netns, ifname, &result, Some(conf.enable_dad))?;
        step("container sysctls");
        iface::configure(&cont, &cont_link, &result, 2, !conf.enable_dad)?;
        step("container addresses and routes");

        if conf.is_gw {
            let gw_link = if conf.vlan != 0 {
                let l = ensure_vlan_gateway(host, &br, conf)?;
                result.interfaces.push(Interface {
                    name: l.name.clone(),
                    mac: l.mac.clone(),
                    ..Default::default()
                });
                l
            } else {
                br.clone()
            };
            for gw in &gateways {
                ensure_addr(host, &gw_link, *gw, conf.force_address)?;
            }
            enable_forwarding(&gateways)?;
            step("gateway");
        }
        if conf.ip_masq {
            let addrs: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
            let backend = firewall::Backend::choose(conf.ip_masq_backend.as_deref())?;
            // Registered first: a setup that fails half way leaves rules too.
            txn.undo("the masquerade rules", move || {
                firewall::teardown_masq(&conf.net.name, &call.env.container_id, &call.env.ifname, &[])
            });
            firewall::setup_masq(backend, &conf.net.name, &call.env.container_id, ifname, &addrs)?;
            step("masquerade");
            fault::point("bridge:after-masq");
        }
    } else if !conf.disable_container_interface {
        cont.set_up(cont_link.index)?;
    }
    // The port must carry traffic before the container is told it may: wait (bounded) for the
    // host veth's carrier, as the reference does, and for the bridge's (which it gets once a
    // port forwards; not required, as a bridge with STP may take longer).
    if !conf.disable_container_interface {
        let down = host.wait_oper_up(&[host_veth.index, br.index], CARRIER_WAIT)?;
        if down.contains(&host_veth.index) {
            return Err(Error::try_again_later(format!(
                "bridge port {} has no carrier {CARRIER_WAIT:?} after it was set up",
                host_veth.name
            )));
        }
        step("carrier");
    }

    // 4. MACs may change as ports come and go: report them as they are now.
    if let Some(b) = host.link(&br.name)? {
        result.interfaces[0].mac = b.mac;
    }
    if let Some(dns) = conf.net.dns.as_ref().filter(|d| !d.is_empty()) {
        result.dns = dns.clone();
    }
    step("result");
    Ok(result)
}

/// The veth pair and the bridge port.
fn setup_links<'a>(
    call: &'a Call,
    conf: &BridgeConf,
    netns: &Netns,
    host: &'a Nl,
    cont: Nl,
    br: &Link,
    txn: &mut Txn<'a>,
) -> Result<(Link, Nl, Link)> {
    let ifname = &call.env.ifname;

    // The veth pair: the container end made inside the netns under a temporary name, then
    //    renamed there; the host end on the bridge.
    let (host_veth, cont_link) = setup_veth(host, &cont, netns, call, conf.mtu(), conf.mac, txn)?;
    step("veth");
    fault::point("bridge:after-veth");
    attach_port(host, host_veth.index, br)
        .map_err(|e| Error::from(e).context(format!("attaching {} to bridge {}", host_veth.name, br.name)))?;
    if conf.hairpin || conf.port_isolation {
        host.set_bridge_port(host_veth.index, Some(conf.hairpin), Some(conf.port_isolation))?;
    }
    setup_port_vlans(host, &host_veth, conf)?;
    step("bridge port");

    if conf.mac_spoof_chk {
        txn.undo("the MAC spoof check rules", move || {
            cni::spoofchk::teardown_spoofchk(&call.env.container_id, &call.env.ifname)
        });
        cni::spoofchk::setup_spoofchk(&host_veth.name, &cont_link.mac, &call.env.container_id, ifname)?;
    }

    Ok((host_veth, cont, cont_link))
}

fn ensure_bridge<'a>(host: &'a Nl, conf: &BridgeConf, txn: &mut Txn<'a>) -> Result<Link> {
    let vlan_filtering = conf.vlan != 0 || conf.vlan_trunk.is_some();
    let mut br = host.link(&conf.bridge)?;
    if br.is_none() {
        match host.add_bridge(&conf.bridge, conf.mtu(), vlan_filtering) {
            Ok(()) => {
                br = host.link(&conf.bridge)?;
                if let Some(index) = br.as_ref().map(|b| b.index) {
                    // Only if no other container attached to it meanwhile.
                    txn.undo(format!("bridge {}", conf.bridge), move || {
                        if host.links()?.iter().any(|l| l.master == Some(index)) {
                            return Ok(());
                        }
                        host.del_link(index).map_err(Error::from)
                    });
                }
            }
            // Another ADD created it meanwhile.
            Err(e) if e.is(libc::EEXIST) => br = host.link(&conf.bridge)?,
            Err(e) if vlan_filtering && e.is(libc::EOPNOTSUPP) => {
                return Err(Error::not_supported(format!(
                    "cannot create bridge {} with VLAN filtering, which \"vlan\"/\"vlanTrunk\" need: {e} (the kernel may lack CONFIG_BRIDGE_VLAN_FILTERING)",
                    conf.bridge
                )))
            }
            Err(e) => return Err(Error::from(e).context(format!("failed to create bridge {}", conf.bridge))),
        }
    }
    let br = br.ok_or_else(|| Error::netlink(format!("bridge {} vanished while being set up", conf.bridge)))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(Error::conflict(format!(
            "\"{}\" already exists but is not a bridge (it is a {} link)",
            conf.bridge,
            br.kind.as_deref().unwrap_or("physical")
        )));
    }
    if vlan_filtering && br.vlan_filtering != Some(true) {
        return Err(Error::not_supported(format!(
            "bridge {} has no VLAN filtering (the kernel may lack CONFIG_BRIDGE_VLAN_FILTERING), so \"vlan\"/\"vlanTrunk\" cannot be applied",
            conf.bridge
        )));
    }
    // We own the bridge's routes: on every ADD, also of a bridge that existed, as the reference.
    let _ = write_sysctl(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
    let change = LinkChange {
        up: (!br.up).then_some(true),
        promisc: (conf.promisc && !br.promisc).then_some(true),
        ..Default::default()
    };
    if change.up.is_some() || change.promisc.is_some() {
        host.set_link(br.index, &change)?;
    }
    Ok(br)
}

fn random_u32() -> u32 {
    u32::from_ne_bytes(cni::ids::random_bytes::<4>())
}

/// Creates the pair — the host end here, the container end directly inside the netns under
/// the attachment's temporary name — and renames the container end to `ifname` there.
/// Returns (host end, container end).
fn setup_veth<'a>(
    host: &'a Nl,
    cont: &Nl,
    netns: &Netns,
    call: &Call,
    mtu: Option<u32>,
    mac: Option<[u8; 6]>,
    txn: &mut Txn<'a>,
) -> Result<(Link, Link)> {
    let ifname = &call.env.ifname;
    let tmp = iface::temp_ifname(&call.env.container_id, ifname);
    // A killed ADD of this attachment may have left its temporary link: it is ours to replace.
    cont.del_link_by_name(&tmp)?;
    let mut host_name = None;
    for _ in 0..8 {
        let name = format!("veth{:08x}", random_u32());
        match host.add_veth(&name, &tmp, netns, mtu, mac) {
            Ok(()) => {
                host_name = Some(name);
                break;
            }
            // The host name is taken (the temporary one cannot be: we just removed it).
            Err(e) if e.is(libc::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let host_name = host_name.ok_or_else(|| Error::conflict("could not find a free veth name"))?;
    let doomed = host_name.clone();
    txn.undo(format!("veth {host_name}"), move || {
        host.del_link_by_name(&doomed).map(drop).map_err(Error::from)
    });
    let peer = cont
        .link(&tmp)?
        .ok_or_else(|| Error::netlink(format!("veth end {tmp} not found in {}", netns.path())))?;
    let cont_link = iface::rename_to_ifname(cont, peer, ifname, netns)?;
    let host_veth = host
        .link(&host_name)?
        .ok_or_else(|| Error::netlink(format!("host veth {host_name} vanished")))?;
    Ok((host_veth, cont_link))
}

/// Makes link `index` a port of bridge `br`, up.
fn attach_port(host: &Nl, index: u32, br: &Link) -> cni::netlink::NlResult<()> {
    host.set_link(
        index,
        &LinkChange {
            master: Some(br.index),
            up: Some(true),
            ..Default::default()
        },
    )
}

fn setup_port_vlans(host: &Nl, port: &Link, conf: &BridgeConf) -> Result<()> {
    if conf.vlan == 0 && conf.vlans.is_empty() {
        return Ok(());
    }
    if !conf.preserve_default_vlan {
        host.bridge_vlan_del(port.index, 1)?;
    }
    if let Some(vlan) = conf.vlan_id() {
        host.bridge_vlan_add(port.index, vlan, true, true)?;
    }
    for v in &conf.vlans {
        host.bridge_vlan_add(port.index, *v, false, false)?;
    }
    if conf.vlan == 0 && !conf.vlans.is_empty() {
        host.bridge_vlan_add(port.index, 1, true, true)?;
    }
    Ok(())
}

/// The interface `<bridge>.<vlan>` that carries the gateway of a VLAN: a veth pair whose one
/// end is a port of the bridge in that VLAN (as the reference does).
fn ensure_vlan_gateway(host: &Nl, br: &Link, conf: &BridgeConf) -> Result<Link> {
    let name = format!("{}.{}", br.name, conf.vlan);
    if let Some(l) = host.link(&name)? {
        return Ok(l);
    }
    let here = Netns::current()?;
    let port_name = format!("veth{:08x}", random_u32());
    host.add_veth(&port_name, &name, &here, Some(br.mtu), None)?;
    let port = host
        .link(&port_name)?
        .ok_or_else(|| Error::netlink(format!("{port_name} vanished")))?;
    attach_port(host, port.index, br)?;
    setup_port_vlans(
        host,
        &port,
        &BridgeConf {
            vlans: vec![],
            ..conf.clone()
        },
    )?;
    let l = host
        .link(&name)?
        .ok_or_else(|| Error::netlink(format!("{name} vanished")))?;
    host.set_up(l.index)?;
    Ok(l)
}

/// Fills in gateways when the bridge is the gateway, adds default routes for
/// `isDefaultGateway`; returns the gateway addresses.
fn calc_gateways(result: &mut CniResult, conf: &BridgeConf) -> Vec<IpNet> {
    let mut gws = Vec::new();
    let mut default_done = [false, false];
    for ipc in result.ips.iter_mut() {
        if ipc.gateway.is_none() && conf.is_gw {
            ipc.gateway = first_host(ipc.address);
        }
        let v6 = ipc.address.addr().is_ipv6() as usize;
        if conf.is_default_gw && !default_done[v6] {
            let any: IpNet = if v6 == 1 {
                "::/0".parse().unwrap()
            } else {
                "0.0.0.0/0".parse().unwrap()
            };
            if !result.routes.iter().any(|r| r.gw.is_some() && r.dst == any) {
                result.routes.push(Route::new(any, ipc.gateway));
            }
            default_done[v6] = true;
        }
        if conf.is_gw {
            if let Some(gw) = ipc.gateway {
                if let Ok(n) = IpNet::new(gw, ipc.address.prefix_len()) {
                    gws.push(n);
                }
            }
        }
    }
    gws
}

/// The first address after the network address: the reference's default gateway.
fn first_host(n: IpNet) -> Option<IpAddr> {
    match n.network() {
        IpAddr::V4(a) => Some(IpAddr::V4((u32::from(a).wrapping_add(1)).into())),
        IpAddr::V6(a) => Some(IpAddr::V6((u128::from(a).wrapping_add(1)).into())),
    }
}

/// Puts `gw` on `link` unless it is there; another address of the family (or an overlapping
/// IPv6 one) is an error unless `force`, which replaces it.
fn ensure_addr(host: &Nl, link: &Link, gw: IpNet, force: bool) -> Result<()> {
    let have = host.addrs(link.index)?;
    if have.contains(&gw) {
        return Ok(());
    }
    for a in have.iter().filter(|a| a.addr().is_ipv4() == gw.addr().is_ipv4()) {
        let conflicts = gw.addr().is_ipv4() || a.contains(&gw.addr()) || gw.contains(&a.addr());
        if !conflicts {
            continue;
        }
        if force {
            host.del_addr(link.index, *a)?;
        } else {
            return Err(Error::conflict(format!(
                "\"{}\" already has an IP address different from {gw} ({a}); set forceAddress to replace it",
                link.name
            )));
        }
    }
    // No DAD for the gateway: this subnet is ours, and the containers' default routes need the
    // address usable at once.
    match host.add_addr(link.index, gw, true) {
        Ok(()) => {}
        Err(e) if e.is(libc::EEXIST) => {}
        Err(e) => return Err(Error::from(e).context(format!("adding gateway {gw} to {}", link.name))),
    }
    // Pin the bridge's MAC: otherwise it follows the lowest port MAC as ports come and go.
    if let Some(mac) = cni::netlink::parse_mac(&link.mac) {
        let _ = host.set_link(
            link.index,
            &LinkChange {
                mac: Some(mac),
                ..Default::default()
            },
        );
    }
    Ok(())
}

fn enable_forwarding(gws: &[IpNet]) -> Result<()> {
    let mut keys = Vec::new();
    if gws.iter().any(|g| g.addr().is_ipv4()) {
        keys.push("net/ipv4/ip_forward");
    }
    if gws.iter().any(|g| g.addr().is_ipv6()) {
        keys.push("net/ipv6/conf/all/forwarding");
    }
    for k in keys {
        if read_sysctl(k).ok().as_deref() != Some("1") {
            write_sysctl(k, "1").map_err(|e| e.context("failed to enable forwarding"))?;
        }
    }
    Ok(())
}
