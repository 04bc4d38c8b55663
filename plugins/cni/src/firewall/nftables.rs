//! The reference's nftables masquerade layout (its knftables transaction, text for text):
//! ```text
//! table inet cni_plugins_masquerade
//!   chain postrouting { type nat hook postrouting priority 100 }
//!     ip daddr == 224.0.0.0/4 return ; ip6 daddr == ff00::/8 return ; goto masq_checks
//!   chain masq_checks
//!     ip saddr == <ip> ip daddr != <subnet> masquerade comment "<h(net)>-<h(if:id)>, net: <net>, if: <if>, id: <id>"
//! ```
//! where `h(x)` is the first 16 hex digits of sha512(x) and the comment is cut at 128 bytes.
//! Rules are found by the comment's hash prefix (`h(net)-h(if:id)` for one attachment,
//! `h(net)` for GC) and deleted by handle. Each change is one atomic `nft -f -` transaction.
//!
//! Also the reading of `nft -j` listings that [`super::spoofchk`] shares: whether a table
//! exists is read from `nft -j list tables`, never from the text of an error.

use std::path::Path;

use ipnet::IpNet;
use serde_json::Value;

use super::exec::{run, unavailable};
use super::names::{nft_comment, nft_instance_hash};
use super::{Family, MULTICAST_V4, MULTICAST_V6};
use crate::error::{Error, Result};

/// The reference's nftables table (family `inet`).
pub const NFT_TABLE: &str = "cni_plugins_masquerade";
/// The reference's nftables chain holding one masquerade rule per address.
pub const NFT_MASQ_CHAIN: &str = "masq_checks";
const NFT_TABLE_COMMENT: &str = "Masquerading for plugins from github.com/containernetworking/plugins";
const NFT_CHAIN_COMMENT: &str = "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";

// ---------------------------------------------------------------------------------------------
// Reading `nft -j` listings.

fn bad_json(what: &str) -> Error {
    Error::firewall(format!("unexpected nft JSON output: {what}"))
}

/// The objects (`{"table": …}`, `{"chain": …}`, `{"rule": …}`) of `nft -j` output.
fn objects(json: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(json).map_err(|e| bad_json(&e.to_string()))?;
    match v {
        Value::Object(mut m) => match m.remove("nftables") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(bad_json("no \"nftables\" array")),
        },
        _ => Err(bad_json("no \"nftables\" array")),
    }
}

/// The `kind` objects (`"table"`, `"chain"`, `"rule"`) of table `family table`.
fn of_table<'a>(
    objects: &'a [Value],
    kind: &'a str,
    family: &'a str,
    table: &'a str,
) -> impl Iterator<Item = &'a Value> {
    let table_key = if kind == "table" { "name" } else { "table" };
    objects.iter().filter_map(move |o| {
        let x = o.get(kind)?;
        let s = |k: &str| x.get(k).and_then(Value::as_str);
        (s("family") == Some(family) && s(table_key) == Some(table)).then_some(x)
    })
}

/// A rule as `nft -j list` shows it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct NftRule {
    pub handle: u64,
    pub comment: Option<String>,
}

/// The rules of chain `family table chain` in a listing.
pub(super) fn rules_in(objects: &[Value], family: &str, table: &str, chain: &str) -> Result<Vec<NftRule>> {
    of_table(objects, "rule", family, table)
        .filter(|r| r.get("chain").and_then(Value::as_str) == Some(chain))
        .map(|r| {
            Ok(NftRule {
                handle: r
                    .get("handle")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad_json("rule without handle"))?,
                comment: r.get("comment").and_then(Value::as_str).map(String::from),
            })
        })
        .collect()
}

/// The names of the chains of table `family table` in a listing.
pub(super) fn chains_in(objects: &[Value], family: &str, table: &str) -> Vec<String> {
    of_table(objects, "chain", family, table)
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect()
}

/// The rules of our masquerade chain in `nft -j list …` output of our table or chain.
#[cfg(test)]
pub(super) fn parse_nft_rules(json: &str) -> Result<Vec<NftRule>> {
    rules_in(&objects(json)?, "inet", NFT_TABLE, NFT_MASQ_CHAIN)
}

/// What `nft -j list table` shows of one table.
#[derive(Debug)]
pub(super) enum Listing {
    /// The kernel has no nf_tables (or not this family): nothing can be there.
    Unavailable,
    /// No such table.
    Absent,
    /// The table's objects.
    Objects(Vec<Value>),
}

/// Whether `nft -j list tables` shows table `family table`; `None` when nf_tables is
/// unavailable.
fn table_exists(nft: &Path, family: &str, table: &str) -> Result<Option<bool>> {
    let out = run(nft, &["-j", "list", "tables"], None)?;
    if unavailable(&out) {
        return Ok(None);
    }
    let objs = objects(&out.checked()?)?;
    let exists = of_table(&objs, "table", family, table).next().is_some();
    Ok(Some(exists))
}

/// Lists table `family table`. A table that `nft -j list tables` does not show is
/// [`Listing::Absent`], also when it went away between that and the listing; any other
/// failure is an error.
pub(super) fn list_table(nft: &Path, family: &str, table: &str) -> Result<Listing> {
    match table_exists(nft, family, table)? {
        None => return Ok(Listing::Unavailable),
        Some(false) => return Ok(Listing::Absent),
        Some(true) => {}
    }
    let out = run(nft, &["-j", "list", "table", family, table], None)?;
    if out.ok {
        return objects(&out.stdout).map(Listing::Objects);
    }
    match table_exists(nft, family, table) {
        Ok(Some(false)) => Ok(Listing::Absent),
        _ => Err(out.error()),
    }
}

/// Runs one `nft -f -` transaction.
pub(super) fn apply(nft: &Path, script: &str) -> Result<()> {
    run(nft, &["-f", "-"], Some(script))?.checked().map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// The masquerade layout.

/// The masquerade chain's rules; empty when the table or chain does not exist; `None` when
/// the kernel has no nf_tables.
fn nft_list(nft: &Path) -> Result<Option<Vec<NftRule>>> {
    match list_table(nft, "inet", NFT_TABLE)? {
        Listing::Unavailable => Ok(None),
        Listing::Absent => Ok(Some(Vec::new())),
        Listing::Objects(objs) => rules_in(&objs, "inet", NFT_TABLE, NFT_MASQ_CHAIN).map(Some),
    }
}

/// Whether a failed transaction that deleted `handles` may succeed when listed and tried
/// again: one of them went away meanwhile (another call removed it first).
fn raced(nft: &Path, handles: &[u64]) -> bool {
    match nft_list(nft) {
        Ok(Some(rules)) => handles.iter().any(|h| !rules.iter().any(|r| r.handle == *h)),
        Ok(None) | Err(_) => false,
    }
}

fn nft_delete_rule(handle: u64) -> String {
    format!("delete rule inet {NFT_TABLE} {NFT_MASQ_CHAIN} handle {handle}\n")
}

/// The reference's setup transaction: table and chains (with their comments unless
/// `object_comments` is false, for kernels without them), the postrouting chain rewritten,
/// the attachment's `stale` rules replaced by one rule per address.
pub(super) fn nft_setup_script(
    stale: &[u64],
    network: &str,
    ifname: &str,
    container_id: &str,
    addrs: &[IpNet],
    object_comments: bool,
) -> String {
    let t = format!("inet {NFT_TABLE}");
    let mut s = String::new();
    if object_comments {
        s += &format!("add table {t} {{ comment \"{NFT_TABLE_COMMENT}\" ; }}\n");
        s += &format!("add chain {t} {NFT_MASQ_CHAIN} {{ comment \"{NFT_CHAIN_COMMENT}\" ; }}\n");
    } else {
        s += &format!("add table {t}\nadd chain {t} {NFT_MASQ_CHAIN}\n");
    }
    s += &format!("add chain {t} postrouting {{ type nat hook postrouting priority 100 ; }}\n");
    s += &format!("flush chain {t} postrouting\n");
    s += &format!("add rule {t} postrouting ip daddr == {MULTICAST_V4}  return\n");
    s += &format!("add rule {t} postrouting ip6 daddr == {MULTICAST_V6}  return\n");
    s += &format!("add rule {t} postrouting goto {NFT_MASQ_CHAIN}\n");
    for h in stale {
        s += &nft_delete_rule(*h);
    }
    let comment = nft_comment(network, ifname, container_id);
    for a in addrs {
        let ip = match Family::of(a) {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        s += &format!(
            "add rule {t} {NFT_MASQ_CHAIN} {ip} saddr == {} {ip} daddr != {} masquerade comment \"{comment}\"\n",
            a.addr(),
            a.trunc()
        );
    }
    s
}

pub(super) fn nft_setup(nft: &Path, network: &str, ifname: &str, container_id: &str, addrs: &[IpNet]) -> Result<()> {
    let prefix = nft_instance_hash(network, ifname, container_id);
    let mut object_comments = true;
    let mut first_err = None;
    for _ in 0..4 {
        let stale: Vec<u64> = nft_list(nft)?
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.comment.as_deref().is_some_and(|c| c.starts_with(&prefix)))
            .map(|r| r.handle)
            .collect();
        let script = nft_setup_script(&stale, network, ifname, container_id, addrs, object_comments);
        match apply(nft, &script) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if !raced(nft, &stale) {
                    // Kernels before 5.10 have no table/chain comments: knftables then
                    // leaves them out; so do we, once.
                    if !object_comments {
                        return Err(first_err.unwrap_or(e));
                    }
                    object_comments = false;
                }
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.expect("an attempt failed"))
}

/// Deletes the masquerade chain's rules whose comment `doomed` picks, in one transaction
/// (listed and tried again if a rule went away meanwhile). No table, chain or nf_tables:
/// nothing to do.
pub(super) fn nft_delete_matching(nft: &Path, doomed: impl Fn(&str) -> bool) -> Result<()> {
    let mut last = None;
    for _ in 0..3 {
        let Some(rules) = nft_list(nft)? else {
            return Ok(());
        };
        let handles: Vec<u64> = rules
            .iter()
            .filter(|r| r.comment.as_deref().is_some_and(&doomed))
            .map(|r| r.handle)
            .collect();
        if handles.is_empty() {
            return Ok(());
        }
        let script: String = handles.iter().map(|h| nft_delete_rule(*h)).collect();
        match apply(nft, &script) {
            Ok(()) => return Ok(()),
            Err(e) if raced(nft, &handles) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("an attempt failed"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::firewall::tests::net;

    /// The reference's transaction up to the attachment's rules (knftables' text).
    pub(crate) const REFERENCE_HEAD: &str =
        "add table inet cni_plugins_masquerade { comment \"Masquerading for plugins from github.com/containernetworking/plugins\" ; }\n\
         add chain inet cni_plugins_masquerade masq_checks { comment \"Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet\" ; }\n\
         add chain inet cni_plugins_masquerade postrouting { type nat hook postrouting priority 100 ; }\n\
         flush chain inet cni_plugins_masquerade postrouting\n\
         add rule inet cni_plugins_masquerade postrouting ip daddr == 224.0.0.0/4  return\n\
         add rule inet cni_plugins_masquerade postrouting ip6 daddr == ff00::/8  return\n\
         add rule inet cni_plugins_masquerade postrouting goto masq_checks\n";

    #[test]
    fn nft_script_matches_the_reference() {
        let s = nft_setup_script(
            &[7, 9],
            "mynet",
            "eth0",
            "abc123",
            &[net("10.88.3.7/16"), net("fd00::7/64")],
            true,
        );
        let c = "d23676b4f2d9fe04-ebce0e3dd4dafae3, net: mynet, if: eth0, id: abc123";
        let expect = format!(
            "{REFERENCE_HEAD}delete rule inet cni_plugins_masquerade masq_checks handle 7\n\
             delete rule inet cni_plugins_masquerade masq_checks handle 9\n\
             add rule inet cni_plugins_masquerade masq_checks ip saddr == 10.88.3.7 ip daddr != 10.88.0.0/16 masquerade comment \"{c}\"\n\
             add rule inet cni_plugins_masquerade masq_checks ip6 saddr == fd00::7 ip6 daddr != fd00::/64 masquerade comment \"{c}\"\n"
        );
        assert_eq!(s, expect);
        let s = nft_setup_script(&[], "mynet", "eth0", "abc123", &[], false);
        assert!(
            s.starts_with("add table inet cni_plugins_masquerade\nadd chain inet cni_plugins_masquerade masq_checks\n")
        );
        assert!(!s.contains("comment"));
    }

    #[test]
    fn nft_listing_is_parsed() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"chain": {"family": "inet", "table": "cni_plugins_masquerade", "name": "masq_checks", "handle": 1}},
          {"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "masq_checks", "handle": 6,
            "comment": "abc-def, net: n, if: eth0, id: c1", "expr": [{"masquerade": null}]}},
          {"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "masq_checks", "handle": 8,
            "expr": [{"masquerade": null}]}},
          {"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "postrouting", "handle": 3,
            "comment": "abc-def", "expr": []}}]}"#;
        assert_eq!(
            parse_nft_rules(json).unwrap(),
            [
                NftRule {
                    handle: 6,
                    comment: Some("abc-def, net: n, if: eth0, id: c1".into())
                },
                NftRule {
                    handle: 8,
                    comment: None
                }
            ]
        );
        assert!(parse_nft_rules(r#"{"nftables": []}"#).unwrap().is_empty());
        assert_eq!(parse_nft_rules("Error").unwrap_err().code(), 105);
        assert_eq!(parse_nft_rules("{}").unwrap_err().code(), 105);
    }

    #[test]
    fn tables_and_chains_are_read_from_a_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "bridge", "name": "nat", "handle": 1}},
          {"table": {"family": "inet", "name": "nat", "handle": 2}},
          {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING", "handle": 1}},
          {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-x", "handle": 2}},
          {"chain": {"family": "inet", "table": "nat", "name": "other", "handle": 3}},
          {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 4,
            "comment": "macspoofchk-x", "expr": []}}]}"#;
        let objs = objects(json).unwrap();
        assert_eq!(of_table(&objs, "table", "bridge", "nat").count(), 1);
        assert_eq!(of_table(&objs, "table", "bridge", "filter").count(), 0);
        assert_eq!(chains_in(&objs, "bridge", "nat"), ["PREROUTING", "cni-br-iface-x"]);
        let rules = rules_in(&objs, "bridge", "nat", "PREROUTING").unwrap();
        assert_eq!(
            rules,
            [NftRule {
                handle: 4,
                comment: Some("macspoofchk-x".into())
            }]
        );
        assert!(rules_in(&objs, "inet", "nat", "PREROUTING").unwrap().is_empty());
        let no_handle = r#"{"nftables": [{"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING"}}]}"#;
        assert_eq!(
            rules_in(&objects(no_handle).unwrap(), "bridge", "nat", "PREROUTING")
                .unwrap_err()
                .code(),
            105
        );
    }
}
