//! `macspoofchk`: frames entering the bridge from a container's veth must carry the
//! container's MAC. The reference's nftables layout exactly (table `bridge nat`, chain
//! `PREROUTING`, per-attachment chains `cni-br-iface-<id>` and `…-mac`, comments
//! `macspoofchk-<id>` with id `<container id>-<ifname>`), so either plugin set removes the
//! other's rules.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

fn ref_id(container_id: &str, ifname: &str) -> Result<String> {
    let id = format!("{container_id}-{ifname}");
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(Error::InvalidConfig(format!(
            "macspoofchk: container id and interface name must hold only letters, digits, '_', '.' and '-' (got \"{}\")",
            id.escape_debug()
        )));
    }
    Ok(id)
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Firewall(format!("macspoofchk needs nft (nftables): running nft: {e}")))?;
    if let Some(s) = stdin {
        let mut i = child.stdin.take().expect("piped");
        let _ = i.write_all(s.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Firewall(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::Firewall(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Drops frames from `host_veth` whose source MAC is not `mac`.
pub fn setup_spoofchk(host_veth: &str, mac: &str, container_id: &str, ifname: &str) -> Result<()> {
    let id = ref_id(container_id, ifname)?;
    let mac = crate::netlink::parse_mac(mac)
        .map(|m| crate::netlink::format_mac(&m))
        .ok_or_else(|| Error::InvalidConfig(format!("macspoofchk: invalid MAC {mac}")))?;
    if !host_veth.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::Internal(format!("unexpected host veth name {host_veth}")));
    }
    let chain = format!("cni-br-iface-{id}");
    let comment = format!("macspoofchk-{id}");
    let script = format!(
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
    );
    nft(&["-f", "-"], Some(&script)).map(|_| ())
}

/// Removes the rules and chains of this attachment; nothing there (or no nft) is success.
pub fn teardown_spoofchk(container_id: &str, ifname: &str) -> Result<()> {
    let id = ref_id(container_id, ifname)?;
    let listing = match nft(&["-a", "list", "chain", "bridge", "nat", "PREROUTING"], None) {
        Ok(l) => l,
        // No nft, no table or no chain: nothing of ours can be there.
        Err(_) => return Ok(()),
    };
    let comment = format!("comment \"macspoofchk-{id}\"");
    let mut script = String::new();
    for line in listing.lines().filter(|l| l.contains(&comment)) {
        if let Some(h) = line
            .rsplit("# handle ")
            .next()
            .and_then(|h| h.trim().parse::<u64>().ok())
        {
            script.push_str(&format!("delete rule bridge nat PREROUTING handle {h}\n"));
        }
    }
    let chain = format!("cni-br-iface-{id}");
    if !script.is_empty() {
        nft(&["-f", "-"], Some(&script))?;
    }
    for c in [chain.clone(), format!("{chain}-mac")] {
        // A missing chain is fine: delete only what exists.
        if nft(&["list", "chain", "bridge", "nat", &c], None).is_ok() {
            nft(&["delete", "chain", "bridge", "nat", &c], None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert_eq!(ref_id("abc", "eth0").unwrap(), "abc-eth0");
        assert!(ref_id("abc", "e\"; drop").is_err());
    }
}
