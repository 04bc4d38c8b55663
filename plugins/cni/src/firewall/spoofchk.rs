//! `macspoofchk`: frames entering the bridge from a container's veth must carry the
//! container's MAC. The reference's nftables layout exactly (table `bridge nat`, chain
//! `PREROUTING`, per-attachment chains `cni-br-iface-<id>` and `…-mac`, comments
//! `macspoofchk-<id>` with id `<container id>-<ifname>`), so either plugin set removes the
//! other's rules:
//! ```text
//! table bridge nat
//!   chain PREROUTING { type filter hook prerouting priority -300; policy accept; }
//!     iifname "<host veth>" jump cni-br-iface-<id> comment "macspoofchk-<id>"
//!   chain cni-br-iface-<id>
//!     jump cni-br-iface-<id>-mac comment "macspoofchk-<id>"
//!   chain cni-br-iface-<id>-mac
//!     ether saddr <mac> return comment "macspoofchk-<id>"
//!     drop comment "macspoofchk-<id>"
//! ```
//! Teardown reads the table's `nft -j` listing (rules by comment, chains by name) and removes
//! what is there in one transaction; a table that does not exist holds nothing to remove, any
//! other failure to list it is an error.

use std::path::Path;

use super::exec::find_bin;
use super::names::spoofchk_id;
use super::nftables::{apply, chains_in, list_table, rules_in, Listing};
use crate::error::{Error, Result};

const FAMILY: &str = "bridge";
const TABLE: &str = "nat";
const PREROUTING: &str = "PREROUTING";

fn chain_of(id: &str) -> String {
    format!("cni-br-iface-{id}")
}

fn comment_of(id: &str) -> String {
    format!("macspoofchk-{id}")
}

/// Drops frames from `host_veth` whose source MAC is not `mac`.
pub fn setup_spoofchk(host_veth: &str, mac: &str, container_id: &str, ifname: &str) -> Result<()> {
    let id = spoofchk_id(container_id, ifname)?;
    let mac = crate::netlink::parse_mac(mac)
        .map(|m| crate::netlink::format_mac(&m))
        .ok_or_else(|| Error::invalid_config(format!("macspoofchk: invalid MAC {mac}")))?;
    if !host_veth.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::internal(format!("unexpected host veth name {host_veth}")));
    }
    let nft = find_bin("nft").ok_or_else(|| Error::firewall("macspoofchk needs the nft binary (nftables)"))?;
    apply(&nft, &setup_script(host_veth, &mac, &id))
}

fn setup_script(host_veth: &str, mac: &str, id: &str) -> String {
    let chain = chain_of(id);
    let comment = comment_of(id);
    format!(
        "add table bridge nat\n\
         add chain bridge nat PREROUTING {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add chain bridge nat {chain}\n\
         add chain bridge nat {chain}-mac\n\
         flush chain bridge nat {chain}\n\
         flush chain bridge nat {chain}-mac\n\
         add rule bridge nat PREROUTING iifname \"{host_veth}\" jump {chain} comment \"{comment}\"\n\
         add rule bridge nat {chain} jump {chain}-mac comment \"{comment}\"\n\
         add rule bridge nat {chain}-mac ether saddr {mac} return comment \"{comment}\"\n\
         add rule bridge nat {chain}-mac drop comment \"{comment}\"\n"
    )
}

/// The transaction that removes what `objects` (a listing of table `bridge nat`) holds of
/// attachment `id`: its PREROUTING jumps (by comment), then its chains (the jump to `…-mac`
/// goes with the first). Empty when nothing is there.
fn teardown_script(objects: &[serde_json::Value], id: &str) -> Result<String> {
    let comment = comment_of(id);
    let mut script = String::new();
    for r in rules_in(objects, FAMILY, TABLE, PREROUTING)? {
        if r.comment.as_deref() == Some(comment.as_str()) {
            script.push_str(&format!("delete rule bridge nat PREROUTING handle {}\n", r.handle));
        }
    }
    let chains = chains_in(objects, FAMILY, TABLE);
    let chain = chain_of(id);
    for c in [chain.clone(), format!("{chain}-mac")] {
        if chains.contains(&c) {
            script.push_str(&format!("delete chain bridge nat {c}\n"));
        }
    }
    Ok(script)
}

/// Removes the rules and chains of this attachment. Nothing there (no table, no chain, no
/// nf_tables, no nft binary) is success; a listing or removal that fails otherwise is an error.
pub fn teardown_spoofchk(container_id: &str, ifname: &str) -> Result<()> {
    let id = spoofchk_id(container_id, ifname)?;
    let Some(nft) = find_bin("nft") else {
        return Ok(());
    };
    teardown_with(&nft, &id)
}

fn teardown_with(nft: &Path, id: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..3 {
        let script = match list_table(nft, FAMILY, TABLE)? {
            Listing::Unavailable | Listing::Absent => return Ok(()),
            Listing::Objects(objs) => teardown_script(&objs, id)?,
        };
        if script.is_empty() {
            return Ok(());
        }
        match apply(nft, &script) {
            Ok(()) => return Ok(()),
            Err(e) => {
                // Listed and tried again only if what it removes changed meanwhile (another
                // DEL of this attachment took part of it).
                let now = match list_table(nft, FAMILY, TABLE) {
                    Ok(Listing::Objects(objs)) => teardown_script(&objs, id).ok(),
                    Ok(_) => Some(String::new()),
                    Err(_) => None,
                };
                if now.as_ref() == Some(&script) || now.is_none() {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("an attempt failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_is_the_reference_layout() {
        let s = setup_script("veth1234", "02:00:00:00:00:01", "ctr-eth0");
        assert!(s.contains(
            "add rule bridge nat PREROUTING iifname \"veth1234\" jump cni-br-iface-ctr-eth0 comment \"macspoofchk-ctr-eth0\"\n"
        ));
        assert!(s.contains(
            "add rule bridge nat cni-br-iface-ctr-eth0-mac ether saddr 02:00:00:00:00:01 return comment \"macspoofchk-ctr-eth0\"\n"
        ));
        assert!(s.ends_with("add rule bridge nat cni-br-iface-ctr-eth0-mac drop comment \"macspoofchk-ctr-eth0\"\n"));
    }

    #[test]
    fn teardown_takes_only_this_attachment() {
        let objs: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(
            r#"{"nftables": [
              {"table": {"family": "bridge", "name": "nat", "handle": 1}},
              {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING", "handle": 1}},
              {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-a-eth0", "handle": 2}},
              {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-a-eth0-mac", "handle": 3}},
              {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-b-eth0", "handle": 4}},
              {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 5, "comment": "macspoofchk-a-eth0"}},
              {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 6, "comment": "macspoofchk-b-eth0"}},
              {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 7, "comment": "macspoofchk-a-eth00"}}]}"#,
        )
        .unwrap()["nftables"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(
            teardown_script(&objs, "a-eth0").unwrap(),
            "delete rule bridge nat PREROUTING handle 5\n\
             delete chain bridge nat cni-br-iface-a-eth0\n\
             delete chain bridge nat cni-br-iface-a-eth0-mac\n"
        );
        assert_eq!(teardown_script(&objs, "c-eth0").unwrap(), "");
    }

    /// A listing that fails for another reason than a missing table is an error, not
    /// "nothing there" (`false` stands in for an nft that fails).
    #[test]
    fn a_failed_listing_is_an_error() {
        let fails = find_bin("false").expect("false");
        let e = teardown_with(&fails, "a-eth0").unwrap_err();
        assert_eq!(e.code(), 105, "{e}");
        assert!(e.to_string().contains("list tables"), "{e}");
    }
}
