//! Names, hashes and comments of the rules, as the reference computes them
//! (containernetworking/plugins `pkg/utils/utils.go`, `pkg/ip/ipmasq_nftables_linux.go`), and
//! the validation of every name that goes into a command line or an nft script.

use sha2::{Digest, Sha512};

use crate::error::{Error, Result};

/// knftables' `CommentLengthMax`.
const NFT_COMMENT_MAX: usize = 128;

/// `MustFormatHashWithPrefix`: `prefix` + hex(sha512(to_hash)), cut at `len` characters.
fn hash_with_prefix(len: usize, prefix: &str, to_hash: &str) -> String {
    let digest = Sha512::digest(to_hash.as_bytes());
    let mut s = String::with_capacity(prefix.len() + 128);
    s.push_str(prefix);
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(len);
    s
}

/// `utils.FormatChainName(network, containerID)`: the iptables chain of one container.
pub fn chain_name(network: &str, container_id: &str) -> String {
    hash_with_prefix(28, "CNI-", &format!("{network}{container_id}"))
}

/// `utils.FormatComment(network, containerID)`, Go's `name: %q id: %q` (for names of the
/// validated charset `%q` only adds the quotes).
pub fn iptables_comment(network: &str, container_id: &str) -> String {
    format!("name: {} id: {}", go_quote(network), go_quote(container_id))
}

/// Go's `%q` for the strings we may meet: escapes `"` and `\`, and non-printable ASCII.
fn go_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => q.push_str(&format!("\\x{:02x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// `hashForNetwork`: the nftables comment prefix of every rule of a network.
pub(super) fn nft_network_hash(network: &str) -> String {
    hash_with_prefix(16, "", network)
}

/// `hashForInstance`: the nftables comment prefix of one attachment's rules.
pub(super) fn nft_instance_hash(network: &str, ifname: &str, container_id: &str) -> String {
    format!(
        "{}-{}",
        nft_network_hash(network),
        hash_with_prefix(16, "", &format!("{ifname}:{container_id}"))
    )
}

/// `commentForInstance`: the comment of one attachment's nftables rules.
pub fn nft_comment(network: &str, ifname: &str, container_id: &str) -> String {
    let mut c = format!(
        "{}, net: {}, if: {}, id: {}",
        nft_instance_hash(network, ifname, container_id),
        network.replace('"', ""),
        ifname.replace('"', ""),
        container_id.replace('"', "")
    );
    if c.len() > NFT_COMMENT_MAX {
        let mut n = NFT_COMMENT_MAX;
        while !c.is_char_boundary(n) {
            n -= 1;
        }
        c.truncate(n);
    }
    c
}

/// The reference's macspoofchk id of an attachment, `<container id>-<ifname>`: it names the
/// chains `cni-br-iface-<id>`, `cni-br-iface-<id>-mac` and the comment `macspoofchk-<id>`.
pub(super) fn spoofchk_id(container_id: &str, ifname: &str) -> Result<String> {
    let id = format!("{container_id}-{ifname}");
    if !valid_name(&id) {
        return Err(Error::invalid_config(format!(
            "macspoofchk: container id and interface name must hold only letters, digits, '_', '.' and '-' (got \"{}\")",
            id.escape_debug()
        )));
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Validation of what goes into a command line or an nft script.

/// CNI's charset for network names and container ids ([`crate::env::valid_name`]).
pub(super) fn valid_name(s: &str) -> bool {
    crate::env::valid_name(s)
}

/// A Linux interface name ([`crate::env::check_ifname`]), further kept to printable ASCII
/// without quotes, backslashes or backticks since it goes into an nft comment.
fn valid_ifname(s: &str) -> bool {
    crate::env::check_ifname(s).is_ok()
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\'' | b'\\' | b'`'))
}

pub(super) fn check_network(network: &str) -> Result<()> {
    crate::env::check_network_name(network).map_err(|e| e.context("ipMasq"))
}

pub(super) fn validate(network: &str, container_id: &str, ifname: &str) -> Result<()> {
    check_network(network)?;
    crate::env::check_container_id(container_id).map_err(|e| e.context("ipMasq"))?;
    if !valid_ifname(ifname) {
        return Err(Error::invalid_env(format!(
            "ipMasq: invalid interface name \"{}\"",
            ifname.escape_debug()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{gc_masq, setup_masq, teardown_masq, Backend};

    // Expected values computed with the reference's Go code (pkg/utils/utils.go and
    // pkg/ip/ipmasq_nftables_linux.go) run by go 1.19.
    #[test]
    fn names_match_the_reference() {
        assert_eq!(chain_name("mynet", "abc123"), "CNI-70a29d9dc18bc4d652ea5d59");
        assert_eq!(iptables_comment("mynet", "abc123"), r#"name: "mynet" id: "abc123""#);
        assert_eq!(nft_network_hash("mynet"), "d23676b4f2d9fe04");
        assert_eq!(
            nft_instance_hash("mynet", "eth0", "abc123"),
            "d23676b4f2d9fe04-ebce0e3dd4dafae3"
        );
        assert_eq!(
            nft_comment("mynet", "eth0", "abc123"),
            "d23676b4f2d9fe04-ebce0e3dd4dafae3, net: mynet, if: eth0, id: abc123"
        );
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(chain_name("cni-bridge0", &id), "CNI-0cdad5388165d13384f12770");
        assert_eq!(
            nft_comment("cni-bridge0", "net1", &id),
            "b690706bb9701a83-7ef39477148f39ce, net: cni-bridge0, if: net1, id: \
             0123456789abcdef0123456789abcdef0123456789abcdef0123456789abc"
        );
        assert_eq!(nft_comment("cni-bridge0", "net1", &id).len(), 128);
        assert_eq!(chain_name("", ""), "CNI-cf83e1357eefb8bdf1542850");
        assert_eq!(iptables_comment("a\"b", "c\\d"), r#"name: "a\"b" id: "c\\d""#);
    }

    #[test]
    fn names_are_validated() {
        assert!(validate("mynet", "abc-1.2_3", "eth0").is_ok());
        for (n, c, i, code) in [
            ("", "c", "eth0", 7),
            ("-net", "c", "eth0", 7),
            ("my net", "c", "eth0", 7),
            ("n\"x", "c", "eth0", 7),
            ("n", "c;rm", "eth0", 4),
            ("n", ".c", "eth0", 4),
            ("n", "c", "", 4),
            ("n", "c", "eth0\" drop", 4),
            ("n", "c", "sixteen-chars-xx", 4),
            ("n", "c", "..", 4),
            ("n", "c", "a/b", 4),
        ] {
            let e = validate(n, c, i).unwrap_err();
            assert_eq!(e.code(), code, "{n:?} {c:?} {i:?}: {e}");
        }
        assert_eq!(
            setup_masq(Backend::Iptables, "n", "c", "e\"", &[]).unwrap_err().code(),
            4
        );
        assert_eq!(teardown_masq("n n", "c", "eth0", &[]).unwrap_err().code(), 7);
        assert_eq!(gc_masq("", &[]).unwrap_err().code(), 7);
    }

    #[test]
    fn ids_are_validated() {
        assert_eq!(spoofchk_id("abc", "eth0").unwrap(), "abc-eth0");
        assert!(spoofchk_id("abc", "e\"; drop").is_err());
    }
}
