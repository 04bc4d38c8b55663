//! Operator commands: `host-local` run with arguments and without `CNI_COMMAND`.
//!
//! ```text
//! host-local leases CONFIG                                    list the leases of a network
//! host-local release-host CONFIG HOST                         release the leases of a host (etcd)
//! host-local import CONFIG [--data-dir DIR] [--host HOST]     copy an on-disk store into etcd
//! ```
//!
//! `CONFIG` is a network config file (`.conf` or `.conflist`; `-` reads stdin): the leases
//! are those of its host-local `ipam` section, in the store it selects.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cni::{Error, Result};
use serde_json::{json, Value};

use host_local::config::IpamConfig;
use host_local::etcd;
use host_local::store::Owner;

use crate::store::{Conn, Lease};

const USAGE: &str = "usage:
  host-local leases CONFIG
      list the leases of the network of CONFIG (address, container id, ifname, host, age)
  host-local release-host CONFIG HOST
      release every lease HOST holds in the network's etcd store (a host that is gone)
  host-local import CONFIG [--data-dir DIR] [--host HOST]
      copy the on-disk leases of the network (from DIR, default the config's dataDir) into
      its etcd store as leases of HOST (default ipam.store.host); an address held by
      anyone else is reported as a conflict and left as it is
CONFIG is a network config file (.conf or .conflist), or - for stdin.";

/// One lease as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
    pub host: String,
    /// Seconds since it was written, when known.
    pub age: Option<u64>,
}

/// Runs an operator command; returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    let out = &mut std::io::stdout().lock();
    match run(&args, out) {
        Ok(code) => code,
        Err(e) => {
            cni::log!("host-local: {e}");
            1
        }
    }
}

fn run(args: &[String], out: &mut dyn Write) -> Result<i32> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };
    match a.as_slice() {
        ["leases", conf] => {
            let conf = load_conf(conf)?;
            let rows = list(&conf)?;
            for line in table(&rows) {
                w(out, line);
            }
            Ok(0)
        }
        ["release-host", conf, host] => {
            let conf = load_conf(conf)?;
            let released = release_host(&conf, host)?;
            for r in &released {
                w(out, format!("released {} ({} {})", r.ip, r.container_id, r.ifname));
            }
            w(out, format!("{} lease(s) of host {host} released", released.len()));
            Ok(0)
        }
        ["import", conf, rest @ ..] => {
            let conf = load_conf(conf)?;
            let mut dir = None;
            let mut host = None;
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                match (*flag, it.next()) {
                    ("--data-dir", Some(v)) => dir = Some(PathBuf::from(v)),
                    ("--host", Some(v)) => host = Some(v.to_string()),
                    _ => {
                        return Err(Error::invalid_config(format!(
                            "import: unexpected argument {flag}\n{USAGE}"
                        )))
                    }
                }
            }
            let report = import(&conf, dir.as_deref(), host.as_deref())?;
            for l in &report.lines {
                w(out, l.clone());
            }
            w(
                out,
                format!(
                    "{} imported, {} already there, {} conflict(s)",
                    report.imported, report.present, report.conflicts
                ),
            );
            Ok(if report.conflicts > 0 { 2 } else { 0 })
        }
        ["-h"] | ["--help"] | ["help"] => {
            w(out, USAGE.to_string());
            Ok(0)
        }
        _ => {
            cni::log!("{USAGE}");
            Ok(1)
        }
    }
}

/// Reads a `.conf` or `.conflist` and returns the config of its host-local plugin.
pub fn load_conf(path: &str) -> Result<IpamConfig> {
    let bytes = if path == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(|e| Error::io("reading stdin", e))?;
        b
    } else {
        std::fs::read(path).map_err(|e| Error::io(format!("reading {path}"), e))?
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::decode(format!("{path}: {e}")))?;
    let net = match v.get("plugins").and_then(Value::as_array) {
        Some(plugins) => {
            let p = plugins
                .iter()
                .find(|p| p["ipam"]["type"] == "host-local" || p["ipam"]["type"] == "host-local-etcd")
                .ok_or_else(|| Error::invalid_config(format!("{path}: no plugin with a host-local ipam section")))?;
            json!({"cniVersion": v["cniVersion"], "name": v["name"], "ipam": p["ipam"]})
        }
        None => v,
    };
    IpamConfig::load(net.to_string().as_bytes(), "")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The leases of the network, in either store.
pub fn list(conf: &IpamConfig) -> Result<Vec<Row>> {
    let now = now();
    if let Some(e) = &conf.etcd {
        let conn = Conn::open(e)?;
        let (leases, _) = conn.snapshot(&conf.name)?;
        return Ok(leases
            .into_iter()
            .map(|(ip, h)| Row {
                ip,
                container_id: h.lease.container_id,
                ifname: h.lease.ifname.unwrap_or_default(),
                host: h.lease.host,
                age: (h.lease.time > 0).then(|| now.saturating_sub(h.lease.time)),
            })
            .collect());
    }
    let host = etcd::node_hostname().unwrap_or_default();
    Ok(disk_leases(&conf.data_dir.join(&conf.name))?
        .into_iter()
        .map(|(ip, o, t)| Row {
            ip,
            container_id: o.container_id,
            ifname: o.ifname.unwrap_or_default(),
            host: host.clone(),
            age: t.map(|t| now.saturating_sub(t)),
        })
        .collect())
}

/// The leases of an on-disk store directory, sorted by address: (address, owner, mtime).
fn disk_leases(dir: &Path) -> Result<Vec<(IpAddr, Owner, Option<u64>)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut v = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let Ok(ip) = name.parse::<IpAddr>() else { continue };
        let Ok(meta) = std::fs::symlink_metadata(ent.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let Ok(content) = std::fs::read(ent.path()) else {
            continue;
        };
        let Some(owner) = Owner::parse(&content) else { continue };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        v.push((ip, owner, mtime));
    }
    v.sort_by_key(|(ip, _, _)| *ip);
    Ok(v)
}

fn age_text(age: Option<u64>) -> String {
    match age {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 2 * 3600 => format!("{}m", s / 60),
        Some(s) if s < 2 * 86400 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86400),
    }
}

/// The rows as an aligned table with a header.
pub fn table(rows: &[Row]) -> Vec<String> {
    let mut cells = vec![[
        "ADDRESS".to_string(),
        "CONTAINER".into(),
        "IFNAME".into(),
        "HOST".into(),
        "AGE".into(),
    ]];
    for r in rows {
        cells.push([
            r.ip.to_string(),
            r.container_id.clone(),
            if r.ifname.is_empty() {
                "-".into()
            } else {
                r.ifname.clone()
            },
            r.host.clone(),
            age_text(r.age),
        ]);
    }
    let mut width = [0usize; 5];
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            width[i] = width[i].max(s.len());
        }
    }
    cells
        .iter()
        .map(|c| {
            let mut line = String::new();
            for (i, s) in c.iter().enumerate() {
                if i == 4 {
                    line.push_str(s);
                } else {
                    line.push_str(&format!("{s:<w$}  ", w = width[i]));
                }
            }
            line
        })
        .collect()
}

fn need_etcd<'a>(conf: &'a IpamConfig, what: &str) -> Result<&'a etcd::EtcdConfig> {
    conf.etcd.as_ref().ok_or_else(|| {
        Error::invalid_config(format!(
            "{what} works on an etcd store: the config of network {} has no ipam.store of type etcd",
            conf.name
        ))
    })
}

/// Releases every lease `host` holds in the network's etcd store.
pub fn release_host(conf: &IpamConfig, host: &str) -> Result<Vec<Row>> {
    let e = need_etcd(conf, "release-host")?;
    let conn = Conn::open(e)?;
    let (leases, _) = conn.snapshot(&conf.name)?;
    let mut out = Vec::new();
    for (ip, h) in leases.into_iter().filter(|(_, h)| h.lease.host == host) {
        if conn.delete_lease(&conf.name, ip, h.mod_revision)? {
            out.push(Row {
                ip,
                container_id: h.lease.container_id,
                ifname: h.lease.ifname.unwrap_or_default(),
                host: h.lease.host,
                age: None,
            });
        }
    }
    Ok(out)
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub imported: usize,
    pub present: usize,
    pub conflicts: usize,
    pub lines: Vec<String>,
}

/// Copies the on-disk leases in `dir` (default: the config's data dir) into the etcd store as
/// leases of `host` (default: the store's host). Never overwrites: an address held by anyone
/// else is a conflict.
pub fn import(conf: &IpamConfig, dir: Option<&Path>, host: Option<&str>) -> Result<ImportReport> {
    let e = need_etcd(conf, "import")?;
    let host = host.unwrap_or(&e.host).to_string();
    let data_dir = dir.unwrap_or(&conf.data_dir);
    let net_dir = data_dir.join(&conf.name);
    let leases = disk_leases(&net_dir)?;
    let conn = Conn::open(e)?;
    let mut r = ImportReport::default();
    for (ip, owner, mtime) in leases {
        if !conf.range_sets.iter().any(|s| s.contains(ip)) {
            r.lines.push(format!(
                "skipped {ip}: outside every range set of network {}",
                conf.name
            ));
            continue;
        }
        let lease = Lease {
            container_id: owner.container_id.clone(),
            ifname: owner.ifname.clone(),
            host: host.clone(),
            token: "import".into(),
            time: mtime.unwrap_or_else(now),
        };
        let who = format!("{} {}", owner.container_id, owner.ifname.as_deref().unwrap_or("-"));
        match conn.create_lease(&conf.name, ip, &lease)? {
            None => {
                r.imported += 1;
                r.lines.push(format!("imported {ip} ({who}) as a lease of {host}"));
            }
            Some(h) if h.container_id == lease.container_id && h.ifname == lease.ifname && h.host == host => {
                r.present += 1;
                r.lines.push(format!("already there {ip} ({who})"));
            }
            Some(h) => {
                r.conflicts += 1;
                r.lines.push(format!(
                    "conflict {ip}: {who} on {host} in {}, but etcd has it for {} {} on {}; left as it is",
                    net_dir.display(),
                    h.container_id,
                    h.ifname.as_deref().unwrap_or("-"),
                    h.host
                ));
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let rows = [Row {
            ip: "10.1.0.2".parse().unwrap(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            host: "a".into(),
            age: Some(3700),
        }];
        assert_eq!(
            table(&rows),
            [
                "ADDRESS   CONTAINER  IFNAME  HOST  AGE",
                "10.1.0.2  c1         eth0    a     61m"
            ]
        );
    }

    #[test]
    fn lists_a_disk_store() {
        let t = tempfile::tempdir().unwrap();
        let c = serde_json::json!({"cniVersion": "1.0.0", "name": "net", "plugins": [
            {"type": "macvlan", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24", "dataDir": t.path()}}]});
        let f = t.path().join("c.conflist");
        std::fs::write(&f, c.to_string()).unwrap();
        let conf = load_conf(f.to_str().unwrap()).unwrap();
        let single = serde_json::json!({"cniVersion": "1.0.0", "name": "net",
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/24", "dataDir": t.path()}});
        host_local::add(single.to_string().as_bytes(), "c1", "eth0", "").unwrap();
        let rows = list(&conf).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].ip.to_string(), rows[0].container_id.as_str()),
            ("10.1.0.2".into(), "c1")
        );
    }
}
