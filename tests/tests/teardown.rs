//! DEL reads only what it needs (issue 19, item 6): a config that went bad since the ADD, in
//! any key that only ADD reads, still releases the lease and removes the interface, the rules
//! and the routes. What DEL needs is the network name, the IPAM type and the store's
//! location; the rest is read leniently or not at all (`cni::teardown`).
//!
//! Each case: an ADD with a good config, then a DEL with the same config broken in one key,
//! then the node is checked. The plugins run as a runtime runs them, inside private "host"
//! namespaces, with private lease stores. Needs root and `cargo build --workspace --bins`.

mod macvlan_common;

use std::path::PathBuf;

use cni_tests::{assert_no_failures, bin, lease_files, merged, unique_name, Cni, Netns, Output, TempDir};
use macvlan_common::Bed as MacvlanBed;
use serde_json::{json, Value};

/// What an ADD reads and a DEL need not: `(what, merged into the good config)` (a `null`
/// removes the key), for every plugin. The `ipam` ones go to host-local, bridge's and
/// macvlan's IPAM alike.
fn common_breakage() -> Vec<(&'static str, Value)> {
    vec![
        ("a route without dst", json!({"ipam": {"routes": [{"gw": "10.0.0.1"}]}})),
        ("routes not a list", json!({"ipam": {"routes": "default"}})),
        (
            "a subnet with host bits",
            json!({"ipam": {"ranges": [[{"subnet": "10.72.0.5/24"}]]}}),
        ),
        (
            "a subnet that is no CIDR",
            json!({"ipam": {"ranges": [[{"subnet": "bogus"}]]}}),
        ),
        (
            "a subnet that is a number",
            json!({"ipam": {"ranges": [[{"subnet": 5}]]}}),
        ),
        (
            "a rangeStart outside the subnet",
            json!({"ipam": {"ranges": [[{"subnet": "10.72.0.0/24", "rangeStart": "10.99.0.1"}]]}}),
        ),
        (
            "a gateway of the other family",
            json!({"ipam": {"ranges": [[{"subnet": "10.72.0.0/24", "gateway": "fd00::1"}]]}}),
        ),
        ("ranges not a list", json!({"ipam": {"ranges": 5}})),
        ("no ranges at all", json!({"ipam": {"ranges": null}})),
        (
            "a resolvConf that does not exist",
            json!({"ipam": {"resolvConf": "/nonexistent/resolv.conf"}}),
        ),
        ("a resolvConf that is a number", json!({"ipam": {"resolvConf": 5}})),
        ("a bad releaseOnReboot", json!({"ipam": {"releaseOnReboot": "yes"}})),
        ("bad dns", json!({"dns": {"nameservers": "10.0.0.1"}})),
        ("dns not an object", json!({"dns": 5})),
        (
            "a requested address that is none",
            json!({"args": {"cni": {"ips": ["nope"]}}}),
        ),
        ("args not an object", json!({"args": 5})),
        ("runtimeConfig not an object", json!({"runtimeConfig": 5})),
        ("runtime ips that are none", json!({"runtimeConfig": {"ips": [5]}})),
        (
            "runtime ipRanges that are none",
            json!({"runtimeConfig": {"ipRanges": [[{"subnet": "x"}]]}}),
        ),
        ("a prevResult that is no result", json!({"prevResult": "junk"})),
        (
            "a prevResult with a bad address",
            json!({"prevResult": {"ips": [{"address": "x"}]}}),
        ),
        ("no type", json!({"type": null})),
        ("a type that is a number", json!({"type": 5})),
    ]
}

/// The store's index entry of an attachment (see `ipam/host-local/src/disk.rs`): gone or
/// empty once its lease is released.
fn index_entry(dir: &std::path::Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(".by-id").join(format!("{id}:eth0")))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a DEL or GC of a broken config succeeded; a failure is noted for `what`.
fn ended_ok(out: &Output, what: &str, failures: &mut Vec<String>) -> bool {
    if out.code != Some(0) {
        failures.push(format!(
            "{what}: failed ({:?}): {} {}",
            out.code,
            out.raw_stdout.trim(),
            out.stderr.trim()
        ));
        return false;
    }
    true
}

#[test]
fn host_local_del_releases_whatever_only_add_reads_is_broken() {
    let data = TempDir::new("td-hl");
    let good = json!({
        "cniVersion": "1.0.0", "name": "tdhl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.72.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let dir = data.join("tdhl");
    let call = |cmd: &str, conf: &Value| Cni::new(bin("host-local")).command(cmd).container_id("c1").config(conf);
    let mut cases = common_breakage();
    cases.push((
        "two IPv4 range sets in a 0.2.0 config",
        json!({"cniVersion": "0.2.0", "ipam": {"ranges": [[{"subnet": "10.72.0.0/24"}], [{"subnet": "10.73.0.0/24"}]]}}),
    ));
    let mut failures = Vec::new();
    for (what, broken) in cases {
        call("ADD", &good).run().expect_ok();
        assert_eq!(lease_files(&dir).len(), 1, "{what}: the ADD leased");
        let out = call("DEL", &merged(&good, broken)).run();
        if ended_ok(&out, what, &mut failures) {
            let left = lease_files(&dir);
            if !left.is_empty() {
                failures.push(format!("{what}: lease left: {left:?}"));
            }
            if !index_entry(&dir, "c1").is_empty() {
                failures.push(format!("{what}: index entry left: {}", index_entry(&dir, "c1")));
            }
        }
        // Whatever happened, start the next case from an empty store.
        call("DEL", &good).run();
    }
    assert_no_failures(failures);
}

/// Range sets that do not read: DEL makes two passes, so that an old-format lease (the
/// container id alone, as older reference plugins wrote) goes with the new-format one. With
/// range sets that read, one pass per set, as the reference.
#[test]
fn host_local_del_with_unreadable_ranges_releases_both_lease_formats() {
    let data = TempDir::new("td-fmt");
    let good = json!({
        "cniVersion": "1.0.0", "name": "tdfmt", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.74.0.0/24"}]]}
    });
    let dir = data.join("tdfmt");
    let call = |cmd: &str, conf: &Value| Cni::new(bin("host-local")).command(cmd).container_id("c1").config(conf);
    let plant_old_format = || std::fs::write(dir.join("10.74.0.50"), "c1").unwrap();

    call("ADD", &good).run().expect_ok();
    plant_old_format();
    call("DEL", &good).run().expect_ok();
    assert_eq!(
        lease_files(&dir),
        [("10.74.0.50".to_string(), "c1".to_string())],
        "one range set: one pass, the new-format lease goes (as the reference)"
    );
    call("DEL", &good).run().expect_ok();
    assert!(lease_files(&dir).is_empty(), "the next DEL takes the old one");

    call("ADD", &good).run().expect_ok();
    plant_old_format();
    assert_eq!(lease_files(&dir).len(), 2);
    let bad = merged(&good, json!({"ipam": {"ranges": [[{"subnet": "10.74.0.0/33"}]]}}));
    call("DEL", &bad).run().expect_ok();
    assert!(lease_files(&dir).is_empty(), "left: {:?}", lease_files(&dir));
}

/// What DEL cannot do without is still refused, naming the key: a DEL that does not know
/// where the leases are must not say it released them.
#[test]
fn del_without_the_store_or_the_name_fails_and_names_the_key() {
    let data = TempDir::new("td-need");
    let good = json!({
        "cniVersion": "1.0.0", "name": "tdneed", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.75.0.0/24"}]]}
    });
    let call = |cmd: &str, conf: &Value| Cni::new(bin("host-local")).command(cmd).container_id("c1").config(conf);
    call("ADD", &good).run().expect_ok();
    for (broken, code, key) in [
        (json!({"ipam": {"dataDir": 5}}), 6, "ipam.dataDir"),
        (json!({"ipam": {"store": {"type": "zookeeper"}}}), 7, "ipam.store"),
        (json!({"name": 5}), 6, "name"),
        (json!({"name": null}), 7, "name"),
        (json!({"cniVersion": "9.9.9"}), 1, "9.9.9"),
    ] {
        let msg = call("DEL", &merged(&good, broken.clone())).run().expect_error(code);
        assert!(msg.contains(key), "{broken}: {msg}");
        assert_eq!(lease_files(&data.join("tdneed")).len(), 1, "{broken}");
    }
    // bridge names the IPAM type it cannot read.
    let host = Netns::new();
    let conf = merged(&good, json!({"type": "bridge", "ipam": {"type": 5}}));
    let msg = Cni::call("bridge", &host, "DEL", "c1", None, &conf)
        .run()
        .expect_error(6);
    assert!(msg.contains("ipam.type"), "{msg}");
    call("DEL", &good).run().expect_ok();
}

/// `(what, merged into the good config)` that only bridge's ADD reads.
fn bridge_breakage() -> Vec<(&'static str, Value)> {
    vec![
        ("mtu \"big\"", json!({"mtu": "big"})),
        ("mtu 20", json!({"mtu": 20})),
        ("vlan \"x\"", json!({"vlan": "x"})),
        ("vlan 5000", json!({"vlan": 5000})),
        ("a vlanTrunk without maxID", json!({"vlanTrunk": [{"minID": 10}]})),
        ("vlanTrunk not a list", json!({"vlanTrunk": 5})),
        (
            "a bridge name that is too long",
            json!({"bridge": "a-very-long-bridge-name"}),
        ),
        ("a bridge name that is a number", json!({"bridge": 5})),
        ("a bad runtimeConfig.mac", json!({"runtimeConfig": {"mac": "zz"}})),
        (
            "a runtimeConfig.mac that is a number",
            json!({"runtimeConfig": {"mac": 5}}),
        ),
        (
            "a bad args.cni.mac",
            json!({"args": {"cni": {"mac": "ff:ff:ff:ff:ff:ff"}}}),
        ),
        (
            "hairpinMode and promiscMode",
            json!({"hairpinMode": true, "promiscMode": true}),
        ),
        ("an unknown ipMasqBackend", json!({"ipMasqBackend": "ipfw"})),
        ("ipMasq \"yes\"", json!({"ipMasq": "yes"})),
        ("macspoofchk 1", json!({"macspoofchk": 1})),
        ("isGateway \"yes\"", json!({"isGateway": "yes"})),
        (
            "disableContainerInterface with ipam",
            json!({"disableContainerInterface": true}),
        ),
        ("enabledad \"no\"", json!({"enabledad": "no"})),
    ]
}

#[test]
fn bridge_del_tears_down_whatever_only_add_reads_is_broken() {
    let host = Netns::new();
    let ctr = Netns::new();
    let data = TempDir::new("td-br");
    let good = json!({
        "cniVersion": "1.0.0", "name": "tdbr", "type": "bridge", "bridge": "cnitd0",
        "isGateway": true, "ipMasq": true, "macspoofchk": true,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.72.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let dir = data.join("tdbr");
    let call = |cmd: &str, conf: &Value| Cni::call("bridge", &host, cmd, "c1", Some(&ctr.path()), conf);
    let nat = || String::from_utf8_lossy(&host.exec(&["iptables", "-w", "-t", "nat", "-S"]).stdout).into_owned();
    let spoofchk =
        || String::from_utf8_lossy(&host.exec(&["nft", "list", "table", "bridge", "nat"]).stdout).into_owned();
    let mut cases = bridge_breakage();
    cases.extend(common_breakage());
    let mut failures = Vec::new();
    for (what, broken) in cases {
        call("ADD", &good).run().expect_ok();
        assert_eq!(ctr.links(), ["eth0"], "{what}: the ADD made the interface");
        assert!(
            nat().contains("CNI-") && spoofchk().contains("cni-br-iface-c1-eth0"),
            "{what}: rules"
        );
        let out = call("DEL", &merged(&good, broken)).run();
        if ended_ok(&out, what, &mut failures) {
            let mut left = Vec::new();
            if !ctr.links().is_empty() {
                left.push(format!("container links {:?}", ctr.links()));
            }
            if host.links() != ["cnitd0"] {
                left.push(format!("host links {:?}", host.links()));
            }
            if !lease_files(&dir).is_empty() {
                left.push(format!("leases {:?}", lease_files(&dir)));
            }
            if nat().contains("CNI-") {
                left.push("masquerade rules".into());
            }
            if spoofchk().contains("cni-br-iface-c1-eth0") {
                left.push("spoof check rules".into());
            }
            if !left.is_empty() {
                failures.push(format!("{what}: left {}", left.join(", ")));
            }
        }
        call("DEL", &good).run();
    }
    assert_no_failures(failures);
}

/// The macvlan bed with a host address on the master (for `hostShim`'s routes) and a network
/// name of its own (the shim's records are keyed by it), whose records are removed on drop.
struct ShimBed {
    bed: MacvlanBed,
    net: String,
}

impl Drop for ShimBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(PathBuf::from("/run/cni-rs/macvlan-shim").join(&self.net));
    }
}

#[test]
fn macvlan_del_tears_down_whatever_only_add_reads_is_broken() {
    let sb = ShimBed {
        bed: MacvlanBed::new("td"),
        net: unique_name("tdmv"),
    };
    let bed = &sb.bed;
    bed.host.ip(&["addr", "add", "10.72.0.250/24", "dev", "m0"]);
    let ctr = Netns::new();
    let good = bed.conf(json!({
        "name": sb.net, "hostShim": true,
        "ipam": {"ranges": [[{"subnet": "10.72.0.0/24", "rangeStart": "10.72.0.100"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    }));
    let dir = bed.data.join(&sb.net);
    let shim_routes = || bed.host.ip(&["-4", "route", "show", "table", "all", "proto", "109"]);
    let mut cases = vec![
        ("an unknown mode", json!({"mode": "weird"})),
        ("a mode that is a number", json!({"mode": 5})),
        ("mtu \"big\"", json!({"mtu": "big"})),
        ("mtu 10", json!({"mtu": 10})),
        ("a bad mac", json!({"mac": "zz"})),
        ("a multicast mac", json!({"mac": "01:00:00:00:00:01"})),
        ("a bad runtimeConfig.mac", json!({"runtimeConfig": {"mac": "zz"}})),
        ("a master that does not exist", json!({"master": "nosuch0"})),
        ("a master name that is no name", json!({"master": "a/b"})),
        ("bcqueuelen \"x\"", json!({"bcqueuelen": "x"})),
        (
            "sourceMacs outside source mode",
            json!({"sourceMacs": ["02:00:00:00:00:01"]}),
        ),
        ("sourceMacs not a list", json!({"sourceMacs": 5})),
        ("linkInContainer \"yes\"", json!({"linkInContainer": "yes"})),
        ("hostShim \"yes\"", json!({"hostShim": "yes"})),
        ("hostShim in vepa mode", json!({"mode": "vepa"})),
    ];
    cases.extend(common_breakage());
    let mut failures = Vec::new();
    for (what, broken) in cases {
        bed.add("c1", &ctr, &good).expect_ok();
        assert_eq!(ctr.links(), ["eth0"], "{what}: the ADD made the interface");
        assert!(
            !shim_routes().trim().is_empty(),
            "{what}: the ADD made the shim's route"
        );
        let out = bed.del("c1", Some(&ctr), &merged(&good, broken));
        if ended_ok(&out, what, &mut failures) {
            let mut left = Vec::new();
            if !ctr.links().is_empty() {
                left.push(format!("container links {:?}", ctr.links()));
            }
            if !lease_files(&dir).is_empty() {
                left.push(format!("leases {:?}", lease_files(&dir)));
            }
            if !shim_routes().trim().is_empty() {
                left.push(format!("shim routes {}", shim_routes().trim()));
            }
            if bed.host.links().iter().any(|l| l == "mvsh-m0") {
                left.push("the shim".into());
            }
            if !left.is_empty() {
                failures.push(format!("{what}: left {}", left.join(", ")));
            }
        }
        bed.del("c1", Some(&ctr), &good);
    }
    assert_no_failures(failures);
}

/// GC reads what DEL reads, and its keep-list: a config broken in what only ADD reads still
/// releases the leases and rules of the attachments that are gone.
#[test]
fn gc_releases_whatever_only_add_reads_is_broken() {
    let host = Netns::new();
    let ctr = Netns::new();
    let data = TempDir::new("td-gc");
    let good = json!({
        "cniVersion": "1.1.0", "name": "tdgc", "type": "bridge", "bridge": "cnitdgc0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.76.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let dir = data.join("tdgc");
    let nat = || String::from_utf8_lossy(&host.exec(&["iptables", "-w", "-t", "nat", "-S"]).stdout).into_owned();
    let mut cases = bridge_breakage();
    cases.extend(common_breakage());
    let mut failures = Vec::new();
    for (what, broken) in cases {
        // (bridge's GC runs host-local's, in its process: both read the broken config.)
        Cni::call("bridge", &host, "ADD", "c1", Some(&ctr.path()), &good)
            .run()
            .expect_ok();
        let gc = merged(&good, merged(&broken, json!({"cni.dev/valid-attachments": []})));
        let out = Cni::call("bridge", &host, "GC", "c1", None, &gc).run();
        if ended_ok(&out, what, &mut failures) {
            if !lease_files(&dir).is_empty() {
                failures.push(format!("{what}: leases left {:?}", lease_files(&dir)));
            }
            if nat().contains("CNI-") {
                failures.push(format!("{what}: masquerade rules left"));
            }
        }
        Cni::call("bridge", &host, "DEL", "c1", Some(&ctr.path()), &good).run();
    }
    assert_no_failures(failures);
}
