//! The macvlan plugin, executed as a runtime would: each test has a private "host" namespace
//! whose veth pair m0/m1 is the master, and container namespaces of its own; everything is
//! removed when the test ends, passing or not. Needs root and `cargo build --workspace`.

mod macvlan_common;

use macvlan_common::{ip_of, Bed, Ns};
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
    let (a, b) = (Ns::new("br-a"), Ns::new("br-b"));
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
    assert_eq!(bed.host.links().len(), 2, "{:?}", bed.host.links());
}

#[test]
fn private_mode_containers_cannot_talk() {
    let bed = Bed::new("pv");
    let (a, b) = (Ns::new("pv-a"), Ns::new("pv-b"));
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
    let (a, b) = (Ns::new("pt-a"), Ns::new("pt-b"));
    let conf = bed.conf(json!({"mode": "passthru"}));
    bed.add("ca", &a, &conf).expect_ok();
    assert!(a.link_details("eth0").contains("macvlan mode passthru"));

    let out = bed.add("cb", &b, &conf);
    out.expect_code(103);
    assert!(
        out.msg().contains("master m0 already has a passthru macvlan"),
        "{}",
        out.msg()
    );
    // Nothing left behind: no link in B, no lease for B.
    assert!(b.links().is_empty(), "{:?}", b.links());
    assert_eq!(bed.leases().len(), 1, "{:?}", bed.leases());
    // A bridge-mode child is refused as well while the passthru one exists.
    let out = bed.add("cb", &b, &bed.conf(json!({})));
    out.expect_code(103);
    assert!(out.msg().contains("passthru"), "{}", out.msg());
    assert!(b.links().is_empty());
    assert_eq!(bed.leases().len(), 1);
}

#[test]
fn vepa_mode() {
    let bed = Bed::new("ve");
    let a = Ns::new("ve-a");
    bed.add("ca", &a, &bed.conf(json!({"mode": "vepa"}))).expect_ok();
    assert!(a.link_details("eth0").contains("macvlan mode vepa"));
}

#[test]
fn source_mode_with_its_allowed_macs() {
    let bed = Bed::new("so");
    let (a, lan) = (Ns::new("so-a"), Ns::new("so-l"));
    bed.host.ip(&["link", "set", "m1", "netns", &lan.name]);
    lan.ip(&["link", "set", "m1", "up"]);
    lan.ip(&["addr", "add", "10.77.0.254/24", "dev", "m1"]);
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
    // sourceMacs outside source mode, or source mode without them: code 7.
    let b = Ns::new("so-b");
    let out = bed.add("cb", &b, &bed.conf(json!({"mode": "source"})));
    out.expect_code(7);
    assert!(out.msg().contains("sourceMacs"), "{}", out.msg());
    let out = bed.add("cb", &b, &bed.conf(json!({"sourceMacs": [lan_mac]})));
    out.expect_code(7);
    assert!(b.links().is_empty());
}

/// The "dockerfly" case: a machine on the master's LAN reaches the container's own address
/// directly (its ARP table has the container's MAC: no NAT, no routing), and vice versa.
#[test]
fn lan_peer_and_container_reach_each_other_directly() {
    let bed = Bed::new("lan");
    let (a, lan) = (Ns::new("lan-a"), Ns::new("lan-l"));
    bed.host.ip(&["link", "set", "m1", "netns", &lan.name]);
    lan.ip(&["link", "set", "m1", "up"]);
    lan.ip(&["addr", "add", "10.77.0.254/24", "dev", "m1"]);
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
    let (a, b, c) = (Ns::new("st-a"), Ns::new("st-b"), Ns::new("st-c"));
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
        .run_if(
            "ADD",
            "cb",
            Some(&b),
            "eth0",
            "IgnoreUnknown=1;IP=10.77.0.51;MAC=02:00:00:aa:00:02",
            &conf,
        )
        .expect_ok();
    assert_eq!(addr(&r), "10.77.0.51/24");
    assert_eq!(b.mac("eth0"), "02:00:00:aa:00:02");

    // runtimeConfig.mac wins over both.
    let rc = bed.conf(json!({
        "mac": "02:00:00:aa:00:01",
        "runtimeConfig": {"mac": "02:00:00:aa:00:03"}
    }));
    bed.run_if(
        "ADD",
        "cc",
        Some(&c),
        "eth0",
        "IgnoreUnknown=1;MAC=02:00:00:aa:00:02",
        &rc,
    )
    .expect_ok();
    assert_eq!(c.mac("eth0"), "02:00:00:aa:00:03");
    assert_eq!(bed.leases().len(), 3);

    // A bad MAC is code 7 naming where it came from; nothing is made.
    let d = Ns::new("st-d");
    let out = bed.run_if("ADD", "cd", Some(&d), "eth0", "MAC=zz:00", &conf);
    out.expect_code(7);
    assert!(out.msg().contains("CNI_ARGS MAC"), "{}", out.msg());
    assert!(d.links().is_empty());
    assert_eq!(bed.leases().len(), 3);
}

#[test]
fn link_in_container() {
    let bed = Bed::new("lic");
    let a = Ns::new("lic-a");
    a.ip(&["link", "add", "c0", "type", "veth", "peer", "name", "c1"]);
    a.ip(&["link", "set", "c0", "up"]);
    a.ip(&["link", "set", "c1", "up"]);
    let conf = bed.conf(json!({"master": "c0", "linkInContainer": true}));
    let r = bed.run_if("ADD", "ca", Some(&a), "net1", "", &conf).expect_ok();
    let d = a.link_details("net1");
    assert!(d.contains("net1@c0"), "{d}");
    assert!(d.contains("macvlan mode bridge"), "{d}");
    assert_eq!(a.addrs4("net1"), vec![addr(&r)]);

    let mut cc = conf.clone();
    cc["prevResult"] = r.clone();
    bed.run_if("CHECK", "ca", Some(&a), "net1", "", &cc).expect_ok();

    // The master is looked for in the container, not in the host.
    let out = bed.run_if(
        "ADD",
        "cb",
        Some(&a),
        "net2",
        "",
        &bed.conf(json!({"master": "m0", "linkInContainer": true})),
    );
    out.expect_code(7);
    assert!(out.msg().contains("master"), "{}", out.msg());

    bed.run_if("DEL", "ca", Some(&a), "net1", "", &conf).expect_ok();
    assert!(!a.has_link("net1"));
    assert!(a.has_link("c0"));
    assert!(bed.leases().is_empty());
}

#[test]
fn mtu_is_checked_against_the_master() {
    let bed = Bed::new("mtu");
    let a = Ns::new("mtu-a");
    let out = bed.add("ca", &a, &bed.conf(json!({"mtu": 9000})));
    out.expect_code(7);
    assert!(out.msg().contains("mtu"), "{}", out.msg());
    assert!(a.links().is_empty());
    assert!(bed.leases().is_empty());
    bed.add("ca", &a, &bed.conf(json!({"mtu": -5}))).expect_code(7);

    let r = bed.add("ca", &a, &bed.conf(json!({"mtu": 1400}))).expect_ok();
    assert!(a.link_details("eth0").contains("mtu 1400"));
    assert_eq!(r["interfaces"][0]["sandbox"], a.path());
}

#[test]
fn missing_master_and_default_master() {
    let bed = Bed::new("mm");
    let a = Ns::new("mm-a");
    let out = bed.add("ca", &a, &bed.conf(json!({"master": "nosuch0"})));
    out.expect_code(7);
    assert!(
        out.msg().contains("master") && out.msg().contains("nosuch0"),
        "{}",
        out.msg()
    );
    assert!(a.links().is_empty());
    assert!(bed.leases().is_empty());

    // No master and no default route: code 7 naming the key.
    let no_master = bed.conf(json!({"master": null}));
    let out = bed.add("ca", &a, &no_master);
    out.expect_code(7);
    assert!(out.msg().contains("\"master\""), "{}", out.msg());
    assert!(a.links().is_empty());

    // No master: the default route's interface.
    bed.host.ip(&["addr", "add", "10.77.0.2/24", "dev", "m0"]);
    bed.host
        .ip(&["route", "add", "default", "via", "10.77.0.1", "dev", "m0"]);
    let r = bed.add("ca", &a, &no_master).expect_ok();
    bed.check("ca", &a, &no_master, &r).expect_ok();
    // The container's macvlan is on m0: the host reaches the LAN side, not the macvlan (a
    // macvlan and its master never talk), so look at the link instead.
    let m0 = bed.host.ip(&["-o", "link", "show", "dev", "m0"]);
    let m0_index = m0.split(':').next().unwrap().trim().to_string();
    assert!(
        a.link_details("eth0").contains(&format!("eth0@if{m0_index}")),
        "{}",
        a.link_details("eth0")
    );
}

#[test]
fn host_eth0_does_not_get_in_the_way() {
    let bed = Bed::new("he");
    bed.host
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let a = Ns::new("he-a");
    bed.add("ca", &a, &bed.conf(json!({}))).expect_ok();
    assert!(a.has_link("eth0"));
    assert!(bed.host.has_link("eth0"));
    // And an existing eth0 in the container is a clear error, with nothing left behind.
    let b = Ns::new("he-b");
    b.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x1"]);
    let out = bed.add("cb", &b, &bed.conf(json!({})));
    out.expect_code(103);
    assert!(out.msg().contains("already exists"), "{}", out.msg());
    let mut links = b.links();
    links.sort();
    assert_eq!(links, vec!["eth0", "x1"]);
    assert_eq!(bed.leases().len(), 1);
}

#[test]
fn without_ipam_the_interface_is_up_with_no_address() {
    let bed = Bed::new("l2");
    let a = Ns::new("l2-a");
    let conf = bed.conf(json!({"ipam": null, "dns": {"nameservers": ["10.77.0.1"]}}));
    let r = bed.add("ca", &a, &conf).expect_ok();
    assert!(r.get("ips").is_none(), "{r}");
    assert_eq!(r["dns"]["nameservers"][0], "10.77.0.1");
    assert!(a.addrs4("eth0").is_empty());
    let l = a.ip(&["link", "show", "dev", "eth0"]);
    assert!(l.contains(",UP") || l.contains("<UP"), "{l}");
    let lo = a.ip(&["link", "show", "dev", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    bed.check("ca", &a, &conf, &r).expect_ok();
    bed.del("ca", Some(&a), &conf).expect_ok();
    assert!(a.links().is_empty());
}

#[test]
fn del_removes_link_and_lease_and_can_repeat() {
    let bed = Bed::new("del");
    let a = Ns::new("del-a");
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
    let mut a = Ns::new("gone-a");
    let conf = bed.conf(json!({}));
    bed.add("ca", &a, &conf).expect_ok();
    let path = a.path();
    a.delete();
    let out = macvlan_common::run_plugin(
        &bed.host,
        "macvlan",
        &macvlan_common::Call {
            command: "DEL",
            container_id: "ca",
            netns: Some(path),
            ifname: "eth0",
            args: "",
        },
        &conf,
    );
    out.expect_ok();
    assert!(bed.leases().is_empty());
    // The master is untouched.
    assert!(bed.host.has_link("m0"));
}

#[test]
fn check_passes_after_add_and_fails_when_the_address_is_gone() {
    let bed = Bed::new("chk");
    let a = Ns::new("chk-a");
    let conf = bed.conf(json!({"ipam": {"routes": [{"dst": "10.200.0.0/16"}]}}));
    let r = bed.add("ca", &a, &conf).expect_ok();
    bed.check("ca", &a, &conf, &r).expect_ok();

    // Without prevResult: an error.
    bed.run("CHECK", "ca", Some(&a), &conf).expect_code(7);
    // Another mode than the link's.
    bed.check("ca", &a, &bed.conf(json!({"mode": "vepa"})), &r)
        .expect_code(104);
    // A MAC that is not the link's.
    let mut other = r.clone();
    other["interfaces"][0]["mac"] = json!("02:00:00:00:00:99");
    bed.check("ca", &a, &conf, &other).expect_code(104);
    // The route removed.
    a.ip(&["route", "del", "10.200.0.0/16"]);
    bed.check("ca", &a, &conf, &r).expect_code(104);
    a.ip(&["route", "add", "10.200.0.0/16", "via", "10.77.0.1", "dev", "eth0"]);
    bed.check("ca", &a, &conf, &r).expect_ok();
    // The address removed.
    a.ip(&["addr", "del", &addr(&r), "dev", "eth0"]);
    let out = bed.check("ca", &a, &conf, &r);
    out.expect_code(104);
    assert!(out.msg().contains(&addr(&r)), "{}", out.msg());
}

#[test]
fn failed_add_leaves_no_link_and_no_lease() {
    let bed = Bed::new("fail");
    let (a, b) = (Ns::new("fail-a"), Ns::new("fail-b"));
    // One address in the range: the second ADD fails in IPAM.
    let conf = bed.conf(json!({"ipam": {"ranges": [[{
        "subnet": "10.77.0.0/24", "rangeStart": "10.77.0.10", "rangeEnd": "10.77.0.10"
    }]]}}));
    bed.add("ca", &a, &conf).expect_ok();
    let out = bed.add("cb", &b, &conf);
    assert!(!out.ok, "{}", out.json);
    assert!(b.links().is_empty(), "{:?}", b.links());
    assert_eq!(bed.leases(), vec!["10.77.0.10"]);

    // A failure after IPAM (a route the kernel refuses): the lease is released too.
    let conf = bed.conf(json!({
        "name": "mvnet-fail2",
        "ipam": {"routes": [{"dst": "10.200.0.0/16", "gw": "10.99.99.1"}]}
    }));
    let out = bed.add("cb", &b, &conf);
    assert!(!out.ok, "{}", out.json);
    assert!(out.msg().contains("10.200.0.0/16"), "{}", out.msg());
    assert!(b.links().is_empty(), "{:?}", b.links());
    assert!(bed.leases_of("mvnet-fail2").is_empty());
}

#[test]
fn bad_mode_is_code_7() {
    let bed = Bed::new("bm");
    let a = Ns::new("bm-a");
    let out = bed.add("ca", &a, &bed.conf(json!({"mode": "turbo"})));
    out.expect_code(7);
    assert!(out.msg().contains("mode"), "{}", out.msg());
    assert!(a.links().is_empty());
}

#[test]
fn status_and_gc() {
    let bed = Bed::new("sg");
    let l2 = bed.conf(json!({"cniVersion": "1.1.0", "ipam": null}));
    bed.run("STATUS", "", None, &l2).expect_ok();
    let out = bed.run(
        "STATUS",
        "",
        None,
        &bed.conf(json!({"cniVersion": "1.1.0", "ipam": null, "master": "nosuch0"})),
    );
    out.expect_code(50);
    assert!(out.msg().contains("nosuch0"), "{}", out.msg());
    bed.run("GC", "", None, &l2).expect_ok();

    if !macvlan_common::our_host_local() {
        eprintln!("skipping GC/STATUS through IPAM: our host-local is not built");
        return;
    }
    let a = Ns::new("sg-a");
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
    let a = Ns::new("ver-a");
    let conf = bed.conf(json!({"cniVersion": "0.4.0"}));
    let r = bed.add("ca", &a, &conf).expect_ok();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    bed.check("ca", &a, &conf, &r).expect_ok();
    bed.del("ca", Some(&a), &conf).expect_ok();
}

/// The conf-examples, with the master and lease store of this test bed.
fn example(bed: &Bed, file: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf-examples/");
    let text = std::fs::read_to_string(format!("{path}{file}")).expect("reading the example");
    let list: Value = serde_json::from_str(&text).expect("example is JSON");
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["master"] = json!("m0");
    conf["ipam"]["dataDir"] = json!(bed.data.0.to_str().unwrap());
    conf
}

#[test]
fn conf_example_static() {
    let bed = Bed::new("exs");
    let (a, b, lan) = (Ns::new("exs-a"), Ns::new("exs-b"), Ns::new("exs-l"));
    bed.host.ip(&["link", "set", "m1", "netns", &lan.name]);
    lan.ip(&["link", "set", "m1", "up"]);
    lan.ip(&["addr", "add", "192.168.1.1/24", "dev", "m1"]);
    let conf = example(&bed, "macvlan-static.conflist");
    let r = bed.add("ca", &a, &conf).expect_ok();
    assert_eq!(addr(&r), "192.168.1.200/24");
    assert_eq!(r["dns"]["nameservers"][0], "192.168.1.1");
    assert!(a.ip(&["route"]).contains("default via 192.168.1.1 dev eth0"));
    assert!(a.ping("192.168.1.1"));
    assert!(lan.ping("192.168.1.200"));
    bed.check("ca", &a, &conf, &r).expect_ok();
    // The one address is taken.
    assert!(!bed.add("cb", &b, &conf).ok);
    assert!(b.links().is_empty());
    bed.del("ca", Some(&a), &conf).expect_ok();
    assert!(bed.leases_of("rsmacvlan-static").is_empty());
    bed.add("cb", &b, &conf).expect_ok();
}

#[test]
fn conf_example_range() {
    let bed = Bed::new("exr");
    let (a, b) = (Ns::new("exr-a"), Ns::new("exr-b"));
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
