//! Restarts, reboots and hostile namespace paths (issue 10): a container that comes back
//! without a DEL keeps its address, leases of an earlier boot do not outlive it, and
//! `CNI_NETNS` never hangs a plugin or points it at the host.
//!
//! Everything runs in private namespaces with private lease stores (see `cni_tests`).

mod macvlan_common;

use std::os::unix::net::UnixListener;
use std::time::Duration;

use cni_tests::node::{host_snapshot, Snapshot};
use cni_tests::{lease_files, Cni, Netns, Output, TempDir};
use macvlan_common::{ip_of, Bed, NsExt};
use serde_json::{json, Value};

/// No plugin call may take anywhere near this long; a call that does has hung.
const HANG: Duration = Duration::from_secs(20);

fn addr0(r: &Value) -> String {
    r["ips"][0]["address"].as_str().unwrap_or_default().to_string()
}

/// What a failed call must not change: the host namespace and the lease store.
fn snapshot(host: &Netns, data: &TempDir) -> Snapshot {
    host_snapshot(host, data.path())
}

// ---------------------------------------------------------------------------------------------
// 1. A container that restarts keeps its address.

/// A macvlan ADD of `id` into `ns` asking for the static address `ip`, as runtimes send it.
fn add_static(bed: &Bed, id: &str, ns: &Netns, ip: &str) -> Output {
    bed.call("ADD", id, Some(&ns.path()), &bed.conf(json!({})))
        .args(&format!("IgnoreUnknown=1;IP={ip}"))
        .run()
}

#[test]
fn a_restarted_macvlan_container_keeps_its_static_and_dynamic_addresses() {
    let bed = Bed::new("rst");
    let lan = Netns::new();
    bed.lan_peer(&lan, "10.77.0.254/24");
    let conf = bed.conf(json!({}));
    let (a, b) = (Netns::new(), Netns::new());
    let ra = add_static(&bed, "ca", &a, "10.77.0.50").expect_ok();
    let rb = bed.add("cb", &b, &conf).expect_ok();
    assert_eq!(addr0(&ra), "10.77.0.50/24");
    let dynamic = addr0(&rb);
    let pointer = || std::fs::read_to_string(bed.data.join(&bed.net).join("last_reserved_ip.0")).unwrap();
    let before = pointer();

    // Both containers restart: new network namespaces, the same attachments, no DEL.
    drop(a);
    drop(b);
    let (a, b) = (Netns::new(), Netns::new());
    let ra = add_static(&bed, "ca", &a, "10.77.0.50").expect_ok();
    let rb = bed.add("cb", &b, &conf).expect_ok();
    assert_eq!(addr0(&ra), "10.77.0.50/24", "the static address comes back");
    assert_eq!(addr0(&rb), dynamic, "the dynamic address comes back");
    assert_eq!(a.addrs4("eth0"), ["10.77.0.50/24"]);
    assert_eq!(b.addrs4("eth0"), std::slice::from_ref(&dynamic));
    assert_eq!(pointer(), before, "the round robin did not move");
    assert_eq!(bed.leases().len(), 2);
    assert!(lan.ping("10.77.0.50"), "the LAN reaches the restarted static container");
    assert!(
        lan.ping(&ip_of(&dynamic)),
        "the LAN reaches the restarted dynamic container"
    );

    // The static address of ca is refused to another container, naming ca.
    let c = Netns::new();
    let msg = add_static(&bed, "cc", &c, "10.77.0.50").expect_error(103);
    assert!(msg.contains("held by container ca"), "{msg}");
    assert!(c.links().is_empty(), "nothing made in cc's netns: {:?}", c.links());

    // ca restarts asking for another static address: its old lease is replaced.
    drop(a);
    let a = Netns::new();
    let ra = add_static(&bed, "ca", &a, "10.77.0.60").expect_ok();
    assert_eq!(addr0(&ra), "10.77.0.60/24");
    let mut leases = bed.leases();
    leases.sort();
    let mut want = vec!["10.77.0.60".to_string(), ip_of(&dynamic)];
    want.sort();
    assert_eq!(leases, want);

    bed.del("ca", Some(&a), &conf).expect_ok();
    bed.del("cb", Some(&b), &conf).expect_ok();
    assert!(bed.leases().is_empty());
}

#[test]
fn a_second_add_into_a_netns_that_has_the_interface_changes_nothing() {
    let bed = Bed::new("twice");
    let conf = bed.conf(json!({}));
    let a = Netns::new();
    let r = bed.add("ca", &a, &conf).expect_ok();
    let before = snapshot(&bed.host, &bed.data);
    let links = a.ip(&["-o", "link", "show"]);
    // The same ADD again, into the same (still living) namespace: eth0 is there.
    let msg = bed.add("ca", &a, &conf).expect_error(103);
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(
        snapshot(&bed.host, &bed.data),
        before,
        "the lease and the host are as before"
    );
    assert_eq!(a.ip(&["-o", "link", "show"]), links);
    bed.check("ca", &a, &conf, &r).expect_ok();
    bed.del("ca", Some(&a), &conf).expect_ok();
}

/// bridge's test bed: a private host namespace, a store, a bridge.
struct BridgeBed {
    host: Netns,
    data: TempDir,
}

impl BridgeBed {
    fn new() -> BridgeBed {
        BridgeBed {
            host: Netns::new(),
            data: TempDir::new("rst-br"),
        }
    }

    fn conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "rstbr",
            "type": "bridge",
            "bridge": "cnirst0",
            "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "10.67.0.0/24", "dataDir": self.data.path()}
        })
    }

    fn call(&self, command: &str, id: &str, ns: Option<&str>, conf: &Value) -> Cni {
        Cni::call("bridge", &self.host, command, id, ns, conf)
    }
}

#[test]
fn a_restarted_bridge_container_keeps_its_address() {
    let bed = BridgeBed::new();
    let conf = bed.conf();
    let a = Netns::new();
    let r1 = bed.call("ADD", "ca", Some(&a.path()), &conf).run().expect_ok();
    let b = Netns::new();
    bed.call("ADD", "cb", Some(&b.path()), &conf).run().expect_ok();
    drop(a);
    let a = Netns::new();
    let r2 = bed.call("ADD", "ca", Some(&a.path()), &conf).run().expect_ok();
    assert_eq!(addr0(&r2), addr0(&r1));
    assert_eq!(addr0(&r2), "10.67.0.2/24");
    assert!(a.ping("10.67.0.1"), "the restarted container reaches its gateway");
    assert_eq!(lease_files(&bed.data.join("rstbr")).len(), 2);
    for (id, ns) in [("ca", &a), ("cb", &b)] {
        bed.call("DEL", id, Some(&ns.path()), &conf).run().expect_ok();
    }
    assert!(lease_files(&bed.data.join("rstbr")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 2. Leases do not outlive a reboot.

/// Plants the bed's store as another writer left it: `files` (name, content), written as the
/// reference writes them. Returns the store's directory.
fn plant_store(bed: &Bed, files: &[(&str, &str)]) -> std::path::PathBuf {
    let store = bed.data.join(&bed.net);
    std::fs::create_dir_all(&store).unwrap();
    for (name, content) in files {
        std::fs::write(store.join(name), content).unwrap();
    }
    store
}

#[test]
fn leases_written_in_another_boot_are_released_by_the_first_call() {
    let bed = Bed::new("boot");
    let conf = bed.conf(json!({}));
    // A store as a crash or reboot leaves it: leases of containers that are gone with the
    // boot, recorded in "another boot".
    let store = plant_store(
        &bed,
        &[
            ("10.77.0.50", "gone1\r\neth0"),
            ("10.77.0.51", "gone2\r\neth0"),
            ("last_reserved_ip.0", "10.77.0.51"),
            (".boot_id", "0b0b0b0b-0000-4000-8000-000000000000\n"),
        ],
    );
    // The container that had .50 comes back under a new id after the reboot and asks for it.
    let a = Netns::new();
    let r = add_static(&bed, "new1", &a, "10.77.0.50").expect_ok();
    assert_eq!(addr0(&r), "10.77.0.50/24");
    assert_eq!(bed.leases(), ["10.77.0.50"]);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(std::fs::read_to_string(store.join(".boot_id")).unwrap(), boot);
    // Later calls of this boot release nothing.
    let b = Netns::new();
    let r = bed.add("new2", &b, &conf).expect_ok();
    assert_eq!(addr0(&r), "10.77.0.51/24", "round robin goes on after the static .50");
    assert_eq!(bed.leases().len(), 2);
    bed.del("new1", Some(&a), &conf).expect_ok();
    bed.del("new2", Some(&b), &conf).expect_ok();
}

#[test]
fn a_store_of_the_reference_is_adopted_and_the_opt_out_keeps_leases() {
    let bed = Bed::new("adopt");
    // No boot record (the reference's store): nothing is released on a guess.
    let conf = bed.conf(json!({}));
    let store = plant_store(&bed, &[("10.77.0.50", "ref1\r\neth0")]);
    let a = Netns::new();
    bed.add("c1", &a, &conf).expect_ok();
    assert_eq!(bed.leases(), ["10.77.0.2", "10.77.0.50"]);
    // The opt-out: a store of another boot keeps its leases.
    let keep = bed.conf(json!({"ipam": {"releaseOnReboot": false}}));
    std::fs::write(store.join(".boot_id"), "0b0b0b0b-1111-4000-8000-000000000000\n").unwrap();
    let b = Netns::new();
    bed.add("c2", &b, &keep).expect_ok();
    assert_eq!(bed.leases(), ["10.77.0.2", "10.77.0.3", "10.77.0.50"]);
    for (id, ns) in [("c1", &a), ("c2", &b)] {
        bed.del(id, Some(ns), &conf).expect_ok();
    }
    assert_eq!(bed.leases(), ["10.77.0.50"]);
}

// ---------------------------------------------------------------------------------------------
// 3. CNI_NETNS never hangs the plugin and never points at the host.

/// Paths that are anything but a network namespace, with the error code each gets.
struct Hostile {
    _dir: TempDir,
    _sock: UnixListener,
    cases: Vec<(String, &'static str, u64)>,
}

fn hostile_paths() -> Hostile {
    let dir = TempDir::new("hostile");
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sock_path = dir.join("sock");
    let sock = UnixListener::bind(&sock_path).unwrap();
    let file = dir.join("file");
    std::fs::write(&file, "").unwrap();
    let link = dir.join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cases = vec![
        (s(&fifo), "FIFO", 4),
        (s(&link), "FIFO", 4),
        (s(&sock_path), "socket", 4),
        ("/dev/null".to_string(), "character device", 4),
        (s(dir.path()), "directory", 4),
        (s(&file), "regular file", 4),
        ("/proc/self/ns/mnt".to_string(), "mount namespace", 4),
        (s(&dir.join("missing")), "does not exist", 3),
    ];
    Hostile {
        _dir: dir,
        _sock: sock,
        cases,
    }
}

#[test]
fn hostile_netns_paths_fail_at_once_with_nothing_changed() {
    let hostile = hostile_paths();
    // macvlan and bridge, every verb that enters the namespace.
    let mv = Bed::new("hostile");
    let mv_conf = mv.conf(json!({}));
    let br = BridgeBed::new();
    let br_conf = br.conf();
    for (path, what, code) in &hostile.cases {
        for verb in ["ADD", "CHECK", "DEL"] {
            if verb == "DEL" && *code == 3 {
                continue; // a DEL whose namespace is gone is fine (below)
            }
            let mut check_conf = mv_conf.clone();
            check_conf["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [], "ips": []});
            let before = snapshot(&mv.host, &mv.data);
            let c = if verb == "CHECK" { &check_conf } else { &mv_conf };
            let out = mv.call(verb, "ch", Some(path), c).spawn().wait_within(HANG);
            let msg = out.expect_error(*code);
            assert!(
                msg.contains(what) && msg.contains(path.as_str()),
                "macvlan {verb} {path}: {msg}"
            );
            assert_eq!(
                snapshot(&mv.host, &mv.data),
                before,
                "macvlan {verb} {path} changed the node"
            );

            let mut check_conf = br_conf.clone();
            check_conf["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [], "ips": []});
            let before = snapshot(&br.host, &br.data);
            let c = if verb == "CHECK" { &check_conf } else { &br_conf };
            let out = br.call(verb, "ch", Some(path), c).spawn().wait_within(HANG);
            let msg = out.expect_error(*code);
            assert!(msg.contains(what), "bridge {verb} {path}: {msg}");
            assert_eq!(
                snapshot(&br.host, &br.data),
                before,
                "bridge {verb} {path} changed the node"
            );
        }
    }
    // A DEL of an attachment whose namespace is gone releases its lease.
    let a = Netns::new();
    mv.add("gone", &a, &mv_conf).expect_ok();
    let path = a.path();
    drop(a);
    mv.call("DEL", "gone", Some(&path), &mv_conf)
        .spawn()
        .wait_within(HANG)
        .expect_ok();
    assert!(mv.leases().is_empty());
}

#[test]
fn the_plugins_own_netns_is_refused_unless_overridden() {
    let bed = Bed::new("own");
    let conf = bed.conf(json!({}));
    // The host's own interface called eth0, which a DEL into the host would delete.
    bed.host
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let own = [bed.host.path(), "/proc/self/ns/net".to_string()];
    for path in &own {
        for verb in ["ADD", "CHECK", "DEL"] {
            let mut c = conf.clone();
            if verb == "CHECK" {
                c["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [], "ips": []});
            }
            let before = snapshot(&bed.host, &bed.data);
            let out = bed.call(verb, "own", Some(path), &c).ifname("eth0").run();
            let msg = out.expect_error(8);
            assert!(msg.contains("plugin's own network namespace"), "{verb} {path}: {msg}");
            assert!(msg.contains("CNI_NETNS_OVERRIDE"), "{msg}");
            assert_eq!(snapshot(&bed.host, &bed.data), before, "{verb} {path} changed the host");
        }
    }
    assert!(bed.host.has_link("eth0"), "the host's eth0 is still there");

    // bridge too.
    let br = BridgeBed::new();
    br.host
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    for verb in ["ADD", "DEL"] {
        let out = br.call(verb, "own", Some(&br.host.path()), &br.conf()).run();
        out.expect_error(8);
    }
    assert!(br.host.has_link("eth0"));
    let mut links = br.host.links();
    links.sort();
    assert_eq!(links, ["eth0", "eth0p"], "no bridge, no veth made");

    // With the override the caller takes the responsibility: the interface is made in the
    // plugin's own namespace, and DEL removes it there.
    for value in ["1", "true", "TRUE"] {
        let r = bed
            .call("ADD", "own", Some(&bed.host.path()), &conf)
            .ifname("net9")
            .env("CNI_NETNS_OVERRIDE", value)
            .run()
            .expect_ok();
        assert_eq!(r["interfaces"][0]["name"], "net9");
        assert!(bed.host.has_link("net9"));
        bed.call("DEL", "own", Some(&bed.host.path()), &conf)
            .ifname("net9")
            .env("CNI_NETNS_OVERRIDE", value)
            .run()
            .expect_ok();
        assert!(!bed.host.has_link("net9"));
    }
    assert!(bed.leases().is_empty());
    // Any other value does not override.
    bed.call("ADD", "own", Some(&bed.host.path()), &conf)
        .ifname("net9")
        .env("CNI_NETNS_OVERRIDE", "yes")
        .run()
        .expect_error(8);
}

#[test]
fn a_config_without_type_is_refused() {
    let mv = Bed::new("notype");
    let mut conf = mv.conf(json!({}));
    conf.as_object_mut().unwrap().remove("type");
    let a = Netns::new();
    let msg = mv.add("c1", &a, &conf).expect_error(7);
    assert!(msg.contains("\"type\""), "{msg}");
    assert!(a.links().is_empty() && mv.leases().is_empty());
    let br = BridgeBed::new();
    let mut conf = br.conf();
    conf.as_object_mut().unwrap().remove("type");
    let out: Output = br.call("ADD", "c1", Some(&a.path()), &conf).run();
    out.expect_error(7);
    assert!(a.links().is_empty());
    assert!(br.host.links().is_empty(), "no bridge made: {:?}", br.host.links());
}
