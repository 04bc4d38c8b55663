//! Hardening: bad input, killed processes, concurrency storms, planted symlinks. The plugins
//! are run as a runtime runs them, inside private "host" namespaces, with private lease stores;
//! nothing here touches the machine's own interfaces, addresses, routes or firewall.
//!
//! - bad input: a table of malformed calls per plugin; each must fail with the spec's error
//!   JSON, the right code, a message naming what is wrong, and change nothing on the node.
//! - killed processes: ADDs SIGKILLed at random moments (the plugin and its IPAM child, or the
//!   child alone), then DEL for every container: nothing may be left behind.
//! - load: 256 mixed ADD/DEL/CHECK calls at once; GC of thousands of stale leases.
//! - safety: modes of the lease store, symlinks planted in it, no shell in product code.
//!
//! Needs root and `cargo build --workspace`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_tests::node::{diff, links, nat_rules, nft_ruleset, snapshot, tree, Snapshot};
use cni_tests::{bin, bin_dir, lease_files, Cni, Netns, Output, TempDir, REFERENCE_DIR};
use serde_json::{json, Value};

// -------------------------------------------------------------------------------------------
// Small helpers

/// The versions an error JSON may carry.
const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// `base` with `extra` merged in key by key (objects recursively); a null value removes the key.
fn patch(base: &Value, extra: Value) -> Value {
    fn go(b: &mut Value, e: Value) {
        match (b, e) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    if v.is_null() {
                        b.remove(&k);
                    } else if let Some(slot) = b.get_mut(&k) {
                        go(slot, v);
                    } else {
                        b.insert(k, v);
                    }
                }
            }
            (b, e) => *b = e,
        }
    }
    let mut out = base.clone();
    go(&mut out, extra);
    out
}

/// A cheap pseudo-random generator (xorshift), seeded from the clock unless `HARDENING_SEED`
/// is set; the seed is printed so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new(tag: &str) -> Rng {
        let seed = std::env::var("HARDENING_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
            });
        eprintln!("{tag}: HARDENING_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// -------------------------------------------------------------------------------------------
// Bad input

/// What a malformed call must give.
#[derive(Debug, Clone)]
enum Expect {
    /// The spec's error JSON with this code, a message holding every needle.
    Error(u64, Vec<String>),
    /// No `CNI_COMMAND`: the reference prints its "about" text on stderr and exits 0 with
    /// nothing on stdout; so do we.
    About,
    /// A DEL of a config that went bad after ADD: it must still tear down (here: nothing),
    /// exit 0 with nothing on stdout.
    Deleted,
}

struct Case {
    name: String,
    cni: Cni,
    expect: Expect,
}

fn err(code: u64, needles: &[&str]) -> Expect {
    Expect::Error(code, needles.iter().map(|s| s.to_string()).collect())
}

/// One plugin's world for the bad-input table: a host namespace, an empty container
/// namespace, a lease store, a valid config and a container `c0` already set up with it.
struct Bed {
    plugin: &'static str,
    host: Netns,
    ctr: Netns,
    _ctr0: Netns,
    data: TempDir,
    conf: Value,
    /// The result of the ADD of `c0`, for CHECK cases.
    c0_result: Value,
}

impl Bed {
    fn new(plugin: &'static str) -> Bed {
        let host = Netns::new();
        let data = TempDir::new(&format!("hard-{plugin}"));
        let ipam =
            |subnet: &str| json!({"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": subnet}]]});
        let conf = match plugin {
            "host-local" => json!({
                "cniVersion": "1.0.0", "name": "hardhl", "type": "host-local", "ipam": ipam("10.91.0.0/24")
            }),
            "bridge" => json!({
                "cniVersion": "1.0.0", "name": "hardbr", "type": "bridge", "bridge": "hbr0",
                "isGateway": true, "ipMasq": true, "ipam": ipam("10.92.0.0/24")
            }),
            "macvlan" => {
                host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
                host.ip(&["link", "set", "m0", "up"]);
                host.ip(&["link", "set", "m1", "up"]);
                json!({
                    "cniVersion": "1.0.0", "name": "hardmv", "type": "macvlan", "master": "m0",
                    "ipam": ipam("10.93.0.0/24")
                })
            }
            _ => unreachable!(),
        };
        let ctr0 = Netns::new();
        let c0_result = Cni::new(bin(plugin))
            .command("ADD")
            .container_id("c0")
            .netns(ctr0.path())
            .host(&host)
            .config(&conf)
            .run()
            .expect_ok();
        Bed {
            plugin,
            ctr: Netns::new(),
            _ctr0: ctr0,
            host,
            data,
            conf,
            c0_result,
        }
    }

    /// A valid ADD of container `ctr1` into the empty container namespace.
    fn base(&self) -> Cni {
        Cni::new(bin(self.plugin))
            .command("ADD")
            .container_id("ctr1")
            .netns(self.ctr.path())
            .host(&self.host)
            .config(&self.conf)
    }

    /// The base call with `extra` patched into the config.
    fn with(&self, extra: Value) -> Cni {
        self.base().config(&patch(&self.conf, extra))
    }

    /// The base call with `extra` patched into the config's `ipam` section.
    fn with_ipam(&self, extra: Value) -> Cni {
        self.with(json!({ "ipam": extra }))
    }

    fn raw(&self, bytes: impl Into<Vec<u8>>) -> Cni {
        self.base().stdin(bytes)
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.host, &self.ctr, self.data.path())
    }
}

fn case(name: impl Into<String>, cni: Cni, expect: Expect) -> Case {
    Case {
        name: name.into(),
        cni,
        expect,
    }
}

/// The cases every plugin shares: the skeleton's checks of stdin and environment, and the
/// IPAM section that host-local reads (through delegation for bridge and macvlan).
fn common_cases(b: &Bed) -> Vec<Case> {
    let conf_text = b.conf.to_string();
    let mut huge = b.conf.clone();
    huge["args"] = json!({ "pad": "x".repeat(5 << 20) });
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let deep_obj = conf_text.replacen(
        "\"ipam\":{",
        &format!(
            "\"ipam\":{{\"deep\":{}1{},",
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        ),
        1,
    );
    assert_ne!(deep_obj, conf_text);
    let deep_in_args = format!(
        "{{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"args\":{}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let raw_nul = conf_text.replacen("\"name\":\"", "\"name\":\"ab\0", 1);
    let mut bad_utf8 = conf_text.clone().into_bytes();
    let at = conf_text.find("\"name\":\"").unwrap() + 8;
    bad_utf8.splice(at..at, [0xff, 0xfe, 0xc3]);
    // As in the reference's Go decoder, a repeated key is no error: the later one wins.
    let dup = format!(
        "{},\"cniVersion\":\"9.9.9\"}}",
        conf_text.trim_end().strip_suffix('}').unwrap()
    );
    let name = b.conf["name"].as_str().unwrap().to_string();
    let checked_prev = patch(&b.conf, json!({ "prevResult": b.c0_result.clone() }));

    vec![
        // stdin
        case("stdin not JSON", b.raw("this is not json"), err(6, &["not valid JSON"])),
        case("stdin empty", b.raw(""), err(6, &["no network config"])),
        case("stdin whitespace only", b.raw(" \n\t "), err(6, &["no network config"])),
        case(
            "stdin truncated JSON",
            b.raw(&conf_text[..conf_text.len() / 2]),
            err(6, &["not valid JSON"]),
        ),
        case(
            "stdin > 4 MiB",
            b.raw(huge.to_string()),
            err(6, &["larger than 4194304 bytes"]),
        ),
        case("deeply nested array", b.raw(deep), err(6, &[])),
        case(
            "deeply nested object in ipam",
            b.raw(deep_obj),
            err(6, &["recursion limit"]),
        ),
        case("deeply nested args", b.raw(deep_in_args), err(6, &["recursion limit"])),
        case(
            "raw NUL byte in a string",
            b.raw(raw_nul),
            err(6, &["control character"]),
        ),
        case("invalid UTF-8", b.raw(bad_utf8), err(6, &["unicode"])),
        case("top-level array", b.raw("[1, 2]"), err(6, &[])),
        case("top-level null", b.raw("null"), err(6, &[])),
        case("top-level string", b.raw("\"cni\""), err(6, &[])),
        case("top-level number", b.raw("42"), err(6, &[])),
        case(
            "trailing garbage",
            b.raw(format!("{conf_text} x")),
            err(6, &["not valid JSON"]),
        ),
        case("duplicate key, the later wins", b.raw(dup), err(1, &["9.9.9"])),
        // wrong types of common keys
        case(
            "cniVersion is a number",
            b.with(json!({"cniVersion": 1.0})),
            err(6, &["cniVersion"]),
        ),
        case("name is a number", b.with(json!({"name": 7})), err(6, &["name"])),
        case(
            "ipam is a string",
            b.with(json!({"ipam": "host-local"})),
            err(6, &["ipam"]),
        ),
        case("dns is a string", b.with(json!({"dns": "10.0.0.53"})), err(6, &["dns"])),
        // versions
        case(
            "unknown cniVersion",
            b.with(json!({"cniVersion": "9.9.9"})),
            err(1, &["9.9.9"]),
        ),
        case(
            "cniVersion 1.0",
            b.with(json!({"cniVersion": "1.0"})),
            err(1, &["\"1.0\""]),
        ),
        case(
            "CHECK with cniVersion 0.3.1",
            b.with(json!({"cniVersion": "0.3.1"})).command("CHECK"),
            err(1, &["0.3.1", "CHECK"]),
        ),
        case(
            "GC with cniVersion 1.0.0",
            b.base().command("GC"),
            err(1, &["1.0.0", "GC"]),
        ),
        case(
            "STATUS with cniVersion 1.0.0",
            b.base().command("STATUS"),
            err(1, &["1.0.0", "STATUS"]),
        ),
        // CNI_COMMAND
        case(
            "CNI_COMMAND unknown",
            b.base().command("FOO"),
            err(4, &["CNI_COMMAND", "FOO"]),
        ),
        case(
            "CNI_COMMAND lower case",
            b.base().command("add"),
            err(4, &["CNI_COMMAND", "add"]),
        ),
        case("CNI_COMMAND empty", b.base().command(""), err(4, &["CNI_COMMAND"])),
        case("CNI_COMMAND missing", b.base().unset("CNI_COMMAND"), Expect::About),
        // other CNI_* variables
        case(
            "CNI_CONTAINERID missing",
            b.base().unset("CNI_CONTAINERID"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_IFNAME missing",
            b.base().unset("CNI_IFNAME"),
            err(4, &["CNI_IFNAME"]),
        ),
        case("CNI_NETNS missing", b.base().unset("CNI_NETNS"), err(4, &["CNI_NETNS"])),
        case("CNI_PATH missing", b.base().unset("CNI_PATH"), err(4, &["CNI_PATH"])),
        case("CNI_PATH empty", b.base().env("CNI_PATH", ""), err(4, &["CNI_PATH"])),
        case(
            "CNI_IFNAME 16 bytes",
            b.base().ifname("eth0123456789abc"),
            err(4, &["CNI_IFNAME", "eth0123456789abc"]),
        ),
        case(
            "CNI_IFNAME with /",
            b.base().ifname("a/b"),
            err(4, &["CNI_IFNAME", "a/b"]),
        ),
        case("CNI_IFNAME ..", b.base().ifname(".."), err(4, &["CNI_IFNAME"])),
        case(
            "CNI_IFNAME with space",
            b.base().ifname("eth 0"),
            err(4, &["CNI_IFNAME"]),
        ),
        case(
            "CNI_IFNAME with newline",
            b.base().ifname("eth0\n"),
            err(4, &["CNI_IFNAME"]),
        ),
        case(
            "CNI_IFNAME with colon",
            b.base().ifname("eth0:1"),
            err(4, &["CNI_IFNAME"]),
        ),
        case(
            "CNI_CONTAINERID with ../",
            b.base().container_id("../../etc/passwd"),
            err(4, &["CNI_CONTAINERID", "../../etc/passwd"]),
        ),
        case(
            "CNI_CONTAINERID with /",
            b.base().container_id("a/b"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_CONTAINERID leading -",
            b.base().container_id("-rf"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_CONTAINERID with newline",
            b.base().container_id("c1\nx"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_CONTAINERID with $()",
            b.base().container_id("c$(id)"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_ARGS pair without =",
            b.base().args("junk"),
            err(4, &["CNI_ARGS", "junk"]),
        ),
        case("CNI_ARGS empty key", b.base().args("=x"), err(4, &["CNI_ARGS"])),
        // the network name: the lease store's directory, and part of firewall names
        case(
            "network name ../..",
            b.with(json!({"name": "../../etc"})),
            err(7, &["network name", "../../etc"]),
        ),
        case(
            "network name a/b",
            b.with(json!({"name": "a/b"})),
            err(7, &["network name", "a/b"]),
        ),
        case(
            "network name .hidden",
            b.with(json!({"name": ".hidden"})),
            err(7, &["network name"]),
        ),
        case(
            "network name with ;",
            b.with(json!({"name": "n;reboot"})),
            err(7, &["network name"]),
        ),
        case(
            "network name with NUL",
            b.with(json!({"name": "ab\u{0}c"})),
            err(7, &["network name"]),
        ),
        // the ipam section (host-local's; delegated by bridge and macvlan)
        case(
            "subnet with host bits",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.5/24"}]]})),
            err(7, &["subnet", "10.94.0.5/24", "host bits"]),
        ),
        case(
            "subnet not a CIDR",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/33"}]]})),
            err(7, &["subnet", "10.94.0.0/33"]),
        ),
        case(
            "subnet too small",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/31"}]]})),
            err(7, &["subnet", "too small"]),
        ),
        case(
            "rangeStart outside its subnet",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeStart": "10.95.0.10"}]]})),
            err(7, &["rangeStart", "10.95.0.10", "outside"]),
        ),
        case(
            "rangeEnd outside its subnet",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeEnd": "10.94.1.10"}]]})),
            err(7, &["rangeEnd", "10.94.1.10", "outside"]),
        ),
        case(
            "rangeEnd before rangeStart",
            b.with_ipam(
                json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeStart": "10.94.0.50", "rangeEnd": "10.94.0.10"}]]}),
            ),
            err(7, &["rangeEnd", "rangeStart"]),
        ),
        case(
            "gateway of the other family",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "gateway": "fd00::1"}]]})),
            err(7, &["gateway", "fd00::1"]),
        ),
        case(
            "rangeStart not an address",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeStart": "ten"}]]})),
            err(7, &["rangeStart", "ten"]),
        ),
        case(
            "empty range set",
            b.with_ipam(json!({"ranges": [[]]})),
            err(7, &["ranges[0]", "empty"]),
        ),
        case(
            "no ranges at all",
            b.with_ipam(json!({"ranges": null})),
            err(7, &["no IP ranges"]),
        ),
        case(
            "overlapping range sets",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24"}], [{"subnet": "10.94.0.0/16"}]]})),
            err(7, &["overlaps"]),
        ),
        case(
            "range set mixing families",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24"}, {"subnet": "fd00:94::/64"}]]})),
            err(7, &["families"]),
        ),
        case(
            "ranges of wrong type",
            b.with_ipam(json!({"ranges": 5})),
            err(6, &["ranges"]),
        ),
        case(
            "route dst not a CIDR",
            b.with_ipam(json!({"routes": [{"dst": "default"}]})),
            err(6, &["routes", "dst"]),
        ),
        case(
            "route mtu negative",
            b.with_ipam(json!({"routes": [{"dst": "0.0.0.0/0", "mtu": -1}]})),
            err(6, &["routes", "mtu"]),
        ),
        case(
            "dataDir of wrong type",
            b.with_ipam(json!({"dataDir": 5})),
            err(6, &["dataDir"]),
        ),
        case(
            "resolvConf missing",
            b.with_ipam(json!({"resolvConf": "/nonexistent/resolv.conf"})),
            err(5, &["/nonexistent/resolv.conf"]),
        ),
        case(
            "runtimeConfig.ips not an address",
            b.with(json!({"runtimeConfig": {"ips": ["10.91.0.300"]}})),
            err(7, &["runtimeConfig.ips[0]", "10.91.0.300"]),
        ),
        case(
            "args.cni.ips not an address",
            b.with(json!({"args": {"cni": {"ips": ["nope"]}}})),
            err(7, &["args.cni.ips[0]", "nope"]),
        ),
        case(
            "CNI_ARGS IP not an address",
            b.base().args("IgnoreUnknown=1;IP=999.1.1.1"),
            err(4, &["CNI_ARGS", "999.1.1.1"]),
        ),
        case(
            "CNI_ARGS IP outside every range",
            b.base().args("IgnoreUnknown=1;IP=10.99.0.5"),
            err(7, &["10.99.0.5"]),
        ),
        case(
            "CNI_ARGS unknown key",
            b.base().args("FOO=bar"),
            err(4, &["CNI_ARGS", "FOO=bar", "IgnoreUnknown"]),
        ),
        // other verbs with bad input
        case(
            "DEL with non-JSON",
            b.raw("{{{").command("DEL"),
            err(6, &["not valid JSON"]),
        ),
        case(
            "DEL with container id ../",
            b.base().command("DEL").container_id(".."),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "DEL with network name ../",
            b.with(json!({"name": ".."})).command("DEL"),
            err(7, &["network name"]),
        ),
        case(
            "GC with valid-attachments of wrong type",
            b.with(json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": "c0"}))
                .command("GC"),
            err(6, &["cni.dev/valid-attachments"]),
        ),
        case(
            "GC with attachment without containerID",
            b.with(json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"ifname": "eth0"}]}))
                .command("GC"),
            err(6, &["containerID"]),
        ),
        case(
            "CHECK of a container that has nothing",
            b.base().command("CHECK").config(&checked_prev).container_id("nobody"),
            err(104, &[]),
        ),
        case(
            "ADD into a network dir planted as a file",
            b.with(json!({"name": format!("{name}-file")})),
            err(5, &[&format!("{name}-file")]),
        ),
    ]
}

/// Runs every case; returns the description of each failing one.
fn run_cases(b: &Bed, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut before = b.snapshot();
    let n = cases.len();
    for c in cases {
        let started = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.cni.run()));
        let mut problems = Vec::new();
        match out {
            Err(_) => problems.push("the call's output could not be read (see the panic above)".to_string()),
            Ok(out) => {
                if out.stderr.to_lowercase().contains("panic") {
                    problems.push(format!("panicked: {}", out.stderr.trim()));
                }
                match &c.expect {
                    Expect::About => {
                        if out.code != Some(0) || !out.raw_stdout.trim().is_empty() {
                            problems.push(format!("exit {:?}, stdout {:?}", out.code, out.raw_stdout));
                        }
                        if !out.stderr.contains("CNI protocol versions supported") {
                            problems.push(format!("no about text on stderr: {:?}", out.stderr));
                        }
                    }
                    Expect::Deleted => {
                        if out.code != Some(0) || !out.raw_stdout.trim().is_empty() {
                            problems.push(format!("exit {:?}, stdout {:?}", out.code, out.raw_stdout));
                        }
                    }
                    Expect::Error(code, needles) => problems.extend(check_error(&out, *code, needles)),
                }
            }
        }
        let after = b.snapshot();
        if after != before {
            problems.push(format!("changed the node:\n{}", diff(&before, &after)));
            // Undo what a call that should have failed made, so the next cases start clean.
            let _ = b.base().command("DEL").run();
            before = b.snapshot();
        }
        if started.elapsed() > Duration::from_secs(10) {
            problems.push(format!("took {:?}", started.elapsed()));
        }
        if !problems.is_empty() {
            failures.push(format!("[{}] {}: {}", b.plugin, c.name, problems.join("; ")));
        }
    }
    eprintln!("{}: {n} bad-input cases, {} failing", b.plugin, failures.len());
    failures
}

/// The spec's error JSON with `code`, a message holding every needle, exit status 1.
fn check_error(out: &Output, code: u64, needles: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    if out.code != Some(1) {
        p.push(format!("exit status {:?} (want 1)", out.code));
    }
    let Some(obj) = out.stdout.as_object() else {
        p.push(format!("stdout is not an error object: {:?}", out.raw_stdout));
        return p;
    };
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let allowed: BTreeSet<&str> = ["cniVersion", "code", "msg", "details"].into();
    if !keys.is_subset(&allowed) || !keys.contains("code") || !keys.contains("msg") || !keys.contains("cniVersion") {
        p.push(format!("error JSON keys {keys:?}"));
    }
    if !obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| SUPPORTED_VERSIONS.contains(&v))
    {
        p.push(format!("error cniVersion {:?}", obj.get("cniVersion")));
    }
    let msg = out.error_msg();
    if out.error_code() != Some(code) {
        p.push(format!("code {:?} (want {code}), msg {msg:?}", out.error_code()));
    }
    if msg.trim().is_empty() {
        p.push("empty msg".into());
    }
    for n in needles {
        if !msg.contains(n.as_str()) {
            p.push(format!("msg {msg:?} does not name {n:?}"));
        }
    }
    if out.raw_stdout.trim().lines().count() != 1 {
        p.push(format!("stdout holds more than one JSON line: {:?}", out.raw_stdout));
    }
    p
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Cases for the plugins that open `CNI_NETNS` (bridge and macvlan).
fn netns_cases(b: &Bed) -> Vec<Case> {
    let no_ipam = patch(&b.conf, json!({"ipam": null}));
    let base = || b.base().config(&no_ipam);
    vec![
        case(
            "CNI_NETNS a regular file",
            b.base().netns("/etc/hostname"),
            err(4, &["CNI_NETNS", "/etc/hostname"]),
        ),
        case("CNI_NETNS a directory", b.base().netns("/"), err(4, &["CNI_NETNS"])),
        case(
            "CNI_NETNS a mount namespace",
            b.base().netns("/proc/self/ns/mnt"),
            err(4, &["CNI_NETNS", "not a network namespace"]),
        ),
        case(
            "CNI_NETNS does not exist",
            b.base().netns("/run/netns/does-not-exist"),
            err(3, &["/run/netns/does-not-exist"]),
        ),
        case(
            "CNI_NETNS relative",
            b.base().netns("no-such-ns"),
            err(3, &["no-such-ns"]),
        ),
        case(
            "IPAM type not in CNI_PATH",
            b.with_ipam(json!({"type": "no-such-ipam"})),
            err(7, &["no-such-ipam"]),
        ),
        case(
            "IPAM type with a path",
            b.with_ipam(json!({"type": "../../../bin/sh"})),
            err(7, &["../../../bin/sh"]),
        ),
        case(
            "IPAM type not in a restricted CNI_PATH",
            b.base().env("CNI_PATH", "/nonexistent"),
            err(7, &["host-local"]),
        ),
        case(
            "CHECK with a prevResult that is not a result",
            base()
                .command("CHECK")
                .config(&patch(&no_ipam, json!({"prevResult": "garbage"}))),
            err(6, &["prevResult"]),
        ),
        case(
            "CHECK with a prevResult whose ips name a missing interface",
            base().command("CHECK").config(&patch(
                &no_ipam,
                json!({"prevResult": {"cniVersion": "1.0.0", "ips": [{"interface": 7, "address": "10.0.0.2/24"}]}}),
            )),
            err(6, &["interface index 7"]),
        ),
        case(
            "CHECK with a prevResult address that is not a CIDR",
            base().command("CHECK").config(&patch(
                &no_ipam,
                json!({"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]}}),
            )),
            err(6, &["prevResult", "address"]),
        ),
        case(
            "CHECK without prevResult",
            base().command("CHECK"),
            err(7, &["prevResult"]),
        ),
        case(
            "CNI_ARGS MAC invalid",
            b.base().args("IgnoreUnknown=1;MAC=zz:zz:zz:zz:zz:zz"),
            err(7, &["CNI_ARGS MAC", "zz:zz:zz:zz:zz:zz"]),
        ),
        case(
            "DEL with CNI_ARGS MAC invalid",
            b.base().command("DEL").args("IgnoreUnknown=1;MAC=zz"),
            Expect::Deleted,
        ),
        case(
            "DEL with runtimeConfig.mac invalid",
            b.with(json!({"runtimeConfig": {"mac": "02:00"}})).command("DEL"),
            Expect::Deleted,
        ),
        case(
            "runtimeConfig.mac invalid",
            b.with(json!({"runtimeConfig": {"mac": "02:00:00:00:00"}})),
            err(7, &["runtimeConfig.mac", "02:00:00:00:00"]),
        ),
        case(
            "runtimeConfig.mac multicast",
            b.with(json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}})),
            err(7, &["runtimeConfig.mac", "01:00:5e:00:00:01"]),
        ),
        case(
            "runtimeConfig.mac with a sign",
            b.with(json!({"runtimeConfig": {"mac": "+2:00:00:00:00:01"}})),
            err(7, &["runtimeConfig.mac", "+2:00:00:00:00:01"]),
        ),
        case(
            "runtimeConfig.mac a number",
            b.with(json!({"runtimeConfig": {"mac": 42}})),
            err(7, &["runtimeConfig.mac"]),
        ),
    ]
}

fn host_local_cases(b: &Bed) -> Vec<Case> {
    vec![
        case("ipam missing", b.with(json!({"ipam": null})), err(7, &["ipam"])),
        case("name missing", b.with(json!({"name": null})), err(7, &["name"])),
        case("name empty", b.with(json!({"name": ""})), err(7, &["name"])),
        case(
            "two CNI_ARGS IPs for one range set",
            b.base().args("IP=10.91.0.7,10.91.0.8"),
            err(7, &["10.91.0.8"]),
        ),
        case(
            "CNI_ARGS IgnoreUnknown not a boolean",
            b.base().args("IgnoreUnknown=maybe"),
            err(4, &["IgnoreUnknown", "maybe"]),
        ),
        case(
            "CNI_ARGS IP==",
            b.base().args("IP=10.91.0.7=1"),
            err(4, &["CNI_ARGS", "IP=10.91.0.7=1"]),
        ),
        case(
            "cniVersion 0.2.0 with two IPv4 range sets",
            b.with(json!({"cniVersion": "0.2.0", "ipam": {"ranges": [[{"subnet": "10.91.0.0/24"}], [{"subnet": "10.96.0.0/24"}]]}})),
            err(7, &["0.2.0"]),
        ),
        case(
            "runtimeConfig.ipRanges with host bits",
            b.with(json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.97.0.1/24"}]]}})),
            err(7, &["runtimeConfig.ipRanges[0][0].subnet", "10.97.0.1/24"]),
        ),
        case(
            "runtimeConfig.ipRanges of wrong type",
            b.with(json!({"runtimeConfig": {"ipRanges": {"subnet": "10.97.0.0/24"}}})),
            err(6, &["runtimeConfig.ipRanges"]),
        ),
        case(
            "flat subnet with host bits",
            b.with_ipam(json!({"ranges": null, "subnet": "10.97.0.9/16"})),
            err(7, &["ipam.subnet", "10.97.0.9/16"]),
        ),
        case(
            "dataDir is a file",
            b.with_ipam(json!({"dataDir": "/etc/hostname"})),
            err(5, &["/etc/hostname"]),
        ),
    ]
}

fn macvlan_cases(b: &Bed) -> Vec<Case> {
    vec![
        case(
            "master missing",
            b.with(json!({"master": "nosuch0"})),
            err(7, &["master", "nosuch0"]),
        ),
        case(
            "master too long",
            b.with(json!({"master": "m0123456789abcdef"})),
            err(7, &["master", "m0123456789abcdef"]),
        ),
        case(
            "master with /",
            b.with(json!({"master": "../m0"})),
            err(7, &["master", "../m0"]),
        ),
        case(
            "master with NUL",
            b.with(json!({"master": "m0\u{0}"})),
            err(7, &["master"]),
        ),
        case(
            "master unset and no default route",
            b.with(json!({"master": null})),
            err(7, &["master", "default route"]),
        ),
        case(
            "master of wrong type",
            b.with(json!({"master": ["m0"]})),
            err(6, &["master"]),
        ),
        case(
            "mode unknown",
            b.with(json!({"mode": "weird"})),
            err(7, &["mode", "weird"]),
        ),
        case("mode of wrong type", b.with(json!({"mode": 1})), err(6, &["mode"])),
        case("mtu below 68", b.with(json!({"mtu": 10})), err(7, &["mtu", "10"])),
        case("mtu negative", b.with(json!({"mtu": -1})), err(7, &["mtu", "-1"])),
        case(
            "mtu above the master's",
            b.with(json!({"mtu": 9001})),
            err(7, &["mtu", "9001", "m0"]),
        ),
        case("mtu of wrong type", b.with(json!({"mtu": "1500"})), err(6, &["mtu"])),
        case(
            "mtu out of range of any integer",
            b.with(json!({"mtu": 1e30})),
            err(6, &["mtu"]),
        ),
        case("mac invalid", b.with(json!({"mac": "zz"})), err(7, &["mac", "zz"])),
        case(
            "mac multicast",
            b.with(json!({"mac": "01:00:00:00:00:01"})),
            err(7, &["mac", "01:00:00:00:00:01"]),
        ),
        case(
            "mac all zero",
            b.with(json!({"mac": "00:00:00:00:00:00"})),
            err(7, &["mac"]),
        ),
        case(
            "sourceMacs without source mode",
            b.with(json!({"sourceMacs": ["02:00:00:00:00:01"]})),
            err(7, &["sourceMacs"]),
        ),
        case(
            "source mode without sourceMacs",
            b.with(json!({"mode": "source"})),
            err(7, &["sourceMacs"]),
        ),
        case(
            "sourceMacs invalid",
            b.with(json!({"mode": "source", "sourceMacs": ["nope"]})),
            err(7, &["sourceMacs[0]", "nope"]),
        ),
        case(
            "bcqueuelen negative",
            b.with(json!({"bcqueuelen": -5})),
            err(6, &["bcqueuelen"]),
        ),
        case(
            "linkInContainer a string",
            b.with(json!({"linkInContainer": "yes"})),
            err(6, &["linkInContainer"]),
        ),
        case(
            "linkInContainer with a master only the host has",
            b.with(json!({"linkInContainer": true})),
            err(7, &["master", "m0", "container"]),
        ),
    ]
}

fn bridge_cases(b: &Bed) -> Vec<Case> {
    vec![
        case(
            "bridge name too long",
            b.with(json!({"bridge": "br0123456789abcd"})),
            err(7, &["bridge", "br0123456789abcd"]),
        ),
        case(
            "bridge name with /",
            b.with(json!({"bridge": "a/b"})),
            err(7, &["bridge", "a/b"]),
        ),
        case("bridge name empty", b.with(json!({"bridge": ""})), err(7, &["bridge"])),
        case(
            "bridge name with NUL",
            b.with(json!({"bridge": "br\u{0}x"})),
            err(7, &["bridge"]),
        ),
        case(
            "bridge name of wrong type",
            b.with(json!({"bridge": 0})),
            err(6, &["bridge"]),
        ),
        case(
            "bridge name of an existing non-bridge",
            b.with(json!({"bridge": "lo"})),
            err(103, &["lo", "not a bridge"]),
        ),
        case("mtu below 68", b.with(json!({"mtu": 10})), err(7, &["mtu", "10"])),
        case(
            "mtu above 65535",
            b.with(json!({"mtu": 70000})),
            err(7, &["mtu", "70000"]),
        ),
        case("mtu of wrong type", b.with(json!({"mtu": "1500"})), err(6, &["mtu"])),
        case(
            "vlan above 4094",
            b.with(json!({"vlan": 5000})),
            err(7, &["vlan", "5000"]),
        ),
        case("vlan negative", b.with(json!({"vlan": -1})), err(7, &["vlan", "-1"])),
        case(
            "vlanTrunk minID without maxID",
            b.with(json!({"vlanTrunk": [{"minID": 10}]})),
            err(7, &["vlanTrunk", "maxID"]),
        ),
        case(
            "vlanTrunk id out of range",
            b.with(json!({"vlanTrunk": [{"id": 9999}]})),
            err(7, &["vlanTrunk", "id"]),
        ),
        case(
            "vlanTrunk of wrong type",
            b.with(json!({"vlanTrunk": 5})),
            err(6, &["vlanTrunk"]),
        ),
        case(
            "hairpinMode with promiscMode",
            b.with(json!({"hairpinMode": true, "promiscMode": true})),
            err(7, &["hairpinMode", "promiscMode"]),
        ),
        case(
            "isGateway a string",
            b.with(json!({"isGateway": "yes"})),
            err(6, &["isGateway"]),
        ),
        case("ipMasq a number", b.with(json!({"ipMasq": 1})), err(6, &["ipMasq"])),
        case(
            "ipMasqBackend unknown",
            b.with(json!({"ipMasqBackend": "pf"})),
            err(7, &["ipMasqBackend", "pf"]),
        ),
        case(
            "args.cni.mac invalid",
            b.with(json!({"args": {"cni": {"mac": "nope"}}})),
            err(7, &["args.cni.mac", "nope"]),
        ),
        case(
            "disableContainerInterface with ipam",
            b.with(json!({"disableContainerInterface": true})),
            err(7, &["disableContainerInterface"]),
        ),
        case(
            "DEL with a bridge name too long",
            b.with(json!({"bridge": "br0123456789abcd"})).command("DEL"),
            Expect::Deleted,
        ),
    ]
}

fn bad_input(plugin: &'static str) {
    let b = Bed::new(plugin);
    // A network directory planted as a file, for the "network dir planted as a file" case.
    let name = b.conf["name"].as_str().unwrap();
    std::fs::write(b.data.join(format!("{name}-file")), "not a dir").unwrap();
    let mut cases = common_cases(&b);
    match plugin {
        "host-local" => cases.extend(host_local_cases(&b)),
        "macvlan" => {
            cases.extend(netns_cases(&b));
            cases.extend(macvlan_cases(&b));
        }
        "bridge" => {
            cases.extend(netns_cases(&b));
            cases.extend(bridge_cases(&b));
        }
        _ => unreachable!(),
    }
    assert!(cases.len() >= 40, "{plugin}: only {} cases", cases.len());
    let mut failures = run_cases(&b, cases);
    // c0 is still there and whole, and nobody else got a lease.
    let leases = lease_files(&b.data.join(name));
    if leases.len() != 1 || leases[0].1 != "c0\r\neth0" {
        failures.push(format!("[{plugin}] leases at the end: {leases:?}"));
    }
    assert_no_failures(failures);
}

#[test]
fn bad_input_host_local() {
    bad_input("host-local");
}

#[test]
fn bad_input_macvlan() {
    bad_input("macvlan");
}

#[test]
fn bad_input_bridge() {
    bad_input("bridge");
}

// -------------------------------------------------------------------------------------------
// Killed processes

/// A plugin call started in a process group of its own (so that it and its IPAM child can be
/// killed together), inside the host namespace `host`, as a runtime runs it.
fn spawn_group(plugin: &str, host: &Netns, cmd: &str, id: &str, netns: &str, conf: &Value) -> Child {
    let ns = std::fs::File::open(host.path()).expect("host netns");
    let fd = ns.as_raw_fd();
    let mut c = Command::new(bin(plugin));
    c.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", format!("{}:{REFERENCE_DIR}", bin_dir().display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only setns (async-signal-safe) between fork and exec, on an fd that outlives
    // the spawn.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().expect("spawning the plugin");
    drop(ns);
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(conf.to_string().as_bytes());
    drop(stdin);
    child
}

/// The pids of the children of `pid` whose command is `comm`.
fn children_named(pid: u32, comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if name == comm && ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// How one ADD of the kill tests ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    Ok,
    Killed,
    Failed(u64),
}

/// What the output of a call that was not itself killed must look like: one JSON document
/// (a result or the spec's error), no panic.
#[track_caller]
fn check_output(what: &str, out: &std::process::Output) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.to_lowercase().contains("panic"), "{what}: panicked: {stderr}");
    if out.status.signal().is_some() {
        return Ending::Killed;
    }
    if out.status.success() && stdout.trim().is_empty() {
        return Ending::Ok; // DEL, CHECK, GC
    }
    let v: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout:?}"));
    if out.status.success() {
        Ending::Ok
    } else {
        let code = v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: not an error JSON: {stdout}"));
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {stdout}");
        Ending::Failed(code)
    }
}

/// The addresses of the lease files of a store, checked whole: each names one of `ids` and
/// `eth0`. Returns (address, container id).
#[track_caller]
fn whole_leases(dir: &Path) -> Vec<(String, String)> {
    lease_files(dir)
        .into_iter()
        .map(|(ip, content)| {
            let (id, ifname) = content
                .split_once("\r\n")
                .unwrap_or_else(|| panic!("partial or empty lease {ip}: {content:?}"));
            assert_eq!(ifname, "eth0", "lease {ip}: {content:?}");
            assert!(!id.is_empty(), "lease {ip}: {content:?}");
            (ip, id.to_string())
        })
        .collect()
}

/// Files of ours that a killed writer may leave in a network directory (`.tmp-*`).
fn temp_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    v.sort();
    v
}

/// Many ADDs, killed at random moments (the whole process group, or the IPAM child alone, or
/// not at all), then DEL for every container as a runtime does after a failed ADD: nothing may
/// be left, no address may be held twice, and the next ADD must work.
fn killed_adds(plugin: &'static str) {
    const ROUNDS: usize = 40;
    let host = Netns::new();
    let data = TempDir::new(&format!("kill-{plugin}"));
    let net = format!("kill{}", plugin.replace('-', ""));
    let ipam = json!({"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.81.0.0/24"}]]});
    let conf = match plugin {
        "bridge" => json!({
            "cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": "kbr0",
            "isGateway": true, "ipMasq": true, "ipam": ipam
        }),
        "macvlan" => {
            host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
            host.ip(&["link", "set", "m0", "up"]);
            host.ip(&["link", "set", "m1", "up"]);
            json!({"cniVersion": "1.0.0", "name": net, "type": "macvlan", "master": "m0", "ipam": ipam})
        }
        _ => unreachable!(),
    };
    let store = data.join(&net);
    let host_links_before: Vec<(String, String)> = links(&host);
    let mut rng = Rng::new(&format!("killed_adds({plugin})"));
    let mut ctrs: Vec<(String, Netns)> = Vec::new();
    let mut endings: BTreeMap<Ending, usize> = BTreeMap::new();
    let mut alive: HashMap<String, String> = HashMap::new(); // address -> id, of successful ADDs
    let mut child_kills = 0;

    for i in 0..ROUNDS {
        let ns = Netns::new();
        let id = format!("k{i}");
        let mut child = spawn_group(plugin, &host, "ADD", &id, &ns.path(), &conf);
        let pid = child.id();
        match rng.below(10) {
            // The plugin and everything it started.
            0..=4 => {
                std::thread::sleep(Duration::from_micros(rng.below(15_000)));
                // SAFETY: kill(2) of the process group we created.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            // The IPAM child alone, at a random moment of its life.
            5..=7 => {
                let until = Instant::now() + Duration::from_secs(2);
                let delay = Duration::from_micros(rng.below(4_000));
                loop {
                    if let Some(&c) = children_named(pid, "host-local").first() {
                        std::thread::sleep(delay);
                        // SAFETY: kill(2) of a child of our child, which cannot have been
                        // reaped yet (its parent waits for it).
                        unsafe { libc::kill(c, libc::SIGKILL) };
                        child_kills += 1;
                        break;
                    }
                    if Instant::now() > until || child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            _ => {}
        }
        let out = child.wait_with_output().unwrap();
        let ending = check_output(&format!("ADD {id}"), &out);
        if ending == Ending::Ok {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
            if let Some(other) = alive.insert(addr.clone(), id.clone()) {
                panic!("{addr} given to {other} and {id}");
            }
        }
        *endings.entry(ending).or_default() += 1;
        ctrs.push((id, ns));
    }
    eprintln!("killed_adds({plugin}): {endings:?}, IPAM children killed: {child_kills}");

    // No address held twice; every lease whole; the store readable by the next calls.
    let leases = whole_leases(&store);
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (ip, id) in &leases {
        *per_id.entry(id.as_str()).or_default() += 1;
        if let Some(owner) = alive.get(&format!("{ip}/24")) {
            assert_eq!(owner, id, "lease {ip}");
        }
    }
    assert!(
        per_id.values().all(|&n| n == 1),
        "an id holds several addresses: {leases:?}"
    );
    for (addr, id) in &alive {
        assert!(
            leases.iter().any(|(ip, i)| format!("{ip}/24") == *addr && i == id),
            "{id} lost its lease {addr}"
        );
    }

    // DEL for every container, as a runtime does, ADD killed or not.
    for (id, ns) in &ctrs {
        let out = spawn_group(plugin, &host, "DEL", id, &ns.path(), &conf)
            .wait_with_output()
            .unwrap();
        assert_eq!(
            check_output(&format!("DEL {id}"), &out),
            Ending::Ok,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let assert_clean = |when: &str, ctrs: &[(String, Netns)]| {
        let mut left = Vec::new();
        if !lease_files(&store).is_empty() {
            left.push(format!("leases: {:?}", lease_files(&store)));
        }
        if !temp_files(&store).is_empty() {
            left.push(format!("temp files: {:?}", temp_files(&store)));
        }
        let mut now: Vec<(String, String)> = links(&host);
        now.retain(|(n, _)| !(plugin == "bridge" && n == "kbr0"));
        if now != host_links_before {
            left.push(format!("links in the host namespace: {now:?}"));
        }
        for (id, ns) in ctrs {
            if !links(ns).is_empty() {
                left.push(format!("links in the namespace of {id}: {:?}", links(ns)));
            }
        }
        let nat: Vec<String> = nat_rules(&host)
            .into_iter()
            .filter(|r| r.contains("CNI-") || r.contains(&net))
            .collect();
        if !nat.is_empty() {
            left.push(format!("NAT rules: {nat:?}"));
        }
        let nft = nft_ruleset(&host);
        if nft.contains(&format!("net: {net}")) {
            left.push(format!("nftables rules: {nft}"));
        }
        assert!(left.is_empty(), "{when}, left behind:\n{}", left.join("\n"));
    };
    assert_clean("after the DELs", &ctrs);

    // The next ADD works, and its DEL leaves nothing either.
    let ns = Netns::new();
    let out = spawn_group(plugin, &host, "ADD", "after", &ns.path(), &conf)
        .wait_with_output()
        .unwrap();
    assert_eq!(
        check_output("ADD after", &out),
        Ending::Ok,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(whole_leases(&store).len(), 1);
    let out = spawn_group(plugin, &host, "DEL", "after", &ns.path(), &conf)
        .wait_with_output()
        .unwrap();
    assert_eq!(check_output("DEL after", &out), Ending::Ok);
    ctrs.push(("after".into(), ns));
    assert_clean("after the last ADD and DEL", &ctrs);
}

#[test]
fn killed_bridge_adds_leave_nothing() {
    killed_adds("bridge");
}

#[test]
fn killed_macvlan_adds_leave_nothing() {
    killed_adds("macvlan");
}

/// host-local alone, killed at random moments of an ADD many times over: every lease file is
/// whole (the lease store never holds a half-written lease), and what the killed calls left
/// is released by DEL.
#[test]
fn killed_host_local_never_leaves_a_partial_lease() {
    let data = TempDir::new("kill-hl");
    let host = Netns::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "killhl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.82.0.0/24"}], [{"subnet": "fd00:82::/64"}]]}});
    let store = data.join("killhl");
    let mut rng = Rng::new("killed_host_local");
    let mut ids = Vec::new();
    for i in 0..120 {
        let id = format!("h{i}");
        let child = spawn_group("host-local", &host, "ADD", &id, "/var/run/netns/none", &conf);
        std::thread::sleep(Duration::from_micros(rng.below(6_000)));
        // SAFETY: kill(2) of the process group we created.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let out = child.wait_with_output().unwrap();
        check_output(&format!("ADD {id}"), &out);
        let leases = whole_leases(&store);
        let held: HashSet<&String> = leases.iter().map(|(_, id)| id).collect();
        assert!(leases.len() <= 2 * held.len(), "{leases:?}");
        ids.push(id);
    }
    for id in &ids {
        let out = spawn_group("host-local", &host, "DEL", id, "/var/run/netns/none", &conf)
            .wait_with_output()
            .unwrap();
        assert_eq!(check_output(&format!("DEL {id}"), &out), Ending::Ok);
    }
    assert!(lease_files(&store).is_empty(), "{:?}", lease_files(&store));
    assert!(temp_files(&store).is_empty(), "{:?}", temp_files(&store));
}

/// A lock held by a process that is killed is released by the kernel: the waiting ADD goes on.
#[test]
fn lock_of_a_killed_holder_is_released() {
    let data = TempDir::new("lock");
    let host = Netns::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "locknet", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.83.0.0/24"}]]}});
    let add = |id: &str| spawn_group("host-local", &host, "ADD", id, "/var/run/netns/none", &conf);
    assert_eq!(
        check_output("first ADD", &add("first").wait_with_output().unwrap()),
        Ending::Ok
    );
    let lock = data.join("locknet/lock");
    assert!(lock.is_file());

    // A process that takes the lock as host-local does (flock, exclusive) and keeps it.
    let path = CString::new(lock.to_str().unwrap()).unwrap();
    let mut holder = Command::new("sleep");
    holder.arg("600");
    // SAFETY: open and flock (async-signal-safe) between fork and exec; the fd is not
    // close-on-exec, so `sleep` holds the lock.
    unsafe {
        holder.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            if fd < 0 || libc::flock(fd, libc::LOCK_EX) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = holder.spawn().unwrap();
    let is_locked = || {
        let f = std::fs::File::open(&lock).unwrap();
        // SAFETY: flock on an fd we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        r != 0
    };
    let t = Instant::now();
    while !is_locked() {
        assert!(t.elapsed() < Duration::from_secs(5), "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut waiting = add("second");
    // The ADD blocks on the lock: /proc/locks lists it as a waiter ("->") of a FLOCK.
    let waiter = format!(" {} ", waiting.id());
    let t = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        if locks.lines().any(|l| l.contains("-> FLOCK") && l.contains(&waiter)) {
            break;
        }
        assert!(waiting.try_wait().unwrap().is_none(), "ADD did not wait for the lock");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "ADD never blocked on the lock: {locks}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(waiting.try_wait().unwrap().is_none(), "ADD did not wait for the lock");
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    let t = Instant::now();
    let out = loop {
        if waiting.try_wait().unwrap().is_some() {
            break waiting.wait_with_output().unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "ADD still waits after the holder died"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        check_output("second ADD", &out),
        Ending::Ok,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ids: Vec<String> = whole_leases(&data.join("locknet"))
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"second".to_string()));
}

// -------------------------------------------------------------------------------------------
// Load

/// One network of the storm: its plugin, host namespace and config.
struct StormNet<'a> {
    plugin: &'static str,
    host: &'a Netns,
    conf: Value,
    store: PathBuf,
}

impl StormNet<'_> {
    fn call(&self, cmd: &str, id: &str, netns: &str) -> Cni {
        Cni::new(bin(self.plugin))
            .command(cmd)
            .container_id(id)
            .netns(netns)
            .host(self.host)
            .config(&self.conf)
    }
}

/// Waits for every call; returns the outputs in order.
fn wait_all(running: Vec<(String, cni_tests::Running)>) -> Vec<(String, Output)> {
    running.into_iter().map(|(what, r)| (what, r.wait())).collect()
}

/// Every call succeeded (or said "try again later", code 11, the one documented transient
/// failure); returns how many did the latter.
#[track_caller]
fn all_ok(outs: &[(String, Output)]) -> usize {
    let mut again = 0;
    let mut bad = Vec::new();
    for (what, o) in outs {
        if o.stderr.to_lowercase().contains("panic") {
            bad.push(format!("{what}: panicked: {}", o.stderr.trim()));
        } else if o.error_code() == Some(11) {
            again += 1;
        } else if !o.success() {
            bad.push(format!("{what}: exit {:?}: {}", o.code, o.raw_stdout.trim()));
        }
    }
    assert!(bad.is_empty(), "{} call(s) failed:\n{}", bad.len(), bad.join("\n"));
    again
}

/// 256 ADD, CHECK and DEL calls at once over four networks (two bridge networks, one of them
/// with masquerading, two macvlan networks on one master): every call succeeds, no address is
/// given twice, and the final DELs leave nothing.
#[test]
fn storm_of_256_mixed_calls() {
    const CHECKED: usize = 16; // set up before, CHECKed during the storm
    const DELETED: usize = 16; // set up before, DELeted during the storm
    const ADDED: usize = 24; // ADDed during the storm
    const UNKNOWN: usize = 8; // DELs of containers that never were
    let hb = Netns::new();
    let hm = Netns::new();
    hm.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
    hm.ip(&["link", "set", "m0", "up"]);
    hm.ip(&["link", "set", "m1", "up"]);
    let data = TempDir::new("storm");
    let ipam = |subnet: &str| json!({"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": subnet}]]});
    let nets = [
        (
            "bridge",
            &hb,
            json!({"cniVersion": "1.0.0", "name": "stormb1", "type": "bridge", "bridge": "sbr1",
            "isGateway": true, "ipMasq": true, "ipam": ipam("10.84.0.0/24")}),
        ),
        (
            "bridge",
            &hb,
            json!({"cniVersion": "1.0.0", "name": "stormb2", "type": "bridge", "bridge": "sbr2",
            "isGateway": true, "ipam": ipam("10.85.0.0/24")}),
        ),
        (
            "macvlan",
            &hm,
            json!({"cniVersion": "1.0.0", "name": "stormm1", "type": "macvlan", "master": "m0",
            "ipam": ipam("10.86.0.0/24")}),
        ),
        (
            "macvlan",
            &hm,
            json!({"cniVersion": "1.0.0", "name": "stormm2", "type": "macvlan", "master": "m0",
            "mode": "private", "ipam": ipam("10.87.0.0/24")}),
        ),
    ]
    .map(|(plugin, host, conf)| StormNet {
        plugin,
        host,
        store: data.join(conf["name"].as_str().unwrap()),
        conf,
    });
    let host_links: Vec<Vec<(String, String)>> = [&hb, &hm].map(links).to_vec();

    // Containers: (network, id, namespace).
    let mut checked = Vec::new();
    let mut deleted = Vec::new();
    let mut added = Vec::new();
    for (n, net) in nets.iter().enumerate() {
        let name = net.conf["name"].as_str().unwrap();
        for i in 0..CHECKED {
            checked.push((n, format!("{name}-c{i}"), Netns::new()));
        }
        for i in 0..DELETED {
            deleted.push((n, format!("{name}-d{i}"), Netns::new()));
        }
        for i in 0..ADDED {
            added.push((n, format!("{name}-a{i}"), Netns::new()));
        }
    }

    // Set-up: the containers to CHECK and to DEL, all at once too.
    let setup: Vec<_> = checked
        .iter()
        .chain(&deleted)
        .map(|(n, id, ns)| (format!("set-up ADD {id}"), nets[*n].call("ADD", id, &ns.path()).spawn()))
        .collect();
    let setup = wait_all(setup);
    all_ok(&setup);
    let results: HashMap<String, Value> = setup
        .iter()
        .map(|(what, o)| (what.trim_start_matches("set-up ADD ").to_string(), o.stdout.clone()))
        .collect();

    // The storm: 256 calls started before any is waited for.
    let started = Instant::now();
    let mut storm = Vec::new();
    for (n, id, ns) in &added {
        storm.push((format!("ADD {id}"), nets[*n].call("ADD", id, &ns.path()).spawn()));
    }
    for (n, id, ns) in &checked {
        let mut conf = nets[*n].conf.clone();
        conf["prevResult"] = results[id].clone();
        let c = nets[*n].call("CHECK", id, &ns.path()).config(&conf);
        storm.push((format!("CHECK {id}"), c.spawn()));
    }
    for (n, id, ns) in &deleted {
        storm.push((format!("DEL {id}"), nets[*n].call("DEL", id, &ns.path()).spawn()));
    }
    for (n, net) in nets.iter().enumerate() {
        for i in 0..UNKNOWN {
            let id = format!("never{n}-{i}");
            storm.push((format!("DEL {id}"), net.call("DEL", &id, "/run/netns/gone").spawn()));
        }
    }
    assert_eq!(storm.len(), 256);
    let storm = wait_all(storm);
    let again = all_ok(&storm);
    eprintln!(
        "storm: 256 calls in {:?}, {again} said try again later",
        started.elapsed()
    );

    // No address twice: per network, the leases are exactly the live containers', one each,
    // and each live container has its own address on eth0.
    let storm_results: HashMap<String, Value> = storm
        .iter()
        .filter(|(what, _)| what.starts_with("ADD "))
        .map(|(what, o)| (what.trim_start_matches("ADD ").to_string(), o.stdout.clone()))
        .collect();
    for (n, net) in nets.iter().enumerate() {
        let leases = whole_leases(&net.store);
        let mut by_id: HashMap<String, String> = HashMap::new();
        for (ip, id) in &leases {
            assert!(
                by_id.insert(id.clone(), ip.clone()).is_none(),
                "{id} holds two leases: {leases:?}"
            );
        }
        let live: Vec<&(usize, String, Netns)> = checked.iter().chain(&added).filter(|(m, _, _)| *m == n).collect();
        assert_eq!(leases.len(), live.len(), "{}: {leases:?}", net.conf["name"]);
        for (_, id, ns) in live {
            let r = results.get(id).or_else(|| storm_results.get(id)).unwrap();
            let addr = r["ips"][0]["address"].as_str().unwrap();
            assert_eq!(format!("{}/24", by_id[id]), addr, "{id}");
            let shown = ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
            assert!(shown.contains(&format!("inet {addr} ")), "{id}: {shown}");
        }
    }

    // The final DELs, all at once, leave nothing.
    let dels: Vec<_> = checked
        .iter()
        .chain(&added)
        .map(|(n, id, ns)| (format!("final DEL {id}"), nets[*n].call("DEL", id, &ns.path()).spawn()))
        .collect();
    all_ok(&wait_all(dels));
    for net in &nets {
        assert!(lease_files(&net.store).is_empty(), "{:?}", lease_files(&net.store));
        assert!(temp_files(&net.store).is_empty());
    }
    for (i, h) in [&hb, &hm].into_iter().enumerate() {
        let mut now = links(h);
        now.retain(|(name, _)| name != "sbr1" && name != "sbr2");
        assert_eq!(now, host_links[i], "links left in a host namespace");
    }
    for (_, id, ns) in checked.iter().chain(&deleted).chain(&added) {
        assert!(links(ns).is_empty(), "{id}: {:?}", links(ns));
    }
    let nat: Vec<String> = nat_rules(&hb).into_iter().filter(|r| r.contains("CNI-")).collect();
    assert!(nat.is_empty(), "{nat:?}");
}

/// GC of a store with thousands of stale leases (written in the reference's layout) finishes
/// quickly and keeps exactly the valid ones.
#[test]
fn gc_of_thousands_of_stale_leases_keeps_every_valid_one() {
    const VALID: u32 = 1000;
    const STALE: u32 = 3000;
    let data = TempDir::new("gc");
    let dir = data.join("gcnet");
    std::fs::create_dir_all(&dir).unwrap();
    let ip = |i: u32| std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 88, 0, 2)) + i).to_string();
    let mut valid = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 0..VALID + STALE {
        let (id, ifname) = (format!("ctr-{i:05}"), if i % 7 == 0 { "net1" } else { "eth0" });
        let content = if i % 11 == 0 {
            id.clone() // the old format: the container id alone
        } else {
            format!("{id}\r\n{ifname}")
        };
        std::fs::write(dir.join(ip(i)), &content).unwrap();
        if i < VALID {
            valid.push(json!({"containerID": id, "ifname": ifname}));
            expected.insert(ip(i), content);
        }
    }
    // Stale in other ways: a valid container's other interface, empty leases, a writer's
    // leftover temp file.
    std::fs::write(dir.join("10.88.200.1"), "ctr-00001\r\neth9").unwrap();
    std::fs::write(dir.join("10.88.200.2"), "").unwrap();
    std::fs::write(dir.join("10.88.200.3"), "   \r\n").unwrap();
    std::fs::write(dir.join(".tmp-999999-1"), "ctr-99999\r\neth0").unwrap();
    std::fs::write(dir.join("last_reserved_ip.0"), "10.88.0.2").unwrap();

    let conf = json!({"cniVersion": "1.1.0", "name": "gcnet", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.88.0.0/16"}]]},
        "cni.dev/valid-attachments": valid});
    let host = Netns::new();
    let started = Instant::now();
    let out = spawn_group("host-local", &host, "GC", "", "", &conf)
        .wait_with_output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        check_output("GC", &out),
        Ending::Ok,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("GC of {} leases took {took:?}", VALID + STALE + 3);
    assert!(took < Duration::from_secs(30), "GC took {took:?}");
    let left: BTreeMap<String, String> = lease_files(&dir).into_iter().collect();
    assert_eq!(left.len(), expected.len());
    assert!(left == expected, "GC did not keep exactly the valid leases");
    assert!(temp_files(&dir).is_empty());

    // The store works on: a DEL of a kept attachment, an ADD (which skips the kept leases).
    let call = |cmd: &str, id: &str, ifname: &str| {
        Cni::new(bin("host-local"))
            .command(cmd)
            .container_id(id)
            .ifname(ifname)
            .host(&host)
            .config(&patch(
                &conf,
                json!({"cni.dev/valid-attachments": null, "cniVersion": "1.0.0"}),
            ))
            .run()
    };
    call("DEL", "ctr-00003", "eth0").expect_ok();
    assert!(!dir.join(ip(3)).exists());
    let r = call("ADD", "new", "eth0").expect_ok();
    // Round robin goes on after last_reserved_ip.0 (10.88.0.2): the address DEL just freed.
    assert_eq!(r["ips"][0]["address"], format!("{}/16", ip(3)));
    // A second GC keeps what the first kept (and the new lease, which it is told about).
    let mut again = conf.clone();
    again["cni.dev/valid-attachments"]
        .as_array_mut()
        .unwrap()
        .push(json!({"containerID": "new", "ifname": "eth0"}));
    let out = spawn_group("host-local", &host, "GC", "", "", &again)
        .wait_with_output()
        .unwrap();
    assert_eq!(check_output("second GC", &out), Ending::Ok);
    assert_eq!(lease_files(&dir).len(), expected.len());
}

// -------------------------------------------------------------------------------------------
// Safety

/// Nothing of the lease store is writable by group or others, even with a umask of 0.
#[test]
fn lease_store_is_not_writable_by_others() {
    let data = TempDir::new("modes");
    let data_dir = data.join("made/by/host-local");
    let host = Netns::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "modenet", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.89.0.0/24"}], [{"subnet": "fd00:89::/64"}]]}});
    let call = |cmd: &str, id: &str| {
        Cni::new(bin("host-local"))
            .command(cmd)
            .container_id(id)
            .host(&host)
            .config(&conf)
            .wrapper(&["sh", "-c", "umask 000; exec \"$@\"", "sh"])
            .run()
    };
    call("ADD", "c1").expect_ok();
    call("ADD", "c2").expect_ok();
    call("DEL", "c1").expect_ok();
    let tree = tree(&data.join("made"));
    assert!(tree.len() > 8, "{tree:?}");
    for (path, what) in &tree {
        let mode = std::fs::symlink_metadata(data.join("made").join(path)).unwrap().mode();
        assert_eq!(mode & 0o022, 0, "{path} is writable by others: {what}");
    }
}

/// A symlink planted in the lease store, for the network directory, a lease, the lock, the
/// last-reserved file or the index, is never written through: the ADD fails cleanly or skips
/// it, and what it points to is left alone.
#[test]
fn symlinks_planted_in_the_store_are_never_followed() {
    struct Plant {
        name: &'static str,
        /// Relative to the data dir; the target is a file or directory outside the store.
        link: &'static str,
        target_is_dir: bool,
        /// `Some(true)`: the ADD must fail cleanly (code 5, no lease); `Some(false)`: it must
        /// work; `None`: either (a bookkeeping file may be replaced, never followed).
        add_fails: Option<bool>,
        /// The symlink must still be there afterwards (not replaced by a file of ours).
        stays: bool,
    }
    #[rustfmt::skip]
    let plants = [
        Plant { name: "network dir", link: "symnet", target_is_dir: true, add_fails: Some(true), stays: true },
        Plant { name: "lease", link: "symnet/10.90.0.2", target_is_dir: false, add_fails: Some(false), stays: true },
        Plant { name: "lock", link: "symnet/lock", target_is_dir: false, add_fails: None, stays: false },
        Plant { name: "last reserved", link: "symnet/last_reserved_ip.0", target_is_dir: false, add_fails: None, stays: false },
        Plant { name: "index dir", link: "symnet/.by-id", target_is_dir: true, add_fails: Some(false), stays: false },
        Plant { name: "index stamp", link: "symnet/.by-id/.stamp", target_is_dir: false, add_fails: Some(false), stays: false },
        Plant { name: "index entry", link: "symnet/.by-id/c1:eth0", target_is_dir: false, add_fails: Some(false), stays: false },
    ];
    let host = Netns::new();
    let mut failures = Vec::new();
    for p in plants {
        let data = TempDir::new("sym");
        let outside = TempDir::new("sym-outside");
        let target = outside.join("target");
        if p.target_is_dir {
            std::fs::create_dir(&target).unwrap();
        } else {
            std::fs::write(&target, "c1\r\neth0").unwrap();
        }
        let link = data.join(p.link);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let before = tree(outside.path());
        let conf = json!({"cniVersion": "1.0.0", "name": "symnet", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.90.0.0/24"}]]}});
        let call = |cmd: &str| {
            Cni::new(bin("host-local"))
                .command(cmd)
                .container_id("c1")
                .host(&host)
                .config(&conf)
                .run()
        };
        let add = call("ADD");
        let mut problems = Vec::new();
        if add.stderr.to_lowercase().contains("panic") {
            problems.push(format!("panicked: {}", add.stderr));
        }
        let failed = !add.success();
        if p.add_fails == Some(false) && failed {
            problems.push(format!("ADD failed: {}", add.raw_stdout.trim()));
        }
        if p.add_fails == Some(true) && !failed {
            problems.push(format!("ADD worked: {}", add.raw_stdout.trim()));
        }
        if failed {
            match add.error_code() {
                Some(5) => {}
                other => problems.push(format!("ADD gave {other:?}, want code 5: {}", add.raw_stdout.trim())),
            }
            let leases = lease_files(&data.join("symnet"));
            if !leases.is_empty() {
                problems.push(format!("a failed ADD left leases {leases:?}"));
            }
        } else if p.name == "lease" && add.stdout["ips"][0]["address"] == "10.90.0.2/24" {
            problems.push("ADD took the address planted as a symlink".into());
        }
        eprintln!(
            "symlink planted at the {}: ADD gave {:?}",
            p.name,
            add.error_code().unwrap_or(0)
        );
        // DEL, CHECK and GC must leave the target alone too (they may fail).
        call("DEL");
        call("CHECK");
        Cni::new(bin("host-local"))
            .command("GC")
            .host(&host)
            .config(&patch(
                &conf,
                json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}),
            ))
            .run();
        if tree(outside.path()) != before {
            problems.push(format!(
                "the target outside changed: {:?} -> {:?}",
                before,
                tree(outside.path())
            ));
        }
        if p.stays && !std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            problems.push("the planted symlink was replaced".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", p.name, problems.join("; ")));
        }
    }
    assert_no_failures(failures);
}

/// External commands (iptables, nft, the IPAM plugin) are run with argument lists, never
/// through a shell, in the product code.
#[test]
fn no_shell_in_product_code() {
    let root = cni_tests::workspace_dir();
    let mut files = Vec::new();
    for dir in ["plugins", "ipam"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && p.components().any(|c| c.as_os_str() == "src") {
                    files.push(p);
                }
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may use a shell; product code may not.
        let product = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in product.lines().enumerate() {
            let l = line.replace(' ', "");
            let shell = [
                "Command::new(\"sh\")",
                "Command::new(\"bash\")",
                "\"/bin/sh\"",
                "\"/bin/bash\"",
                "Proc::new(\"sh\")",
            ]
            .iter()
            .any(|s| l.contains(s))
                || l.contains(".arg(\"-c\")")
                || l.contains("args([\"-c\"");
            if shell {
                bad.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
            if l.contains("Command::new(") || l.contains("Proc::new(") {
                // The two runners: firewall::exec (iptables, nft) and delegate (IPAM plugins).
                let ok = ["Command::new(bin)", "Proc::new(bin)"].iter().any(|s| l.contains(s));
                if !ok {
                    bad.push(format!(
                        "{}:{}: unexpected command: {}",
                        f.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
