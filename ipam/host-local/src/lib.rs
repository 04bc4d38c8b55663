//! The host-local IPAM plugin: addresses from configured ranges, leases on disk in the
//! reference plugin's layout.
//!
//! - [`config`]: the `ipam` section, validated with the reference's rules
//! - [`allocator`]: round-robin allocation from a range set
//! - [`store`]: the lease store trait; [`disk`]: the on-disk store (atomic leases, an index
//!   that keeps ADD and DEL independent of the number of leases, symlink-proof)
//! - [`dns`]: the `resolvConf` file
//! - [`HostLocal`]: the verbs

pub mod allocator;
pub mod config;
pub mod disk;
pub mod dns;
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

fn open_store(conf: &IpamConfig, create: bool) -> Result<Option<DiskStore>> {
    DiskStore::open(&conf.data_dir, &conf.name, create)
}

/// ADD: one address per range set (the requested one where a request falls in the set).
pub fn add(stdin: &[u8], id: &str, ifname: &str, env_args: &str) -> Result<CniResult> {
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
        let slot = (0..conf.range_sets.len())
            .find(|&i| per_set[i].is_none() && conf.range_sets[i].contains(req.ip));
        match slot {
            Some(i) => per_set[i] = Some(req.ip),
            None => unmatched.push(format!("{} ({})", req.ip, req.source)),
        }
    }
    if !unmatched.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "failed to allocate all requested IPs: {} (each must lie in a range set, one per set)",
            unmatched.join(" ")
        )));
    }

    let mut store = open_store(&conf, true)?.expect("created on open");
    let mut reserved: Vec<IpAddr> = Vec::new();
    let mut result = CniResult::default();
    for (idx, set) in conf.range_sets.iter().enumerate() {
        match allocator::allocate(&mut store, set, idx, id, ifname, per_set[idx]) {
            Ok(ipc) => {
                reserved.push(ipc.address.addr());
                result.ips.push(ipc);
            }
            Err(e) => {
                for ip in &reserved {
                    if let Err(re) = store.release(id, ifname, *ip) {
                        eprintln!("host-local: rolling back {ip}: {re}");
                    }
                }
                let _ = store.commit();
                return Err(e.context(format!("failed to allocate for range {idx}")));
            }
        }
    }
    store.commit()?;
    cni::trace::step("allocate");
    result.routes = conf.routes;
    result.dns = dns;
    Ok(result)
}

/// DEL: releases what (`id`, `ifname`) holds. A store that does not exist holds nothing.
pub fn del(stdin: &[u8], id: &str, ifname: &str, env_args: &str) -> Result<()> {
    let conf = IpamConfig::load(stdin, env_args)?;
    let Some(mut store) = open_store(&conf, false)? else {
        return Ok(());
    };
    // As the reference, once per range set: a second pass also releases old-format leases
    // of the container when the first released new-format ones.
    for _ in &conf.range_sets {
        store.release_by_id(id, ifname)?;
    }
    store.commit()
}

/// CHECK: (`id`, `ifname`) must still hold a lease.
pub fn check(stdin: &[u8], id: &str, ifname: &str, env_args: &str) -> Result<()> {
    let conf = IpamConfig::load(stdin, env_args)?;
    let found = match open_store(&conf, false)? {
        Some(mut store) => {
            let ips = store.get_by_id(id, ifname)?;
            store.commit()?;
            !ips.is_empty()
        }
        None => false,
    };
    if !found {
        return Err(Error::CheckFailed(format!(
            "host-local: Failed to find address added by container {id}"
        )));
    }
    Ok(())
}

/// GC: releases every lease whose attachment is not in `keep` (old-format leases: whose
/// container id is not), and empty leases left by a crashed writer.
pub fn gc(stdin: &[u8], keep: &[cni::types::Attachment]) -> Result<store::GcReport> {
    let conf = IpamConfig::load(stdin, "")?;
    let Some(mut store) = open_store(&conf, false)? else {
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
    let report = store.gc(&keep_fn)?;
    store.commit()?;
    Ok(report)
}

/// STATUS: code 50 when the store cannot be written or a range set has no free address.
pub fn status(stdin: &[u8], env_args: &str) -> Result<()> {
    let conf = IpamConfig::load(stdin, env_args)?;
    let unavailable = |e: Error| Error::PluginNotAvailable(e.to_string());
    let mut store = open_store(&conf, true)
        .map_err(unavailable)?
        .expect("created on open");
    store.check_writable().map_err(unavailable)?;
    for (idx, set) in conf.range_sets.iter().enumerate() {
        if !allocator::has_free_address(&mut store, set, idx).map_err(unavailable)? {
            return Err(Error::PluginNotAvailable(format!(
                "no IP addresses available in range set: {set}"
            )));
        }
    }
    store.commit()
}

impl cni::Plugin for HostLocal {
    fn add(&self, call: &cni::Call) -> Result<CniResult> {
        add(
            &call.stdin,
            &call.env.container_id,
            &call.env.ifname,
            &call.env.args,
        )
    }

    fn del(&self, call: &cni::Call) -> Result<()> {
        del(
            &call.stdin,
            &call.env.container_id,
            &call.env.ifname,
            &call.env.args,
        )
    }

    fn check(&self, call: &cni::Call) -> Result<()> {
        check(
            &call.stdin,
            &call.env.container_id,
            &call.env.ifname,
            &call.env.args,
        )
    }

    fn gc(&self, call: &cni::Call) -> Result<()> {
        let report = gc(&call.stdin, &call.conf.gc_keep())?;
        if !report.released.is_empty() || !report.empty_removed.is_empty() {
            eprintln!(
                "host-local: GC released {:?}, removed empty leases {:?}",
                report.released, report.empty_removed
            );
        }
        Ok(())
    }

    fn status(&self, call: &cni::Call) -> Result<()> {
        status(&call.stdin, &call.env.args)
    }
}
