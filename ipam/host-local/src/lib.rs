//! The host-local IPAM plugin: addresses from configured ranges, leases on disk in the
//! reference plugin's layout.
//!
//! - [`config`]: the `ipam` section, validated with the reference's rules
//! - [`allocator`]: round-robin allocation from a range set
//! - [`store`]: the lease store trait; [`disk`]: the on-disk store (atomic leases, an index
//!   that keeps ADD and DEL independent of the number of leases, symlink-proof); [`etcd`]: the
//!   config of the etcd store (`ipam.store`), one address space for every host of a network,
//!   whose client lives in `host-local-etcd` (crate `ipam/host-local-etcd`, with the operator
//!   commands `host-local leases|release-host|import`)
//! - [`dns`]: the `resolvConf` file
//! - [`HostLocal`]: the verbs

pub mod allocator;
pub mod config;
pub mod disk;
pub mod dns;
pub mod etcd;
pub mod store;
mod sys;

use std::collections::HashSet;
use std::net::IpAddr;

use cni::{CniResult, Error, Result};

use config::IpamConfig;
use disk::DiskStore;
use store::{Owner, Store};

/// The plugin.
pub struct HostLocal;

/// Where the kernel tells the id of this boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The kernel's id of this boot.
pub fn boot_id() -> Result<String> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("reading {BOOT_ID_PATH}"), e))
}

/// Opens the network's store, making an on-disk one that does not exist yet (ADD, STATUS);
/// `att` as for [`open_store_if`].
fn open_store(conf: &IpamConfig, att: Option<&str>) -> Result<Box<dyn Store>> {
    open_store_if(conf, true, att)?.ok_or_else(|| {
        Error::internal(format!(
            "the lease store of network {} under {} was not made on open",
            conf.name,
            conf.data_dir.display()
        ))
    })
}

/// Opens the network's store if it exists (DEL, CHECK, GC): `None` when an on-disk store does
/// not (it holds nothing then).
fn existing_store(conf: &IpamConfig, att: Option<&str>) -> Result<Option<Box<dyn Store>>> {
    open_store_if(conf, false, att)
}

/// Opens the network's store, on disk (see [`DiskStore::open`]) unless `ipam.store` selects
/// etcd (linked in by `host-local-etcd`, see [`etcd::register`]), and does its boot
/// bookkeeping: leases from an earlier boot are released first (see
/// [`Store::reconcile_boot`]). `att`: the container the call is about, which a store that
/// reads over the network fetches with its first read. Without `create`, `Ok(None)` when an
/// on-disk store does not exist.
fn open_store_if(conf: &IpamConfig, create: bool, att: Option<&str>) -> Result<Option<Box<dyn Store>>> {
    let mut store: Box<dyn Store> = match &conf.etcd {
        Some(e) => etcd::open(e, &conf.name, att)?,
        None => match DiskStore::open(&conf.data_dir, &conf.name, create)? {
            Some(s) => Box::new(s),
            None => return Ok(None),
        },
    };
    store.reconcile_boot(&boot_id()?, conf.release_on_reboot)?;
    cni::trace::step("boot record");
    Ok(Some(store))
}

/// ADD: one address per range set (the requested one where a request falls in the set), as a
/// call of its own (a new token, see [`add_with`]).
pub fn add(stdin: &[u8], id: &str, ifname: &str, env_args: &str) -> Result<CniResult> {
    add_with(stdin, id, ifname, env_args, &cni::ids::random_token())
}

/// [`add`] as the call `token` (the token the DEL that may undo it names: see
/// [`Store::claim`]).
pub fn add_with(stdin: &[u8], id: &str, ifname: &str, env_args: &str, token: &str) -> Result<CniResult> {
    cni::fault::point("host-local:add");
    let conf = IpamConfig::load(stdin, env_args)?;
    cni::trace::step("load ipam config");
    let dns = match &conf.resolv_conf {
        Some(p) => dns::parse_file(p)?,
        None => Default::default(),
    };

    // Match each requested address to the first range set that holds it and has no request
    // yet; a request that fits nowhere fails the call before anything is reserved.
    let mut per_set: Vec<Option<IpAddr>> = vec![None; conf.range_sets.len()];
    let mut seen = HashSet::new();
    let mut unmatched = Vec::new();
    for req in &conf.requested {
        if !seen.insert(req.ip) {
            continue;
        }
        let slot = (0..conf.range_sets.len()).find(|&i| per_set[i].is_none() && conf.range_sets[i].contains(req.ip));
        match slot {
            Some(i) => per_set[i] = Some(req.ip),
            None => unmatched.push(format!("{} ({})", req.ip, req.source)),
        }
    }
    if !unmatched.is_empty() {
        return Err(Error::invalid_config(format!(
            "failed to allocate all requested IPs: {} (each must lie in a range set, one per set)",
            unmatched.join(" ")
        )));
    }

    let mut store = open_store(&conf, Some(id))?;
    let mut result = CniResult::default();
    // Every range set's address in one transaction (run again from scratch after a lost race).
    store.transact(&mut |store| {
        // New leases of this call, and held ones a static request replaced: what a failure
        // undoes.
        let mut reserved: Vec<IpAddr> = Vec::new();
        let mut replaced: Vec<(usize, IpAddr)> = Vec::new();
        result.ips.clear();
        let mut attempt = || -> Result<()> {
            store.claim(id, ifname, token)?;
            for (idx, set) in conf.range_sets.iter().enumerate() {
                let a = allocator::allocate(store, set, idx, id, ifname, per_set[idx])
                    .map_err(|e| e.context(format!("failed to allocate for range {idx}")))?;
                if a.new {
                    reserved.push(a.ip.address.addr());
                }
                replaced.extend(a.replaced.iter().map(|ip| (idx, *ip)));
                result.ips.push(a.ip);
            }
            store.record_add(id, ifname)
        };
        let Err(e) = attempt() else { return Ok(()) };
        // What this call reserved goes, what a static request replaced comes back, and the
        // pointers are put back: the store is as the call found it.
        for ip in &reserved {
            if let Err(re) = store.release(id, ifname, *ip) {
                cni::log!("host-local: rolling back {ip}: {re}");
            }
        }
        for (set, ip) in &replaced {
            if let Err(re) = store.reserve(id, ifname, *ip, *set) {
                cni::log!("host-local: restoring the lease of {ip}: {re}");
            }
        }
        if let Err(re) = store.restore_last_reserved() {
            cni::log!("host-local: rolling back: {re}");
        }
        Err(e)
    })?;
    cni::trace::step("allocate");
    result.routes = conf.routes;
    result.dns = dns;
    Ok(result)
}

/// DEL: releases what (`id`, `ifname`) holds. A store that does not exist holds nothing.
///
/// DEL takes nothing from `CNI_ARGS` (`IP=` asks for an address): keys it does not know must
/// not keep a lease held for ever, so `env_args` is not judged (the reference refuses them).
pub fn del(stdin: &[u8], id: &str, ifname: &str, env_args: &str) -> Result<()> {
    let _ = env_args;
    del_with(stdin, id, ifname, None)
}

/// [`del`]; with `undo_of`, the DEL that a plugin runs to undo its failed ADD, whose token
/// it names ([`cni::delegate::UNDO_ENV`]): it releases only what that ADD reserved, and puts
/// back the round-robin pointers that ADD moved (see [`Store::release_for_undo`]). Reads only
/// what it needs of the config ([`IpamConfig::load_for_teardown`]): a config that went bad
/// since the ADD still releases.
pub fn del_with(stdin: &[u8], id: &str, ifname: &str, undo_of: Option<&str>) -> Result<()> {
    let conf = IpamConfig::load_for_teardown(stdin)?;
    let Some(mut store) = existing_store(&conf, Some(id))? else {
        return Ok(());
    };
    // As the reference, once per range set: a second pass also releases old-format leases
    // of the container when the first released new-format ones. Range sets that do not read:
    // two passes, so that both formats go.
    let passes = match conf.range_sets.len() {
        0 => 2,
        n => n,
    };
    store.transact(&mut |store| {
        match undo_of {
            Some(token) => {
                store.release_for_undo(id, ifname, token)?;
            }
            None => {
                for _ in 0..passes {
                    store.release_by_id(id, ifname)?;
                }
            }
        }
        Ok(())
    })
}

/// CHECK: (`id`, `ifname`) must still hold a lease.
pub fn check(stdin: &[u8], id: &str, ifname: &str, env_args: &str) -> Result<()> {
    let conf = IpamConfig::load(stdin, env_args)?;
    let found = match existing_store(&conf, Some(id))? {
        Some(mut store) => {
            let mut found = false;
            store.transact(&mut |store| {
                found = !store.get_by_id(id, ifname)?.is_empty();
                Ok(())
            })?;
            found
        }
        None => false,
    };
    if !found {
        return Err(Error::check_failed(format!(
            "host-local: Failed to find address added by container {id}"
        )));
    }
    Ok(())
}

/// GC: releases every lease whose attachment is not in `keep` (old-format leases: whose
/// container id is not), and empty leases left by a crashed writer.
pub fn gc(stdin: &[u8], keep: &[cni::types::Attachment]) -> Result<store::GcReport> {
    // Only what GC needs: the store ([`IpamConfig::load_for_teardown`]).
    let conf = IpamConfig::load_for_teardown(stdin)?;
    let Some(mut store) = existing_store(&conf, None)? else {
        return Ok(Default::default());
    };
    let pairs: HashSet<(&str, &str)> = keep
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let ids: HashSet<&str> = keep.iter().map(|a| a.container_id.as_str()).collect();
    let keep_fn = |o: &Owner| match &o.ifname {
        Some(ifn) => pairs.contains(&(o.container_id.as_str(), ifn.as_str())),
        None => ids.contains(o.container_id.as_str()),
    };
    let mut report = store::GcReport::default();
    store.transact(&mut |store| {
        report = store.gc(&keep_fn)?;
        Ok(())
    })?;
    Ok(report)
}

/// STATUS: code 50 when the store cannot be written or a range set has no free address.
pub fn status(stdin: &[u8], env_args: &str) -> Result<()> {
    let conf = IpamConfig::load(stdin, env_args)?;
    let unavailable = |e: Error| Error::plugin_not_available(e.to_string());
    let mut store = open_store(&conf, None).map_err(unavailable)?;
    store.check_writable().map_err(unavailable)?;
    store.transact(&mut |store| {
        for (idx, set) in conf.range_sets.iter().enumerate() {
            if !allocator::has_free_address(store, set, idx).map_err(unavailable)? {
                return Err(Error::plugin_not_available(format!(
                    "no IP addresses available in range set: {set}"
                )));
            }
        }
        Ok(())
    })
}

impl cni::Plugin for HostLocal {
    /// host-local ignores `CNI_NETNS`, as the reference does.
    fn enters_netns(&self) -> bool {
        false
    }

    /// A config on the etcd store goes to `host-local-etcd` when this program lacks it (see
    /// [`etcd`]).
    fn exec_instead(&self, stdin: &[u8], get: &cni::env::Lookup<'_>) -> Result<Option<std::path::PathBuf>> {
        etcd::helper_for(stdin, get("CNI_PATH").as_deref())
    }

    fn add(&self, call: &cni::Call) -> Result<CniResult> {
        add_with(
            &call.stdin,
            &call.env.container_id,
            &call.env.ifname,
            &call.env.args,
            &call.env.token,
        )
    }

    fn del(&self, call: &cni::Call) -> Result<()> {
        // `CNI_ARGS` is not judged (see [`del`]); the undo flag comes with the call's
        // environment, which is the process's or, run in-process, the one it was given.
        del_with(
            &call.stdin,
            &call.env.container_id,
            &call.env.ifname,
            call.env.undo_of.as_deref(),
        )
    }

    fn check(&self, call: &cni::Call) -> Result<()> {
        check(&call.stdin, &call.env.container_id, &call.env.ifname, &call.env.args)
    }

    fn gc(&self, call: &cni::Call) -> Result<()> {
        let report = gc(&call.stdin, &call.conf.gc_keep())?;
        if !report.released.is_empty() || !report.empty_removed.is_empty() {
            cni::log!(
                "host-local: GC released {:?}, removed empty leases {:?}",
                report.released,
                report.empty_removed
            );
        }
        Ok(())
    }

    fn status(&self, call: &cni::Call) -> Result<()> {
        status(&call.stdin, &call.env.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn conf(dir: &std::path::Path, ipam: Value) -> Vec<u8> {
        let mut ipam = ipam;
        ipam["type"] = json!("host-local");
        ipam["dataDir"] = json!(dir);
        json!({"cniVersion": "1.1.0", "name": "net", "ipam": ipam})
            .to_string()
            .into_bytes()
    }

    fn leases(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    fn dual(dir: &std::path::Path) -> Vec<u8> {
        conf(
            dir,
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]],
                   "routes": [{"dst": "0.0.0.0/0"}]}),
        )
    }

    fn store_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let Ok(rd) = std::fs::read_dir(dir.join("net")) else {
            return Vec::new();
        };
        let mut v: Vec<(String, Vec<u8>)> = rd
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .filter(|(n, _)| n.parse::<IpAddr>().is_ok() || n.starts_with(disk::LAST_RESERVED_PREFIX))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn undoing_a_failed_add_puts_the_pointers_back() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        // From an empty store: the pointers did not exist.
        let empty_before = store_files(t.path());
        add_with(&c, "c1", "eth0", "", "t1").unwrap();
        del_with(&c, "c1", "eth0", Some("t1")).unwrap();
        assert_eq!(store_files(t.path()), empty_before);
        // With pointers and leases of others.
        add(&c, "c2", "eth0", "").unwrap();
        add(&c, "c3", "eth0", "").unwrap();
        let before = store_files(t.path());
        let r = add_with(&c, "c4", "eth0", "", "t4").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.4/24");
        del_with(&c, "c4", "eth0", Some("t4")).unwrap();
        assert_eq!(store_files(t.path()), before);
        let r = add_with(&c, "c5", "eth0", "", "t5").unwrap();
        assert_eq!(
            r.ips[0].address.to_string(),
            "10.1.0.4/24",
            "the next ADD gets what c4 got"
        );
        // A pointer moved on by a later ADD stays; a plain DEL leaves the pointers (reference).
        add(&c, "c6", "eth0", "").unwrap();
        del_with(&c, "c5", "eth0", Some("t5")).unwrap();
        assert_eq!(
            std::fs::read(t.path().join("net/last_reserved_ip.0")).unwrap(),
            b"10.1.0.5"
        );
        del(&c, "c6", "eth0", "").unwrap();
        assert_eq!(
            std::fs::read(t.path().join("net/last_reserved_ip.0")).unwrap(),
            b"10.1.0.5"
        );
        // A second ADD of an attachment that gets its lease back moves nothing: undoing it
        // does not undo the first ADD's pointers, nor release the lease it found.
        add_with(&c, "c7", "eth0", "", "t7a").unwrap();
        add_with(&c, "c7", "eth0", "", "t7b").unwrap();
        del_with(&c, "c7", "eth0", Some("t7b")).unwrap();
        assert_eq!(
            std::fs::read(t.path().join("net/last_reserved_ip.0")).unwrap(),
            b"10.1.0.6"
        );
        assert_eq!(leases(t.path()).iter().filter(|l| l.as_str() == "10.1.0.6").count(), 1);
    }

    /// Two ADDs of one attachment at once (a runtime that retries): whichever of the two fails
    /// afterwards and undoes, the lease the other one returned stays.
    #[test]
    fn an_undo_releases_only_what_its_own_add_reserved() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        let lease_of = |id: &str| {
            let mut v: Vec<String> = std::fs::read_dir(t.path().join("net"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_str().unwrap().parse::<IpAddr>().is_ok())
                .filter(|p| std::fs::read_to_string(p).unwrap() == format!("{id}\r\neth0"))
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // A reserved; B got A's lease back; A fails and undoes: B's lease stays.
        let a = add_with(&c, "c1", "eth0", "", "ta").unwrap();
        let b = add_with(&c, "c1", "eth0", "", "tb").unwrap();
        assert_eq!(a.ips, b.ips);
        del_with(&c, "c1", "eth0", Some("ta")).unwrap();
        assert_eq!(lease_of("c1"), ["10.1.0.2", "fd00::2"]);
        // B fails instead and undoes: the lease was held when B came, it stays.
        del_with(&c, "c1", "eth0", Some("tb")).unwrap();
        assert_eq!(lease_of("c1"), ["10.1.0.2", "fd00::2"]);
        // An undo of an ADD that left no record, or of an old version ("1"): nothing.
        del_with(&c, "c1", "eth0", Some("1")).unwrap();
        assert_eq!(lease_of("c1"), ["10.1.0.2", "fd00::2"]);
        // A plain DEL releases it; an undo of the last claimant releases what it reserved.
        del(&c, "c1", "eth0", "").unwrap();
        assert!(lease_of("c1").is_empty());
        add_with(&c, "c1", "eth0", "", "tc").unwrap();
        del_with(&c, "c1", "eth0", Some("tc")).unwrap();
        assert!(lease_of("c1").is_empty());
        assert!(leases(t.path()).is_empty());
        // No claim record is left behind by DEL.
        let names: Vec<String> = std::fs::read_dir(t.path().join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(disk::CLAIM_PREFIX))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn del_does_not_judge_cni_args() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        add(&c, "c1", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=x").unwrap();
        assert_eq!(add(&c, "c2", "eth0", "K8S_POD_NAME=x").unwrap_err().code(), 4);
        del(&c, "c1", "eth0", "K8S_POD_NAME=x;").unwrap();
        assert!(leases(t.path()).is_empty());
    }

    #[test]
    fn failed_add_within_the_call_puts_the_pointers_back() {
        let t = tempfile::tempdir().unwrap();
        let c = conf(
            t.path(),
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]]}),
        );
        add(&c, "c1", "eth0", "").unwrap();
        let before = store_files(t.path());
        // The second set (one address) is full: the first set's pointer must not move.
        let e = add(&c, "c2", "eth0", "").unwrap_err();
        assert_eq!(e.code(), 102, "{e}");
        assert_eq!(store_files(t.path()), before);
    }

    #[test]
    fn add_check_del_dual_stack() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        let r = add(&c, "c1", "eth0", "").unwrap();
        let j = r.to_json("1.1.0");
        assert_eq!(j["ips"][0]["address"], "10.1.0.2/24");
        assert_eq!(j["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(j["ips"][1]["address"], "fd00::2/64");
        assert!(j["ips"][0].get("interface").is_none());
        assert_eq!(j["routes"][0]["dst"], "0.0.0.0/0");
        check(&c, "c1", "eth0", "").unwrap();
        let e = check(&c, "c1", "eth1", "").unwrap_err();
        assert_eq!(e.code(), 104);
        del(&c, "c1", "eth0", "").unwrap();
        del(&c, "c1", "eth0", "").unwrap();
        assert!(leases(t.path()).is_empty());
        let e = check(&c, "c1", "eth0", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "host-local: Failed to find address added by container c1"
        );
    }

    #[test]
    fn failed_static_request_reserves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        add(&c, "other", "eth0", "IP=fd00::9").unwrap();
        // The IPv4 set would get a dynamic address, the IPv6 request is held: nothing stays.
        let e = add(&c, "c1", "eth0", "IP=fd00::9").unwrap_err();
        assert_eq!(e.code(), 103, "{e}");
        assert!(
            e.to_string()
                .starts_with("failed to allocate for range 1: requested IP address fd00::9 is not available"),
            "{e}"
        );
        assert_eq!(leases(t.path()), ["10.1.0.2", "fd00::9"]);
        // Outside every range set: code 7, before anything is reserved.
        let e = add(&c, "c1", "eth0", "IP=10.9.0.1").unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert!(
            e.to_string()
                .starts_with("failed to allocate all requested IPs: 10.9.0.1"),
            "{e}"
        );
        // Two requests for one range set.
        let e = add(&c, "c1", "eth0", "IP=10.1.0.7,10.1.0.8").unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert_eq!(leases(t.path()), ["10.1.0.2", "fd00::9"]);
        // A request per set, in every source.
        let mut v: Value = serde_json::from_slice(&c).unwrap();
        v["args"] = json!({"cni": {"ips": ["10.1.0.7/24"]}});
        v["runtimeConfig"] = json!({"ips": ["fd00::7"]});
        let r = add(v.to_string().as_bytes(), "c1", "eth0", "").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.7/24");
        assert_eq!(r.ips[1].address.to_string(), "fd00::7/64");
    }

    #[test]
    fn a_second_add_of_an_attachment_gets_its_leases_back() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        add(&c, "c1", "eth0", "").unwrap();
        add(&c, "c2", "eth0", "").unwrap();
        let net = t.path().join("net");
        let pointer = || std::fs::read(net.join("last_reserved_ip.0")).unwrap();
        assert_eq!(pointer(), b"10.1.0.3");
        let r = add(&c, "c1", "eth0", "").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.2/24");
        assert_eq!(r.ips[1].address.to_string(), "fd00::2/64");
        assert_eq!(pointer(), b"10.1.0.3", "the round robin is untouched");
        assert_eq!(leases(t.path()), ["10.1.0.2", "10.1.0.3", "fd00::2", "fd00::3"]);
        // A static request of the holder: the IPv4 lease is replaced, the IPv6 one kept.
        let r = add(&c, "c1", "eth0", "IP=10.1.0.9").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.9/24");
        assert_eq!(r.ips[1].address.to_string(), "fd00::2/64");
        assert_eq!(leases(t.path()), ["10.1.0.3", "10.1.0.9", "fd00::2", "fd00::3"]);
        // Another container's address: refused with its holder, c1 keeps its leases.
        let e = add(&c, "c1", "eth0", "IP=10.1.0.3").unwrap_err();
        assert_eq!(e.code(), 103);
        assert!(e.to_string().contains("held by container c2"), "{e}");
        assert_eq!(leases(t.path()), ["10.1.0.3", "10.1.0.9", "fd00::2", "fd00::3"]);
    }

    /// Plants a boot record of another boot, as a store written before a reboot has.
    fn plant_boot(dir: &std::path::Path, id: &str) {
        std::fs::write(dir.join("net").join(disk::BOOT_FILE), format!("{id}\n")).unwrap();
    }

    fn recorded_boot(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join("net").join(disk::BOOT_FILE)).unwrap()
    }

    #[test]
    fn leases_of_an_earlier_boot_are_released_by_the_first_call() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        add(&c, "c1", "eth0", "").unwrap();
        add(&c, "c2", "eth0", "IP=10.1.0.40").unwrap();
        assert_eq!(recorded_boot(t.path()), format!("{}\n", boot_id().unwrap()));
        // Same boot: nothing changes.
        add(&c, "c3", "eth0", "").unwrap();
        assert_eq!(leases(t.path()).len(), 6);
        // "Reboot": the store says it was last used in another boot; an empty lease of a
        // writer that crashed then goes too.
        plant_boot(t.path(), "00000000-0000-0000-0000-000000000000");
        std::fs::write(t.path().join("net/10.1.0.77"), "").unwrap();
        check(&c, "c1", "eth0", "").unwrap_err();
        assert!(leases(t.path()).is_empty());
        assert_eq!(recorded_boot(t.path()), format!("{}\n", boot_id().unwrap()));
        // Round robin goes on where it was.
        let r = add(&c, "c4", "eth0", "").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.42/24");
        // The first call after the boot may be any verb: here a DEL of another container.
        plant_boot(t.path(), "0b0b0b0b-1111-4000-8000-000000000000");
        del(&c, "nobody", "eth0", "").unwrap();
        assert!(leases(t.path()).is_empty());
    }

    #[test]
    fn a_store_without_a_boot_record_is_adopted() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        add(&c, "c1", "eth0", "").unwrap();
        // As the reference (or an older version of ours) leaves it: no record.
        std::fs::remove_file(t.path().join("net").join(disk::BOOT_FILE)).unwrap();
        add(&c, "c2", "eth0", "").unwrap();
        assert_eq!(leases(t.path()).len(), 4);
        assert_eq!(recorded_boot(t.path()), format!("{}\n", boot_id().unwrap()));
    }

    #[test]
    fn release_on_reboot_can_be_turned_off() {
        let t = tempfile::tempdir().unwrap();
        let c = conf(
            t.path(),
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}]], "releaseOnReboot": false}),
        );
        add(&c, "c1", "eth0", "").unwrap();
        plant_boot(t.path(), "0b0b0b0b-1111-4000-8000-000000000000");
        add(&c, "c2", "eth0", "").unwrap();
        assert_eq!(leases(t.path()), ["10.1.0.2", "10.1.0.3"]);
        // The boot is recorded all the same.
        assert_eq!(recorded_boot(t.path()), format!("{}\n", boot_id().unwrap()));
        let bad = conf(t.path(), json!({"subnet": "10.1.0.0/24", "releaseOnReboot": "no"}));
        assert_eq!(add(&bad, "c3", "eth0", "").unwrap_err().code(), 6);
    }

    #[test]
    fn del_without_a_store_creates_nothing() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("missing");
        let c = dual(&missing);
        del(&c, "c1", "eth0", "").unwrap();
        assert!(!missing.exists());
        assert_eq!(check(&c, "c1", "eth0", "").unwrap_err().code(), 104);
        gc(&c, &[]).unwrap();
        assert!(!missing.exists());
    }

    #[test]
    fn gc_releases_what_is_not_kept() {
        let t = tempfile::tempdir().unwrap();
        let c = dual(t.path());
        add(&c, "c1", "eth0", "").unwrap();
        add(&c, "c2", "eth0", "").unwrap();
        let keep = [cni::types::Attachment {
            container_id: "c2".into(),
            ifname: "eth0".into(),
        }];
        let r = gc(&c, &keep).unwrap();
        assert_eq!(r.released.len(), 2);
        assert_eq!(leases(t.path()), ["10.1.0.3", "fd00::3"]);
    }

    #[test]
    fn status_reports_a_full_range() {
        let t = tempfile::tempdir().unwrap();
        let c = conf(t.path(), json!({"ranges": [[{"subnet": "10.1.0.0/30"}]]}));
        status(&c, "").unwrap();
        add(&c, "c1", "eth0", "").unwrap();
        let e = status(&c, "").unwrap_err();
        assert_eq!(e.code(), 50, "{e}");
        assert_eq!(add(&c, "c2", "eth0", "").unwrap_err().code(), 102);
        del(&c, "c1", "eth0", "").unwrap();
        status(&c, "").unwrap();
    }

    #[test]
    fn status_reports_an_unusable_data_dir() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        let c = conf(&file, json!({"subnet": "10.1.0.0/24"}));
        let e = status(&c, "").unwrap_err();
        assert_eq!(e.code(), 50, "{e}");
    }

    #[test]
    fn resolv_conf_fills_dns() {
        let t = tempfile::tempdir().unwrap();
        let rc = t.path().join("resolv.conf");
        std::fs::write(&rc, "nameserver 10.0.0.53\nsearch example.com\n").unwrap();
        let c = conf(t.path(), json!({"subnet": "10.1.0.0/24", "resolvConf": rc}));
        let r = add(&c, "c1", "eth0", "").unwrap();
        assert_eq!(r.dns.nameservers, ["10.0.0.53"]);
        assert_eq!(r.dns.search, ["example.com"]);
        let c = conf(
            t.path(),
            json!({"subnet": "10.1.0.0/24", "resolvConf": t.path().join("nope")}),
        );
        assert_eq!(add(&c, "c2", "eth0", "").unwrap_err().code(), 5);
    }
}
