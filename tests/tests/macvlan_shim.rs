//! macvlan `hostShim`: the host reaches its own containers through a macvlan of its own on the
//! master. Each test has a private "host" namespace whose master `m0` is a veth into a "LAN"
//! namespace (or into nothing), with the host's own address on `m0`; everything is removed
//! when the test ends, passing or not (the namespaces, and the records under
//! /run/cni-rs/macvlan-shim/<network> of the test's unique network). Needs root and
//! `cargo build --workspace`.

mod macvlan_common;

use cni_tests::{unique_name, Netns};
use macvlan_common::{ip_of, Bed, NsExt};
use serde_json::{json, Value};

/// The route protocol and record directory of the plugin (documented in the README).
const PROTO: &str = "109";
const STATE_DIR: &str = "/run/cni-rs/macvlan-shim";

/// The metric of an attachment's host routes, as the README documents it: FNV-1a 32 over
/// network, container id and ifname, NUL-separated (never 0).
fn metric(network: &str, id: &str, ifname: &str) -> u32 {
    cni::ids::fnv1a32(&[network.as_bytes(), id.as_bytes(), ifname.as_bytes()]).max(1)
}

/// A test bed with a network name of its own (the records are keyed by it) whose records are
/// removed on drop.
struct ShimBed {
    bed: Bed,
    net: String,
}

impl ShimBed {
    /// `m0` with the host's 10.77.0.2/24 and fd77::2/64 on it.
    fn new(tag: &str) -> ShimBed {
        let bed = Bed::new(tag);
        bed.host.ip(&["addr", "add", "10.77.0.2/24", "dev", "m0"]);
        bed.host.ip(&["-6", "addr", "add", "fd77::2/64", "dev", "m0", "nodad"]);
        ShimBed {
            bed,
            net: unique_name("mvshim"),
        }
    }

    /// The bed's config with `hostShim` on, this bed's network name and addresses from
    /// 10.77.0.100 on (the host has .2), `extra` merged in.
    fn conf(&self, extra: Value) -> Value {
        let mut c = self
            .bed
            .conf(json!({"name": self.net, "hostShim": true, "ipam": {"ranges": [
                [{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.100", "gateway": "10.77.0.1"}]
            ]}}));
        cni_tests::merge(&mut c, extra);
        c
    }

    /// A dual-stack config: 10.77.0.0/24 and fd77::/64.
    fn conf6(&self, extra: Value) -> Value {
        let mut c = self.conf(json!({"ipam": {"ranges": [
            [{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.100", "gateway": "10.77.0.1"}],
            [{"subnet": "fd77::/64", "rangeStart": "fd77::100", "gateway": "fd77::1"}]
        ]}}));
        cni_tests::merge(&mut c, extra);
        c
    }

    fn host(&self) -> &Netns {
        &self.bed.host
    }

    /// Our routes in the host: `ip route show table all proto 109`, both families.
    fn our_routes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            out.extend(
                self.host()
                    .ip(&[fam, "route", "show", "table", "all", "proto", PROTO])
                    .lines()
                    .map(str::to_string),
            );
        }
        out
    }

    /// The host's links, addresses, routes (every table) and proxy neighbours, once IPv6 DAD
    /// of the host's addresses is over.
    fn snapshot(&self) -> String {
        let h = self.host();
        // IPv6 DAD of the host's links ends with a route in table local: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !h.ip(&["-6", "addr", "show", "tentative"]).trim().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "IPv6 DAD in the host does not end"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        [
            h.ip(&["-o", "link", "show"]),
            h.ip(&["-o", "addr", "show"]),
            h.ip(&["-4", "route", "show", "table", "all"]),
            h.ip(&["-6", "route", "show", "table", "all"]),
            h.ip(&["-6", "neigh", "show", "proxy"]),
        ]
        .join("\n")
    }

    fn has_shim(&self) -> bool {
        self.host().has_link("mvsh-m0")
    }

    fn records(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(format!("{STATE_DIR}/{}", self.net)) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for ShimBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("{STATE_DIR}/{}", self.net));
    }
}

fn addr(result: &Value, i: usize) -> String {
    result["ips"][i]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[{i}].address in {result}"))
        .to_string()
}

/// One ping, no retries: for what must fail.
fn no_ping(ns: &Netns, target: &str) -> bool {
    !ns.exec_ok(&["ping", "-c1", "-W1", target])
}

#[test]
fn without_the_shim_the_host_cannot_reach_its_container_with_it_it_can() {
    let sb = ShimBed::new("shl");
    let (a, b, lan) = (Netns::new(), Netns::new(), Netns::new());
    sb.bed.lan_peer(&lan, "10.77.0.254/24");
    let before = sb.snapshot();

    // Off (the default): the LAN reaches the container, its own host does not.
    let plain = sb.conf(json!({"hostShim": null}));
    let ra = sb.bed.add("ca", &a, &plain).expect_ok();
    let aip = ip_of(&addr(&ra, 0));
    assert!(lan.ping(&aip), "LAN cannot reach the container");
    assert!(
        no_ping(sb.host(), &aip),
        "the host reached its container without the shim"
    );
    assert!(!sb.has_shim());
    assert!(sb.our_routes().is_empty());
    sb.bed.del("ca", Some(&a), &plain).expect_ok();

    // On: the host reaches the container and the container the host's address on the master.
    let conf = sb.conf(json!({}));
    let rb = sb.bed.add("cb", &b, &conf).expect_ok();
    let bip = ip_of(&addr(&rb, 0));
    assert!(
        sb.host().ping(&bip),
        "the host cannot reach its container through the shim"
    );
    assert!(
        b.ping("10.77.0.2"),
        "the container cannot reach the host's address on the master"
    );
    assert!(lan.ping(&bip), "LAN cannot reach the container");
    assert!(b.ping("10.77.0.254"), "the container cannot reach the LAN");

    // The shim: a bridge-mode macvlan on m0 with our alias, up; the route: ours, marked.
    let d = sb.host().link_details("mvsh-m0");
    assert!(d.contains("mvsh-m0@m0") && d.contains("macvlan mode bridge"), "{d}");
    assert!(d.contains("alias cni-rs macvlan hostShim"), "{d}");
    assert!(d.contains(",UP") || d.contains("<UP"), "{d}");
    let m = metric(&sb.net, "cb", "eth0");
    assert_eq!(
        sb.our_routes(),
        vec![format!("{bip} dev mvsh-m0 scope link src 10.77.0.2 metric {m} ")],
    );
    assert_eq!(sb.records(), vec![format!("{m:08x}")]);
    // The LAN still sees the host's address at the master's MAC (the shim answers ARP only
    // for those it routes to).
    assert!(lan.ping("10.77.0.2"));
    let neigh = lan.ip(&["neigh", "show", "10.77.0.2"]);
    assert!(neigh.contains(&sb.host().mac("m0")), "{neigh}");

    // CHECK sees the route, and its absence.
    sb.bed.check("cb", &b, &conf, &rb).expect_ok();
    sb.host().ip(&["route", "del", &bip, "dev", "mvsh-m0", "proto", PROTO]);
    let msg = sb.bed.check("cb", &b, &conf, &rb).expect_error(104);
    assert!(msg.contains("hostShim") && msg.contains(&bip), "{msg}");

    sb.bed.del("cb", Some(&b), &conf).expect_ok();
    assert_eq!(sb.snapshot(), before, "the host is not as before");
    assert!(sb.records().is_empty());
    sb.bed.del("cb", Some(&b), &conf).expect_ok();
}

#[test]
fn dual_stack_the_host_and_container_reach_each_other_over_ipv6_too() {
    let sb = ShimBed::new("sh6");
    let (a, lan) = (Netns::new(), Netns::new());
    sb.bed.lan_peer(&lan, "10.77.0.254/24");
    lan.ip(&["-6", "addr", "add", "fd77::fe/64", "dev", "m1", "nodad"]);
    let before = sb.snapshot();
    let conf = sb.conf6(json!({}));
    let r = sb.bed.add("ca", &a, &conf).expect_ok();
    let (v4, v6) = (ip_of(&addr(&r, 0)), ip_of(&addr(&r, 1)));
    assert!(v6.starts_with("fd77::"), "{r}");
    assert!(sb.host().ping(&v4));
    assert!(sb.host().ping(&v6), "the host cannot reach the container over IPv6");
    assert!(
        a.ping("fd77::2"),
        "the container cannot reach the host's IPv6 address on the master"
    );
    assert!(lan.ping(&v6));
    let m = metric(&sb.net, "ca", "eth0");
    let routes = sb.our_routes();
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert!(
        routes[1].starts_with(&format!("{v6} dev mvsh-m0 src fd77::2 metric {m} ")),
        "{routes:?}"
    );
    // The shim has no address of its own but its link-local one.
    let addrs = sb.host().ip(&["-o", "addr", "show", "dev", "mvsh-m0"]);
    assert!(!addrs.contains("inet ") && !addrs.contains("scope global"), "{addrs}");
    sb.bed.check("ca", &a, &conf, &r).expect_ok();
    sb.bed.del("ca", Some(&a), &conf).expect_ok();
    assert_eq!(sb.snapshot(), before, "the host is not as before");
}

#[test]
fn two_containers_share_one_shim_and_deleting_both_leaves_the_host_as_before() {
    let sb = ShimBed::new("sh2");
    let (a, b, lan) = (Netns::new(), Netns::new(), Netns::new());
    sb.bed.lan_peer(&lan, "10.77.0.254/24");
    let before = sb.snapshot();
    let conf = sb.conf(json!({}));
    let ra = sb.bed.add("ca", &a, &conf).expect_ok();
    let rb = sb.bed.add("cb", &b, &conf).expect_ok();
    let (aip, bip) = (ip_of(&addr(&ra, 0)), ip_of(&addr(&rb, 0)));
    let macvlans = sb.host().ip(&["-o", "link", "show", "type", "macvlan"]);
    assert_eq!(macvlans.lines().count(), 1, "{macvlans}");
    assert_eq!(sb.our_routes().len(), 2, "{:?}", sb.our_routes());
    assert!(sb.host().ping(&aip) && sb.host().ping(&bip));
    assert!(a.ping(&bip), "the containers cannot reach each other");

    // DEL of one: its route goes, the shim and the other's route stay.
    sb.bed.del("ca", Some(&a), &conf).expect_ok();
    let routes = sb.our_routes();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(routes[0].starts_with(&format!("{bip} ")), "{routes:?}");
    assert!(sb.has_shim());
    assert!(sb.host().ping(&bip), "the other container is no longer reachable");
    assert!(b.ping("10.77.0.2"));
    sb.bed.check("cb", &b, &conf, &rb).expect_ok();

    // DEL of the last: the host exactly as before.
    sb.bed.del("cb", Some(&b), &conf).expect_ok();
    assert!(!sb.has_shim());
    assert_eq!(sb.snapshot(), before, "the host is not as before");
    assert!(sb.records().is_empty());
}

#[test]
fn refused_where_it_cannot_work_and_nothing_is_made() {
    let sb = ShimBed::new("shr");
    let a = Netns::new();
    for extra in [
        json!({"mode": "private"}),
        json!({"mode": "vepa"}),
        json!({"mode": "passthru"}),
        json!({"mode": "source", "sourceMacs": ["02:00:00:00:00:01"]}),
        json!({"linkInContainer": true}),
        json!({"ipam": null}),
    ] {
        let msg = sb.bed.add("ca", &a, &sb.conf(extra.clone())).expect_error(7);
        assert!(msg.contains("hostShim"), "{extra}: {msg}");
        assert!(a.links().is_empty(), "{extra}");
    }
    assert!(!sb.has_shim());
    assert!(sb.bed.leases_of(&sb.net).is_empty());
    assert!(sb.our_routes().is_empty());
}

#[test]
fn failed_add_leaves_no_route_and_no_new_shim() {
    let sb = ShimBed::new("shf");
    let (a, b) = (Netns::new(), Netns::new());
    let before = sb.snapshot();

    // A failure before the host routes (a route the container's kernel refuses).
    let bad = sb.conf(json!({"ipam": {"routes": [{"dst": "10.200.0.0/16", "gw": "10.99.99.1"}]}}));
    assert!(!sb.bed.add("cb", &b, &bad).success());
    assert_eq!(sb.snapshot(), before);
    assert!(b.links().is_empty());

    // A failure among the host routes, after the first one was made: the host already has a
    // route of its own to the container's IPv6 address with the attachment's metric.
    let m = metric(&sb.net, "cb", "eth0").to_string();
    sb.host()
        .ip(&["-6", "route", "add", "fd77::50/128", "dev", "m0", "metric", &m]);
    let with_foreign = sb.snapshot();
    let conf = sb.conf6(json!({"args": {"cni": {"ips": ["10.77.0.50", "fd77::50"]}}}));
    let out = sb.bed.add("cb", &b, &conf);
    assert!(!out.success(), "{}", out.raw_stdout);
    assert!(out.error_msg().contains("fd77::50"), "{}", out.error_msg());
    assert_eq!(
        sb.snapshot(),
        with_foreign,
        "the failed ADD left something, or took the host's route"
    );
    assert!(b.links().is_empty());
    assert!(sb.bed.leases_of(&sb.net).is_empty());
    assert!(sb.records().is_empty());

    // With a container on the shim already, a failed ADD keeps the shim and its route.
    let ra = sb.bed.add("ca", &a, &sb.conf6(json!({}))).expect_ok();
    assert!(!sb.bed.add("cb", &b, &conf).success());
    assert!(sb.has_shim());
    assert_eq!(sb.our_routes().len(), 2, "{:?}", sb.our_routes());
    assert!(sb.host().ping(&ip_of(&addr(&ra, 0))));

    // A link of the shim's name that is not ours: a conflict, and it is left alone.
    let sb2 = ShimBed::new("shf2");
    sb2.host()
        .ip(&["link", "add", "mvsh-m0", "type", "veth", "peer", "name", "x1"]);
    let before2 = sb2.snapshot();
    let msg = sb2.bed.add("cc", &Netns::new(), &sb2.conf(json!({}))).expect_error(103);
    assert!(msg.contains("mvsh-m0"), "{msg}");
    assert_eq!(sb2.snapshot(), before2);
    // STATUS says so (and says nothing without hostShim).
    let status = sb2.conf(json!({"cniVersion": "1.1.0", "ipam": null}));
    let msg = sb2.bed.run("STATUS", "", None, &status).expect_error(7);
    assert!(msg.contains("ipam"), "{msg}");
    if macvlan_common::our_host_local() {
        let status = sb2.conf(json!({"cniVersion": "1.1.0"}));
        let msg = sb2.bed.run("STATUS", "", None, &status).expect_error(50);
        assert!(msg.contains("mvsh-m0"), "{msg}");
        sb2.bed
            .run(
                "STATUS",
                "",
                None,
                &sb2.conf(json!({"cniVersion": "1.1.0", "hostShim": false})),
            )
            .expect_ok();
    }
}

#[test]
fn del_with_the_netns_gone_and_after_a_killed_add_leaves_no_route() {
    let sb = ShimBed::new("shk");
    let before = sb.snapshot();
    let conf = sb.conf(json!({}));

    // DEL with the namespace gone.
    let a = Netns::new();
    let r = sb.bed.add("ca", &a, &conf).expect_ok();
    assert!(sb.host().ping(&ip_of(&addr(&r, 0))));
    let path = a.path();
    drop(a);
    sb.bed.call("DEL", "ca", Some(&path), &conf).run().expect_ok();
    assert_eq!(sb.snapshot(), before);
    assert!(sb.records().is_empty());
    assert!(sb.bed.leases_of(&sb.net).is_empty());
    sb.bed.call("DEL", "ca", Some(&path), &conf).run().expect_ok();

    // What an ADD killed right after its host route leaves: the shim, the route, no result.
    // (Laid down by hand, as the plugin makes them: a bridge macvlan on m0, a route of
    // protocol 109 with the attachment's metric.) DEL without a namespace removes both.
    sb.host().ip(&[
        "link", "add", "link", "m0", "name", "mvsh-m0", "type", "macvlan", "mode", "bridge",
    ]);
    sb.host().ip(&["link", "set", "mvsh-m0", "up"]);
    let m = metric(&sb.net, "ck", "eth0").to_string();
    sb.host().ip(&[
        "route",
        "add",
        "10.77.0.9/32",
        "dev",
        "mvsh-m0",
        "proto",
        PROTO,
        "metric",
        &m,
    ]);
    // A route of the host's own through the same shim name is not ours: another attachment
    // (other metric) keeps its route.
    let other = metric(&sb.net, "cother", "eth0").to_string();
    sb.host().ip(&[
        "route",
        "add",
        "10.77.0.10/32",
        "dev",
        "mvsh-m0",
        "proto",
        PROTO,
        "metric",
        &other,
    ]);
    sb.bed.del("ck", None, &conf).expect_ok();
    let routes = sb.our_routes();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(routes[0].starts_with("10.77.0.10 "), "{routes:?}");
    assert!(
        sb.has_shim(),
        "the shim went while a route of another attachment uses it"
    );
    sb.bed.del("cother", None, &conf).expect_ok();
    assert_eq!(sb.snapshot(), before);

    // A real ADD, killed as soon as its host route exists (or when it is done): DEL cleans up.
    let b = Netns::new();
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", sb.host().name()])
        .arg(cni_tests::bin("macvlan"))
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ckill"),
            ("CNI_NETNS", &b.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &cni_tests::bin_dir().to_string_lossy()),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning macvlan");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sb.our_routes().is_empty() && child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let _ = child.kill();
    let _ = child.wait();
    sb.bed.del("ckill", Some(&b), &conf).expect_ok();
    assert_eq!(sb.snapshot(), before, "the killed ADD left something after DEL");
    assert!(sb.records().is_empty());
}

#[test]
fn gc_removes_the_routes_of_attachments_no_longer_valid_and_only_of_its_network() {
    if !macvlan_common::our_host_local() {
        eprintln!("skipping: GC needs our host-local (spec 1.1.0)");
        return;
    }
    let sb = ShimBed::new("shg");
    let (a, b, c) = (Netns::new(), Netns::new(), Netns::new());
    let conf = sb.conf(json!({"cniVersion": "1.1.0"}));
    // Another network on the same master (and so the same shim).
    let net2 = unique_name("mvshim");
    sb.host().ip(&["addr", "add", "10.78.0.2/24", "dev", "m0"]);
    let before = sb.snapshot();
    let conf2 = sb.conf(json!({"cniVersion": "1.1.0", "name": net2, "ipam": {"ranges": [[
        {"subnet": "10.78.0.0/24", "rangeStart": "10.78.0.100"}
    ]]}}));
    let _records2 = RecordsGuard(net2.clone());
    sb.bed.add("ca", &a, &conf).expect_ok();
    let rb = sb.bed.add("cb", &b, &conf).expect_ok();
    let rc = sb.bed.add("cc", &c, &conf2).expect_ok();
    assert_eq!(sb.our_routes().len(), 3);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "cb", "ifname": "eth0"}]);
    sb.bed.run("GC", "", None, &gc).expect_ok();
    let routes = sb.our_routes();
    assert_eq!(routes.len(), 2, "{routes:?}");
    let bip = ip_of(&addr(&rb, 0));
    let cip = ip_of(&addr(&rc, 0));
    assert!(routes.iter().any(|r| r.starts_with(&format!("{bip} "))), "{routes:?}");
    assert!(routes.iter().any(|r| r.starts_with(&format!("{cip} "))), "{routes:?}");
    assert_eq!(sb.records(), vec![format!("{:08x}", metric(&sb.net, "cb", "eth0"))]);
    assert!(sb.host().ping(&bip));

    // Nothing valid in this network: its routes go, the other network's stays (so does the shim).
    gc["cni.dev/valid-attachments"] = json!([]);
    sb.bed.run("GC", "", None, &gc).expect_ok();
    let routes = sb.our_routes();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(routes[0].starts_with(&format!("{cip} ")), "{routes:?}");
    assert!(sb.host().ping(&cip));
    // And the other network's GC takes the last one, and the shim.
    let mut gc2 = conf2.clone();
    gc2["cni.dev/valid-attachments"] = json!([]);
    sb.bed.run("GC", "", None, &gc2).expect_ok();
    assert_eq!(sb.snapshot(), before);
}

/// Removes the records of network `.0` on drop.
struct RecordsGuard(String);

impl Drop for RecordsGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("{STATE_DIR}/{}", self.0));
    }
}

/// conf-examples/macvlan-hostshim.conflist, with this bed's master and lease store.
#[test]
fn conf_example_host_shim() {
    let sb = ShimBed::new("shx");
    let (a, lan) = (Netns::new(), Netns::new());
    sb.bed.lan_peer(&lan, "10.77.0.254/24");
    // The example's network: 192.168.1.0/24 with the host at .10.
    sb.host().ip(&["addr", "flush", "dev", "m0"]);
    sb.host().ip(&["addr", "add", "192.168.1.10/24", "dev", "m0"]);
    lan.ip(&["addr", "add", "192.168.1.1/24", "dev", "m1"]);
    let path = cni_tests::workspace_dir().join("conf-examples/macvlan-hostshim.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("reading the example")).unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = json!(sb.net);
    conf["master"] = json!("m0");
    conf["ipam"]["dataDir"] = json!(sb.bed.data.path());
    assert_eq!(conf["hostShim"], true);
    let r = sb.bed.add("ca", &a, &conf).expect_ok();
    let cip = ip_of(&addr(&r, 0));
    assert_eq!(cip, "192.168.1.100");
    assert!(sb.host().ping(&cip));
    assert!(a.ping("192.168.1.10"));
    assert!(a.ping("192.168.1.1"));
    assert!(lan.ping(&cip));
    sb.bed.check("ca", &a, &conf, &r).expect_ok();
    sb.bed.del("ca", Some(&a), &conf).expect_ok();
    assert!(!sb.has_shim());
    assert!(sb.our_routes().is_empty());
}

/// Many ADDs and DELs at once on one master: one shim, every route, and in the end the host
/// as before (the lock keeps a DEL that removes the shim from racing an ADD that uses it).
#[test]
fn concurrent_adds_and_dels_share_the_shim_safely() {
    let sb = ShimBed::new("shc");
    let before = sb.snapshot();
    let conf = sb.conf(json!({}));
    let ns: Vec<Netns> = (0..8).map(|_| Netns::new()).collect();
    let id = |i: usize| format!("cc{i}");
    let run_all = |cmd: &str, which: &[usize]| {
        let running: Vec<_> = which
            .iter()
            .map(|&i| (i, sb.bed.call(cmd, &id(i), Some(&ns[i].path()), &conf).spawn()))
            .collect();
        let mut out = Vec::new();
        for (i, r) in running {
            out.push((i, r.wait()));
        }
        out
    };
    let mut ips = std::collections::BTreeMap::new();
    for (i, o) in run_all("ADD", &[0, 1, 2, 3]) {
        ips.insert(i, ip_of(&addr(&o.expect_ok(), 0)));
    }
    assert_eq!(sb.our_routes().len(), 4, "{:?}", sb.our_routes());
    // Half go while as many come: the shim must stay and serve the newcomers.
    let dels = std::thread::scope(|s| {
        let d = s.spawn(|| run_all("DEL", &[0, 1, 2, 3]));
        let a = run_all("ADD", &[4, 5, 6, 7]);
        for (i, o) in a {
            ips.insert(i, ip_of(&addr(&o.expect_ok(), 0)));
        }
        d.join().unwrap()
    });
    for (_, o) in dels {
        o.expect_ok();
    }
    assert_eq!(sb.our_routes().len(), 4, "{:?}", sb.our_routes());
    for i in 4..8 {
        assert!(sb.host().ping(&ips[&i]), "the host cannot reach container {i}");
    }
    for (_, o) in run_all("DEL", &[4, 5, 6, 7]) {
        o.expect_ok();
    }
    assert_eq!(sb.snapshot(), before, "the host is not as before");
    assert!(sb.records().is_empty());
}

/// The master's IPv6 address still in duplicate address detection (a host just booted): the
/// IPv6 route goes without a source, and the host still reaches the container (from the
/// shim's link-local address).
#[test]
fn a_tentative_master_address_is_no_source_and_the_host_still_reaches_the_container() {
    let sb = ShimBed::new("sht");
    let (a, lan) = (Netns::new(), Netns::new());
    sb.bed.lan_peer(&lan, "10.77.0.254/24");
    // DAD of 60 probes, a second apart: tentative for the whole test.
    sb.host().exec(&["sysctl", "-qw", "net.ipv6.conf.m0.dad_transmits=60"]);
    sb.host().ip(&["-6", "addr", "add", "fd77::3/64", "dev", "m0"]);
    sb.host().ip(&["-6", "addr", "del", "fd77::2/64", "dev", "m0"]);
    let addrs = sb.host().ip(&["-6", "addr", "show", "dev", "m0", "tentative"]);
    assert!(addrs.contains("fd77::3"), "{addrs}");
    let conf = sb.conf6(json!({}));
    let r = sb.bed.add("ca", &a, &conf).expect_ok();
    let v6 = ip_of(&addr(&r, 1));
    let routes = sb.our_routes();
    assert!(
        routes
            .iter()
            .any(|l| l.starts_with(&format!("{v6} dev mvsh-m0 metric "))),
        "{routes:?}"
    );
    // The shim is new: its link-local address, the source here, goes through DAD first (about
    // a second); until then the host has no IPv6 source for this route at all.
    cni_tests::eventually(
        std::time::Duration::from_secs(10),
        "the shim's link-local address leaves DAD",
        || {
            let out = sb.host().ip(&["-6", "addr", "show", "dev", "mvsh-m0"]);
            out.contains("fe80::") && !out.contains("tentative")
        },
    );
    assert!(sb.host().ping(&v6), "the host cannot reach the container over IPv6");
    sb.bed.check("ca", &a, &conf, &r).expect_ok();
    sb.bed.del("ca", Some(&a), &conf).expect_ok();
    assert!(sb.our_routes().is_empty());
    assert!(!sb.has_shim());
}
