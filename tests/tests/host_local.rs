//! Integration tests of the built `host-local` binary, run as a runtime runs it, and against the
//! reference plugin (`/usr/lib/cni/host-local`) on shared lease stores.

use std::collections::HashSet;
use std::path::PathBuf;

use cni_tests::{bin, lease_files, merge, reference_bin, Cni, Netns, Output, TempDir};
use serde_json::{json, Value};

const NET: &str = "hlnet";

/// A lease store of one test and the configs that use it.
struct Bed {
    data: TempDir,
}

impl Bed {
    fn new() -> Bed {
        Bed {
            data: TempDir::new("hl"),
        }
    }

    /// The network's lease directory.
    fn dir(&self) -> PathBuf {
        self.data.join(NET)
    }

    /// A dual-stack config of `version`, with `extra` merged into it.
    fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": NET,
            "type": "bridge",
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": [
                    [{"subnet": "10.1.0.0/24"}],
                    [{"subnet": "fd00:1::/64"}]
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
            }
        });
        merge(&mut c, extra);
        c
    }

    fn leases(&self) -> Vec<(String, String)> {
        lease_files(&self.dir())
    }

    fn lease_names(&self) -> Vec<String> {
        self.leases().into_iter().map(|(n, _)| n).collect()
    }
}

fn ours() -> Cni {
    Cni::new(bin("host-local"))
}

fn call(plugin: &Cni, cmd: &str, id: &str, conf: &Value) -> Output {
    plugin.clone().command(cmd).container_id(id).config(conf).run()
}

fn addrs(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|a| a.iter().map(|i| i["address"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn lease(id: &str, ifname: &str) -> String {
    format!("{id}\r\n{ifname}")
}

#[test]
fn dual_stack_add_check_del() {
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    let r = call(&ours(), "ADD", "c1", &conf).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.2/24", "fd00:1::2/64"]);
    assert_eq!(r["ips"][0]["gateway"], "10.1.0.1");
    assert_eq!(r["ips"][1]["gateway"], "fd00:1::1");
    assert!(r["ips"][0].get("interface").is_none());
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
    assert_eq!(
        bed.leases(),
        [
            ("10.1.0.2".into(), lease("c1", "eth0")),
            ("fd00:1::2".into(), lease("c1", "eth0"))
        ]
    );
    assert_eq!(
        std::fs::read_to_string(bed.dir().join("last_reserved_ip.0")).unwrap(),
        "10.1.0.2"
    );
    assert_eq!(
        std::fs::read_to_string(bed.dir().join("last_reserved_ip.1")).unwrap(),
        "fd00:1::2"
    );
    call(&ours(), "CHECK", "c1", &conf).expect_ok();
    let r2 = call(&ours(), "ADD", "c2", &conf).expect_ok();
    assert_eq!(addrs(&r2), ["10.1.0.3/24", "fd00:1::3/64"]);
    call(&ours(), "DEL", "c1", &conf).expect_ok();
    assert_eq!(bed.lease_names(), ["10.1.0.3", "fd00:1::3"]);
    let msg = call(&ours(), "CHECK", "c1", &conf).expect_error(104);
    assert_eq!(msg, "host-local: Failed to find address added by container c1");
}

#[test]
fn results_in_every_version() {
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let bed = Bed::new();
        let r = call(&ours(), "ADD", "c1", &bed.conf(v, json!({}))).expect_ok();
        assert_eq!(r["cniVersion"], v);
        assert_eq!(addrs(&r), ["10.1.0.2/24", "fd00:1::2/64"], "{v}");
        let with_version = matches!(v, "0.3.0" | "0.3.1" | "0.4.0");
        assert_eq!(
            r["ips"][0].get("version").cloned(),
            with_version.then(|| json!("4")),
            "{v}: {r}"
        );
        assert_eq!(
            r["ips"][1].get("version").cloned(),
            with_version.then(|| json!("6")),
            "{v}: {r}"
        );
        assert!(r.get("interfaces").is_none(), "{v}: {r}");
        assert!(r["ips"][0].get("interface").is_none(), "{v}: {r}");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0", "{v}");
    }
    // 0.2.0: one address per family, the old shape.
    let bed = Bed::new();
    let r = call(&ours(), "ADD", "c1", &bed.conf("0.2.0", json!({}))).expect_ok();
    assert_eq!(r["ip4"]["ip"], "10.1.0.2/24");
    assert_eq!(r["ip6"]["ip"], "fd00:1::2/64");
    assert_eq!(r["ip4"]["gateway"], "10.1.0.1");
}

/// Sets up `other` holding `ip`, then asks for it again through `how` for "c1": the call must
/// fail with code 103 and reserve nothing, and a request in range must work for "c2".
fn static_request_case(how: impl Fn(&str) -> (Cni, Value)) {
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    // Dynamic neighbour first, so the IPv4 set would have a free address for c1.
    call(&ours(), "ADD", "other", &conf).expect_ok();
    let (cni, extra) = how("10.1.0.77,fd00:1::77");
    let mut c = conf.clone();
    merge(&mut c, extra);
    let r = call(&cni, "ADD", "holder", &c).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.77/24", "fd00:1::77/64"]);
    assert_eq!(
        std::fs::read_to_string(bed.dir().join("10.1.0.77")).unwrap(),
        lease("holder", "eth0")
    );
    let before = bed.leases();

    // Only the IPv6 address is taken: the IPv4 one must be rolled back.
    let (cni, extra) = how("10.1.0.78,fd00:1::77");
    let mut c = conf.clone();
    merge(&mut c, extra);
    let msg = call(&cni, "ADD", "c1", &c).expect_error(103);
    assert!(msg.contains("fd00:1::77"), "{msg}");
    assert_eq!(bed.leases(), before, "a failed ADD reserves nothing");

    // Outside every range: code 7, nothing reserved.
    let (cni, extra) = how("10.200.0.1");
    let mut c = conf.clone();
    merge(&mut c, extra);
    let msg = call(&cni, "ADD", "c1", &c).expect_error(7);
    assert!(msg.contains("10.200.0.1"), "{msg}");
    assert_eq!(bed.leases(), before);

    // The gateway: code 7.
    let (cni, extra) = how("10.1.0.1");
    let mut c = conf.clone();
    merge(&mut c, extra);
    call(&cni, "ADD", "c1", &c).expect_error(7);
    assert_eq!(bed.leases(), before);

    // One request, one dynamic address: .78, which the failed call reserved and released (the
    // failed call also put the round-robin pointer back; the reference's would resume after
    // .78).
    let (cni, extra) = how("fd00:1::99");
    let mut c = conf;
    merge(&mut c, extra);
    let r = call(&cni, "ADD", "c2", &c).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.78/24", "fd00:1::99/64"]);
}

#[test]
fn static_request_by_args_cni_ips() {
    static_request_case(|ips| {
        let list: Vec<&str> = ips.split(',').collect();
        // With and without a prefix length.
        let list: Vec<String> = list
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                if i == 0 && ip.contains('.') {
                    format!("{ip}/24")
                } else {
                    ip.to_string()
                }
            })
            .collect();
        (ours(), json!({"args": {"cni": {"ips": list}}}))
    });
}

#[test]
fn static_request_by_runtime_config_ips() {
    static_request_case(|ips| {
        let list: Vec<&str> = ips.split(',').collect();
        (ours(), json!({"runtimeConfig": {"ips": list}}))
    });
}

#[test]
fn static_request_by_cni_args_ip() {
    static_request_case(|ips| {
        (
            ours().args(&format!("IgnoreUnknown=1;K8S_POD_NAME=x;IP={ips}")),
            json!({}),
        )
    });
}

#[test]
fn one_line_calls() {
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    let r = cni_tests::cni(bin("host-local"), "ADD", &[("CNI_CONTAINERID", "x")], &conf).expect_ok();
    assert_eq!(addrs(&r)[0], "10.1.0.2/24");
    assert_eq!(bed.leases()[0].1, lease("x", "eth0"));
}

#[test]
fn cni_args_unknown_keys_need_ignore_unknown() {
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    let out = ours().command("ADD").args("K8S_POD_NAME=x").config(&conf).run();
    out.expect_error(4);
    assert!(bed.leases().is_empty());
}

#[test]
fn sixty_four_concurrent_adds_get_distinct_addresses() {
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    let running: Vec<_> = (0..64)
        .map(|i| {
            ours()
                .command("ADD")
                .container_id(&format!("ctr{i}"))
                .config(&conf)
                .spawn()
        })
        .collect();
    let outs: Vec<Output> = running.into_iter().map(|r| r.wait()).collect();
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for (i, o) in outs.iter().enumerate() {
        let r = o.expect_ok();
        let a = addrs(&r);
        assert!(v4.insert(a[0].clone()), "ctr{i} got a duplicate {}", a[0]);
        assert!(v6.insert(a[1].clone()), "ctr{i} got a duplicate {}", a[1]);
        let ip4 = a[0].split('/').next().unwrap();
        assert_eq!(
            std::fs::read_to_string(bed.dir().join(ip4)).unwrap(),
            lease(&format!("ctr{i}"), "eth0")
        );
    }
    assert_eq!(bed.leases().len(), 128);
    // Round robin from an empty store: exactly .2 to .65.
    let expect: HashSet<String> = (2..66).map(|i| format!("10.1.0.{i}/24")).collect();
    assert_eq!(v4, expect);
    // And as many concurrent DELs.
    let running: Vec<_> = (0..64)
        .map(|i| {
            ours()
                .command("DEL")
                .container_id(&format!("ctr{i}"))
                .config(&conf)
                .spawn()
        })
        .collect();
    for r in running {
        r.wait().expect_ok();
    }
    assert!(bed.leases().is_empty(), "{:?}", bed.leases());
}

#[test]
fn crashed_writer_leaves_no_leak() {
    let bed = Bed::new();
    let conf = bed.conf("1.1.0", json!({}));
    std::fs::create_dir_all(bed.dir()).unwrap();
    // What the reference leaves when it dies between creating and writing a lease, and what
    // we would leave when dying between writing a temp file and linking it.
    std::fs::write(bed.dir().join("10.1.0.2"), "").unwrap();
    std::fs::write(bed.dir().join(".tmp-4242-1"), lease("ghost", "eth0")).unwrap();
    let r = call(&ours(), "ADD", "c1", &conf).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.3/24", "fd00:1::2/64"]);
    // Nothing counts the temp file as a lease of "ghost".
    call(&ours(), "CHECK", "ghost", &conf).expect_error(104);
    // GC reclaims the empty lease and the temp file, and keeps c1.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    ours().command("GC").config(&gc).run().expect_ok();
    assert_eq!(bed.lease_names(), ["10.1.0.3", "fd00:1::2"]);
    assert!(!bed.dir().join(".tmp-4242-1").exists());
    // The address is usable again once the round robin comes back to it.
    let tiny = bed.conf(
        "1.1.0",
        json!({"ipam": {"ranges": [[{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.3"}]]}}),
    );
    let r = call(&ours(), "ADD", "c2", &tiny).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.2/29"]);
}

#[test]
fn del_is_idempotent_and_needs_no_store() {
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    // No store yet: success, and nothing is created.
    call(&ours(), "DEL", "c1", &conf).expect_ok();
    assert!(!bed.dir().exists());
    call(&ours(), "ADD", "c1", &conf).expect_ok();
    call(&ours(), "ADD", "c2", &conf).expect_ok();
    for _ in 0..2 {
        ours()
            .command("DEL")
            .container_id("c1")
            .unset("CNI_NETNS")
            .config(&conf)
            .run()
            .expect_ok();
    }
    call(&ours(), "DEL", "never-added", &conf).expect_ok();
    assert_eq!(bed.lease_names(), ["10.1.0.3", "fd00:1::3"]);
    // Another interface of c2 holds nothing.
    ours()
        .command("DEL")
        .container_id("c2")
        .ifname("net1")
        .config(&conf)
        .run()
        .expect_ok();
    assert_eq!(bed.lease_names().len(), 2);
}

#[test]
fn gc_releases_what_the_runtime_no_longer_uses() {
    let bed = Bed::new();
    let conf = bed.conf("1.1.0", json!({}));
    for id in ["a", "b", "c"] {
        call(&ours(), "ADD", id, &conf).expect_ok();
    }
    ours()
        .command("ADD")
        .container_id("b")
        .ifname("net1")
        .config(&conf)
        .run()
        .expect_ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "b", "ifname": "eth0"},
        {"containerID": "c", "ifname": "eth0"}
    ]);
    ours().command("GC").config(&gc).run().expect_ok();
    let owners: HashSet<String> = bed.leases().into_iter().map(|(_, c)| c).collect();
    assert_eq!(owners, HashSet::from([lease("b", "eth0"), lease("c", "eth0")]));
    // GC needs cniVersion 1.1.0.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    ours().command("GC").config(&old).run().expect_error(1);
    // An empty keep-list releases everything.
    gc["cni.dev/valid-attachments"] = json!([]);
    ours().command("GC").config(&gc).run().expect_ok();
    assert!(bed.leases().is_empty());
}

#[test]
fn status_tells_when_adds_cannot_work() {
    let bed = Bed::new();
    let conf = bed.conf("1.1.0", json!({}));
    ours().command("STATUS").config(&conf).run().expect_ok();

    // A read-only store (a read-only bind mount in a private mount namespace of the call).
    let d = bed.data.path().to_str().unwrap().to_string();
    let script = format!("mount --bind '{d}' '{d}' && mount -o remount,bind,ro '{d}' && exec \"$@\"");
    let ro = ours().wrapper(&["unshare", "-m", "--propagation", "private", "sh", "-c", &script, "sh"]);
    let msg = ro.clone().command("STATUS").config(&conf).run().expect_error(50);
    assert!(msg.contains("Read-only file system"), "{msg}");
    ro.command("ADD").config(&conf).run().expect_error(5);

    // A data dir that cannot be created.
    let file = bed.data.join("a-file");
    std::fs::write(&file, "").unwrap();
    let mut bad = conf.clone();
    bad["ipam"]["dataDir"] = json!(file.join("sub"));
    ours().command("STATUS").config(&bad).run().expect_error(50);

    // A full range set.
    let tiny = bed.conf(
        "1.1.0",
        json!({"ipam": {"ranges": [[{"subnet": "10.1.0.0/30"}], [{"subnet": "fd00:1::/64"}]]}}),
    );
    ours().command("STATUS").config(&tiny).run().expect_ok();
    call(&ours(), "ADD", "c1", &tiny).expect_ok();
    let msg = ours().command("STATUS").config(&tiny).run().expect_error(50);
    assert_eq!(msg, "no IP addresses available in range set: 10.1.0.1-10.1.0.2");
    // STATUS needs cniVersion 1.1.0.
    let mut old = tiny.clone();
    old["cniVersion"] = json!("1.0.0");
    ours().command("STATUS").config(&old).run().expect_error(1);
}

#[test]
fn error_codes() {
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    // Not JSON: 6.
    ours().command("ADD").stdin("{not json").run().expect_error(6);
    // Wrong type: 6.
    let mut c = conf.clone();
    c["ipam"]["ranges"] = json!("10.1.0.0/24");
    ours().command("ADD").config(&c).run().expect_error(6);
    // A bad subnet: 7, naming the field.
    let mut c = conf.clone();
    c["ipam"]["ranges"][1][0]["subnet"] = json!("fd00:1::/129");
    let msg = ours().command("ADD").config(&c).run().expect_error(7);
    assert!(msg.starts_with("ipam.ranges[1][0].subnet"), "{msg}");
    let mut c = conf.clone();
    c["ipam"]["ranges"][0][0]["rangeStart"] = json!("10.2.0.5");
    let msg = ours().command("ADD").config(&c).run().expect_error(7);
    assert_eq!(
        msg,
        "ipam.ranges[0][0].rangeStart 10.2.0.5 is outside subnet 10.1.0.0/24"
    );
    // No name: 7.
    let mut c = conf.clone();
    c.as_object_mut().unwrap().remove("name");
    ours().command("ADD").config(&c).run().expect_error(7);
    // A name that would leave the data dir: 7.
    let mut c = conf.clone();
    c["name"] = json!("../escape");
    ours().command("ADD").config(&c).run().expect_error(7);
    // Missing environment: 4.
    ours()
        .command("ADD")
        .unset("CNI_CONTAINERID")
        .config(&conf)
        .run()
        .expect_error(4);
    ours()
        .command("ADD")
        .unset("CNI_NETNS")
        .config(&conf)
        .run()
        .expect_error(4);
    // Unknown version: 1; CHECK before 0.4.0: 1.
    let mut c = conf.clone();
    c["cniVersion"] = json!("9.9.9");
    ours().command("ADD").config(&c).run().expect_error(1);
    let mut c = conf.clone();
    c["cniVersion"] = json!("0.3.1");
    ours().command("CHECK").config(&c).run().expect_error(1);
    // Exhausted: 102.
    let tiny = bed.conf("1.0.0", json!({"ipam": {"ranges": [[{"subnet": "10.1.0.0/30"}]]}}));
    call(&ours(), "ADD", "c1", &tiny).expect_ok();
    let msg = call(&ours(), "ADD", "c2", &tiny).expect_error(102);
    assert_eq!(
        msg,
        "failed to allocate for range 0: no IP addresses available in range set: 10.1.0.1-10.1.0.2"
    );
    // Nothing of these calls left a lease behind but c1's.
    assert_eq!(bed.lease_names(), ["10.1.0.2"]);
}

#[test]
fn symlinked_store_is_refused() {
    let bed = Bed::new();
    let elsewhere = TempDir::new("elsewhere");
    std::os::unix::fs::symlink(elsewhere.path(), bed.dir()).unwrap();
    let conf = bed.conf("1.0.0", json!({}));
    let msg = call(&ours(), "ADD", "c1", &conf).expect_error(5);
    assert!(msg.contains("symlink"), "{msg}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn runs_inside_a_host_namespace() {
    let host = Netns::new();
    let ctr = Netns::new();
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    let r = ours()
        .command("ADD")
        .container_id("c1")
        .netns(ctr.path())
        .host(&host)
        .config(&conf)
        .run()
        .expect_ok();
    assert_eq!(addrs(&r)[0], "10.1.0.2/24");
    ours()
        .command("DEL")
        .container_id("c1")
        .netns(ctr.path())
        .host_via_ip_netns_exec(&host)
        .config(&conf)
        .run()
        .expect_ok();
    assert!(bed.leases().is_empty());
}

// ---------------------------------------------------------------------------------------
// Differential: the reference plugin and ours on one store. The reference (v1.1.1) speaks
// CNI up to 1.0.0.

fn reference() -> Option<Cni> {
    reference_bin("host-local").map(Cni::new)
}

#[test]
fn reference_adds_ours_checks_and_deletes() {
    let Some(refp) = reference() else { return };
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    let r = call(&refp, "ADD", "c1", &conf).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.2/24", "fd00:1::2/64"]);
    call(&ours(), "CHECK", "c1", &conf).expect_ok();
    // Ours continues the reference's round robin and sees its leases.
    let r = call(&ours(), "ADD", "c2", &conf).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.3/24", "fd00:1::3/64"]);
    // A second ADD of c1 sees the reference's lease and hands it back (the reference itself
    // refuses it as a duplicate allocation).
    let r = call(&ours(), "ADD", "c1", &conf).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.2/24", "fd00:1::2/64"]);
    assert_eq!(bed.lease_names(), ["10.1.0.2", "10.1.0.3", "fd00:1::2", "fd00:1::3"]);
    call(&ours(), "DEL", "c1", &conf).expect_ok();
    assert_eq!(bed.lease_names(), ["10.1.0.3", "fd00:1::3"]);
    assert!(!call(&refp, "CHECK", "c1", &conf).success());
    call(&refp, "CHECK", "c2", &conf).expect_ok();
}

#[test]
fn ours_adds_reference_checks_and_deletes() {
    let Some(refp) = reference() else { return };
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    call(&ours(), "ADD", "c1", &conf).expect_ok();
    call(&ours(), "ADD", "c2", &conf).expect_ok();
    call(&refp, "CHECK", "c1", &conf).expect_ok();
    call(&refp, "DEL", "c1", &conf).expect_ok();
    assert_eq!(bed.lease_names(), ["10.1.0.3", "fd00:1::3"]);
    // Our index must notice the reference's DEL.
    call(&ours(), "CHECK", "c1", &conf).expect_error(104);
    call(&ours(), "CHECK", "c2", &conf).expect_ok();
    // No false "duplicate allocation" for c1 now.
    let r = call(&ours(), "ADD", "c1", &conf).expect_ok();
    assert_eq!(addrs(&r), ["10.1.0.4/24", "fd00:1::4/64"]);
    // The reference's DEL releases ours, also through our index directory.
    call(&refp, "DEL", "c2", &conf).expect_ok();
    call(&refp, "DEL", "c1", &conf).expect_ok();
    assert!(bed.leases().is_empty());
    call(&ours(), "DEL", "c1", &conf).expect_ok();
}

#[test]
fn reference_and_ours_allocate_side_by_side() {
    let Some(refp) = reference() else { return };
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    let mut seen = HashSet::new();
    for i in 0..24 {
        let p = if i % 3 == 0 { &refp } else { &ours() };
        let r = call(p, "ADD", &format!("c{i}"), &conf).expect_ok();
        for a in addrs(&r) {
            assert!(seen.insert(a.clone()), "duplicate {a} at c{i}");
        }
        assert_eq!(addrs(&r)[0], format!("10.1.0.{}/24", i + 2), "round robin is shared");
    }
    // Concurrent mixed ADDs.
    let running: Vec<_> = (24..56)
        .map(|i| {
            let p = if i % 2 == 0 { refp.clone() } else { ours() };
            p.command("ADD").container_id(&format!("c{i}")).config(&conf).spawn()
        })
        .collect();
    for r in running {
        for a in addrs(&r.wait().expect_ok()) {
            assert!(seen.insert(a.clone()), "duplicate {a}");
        }
    }
    assert_eq!(bed.leases().len(), 112);
    // Each deletes the other's.
    for i in 0..56 {
        let p = if i % 2 == 0 { ours() } else { refp.clone() };
        call(&p, "DEL", &format!("c{i}"), &conf).expect_ok();
    }
    assert!(bed.leases().is_empty(), "{:?}", bed.leases());
}

#[test]
fn old_format_leases_are_released() {
    let Some(refp) = reference() else { return };
    let bed = Bed::new();
    let conf = bed.conf("1.0.0", json!({}));
    std::fs::create_dir_all(bed.dir()).unwrap();
    // Written by an old version: the container id only.
    std::fs::write(bed.dir().join("10.1.0.9"), "oldctr").unwrap();
    std::fs::write(bed.dir().join("fd00:1::9"), "oldctr\n").unwrap();
    call(&refp, "CHECK", "oldctr", &conf).expect_ok();
    call(&ours(), "CHECK", "oldctr", &conf).expect_ok();
    call(&ours(), "DEL", "oldctr", &conf).expect_ok();
    assert!(bed.leases().is_empty());
}

#[test]
fn same_results_as_reference() {
    let Some(refp) = reference() else { return };
    let rc = TempDir::new("rc");
    std::fs::write(
        rc.join("resolv.conf"),
        "nameserver 10.0.0.53\nnameserver fd00::53\ndomain example.com\nsearch a.example b.example\noptions ndots:2\n",
    )
    .unwrap();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let (a, b) = (Bed::new(), Bed::new());
        let extra = json!({"ipam": {
            "resolvConf": rc.join("resolv.conf"),
            "ranges": [
                [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100", "rangeEnd": "10.1.0.110", "gateway": "10.1.0.254"},
                 {"subnet": "10.2.0.0/24"}],
                [{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::10"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"}]
        }});
        let ca = a.conf(v, extra.clone());
        let cb = b.conf(v, extra);
        for i in 0..3 {
            let theirs = call(&refp, "ADD", &format!("c{i}"), &ca).expect_ok();
            let mine = call(&ours(), "ADD", &format!("c{i}"), &cb).expect_ok();
            assert_eq!(mine, theirs, "cniVersion {v}, ADD {i}");
        }
        assert_eq!(a.leases(), b.leases(), "{v}");
        for f in ["last_reserved_ip.0", "last_reserved_ip.1"] {
            assert_eq!(
                std::fs::read(a.dir().join(f)).unwrap(),
                std::fs::read(b.dir().join(f)).unwrap(),
                "{v} {f}"
            );
        }
        // Static requests.
        let ra = call(&refp.clone().args("IP=10.2.0.7"), "ADD", "s", &ca).expect_ok();
        let rb = call(&ours().args("IP=10.2.0.7"), "ADD", "s", &cb).expect_ok();
        assert_eq!(ra, rb, "{v} static");
    }
}
