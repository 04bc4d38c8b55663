//! Load: a storm of 256 mixed ADD/DEL/CHECK calls at once over four networks; GC of
//! thousands of stale leases. The plugins are run as a runtime runs them, inside private
//! "host" namespaces, with private lease stores; nothing here touches the machine's own
//! interfaces, addresses, routes or firewall.
//!
//! Needs root and `cargo build --workspace`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cni_tests::hardening::{check_output, spawn_group, temp_files, whole_leases, Ending};
use cni_tests::node::{links, nat_rules};
use cni_tests::{bin, lease_files, merged, Cni, Netns, Output, TempDir};
use serde_json::{json, Value};

/// One network of the storm: its plugin, host namespace and config.
struct StormNet<'a> {
    plugin: &'static str,
    host: &'a Netns,
    conf: Value,
    store: PathBuf,
}

impl StormNet<'_> {
    fn call(&self, cmd: &str, id: &str, netns: &str) -> Cni {
        Cni::call(self.plugin, self.host, cmd, id, Some(netns), &self.conf)
    }
}

/// Waits for every call; returns the outputs in order.
fn wait_all(running: Vec<(String, cni_tests::Running)>) -> Vec<(String, Output)> {
    running.into_iter().map(|(what, r)| (what, r.wait())).collect()
}

/// Every call succeeded (or said "try again later", code 11, the one documented transient
/// failure); returns how many did the latter.
#[track_caller]
fn all_ok(outs: &[(String, Output)]) -> usize {
    let mut again = 0;
    let mut bad = Vec::new();
    for (what, o) in outs {
        if o.stderr.to_lowercase().contains("panic") {
            bad.push(format!("{what}: panicked: {}", o.stderr.trim()));
        } else if o.error_code() == Some(11) {
            again += 1;
        } else if !o.success() {
            bad.push(format!("{what}: exit {:?}: {}", o.code, o.raw_stdout.trim()));
        }
    }
    assert!(bad.is_empty(), "{} call(s) failed:\n{}", bad.len(), bad.join("\n"));
    again
}

/// 256 ADD, CHECK and DEL calls at once over four networks (two bridge networks, one of them
/// with masquerading, two macvlan networks on one master): every call succeeds, no address is
/// given twice, and the final DELs leave nothing.
#[test]
fn storm_of_256_mixed_calls() {
    const CHECKED: usize = 16; // set up before, CHECKed during the storm
    const DELETED: usize = 16; // set up before, DELeted during the storm
    const ADDED: usize = 24; // ADDed during the storm
    const UNKNOWN: usize = 8; // DELs of containers that never were
    let hb = Netns::new();
    let hm = Netns::new();
    hm.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
    hm.ip(&["link", "set", "m0", "up"]);
    hm.ip(&["link", "set", "m1", "up"]);
    let data = TempDir::new("storm");
    let ipam = |subnet: &str| json!({"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": subnet}]]});
    let nets = [
        (
            "bridge",
            &hb,
            json!({"cniVersion": "1.0.0", "name": "stormb1", "type": "bridge", "bridge": "sbr1",
            "isGateway": true, "ipMasq": true, "ipam": ipam("10.84.0.0/24")}),
        ),
        (
            "bridge",
            &hb,
            json!({"cniVersion": "1.0.0", "name": "stormb2", "type": "bridge", "bridge": "sbr2",
            "isGateway": true, "ipam": ipam("10.85.0.0/24")}),
        ),
        (
            "macvlan",
            &hm,
            json!({"cniVersion": "1.0.0", "name": "stormm1", "type": "macvlan", "master": "m0",
            "ipam": ipam("10.86.0.0/24")}),
        ),
        (
            "macvlan",
            &hm,
            json!({"cniVersion": "1.0.0", "name": "stormm2", "type": "macvlan", "master": "m0",
            "mode": "private", "ipam": ipam("10.87.0.0/24")}),
        ),
    ]
    .map(|(plugin, host, conf)| StormNet {
        plugin,
        host,
        store: data.join(conf["name"].as_str().unwrap()),
        conf,
    });
    let host_links: Vec<Vec<(String, String)>> = [&hb, &hm].map(links).to_vec();

    // Containers: (network, id, namespace).
    let mut checked = Vec::new();
    let mut deleted = Vec::new();
    let mut added = Vec::new();
    for (n, net) in nets.iter().enumerate() {
        let name = net.conf["name"].as_str().unwrap();
        for i in 0..CHECKED {
            checked.push((n, format!("{name}-c{i}"), Netns::new()));
        }
        for i in 0..DELETED {
            deleted.push((n, format!("{name}-d{i}"), Netns::new()));
        }
        for i in 0..ADDED {
            added.push((n, format!("{name}-a{i}"), Netns::new()));
        }
    }

    // Set-up: the containers to CHECK and to DEL, all at once too.
    let setup: Vec<_> = checked
        .iter()
        .chain(&deleted)
        .map(|(n, id, ns)| (format!("set-up ADD {id}"), nets[*n].call("ADD", id, &ns.path()).spawn()))
        .collect();
    let setup = wait_all(setup);
    all_ok(&setup);
    let results: HashMap<String, Value> = setup
        .iter()
        .map(|(what, o)| (what.trim_start_matches("set-up ADD ").to_string(), o.stdout.clone()))
        .collect();

    // The storm: 256 calls started before any is waited for.
    let started = Instant::now();
    let mut storm = Vec::new();
    for (n, id, ns) in &added {
        storm.push((format!("ADD {id}"), nets[*n].call("ADD", id, &ns.path()).spawn()));
    }
    for (n, id, ns) in &checked {
        let mut conf = nets[*n].conf.clone();
        conf["prevResult"] = results[id].clone();
        let c = nets[*n].call("CHECK", id, &ns.path()).config(&conf);
        storm.push((format!("CHECK {id}"), c.spawn()));
    }
    for (n, id, ns) in &deleted {
        storm.push((format!("DEL {id}"), nets[*n].call("DEL", id, &ns.path()).spawn()));
    }
    for (n, net) in nets.iter().enumerate() {
        for i in 0..UNKNOWN {
            let id = format!("never{n}-{i}");
            storm.push((format!("DEL {id}"), net.call("DEL", &id, "/run/netns/gone").spawn()));
        }
    }
    assert_eq!(storm.len(), 256);
    let storm = wait_all(storm);
    let again = all_ok(&storm);
    eprintln!(
        "storm: 256 calls in {:?}, {again} said try again later",
        started.elapsed()
    );

    // No address twice: per network, the leases are exactly the live containers', one each,
    // and each live container has its own address on eth0.
    let storm_results: HashMap<String, Value> = storm
        .iter()
        .filter(|(what, _)| what.starts_with("ADD "))
        .map(|(what, o)| (what.trim_start_matches("ADD ").to_string(), o.stdout.clone()))
        .collect();
    for (n, net) in nets.iter().enumerate() {
        let leases = whole_leases(&net.store);
        let mut by_id: HashMap<String, String> = HashMap::new();
        for (ip, id) in &leases {
            assert!(
                by_id.insert(id.clone(), ip.clone()).is_none(),
                "{id} holds two leases: {leases:?}"
            );
        }
        let live: Vec<&(usize, String, Netns)> = checked.iter().chain(&added).filter(|(m, _, _)| *m == n).collect();
        assert_eq!(leases.len(), live.len(), "{}: {leases:?}", net.conf["name"]);
        for (_, id, ns) in live {
            let r = results.get(id).or_else(|| storm_results.get(id)).unwrap();
            let addr = r["ips"][0]["address"].as_str().unwrap();
            assert_eq!(format!("{}/24", by_id[id]), addr, "{id}");
            let shown = ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
            assert!(shown.contains(&format!("inet {addr} ")), "{id}: {shown}");
        }
    }

    // The final DELs, all at once, leave nothing.
    let dels: Vec<_> = checked
        .iter()
        .chain(&added)
        .map(|(n, id, ns)| (format!("final DEL {id}"), nets[*n].call("DEL", id, &ns.path()).spawn()))
        .collect();
    all_ok(&wait_all(dels));
    for net in &nets {
        assert!(lease_files(&net.store).is_empty(), "{:?}", lease_files(&net.store));
        assert!(temp_files(&net.store).is_empty());
    }
    for (i, h) in [&hb, &hm].into_iter().enumerate() {
        let mut now = links(h);
        now.retain(|(name, _)| name != "sbr1" && name != "sbr2");
        assert_eq!(now, host_links[i], "links left in a host namespace");
    }
    for (_, id, ns) in checked.iter().chain(&deleted).chain(&added) {
        assert!(links(ns).is_empty(), "{id}: {:?}", links(ns));
    }
    let nat: Vec<String> = nat_rules(&hb).into_iter().filter(|r| r.contains("CNI-")).collect();
    assert!(nat.is_empty(), "{nat:?}");
}

/// GC of a store with thousands of stale leases (written in the reference's layout) finishes
/// quickly and keeps exactly the valid ones.
#[test]
fn gc_of_thousands_of_stale_leases_keeps_every_valid_one() {
    const VALID: u32 = 1000;
    const STALE: u32 = 3000;
    let data = TempDir::new("gc");
    let dir = data.join("gcnet");
    std::fs::create_dir_all(&dir).unwrap();
    let ip = |i: u32| std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 88, 0, 2)) + i).to_string();
    let mut valid = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 0..VALID + STALE {
        let (id, ifname) = (format!("ctr-{i:05}"), if i % 7 == 0 { "net1" } else { "eth0" });
        let content = if i % 11 == 0 {
            id.clone() // the old format: the container id alone
        } else {
            format!("{id}\r\n{ifname}")
        };
        std::fs::write(dir.join(ip(i)), &content).unwrap();
        if i < VALID {
            valid.push(json!({"containerID": id, "ifname": ifname}));
            expected.insert(ip(i), content);
        }
    }
    // Stale in other ways: a valid container's other interface, empty leases, a writer's
    // leftover temp file.
    std::fs::write(dir.join("10.88.200.1"), "ctr-00001\r\neth9").unwrap();
    std::fs::write(dir.join("10.88.200.2"), "").unwrap();
    std::fs::write(dir.join("10.88.200.3"), "   \r\n").unwrap();
    std::fs::write(dir.join(".tmp-999999-1"), "ctr-99999\r\neth0").unwrap();
    std::fs::write(dir.join("last_reserved_ip.0"), "10.88.0.2").unwrap();

    let conf = json!({"cniVersion": "1.1.0", "name": "gcnet", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.88.0.0/16"}]]},
        "cni.dev/valid-attachments": valid});
    let host = Netns::new();
    let started = Instant::now();
    let out = spawn_group("host-local", &host, "GC", "", "", &conf)
        .wait_with_output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        check_output("GC", &out),
        Ending::Ok,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("GC of {} leases took {took:?}", VALID + STALE + 3);
    assert!(took < Duration::from_secs(30), "GC took {took:?}");
    let left: BTreeMap<String, String> = lease_files(&dir).into_iter().collect();
    assert_eq!(left.len(), expected.len());
    assert!(left == expected, "GC did not keep exactly the valid leases");
    assert!(temp_files(&dir).is_empty());

    // The store works on: a DEL of a kept attachment, an ADD (which skips the kept leases).
    let call = |cmd: &str, id: &str, ifname: &str| {
        Cni::new(bin("host-local"))
            .command(cmd)
            .container_id(id)
            .ifname(ifname)
            .host(&host)
            .config(&merged(
                &conf,
                json!({"cni.dev/valid-attachments": null, "cniVersion": "1.0.0"}),
            ))
            .run()
    };
    call("DEL", "ctr-00003", "eth0").expect_ok();
    assert!(!dir.join(ip(3)).exists());
    let r = call("ADD", "new", "eth0").expect_ok();
    // Round robin goes on after last_reserved_ip.0 (10.88.0.2): the address DEL just freed.
    assert_eq!(r["ips"][0]["address"], format!("{}/16", ip(3)));
    // A second GC keeps what the first kept (and the new lease, which it is told about).
    let mut again = conf.clone();
    again["cni.dev/valid-attachments"]
        .as_array_mut()
        .unwrap()
        .push(json!({"containerID": "new", "ifname": "eth0"}));
    let out = spawn_group("host-local", &host, "GC", "", "", &again)
        .wait_with_output()
        .unwrap();
    assert_eq!(check_output("second GC", &out), Ending::Ok);
    assert_eq!(lease_files(&dir).len(), expected.len());
}
