//! The steps bridge and macvlan share on a container interface: the IPAM choreography of an
//! ADD ([`with_ipam`]), putting an IPAM result on the interface ([`configure`], the
//! reference's `ipam.ConfigureIface`), the teardown of DEL ([`del`]), the common
//! part of CHECK ([`check_preamble`], [`check_mac`], [`check_addrs`], [`check_routes`]: the
//! reference's `ValidateExpected*` checks) and of GC ([`gc`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::delegate;
use crate::env::Command;
use crate::error::{Error, Errors, Result};
use crate::netlink::{Link, NewRoute, Nl, NlOpening};
use crate::netns::{read_sysctl, write_sysctl, Netns};
use crate::skel::Call;
use crate::txn::Txn;
use crate::types::{CniResult, Interface, NetConf};

/// The temporary name under which the container interface of attachment (`container_id`,
/// `ifname`) is made inside the container's namespace before it is renamed to `ifname`.
/// Derived from the attachment, not random: an ADD killed before the rename leaves a link that
/// the DEL of the same attachment finds (and a later ADD replaces). 15 bytes: `cni` and 12 hex
/// digits of FNV-1a over the pair.
pub fn temp_ifname(container_id: &str, ifname: &str) -> String {
    let h = crate::ids::fnv1a(&[container_id.as_bytes(), ifname.as_bytes()]);
    format!("cni{:012x}", h & 0xffff_ffff_ffff)
}

/// Renames `link` (a new container interface under its temporary name) to `ifname`; a link
/// of that name in the namespace is a conflict (code 103).
pub fn rename_to_ifname(nl: &Nl, link: Link, ifname: &str, netns: &Netns) -> Result<Link> {
    let change = crate::netlink::LinkChange {
        name: Some(ifname.to_string()),
        ..Default::default()
    };
    nl.set_link(link.index, &change).map_err(|e| {
        if e.is(libc::EEXIST) {
            ifname_taken(ifname, netns)
        } else {
            Error::from(e).context(format!("renaming {} to {ifname}", link.name))
        }
    })?;
    Ok(Link {
        name: ifname.to_string(),
        ..link
    })
}

/// Fails (code 103) when the container's namespace already has an interface `ifname`: checked
/// before IPAM runs, so that an ADD again into a living container (whose lease IPAM hands
/// back) never undoes that container's lease when it fails.
pub fn ensure_ifname_free(nl: &Nl, ifname: &str, netns: &Netns) -> Result<()> {
    if nl.link(ifname)?.is_some() {
        return Err(ifname_taken(ifname, netns));
    }
    Ok(())
}

/// Where the attachment locks live (see [`lock_attachment`]).
pub const ATTACHMENT_LOCK_DIR: &str = "/run/cni-rs/attachments";

/// How long an ADD or DEL waits for another call of the same attachment to finish: longer
/// than any call takes (its IPAM lock wait, the carrier and DAD waits).
pub const ATTACHMENT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The lock of one attachment (container id and ifname), held for a whole ADD or DEL of it.
/// Two ADDs of one attachment at once (a runtime that retries while its first call still runs)
/// would otherwise race on the container's interface names; under the lock the second one
/// finds `CNI_IFNAME` made and fails with code 103 before IPAM runs.
pub struct AttachmentLock {
    file: std::fs::File,
    path: std::path::PathBuf,
}

/// Takes the lock of the call's attachment: `<ATTACHMENT_LOCK_DIR>/<FNV-1a of id and ifname>`,
/// a file that the DEL of the attachment removes ([`AttachmentLock::remove`]). Code 11 when
/// another call holds it for more than [`ATTACHMENT_LOCK_WAIT`].
pub fn lock_attachment(call: &Call) -> Result<AttachmentLock> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let (id, ifname) = (call.env.container_id.as_str(), call.env.ifname.as_str());
    let dir = std::path::Path::new(ATTACHMENT_LOCK_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(format!(
        "{:016x}",
        crate::ids::fnv1a(&[id.as_bytes(), ifname.as_bytes()])
    ));
    let started = std::time::Instant::now();
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(format!("opening the attachment lock {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("opening the attachment lock {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(Error::io_failure(format!(
                "the attachment lock {} is not a regular file",
                path.display()
            )));
        }
        let left = ATTACHMENT_LOCK_WAIT.saturating_sub(started.elapsed());
        let locked = crate::lockfile::lock_within(&file, left)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        if !locked {
            return Err(Error::try_again_later(format!(
                "another call of container {id} interface {ifname} has been running for more than {}s{} (lock {})",
                ATTACHMENT_LOCK_WAIT.as_secs(),
                crate::lockfile::held_by(&file)
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
                path.display()
            )));
        }
        // A DEL that held it may have removed the file meanwhile: ours must still be the one
        // at the path, or another call could lock a new file at the same time.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.ino() == meta.ino() && m.dev() == meta.dev() => return Ok(AttachmentLock { file, path }),
            _ => continue,
        }
    }
}

impl AttachmentLock {
    /// At the end of a DEL: removes the lock file (while still holding it) and unlocks.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Code 103: `ifname` is taken in the container's namespace.
fn ifname_taken(ifname: &str, netns: &Netns) -> Error {
    Error::conflict(format!(
        "container interface \"{ifname}\" already exists in {}",
        netns.path()
    ))
}

/// Deletes the container interface `ifname` of an attachment and the temporary link a killed
/// ADD of it may have left (see [`temp_ifname`]). Missing links are fine.
pub fn del_container_links(nl: &Nl, container_id: &str, ifname: &str) -> Result<()> {
    nl.del_link_by_name(ifname)?;
    nl.del_link_by_name(&temp_ifname(container_id, ifname))?;
    Ok(())
}

/// The start of an ADD: the socket in the container's namespace opens on a thread of its own
/// ([`Nl::open_in_background`]) while `load` reads the config; the caller finishes it when it
/// needs it (its errors come after the config's).
pub fn load_while_opening<C>(call: &Call, load: impl FnOnce(&Call) -> Result<C>) -> Result<(&Netns, NlOpening, C)> {
    let netns = call.container_netns()?;
    let opening = Nl::open_in_background(netns)?;
    let conf = load(call)?;
    crate::trace::step("load config");
    Ok((netns, opening, conf))
}

/// An ADD as a transaction of `plugin` under the attachment lock ([`lock_attachment`]):
/// `steps` registers the undo of every change it makes with the [`Txn`]; they all run, newest
/// first, unless `steps` gets to its end (an error returned or a panic: see [`crate::txn`]).
/// The lock is held until the undo has run.
pub fn transaction<'a, T>(
    call: &Call,
    plugin: &'static str,
    steps: impl FnOnce(&mut Txn<'a>) -> Result<T>,
) -> Result<T> {
    let _attachment = lock_attachment(call)?;
    let mut txn = Txn::new(plugin);
    let done = steps(&mut txn)?;
    txn.commit();
    Ok(done)
}

/// DEL: under the attachment lock (without it when it cannot be had: a teardown must not fail
/// for it), the lease and the container interface with what a killed ADD left
/// (`del_attachment`), then the plugin's own teardown `own`, which notes its errors. Every
/// step runs; the lock file goes at the end.
pub fn del(call: &Call, own: impl FnOnce(&mut Errors)) -> Result<()> {
    let attachment = lock_attachment(call)
        .inspect_err(|e| crate::log!("{}: going on without the attachment lock: {e}", call.conf.plugin_type))
        .ok();
    let mut errs = Errors::new();
    del_attachment(call, &mut errs);
    own(&mut errs);
    if let Some(a) = attachment {
        a.remove();
    }
    errs.into_result()
}

/// The steps every DEL shares: the lease (the IPAM plugin runs while the kernel deletes the
/// link) and the container interface of the attachment with any leftover of a killed ADD, if
/// the namespace still exists (gone, its links went with it). Errors are noted, not returned:
/// the caller goes on with its own teardown.
fn del_attachment(call: &Call, errs: &mut Errors) {
    let ipam_type = call.conf.ipam_type();
    let pending = ipam_type.map(|t| delegate::start(t, Command::Del, call));
    // Opened and checked before the plugin ran; `None`: no CNI_NETNS, or the namespace is gone.
    if let Some(ns) = call.container_ns.as_deref() {
        let links = Nl::open_in(ns).and_then(|nl| del_container_links(&nl, &call.env.container_id, &call.env.ifname));
        errs.note(links);
    }
    crate::trace::step("delete link");
    if let Some(p) = pending {
        errs.note(p.and_then(|p| p.wait()));
    }
}

/// The IPAM step of an ADD: the IPAM plugin of the config (`ipam.type`, if any) starts now
/// and runs while `make_links` builds the container's links, so that its process start and
/// work overlap with the kernel's. It is reaped whatever happened to the links, and a lease it
/// may hold is registered with `txn` (released by the undo DEL when the ADD fails, now or
/// later). Returns what `make_links` made and the IPAM result (`None` without `ipam.type`);
/// an error of the links comes before one of IPAM.
///
/// Fault points (see [`crate::fault`]): `<plugin>:ipam-running` while IPAM runs, before the
/// links; `<plugin>:after-ipam` once both are done (`<plugin>` is the transaction's).
pub fn with_ipam<'a, T>(
    call: &'a Call,
    txn: &mut Txn<'a>,
    make_links: impl FnOnce(&mut Txn<'a>) -> Result<T>,
) -> Result<(T, Option<CniResult>)> {
    let ipam_type = call.conf.ipam_type();
    let pending = ipam_type.map(|t| delegate::start(t, Command::Add, call)).transpose()?;
    crate::fault::point(&format!("{}:ipam-running", txn.plugin()));
    let links = make_links(txn);
    // Reap IPAM whatever happened to the links; a lease it may hold is released on failure.
    let ipam = pending.map(|p| p.wait_add());
    if let (Some(t), Some(true)) = (ipam_type, ipam.as_ref().map(|o| o.holds_lease)) {
        txn.undo("the IPAM lease", move || delegate::undo_add(t, call));
    }
    let links = links?;
    let ipam = ipam.map(|o| o.result).transpose()?;
    crate::fault::point(&format!("{}:after-ipam", txn.plugin()));
    Ok((links, ipam))
}

/// The container interface of an ADD's result: `ifname` with `link`'s MAC, in `netns`.
pub fn container_interface(ifname: &str, link: &Link, netns: &Netns) -> Interface {
    Interface {
        name: ifname.to_string(),
        mac: link.mac.clone(),
        sandbox: Some(netns.path().to_string()),
        ..Default::default()
    }
}

/// Puts IPAM's addresses, routes and DNS into `result`, every address on the interface at
/// `if_index` of `result.interfaces`.
pub fn take_ipam(result: &mut CniResult, ipam: CniResult, if_index: usize) {
    result.ips = ipam.ips;
    for ip in result.ips.iter_mut() {
        ip.interface = Some(if_index);
    }
    result.routes = ipam.routes;
    result.dns = ipam.dns;
}

/// What every CHECK does first, once the plugin has loaded its config: the container's
/// namespace, the IPAM plugin's CHECK, and the previous result, which CHECK requires.
pub fn check_preamble(call: &Call) -> Result<(&Netns, CniResult)> {
    let netns = call.container_netns()?;
    if let Some(t) = call.conf.ipam_type() {
        delegate::exec(t, Command::Check, call)?;
    }
    let prev = call
        .conf
        .prev_result()?
        .ok_or_else(|| Error::invalid_config("CHECK: required prevResult missing"))?;
    Ok((netns, prev))
}

/// CHECK: the container interface `link` has the MAC of the previous result's `prev` (when it
/// names one; case does not matter).
pub fn check_mac(prev: &Interface, link: &Link) -> Result<()> {
    if !prev.mac.is_empty() && !prev.mac.eq_ignore_ascii_case(&link.mac) {
        return Err(Error::check_failed(format!(
            "interface {} MAC {} does not match the previous result's {}",
            prev.name, link.mac, prev.mac
        )));
    }
    Ok(())
}

/// GC: the IPAM plugin's GC, then the plugin's own (`own`, given the config's common keys);
/// both run, and both errors are reported.
pub fn gc(call: &Call, own: impl FnOnce(&NetConf) -> Result<()>) -> Result<()> {
    let net = &call.conf;
    let mut errs = Errors::new();
    if let Some(t) = net.ipam_type() {
        errs.note(delegate::exec(t, Command::Gc, call));
    }
    errs.note(own(net));
    errs.into_result()
}

/// Sysctls of the container interface, written inside `ns` on one short-lived thread:
/// `arp_notify=1`, IPv6 DAD on or off (`None` leaves it as the namespace has it), and IPv6
/// enabled on `lo` and the interface when the result has an IPv6 address: what the reference
/// writes, and nothing else.
pub fn container_sysctls(ns: &Netns, ifname: &str, result: &CniResult, enable_dad: Option<bool>) -> Result<()> {
    let has_v6 = result.ips.iter().any(|ip| ip.address.addr().is_ipv6());
    let ifname = ifname.to_string();
    ns.run(move || -> Result<()> {
        // Best effort, as the reference: a kernel without IPv6 has none of the ipv6 keys.
        let _ = write_sysctl(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
        if has_v6 {
            for i in ["lo", ifname.as_str()] {
                // Read first: a write takes the kernel's RTNL lock even when nothing changes.
                let key = format!("net/ipv6/conf/{i}/disable_ipv6");
                if read_sysctl(&key).ok().as_deref() != Some("0") {
                    write_sysctl(&key, "0").map_err(|e| e.context(format!("enabling IPv6 on {i}")))?;
                }
            }
        }
        match enable_dad {
            Some(true) => {
                let _ = write_sysctl(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
                let _ = write_sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1");
            }
            Some(false) => {
                let _ = write_sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
            }
            None => {}
        }
        Ok(())
    })?
}

/// Brings `link` up and adds the result's addresses (those of interface index `if_index`, or
/// all when the IPs name no interface) and routes. A route without a gateway goes via the
/// first gateway of its family, as in the reference.
pub fn configure(nl: &Nl, link: &Link, result: &CniResult, if_index: usize, nodad: bool) -> Result<()> {
    let mut v4gw: Option<IpAddr> = None;
    let mut v6gw: Option<IpAddr> = None;
    let mut added_v6 = false;
    for ipc in &result.ips {
        if ipc.interface.is_some_and(|i| i != if_index) {
            continue;
        }
        nl.add_addr(link.index, ipc.address, nodad).or_else(|e| {
            if e.is(libc::EEXIST) {
                Ok(())
            } else {
                Err(Error::from(e).context(format!("adding {} to {}", ipc.address, link.name)))
            }
        })?;
        added_v6 |= ipc.address.addr().is_ipv6();
        if let Some(gw) = ipc.gateway {
            match gw {
                IpAddr::V4(_) if v4gw.is_none() => v4gw = Some(gw),
                IpAddr::V6(_) if v6gw.is_none() => v6gw = Some(gw),
                _ => {}
            }
        }
    }
    if !link.up {
        nl.set_up(link.index)
            .map_err(|e| Error::from(e).context(format!("setting {} up", link.name)))?;
    }
    if added_v6 && !nodad {
        settle(nl, link.index, Duration::from_secs(10))?;
    }
    for r in &result.routes {
        let gw = r.gw.or(if r.dst.addr().is_ipv4() { v4gw } else { v6gw });
        let nr = NewRoute {
            dst: r.dst,
            gw,
            oif: link.index,
            mtu: r.mtu,
            advmss: r.advmss,
            priority: r.priority,
            table: r.table,
            scope: r.scope,
        };
        nl.add_route(&nr).or_else(|e| {
            if e.is(libc::EEXIST) {
                Ok(())
            } else {
                Err(Error::from(e).context(format!(
                    "failed to add route '{} via {} dev {}'",
                    r.dst,
                    gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
                    link.name
                )))
            }
        })?;
    }
    Ok(())
}

/// Waits until no IPv6 address of link `index` is tentative (DAD finished).
fn settle(nl: &Nl, index: u32, max: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if !nl.has_tentative(index)? {
            return Ok(());
        }
        if start.elapsed() > max {
            return Err(Error::try_again_later(format!(
                "IPv6 addresses of link {index} still tentative (DAD) after {max:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CHECK: every address of the previous result for interface `if_index` is on `link`.
pub fn check_addrs(nl: &Nl, link: &Link, prev: &CniResult, if_index: usize) -> Result<()> {
    let have = nl.addrs(link.index)?;
    for ipc in prev.ips.iter().filter(|i| i.interface.is_none_or(|i| i == if_index)) {
        if !have.contains(&ipc.address) {
            return Err(Error::check_failed(format!(
                "address {} of the previous result is not on {}",
                ipc.address, link.name
            )));
        }
    }
    Ok(())
}

/// CHECK: every route of the previous result exists in the namespace of `nl`.
pub fn check_routes(nl: &Nl, prev: &CniResult) -> Result<()> {
    let have = nl.routes()?;
    for r in &prev.routes {
        let found = have.iter().any(|h| h.dst == r.dst && (r.gw.is_none() || h.gw == r.gw));
        if !found {
            return Err(Error::check_failed(format!(
                "route to {} via {} of the previous result is missing",
                r.dst,
                r.gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::temp_ifname;

    #[test]
    fn temp_names_are_per_attachment_and_fit() {
        let a = temp_ifname("abc", "eth0");
        assert_eq!(a, temp_ifname("abc", "eth0"));
        assert_ne!(a, temp_ifname("abc", "eth1"));
        assert_ne!(a, temp_ifname("abc1", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(cni_env_ok(&a));
    }

    fn cni_env_ok(n: &str) -> bool {
        crate::env::check_ifname(n).is_ok()
    }
}
