//! Masquerade rules for the bridge plugin's `ipMasq: true`, in the reference plugins' exact
//! layouts (containernetworking/plugins `pkg/ip/ipmasq_*_linux.go`), so a node can swap
//! binaries with live containers: our DEL and GC remove rules the reference made, and the
//! reference's DEL removes ours.
//!
//! **iptables** (table `nat`, `ip6tables` for IPv6 addresses; the reference ignores `ifname`):
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
//!
//! **nftables** (the reference's knftables transaction, text for text):
//! ```text
//! table inet cni_plugins_masquerade
//!   chain postrouting { type nat hook postrouting priority 100 }
//!     ip daddr == 224.0.0.0/4 return ; ip6 daddr == ff00::/8 return ; goto masq_checks
//!   chain masq_checks
//!     ip saddr == <ip> ip daddr != <subnet> masquerade comment "<h(net)>-<h(if:id)>, net: <net>, if: <if>, id: <id>"
//! ```
//! where `h(x)` is the first 16 hex digits of sha512(x) and the comment is cut at 128 bytes.
//! Rules are found by the comment's hash prefix (`h(net)-h(if:id)` for one attachment,
//! `h(net)` for GC) and deleted by handle.
//!
//! Commands run as child processes with argument lists (never a shell); every name that goes
//! into them is validated first. iptables runs with `-w` (wait for the xtables lock); each
//! nftables change is one atomic `nft -f -` transaction.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha512};

use crate::error::{Error, Errors, Result};

/// The reference's nftables table (family `inet`).
pub const NFT_TABLE: &str = "cni_plugins_masquerade";
/// The reference's nftables chain holding one masquerade rule per address.
pub const NFT_MASQ_CHAIN: &str = "masq_checks";
const NFT_TABLE_COMMENT: &str = "Masquerading for plugins from github.com/containernetworking/plugins";
const NFT_CHAIN_COMMENT: &str = "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";
/// knftables' `CommentLengthMax`.
const NFT_COMMENT_MAX: usize = 128;
const MULTICAST_V4: &str = "224.0.0.0/4";
const MULTICAST_V6: &str = "ff00::/8";
/// Where binaries are looked for after `$PATH` (runtimes may call plugins with a PATH that
/// lacks the sbin directories).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
            Some(other) => Err(Error::InvalidConfig(format!(
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
                .ok_or_else(|| Error::Firewall("ipMasq with the nftables backend needs the nft binary".into()))?;
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

// ---------------------------------------------------------------------------------------------
// Names, hashes and comments, as the reference computes them.

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
fn nft_network_hash(network: &str) -> String {
    hash_with_prefix(16, "", network)
}

/// `hashForInstance`: the nftables comment prefix of one attachment's rules.
fn nft_instance_hash(network: &str, ifname: &str, container_id: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Validation of what goes into a command line or an nft script.

/// CNI's charset for network names and container ids: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A Linux interface name (1-15 bytes, no `/`, `:` or whitespace, not `.`/`..`), further kept
/// to printable ASCII without quotes or backslashes since it goes into an nft comment.
fn valid_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'/' | b':' | b'"' | b'\'' | b'\\' | b'`'))
}

fn check_network(network: &str) -> Result<()> {
    if valid_name(network) {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "ipMasq: network name \"{}\" must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            network.escape_debug()
        )))
    }
}

fn validate(network: &str, container_id: &str, ifname: &str) -> Result<()> {
    check_network(network)?;
    if !valid_name(container_id) {
        return Err(Error::InvalidEnv(format!(
            "ipMasq: container id \"{}\" must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            container_id.escape_debug()
        )));
    }
    if !valid_ifname(ifname) {
        return Err(Error::InvalidEnv(format!(
            "ipMasq: invalid interface name \"{}\"",
            ifname.escape_debug()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running the binaries.

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The binary `name` in an absolute directory of `$PATH`, else of [`DEFAULT_PATH`].
fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(DEFAULT_PATH))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
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
}

/// What a finished command said.
#[derive(Debug)]
struct Output {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Firewall(format!("running {}: {e}", bin.display())))?;
    if let Some(s) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A write error shows as the command's own failure below.
        let _ = pipe.write_all(s.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Firewall(format!("waiting for {}: {e}", bin.display())))?;
    Ok(Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn failure(bin: &Path, args: &[&str], out: &Output) -> Error {
    let name = bin.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let msg = if out.stderr.is_empty() {
        format!("exit status {:?}", out.code)
    } else {
        out.stderr.clone()
    };
    Error::Firewall(format!("{name} {}: {msg}", args.join(" ")))
}

/// The kernel or the binary cannot do this family or API at all (IPv6 disabled, no
/// nf_tables): nothing of ours can be there.
fn unavailable(stderr: &str) -> bool {
    [
        "Address family not supported",
        "Protocol not supported",
        "do you need to insmod",
        "Operation not supported",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

// ---------------------------------------------------------------------------------------------
// iptables

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

struct Ipt<'a> {
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

    fn must(&self, args: &[&str]) -> Result<Output> {
        let out = self.exec(args)?;
        if out.ok {
            Ok(out)
        } else {
            Err(failure(self.bin, args, &out))
        }
    }

    /// Runs `args`, taking "no such rule/chain" for success (someone removed it first).
    fn remove(&self, args: &[&str]) -> Result<()> {
        let out = self.exec(args)?;
        if out.ok || ipt_not_exist(&out.stderr) {
            Ok(())
        } else {
            Err(failure(self.bin, args, &out))
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

/// go-iptables' `IsNotExist` messages.
fn ipt_not_exist(stderr: &str) -> bool {
    [
        "Bad rule (does a matching rule exist in that chain?)",
        "No chain/target/match by that name",
        "No such file or directory",
        "does not exist",
    ]
    .iter()
    .any(|m| stderr.contains(m))
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

fn ipt_setup_all(tools: &Tools, network: &str, container_id: &str, addrs: &[IpNet]) -> Result<()> {
    let chain = chain_name(network, container_id);
    let comment = iptables_comment(network, container_id);
    for fam in [Family::V4, Family::V6] {
        let mine: Vec<&IpNet> = addrs.iter().filter(|a| Family::of(a) == fam).collect();
        if mine.is_empty() {
            continue;
        }
        let bin = match fam {
            Family::V4 => tools.ipt4.as_deref(),
            Family::V6 => tools.ipt6.as_deref(),
        }
        .ok_or_else(|| {
            Error::Firewall(format!(
                "ipMasq with the iptables backend needs the {} binary",
                fam.iptables()
            ))
        })?;
        let ipt = Ipt { bin };
        let rules = ipt
            .list_nat()?
            .map_err(|out| failure(bin, &["-t", "nat", "-S"], &out))?;
        let has_chain = rules.iter().any(|w| w.len() == 2 && w[0] == "-N" && w[1] == chain);
        if !has_chain {
            let out = ipt.exec(&["-t", "nat", "-N", &chain])?;
            if !out.ok && !out.stderr.contains("Chain already exists") {
                return Err(failure(bin, &["-t", "nat", "-N", &chain], &out));
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
        return Err(failure(ipt.bin, &check, &out));
    }
    let mut add = if rule.first {
        vec!["-t", "nat", "-I", &rule.chain, "1"]
    } else {
        vec!["-t", "nat", "-A", &rule.chain]
    };
    add.extend(&spec);
    ipt.must(&add).map(|_| ())
}

/// Removes the POSTROUTING jumps to `chain`, then flushes and deletes it, as `rules` (a
/// listing of table nat) shows them.
fn ipt_teardown_chain(ipt: &Ipt, rules: &[Vec<String>], chain: &str) -> Result<()> {
    for words in rules {
        if appended_to(words) == Some("POSTROUTING") && jump_target(words) == Some(chain) {
            let mut args = vec!["-t", "nat", "-D"];
            args.extend(words[1..].iter().map(String::as_str));
            ipt.remove(&args)?;
        }
    }
    if rules.iter().any(|w| w.len() == 2 && w[0] == "-N" && w[1] == chain) {
        ipt.remove(&["-t", "nat", "-F", chain])?;
        ipt.remove(&["-t", "nat", "-X", chain])?;
    }
    Ok(())
}

/// The listing of table nat for `fam`, or `None` when this family cannot hold rules of ours
/// (no binary, no kernel support, or unreadable while the attachment has no such address).
fn ipt_listing<'a>(tools: &'a Tools, fam: Family, required: bool) -> Result<Option<(Ipt<'a>, Vec<Vec<String>>)>> {
    let Some(bin) = (match fam {
        Family::V4 => tools.ipt4.as_deref(),
        Family::V6 => tools.ipt6.as_deref(),
    }) else {
        return Ok(None);
    };
    let ipt = Ipt { bin };
    match ipt.list_nat()? {
        Ok(rules) => Ok(Some((ipt, rules))),
        Err(out) if unavailable(&out.stderr) || !required => Ok(None),
        Err(out) => Err(failure(bin, &["-t", "nat", "-S"], &out)),
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

/// The container ids of `network` that have rules in `rules` (a rule of the container's
/// chain, or a jump to it, carrying the container's reference comment) and are not kept.
fn ipt_stale_ids(rules: &[Vec<String>], network: &str, keep: &HashSet<&str>) -> BTreeSet<String> {
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

// ---------------------------------------------------------------------------------------------
// nftables

/// A rule of the masquerade chain as `nft -j list chain` shows it.
#[derive(Debug, PartialEq, Eq)]
struct NftRule {
    handle: u64,
    comment: Option<String>,
}

/// The rules of our masquerade chain in `nft -j list chain inet cni_plugins_masquerade
/// masq_checks` output.
fn parse_nft_rules(json: &str) -> Result<Vec<NftRule>> {
    let bad = |what: &str| Error::Firewall(format!("unexpected nft JSON output: {what}"));
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .ok_or_else(|| bad("no \"nftables\" array"))?;
    let mut rules = Vec::new();
    for item in items {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let s = |k: &str| rule.get(k).and_then(|x| x.as_str());
        if s("family") != Some("inet") || s("table") != Some(NFT_TABLE) || s("chain") != Some(NFT_MASQ_CHAIN) {
            continue;
        }
        let handle = rule
            .get("handle")
            .and_then(|h| h.as_u64())
            .ok_or_else(|| bad("rule without handle"))?;
        rules.push(NftRule {
            handle,
            comment: s("comment").map(String::from),
        });
    }
    Ok(rules)
}

/// The masquerade chain's rules; empty when the table or chain does not exist; `None` when
/// the kernel has no nf_tables.
fn nft_list(nft: &Path) -> Result<Option<Vec<NftRule>>> {
    let args = ["-j", "list", "chain", "inet", NFT_TABLE, NFT_MASQ_CHAIN];
    let out = run(nft, &args, None)?;
    if out.ok {
        return parse_nft_rules(&out.stdout).map(Some);
    }
    if out.stderr.contains("No such file or directory") {
        Ok(Some(Vec::new()))
    } else if unavailable(&out.stderr) {
        Ok(None)
    } else {
        Err(failure(nft, &args, &out))
    }
}

fn nft_apply(nft: &Path, script: &str) -> Result<()> {
    let out = run(nft, &["-f", "-"], Some(script))?;
    if out.ok {
        Ok(())
    } else {
        Err(Error::Firewall(format!(
            "nft -f - ({}): {}",
            script.lines().count(),
            if out.stderr.is_empty() { "failed" } else { &out.stderr }
        )))
    }
}

fn nft_delete_rule(handle: u64) -> String {
    format!("delete rule inet {NFT_TABLE} {NFT_MASQ_CHAIN} handle {handle}\n")
}

/// The reference's setup transaction: table and chains (with their comments unless
/// `object_comments` is false, for kernels without them), the postrouting chain rewritten,
/// the attachment's `stale` rules replaced by one rule per address.
fn nft_setup_script(
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

/// Whether a failed transaction may succeed when listed and tried again (a rule we meant to
/// delete went away meanwhile).
fn nft_raced(e: &Error) -> bool {
    e.to_string().contains("No such file or directory")
}

fn nft_setup(nft: &Path, network: &str, ifname: &str, container_id: &str, addrs: &[IpNet]) -> Result<()> {
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
        match nft_apply(nft, &script) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if !nft_raced(&e) {
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
fn nft_delete_matching(nft: &Path, doomed: impl Fn(&str) -> bool) -> Result<()> {
    let mut last = None;
    for _ in 0..3 {
        let Some(rules) = nft_list(nft)? else {
            return Ok(());
        };
        let script: String = rules
            .iter()
            .filter(|r| r.comment.as_deref().is_some_and(&doomed))
            .map(|r| nft_delete_rule(r.handle))
            .collect();
        if script.is_empty() {
            return Ok(());
        }
        match nft_apply(nft, &script) {
            Ok(()) => return Ok(()),
            Err(e) if nft_raced(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("an attempt failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

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
            "add table inet cni_plugins_masquerade {{ comment \"Masquerading for plugins from github.com/containernetworking/plugins\" ; }}\n\
             add chain inet cni_plugins_masquerade masq_checks {{ comment \"Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet\" ; }}\n\
             add chain inet cni_plugins_masquerade postrouting {{ type nat hook postrouting priority 100 ; }}\n\
             flush chain inet cni_plugins_masquerade postrouting\n\
             add rule inet cni_plugins_masquerade postrouting ip daddr == 224.0.0.0/4  return\n\
             add rule inet cni_plugins_masquerade postrouting ip6 daddr == ff00::/8  return\n\
             add rule inet cni_plugins_masquerade postrouting goto masq_checks\n\
             delete rule inet cni_plugins_masquerade masq_checks handle 7\n\
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
    use super::tests::net;
    use super::*;
    use crate::netns::Netns;
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
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {why} (CI is set, so this fails instead of skipping)");
        }
        eprintln!("skipping {test}: {why}");
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
                "add table inet cni_plugins_masquerade {{ comment \"Masquerading for plugins from github.com/containernetworking/plugins\" ; }}\n\
                 add chain inet cni_plugins_masquerade masq_checks {{ comment \"Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet\" ; }}\n\
                 add chain inet cni_plugins_masquerade postrouting {{ type nat hook postrouting priority 100 ; }}\n\
                 flush chain inet cni_plugins_masquerade postrouting\n\
                 add rule inet cni_plugins_masquerade postrouting ip daddr == 224.0.0.0/4  return\n\
                 add rule inet cni_plugins_masquerade postrouting ip6 daddr == ff00::/8  return\n\
                 add rule inet cni_plugins_masquerade postrouting goto masq_checks\n\
                 add rule inet cni_plugins_masquerade masq_checks ip saddr == 10.77.0.5 ip daddr != 10.77.0.0/24 masquerade comment \"{cm}\"\n\
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
            if std::env::var_os("CI").is_some() {
                panic!("interop_with_reference_bridge: /usr/lib/cni/bridge or host-local missing");
            }
            eprintln!("skipping interop_with_reference_bridge: no /usr/lib/cni/bridge");
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
