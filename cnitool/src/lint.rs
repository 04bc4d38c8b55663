//! `cnitool lint CONFIG-FILE|NETWORK...`: a network config checked without touching the node.
//!
//! - JSON syntax, with line and column;
//! - every key the plugins would silently ignore (a misspelt `isGatway`, a `rangeStart` at the
//!   wrong level), with its path and the closest known key: an error when a known key is
//!   close (a typo) or belongs at another level, else a warning (a key of some other tool);
//! - every value our plugins would refuse at ADD, found by their own config validation run
//!   in-process (bridge, macvlan, host-local and its etcd store keys);
//! - libcni's own rules (name, plugins, type, cniVersion), and each plugin of the chain (and
//!   its IPAM plugin) found in `CNI_PATH`.
//!
//! Exit status 1 when there is an error, 0 with warnings only.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use cni::env::{Command, Env};
use cni_client::conf::NetworkConfigList;
use cni_client::{invoke, CniConfig, RuntimeConf};

use crate::{fail, Ctx, Res};

const HELP: &str = "\
usage: cnitool lint CONFIG-FILE|NETWORK...

Checks each config (a file, or a network found by name in NETCONFPATH) without touching the
node: JSON syntax, keys the plugins would ignore (with the closest known key), values our
plugins (bridge, macvlan, host-local) would refuse at ADD, and whether CNI_PATH holds every
plugin of the chain. Exit status 1 on an error, 0 with warnings only.
";

const LIST_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "plugins",
    "disableCheck",
    "disableGC",
];
const COMMON_KEYS: &[&str] = &[
    "type",
    "name",
    "cniVersion",
    "capabilities",
    "ipam",
    "dns",
    "runtimeConfig",
    "args",
    "prevResult",
];
const BRIDGE_KEYS: &[&str] = &[
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "ipMasq",
    "ipMasqBackend",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "vlanTrunk",
    "preserveDefaultVlan",
    "macspoofchk",
    "enabledad",
    "disableContainerInterface",
    "portIsolation",
];
const MACVLAN_KEYS: &[&str] = &[
    "master",
    "mode",
    "mtu",
    "mac",
    "linkInContainer",
    "bcqueuelen",
    "sourceMacs",
    "hostShim",
];
const PORTMAP_KEYS: &[&str] = &[
    "snat",
    "conditionsV4",
    "conditionsV6",
    "markMasqBit",
    "externalSetMarkChain",
    "masqAll",
    "backend",
];
const TUNING_KEYS: &[&str] = &["sysctl", "mac", "promisc", "mtu", "allmulti", "txQLen"];
const IPAM_KEYS: &[&str] = &[
    "type",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dataDir",
    "resolvConf",
    "ranges",
    "store",
    "releaseOnReboot",
];
const RANGE_KEYS: &[&str] = &["subnet", "rangeStart", "rangeEnd", "gateway"];
const ROUTE_KEYS: &[&str] = &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"];
const DNS_KEYS: &[&str] = &["nameservers", "domain", "search", "options"];
const STORE_KEYS: &[&str] = &["type", "endpoints", "prefix", "host", "timeout", "tls"];
const TLS_KEYS: &[&str] = &["ca", "cert", "key"];
const TRUNK_KEYS: &[&str] = &["minID", "maxID", "id"];

/// Every known key with the level it belongs at, for "belongs at another level" hints.
const LEVELS: &[(&str, &[&str])] = &[
    ("the network list", LIST_KEYS),
    ("a plugin", BRIDGE_KEYS),
    ("a plugin", MACVLAN_KEYS),
    ("ipam", IPAM_KEYS),
    ("a range of ipam.ranges", RANGE_KEYS),
    ("a route", ROUTE_KEYS),
    ("dns", DNS_KEYS),
];

/// The findings of one file.
#[derive(Default)]
struct Report {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn error(&mut self, m: String) {
        self.errors.push(m);
    }
    fn warn(&mut self, m: String) {
        self.warnings.push(m);
    }
}

/// Levenshtein distance, ASCII case folded.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<u8> = a.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<u8> = b.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + usize::from(ca != cb));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Checks the keys of object `obj` at `path` against `known`.
fn check_keys(r: &mut Report, obj: &Map<String, Value>, path: &str, known: &[&str]) {
    for key in obj.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        let at = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            r.warn(format!(
                "{at}: spelt \"{key}\", read as \"{k}\" (Go's decoder matches keys case-insensitively): write \"{k}\""
            ));
            continue;
        }
        let (best, d) = known
            .iter()
            .map(|k| (*k, distance(key, k)))
            .min_by_key(|(_, d)| *d)
            .unwrap_or(("", usize::MAX));
        if d <= 2.max(key.len() / 4) {
            r.error(format!(
                "{at}: unknown key, ignored by the plugin: did you mean \"{best}\"?"
            ));
            continue;
        }
        let elsewhere: Vec<&str> = LEVELS
            .iter()
            .filter(|(_, keys)| keys.iter().any(|k| k.eq_ignore_ascii_case(key)))
            .map(|(level, _)| *level)
            .collect();
        if let Some(level) = elsewhere.first() {
            r.error(format!("{at}: unknown key here, ignored: \"{key}\" belongs in {level}"));
        } else {
            r.warn(format!(
                "{at}: unknown key, ignored by the plugin (closest known key: \"{best}\")"
            ));
        }
    }
}

fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key)
        .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn each_object(v: Option<&Value>) -> impl Iterator<Item = (usize, &Map<String, Value>)> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| v.as_object().map(|o| (i, o)))
}

/// The keys of one plugin config.
fn check_plugin_keys(r: &mut Report, p: &Map<String, Value>, at: &str, ptype: &str) {
    let own: &[&str] = match ptype {
        "bridge" => BRIDGE_KEYS,
        "macvlan" => MACVLAN_KEYS,
        "portmap" => PORTMAP_KEYS,
        "tuning" => TUNING_KEYS,
        "host-local" | "host-local-etcd" => &[],
        _ => {
            r.warn(format!(
                "{at}: plugin \"{ptype}\": its own keys are not known to lint, not checked"
            ));
            return;
        }
    };
    let mut known: Vec<&str> = COMMON_KEYS.to_vec();
    known.extend_from_slice(own);
    if ptype.starts_with("host-local") {
        known.extend_from_slice(IPAM_KEYS);
    }
    check_keys(r, p, at, &known);
    if let Some(Value::Object(dns)) = get_ci(p, "dns") {
        check_keys(r, dns, &format!("{at}.dns"), DNS_KEYS);
    }
    for (i, t) in each_object(get_ci(p, "vlanTrunk")) {
        check_keys(r, t, &format!("{at}.vlanTrunk[{i}]"), TRUNK_KEYS);
    }
    let ipam = if ptype.starts_with("host-local") {
        Some(p)
    } else {
        get_ci(p, "ipam").and_then(Value::as_object)
    };
    let Some(ipam) = ipam else { return };
    let ipam_at = if ptype.starts_with("host-local") {
        at.to_string()
    } else {
        format!("{at}.ipam")
    };
    let itype = get_ci(ipam, "type").and_then(Value::as_str).unwrap_or("");
    if !ptype.starts_with("host-local") {
        if !matches!(itype, "host-local" | "host-local-etcd") {
            return;
        }
        check_keys(r, ipam, &ipam_at, IPAM_KEYS);
    }
    if let Some(Value::Array(sets)) = get_ci(ipam, "ranges") {
        for (i, set) in sets.iter().enumerate() {
            for (j, range) in each_object(Some(set)) {
                check_keys(r, range, &format!("{ipam_at}.ranges[{i}][{j}]"), RANGE_KEYS);
            }
        }
    }
    for (i, route) in each_object(get_ci(ipam, "routes")) {
        check_keys(r, route, &format!("{ipam_at}.routes[{i}]"), ROUTE_KEYS);
    }
    if let Some(Value::Object(store)) = get_ci(ipam, "store") {
        check_keys(r, store, &format!("{ipam_at}.store"), STORE_KEYS);
        if let Some(Value::Object(tls)) = get_ci(store, "tls") {
            check_keys(r, tls, &format!("{ipam_at}.store.tls"), TLS_KEYS);
        }
    }
}

/// Our plugins' own validation of the config plugin `i` is given.
fn validate_plugin(r: &mut Report, list: &NetworkConfigList, i: usize, at: &str) {
    let p = &list.plugins[i];
    let rt = RuntimeConf::new("lint", "/run/netns/lint", "eth0");
    let stdin = CniConfig::plugin_config(list, p, None, &rt);
    let env = Env {
        command: Command::Add,
        container_id: "lint".into(),
        netns: Some("/run/netns/lint".into()),
        ifname: "eth0".into(),
        args: String::new(),
        path: Vec::new(),
        token: String::new(),
        undo_of: None,
    };
    let call = match cni::skel::parse_call(env, stdin.clone()) {
        Ok(c) => c,
        Err(e) => {
            if matches!(
                p.plugin_type.as_str(),
                "bridge" | "macvlan" | "host-local" | "host-local-etcd"
            ) {
                r.error(format!("{at} ({}): {e}", p.plugin_type));
            }
            return;
        }
    };
    let checked = match p.plugin_type.as_str() {
        "bridge" => bridge::config::BridgeConf::load(&call).map(|_| ()),
        "macvlan" => macvlan::config::MacvlanConf::load(&call).map(|_| ()),
        "host-local" | "host-local-etcd" => host_local::config::IpamConfig::load(&stdin, "").map(|_| ()),
        _ => return,
    };
    if let Err(e) = checked {
        r.error(format!("{at} ({}): {e} (code {})", p.plugin_type, e.code()));
        return;
    }
    // The IPAM section of bridge and macvlan, as the delegated host-local reads it.
    if matches!(p.plugin_type.as_str(), "bridge" | "macvlan") {
        if let Some(t) = call.conf.ipam_type() {
            if matches!(t, "host-local" | "host-local-etcd") {
                if let Err(e) = host_local::config::IpamConfig::load(&stdin, "") {
                    r.error(format!("{at}.ipam (host-local): {e} (code {})", e.code()));
                }
            }
        }
    }
}

fn lint_file(ctx: &Ctx, file: &Path, r: &mut Report) {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return r.error(format!("cannot read: {e}")),
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return r.error(cni_client::conf::syntax(&e)),
    };
    let is_list = file.extension().is_some_and(|e| e == "conflist") || value.get("plugins").is_some();
    let parsed = if is_list {
        NetworkConfigList::from_bytes(&bytes, None)
    } else {
        NetworkConfigList::from_single_bytes(&bytes, None)
    };
    let list = match parsed {
        Ok(l) => l,
        Err(e) => return r.error(e.to_string()),
    };
    if let Err(e) = cni::version::Version::of_config(&list.cni_version) {
        r.error(format!("cniVersion: {e}"));
    }
    if let Err(e) = cni::env::check_network_name(&list.name) {
        r.error(format!("name: {e}"));
    }
    let raw_plugins: Vec<&Map<String, Value>> = if is_list {
        if let Some(obj) = value.as_object() {
            check_keys(r, obj, "", LIST_KEYS);
        }
        value["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .collect()
    } else {
        value.as_object().into_iter().collect()
    };
    let have_path = !ctx.cni_path.is_empty();
    if !have_path {
        r.warn("CNI_PATH is not set: whether the plugins are installed was not checked".into());
    }
    for (i, p) in list.plugins.iter().enumerate() {
        let at = if is_list {
            format!("plugins[{i}]")
        } else {
            "config".into()
        };
        if let Some(raw) = raw_plugins.get(i) {
            check_plugin_keys(r, raw, &at, &p.plugin_type);
        }
        validate_plugin(r, &list, i, &at);
        if have_path {
            let mut types = vec![(at.clone(), p.plugin_type.clone())];
            if let Some(Value::Object(ipam)) = get_ci(&p.conf, "ipam") {
                if let Some(t) = get_ci(ipam, "type").and_then(Value::as_str) {
                    types.push((format!("{at}.ipam"), t.to_string()));
                }
            }
            for (where_, t) in types {
                if let Err(e) = invoke::find_in_path(&t, &ctx.cni_path) {
                    r.error(format!("{where_}: {e}"));
                }
            }
        }
    }
}

pub fn main(ctx: &Ctx, args: &[String]) -> Res<i32> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return Ok(0);
    }
    if args.is_empty() {
        return fail("lint: expected CONFIG-FILE or NETWORK (see cnitool lint --help)");
    }
    let mut failed = false;
    for a in args {
        let file: PathBuf = if Path::new(a).exists() || a.contains('/') {
            PathBuf::from(a)
        } else {
            match cni_client::conf::load_conf_list(&ctx.netconfpath, a) {
                Ok(l) => match l.file {
                    Some(f) => f,
                    None => return fail(format!("lint: network \"{a}\" has no file")),
                },
                Err(e) => return fail(format!("lint: network \"{a}\": {e}")),
            }
        };
        let mut r = Report::default();
        lint_file(ctx, &file, &mut r);
        let name = file.display();
        for e in &r.errors {
            println!("{name}: error: {e}");
        }
        for w in &r.warnings {
            println!("{name}: warning: {w}");
        }
        println!(
            "{name}: {} error{}, {} warning{}",
            r.errors.len(),
            if r.errors.len() == 1 { "" } else { "s" },
            r.warnings.len(),
            if r.warnings.len() == 1 { "" } else { "s" }
        );
        failed |= !r.errors.is_empty();
    }
    Ok(i32::from(failed))
}
