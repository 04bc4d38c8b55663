//! The macvlan tests' own test bed, on top of `cni_tests`: a "host" namespace per test whose
//! veth pair `m0`/`m1` (both up) is the master, a lease store of its own, and the plugin run
//! inside that host namespace as a runtime would run it.
//!
//! Nothing here touches the machine's own interfaces, addresses or routes: the plugin runs
//! inside the test's host namespace, and every link it makes lives in the test's namespaces.

#![allow(dead_code)]

use cni_tests::{lease_files, Cni, Netns, Output, TempDir};
use serde_json::{json, Value};

/// What the tests ask of a namespace, beyond `cni_tests::Netns`.
pub trait NsExt {
    /// `ip netns exec NAME cmd...` succeeded.
    fn exec_ok(&self, cmd: &[&str]) -> bool;
    /// One ping to `addr`, retried a few times (ARP and link-up take a moment).
    fn ping(&self, addr: &str) -> bool;
    fn has_link(&self, name: &str) -> bool;
    /// The IPv4 addresses (with prefix) of `dev`.
    fn addrs4(&self, dev: &str) -> Vec<String>;
    /// `ip -d link show dev` output.
    fn link_details(&self, dev: &str) -> String;
    fn mac(&self, dev: &str) -> String;
}

impl NsExt for Netns {
    fn exec_ok(&self, cmd: &[&str]) -> bool {
        self.exec(cmd).status.success()
    }

    fn ping(&self, addr: &str) -> bool {
        (0..3).any(|_| self.exec_ok(&["ping", "-c1", "-W1", addr]))
    }

    fn has_link(&self, name: &str) -> bool {
        self.exec_ok(&["ip", "link", "show", "dev", name])
    }

    fn addrs4(&self, dev: &str) -> Vec<String> {
        self.ip(&["-4", "-o", "addr", "show", "dev", dev])
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.position(|w| w == "inet")?;
                it.next().map(str::to_string)
            })
            .collect()
    }

    fn link_details(&self, dev: &str) -> String {
        self.ip(&["-d", "link", "show", "dev", dev])
    }

    fn mac(&self, dev: &str) -> String {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        let mut it = out.split_whitespace();
        it.position(|w| w == "link/ether")
            .and_then(|_| it.next())
            .unwrap_or_default()
            .to_string()
    }
}

/// A test's world: a host namespace whose veth pair `m0`/`m1` (both up) is the master, and a
/// lease store of its own.
pub struct Bed {
    pub data: TempDir,
    pub host: Netns,
    pub net: String,
}

impl Bed {
    pub fn new(tag: &str) -> Bed {
        let host = Netns::new();
        host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
        host.ip(&["link", "set", "m0", "up"]);
        host.ip(&["link", "set", "m1", "up"]);
        Bed {
            data: TempDir::new(&format!("macvlan-{tag}")),
            host,
            net: format!("mvnet-{tag}"),
        }
    }

    /// Moves `m1` into `lan` with `addr` on it: a machine on the master's LAN.
    pub fn lan_peer(&self, lan: &Netns, addr: &str) {
        self.host.ip(&["link", "set", "m1", "netns", lan.name()]);
        lan.ip(&["link", "set", "m1", "up"]);
        lan.ip(&["addr", "add", addr, "dev", "m1"]);
    }

    /// A macvlan config on `m0` with host-local on 10.77.0.0/24, `extra` merged in (a null
    /// value removes a key).
    pub fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": self.net,
            "type": "macvlan",
            "master": "m0",
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": [[{ "subnet": "10.77.0.0/24", "gateway": "10.77.0.1" }]]
            }
        });
        cni_tests::merge(&mut c, extra);
        c
    }

    /// The plugin call, run in the host namespace; `ns` None leaves `CNI_NETNS` out.
    pub fn call(&self, command: &str, id: &str, ns: Option<&str>, conf: &Value) -> Cni {
        Cni::call("macvlan", &self.host, command, id, ns, conf)
    }

    pub fn run(&self, command: &str, id: &str, ns: Option<&Netns>, conf: &Value) -> Output {
        self.call(command, id, ns.map(Netns::path).as_deref(), conf).run()
    }

    pub fn add(&self, id: &str, ns: &Netns, conf: &Value) -> Output {
        self.run("ADD", id, Some(ns), conf)
    }

    pub fn del(&self, id: &str, ns: Option<&Netns>, conf: &Value) -> Output {
        self.run("DEL", id, ns, conf)
    }

    /// CHECK with `prev` as `prevResult`.
    pub fn check(&self, id: &str, ns: &Netns, conf: &Value, prev: &Value) -> Output {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        self.run("CHECK", id, Some(ns), &c)
    }

    /// The addresses leased in this bed's store for network `net`.
    pub fn leases_of(&self, net: &str) -> Vec<String> {
        lease_files(&self.data.join(net))
            .into_iter()
            .map(|(ip, _)| ip)
            .collect()
    }

    pub fn leases(&self) -> Vec<String> {
        self.leases_of(&self.net)
    }
}

/// Whether our own host-local is built (GC and STATUS need an IPAM plugin of spec 1.1.0;
/// Debian's reference host-local predates it).
pub fn our_host_local() -> bool {
    cni_tests::bin_dir().join("host-local").is_file()
}

/// The address without its prefix.
pub fn ip_of(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}
