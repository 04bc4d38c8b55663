//! `hostShim`: the host's way to its own containers.
//!
//! The kernel never hands a frame from a macvlan to its master (nor the other way), so a host
//! cannot reach the containers it runs on its own LAN card. The fix people make by hand is a
//! macvlan of the host's own on the master (the "shim") and a host route per container address
//! through it. With `hostShim`, ADD does that:
//!
//! - one shim per master, named [`shim_name`] (`mvsh-<master>`), in bridge mode, shared by every
//!   container on that master, made by the first ADD that needs it and removed by the DEL (or
//!   GC, or failed ADD) that takes its last route away;
//! - per container address a host route (`/32`, `/128`) through the shim with the master's
//!   own address of that family as the preferred source, protocol [`PROTO`] and the metric
//!   [`metric`] of the attachment (network, container id, ifname). The protocol says "made
//!   here", the metric says for which attachment: DEL finds its routes with the namespace gone
//!   and without any file, and never takes a route of the host's or of another attachment.
//! - GC must know which attachments of *its* network have routes; a metric cannot be read back
//!   into a network name, so ADD records each attachment in a state file
//!   `STATE_DIR/<network>/<metric as 8 hex digits>` before it adds a route (a killed ADD leaves
//!   a record that GC sees), and DEL/GC remove it after the routes.
//!
//! The shim answers the container's ARP for the master's IPv4 address (`arp_filter=1`: only to
//! those reached through it, so the LAN keeps the master's MAC) and, with `proxy_ndp` and
//! a proxy entry, the neighbour solicitations for the master's IPv6 address (the kernel answers
//! NDP for other links' addresses only so). It takes no address of its own but its link-local
//! one (no SLAAC, no router advertisements).
//!
//! Every change to shims and their routes happens under one lock file, so that a DEL that
//! removes the last route and the shim cannot race an ADD that is about to use it.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::json;

use cni::netlink::{Link, MacvlanMode, MacvlanOptions, MarkedRoute, Nl, RouteEntry};
use cni::netns::{read_sysctl, write_sysctl};
use cni::types::Attachment;
use cni::{Error, IpConfig, Result};

/// The route protocol (RTPROT_*) of the host routes through a shim: a number no routing
/// daemon uses (iproute2's rt_protos has nothing between 99 and 186); `ip route show proto 109`.
pub const PROTO: u8 = 109;
/// Where the per-attachment records and the lock live (tmpfs: gone at reboot, as the routes).
pub const STATE_DIR: &str = "/run/cni-rs/macvlan-shim";
/// The shim's alias (IFLA_IFALIAS), for the people who look at `ip -d link`.
pub const ALIAS: &str = "cni-rs macvlan hostShim";
const PREFIX: &str = "mvsh-";
const RTPROT_KERNEL: u8 = 2;

/// The shim of master `master`: `mvsh-<master>`, or `mvsh-` and 10 hex digits of a hash of
/// the master's name when that does not fit in 15 bytes.
pub fn shim_name(master: &str) -> String {
    if PREFIX.len() + master.len() <= 15 {
        format!("{PREFIX}{master}")
    } else {
        format!(
            "{PREFIX}{:010x}",
            cni::ids::fnv1a(&[master.as_bytes()]) & 0xff_ffff_ffff
        )
    }
}

/// The metric of the host routes of attachment (`network`, `container_id`, `ifname`): 32-bit
/// FNV-1a over the three, NUL-separated ([`cni::ids::fnv1a32`]); never 0 (the kernel turns an
/// IPv6 metric 0 into 1024).
pub fn metric(network: &str, container_id: &str, ifname: &str) -> u32 {
    nonzero_metric(cni::ids::fnv1a32(&[
        network.as_bytes(),
        container_id.as_bytes(),
        ifname.as_bytes(),
    ]))
}

/// The metric of hash `h`: `h`, but 1 for 0.
fn nonzero_metric(h: u32) -> u32 {
    h.max(1)
}

fn record_path(network: &str, metric: u32) -> PathBuf {
    PathBuf::from(STATE_DIR).join(network).join(format!("{metric:08x}"))
}

/// Whether attachment (`network`, `container_id`, `ifname`) has a record (an ADD with
/// `hostShim` made or was making its routes).
pub fn has_record(network: &str, container_id: &str, ifname: &str) -> bool {
    record_path(network, metric(network, container_id, ifname)).exists()
}

/// Whether `network` has records (GC has something to look at).
pub fn has_records(network: &str) -> bool {
    PathBuf::from(STATE_DIR).join(network).is_dir()
}

/// How long a change of shims waits for another one: longer than any takes (a few netlink
/// requests).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The lock every change of shims and their routes is made under (an exclusive `flock`,
/// released when the process ends, killed or not).
struct Lock(#[allow(dead_code)] File);

/// Takes [`Lock`]; code 11 when another call holds it for more than [`LOCK_WAIT`].
fn lock() -> Result<Lock> {
    fs::create_dir_all(STATE_DIR).map_err(|e| Error::io(format!("creating {STATE_DIR}"), e))?;
    let path = format!("{STATE_DIR}/lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {path}"), e))?;
    if !cni::lockfile::lock_within(&f, LOCK_WAIT).map_err(|e| Error::io(format!("locking {path}"), e))? {
        return Err(Error::try_again_later(format!(
            "hostShim: {path} has been locked{} for more than {}s: another call holds it and does not finish (stopped or hung?)",
            cni::lockfile::held_by(&f).map(|p| format!(" by {p}")).unwrap_or_default(),
            LOCK_WAIT.as_secs()
        )));
    }
    Ok(Lock(f))
}

fn write_record(network: &str, metric: u32, container_id: &str, ifname: &str, shim: &str, master: &str) -> Result<()> {
    let path = record_path(network, metric);
    let dir = path.parent().unwrap_or(std::path::Path::new(STATE_DIR));
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let body = json!({
        "containerID": container_id,
        "ifname": ifname,
        "master": master,
        "shim": shim,
        "metric": metric,
    });
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(body.to_string().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn remove_record(network: &str, metric: u32) -> Result<()> {
    let path = record_path(network, metric);
    // With the half-written file of a killed ADD, if any (records are written under the lock,
    // which the caller holds: no ADD is writing one now).
    for p in [path.with_extension("tmp"), path.clone()] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }
    // An empty network directory goes too (another call may have just made a record: fine).
    if let Some(dir) = path.parent() {
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}

/// ADD: the shim on `master` and a route through it to each of `ips` (the container's
/// addresses). Undone by [`remove`] (which the caller runs on failure).
pub fn add(host: &Nl, master: &Link, network: &str, container_id: &str, ifname: &str, ips: &[IpConfig]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let m = metric(network, container_id, ifname);
    let name = shim_name(&master.name);
    let _lock = lock()?;
    // The record first: whatever happens from here on, GC of this network sees it.
    write_record(network, m, container_id, ifname, &name, &master.name)?;
    let shim = ensure_shim(host, master, &name)?;
    let have = host.addrs(master.index)?;
    for ipc in ips {
        let ip = ipc.address.addr();
        let src = pick_source(&have, ip);
        if let (IpAddr::V6(_), Some(s)) = (ip, src) {
            host.add_proxy_neigh(shim.index, s)
                .map_err(|e| Error::from(e).context(format!("hostShim: answering NDP for {s} on {name}")))?;
        }
        let r = MarkedRoute {
            dst: host_net(ip),
            oif: shim.index,
            src,
            protocol: PROTO,
            metric: m,
        };
        let mut added = host.add_marked_route(&r);
        if let (Err(e), Some(s)) = (&added, src) {
            // An IPv6 address still in duplicate address detection (a host just booted) is no
            // source yet: the route goes without one, and the kernel picks the source per
            // packet (the shim's link-local address, which the container reaches).
            if e.is(libc::EINVAL) && s.is_ipv6() {
                cni::log!(
                    "macvlan: hostShim: {s} of {} is no source yet (tentative?): route to {} without one",
                    master.name,
                    r.dst
                );
                added = host.add_marked_route(&MarkedRoute { src: None, ..r.clone() });
            }
        }
        match added {
            Ok(()) => {}
            // Ours already (a repeated ADD of this attachment): fine.
            Err(e) if e.is(libc::EEXIST) && has_route(host, &r)? => {}
            Err(e) => {
                return Err(
                    Error::from(e).context(format!("hostShim: adding the host route to {} through {name}", r.dst))
                )
            }
        }
    }
    Ok(())
}

/// DEL, GC and a failed ADD: the routes of attachment (`network`, `container_id`, `ifname`),
/// the shims they went through when no route of ours is left on them, and its record.
pub fn remove(host: &Nl, network: &str, container_id: &str, ifname: &str) -> Result<()> {
    let m = metric(network, container_id, ifname);
    let _lock = lock()?;
    remove_locked(host, network, m)
}

fn remove_locked(host: &Nl, network: &str, m: u32) -> Result<()> {
    let mut errs = cni::Errors::new();
    let mut shims = BTreeSet::new();
    let mut all_gone = true;
    for r in host
        .routes()?
        .iter()
        .filter(|r| r.protocol == PROTO && r.priority == Some(m))
    {
        if let Some(oif) = r.oif {
            shims.insert(oif);
        }
        all_gone &= errs.note(host.del_route(r).map_err(Error::from)).is_some();
    }
    // The shim the record names, for a record without routes (an ADD killed before them).
    if let Ok(text) = fs::read_to_string(record_path(network, m)) {
        if let Some(name) = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["shim"].as_str().map(str::to_string))
        {
            if let Some(l) = errs.note(host.link(&name).map_err(Error::from)).flatten() {
                shims.insert(l.index);
            }
        }
    }
    for index in shims {
        errs.note(remove_shim_if_unused(host, index));
    }
    // The record goes only with all the routes: else a later DEL or GC still finds them.
    if all_gone {
        errs.note(remove_record(network, m));
    }
    errs.into_result()
}

/// GC: the routes and records of the attachments of `network` that are not in `keep`.
pub fn gc(host: &Nl, network: &str, keep: &[Attachment]) -> Result<()> {
    let dir = PathBuf::from(STATE_DIR).join(network);
    if !dir.is_dir() {
        return Ok(());
    }
    let keep: BTreeSet<u32> = keep
        .iter()
        .map(|a| metric(network, &a.container_id, &a.ifname))
        .collect();
    let _lock = lock()?;
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    // Records (and the half-written ones a killed ADD may have left) not in the keep-list.
    let gone: BTreeSet<u32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hex = name.strip_suffix(".tmp").unwrap_or(&name);
            (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok()).flatten()
        })
        .filter(|m| !keep.contains(m))
        .collect();
    let mut errs = cni::Errors::new();
    for m in gone {
        errs.note(remove_locked(host, network, m));
    }
    errs.into_result()
}

/// CHECK: the shim is up on the master and every address of `ips` has its route through it.
pub fn check(
    host: &Nl,
    master: &Link,
    network: &str,
    container_id: &str,
    ifname: &str,
    ips: &[IpConfig],
) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let name = shim_name(&master.name);
    let shim = host
        .link(&name)?
        .ok_or_else(|| Error::check_failed(format!("hostShim: shim {name} of master {} not found", master.name)))?;
    if !is_shim_of(&shim, master) {
        return Err(Error::check_failed(format!(
            "hostShim: {name} is not a bridge-mode macvlan on master {}",
            master.name
        )));
    }
    if !shim.up {
        return Err(Error::check_failed(format!("hostShim: shim {name} is down")));
    }
    let m = metric(network, container_id, ifname);
    let routes = host.routes()?;
    for ipc in ips {
        let dst = host_net(ipc.address.addr());
        let found = routes
            .iter()
            .any(|r| r.dst == dst && r.oif == Some(shim.index) && r.protocol == PROTO && r.priority == Some(m));
        if !found {
            return Err(Error::check_failed(format!(
                "hostShim: host route to {dst} dev {name} proto {PROTO} metric {m} is missing"
            )));
        }
    }
    Ok(())
}

/// STATUS: the shim of `master` can be made or used (no other link has its name).
pub fn usable(host: &Nl, master: &Link) -> Result<()> {
    match host.link(&shim_name(&master.name))? {
        Some(l) if !is_shim_of(&l, master) => Err(taken(&l.name, master)),
        _ => Ok(()),
    }
}

fn taken(name: &str, master: &Link) -> Error {
    Error::conflict(format!(
        "hostShim: the host already has a link {name} that is not a bridge-mode macvlan on master {} \
         (the name is the one the shim of {} takes); remove or rename it",
        master.name, master.name
    ))
}

/// The shim of `master`, made (down, configured, then up) if it is not there. A link of that
/// name that is not a bridge-mode macvlan on `master` is a conflict, left as it is.
fn ensure_shim(host: &Nl, master: &Link, name: &str) -> Result<Link> {
    let shim = match host.link(name)? {
        Some(l) => {
            if !is_shim_of(&l, master) {
                return Err(taken(name, master));
            }
            l
        }
        None => {
            host.add_macvlan(
                name,
                master.index,
                &MacvlanOptions {
                    mode: MacvlanMode::Bridge,
                    ..Default::default()
                },
            )
            .map_err(|e| Error::from(e).context(format!("hostShim: creating shim {name} on {}", master.name)))?;
            host.link(name)?
                .ok_or_else(|| Error::netlink(format!("hostShim: new shim {name} not found")))?
        }
    };
    if shim.alias.as_deref() != Some(ALIAS) {
        host.set_alias(shim.index, ALIAS)?;
    }
    shim_sysctls(name)?;
    if !shim.up {
        host.set_up(shim.index)
            .map_err(|e| Error::from(e).context(format!("hostShim: setting {name} up")))?;
    }
    Ok(shim)
}

/// ARP only for those reached through the shim; IPv6: no address but the link-local one, and
/// NDP answers (without delay) for the proxy entries of the master's addresses. The IPv6 keys
/// are missing on a host without IPv6: then there is nothing to do for IPv6.
fn shim_sysctls(name: &str) -> Result<()> {
    set_sysctl(&format!("net/ipv4/conf/{name}/arp_filter"), "1")?;
    if read_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6")).is_err() {
        return Ok(());
    }
    for (key, v) in [
        ("conf/{}/accept_ra", "0"),
        ("conf/{}/autoconf", "0"),
        ("conf/{}/forwarding", "1"),
        ("conf/{}/proxy_ndp", "1"),
        ("neigh/{}/proxy_delay", "0"),
    ] {
        set_sysctl(&format!("net/ipv6/{}", key.replace("{}", name)), v)?;
    }
    Ok(())
}

/// Writes a sysctl when it differs (a write takes the RTNL lock even when nothing changes).
fn set_sysctl(key: &str, v: &str) -> Result<()> {
    if read_sysctl(key).ok().as_deref() == Some(v) {
        return Ok(());
    }
    write_sysctl(key, v).map_err(|e| e.context("hostShim"))
}

/// `l` is the shim of `master`: its name, a bridge-mode macvlan on it, on this host.
fn is_shim_of(l: &Link, master: &Link) -> bool {
    l.name == shim_name(&master.name)
        && l.kind.as_deref() == Some("macvlan")
        && l.macvlan_mode == Some(MacvlanMode::Bridge)
        && l.parent == Some(master.index)
        && l.link_netnsid.is_none()
}

/// Deletes link `index` if it is a shim of ours (see [`is_shim_of`], with our alias or none)
/// that nobody uses any more: no route on it but the kernel's own, no address but link-local.
fn remove_shim_if_unused(host: &Nl, index: u32) -> Result<()> {
    let Some(l) = host.link_by_index(index)? else {
        return Ok(());
    };
    let Some(master) = l.parent.map(|p| host.link_by_index(p)).transpose()?.flatten() else {
        return Ok(());
    };
    if !is_shim_of(&l, &master) || l.alias.as_deref().is_some_and(|a| a != ALIAS) {
        return Ok(());
    }
    let routes = host.routes()?;
    if routes
        .iter()
        .any(|r| r.oif == Some(index) && r.protocol != RTPROT_KERNEL)
    {
        return Ok(());
    }
    if host.addrs(index)?.iter().any(|a| !is_link_local(a.addr())) {
        return Ok(());
    }
    match host.del_link(index) {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::ENODEV) => Ok(()),
        Err(e) => Err(Error::from(e).context(format!("hostShim: deleting shim {}", l.name))),
    }
}

fn has_route(host: &Nl, r: &MarkedRoute) -> Result<bool> {
    Ok(host.routes()?.iter().any(|h: &RouteEntry| {
        h.dst == r.dst && h.oif == Some(r.oif) && h.protocol == r.protocol && h.priority == Some(r.metric)
    }))
}

/// The source of the host route to `ip`: the master's address of that family in `ip`'s
/// subnet, else its first one (link-local ones never).
fn pick_source(have: &[IpNet], ip: IpAddr) -> Option<IpAddr> {
    let usable = || {
        have.iter()
            .filter(move |n| n.addr().is_ipv4() == ip.is_ipv4() && !is_link_local(n.addr()) && n.addr() != ip)
    };
    usable()
        .find(|n| n.contains(&ip))
        .or_else(|| usable().next())
        .map(|n| n.addr())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// `ip` as a host prefix (/32, /128).
fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_stable() {
        assert_eq!(shim_name("eth0"), "mvsh-eth0");
        assert_eq!(shim_name("enp3s0f0np"), "mvsh-enp3s0f0np");
        let long = shim_name("enp3s0f0np0");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("mvsh-"), "{long}");
        assert_eq!(long, shim_name("enp3s0f0np0"));
        // Pinned: a shim made by an earlier version keeps its name.
        assert_eq!(long, "mvsh-bbafbd26c4");
        assert_ne!(long, shim_name("enp3s0f0np1"));
        assert!(cni::env::check_ifname(&long).is_ok());
    }

    #[test]
    fn metrics_are_per_attachment_and_never_zero() {
        let m = metric("net", "c1", "eth0");
        assert_eq!(m, metric("net", "c1", "eth0"));
        assert_ne!(m, metric("net", "c1", "eth1"));
        assert_ne!(m, metric("net", "c2", "eth0"));
        assert_ne!(m, metric("net2", "c1", "eth0"));
        // The NUL separators: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(metric("n", "ab", "c"), metric("n", "a", "bc"));
        // FNV-1a 32 of "n\0c\0e", as documented.
        assert_eq!(metric("n", "c", "e"), cni::ids::fnv1a32(&[b"n\0c\0e"]));
        // Pinned: routes made by an earlier version are found by the same metric.
        assert_eq!(metric("n", "c", "e"), 0xea35_ab3f);
        // A hash of 0 becomes metric 1.
        assert_eq!(nonzero_metric(0), 1);
        assert_eq!(nonzero_metric(7), 7);
    }

    #[test]
    fn the_source_is_the_masters_address_of_the_family_and_subnet() {
        let have: Vec<IpNet> = [
            "fe80::1/64",
            "192.168.9.2/24",
            "10.77.0.2/24",
            "fd77::2/64",
            "169.254.1.1/16",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(pick_source(&have, ip("10.77.0.5")), Some(ip("10.77.0.2")));
        assert_eq!(pick_source(&have, ip("172.16.0.5")), Some(ip("192.168.9.2")));
        assert_eq!(pick_source(&have, ip("fd77::5")), Some(ip("fd77::2")));
        assert_eq!(pick_source(&have[..1], ip("fd77::5")), None, "link-local is no source");
        assert_eq!(pick_source(&[], ip("10.77.0.5")), None);
    }
}
