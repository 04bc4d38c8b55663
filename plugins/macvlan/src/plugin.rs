//! The macvlan plugin's verbs, step by step as the reference does them, with every change of
//! an ADD undone when a later step fails.

use cni::delegate;
use cni::env::Command;
use cni::iface;
use cni::netlink::{Link, MacvlanMode, MacvlanOptions, Nl};
use cni::netns::Netns;
use cni::teardown::Teardown;
use cni::trace::step;
use cni::txn::Txn;
use cni::{fault, Call, CniResult, Error, Plugin, Result};

use crate::config::{MacvlanConf, MacvlanTeardown};
use crate::shim;

pub struct Macvlan;

/// Where the master lives, and the netlink socket of that namespace.
struct Master<'a> {
    nl: &'a Nl,
    link: Link,
    /// "the host's" or "the container's": for messages.
    place: &'static str,
}

impl Plugin for Macvlan {
    fn add(&self, call: &Call) -> Result<CniResult> {
        // The container's socket opens on its thread while the config is loaded.
        let (netns, opening, conf) = iface::load_while_opening(call, MacvlanConf::load)?;
        let cont = opening.finish()?;
        step("open netns socket");
        // Under the attachment lock; every change registers its undo (see `iface::transaction`).
        iface::transaction(call, "macvlan", |txn| add(call, &conf, netns, &cont, txn))
    }

    /// Reads only what the teardown needs ([`MacvlanTeardown`], the common keys as
    /// [`cni::teardown`] reads them): a config that went bad since the ADD is still torn down.
    fn del(&self, call: &Call) -> Result<()> {
        let conf = MacvlanTeardown::decode(&call.stdin)?;
        let (net, id, ifname) = (&call.conf.name, &call.env.container_id, &call.env.ifname);
        // After the lease and the container interface (`iface::del`): `hostShim`'s host routes
        // of the attachment, and the shim if they were its last; also when the config no
        // longer asks for it but a record says an ADD made them.
        iface::del(call, |errs| {
            if conf.host_shim.teardown_switch() || shim::has_record(net, id, ifname) {
                errs.note(Nl::current().and_then(|host| shim::remove(&host, net, id, ifname)));
            }
        })
    }

    fn check(&self, call: &Call) -> Result<()> {
        let conf = MacvlanConf::load(call)?;
        let (netns, prev) = iface::check_preamble(call)?;
        let ifname = &call.env.ifname;

        // The container interface of the previous result: this name, in this namespace.
        let (cidx, cif) = prev
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| &i.name == ifname && i.sandbox.as_deref() == Some(netns.path()))
            .ok_or_else(|| {
                Error::check_failed(format!(
                    "previous result has no interface {ifname} in sandbox {}",
                    netns.path()
                ))
            })?;

        // The master still exists.
        let cont = Nl::open_in(netns)?;
        let host = if conf.link_in_container {
            None
        } else {
            Some(Nl::current()?)
        };
        let master = find_master(&conf, host.as_ref(), &cont)?;

        // The link: a macvlan of the configured mode on that master, with the result's MAC.
        let link = cont.link(ifname)?.ok_or_else(|| {
            Error::check_failed(format!("container interface {ifname} not found in {}", netns.path()))
        })?;
        if link.kind.as_deref() != Some("macvlan") {
            return Err(Error::check_failed(format!(
                "container interface {ifname} is not a macvlan (it is a {} link)",
                link.kind.as_deref().unwrap_or("physical")
            )));
        }
        if link.macvlan_mode != Some(conf.parsed_mode) {
            return Err(Error::check_failed(format!(
                "container macvlan {ifname} mode {} does not match the configured {}",
                link.macvlan_mode.map(|m| m.as_str()).unwrap_or("unknown"),
                conf.parsed_mode.as_str()
            )));
        }
        // IFLA_LINK is the master's index in the master's namespace; a master in another
        // namespace comes with a link-netnsid.
        let master_elsewhere = link.link_netnsid.is_some();
        if link.parent != Some(master.link.index) || master_elsewhere == conf.link_in_container {
            return Err(Error::check_failed(format!(
                "container macvlan {ifname} is not on master {} of {} namespace",
                master.link.name, master.place
            )));
        }
        iface::check_mac(cif, &link)?;
        if let Some(mtu) = conf.mtu() {
            if link.mtu != mtu {
                return Err(Error::check_failed(format!(
                    "interface {ifname} MTU {} does not match the configured {mtu}",
                    link.mtu
                )));
            }
        }
        iface::check_addrs(&cont, &link, &prev, cidx)?;
        iface::check_routes(&cont, &prev)?;
        if let (true, Some(host)) = (conf.host_shim, host.as_ref()) {
            let ips: Vec<_> = prev
                .ips
                .iter()
                .filter(|i| i.interface.is_none_or(|i| i == cidx))
                .cloned()
                .collect();
            shim::check(host, &master.link, &conf.net.name, &call.env.container_id, ifname, &ips)?;
        }
        Ok(())
    }

    /// Reads only the common keys ([`cni::teardown`]): the IPAM type, the network and the
    /// keep-list.
    fn gc(&self, call: &Call) -> Result<()> {
        iface::gc(call, |net| {
            // `hostShim`: the host routes of the attachments that are gone (when this network
            // has records of them).
            if !shim::has_records(&net.name) {
                return Ok(());
            }
            Nl::current().and_then(|host| shim::gc(&host, &net.name, &net.gc_keep()))
        })
    }

    fn status(&self, call: &Call) -> Result<()> {
        let conf = MacvlanConf::load(call)?;
        // A master in the container's namespace cannot be looked at without a container.
        if !conf.link_in_container {
            let host = Nl::current()?;
            let master = master_link(&conf, &host, "the host's")
                .map_err(|e| Error::plugin_not_available(format!("macvlan cannot serve ADDs: {e}")))?;
            if conf.host_shim {
                shim::usable(&host, &master)
                    .map_err(|e| Error::plugin_not_available(format!("macvlan cannot serve ADDs: {e}")))?;
            }
        }
        if let Some(t) = conf.net.ipam_type() {
            delegate::exec(t, Command::Status, call)?;
        }
        Ok(())
    }
}

fn add<'a>(call: &'a Call, conf: &'a MacvlanConf, netns: &Netns, cont: &'a Nl, txn: &mut Txn<'a>) -> Result<CniResult> {
    let ifname = &call.env.ifname;
    iface::ensure_ifname_free(cont, ifname, netns)?;

    // 1. The master: the configured one or the default route's, here or in the container;
    //    the MTU must fit it.
    let host = if conf.link_in_container {
        None
    } else {
        Some(Nl::current()?)
    };
    let master = find_master(conf, host.as_ref(), cont)?;
    if let Some(mtu) = conf.mtu() {
        if mtu > master.link.mtu {
            return Err(Error::invalid_config(format!(
                "invalid mtu {mtu} (key \"mtu\"): must be 0 (the master's) or between {} and the MTU of master {} ({})",
                crate::config::MIN_MTU,
                master.link.name,
                master.link.mtu
            )));
        }
    }
    step("master");

    // 2. The macvlan, made directly in the container's namespace under a temporary name, then
    //    renamed there, while the IPAM plugin runs (its process start overlaps the kernel's
    //    work; see `iface::with_ipam`).
    let (link, ipam) = iface::with_ipam(call, txn, |txn| {
        let link = create_macvlan(conf, &master, netns, cont, call, txn);
        step("macvlan");
        link
    })?;

    let mut result = CniResult {
        interfaces: vec![iface::container_interface(ifname, &link, netns)],
        ..Default::default()
    };

    // 3. Addresses and routes from IPAM, or an L2-only interface that is just up.
    if let Some(ipam) = ipam {
        iface::take_ipam(&mut result, ipam, 0);
        step("ipam");

        iface::container_sysctls(netns, ifname, &result, None)?;
        step("container sysctls");
        iface::configure(cont, &link, &result, 0, false)?;
        step("container addresses and routes");
    } else {
        iface::container_sysctls(netns, ifname, &result, None)?;
        cont.set_up(link.index)
            .map_err(|e| Error::from(e).context(format!("setting {ifname} up")))?;
    }

    // 4. `hostShim`: the host's routes to the container through the shim on the master.
    if conf.host_shim {
        if let Some(host) = host.as_ref() {
            // Registered first: an ADD that fails half way leaves routes too.
            txn.undo("the host shim routes", move || {
                let (net, id) = (&conf.net.name, &call.env.container_id);
                Nl::current().and_then(|host| shim::remove(&host, net, id, &call.env.ifname))
            });
            shim::add(
                host,
                &master.link,
                &conf.net.name,
                &call.env.container_id,
                ifname,
                &result.ips,
            )?;
            step("host shim");
            fault::point("macvlan:after-shim");
        }
    }

    // 5. The config's DNS first, what IPAM said after it.
    if let Some(dns) = conf.net.dns.as_ref() {
        let mut merged = dns.clone();
        merged.merge(&result.dns);
        result.dns = merged;
    }
    // The MAC and MTU as they are now (passthru takes the master's MAC).
    if let Some(l) = cont.link_by_index(link.index)? {
        result.interfaces[0].mac = l.mac;
        result.interfaces[0].mtu = Some(l.mtu);
    }
    step("result");
    Ok(result)
}

/// The master link: in the container's namespace for `linkInContainer`, else in ours.
fn find_master<'a>(conf: &MacvlanConf, host: Option<&'a Nl>, cont: &'a Nl) -> Result<Master<'a>> {
    let (nl, place) = match host {
        Some(h) if !conf.link_in_container => (h, "the host's"),
        _ => (cont, "the container's"),
    };
    let link = master_link(conf, nl, place)?;
    Ok(Master { nl, link, place })
}

/// Looks up `master`, or the interface of the default route when it is not set.
fn master_link(conf: &MacvlanConf, nl: &Nl, place: &str) -> Result<Link> {
    let name = if conf.master.is_empty() {
        default_route_interface(nl, place)?
    } else {
        conf.master.clone()
    };
    nl.link(&name)?.ok_or_else(|| {
        Error::invalid_config(format!(
            "master interface \"{name}\" (key \"master\") not found in {place} network namespace"
        ))
    })
}

/// The interface of the first default route of the main table (IPv4 first), as the reference.
fn default_route_interface(nl: &Nl, place: &str) -> Result<String> {
    const RT_TABLE_MAIN: u32 = 254;
    let routes = nl.routes()?;
    for r in routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN && r.dst.prefix_len() == 0)
    {
        let Some(oif) = r.oif else { continue };
        if let Some(l) = nl.link_by_index(oif)? {
            return Ok(l.name);
        }
    }
    Err(Error::invalid_config(format!(
        "no master interface: key \"master\" is not set and {place} network namespace has no default route to take it from"
    )))
}

/// Creates the macvlan inside the container's namespace under the attachment's temporary name
/// and renames it to `ifname` there; returns the link under its final name.
fn create_macvlan<'a>(
    conf: &MacvlanConf,
    master: &Master,
    netns: &Netns,
    cont: &'a Nl,
    call: &Call,
    txn: &mut Txn<'a>,
) -> Result<Link> {
    let ifname = &call.env.ifname;
    // The temporary name is derived from the attachment (not random): a plugin killed before
    // the rename leaves a link that DEL of this attachment removes, and that a new ADD of it
    // replaces here. A host interface called `ifname` is no obstacle either way: the link is
    // made directly in the container's namespace (with the master there already, or named in
    // the request).
    let tmp = iface::temp_ifname(&call.env.container_id, ifname);
    cont.del_link_by_name(&tmp)?;
    let target = (!conf.link_in_container).then_some(netns);
    let options = MacvlanOptions {
        mode: conf.parsed_mode,
        netns: target,
        mac: conf.parsed_mac,
        mtu: conf.mtu(),
        bcqueuelen: conf.bcqueuelen(),
        source_macs: &conf.parsed_source_macs,
    };
    master
        .nl
        .add_macvlan(&tmp, master.link.index, &options)
        .map_err(|e| create_error(conf, &master.link, e))?;
    let made = cont
        .link(&tmp)?
        .ok_or_else(|| Error::netlink(format!("new macvlan {tmp} not found in {}", netns.path())))?;
    let index = made.index;
    txn.undo(format!("macvlan {tmp}"), move || match cont.del_link(index) {
        Err(e) if e.is(libc::ENODEV) => Ok(()),
        r => r.map_err(Error::from),
    });
    iface::rename_to_ifname(cont, made, ifname, netns)
}

/// The kernel's EINVAL for a macvlan next to a passthru one (or a passthru next to others)
/// says nothing; say what it means.
fn create_error(conf: &MacvlanConf, master: &Link, e: cni::netlink::NlError) -> Error {
    if !e.is(libc::EINVAL) {
        return Error::from(e).context("failed to create macvlan");
    }
    let m = &master.name;
    if conf.parsed_mode == MacvlanMode::Passthru {
        Error::conflict(format!(
            "failed to create macvlan: master {m} already has a passthru macvlan (or other \
             macvlans): a passthru macvlan must be the only one on its master ({e})"
        ))
    } else {
        Error::conflict(format!(
            "failed to create macvlan: master {m} refused a new macvlan; it most likely already \
             has a passthru macvlan, which must be the only one on its master ({e})"
        ))
    }
}
