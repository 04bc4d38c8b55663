//! Operator commands: `host-local` run with arguments and without `CNI_COMMAND`.
//!
//! ```text
//! host-local leases CONFIG                                    list the leases of a network
//! host-local release-host CONFIG HOST                         release the leases of a host (etcd)
//! host-local import CONFIG [--data-dir DIR] [--host HOST]     copy an on-disk store into etcd
//! host-local migrate CONFIG                                   move a network to this key layout (etcd)
//! ```
//!
//! `CONFIG` is a network config file (`.conf` or `.conflist`; `-` reads stdin): the leases
//! are those of its host-local `ipam` section, in the store it selects.
//!
//! **At any size.** The etcd commands work in batches of at most [`BATCH`] leases, one
//! request (a read, or a transaction of sub-transactions: each lease under its own compare)
//! each, and every batch has a deadline of its own (`ipam.store.timeout`): how long a command
//! runs does not depend on a deadline. Each prints what it did as it goes; interrupted (etcd
//! unreachable past a batch's deadline), it says what is done and what is left, and running it
//! again finishes the job.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni::{Error, Result};
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde_json::{json, Value};

use host_local::config::IpamConfig;
use host_local::etcd;
use host_local::store::Owner;

use crate::conn::Conn;
use crate::layout::{prefix_end, Fam, Keys, Lease, LAYOUT_MIGRATING, LAYOUT_V2};
use crate::v2::Layout;

/// Leases per request of a command.
pub const BATCH: usize = 100;
/// Keys per page when a command lists.
const PAGE: i64 = 1000;

const USAGE: &str = "usage:
  host-local leases CONFIG
      list the leases of the network of CONFIG (address, container id, ifname, host, age)
  host-local release-host CONFIG HOST
      release every lease HOST holds in the network's etcd store (a host that is gone)
  host-local import CONFIG [--data-dir DIR] [--host HOST]
      copy the on-disk leases of the network (from DIR, default the config's dataDir) into
      its etcd store as leases of HOST (default ipam.store.host); an address held by
      anyone else is reported as a conflict and left as it is
  host-local migrate CONFIG
      move the network's etcd keys from the layout of versions before the address-sorted
      one; calls on the network are code 11 (try again) while it runs
CONFIG is a network config file (.conf or .conflist), or - for stdin.
The etcd commands work in batches, each with its own deadline; run one again to finish it.";

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
            let _ = out.flush();
            cni::log!("host-local: {e}");
            1
        }
    }
}

fn say(out: &mut dyn Write, s: impl AsRef<str>) {
    let _ = writeln!(out, "{}", s.as_ref());
}

fn run(args: &[String], out: &mut dyn Write) -> Result<i32> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["leases", conf] => {
            let conf = load_conf(conf)?;
            let (rows, stopped) = list(&conf)?;
            for line in table(&rows) {
                say(out, line);
            }
            match stopped {
                None => Ok(0),
                Some(e) => {
                    say(out, format!("stopped after {} lease(s): {e}; run it again", rows.len()));
                    Ok(1)
                }
            }
        }
        ["release-host", conf, host] => {
            let conf = load_conf(conf)?;
            release_host(&conf, host, out)
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
            import(&conf, dir.as_deref(), host.as_deref(), out)
        }
        ["migrate", conf] => {
            let conf = load_conf(conf)?;
            migrate(&conf, out)
        }
        ["-h"] | ["--help"] | ["help"] => {
            say(out, USAGE);
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

fn row(ip: IpAddr, l: Lease, now: u64) -> Row {
    Row {
        ip,
        container_id: l.container_id,
        ifname: l.ifname.unwrap_or_default(),
        host: l.host,
        age: (l.time > 0).then(|| now.saturating_sub(l.time)),
    }
}

/// A connection for one command, with the network's keys and layout.
struct Net {
    conn: Conn,
    keys: Keys,
    name: String,
}

impl Net {
    fn open(e: &etcd::EtcdConfig, network: &str) -> Result<Net> {
        Ok(Net {
            conn: Conn::open(e)?,
            keys: Keys::new(&e.prefix, network),
            name: network.to_string(),
        })
    }

    /// One request of the command, with a deadline of its own.
    fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        self.conn.renew_deadline();
        self.conn.retry(what, |c| {
            let mut c = Conn::kv(c);
            let t = txn.clone();
            async move { c.txn(t).await }
        })
    }

    fn layout(&self) -> Result<(Layout, Option<i64>)> {
        let resp = self.txn(
            "reading the layout marker",
            Txn::new().and_then([
                TxnOp::get(self.keys.marker(), None),
                TxnOp::get(
                    self.keys.old_prefix(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            ]),
        )?;
        let r = resp.op_responses();
        let marker = match r.first() {
            Some(TxnOpResponse::Get(g)) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        };
        let old = match r.get(1) {
            Some(TxnOpResponse::Get(g)) => Some(g.count()),
            _ => None,
        };
        Ok((Layout::of(marker.as_deref(), old.unwrap_or(0) > 0), old))
    }

    /// The next page of keys in [from, end): `(key-values, where the page after starts)`.
    fn page(&self, what: &str, from: &[u8], end: &[u8], limit: i64) -> Result<(Vec<KeyValue>, Option<Vec<u8>>)> {
        let resp = self.txn(
            what,
            Txn::new().and_then([TxnOp::get(
                from.to_vec(),
                Some(GetOptions::new().with_range(end.to_vec()).with_limit(limit)),
            )]),
        )?;
        let kvs = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(mut g)) => g.take_kvs(),
            _ => Vec::new(),
        };
        let next = (kvs.len() as i64 >= limit).then(|| {
            let mut k = kvs.last().expect("a full page").key().to_vec();
            k.push(0);
            k
        });
        Ok((kvs, next))
    }

    /// Refuses a command that needs this layout on a network that is not in it.
    fn need_v2(&self, layout: Layout, what: &str) -> Result<()> {
        match layout {
            Layout::V2 | Layout::Fresh => Ok(()),
            Layout::Old => Err(Error::invalid_config(format!(
                "{what}: the etcd keys of network {} are in the layout of an earlier version: run host-local migrate CONFIG first",
                self.name
            ))),
            other => Err(crate::layout_error(&self.name, other)),
        }
    }

    fn marker_cmp(&self, layout: Layout) -> Vec<Compare> {
        match layout {
            Layout::Fresh => vec![
                Compare::version(self.keys.marker(), CompareOp::Equal, 0),
                Compare::create_revision(self.keys.old_prefix(), CompareOp::Equal, 0)
                    .with_range(prefix_end(&self.keys.old_prefix())),
            ],
            _ => vec![Compare::value(self.keys.marker(), CompareOp::Equal, LAYOUT_V2)],
        }
    }

    fn lease_puts(&self, ip: IpAddr, l: &Lease) -> Vec<TxnOp> {
        let v = l.to_json();
        vec![
            TxnOp::put(self.keys.lease(ip), v.clone(), None),
            TxnOp::put(self.keys.att(&l.container_id, l.ifname.as_deref(), ip), v.clone(), None),
            TxnOp::put(self.keys.host(&l.host, ip), v, None),
        ]
    }

    fn lease_deletes(&self, ip: IpAddr, l: &Lease) -> Vec<TxnOp> {
        vec![
            TxnOp::delete(self.keys.lease(ip), None),
            TxnOp::delete(self.keys.att(&l.container_id, l.ifname.as_deref(), ip), None),
            TxnOp::delete(self.keys.host(&l.host, ip), None),
        ]
    }
}

/// The sub-transaction results of a batch, in order: `(succeeded, the other branch's gets)`.
fn sub_results(resp: &TxnResponse) -> Vec<(bool, Vec<Option<KeyValue>>)> {
    resp.op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Txn(t) => Some((
                t.succeeded(),
                t.op_responses()
                    .into_iter()
                    .filter_map(|o| match o {
                        TxnOpResponse::Get(mut g) => Some(g.take_kvs().into_iter().next()),
                        _ => None,
                    })
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

fn lease_of(kv: &KeyValue) -> Option<Lease> {
    serde_json::from_slice(kv.value()).ok()
}

/// The leases of the network, in either store, sorted by address; with the error that
/// stopped the listing, if one did (the rows are those read until then).
pub fn list(conf: &IpamConfig) -> Result<(Vec<Row>, Option<Error>)> {
    let now = crate::now_secs();
    if let Some(e) = &conf.etcd {
        let net = Net::open(e, &conf.name)?;
        let (layout, _) = net.layout()?;
        let mut rows = Vec::new();
        let mut ranges = Vec::new();
        if matches!(layout, Layout::V2 | Layout::Fresh | Layout::Migrating) {
            for f in [Fam::V4, Fam::V6] {
                ranges.push((
                    net.keys.fam_start(f).into_bytes(),
                    net.keys.fam_end(f).into_bytes(),
                    false,
                ));
            }
        }
        if matches!(layout, Layout::Old | Layout::Migrating) {
            let p = net.keys.old_prefix();
            ranges.push((p.clone().into_bytes(), prefix_end(&p), true));
        }
        for (start, end, old) in ranges {
            let mut from = Some(start);
            while let Some(f) = from {
                let (kvs, next) = match net.page("listing the leases", &f, &end, PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        rows.sort_by_key(|r: &Row| r.ip);
                        return Ok((rows, Some(e)));
                    }
                };
                for kv in &kvs {
                    let key = String::from_utf8_lossy(kv.key());
                    let ip = if old {
                        net.keys.parse_old_lease(&key)
                    } else {
                        net.keys.parse_lease(&key)
                    };
                    if let (Some(ip), Some(l)) = (ip, lease_of(kv)) {
                        rows.push(row(ip, l, now));
                    }
                }
                from = next;
            }
        }
        rows.sort_by_key(|r| r.ip);
        return Ok((rows, None));
    }
    let host = etcd::node_hostname().unwrap_or_default();
    let rows = disk_leases(&conf.data_dir, &conf.name)?
        .into_iter()
        .map(|(ip, o, t)| Row {
            ip,
            container_id: o.container_id,
            ifname: o.ifname.unwrap_or_default(),
            host: host.clone(),
            age: t.map(|t| now.saturating_sub(t)),
        })
        .collect();
    Ok((rows, None))
}

/// The leases of the on-disk store of `network` under `data_dir`, sorted by address:
/// (address, owner, mtime); none when it does not exist (see [`DiskStore::leases`]).
fn disk_leases(data_dir: &Path, network: &str) -> Result<Vec<(IpAddr, Owner, Option<u64>)>> {
    match host_local::disk::DiskStore::open(data_dir, network, false)? {
        Some(store) => store.leases(),
        None => Ok(Vec::new()),
    }
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

/// Releases every lease `host` holds in the network's etcd store, a batch at a time (from the
/// host index), printing each; each lease under a compare (one that changed meanwhile is
/// left). Exit status 0, or 1 when interrupted.
pub fn release_host(conf: &IpamConfig, host: &str, out: &mut dyn Write) -> Result<i32> {
    let e = need_etcd(conf, "release-host")?;
    let net = Net::open(e, &conf.name)?;
    let (layout, _) = net.layout()?;
    net.need_v2(layout, "release-host")?;
    let prefix = net.keys.host_prefix(host);
    let end = prefix_end(&prefix);
    let (mut released, mut changed) = (0usize, 0usize);
    let mut from = Some(prefix.clone().into_bytes());
    let interrupted = |out: &mut dyn Write, e: Error, released: usize| {
        let left = net
            .txn(
                "counting what is left",
                Txn::new().and_then([TxnOp::get(
                    prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )]),
            )
            .ok()
            .and_then(|r| match r.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(g)) => Some(g.count().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "an unknown number of".into());
        say(
            out,
            format!(
                "stopped after {released} lease(s) of host {host} released: {e}; {left} left: run it again to finish"
            ),
        );
        Ok(1)
    };
    while let Some(f) = from {
        let (kvs, next) = match net.page("reading the host's leases", &f, &end, BATCH as i64) {
            Ok(p) => p,
            Err(e) => return interrupted(out, e, released),
        };
        let items: Vec<(IpAddr, Lease, i64)> = kvs
            .iter()
            .filter_map(|kv| {
                let ip = Keys::parse_index(&String::from_utf8_lossy(kv.key()))?;
                Some((ip, lease_of(kv)?, kv.mod_revision()))
            })
            .collect();
        if !items.is_empty() {
            let subs: Vec<TxnOp> = items
                .iter()
                .map(|(ip, l, rev)| {
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::mod_revision(net.keys.lease(*ip), CompareOp::Equal, *rev)])
                            .and_then(net.lease_deletes(*ip, l)),
                    )
                })
                .collect();
            let txn = Txn::new().when(net.marker_cmp(layout)).and_then(subs);
            let resp = match net.txn("releasing the host's leases", txn) {
                Ok(r) => r,
                Err(e) => return interrupted(out, e, released),
            };
            if !resp.succeeded() {
                return Err(crate::layout_error(&conf.name, Layout::Migrating));
            }
            for ((ip, l, _), (ok, _)) in items.iter().zip(sub_results(&resp)) {
                if ok {
                    released += 1;
                    say(
                        out,
                        format!(
                            "released {ip} ({} {})",
                            l.container_id,
                            l.ifname.as_deref().unwrap_or("")
                        ),
                    );
                } else {
                    changed += 1;
                    say(out, format!("left {ip}: its lease changed meanwhile"));
                }
            }
        }
        from = next;
    }
    let extra = if changed > 0 {
        format!(" ({changed} changed meanwhile and left)")
    } else {
        String::new()
    };
    say(out, format!("{released} lease(s) of host {host} released{extra}"));
    Ok(0)
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub imported: usize,
    pub present: usize,
    pub conflicts: usize,
}

/// Copies the on-disk leases in `dir` (default: the config's data dir) into the etcd store as
/// leases of `host` (default: the store's host), a batch at a time, printing each. Never
/// overwrites: an address held by anyone else is a conflict. Exit status 0, 2 with conflicts,
/// 1 when interrupted.
pub fn import(conf: &IpamConfig, dir: Option<&Path>, host: Option<&str>, out: &mut dyn Write) -> Result<i32> {
    let e = need_etcd(conf, "import")?;
    let host = host.unwrap_or(&e.host).to_string();
    let data_dir = dir.unwrap_or(&conf.data_dir);
    let net_dir = data_dir.join(&conf.name);
    let mut leases = Vec::new();
    for (ip, owner, mtime) in disk_leases(data_dir, &conf.name)? {
        if conf.range_sets.iter().any(|s| s.contains(ip)) {
            leases.push((ip, owner, mtime));
        } else {
            say(
                out,
                format!("skipped {ip}: outside every range set of network {}", conf.name),
            );
        }
    }
    let net = Net::open(e, &conf.name)?;
    let (mut layout, _) = net.layout()?;
    net.need_v2(layout, "import")?;
    let mut r = ImportReport::default();
    let total = leases.len();
    let summary = |r: &ImportReport| {
        format!(
            "{} imported, {} already there, {} conflict(s)",
            r.imported, r.present, r.conflicts
        )
    };
    for (n, chunk) in leases.chunks(BATCH).enumerate() {
        let items: Vec<(IpAddr, Lease)> = chunk
            .iter()
            .map(|(ip, owner, mtime)| {
                let l = Lease {
                    ip: Some(*ip),
                    container_id: owner.container_id.clone(),
                    ifname: owner.ifname.clone(),
                    host: host.clone(),
                    token: "import".into(),
                    claim: None,
                    time: mtime.unwrap_or_else(crate::now_secs),
                };
                (*ip, l)
            })
            .collect();
        let mut ops: Vec<TxnOp> = items
            .iter()
            .map(|(ip, l)| {
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::create_revision(net.keys.lease(*ip), CompareOp::Equal, 0)])
                        .and_then(net.lease_puts(*ip, l))
                        .or_else([TxnOp::get(net.keys.lease(*ip), None)]),
                )
            })
            .collect();
        if layout == Layout::Fresh {
            ops.push(TxnOp::put(net.keys.marker(), LAYOUT_V2, None));
        }
        let txn = Txn::new().when(net.marker_cmp(layout)).and_then(ops);
        let resp = match net.txn("importing leases", txn) {
            Ok(resp) => resp,
            Err(e) => {
                say(
                    out,
                    format!(
                        "stopped: {}; {} of {total} not done: {e}; run the same import again to finish",
                        summary(&r),
                        total - n * BATCH
                    ),
                );
                return Ok(1);
            }
        };
        if !resp.succeeded() {
            // The marker changed under us (another import marked the network first).
            let (l, _) = net.layout()?;
            net.need_v2(l, "import")?;
            return Err(Error::try_again_later(format!(
                "import: the layout marker of network {} changed meanwhile; run the same import again",
                conf.name
            )));
        }
        layout = Layout::V2;
        for ((ip, l), (ok, got)) in items.iter().zip(sub_results(&resp)) {
            let who = format!("{} {}", l.container_id, l.ifname.as_deref().unwrap_or("-"));
            if ok {
                r.imported += 1;
                say(out, format!("imported {ip} ({who}) as a lease of {host}"));
                continue;
            }
            match got.first().cloned().flatten().as_ref().and_then(lease_of) {
                Some(h) if h.container_id == l.container_id && h.ifname == l.ifname && h.host == host => {
                    r.present += 1;
                    say(out, format!("already there {ip} ({who})"));
                }
                Some(h) => {
                    r.conflicts += 1;
                    say(
                        out,
                        format!(
                            "conflict {ip}: {who} on {host} in {}, but etcd has it for {} {} on {}; left as it is",
                            net_dir.display(),
                            h.container_id,
                            h.ifname.as_deref().unwrap_or("-"),
                            h.host
                        ),
                    );
                }
                None => {
                    r.conflicts += 1;
                    say(
                        out,
                        format!("conflict {ip}: etcd holds a key there that is not a lease; left as it is"),
                    );
                }
            }
        }
    }
    say(out, summary(&r));
    Ok(if r.conflicts > 0 { 2 } else { 0 })
}

/// Moves the network's leases from today's layout (`ips/<address>`) to this one, a batch at a
/// time: each lease with its two index entries in one sub-transaction that deletes the old
/// key, under compares (the old lease unchanged, the new key free). The marker says
/// "migrating" meanwhile, which stops every call on the network (code 11), and this layout
/// when every lease is moved. The round-robin pointers and boot records keep their keys.
/// Exit status 0; 2 when leases could not be moved (listed); 1 when interrupted.
pub fn migrate(conf: &IpamConfig, out: &mut dyn Write) -> Result<i32> {
    let e = need_etcd(conf, "migrate")?;
    let net = Net::open(e, &conf.name)?;
    let (layout, old) = net.layout()?;
    let total = old.unwrap_or(0);
    match layout {
        Layout::V2 => {
            say(
                out,
                format!("network {}: already in this layout; nothing to do", conf.name),
            );
            return Ok(0);
        }
        Layout::Fresh => {
            say(
                out,
                format!("network {}: no leases in the earlier layout; nothing to do", conf.name),
            );
            return Ok(0);
        }
        Layout::Unknown => return Err(crate::layout_error(&conf.name, layout)),
        Layout::Old => {
            let txn = Txn::new()
                .when([Compare::version(net.keys.marker(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(net.keys.marker(), LAYOUT_MIGRATING, None)]);
            if !net.txn("marking the network as migrating", txn)?.succeeded() {
                return Err(Error::try_again_later(format!(
                    "migrate: the layout marker of network {} changed meanwhile; run it again",
                    conf.name
                )));
            }
            say(
                out,
                format!(
                    "network {}: moving {total} lease(s) to the address-sorted layout; calls on the network are code 11 until done",
                    conf.name
                ),
            );
        }
        Layout::Migrating => say(
            out,
            format!("network {}: resuming the migration; {total} lease(s) left", conf.name),
        ),
    }
    let prefix = net.keys.old_prefix();
    let end = prefix_end(&prefix);
    let (mut moved, mut stuck) = (0usize, 0usize);
    let mut from = Some(prefix.clone().into_bytes());
    while let Some(f) = from {
        let (kvs, next) = match net.page("reading the leases to move", &f, &end, BATCH as i64) {
            Ok(p) => p,
            Err(err) => {
                say(
                    out,
                    format!("stopped after {moved} moved: {err}; run host-local migrate again to finish"),
                );
                return Ok(1);
            }
        };
        let mut items = Vec::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match (net.keys.parse_old_lease(&key), lease_of(kv)) {
                (Some(ip), Some(mut l)) => {
                    l.ip = Some(ip);
                    l.claim = None;
                    items.push((ip, l, kv.mod_revision()));
                }
                // As the earlier versions did: not a lease, ignored (and left).
                _ => say(out, format!("ignored {key}: not a lease; left as it is")),
            }
        }
        if !items.is_empty() {
            let subs: Vec<TxnOp> = items
                .iter()
                .map(|(ip, l, rev)| {
                    let mut ops = net.lease_puts(*ip, l);
                    ops.push(TxnOp::delete(net.keys.old_lease(*ip), None));
                    TxnOp::txn(
                        Txn::new()
                            .when([
                                Compare::mod_revision(net.keys.old_lease(*ip), CompareOp::Equal, *rev),
                                Compare::create_revision(net.keys.lease(*ip), CompareOp::Equal, 0),
                            ])
                            .and_then(ops)
                            .or_else([TxnOp::get(net.keys.lease(*ip), None)]),
                    )
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::value(net.keys.marker(), CompareOp::Equal, LAYOUT_MIGRATING)])
                .and_then(subs);
            let resp = match net.txn("moving leases", txn) {
                Ok(r) => r,
                Err(err) => {
                    say(
                        out,
                        format!("stopped after {moved} moved: {err}; run host-local migrate again to finish"),
                    );
                    return Ok(1);
                }
            };
            if !resp.succeeded() {
                return Err(Error::try_again_later(format!(
                    "migrate: the layout marker of network {} changed meanwhile (another migrate finished?); run it again",
                    conf.name
                )));
            }
            for ((ip, l, _), (ok, got)) in items.iter().zip(sub_results(&resp)) {
                if ok {
                    moved += 1;
                    continue;
                }
                stuck += 1;
                match got.first().cloned().flatten().as_ref().and_then(lease_of) {
                    Some(h) => say(
                        out,
                        format!(
                            "not moved {ip} ({} {} on {}): the new layout already has {} {} on {} there",
                            l.container_id,
                            l.ifname.as_deref().unwrap_or("-"),
                            l.host,
                            h.container_id,
                            h.ifname.as_deref().unwrap_or("-"),
                            h.host
                        ),
                    ),
                    None => say(out, format!("not moved {ip}: it changed meanwhile; run it again")),
                }
            }
            say(out, format!("moved {moved} of {total}"));
        }
        from = next;
    }
    if stuck > 0 {
        say(
            out,
            format!(
                "{moved} moved, {stuck} not moved: fix those keys under {prefix} and run host-local migrate again (calls on the network stay code 11)"
            ),
        );
        return Ok(2);
    }
    let txn = Txn::new()
        .when([Compare::value(net.keys.marker(), CompareOp::Equal, LAYOUT_MIGRATING)])
        .and_then([TxnOp::put(net.keys.marker(), LAYOUT_V2, None)]);
    if !net.txn("marking the network as migrated", txn)?.succeeded() {
        return Err(Error::try_again_later(format!(
            "migrate: the layout marker of network {} changed meanwhile; run it again",
            conf.name
        )));
    }
    say(
        out,
        format!(
            "network {}: {moved} lease(s) moved; the round-robin pointers and boot records are kept; done",
            conf.name
        ),
    );
    Ok(0)
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
        let (rows, stopped) = list(&conf).unwrap();
        assert!(stopped.is_none());
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].ip.to_string(), rows[0].container_id.as_str()),
            ("10.1.0.2".into(), "c1")
        );
    }
}
