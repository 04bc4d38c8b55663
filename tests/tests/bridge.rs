//! The `bridge` plugin, executed as a runtime does, inside private namespaces: a "host"
//! namespace per test (where the bridge, the host veths and the firewall rules live) and
//! container namespaces. Nothing here touches the machine's own interfaces, routes or firewall.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use cni_tests::{
    bin_dir, in_ci, kernel_has_vlan_filtering, lease_files, merge, sh, workspace_dir, Cni, Netns, Output, TempDir,
};
use serde_json::{json, Value};

/// A test's world: a private host namespace, a lease store, a bridge name.
struct Bed {
    host: Netns,
    data: TempDir,
    bridge: String,
}

impl Bed {
    fn new() -> Bed {
        Bed {
            host: Netns::new(),
            data: TempDir::new("br"),
            bridge: "cnitbr0".into(),
        }
    }

    /// A bridge config on subnet 10.66.0.0/24 with `extra` merged in (keys set to null are
    /// removed).
    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "brtest",
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": self.data.path()}
        });
        merge(&mut c, extra);
        c
    }

    fn cni(&self, command: &str, id: &str, ctr: Option<&Netns>, conf: &Value) -> Cni {
        Cni::call("bridge", &self.host, command, id, ctr.map(Netns::path).as_deref(), conf)
    }

    fn add(&self, id: &str, ctr: &Netns, conf: &Value) -> Value {
        self.cni("ADD", id, Some(ctr), conf).run().expect_ok()
    }

    fn del(&self, id: &str, ctr: Option<&Netns>, conf: &Value) {
        self.cni("DEL", id, ctr, conf).run().expect_ok();
    }

    fn check(&self, id: &str, ctr: &Netns, conf: &Value, prev: &Value) -> Output {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        self.cni("CHECK", id, Some(ctr), &c).run()
    }

    /// Names of the links of the host namespace, without `lo`.
    fn host_links(&self) -> Vec<String> {
        self.host.links()
    }

    /// `iptables -t nat -S` (v4) in the host namespace.
    fn nat_rules(&self) -> String {
        let out = self.host.exec(&["iptables", "-w", "-t", "nat", "-S"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn leases(&self, net: &str) -> Vec<(String, String)> {
        lease_files(&self.data.join(net))
    }
}

/// The global addresses of `dev` in `ns`, as `a.b.c.d/len` / `x::y/len`.
fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let out = ns.exec(&["ip", "-o", "addr", "show", "dev", dev, "scope", "global"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

fn ping(ns: &Netns, addr: &str) -> bool {
    let flag = if addr.contains(':') { "-6" } else { "-4" };
    ns.exec(&["ping", flag, "-c1", "-W2", addr]).status.success()
}

fn ip_of(result: &Value, i: usize) -> String {
    result["ips"][i]["address"]
        .as_str()
        .expect("address")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"].as_str().expect("host veth").to_string()
}

fn assert_no_container_iface(ctr: &Netns) {
    assert!(ctr.links().is_empty(), "links left in the container: {:?}", ctr.links());
}

/// A conf-example's first plugin as a single-plugin config (as a runtime builds it).
fn conf_example(file: &str) -> Value {
    let path = workspace_dir().join("conf-examples").join(file);
    let list: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut c = list["plugins"][0].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    c["name"] = list["name"].clone();
    c
}

#[test]
fn two_containers_ping_each_other_and_the_gateway() {
    let bed = Bed::new();
    let (a, b) = (Netns::new(), Netns::new());
    let conf = bed.conf(json!({}));
    let ra = bed.add("ca", &a, &conf);
    let rb = bed.add("cb", &b, &conf);

    // The result: bridge, host veth, container interface; IPs on interface 2.
    assert_eq!(ra["cniVersion"], "1.0.0");
    assert_eq!(ra["interfaces"][0]["name"], bed.bridge.as_str());
    assert_eq!(ra["interfaces"][2]["name"], "eth0");
    assert_eq!(ra["interfaces"][2]["sandbox"], a.path().as_str());
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(ra["ips"][0]["gateway"], "10.66.0.1");
    let (ipa, ipb) = (ip_of(&ra, 0), ip_of(&rb, 0));
    assert_ne!(ipa, ipb);

    // What the kernel has.
    assert_eq!(addrs(&a, "eth0"), vec![format!("{ipa}/24")]);
    assert_eq!(addrs(&bed.host, &bed.bridge), vec!["10.66.0.1/24".to_string()]);
    let master = bed.host.ip(&["-o", "link", "show", &host_veth(&ra)]);
    assert!(master.contains(&format!("master {}", bed.bridge)), "{master}");
    assert!(a
        .ip(&["link", "show", "eth0"])
        .contains(ra["interfaces"][2]["mac"].as_str().unwrap()));
    assert!(ping(&a, &ipb), "a -> b");
    assert!(ping(&b, &ipa), "b -> a");
    assert!(ping(&a, "10.66.0.1"), "a -> gateway");
    assert_eq!(bed.leases("brtest").len(), 2);

    // CHECK passes, and fails once the address is gone.
    bed.check("ca", &a, &conf, &ra).expect_ok();
    a.ip(&["addr", "del", &format!("{ipa}/24"), "dev", "eth0"]);
    let msg = bed.check("ca", &a, &conf, &ra).expect_error(104);
    assert!(msg.contains(&ipa), "{msg}");

    // DEL: veth, lease gone; the bridge stays; DEL again is fine.
    bed.del("ca", Some(&a), &conf);
    bed.del("cb", Some(&b), &conf);
    assert_no_container_iface(&a);
    assert_no_container_iface(&b);
    assert_eq!(bed.host_links(), vec![bed.bridge.clone()]);
    assert!(bed.leases("brtest").is_empty());
    bed.del("ca", Some(&a), &conf);
    bed.del("unknown", Some(&a), &conf);
}

#[test]
fn masquerade_reaches_the_outside_and_rules_go_with_del() {
    let bed = Bed::new();
    // A second namespace plays a host outside: 203.0.113.2, with no route back to 10.66.0.0/24,
    // so only NAT can answer.
    let outside = Netns::new();
    bed.host.ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
        "netns",
        outside.name(),
    ]);
    bed.host.ip(&["addr", "add", "203.0.113.1/24", "dev", "up0"]);
    bed.host.ip(&["link", "set", "up0", "up"]);
    outside.ip(&["addr", "add", "203.0.113.2/24", "dev", "up1"]);
    outside.ip(&["link", "set", "up1", "up"]);

    let conf = bed.conf(json!({"isDefaultGateway": true, "ipMasq": true}));
    let (a, b) = (Netns::new(), Netns::new());
    let ra = bed.add("ca", &a, &conf);
    bed.add("cb", &b, &conf);
    assert_eq!(ra["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(ra["routes"][0]["gw"], "10.66.0.1");
    assert!(a.ip(&["route"]).contains("default via 10.66.0.1"));
    assert!(ping(&a, "203.0.113.2"), "container reaches the outside through NAT");
    let rules = bed.nat_rules();
    assert!(rules.contains("id: \\\"ca\\\""), "masquerade rule of ca: {rules}");
    assert!(rules.contains("MASQUERADE"), "{rules}");

    // DEL removes exactly this container's rules.
    bed.del("ca", Some(&a), &conf);
    let rules = bed.nat_rules();
    assert!(!rules.contains("id: \\\"ca\\\""), "rules of ca left after DEL: {rules}");
    assert!(rules.contains("id: \\\"cb\\\""), "rules of cb must stay: {rules}");
    assert!(!ping(&a, "203.0.113.2"));

    // DEL with the netns deleted first still removes the rules and the lease.
    drop(b);
    bed.del("cb", None, &conf);
    let rules = bed.nat_rules();
    assert!(!rules.contains("CNI-"), "rules left after DEL without netns: {rules}");
    assert!(bed.leases("brtest").is_empty());
    // The kernel removes the host end of cb's veth some time after its namespace is gone.
    let want = vec![bed.bridge.clone(), "up0".to_string()];
    cni_tests::eventually(Duration::from_secs(20), "cb's host veth gone with its netns", || {
        let mut left = bed.host_links();
        left.sort();
        left == want
    });
}

#[test]
fn dual_stack_from_the_conf_example() {
    let bed = Bed::new();
    let mut conf = conf_example("bridge-dualstack.conflist");
    conf["bridge"] = json!(bed.bridge);
    conf["ipam"]["dataDir"] = json!(bed.data.path());
    let (a, b) = (Netns::new(), Netns::new());
    let ra = bed.add("ca", &a, &conf);
    let rb = bed.add("cb", &b, &conf);
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2);
    assert!(ip_of(&ra, 0).starts_with("10.89.0."));
    assert!(ip_of(&ra, 1).starts_with("fd00:89::"));
    assert_eq!(ra["ips"][1]["gateway"], "fd00:89::1");
    assert_eq!(ra["dns"]["nameservers"][0], "10.89.0.1");
    let routes: Vec<&str> = ra["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(routes, vec!["0.0.0.0/0", "::/0"]);
    assert!(addrs(&bed.host, &bed.bridge).contains(&"fd00:89::1/64".to_string()));
    assert!(a.ip(&["-6", "route"]).contains("default via fd00:89::1"));
    assert!(ping(&a, &ip_of(&rb, 1)), "v6 a -> b");
    assert!(ping(&a, &ip_of(&rb, 0)), "v4 a -> b");
    assert!(ping(&a, "fd00:89::1"), "v6 gateway");
    // The result in every version: the per-IP "version" only before 1.0.0.
    for (v, has_version) in [("0.3.1", true), ("0.4.0", true), ("1.1.0", false)] {
        let mut c = conf.clone();
        c["cniVersion"] = json!(v);
        let c_ns = Netns::new();
        let r = bed.add(&format!("cv{}", v.replace('.', "")), &c_ns, &c);
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["ips"][1].get("version").is_some(), has_version, "{v}: {r}");
        bed.del(&format!("cv{}", v.replace('.', "")), Some(&c_ns), &c);
    }
    bed.del("ca", Some(&a), &conf);
    bed.del("cb", Some(&b), &conf);
    assert!(bed.leases("rsbr-dual").is_empty());
    assert!(!bed.nat_rules().contains("CNI-"));
}

#[test]
fn the_ipv4_conf_example_works() {
    let bed = Bed::new();
    let mut conf = conf_example("bridge.conflist");
    conf["bridge"] = json!(bed.bridge);
    conf["ipam"]["dataDir"] = json!(bed.data.path());
    let a = Netns::new();
    let r = bed.add("ca", &a, &conf);
    assert!(ip_of(&r, 0).starts_with("10.88.0."));
    assert!(bed
        .host
        .ip(&["-d", "link", "show", &host_veth(&r)])
        .contains("hairpin on"));
    assert!(bed.nat_rules().contains("MASQUERADE"));
    bed.del("ca", Some(&a), &conf);
    assert!(!bed.nat_rules().contains("CNI-"));
}

#[test]
fn static_ip_mac_and_mtu() {
    let bed = Bed::new();
    let a = Netns::new();
    let conf = bed.conf(json!({
        "mtu": 1400,
        "runtimeConfig": {"mac": "0a:58:0a:42:00:63"},
        "args": {"cni": {"ips": ["10.66.0.99"]}}
    }));
    let r = bed.add("ca", &a, &conf);
    assert_eq!(ip_of(&r, 0), "10.66.0.99");
    assert_eq!(r["interfaces"][2]["mac"], "0a:58:0a:42:00:63");
    let link = a.ip(&["link", "show", "eth0"]);
    assert!(link.contains("0a:58:0a:42:00:63"), "{link}");
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(bed.host.ip(&["link", "show", &host_veth(&r)]).contains("mtu 1400"));
    // The same static address for another container is refused, and nothing is left of it.
    let b = Netns::new();
    let before = bed.host_links();
    let out = bed
        .cni(
            "ADD",
            "cb",
            Some(&b),
            &bed.conf(json!({"args": {"cni": {"ips": ["10.66.0.99"]}}})),
        )
        .run();
    assert!(!out.success());
    assert_eq!(bed.host_links(), before);
    assert_no_container_iface(&b);
    // CNI_ARGS MAC= and IP= (lower priority than runtimeConfig/args).
    let c = Netns::new();
    let out = bed
        .cni("ADD", "cc", Some(&c), &bed.conf(json!({})))
        .args("IgnoreUnknown=1;MAC=0a:58:0a:42:00:64;IP=10.66.0.100")
        .run();
    let rc = out.expect_ok();
    assert_eq!(rc["interfaces"][2]["mac"], "0a:58:0a:42:00:64");
    assert_eq!(ip_of(&rc, 0), "10.66.0.100");
    bed.del("ca", Some(&a), &conf);
    bed.del("cc", Some(&c), &bed.conf(json!({})));
    assert!(bed.leases("brtest").is_empty());
}

#[test]
fn hairpin_isolation_promisc_and_l2_only() {
    let bed = Bed::new();
    let a = Netns::new();
    let conf = bed.conf(json!({"hairpinMode": true, "portIsolation": true}));
    let r = bed.add("ca", &a, &conf);
    let d = bed.host.ip(&["-d", "link", "show", &host_veth(&r)]);
    assert!(d.contains("hairpin on"), "{d}");
    assert!(d.contains("isolated on"), "{d}");
    bed.del("ca", Some(&a), &conf);

    // L2 only: no IPAM, the interface is up with no address, the result has no IPs.
    let l2 = json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "cnitbr1", "promiscMode": true});
    let b = Netns::new();
    let r = bed.add("cb", &b, &l2);
    assert!(r.get("ips").is_none(), "{r}");
    assert!(addrs(&b, "eth0").is_empty());
    assert!(b.ip(&["link", "show", "eth0"]).contains(",UP"));
    assert!(bed.host.ip(&["link", "show", "cnitbr1"]).contains("PROMISC"));
    bed.del("cb", Some(&b), &l2);
    assert_no_container_iface(&b);

    // disableContainerInterface: the container end stays down.
    let dis = json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "cnitbr1", "disableContainerInterface": true});
    let c = Netns::new();
    bed.add("cc", &c, &dis);
    assert!(!c.ip(&["link", "show", "eth0"]).contains(",UP"));
    bed.del("cc", Some(&c), &dis);
}

#[test]
fn vlan_on_the_port_or_a_clear_error() {
    let bed = Bed::new();
    let a = Netns::new();
    let conf = bed.conf(json!({"vlan": 100, "isGateway": false}));
    if kernel_has_vlan_filtering() {
        let r = bed.add("ca", &a, &conf);
        let vlans = bed.host.ip(&["-d", "link", "show", &host_veth(&r)]);
        let out = Command::new("ip")
            .args(["netns", "exec", bed.host.name(), "bridge", "vlan", "show"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("100 PVID"), "{table} {vlans}");
        bed.del("ca", Some(&a), &conf);
    } else {
        let msg = bed.cni("ADD", "ca", Some(&a), &conf).run().expect_error(106);
        assert!(msg.contains("VLAN"), "{msg}");
        assert!(bed.host_links().is_empty(), "left behind: {:?}", bed.host_links());
        assert_no_container_iface(&a);
        assert!(bed.leases("brtest").is_empty());
    }
    // Out of range VLAN ids are config errors.
    let msg = bed
        .cni("ADD", "ca", Some(&a), &bed.conf(json!({"vlan": 5000})))
        .run()
        .expect_error(7);
    assert!(msg.contains("vlan"), "{msg}");
}

#[test]
fn config_errors_name_the_field_and_change_nothing() {
    let bed = Bed::new();
    let a = Netns::new();
    let cases: Vec<(Value, u64, &str)> = vec![
        (json!({"bridge": "a-very-long-bridge-name"}), 7, "bridge"),
        (json!({"bridge": "bad/name"}), 7, "bridge"),
        (json!({"mtu": 20}), 7, "mtu"),
        (json!({"mtu": 70000}), 7, "mtu"),
        (json!({"mtu": "big"}), 6, "mtu"),
        (json!({"vlan": -1}), 7, "vlan"),
        (json!({"vlanTrunk": [{"minID": 10}]}), 7, "vlanTrunk"),
        (json!({"hairpinMode": true, "promiscMode": true}), 7, "hairpinMode"),
        (
            json!({"disableContainerInterface": true}),
            7,
            "disableContainerInterface",
        ),
        (json!({"ipMasq": true, "ipMasqBackend": "pf"}), 7, "ipMasqBackend"),
        (json!({"runtimeConfig": {"mac": "not-a-mac"}}), 7, "runtimeConfig.mac"),
        (
            json!({"args": {"cni": {"mac": "01:00:5e:00:00:01"}}}),
            7,
            "args.cni.mac",
        ),
        (json!({"ipam": {"type": "no-such-ipam"}}), 7, "no-such-ipam"),
        (json!({"ipam": {"subnet": "10.66.0.1/24"}}), 7, "10.66.0.1/24"),
        (json!({"cniVersion": "9.9.9"}), 1, "9.9.9"),
        (json!({"isGateway": "yes"}), 6, "isGateway"),
    ];
    for (extra, code, needle) in cases {
        let conf = bed.conf(extra.clone());
        let msg = bed.cni("ADD", "ca", Some(&a), &conf).run().expect_error(code);
        assert!(msg.contains(needle), "{extra}: message {msg:?} does not name {needle}");
        assert!(bed.host_links().is_empty(), "{extra}: left {:?}", bed.host_links());
        assert_no_container_iface(&a);
        assert!(bed.leases("brtest").is_empty(), "{extra}: lease left");
    }
    // A link of the bridge's name that is not a bridge.
    bed.host
        .ip(&["link", "add", &bed.bridge, "type", "veth", "peer", "name", "notbr1"]);
    let msg = bed
        .cni("ADD", "ca", Some(&a), &bed.conf(json!({})))
        .run()
        .expect_error(103);
    assert!(msg.contains("not a bridge"), "{msg}");
    assert_no_container_iface(&a);
}

#[test]
fn failures_after_ipam_undo_everything() {
    let bed = Bed::new();
    let a = Netns::new();
    // The bridge already carries another address of the family: without forceAddress the ADD
    // fails after IPAM, and the lease, the veth and the container interface are undone.
    bed.host.ip(&["link", "add", &bed.bridge, "type", "bridge"]);
    bed.host.ip(&["addr", "add", "10.99.0.1/24", "dev", &bed.bridge]);
    let conf = bed.conf(json!({"ipMasq": true}));
    let msg = bed.cni("ADD", "ca", Some(&a), &conf).run().expect_error(103);
    assert!(msg.contains("10.66.0.1/24"), "{msg}");
    assert_eq!(bed.host_links(), vec![bed.bridge.clone()]);
    assert_no_container_iface(&a);
    assert!(bed.leases("brtest").is_empty());
    assert!(!bed.nat_rules().contains("CNI-"));
    // forceAddress replaces it.
    let conf = bed.conf(json!({"forceAddress": true}));
    bed.add("ca", &a, &conf);
    assert_eq!(addrs(&bed.host, &bed.bridge), vec!["10.66.0.1/24".to_string()]);
    bed.del("ca", Some(&a), &conf);

    // An exhausted range: the bridge this ADD created is removed again.
    let bed2 = Bed::new();
    let tiny = bed2.conf(json!({"ipam": {"subnet": "10.67.0.0/30"}}));
    let (x, y) = (Netns::new(), Netns::new());
    bed2.add("cx", &x, &tiny);
    bed2.cni("ADD", "cy", Some(&y), &tiny).run().expect_error(102);
    assert_no_container_iface(&y);
    assert_eq!(bed2.host_links().len(), 2, "bridge + one veth: {:?}", bed2.host_links());
    bed2.del("cx", Some(&x), &tiny);
    let fresh = Bed::new();
    let z = Netns::new();
    let full =
        fresh.conf(json!({"ipam": {"subnet": "10.68.0.0/30", "rangeStart": "10.68.0.2", "rangeEnd": "10.68.0.1"}}));
    let out = fresh.cni("ADD", "cz", Some(&z), &full).run();
    assert!(!out.success());
    assert!(
        fresh.host_links().is_empty(),
        "bridge made by a failed ADD must go: {:?}",
        fresh.host_links()
    );
}

#[test]
fn existing_interface_name_in_the_container_is_refused_cleanly() {
    let bed = Bed::new();
    let a = Netns::new();
    a.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "other0"]);
    let msg = bed
        .cni("ADD", "ca", Some(&a), &bed.conf(json!({})))
        .run()
        .expect_error(103);
    assert!(msg.contains("eth0"), "{msg}");
    assert!(
        bed.host_links().is_empty(),
        "no host veth left, nor the bridge this ADD made: {:?}",
        bed.host_links()
    );
    assert!(bed.leases("brtest").is_empty());
}

#[test]
fn thirty_two_adds_at_once_on_a_new_bridge() {
    let bed = Bed::new();
    let conf = bed.conf(json!({"ipMasq": true}));
    let nss: Vec<Netns> = (0..32).map(|_| Netns::new()).collect();
    let running: Vec<_> = nss
        .iter()
        .enumerate()
        .map(|(i, ns)| bed.cni("ADD", &format!("c{i}"), Some(ns), &conf).spawn())
        .collect();
    let results: Vec<Value> = running.into_iter().map(|r| r.wait().expect_ok()).collect();
    let mut ips: Vec<String> = results.iter().map(|r| ip_of(r, 0)).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 32, "addresses must be distinct");
    let bridges = bed.host.ip(&["-o", "link", "show", "type", "bridge"]);
    assert_eq!(bridges.lines().count(), 1, "{bridges}");
    let ports = bed.host.ip(&["-o", "link", "show", "master", &bed.bridge]);
    assert_eq!(ports.lines().count(), 32);
    let running: Vec<_> = nss
        .iter()
        .enumerate()
        .map(|(i, ns)| bed.cni("DEL", &format!("c{i}"), Some(ns), &conf).spawn())
        .collect();
    for r in running {
        r.wait().expect_ok();
    }
    assert_eq!(bed.host_links(), vec![bed.bridge.clone()]);
    assert!(bed.leases("brtest").is_empty());
    assert!(!bed.nat_rules().contains("CNI-"));
}

#[test]
fn gc_and_status() {
    let bed = Bed::new();
    let conf = bed.conf(json!({"cniVersion": "1.1.0", "ipMasq": true}));
    let (a, b) = (Netns::new(), Netns::new());
    bed.add("ca", &a, &conf);
    bed.add("cb", &b, &conf);
    bed.cni("STATUS", "", None, &conf).run().expect_ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "cb", "ifname": "eth0"}]);
    bed.cni("GC", "", None, &gc).run().expect_ok();
    let leases = bed.leases("brtest");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(leases[0].1.starts_with("cb"), "{leases:?}");
    let rules = bed.nat_rules();
    assert!(!rules.contains("id: \\\"ca\\\""), "{rules}");
    assert!(rules.contains("id: \\\"cb\\\""), "{rules}");
    // GC and STATUS need 1.1.0.
    bed.cni("GC", "", None, &bed.conf(json!({}))).run().expect_error(1);
    bed.del("ca", Some(&a), &conf);
    bed.del("cb", Some(&b), &conf);
}

/// Builds the libcni client of tests/libcni-client once.
fn cnirt() -> Option<String> {
    static BUILT: OnceLock<Option<String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if Command::new("go").arg("version").output().is_err() {
                assert!(!in_ci(), "go is missing in CI (make deps installs golang-go)");
                eprintln!("*** SKIPPED: go is not installed; the libcni test did not run ***");
                return None;
            }
            let out = bin_dir().join("cnirt");
            let script = workspace_dir().join("tests/libcni-client/build.sh");
            sh(&["bash", script.to_str().unwrap(), out.to_str().unwrap()]);
            Some(out.to_string_lossy().into_owned())
        })
        .clone()
}

#[test]
fn chained_with_reference_portmap_and_tuning_through_libcni() {
    let Some(client) = cnirt() else { return };
    if cni_tests::reference_bin("portmap").is_none() {
        return;
    }
    let bed = Bed::new();
    let a = Netns::new();
    let cache = TempDir::new("cache");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "chain",
        "plugins": [
            {"type": "bridge", "bridge": bed.bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "dataDir": bed.data.path(),
                      "ranges": [[{"subnet": "10.70.0.0/24"}], [{"subnet": "fd00:70::/64"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}, "mtu": 1300}
        ]
    });
    let file = cache.join("chain.conflist");
    std::fs::write(&file, list.to_string()).unwrap();
    // CHECK leaves portmap out: the reference portmap 1.1.1 looks for IPv4 rules in ip6tables
    // when a container has both families (its bug, not ours).
    let mut check_list = list.clone();
    check_list["plugins"].as_array_mut().unwrap().remove(1);
    let check_file = cache.join("chain-check.conflist");
    std::fs::write(&check_file, check_list.to_string()).unwrap();
    let run = |verb: &str| {
        let f = if verb == "check" { &check_file } else { &file };
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            bed.host.name(),
            &client,
            verb,
            f.to_str().unwrap(),
            &a.path(),
        ])
        .env("CNI_PATH", format!("{}:/usr/lib/cni", bin_dir().display()))
        .env("CNI_CONTAINERID", "chain1")
        .env("CNI_CACHE_DIR", cache.path())
        .env(
            "CAP_ARGS",
            r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#,
        );
        c.output().unwrap()
    };
    let out = run("add");
    assert!(
        out.status.success(),
        "libcni add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(ip_of(&r, 0).starts_with("10.70.0."), "{r}");
    // tuning applied its MTU and sysctl on our interface; portmap its DNAT rules.
    assert!(a.ip(&["link", "show", "eth0"]).contains("mtu 1300"));
    let sysctl = a.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/accept_redirects"]);
    assert_eq!(String::from_utf8_lossy(&sysctl.stdout).trim(), "0");
    assert!(bed.nat_rules().contains("--dport 8080"), "{}", bed.nat_rules());
    let out = run("check");
    assert!(
        out.status.success(),
        "libcni check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("del");
    assert!(
        out.status.success(),
        "libcni del: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_container_iface(&a);
    assert!(bed.leases("chain").is_empty());
    let rules = bed.nat_rules();
    // portmap's shared chains stay (as with the reference bridge); this container's rules go.
    assert!(
        !rules.contains("--dport 8080") && !rules.contains("id: \\\"chain1\\\""),
        "{rules}"
    );
}

#[test]
fn podman_runs_a_container_on_our_bridge() {
    for tool in ["podman", "runc", "busybox"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success();
        if !found {
            assert!(
                !in_ci(),
                "{tool} is missing in CI (make deps installs podman runc busybox-static)"
            );
            eprintln!("*** SKIPPED: {tool} is not installed; the Podman test did not run ***");
            return;
        }
    }
    // Podman runs inside a private "host" namespace entered with nsenter (not `ip netns exec`,
    // whose private /sys hides the cgroup mounts runc needs), so its bridge is ours alone.
    let bed = Bed::new();
    let script = workspace_dir().join("tests/podman/run.sh");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", bed.host.path()))
        .args(["bash", script.to_str().unwrap()])
        .env("CNI_PATH", format!("{}:/usr/lib/cni", bin_dir().display()))
        .env("BRIDGE", &bed.bridge)
        .env("DATA_DIR", bed.data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 10.71.0."),
        "the container sees its address:\n{stdout}"
    );
    // After `podman rm`: no lease, no veth, no podman netns left.
    assert!(bed.leases("rspodman").is_empty(), "{:?}", bed.leases("rspodman"));
    let ports = bed.host.ip(&["-o", "link", "show", "master", &bed.bridge]);
    assert!(ports.trim().is_empty(), "veths left: {ports}");
}

#[test]
fn del_removes_what_an_add_killed_before_the_rename_left() {
    let bed = Bed::new();
    let a = Netns::new();
    let conf = bed.conf(json!({}));
    // What an ADD killed between creating the pair and renaming its container end leaves: the
    // host end on the bridge, the container end under the attachment's temporary name.
    bed.add("warmup", &a, &conf);
    bed.del("warmup", Some(&a), &conf);
    let tmp = cni::iface::temp_ifname("ca", "eth0");
    bed.host.ip(&[
        "link",
        "add",
        "vethdead0",
        "type",
        "veth",
        "peer",
        "name",
        &tmp,
        "netns",
        a.name(),
    ]);
    bed.host.ip(&["link", "set", "vethdead0", "master", &bed.bridge]);
    // A new ADD of the same attachment replaces it ...
    bed.add("ca", &a, &conf);
    assert_eq!(a.links(), vec!["eth0".to_string()]);
    bed.del("ca", Some(&a), &conf);
    // ... and a DEL removes it.
    bed.host.ip(&[
        "link",
        "add",
        "vethdead0",
        "type",
        "veth",
        "peer",
        "name",
        &tmp,
        "netns",
        a.name(),
    ]);
    bed.del("ca", Some(&a), &conf);
    assert_no_container_iface(&a);
    assert_eq!(bed.host_links(), vec![bed.bridge.clone()]);
}

#[test]
fn del_works_with_a_config_that_went_bad_after_add() {
    let bed = Bed::new();
    let a = Netns::new();
    let conf = bed.conf(json!({"ipMasq": true}));
    bed.add("ca", &a, &conf);
    // The operator broke the config meanwhile: DEL must still clean up.
    let bad = bed.conf(json!({"ipMasq": true, "mtu": 20, "hairpinMode": true, "promiscMode": true}));
    bed.cni("ADD", "cb", Some(&Netns::new()), &bad).run().expect_error(7);
    bed.del("ca", Some(&a), &bad);
    assert_no_container_iface(&a);
    assert!(bed.leases("brtest").is_empty());
    assert!(!bed.nat_rules().contains("CNI-"));
}

#[test]
fn macspoofchk_rules_and_dad_sysctls() {
    let bed = Bed::new();
    let a = Netns::new();
    let conf = bed.conf(json!({"macspoofchk": true, "enabledad": true}));
    let r = bed.add("ca", &a, &conf);
    let nft = |args: &[&str]| {
        let mut cmd = vec!["nft"];
        cmd.extend_from_slice(args);
        String::from_utf8_lossy(&bed.host.exec(&cmd).stdout).into_owned()
    };
    // The reference's layout: a per-attachment chain that lets only the container's MAC pass.
    let table = nft(&["list", "table", "bridge", "nat"]);
    let mac = r["interfaces"][2]["mac"].as_str().unwrap();
    assert!(table.contains("chain cni-br-iface-ca-eth0"), "{table}");
    assert!(table.contains(&format!("ether saddr {mac} return")), "{table}");
    assert!(
        table.contains(&format!("iifname \"{}\" jump cni-br-iface-ca-eth0", host_veth(&r))),
        "{table}"
    );
    let sysctl = |ns: &Netns, key: &str| {
        String::from_utf8_lossy(&ns.exec(&["cat", key]).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(sysctl(&a, "/proc/sys/net/ipv6/conf/eth0/accept_dad"), "1");
    assert_eq!(sysctl(&a, "/proc/sys/net/ipv4/conf/eth0/arp_notify"), "1");
    bed.del("ca", Some(&a), &conf);
    let table = nft(&["list", "table", "bridge", "nat"]);
    assert!(!table.contains("cni-br-iface-ca-eth0"), "rules left after DEL: {table}");

    // Without enabledad, DAD is off in the container.
    let b = Netns::new();
    let plain = bed.conf(json!({}));
    bed.add("cb", &b, &plain);
    assert_eq!(sysctl(&b, "/proc/sys/net/ipv6/conf/eth0/accept_dad"), "0");
    bed.del("cb", Some(&b), &plain);
}
