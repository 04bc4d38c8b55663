//! host-local on the etcd lease store (issue 12): each test starts its own 3-member etcd
//! cluster on 127.0.0.1 (free ports, temp data dirs), stopped by pid at the end. Every "host"
//! has its own host name (a private UTS namespace) and data dir; host-local touches no
//! interface, so for the store-only tests it runs in this namespace, where the members listen.

mod macvlan_common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use cni_tests::etcd::{make_certs, Cluster};
use cni_tests::{bin, concurrent_adds_of_one_attachment, is_root, unique_name, Cni, Output, SameAttachment, TempDir};
use serde_json::{json, Value};

/// One "host": its host name and data dir.
struct Host {
    name: String,
    data: TempDir,
}

impl Host {
    fn new(tag: &str) -> Host {
        Host {
            name: unique_name(&format!("host{tag}-")),
            data: TempDir::new(&format!("etcd-{tag}")),
        }
    }

    /// host-local as this host runs it: in a private UTS namespace with its host name.
    fn cni(&self, cmd: &str, id: &str) -> Cni {
        let script = format!("hostname {} && exec \"$@\"", self.name);
        Cni::new(bin("host-local"))
            .wrapper(&["unshare", "-u", "sh", "-c", &script, "sh"])
            .command(cmd)
            .container_id(id)
    }

    /// The config of network `net` on cluster `c` (no `host`: the host name is the default).
    fn conf(&self, c: &Cluster, net: &str, prefix: &str, extra: Value) -> Value {
        let mut v = json!({
            "cniVersion": "1.1.0",
            "name": net,
            "type": "host-local",
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": [[{"subnet": "10.10.0.0/24"}], [{"subnet": "fd10::/64"}]],
                "store": {"type": "etcd", "endpoints": c.endpoints(), "prefix": prefix, "timeout": 10}
            }
        });
        cni_tests::merge(&mut v, extra);
        v
    }
}

/// The leases of `net` by address, the indexes checked (see [`Cluster::leases`]).
fn lease_map(c: &Cluster, prefix: &str, net: &str) -> BTreeMap<String, Value> {
    c.leases(prefix, net)
}

fn skip() -> bool {
    if !is_root() {
        cni_tests::skip_notice("needs root");
        return true;
    }
    false
}

/// Test 1: two hosts, 128 concurrent dual-stack ADDs on one network, dynamic and static mixed:
/// no address twice, every success is exactly its leases in etcd, nothing left after the DELs.
#[test]
fn concurrent_adds_on_two_hosts_never_share_an_address() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let prefix = "/t1";
    let hosts = [&a, &b];
    let mut running = Vec::new();
    for i in 0..128 {
        let h = hosts[i % 2];
        let conf = h.conf(&c, "lan", prefix, json!({}));
        let id = format!("c{i}");
        let mut call = h.cni("ADD", &id).config(&conf);
        // Every 8th asks for a static address (both families), from the top of the range
        // down (a static reservation moves the shared round robin, as on disk).
        if i % 8 == 0 {
            call = call.args(&format!("IP=10.10.0.{},fd10::{:x}", 254 - i / 8, 0xfff - i / 8));
        }
        running.push((id, h.name.clone(), i % 8 == 0, call.spawn()));
    }
    let mut got: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut refused = Vec::new();
    for (id, host, stat, r) in running {
        let out = r.wait();
        if stat && out.error_code() == Some(103) {
            // A dynamic ADD may take a static address first; the refusal names it.
            let n: usize = id[1..].parse().unwrap();
            let want = format!("10.10.0.{}", 254 - n / 8);
            let want6 = format!("fd10::{:x}", 0xfff - n / 8);
            let msg = out.error_msg();
            assert!(msg.contains(&want) || msg.contains(&want6), "{msg}");
            refused.push((want, want6));
            continue;
        }
        let res = out.expect_ok();
        let ips: Vec<String> = res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["address"].as_str().unwrap().split('/').next().unwrap().to_string())
            .collect();
        assert_eq!(ips.len(), 2, "{res}");
        if stat {
            let n: usize = id[1..].parse().unwrap();
            assert_eq!(ips[0], format!("10.10.0.{}", 254 - n / 8));
        }
        got.push((id, host, ips));
    }
    let mut seen = HashSet::new();
    for (_, _, ips) in &got {
        for ip in ips {
            assert!(seen.insert(ip.clone()), "{ip} handed out twice");
        }
    }
    let leases = lease_map(&c, prefix, "lan");
    assert_eq!(leases.len(), 2 * got.len(), "{leases:?}");
    // Every dynamic ADD succeeded (expect_ok above); most static ones too.
    assert!(refused.len() <= 8, "statics refused: {refused:?}");
    for (v4, v6) in &refused {
        assert!(
            seen.contains(v4) || seen.contains(v6),
            "{v4}/{v6} refused but nobody holds it"
        );
    }
    for (id, host, ips) in &got {
        for ip in ips {
            let l = &leases[ip];
            assert_eq!(
                (l["containerId"].as_str(), l["ifname"].as_str()),
                (Some(id.as_str()), Some("eth0"))
            );
            assert_eq!(l["host"].as_str(), Some(host.as_str()));
        }
    }
    // CHECK on the right host passes; DEL everything concurrently (twice: DEL is idempotent).
    let conf_a = a.conf(&c, "lan", prefix, json!({}));
    a.cni("CHECK", &got[0].0).config(&conf_a).run().expect_ok();
    for _ in 0..2 {
        let dels: Vec<_> = got
            .iter()
            .enumerate()
            .map(|(i, (id, _, _))| {
                let h = hosts[i % 2];
                h.cni("DEL", id).config(&h.conf(&c, "lan", prefix, json!({}))).spawn()
            })
            .collect();
        for d in dels {
            d.wait().expect_ok();
        }
    }
    assert!(lease_map(&c, prefix, "lan").is_empty());
    a.cni("CHECK", &got[0].0).config(&conf_a).run().expect_error(104);
    // Nothing of a lease is left; only the round robin's position (as the disk store's
    // last_reserved_ip files) and each host's boot record (its .boot_id).
    for (k, _) in c.get_prefix(prefix) {
        let ok = k.starts_with(&format!("{prefix}/lan/last/"))
            || k.starts_with(&format!("{prefix}/lan/boot/"))
            || k == format!("{prefix}/lan/layout");
        assert!(ok, "left under the prefix: {k}");
    }
    // The disk store was never used.
    assert!(!a.data.join("lan").exists());
}

/// Same semantics as on disk: round robin, gateway skipped, static conflicts, exhaustion,
/// STATUS, the result in an old version.
#[test]
fn same_semantics_as_the_disk_store() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let extra = json!({"ipam": {"ranges": [[{"subnet": "10.20.0.0/29"}]]}});
    let conf_a = a.conf(&c, "small", "/t2", extra.clone());
    let conf_b = b.conf(&c, "small", "/t2", extra);
    let ip = |o: Output| o.expect_ok()["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(ip(a.cni("ADD", "x1").config(&conf_a).run()), "10.20.0.2/29");
    assert_eq!(ip(b.cni("ADD", "x2").config(&conf_b).run()), "10.20.0.3/29");
    // Round robin is shared: B's next address follows A's.
    assert_eq!(ip(a.cni("ADD", "x3").config(&conf_a).run()), "10.20.0.4/29");
    // A static request held by another host: refused with the address named.
    let e = b
        .cni("ADD", "x4")
        .args("IP=10.20.0.2")
        .config(&conf_b)
        .run()
        .expect_error(103);
    assert!(e.contains("10.20.0.2"), "{e}");
    let e = b
        .cni("ADD", "x4")
        .args("IP=10.20.0.1")
        .config(&conf_b)
        .run()
        .expect_error(7);
    assert!(e.contains("gateway"), "{e}");
    // A second ADD of an attachment gets its lease back.
    assert_eq!(ip(a.cni("ADD", "x1").config(&conf_a).run()), "10.20.0.2/29");
    assert_eq!(ip(b.cni("ADD", "x5").config(&conf_b).run()), "10.20.0.5/29");
    b.cni("STATUS", "").config(&conf_b).run().expect_ok();
    assert_eq!(ip(b.cni("ADD", "x6").config(&conf_b).run()), "10.20.0.6/29");
    let e = a.cni("ADD", "x7").config(&conf_a).run().expect_error(102);
    assert_eq!(
        e,
        "failed to allocate for range 0: no IP addresses available in range set: 10.20.0.1-10.20.0.6"
    );
    a.cni("STATUS", "").config(&conf_a).run().expect_error(50);
    // DEL on another host releases the attachment too (the store is one address space).
    a.cni("DEL", "x2").config(&conf_a).run().expect_ok();
    let mut old = conf_a.clone();
    old["cniVersion"] = json!("0.3.1");
    let r = a.cni("ADD", "x7").config(&old).run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.20.0.3/29");
    assert_eq!(r["ips"][0]["version"], "4");
}

/// Test 4: GC on host A releases A's stale leases and keeps host B's.
#[test]
fn gc_is_per_host() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let conf_a = a.conf(&c, "gcnet", "/t4", json!({}));
    let conf_b = b.conf(&c, "gcnet", "/t4", json!({}));
    a.cni("ADD", "a1").config(&conf_a).run().expect_ok();
    a.cni("ADD", "a2").config(&conf_a).run().expect_ok();
    b.cni("ADD", "b1").config(&conf_b).run().expect_ok();
    let mut gc = conf_a.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a2", "ifname": "eth0"}]);
    a.cni("GC", "").config(&gc).run().expect_ok();
    let owners: Vec<(String, String)> = lease_map(&c, "/t4", "gcnet")
        .values()
        .map(|l| {
            (
                l["containerId"].as_str().unwrap().into(),
                l["host"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut want = vec![
        ("a2".to_string(), a.name.clone()),
        ("a2".to_string(), a.name.clone()),
        ("b1".to_string(), b.name.clone()),
        ("b1".to_string(), b.name.clone()),
    ];
    let mut got = owners.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Issue 19 item 7: a definite refusal is not an unknown outcome. With etcd's NOSPACE alarm
/// raised (members with a tiny `--quota-backend-bytes`, filled until etcd refuses), an ADD is
/// refused at once with code 5 and the cause on stdout, instead of being retried until the
/// deadline and reported as a write of unknown outcome; STATUS is code 50 naming it; a DEL
/// (only deletes, which etcd allows under the alarm) still frees its leases.
#[test]
fn a_full_database_is_refused_at_once() {
    if skip() {
        return;
    }
    let c = Cluster::start_with_flags(3, &["--quota-backend-bytes", "262144"]);
    let a = Host::new("a");
    let conf = a.conf(&c, "full", "/t10", json!({}));
    let timeout = Duration::from_secs(conf["ipam"]["store"]["timeout"].as_u64().unwrap());
    a.cni("ADD", "f1").config(&conf).run().expect_ok();
    let big = "x".repeat(48 * 1024);
    let refused = (0..64)
        .map(|i| c.try_put(&format!("/fill/{i}"), &big))
        .find(|out| !out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
        .expect("etcd never refused a put");
    assert!(refused.contains("database space exceeded"), "{refused}");

    let t0 = Instant::now();
    let out = a.cni("ADD", "f2").config(&conf).run();
    let took = t0.elapsed();
    let msg = out.expect_error(5);
    assert!(
        msg.contains("database space exceeded") && msg.contains("NOSPACE") && msg.contains("alarm disarm"),
        "{msg}"
    );
    assert!(!msg.contains("unknown"), "{msg}");
    assert!(!out.stderr.contains("checking whether it committed"), "{}", out.stderr);
    // A bound that tells a refusal from a retry until the deadline, not a speed goal.
    assert!(
        took < timeout / 2,
        "ADD took {took:?} of its {timeout:?}: the refusal was retried"
    );
    let msg = a.cni("STATUS", "").config(&conf).run().expect_error(50);
    assert!(msg.contains("NOSPACE"), "{msg}");
    let owners: Vec<String> = lease_map(&c, "/t10", "full")
        .values()
        .map(|l| l["containerId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(owners, ["f1", "f1"]);
    a.cni("DEL", "f1").config(&conf).run().expect_ok();
    assert!(lease_map(&c, "/t10", "full").is_empty());
}

/// Test 2: the leader is SIGKILLed in the middle of a storm of ADDs: no address twice, every
/// failure is code 11, and ADDs succeed afterwards.
#[test]
fn leader_killed_during_a_storm() {
    if skip() {
        return;
    }
    let mut c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let hosts = [&a, &b];
    let prefix = "/t2";
    let leader = c.leader(Duration::from_secs(10));
    let conf = |h: &Host, c: &Cluster| h.conf(c, "storm", prefix, json!({"ipam": {"store": {"timeout": 5}}}));
    let mut running = Vec::new();
    for i in 0..64 {
        if i == 32 {
            c.kill_member(leader);
        }
        let h = hosts[i % 2];
        running.push((
            format!("s{i}"),
            h.cni("ADD", &format!("s{i}")).config(&conf(h, &c)).spawn(),
        ));
    }
    let mut seen = HashSet::new();
    let mut failed = 0;
    for (id, r) in running {
        let out = r.wait();
        if !out.success() {
            out.expect_error(11);
            failed += 1;
            continue;
        }
        for x in out.expect_ok()["ips"].as_array().unwrap() {
            let ip = x["address"].as_str().unwrap().to_string();
            assert!(seen.insert(ip.clone()), "{ip} handed out twice ({id})");
        }
    }
    eprintln!("{failed} of 64 ADDs failed with code 11 around the leader's death");
    // The survivors elect a leader; ADDs work again, and no address is held twice in etcd.
    c.leader(Duration::from_secs(15));
    // The dead member stays in every call's endpoint list: each call must get past it.
    for i in 0..16 {
        let h = hosts[i % 2];
        let r = h
            .cni("ADD", &format!("after{i}"))
            .config(&conf(h, &c))
            .run()
            .expect_ok();
        for x in r["ips"].as_array().unwrap() {
            let ip = x["address"].as_str().unwrap().to_string();
            assert!(seen.insert(ip.clone()), "{ip} handed out twice (after{i})");
        }
    }
    // Every success has its leases (a failed call whose write committed late may add its own),
    // and the indexes agree with the leases.
    let leases = lease_map(&c, prefix, "storm");
    for ip in &seen {
        let bare = ip.split('/').next().unwrap();
        assert!(leases.contains_key(bare), "{ip} not in etcd: {:?}", leases.keys());
    }
}

/// Test 3: quorum lost: ADD (bridge + host-local on etcd) fails with code 11 within the
/// deadline and leaves no veth, no rule and no lease; STATUS is code 50; once the members are
/// back everything works. The members run in the host namespace (on its 127.0.0.1).
#[test]
fn quorum_lost_is_try_again_later_and_leaves_nothing() {
    if skip() {
        return;
    }
    let host = cni_tests::Netns::new();
    let ctr = cni_tests::Netns::new();
    let mut c = Cluster::start_with(3, Some(&host), None);
    let data = TempDir::new("etcd-q");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "q", "type": "bridge", "bridge": "cnitq0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "subnet": "10.30.0.0/24", "dataDir": data.path(),
                 "store": {"type": "etcd", "endpoints": c.endpoints(), "prefix": "/t3", "timeout": 2}}
    });
    let call = |cmd: &str, id: &str| {
        Cni::new(bin("bridge"))
            .command(cmd)
            .container_id(id)
            .netns(ctr.path())
            .host(&host)
            .config(&conf)
    };
    let r = call("ADD", "q1").run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.30.0.2/24");
    call("DEL", "q1").run().expect_ok();
    let link_names = |ns: &cni_tests::Netns| -> Vec<String> {
        ns.ip(&["-o", "link"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap().to_string()))
            .collect()
    };
    let links_before = link_names(&host);
    let nat_before = String::from_utf8_lossy(&host.exec(&["iptables", "-w", "-t", "nat", "-S"]).stdout).into_owned();

    c.kill_member(0);
    c.kill_member(1);
    c.wait_no_leader(2, Duration::from_secs(15));
    let t0 = Instant::now();
    let e = call("ADD", "q2").run().expect_error(11);
    let took = t0.elapsed();
    // The deadline is 2 s; the bound leaves room for a loaded machine, not for a hang.
    assert!(took < Duration::from_secs(8), "ADD took {took:?}");
    assert!(e.contains("ipam.store.timeout"), "{e}");
    assert_eq!(link_names(&host), links_before, "a link was left");
    let nat = String::from_utf8_lossy(&host.exec(&["iptables", "-w", "-t", "nat", "-S"]).stdout).into_owned();
    assert_eq!(nat, nat_before, "a rule was left");
    assert_eq!(link_names(&ctr), ["lo"], "container link left");
    // STATUS: code 50 (host-local itself and through bridge).
    let mut ipam = conf.clone();
    ipam["type"] = json!("host-local");
    Cni::new(bin("host-local"))
        .command("STATUS")
        .host(&host)
        .config(&ipam)
        .run()
        .expect_error(50);
    // Never a silent fall back to the disk store.
    assert!(!data.join("q").exists());

    c.start_member(0);
    c.start_member(1);
    c.wait_healthy(Duration::from_secs(30));
    Cni::new(bin("host-local"))
        .command("STATUS")
        .host(&host)
        .config(&ipam)
        .run()
        .expect_ok();
    let r = call("ADD", "q2").run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.30.0.3/24");
    call("DEL", "q2").run().expect_ok();
    assert!(lease_map(&c, "/t3", "q").is_empty());
}

fn ping(ns: &cni_tests::Netns, addr: &str) -> bool {
    (0..5).any(|_| ns.exec(&["ping", "-c1", "-W1", addr]).status.success())
}

fn addr4(r: &Value) -> String {
    r["ips"][0]["address"].as_str().unwrap().to_string()
}

/// Test 5, the LAN scenario, with the conf-example `macvlan-etcd.conflist`: two hosts on one
/// LAN (a bridge in a "LAN" namespace, each host's uplink a veth into it, the etcd members on
/// the LAN's own address); macvlan + host-local on etcd with the same range on both hosts.
#[test]
fn lan_of_two_hosts_shares_one_address_space() {
    if skip() {
        return;
    }
    use cni_tests::Netns;
    let lan = Netns::new();
    lan.ip(&["link", "add", "br0", "type", "bridge"]);
    lan.ip(&["addr", "add", "192.168.1.2/24", "dev", "br0"]);
    lan.ip(&["link", "set", "br0", "up"]);
    let mut hosts = Vec::new();
    for (i, tag) in ["a", "b"].iter().enumerate() {
        let ns = Netns::new();
        let peer = format!("lan{tag}");
        ns.ip(&[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            lan.name(),
        ]);
        lan.ip(&["link", "set", &peer, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("192.168.1.{}/24", 11 + i), "dev", "up0"]);
        ns.ip(&["link", "set", "up0", "up"]);
        hosts.push((ns, Host::new(tag)));
    }
    let c = Cluster::start_on(3, Some(&lan), "192.168.1.2", None);

    // The example, with this LAN's master and etcd endpoints.
    let path = cni_tests::workspace_dir().join("conf-examples/macvlan-etcd.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let conf_of = |h: &Host| {
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        conf["master"] = json!("up0");
        conf["ipam"]["dataDir"] = json!(h.data.path());
        conf["ipam"]["store"]["endpoints"] = json!(c.endpoints());
        conf
    };
    let run = |i: usize, cmd: &str, id: &str, ctr: &Netns, args: &str| {
        let (ns, h) = &hosts[i];
        let script = format!("hostname {} && exec \"$@\"", h.name);
        let mut call = Cni::new(bin("macvlan"))
            .wrapper(&["unshare", "-u", "sh", "-c", &script, "sh"])
            .command(cmd)
            .container_id(id)
            .netns(ctr.path())
            .host(ns)
            .config(&conf_of(h));
        if !args.is_empty() {
            call = call.args(args);
        }
        call.run()
    };
    let (a1, b1, a2, b2) = (Netns::new(), Netns::new(), Netns::new(), Netns::new());
    let ra1 = run(0, "ADD", "a1", &a1, "").expect_ok();
    let rb1 = run(1, "ADD", "b1", &b1, "").expect_ok();
    let ra2 = run(0, "ADD", "a2", &a2, "").expect_ok();
    let got: HashSet<String> = [&ra1, &rb1, &ra2].iter().map(|r| addr4(r)).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(addr4(&ra1), "192.168.1.100/24");
    assert_eq!(addr4(&rb1), "192.168.1.101/24");
    // Across hosts, over the LAN.
    assert!(ping(&a1, "192.168.1.101"), "a1 cannot reach b1");
    assert!(ping(&b1, "192.168.1.102"), "b1 cannot reach a2");
    // A static address host A holds, requested on host B: refused, naming it; nothing left.
    let e = run(1, "ADD", "b2", &b2, "IgnoreUnknown=1;IP=192.168.1.100").expect_error(103);
    assert!(e.contains("192.168.1.100"), "{e}");
    let links = b2.ip(&["-o", "link"]);
    assert_eq!(links.lines().count(), 1, "{links}");
    // Leases record their hosts.
    let leases = lease_map(&c, "/cni-rs/host-local", "rsmacvlan-lan");
    assert_eq!(leases["192.168.1.100"]["host"].as_str(), Some(hosts[0].1.name.as_str()));
    assert_eq!(leases["192.168.1.101"]["host"].as_str(), Some(hosts[1].1.name.as_str()));
    for (i, id, ns) in [(0, "a1", &a1), (1, "b1", &b1), (0, "a2", &a2)] {
        run(i, "DEL", id, ns, "").expect_ok();
    }
    assert!(lease_map(&c, "/cni-rs/host-local", "rsmacvlan-lan").is_empty());
}

/// After a reboot of host A (its boot record under the prefix names another boot), the first
/// call on A releases A's leases and keeps B's; with `releaseOnReboot` false nothing goes.
#[test]
fn reboot_releases_only_this_hosts_leases() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let conf_a = a.conf(&c, "rb", "/t8", json!({}));
    let conf_b = b.conf(&c, "rb", "/t8", json!({}));
    a.cni("ADD", "a1").config(&conf_a).run().expect_ok();
    b.cni("ADD", "b1").config(&conf_b).run().expect_ok();
    let boot_key = format!("/t8/rb/boot/{}", a.name);
    let hosts_of = || -> Vec<String> {
        let mut v: Vec<String> = lease_map(&c, "/t8", "rb")
            .values()
            .map(|l| l["containerId"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    // Opted out: the old boot's leases stay, and the boot is recorded.
    c.put(&boot_key, "an-earlier-boot");
    let mut keep = conf_a.clone();
    keep["ipam"]["releaseOnReboot"] = json!(false);
    a.cni("CHECK", "a1").config(&keep).run().expect_ok();
    assert_eq!(hosts_of(), ["a1", "a1", "b1", "b1"]);
    // A reboot: the first call releases A's leases only.
    c.put(&boot_key, "an-earlier-boot");
    a.cni("CHECK", "a1").config(&conf_a).run().expect_error(104);
    assert_eq!(hosts_of(), ["b1", "b1"]);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let rec: BTreeMap<String, String> = c.get_prefix(&boot_key).into_iter().collect();
    assert_eq!(rec[&boot_key], boot.trim());
    // Later calls of this boot release nothing.
    a.cni("ADD", "a2").config(&conf_a).run().expect_ok();
    a.cni("CHECK", "a2").config(&conf_a).run().expect_ok();

    // The first ADD after a boot may get an address it releases in the same transaction.
    let one = a.conf(
        &c,
        "rb1",
        "/t8",
        json!({"ipam": {"ranges": [[{"subnet": "10.11.0.0/30"}]]}}),
    );
    let r = a.cni("ADD", "old").config(&one).run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.11.0.2/30");
    a.cni("ADD", "new").config(&one).run().expect_error(102);
    c.put(&format!("/t8/rb1/boot/{}", a.name), "an-earlier-boot");
    let r = a.cni("ADD", "new").config(&one).run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.11.0.2/30");
    let leases = lease_map(&c, "/t8", "rb1");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases["10.11.0.2"]["containerId"], "new");
}

/// Test 6: TLS with client certificates (made here with openssl): works; a wrong CA fails
/// with an error that says so, names the key and shows no credential.
#[test]
fn tls_with_client_certificates() {
    if skip() {
        return;
    }
    let certs = TempDir::new("etcd-tls");
    let tls = make_certs(certs.path(), "good");
    let other = make_certs(certs.path(), "other");
    let c = Cluster::start_with(3, None, Some(tls.clone()));
    let a = Host::new("a");
    let store = |ca: &std::path::Path| json!({"ipam": {"store": {"timeout": 3, "tls": {"ca": ca, "cert": tls.cert, "key": tls.key}}}});
    let conf = a.conf(&c, "tls", "/t6", store(&tls.ca));
    assert!(c.endpoints()[0].starts_with("https://"));
    let r = a.cni("ADD", "t1").config(&conf).run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.10.0.2/24");
    assert_eq!(lease_map(&c, "/t6", "tls").len(), 2);
    let bad = a.conf(&c, "tls", "/t6", store(&other.ca));
    let out = a.cni("ADD", "t2").config(&bad).run();
    let msg = out.expect_error(5);
    assert!(msg.contains("ipam.store.tls"), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    let key = std::fs::read_to_string(&tls.key).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!msg.contains(key_line) && !out.stderr.contains(key_line));
    assert_eq!(lease_map(&c, "/t6", "tls").len(), 2);
    a.cni("DEL", "t1").config(&conf).run().expect_ok();
    assert!(lease_map(&c, "/t6", "tls").is_empty());
}

fn ops(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin("host-local"))
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Test 7: the operators' commands. Import of two hosts' disk stores with one conflicting
/// address: the conflict is reported, nothing is overwritten; `leases` lists either store;
/// `release-host` releases a gone host's leases only.
#[test]
fn import_list_and_release_host() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    // Each host's disk store, made by host-local itself.
    for (h, leases) in [
        (&a, [("c1", "10.10.0.2"), ("c2", "10.10.0.3")]),
        (&b, [("c9", "10.10.0.3"), ("c8", "10.10.0.4")]),
    ] {
        let disk = json!({"cniVersion": "1.1.0", "name": "imp", "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.10.0.0/24", "dataDir": h.data.path()}});
        for (id, ip) in leases {
            h.cni("ADD", id)
                .args(&format!("IP={ip}"))
                .config(&disk)
                .run()
                .expect_ok();
        }
    }
    let conf = json!({"cniVersion": "1.0.0", "name": "imp", "plugins": [{"type": "macvlan", "master": "eth0",
        "ipam": {"type": "host-local", "subnet": "10.10.0.0/24",
                 "store": {"type": "etcd", "endpoints": c.endpoints(), "prefix": "/t7", "host": "opnode"}}}]});
    let file = a.data.join("imp.conflist");
    std::fs::write(&file, conf.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let dir = |h: &Host| h.data.path().to_str().unwrap().to_string();

    let (code, out, err) = ops(&["import", f, "--data-dir", &dir(&a), "--host", &a.name]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("2 imported, 0 already there, 0 conflict(s)\n"), "{out}");
    let (code, out, err) = ops(&["import", f, "--data-dir", &dir(&b), "--host", &b.name]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains(&format!("conflict 10.10.0.3: c9 eth0 on {}", b.name)),
        "{out}"
    );
    assert!(out.contains(&format!("etcd has it for c2 eth0 on {}", a.name)), "{out}");
    assert!(out.ends_with("1 imported, 0 already there, 1 conflict(s)\n"), "{out}");
    let leases = lease_map(&c, "/t7", "imp");
    assert_eq!(leases.len(), 3);
    assert_eq!(leases["10.10.0.3"]["containerId"], "c2");
    assert_eq!(leases["10.10.0.3"]["host"].as_str(), Some(a.name.as_str()));
    assert_eq!(leases["10.10.0.4"]["host"].as_str(), Some(b.name.as_str()));
    // A repeat imports nothing twice.
    let (code, out, _) = ops(&["import", f, "--data-dir", &dir(&a), "--host", &a.name]);
    assert_eq!(code, 0);
    assert!(out.ends_with("0 imported, 2 already there, 0 conflict(s)\n"), "{out}");

    // leases: etcd, then host B's disk store.
    let (code, out, _) = ops(&["leases", f]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ADDRESS") && lines[0].contains("HOST") && lines[0].ends_with("AGE"),
        "{out}"
    );
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[2].starts_with("10.10.0.3") && lines[2].contains(" c2 ") && lines[2].contains(&a.name),
        "{out}"
    );
    let mut disk = conf.clone();
    disk["plugins"][0]["ipam"]["store"] = Value::Null;
    disk["plugins"][0]["ipam"]["dataDir"] = json!(dir(&b));
    let dfile = b.data.join("imp.conflist");
    std::fs::write(&dfile, disk.to_string()).unwrap();
    let (code, out, _) = ops(&["leases", dfile.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains(" c9 ") && out.contains(" c8 "), "{out}");

    // release-host: host B is gone.
    let (code, out, err) = ops(&["release-host", f, &b.name]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with(&format!("1 lease(s) of host {} released\n", b.name)),
        "{out}"
    );
    let leases = lease_map(&c, "/t7", "imp");
    assert_eq!(leases.keys().collect::<Vec<_>>(), ["10.10.0.2", "10.10.0.3"]);
    // Usage on a bad command line.
    let (code, _, err) = ops(&["frobnicate"]);
    assert_eq!(code, 1);
    assert!(err.contains("usage:"), "{err}");
}

/// A TCP proxy to one member that, on its first connection, lets the client's second request
/// (the write of the call: the first is the read) reach etcd but drops etcd's reply and cuts
/// the connection: a write whose outcome the client cannot know. Later connections pass.
struct LossyProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxy {
    fn start(target: std::net::SocketAddr) -> LossyProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut2 = cut.clone();
        std::thread::spawn(move || {
            for (n, client) in l.incoming().enumerate() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else { return };
                let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let cut = cut2.clone();
                std::thread::spawn(move || {
                    if n > 0 {
                        let _ = std::io::copy(&mut s_in, &mut c_out);
                        let _ = c_out.shutdown(Shutdown::Write);
                        return;
                    }
                    // HTTP/2 frames: 9-byte header (length 24 bits, type, flags, stream id).
                    loop {
                        let mut h = [0u8; 9];
                        if s_in.read_exact(&mut h).is_err() {
                            break;
                        }
                        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                        let mut body = vec![0u8; len];
                        if s_in.read_exact(&mut body).is_err() {
                            break;
                        }
                        // The reply (HEADERS or DATA) to the second request, stream 3.
                        if stream == 3 && (h[3] == 0 || h[3] == 1) {
                            cut.store(true, Ordering::SeqCst);
                            let _ = c_out.shutdown(Shutdown::Both);
                            let _ = s_in.shutdown(Shutdown::Both);
                            return;
                        }
                        if c_out.write_all(&h).is_err() || c_out.write_all(&body).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        LossyProxy { port, cut }
    }
}

/// Unknown outcome: the reply to the ADD's write is lost after etcd committed it. The call
/// finds its own token in the lease and succeeds with that address: no second lease, no leak.
#[test]
fn a_lost_reply_to_a_committed_write_is_found_out() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let a = Host::new("a");
    let ep = c.endpoint(0);
    let target: std::net::SocketAddr = ep.trim_start_matches("http://").parse().unwrap();
    let proxy = LossyProxy::start(target);
    let conf = a.conf(
        &c,
        "lost",
        "/t9",
        json!({"ipam": {"ranges": [[{"subnet": "10.40.0.0/24"}]],
                        "store": {"endpoints": [format!("http://127.0.0.1:{}", proxy.port)]}}}),
    );
    let out = a.cni("ADD", "l1").config(&conf).run();
    assert!(
        proxy.cut.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy never cut a reply"
    );
    assert!(out.stderr.contains("checking whether it committed"), "{}", out.stderr);
    let r = out.expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.40.0.2/24");
    let leases = lease_map(&c, "/t9", "lost");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases["10.40.0.2"]["containerId"], "l1");
    // The next ADD gets the next address: nothing was taken twice or left behind.
    let r = a.cni("ADD", "l2").config(&conf).run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.40.0.3/24");
}

/// The etcd client lives in `host-local-etcd`, off the disk path: the multicall program that
/// every bridge, macvlan and host-local call starts does not contain it. Installed as
/// `make install` installs it (one file under the three names, the helper beside it), a
/// bridge ADD on the etcd store runs the helper as its IPAM child, where it would otherwise
/// have run host-local in-process, and host-local alone hands over to it; without the helper,
/// the call fails with code 7 naming it, and leaves no link behind.
#[test]
fn the_etcd_client_is_a_separate_program() {
    if skip() {
        return;
    }
    let has = |p: &std::path::Path, needle: &[u8]| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle);
    // A gRPC service name of etcd's client: in the helper, not in the plugins.
    let grpc = b"etcdserverpb.KV";
    assert!(has(&bin("host-local-etcd"), grpc));
    for p in ["bridge", "macvlan", "host-local"] {
        assert!(!has(&bin(p), grpc), "{p} links the etcd client");
    }

    let bins = TempDir::new("etcd-bins");
    std::fs::copy(bin("bridge"), bins.join("bridge")).unwrap();
    for n in ["macvlan", "host-local"] {
        std::fs::hard_link(bins.join("bridge"), bins.join(n)).unwrap();
    }
    std::fs::copy(bin("host-local-etcd"), bins.join("host-local-etcd")).unwrap();
    let host = cni_tests::Netns::new();
    let ctr = cni_tests::Netns::new();
    let c = Cluster::start_with(3, Some(&host), None);
    let data = TempDir::new("etcd-h");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "h", "type": "bridge", "bridge": "cnith0", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.31.0.0/24", "dataDir": data.path(),
                 "store": {"type": "etcd", "endpoints": c.endpoints(), "prefix": "/th"}}
    });
    let call = |cmd: &str, id: &str| {
        Cni::new(bins.join("bridge"))
            .command(cmd)
            .container_id(id)
            .netns(ctr.path())
            .host(&host)
            .env("CNI_PATH", &bins.path().to_string_lossy())
            .config(&conf)
    };
    let out = call("ADD", "h1").env("CNI_RS_TRACE", "1").run();
    let r = out.expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.31.0.2/24");
    assert_eq!(lease_map(&c, "/th", "h")["10.31.0.2"]["containerId"], "h1");
    // The IPAM plugin ran as a child (its trace lines under its own pid), not in-process.
    assert!(!out.stderr.contains("-host-local "), "{}", out.stderr);
    let pids: HashSet<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("TRACE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids.len(), 2, "{}", out.stderr);
    // The same config with a disk store still runs host-local in-process.
    let mut disk = conf.clone();
    disk["ipam"]["store"] = json!(null);
    disk["bridge"] = json!("cnith1");
    disk["name"] = json!("hdisk");
    disk["ipam"]["subnet"] = json!("10.32.0.0/24");
    let out = call("ADD", "h2")
        .ifname("eth1")
        .config(&disk)
        .env("CNI_RS_TRACE", "1")
        .run();
    out.expect_ok();
    assert!(out.stderr.contains("-host-local "), "{}", out.stderr);
    assert!(data.join("hdisk/10.32.0.2").exists());
    call("DEL", "h2").ifname("eth1").config(&disk).run().expect_ok();
    // `ipam.type` host-local-etcd: the helper is the IPAM plugin, found in CNI_PATH.
    let mut direct = conf.clone();
    direct["ipam"]["type"] = json!("host-local-etcd");
    let r = call("ADD", "h5").ifname("eth2").config(&direct).run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.31.0.3/24");
    assert_eq!(lease_map(&c, "/th", "h")["10.31.0.3"]["containerId"], "h5");
    call("DEL", "h5").ifname("eth2").config(&direct).run().expect_ok();
    // host-local alone hands over too (in place of itself), for every verb.
    let mut ipam = conf.clone();
    ipam["type"] = json!("host-local");
    let hl = |cmd: &str| {
        Cni::new(bins.join("host-local"))
            .command(cmd)
            .container_id("h3")
            .host(&host)
            .env("CNI_PATH", "/nonexistent")
            .config(&ipam)
    };
    assert_eq!(hl("ADD").run().expect_ok()["ips"][0]["address"], "10.31.0.4/24");
    hl("CHECK").run().expect_ok();
    hl("STATUS").run().expect_ok();
    hl("DEL").run().expect_ok();
    // A bridge ADD that fails after IPAM (a panic at a fault point of the debug build), and
    // one that dies while the helper runs: the undo reaches the helper too; no lease, no link.
    let (links_before, ctr_before) = (host.links(), ctr.links());
    for point in ["bridge:after-ipam", "bridge:ipam-running"] {
        call("ADD", "h6")
            .ifname("eth3")
            .env("CNI_RS_FAULT", point)
            .run()
            .expect_error(100);
        let held: Vec<String> = lease_map(&c, "/th", "h")
            .into_iter()
            .filter(|(_, l)| l["containerId"] == "h6")
            .map(|(ip, _)| ip)
            .collect();
        assert!(held.is_empty(), "{point}: lease left {held:?}");
        assert_eq!(host.links(), links_before, "{point}: a link was left");
        assert_eq!(ctr.links(), ctr_before, "{point}: a container link was left");
    }
    call("DEL", "h1").run().expect_ok();
    assert!(lease_map(&c, "/th", "h").is_empty());

    // Without the helper: code 7 naming it, nothing made, nothing on disk.
    std::fs::remove_file(bins.join("host-local-etcd")).unwrap();
    let (links_before, ctr_before) = (host.links(), ctr.links());
    let e = call("ADD", "h4").run().expect_error(7);
    assert!(e.contains("host-local-etcd") && e.contains("make install"), "{e}");
    assert_eq!(host.links(), links_before, "a link was left");
    assert_eq!(ctr.links(), ctr_before, "a container link was left");
    let e = hl("ADD").run().expect_error(7);
    assert!(e.contains("host-local-etcd"), "{e}");
    assert!(lease_map(&c, "/th", "h").is_empty());
    assert!(!data.join("h").exists(), "fell back to the disk store");
}

/// Issue 21: a network in the layout of the earlier versions (`ips/<address>` keys, written
/// here by that layout's own code, which this version keeps for networks not migrated yet) is
/// taken over by `host-local migrate` without loss: its live leases (with both indexes), its
/// round-robin pointers and its hosts' boot records; interrupted (the marker left at
/// "migrating"), calls are code 11 and running it again finishes; afterwards every verb works
/// on the moved leases and the round robin goes on where it was.
#[test]
fn migrate_takes_over_a_network_of_the_earlier_layout() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (prefix, net) = ("/t11", "mig");
    let conf_a = a.conf(&c, net, prefix, json!({}));
    let conf_b = b.conf(&c, net, prefix, json!({}));
    // A lease as the earlier versions wrote it makes the network one of their layout; from
    // then on, the calls use that layout's code.
    let old = |ip: &str| format!("{prefix}/{net}/ips/{ip}");
    c.put(
        &old("10.10.0.250"),
        &json!({"containerId": "seed", "ifname": "eth0", "host": b.name, "token": "t0", "time": 1}).to_string(),
    );
    let ip4 = |r: &Value| r["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(
        ip4(&a.cni("ADD", "a1").config(&conf_a).run().expect_ok()),
        "10.10.0.2/24"
    );
    assert_eq!(
        ip4(&b.cni("ADD", "b1").config(&conf_b).run().expect_ok()),
        "10.10.0.3/24"
    );
    let r = a
        .cni("ADD", "a2")
        .args("IP=10.10.0.77")
        .config(&conf_a)
        .run()
        .expect_ok();
    assert_eq!(ip4(&r), "10.10.0.77/24");
    assert_eq!(
        ip4(&a.cni("ADD", "a3").config(&conf_a).run().expect_ok()),
        "10.10.0.78/24"
    );
    a.cni("DEL", "a3").config(&conf_a).run().expect_ok();
    let before: BTreeMap<String, String> = c.get_prefix(&format!("{prefix}/{net}/")).into_iter().collect();
    let old_leases: Vec<&String> = before.keys().filter(|k| k.contains("/ips/")).collect();
    assert_eq!(old_leases.len(), 7, "{before:?}");
    assert!(
        !before.keys().any(|k| k.contains("/ip4/") || k.ends_with("/layout")),
        "{before:?}"
    );
    let pointers: Vec<(&String, &String)> = before
        .iter()
        .filter(|(k, _)| k.contains("/last/") || k.contains("/boot/"))
        .collect();
    assert_eq!(pointers.len(), 4, "{before:?}");

    // Interrupted after its first step: calls wait (code 11) for it.
    let marker = format!("{prefix}/{net}/layout");
    c.put(&marker, "migrating");
    let e = a.cni("ADD", "a4").config(&conf_a).run().expect_error(11);
    assert!(e.contains("host-local migrate"), "{e}");
    let file = a.data.join("mig.conf");
    std::fs::write(&file, conf_a.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = ops(&["migrate", f]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("resuming the migration; 7 lease(s) left"), "{out}");
    assert!(out.contains("7 lease(s) moved") && out.ends_with("done\n"), "{out}");
    let (code, out, _) = ops(&["migrate", f]);
    assert_eq!(code, 0);
    assert!(out.contains("already in this layout"), "{out}");

    // Every lease moved, with its owner, host and token; the indexes agree with them.
    let after: BTreeMap<String, String> = c.get_prefix(&format!("{prefix}/{net}/")).into_iter().collect();
    assert!(!after.keys().any(|k| k.contains("/ips/")), "{after:?}");
    assert_eq!(after[&marker], "2");
    for (k, v) in &pointers {
        assert_eq!(&&after[*k], v, "{k} changed");
    }
    let leases = lease_map(&c, prefix, net);
    assert_eq!(leases.len(), 7, "{leases:?}");
    for k in old_leases {
        let ip = k.rsplit('/').next().unwrap();
        let was: Value = serde_json::from_str(&before[k]).unwrap();
        let now = &leases[ip];
        for field in ["containerId", "ifname", "host", "token", "time"] {
            assert_eq!(now[field], was[field], "{ip}: {field}");
        }
    }
    // The calls go on: the round robin after its pointer, an ADD again gets its lease back,
    // CHECK, a DEL from another host, GC on host A only.
    assert_eq!(
        ip4(&a.cni("ADD", "a4").config(&conf_a).run().expect_ok()),
        "10.10.0.79/24"
    );
    assert_eq!(
        ip4(&a.cni("ADD", "a1").config(&conf_a).run().expect_ok()),
        "10.10.0.2/24"
    );
    a.cni("CHECK", "a2").config(&conf_a).run().expect_ok();
    a.cni("DEL", "b1").config(&conf_a).run().expect_ok();
    let mut gc = conf_a.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a2", "ifname": "eth0"}]);
    a.cni("GC", "").config(&gc).run().expect_ok();
    let mut owners: Vec<String> = lease_map(&c, prefix, net)
        .values()
        .map(|l| l["containerId"].as_str().unwrap().to_string())
        .collect();
    owners.sort();
    assert_eq!(owners, ["a2", "a2", "seed"]);
    let (code, out, _) = ops(&["leases", f]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.lines().nth(2).unwrap().starts_with("10.10.0.250 "), "{out}");
}

/// Issue 21: a window that fills up under a race. 67 of the 100 addresses of the range are
/// held, 65 of them in one block from the start (more than a first window of keys holds,
/// with the free ones after it), then 40 ADDs race from two hosts for the 33 free ones: each
/// free address goes to exactly one call, the other 7 calls are code 102, and the indexes
/// agree with the leases.
#[test]
fn a_window_that_fills_up_under_a_race() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (prefix, net) = ("/t12", "win");
    let extra = json!({"ipam": {"ranges": [[{"subnet": "10.12.0.0/24", "rangeStart": "10.12.0.10", "rangeEnd": "10.12.0.109"}]]}});
    let hosts = [
        (&a, a.conf(&c, net, prefix, extra.clone())),
        (&b, b.conf(&c, net, prefix, extra)),
    ];
    // 70 one after the other (concurrently: the order does not matter), then three go.
    let running: Vec<_> = (0..70)
        .map(|i| {
            let (h, conf) = &hosts[i % 2];
            h.cni("ADD", &format!("p{i}"))
                .args(&format!("IP=10.12.0.{}", 10 + i))
                .config(conf)
                .spawn()
        })
        .collect();
    for r in running {
        r.wait().expect_ok();
    }
    for i in [65, 66, 67] {
        let (h, conf) = &hosts[i % 2];
        h.cni("DEL", &format!("p{i}")).config(conf).run().expect_ok();
    }
    assert_eq!(lease_map(&c, prefix, net).len(), 67);
    let running: Vec<_> = (0..40)
        .map(|i| {
            let (h, conf) = &hosts[i % 2];
            (format!("r{i}"), h.cni("ADD", &format!("r{i}")).config(conf).spawn())
        })
        .collect();
    let mut got = HashSet::new();
    let mut full = 0;
    for (id, r) in running {
        let out = r.wait();
        if out.error_code() == Some(102) {
            full += 1;
            continue;
        }
        let ip = out.expect_ok()["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(got.insert(ip.clone()), "{ip} handed out twice ({id})");
    }
    assert_eq!((got.len(), full), (33, 7), "{got:?}");
    let leases = lease_map(&c, prefix, net);
    assert_eq!(leases.len(), 100);
    for ip in ["10.12.0.75", "10.12.0.76", "10.12.0.77", "10.12.0.80", "10.12.0.109"] {
        assert!(got.contains(&format!("{ip}/24")), "{ip} not handed out: {got:?}");
        assert!(leases[ip]["containerId"].as_str().unwrap().starts_with('r'), "{ip}");
    }
    hosts[0].0.cni("STATUS", "").config(&hosts[0].1).run().expect_error(50);
}

/// A tiny pseudo-random sequence (the delays of the kills below).
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Issue 21: a lease and its index entries are written and removed in one transaction: with
/// ADDs and DELs SIGKILLed at random points, the indexes never disagree with the leases
/// (nothing orphaned), no attachment holds two leases of a family, and the DELs that follow
/// leave nothing.
#[test]
fn the_indexes_survive_calls_killed_at_random_points() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let (a, b) = (Host::new("a"), Host::new("b"));
    let (prefix, net) = ("/t13", "kill");
    let hosts = [
        (&a, a.conf(&c, net, prefix, json!({}))),
        (&b, b.conf(&c, net, prefix, json!({}))),
    ];
    let mut seed = std::process::id() as u64;
    let kill_some = |cmd: &str, ids: &[String], seed: &mut u64| {
        let running: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (i, hosts[i % 2].0.cni(cmd, id).config(&hosts[i % 2].1).spawn()))
            .collect();
        let t0 = Instant::now();
        let mut killed = 0;
        for (i, mut r) in running {
            if i % 2 == 0 {
                // A random point of the call: from its start to well into its etcd work.
                let at = Duration::from_millis(lcg(seed) % 80);
                while t0.elapsed() < at && r.try_wait().unwrap().is_none() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // SAFETY: kill(2) of our own child, not reaped yet.
                if r.try_wait().unwrap().is_none() && unsafe { libc::kill(r.id() as i32, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
            let _ = r.wait_with_output();
        }
        killed
    };
    let mut killed = 0;
    for round in 0..3 {
        let ids: Vec<String> = (0..24).map(|i| format!("k{round}-{i}")).collect();
        killed += kill_some("ADD", &ids, &mut seed);
        lease_map(&c, prefix, net);
        // An ADD again of each attachment: it gets its lease if a killed ADD committed one.
        for (i, id) in ids.iter().enumerate() {
            hosts[i % 2].0.cni("ADD", id).config(&hosts[i % 2].1).run().expect_ok();
        }
        let leases = lease_map(&c, prefix, net);
        for id in &ids {
            let n = leases.values().filter(|l| l["containerId"] == id.as_str()).count();
            assert_eq!(n, 2, "{id} holds {n} leases");
        }
        killed += kill_some("DEL", &ids, &mut seed);
        lease_map(&c, prefix, net);
        for (i, id) in ids.iter().enumerate() {
            hosts[i % 2].0.cni("DEL", id).config(&hosts[i % 2].1).run().expect_ok();
        }
        assert!(lease_map(&c, prefix, net).is_empty());
    }
    eprintln!("{killed} calls killed");
    assert!(killed > 0);
}

/// The leases in etcd naming attachment (`id`, eth0), IPv4 first.
fn leases_naming(c: &Cluster, (prefix, net): (&str, &str), id: &str) -> Vec<String> {
    let mut l: Vec<String> = lease_map(c, prefix, net)
        .into_iter()
        .filter(|(_, l)| l["containerId"] == id && l["ifname"] == "eth0")
        .map(|(ip, _)| ip)
        .collect();
    l.sort_by_key(|s| s.contains(':'));
    l
}

/// Issue 19 item 1a on etcd: a runtime that retries sends ADDs of one attachment at once;
/// the losers' interface step fails and their plugin undoes its IPAM ADD. The undo releases
/// only what its own call reserved (the token of the call in the lease, the latest claimant
/// beside it), never the winner's lease: bridge and macvlan, 2 and 8 at once, 10 rounds each.
#[test]
fn concurrent_adds_of_one_attachment_keep_its_lease_on_etcd() {
    if skip() {
        return;
    }
    let host = cni_tests::Netns::new();
    let c = Cluster::start_with(3, Some(&host), None);
    let data = TempDir::new("etcd-1a");
    let store = json!({"type": "etcd", "endpoints": c.endpoints(), "prefix": "/t14", "timeout": 10});
    let br = json!({
        "cniVersion": "1.0.0", "name": "br1a", "type": "bridge", "bridge": "cni1a0", "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": data.path(), "store": store,
                 "ranges": [[{"subnet": "10.95.0.0/24"}], [{"subnet": "fd95::/64"}]]}
    });
    host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
    host.ip(&["link", "set", "m0", "up"]);
    host.ip(&["link", "set", "m1", "up"]);
    let mv = json!({
        "cniVersion": "1.0.0", "name": "mv1a", "type": "macvlan", "master": "m0",
        "ipam": {"type": "host-local", "dataDir": data.path(), "store": store,
                 "ranges": [[{"subnet": "10.96.0.0/24"}]]}
    });
    for n in [2, 8] {
        for round in 0..10 {
            let id = format!("c{n}-{round}");
            let what = format!("bridge, {n} at once, round {round}");
            let r = SameAttachment {
                what: &what,
                host: &host,
                plugin: "bridge",
                conf: &br,
                id: &id,
                n,
                families: 2,
            };
            concurrent_adds_of_one_attachment(&r, |id| leases_naming(&c, ("/t14", "br1a"), id));
            let what = format!("macvlan, {n} at once, round {round}");
            let r = SameAttachment {
                what: &what,
                host: &host,
                plugin: "macvlan",
                conf: &mv,
                id: &id,
                n,
                families: 1,
            };
            concurrent_adds_of_one_attachment(&r, |id| leases_naming(&c, ("/t14", "mv1a"), id));
        }
    }
    assert!(
        !data.join("br1a").exists() && !data.join("mv1a").exists(),
        "fell back to the disk store"
    );
}

/// Issue 19 item 1a on etcd, host-local alone with the undo a delegating plugin runs: ADDs of
/// one attachment at once, each the call of its own token, then the undo of all but one of
/// them at once: the lease stays, whichever call is the one left; a plain DEL frees it, and
/// the undo of an ADD that reserved the lease (the last claimant) frees it too.
#[test]
fn concurrent_host_local_adds_and_undos_of_one_attachment_on_etcd() {
    if skip() {
        return;
    }
    let c = Cluster::start(3);
    let a = Host::new("a");
    let (prefix, net) = ("/t15", "hl1a");
    let conf = a.conf(&c, net, prefix, json!({}));
    let held = |id: &str| -> usize {
        lease_map(&c, prefix, net)
            .values()
            .filter(|l| l["containerId"] == id)
            .count()
    };
    for n in [2, 8] {
        for round in 0..10 {
            let id = format!("c{n}-{round}");
            let tokens: Vec<String> = (0..n).map(|i| format!("tok{i}r{round}n{n}")).collect();
            let adds: Vec<_> = tokens
                .iter()
                .map(|t| a.cni("ADD", &id).env("CNI_RS_ADD_TOKEN", t).config(&conf).spawn())
                .collect();
            let outs: Vec<Output> = adds
                .into_iter()
                .map(|r| r.wait_within(Duration::from_secs(30)))
                .collect();
            let first = outs[0].expect_ok();
            for o in &outs {
                assert_eq!(
                    o.expect_ok()["ips"],
                    first["ips"],
                    "every ADD of the attachment got the same lease"
                );
            }
            assert_eq!(
                held(&id),
                2,
                "{n} at once, round {round}: {:?}",
                lease_map(&c, prefix, net)
            );
            let keep = round % n;
            let undos: Vec<_> = tokens
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != keep)
                .map(|(_, t)| a.cni("DEL", &id).env("CNI_RS_UNDO_FAILED_ADD", t).config(&conf).spawn())
                .collect();
            for u in undos {
                u.wait_within(Duration::from_secs(30)).expect_ok();
            }
            assert_eq!(held(&id), 2, "{n} at once, round {round}: the lease stays");
            a.cni("DEL", &id).config(&conf).run().expect_ok();
            assert_eq!(held(&id), 0);
        }
    }
    // The undo of the call that reserved the lease, with no ADD since: it goes.
    a.cni("ADD", "u1")
        .env("CNI_RS_ADD_TOKEN", "tu1")
        .config(&conf)
        .run()
        .expect_ok();
    a.cni("DEL", "u1")
        .env("CNI_RS_UNDO_FAILED_ADD", "tother")
        .config(&conf)
        .run()
        .expect_ok();
    assert_eq!(held("u1"), 2, "an undo of another call releases nothing");
    a.cni("DEL", "u1")
        .env("CNI_RS_UNDO_FAILED_ADD", "tu1")
        .config(&conf)
        .run()
        .expect_ok();
    assert_eq!(held("u1"), 0, "the undo of the call that reserved it releases it");
}
