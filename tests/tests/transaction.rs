//! An ADD is one transaction (issue 11): a step that panics — the worst way out, which skips
//! every `Err` path — still undoes everything the ADD did. The panics come from the test-only
//! fault points of debug builds (`CNI_RS_FAULT=<point>`, see `cni::fault`).

mod macvlan_common;

use cni_tests::node::{diff, host_snapshot, snapshot, Snapshot};
use std::time::Duration;

use cni_tests::{bin, eventually, lease_files, Cni, Netns, TempDir};
use macvlan_common::Bed;
use serde_json::{json, Value};

/// Runs ADD with a panic at `point`; asserts code 100 naming the point, and that the host, the
/// container and the store are exactly as before: every lease and round-robin pointer, all
/// but host-local's own bookkeeping (the index stamp, which every change of the directory
/// renews, and the pointer undo record, which the undo uses up).
fn panics_and_leaves_nothing(what: &str, point: &str, cni: Cni, before: &Snapshot, after: impl Fn() -> Snapshot) {
    let out = cni.env("CNI_RS_FAULT", point).run();
    let msg = out.expect_error(100);
    assert!(msg.contains(&format!("fault point {point}")), "{what}: {msg}");
    let strip = |s: &Snapshot| {
        let mut s = s.clone();
        s.data
            .retain(|k, _| !k.ends_with("/.by-id/.stamp") && !k.ends_with("/.last_reserved_undo"));
        s
    };
    let (before, now) = (strip(before), strip(&after()));
    assert!(
        now == before,
        "{what}: a panic at {point} left:\n{}",
        diff(&before, &now)
    );
}

struct BridgeBed {
    host: Netns,
    data: TempDir,
}

impl BridgeBed {
    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "txnbr",
            "type": "bridge",
            "bridge": "cnitxn0",
            "isGateway": true,
            "ipMasq": true,
            "macspoofchk": true,
            "ipam": {"type": "host-local", "subnet": "10.68.0.0/24", "dataDir": self.data.path()}
        });
        cni_tests::merge(&mut c, extra);
        c
    }

    fn add(&self, id: &str, ctr: &Netns, conf: &Value) -> Cni {
        Cni::new(bin("bridge"))
            .command("ADD")
            .container_id(id)
            .netns(ctr.path())
            .host(&self.host)
            .config(conf)
    }
}

#[test]
fn a_panicking_bridge_add_leaves_nothing() {
    let bed = BridgeBed {
        host: Netns::new(),
        data: TempDir::new("txn-br"),
    };
    let conf = bed.conf(json!({}));
    // A first container, so that the store and the bridge exist with a round-robin pointer.
    let first = Netns::new();
    bed.add("first", &first, &conf).run().expect_ok();
    let ctr = Netns::new();
    for point in [
        "bridge:ipam-running",
        "bridge:after-veth",
        "bridge:after-ipam",
        "bridge:after-masq",
    ] {
        let before = snapshot(&bed.host, &ctr, bed.data.path());
        panics_and_leaves_nothing(
            "bridge, bridge present",
            point,
            bed.add("c1", &ctr, &conf),
            &before,
            || snapshot(&bed.host, &ctr, bed.data.path()),
        );
    }
    // On a bridge that this very ADD creates: the bridge goes too.
    let fresh = BridgeBed {
        host: Netns::new(),
        data: TempDir::new("txn-br2"),
    };
    // The firewall's tables and base chains, which a DEL leaves as the reference does, made
    // first by an ADD and DEL on another bridge.
    let warm = fresh.conf(json!({"bridge": "cniwarm0", "name": "warm"}));
    fresh.add("w", &ctr, &warm).run().expect_ok();
    let del = Cni::new(bin("bridge"))
        .command("DEL")
        .container_id("w")
        .netns(ctr.path());
    del.host(&fresh.host).config(&warm).run().expect_ok();
    // Its bridge loses its carrier some time after its last port went.
    eventually(Duration::from_secs(20), "cniwarm0 without carrier", || {
        fresh
            .host
            .ip(&["-o", "link", "show", "dev", "cniwarm0"])
            .contains("NO-CARRIER")
    });
    let conf = fresh.conf(json!({}));
    // The store is new too: the empty store that the first call makes stays (as the
    // reference's does), without a lease.
    let host_only = || Snapshot {
        data: Default::default(),
        ..host_snapshot(&fresh.host, fresh.data.path())
    };
    for point in ["bridge:after-veth", "bridge:after-masq"] {
        let before = host_only();
        panics_and_leaves_nothing(
            "bridge, new bridge",
            point,
            fresh.add("c1", &ctr, &conf),
            &before,
            host_only,
        );
        assert!(lease_files(&fresh.data.join("txnbr")).is_empty());
    }
    // Without the fault the same ADD works.
    fresh.add("c1", &ctr, &conf).run().expect_ok();
}

#[test]
fn a_panicking_macvlan_add_leaves_nothing() {
    let bed = Bed::new("txn");
    let lan = Netns::new();
    bed.lan_peer(&lan, "10.77.0.254/24");
    // m1 went to the LAN: give the host an address on the master for the shim's routes.
    bed.host.ip(&["addr", "add", "10.77.0.253/24", "dev", "m0"]);
    let first = Netns::new();
    let conf = bed.conf(json!({}));
    bed.add("first", &first, &conf).expect_ok();
    let shim = bed.conf(json!({"hostShim": true}));
    let ctr = Netns::new();
    for (conf, point) in [
        (&conf, "macvlan:ipam-running"),
        (&conf, "macvlan:after-ipam"),
        (&shim, "macvlan:after-ipam"),
        (&shim, "macvlan:after-shim"),
    ] {
        let before = snapshot(&bed.host, &ctr, bed.data.path());
        panics_and_leaves_nothing(
            "macvlan",
            point,
            bed.call("ADD", "c1", Some(&ctr.path()), conf),
            &before,
            || snapshot(&bed.host, &ctr, bed.data.path()),
        );
    }
    bed.call("ADD", "c1", Some(&ctr.path()), &shim).run().expect_ok();
    bed.del("c1", Some(&ctr), &shim).expect_ok();
    bed.del("first", Some(&first), &conf).expect_ok();
}
