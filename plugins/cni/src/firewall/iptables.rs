//! The reference's iptables masquerade layout (table `nat`, `ip6tables` for IPv6 addresses;
//! the reference ignores `ifname`):
//! ```text
//! -N CNI-<24 hex>                                   chain = "CNI-" + sha512(network + id)[..24 hex]
//! -A POSTROUTING -s <ip>/32 -m comment --comment "name: \"<net>\" id: \"<id>\"" -j CNI-<hash>
//! -A CNI-<hash> -d <subnet> -m comment --comment "name: \"<net>\" id: \"<id>\"" -j ACCEPT
//! -A CNI-<hash> ! -d 224.0.0.0/4 -m comment --comment "name: \"<net>\" id: \"<id>\"" -j MASQUERADE
//! ```
//! (`ff00::/8` and `/128` for IPv6; the reference's rules, though we insert each ACCEPT at the
//! head of the chain where it appends, so that a second address of the family is not
//! masqueraded within its own subnet.) Teardown finds the POSTROUTING jumps by the chain they
//! jump to, then flushes and deletes the chain. GC finds this network's chains by their comment.
//! iptables runs with `-w` (wait for the xtables lock).

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::exec::{run, unavailable, Output};
use super::names::{chain_name, iptables_comment, valid_name};
use super::{Family, Tools, MULTICAST_V4, MULTICAST_V6};
use crate::error::{Error, Result};

pub(super) struct Ipt<'a> {
    bin: &'a Path,
}

impl Ipt<'_> {
    /// Runs `iptables -w <args>`; a busy lock or netlink (exit 4) is retried a few times.
    fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-w"];
        full.extend_from_slice(args);
        let mut tries = 0;
        loop {
            let out = run(self.bin, &full, None)?;
            tries += 1;
            if out.ok || out.code != Some(4) || tries >= 5 {
                return Ok(out);
            }
            std::thread::sleep(Duration::from_millis(100 * tries));
        }
    }

    /// Runs `args` that remove something; when that fails, a fresh listing on which `gone`
    /// holds (someone removed it first) makes it a success. iptables exits 1 for a missing rule
    /// or chain as for most other failures, so the listing says it, not the error's text.
    fn remove(&self, args: &[&str], gone: impl Fn(&[Vec<String>]) -> bool) -> Result<()> {
        let out = self.exec(args)?;
        if out.ok || matches!(self.list_nat(), Ok(Ok(rules)) if gone(&rules)) {
            Ok(())
        } else {
            Err(out.error())
        }
    }

    /// `iptables -t nat -S`, split into words.
    fn list_nat(&self) -> Result<std::result::Result<Vec<Vec<String>>, Output>> {
        let out = self.exec(&["-t", "nat", "-S"])?;
        if out.ok {
            Ok(Ok(out.stdout.lines().map(split_save_line).collect()))
        } else {
            Ok(Err(out))
        }
    }
}

/// Splits a line of `iptables -S` (iptables-save syntax) into its arguments: words separated
/// by spaces; `"…"` quotes, inside which `\` escapes the next character.
fn split_save_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                '"' => quoted = false,
                c => cur.push(c),
            }
        } else if c == '"' {
            quoted = true;
            in_word = true;
        } else if c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
        } else {
            cur.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The value following any of `opts` in a rule's words.
fn opt_value<'a>(words: &'a [String], opts: &[&str]) -> Option<&'a str> {
    words
        .windows(2)
        .find(|w| opts.contains(&w[0].as_str()))
        .map(|w| w[1].as_str())
}

/// The rule's target (printed last by `iptables -S`, so looked for from the end).
fn jump_target(words: &[String]) -> Option<&str> {
    words
        .windows(2)
        .rev()
        .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
        .map(|w| w[1].as_str())
}

/// The rule's chain if the line is `-A <chain> …`.
fn appended_to(words: &[String]) -> Option<&str> {
    match words {
        [a, chain, ..] if a == "-A" => Some(chain),
        _ => None,
    }
}

/// The container id of a reference comment `name: "<network>" id: "<id>"` of `network`.
fn parse_ipt_comment<'a>(network: &str, comment: &'a str) -> Option<&'a str> {
    let rest = comment.strip_prefix("name: \"")?.strip_prefix(network)?;
    let id = rest.strip_prefix("\" id: \"")?.strip_suffix('"')?;
    valid_name(id).then_some(id)
}

/// Where a rule goes and how.
#[derive(Debug, PartialEq, Eq)]
struct IptRule {
    chain: String,
    /// `-I <chain> 1` (the ACCEPT, so it always precedes the MASQUERADE) instead of `-A`.
    first: bool,
    spec: Vec<String>,
}

/// The reference's three rules for one address, in the order they are made.
fn ipt_rules(chain: &str, comment: &str, addr: &IpNet) -> [IptRule; 3] {
    let mcast = match Family::of(addr) {
        Family::V4 => MULTICAST_V4,
        Family::V6 => MULTICAST_V6,
    };
    let spec = |words: &[&str]| -> Vec<String> {
        words
            .iter()
            .copied()
            .chain(["-m", "comment", "--comment", comment])
            .map(String::from)
            .collect()
    };
    [
        IptRule {
            chain: chain.into(),
            first: true,
            spec: spec(&["-d", &addr.trunc().to_string(), "-j", "ACCEPT"]),
        },
        IptRule {
            chain: chain.into(),
            first: false,
            spec: spec(&["!", "-d", mcast, "-j", "MASQUERADE"]),
        },
        IptRule {
            chain: "POSTROUTING".into(),
            first: false,
            spec: spec(&["-s", &addr.addr().to_string(), "-j", chain]),
        },
    ]
}

pub(super) fn ipt_setup_all(tools: &Tools, network: &str, container_id: &str, addrs: &[IpNet]) -> Result<()> {
    let chain = chain_name(network, container_id);
    let comment = iptables_comment(network, container_id);
    for fam in [Family::V4, Family::V6] {
        let mine: Vec<&IpNet> = addrs.iter().filter(|a| Family::of(a) == fam).collect();
        if mine.is_empty() {
            continue;
        }
        let bin = tools.iptables(fam).ok_or_else(|| {
            Error::firewall(format!(
                "ipMasq with the iptables backend needs the {} binary",
                fam.iptables()
            ))
        })?;
        let ipt = Ipt { bin };
        let rules = ipt.list_nat()?.map_err(|out| out.error())?;
        if !has_chain(&rules, &chain) {
            let out = ipt.exec(&["-t", "nat", "-N", &chain])?;
            // Failed: fine if another call made the chain meanwhile.
            if !out.ok && !matches!(ipt.list_nat(), Ok(Ok(now)) if has_chain(&now, &chain)) {
                return Err(out.error());
            }
        }
        for addr in mine {
            for rule in ipt_rules(&chain, &comment, addr) {
                ipt_ensure(&ipt, &rule)?;
            }
        }
    }
    Ok(())
}

/// Whether a listing of table nat has chain `chain`.
fn has_chain(rules: &[Vec<String>], chain: &str) -> bool {
    rules.iter().any(|w| w.len() == 2 && w[0] == "-N" && w[1] == chain)
}

/// Adds `rule` unless `iptables -C` finds it (go-iptables' `AppendUnique`).
fn ipt_ensure(ipt: &Ipt, rule: &IptRule) -> Result<()> {
    let spec: Vec<&str> = rule.spec.iter().map(String::as_str).collect();
    let mut check = vec!["-t", "nat", "-C", &rule.chain];
    check.extend(&spec);
    let out = ipt.exec(&check)?;
    if out.ok {
        return Ok(());
    }
    if out.code != Some(1) {
        return Err(out.error());
    }
    let mut add = if rule.first {
        vec!["-t", "nat", "-I", &rule.chain, "1"]
    } else {
        vec!["-t", "nat", "-A", &rule.chain]
    };
    add.extend(&spec);
    ipt.exec(&add)?.checked().map(|_| ())
}

/// Removes the POSTROUTING jumps to `chain`, then flushes and deletes it, as `rules` (a
/// listing of table nat) shows them.
pub(super) fn ipt_teardown_chain(ipt: &Ipt, rules: &[Vec<String>], chain: &str) -> Result<()> {
    for words in rules {
        if appended_to(words) == Some("POSTROUTING") && jump_target(words) == Some(chain) {
            let mut args = vec!["-t", "nat", "-D"];
            args.extend(words[1..].iter().map(String::as_str));
            ipt.remove(&args, |now| !now.contains(words))?;
        }
    }
    if has_chain(rules, chain) {
        let gone = |now: &[Vec<String>]| !has_chain(now, chain);
        let emptied = |now: &[Vec<String>]| gone(now) || !now.iter().any(|w| appended_to(w) == Some(chain));
        ipt.remove(&["-t", "nat", "-F", chain], emptied)?;
        ipt.remove(&["-t", "nat", "-X", chain], gone)?;
    }
    Ok(())
}

/// The listing of table nat for `fam`, or `None` when this family cannot hold rules of ours
/// (no binary, no kernel support, or unreadable while the attachment has no such address).
pub(super) fn ipt_listing(tools: &Tools, fam: Family, required: bool) -> Result<Option<(Ipt<'_>, Vec<Vec<String>>)>> {
    let Some(bin) = tools.iptables(fam) else {
        return Ok(None);
    };
    let ipt = Ipt { bin };
    match ipt.list_nat()? {
        Ok(rules) => Ok(Some((ipt, rules))),
        Err(out) if unavailable(&out) || !required => Ok(None),
        Err(out) => Err(out.error()),
    }
}

/// The container ids of `network` that have rules in `rules` (a rule of the container's
/// chain, or a jump to it, carrying the container's reference comment) and are not kept.
pub(super) fn ipt_stale_ids(rules: &[Vec<String>], network: &str, keep: &HashSet<&str>) -> BTreeSet<String> {
    let mut stale = BTreeSet::new();
    for words in rules {
        let Some(in_chain) = appended_to(words) else {
            continue;
        };
        let Some(id) = opt_value(words, &["--comment"]).and_then(|c| parse_ipt_comment(network, c)) else {
            continue;
        };
        let chain = chain_name(network, id);
        if (in_chain == chain || jump_target(words) == Some(&chain)) && !keep.contains(id) {
            stale.insert(id.to_string());
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::tests::net;

    #[test]
    fn save_lines_are_split() {
        let l = r#"-A POSTROUTING -s 10.0.0.2/32 -m comment --comment "name: \"mynet\" id: \"c1\"" -j CNI-abc"#;
        let w = split_save_line(l);
        assert_eq!(
            w,
            [
                "-A",
                "POSTROUTING",
                "-s",
                "10.0.0.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "mynet" id: "c1""#,
                "-j",
                "CNI-abc"
            ]
        );
        assert_eq!(appended_to(&w), Some("POSTROUTING"));
        assert_eq!(jump_target(&w), Some("CNI-abc"));
        assert_eq!(opt_value(&w, &["--comment"]), Some(r#"name: "mynet" id: "c1""#));
        assert_eq!(split_save_line(r#"-A X --comment "a\\b  c" -j Y"#)[3], r"a\b  c");
        assert_eq!(split_save_line(r#"-A X --comment "" -j Y"#)[3], "");
        assert_eq!(jump_target(&split_save_line("-A X --comment -j -j Y")), Some("Y"));
        assert_eq!(split_save_line("-N CNI-x"), ["-N", "CNI-x"]);
        assert!(split_save_line("").is_empty());
        assert_eq!(appended_to(&split_save_line("-P POSTROUTING ACCEPT")), None);
    }

    #[test]
    fn reference_comments_are_parsed() {
        assert_eq!(parse_ipt_comment("mynet", r#"name: "mynet" id: "c1""#), Some("c1"));
        assert_eq!(parse_ipt_comment("mynet", r#"name: "mynet2" id: "c1""#), None);
        assert_eq!(parse_ipt_comment("my", r#"name: "mynet" id: "c1""#), None);
        assert_eq!(parse_ipt_comment("mynet", r#"name: "mynet" id: "c 1""#), None);
        assert_eq!(parse_ipt_comment("mynet", "plain"), None);
    }

    #[test]
    fn stale_ids_are_found_by_comment_and_chain() {
        let (a, b) = (chain_name("n", "a"), chain_name("n", "b"));
        let c = |id: &str| format!("\"name: \\\"n\\\" id: \\\"{id}\\\"\"");
        let listing = [
            "-P POSTROUTING ACCEPT".to_string(),
            format!("-N {a}"),
            format!("-N {b}"),
            format!("-A POSTROUTING -s 10.0.0.2/32 -m comment --comment {} -j {a}", c("a")),
            format!("-A {b} -d 10.0.0.0/24 -m comment --comment {} -j ACCEPT", c("b")),
            // A comment naming "z" on a chain that is not z's: not ours to judge.
            format!("-A {a} -d 10.0.0.0/24 -m comment --comment {} -j ACCEPT", c("z")),
            format!("-A POSTROUTING -s 10.0.0.9/32 -m comment --comment {} -j {b}", c("x")),
        ];
        let rules: Vec<Vec<String>> = listing.iter().map(|l| split_save_line(l)).collect();
        let ids = ipt_stale_ids(&rules, "n", &HashSet::new());
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        let ids = ipt_stale_ids(&rules, "n", &HashSet::from(["a"]));
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["b"]);
        assert!(ipt_stale_ids(&rules, "other", &HashSet::new()).is_empty());
    }

    #[test]
    fn iptables_rules_match_the_reference() {
        let c = iptables_comment("mynet", "abc123");
        let ch = chain_name("mynet", "abc123");
        let words = |r: &IptRule| r.spec.join(" ");
        let [acc, masq, jump] = ipt_rules(&ch, &c, &net("10.88.3.7/16"));
        assert_eq!((acc.chain.as_str(), acc.first), (ch.as_str(), true));
        assert_eq!(
            words(&acc),
            format!("-d 10.88.0.0/16 -j ACCEPT -m comment --comment {c}")
        );
        assert_eq!((masq.chain.as_str(), masq.first), (ch.as_str(), false));
        assert_eq!(
            words(&masq),
            format!("! -d 224.0.0.0/4 -j MASQUERADE -m comment --comment {c}")
        );
        assert_eq!(jump.chain, "POSTROUTING");
        assert_eq!(words(&jump), format!("-s 10.88.3.7 -j {ch} -m comment --comment {c}"));
        let [acc, masq, jump] = ipt_rules(&ch, &c, &net("fd00:88::7/64"));
        assert_eq!(
            words(&acc),
            format!("-d fd00:88::/64 -j ACCEPT -m comment --comment {c}")
        );
        assert_eq!(
            words(&masq),
            format!("! -d ff00::/8 -j MASQUERADE -m comment --comment {c}")
        );
        assert_eq!(words(&jump), format!("-s fd00:88::7 -j {ch} -m comment --comment {c}"));
    }
}
