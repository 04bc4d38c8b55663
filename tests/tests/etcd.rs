//! host-local on the etcd lease store (issue 12): each test starts its own 3-member etcd
//! cluster on 127.0.0.1 (free ports, temp data dirs), stopped by pid at the end. Every "host"
//! has its own host name (a private UTS namespace) and data dir; host-local touches no
//! interface, so for the store-only tests it runs in this namespace, where the members listen.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use cni_tests::etcd::{make_certs, Cluster};
use cni_tests::{bin, is_root, unique_name, Cni, Output, TempDir};
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

fn lease_map(c: &Cluster, prefix: &str, net: &str) -> BTreeMap<String, Value> {
    let p = format!("{prefix}/{net}/ips/");
    c.get_prefix(&p)
        .into_iter()
        .map(|(k, v)| {
            (
                k[p.len()..].to_string(),
                serde_json::from_str(&v).expect("a lease is JSON"),
            )
        })
        .collect()
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
        let ok = k.starts_with(&format!("{prefix}/lan/last/")) || k.starts_with(&format!("{prefix}/lan/boot/"));
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
    let live: Vec<String> = (0..3).filter(|&i| i != leader).map(|i| c.endpoint(i)).collect();
    let out = c.etcdctl(
        &live,
        &["get", "--prefix", "--keys-only", &format!("{prefix}/storm/ips/")],
    );
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    // Every success has its leases (a failed call whose write committed late may add its own).
    for ip in &seen {
        let bare = ip.split('/').next().unwrap();
        assert!(
            keys.contains(&format!("{prefix}/storm/ips/{bare}")),
            "{ip} not in etcd: {keys:?}"
        );
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
