//! Masquerade rules for the bridge plugin's `ipMasq: true`, in the reference plugins' exact
//! layouts (containernetworking/plugins `pkg/ip/ipmasq_*_linux.go`), so a node can swap
//! binaries with live containers: our DEL and GC remove rules the reference made, and the
//! reference's DEL removes ours. And the `macspoofchk` rules ([`spoofchk`]).
//!
//! - `names`: rule names, hashes and comments as the reference makes them;
//!   validation of every name that goes into a command
//! - `exec`: the one command runner (finding a binary, argument lists, stdin, the error)
//! - `iptables`: the iptables masquerade layout
//! - `nftables`: the nftables masquerade layout, and reading `nft -j` listings
//! - [`spoofchk`]: the `bridge nat` layout of `macspoofchk`
//!
//! Commands run as child processes with argument lists (never a shell); every name that goes
//! into them is validated first. iptables runs with `-w` (wait for the xtables lock); each
//! nftables change is one atomic `nft -f -` transaction.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::error::{Error, Errors, Result};

mod exec;
mod iptables;
mod names;
mod nftables;
pub mod spoofchk;

use exec::find_bin;
use iptables::{ipt_listing, ipt_setup_all, ipt_stale_ids, ipt_teardown_chain};
use names::{check_network, nft_instance_hash, nft_network_hash, validate};
use nftables::{nft_delete_matching, nft_setup};

pub use names::{chain_name, iptables_comment, nft_comment};
pub use nftables::{NFT_MASQ_CHAIN, NFT_TABLE};

const MULTICAST_V4: &str = "224.0.0.0/4";
const MULTICAST_V6: &str = "ff00::/8";

/// Which firewall API holds the masquerade rules (`ipMasqBackend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

impl Backend {
    /// `"iptables"` or `"nftables"` as configured; unset: iptables when an `iptables` binary is
    /// found (in `$PATH`, then the standard sbin/bin directories), else nftables, as the
    /// reference prefers iptables. Anything else is code 7.
    pub fn choose(configured: Option<&str>) -> Result<Backend> {
        match configured {
            Some("iptables") => Ok(Backend::Iptables),
            Some("nftables") => Ok(Backend::Nftables),
            Some(other) => Err(Error::invalid_config(format!(
                "invalid ipMasqBackend \"{}\": must be \"iptables\" or \"nftables\"",
                other.escape_debug()
            ))),
            None if find_bin("iptables").is_some() => Ok(Backend::Iptables),
            None => Ok(Backend::Nftables),
        }
    }
}

/// Masquerades traffic from each of `addrs` (address with its subnet's prefix) leaving its
/// subnet, except to multicast. Idempotent: a second call for the same attachment leaves one
/// copy of each rule.
pub fn setup_masq(backend: Backend, network: &str, container_id: &str, ifname: &str, addrs: &[IpNet]) -> Result<()> {
    validate(network, container_id, ifname)?;
    let tools = Tools::find();
    match backend {
        Backend::Iptables => ipt_setup_all(&tools, network, container_id, addrs),
        Backend::Nftables => {
            let nft = tools
                .nft
                .as_deref()
                .ok_or_else(|| Error::firewall("ipMasq with the nftables backend needs the nft binary"))?;
            nft_setup(nft, network, ifname, container_id, addrs)
        }
    }
}

/// Removes this attachment's masquerade rules from both backends, wherever they came from
/// (us or the reference, any backend). Idempotent: nothing there, or no binary, is success.
/// `addrs` may be empty: rules are found by chain name and comment; when given, it only
/// says which address families must be readable.
pub fn teardown_masq(network: &str, container_id: &str, ifname: &str, addrs: &[IpNet]) -> Result<()> {
    validate(network, container_id, ifname)?;
    teardown_with(&Tools::find(), network, container_id, ifname, addrs)
}

/// Removes the masquerade rules of `network` whose attachment is not in `keep`
/// (`(container id, ifname)` pairs), in both backends. The iptables layout has one chain per
/// container (the reference ignores ifname there), so iptables keeps by container id.
pub fn gc_masq(network: &str, keep: &[(String, String)]) -> Result<()> {
    check_network(network)?;
    gc_with(&Tools::find(), network, keep)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(a: &IpNet) -> Family {
        match a {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// The binaries found for one call (none found: that backend is absent).
#[derive(Debug, Default)]
struct Tools {
    ipt4: Option<PathBuf>,
    ipt6: Option<PathBuf>,
    nft: Option<PathBuf>,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            ipt4: find_bin("iptables"),
            ipt6: find_bin("ip6tables"),
            nft: find_bin("nft"),
        }
    }

    fn iptables(&self, fam: Family) -> Option<&Path> {
        match fam {
            Family::V4 => self.ipt4.as_deref(),
            Family::V6 => self.ipt6.as_deref(),
        }
    }
}

fn teardown_with(tools: &Tools, network: &str, container_id: &str, ifname: &str, addrs: &[IpNet]) -> Result<()> {
    let mut errs = Errors::new();
    let chain = chain_name(network, container_id);
    for fam in [Family::V4, Family::V6] {
        let required = addrs.is_empty() || addrs.iter().any(|a| Family::of(a) == fam);
        if let Some(Some((ipt, rules))) = errs.note(ipt_listing(tools, fam, required)) {
            errs.note(ipt_teardown_chain(&ipt, &rules, &chain));
        }
    }
    if let Some(nft) = tools.nft.as_deref() {
        let prefix = nft_instance_hash(network, ifname, container_id);
        errs.note(nft_delete_matching(nft, |c| c.starts_with(&prefix)));
    }
    errs.into_result()
}

fn gc_with(tools: &Tools, network: &str, keep: &[(String, String)]) -> Result<()> {
    let mut errs = Errors::new();
    let keep_ids: HashSet<&str> = keep.iter().map(|(id, _)| id.as_str()).collect();
    for fam in [Family::V4, Family::V6] {
        let Some(Some((ipt, rules))) = errs.note(ipt_listing(tools, fam, fam == Family::V4)) else {
            continue;
        };
        for id in ipt_stale_ids(&rules, network, &keep_ids) {
            errs.note(ipt_teardown_chain(&ipt, &rules, &chain_name(network, &id)));
        }
    }
    if let Some(nft) = tools.nft.as_deref() {
        let net_prefix = nft_network_hash(network);
        let valid: HashSet<String> = keep
            .iter()
            .map(|(id, ifname)| nft_comment(network, ifname, id))
            .collect();
        errs.note(nft_delete_matching(nft, |c| {
            c.starts_with(&net_prefix) && !valid.contains(c)
        }));
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn backend_choice() {
        assert_eq!(Backend::choose(Some("iptables")).unwrap(), Backend::Iptables);
        assert_eq!(Backend::choose(Some("nftables")).unwrap(), Backend::Nftables);
        let e = Backend::choose(Some("ipfw")).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("ipMasqBackend"), "{e}");
        let expect = if find_bin("iptables").is_some() {
            Backend::Iptables
        } else {
            Backend::Nftables
        };
        assert_eq!(Backend::choose(None).unwrap(), expect);
    }

    #[test]
    fn absent_binaries_make_teardown_and_gc_no_ops() {
        let none = Tools::default();
        teardown_with(&none, "n", "c", "eth0", &[]).unwrap();
        teardown_with(&none, "n", "c", "eth0", &[net("10.0.0.2/24"), net("fd00::2/64")]).unwrap();
        gc_with(&none, "n", &[]).unwrap();
    }
}

/// Real-command tests, each in a network namespace of its own (rules are per namespace; the
/// machine's own firewall is never touched). They skip when not root or a binary is missing,
/// unless `CI` is set, where that fails.
#[cfg(test)]
mod netns_tests {
    use super::exec::{run, DEFAULT_PATH};
    use super::nftables::parse_nft_rules;
    use super::nftables::tests::REFERENCE_HEAD;
    use super::tests::net;
    use super::*;
    use crate::netns::Netns;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static SEQ: AtomicUsize = AtomicUsize::new(0);

    /// Whether the test can run; skips (or fails under CI) otherwise.
    fn ready(test: &str, bins: &[&str]) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let missing: Vec<&str> = bins.iter().copied().filter(|b| find_bin(b).is_none()).collect();
        let why = if !root {
            "not root".to_string()
        } else if !missing.is_empty() {
            format!("missing {}", missing.join(", "))
        } else {
            return true;
        };
        if crate::env::process_flags().ci {
            panic!("{test}: {why} (CI is set, so this fails instead of skipping)");
        }
        // Past the harness's capture (it shows a passing test's output never).
        crate::log!("\n*** SKIPPED {test}: {why} ***\n");
        false
    }

    /// A fresh named network namespace, deleted on drop.
    struct TestNs {
        name: String,
    }

    impl TestNs {
        fn new() -> TestNs {
            let name = format!("fwt-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
            let st = Command::new(find_bin("ip").expect("ip"))
                .args(["netns", "add", &name])
                .status()
                .expect("running ip netns add");
            assert!(st.success(), "ip netns add {name}");
            TestNs { name }
        }

        fn path(&self) -> String {
            format!("/run/netns/{}", self.name)
        }

        /// Runs `f` on a thread inside the namespace (child processes inherit it).
        fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            Netns::open(&self.path())
                .expect("open test netns")
                .run(f)
                .expect("the test body (see the panic above)")
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            if let Some(ip) = find_bin("ip") {
                let _ = Command::new(ip).args(["netns", "del", &self.name]).status();
            }
        }
    }

    /// Runs a command in the calling thread's namespace; it must succeed.
    fn sh(bin: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = run(&find_bin(bin).unwrap(), args, stdin).unwrap();
        assert!(out.ok, "{bin} {}: {}", args.join(" "), out.stderr);
        out.stdout
    }

    /// `iptables -t nat -S` lines minus the built-in chain policies.
    fn nat(bin: &str) -> Vec<String> {
        sh(bin, &["-w", "-t", "nat", "-S"], None)
            .lines()
            .filter(|l| !l.starts_with("-P "))
            .map(String::from)
            .collect()
    }

    /// The expected `iptables -S` lines of one container with one address.
    fn ipt_lines(network: &str, id: &str, src: &str, dst: &str, mcast: &str) -> Vec<String> {
        let ch = chain_name(network, id);
        let c = format!("\"name: \\\"{network}\\\" id: \\\"{id}\\\"\"");
        vec![
            format!("-N {ch}"),
            format!("-A POSTROUTING -s {src} -m comment --comment {c} -j {ch}"),
            format!("-A {ch} -d {dst} -m comment --comment {c} -j ACCEPT"),
            format!("-A {ch} ! -d {mcast} -m comment --comment {c} -j MASQUERADE"),
        ]
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// (comment, rule text) of the masquerade chain, via the JSON listing.
    fn nft_rules() -> Vec<String> {
        let out = run(
            &find_bin("nft").unwrap(),
            &["-j", "list", "chain", "inet", NFT_TABLE, NFT_MASQ_CHAIN],
            None,
        )
        .unwrap();
        if !out.ok {
            assert!(out.stderr.contains("No such file"), "{}", out.stderr);
            return Vec::new();
        }
        parse_nft_rules(&out.stdout)
            .unwrap()
            .into_iter()
            .map(|r| r.comment.unwrap_or_default())
            .collect()
    }

    #[test]
    fn iptables_setup_teardown() {
        if !ready("iptables_setup_teardown", &["ip", "iptables", "ip6tables"]) {
            return;
        }
        let ns = TestNs::new();
        ns.run(|| {
            let a = [net("10.88.0.2/16"), net("fd00:88::2/64")];
            setup_masq(Backend::Iptables, "fwnet", "ctr1", "eth0", &a).unwrap();
            let v4 = ipt_lines("fwnet", "ctr1", "10.88.0.2/32", "10.88.0.0/16", "224.0.0.0/4");
            let v6 = ipt_lines("fwnet", "ctr1", "fd00:88::2/128", "fd00:88::/64", "ff00::/8");
            assert_eq!(sorted(nat("iptables")), sorted(v4.clone()));
            assert_eq!(sorted(nat("ip6tables")), sorted(v6.clone()));
            // Again: no duplicates.
            setup_masq(Backend::Iptables, "fwnet", "ctr1", "eth0", &a).unwrap();
            assert_eq!(sorted(nat("iptables")), sorted(v4.clone()));
            assert_eq!(sorted(nat("ip6tables")), sorted(v6.clone()));
            // A second container; the first one's teardown leaves it alone.
            setup_masq(Backend::Iptables, "fwnet", "ctr2", "eth0", &[net("10.88.0.3/16")]).unwrap();
            let v4b = ipt_lines("fwnet", "ctr2", "10.88.0.3/32", "10.88.0.0/16", "224.0.0.0/4");
            teardown_masq("fwnet", "ctr1", "eth0", &[]).unwrap();
            assert_eq!(sorted(nat("iptables")), sorted(v4b.clone()));
            assert!(nat("ip6tables").is_empty());
            teardown_masq("fwnet", "ctr1", "eth0", &[]).unwrap();
            teardown_masq("fwnet", "ctr2", "eth0", &a).unwrap();
            assert!(nat("iptables").is_empty());
            teardown_masq("fwnet", "ctr2", "eth0", &a).unwrap();
        });
    }

    #[test]
    fn nftables_setup_teardown() {
        if !ready("nftables_setup_teardown", &["ip", "nft"]) {
            return;
        }
        let ns = TestNs::new();
        ns.run(|| {
            // Nothing there yet: teardown and GC are fine.
            teardown_masq("fwnet", "ctr1", "eth0", &[]).unwrap();
            gc_masq("fwnet", &[]).unwrap();
            let a = [net("10.88.0.2/16"), net("fd00:88::2/64")];
            setup_masq(Backend::Nftables, "fwnet", "ctr1", "eth0", &a).unwrap();
            setup_masq(Backend::Nftables, "fwnet", "ctr1", "eth0", &a).unwrap();
            let c1 = nft_comment("fwnet", "eth0", "ctr1");
            assert_eq!(nft_rules(), [c1.clone(), c1.clone()]);
            let listing = sh("nft", &["list", "table", "inet", NFT_TABLE], None);
            assert!(
                listing.contains(&format!(
                    "ip saddr 10.88.0.2 ip daddr != 10.88.0.0/16 masquerade comment \"{c1}\""
                )),
                "{listing}"
            );
            assert!(
                listing.contains(&format!(
                    "ip6 saddr fd00:88::2 ip6 daddr != fd00:88::/64 masquerade comment \"{c1}\""
                )),
                "{listing}"
            );
            assert!(
                listing.contains("type nat hook postrouting priority srcnat; policy accept;"),
                "{listing}"
            );
            assert!(listing.contains("ip daddr 224.0.0.0/4 return"), "{listing}");
            assert!(listing.contains("ip6 daddr ff00::/8 return"), "{listing}");
            assert_eq!(listing.matches("goto masq_checks").count(), 1, "{listing}");
            // Another attachment of the same container (other ifname) is separate.
            setup_masq(Backend::Nftables, "fwnet", "ctr1", "net1", &[net("10.99.0.2/24")]).unwrap();
            teardown_masq("fwnet", "ctr1", "eth0", &[]).unwrap();
            assert_eq!(nft_rules(), [nft_comment("fwnet", "net1", "ctr1")]);
            teardown_masq("fwnet", "ctr1", "eth0", &[]).unwrap();
            teardown_masq("fwnet", "ctr1", "net1", &[]).unwrap();
            assert!(nft_rules().is_empty());
        });
    }

    #[test]
    fn gc_both_backends() {
        if !ready("gc_both_backends", &["ip", "iptables", "ip6tables", "nft"]) {
            return;
        }
        let ns = TestNs::new();
        ns.run(|| {
            let v4 = |n: u8| [net(&format!("10.88.0.{n}/16"))];
            setup_masq(Backend::Iptables, "fwnet", "keepA", "eth0", &v4(2)).unwrap();
            setup_masq(
                Backend::Iptables,
                "fwnet",
                "goneB",
                "eth0",
                &[net("10.88.0.3/16"), net("fd00::3/64")],
            )
            .unwrap();
            setup_masq(Backend::Nftables, "fwnet", "keepC", "eth0", &v4(4)).unwrap();
            setup_masq(Backend::Nftables, "fwnet", "keepC", "net1", &v4(5)).unwrap();
            setup_masq(Backend::Nftables, "fwnet", "goneD", "eth0", &v4(6)).unwrap();
            setup_masq(Backend::Iptables, "other", "goneB", "eth0", &v4(7)).unwrap();
            setup_masq(Backend::Nftables, "other", "goneD", "eth0", &v4(8)).unwrap();
            let keep = [
                ("keepA".to_string(), "eth0".to_string()),
                ("keepC".to_string(), "eth0".to_string()),
            ];
            gc_masq("fwnet", &keep).unwrap();
            let mut expect = ipt_lines("fwnet", "keepA", "10.88.0.2/32", "10.88.0.0/16", "224.0.0.0/4");
            expect.extend(ipt_lines(
                "other",
                "goneB",
                "10.88.0.7/32",
                "10.88.0.0/16",
                "224.0.0.0/4",
            ));
            assert_eq!(sorted(nat("iptables")), sorted(expect));
            assert!(nat("ip6tables").is_empty());
            assert_eq!(
                sorted(nft_rules()),
                sorted(vec![
                    nft_comment("fwnet", "eth0", "keepC"),
                    nft_comment("other", "eth0", "goneD")
                ])
            );
            gc_masq("fwnet", &[]).unwrap();
            assert_eq!(nat("iptables").len(), 4);
            assert_eq!(nft_rules(), [nft_comment("other", "eth0", "goneD")]);
        });
    }

    /// Many plugin processes at once: every setup lands, every teardown removes only its own.
    #[test]
    fn concurrent_setups_and_teardowns() {
        if !ready("concurrent_setups_and_teardowns", &["ip", "iptables", "nft"]) {
            return;
        }
        let ns = TestNs::new();
        let n: u8 = 12;
        let backend = |i: u8| {
            if i & 1 == 0 {
                Backend::Iptables
            } else {
                Backend::Nftables
            }
        };
        let addr = |i: u8| [net(&format!("10.55.0.{}/24", i + 10))];
        std::thread::scope(|s| {
            for i in 0..n {
                let ns = &ns;
                s.spawn(move || ns.run(|| setup_masq(backend(i), "conc", &format!("c{i}"), "eth0", &addr(i)).unwrap()));
            }
        });
        ns.run(|| {
            assert_eq!(nat("iptables").len(), 4 * usize::from(n / 2));
            assert_eq!(nft_rules().len(), usize::from(n / 2));
            let listing = sh("nft", &["list", "table", "inet", NFT_TABLE], None);
            assert_eq!(listing.matches("goto masq_checks").count(), 1, "{listing}");
        });
        // Tear down all but c0 and c1, concurrently.
        std::thread::scope(|s| {
            for i in 2..n {
                let ns = &ns;
                s.spawn(move || ns.run(|| teardown_masq("conc", &format!("c{i}"), "eth0", &[]).unwrap()));
            }
        });
        ns.run(|| {
            let expect = ipt_lines("conc", "c0", "10.55.0.10/32", "10.55.0.0/24", "224.0.0.0/4");
            assert_eq!(sorted(nat("iptables")), sorted(expect));
            assert_eq!(nft_rules(), [nft_comment("conc", "eth0", "c1")]);
        });
    }

    /// Several DELs of one attachment at once (a runtime retrying): each succeeds, whichever
    /// removes a rule first, and nothing is left.
    #[test]
    fn concurrent_teardowns_of_one_attachment() {
        if !ready("concurrent_teardowns_of_one_attachment", &["ip", "iptables", "nft"]) {
            return;
        }
        let ns = TestNs::new();
        for round in 0..3 {
            ns.run(|| {
                let a = [net("10.56.0.2/24"), net("10.56.1.2/24")];
                setup_masq(Backend::Iptables, "dup", "c0", "eth0", &a).unwrap();
                setup_masq(Backend::Nftables, "dup", "c0", "eth0", &a).unwrap();
                spoofchk::setup_spoofchk("veth0", "02:00:00:00:00:01", "c0", "eth0").unwrap();
                assert_eq!(nat("iptables").len(), 6, "round {round}");
                assert_eq!(nft_rules().len(), 2, "round {round}");
            });
            std::thread::scope(|s| {
                for _ in 0..6 {
                    let ns = &ns;
                    s.spawn(move || {
                        ns.run(|| {
                            teardown_masq("dup", "c0", "eth0", &[]).unwrap();
                            spoofchk::teardown_spoofchk("c0", "eth0").unwrap();
                        })
                    });
                }
            });
            ns.run(|| {
                assert!(nat("iptables").is_empty(), "round {round}");
                assert!(nft_rules().is_empty(), "round {round}");
                let listing = sh("nft", &["list", "table", "bridge", "nat"], None);
                assert!(!listing.contains("c0-eth0"), "round {round}: {listing}");
            });
        }
    }

    /// macspoofchk: the reference's layout per attachment; teardown takes only its own, and
    /// finds nothing to do when nothing (or no table) is there.
    #[test]
    fn spoofchk_setup_teardown() {
        if !ready("spoofchk_setup_teardown", &["ip", "nft"]) {
            return;
        }
        let ns = TestNs::new();
        ns.run(|| {
            let list = || sh("nft", &["list", "table", "bridge", "nat"], None);
            spoofchk::teardown_spoofchk("ctr1", "eth0").unwrap();
            spoofchk::setup_spoofchk("veth1", "02:00:00:00:00:01", "ctr1", "eth0").unwrap();
            spoofchk::setup_spoofchk("veth2", "02:00:00:00:00:02", "ctr2", "eth0").unwrap();
            let listing = list();
            assert!(
                listing.contains("iifname \"veth1\" jump cni-br-iface-ctr1-eth0 comment \"macspoofchk-ctr1-eth0\""),
                "{listing}"
            );
            assert!(listing.contains("chain cni-br-iface-ctr1-eth0-mac"), "{listing}");
            assert!(
                listing.contains("ether saddr 02:00:00:00:00:01 return comment \"macspoofchk-ctr1-eth0\""),
                "{listing}"
            );
            spoofchk::teardown_spoofchk("ctr1", "eth0").unwrap();
            let listing = list();
            assert!(!listing.contains("ctr1-eth0"), "{listing}");
            assert!(listing.contains("jump cni-br-iface-ctr2-eth0"), "{listing}");
            assert!(listing.contains("ether saddr 02:00:00:00:00:02 return"), "{listing}");
            // Again: nothing of ours there.
            spoofchk::teardown_spoofchk("ctr1", "eth0").unwrap();
            spoofchk::teardown_spoofchk("ctr2", "eth0").unwrap();
            let listing = list();
            assert!(!listing.contains("cni-br-iface"), "{listing}");
            assert!(!listing.contains("macspoofchk"), "{listing}");
            // No table at all.
            sh("nft", &["delete", "table", "bridge", "nat"], None);
            spoofchk::teardown_spoofchk("ctr2", "eth0").unwrap();
        });
    }

    /// Rules made with the reference's exact command lines (go-iptables appends `--wait`;
    /// knftables feeds this transaction to `nft -f -`) are removed by our teardown.
    #[test]
    fn teardown_of_reference_rules() {
        if !ready("teardown_of_reference_rules", &["ip", "iptables", "ip6tables", "nft"]) {
            return;
        }
        let ns = TestNs::new();
        ns.run(|| {
            let ch = chain_name("refnet", "refctr");
            let c = iptables_comment("refnet", "refctr");
            for (bin, ip, ipn, mcast) in [
                ("iptables", "10.77.0.5", "10.77.0.5/24", "224.0.0.0/4"),
                ("ip6tables", "fd77::5", "fd77::5/64", "ff00::/8"),
            ] {
                sh(bin, &["-t", "nat", "-N", &ch, "--wait"], None);
                sh(bin, &["-t", "nat", "-A", &ch, "-d", ipn, "-j", "ACCEPT", "-m", "comment", "--comment", &c, "--wait"], None);
                sh(bin, &["-t", "nat", "-A", &ch, "!", "-d", mcast, "-j", "MASQUERADE", "-m", "comment", "--comment", &c, "--wait"], None);
                sh(bin, &["-t", "nat", "-A", "POSTROUTING", "-s", ip, "-j", &ch, "-m", "comment", "--comment", &c, "--wait"], None);
                // The pre-0.7 form, `-s <ip>/<prefix>`, that the reference still deletes.
                sh(bin, &["-t", "nat", "-A", "POSTROUTING", "-s", ipn, "-j", &ch, "-m", "comment", "--comment", &c, "--wait"], None);
                assert_eq!(nat(bin).len(), 5);
            }
            let cm = nft_comment("refnet", "eth0", "refctr");
            let tx = format!(
                "{REFERENCE_HEAD}add rule inet cni_plugins_masquerade masq_checks ip saddr == 10.77.0.5 ip daddr != 10.77.0.0/24 masquerade comment \"{cm}\"\n\
                 add rule inet cni_plugins_masquerade masq_checks ip6 saddr == fd77::5 ip6 daddr != fd77::/64 masquerade comment \"{cm}\"\n"
            );
            sh("nft", &["-f", "-"], Some(&tx));
            assert_eq!(nft_rules().len(), 2);
            // Another container's rules stay.
            setup_masq(Backend::Iptables, "refnet", "other", "eth0", &[net("10.77.0.6/24")]).unwrap();
            teardown_masq("refnet", "refctr", "eth0", &[]).unwrap();
            assert_eq!(nat("iptables").len(), 4);
            assert!(nat("iptables").iter().all(|l| !l.contains(&ch)));
            assert!(nat("ip6tables").is_empty());
            assert!(nft_rules().is_empty());
        });
    }

    /// The reference binary itself (Debian's v1.1.1 bridge, iptables only): its DEL removes
    /// our rules, and our teardown removes what its ADD made.
    #[test]
    fn interop_with_reference_bridge() {
        let bridge = Path::new("/usr/lib/cni/bridge");
        if !ready("interop_with_reference_bridge", &["ip", "iptables"]) {
            return;
        }
        if !bridge.exists() || !Path::new("/usr/lib/cni/host-local").exists() {
            if crate::env::process_flags().ci {
                panic!("interop_with_reference_bridge: /usr/lib/cni/bridge or host-local missing");
            }
            crate::log!("\n*** SKIPPED interop_with_reference_bridge: no /usr/lib/cni/bridge ***\n");
            return;
        }
        let host = TestNs::new();
        let ctr = TestNs::new();
        let data = std::env::temp_dir().join(format!("fwt-ipam-{}-{}", std::process::id(), host.name));
        let conf = serde_json::json!({
            "cniVersion": "0.4.0", "name": "refbr", "type": "bridge", "bridge": "fwtbr0",
            "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": data}
        })
        .to_string();
        let plugin = |cmd: &str| {
            let out = Command::new(bridge)
                .env_clear()
                .env("PATH", DEFAULT_PATH)
                .env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", "refctr1")
                .env("CNI_NETNS", ctr.path())
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut ch| {
                    ch.stdin.take().unwrap().write_all(conf.as_bytes())?;
                    ch.wait_with_output()
                })
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "bridge {cmd}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        };
        host.run(|| {
            let expect = ipt_lines("refbr", "refctr1", "10.66.0.2/32", "10.66.0.0/24", "224.0.0.0/4");
            // Reference ADD, our teardown.
            let res: serde_json::Value = serde_json::from_str(&plugin("ADD")).unwrap();
            assert_eq!(res["ips"][0]["address"], "10.66.0.2/24");
            assert_eq!(sorted(nat("iptables")), sorted(expect.clone()));
            teardown_masq("refbr", "refctr1", "eth0", &[]).unwrap();
            assert!(nat("iptables").is_empty());
            // Our setup, reference DEL.
            setup_masq(Backend::Iptables, "refbr", "refctr1", "eth0", &[net("10.66.0.2/24")]).unwrap();
            assert_eq!(sorted(nat("iptables")), sorted(expect));
            plugin("DEL");
            assert!(nat("iptables").is_empty());
        });
        let _ = std::fs::remove_dir_all(&data);
    }
}
