//! Drop-in fidelity, call by call against the reference plugins (Debian's 1.1.1 in
//! `/usr/lib/cni`): the same configs and calls on two fresh worlds (a private host namespace,
//! container namespaces, a lease store), one served by our plugins and one by the reference,
//! and then the same node: the result, the lease files and round-robin pointers, the
//! container's links, addresses, routes (protocol included) and sysctls, the host's links and
//! sysctls. MACs, veth names, link-local addresses and netns paths are normalised.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cni_tests::node::{addr_views as addrs, ip_json, link_views as links, route_views as routes, sysctl};
use cni_tests::{bin, lease_files, merge, reference_bin, Cni, Netns, Output, TempDir, REFERENCE_DIR};
use serde_json::{json, Value};

const NET: &str = "dropnet";
/// The reference speaks CNI up to 1.0.0.
const VERSION: &str = "1.0.0";

/// One world: a host namespace, its lease store, the plugins that serve it.
struct World {
    ours: bool,
    host: Netns,
    data: TempDir,
    ctrs: BTreeMap<String, Netns>,
}

impl World {
    fn new(ours: bool) -> World {
        World {
            ours,
            host: Netns::new(),
            data: TempDir::new("dropin"),
            ctrs: BTreeMap::new(),
        }
    }

    fn plugin(&self, name: &str) -> Cni {
        if self.ours {
            Cni::new(bin(name)).host(&self.host)
        } else {
            let p = reference_bin(name).expect("checked by both()");
            // Only the reference plugins: its bridge must delegate to its host-local.
            Cni::new(p).host(&self.host).env("CNI_PATH", REFERENCE_DIR)
        }
    }

    /// The container namespace of `id` (made on first use).
    fn ctr(&mut self, id: &str) -> &Netns {
        self.ctrs.entry(id.to_string()).or_default()
    }

    /// Replaces `{{DATA}}` in a raw config with this world's lease store.
    fn raw_conf(&self, raw: &str) -> String {
        raw.replace("{{DATA}}", &self.data.path().display().to_string())
    }

    fn call(&mut self, plugin: &str, cmd: &str, id: &str, conf: &str, args: &str) -> Output {
        let netns = self.ctr(id).path();
        let mut c = self
            .plugin(plugin)
            .command(cmd)
            .container_id(id)
            .netns(netns)
            .stdin(self.raw_conf(conf).into_bytes());
        if !args.is_empty() {
            c = c.args(args);
        }
        c.run()
    }

    fn lease_dir(&self) -> PathBuf {
        self.data.join(NET)
    }

    /// The store as the reference sees it: leases and round-robin pointers, byte for byte.
    fn store(&self) -> Vec<(String, String)> {
        let mut v = lease_files(&self.lease_dir());
        if let Ok(rd) = std::fs::read_dir(self.lease_dir()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("last_reserved_ip.") {
                    v.push((n, std::fs::read_to_string(e.path()).unwrap()));
                }
            }
        }
        v.sort();
        v
    }
}

/// Our world and the reference's, and the bridge whose sysctls are compared.
struct Pair {
    a: World,
    b: World,
    bridge: Option<&'static str>,
}

/// Both worlds, or `None` (a loud skip outside CI) without the reference plugins.
fn both(bridge: Option<&'static str>) -> Option<Pair> {
    for p in ["bridge", "macvlan", "host-local"] {
        reference_bin(p)?;
    }
    Some(Pair {
        a: World::new(true),
        b: World::new(false),
        bridge,
    })
}

/// Gives MACs, veth names and link-local addresses stable names in order of appearance.
#[derive(Default)]
struct Norm {
    macs: Vec<String>,
}

impl Norm {
    fn mac(&mut self, s: &str) -> String {
        if s == "00:00:00:00:00:00" || s == "ff:ff:ff:ff:ff:ff" {
            return s.to_string();
        }
        let i = match self.macs.iter().position(|m| m == s) {
            Some(i) => i,
            None => {
                self.macs.push(s.to_string());
                self.macs.len() - 1
            }
        };
        format!("MAC{i}")
    }

    fn text(&mut self, s: &str) -> String {
        let is_mac = s.len() == 17 && s.split(':').count() == 6 && s.split(':').all(|p| p.len() == 2);
        if is_mac {
            return self.mac(s);
        }
        if s.starts_with("veth") {
            return "veth*".into();
        }
        if s.starts_with("fe80:") {
            return match s.split_once('/') {
                Some((_, len)) => format!("fe80::*/{len}"),
                None => "fe80::*".into(),
            };
        }
        if s.starts_with("/run/netns/") || s.starts_with("/var/run/netns/") {
            return "NETNS".into();
        }
        s.to_string()
    }

    /// `v` normalised, its list sorted (link indexes order them differently in the two worlds).
    fn sorted(&mut self, v: Vec<Value>) -> Value {
        let mut v: Vec<Value> = v.iter().map(|x| self.value(x)).collect();
        v.sort_by_key(|x| x.to_string());
        Value::Array(v)
    }

    fn value(&mut self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), self.value(x))).collect()),
            other => other.clone(),
        }
    }
}

/// What an operator sees of world `w` after a call that returned `out`.
fn node(w: &World, out: &Output, bridge: Option<&str>) -> Value {
    let mut n = Norm::default();
    let result = if out.success() {
        n.value(&out.expect_ok())
    } else {
        json!("failed")
    };
    let mut ctrs = serde_json::Map::new();
    for (id, ns) in &w.ctrs {
        let mut sys = serde_json::Map::new();
        for dev in ["lo", "eth0", "net1"] {
            for key in [
                format!("ipv4/conf/{dev}/arp_notify"),
                format!("ipv6/conf/{dev}/accept_dad"),
                format!("ipv6/conf/{dev}/enhanced_dad"),
                format!("ipv6/conf/{dev}/ndisc_notify"),
                format!("ipv6/conf/{dev}/disable_ipv6"),
            ] {
                sys.insert(key.clone(), json!(sysctl(ns, &key)));
            }
        }
        ctrs.insert(
            id.clone(),
            json!({
                "links": n.sorted(links(ns)),
                "addrs": n.sorted(addrs(ns)),
                "routes": n.sorted(routes(ns)),
                "sysctls": sys,
            }),
        );
    }
    let mut host_sys = serde_json::Map::new();
    let mut keys = vec!["ipv4/ip_forward".to_string(), "ipv6/conf/all/forwarding".to_string()];
    if let Some(b) = bridge {
        keys.push(format!("ipv6/conf/{b}/accept_ra"));
    }
    for k in keys {
        host_sys.insert(k.clone(), json!(sysctl(&w.host, &k)));
    }
    json!({
        "result": result,
        "store": w.store(),
        "containers": ctrs,
        "host": {
            "links": n.sorted(links(&w.host)),
            "addrs": n.sorted(addrs(&w.host)),
            "routes": n.sorted(routes(&w.host)),
            "sysctls": host_sys,
        },
    })
}

/// Runs one call in both worlds and asserts the node looks the same afterwards; returns the
/// two outputs (ours, the reference's).
impl Pair {
    #[track_caller]
    fn same(&mut self, plugin: &str, cmd: &str, id: &str, conf: &str, args: &str) -> (Output, Output) {
        let (a, b, bridge) = (&mut self.a, &mut self.b, self.bridge);
        let oa = a.call(plugin, cmd, id, conf, args);
        let ob = b.call(plugin, cmd, id, conf, args);
        assert_eq!(
            oa.success(),
            ob.success(),
            "{plugin} {cmd} {id}: ours {} / reference {}",
            oa.raw_stdout.trim(),
            ob.raw_stdout.trim()
        );
        let node = |w: &World, o: &Output| node(w, o, bridge);
        // The kernel settles some state after a call returns (a bridge's carrier goes with its
        // last port a moment later): compare until the two nodes agree, for a bounded time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut pause = std::time::Duration::from_millis(5);
        let (mut na, mut nb) = (node(a, &oa), node(b, &ob));
        while na != nb && std::time::Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(200));
            (na, nb) = (node(a, &oa), node(b, &ob));
        }
        if na != nb {
            let (fa, fb) = (flat(&na), flat(&nb));
            let mut d = Vec::new();
            for (k, v) in &fa {
                if fb.get(k) != Some(v) {
                    d.push(format!(
                        "  {k}: ours {v} / reference {}",
                        fb.get(k).map_or("-".into(), |x| x.to_string())
                    ));
                }
            }
            for (k, v) in &fb {
                if !fa.contains_key(k) {
                    d.push(format!("  {k}: ours - / reference {v}"));
                }
            }
            panic!(
                "{plugin} {cmd} {id}: the node differs (ours {} / reference {}):\n{}",
                oa.raw_stdout.trim(),
                ob.raw_stdout.trim(),
                d.join("\n")
            );
        }
        (oa, ob)
    }
}

/// `path → value` of every leaf of `v`.
fn flat(v: &Value) -> BTreeMap<String, Value> {
    fn go(p: String, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(o) => o.iter().for_each(|(k, x)| go(format!("{p}.{k}"), x, out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| go(format!("{p}[{i}]"), x, out)),
            other => {
                out.insert(p, other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    go(String::new(), v, &mut out);
    out
}

fn bridge_conf(bridge: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{VERSION}","name":"{NET}","type":"bridge","bridge":"{bridge}"{extra},
            "ipam":{{"type":"host-local","dataDir":"{{{{DATA}}}}","subnet":"10.70.0.0/24",
                     "routes":[{{"dst":"192.168.0.0/16"}}]}}}}"#
    )
}

// ---- 1. keys as the reference's decoder matches them

#[test]
fn mis_cased_keys_mean_the_same() {
    let Some(mut p) = both(Some("dibr0")) else { return };
    // The reference applies every one of these; a later spelling of a key wins.
    let conf = format!(
        r#"{{"cniVersion":"{VERSION}","Name":"{NET}","type":"bridge","Bridge":"dibr0",
            "IsGateway":true,"isdefaultgateway":true,"mtu":1400,"MTU":1450,"HairpinMode":true,
            "IPAM":{{"Type":"host-local","DataDir":"{{{{DATA}}}}","Subnet":"10.71.0.0/24",
                     "rangestart":"10.71.0.50","RANGEEND":"10.71.0.60","Gateway":"10.71.0.1",
                     "Routes":[{{"DST":"192.168.0.0/16","GW":"10.71.0.1"}}]}}}}"#
    );
    let (ours, _) = p.same("bridge", "ADD", "c1", &conf, "");
    let r = ours.expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.71.0.50/24", "{r}");
    assert!(p.a.host.ip(&["-j", "link", "show", "dibr0"]).contains("\"mtu\":1450"));
    p.same("bridge", "ADD", "c2", &conf, "");
    p.same("bridge", "DEL", "c1", &conf, "");
    // A mis-cased key is checked as strictly as the exact one (ours: code 6, naming it).
    let bad = conf.replace(r#""MTU":1450"#, r#""MTU":"big""#);
    let (ours, _) = p.same("bridge", "ADD", "c3", &bad, "");
    assert!(ours.expect_error(6).contains("mtu"));
}

#[test]
fn repeated_keys_merge_as_in_the_reference() {
    let Some(mut p) = both(None) else { return };
    // Objects given twice are merged into one struct, arrays element by element; a later
    // scalar wins.
    let conf = format!(
        r#"{{"cniVersion":"0.4.0","name":"{NET}","type":"host-local","cniVersion":"{VERSION}",
            "ipam":{{"type":"host-local","dataDir":"{{{{DATA}}}}","ranges":[[{{"subnet":"10.74.0.0/24"}}]]}},
            "IPAM":{{"Ranges":[[{{"rangeStart":"10.74.0.40"}}]],"routes":[{{"dst":"10.9.0.0/16"}}]}},
            "Ipam":{{"RANGES":[[{{"rangeEnd":"10.74.0.41"}}]]}}}}"#
    );
    let (ours, _) = p.same("host-local", "ADD", "h1", &conf, "");
    let r = ours.expect_ok();
    assert_eq!(r["cniVersion"], VERSION);
    assert_eq!(r["ips"][0]["address"], "10.74.0.40/24", "{r}");
    assert_eq!(r["routes"][0]["dst"], "10.9.0.0/16", "{r}");
    p.same("host-local", "ADD", "h2", &conf, "");
    // The range holds two addresses.
    let (ours, _) = p.same("host-local", "ADD", "h3", &conf, "");
    ours.expect_error(102);
}

#[test]
fn mis_cased_macvlan_keys_mean_the_same() {
    let Some(mut p) = both(None) else { return };
    for w in [&p.a, &p.b] {
        w.host
            .ip(&["link", "add", "dimaster", "type", "veth", "peer", "name", "dipeer"]);
        w.host.ip(&["link", "set", "dimaster", "up"]);
    }
    let conf = format!(
        r#"{{"cniVersion":"{VERSION}","name":"{NET}","Type":"macvlan","Master":"dimaster","MODE":"private",
            "Mtu":1300,"Ipam":{{"type":"host-local","dataDir":"{{{{DATA}}}}",
            "Ranges":[[{{"Subnet":"10.72.0.0/24","RangeStart":"10.72.0.9"}}]],
            "routes":[{{"dst":"10.10.0.0/16","gw":"10.72.0.1"}}]}}}}"#
    );
    let (ours, _) = p.same("macvlan", "ADD", "m1", &conf, "");
    assert_eq!(ours.expect_ok()["ips"][0]["address"], "10.72.0.9/24");
    p.same("macvlan", "DEL", "m1", &conf, "");
}

// ---- 2. touch what the reference touches

#[test]
fn lo_routes_and_accept_ra_as_the_reference() {
    let Some(mut p) = both(Some("dibr1")) else { return };
    for w in [&mut p.a, &mut p.b] {
        // The runtime's loopback plugin owns lo: here it is still down.
        w.ctr("c1").ip(&["link", "set", "lo", "down"]);
        // A bridge that exists already, with the kernel's accept_ra.
        w.host.ip(&["link", "add", "dibr1", "type", "bridge"]);
    }
    let conf = bridge_conf("dibr1", r#","isDefaultGateway":true"#);
    let (ours, _) = p.same("bridge", "ADD", "c1", &conf, "");
    ours.expect_ok();
    assert_eq!(sysctl(&p.a.host, "ipv6/conf/dibr1/accept_ra"), "0");
    let rs = routes(p.a.ctr("c1"));
    // `ip -j` leaves out the protocol when it is `boot` (it names `static`).
    assert!(
        rs.iter()
            .any(|r| r["dst"] == "192.168.0.0/16" && r["protocol"].is_null()),
        "{rs:?}"
    );
    assert!(rs.iter().all(|r| r["protocol"] != "static"), "{rs:?}");
    assert!(!p.a.ctr("c1").ip(&["link", "show", "lo"]).contains("UP"));
    p.same("bridge", "DEL", "c1", &conf, "");
}

// ---- 3. a failed ADD changes nothing, the round-robin pointer included

#[test]
fn failed_bridge_add_leaves_the_store_as_it_was() {
    let Some(mut p) = both(Some("dibr2")) else { return };
    let conf = bridge_conf("dibr2", r#","isGateway":true"#);
    p.same("bridge", "ADD", "c1", &conf, "");
    let before = (p.a.store(), p.b.store());
    for w in [&mut p.a, &mut p.b] {
        // The container already has an eth0.
        w.ctr("c2")
            .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    }
    let (ours, _) = p.same("bridge", "ADD", "c2", &conf, "");
    assert!(ours.expect_error(103).contains("eth0"));
    assert_eq!(
        (p.a.store(), p.b.store()),
        before,
        "byte for byte as before the failed ADD"
    );
    // So the next container gets the same address in both worlds.
    let (ours, _) = p.same("bridge", "ADD", "c3", &conf, "");
    assert_eq!(ours.expect_ok()["ips"][0]["address"], "10.70.0.3/24");
}

#[test]
fn bridge_add_failing_after_ipam_leaves_the_store_as_it_was() {
    let Some(mut p) = both(Some("dibr5")) else { return };
    // The bridge has an address of another subnet: putting the gateway on it fails, after
    // IPAM gave the container its address (in both plugin sets).
    for w in [&p.a, &p.b] {
        w.host.ip(&["link", "add", "dibr5", "type", "bridge"]);
        w.host.ip(&["addr", "add", "10.99.0.1/24", "dev", "dibr5"]);
    }
    let plain = bridge_conf("dibr5", "");
    let gw = bridge_conf("dibr5", r#","isGateway":true"#);
    p.same("bridge", "ADD", "c1", &plain, "");
    let before = (p.a.store(), p.b.store());
    let host_links = (links(&p.a.host), links(&p.b.host));
    let (ours, theirs) = (
        p.a.call("bridge", "ADD", "c2", &gw, ""),
        p.b.call("bridge", "ADD", "c2", &gw, ""),
    );
    assert!(ours.expect_error(103).contains("10.99.0.1"));
    assert!(!theirs.success());
    // Ours: nothing left, the store byte for byte as before.
    assert_eq!(p.a.store(), before.0, "ours: byte for byte as before the failed ADD");
    assert_eq!(links(&p.a.host), host_links.0);
    let c2 = links(p.a.ctr("c2"));
    assert!(c2.iter().all(|l| l["ifname"] != "eth0"), "{c2:?}");
    // The reference releases the lease but leaves its round-robin pointer moved (and the veth
    // pair: the README's drop-in section).
    let reference = p.b.store();
    let leases = |v: &[(String, String)]| {
        v.iter()
            .filter(|(n, _)| !n.starts_with("last_"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        leases(&reference),
        leases(&before.1),
        "the reference releases the lease"
    );
    assert!(
        reference.contains(&("last_reserved_ip.0".into(), "10.70.0.3".into())),
        "{reference:?}"
    );
    // So our next container gets the address the failed one had, the reference's the next.
    let ours = p.a.call("bridge", "ADD", "c3", &plain, "");
    let theirs = p.b.call("bridge", "ADD", "c3", &plain, "");
    assert_eq!(ours.expect_ok()["ips"][0]["address"], "10.70.0.3/24");
    assert_eq!(theirs.expect_ok()["ips"][0]["address"], "10.70.0.4/24");
}

#[test]
fn failed_macvlan_add_leaves_the_store_as_it_was() {
    let Some(mut p) = both(None) else { return };
    for w in [&p.a, &p.b] {
        w.host
            .ip(&["link", "add", "dipass", "type", "veth", "peer", "name", "dipeer"]);
        w.host.ip(&["link", "set", "dipass", "up"]);
    }
    let conf = format!(
        r#"{{"cniVersion":"{VERSION}","name":"{NET}","type":"macvlan","master":"dipass","mode":"passthru",
            "ipam":{{"type":"host-local","dataDir":"{{{{DATA}}}}","subnet":"10.73.0.0/24"}}}}"#
    );
    p.same("macvlan", "ADD", "m1", &conf, "");
    let before = (p.a.store(), p.b.store());
    // A passthru master takes one macvlan.
    p.same("macvlan", "ADD", "m2", &conf, "");
    assert_eq!(
        (p.a.store(), p.b.store()),
        before,
        "byte for byte as before the failed ADD"
    );
    p.same("macvlan", "DEL", "m1", &conf, "");
    let (ours, _) = p.same("macvlan", "ADD", "m3", &conf, "");
    assert_eq!(ours.expect_ok()["ips"][0]["address"], "10.73.0.3/24");
}

// ---- 4. ADD returns when the port can carry traffic

#[test]
fn add_returns_with_carrier() {
    let Some(mut p) = both(Some("dibr3")) else { return };
    let conf = bridge_conf("dibr3", r#","isGateway":true"#);
    for i in 0..12 {
        let id = format!("c{i}");
        for w in [&mut p.a, &mut p.b] {
            w.call("bridge", "ADD", &id, &conf, "").expect_ok();
            // Read at once, without waiting: the bridge and the new port are up.
            let host = ip_json(&w.host, &["link", "show"]);
            for l in host.as_array().unwrap() {
                // Both wait for the port; ours for the bridge, too.
                let name = l["ifname"].as_str().unwrap_or("");
                if (name == "dibr3" && w.ours) || l["master"] == "dibr3" {
                    assert_eq!(l["operstate"], "UP", "ours={} ADD {id}: {l}", w.ours);
                }
            }
        }
    }
}

// ---- 5. bad input the reference refuses

#[test]
fn bad_cni_args_and_prev_result_are_refused() {
    let Some(mut p) = both(Some("dibr4")) else { return };
    let conf = bridge_conf("dibr4", "");
    for (args, needle) in [
        ("K8S_POD_NAME=x", "K8S_POD_NAME"),
        ("MAC=0a:58:0a:46:00:09;", "invalid pair"),
        ("IgnoreUnknown=1;;K8S_POD_NAME=x", "invalid pair"),
    ] {
        let (ours, _) = p.same("bridge", "ADD", "c1", &conf, args);
        assert!(ours.expect_error(4).contains(needle), "{args}");
        let (ours, _) = p.same("host-local", "ADD", "c1", &conf, args);
        assert!(ours.expect_error(4).contains(needle), "{args}");
    }
    // With IgnoreUnknown the runtime's own keys are fine.
    let (ours, _) = p.same("bridge", "ADD", "c1", &conf, "IgnoreUnknown=1;K8S_POD_NAME=x");
    ours.expect_ok();
    let mut junk: Value = serde_json::from_str(&conf).unwrap();
    merge(&mut junk, json!({"prevResult": "junk"}));
    let junk = junk.to_string();
    for plugin in ["bridge", "macvlan"] {
        let (ours, _) = p.same(plugin, "ADD", "c2", &junk, "");
        assert!(ours.expect_error(6).contains("prevResult"));
    }
}
