//! The netlink facade (`cni::netlink::Nl`) driven directly, as netavark's `src/test/netlink.rs`
//! drives its own: links (veth, bridge, macvlan on a veth end), their state, addresses and
//! routes, made through [`Nl`] and seen with `ip`, and the kernel's errors as errno.
//!
//! Every [`Nl`] here is opened inside a private namespace of the test ([`Bed`]) and is checked
//! to see nothing but that namespace's `lo` before it changes anything: nothing here touches
//! the machine's own namespace. Needs root.

use std::net::IpAddr;

use cni::netlink::{Link, LinkChange, MacvlanMode, MacvlanOptions, MarkedRoute, NewRoute, Nl, NlError};
use cni_tests::{kernel_has_vlan_filtering, Netns};

/// A private namespace, the facade's socket inside it, and the namespace opened as the
/// facade takes it (for veth peers and moves).
struct Bed {
    ns: Netns,
    cni_ns: cni::netns::Netns,
    nl: Nl,
}

impl Bed {
    #[track_caller]
    fn new() -> Bed {
        let ns = Netns::new();
        let cni_ns = cni::netns::Netns::open(&ns.path()).expect("opening the test namespace");
        let nl = Nl::open_in(&cni_ns).expect("a netlink socket in the test namespace");
        // The socket is in the fresh namespace, not the machine's: it sees only `lo`.
        let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["lo"], "the socket is not in the test's fresh namespace");
        Bed { ns, cni_ns, nl }
    }

    /// The link `name`, which must exist.
    #[track_caller]
    fn link(&self, name: &str) -> Link {
        self.nl.link(name).unwrap().unwrap_or_else(|| panic!("no link {name}"))
    }

    /// A veth pair `a`/`b`, both in this namespace; returns their indexes.
    #[track_caller]
    fn veth(&self, a: &str, b: &str) -> (u32, u32) {
        self.nl.add_veth(a, b, &self.cni_ns, None, None).unwrap();
        (self.link(a).index, self.link(b).index)
    }

    #[track_caller]
    fn up(&self, index: u32) {
        let up = LinkChange {
            up: Some(true),
            ..Default::default()
        };
        self.nl.set_link(index, &up).unwrap();
    }

    /// `ip -n <ns> args...`.
    #[track_caller]
    fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args)
    }
}

/// The error's errno is `errno` and its message names the operation (`op`).
#[track_caller]
fn assert_errno<T: std::fmt::Debug>(r: Result<T, NlError>, errno: i32, op: &str) {
    let e = r.expect_err("the kernel refuses this");
    assert_eq!(
        e.errno,
        Some(errno),
        "{e} (want {})",
        std::io::Error::from_raw_os_error(errno)
    );
    assert!(e.is(errno));
    assert!(e.to_string().contains(op), "{e} does not name {op:?}");
}

#[test]
fn veth_pairs_are_made_found_and_deleted() {
    let b = Bed::new();
    let (a, p) = b.veth("nla", "nlb");
    let la = b.link("nla");
    let lb = b.link("nlb");
    assert_eq!(la.kind.as_deref(), Some("veth"));
    assert_eq!(lb.kind.as_deref(), Some("veth"));
    assert_eq!(la.parent, Some(p), "each end names its peer");
    assert_eq!(lb.parent, Some(a));
    assert!(!la.up && !la.oper_up);
    assert_eq!(b.nl.link_by_index(a).unwrap().as_ref(), Some(&la));
    let mut names: Vec<String> = b.nl.links().unwrap().into_iter().map(|l| l.name).collect();
    names.sort();
    assert_eq!(names, ["lo", "nla", "nlb"]);
    assert!(b.ip(&["-o", "link", "show", "nla"]).contains("nla@nlb"));
    let mut seen = b.ns.links();
    seen.sort();
    assert_eq!(seen, ["nla", "nlb"], "ip sees what the facade made");

    // A second pair of the same name: EEXIST, nothing changed.
    assert_errno(
        b.nl.add_veth("nla", "nlc", &b.cni_ns, None, None),
        libc::EEXIST,
        "creating veth pair nla/nlc",
    );
    assert!(b.nl.link("nlc").unwrap().is_none());

    // Deleting one end deletes the pair.
    b.nl.del_link(a).unwrap();
    assert!(b.nl.link("nla").unwrap().is_none());
    assert!(b.nl.link("nlb").unwrap().is_none());
    assert!(b.nl.link_by_index(p).unwrap().is_none());
    assert!(b.ns.links().is_empty());
    assert_errno(b.nl.del_link(a), libc::ENODEV, &format!("deleting link {a}"));
    assert!(!b.nl.del_link_by_name("nla").unwrap(), "nothing to delete");

    // By name.
    b.veth("nla", "nlb");
    assert!(b.nl.del_link_by_name("nlb").unwrap());
    assert!(b.ns.links().is_empty());
}

#[test]
fn a_veth_peer_is_made_in_and_moved_to_another_namespace() {
    let b = Bed::new();
    let other = Bed::new();
    b.nl.add_veth("nlh", "nlc", &other.cni_ns, Some(1400), Some([0x02, 0, 0, 0, 0x4e, 1]))
        .unwrap();
    let h = b.link("nlh");
    assert!(b.nl.link("nlc").unwrap().is_none(), "the peer is not here");
    let c = other.link("nlc");
    assert_eq!((h.mtu, c.mtu), (1400, 1400));
    assert_eq!(c.mac, "02:00:00:00:4e:01");
    assert!(h.link_netnsid.is_some(), "the peer is in another namespace");
    assert!(other.ip(&["-o", "link", "show", "nlc"]).contains("02:00:00:00:4e:01"));
    assert_eq!(b.ns.links(), ["nlh"]);

    // Moved back: both ends here.
    other.nl.move_link(c.index, &b.cni_ns).unwrap();
    assert!(other.ns.links().is_empty());
    assert_eq!(b.link("nlc").mac, "02:00:00:00:4e:01");
    let mut here = b.ns.links();
    here.sort();
    assert_eq!(here, ["nlc", "nlh"]);
}

#[test]
fn link_state_up_down_mtu_mac_name_alias_promisc() {
    let b = Bed::new();
    let (a, p) = b.veth("nls0", "nls1");
    b.up(a);
    assert!(b.link("nls0").up);
    assert!(b.ip(&["-o", "link", "show", "nls0"]).contains(",UP"));
    b.up(p);
    assert!(b.link("nls1").up);

    let change = LinkChange {
        mtu: Some(1280),
        mac: Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
        promisc: Some(true),
        ..Default::default()
    };
    b.nl.set_link(a, &change).unwrap();
    let l = b.link("nls0");
    assert_eq!(l.mtu, 1280);
    assert_eq!(l.mac, "02:11:22:33:44:55");
    assert!(l.promisc);
    let shown = b.ip(&["-o", "link", "show", "nls0"]);
    assert!(
        shown.contains("mtu 1280") && shown.contains("02:11:22:33:44:55"),
        "{shown}"
    );
    assert!(shown.contains("PROMISC"), "{shown}");

    // A rename needs the link down; in one request the kernel renames before it changes
    // flags.
    let down = LinkChange {
        up: Some(false),
        ..Default::default()
    };
    b.nl.set_link(a, &down).unwrap();
    assert!(!b.link("nls0").up);
    let rename = LinkChange {
        name: Some("nlrenamed".into()),
        up: Some(true),
        ..Default::default()
    };
    b.nl.set_link(a, &rename).unwrap();
    assert!(b.nl.link("nls0").unwrap().is_none());
    let l = b.link("nlrenamed");
    assert_eq!(l.index, a);
    assert!(l.up);
    // A rename to a name that is taken: EEXIST, nothing changed.
    let taken = LinkChange {
        name: Some("nls1".into()),
        ..Default::default()
    };
    assert_errno(b.nl.set_link(a, &taken), libc::EEXIST, &format!("changing link {a}"));
    assert_eq!(b.link("nlrenamed").index, a);

    b.nl.set_alias(a, "made by a test").unwrap();
    assert_eq!(b.link("nlrenamed").alias.as_deref(), Some("made by a test"));
    assert!(b.ip(&["link", "show", "nlrenamed"]).contains("alias made by a test"));

    // An MTU the kernel refuses (below the IPv4 minimum on a veth: EINVAL), a link that does
    // not exist (ENODEV).
    let tiny = LinkChange {
        mtu: Some(10),
        ..Default::default()
    };
    assert_errno(b.nl.set_link(a, &tiny), libc::EINVAL, &format!("changing link {a}"));
    assert_eq!(b.link("nlrenamed").mtu, 1280);
    assert_errno(b.nl.set_link(999_999, &down), libc::ENODEV, "changing link 999999");
}

#[test]
fn bridges_take_ports() {
    let b = Bed::new();
    b.nl.add_bridge("nlbr0", Some(1400), false).unwrap();
    let br = b.link("nlbr0");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1400);
    assert_eq!(br.vlan_filtering, Some(false));
    assert!(b.ip(&["-d", "link", "show", "nlbr0"]).contains("bridge "));
    assert_errno(
        b.nl.add_bridge("nlbr0", None, false),
        libc::EEXIST,
        "creating bridge nlbr0",
    );

    // A veth end as a port: master, port flags.
    let (port, _) = b.veth("nlp0", "nlp1");
    let master = LinkChange {
        master: Some(br.index),
        ..Default::default()
    };
    b.nl.set_link(port, &master).unwrap();
    let p = b.link("nlp0");
    assert_eq!(p.master, Some(br.index));
    assert!(b.ip(&["-o", "link", "show", "nlp0"]).contains("master nlbr0"));
    b.nl.set_bridge_port(port, Some(true), Some(true)).unwrap();
    let p = b.link("nlp0");
    assert_eq!((p.hairpin, p.isolated), (Some(true), Some(true)));
    let details = b.ip(&["-d", "link", "show", "nlp0"]);
    assert!(
        details.contains("hairpin on") && details.contains("isolated on"),
        "{details}"
    );
    b.nl.set_bridge_port(port, Some(false), None).unwrap();
    assert_eq!(b.link("nlp0").hairpin, Some(false));

    // A master that does not exist: the kernel says EINVAL (not ENODEV) for that.
    let nowhere = LinkChange {
        master: Some(999_999),
        ..Default::default()
    };
    let other_end = b.link("nlp1").index;
    assert_errno(
        b.nl.set_link(other_end, &nowhere),
        libc::EINVAL,
        &format!("changing link {other_end}"),
    );
    assert_eq!(b.link("nlp1").master, None);

    // Deleting the bridge frees its port.
    b.nl.del_link(br.index).unwrap();
    assert_eq!(b.link("nlp0").master, None);
}

#[test]
fn vlan_filtering_bridges_or_the_kernels_refusal() {
    let b = Bed::new();
    let made = b.nl.add_bridge("nlbrv", None, true);
    if !kernel_has_vlan_filtering() {
        // This kernel has no VLAN filtering: the refusal is EOPNOTSUPP, and nothing is made.
        assert_errno(made, libc::EOPNOTSUPP, "creating bridge nlbrv");
        assert!(b.ns.links().is_empty(), "{:?}", b.ns.links());
        return;
    }
    made.unwrap();
    let br = b.link("nlbrv");
    assert_eq!(br.vlan_filtering, Some(true));
    assert!(b.ip(&["-d", "link", "show", "nlbrv"]).contains("vlan_filtering 1"));
    let (port, _) = b.veth("nlv0", "nlv1");
    let master = LinkChange {
        master: Some(br.index),
        ..Default::default()
    };
    b.nl.set_link(port, &master).unwrap();
    b.nl.bridge_vlan_add(port, 42, true, true).unwrap();
    let shown = vlans(&b, "nlv0");
    assert!(shown.contains("42 PVID Egress Untagged"), "{shown}");
    b.nl.bridge_vlan_del(port, 42).unwrap();
    assert!(!vlans(&b, "nlv0").contains("42"), "{}", vlans(&b, "nlv0"));
    b.nl.bridge_vlan_del(port, 42).unwrap(); // gone already: fine
}

/// `bridge -n <ns> vlan show dev <dev>`.
fn vlans(b: &Bed, dev: &str) -> String {
    cni_tests::sh(&["bridge", "-n", b.ns.name(), "vlan", "show", "dev", dev])
}

#[test]
fn macvlans_are_made_on_a_veth_end() {
    let b = Bed::new();
    let other = Bed::new();
    let (m0, _) = b.veth("nlm0", "nlm1");
    let mac = [0x02, 0, 0, 0, 0x4d, 1];
    b.nl.add_macvlan(
        "nlmv0",
        m0,
        &MacvlanOptions {
            mode: MacvlanMode::Private,
            mac: Some(mac),
            mtu: Some(1400),
            ..Default::default()
        },
    )
    .unwrap();
    let mv = b.link("nlmv0");
    assert_eq!(mv.kind.as_deref(), Some("macvlan"));
    assert_eq!(mv.macvlan_mode, Some(MacvlanMode::Private));
    assert_eq!(mv.parent, Some(m0));
    assert_eq!(mv.mac, "02:00:00:00:4d:01");
    assert_eq!(mv.mtu, 1400);
    let details = b.ip(&["-d", "link", "show", "nlmv0"]);
    assert!(
        details.contains("nlmv0@nlm0") && details.contains("macvlan mode private"),
        "{details}"
    );

    // Made directly inside another namespace, in source mode with its list.
    let allowed = [[0x02, 0, 0, 0, 0x5e, 1], [0x02, 0, 0, 0, 0x5e, 2]];
    b.nl.add_macvlan(
        "nlmv1",
        m0,
        &MacvlanOptions {
            mode: MacvlanMode::Source,
            netns: Some(&other.cni_ns),
            bcqueuelen: Some(64),
            source_macs: &allowed,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(b.nl.link("nlmv1").unwrap().is_none());
    let there = other.link("nlmv1");
    assert_eq!(there.macvlan_mode, Some(MacvlanMode::Source));
    let details = other.ip(&["-d", "link", "show", "nlmv1"]);
    assert!(details.contains("macvlan mode source"), "{details}");
    assert!(details.contains("bcqueuelen 64"), "{details}");
    for m in ["02:00:00:00:5e:01", "02:00:00:00:5e:02"] {
        assert!(details.contains(m), "{m} not allowed: {details}");
    }

    // The name taken, a master that does not exist.
    assert_errno(
        b.nl.add_macvlan("nlmv0", m0, &MacvlanOptions::default()),
        libc::EEXIST,
        "creating macvlan nlmv0",
    );
    assert_errno(
        b.nl.add_macvlan("nlmv2", 999_999, &MacvlanOptions::default()),
        libc::ENODEV,
        "creating macvlan nlmv2",
    );
    assert!(b.nl.link("nlmv2").unwrap().is_none());

    // Deleting the master deletes its macvlans, here and there.
    b.nl.del_link(m0).unwrap();
    assert!(b.ns.links().is_empty(), "{:?}", b.ns.links());
    assert!(other.ns.links().is_empty(), "{:?}", other.ns.links());
}

#[test]
fn addresses_are_added_listed_and_deleted() {
    let b = Bed::new();
    let (a, _) = b.veth("nlad0", "nlad1");
    b.up(a);
    b.nl.add_addr(a, "10.123.0.5/24".parse().unwrap(), false).unwrap();
    b.nl.add_addr(a, "fd00:123::5/64".parse().unwrap(), true).unwrap();
    let listed: Vec<String> = b.nl.addrs(a).unwrap().iter().map(ToString::to_string).collect();
    assert!(listed.contains(&"10.123.0.5/24".to_string()), "{listed:?}");
    assert!(listed.contains(&"fd00:123::5/64".to_string()), "{listed:?}");
    let shown = b.ip(&["-o", "addr", "show", "dev", "nlad0"]);
    assert!(shown.contains("inet 10.123.0.5/24"), "{shown}");
    assert!(shown.contains("inet6 fd00:123::5/64"), "{shown}");
    // nodad: the IPv6 address is not tentative.
    assert!(!shown.contains("tentative"), "{shown}");
    assert!(!b.nl.has_tentative(a).unwrap());

    assert_errno(
        b.nl.add_addr(a, "10.123.0.5/24".parse().unwrap(), false),
        libc::EEXIST,
        "adding address 10.123.0.5/24",
    );
    assert_errno(
        b.nl.add_addr(999_999, "10.123.0.6/24".parse().unwrap(), false),
        libc::ENODEV,
        "adding address 10.123.0.6/24 to link 999999",
    );

    b.nl.del_addr(a, "10.123.0.5/24".parse().unwrap()).unwrap();
    let listed: Vec<String> = b.nl.addrs(a).unwrap().iter().map(ToString::to_string).collect();
    assert!(!listed.contains(&"10.123.0.5/24".to_string()), "{listed:?}");
    assert!(listed.contains(&"fd00:123::5/64".to_string()), "{listed:?}");
    assert!(!b.ip(&["-o", "addr", "show", "dev", "nlad0"]).contains("10.123.0.5"));
    // Deleting what is not there (or with another prefix length) changes nothing.
    b.nl.del_addr(a, "10.123.0.5/24".parse().unwrap()).unwrap();
    b.nl.del_addr(a, "fd00:123::5/96".parse().unwrap()).unwrap();
    assert!(b.ip(&["-o", "addr", "show", "dev", "nlad0"]).contains("fd00:123::5/64"));
    b.nl.del_addr(a, "fd00:123::5/64".parse().unwrap()).unwrap();
    assert!(!b.ip(&["-o", "addr", "show", "dev", "nlad0"]).contains("fd00:123::5"));
}

#[test]
fn routes_are_added_listed_and_deleted_with_their_protocol() {
    let b = Bed::new();
    let (a, _) = b.veth("nlr0", "nlr1");
    b.up(a);
    b.nl.add_addr(a, "10.124.0.5/24".parse().unwrap(), false).unwrap();
    b.nl.add_addr(a, "fd00:124::5/64".parse().unwrap(), true).unwrap();
    let gw: IpAddr = "10.124.0.1".parse().unwrap();

    // Through a gateway, with a metric and an MTU: protocol boot, as the reference's routes.
    let via = NewRoute {
        dst: "10.200.0.0/16".parse().unwrap(),
        gw: Some(gw),
        oif: a,
        mtu: Some(1300),
        advmss: None,
        priority: Some(77),
        table: None,
        scope: None,
    };
    b.nl.add_route(&via).unwrap();
    let r = route_to(&b, "10.200.0.0/16");
    assert_eq!(
        (r.gw, r.oif, r.priority, r.mtu),
        (Some(gw), Some(a), Some(77), Some(1300))
    );
    assert_eq!(r.protocol, 3, "RTPROT_BOOT");
    assert_eq!(r.table, 254, "the main table");
    let shown = b.ip(&["route", "show", "10.200.0.0/16"]);
    assert!(
        shown.contains("via 10.124.0.1 dev nlr0") && shown.contains("metric 77") && shown.contains("mtu 1300"),
        "{shown}"
    );
    assert_errno(b.nl.add_route(&via), libc::EEXIST, "adding route to 10.200.0.0/16");

    // Without a gateway: link scope (IPv4); in a table of its own; IPv6.
    let onlink = NewRoute {
        dst: "10.201.0.0/16".parse().unwrap(),
        gw: None,
        table: Some(1000),
        ..via.clone()
    };
    b.nl.add_route(&onlink).unwrap();
    let r = route_to(&b, "10.201.0.0/16");
    assert_eq!(
        (r.scope, r.table, r.gw),
        (253, 1000, None),
        "RT_SCOPE_LINK in table 1000"
    );
    assert!(b
        .ip(&["route", "show", "table", "1000"])
        .contains("10.201.0.0/16 dev nlr0"));
    let v6 = NewRoute {
        dst: "fd00:200::/48".parse().unwrap(),
        gw: Some("fd00:124::1".parse().unwrap()),
        mtu: None,
        ..via.clone()
    };
    b.nl.add_route(&v6).unwrap();
    assert_eq!(route_to(&b, "fd00:200::/48").gw, v6.gw);
    assert!(b
        .ip(&["-6", "route", "show", "fd00:200::/48"])
        .contains("via fd00:124::1 dev nlr0"));

    // A marked route: our protocol and metric, a preferred source.
    let marked = MarkedRoute {
        dst: "10.124.0.99/32".parse().unwrap(),
        oif: a,
        src: Some("10.124.0.5".parse().unwrap()),
        protocol: 199,
        metric: 4242,
    };
    b.nl.add_marked_route(&marked).unwrap();
    let r = route_to(&b, "10.124.0.99/32");
    assert_eq!((r.protocol, r.priority, r.prefsrc), (199, Some(4242), marked.src));
    let shown = b.ip(&["route", "show", "proto", "199"]);
    assert!(
        shown.contains("10.124.0.99 dev nlr0") && shown.contains("src 10.124.0.5") && shown.contains("metric 4242"),
        "{shown}"
    );

    // The kernel's refusals: a gateway off every subnet, a device that does not exist.
    let unreachable = NewRoute {
        dst: "10.202.0.0/16".parse().unwrap(),
        gw: Some("10.99.0.1".parse().unwrap()),
        ..via.clone()
    };
    assert_errno(
        b.nl.add_route(&unreachable),
        libc::ENETUNREACH,
        "adding route to 10.202.0.0/16",
    );
    let no_dev = NewRoute {
        dst: "10.203.0.0/16".parse().unwrap(),
        oif: 999_999,
        ..onlink.clone()
    };
    assert_errno(b.nl.add_route(&no_dev), libc::ENODEV, "adding route to 10.203.0.0/16");

    // Deleting a listed route deletes that route only; a route already gone is fine.
    let r = route_to(&b, "10.124.0.99/32");
    b.nl.del_route(&r).unwrap();
    assert!(find_route(&b, "10.124.0.99/32").is_none());
    assert!(b.ip(&["route", "show", "proto", "199"]).trim().is_empty());
    b.nl.del_route(&r).unwrap();
    for dst in ["10.200.0.0/16", "10.201.0.0/16", "fd00:200::/48"] {
        let r = route_to(&b, dst);
        b.nl.del_route(&r).unwrap();
        assert!(find_route(&b, dst).is_none(), "{dst} still there");
    }
    // The routes of the addresses (protocol kernel) are untouched.
    let kernel = route_to(&b, "10.124.0.0/24");
    assert_eq!(kernel.protocol, 2, "RTPROT_KERNEL");
    assert!(b.ip(&["route", "show"]).contains("10.124.0.0/24 dev nlr0 proto kernel"));
}

fn find_route(b: &Bed, dst: &str) -> Option<cni::netlink::RouteEntry> {
    b.nl.routes().unwrap().into_iter().find(|r| r.dst.to_string() == dst)
}

#[track_caller]
fn route_to(b: &Bed, dst: &str) -> cni::netlink::RouteEntry {
    find_route(b, dst).unwrap_or_else(|| panic!("no route to {dst}: {:?}", b.nl.routes().unwrap()))
}

#[test]
fn proxy_neighbours_are_added_once() {
    let b = Bed::new();
    let (a, _) = b.veth("nln0", "nln1");
    let ip: IpAddr = "fd00:125::7".parse().unwrap();
    b.nl.add_proxy_neigh(a, ip).unwrap();
    b.nl.add_proxy_neigh(a, ip).unwrap(); // there already: fine
    let shown = b.ip(&["-6", "neigh", "show", "proxy"]);
    assert_eq!(shown.matches("fd00:125::7 dev nln0").count(), 1, "{shown}");
    assert_errno(
        b.nl.add_proxy_neigh(999_999, ip),
        libc::ENODEV,
        "adding proxy neighbour fd00:125::7 on link 999999",
    );
}
