//! The state of a test's "node" that a plugin call could change, in two views:
//!
//! - a [`Snapshot`], for before/after comparisons of one node: a namespace's links, addresses,
//!   routes and firewall rules as `ip`/`iptables`/`nft` print them, and a lease store's files,
//!   compared line for line;
//! - the operator's view ([`link_views`], [`addr_views`], [`route_views`], [`sysctl`]): the
//!   fields an operator compares, from `ip -j`, for comparing two nodes that were set up apart
//!   (the drop-in tests: ours and the reference's).
//!
//! What changes by itself (IPv6 link-local addresses during DAD, counters) is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::Netns;

/// Runs `sh -c script` inside `ns` and returns its stdout (whatever the status).
pub fn ns_sh(ns: &Netns, script: &str) -> String {
    let out = ns.exec(&["sh", "-c", script]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The links of `ns` other than `lo`, as `name kind` (kind empty for physical-like links).
pub fn links(ns: &Netns) -> Vec<(String, String)> {
    let out = ns.ip(&["-d", "-o", "link", "show"]);
    out.lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            let name = name.split('@').next().unwrap_or(name).to_string();
            if name == "lo" {
                return None;
            }
            // `ip -d -o link` puts the kind after the link/ether line: "\    veth ...".
            let kind = l
                .split("\\    ")
                .filter_map(|part| part.split_whitespace().next())
                .find(|w| matches!(*w, "veth" | "bridge" | "macvlan" | "vlan" | "ipvlan"))
                .unwrap_or("")
                .to_string();
            Some((name, kind))
        })
        .collect()
}

/// The NAT rules (iptables and ip6tables) of `ns`, without counters and comments of the tool.
pub fn nat_rules(ns: &Netns) -> Vec<String> {
    ns_sh(
        ns,
        "iptables -w -t nat -S 2>/dev/null; ip6tables -w -t nat -S 2>/dev/null",
    )
    .lines()
    .filter(|l| !l.starts_with("-P "))
    .map(str::to_string)
    .collect()
}

/// The nftables ruleset of `ns`, empty when there is none.
pub fn nft_ruleset(ns: &Netns) -> String {
    ns_sh(ns, "nft list ruleset 2>/dev/null")
}

/// Every file and directory under `dir` (relative path, type, mode, and content of files), for
/// before/after comparisons of a lease store.
pub fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap_or_default();
                out.insert(rel, format!("symlink -> {}", t.display()));
            } else if m.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &p, out);
            } else {
                let c = std::fs::read(&p).unwrap_or_default();
                out.insert(rel, format!("file {mode:o} {:?}", String::from_utf8_lossy(&c)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What the node looks like, as far as a plugin call could change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub host: String,
    pub container: String,
    pub data: BTreeMap<String, String>,
}

/// The host namespace `host`, the container namespace `ctr` and the lease store `data`.
pub fn snapshot(host: &Netns, ctr: &Netns, data: &Path) -> Snapshot {
    let container = ns_sh(
        ctr,
        "ip -o link show; echo ==; ip -o addr show; echo ==; ip route show table all",
    );
    Snapshot {
        container: normalize_links(&container),
        ..host_snapshot(host, data)
    }
}

/// The host namespace `host` and the lease store `data` (no container).
pub fn host_snapshot(host: &Netns, data: &Path) -> Snapshot {
    // One `ip netns exec` per namespace; counters and generator comments are dropped.
    let host_state = ns_sh(
        host,
        "ip -o link show; echo ==; ip -o addr show; echo ==; ip route show table all; \
         echo ==; ip -6 route show table all; echo ==; \
         iptables-save -c 2>/dev/null | grep -v '^#' | sed 's/\\[[0-9]*:[0-9]*\\]//g'; echo ==; \
         ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/\\[[0-9]*:[0-9]*\\]//g'; echo ==; \
         nft list ruleset 2>/dev/null",
    );
    Snapshot {
        host: normalize_links(&host_state),
        container: String::new(),
        data: tree(data),
    }
}

/// Drops what changes by itself over time in `ip` output: IPv6 link-local addresses and
/// their routes (which the kernel adds, and whose duplicate address detection ends on its
/// own), address lifetimes, carrier counts.
pub fn normalize_links(s: &str) -> String {
    s.lines()
        .filter(|l| !l.contains("fe80:"))
        .map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            // "carrier_changes N", "valid_lft N", "preferred_lft N" and similar counters
            let mut i = 0;
            while i + 1 < words.len() {
                if matches!(
                    words[i],
                    "carrier_changes" | "carrier_up_count" | "carrier_down_count" | "valid_lft" | "preferred_lft"
                ) {
                    words[i + 1] = "_";
                }
                i += 1;
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A line-by-line difference of two snapshots, for failure messages.
pub fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut out = String::new();
    for (what, x, y) in [("host", &a.host, &b.host), ("container", &a.container, &b.container)] {
        let xs: BTreeSet<&str> = x.lines().collect();
        let ys: BTreeSet<&str> = y.lines().collect();
        for l in xs.difference(&ys) {
            out.push_str(&format!("  {what} - {l}\n"));
        }
        for l in ys.difference(&xs) {
            out.push_str(&format!("  {what} + {l}\n"));
        }
    }
    for (k, v) in &a.data {
        if b.data.get(k) != Some(v) {
            out.push_str(&format!("  data - {k}: {v}\n"));
        }
    }
    for (k, v) in &b.data {
        if a.data.get(k) != Some(v) {
            out.push_str(&format!("  data + {k}: {v}\n"));
        }
    }
    out
}

// ---- the operator's view (from `ip -j`)

/// `ip -j <args>` inside `ns`, parsed (`Null` when it prints no JSON).
pub fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    serde_json::from_str(&ns.ip(&a)).unwrap_or(Value::Null)
}

/// A link of `ip -j -d link` as an operator compares them.
pub fn link_view(l: &Value) -> Value {
    let mut flags: Vec<String> = l["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    flags.sort();
    json!({
        "ifname": l["ifname"],
        "flags": flags,
        "mtu": l["mtu"],
        "operstate": l["operstate"],
        "link_type": l["link_type"],
        "address": l["address"],
        "master": l["master"],
        "kind": l["linkinfo"]["info_kind"],
        "macvlan_mode": l["linkinfo"]["info_data"]["mode"],
        "promiscuity": l["promiscuity"],
    })
}

/// The links of `ns` ([`link_view`]), veths last.
pub fn link_views(ns: &Netns) -> Vec<Value> {
    let mut v: Vec<Value> = ip_json(ns, &["-d", "link", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(link_view)
        .collect();
    v.sort_by_key(|l| {
        l["ifname"].as_str().unwrap_or("").starts_with("veth").to_string() + l["ifname"].as_str().unwrap_or("")
    });
    v
}

/// The addresses of `ns` but the kernel's link-local ones, with their flags (`tentative`
/// left out).
pub fn addr_views(ns: &Netns) -> Vec<Value> {
    let mut out = Vec::new();
    for l in ip_json(ns, &["addr", "show"]).as_array().cloned().unwrap_or_default() {
        for a in l["addr_info"].as_array().cloned().unwrap_or_default() {
            let mut flags: Vec<String> = a
                .as_object()
                .map(|o| {
                    o.iter()
                        // DAD of the kernel's own addresses is a matter of timing.
                        .filter(|(k, v)| **v == Value::Bool(true) && k.as_str() != "tentative")
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            flags.sort();
            // Link-local addresses are the kernel's, derived from random MACs.
            if a["local"].as_str().is_some_and(|x| x.starts_with("fe80:")) {
                continue;
            }
            out.push(json!({
                "dev": l["ifname"], "family": a["family"], "local": a["local"],
                "prefixlen": a["prefixlen"], "scope": a["scope"], "broadcast": a["broadcast"],
                "flags": flags,
            }));
        }
    }
    out
}

/// The routes of `ns`, both families, every table, but those of link-local addresses.
pub fn route_views(ns: &Netns) -> Vec<Value> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        for r in ip_json(ns, &[fam, "route", "show", "table", "all"])
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            // The kernel's routes of link-local addresses appear when their DAD is done.
            if r["dst"].as_str().is_some_and(|x| x.starts_with("fe80:")) {
                continue;
            }
            out.push(json!({
                "dst": r["dst"], "gateway": r["gateway"], "dev": r["dev"], "protocol": r["protocol"],
                "scope": r["scope"], "type": r["type"], "table": r["table"], "metric": r["metric"],
                "prefsrc": r["prefsrc"], "flags": r["flags"],
            }));
        }
    }
    out
}

/// `/proc/sys/net/<key>` inside `ns`, trimmed (empty when it does not exist).
pub fn sysctl(ns: &Netns, key: &str) -> String {
    let out = ns.exec(&["cat", &format!("/proc/sys/net/{key}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
