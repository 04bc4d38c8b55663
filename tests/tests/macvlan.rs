//! The macvlan plugin, executed as a runtime would: each test has a private "host" namespace
//! whose veth pair m0/m1 is the master, and container namespaces of its own; everything is
//! removed when the test ends, passing or not. Needs root and `cargo build --workspace`.

mod macvlan_common;

use cni_tests::Netns;
use macvlan_common::{ip_of, Bed, NsExt};
use serde_json::{json, Value};

/// The container address of an ADD result.
fn addr(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[0].address in {result}"))
        .to_string()
}

#[test]
fn bridge_mode_containers_reach_each_other() {
    let bed = Bed::new("br");
    let (a, b) = (Netns::new(), Netns::new());
    let conf = bed.conf(json!({}));
    let ra = bed.add("ca", &a, &conf).expect_ok();
    let rb = bed.add("cb", &b, &conf).expect_ok();

    // The result: the one container interface, the IPAM addresses on it.
    let ifs = ra["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 1, "{ra}");
    assert_eq!(ifs[0]["name"], "eth0");
    assert_eq!(ifs[0]["sandbox"], a.path());
    assert_eq!(ifs[0]["mac"], a.mac("eth0"));
    assert_eq!(ra["ips"][0]["interface"], 0);
    assert_eq!(ra["cniVersion"], "1.0.0");

    assert_eq!(a.addrs4("eth0"), vec![addr(&ra)]);
    assert!(a.link_details("eth0").contains("macvlan mode bridge"));
    assert_eq!(bed.leases().len(), 2);
    assert!(a.ping(&ip_of(&addr(&rb))), "A cannot reach B");
    assert!(b.ping(&ip_of(&addr(&ra))), "B cannot reach A");
    // Nothing was made in the host namespace.
    let mut host_links = bed.host.links();
    host_links.sort();
    assert_eq!(host_links, vec!["m0", "m1"]);
}

#[test]
fn private_mode_containers_cannot_talk() {
    let bed = Bed::new("pv");
    let (a, b) = (Netns::new(), Netns::new());
    let conf = bed.conf(json!({"mode": "private"}));
    let ra = bed.add("ca", &a, &conf).expect_ok();
    let rb = bed.add("cb", &b, &conf).expect_ok();
    assert!(a.link_details("eth0").contains("macvlan mode private"));
    assert!(!a.exec_ok(&["ping", "-c2", "-W1", &ip_of(&addr(&rb))]));
    assert!(!b.exec_ok(&["ping", "-c2", "-W1", &ip_of(&addr(&ra))]));
}

#[test]
fn passthru_allows_one_child_and_refuses_a_second() {
    let bed = Bed::new("pt");
    let (a, b) = (Netns::new(), Netns::new());
    let conf = bed.conf(json!({"mode": "passthru"}));
    bed.add("ca", &a, &conf).expect_ok();
    assert!(a.link_details("eth0").contains("macvlan mode passthru"));

    let msg = bed.add("cb", &b, &conf).expect_error(103);
    assert!(msg.contains("master m0 already has a passthru macvlan"), "{msg}");
    // Nothing left behind: no link in B, no lease for B.
    assert!(b.links().is_empty(), "{:?}", b.links());
    assert_eq!(bed.leases().len(), 1, "{:?}", bed.leases());
    // A bridge-mode child is refused as well while the passthru one exists.
    let msg = bed.add("cb", &b, &bed.conf(json!({}))).expect_error(103);
    assert!(msg.contains("passthru"), "{msg}");
    assert!(b.links().is_empty());
    assert_eq!(bed.leases().len(), 1);
}

#[test]
fn vepa_mode() {
    let bed = Bed::new("ve");
    let a = Netns::new();
    bed.add("ca", &a, &bed.conf(json!({"mode": "vepa"}))).expect_ok();
    assert!(a.link_details("eth0").contains("macvlan mode vepa"));
}

#[test]
fn source_mode_with_its_allowed_macs() {
    let bed = Bed::new("so");
    let (a, lan) = (Netns::new(), Netns::new());
    bed.lan_peer(&lan, "10.77.0.254/24");
    let lan_mac = lan.mac("m1");
    let conf = bed.conf(json!({
        "mode": "source",
        "sourceMacs": [lan_mac, "02:11:22:33:44:55"]
    }));
    let r = bed.add("ca", &a, &conf).expect_ok();
    let d = a.link_details("eth0");
    assert!(d.contains("macvlan mode source"), "{d}");
    assert!(d.contains("remotes (2)"), "{d}");
    assert!(d.contains(&lan_mac) && d.contains("02:11:22:33:44:55"), "{d}");
    // The allowed LAN peer talks to the container.
    assert!(lan.ping(&ip_of(&addr(&r))));

    // CHECK knows the mode.
    bed.check("ca", &a, &conf, &r).expect_ok();
    // Source mode without sourceMacs, or sourceMacs in another mode: code 7.
    let b = Netns::new();
    let msg = bed.add("cb", &b, &bed.conf(json!({"mode": "source"}))).expect_error(7);
    assert!(msg.contains("sourceMacs"), "{msg}");
    let msg = bed
        .add("cb", &b, &bed.conf(json!({"sourceMacs": [lan_mac]})))
        .expect_error(7);
    assert!(msg.contains("sourceMacs"), "{msg}");
    assert!(b.links().is_empty());
}

/// The "dockerfly" case: a machine on the master's LAN reaches the container's own address
/// directly (its ARP table has the container's MAC: no NAT, no routing), and vice versa.
#[test]
fn lan_peer_and_container_reach_each_other_directly() {
    let bed = Bed::new("lan");
    let (a, lan) = (Netns::new(), Netns::new());
    bed.lan_peer(&lan, "10.77.0.254/24");
    let r = bed.add("ca", &a, &bed.conf(json!({}))).expect_ok();
    let cip = ip_of(&addr(&r));
    let cmac = r["interfaces"][0]["mac"].as_str().unwrap().to_string();

    assert!(lan.ping(&cip), "LAN cannot reach the container");
    let neigh = lan.ip(&["neigh", "show", &cip, "dev", "m1"]);
    assert!(neigh.contains(&cmac), "LAN sees {cip} at {neigh}, not {cmac}");
    assert!(a.ping("10.77.0.254"), "container cannot reach the LAN");
    let neigh = a.ip(&["neigh", "show", "10.77.0.254"]);
    assert!(neigh.contains(&lan.mac("m1")), "{neigh}");
}

#[test]
fn static_ip_and_static_mac() {
    let bed = Bed::new("st");
    let (a, b, c) = (Netns::new(), Netns::new(), Netns::new());
    // args.cni.ips and the config's mac.
    let conf = bed.conf(json!({
        "mac": "02:00:00:aa:00:01",
        "args": {"cni": {"ips": ["10.77.0.50"]}}
    }));
    let r = bed.add("ca", &a, &conf).expect_ok();
    assert_eq!(addr(&r), "10.77.0.50/24");
    assert_eq!(a.addrs4("eth0"), vec!["10.77.0.50/24"]);
    assert_eq!(a.mac("eth0"), "02:00:00:aa:00:01");
    assert_eq!(r["interfaces"][0]["mac"], "02:00:00:aa:00:01");

    // CNI_ARGS IP= and MAC= (MAC= wins over the config's mac).
    let conf = bed.conf(json!({"mac": "02:00:00:aa:00:01"}));
    let r = bed
        .call("ADD", "cb", Some(&b.path()), &conf)
        .args("IgnoreUnknown=1;IP=10.77.0.51;MAC=02:00:00:aa:00:02")
        .run()
        .expect_ok();
    assert_eq!(addr(&r), "10.77.0.51/24");
    assert_eq!(b.mac("eth0"), "02:00:00:aa:00:02");

    // runtimeConfig.mac wins over both.
    let rc = bed.conf(json!({
        "mac": "02:00:00:aa:00:01",
        "runtimeConfig": {"mac": "02:00:00:aa:00:03"}
    }));
    bed.call("ADD", "cc", Some(&c.path()), &rc)
        .args("IgnoreUnknown=1;MAC=02:00:00:aa:00:02")
        .run()
        .expect_ok();
    assert_eq!(c.mac("eth0"), "02:00:00:aa:00:03");
    assert_eq!(bed.leases().len(), 3);

    // A bad MAC is code 7 naming where it came from; nothing is made.
    let d = Netns::new();
    let msg = bed
        .call("ADD", "cd", Some(&d.path()), &conf)
        .args("IgnoreUnknown=1;MAC=zz:00")
        .run()
        .expect_error(7);
    assert!(msg.contains("CNI_ARGS MAC"), "{msg}");
    assert!(d.links().is_empty());
    assert_eq!(bed.leases().len(), 3);
}

#[test]
fn link_in_container() {
    let bed = Bed::new("lic");
    let a = Netns::new();
    a.ip(&["link", "add", "c0", "type", "veth", "peer", "name", "c1"]);
    a.ip(&["link", "set", "c0", "up"]);
    a.ip(&["link", "set", "c1", "up"]);
    let conf = bed.conf(json!({"master": "c0", "linkInContainer": true}));
    let r = bed
        .call("ADD", "ca", Some(&a.path()), &conf)
        .ifname("net1")
        .run()
        .expect_ok();
    let d = a.link_details("net1");
    assert!(d.contains("net1@c0"), "{d}");
    assert!(d.contains("macvlan mode bridge"), "{d}");
    assert_eq!(a.addrs4("net1"), vec![addr(&r)]);

    let mut cc = conf.clone();
    cc["prevResult"] = r.clone();
    bed.call("CHECK", "ca", Some(&a.path()), &cc)
        .ifname("net1")
        .run()
        .expect_ok();

    // The master is looked for in the container, not in the host.
    let other = bed.conf(json!({"master": "m0", "linkInContainer": true}));
    let msg = bed
        .call("ADD", "cb", Some(&a.path()), &other)
        .ifname("net2")
        .run()
        .expect_error(7);
    assert!(msg.contains("master"), "{msg}");

    bed.call("DEL", "ca", Some(&a.path()), &conf)
        .ifname("net1")
        .run()
        .expect_ok();
    assert!(!a.has_link("net1"));
    assert!(a.has_link("c0"));
    assert!(bed.leases().is_empty());
}

#[test]
fn mtu_is_checked_against_the_master() {
    let bed = Bed::new("mtu");
    let a = Netns::new();
    let msg = bed.add("ca", &a, &bed.conf(json!({"mtu": 9000}))).expect_error(7);
    assert!(msg.contains("mtu") && msg.contains("1500"), "{msg}");
    assert!(a.links().is_empty());
    assert!(bed.leases().is_empty());
    bed.add("ca", &a, &bed.conf(json!({"mtu": -5}))).expect_error(7);

    let r = bed.add("ca", &a, &bed.conf(json!({"mtu": 1400}))).expect_ok();
    assert!(a.link_details("eth0").contains("mtu 1400"));
    assert_eq!(r["interfaces"][0]["sandbox"], a.path());
}

#[test]
fn missing_master_and_default_master() {
    let bed = Bed::new("mm");
    let a = Netns::new();
    let msg = bed
        .add("ca", &a, &bed.conf(json!({"master": "nosuch0"})))
        .expect_error(7);
    assert!(msg.contains("\"master\"") && msg.contains("nosuch0"), "{msg}");
    assert!(a.links().is_empty());
    assert!(bed.leases().is_empty());

    // No master and no default route: code 7 naming the key.
    let no_master = bed.conf(json!({"master": null}));
    let msg = bed.add("ca", &a, &no_master).expect_error(7);
    assert!(msg.contains("\"master\""), "{msg}");
    assert!(a.links().is_empty());

    // No master: the default route's interface.
    bed.host.ip(&["addr", "add", "10.77.0.2/24", "dev", "m0"]);
    bed.host
        .ip(&["route", "add", "default", "via", "10.77.0.1", "dev", "m0"]);
    let r = bed.add("ca", &a, &no_master).expect_ok();
    bed.check("ca", &a, &no_master, &r).expect_ok();
    let m0 = bed.host.ip(&["-o", "link", "show", "dev", "m0"]);
    let m0_index = m0.split(':').next().unwrap().trim().to_string();
    let d = a.link_details("eth0");
    assert!(d.contains(&format!("eth0@if{m0_index}")), "{d}");
}

#[test]
fn host_eth0_does_not_get_in_the_way() {
    let bed = Bed::new("he");
    bed.host
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let a = Netns::new();
    bed.add("ca", &a, &bed.conf(json!({}))).expect_ok();
    assert!(a.has_link("eth0"));
    assert!(bed.host.has_link("eth0"));
    // And an existing eth0 in the container is a clear error, with nothing left behind.
    let b = Netns::new();
    b.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x1"]);
    let msg = bed.add("cb", &b, &bed.conf(json!({}))).expect_error(103);
    assert!(msg.contains("already exists"), "{msg}");
    let mut links = b.links();
    links.sort();
    assert_eq!(links, vec!["eth0", "x1"]);
    assert_eq!(bed.leases().len(), 1);
}

#[test]
fn without_ipam_the_interface_is_up_with_no_address() {
    let bed = Bed::new("l2");
    let a = Netns::new();
    // lo belongs to the runtime's loopback plugin: ADD leaves it as it is (down here).
    a.ip(&["link", "set", "lo", "down"]);
    let conf = bed.conf(json!({"ipam": null, "dns": {"nameservers": ["10.77.0.1"]}}));
    let r = bed.add("ca", &a, &conf).expect_ok();
    assert!(r.get("ips").is_none(), "{r}");
    assert_eq!(r["dns"]["nameservers"][0], "10.77.0.1");
    assert!(a.addrs4("eth0").is_empty());
    let l = a.ip(&["link", "show", "dev", "eth0"]);
    assert!(l.contains(",UP") || l.contains("<UP"), "{l}");
    let lo = a.ip(&["link", "show", "dev", "lo"]);
    assert!(!lo.contains("UP"), "lo was touched: {lo}");
    bed.check("ca", &a, &conf, &r).expect_ok();
    bed.del("ca", Some(&a), &conf).expect_ok();
    assert!(a.links().is_empty());
}

#[test]
fn del_removes_link_and_lease_and_can_repeat() {
    let bed = Bed::new("del");
    let a = Netns::new();
    let conf = bed.conf(json!({}));
    bed.add("ca", &a, &conf).expect_ok();
    assert_eq!(bed.leases().len(), 1);
    bed.del("ca", Some(&a), &conf).expect_ok();
    assert!(a.links().is_empty());
    assert!(bed.leases().is_empty());
    bed.del("ca", Some(&a), &conf).expect_ok();
    bed.del("ca", None, &conf).expect_ok();
    // The container can be added again.
    bed.add("ca", &a, &conf).expect_ok();
    assert_eq!(bed.leases().len(), 1);
}

#[test]
fn del_after_the_netns_is_gone() {
    let bed = Bed::new("gone");
    let a = Netns::new();
    let conf = bed.conf(json!({}));
    bed.add("ca", &a, &conf).expect_ok();
    let path = a.path();
    drop(a);
    assert!(!std::path::Path::new(&path).exists());
    bed.call("DEL", "ca", Some(&path), &conf).run().expect_ok();
    assert!(bed.leases().is_empty());
    // Again, and the master is untouched.
    bed.call("DEL", "ca", Some(&path), &conf).run().expect_ok();
    assert!(bed.host.has_link("m0"));
}

#[test]
fn check_passes_after_add_and_fails_when_the_address_is_gone() {
    let bed = Bed::new("chk");
    let a = Netns::new();
    let conf = bed.conf(json!({"ipam": {"routes": [{"dst": "10.200.0.0/16"}]}}));
    let r = bed.add("ca", &a, &conf).expect_ok();
    bed.check("ca", &a, &conf, &r).expect_ok();

    // Without prevResult: an error.
    bed.run("CHECK", "ca", Some(&a), &conf).expect_error(7);
    // Another mode than the link's.
    bed.check("ca", &a, &bed.conf(json!({"mode": "vepa"})), &r)
        .expect_error(104);
    // A MAC that is not the link's.
    let mut other = r.clone();
    other["interfaces"][0]["mac"] = json!("02:00:00:00:00:99");
    bed.check("ca", &a, &conf, &other).expect_error(104);
    // The route removed, then back.
    a.ip(&["route", "del", "10.200.0.0/16"]);
    bed.check("ca", &a, &conf, &r).expect_error(104);
    a.ip(&["route", "add", "10.200.0.0/16", "via", "10.77.0.1", "dev", "eth0"]);
    bed.check("ca", &a, &conf, &r).expect_ok();
    // The address removed.
    a.ip(&["addr", "del", &addr(&r), "dev", "eth0"]);
    let msg = bed.check("ca", &a, &conf, &r).expect_error(104);
    assert!(msg.contains(&addr(&r)), "{msg}");
}

#[test]
fn failed_add_leaves_no_link_and_no_lease() {
    let bed = Bed::new("fail");
    let (a, b) = (Netns::new(), Netns::new());
    // One address in the range: the second ADD fails in IPAM.
    let conf = bed.conf(json!({"ipam": {"ranges": [[{
        "subnet": "10.77.0.0/24", "rangeStart": "10.77.0.10", "rangeEnd": "10.77.0.10"
    }]]}}));
    bed.add("ca", &a, &conf).expect_ok();
    let out = bed.add("cb", &b, &conf);
    assert!(!out.success(), "{}", out.raw_stdout);
    assert!(b.links().is_empty(), "{:?}", b.links());
    assert_eq!(bed.leases(), vec!["10.77.0.10"]);

    // A failure after IPAM (a route the kernel refuses): the lease is released too.
    let conf = bed.conf(json!({
        "name": "mvnet-fail2",
        "ipam": {"routes": [{"dst": "10.200.0.0/16", "gw": "10.99.99.1"}]}
    }));
    let out = bed.add("cb", &b, &conf);
    assert!(!out.success(), "{}", out.raw_stdout);
    assert!(out.error_msg().contains("10.200.0.0/16"), "{}", out.error_msg());
    assert!(b.links().is_empty(), "{:?}", b.links());
    assert!(bed.leases_of("mvnet-fail2").is_empty());
}

#[test]
fn bad_mode_is_code_7() {
    let bed = Bed::new("bm");
    let a = Netns::new();
    let msg = bed.add("ca", &a, &bed.conf(json!({"mode": "turbo"}))).expect_error(7);
    assert!(msg.contains("mode"), "{msg}");
    assert!(a.links().is_empty());
}

#[test]
fn status_and_gc() {
    let bed = Bed::new("sg");
    let l2 = bed.conf(json!({"cniVersion": "1.1.0", "ipam": null}));
    bed.run("STATUS", "", None, &l2).expect_ok();
    let missing = bed.conf(json!({"cniVersion": "1.1.0", "ipam": null, "master": "nosuch0"}));
    let msg = bed.run("STATUS", "", None, &missing).expect_error(50);
    assert!(msg.contains("nosuch0"), "{msg}");
    bed.run("GC", "", None, &l2).expect_ok();

    if !macvlan_common::our_host_local() {
        eprintln!("skipping GC/STATUS through IPAM: our host-local is not built");
        return;
    }
    let a = Netns::new();
    let conf = bed.conf(json!({"cniVersion": "1.1.0"}));
    bed.add("ca", &a, &conf).expect_ok();
    bed.run("STATUS", "", None, &conf).expect_ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    bed.run("GC", "", None, &gc).expect_ok();
    assert!(bed.leases().is_empty(), "{:?}", bed.leases());
}

#[test]
fn results_in_older_versions() {
    let bed = Bed::new("ver");
    let a = Netns::new();
    let conf = bed.conf(json!({"cniVersion": "0.4.0"}));
    let r = bed.add("ca", &a, &conf).expect_ok();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    bed.check("ca", &a, &conf, &r).expect_ok();
    bed.del("ca", Some(&a), &conf).expect_ok();
}

/// A conf-example, with the master and lease store of this test bed.
fn example(bed: &Bed, file: &str) -> Value {
    let path = cni_tests::workspace_dir().join("conf-examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let list: Value = serde_json::from_str(&text).expect("example is JSON");
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["master"] = json!("m0");
    conf["ipam"]["dataDir"] = json!(bed.data.path());
    conf
}

#[test]
fn conf_example_static() {
    let bed = Bed::new("exs");
    let (a, b, lan) = (Netns::new(), Netns::new(), Netns::new());
    bed.lan_peer(&lan, "192.168.1.1/24");
    let conf = example(&bed, "macvlan-static.conflist");
    let r = bed.add("ca", &a, &conf).expect_ok();
    assert_eq!(addr(&r), "192.168.1.200/24");
    assert_eq!(r["dns"]["nameservers"][0], "192.168.1.1");
    assert!(a.ip(&["route"]).contains("default via 192.168.1.1 dev eth0"));
    assert!(a.ping("192.168.1.1"));
    assert!(lan.ping("192.168.1.200"));
    bed.check("ca", &a, &conf, &r).expect_ok();
    // The one address is taken.
    assert!(!bed.add("cb", &b, &conf).success());
    assert!(b.links().is_empty());
    bed.del("ca", Some(&a), &conf).expect_ok();
    assert!(bed.leases_of("rsmacvlan-static").is_empty());
    bed.add("cb", &b, &conf).expect_ok();
}

#[test]
fn conf_example_range() {
    let bed = Bed::new("exr");
    let (a, b) = (Netns::new(), Netns::new());
    let conf = example(&bed, "macvlan-range.conflist");
    let ra = bed.add("ca", &a, &conf).expect_ok();
    let rb = bed.add("cb", &b, &conf).expect_ok();
    assert_eq!(addr(&ra), "192.168.1.100/24");
    assert_eq!(addr(&rb), "192.168.1.101/24");
    assert!(a.ping("192.168.1.101"));
    assert_eq!(bed.leases_of("rsmacvlan-range").len(), 2);
    bed.del("ca", Some(&a), &conf).expect_ok();
    bed.del("cb", Some(&b), &conf).expect_ok();
    assert!(bed.leases_of("rsmacvlan-range").is_empty());
}

#[test]
fn del_removes_what_an_add_killed_before_the_rename_left() {
    let bed = Bed::new("mvkill");
    let ctr = Netns::new();
    let conf = bed.conf(json!({}));
    // What an ADD killed between creating the macvlan and renaming it leaves.
    let tmp = cni::iface::temp_ifname("ck", "eth0");
    bed.host.ip(&[
        "link",
        "add",
        "link",
        "m0",
        "name",
        &tmp,
        "netns",
        ctr.name(),
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    bed.del("ck", Some(&ctr), &conf).expect_ok();
    assert!(
        !ctr.ip(&["-o", "link", "show"]).contains(&tmp),
        "temporary link left after DEL"
    );
    // And an ADD of the same attachment replaces a leftover.
    bed.host.ip(&[
        "link",
        "add",
        "link",
        "m0",
        "name",
        &tmp,
        "netns",
        ctr.name(),
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    bed.add("ck", &ctr, &conf).expect_ok();
    let links = ctr.ip(&["-o", "link", "show"]);
    assert!(links.contains("eth0") && !links.contains(&tmp), "{links}");
    bed.del("ck", Some(&ctr), &conf).expect_ok();
}
